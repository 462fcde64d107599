//! What the model and module registry services share: receiving a registration stream into
//! a staged upload, streaming a version's files back, looking a version up by its resource
//! name, deleting a version no deployment runs, and handing a new registration to continuous
//! deployment. Each service's messages meet these through `streams.rs`.

use std::sync::Arc;

use edgeship_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::CHUNK_SIZE;
use super::convert::non_empty;
use super::streams::{Download, DownloadMessage, Upload, UploadMessage};
use crate::fleet::Fleet;
use crate::registry::{
    DeleteTarget, Error, Kind, ModelVersion, NewModel, Registry, StagedModel, VersionRef,
    VersionSelector, validate,
};

/// Runs blocking registry work (flushes, ONNX parsing, module compilation) off the async
/// workers.
pub(super) async fn blocking<T: Send + 'static>(
    registry: &Arc<Registry>,
    work: impl FnOnce(&Registry) -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    let registry = Arc::clone(registry);
    tokio::task::spawn_blocking(move || work(&registry))
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "registry task failed");
            Status::internal(format!("registry task failed: {err}"))
        })?
        .map_err(Status::from)
}

/// Receives a registration: the metadata first, then each file as a header and its chunks,
/// then the commit. Whatever ends the stream early leaves nothing behind (the staging folder
/// goes with the upload).
pub(super) async fn receive<R>(
    registry: &Registry,
    mut stream: Streaming<R>,
) -> Result<StagedModel, Status>
where
    R: UploadMessage,
    R::Metadata: Into<NewModel>,
{
    let noun = registry.kind().noun();
    let metadata = match stream.message().await?.map(R::unwrap) {
        Some(Upload::Metadata(metadata)) => metadata.into(),
        Some(_) => {
            return Err(Status::invalid_argument(format!(
                "the first message of a registration must carry the {noun}'s metadata"
            )));
        }
        None => return Err(Status::invalid_argument("the registration stream is empty")),
    };
    let mut upload = registry.begin_upload(metadata).await?;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => {
                return Err(Status::invalid_argument(format!(
                    "the upload of {} ended before its commit message; nothing was registered",
                    upload.model_id()
                )));
            }
            Err(status) => {
                tracing::info!(kind = noun, name = upload.model_id(), error = %status, "upload interrupted");
                return Err(Status::aborted(format!(
                    "the upload of {} was interrupted ({}); nothing was registered",
                    upload.model_id(),
                    status.message()
                )));
            }
        };
        match message.unwrap() {
            Upload::File(header) => {
                upload
                    .start_file(header.path, header.size_bytes, non_empty(header.sha256))
                    .await?;
            }
            Upload::Chunk(bytes) => upload.write_chunk(&bytes).await?,
            Upload::Commit(commit) => return Ok(upload.finish(commit.file_count).await?),
            Upload::Metadata(_) => {
                return Err(Status::invalid_argument(
                    "metadata may be sent only once, as the first message",
                ));
            }
            Upload::Empty => {
                return Err(Status::invalid_argument("a registration message is empty"));
            }
        }
    }
}

/// A version by its resource name (`models/x/versions/3`, `modules/x/versions/latest`).
pub(super) fn version(registry: &Registry, name: &str) -> Result<ModelVersion, Status> {
    let reference = validate::version_name_in(registry.kind(), name)?;
    Ok(registry.get(&reference)?)
}

/// Deployments that follow `latest` move to a newly registered version. The version is
/// registered either way; deployments catch up on the next change or restart, so a failure
/// here is logged for an operator, not returned.
pub(super) async fn roll_out(fleet: &Arc<Fleet>, kind: Kind, id: &str) {
    let fleet = Arc::clone(fleet);
    let name = id.to_owned();
    let rolled = tokio::task::spawn_blocking(move || match kind {
        Kind::Model => fleet.on_model_registered(&name),
        Kind::Module => fleet.on_module_registered(&name),
    })
    .await;
    match rolled {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::error!(kind = kind.noun(), name = %id, error = %err, "updating deployments after a registration failed");
        }
        Err(err) => {
            tracing::error!(kind = kind.noun(), name = %id, error = %err, "updating deployments after a registration panicked");
        }
    }
}

/// Deletes one version or every version, unless a deployment runs one of them (its name is
/// in the refusal). Returns the name and the deleted version numbers.
pub(super) async fn delete(
    registry: &Arc<Registry>,
    fleet: &Fleet,
    name: &str,
) -> Result<(String, Vec<u32>), Status> {
    let kind = registry.kind();
    let target = validate::delete_target_in(kind, name)?;
    let (id, version) = match &target {
        DeleteTarget::AllVersions(id) => (id.clone(), None),
        DeleteTarget::Version(reference) => {
            let found = registry.get(reference)?;
            (found.model_id, Some(found.version))
        }
    };
    let users = match kind {
        Kind::Model => fleet.deployments_using(&id, version)?,
        Kind::Module => fleet.deployments_using_module(&id, version)?,
    };
    if !users.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{} {id} is used by deployment {}; delete the deployment first",
            kind.noun(),
            users.join(", ")
        )));
    }
    blocking(registry, move |registry| registry.delete(&target)).await
}

/// Streams the version named `name` (`head`, its message), then each of its files as a
/// header and chunks, from a task of its own; a failure ends the stream with its status.
pub(super) fn download<R>(
    registry: &Arc<Registry>,
    record: ModelVersion,
    head: R::Version,
) -> mpsc::Receiver<Result<R, Status>>
where
    R: DownloadMessage + Send + 'static,
    R::Version: Send + 'static,
{
    let (sender, receiver) = mpsc::channel(4);
    let registry = Arc::clone(registry);
    tokio::spawn(async move {
        let sent = match sender.send(Ok(R::wrap(Download::Version(head)))).await {
            Ok(()) => stream_files(&registry, &record, &sender).await,
            Err(_) => Err(Status::cancelled("the client stopped reading")),
        };
        if let Err(status) = sent {
            // The receiver may be gone (client hung up); nothing more to do then.
            let _ = sender.send(Err(status)).await;
        }
    });
    receiver
}

/// Each file as a header and chunks, re-hashing as it reads so that a blob damaged on disk is
/// reported instead of silently served.
async fn stream_files<R: DownloadMessage>(
    registry: &Registry,
    record: &ModelVersion,
    sender: &mpsc::Sender<Result<R, Status>>,
) -> Result<(), Status> {
    let send = |part| async move {
        sender
            .send(Ok(R::wrap(part)))
            .await
            .map_err(|_| Status::cancelled("the client stopped reading"))
    };
    let noun = registry.kind().noun();
    for file in &record.files {
        let path = registry.blob_path(&file.sha256);
        let mut reader = match tokio::fs::File::open(&path).await {
            Ok(reader) => reader,
            // A delete that ran after the record was read removes the blob: not damage.
            Err(_) if registry.get(&reference_of(record)).is_err() => {
                return Err(Status::not_found(format!(
                    "{}:{} was deleted during the download",
                    record.model_id, record.version
                )));
            }
            Err(err) => {
                let message = format!(
                    "the stored bytes of {} ({}) cannot be read: {err}",
                    file.path, file.sha256
                );
                tracing::error!(kind = noun, name = %record.model_id, version = record.version, error = %message, "blob missing");
                return Err(Status::data_loss(message));
            }
        };
        send(Download::File(pb::FileHeader {
            path: file.path.clone(),
            size_bytes: file.size_bytes,
            sha256: file.sha256.clone(),
        }))
        .await?;
        let mut hasher = Sha256::new();
        let mut remaining = file.size_bytes;
        while remaining > 0 {
            let mut chunk = vec![0; CHUNK_SIZE.min(remaining as usize)];
            reader.read_exact(&mut chunk).await.map_err(|err| {
                Status::data_loss(format!("reading the stored bytes of {}: {err}", file.path))
            })?;
            hasher.update(&chunk);
            remaining -= chunk.len() as u64;
            send(Download::Chunk(chunk.into())).await?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != file.sha256 {
            let message = format!(
                "the stored bytes of {} are damaged (sha256 {actual}, expected {})",
                file.path, file.sha256
            );
            tracing::error!(kind = noun, name = %record.model_id, version = record.version, error = %message, "blob damaged");
            return Err(Status::data_loss(message));
        }
    }
    Ok(())
}

fn reference_of(record: &ModelVersion) -> VersionRef {
    VersionRef {
        model_id: record.model_id.clone(),
        version: VersionSelector::Exact(record.version),
    }
}
