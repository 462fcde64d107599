//! `edgeship.v1.ModelRegistry` service implementation.

use std::pin::Pin;
use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::model_registry_server::ModelRegistry;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::transfer;
use crate::fleet::Fleet;
use crate::registry::{Kind, ListQuery, Registry};
use edgeship_domain::trust::{ModelSignature, TrustError};

#[derive(Debug, Clone)]
pub struct ModelRegistryService {
    registry: Arc<Registry>,
    fleet: Arc<Fleet>,
}

impl ModelRegistryService {
    pub fn new(registry: Arc<Registry>, fleet: Arc<Fleet>) -> Self {
        Self { registry, fleet }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadModelResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ModelRegistry for ModelRegistryService {
    async fn register_model(
        &self,
        request: Request<Streaming<pb::RegisterModelRequest>>,
    ) -> Result<Response<pb::Model>, Status> {
        let staged = transfer::receive(&self.registry, request.into_inner()).await?;
        let model =
            transfer::blocking(&self.registry, move |registry| registry.commit(staged)).await?;
        transfer::roll_out(&self.fleet, Kind::Model, &model.model_id).await;
        Ok(Response::new(pb::Model::from(&model)))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let model = transfer::version(&self.registry, &request.into_inner().name)?;
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
        let model = transfer::version(&self.registry, &request.into_inner().name)?;
        let head = pb::Model::from(&model);
        let receiver = transfer::download(&self.registry, model, head);
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let (reference, update) = super::convert::update_request(request.into_inner())?;
        let model = transfer::blocking(&self.registry, move |registry| {
            registry.update(&reference, &update)
        })
        .await?;
        Ok(Response::new(pb::Model::from(&model)))
    }

    async fn sign_model(
        &self,
        request: Request<pb::SignModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let request = request.into_inner();
        let reference =
            crate::registry::validate::version_name(&request.name).map_err(Status::from)?;
        let key = request
            .public_key
            .parse()
            .map_err(|e: TrustError| Status::invalid_argument(format!("public_key: {e}")))?;
        let signed = ModelSignature {
            key,
            signature: request.signature.to_vec(),
        };
        let model = transfer::blocking(&self.registry, move |registry| {
            registry.add_signature(&reference, signed)
        })
        .await?;
        tracing::info!(model = %format!("{}:{}", model.model_id, model.version), key = %key.key_id(), "model signed");
        // Deployments that require this signer may now roll out.
        let fleet = Arc::clone(&self.fleet);
        if let Err(err) = tokio::task::spawn_blocking(move || fleet.reconcile_all()).await {
            tracing::error!(error = %err, "reconciling after a signature failed");
        }
        Ok(Response::new(pb::Model::from(&model)))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let name = request.into_inner().name;
        let (model_id, deleted_versions) =
            transfer::delete(&self.registry, &self.fleet, &name).await?;
        // Live jobs on a deleted version end Failed, and their devices drop them.
        let fleet = Arc::clone(&self.fleet);
        let id = model_id.clone();
        match tokio::task::spawn_blocking(move || fleet.on_model_deleted(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(model = %model_id, error = %err, "failing the jobs of a deleted model failed");
            }
            Err(err) => {
                tracing::error!(model = %model_id, error = %err, "failing the jobs of a deleted model panicked");
            }
        }
        Ok(Response::new(pb::DeleteModelResponse {
            model_id,
            deleted_versions,
        }))
    }
}
