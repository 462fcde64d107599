//! Image artifacts: a container image registered as a model version (framework `oci-image`)
//! whose one file is an image archive in `docker save`'s layout, as `docker save` and
//! `edgeship package --output` write it. Registration reads the archive's `manifest.json`,
//! checks the image's config against the digest its name carries, and records the image id
//! and reference as reserved properties, which desired states hand to agents.
//!
//! Only the archive's index is read: the tar headers are walked with seeks over the data, and
//! of the data only `manifest.json` and the config (both small) are read, so an image of
//! gigabytes costs a registration no second pass over its layers. (`docker load` on the device
//! checks the layers against the config's `diff_ids`.)

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::upload::StagedFile;
use super::validate::MAX_PROPERTIES;
use super::{Error, ModelVersion, NewModel};

/// The framework of image artifacts.
pub const FRAMEWORK: &str = "oci-image";
/// Property recording the image id, `sha256:<hex>` (the digest of the image's config).
pub const ID_PROPERTY: &str = "image.id";
/// Property recording the image's reference, the archive's first tag (`scorer:1`).
pub const REFERENCE_PROPERTY: &str = "image.reference";
/// Properties the hub records itself; users may neither set nor remove them.
pub const RESERVED_PROPERTIES: [&str; 2] = [ID_PROPERTY, REFERENCE_PROPERTY];

/// `manifest.json` above this is not a manifest of one image.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Image configs are a few KiB; a long history makes them larger, not megabytes.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// What registration learns from an image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:<hex>`: the digest of the image's config, which Docker calls the image id.
    pub id: String,
    /// The archive's first tag (`RepoTags[0]`), e.g. `diabetes-scorer:1`.
    pub reference: String,
}

/// Why a file is not a usable image archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No image archive at all (not a tar, or no `manifest.json`): a `.tar` registered without
    /// a framework is then just a file (`custom`).
    #[error("{0}")]
    NotAnImage(String),
    /// An image archive with something wrong in it: refused whatever the framework.
    #[error("{0}")]
    Invalid(String),
}

impl ModelVersion {
    /// The recorded image of an image artifact; `None` for any other version.
    pub fn image(&self) -> Option<ImageInfo> {
        if self.framework != FRAMEWORK {
            return None;
        }
        Some(ImageInfo {
            id: self.properties.get(ID_PROPERTY)?.clone(),
            reference: self.properties.get(REFERENCE_PROPERTY)?.clone(),
        })
    }
}

/// Decides whether a registration is an image artifact and, if so, records its image: with
/// framework `oci-image` its one file must be a valid archive; without a framework, one file
/// ending in `.tar` that holds a `manifest.json` is taken for one (and must then be valid).
/// Runs before any blob is stored, so a refused archive leaves nothing behind.
pub(super) fn classify(model: &mut NewModel, files: &[StagedFile]) -> Result<(), Error> {
    let explicit = model.framework == FRAMEWORK;
    let candidate = model.framework.is_empty()
        && matches!(files, [file] if file.path.to_ascii_lowercase().ends_with(".tar"));
    if !explicit && !candidate {
        return Ok(());
    }
    let [file] = files else {
        return Err(Error::invalid(format!(
            "an {FRAMEWORK} artifact is one file, the image archive (`docker save` output), not {}",
            files.len()
        )));
    };
    let info = match inspect(&file.location) {
        Ok(info) => info,
        Err(ImageError::NotAnImage(_)) if !explicit => return Ok(()),
        Err(err) => {
            return Err(Error::invalid(format!(
                "{} is not a valid image archive: {err}",
                file.path
            )));
        }
    };
    if model.properties.len() + RESERVED_PROPERTIES.len() > MAX_PROPERTIES {
        return Err(Error::invalid(format!(
            "an image artifact records {} properties of its own ({}): give at most {}",
            RESERVED_PROPERTIES.len(),
            RESERVED_PROPERTIES.join(", "),
            MAX_PROPERTIES - RESERVED_PROPERTIES.len()
        )));
    }
    model.framework = FRAMEWORK.to_owned();
    model.properties.insert(ID_PROPERTY.to_owned(), info.id);
    model
        .properties
        .insert(REFERENCE_PROPERTY.to_owned(), info.reference);
    Ok(())
}

/// One image of `manifest.json` (Docker's archive index); other keys are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    #[serde(default)]
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// A file of the archive: where its data starts in the archive file, and its size.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
    regular: bool,
}

/// Reads the image archive at `path`: its one image's id and reference.
pub fn inspect(path: &Path) -> Result<ImageInfo, ImageError> {
    let io = |err: std::io::Error| ImageError::NotAnImage(format!("cannot be read: {err}"));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    if file.read(&mut magic).map_err(io)? == 2 && magic == [0x1f, 0x8b] {
        return Err(ImageError::NotAnImage(
            "it is gzip-compressed; register the uncompressed archive (`docker save -o image.tar`)"
                .into(),
        ));
    }
    file.rewind().map_err(io)?;
    let members = index(&mut file)?;
    let Some(manifest) = members.get("manifest.json").filter(|m| m.regular) else {
        return Err(ImageError::NotAnImage(
            "it has no manifest.json at its root (write it with `docker save` or `edgeship package --output`)".into(),
        ));
    };
    if manifest.size > MAX_MANIFEST_BYTES {
        return Err(ImageError::Invalid(format!(
            "its manifest.json is {} bytes, more than an index of one image takes",
            manifest.size
        )));
    }
    let bytes = read_member(&mut file, *manifest)?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&bytes).map_err(|err| {
        ImageError::Invalid(format!(
            "its manifest.json is not Docker's image index (a list of {{Config, RepoTags, Layers}}): {err}"
        ))
    })?;
    let image = match entries.as_slice() {
        [image] => image,
        [] => {
            return Err(ImageError::Invalid(
                "its manifest.json lists no image".into(),
            ));
        }
        several => {
            return Err(ImageError::Invalid(format!(
                "it holds {} images; an artifact is one image (`docker save` one NAME:TAG)",
                several.len()
            )));
        }
    };
    let reference = match image.repo_tags.as_deref() {
        Some([first, ..]) => first.clone(),
        _ => {
            return Err(ImageError::Invalid(
                "its image has no tag (RepoTags is empty): save it by name (`docker save NAME:TAG`) so that devices can run it by that name".into(),
            ));
        }
    };
    if reference.is_empty()
        || reference.len() > 255
        || reference
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ImageError::Invalid(format!(
            "its tag {reference:?} is not an image reference"
        )));
    }
    let config_path = normalize(&image.config);
    if config_path.is_empty() {
        return Err(ImageError::Invalid(
            "its manifest.json names no Config".into(),
        ));
    }
    let digest = config_digest(config_path).ok_or_else(|| {
        ImageError::Invalid(format!(
            "its config {config_path:?} does not carry its sha256 in its name (blobs/sha256/<hex> or <hex>.json)"
        ))
    })?;
    let config = members
        .get(config_path)
        .filter(|m| m.regular)
        .ok_or_else(|| {
            ImageError::Invalid(format!(
                "its config {config_path} (named in manifest.json) is not in the archive"
            ))
        })?;
    if config.size > MAX_CONFIG_BYTES {
        return Err(ImageError::Invalid(format!(
            "its config {config_path} is {} bytes; an image config is a small JSON document",
            config.size
        )));
    }
    let actual = hex::encode(Sha256::digest(read_member(&mut file, *config)?));
    if actual != digest {
        return Err(ImageError::Invalid(format!(
            "its config {config_path} does not match the digest in its name (its sha256 is {actual}): the archive is damaged"
        )));
    }
    if let Some(missing) = image
        .layers
        .iter()
        .map(|layer| normalize(layer))
        .find(|layer| !members.contains_key(*layer))
    {
        return Err(ImageError::Invalid(format!(
            "its layer {missing} (named in manifest.json) is not in the archive"
        )));
    }
    Ok(ImageInfo {
        id: format!("sha256:{digest}"),
        reference,
    })
}

/// Every member of the archive by path, walking the headers and seeking over the data.
fn index(file: &mut std::fs::File) -> Result<HashMap<String, Member>, ImageError> {
    let not_tar =
        |err: std::io::Error| ImageError::NotAnImage(format!("it is not a tar archive ({err})"));
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let entry = entry.map_err(not_tar)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let path = entry.path().map_err(not_tar)?;
        let path = normalize(&path.to_string_lossy()).to_owned();
        // A later member of the same name replaces an earlier one, as on extraction.
        members.insert(
            path,
            Member {
                offset: entry.raw_file_position(),
                size: entry.size(),
                regular: kind.is_file(),
            },
        );
    }
    Ok(members)
}

fn read_member(file: &mut std::fs::File, member: Member) -> Result<Vec<u8>, ImageError> {
    let io = |err: std::io::Error| ImageError::Invalid(format!("it cannot be read: {err}"));
    file.seek(SeekFrom::Start(member.offset)).map_err(io)?;
    let mut bytes = Vec::with_capacity(usize::try_from(member.size).unwrap_or(0));
    file.take(member.size).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 != member.size {
        return Err(ImageError::Invalid("it is truncated".into()));
    }
    Ok(bytes)
}

/// Archive paths as `docker save` writes them, whether or not a tool prefixed `./`.
fn normalize(path: &str) -> &str {
    path.trim_start_matches("./")
}

/// The hex digest a config's name carries: `blobs/sha256/<hex>` (OCI layout, Docker 25 and
/// later, `edgeship package`) or `<hex>.json` (older Docker).
fn config_digest(path: &str) -> Option<&str> {
    let hex = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json").filter(|p| !p.contains('/')))?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
    .then_some(hex)
}

#[cfg(test)]
mod tests;
