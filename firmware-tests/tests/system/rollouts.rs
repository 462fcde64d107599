//! Rollouts across many devices: simulated devices (each its own MQTT connection, the real
//! device protocol and transfer) on one hub, with failures and latency regressions injected
//! per device; and the same machinery over real `edgeship-agent` processes and a hub killed
//! mid-rollout.

use std::collections::BTreeMap;
use std::time::Duration;

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_hub::{HubConfig, RunningHub};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use edgeship_proto::v1::fleet_client::FleetClient;
use testkit::sim::{Behaviour, SimDevice};

pub(super) const LIMIT: Duration = Duration::from_secs(90);
/// Small models: these tests are about who runs what, not about bytes.
pub(super) const MODEL_BYTES: usize = 64 * 1024;

/// A hub (in process, embedded broker) and simulated devices `sim-000`….
pub(super) struct SimFleet {
    pub(super) _hub: RunningHub,
    pub(super) dir: tempfile::TempDir,
    pub(super) url: String,
    pub(super) broker: (String, u16),
    pub(super) devices: Vec<SimDevice>,
}

impl SimFleet {
    pub(super) async fn start(
        count: usize,
        labels: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> Self {
        Self::start_with(count, labels, |_| Behaviour::default()).await
    }

    pub(super) async fn start_with(
        count: usize,
        labels: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
        behaviour: impl Fn(usize) -> Behaviour,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = RunningHub::start(HubConfig::local(dir.path().join("hub")))
            .await
            .expect("hub");
        let broker = edgeship_proto::parse_broker_url(&hub.mqtt_url()).expect("broker url");
        let devices = (0..count)
            .map(|i| {
                let labels: BTreeMap<String, String> = labels(i)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                SimDevice::start_with(&sim_id(i), &broker.0, broker.1, &labels, behaviour(i))
            })
            .collect();
        let fleet = SimFleet {
            url: hub.url(),
            _hub: hub,
            dir,
            broker,
            devices,
        };
        fleet.wait_online(count).await;
        fleet
    }

    pub(super) async fn wait_online(&self, count: usize) {
        wait_online(&self.url, count).await;
    }

    /// Registers a new version of model `m` (distinct bytes each time); returns its number.
    pub(super) async fn register(&self, seed: u64) -> u32 {
        register_model(&self.url, self.dir.path(), "m", seed).await
    }

    /// Every device serving `web` at `m:1`, and `m:2` registered (not deployed).
    pub(super) async fn serving_v1_with_v2_registered(&self) {
        self.register(1).await;
        self.apply(&manifest("m:1", "")).await;
        self.wait_phase("web", "Completed").await;
        self.register(2).await;
    }

    pub(super) async fn apply(&self, manifest: &str) -> pb::ApplyDeploymentResponse {
        apply(&self.url, manifest).await
    }

    pub(super) async fn rollout(&self, name: &str) -> pb::Rollout {
        rollout(&self.url, name).await
    }

    /// Waits for the rollout to reach `phase`.
    pub(super) async fn wait_phase(&self, name: &str, phase: &str) -> pb::Rollout {
        wait_phase(&self.url, name, phase).await
    }

    /// Waits until every simulated device runs `expected` (None: nothing) for `deployment`.
    pub(super) async fn wait_running(
        &self,
        deployment: &str,
        expected: impl Fn(usize) -> Option<String>,
    ) {
        testkit::eventually(
            LIMIT,
            &format!("devices running {deployment} as expected"),
            || {
                let ok =
                    self.devices.iter().enumerate().all(|(i, d)| {
                        d.state.borrow().running.get(deployment).cloned() == expected(i)
                    });
                async move { ok.then_some(()) }
            },
        )
        .await;
    }

    pub(super) fn running(&self, i: usize, deployment: &str) -> Option<String> {
        self.devices[i]
            .state
            .borrow()
            .running
            .get(deployment)
            .cloned()
    }
}

/// Waits until `count` devices are online at the hub and have announced themselves.
pub(super) async fn wait_online(url: &str, count: usize) {
    testkit::eventually(LIMIT, "every device online", || async move {
        (testkit::online_devices(url, "").await >= count).then_some(())
    })
    .await;
}

pub(super) fn sim_id(i: usize) -> String {
    format!("sim-{i:03}")
}

pub(super) fn none(_: usize) -> Vec<(&'static str, &'static str)> {
    vec![("fleet", "sim")]
}

pub(super) async fn register_model(
    url: &str,
    dir: &std::path::Path,
    model_id: &str,
    seed: u64,
) -> u32 {
    let folder = testkit::big_model(dir, &format!("{model_id}-{seed}"), MODEL_BYTES, seed);
    let mut registry = client::connect(url).await.expect("connect");
    client::register(
        &mut registry,
        NewModel {
            model_id: model_id.into(),
            framework: "onnx".into(),
            ..NewModel::default()
        },
        &folder,
    )
    .await
    .expect("register")
    .version
}

pub(super) async fn apply(url: &str, manifest: &str) -> pb::ApplyDeploymentResponse {
    DeploymentsClient::connect(url.to_owned())
        .await
        .expect("connect")
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest: manifest.to_owned(),
            dry_run: false,
        })
        .await
        .unwrap_or_else(|status| panic!("apply refused: {}", status.message()))
        .into_inner()
}

pub(super) async fn rollout(url: &str, name: &str) -> pb::Rollout {
    DeploymentsClient::connect(url.to_owned())
        .await
        .expect("connect")
        .get_rollout(pb::GetRolloutRequest {
            name: format!("deployments/{name}"),
        })
        .await
        .expect("rollout")
        .into_inner()
}

pub(super) async fn wait_phase(url: &str, name: &str, phase: &str) -> pb::Rollout {
    testkit::eventually(
        LIMIT,
        &format!("the rollout of {name} {phase}"),
        || async move {
            let rollout = DeploymentsClient::connect(url.to_owned())
                .await
                .ok()?
                .get_rollout(pb::GetRolloutRequest {
                    name: format!("deployments/{name}"),
                })
                .await
                .ok()?
                .into_inner();
            (rollout.phase == phase).then_some(rollout)
        },
    )
    .await
}

/// A manifest for `web` on every simulated device, with `rollout` and more appended.
pub(super) fn manifest(model: &str, extra: &str) -> String {
    format!(
        "name: web\nmodel: {model}\nendpoint: {{port: 7001}}\ntarget: {{selector: \"fleet=sim\"}}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_advance_only_after_their_gates_pass() {
    let fleet = SimFleet::start(40, none).await;
    let v1 = fleet.register(1).await;
    fleet.apply(&manifest(&format!("m:{v1}"), "")).await;
    fleet.wait_phase("web", "Completed").await;
    let v2 = fleet.register(2).await;
    let applied = fleet
        .apply(&manifest(
            &format!("m:{v2}"),
            "rollout:\n  waves: [\"10%\", \"50%\", \"100%\"]\n  health_gate: {min_healthy_seconds: 2}\n",
        ))
        .await;
    assert!(
        applied
            .changes
            .iter()
            .any(|c| c.contains("model: m:1 → m:2")),
        "{:?}",
        applied.changes
    );
    let first = applied.rollout.expect("a rollout started");
    assert_eq!(
        (first.moved, first.waves.len()),
        (4, 1),
        "wave 1 is 10% of 40"
    );
    // Wave 2 starts only once wave 1's devices held Healthy for 2 s.
    let second = testkit::eventually(LIMIT, "wave 2", || async {
        let r = fleet.rollout("web").await;
        (r.waves.len() >= 2).then_some(r)
    })
    .await;
    let wave1 = &second.waves[0];
    assert!(
        wave1.pass_time_ms - wave1.start_time_ms >= 2000,
        "{wave1:?}"
    );
    assert!(second.moved <= 20, "wave 2 covers 50%: {}", second.moved);
    let done = fleet.wait_phase("web", "Completed").await;
    assert_eq!((done.moved, done.failed, done.waves.len()), (40, 0, 3));
    fleet.wait_running("web", |_| Some(format!("m:{v2}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_above_the_threshold_roll_every_moved_device_back() {
    // Every third device fails version 2's self-test.
    let fleet = SimFleet::start_with(30, none, |i| Behaviour {
        failing_versions: if i % 3 == 0 { [2].into() } else { [].into() },
        ..Behaviour::default()
    })
    .await;
    fleet.serving_v1_with_v2_registered().await;
    fleet
        .apply(&manifest(
            "m:2",
            "rollout:\n  abort: {max_failure_percent: 20, min_devices: 5, on_failure: rollback}\n",
        ))
        .await;
    let rolled_back = fleet.wait_phase("web", "RolledBack").await;
    assert!(
        rolled_back.reason.contains("moved devices failed"),
        "{}",
        rolled_back.reason
    );
    assert!(
        rolled_back
            .failures
            .iter()
            .all(|f| f.reason.contains("self-test failed"))
    );
    fleet.wait_running("web", |_| Some("m:1".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_regression_trips_the_p99_gate() {
    let fleet = SimFleet::start_with(12, none, |_| Behaviour {
        slow_versions: [(2, 80.0)].into(),
        ..Behaviour::default()
    })
    .await;
    fleet.serving_v1_with_v2_registered().await;
    fleet
        .apply(&manifest(
            "m:2",
            "rollout:\n  waves: [\"25%\", \"100%\"]\n  health_gate: {max_p99_ms: 50}\n  abort: {max_failure_percent: 10, min_devices: 3}\n",
        ))
        .await;
    let rolled_back = fleet.wait_phase("web", "RolledBack").await;
    assert!(
        rolled_back
            .reason
            .contains("p99 latency 80.0 ms above 50 ms"),
        "{}",
        rolled_back.reason
    );
    assert_eq!(rolled_back.moved, 3, "only the first wave moved");
    fleet.wait_running("web", |_| Some("m:1".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_changes_add_and_remove_the_deployment() {
    let fleet = SimFleet::start(10, |i| {
        vec![
            ("fleet", "sim"),
            ("site", if i < 5 { "berlin" } else { "paris" }),
        ]
    })
    .await;
    fleet.register(1).await;
    fleet
        .apply("name: web\nmodel: m:1\nendpoint: {port: 7001}\ntarget: {selector: \"site in (berlin,rome),!canary\"}\n")
        .await;
    fleet
        .wait_running("web", |i| (i < 5).then(|| "m:1".to_owned()))
        .await;
    let mut devices = FleetClient::connect(fleet.url.clone())
        .await
        .expect("connect");
    let label = |id: usize, set: &[(&str, &str)], remove: &[&str]| pb::SetDeviceLabelsRequest {
        name: format!("devices/{}", sim_id(id)),
        set: set
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        remove: remove.iter().map(|k| (*k).into()).collect(),
    };
    // A Paris device moves to Rome (joins); a Berlin device becomes a canary (leaves).
    devices
        .set_device_labels(label(7, &[("site", "rome")], &[]))
        .await
        .expect("label");
    devices
        .set_device_labels(label(1, &[("canary", "yes")], &[]))
        .await
        .expect("label");
    fleet
        .wait_running("web", |i| {
            (i < 5 && i != 1 || i == 7).then(|| "m:1".to_owned())
        })
        .await;
    devices
        .set_device_labels(label(1, &[], &["canary"]))
        .await
        .expect("label");
    fleet
        .wait_running("web", |i| (i < 5 || i == 7).then(|| "m:1".to_owned()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_registered_version_rolls_out_through_the_gates() {
    let fleet = SimFleet::start(20, none).await;
    fleet.register(1).await;
    fleet
        .apply(&manifest(
            "m:latest",
            "rollout:\n  waves: [\"25%\", \"100%\"]\n  health_gate: {min_healthy_seconds: 2}\n",
        ))
        .await;
    fleet.wait_phase("web", "Completed").await;
    fleet.register(2).await;
    let rollout = testkit::eventually(LIMIT, "a continuous-deployment rollout", || async {
        let r = fleet.rollout("web").await;
        (r.revision == 2).then_some(r)
    })
    .await;
    assert!(
        rollout
            .cause
            .contains("continuous deployment (m:2 registered)"),
        "{}",
        rollout.cause
    );
    assert_eq!(
        (rollout.moved, rollout.waves.len()),
        (5, 1),
        "not at once: wave 1 first"
    );
    fleet.wait_phase("web", "Completed").await;
    fleet.wait_running("web", |_| Some("m:2".into())).await;
    let history = DeploymentsClient::connect(fleet.url.clone())
        .await
        .expect("connect")
        .list_rollout_history(pb::ListRolloutHistoryRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect("history")
        .into_inner()
        .rollouts;
    let causes: Vec<&str> = history.iter().map(|r| r.cause.as_str()).collect();
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert!(causes[0].starts_with("created") && causes[1].starts_with("continuous deployment"));

    // Version 1 no longer runs anywhere: it may be deleted, and a rollback to it is then
    // refused, naming why, instead of sending devices a model that is gone.
    let mut registry = client::connect(&fleet.url).await.expect("connect");
    registry
        .delete_model(pb::DeleteModelRequest {
            name: "models/m/versions/1".into(),
        })
        .await
        .expect("version 1 is not in use");
    let refused = DeploymentsClient::connect(fleet.url.clone())
        .await
        .expect("connect")
        .update_rollout(pb::UpdateRolloutRequest {
            name: "deployments/web".into(),
            action: pb::RolloutAction::Rollback.into(),
        })
        .await
        .expect_err("its model is gone");
    assert!(
        refused.message().contains("model m:1 it runs was deleted"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_times_out_and_converges_when_it_returns() {
    let mut fleet = SimFleet::start(5, none).await;
    fleet.register(1).await;
    fleet.apply(&manifest("m:1", "")).await;
    fleet.wait_phase("web", "Completed").await;
    let gone = fleet.devices.pop().expect("device");
    drop(gone);
    fleet.register(2).await;
    fleet
        .apply(&manifest("m:2", "rollout: {device_timeout_seconds: 2}\n"))
        .await;
    let stalled = testkit::eventually(LIMIT, "the silent device timed out", || async {
        let r = fleet.rollout("web").await;
        (r.failed == 1).then_some(r)
    })
    .await;
    assert_eq!(
        stalled.phase, "Progressing",
        "without an abort rule a failure holds the gate"
    );
    assert_eq!(stalled.failures[0].device_id, sim_id(4));
    assert!(
        stalled.failures[0].reason.contains("timed out"),
        "{:?}",
        stalled.failures
    );
    // It comes back: the retained desired state brings it to version 2, and the rollout ends.
    let labels = BTreeMap::from([("fleet".to_owned(), "sim".to_owned())]);
    fleet.devices.push(SimDevice::start(
        &sim_id(4),
        &fleet.broker.0,
        fleet.broker.1,
        &labels,
    ));
    fleet.wait_phase("web", "Completed").await;
    fleet.wait_running("web", |_| Some("m:2".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_higher_priority_wins_a_contested_port() {
    let fleet = SimFleet::start(3, none).await;
    fleet.register(1).await;
    fleet.apply(&manifest("m:1", "")).await;
    fleet.wait_phase("web", "Completed").await;
    fleet
        .apply("name: urgent\nmodel: m:1\nendpoint: {port: 7001}\ntarget: {devices: [sim-000]}\npriority: 10\n")
        .await;
    fleet
        .wait_running("urgent", |i| (i == 0).then(|| "m:1".to_owned()))
        .await;
    fleet
        .wait_running("web", |i| (i != 0).then(|| "m:1".to_owned()))
        .await;
    let web = DeploymentsClient::connect(fleet.url.clone())
        .await
        .expect("connect")
        .get_deployment(pb::GetDeploymentRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect("web")
        .into_inner();
    let lost = web
        .devices
        .iter()
        .find(|d| d.device_id == sim_id(0))
        .expect("sim-000");
    assert_eq!(lost.state(), pb::ServiceState::Unschedulable);
    assert!(
        lost.error
            .contains("taken by deployment urgent (priority 10 is higher)"),
        "{}",
        lost.error
    );
    // An equal priority is refused at once, naming the holder.
    let refused = DeploymentsClient::connect(fleet.url.clone())
        .await
        .expect("connect")
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest:
                "name: late\nmodel: m:1\nendpoint: {port: 7001}\ntarget: {devices: [sim-001]}\n"
                    .into(),
            dry_run: false,
        })
        .await
        .expect_err("same priority");
    assert!(
        refused
            .message()
            .contains("already used by deployment web at the same priority")
    );
    assert!(fleet.running(0, "web").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_mistake_is_named_and_nothing_is_applied() {
    let fleet = SimFleet::start(1, none).await;
    fleet.register(1).await;
    let mut client = DeploymentsClient::connect(fleet.url.clone())
        .await
        .expect("connect");
    let status = client
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest: manifest("m:1", "rollout:\n  waves: [\"10%\", \"50%\", \"40%\"]\n"),
            dry_run: false,
        })
        .await
        .expect_err("waves must grow");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "rollout.waves[2]: must be larger than waves[1] (50%): waves are cumulative"
    );
    let missing = client
        .get_deployment(pb::GetDeploymentRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // A dry run reports, and stores nothing either.
    let dry = client
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest: manifest("m:1", ""),
            dry_run: true,
        })
        .await
        .expect("dry run")
        .into_inner();
    assert!(dry.created && dry.rollout.is_none());
    client
        .get_deployment(pb::GetDeploymentRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect_err("still nothing stored");
    // Applying the same manifest twice changes nothing the second time.
    let first = fleet.apply(&manifest("m:1", "")).await;
    let again = fleet.apply(&manifest("m:1", "")).await;
    assert!(first.created && first.rollout.is_some());
    assert!(!again.created && again.changes.is_empty() && again.rollout.is_none());
}
