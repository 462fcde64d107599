//! Admin helpers for the system tests: register and deploy through the hub's gRPC API.

use std::path::Path;
use std::time::Duration;

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;

pub const CONVERGE: Duration = Duration::from_secs(120);

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

pub fn big_model(dir: &Path, extra_bytes: usize) -> std::path::PathBuf {
    testkit::big_model(dir, "big-model", extra_bytes, 7)
}

pub async fn register(hub: &str, name: &str, path: &Path) -> u32 {
    let mut registry = client::connect(hub).await.expect("connect");
    let sample =
        std::fs::read_to_string(testkit::fixture("diabetes/sample_input.json")).expect("sample");
    let model = NewModel {
        model_id: name.into(),
        framework: "onnx".into(),
        sample_input: Some(sample),
        ..NewModel::default()
    };
    client::register(&mut registry, model, path)
        .await
        .expect("register")
        .version
}

pub async fn deploy(hub: &str, name: &str, model: &str, port: u16, device: &str) {
    client::deploy_to_devices(hub, name, model, port, &[device])
        .await
        .expect("create deployment");
}

/// Waits until the hub reports the device serving `model` for the deployment, healthy.
pub async fn wait_serving(hub: &str, deployment: &str, model: &str) {
    wait_serving_within(hub, deployment, model, CONVERGE).await;
}

/// Like [`wait_serving`], failing after `limit`.
pub async fn wait_serving_within(hub: &str, deployment: &str, model: &str, limit: Duration) {
    let name = format!("deployments/{deployment}");
    testkit::eventually(limit, &format!("{deployment} serving {model}"), || {
        let name = name.clone();
        let hub = hub.to_owned();
        let model = model.to_owned();
        async move {
            let mut client = DeploymentsClient::connect(hub).await.ok()?;
            let d = client
                .get_deployment(pb::GetDeploymentRequest { name })
                .await
                .ok()?
                .into_inner();
            let serving = d.state() == pb::ServiceState::Healthy
                && d.devices.iter().all(|w| w.serving_model == model);
            serving.then_some(())
        }
    })
    .await;
}

pub fn diabetes_rows() -> serde_json::Value {
    serde_json::json!({"data": testkit::expected("diabetes")["inputs"]})
}

pub fn log_contains(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|log| log.contains(text))
}

pub use testkit::{now_ms, wait_heard_from};

/// A hub process with its embedded broker and an agent process `device` joined to it, their
/// data and logs (`hub.log`, `agent.log`) in `dir`.
pub fn hub_and_agent(
    dir: &testkit::TempDir,
    device: &str,
) -> (testkit::HubProcess, testkit::Process) {
    let hub = testkit::HubProcess::start(
        &dir.path().join("hub"),
        Err(testkit::free_port()),
        &dir.path().join("hub.log"),
    );
    let agent = testkit::start_agent(
        device,
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
    );
    (hub, agent)
}
