//! Rollouts over real `edgeship-agent` processes and a real hub process killed mid-rollout,
//! with the simulated fleet's helpers from `rollouts` where a test also needs many devices.

use std::collections::BTreeMap;

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use testkit::sim::{Behaviour, SimDevice};
use testkit::{HubProcess, TempDir, free_port};

use super::rollouts::{
    LIMIT, SimFleet, apply, manifest, none, register_model, rollout, sim_id, wait_online,
    wait_phase,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_rollout_resumes_where_it_stood() {
    let dir = TempDir::new("rollout-restart");
    let mqtt_port = free_port();
    let start_hub = || {
        HubProcess::start(
            &dir.path().join("hub"),
            Err(mqtt_port),
            &dir.path().join("hub.log"),
        )
    };
    let mut hub = start_hub();
    let labels = BTreeMap::from([("fleet".to_owned(), "sim".to_owned())]);
    let devices: Vec<SimDevice> = (0..12)
        .map(|i| SimDevice::start(&sim_id(i), "127.0.0.1", mqtt_port, &labels))
        .collect();
    wait_online(&hub.url, devices.len()).await;
    register_model(&hub.url, dir.path(), "m", 1).await;
    apply(&hub.url, &manifest("m:1", "")).await;
    wait_phase(&hub.url, "web", "Completed").await;
    register_model(&hub.url, dir.path(), "m", 2).await;
    apply(
        &hub.url,
        &manifest(
            "m:2",
            "rollout:\n  waves: [\"25%\", \"50%\", \"100%\"]\n  health_gate: {min_healthy_seconds: 3}\n",
        ),
    )
    .await;
    let before = rollout(&hub.url, "web").await;
    assert_eq!((before.moved, before.waves.len()), (3, 1));
    hub.process.kill_hard();
    hub = start_hub();
    // The same rollout goes on: same revision, its first wave kept, then the rest.
    let resumed = rollout(&hub.url, "web").await;
    assert_eq!(
        (resumed.revision, resumed.start_time_ms),
        (before.revision, before.start_time_ms)
    );
    assert!(resumed.moved >= 3);
    let done = wait_phase(&hub.url, "web", "Completed").await;
    assert_eq!((done.moved, done.waves.len()), (12, 3));
    testkit::eventually(LIMIT, "every device on version 2", || {
        let ok = devices
            .iter()
            .all(|d| d.state.borrow().running.get("web").map(String::as_str) == Some("m:2"));
        async move { ok.then_some(()) }
    })
    .await;
}

/// Starts a real agent serving on its own loopback address (they share the deployment's port).
fn real_agent(dir: &std::path::Path, id: &str, host: &str, broker: &str) -> testkit::Process {
    testkit::Process::spawn(
        "edgeship-agent",
        std::process::Command::new(testkit::binary("edgeship-agent"))
            .args([
                "run",
                "--device-id",
                id,
                "--broker",
                broker,
                "--serve-host",
                host,
                "--data-dir",
            ])
            .arg(dir.join(id))
            .args(testkit::agent_trust_args(broker))
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(format!("{id}.log")))
                    .map(std::process::Stdio::from)
                    .unwrap_or_else(|_| std::process::Stdio::null()),
            ),
    )
}

/// Which version answered each of `count` scoring requests (`x-edgeship-model`).
async fn answers(addr: std::net::SocketAddr, count: usize) -> BTreeMap<String, usize> {
    let body = serde_json::json!({"data": testkit::expected("diabetes")["inputs"]});
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let response = testkit::score(addr, &body).await.expect("score");
        assert_eq!(response.status, 200, "{}", response.body);
        let model = response
            .header("x-edgeship-model")
            .expect("x-edgeship-model")
            .to_owned();
        *seen.entry(model).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_take_a_gated_rollout_and_a_traffic_split_reweighted_without_reload() {
    let dir = TempDir::new("rollout-agents");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let _agents: Vec<testkit::Process> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| real_agent(dir.path(), &format!("edge-{i}"), host, &hub.mqtt_url))
        .collect();
    let mut registry = client::connect(&hub.url).await.expect("connect");
    let sample =
        std::fs::read_to_string(testkit::fixture("diabetes/sample_input.json")).expect("sample");
    for _ in 0..2 {
        client::register(
            &mut registry,
            NewModel {
                model_id: "diabetes".into(),
                framework: "onnx".into(),
                sample_input: Some(sample.clone()),
                ..NewModel::default()
            },
            &testkit::fixture("diabetes/model.onnx"),
        )
        .await
        .expect("register");
    }
    let port = free_port();
    let base = format!(
        "name: web\nendpoint: {{port: {port}}}\ntarget: {{devices: [edge-0, edge-1, edge-2]}}\nrollout:\n  waves: [1, \"100%\"]\n  health_gate: {{min_healthy_seconds: 1}}\n"
    );
    apply(&hub.url, &format!("{base}model: diabetes:1\n")).await;
    wait_phase(&hub.url, "web", "Completed").await;
    let addr = |i: usize| format!("{}:{port}", hosts[i]).parse().expect("addr");
    assert_eq!(
        answers(addr(0), 5).await,
        BTreeMap::from([("diabetes:1".to_owned(), 5)])
    );

    // A split, rolled out in two waves: one device first, the rest after its gate held.
    let split = apply(
        &hub.url,
        &format!("{base}traffic:\n  - {{model: diabetes:1, weight: 80}}\n  - {{model: diabetes:2, weight: 20}}\n"),
    )
    .await;
    assert_eq!(split.rollout.expect("rollout").moved, 1);
    let done = wait_phase(&hub.url, "web", "Completed").await;
    assert_eq!((done.moved, done.waves.len()), (3, 2));
    for i in 0..hosts.len() {
        let seen = answers(addr(i), 200).await;
        let v2 = seen.get("diabetes:2").copied().unwrap_or(0);
        // 20% of 200 is 40; the agent spreads unkeyed requests by weight, so far tighter.
        assert!((25..=55).contains(&v2), "device {i}: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), 200);
    }

    // New weights only: a rollout moves the devices, and no model is loaded again.
    apply(
        &hub.url,
        &format!("{base}traffic:\n  - {{model: diabetes:1, weight: 50}}\n  - {{model: diabetes:2, weight: 50}}\n"),
    )
    .await;
    wait_phase(&hub.url, "web", "Completed").await;
    for i in 0..hosts.len() {
        let seen = answers(addr(i), 100).await;
        assert!(
            (45..=55).contains(&seen.get("diabetes:2").copied().unwrap_or(0)),
            "device {i}: {seen:?}"
        );
        let log =
            std::fs::read_to_string(dir.path().join(format!("edge-{i}.log"))).unwrap_or_default();
        assert!(
            log.contains("nothing reloaded"),
            "device {i} reloaded a model"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_revision_is_retried_by_applying_it_again_and_operators_steer_rollouts() {
    let fleet = SimFleet::start_with(10, none, |i| Behaviour {
        failing_versions: if i < 5 { [2].into() } else { [].into() },
        ..Behaviour::default()
    })
    .await;
    fleet.serving_v1_with_v2_registered().await;
    let v2 = manifest(
        "m:2",
        "rollout:\n  abort: {max_failure_percent: 20, min_devices: 3}\n",
    );
    fleet.apply(&v2).await;
    fleet.wait_phase("web", "RolledBack").await;
    fleet.wait_running("web", |_| Some("m:1".into())).await;
    // The failing devices are fixed; the same manifest again is a retry, not "unchanged".
    for device in &fleet.devices {
        device.set_behaviour(Behaviour::default());
    }
    let retried = fleet.apply(&v2).await;
    assert!(
        retried
            .changes
            .iter()
            .any(|c| c.contains("which was rolled back")),
        "{:?}",
        retried.changes
    );
    fleet.wait_phase("web", "Completed").await;
    fleet.wait_running("web", |_| Some("m:2".into())).await;

    // Operators: pause holds a waves rollout, resume lets it go on, rollback undoes it.
    fleet.register(3).await;
    fleet
        .apply(&manifest(
            "m:3",
            "rollout:\n  waves: [2, \"100%\"]\n  health_gate: {min_healthy_seconds: 2}\n",
        ))
        .await;
    let mut client = DeploymentsClient::connect(fleet.url.clone())
        .await
        .expect("connect");
    let control = |action: pb::RolloutAction| pb::UpdateRolloutRequest {
        name: "deployments/web".into(),
        action: action.into(),
    };
    let paused = client
        .update_rollout(control(pb::RolloutAction::Pause))
        .await
        .expect("pause")
        .into_inner();
    assert_eq!((paused.phase.as_str(), paused.moved), ("Paused", 2));
    let refused = client
        .update_rollout(control(pb::RolloutAction::Pause))
        .await
        .expect_err("already paused");
    assert!(
        refused.message().contains("cannot pause"),
        "{}",
        refused.message()
    );
    client
        .update_rollout(control(pb::RolloutAction::Resume))
        .await
        .expect("resume");
    fleet.wait_phase("web", "Completed").await;
    let undone = client
        .update_rollout(control(pb::RolloutAction::Rollback))
        .await
        .expect("rollback")
        .into_inner();
    assert!(
        undone.cause.starts_with("rollback to revision"),
        "{}",
        undone.cause
    );
    fleet.wait_phase("web", "Completed").await;
    fleet.wait_running("web", |_| Some("m:2".into())).await;
}
