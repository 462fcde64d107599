//! The image itself: one layer (the agent and the model's files, as a reproducible tar) and
//! the archive around it (the OCI image layout with Docker's `manifest.json`). Files are
//! streamed from disk into both, so a model of gigabytes is never held in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use edgeship_proto::v1 as pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::elf::StaticBinary;
use super::{AGENT_FILE, IMAGE_PORT, MODEL_DIR};

/// Where a file of the image's layer comes from: models can be gigabytes, so files are
/// streamed from disk rather than held in memory.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// A file of the image's one layer.
pub(super) struct LayerFile {
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
pub(super) fn layer_files(agent: &Path, model_dir: &Path, model: &pb::Model) -> Vec<LayerFile> {
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
pub(super) fn write_layer(files: &[LayerFile], out: impl Write) -> anyhow::Result<(String, u64)> {
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

/// The image's layer, written to a file beside the download, and its digest and size.
pub(super) struct Layer {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// The image archive, written to `out`: the OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/…`) with Docker's `manifest.json` naming the same blobs, so that every
/// `docker load` (and OCI tools) take it. The layer is streamed from its file.
pub(super) fn write_image(
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
pub(super) fn write_context(
    dir: &Path,
    files: &[LayerFile],
    command: &[String],
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // The registry takes the archive as an image artifact, as `docker load` does.
        let archive_path = dir.path().join("image.tar");
        std::fs::write(&archive_path, &one).expect("archive file");
        let image = crate::registry::image::inspect(&archive_path).expect("an image archive");
        assert_eq!(image.reference, "edgeship/m:1");
        assert_eq!(
            Some(image.id.replace("sha256:", "blobs/sha256/").as_str()),
            manifest[0]["Config"].as_str()
        );
    }
}
