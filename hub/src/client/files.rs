//! Registrations and downloads, of models and entry modules alike: the files of a version
//! stream to the hub in chunks (memory use is a few chunks, whatever the size), and come back
//! written as `<name>.partial`, verified (size and sha256) and only then renamed into place.
//! Each registry's messages meet these through `api/streams.rs`; the rules live here once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edgeship_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{ModuleClient, RegistryClient, rpc_error};
use crate::api::streams::{self, Download, DownloadMessage, UploadMessage};
use crate::registry::{NewModel, validate};

/// File data per upload message. The hub accepts chunks of any size up to tonic's default
/// 4 MiB message limit; 1 MiB stays well under it (with the envelope) while keeping the
/// per-message overhead negligible, and bounds the client's memory to a few chunks.
const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

/// The hub stopped reading the upload stream (it refused the registration).
#[derive(Debug, thiserror::Error)]
#[error("the hub closed the upload")]
struct HubClosedUpload;

/// A file of the model on the local disk, and its path inside the model.
struct LocalFile {
    model_path: String,
    disk_path: PathBuf,
    size: u64,
}

/// Lists a file, or every file below a folder (sorted, `/`-separated relative paths).
fn collect_files(root: &Path) -> anyhow::Result<Vec<LocalFile>> {
    let metadata =
        std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    if metadata.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", root.display()))?;
        return Ok(vec![LocalFile {
            model_path: name.to_owned(),
            disk_path: root.to_owned(),
            size: metadata.len(),
        }]);
    }
    let mut files = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let disk_path = entry.path();
            let is_link = entry.file_type()?.is_symlink();
            let metadata = std::fs::metadata(&disk_path)
                .with_context(|| format!("cannot read {}", disk_path.display()))?;
            if metadata.is_dir() {
                // Linked files are uploaded (model caches often link blobs); linked folders
                // are not followed, since they can loop or reach far outside the model.
                if is_link {
                    bail!(
                        "{} links to a folder; copy it into the model folder instead",
                        disk_path.display()
                    );
                }
                pending.push(disk_path);
                continue;
            }
            let relative = disk_path.strip_prefix(root)?;
            let parts: Option<Vec<&str>> = relative
                .components()
                .map(|c| c.as_os_str().to_str())
                .collect();
            let model_path = parts
                .with_context(|| format!("{} is not valid UTF-8", disk_path.display()))?
                .join("/");
            files.push(LocalFile {
                model_path,
                disk_path,
                size: metadata.len(),
            });
        }
    }
    if files.is_empty() {
        bail!("{} contains no files", root.display());
    }
    files.sort_by(|a, b| a.model_path.cmp(&b.model_path));
    Ok(files)
}

/// A byte-count bar on a terminal (hidden otherwise), for uploads and downloads.
pub(super) fn progress_bar(total: u64, verb: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(verb.to_owned());
    bar
}

/// Registers `path` (a file, or a folder whose files and layout make up the model) as the
/// next version of a model. Returns the version as the hub describes it.
pub async fn register(
    client: &mut RegistryClient,
    model: NewModel,
    path: &Path,
) -> anyhow::Result<pb::Model> {
    let upload = Upload::<pb::RegisterModelRequest>::start(collect_files(path)?, model.into());
    let response = client.register_model(upload.requests).await;
    upload.producer.finish(response).await
}

/// Registers one `.wasm` file as the next version of an entry module; the hub compiles it and
/// refuses anything but an entry-module component, with the reason.
pub async fn register_module(
    client: &mut ModuleClient,
    module: NewModel,
    path: &Path,
) -> anyhow::Result<pb::Module> {
    let files = collect_files(path)?;
    if files.len() != 1 || files[0].disk_path != path {
        bail!("{} is a folder: a module is one .wasm file", path.display());
    }
    let upload = Upload::<pb::RegisterModuleRequest>::start(files, module.into());
    let response = client.register_module(upload.requests).await;
    upload.producer.finish(response).await
}

/// A registration on its way: the request stream for the RPC, and the task filling it.
struct Upload<R> {
    requests: ReceiverStream<R>,
    producer: Producer,
}

struct Producer {
    task: JoinHandle<anyhow::Result<()>>,
    bar: ProgressBar,
}

impl<R: UploadMessage + Send + 'static> Upload<R>
where
    R::Metadata: Send + 'static,
{
    /// Sends `metadata`, then each file as a header and chunks, then the commit.
    fn start(files: Vec<LocalFile>, metadata: R::Metadata) -> Self {
        let total: u64 = files.iter().map(|f| f.size).sum();
        let bar = progress_bar(total, "uploading");
        let (sender, receiver) = mpsc::channel::<R>(4);
        let producer_bar = bar.clone();
        let task = tokio::spawn(async move {
            let send = |part| {
                let sender = sender.clone();
                async move {
                    sender
                        .send(R::wrap(part))
                        .await
                        .map_err(|_| anyhow::Error::new(HubClosedUpload))
                }
            };
            send(streams::Upload::Metadata(metadata)).await?;
            for file in &files {
                let mut reader = tokio::fs::File::open(&file.disk_path)
                    .await
                    .with_context(|| format!("opening {}", file.disk_path.display()))?;
                send(streams::Upload::File(pb::FileHeader {
                    path: file.model_path.clone(),
                    size_bytes: file.size,
                    sha256: String::new(),
                }))
                .await?;
                let mut remaining = file.size;
                while remaining > 0 {
                    let mut chunk = vec![0; UPLOAD_CHUNK_BYTES.min(remaining as usize)];
                    reader
                        .read_exact(&mut chunk)
                        .await
                        .with_context(|| format!("reading {}", file.disk_path.display()))?;
                    remaining -= chunk.len() as u64;
                    producer_bar.inc(chunk.len() as u64);
                    send(streams::Upload::Chunk(chunk.into())).await?;
                }
            }
            send(streams::Upload::Commit(pb::Commit {
                file_count: files.len() as u32,
            }))
            .await?;
            anyhow::Ok(())
        });
        Self {
            requests: ReceiverStream::new(receiver),
            producer: Producer { task, bar },
        }
    }
}

impl Producer {
    /// The hub's answer, or the local error that ended the upload early.
    async fn finish<T>(
        self,
        response: Result<tonic::Response<T>, tonic::Status>,
    ) -> anyhow::Result<T> {
        self.bar.finish_and_clear();
        // A local read error ends the stream early; report it rather than the hub's reaction.
        let produced = self.task.await?;
        match (response, produced) {
            (Ok(response), _) => Ok(response.into_inner()),
            // The hub hanging up is a consequence of its refusal; the refusal is the news.
            (Err(status), Err(local)) if local.is::<HubClosedUpload>() => Err(rpc_error(status)),
            (Err(_), Err(local)) => Err(local),
            (Err(status), Ok(())) => Err(rpc_error(status)),
        }
    }
}

/// Writes each file of a model version below `dir`, with its layout. Returns the downloaded
/// version as the hub describes it.
pub async fn download(
    client: &mut RegistryClient,
    name: &str,
    dir: &Path,
    overwrite: bool,
) -> anyhow::Result<pb::Model> {
    let request = pb::DownloadModelRequest {
        name: name.to_owned(),
    };
    let (mut stream, model) = opened(client.download_model(request).await, "model").await?;
    let mut targets = Vec::with_capacity(model.files.len());
    for file in &model.files {
        validate::file_path(&file.path)?;
        targets.push(dir.join(&file.path));
    }
    receive(&mut stream, &model.files, &targets, overwrite).await?;
    Ok(model)
}

/// Writes a module version's `.wasm` file to `target`. Returns the version as the hub
/// describes it.
pub async fn download_module(
    client: &mut ModuleClient,
    name: &str,
    target: &Path,
    overwrite: bool,
) -> anyhow::Result<pb::Module> {
    let request = pb::DownloadModuleRequest {
        name: name.to_owned(),
    };
    let (mut stream, module) = opened(client.download_module(request).await, "module").await?;
    if module.files.len() != 1 {
        bail!(
            "{} has {} files; this client writes modules of one .wasm file",
            module.name,
            module.files.len()
        );
    }
    let targets = [target.to_owned()];
    receive(&mut stream, &module.files, &targets, overwrite).await?;
    Ok(module)
}

/// A download's stream and its first message, the version.
async fn opened<M: DownloadMessage>(
    response: Result<tonic::Response<Streaming<M>>, tonic::Status>,
    noun: &str,
) -> anyhow::Result<(Streaming<M>, M::Version)> {
    let mut stream = response.map_err(rpc_error)?.into_inner();
    match stream.message().await.map_err(rpc_error)?.map(M::unwrap) {
        Some(Download::Version(version)) => Ok((stream, version)),
        _ => bail!("the hub's download stream did not start with the {noun}"),
    }
}

/// Receives `files` (announced in the metadata) into `targets`, one each, in order.
async fn receive<M: DownloadMessage>(
    stream: &mut Streaming<M>,
    files: &[pb::ModelFile],
    targets: &[PathBuf],
    overwrite: bool,
) -> anyhow::Result<()> {
    if !overwrite {
        for target in targets {
            if tokio::fs::try_exists(target).await? {
                bail!(
                    "{} already exists; use --overwrite to replace it",
                    target.display()
                );
            }
        }
    }
    let total: u64 = files.iter().map(|f| f.size_bytes).sum();
    let bar = progress_bar(total, "downloading");
    let mut current: Option<FileDownload> = None;
    let mut next_file = 0;
    let result = async {
        loop {
            let message = stream.message().await.map_err(rpc_error)?;
            match message.map(M::unwrap) {
                Some(Download::Chunk(bytes)) => {
                    let Some(file) = current.as_mut() else {
                        bail!("the hub sent file data before a file header");
                    };
                    file.write(&bytes).await?;
                    bar.inc(bytes.len() as u64);
                }
                Some(Download::File(header)) => {
                    if let Some(done) = current.take() {
                        done.finish().await?;
                    }
                    // Each header must be the next file of the record, exactly.
                    let (Some(expected), Some(target)) =
                        (files.get(next_file), targets.get(next_file))
                    else {
                        bail!("the hub sent more files than the version has");
                    };
                    if header.path != expected.path
                        || header.size_bytes != expected.size_bytes
                        || header.sha256 != expected.sha256
                    {
                        bail!(
                            "the hub sent {} where {} was expected",
                            header.path,
                            expected.path
                        );
                    }
                    next_file += 1;
                    current = Some(FileDownload::create(target.clone(), header).await?);
                }
                None => {
                    if let Some(done) = current.take() {
                        done.finish().await?;
                    }
                    if next_file != files.len() {
                        bail!(
                            "the download ended after {next_file} of {} files",
                            files.len()
                        );
                    }
                    return Ok(());
                }
                Some(Download::Version(_) | Download::Empty) => {
                    bail!("the hub sent an unexpected message in the download")
                }
            }
        }
    }
    .await;
    bar.finish_and_clear();
    if let Err(err) = result {
        if let Some(partial) = current {
            partial.discard().await;
        }
        return Err(err);
    }
    Ok(())
}

/// One file being downloaded into `<name>.partial`, renamed into place once verified.
struct FileDownload {
    header: pb::FileHeader,
    target: PathBuf,
    partial: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
}

impl FileDownload {
    async fn create(target: PathBuf, header: pb::FileHeader) -> anyhow::Result<Self> {
        let mut partial = target.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        if let Some(parent) = partial.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        Ok(Self {
            header,
            target,
            partial,
            file,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.written += bytes.len() as u64;
        if self.written > self.header.size_bytes {
            bail!("{} is larger than announced", self.header.path);
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .await
            .with_context(|| format!("writing {}", self.partial.display()))
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let digest = hex::encode(self.hasher.clone().finalize());
        if self.written != self.header.size_bytes || digest != self.header.sha256 {
            let why = format!(
                "{} failed verification ({} of {} bytes, sha256 {digest}, expected {})",
                self.header.path, self.written, self.header.size_bytes, self.header.sha256
            );
            self.discard().await;
            bail!(why);
        }
        tokio::fs::rename(&self.partial, &self.target)
            .await
            .with_context(|| format!("moving {} into place", self.target.display()))
    }

    async fn discard(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}
