//! Client side of the hub's API: connecting, streaming uploads and verified downloads of
//! models and entry modules (`files.rs`), batch jobs' inputs and outputs (`jobs.rs`),
//! deploying and waiting for health. Shared by the CLI,
//! `edgeship dev`, benchmarks and tests.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgeship_proto::tls::HubTrust;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use edgeship_proto::v1::model_registry_client::ModelRegistryClient;
use edgeship_proto::v1::module_registry_client::ModuleRegistryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod files;
mod jobs;

pub use files::{download, download_module, register, register_module};
pub use jobs::{JobsClient, connect_jobs, create_job, download_job_output};

pub type RegistryClient = ModelRegistryClient<HubChannel>;
pub type ModuleClient = ModuleRegistryClient<HubChannel>;

/// A connection to the hub that sends the caller's API token with every call.
pub type HubChannel = InterceptedService<Channel, Credentials>;

/// Where client commands find their API token.
pub const TOKEN_ENV: &str = "EDGESHIP_TOKEN";

/// The `authorization` metadata every call carries; its `Debug` never shows the token.
#[derive(Clone)]
pub struct Credentials {
    bearer: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.bearer.is_some() {
            "Bearer <redacted>"
        } else {
            "none"
        };
        f.debug_struct("Credentials")
            .field("bearer", &shown)
            .finish()
    }
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// Connects to the hub's gRPC API with the token in `EDGESHIP_TOKEN`, if set; shared by
/// every client of every service.
pub async fn channel(hub: &str) -> anyhow::Result<HubChannel> {
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty());
    channel_as(hub, token.as_deref()).await
}

/// Connects to the hub's gRPC API, calling with `token`.
pub async fn channel_as(hub: &str, token: Option<&str>) -> anyhow::Result<HubChannel> {
    let trust = if hub.starts_with("https://") {
        Some(hub_trust_from_env()?)
    } else {
        None
    };
    channel_trusting(hub, trust.as_ref(), token).await
}

/// Connects to the hub's gRPC API, trusting its TLS certificate by `trust` (required for an
/// `https://` hub), calling with `token`.
pub async fn channel_trusting(
    hub: &str,
    trust: Option<&HubTrust>,
    token: Option<&str>,
) -> anyhow::Result<HubChannel> {
    let bearer = token
        .map(|token| {
            MetadataValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| anyhow::anyhow!("{TOKEN_ENV} holds characters a token never has"))
        })
        .transpose()?;
    Ok(InterceptedService::new(
        connect_channel(hub, trust).await?,
        Credentials { bearer },
    ))
}

/// Where client commands find what they trust a TLS hub by: a CA file, or the CA's sha256.
pub const CA_ENV: &str = "EDGESHIP_HUB_CA";
pub const FINGERPRINT_ENV: &str = "EDGESHIP_HUB_FINGERPRINT";

/// What the caller trusts an `https://` hub by, from the environment.
pub fn hub_trust_from_env() -> anyhow::Result<HubTrust> {
    if let Some(file) = std::env::var_os(CA_ENV).filter(|f| !f.is_empty()) {
        let pem = std::fs::read_to_string(&file).with_context(|| {
            format!("reading {CA_ENV}={}", std::path::Path::new(&file).display())
        })?;
        return Ok(HubTrust::CaPem(pem));
    }
    if let Ok(fingerprint) = std::env::var(FINGERPRINT_ENV)
        && !fingerprint.trim().is_empty()
    {
        return Ok(HubTrust::Fingerprint(fingerprint));
    }
    bail!(
        "the hub speaks TLS: set {CA_ENV} to its CA certificate (the hub's <data>/keys/ca.crt) \
         or {FINGERPRINT_ENV} to the sha256 the hub printed when it started"
    )
}

async fn connect_channel(hub: &str, trust: Option<&HubTrust>) -> anyhow::Result<Channel> {
    let configure = |endpoint: tonic::transport::Endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::server::WINDOW_BYTES)
            .initial_connection_window_size(2 * crate::server::WINDOW_BYTES)
    };
    if hub.starts_with("https://") {
        let trust = trust.context("an https:// hub needs a CA or fingerprint to trust it by")?;
        return edgeship_proto::tls::connect(hub, configure, trust)
            .await
            .map_err(|err| anyhow::anyhow!("cannot reach the hub at {hub}: {err}"));
    }
    let endpoint =
        Channel::from_shared(hub.to_owned()).with_context(|| format!("invalid hub URL {hub:?}"))?;
    let channel = configure(endpoint)
        .connect()
        .await
        .with_context(|| format!("cannot reach the hub at {hub}"))?;
    Ok(channel)
}

pub async fn connect(hub: &str) -> anyhow::Result<RegistryClient> {
    Ok(ModelRegistryClient::new(channel(hub).await?))
}

/// A client of the entry-module registry.
pub async fn connect_modules(hub: &str) -> anyhow::Result<ModuleClient> {
    Ok(ModuleRegistryClient::new(channel(hub).await?))
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
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        _ => "hub error",
    };
    anyhow::anyhow!("{code}: {}", status.message())
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
    client: &mut DeploymentsClient<HubChannel>,
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
