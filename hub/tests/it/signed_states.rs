//! Desired states an attacker on the broker could publish — unsigned, forged, signed by
//! another key, tampered with, replayed, expired, or addressed to another device — are each
//! refused by the agent, which keeps serving its model; and the hub signs live states again
//! before they expire.

use std::time::Duration;

use edgeship_domain::trust::{Purpose, SigningKey};
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;

use crate::e2e::{ServingWeb, serving_web};
use crate::protocol::{as_hub, raw_client, raw_listener, send, wire_workload};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_not_signed_by_the_director_for_this_device_now_are_refused() {
    let ServingWeb {
        hub,
        mut registry,
        agent,
        applied,
        addr,
        dir: _dir,
    } = serving_web("edge-t", "diabetes:1").await;
    // What the attacks ask for: the endpoint's port to serve another model.
    let digits = register(&mut registry, new_model("digits"), &fixture("digits")).await;
    let takeover = |device: &str, generation: u64, expires_at_ms: i64| pb::DesiredState {
        device_id: device.into(),
        generation,
        workloads: vec![wire_workload(
            "web",
            addr.port(),
            pb::Runtime::Tract,
            &digits,
        )],
        expires_at_ms,
        ..Default::default()
    };
    let later = now_ms() + 3_600_000;
    let newer = takeover("edge-t", applied + 10, later);
    let director = hub.director_signing_key();
    let intruder = SigningKey::generate().expect("key");
    let envelope = |state: &pb::DesiredState, key: &SigningKey, key_id: String| {
        let state = state.encode_to_vec();
        pb::SignedDesiredState {
            signature: key.sign(Purpose::DesiredState, &state).into(),
            key_id,
            state: state.into(),
        }
        .encode_to_vec()
    };
    let mut tampered = pb::SignedDesiredState::decode(
        testkit::trust::sign_state(&director, &takeover("edge-t", applied + 10, later)).as_slice(),
    )
    .expect("decode");
    // The same state with the expiry pushed out after signing.
    let mut state = pb::DesiredState::decode(&tampered.state[..]).expect("decode");
    state.expires_at_ms += 1;
    tampered.state = state.encode_to_vec().into();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "unsigned",
            pb::SignedDesiredState {
                state: newer.encode_to_vec().into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "signed by another key",
            envelope(&newer, &intruder, intruder.public().key_id()),
        ),
        (
            "forged under the director's key id",
            envelope(&newer, &intruder, director.public().key_id()),
        ),
        ("tampered after signing", tampered.encode_to_vec()),
        (
            "an older generation (replay)",
            testkit::trust::sign_state(&director, &takeover("edge-t", applied - 1, later)),
        ),
        (
            "expired",
            testkit::trust::sign_state(&director, &takeover("edge-t", applied + 10, now_ms() - 1)),
        ),
        (
            "another device's",
            testkit::trust::sign_state(&director, &takeover("edge-other", applied + 10, later)),
        ),
    ];
    let attacker = raw_client(&hub.mqtt_url(), "attacker").await;
    // The hub's current state, re-sent after each attack: the agent answers it with a report,
    // which proves the attack before it (same topic, same connection) was processed.
    let current = pb::DesiredState {
        device_id: "edge-t".into(),
        generation: applied,
        ..Default::default()
    };
    let rows = serde_json::json!({"data": expected("diabetes")["inputs"]});
    for (attack, payload) in attacks {
        let before = now_ms();
        send(&attacker, "edge-t", DeviceTopic::Desired, payload).await;
        send(
            &attacker,
            "edge-t",
            DeviceTopic::Desired,
            as_hub(&hub, &current),
        )
        .await;
        wait_heard_from(&hub.url(), "edge-t", before).await;
        let view = agent.view().borrow().clone();
        assert_eq!(view.applied_generation, applied, "{attack}: taken");
        let web = view.workload("web").expect("web");
        assert_eq!(web.serving_model, "diabetes:1", "{attack}: switched");
        assert_eq!(web.desired_model, "diabetes:1", "{attack}: accepted");
        assert_diabetes_predictions(
            &score(addr, &rows)
                .await
                .unwrap_or_else(|e| panic!("{attack}: the old model stopped serving: {e}")),
        );
    }

    // The same takeover, signed by the director: taken (the checks above refused the
    // attacks for what they were, not for what they asked).
    send(
        &attacker,
        "edge-t",
        DeviceTopic::Desired,
        as_hub(&hub, &newer),
    )
    .await;
    agent
        .wait_for(Duration::from_secs(30), |v| {
            v.workload("web")
                .is_some_and(|w| w.desired_model == "digits:1")
        })
        .await
        .expect("a state signed by the director is taken");
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_signs_live_states_again_before_they_expire() {
    let validity = Duration::from_secs(4);
    let hub = TestHub::with_state_validity(validity).await;
    let mut registry = hub.client().await;
    crate::e2e::register_diabetes_with_sample(&mut registry).await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = edgeship_agent::RunningAgent::start(agent_config("edge-v", &hub, dir.path()))
        .await
        .expect("agent");
    crate::e2e::deploy(&hub.url(), "web", "diabetes:1", free_port(), &["edge-v"])
        .await
        .expect("deploy");
    crate::e2e::wait_serving(&agent, "web", "diabetes:1").await;
    let topic = topics::device("edge-v", DeviceTopic::Desired);
    let (_listener, mut published) = raw_listener(&hub.mqtt_url(), "watcher", &topic).await;
    // Over three validities, every state seen is unexpired when it arrives, and a new
    // signature arrives at least every half validity.
    let mut expiries = Vec::new();
    let deadline = tokio::time::Instant::now() + validity * 3;
    while tokio::time::Instant::now() < deadline {
        let payload =
            tokio::time::timeout(validity / 2 + Duration::from_millis(500), published.recv())
                .await
                .expect("a state signed again in time")
                .expect("payload");
        if payload.is_empty() {
            continue; // our own subscription probe
        }
        let state = testkit::trust::open_desired(&payload).expect("a signed state");
        assert!(
            state.expires_at_ms > now_ms(),
            "an expired state was published"
        );
        expiries.push(state.expires_at_ms);
    }
    assert!(expiries.len() >= 6, "{expiries:?}");
    assert!(expiries.windows(2).all(|w| w[0] <= w[1]), "{expiries:?}");
    // The agent took each again and still serves, well past the first state's expiry.
    let view = agent.view().borrow().clone();
    assert_eq!(
        view.workload("web").map(|w| w.serving_model.as_str()),
        Some("diabetes:1")
    );
    agent.stop().await.expect("stop");
}
