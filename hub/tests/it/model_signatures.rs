//! Model signatures (the image role): a deployment that names model signers runs only
//! versions one of them signed; a signature over other bytes is refused by the hub and, sent
//! in a desired state, by the device, which keeps serving the version it had.

use std::time::Duration;

use edgeship_domain::ServiceState;
use edgeship_domain::trust::{Purpose, SigningKey};
use edgeship_proto::v1 as pb;

use crate::protocol::{as_hub, raw_client, send, wire_workload};
use crate::support::*;
use edgeship_hub::client::RegistryClient;
use edgeship_proto::topics::DeviceTopic;

async fn sign(
    registry: &mut RegistryClient,
    key: &SigningKey,
    version: u32,
    statement: &[u8],
) -> Result<pb::Model, tonic::Status> {
    registry
        .sign_model(pb::SignModelRequest {
            name: format!("models/diabetes/versions/{version}"),
            public_key: key.public().to_string(),
            signature: key.sign(Purpose::Model, statement).into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_names_signers_runs_only_versions_they_signed() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    let sample = std::fs::read_to_string(fixture("diabetes/sample_input.json")).expect("sample");
    let diabetes = || edgeship_hub::registry::NewModel {
        model_id: "diabetes".into(),
        sample_input: Some(sample.clone()),
        ..Default::default()
    };
    let v1 = register(&mut registry, diabetes(), &fixture("diabetes/model.onnx")).await;
    // Version 2: the same model with notes beside it, so its files differ from version 1's.
    let folder = tempfile::tempdir().expect("temp");
    std::fs::copy(
        fixture("diabetes/model.onnx"),
        folder.path().join("model.onnx"),
    )
    .expect("copy");
    std::fs::write(folder.path().join("notes.txt"), "version 2").expect("notes");
    let v2 = register(&mut registry, diabetes(), folder.path()).await;
    assert_ne!(v1.statement(), v2.statement());
    let signer = SigningKey::generate().expect("key");
    let stranger = SigningKey::generate().expect("key");

    // The hub keeps a signature only if it verifies over the files it holds.
    let refused = sign(&mut registry, &signer, 1, &v2.statement())
        .await
        .expect_err("a signature made for version 2's statement");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("does not verify"),
        "{}",
        refused.message()
    );
    let signed = sign(&mut registry, &signer, 1, &v1.statement())
        .await
        .expect("signed");
    assert_eq!(signed.signatures.len(), 1);
    assert_eq!(signed.signatures[0].public_key, signer.public().to_string());
    sign(&mut registry, &stranger, 2, &v2.statement())
        .await
        .expect("signed by a key the deployment does not trust");

    let dir = tempfile::tempdir().expect("temp");
    let agent = edgeship_agent::RunningAgent::start(agent_config("edge-s", &hub, dir.path()))
        .await
        .expect("agent");
    let port = free_port();
    let manifest = |version: u32| {
        format!(
            "name: web\nmodel: diabetes:{version}\nendpoint: {{port: {port}}}\n\
             target: {{devices: [edge-s]}}\nmodel_signers: [\"{}\"]\n",
            signer.public()
        )
    };
    apply(&hub.url(), &manifest(1)).await.expect("applied");
    let addr = crate::e2e::wait_serving(&agent, "web", "diabetes:1").await;

    // Version 2 is signed, but not by the deployment's signer: the device refuses it before
    // staging, and version 1 keeps serving.
    apply(&hub.url(), &manifest(2)).await.expect("applied");
    let view = agent
        .wait_for(Duration::from_secs(60), |v| {
            v.workload("web")
                .is_some_and(|w| w.state == ServiceState::Failed)
        })
        .await
        .expect("version 2 fails");
    let web = view.workload("web").expect("web");
    assert!(
        web.error
            .contains("is not signed over these files by any key of the deployment"),
        "{}",
        web.error
    );
    assert_eq!(web.serving_model, "diabetes:1");
    let rows = serde_json::json!({"data": expected("diabetes")["inputs"]});
    assert_diabetes_predictions(&score(addr, &rows).await.expect("version 1 still serves"));

    // Once the deployment's signer signs it, the device takes it.
    sign(&mut registry, &signer, 2, &v2.statement())
        .await
        .expect("signed");
    crate::e2e::wait_serving(&agent, "web", "diabetes:2").await;

    // A desired state that attaches version 2's signature to other files (here: version 1's
    // files under version 2's name) is refused by the device: the signature covers digests.
    let applied = agent.view().borrow().applied_generation;
    let v1_files_as_v2 = {
        let mut forged = v1.clone();
        forged.version = 2;
        forged
    };
    let mut workload = wire_workload("web", port, pb::Runtime::Tract, &v1_files_as_v2);
    if let Some(pb::workload::Kind::Model(model)) = &mut workload.kind {
        let signature = signer.sign(Purpose::Model, &v2.statement());
        model.models[0].signatures = vec![pb::ModelSignature {
            public_key: signer.public().to_string(),
            signature: signature.into(),
            sign_time: None,
        }];
        model.models[0].required_signers = vec![signer.public().to_string()];
    }
    let mixed = pb::DesiredState {
        device_id: "edge-s".into(),
        generation: applied + 100,
        workloads: vec![workload],
        ..Default::default()
    };
    let attacker = raw_client(&hub.mqtt_url(), "mixer").await;
    send(
        &attacker,
        "edge-s",
        DeviceTopic::Desired,
        as_hub(&hub, &mixed),
    )
    .await;
    let view = agent
        .wait_for(Duration::from_secs(60), |v| {
            v.workload("web").is_some_and(|w| {
                w.state == ServiceState::Failed
                    && w.desired_model == "diabetes:2"
                    && v.applied_generation == applied + 100
            })
        })
        .await
        .expect("the mixed state fails");
    let web = view.workload("web").expect("web");
    assert!(
        web.error.contains("not signed over these files"),
        "{}",
        web.error
    );
    assert_eq!(web.serving_model, "diabetes:2");
    agent.stop().await.expect("stop");
}
