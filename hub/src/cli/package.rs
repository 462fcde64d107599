//! `edgeship package NAME:VERSION`: a registered model as a container image with no base
//! image — a static `edgeship-agent` in standalone serve mode plus the model's files, and
//! nothing else (no shell, no libc, no Python). Written as an image archive that `docker
//! load` takes (the OCI image layout with Docker's `manifest.json` beside it, as `docker
//! save` writes since Docker 25), loaded into the local engine, or laid out as a Dockerfile
//! build context (Azure ML's `generate_dockerfile`).
//!
//! The image is reproducible: file times, owners and order are fixed, so the same model and
//! agent give the same digests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use edgeship_proto::v1 as pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::names;
use crate::client::{connect, download};

/// The port the packaged agent serves on inside the container.
pub const IMAGE_PORT: u16 = 5001;
/// Where the model's files sit in the image.
const MODEL_DIR: &str = "model";
const AGENT_FILE: &str = "edgeship-agent";

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

/// What a static agent binary is built for, read from its ELF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticBinary {
    /// The OCI architecture name: `amd64`, `arm64`.
    pub architecture: &'static str,
}

/// Checks that `bytes` is a 64-bit little-endian ELF executable with no program interpreter
/// (statically linked: a `scratch` image has no dynamic loader or libc), and for which
/// architecture.
pub fn check_static(bytes: &[u8]) -> Result<StaticBinary, String> {
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    if field(0, 4) != Some(b"\x7fELF") {
        return Err("is not an ELF executable".into());
    }
    if field(4, 2) != Some(&[2, 1]) {
        return Err("is not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |at: usize| field(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let architecture = match u16_at(0x12) {
        Some(0x3e) => "amd64",
        Some(0xb7) => "arm64",
        other => {
            return Err(format!(
                "is built for ELF machine {other:?}, not x86_64 or aarch64"
            ));
        }
    };
    let offset = field(0x20, 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .ok_or("has a truncated ELF header")?;
    let (Some(size), Some(count)) = (u16_at(0x36), u16_at(0x38)) else {
        return Err("has a truncated ELF header".into());
    };
    for index in 0..usize::from(count) {
        let at = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .saturating_add(index * usize::from(size));
        let kind = field(at, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("has a truncated ELF program header table")?;
        // PT_INTERP: the binary asks for a dynamic loader.
        if kind == 3 {
            return Err("is dynamically linked (it names a program interpreter); a scratch image needs a static agent".into());
        }
    }
    Ok(StaticBinary { architecture })
}

/// Where a file of the image's layer comes from: models can be gigabytes, so files are
/// streamed from disk rather than held in memory.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// A file of the image's one layer.
struct LayerFile {
    path: String,
    mode: u32,
    source: Source,
}

impl LayerFile {
    fn size(&self) -> std::io::Result<u64> {
        match &self.source {
            Source::File(path) => Ok(std::fs::metadata(path)?.len()),
            Source::Bytes(bytes) => Ok(bytes.len() as u64),
        }
    }

    fn reader(&self) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        Ok(match &self.source {
            Source::File(path) => Box::new(std::fs::File::open(path)?),
            Source::Bytes(bytes) => Box::new(bytes.as_slice()),
        })
    }
}

/// The files a packaged model's image holds: the agent and the model folder (with its sample
/// input, which the self-test sends).
fn layer_files(agent: &Path, model_dir: &Path, model: &pb::Model) -> Vec<LayerFile> {
    let mut files = vec![LayerFile {
        path: AGENT_FILE.into(),
        mode: 0o755,
        source: Source::File(agent.to_owned()),
    }];
    for file in &model.files {
        files.push(LayerFile {
            path: format!("{MODEL_DIR}/{}", file.path),
            mode: 0o644,
            source: Source::File(model_dir.join(&file.path)),
        });
    }
    // The registered sample, unless the model ships a file of that name itself.
    let sample_path = format!("{MODEL_DIR}/sample_input.json");
    if !model.sample_input.is_empty() && !files.iter().any(|f| f.path == sample_path) {
        files.push(LayerFile {
            path: sample_path,
            mode: 0o644,
            source: Source::Bytes(model.sample_input.clone().into_bytes()),
        });
    }
    files
}

/// Passes bytes through to `inner`, hashing and counting them.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A tar header with fixed times and owners, so that the same files give the same bytes.
fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// The layer: an uncompressed tar of `files` and the folders above them, in a fixed order,
/// written to `out`. Returns its sha256 (hex) and size.
fn write_layer(files: &[LayerFile], out: impl Write) -> anyhow::Result<(String, u64)> {
    let mut builder = tar::Builder::new(Hashing {
        inner: out,
        hasher: Sha256::new(),
        written: 0,
    });
    let mut folders: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let parts: Vec<&str> = f.path.split('/').collect();
            (1..parts.len()).map(move |n| parts[..n].join("/"))
        })
        .collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        let mut header = fixed_header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut header, format!("{folder}/"), std::io::empty())?;
    }
    let mut sorted: Vec<&LayerFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for file in sorted {
        let size = file
            .size()
            .with_context(|| format!("reading {}", file.path))?;
        let mut header = fixed_header(tar::EntryType::Regular, file.mode, size);
        let reader = file
            .reader()
            .with_context(|| format!("reading {}", file.path))?;
        builder.append_data(&mut header, &file.path, reader)?;
    }
    let mut hashing = builder.into_inner()?;
    hashing.flush()?;
    Ok((hex::encode(hashing.hasher.finalize()), hashing.written))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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

/// The image's layer, written to a file beside the download, and its digest and size.
struct Layer {
    path: PathBuf,
    digest: String,
    size: u64,
}

/// The image archive, written to `out`: the OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/…`) with Docker's `manifest.json` naming the same blobs, so that every
/// `docker load` (and OCI tools) take it. The layer is streamed from its file.
fn write_image(
    layer: &Layer,
    binary: StaticBinary,
    command: &[String],
    tag: &str,
    out: impl Write,
) -> anyhow::Result<()> {
    let layer_digest = &layer.digest;
    let config = serde_json::to_vec(&json!({
        "architecture": binary.architecture,
        "os": "linux",
        "config": {
            "Entrypoint": command,
            "ExposedPorts": { format!("{IMAGE_PORT}/tcp"): {} },
            "Labels": { "org.opencontainers.image.title": tag, "dev.edgeship.packaged": "true" },
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "edgeship package" }],
    }))?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.size,
        }],
    }))?;
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": tag, "org.opencontainers.image.ref.name": tag },
        }],
    }))?;
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [tag],
        "Layers": [format!("blobs/sha256/{layer_digest}")],
    }]))?;
    let mut builder = tar::Builder::new(out);
    for folder in ["blobs/", "blobs/sha256/"] {
        let mut header = fixed_header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut header, folder, std::io::empty())?;
    }
    let small: [(String, &[u8]); 5] = [
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
        ),
        ("index.json".into(), &index),
        ("manifest.json".into(), &docker_manifest),
        (format!("blobs/sha256/{config_digest}"), &config),
        (format!("blobs/sha256/{manifest_digest}"), &manifest),
    ];
    for (path, bytes) in small {
        let mut header = fixed_header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        builder.append_data(&mut header, path, bytes)?;
    }
    let mut header = fixed_header(tar::EntryType::Regular, 0o644, layer.size);
    let file = std::fs::File::open(&layer.path).context("reading the layer back")?;
    builder.append_data(&mut header, format!("blobs/sha256/{layer_digest}"), file)?;
    builder.into_inner()?.flush()?;
    Ok(())
}

/// A build context: the Dockerfile, the agent and the model folder.
fn write_context(dir: &Path, files: &[LayerFile], command: &[String]) -> anyhow::Result<()> {
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut target =
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        std::io::copy(&mut file.reader()?, &mut target)
            .with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
    }
    let dockerfile = format!(
        "# Written by `edgeship package`: a static edgeship-agent serving the model, no base image.\n\
         FROM scratch\n\
         COPY {AGENT_FILE} /{AGENT_FILE}\n\
         COPY {MODEL_DIR}/ /{MODEL_DIR}/\n\
         EXPOSE {IMAGE_PORT}\n\
         ENTRYPOINT {}\n",
        serde_json::to_string(command)?
    );
    std::fs::write(dir.join("Dockerfile"), dockerfile)?;
    Ok(())
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
    let agent = std::fs::read(&agent_path)
        .with_context(|| format!("reading the agent {}", agent_path.display()))?;
    let binary = check_static(&agent).map_err(|why| {
        anyhow::anyhow!(
            "{} {why}; build one with `cargo build --profile image --target x86_64-unknown-linux-musl -p edgeship-agent --no-default-features --features tract` and pass it with --agent",
            agent_path.display()
        )
    })?;
    drop(agent);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16, interpreter: bool) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x40 + 2 * 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        // PT_LOAD, then PT_INTERP or PT_NOTE.
        bytes[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
        let second: u32 = if interpreter { 3 } else { 4 };
        bytes[0x40 + 56..0x40 + 60].copy_from_slice(&second.to_le_bytes());
        bytes
    }

    #[test]
    fn only_a_static_elf_executable_is_packaged() {
        assert_eq!(
            check_static(&elf(0x3e, false)),
            Ok(StaticBinary {
                architecture: "amd64"
            })
        );
        assert_eq!(
            check_static(&elf(0xb7, false)),
            Ok(StaticBinary {
                architecture: "arm64"
            })
        );
        let dynamic = check_static(&elf(0x3e, true)).expect_err("interpreter");
        assert!(dynamic.contains("dynamically linked"), "{dynamic}");
        assert!(
            check_static(b"#!/bin/sh\n")
                .expect_err("script")
                .contains("not an ELF")
        );
        assert!(
            check_static(&elf(0x28, false))
                .expect_err("arm32")
                .contains("machine")
        );
        let mut truncated = elf(0x3e, false);
        truncated.truncate(0x40 + 10);
        assert!(
            check_static(&truncated)
                .expect_err("cut")
                .contains("truncated")
        );
        // The test binary itself is dynamically linked.
        let this = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert!(check_static(&this).is_err());
    }

    #[test]
    fn the_same_files_make_the_same_layer_and_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let on_disk = dir.path().join("b.onnx");
        std::fs::write(&on_disk, b"b").expect("write");
        let files = || {
            vec![
                LayerFile {
                    path: "model/b.onnx".into(),
                    mode: 0o644,
                    source: Source::File(on_disk.clone()),
                },
                LayerFile {
                    path: AGENT_FILE.into(),
                    mode: 0o755,
                    source: Source::Bytes(b"agent".to_vec()),
                },
                LayerFile {
                    path: "model/sub/a.bin".into(),
                    mode: 0o644,
                    source: Source::Bytes(b"a".to_vec()),
                },
            ]
        };
        let mut first = Vec::new();
        let (digest, size) = write_layer(&files(), &mut first).expect("layer");
        let mut second = Vec::new();
        assert_eq!(
            write_layer(&files(), &mut second).expect("again"),
            (digest.clone(), size)
        );
        assert_eq!(first, second);
        assert_eq!(
            (sha256_hex(&first), first.len() as u64),
            (digest.clone(), size)
        );
        let mut archive = tar::Archive::new(first.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "model/",
                "model/sub/",
                AGENT_FILE,
                "model/b.onnx",
                "model/sub/a.bin"
            ]
        );
        let layer_path = dir.path().join("layer.tar");
        std::fs::write(&layer_path, &first).expect("layer file");
        let layer = Layer {
            path: layer_path,
            digest: digest.clone(),
            size,
        };
        let binary = StaticBinary {
            architecture: "amd64",
        };
        let command = vec!["/edgeship-agent".to_owned(), "serve".to_owned()];
        let image = |out: &mut Vec<u8>| {
            write_image(&layer, binary, &command, "edgeship/m:1", out).expect("image");
        };
        let (mut one, mut two) = (Vec::new(), Vec::new());
        image(&mut one);
        image(&mut two);
        assert_eq!(one, two);
        let mut archive = tar::Archive::new(one.as_slice());
        let mut manifest = None;
        let mut layer_copy = None;
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read");
            if path == "manifest.json" {
                manifest = Some(bytes);
            } else if path == format!("blobs/sha256/{digest}") {
                layer_copy = Some(bytes);
            }
        }
        assert_eq!(layer_copy.as_deref(), Some(first.as_slice()));
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest.expect("manifest.json")).expect("json");
        assert_eq!(manifest[0]["RepoTags"][0], "edgeship/m:1");
        assert_eq!(manifest[0]["Layers"][0], format!("blobs/sha256/{digest}"));
    }
}
