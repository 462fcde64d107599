//! `edgeship package NAME:VERSION`: a registered model as a container image with no base
//! image — a static `edgeship-agent` in standalone serve mode plus the model's files, and
//! nothing else (no shell, no libc, no Python). Written as an image archive that `docker
//! load` takes (the OCI image layout with Docker's `manifest.json` beside it, as `docker
//! save` writes since Docker 25), loaded into the local engine, or laid out as a Dockerfile
//! build context (Azure ML's `generate_dockerfile`).
//!
//! The image is reproducible: file times, owners and order are fixed, so the same model and
//! agent give the same digests.

mod elf;
mod image;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use edgeship_proto::v1 as pb;

use self::elf::{StaticBinary, check_static};
use self::image::{Layer, layer_files, write_context, write_image, write_layer};
use super::names;
use crate::client::{connect, download};

/// The port the packaged agent serves on inside the container.
pub const IMAGE_PORT: u16 = 5001;
/// Where the model's files sit in the image.
const MODEL_DIR: &str = "model";
const AGENT_FILE: &str = "edgeship-agent";
/// How much of the agent binary is read to check it: its ELF and program headers (a few
/// hundred bytes in practice) with room to spare.
const HEADER_BYTES: u64 = 64 * 1024;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("into").required(true).args(["output", "load", "dockerfile"])))]
pub struct PackageArgs {
    /// NAME:VERSION (or NAME:latest).
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// Write the image archive here (`docker load -i FILE` takes it).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Load the image into the local Docker engine.
    #[arg(long)]
    pub load: bool,
    /// Write a build context (Dockerfile, agent, model files) into this folder.
    #[arg(long, value_name = "DIR")]
    pub dockerfile: Option<PathBuf>,
    /// The image's name and tag (default: edgeship/NAME:VERSION).
    #[arg(long)]
    pub tag: Option<String>,
    /// A statically linked `edgeship-agent` to put in the image (default: the one beside
    /// this `edgeship`). Build one with `cargo build --profile image --target
    /// x86_64-unknown-linux-musl -p edgeship-agent --no-default-features --features tract`
    /// (with the musl target and `musl-tools` installed).
    #[arg(long, value_name = "FILE")]
    pub agent: Option<PathBuf>,
}

/// The command the image runs: the agent serving `/model`.
fn entrypoint(model: &pb::Model, entry: &str) -> Vec<String> {
    [
        &format!("/{AGENT_FILE}"),
        "serve",
        "--model",
        &format!("/{MODEL_DIR}"),
        "--entry",
        entry,
        "--name",
        &model.model_id,
        "--version",
        &model.version.to_string(),
        "--port",
        &IMAGE_PORT.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The agent to package: `given`, else `edgeship-agent` beside this program.
fn agent_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => {
            let exe = std::env::current_exe().context("finding this program")?;
            Ok(exe.with_file_name(AGENT_FILE))
        }
    }
}

pub async fn run(hub: &str, args: PackageArgs) -> anyhow::Result<()> {
    let agent_path = agent_path(args.agent)?;
    // The ELF header and program headers sit at the start of the file; the whole binary is
    // streamed into the layer later.
    let mut head = Vec::new();
    std::fs::File::open(&agent_path)
        .and_then(|file| file.take(HEADER_BYTES).read_to_end(&mut head))
        .with_context(|| format!("reading the agent {}", agent_path.display()))?;
    let binary = check_static(&head).map_err(|why| {
        anyhow::anyhow!(
            "{} {why}; build one with `cargo build --profile image --target x86_64-unknown-linux-musl -p edgeship-agent --no-default-features --features tract` and pass it with --agent",
            agent_path.display()
        )
    })?;
    let reference = names::model_version(&args.model)?;
    let mut client = connect(hub).await?;
    let staging = tempfile::tempdir().context("creating a temporary folder")?;
    let model = download(
        &mut client,
        &reference.resource_name(),
        staging.path(),
        false,
    )
    .await?;
    let entry = model
        .files
        .iter()
        .find(|f| f.onnx.is_some())
        .map(|f| f.path.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}:{} has no ONNX file to serve",
                model.model_id,
                model.version
            )
        })?;
    let tag = args
        .tag
        .unwrap_or_else(|| format!("edgeship/{}:{}", model.model_id, model.version));
    let command = entrypoint(&model, &entry);
    let files = layer_files(&agent_path, staging.path(), &model);
    if let Some(dir) = &args.dockerfile {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_context(dir, &files, &command)?;
        println!(
            "wrote a build context for {tag} to {} (docker build -t {tag} {})",
            dir.display(),
            dir.display()
        );
        return Ok(());
    }
    // The layer goes to a file first: its digest names it in the archive's metadata, which
    // comes before it.
    let layer_path = staging.path().join("layer.tar");
    let layer_file = std::fs::File::create(&layer_path).context("writing the layer")?;
    let (digest, size) = write_layer(&files, std::io::BufWriter::new(layer_file))?;
    let layer = Layer {
        path: layer_path,
        digest,
        size,
    };
    if let Some(path) = &args.output {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        write_image(
            &layer,
            binary,
            &command,
            &tag,
            std::io::BufWriter::new(file),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        let bytes = std::fs::metadata(path)?.len();
        println!(
            "wrote {tag} ({}, {bytes} bytes) to {} (docker load -i {})",
            binary.architecture,
            path.display(),
            path.display()
        );
    }
    if args.load {
        load_into_docker(&layer, binary, &command, &tag)?;
        println!(
            "loaded {tag} into the local Docker engine ({} byte layer)",
            layer.size
        );
    }
    Ok(())
}

/// `docker load` of the image, streamed to its standard input.
fn load_into_docker(
    layer: &Layer,
    binary: StaticBinary,
    command: &[String],
    tag: &str,
) -> anyhow::Result<()> {
    let mut child = Command::new("docker")
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `docker load` (is the Docker CLI installed?)")?;
    let sent = match child.stdin.take() {
        Some(stdin) => write_image(layer, binary, command, tag, stdin),
        None => Ok(()),
    };
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "docker load failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    sent.context("sending the image to `docker load`")
}
