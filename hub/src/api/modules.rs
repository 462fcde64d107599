//! `edgeship.v1.ModuleRegistry`: entry modules, registered, listed, downloaded and deleted as
//! models are (the shared steps are in `transfer.rs`); the registration check itself, the
//! component compiled by the agent's own loader, is the registry's (`registry/module.rs`).

use std::pin::Pin;
use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::module_registry_server::ModuleRegistry;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::transfer;
use crate::fleet::Fleet;
use crate::registry::{Kind, ListQuery, Registry};

#[derive(Debug, Clone)]
pub struct ModuleRegistryService {
    modules: Arc<Registry>,
    fleet: Arc<Fleet>,
}

impl ModuleRegistryService {
    /// `modules` is the registry [`Registry::modules`] opened.
    pub fn new(modules: Arc<Registry>, fleet: Arc<Fleet>) -> Self {
        Self { modules, fleet }
    }
}

type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadModuleResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ModuleRegistry for ModuleRegistryService {
    async fn register_module(
        &self,
        request: Request<Streaming<pb::RegisterModuleRequest>>,
    ) -> Result<Response<pb::Module>, Status> {
        let staged = transfer::receive(&self.modules, request.into_inner()).await?;
        // Compiling the component takes time: `commit` runs off the async workers.
        let module =
            transfer::blocking(&self.modules, move |modules| modules.commit(staged)).await?;
        transfer::roll_out(&self.fleet, Kind::Module, &module.model_id).await;
        Ok(Response::new(pb::Module::from(&module)))
    }

    async fn get_module(
        &self,
        request: Request<pb::GetModuleRequest>,
    ) -> Result<Response<pb::Module>, Status> {
        let module = transfer::version(&self.modules, &request.into_inner().name)?;
        Ok(Response::new(pb::Module::from(&module)))
    }

    async fn list_modules(
        &self,
        request: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        let query = ListQuery::try_from(request.into_inner())?;
        let page = self.modules.list(&query)?;
        Ok(Response::new(pb::ListModulesResponse {
            modules: page.models.iter().map(pb::Module::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type DownloadModuleStream = DownloadStream;

    async fn download_module(
        &self,
        request: Request<pb::DownloadModuleRequest>,
    ) -> Result<Response<Self::DownloadModuleStream>, Status> {
        let module = transfer::version(&self.modules, &request.into_inner().name)?;
        let head = pb::Module::from(&module);
        let receiver = transfer::download(&self.modules, module, head);
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delete_module(
        &self,
        request: Request<pb::DeleteModuleRequest>,
    ) -> Result<Response<pb::DeleteModuleResponse>, Status> {
        let name = request.into_inner().name;
        let (module_id, deleted_versions) =
            transfer::delete(&self.modules, &self.fleet, &name).await?;
        Ok(Response::new(pb::DeleteModuleResponse {
            module_id,
            deleted_versions,
        }))
    }
}
