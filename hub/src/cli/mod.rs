//! The `edgeship` command line: argument definitions and dispatch. Client commands talk to a
//! hub over gRPC, exactly as any other API client would.

/// Prints a line for whoever watches a long-running command (`hub`, `dev`). A closed stdout
/// (a supervisor or script that stopped reading) must not take a daemon down, so write
/// errors are ignored rather than panicking as `println!` would.
macro_rules! announce {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod deploy;
mod deploy_logs;
mod dev;
mod hub;
mod identity;
mod job;
pub mod logs;
mod model;
mod module;
mod names;
mod output;
mod package;
mod profile;
mod rollout;
mod token;
mod view;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where client commands find the hub unless `--hub` or `EDGESHIP_HUB` says otherwise.
pub const DEFAULT_HUB_URL: &str = "http://127.0.0.1:7700";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
/// A 256 KiB blob chunk plus its protobuf and MQTT envelopes.
pub const MIN_PACKET_BYTES: usize = 320 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "edgeship",
    version,
    about = "Deploy and serve ML models on edge fleets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub: model registry, deployments and fleet over gRPC, plus the MQTT side.
    Hub(hub::HubArgs),
    /// One process with everything: hub, embedded broker, a local agent and a sample model.
    Dev(dev::DevArgs),
    /// Register, inspect, download, update, profile and delete models.
    Model {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Register, inspect, download and delete entry modules: WebAssembly components that a
    /// manifest puts in front of its models (`entry_module: NAME:VERSION`).
    Module {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: ModuleCommand,
    },
    /// Deploy models to devices and follow their state.
    Deploy {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: DeployCommand,
    },
    /// List and inspect devices, and set their labels.
    Device {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Batch inference: run a model over every record of a file on one device.
    Job {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Configure an external broker for edgeship's devices.
    Broker {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: BrokerCommand,
    },
    /// Create, list and delete the API tokens client commands send (EDGESHIP_TOKEN).
    Token {
        #[command(flatten)]
        hub: HubAddress,
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Package a registered model as a container image with no base image: a static agent
    /// serving it (`/score`, v2 and `/metrics` on port 5001) and its files.
    Package {
        #[command(flatten)]
        hub: HubAddress,
        #[command(flatten)]
        args: package::PackageArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Deploy a model to devices named by id and/or selected by labels.
    Create {
        /// Deployment name (unique; also names the workload on each device).
        #[arg(value_name = "NAME")]
        name: String,
        /// NAME:VERSION, or NAME:latest to follow new registrations (or
        /// models/NAME/versions/VERSION).
        #[arg(short, long)]
        model: String,
        /// Port of the scoring endpoint on each device.
        #[arg(short, long)]
        port: u16,
        #[arg(long, default_value = "tract")]
        runtime: String,
        /// Endpoint authentication: none, key (see `deploy keys`) or token (see
        /// `deploy token`).
        #[arg(long, default_value = "none")]
        auth: String,
        /// Target device id (repeatable). A device that has never connected gets a warning;
        /// with --wait, the command fails at once instead of waiting for it.
        #[arg(long = "device", value_name = "ID")]
        devices: Vec<String>,
        /// Target devices by label, in Kubernetes' selector syntax: `site=berlin`,
        /// `site in (berlin,paris)`, `tier!=test`, `gpu`, `!canary` (repeatable; all must
        /// match).
        #[arg(long = "selector", value_name = "SELECTOR")]
        selector: Vec<String>,
        /// Where two deployments want one port on a device, the higher priority gets it.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
        /// Wait until every targeted device serves it (or one fails).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// A deployment with the state of each targeted device: NAME or deployments/NAME.
    Show {
        #[arg(value_name = "NAME")]
        name: String,
        /// Print the manifest (YAML) that reproduces the deployment instead: edit it and
        /// `deploy apply -f` it.
        #[arg(long, conflicts_with = "output")]
        manifest: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    List {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Devices stop serving it and free its files: NAME or deployments/NAME.
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// The endpoint keys of a deployment with auth `key`: callers send either as
    /// `Authorization: Bearer <key>`.
    Keys {
        #[arg(value_name = "NAME")]
        name: String,
        /// Replace this key (devices accept the new one, and refuse the old, within seconds).
        #[arg(long, value_name = "primary|secondary")]
        regenerate: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// A deployment's recent log lines, fetched from its devices over MQTT: a container's
    /// stdout and stderr, and the agent's own lines about the deployment (for a model
    /// workload, its whole log). Oldest first, merged by time.
    Logs {
        #[arg(value_name = "NAME")]
        name: String,
        /// Only this device (default: every device the deployment targets that is online).
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Newest lines per device, at most 2000.
        #[arg(long, value_name = "N", default_value_t = 100)]
        tail: u32,
        /// Keep printing new lines as they come, until interrupted.
        #[arg(short, long)]
        follow: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// A new signed token for a deployment with auth `token`: callers send it as
    /// `Authorization: Bearer <token>` until it expires, and get a new one after its
    /// refresh-by time. Devices check it offline.
    Token {
        #[arg(value_name = "NAME")]
        name: String,
        /// The token's life in seconds (at most 604800, 7 days).
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        ttl: u32,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Create or update a deployment from a manifest file (YAML or JSON; `-` reads standard
    /// input). Prints what changes; a change to what devices run starts a rollout.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Only validate and print what would change.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every targeted device serves it (or one fails).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Follow rollouts.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Hold the running rollout where it stands.
    Pause {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Let a paused rollout go on.
    Resume {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Stop the running rollout: moved devices keep the new revision, the rest the old one.
    Abort {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Send moved devices back to the previous revision (after a finished rollout: roll the
    /// revision before it out again).
    Rollback {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Every rollout and change of a deployment, oldest first (kept after deletion).
    History {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Progress of the current rollout, per wave; --watch follows it until it ends (a
    /// progress bar on a terminal, a line per change otherwise: JSON with -o json) and fails
    /// when it ends other than completed.
    Status {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long)]
        watch: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Every device the hub knows, including those a deployment named that never connected.
    List {
        /// Only devices matching this label selector, in Kubernetes' syntax: `site=berlin`,
        /// `site in (berlin,paris)`, `!canary` (repeatable; all must match).
        #[arg(long = "selector", value_name = "SELECTOR")]
        selector: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// One device and its workloads: ID or devices/ID.
    Show {
        #[arg(value_name = "ID")]
        device: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Set or remove hub-side labels of a device (they override labels the agent reports).
    Label {
        #[arg(value_name = "ID")]
        device: String,
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Print a one-time bootstrap token for a device id, and the command that enrolls the
    /// device with it (`edgeship-agent enroll`). Needs the admin role.
    Enroll {
        #[arg(value_name = "ID")]
        device: String,
        /// How long the token holds, in seconds (default: a day).
        #[arg(long, default_value_t = crate::trust::enrollment::DEFAULT_TOKEN_TTL.as_secs())]
        ttl_secs: u64,
    },
    /// Cut a device off: the hub's broker refuses its certificate, the hub ignores it and
    /// sends it nothing more. Needs the admin role.
    Revoke {
        #[arg(value_name = "ID")]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Write a Mosquitto configuration into a folder: a TLS listener that requires client
    /// certificates from the hub's CA, a server certificate and key, the revocation list,
    /// and an ACL that confines each device to its own topics. Needs the admin role. Then run
    /// `mosquitto -c DIR/mosquitto.conf` and start the hub with --mqtt-url mqtts://HOST:PORT.
    MosquittoConfig {
        /// The folder to write (created); its absolute path goes into mosquitto.conf.
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        /// A name devices and the hub reach the broker by (repeatable; localhost is added).
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// The TLS listener's port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
    },
}

#[derive(Debug, Args)]
pub struct HubAddress {
    /// URL of the hub's gRPC API.
    #[arg(long, global = true, env = "EDGESHIP_HUB", default_value = DEFAULT_HUB_URL)]
    pub hub: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a file or a folder as the next version of a model.
    Register {
        /// Model name; versions are numbered per name from 1.
        #[arg(short, long)]
        name: String,
        /// A model file, or a folder whose files (and layout) make up the model.
        #[arg(short, long)]
        path: PathBuf,
        /// Tag as key=value (repeatable); tags can be changed later.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Property as key=value (repeatable).
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        #[arg(short, long, default_value = "")]
        description: String,
        /// Framework, e.g. onnx or custom; default: onnx when a .onnx file is present.
        #[arg(long)]
        framework: Option<String>,
        #[arg(long, default_value = "")]
        framework_version: String,
        /// JSON file with a sample request body ({"data": ...}).
        #[arg(long, value_name = "FILE")]
        sample_input: Option<PathBuf>,
        /// JSON file with the response expected for the sample input.
        #[arg(long, value_name = "FILE")]
        sample_output: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List model versions, optionally filtered.
    List {
        /// Only versions of this model (NAME or models/NAME).
        #[arg(short, long)]
        name: Option<String>,
        /// Tag filter, KEY=VALUE or KEY (repeatable; all must match).
        #[arg(long = "tag", value_name = "KEY[=VALUE]")]
        tags: Vec<String>,
        /// Property filter, KEY=VALUE or KEY (repeatable; all must match).
        #[arg(long = "property", value_name = "KEY[=VALUE]")]
        properties: Vec<String>,
        #[arg(long)]
        framework: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show one version: NAME (latest), NAME:VERSION, or models/NAME/versions/VERSION.
    Show {
        #[arg(value_name = "NAME[:VERSION]")]
        model: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Download a version's files, with their layout, into a folder; digests are verified.
    /// The version is named as for `show`.
    Download {
        #[arg(value_name = "NAME[:VERSION]")]
        model: String,
        /// Target folder (created if missing).
        #[arg(short = 'd', long = "download-path", alias = "dir")]
        dir: PathBuf,
        /// Replace files that already exist in the target folder.
        #[arg(long)]
        overwrite: bool,
    },
    /// Change a version's tags, properties or description: NAME:VERSION or
    /// models/NAME/versions/VERSION.
    Update {
        #[arg(value_name = "NAME:VERSION")]
        model: String,
        #[arg(long = "add-tag", value_name = "KEY=VALUE")]
        add_tags: Vec<String>,
        #[arg(long = "remove-tag", value_name = "KEY")]
        remove_tags: Vec<String>,
        #[arg(long = "add-property", value_name = "KEY=VALUE")]
        add_properties: Vec<String>,
        #[arg(long = "remove-property", value_name = "KEY")]
        remove_properties: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Delete one version (NAME:VERSION, models/NAME/versions/VERSION) or every version of a
    /// model (NAME, models/NAME).
    Delete {
        #[arg(value_name = "NAME[:VERSION]")]
        model: String,
    },
    /// Measure a version on one device at rising concurrency (latency, throughput, cores,
    /// memory) and store the recommended CPU and memory on it, per device class.
    Profile(profile::ProfileArgs),
    /// Make a model-signing key pair: the private key goes to FILE (mode 0600; keep it
    /// offline), the public key (`ed25519:…`, for manifests' `model_signers`) to stdout.
    Keygen {
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Sign a version's files with a model-signing key, here, and add the signature at the
    /// hub (which keeps it only if it verifies over the files it holds).
    Sign {
        /// NAME:VERSION (or models/NAME/versions/VERSION).
        #[arg(value_name = "MODEL")]
        model: String,
        /// The private key file `model keygen` wrote.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Register a WebAssembly component (.wasm) as the next version of an entry module; the
    /// hub compiles it and checks its exports, and refuses anything else with the reason.
    Register {
        /// Module name; versions are numbered per name from 1.
        #[arg(short, long)]
        name: String,
        /// The component, FILE.wasm.
        #[arg(short, long, value_name = "FILE.wasm")]
        path: PathBuf,
        /// Tag as key=value (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        #[arg(short, long, default_value = "")]
        description: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List module versions: every module's, or those of NAME (or modules/NAME).
    List {
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// Tag filter, KEY=VALUE or KEY (repeatable; all must match).
        #[arg(long = "tag", value_name = "KEY[=VALUE]")]
        tags: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show one version: NAME (latest), NAME:VERSION, or modules/NAME/versions/VERSION.
    Show {
        #[arg(value_name = "NAME[:VERSION]")]
        module: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Download a version's .wasm file (named as for `show`); its sha256 is verified.
    Download {
        #[arg(value_name = "NAME[:VERSION]")]
        module: String,
        /// Where to write the file.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        file: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Delete one version (NAME:VERSION, modules/NAME/versions/VERSION) or every version of a
    /// module (NAME, modules/NAME); refused while a deployment runs it.
    Delete {
        #[arg(value_name = "NAME[:VERSION]")]
        module: String,
    },
}

/// Parses repeated `--tag`/`--label` style `key=value` arguments.
fn key_values(
    kind: &str,
    entries: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    entries
        .iter()
        .map(|entry| crate::registry::validate::key_value(kind, entry).map_err(anyhow::Error::from))
        .collect()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Hub(args) => hub::run_hub(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Model { hub, command } => model::run(&hub.hub, command).await,
        Command::Module { hub, command } => module::run(&hub.hub, command).await,
        Command::Deploy { hub, command } => deploy::run_deploy(&hub.hub, command).await,
        Command::Device { hub, command } => deploy::run_device(&hub.hub, command).await,
        Command::Job { hub, command } => job::run(&hub.hub, command).await,
        Command::Package { hub, args } => package::run(&hub.hub, args).await,
        Command::Token { hub, command } => token::run(&hub.hub, command).await,
        Command::Broker { hub, command } => match command {
            BrokerCommand::MosquittoConfig {
                output,
                hostnames,
                port,
            } => identity::mosquitto_config(&hub.hub, &output, hostnames, port).await,
        },
    }
}
