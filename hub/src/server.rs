//! Starts the hub's gRPC server: registry, health and reflection services over one listener.
//! Used by `edgeship hub`, by `edgeship dev`, and in-process by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use edgeship_proto::v1::model_registry_server::ModelRegistryServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::ModelRegistryService;
use crate::registry::{Limits, Registry};

/// Validated hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
}

/// A hub serving in the background; dropping it without [`RunningHub::stop`] aborts it.
#[derive(Debug)]
pub struct RunningHub {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningHub {
    /// Opens the data dir, binds the listen address and starts serving.
    pub async fn start(config: HubConfig) -> anyhow::Result<Self> {
        let data_dir = config.data_dir.clone();
        let limits = config.limits;
        let registry = tokio::task::spawn_blocking(move || Registry::open(&data_dir, limits))
            .await?
            .with_context(|| format!("opening the registry in {}", config.data_dir.display()))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_signal) = oneshot::channel();
        let task = tokio::spawn(serve(Arc::new(registry), listener, async move {
            // A dropped sender also means stop.
            let _ = shutdown_signal.await;
        }));
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "hub listening");
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients (and `--hub`) use to reach this hub.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting calls, lets calls in flight finish, and closes the registry.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await?
    }

    /// Waits until the server ends (it only ends on error or after `stop`).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await?
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    registry: Arc<Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ModelRegistryServer<ModelRegistryService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(edgeship_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ModelRegistryServer::new(ModelRegistryService::new(
            registry,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .context("serving gRPC")
}
