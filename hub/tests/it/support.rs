//! Shared test fixtures: a hub on an ephemeral port over a temporary data dir, clients, and
//! paths to the committed ONNX fixtures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeship_hub::client::{self, RegistryClient};
use edgeship_hub::registry::{Limits, ModelVersion, NewModel};
use edgeship_hub::{HubConfig, RunningHub};
use edgeship_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;

/// Logs to the test output when RUST_LOG is set (e.g. `RUST_LOG=edgeship_agent=debug`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

pub use testkit::fixture;

/// A hub running in-process with its data in a temporary folder.
pub struct TestHub {
    pub hub: Option<RunningHub>,
    pub data: tempfile::TempDir,
    pub limits: Limits,
    pub mqtt: Option<edgeship_hub::Mqtt>,
    pub state_validity: Duration,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        Self::with(limits, None).await
    }

    /// A hub that uses an external broker instead of its embedded one.
    pub async fn with_broker(url: &str) -> Self {
        let (host, port) = edgeship_hub::server::parse_mqtt_url(url).expect("broker url");
        Self::with(
            Limits::default(),
            Some(edgeship_hub::Mqtt::External {
                host,
                port,
                tls: false,
            }),
        )
        .await
    }

    /// A hub whose desired states hold for `validity` (signed again every quarter of it).
    pub async fn with_state_validity(validity: Duration) -> Self {
        Self::with_all(Limits::default(), None, validity).await
    }

    async fn with(limits: Limits, mqtt: Option<edgeship_hub::Mqtt>) -> Self {
        Self::with_all(limits, mqtt, edgeship_hub::trust::DEFAULT_STATE_VALIDITY).await
    }

    async fn with_all(
        limits: Limits,
        mqtt: Option<edgeship_hub::Mqtt>,
        state_validity: Duration,
    ) -> Self {
        init_logs();
        let data = tempfile::tempdir().expect("temp dir");
        let mut hub = Self {
            hub: None,
            data,
            limits,
            mqtt,
            state_validity,
        };
        hub.hub = Some(RunningHub::start(hub.config()).await.expect("hub starts"));
        hub
    }

    fn config(&self) -> HubConfig {
        let local = HubConfig::local(self.data.path().to_owned());
        HubConfig {
            limits: self.limits,
            mqtt: self.mqtt.clone().unwrap_or(local.mqtt.clone()),
            state_validity: self.state_validity,
            ..local
        }
    }

    pub fn url(&self) -> String {
        self.hub.as_ref().expect("hub running").url()
    }

    pub fn mqtt_url(&self) -> String {
        self.hub.as_ref().expect("hub running").mqtt_url()
    }

    /// The key devices check this hub's desired states with.
    pub fn director_key(&self) -> edgeship_domain::trust::PublicKey {
        self.hub.as_ref().expect("hub running").director_key()
    }

    /// The hub's director key pair, to sign states as this hub would (attack tests).
    pub fn director_signing_key(&self) -> edgeship_domain::trust::SigningKey {
        let pkcs8 =
            std::fs::read(edgeship_hub::trust::keys_dir(self.data.path()).join("director.key"))
                .expect("director key");
        edgeship_domain::trust::SigningKey::from_pkcs8(&pkcs8).expect("a key")
    }

    pub async fn client(&self) -> RegistryClient {
        client::connect(&self.url()).await.expect("connect")
    }

    /// Stops the hub and starts a new one over the same data dir.
    pub async fn restart(&mut self) {
        let hub = self.hub.take().expect("hub running");
        hub.stop().await.expect("hub stops cleanly");
        let hub = RunningHub::start(self.config())
            .await
            .expect("hub restarts on the same data dir");
        self.hub = Some(hub);
    }

    /// Every blob file currently in the store.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        files_below(&self.data.path().join("blobs/sha256"))
    }

    pub fn staging_entries(&self) -> Vec<PathBuf> {
        let dir = self.data.path().join("blobs/staging");
        std::fs::read_dir(dir)
            .expect("staging dir")
            .map(|e| e.expect("entry").path())
            .collect()
    }

    /// Polls until the staging folder is empty (an aborted upload is cleaned up by the
    /// server task as it unwinds, a moment after the client gives up).
    pub async fn wait_for_empty_staging(&self) {
        for _ in 0..100 {
            if self.staging_entries().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("staging still holds {:?}", self.staging_entries());
    }
}

pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

pub fn new_model(name: &str) -> NewModel {
    NewModel {
        model_id: name.to_owned(),
        ..NewModel::default()
    }
}

/// Registers and reads the result back as the registry's record, for field-by-field checks.
pub async fn register(client: &mut RegistryClient, model: NewModel, path: &Path) -> ModelVersion {
    let registered = client::register(client, model, path)
        .await
        .expect("registration succeeds");
    ModelVersion::try_from(registered).expect("a valid model")
}

pub async fn register_diabetes(client: &mut RegistryClient, name: &str) -> ModelVersion {
    register(
        client,
        new_model(name),
        &fixture("diabetes").join("model.onnx"),
    )
    .await
}

/// Sends exactly these registration messages, for tests of malformed streams.
pub async fn register_raw(
    client: &mut RegistryClient,
    messages: Vec<pb::register_model_request::Payload>,
) -> Result<pb::Model, tonic::Status> {
    let (sender, receiver) = tokio::sync::mpsc::channel(messages.len().max(1));
    for payload in messages {
        sender
            .send(pb::RegisterModelRequest {
                payload: Some(payload),
            })
            .await
            .expect("queue message");
    }
    drop(sender);
    client
        .register_model(ReceiverStream::new(receiver))
        .await
        .map(tonic::Response::into_inner)
}

pub fn metadata(name: &str, framework: &str) -> pb::register_model_request::Payload {
    pb::register_model_request::Payload::Metadata(pb::ModelMetadata {
        model_id: name.to_owned(),
        framework: framework.to_owned(),
        ..Default::default()
    })
}

pub fn file_header(path: &str, size: u64) -> pb::register_model_request::Payload {
    pb::register_model_request::Payload::File(pb::FileHeader {
        path: path.to_owned(),
        size_bytes: size,
        sha256: String::new(),
    })
}

pub fn chunk(bytes: &[u8]) -> pb::register_model_request::Payload {
    pb::register_model_request::Payload::Chunk(bytes.to_vec().into())
}

pub fn commit(file_count: u32) -> pb::register_model_request::Payload {
    pb::register_model_request::Payload::Commit(pb::Commit { file_count })
}

/// One version by resource name (`models/diabetes/versions/1`), as the API returns it.
pub async fn get_model(client: &mut RegistryClient, name: &str) -> pb::Model {
    client
        .get_model(pb::GetModelRequest { name: name.into() })
        .await
        .expect("get model")
        .into_inner()
}

pub async fn list(client: &mut RegistryClient, request: pb::ListModelsRequest) -> Vec<String> {
    client
        .list_models(request)
        .await
        .expect("list succeeds")
        .into_inner()
        .models
        .into_iter()
        .map(|m| format!("{}:{}", m.model_id, m.version))
        .collect()
}

pub async fn list_all(client: &mut RegistryClient) -> Vec<String> {
    list(client, pb::ListModelsRequest::default()).await
}

pub use testkit::{assert_diabetes_predictions, expected, free_port, http, score};

/// An agent of `hub` that checks its desired states with the hub's director key.
pub fn agent_config(
    device_id: &str,
    hub: &TestHub,
    data_dir: &Path,
) -> edgeship_agent::AgentConfig {
    edgeship_agent::config::RawConfig {
        device_id: Some(device_id.to_owned()),
        broker: Some(hub.mqtt_url()),
        data_dir: Some(data_dir.to_owned()),
        serve_host: Some([127, 0, 0, 1].into()),
        keep_alive_secs: Some(5),
        director_key: Some(hub.director_key().to_string()),
        // Plain MQTT on loopback; desired states are still checked with the director key.
        insecure: Some(true),
        ..Default::default()
    }
    .validate()
    .expect("valid agent config")
}

/// An agent config that announces and uses tract alone, whatever this machine has (tests of
/// a device that lacks a runtime).
pub fn tract_only_agent_config(
    device_id: &str,
    hub: &TestHub,
    data_dir: &Path,
) -> edgeship_agent::AgentConfig {
    edgeship_agent::AgentConfig {
        runtimes: Some(vec![edgeship_domain::RuntimeKind::Tract]),
        ..agent_config(device_id, hub, data_dir)
    }
}

pub use testkit::now_ms;

/// Applies a manifest, as `edgeship deploy apply -f` does.
pub async fn apply(
    url: &str,
    manifest: &str,
) -> Result<pb::ApplyDeploymentResponse, tonic::Status> {
    edgeship_proto::v1::deployments_client::DeploymentsClient::connect(url.to_owned())
        .await
        .expect("connect")
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest: manifest.to_owned(),
            dry_run: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits (30 s at most) until the hub has heard from `device` after `since_ms`.
pub async fn wait_heard_from(url: &str, device: &str, since_ms: i64) {
    testkit::wait_heard_from(url, device, since_ms, Duration::from_secs(30)).await;
}
