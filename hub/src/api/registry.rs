//! `edgeship.v1.ModelRegistry` service implementation.

use std::pin::Pin;
use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::model_registry_server::ModelRegistry;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::CHUNK_SIZE;
use super::convert::non_empty;
use crate::fleet::Fleet;
use crate::registry::{
    DeleteTarget, Error, ListQuery, ModelVersion, Registry, VersionRef, VersionSelector, validate,
};

#[derive(Debug, Clone)]
pub struct ModelRegistryService {
    registry: Arc<Registry>,
    fleet: Arc<Fleet>,
}

impl ModelRegistryService {
    pub fn new(registry: Arc<Registry>, fleet: Arc<Fleet>) -> Self {
        Self { registry, fleet }
    }

    /// Runs blocking registry work (flushes, ONNX parsing) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Registry) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let registry = Arc::clone(&self.registry);
        tokio::task::spawn_blocking(move || work(&registry))
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "registry task failed");
                Status::internal(format!("registry task failed: {err}"))
            })?
            .map_err(Status::from)
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadModelResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ModelRegistry for ModelRegistryService {
    async fn register_model(
        &self,
        request: Request<Streaming<pb::RegisterModelRequest>>,
    ) -> Result<Response<pb::Model>, Status> {
        use pb::register_model_request::Payload;

        let mut stream = request.into_inner();
        let metadata = match stream.message().await? {
            Some(pb::RegisterModelRequest {
                payload: Some(Payload::Metadata(metadata)),
            }) => metadata,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a registration must carry the model's metadata",
                ));
            }
            None => return Err(Status::invalid_argument("the registration stream is empty")),
        };
        let mut upload = self.registry.begin_upload(metadata.into()).await?;
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
                    tracing::info!(model = upload.model_id(), error = %status, "upload interrupted");
                    return Err(Status::aborted(format!(
                        "the upload of {} was interrupted ({}); nothing was registered",
                        upload.model_id(),
                        status.message()
                    )));
                }
            };
            match message.payload {
                Some(Payload::File(header)) => {
                    upload
                        .start_file(header.path, header.size_bytes, non_empty(header.sha256))
                        .await?;
                }
                Some(Payload::Chunk(bytes)) => upload.write_chunk(&bytes).await?,
                Some(Payload::Commit(commit)) => {
                    let staged = upload.finish(commit.file_count).await?;
                    let model = self
                        .blocking(move |registry| registry.commit(staged))
                        .await?;
                    // Deployments that follow `latest` move to the new version.
                    let fleet = Arc::clone(&self.fleet);
                    let model_id = model.model_id.clone();
                    let rolled =
                        tokio::task::spawn_blocking(move || fleet.on_model_registered(&model_id))
                            .await;
                    // The version is registered either way; deployments catch up on the next
                    // change or restart, so this is logged for an operator, not returned.
                    match rolled {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            tracing::error!(model = %model.model_id, error = %err, "updating deployments after a registration failed");
                        }
                        Err(err) => {
                            tracing::error!(model = %model.model_id, error = %err, "updating deployments after a registration panicked");
                        }
                    }
                    return Ok(Response::new(pb::Model::from(&model)));
                }
                Some(Payload::Metadata(_)) => {
                    return Err(Status::invalid_argument(
                        "metadata may be sent only once, as the first message",
                    ));
                }
                None => return Err(Status::invalid_argument("a registration message is empty")),
            }
        }
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let reference = validate::version_name(&request.into_inner().name)?;
        let model = self.registry.get(&reference)?;
        Ok(Response::new(pb::Model::from(&model)))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let query = ListQuery::try_from(request.into_inner())?;
        let page = self.registry.list(&query)?;
        Ok(Response::new(pb::ListModelsResponse {
            models: page.models.iter().map(pb::Model::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type DownloadModelStream = DownloadStream;

    async fn download_model(
        &self,
        request: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let reference = validate::version_name(&request.into_inner().name)?;
        let model = self.registry.get(&reference)?;
        let (sender, receiver) = mpsc::channel(4);
        let registry = Arc::clone(&self.registry);
        tokio::spawn(async move {
            if let Err(status) = stream_model(&registry, model, &sender).await {
                // The receiver may be gone (client hung up); nothing more to do then.
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let (reference, update) = super::convert::update_request(request.into_inner())?;
        let model = self
            .blocking(move |registry| registry.update(&reference, &update))
            .await?;
        Ok(Response::new(pb::Model::from(&model)))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let target = validate::delete_target(&request.into_inner().name)?;
        let (model_id, version) = match &target {
            DeleteTarget::AllVersions(id) => (id.clone(), None),
            DeleteTarget::Version(reference) => {
                let model = self.registry.get(reference)?;
                (model.model_id, Some(model.version))
            }
        };
        let users = self.fleet.deployments_using(&model_id, version)?;
        if !users.is_empty() {
            return Err(Status::failed_precondition(format!(
                "model {model_id} is used by deployment {}; delete the deployment first",
                users.join(", ")
            )));
        }
        let (model_id, deleted_versions) = self
            .blocking(move |registry| registry.delete(&target))
            .await?;
        Ok(Response::new(pb::DeleteModelResponse {
            model_id,
            deleted_versions,
        }))
    }
}

fn reference_of(model: &ModelVersion) -> VersionRef {
    VersionRef {
        model_id: model.model_id.clone(),
        version: VersionSelector::Exact(model.version),
    }
}

/// Sends the model record, then each file as a header and chunks, re-hashing as it reads so
/// that a blob damaged on disk is reported instead of silently served.
async fn stream_model(
    registry: &Registry,
    model: ModelVersion,
    sender: &mpsc::Sender<Result<pb::DownloadModelResponse, Status>>,
) -> Result<(), Status> {
    use pb::download_model_response::Payload;

    let send = |payload| async {
        sender
            .send(Ok(pb::DownloadModelResponse {
                payload: Some(payload),
            }))
            .await
            .map_err(|_| Status::cancelled("the client stopped reading"))
    };
    send(Payload::Model(pb::Model::from(&model))).await?;
    for file in &model.files {
        let path = registry.blob_path(&file.sha256);
        let mut reader = match tokio::fs::File::open(&path).await {
            Ok(reader) => reader,
            // A delete that ran after the record was read removes the blob: not damage.
            Err(_) if registry.get(&reference_of(&model)).is_err() => {
                return Err(Status::not_found(format!(
                    "{}:{} was deleted during the download",
                    model.model_id, model.version
                )));
            }
            Err(err) => {
                let message = format!(
                    "the stored bytes of {} ({}) cannot be read: {err}",
                    file.path, file.sha256
                );
                tracing::error!(model = %model.model_id, version = model.version, error = %message, "blob missing");
                return Err(Status::data_loss(message));
            }
        };
        send(Payload::File(pb::FileHeader {
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
            send(Payload::Chunk(chunk.into())).await?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != file.sha256 {
            let message = format!(
                "the stored bytes of {} are damaged (sha256 {actual}, expected {})",
                file.path, file.sha256
            );
            tracing::error!(model = %model.model_id, version = model.version, error = %message, "blob damaged");
            return Err(Status::data_loss(message));
        }
    }
    Ok(())
}
