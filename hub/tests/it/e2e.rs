//! The product's core path in one process: hub + embedded broker + agent on loopback.
//! register → deploy → Healthy → /score matches scikit-learn → version 2 switches under load
//! with zero failed requests → delete stops serving.

use edgeship_hub::fleet::ServiceState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgeship_agent::RunningAgent;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;

use crate::support::*;

const CONVERGE: Duration = Duration::from_secs(60);

pub use edgeship_hub::client::deploy_to_devices as deploy;

pub async fn deployment_state(url: &str, name: &str) -> pb::Deployment {
    try_deployment_state(url, name)
        .await
        .expect("get deployment")
}

/// The deployment, or the hub's refusal (`NOT_FOUND` once it is deleted).
pub async fn try_deployment_state(url: &str, name: &str) -> Result<pb::Deployment, tonic::Status> {
    let mut client = DeploymentsClient::connect(url.to_owned())
        .await
        .expect("connect");
    client
        .get_deployment(pb::GetDeploymentRequest {
            name: format!("deployments/{name}"),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Polls the hub until the deployment's aggregate state is `state`.
pub async fn wait_for_deployment(url: &str, name: &str, state: pb::ServiceState) -> pb::Deployment {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let deployment = deployment_state(url, name).await;
        if deployment.state() == state {
            return deployment;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {name} did not become {state:?}: {deployment:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn register_diabetes_with_sample(
    client: &mut edgeship_hub::client::RegistryClient,
) -> u32 {
    let sample = std::fs::read_to_string(fixture("diabetes/sample_input.json")).expect("sample");
    let model = NewModel {
        model_id: "diabetes".into(),
        sample_input: Some(sample),
        ..NewModel::default()
    };
    register(client, model, &fixture("diabetes/model.onnx"))
        .await
        .version
}

/// A hub with `diabetes:1` registered (with its sample input) and an in-process agent
/// `device` serving `model` as deployment `web`: where most protocol and scoring tests start.
/// Destructure it binding `hub` and `dir` (`dir: _dir` if unused): dropping either stops the
/// hub or deletes the agent's data folder under the running agent.
pub struct ServingWeb {
    pub hub: TestHub,
    pub registry: edgeship_hub::client::RegistryClient,
    pub agent: RunningAgent,
    /// The agent's data folder (a test may restart the agent on it).
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    /// The desired generation the agent applied to get there.
    pub applied: u64,
}

pub async fn serving_web(device: &str, model: &str) -> ServingWeb {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    register_diabetes_with_sample(&mut registry).await;
    let dir = tempfile::tempdir().expect("temp");
    // Tract alone: tests use this device as one that lacks the OpenCL runtime.
    let agent = RunningAgent::start(tract_only_agent_config(device, &hub, dir.path()))
        .await
        .expect("agent");
    deploy(&hub.url(), "web", model, free_port(), &[device])
        .await
        .expect("deploy");
    let addr = wait_serving(&agent, "web", "diabetes:1").await;
    // The view turns Healthy before the pass that applied it records its generation, and an
    // earlier generation (the empty one issued when the device first connected) may be the
    // one recorded until then: wait for the generation the hub issued with the deployment.
    let issued = issued_generation(&hub.url(), device).await;
    let applied = agent
        .wait_for(CONVERGE, |v| v.applied_generation >= issued)
        .await
        .expect("applied")
        .applied_generation;
    ServingWeb {
        hub,
        registry,
        agent,
        dir,
        addr,
        applied,
    }
}

/// The newest generation the hub has issued to `device`.
pub async fn issued_generation(url: &str, device: &str) -> u64 {
    let mut fleet = pb::fleet_client::FleetClient::connect(url.to_owned())
        .await
        .expect("connect");
    fleet
        .get_device(pb::GetDeviceRequest {
            name: format!("devices/{device}"),
        })
        .await
        .expect("get device")
        .into_inner()
        .desired_generation
}

pub async fn wait_serving(
    agent: &RunningAgent,
    deployment: &str,
    model: &str,
) -> std::net::SocketAddr {
    let view = agent
        .wait_for(CONVERGE, |v| {
            v.workload(deployment).is_some_and(|w| {
                w.state == ServiceState::Healthy && w.serving_model == model && w.addr.is_some()
            })
        })
        .await
        .unwrap_or_else(|view| panic!("{deployment} never served {model}: {view:?}"));
    view.workload(deployment)
        .and_then(|w| w.addr)
        .expect("endpoint address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_deploy_score_switch_under_load_and_delete() {
    core_path(TestHub::start().await).await;
}

#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install -y mosquitto)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_core_path_also_runs_over_mosquitto() {
    let test = "the_core_path_also_runs_over_mosquitto";
    let Some(mosquitto) = testkit::Mosquitto::start(test) else {
        return;
    };
    core_path(TestHub::with_broker(&mosquitto.url()).await).await;
    mosquitto.stop();
}

/// register → deploy → Healthy → score → v2 under load with zero failures → delete.
async fn core_path(hub: TestHub) {
    let mut client = hub.client().await;
    register_diabetes_with_sample(&mut client).await;
    let agent_dir = tempfile::tempdir().expect("temp");
    let agent = RunningAgent::start(agent_config("edge-1", &hub, agent_dir.path()))
        .await
        .expect("agent starts");
    let port = free_port();
    deploy(
        &hub.url(),
        "diabetes-web",
        "diabetes:latest",
        port,
        &["edge-1"],
    )
    .await
    .expect("deploy");

    let addr = wait_serving(&agent, "diabetes-web", "diabetes:1").await;
    let deployment =
        wait_for_deployment(&hub.url(), "diabetes-web", pb::ServiceState::Healthy).await;
    assert_eq!(deployment.resolved_version, 1);
    assert_eq!(deployment.devices.len(), 1);
    assert_eq!(deployment.devices[0].serving_model, "diabetes:1");

    let health = http(addr, "GET", "/", &[], b"").await.expect("health");
    assert_eq!((health.status, health.body.as_str()), (200, "Healthy"));
    let rows = serde_json::json!({"data": expected("diabetes")["inputs"]});
    let scored = score(addr, &rows).await.expect("score");
    assert_diabetes_predictions(&scored);

    // Version 2 rolls out (the deployment follows `latest`) while a client keeps scoring.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, rows) = (stop.clone(), ok.clone(), failed.clone(), rows.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                match score(addr, &rows).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    // Requests flow before the switch, and keep flowing after it, on the new version.
    let answered = |at_least: u64| {
        let ok = ok.clone();
        testkit::eventually(
            Duration::from_secs(60),
            "scoring requests answered",
            move || {
                let ok = ok.clone();
                async move { (ok.load(Ordering::Relaxed) >= at_least).then_some(()) }
            },
        )
    };
    answered(10).await;
    assert_eq!(register_diabetes_with_sample(&mut client).await, 2);
    wait_serving(&agent, "diabetes-web", "diabetes:2").await;
    answered(ok.load(Ordering::Relaxed) + 10).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load loop");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 10, "the load loop ran only {ok} requests");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the switch",
        ok + failed
    );
    let deployment =
        wait_for_deployment(&hub.url(), "diabetes-web", pb::ServiceState::Healthy).await;
    assert_eq!(deployment.resolved_version, 2);

    // Deleting the deployment stops the endpoint on the device.
    let mut deployments = DeploymentsClient::connect(hub.url())
        .await
        .expect("connect");
    deployments
        .delete_deployment(pb::DeleteDeploymentRequest {
            name: "deployments/diabetes-web".into(),
        })
        .await
        .expect("delete");
    agent
        .wait_for(CONVERGE, |v| v.workload("diabetes-web").is_none())
        .await
        .expect("workload removed");
    assert!(
        http(addr, "GET", "/", &[], b"").await.is_err(),
        "endpoint still answers"
    );
    agent.stop().await.expect("agent stops");
}
