//! `edgeship-agent`: the device daemon. Parses flags and the config file, sets up logging,
//! runs the agent until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeship_agent::RunningAgent;
use edgeship_agent::config::{DEFAULT_BROKER, RawConfig};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Tensors' aligned allocations from the per-thread caches (`edgeship_agent::aligned`).
#[global_allocator]
static ALLOCATOR: edgeship_agent::aligned::Allocator = edgeship_agent::aligned::Allocator;

#[derive(Debug, Parser)]
#[command(name = "edgeship-agent", version, about = "edgeship device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the broker, apply desired states and serve scoring endpoints.
    Run {
        /// TOML config file; flags override its values.
        #[arg(long, env = "EDGESHIP_AGENT_CONFIG")]
        config: Option<PathBuf>,
        // The default is shown in the help text, not given to clap as a default value: clap
        // would then always pass a broker, and it would override the config file's.
        #[arg(
            long,
            env = "EDGESHIP_BROKER",
            help = format!("Broker URL, mqtt://host:port [default: {DEFAULT_BROKER}]")
        )]
        broker: Option<String>,
        /// Unique id of this device, as deployments target it (required, here or in the config
        /// file); 1-128 letters, digits, '-', '_' or '.'.
        #[arg(long, env = "EDGESHIP_DEVICE_ID")]
        device_id: Option<String>,
        /// Folder for state, cached model files and staged models.
        #[arg(long, env = "EDGESHIP_AGENT_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Device label as key=value (repeatable); deployments select devices by label.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Address scoring endpoints bind to (default 0.0.0.0).
        #[arg(long)]
        serve_host: Option<IpAddr>,
        /// A runtime this agent may use (repeatable: `--runtime tract --runtime opencl`);
        /// default: every runtime that works on this device.
        #[arg(long = "runtime", value_name = "NAME")]
        runtimes: Vec<String>,
        /// Run container workloads on this host's engine: `docker` (default: none).
        #[arg(long, value_name = "ENGINE")]
        containers: Option<String>,
        /// Where the Docker engine listens: a socket path, unix:// or tcp:// URL (default:
        /// DOCKER_HOST, else /var/run/docker.sock).
        #[arg(long, value_name = "SOCKET")]
        docker_socket: Option<String>,
        /// The hub's director key (`ed25519:…`, or a file holding it, such as the hub's
        /// <data>/keys/director.pub) that every desired state must be signed with; default:
        /// the key enrollment stored in the data folder.
        #[arg(long, env = "EDGESHIP_DIRECTOR_KEY", value_name = "KEY|FILE")]
        director_key: Option<String>,
        /// Run without a director key, taking unsigned desired states, over plaintext MQTT
        /// (development and closed networks only).
        #[arg(long)]
        insecure: bool,
        /// A model-signing key (`ed25519:…`, repeatable): this device runs only models one of
        /// these keys signed (`edgeship model sign`), whatever deployments ask.
        #[arg(long = "model-signer", value_name = "KEY")]
        model_signers: Vec<String>,
    },
    /// Serve one model folder, with no hub and no broker: Azure ML `/score`, the Open
    /// Inference Protocol (REST, and gRPC with --grpc-port) and `/metrics`, as a deployment
    /// would. The folder holds one .onnx file (or --entry) and optionally sample_input.json,
    /// which the self-test sends before the port opens.
    Serve {
        /// The model folder.
        #[arg(long, env = "EDGESHIP_MODEL_DIR")]
        model: PathBuf,
        /// The port `/score` and v2 are served on.
        #[arg(long, default_value_t = 5001)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        host: IpAddr,
        /// Also serve the Open Inference Protocol over gRPC on this port.
        #[arg(long)]
        grpc_port: Option<u16>,
        /// The model file in the folder (default: its only .onnx file).
        #[arg(long)]
        entry: Option<String>,
        /// The model's name on the endpoint (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// The model's version on the endpoint.
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// The runtime: tract, or opencl.
        #[arg(long, default_value = "tract")]
        runtime: String,
        /// A key every scoring request must carry as `Authorization: Bearer KEY` (default: no
        /// auth). Prefer the environment variable: a flag shows in the process list.
        #[arg(long, env = "EDGESHIP_SERVE_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Enroll this device with a hub: make its key pair here (the private key never leaves
    /// <data-dir>/identity/), trade the one-time bootstrap token from `edgeship device
    /// enroll` for a certificate, and keep the hub's CA, director key and broker. `run` with
    /// the same data folder then needs no other flag.
    #[cfg(feature = "enroll")]
    Enroll {
        /// The hub's API, https://host:port.
        #[arg(long, env = "EDGESHIP_HUB")]
        hub: String,
        /// The bootstrap token (prefer the environment variable: a flag shows in the
        /// process list).
        #[arg(long, env = "EDGESHIP_BOOTSTRAP_TOKEN", hide_env_values = true)]
        token: String,
        /// The agent's data folder, as `run` will use it.
        #[arg(long, env = "EDGESHIP_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Print a commented example config file.
    GenerateConfig,
    /// Print this machine's OpenCL devices as JSON (the agent lists them in a child process,
    /// so that their drivers load into the agent only when a model uses them).
    #[command(hide = true)]
    OpenclDevices,
}

const EXAMPLE_CONFIG: &str = r#"# edgeship-agent configuration. Flags given on the command line override these values.

# Unique id of this device: 1-128 of [A-Za-z0-9_.-]. It names the device's MQTT topics.
device_id = "edge-001"

# The broker the hub publishes desired states on.
broker = "mqtt://127.0.0.1:1883"

# State, cached model files and staged models live here.
data_dir = "/var/lib/edgeship-agent"

# Address scoring endpoints bind to; ports come from deployments.
# serve_host = "0.0.0.0"

# MQTT keep-alive, in seconds.
# keep_alive_secs = 15

# Largest MQTT packet sent or accepted; at least 327680 (a 256 KiB model chunk and envelope).
# max_packet_bytes = 1048576

# Runtimes this agent may use, of those that work here (tract; opencl where an OpenCL device
# is installed). Default: all of them.
# runtimes = ["tract", "opencl"]

# Container workloads: "docker" runs them on this host's Docker engine (default: none).
# containers = "docker"
# Where the engine listens (default: DOCKER_HOST, else /var/run/docker.sock).
# docker_socket = "/var/run/docker.sock"

# The hub's director key, which every desired state must be signed with: the key itself
# (ed25519:...) or a file holding it (the hub's <data>/keys/director.pub). Default: the key
# `edgeship-agent enroll` stored in data_dir.
# director_key = "/etc/edgeship/director.pub"
# Without a director key, take unsigned desired states over plaintext MQTT (development only).
# insecure = false

# Run only models signed by one of these keys (`edgeship model keygen` prints one).
# model_signers = ["ed25519:..."]

# Labels that deployments can select this device by.
[labels]
# site = "north"
"#;

/// `opencl-devices`: the devices as JSON on stdout (an empty list without OpenCL).
fn print_opencl_devices() -> ExitCode {
    #[cfg(feature = "opencl")]
    let devices: Vec<edgeship_domain::OpenClDevice> = edgeship_runtime::opencl::discover()
        .map(|devices| devices.into_iter().map(|d| d.info).collect())
        .unwrap_or_default();
    #[cfg(not(feature = "opencl"))]
    let devices: Vec<edgeship_domain::OpenClDevice> = vec![];
    match serde_json::to_string(&devices) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    // SAFETY: first thing in `main`, before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        edgeship_agent::device::prepare_process()
    };
    let cli = Cli::parse();
    if let Command::Serve { .. } = &cli.command {
        init_logging();
    }
    let Command::Run {
        config,
        broker,
        device_id,
        data_dir,
        labels,
        serve_host,
        runtimes,
        containers,
        docker_socket,
        director_key,
        insecure,
        model_signers,
    } = cli.command
    else {
        return match cli.command {
            Command::OpenclDevices => print_opencl_devices(),
            #[cfg(feature = "enroll")]
            Command::Enroll {
                hub,
                token,
                data_dir,
            } => block_on(async move {
                let enrolled = edgeship_agent::enroll::enroll(&hub, &token, &data_dir).await?;
                println!(
                    "enrolled as device {} (broker {}); start it with: edgeship-agent run --data-dir {}",
                    enrolled.device_id,
                    enrolled.broker,
                    data_dir.display()
                );
                Ok(())
            }),
            Command::Serve {
                model,
                port,
                host,
                grpc_port,
                entry,
                name,
                version,
                runtime,
                key,
            } => {
                let runtime = match edgeship_domain::RuntimeKind::parse(&runtime) {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        eprintln!("error: --runtime: {err}");
                        return ExitCode::from(2);
                    }
                };
                let options = edgeship_agent::standalone::StandaloneOptions {
                    model_dir: model,
                    entry,
                    name,
                    version,
                    host,
                    port,
                    grpc_port,
                    runtime,
                    key,
                };
                block_on(serve(options))
            }
            _ => {
                print!("{EXAMPLE_CONFIG}");
                ExitCode::SUCCESS
            }
        };
    };
    init_logging();
    let config = (|| -> anyhow::Result<_> {
        let file = match &config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        let mut label_map = BTreeMap::new();
        for label in &labels {
            let Some((k, v)) = label.split_once('=') else {
                anyhow::bail!("invalid label {label:?}: expected key=value");
            };
            label_map.insert(k.to_owned(), v.to_owned());
        }
        let flags = RawConfig {
            device_id,
            broker,
            data_dir,
            labels: label_map,
            serve_host,
            runtimes,
            containers,
            docker_socket,
            director_key,
            // Only an explicit flag changes the file's choice.
            insecure: insecure.then_some(true),
            model_signers,
            ..RawConfig::default()
        };
        Ok(file.merge(flags).validate()?)
    })();
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    // OpenCL devices are listed by a child process of this binary: the drivers load into this
    // process only when a model runs on one.
    #[cfg(feature = "opencl")]
    if let Ok(program) = std::env::current_exe() {
        edgeship_agent::device::discover_opencl_in_child(program);
    }
    block_on(run(config))
}

/// Logs to stderr. `RUST_LOG` as `level` or `target=level,...`: per-target levels are all an
/// agent needs, and leaving out the regex-based filter keeps the binary smaller.
fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(edgeship_agent::logbook::LogBookLayer)
        .with(filter)
        .init();
}

/// Runs `main_task` on a runtime over every core and turns its outcome into the exit code.
fn block_on(main_task: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    // Measured: a current-thread runtime saved no memory (idle RSS is mostly mapped code)
    // and serialized chunk decoding with the MQTT link, so the agent uses every core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for SIGINT or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

async fn serve(options: edgeship_agent::standalone::StandaloneOptions) -> anyhow::Result<()> {
    let served = edgeship_agent::standalone::start(&options).await?;
    let addr = served.endpoint.addr();
    tracing::info!(model = %served.model_ref, %addr, "serving; POST /score or /v2/models/{}/infer", served.model_ref.split(':').next().unwrap_or_default());
    // A line for scripts and people alike, whatever the log level.
    println!("serving {} on http://{addr}", served.model_ref);
    if let Some(grpc) = served.endpoint.grpc_addr() {
        println!("grpc: {grpc}");
    }
    stop_signal().await?;
    tracing::info!("shutting down");
    served.endpoint.stop().await;
    Ok(())
}

async fn run(config: edgeship_agent::AgentConfig) -> anyhow::Result<()> {
    tracing::info!(device = %config.device_id, broker = %config.broker, data_dir = %config.data_dir.display(), "agent starting");
    let agent = RunningAgent::start(config).await?;
    stop_signal().await?;
    tracing::info!("shutting down");
    agent.stop().await
}
