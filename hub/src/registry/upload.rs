//! A registration in progress: files streamed to a private staging folder with their layout,
//! hashed as they arrive, checked against declared sizes and limits. Dropping an unfinished
//! upload deletes its folder, so an aborted stream leaves nothing behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Error, Kind, Limits, ModelFile, NewModel, validate};

/// A staged file, complete and fsynced.
#[derive(Debug)]
pub struct StagedFile {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub location: PathBuf,
}

impl StagedFile {
    /// The file as a version records it (no ONNX signature yet).
    pub fn record(&self) -> ModelFile {
        ModelFile {
            path: self.path.clone(),
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            onnx: None,
        }
    }
}

#[derive(Debug)]
struct FileInProgress {
    path: String,
    declared_size: u64,
    expected_sha256: Option<String>,
    writer: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
}

/// Removes the staging folder when dropped, whether the upload committed or not.
#[derive(Debug)]
pub struct StagingDir(PathBuf);

impl StagingDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %err, "could not remove staging folder");
        }
    }
}

/// A model whose files are all staged; ready for [`Registry::commit`](super::Registry::commit).
#[derive(Debug)]
pub struct StagedModel {
    pub model: NewModel,
    pub files: Vec<StagedFile>,
    pub dir: StagingDir,
}

#[derive(Debug)]
pub struct Upload {
    kind: Kind,
    model: NewModel,
    dir: StagingDir,
    limits: Limits,
    files: Vec<StagedFile>,
    current: Option<FileInProgress>,
    total_bytes: u64,
}

static UPLOAD_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Upload {
    pub(super) async fn begin(
        kind: Kind,
        mut model: NewModel,
        staging_root: PathBuf,
        limits: Limits,
    ) -> Result<Self, Error> {
        validate::new_version(kind, &mut model)?;
        let unique = format!(
            "upload-{}-{}",
            std::process::id(),
            UPLOAD_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = staging_root.join(unique);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Error::io("creating a staging folder"))?;
        Ok(Self {
            kind,
            model,
            dir: StagingDir(dir),
            limits,
            files: Vec::new(),
            current: None,
            total_bytes: 0,
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model.model_id
    }

    /// Starts the next file; the previous one must be complete.
    pub async fn start_file(
        &mut self,
        path: String,
        declared_size: u64,
        expected_sha256: Option<String>,
    ) -> Result<(), Error> {
        self.finish_current().await?;
        validate::file_path(&path)?;
        if self.files.len() >= self.limits.max_files {
            return Err(match self.kind {
                Kind::Model => Error::invalid(format!(
                    "a model may have at most {} files",
                    self.limits.max_files
                )),
                Kind::Module => Error::invalid(format!(
                    "a module is one .wasm file; {path:?} is a second one"
                )),
            });
        }
        if self.files.iter().any(|f| f.path == path) {
            return Err(Error::invalid(format!("file path {path:?} is given twice")));
        }
        if let Some(sha) = &expected_sha256
            && (sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(Error::invalid(format!(
                "sha256 of {path:?} must be 64 hex digits, got {sha:?}"
            )));
        }
        if self.total_bytes.saturating_add(declared_size) > self.limits.max_model_bytes {
            return Err(self.too_large());
        }
        let location = self.dir.0.join(&path);
        if let Some(parent) = location.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|err| clash_or_io(self.kind, &path, err))?;
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&location)
            .await
            .map_err(|err| clash_or_io(self.kind, &path, err))?;
        self.current = Some(FileInProgress {
            path,
            declared_size,
            expected_sha256: expected_sha256.map(|s| s.to_ascii_lowercase()),
            writer: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            written: 0,
        });
        Ok(())
    }

    pub async fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let Some(file) = self.current.as_mut() else {
            return Err(Error::invalid(
                "file data arrived before any file header; send a file header first",
            ));
        };
        let len = chunk.len() as u64;
        if file.written + len > file.declared_size {
            return Err(Error::invalid(format!(
                "{} is larger than its declared size of {} bytes",
                file.path, file.declared_size
            )));
        }
        file.hasher.update(chunk);
        file.writer
            .write_all(chunk)
            .await
            .map_err(Error::io(format!("writing {}", file.path)))?;
        file.written += len;
        self.total_bytes += len;
        Ok(())
    }

    /// Completes the upload: every file whole, the count as the client says.
    pub async fn finish(mut self, file_count: u32) -> Result<StagedModel, Error> {
        self.finish_current().await?;
        if self.files.is_empty() {
            return Err(Error::invalid(format!(
                "a {} needs at least one file",
                self.kind.noun()
            )));
        }
        if self.files.len() != file_count as usize {
            return Err(Error::invalid(format!(
                "the commit announces {file_count} files but {} arrived",
                self.files.len()
            )));
        }
        validate::file_paths(self.files.iter().map(|f| f.path.as_str()))?;
        Ok(StagedModel {
            model: self.model,
            files: self.files,
            dir: self.dir,
        })
    }

    async fn finish_current(&mut self) -> Result<(), Error> {
        let Some(mut file) = self.current.take() else {
            return Ok(());
        };
        if file.written != file.declared_size {
            return Err(Error::invalid(format!(
                "{} is truncated: {} of its {} bytes arrived",
                file.path, file.written, file.declared_size
            )));
        }
        let sha256 = hex::encode(file.hasher.finalize());
        if let Some(expected) = &file.expected_sha256
            && *expected != sha256
        {
            return Err(Error::invalid(format!(
                "{} does not match its declared sha256 (expected {expected}, got {sha256})",
                file.path
            )));
        }
        let context = format!("writing {}", file.path);
        file.writer.flush().await.map_err(Error::io(&context))?;
        let inner = file.writer.into_inner();
        inner.sync_all().await.map_err(Error::io(&context))?;
        let location = self.dir.0.join(&file.path);
        self.files.push(StagedFile {
            path: file.path,
            size_bytes: file.written,
            sha256,
            location,
        });
        Ok(())
    }

    fn too_large(&self) -> Error {
        Error::invalid(format!(
            "{} exceeds the hub's size limit of {} bytes{}",
            self.kind.noun(),
            self.limits.max_model_bytes,
            mebibytes(self.limits.max_model_bytes)
        ))
    }
}

/// A file whose path runs through another file (`a` then `a/b`) fails with a file system
/// error; say what is actually wrong.
fn clash_or_io(kind: Kind, path: &str, err: std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::AlreadyExists
        | std::io::ErrorKind::NotADirectory
        | std::io::ErrorKind::IsADirectory => Error::invalid(format!(
            "file path {path:?} clashes with another file of the {} (a path used both as a file and as a folder)",
            kind.noun()
        )),
        _ => Error::Io {
            context: format!("staging {path}"),
            source: err,
        },
    }
}

/// ` (64 MiB)` for a whole number of MiB: a limit as people set it.
fn mebibytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        0 => String::new(),
        n if n % MIB == 0 => format!(" ({} MiB)", n / MIB),
        _ => String::new(),
    }
}
