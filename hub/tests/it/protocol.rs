//! The device protocol under bad input: malformed payloads on every device topic, desired
//! states that go backwards or name another device, a runtime the device lacks — and the
//! deployment API's refusals.

use edgeship_hub::fleet::ServiceState;
use edgeship_hub::registry::ModelVersion;
use std::time::Duration;

use edgeship_agent::RunningAgent;
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use prost::Message;
use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::e2e::{
    ServingWeb, deploy, register_diabetes_with_sample, serving_web, wait_for_deployment,
};
use crate::support::*;

/// `state` signed as `hub` signs desired states (valid for an hour): what the hub itself
/// could publish, to test how agents take states the hub never computed.
pub fn as_hub(hub: &TestHub, state: &pb::DesiredState) -> Vec<u8> {
    let state = pb::DesiredState {
        expires_at_ms: now_ms() + 3_600_000,
        ..state.clone()
    };
    testkit::trust::sign_state(&hub.director_signing_key(), &state)
}

/// A raw MQTT client, as a misbehaving or malicious device would use.
pub async fn raw_client(mqtt_url: &str, id: &str) -> AsyncClient {
    let (host, port) = edgeship_hub::server::parse_mqtt_url(mqtt_url).expect("url");
    let mut options = MqttOptions::new(id, host, port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 32);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

/// A raw MQTT client that also hands over what arrives on `topic`.
pub async fn raw_listener(
    mqtt_url: &str,
    id: &str,
    topic: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) {
    let (host, port) = edgeship_hub::server::parse_mqtt_url(mqtt_url).expect("url");
    let mut options = MqttOptions::new(id, host, port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 32);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = tx.send(p.payload);
            }
        }
    });
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // The subscription is in place once the broker acknowledges it; a round trip through
    // the same connection (a retained-free publish to ourselves) proves that.
    client
        .publish(topic, QoS::AtLeastOnce, false, Vec::new())
        .await
        .expect("probe");
    (client, rx)
}

/// A model workload for `model` on `port`, as a hub would send it (with the signature of the
/// model's ONNX file).
pub fn wire_workload(
    deployment: &str,
    port: u16,
    runtime: pb::Runtime,
    model: &ModelVersion,
) -> pb::Workload {
    let signature = model.files.iter().find_map(|f| f.onnx.clone());
    pb::Workload {
        deployment: deployment.into(),
        endpoint: Some(pb::Endpoint {
            port: u32::from(port),
            ..Default::default()
        }),
        kind: Some(pb::workload::Kind::Model(pb::ModelWorkload {
            runtime: runtime.into(),
            models: vec![pb::DeployedModel {
                model_id: model.model_id.clone(),
                version: model.version,
                files: model
                    .files
                    .iter()
                    .map(|f| pb::BlobRef::from(&f.blob_ref()))
                    .collect(),
                entry_file: "model.onnx".into(),
                inputs: signature
                    .iter()
                    .flat_map(|s| s.inputs.iter().map(pb::TensorSpec::from))
                    .collect(),
                outputs: signature
                    .iter()
                    .flat_map(|s| s.outputs.iter().map(pb::TensorSpec::from))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        health: None,
    }
}

/// Publishes `payload` on a device's topic, as that device (or the hub) would.
pub async fn send(client: &AsyncClient, device: &str, kind: DeviceTopic, payload: Vec<u8>) {
    client
        .publish(
            topics::device(device, kind),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_on_device_topics_are_ignored_by_hub_and_agent() {
    let ServingWeb {
        hub,
        mut registry,
        agent,
        addr,
        dir: _dir,
        ..
    } = serving_web("edge-m", "diabetes:1").await;

    let ghost_chunks = topics::device("ghost", DeviceTopic::BlobResponse);
    let (attacker, mut replies) =
        raw_listener(&hub.mqtt_url(), "garbage-sender", &ghost_chunks).await;
    // Our own probe comes back first.
    let probe = tokio::time::timeout(Duration::from_secs(30), replies.recv()).await;
    assert!(matches!(probe, Ok(Some(p)) if p.is_empty()), "probe");
    let garbage = vec![0xff, 0x00, 0x13, 0x37, 0xde, 0xad];
    for kind in [
        DeviceTopic::Birth,
        DeviceTopic::Reported,
        DeviceTopic::BlobRequest,
    ] {
        for device in ["edge-m", "ghost", "../x"] {
            send(&attacker, device, kind, garbage.clone()).await;
        }
    }
    // The agent's own inbound topics: garbage, a desired state for another device, and a
    // chunk nobody asked for.
    send(&attacker, "edge-m", DeviceTopic::Desired, garbage.clone()).await;
    let foreign = pb::DesiredState {
        device_id: "someone-else".into(),
        generation: 999,
        ..Default::default()
    };
    send(
        &attacker,
        "edge-m",
        DeviceTopic::Desired,
        as_hub(&hub, &foreign),
    )
    .await;
    send(
        &attacker,
        "edge-m",
        DeviceTopic::BlobResponse,
        garbage.clone(),
    )
    .await;
    // A device asking for a blob outside its desired state gets a refusal, not the bytes:
    // also when it asks for a broadcast (which would send them to everyone listening).
    let model = registry
        .get_model(pb::GetModelRequest {
            name: "models/diabetes/versions/1".into(),
        })
        .await
        .expect("model")
        .into_inner();
    send(
        &attacker,
        "ghost",
        DeviceTopic::BlobRequest,
        pb::BlobRequest {
            sha256: model.files[0].sha256.clone(),
            offset: 0,
            length: 1024,
            broadcast: true,
        }
        .encode_to_vec(),
    )
    .await;
    // Proof the hub processed all of it: its refusal to the ghost arrives, after the garbage
    // on the same topic.
    let refusal = tokio::time::timeout(Duration::from_secs(30), replies.recv())
        .await
        .expect("the hub answers the ghost")
        .expect("reply");
    let refusal = pb::BlobChunk::decode(refusal.as_ref()).expect("a chunk message");
    assert!(
        refusal
            .error
            .contains("is not part of device ghost's desired state"),
        "{}",
        refusal.error
    );
    assert!(refusal.data.is_empty());
    // Proof the agent processed its garbage: a replay of a generation it already applied,
    // sent after the garbage on the same topic, makes it report.
    let applied = agent.view().borrow().applied_generation;
    let before = now_ms();
    let replay = pb::DesiredState {
        device_id: "edge-m".into(),
        generation: applied,
        ..Default::default()
    };
    send(
        &attacker,
        "edge-m",
        DeviceTopic::Desired,
        as_hub(&hub, &replay),
    )
    .await;
    wait_heard_from(&hub.url(), "edge-m", before).await;

    // Both daemons are alive and their state is intact.
    let rows = serde_json::json!({"data": expected("diabetes")["inputs"]});
    assert_diabetes_predictions(&score(addr, &rows).await.expect("agent still serves"));
    let deployment = wait_for_deployment(&hub.url(), "web", pb::ServiceState::Healthy).await;
    assert_eq!(deployment.devices.len(), 1);
    assert_eq!(list_all(&mut registry).await, ["diabetes:1"]);
    let view = agent.view().borrow().clone();
    assert_eq!(
        view.workload("web").map(|w| w.serving_model.as_str()),
        Some("diabetes:1")
    );
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_is_ignored_and_a_missing_runtime_is_unschedulable() {
    let ServingWeb {
        hub,
        mut registry,
        agent,
        applied,
        dir: _dir,
        ..
    } = serving_web("edge-g", "diabetes:1").await;

    // Replay an older generation that asks for nothing: the agent must not tear down. It
    // answers with a report of what it runs, which proves it processed the replay.
    let attacker = raw_client(&hub.mqtt_url(), "replayer").await;
    let before = now_ms();
    let stale = pb::DesiredState {
        device_id: "edge-g".into(),
        generation: applied - 1,
        ..Default::default()
    };
    send(
        &attacker,
        "edge-g",
        DeviceTopic::Desired,
        as_hub(&hub, &stale),
    )
    .await;
    wait_heard_from(&hub.url(), "edge-g", before).await;
    let view = agent.view().borrow().clone();
    // Never the replayed one; a newer generation from the hub may have arrived meanwhile.
    assert!(
        view.applied_generation >= applied,
        "generation {} applied after {applied}: the replay was taken",
        view.applied_generation
    );
    assert_eq!(
        view.workload("web").map(|w| w.state),
        Some(ServiceState::Healthy)
    );

    // A newer generation asking for a runtime this device lacks: Unschedulable, and the
    // current version keeps serving.
    let model = registry
        .get_model(pb::GetModelRequest {
            name: "models/diabetes/versions/1".into(),
        })
        .await
        .expect("model")
        .into_inner();
    let port = view
        .workload("web")
        .and_then(|w| w.addr)
        .expect("addr")
        .port();
    let model = ModelVersion::try_from(model).expect("a valid model");
    let newer = pb::DesiredState {
        device_id: "edge-g".into(),
        generation: applied + 10,
        workloads: vec![wire_workload("web", port, pb::Runtime::Opencl, &model)],
        ..Default::default()
    };
    send(
        &attacker,
        "edge-g",
        DeviceTopic::Desired,
        as_hub(&hub, &newer),
    )
    .await;
    let view = agent
        .wait_for(Duration::from_secs(30), |v| {
            v.workload("web")
                .is_some_and(|w| w.state == ServiceState::Unschedulable)
        })
        .await
        .expect("unschedulable");
    let workload = view.workload("web").expect("workload");
    assert!(
        workload.error.contains("runtime opencl is not available"),
        "{}",
        workload.error
    );
    assert_eq!(workload.serving_model, "diabetes:1");
    agent.stop().await.expect("stop");
}

#[tokio::test]
async fn deployment_requests_are_checked_and_models_in_use_cannot_be_deleted() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    register_diabetes(&mut registry, "diabetes").await;
    let url = hub.url();
    let refused = |result: Result<pb::Deployment, tonic::Status>, code: tonic::Code, text: &str| {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(text),
            "expected {text:?} in {:?}",
            status.message()
        );
    };
    refused(
        deploy(&url, "web", "nothing:1", 8080, &["d1"]).await,
        tonic::Code::NotFound,
        "model nothing does not exist",
    );
    refused(
        deploy(&url, "web", "diabetes:7", 8080, &["d1"]).await,
        tonic::Code::NotFound,
        "has no version 7",
    );
    refused(
        deploy(&url, "web", "diabetes:1", 8080, &[]).await,
        tonic::Code::InvalidArgument,
        "target: is empty",
    );
    refused(
        deploy(&url, "web", "diabetes:1", 0, &["d1"]).await,
        tonic::Code::InvalidArgument,
        "port",
    );
    refused(
        deploy(&url, "bad name", "diabetes:1", 8080, &["d1"]).await,
        tonic::Code::InvalidArgument,
        "invalid deployment name",
    );
    refused(
        deploy(&url, "web", "diabetes:1", 8080, &["bad/id"]).await,
        tonic::Code::InvalidArgument,
        "invalid device id",
    );
    deploy(&url, "web", "diabetes:1", 8080, &["d1"])
        .await
        .expect("first deployment");
    refused(
        deploy(&url, "web", "diabetes:1", 8081, &["d2"]).await,
        tonic::Code::AlreadyExists,
        "already exists",
    );
    refused(
        deploy(&url, "other", "diabetes:1", 8080, &["d1"]).await,
        tonic::Code::FailedPrecondition,
        "port 8080 on device d1 is already used by deployment web",
    );
    deploy(&url, "other", "diabetes:1", 8080, &["d2"])
        .await
        .expect("same port, other device");

    let delete = registry
        .delete_model(pb::DeleteModelRequest {
            name: "models/diabetes/versions/1".into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(delete.code(), tonic::Code::FailedPrecondition);
    assert!(
        delete.message().contains("used by deployment other, web"),
        "{}",
        delete.message()
    );
    let mut deployments = DeploymentsClient::connect(url.clone())
        .await
        .expect("connect");
    for name in ["web", "other"] {
        deployments
            .delete_deployment(pb::DeleteDeploymentRequest {
                name: format!("deployments/{name}"),
            })
            .await
            .expect("delete deployment");
    }
    let missing = deployments
        .delete_deployment(pb::DeleteDeploymentRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    registry
        .delete_model(pb::DeleteModelRequest {
            name: "models/diabetes/versions/1".into(),
        })
        .await
        .expect("no longer in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_hub_refuses_is_retried_until_it_is_allowed() {
    let ServingWeb {
        hub,
        mut registry,
        agent,
        applied,
        dir: _dir,
        ..
    } = serving_web("edge-r", "diabetes:1").await;
    let digits = register(&mut registry, new_model("digits"), &fixture("digits")).await;

    // A desired state (ahead of the hub's generations) naming files the hub does not yet
    // let this device fetch: the refusal is transient, so the workload keeps transitioning
    // with the reason while the old version serves.
    let port = free_port();
    let digits_workload = wire_workload("digits", port, pb::Runtime::Tract, &digits);
    let attacker = raw_client(&hub.mqtt_url(), "ahead").await;
    let ahead = pb::DesiredState {
        device_id: "edge-r".into(),
        generation: applied + 100,
        workloads: vec![digits_workload],
        ..Default::default()
    };
    send(
        &attacker,
        "edge-r",
        DeviceTopic::Desired,
        as_hub(&hub, &ahead),
    )
    .await;
    let view = agent
        .wait_for(Duration::from_secs(30), |v| {
            v.workload("digits")
                .is_some_and(|w| w.error.contains("the hub refused the download"))
        })
        .await
        .expect("refused, retrying");
    let digits_view = view.workload("digits").expect("workload");
    assert_eq!(
        digits_view.state,
        ServiceState::Transitioning,
        "{digits_view:?}"
    );
    assert!(
        digits_view.error.contains("retrying"),
        "{}",
        digits_view.error
    );

    // The hub now lets the device fetch digits (a deployment of its own names it); the
    // retry, with no new desired state, succeeds.
    deploy(
        &hub.url(),
        "digits-too",
        "digits:1",
        free_port(),
        &["edge-r"],
    )
    .await
    .expect("deploy digits");
    let view = agent
        .wait_for(Duration::from_secs(60), |v| {
            v.workload("digits")
                .is_some_and(|w| w.state == ServiceState::Healthy)
        })
        .await
        .expect("the retry succeeds");
    assert_eq!(
        view.workload("digits").map(|w| w.serving_model.as_str()),
        Some(format!("digits:{}", digits.version).as_str())
    );
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_keeps_a_workload_off_a_device_that_lacks_its_runtime() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    register_diabetes_with_sample(&mut registry).await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = RunningAgent::start(tract_only_agent_config("edge-c", &hub, dir.path()))
        .await
        .expect("agent");
    // The hub knows the device's capabilities once its birth has arrived.
    wait_heard_from(&hub.url(), "edge-c", 0).await;
    let mut deployments = DeploymentsClient::connect(hub.url())
        .await
        .expect("connect");
    deployments
        .create_deployment(pb::CreateDeploymentRequest {
            deployment: Some(pb::Deployment {
                deployment_id: "gpu".into(),
                model: "diabetes:1".into(),
                runtime: "opencl".into(),
                endpoint: Some(pb::Endpoint {
                    port: u32::from(free_port()),
                    ..Default::default()
                }),
                target: Some(pb::Target {
                    device_ids: vec!["edge-c".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("create");
    let deployment = wait_for_deployment(&hub.url(), "gpu", pb::ServiceState::Unschedulable).await;
    assert_eq!(deployment.devices.len(), 1);
    assert!(
        deployment.devices[0]
            .error
            .contains("runtime opencl is not available on this device (available: tract)"),
        "{:?}",
        deployment.devices[0]
    );
    // Nothing was sent, so nothing was downloaded.
    assert_eq!(agent.view().borrow().workload("gpu"), None);
    let cached = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0);
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_again_for_what_serves_after_a_failed_switch_makes_the_device_healthy() {
    let ServingWeb {
        hub,
        agent,
        applied,
        dir: _dir,
        ..
    } = serving_web("edge-s", "diabetes:1").await;

    // The hub's own desired state, as retained on the device's topic.
    let desired_topic = topics::device("edge-s", DeviceTopic::Desired);
    let (attacker, mut desired) = raw_listener(&hub.mqtt_url(), "switcher", &desired_topic).await;
    let current = loop {
        let payload = tokio::time::timeout(Duration::from_secs(30), desired.recv())
            .await
            .expect("the retained desired state")
            .expect("payload");
        if let Some(state) = testkit::trust::open_desired(payload.as_ref())
            && state.generation == applied
        {
            break state;
        }
    };

    // A switch that fails for good: the workload's entry file is not among its files.
    let mut broken = current.clone();
    broken.generation = applied + 100;
    if let Some(pb::workload::Kind::Model(model)) = &mut broken.workloads[0].kind {
        model.models[0].entry_file = "missing.onnx".into();
    }
    send(
        &attacker,
        "edge-s",
        DeviceTopic::Desired,
        as_hub(&hub, &broken),
    )
    .await;
    agent
        .wait_for(Duration::from_secs(30), |v| {
            v.workload("web")
                .is_some_and(|w| w.state == ServiceState::Failed)
        })
        .await
        .expect("the switch fails");

    // Asked again for what serves: nothing to apply, and the failure no longer applies.
    let mut again = current;
    again.generation = applied + 101;
    send(
        &attacker,
        "edge-s",
        DeviceTopic::Desired,
        as_hub(&hub, &again),
    )
    .await;
    let view = agent
        .wait_for(Duration::from_secs(30), |v| {
            v.applied_generation == applied + 101
        })
        .await
        .expect("applied");
    let workload = view.workload("web").expect("workload");
    assert_eq!(workload.state, ServiceState::Healthy, "{workload:?}");
    assert_eq!(workload.error, "");
    assert_eq!(workload.desired_model, "diabetes:1");
    assert_eq!(workload.serving_model, "diabetes:1");
    agent.stop().await.expect("stop");
}
