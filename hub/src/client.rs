//! Client side of the registry API: connecting, streaming uploads and verified downloads.
//! Shared by the CLI, `edgeship dev`, benchmarks and tests.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use edgeship_proto::v1::model_registry_client::ModelRegistryClient;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::registry::{NewModel, validate};

pub type RegistryClient = ModelRegistryClient<Channel>;

/// File data per upload message. The hub accepts chunks of any size up to tonic's default
/// 4 MiB message limit; 1 MiB stays well under it (with the envelope) while keeping the
/// per-message overhead negligible, and bounds the client's memory to a few chunks.
const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

/// Connects to the hub's gRPC API; shared by every client of every service.
pub async fn channel(hub: &str) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(hub.to_owned())
        .with_context(|| format!("invalid hub URL {hub:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::server::WINDOW_BYTES)
        .initial_connection_window_size(2 * crate::server::WINDOW_BYTES);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the hub at {hub}"))?;
    Ok(channel)
}

pub async fn connect(hub: &str) -> anyhow::Result<RegistryClient> {
    Ok(ModelRegistryClient::new(channel(hub).await?))
}

/// Turns a gRPC status into a one-line error: the hub's message, prefixed with the code.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unavailable => "hub unavailable",
        tonic::Code::DataLoss => "data loss",
        tonic::Code::Aborted => "aborted",
        _ => "hub error",
    };
    anyhow::anyhow!("{code}: {}", status.message())
}

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

fn progress_bar(total: u64, verb: &str) -> ProgressBar {
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

/// Streams the files to the hub in chunks: memory use is a few chunks, whatever the size.
/// Returns the registered version as the hub describes it.
pub async fn register(
    client: &mut RegistryClient,
    model: NewModel,
    path: &Path,
) -> anyhow::Result<pb::Model> {
    use pb::register_model_request::Payload;

    let files = collect_files(path)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = progress_bar(total, "uploading");
    let (sender, receiver) = mpsc::channel::<pb::RegisterModelRequest>(4);
    let message = |payload| pb::RegisterModelRequest {
        payload: Some(payload),
    };
    let producer_bar = bar.clone();
    let producer = tokio::spawn(async move {
        let send = |payload| {
            let sender = sender.clone();
            async move {
                sender
                    .send(message(payload))
                    .await
                    .map_err(|_| anyhow::Error::new(HubClosedUpload))
            }
        };
        send(Payload::Metadata(model.into())).await?;
        for file in &files {
            let mut reader = tokio::fs::File::open(&file.disk_path)
                .await
                .with_context(|| format!("opening {}", file.disk_path.display()))?;
            send(Payload::File(pb::FileHeader {
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
                send(Payload::Chunk(chunk.into())).await?;
            }
        }
        send(Payload::Commit(pb::Commit {
            file_count: files.len() as u32,
        }))
        .await?;
        anyhow::Ok(())
    });
    let response = client.register_model(ReceiverStream::new(receiver)).await;
    bar.finish_and_clear();
    // A local read error ends the stream early; report it rather than the hub's reaction.
    let produced = producer.await?;
    let registered = match (response, produced) {
        (Ok(response), _) => response.into_inner(),
        // The hub hanging up is a consequence of its refusal; the refusal is the news.
        (Err(status), Err(local)) if local.is::<HubClosedUpload>() => {
            return Err(rpc_error(status));
        }
        (Err(_), Err(local)) => return Err(local),
        (Err(status), Ok(())) => return Err(rpc_error(status)),
    };
    Ok(registered)
}

/// Writes each file as `<name>.partial`, verifies size and sha256, then renames it. Returns
/// the downloaded version as the hub describes it.
pub async fn download(
    client: &mut RegistryClient,
    name: &str,
    dir: &Path,
    overwrite: bool,
) -> anyhow::Result<pb::Model> {
    use pb::download_model_response::Payload;

    let mut stream = client
        .download_model(pb::DownloadModelRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let Some(pb::DownloadModelResponse {
        payload: Some(Payload::Model(model)),
    }) = stream.message().await.map_err(rpc_error)?
    else {
        bail!("the hub's download stream did not start with the model");
    };
    for file in &model.files {
        validate::file_path(&file.path)?;
        let target = dir.join(&file.path);
        if !overwrite && tokio::fs::try_exists(&target).await? {
            bail!(
                "{} already exists; use --overwrite to replace it",
                target.display()
            );
        }
    }
    let total: u64 = model.files.iter().map(|f| f.size_bytes).sum();
    let bar = progress_bar(total, "downloading");
    let mut current: Option<FileDownload> = None;
    let mut next_file = 0;
    let result = async {
        loop {
            let message = stream.message().await.map_err(rpc_error)?;
            match message.and_then(|m| m.payload) {
                Some(Payload::Chunk(bytes)) => {
                    let Some(file) = current.as_mut() else {
                        bail!("the hub sent file data before a file header");
                    };
                    file.write(&bytes).await?;
                    bar.inc(bytes.len() as u64);
                }
                Some(Payload::File(header)) => {
                    if let Some(done) = current.take() {
                        done.finish().await?;
                    }
                    // Each header must be the next file of the record, exactly.
                    let Some(expected) = model.files.get(next_file) else {
                        bail!("the hub sent more files than the model has");
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
                    current = Some(FileDownload::create(dir, header).await?);
                }
                None => {
                    if let Some(done) = current.take() {
                        done.finish().await?;
                    }
                    if next_file != model.files.len() {
                        bail!(
                            "the download ended after {next_file} of {} files",
                            model.files.len()
                        );
                    }
                    return Ok(());
                }
                Some(_) => bail!("the hub sent an unexpected message in the download"),
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
    Ok(model)
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
    async fn create(dir: &Path, header: pb::FileHeader) -> anyhow::Result<Self> {
        validate::file_path(&header.path)?;
        let target = dir.join(&header.path);
        let partial = dir.join(format!("{}.partial", header.path));
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

/// Creates a deployment of `model` (`name:version` or `name:latest`) to the named devices,
/// with an endpoint on `port` and no auth: the common case of `edgeship deploy create`.
pub async fn deploy_to_devices(
    hub: &str,
    name: &str,
    model: &str,
    port: u16,
    devices: &[&str],
) -> Result<pb::Deployment, tonic::Status> {
    let endpoint = pb::Endpoint {
        port: u32::from(port),
        ..Default::default()
    };
    deploy_endpoint_to_devices(hub, name, model, endpoint, devices).await
}

/// Creates deployment `name` of `model` with `endpoint` on `devices`.
pub async fn deploy_endpoint_to_devices(
    hub: &str,
    name: &str,
    model: &str,
    endpoint: pb::Endpoint,
    devices: &[&str],
) -> Result<pb::Deployment, tonic::Status> {
    let channel = channel(hub)
        .await
        .map_err(|err| tonic::Status::unavailable(format!("{err:#}")))?;
    DeploymentsClient::new(channel)
        .create_deployment(pb::CreateDeploymentRequest {
            deployment: Some(pb::Deployment {
                deployment_id: name.into(),
                model: model.into(),
                runtime: "tract".into(),
                endpoint: Some(endpoint),
                target: Some(pb::Target {
                    device_ids: devices.iter().map(|d| (*d).to_owned()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Polls a deployment until it is Healthy; fails on Failed/Unschedulable or at the deadline.
pub async fn wait_healthy(
    client: &mut DeploymentsClient<Channel>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<pb::Deployment> {
    let deadline = Instant::now() + timeout;
    loop {
        let deployment = client
            .get_deployment(pb::GetDeploymentRequest {
                name: format!("deployments/{name}"),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        match deployment.state() {
            pb::ServiceState::Healthy => return Ok(deployment),
            pb::ServiceState::Failed | pb::ServiceState::Unschedulable => {
                let why: Vec<String> = deployment
                    .devices
                    .iter()
                    .filter(|d| !d.error.is_empty())
                    .map(|d| format!("{}: {}", d.device_id, d.error))
                    .collect();
                bail!(
                    "deployment {name} is {}: {}",
                    state_name(deployment.state()),
                    why.join("; ")
                );
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "deployment {name} is still {} after {} s",
                state_name(deployment.state()),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Azure ML spelling of a service state.
pub fn state_name(state: pb::ServiceState) -> &'static str {
    match state {
        pb::ServiceState::Healthy => "Healthy",
        pb::ServiceState::Transitioning | pb::ServiceState::Unspecified => "Transitioning",
        pb::ServiceState::Unhealthy => "Unhealthy",
        pb::ServiceState::Unschedulable => "Unschedulable",
        pb::ServiceState::Failed => "Failed",
    }
}
