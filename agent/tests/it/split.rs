//! Traffic splits served for real: two versions of the diabetes fixture behind one endpoint,
//! routed by weight, each answer naming its version, and new weights taken without loading
//! anything. First through the stage alone (no broker needed), then through a whole agent that
//! takes its desired states from a real broker (Mosquitto: skipped with a `SKIP:` line where it
//! is missing, a failure under `EDGESHIP_CI=1`), where a health gate also turns the workload
//! `Unhealthy` and back.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgeship_agent::cache::{BlobCache, CHUNK_SIZE};
use edgeship_agent::config::RawConfig;
use edgeship_agent::serve::{MODEL_HEADER, ROUTING_KEY_HEADER};
use edgeship_agent::stage::Stage;
use edgeship_agent::{AgentView, RunningAgent};
use edgeship_domain::{
    BlobRef, DeployedModel, DesiredState, Endpoint, HealthThresholds, ModelWorkload, ReportedState,
    RuntimeKind, RuntimeOptions, ServiceState, Workload, WorkloadKind,
};
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use sha2::{Digest, Sha256};
use testkit::{Mosquitto, assert_diabetes_predictions, expected, fixture, free_port};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

/// Puts the diabetes model into `cache` the way a download does (chunks checked one by one,
/// then the whole file), and returns the file as a desired state names it.
fn seed_diabetes(cache: &BlobCache) -> BlobRef {
    seed(cache, &fixture("diabetes").join("model.onnx"), "model.onnx")
}

/// Puts the file at `source` into `cache` as a download would, named `path` in its workload.
pub(crate) fn seed(cache: &BlobCache, source: &std::path::Path, path: &str) -> BlobRef {
    let bytes = std::fs::read(source).expect("fixture");
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let mut blob = cache.begin(&sha256, bytes.len() as u64).expect("begin");
    for (n, chunk) in bytes.chunks(CHUNK_SIZE as usize).enumerate() {
        let chunk_sha256 = hex::encode(Sha256::digest(chunk));
        blob.append(n as u64 * CHUNK_SIZE, chunk, &chunk_sha256)
            .expect("chunk");
    }
    blob.finish().expect("verified");
    BlobRef {
        path: path.into(),
        sha256,
        size_bytes: bytes.len() as u64,
    }
}

/// `diabetes:VERSION` with the fixture's file, signature and sample input.
fn diabetes(version: u32, weight: u32, file: &BlobRef) -> DeployedModel {
    fixture_model("diabetes", version, weight, file)
}

/// `NAME:VERSION` of the fixture `NAME`, with its file, signature and sample input.
pub(crate) fn fixture_model(
    name: &str,
    version: u32,
    weight: u32,
    file: &BlobRef,
) -> DeployedModel {
    let onnx = fixture(name).join("model.onnx");
    let signature = edgeship_runtime::onnx::inspect("model.onnx", &onnx).expect("signature");
    let sample =
        std::fs::read_to_string(fixture(name).join("sample_input.json")).expect("sample input");
    DeployedModel {
        model_id: name.into(),
        version,
        files: vec![file.clone()],
        entry_file: "model.onnx".into(),
        inputs: signature.inputs,
        outputs: signature.outputs,
        sample_input: Some(sample),
        weight,
        signatures: vec![],
        required_signers: vec![],
    }
}

/// Deployment `web` on `port`, serving `(version, weight)` of the diabetes model.
pub(crate) fn web(
    port: u16,
    file: &BlobRef,
    split: &[(u32, u32)],
    health: Option<HealthThresholds>,
) -> Workload {
    Workload {
        deployment: "web".into(),
        endpoint: Endpoint::azureml(port),
        kind: WorkloadKind::Model(ModelWorkload {
            runtime: RuntimeKind::Tract,
            models: split
                .iter()
                .map(|&(version, weight)| diabetes(version, weight, file))
                .collect(),
            options: RuntimeOptions::default(),
            entry_module: None,
        }),
        health,
    }
}

/// One scoring request for the fixture's rows; every answer must be right and name a version.
async fn score(addr: SocketAddr, key: Option<&str>) -> String {
    let body = json!({"data": expected("diabetes")["inputs"]}).to_string();
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(key.map(|k| (ROUTING_KEY_HEADER, k)));
    let response = testkit::http(addr, "POST", "/score", &headers, body.as_bytes())
        .await
        .expect("answers");
    assert_diabetes_predictions(&response);
    response
        .header(MODEL_HEADER)
        .expect("x-edgeship-model on every answer")
        .to_owned()
}

/// Sends `n` requests without a routing key; how many each version answered.
async fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut answered = BTreeMap::new();
    for _ in 0..n {
        let model = score(addr, None).await;
        *answered.entry(model).or_default() += 1;
    }
    answered
}

/// Asserts `answered` splits `n` requests by `shares` (model, percent), within `slack`.
fn assert_split(answered: &BTreeMap<String, usize>, shares: &[(&str, usize)], slack: usize) {
    let n: usize = answered.values().sum();
    for &(model, percent) in shares {
        let got = answered.get(model).copied().unwrap_or(0);
        let want = n * percent / 100;
        assert!(
            got.abs_diff(want) <= slack,
            "{model} answered {got} of {n}, expected {want} ± {slack}: {answered:?}"
        );
    }
}

#[tokio::test]
async fn a_stage_serves_a_two_version_split_by_weight_and_reweights_it_without_loading() {
    let dir = tempfile::tempdir().expect("temp");
    let cache = BlobCache::open(dir.path().join("blobs")).expect("cache");
    let file = seed_diabetes(&cache);
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let mut stage = Stage::new(dir.path().join("models"), cache, localhost);
    let port = free_port();

    stage
        .apply(&web(port, &file, &[(1, 90), (2, 10)], None))
        .await
        .expect("both versions load and pass their self-test");
    assert_eq!(stage.loads(), 2);
    let addr = stage.addr("web").expect("serves");

    // Without a key the shares are spread evenly rather than drawn: the count is near exact.
    let before = tally(addr, 300).await;
    assert_split(&before, &[("diabetes:1", 90), ("diabetes:2", 10)], 3);
    // With keys, each key is a fixed draw: Binomial(300, 0.1) has σ ≈ 5.2; allow 5σ.
    let mut keyed = BTreeMap::<String, usize>::new();
    for user in 0..300 {
        let key = format!("user-{user}");
        let first = score(addr, Some(&key)).await;
        let again = score(addr, Some(&key)).await;
        assert_eq!(first, again, "{key} is sticky");
        *keyed.entry(first).or_default() += 2;
    }
    assert_split(&keyed, &[("diabetes:2", 10)], 2 * 26);

    // Weights only: the same loaded versions, the same listener, a new table.
    let fifty_fifty = web(port, &file, &[(1, 50), (2, 50)], None);
    stage.retune(&fifty_fifty).expect("retuned in place");
    assert_eq!(stage.loads(), 2, "nothing loaded");
    assert_eq!(stage.addr("web"), Some(addr), "the listener stayed");
    let after = tally(addr, 200).await;
    assert_split(&after, &[("diabetes:1", 50), ("diabetes:2", 50)], 3);
    // Each version's counters run on from before the change: the same loaded instances.
    let seen = stage.observe("web", Instant::now()).expect("observed");
    for version in &seen.metrics.versions {
        let sent = |t: &BTreeMap<String, usize>| t.get(&version.model).copied().unwrap_or(0);
        let total = sent(&before) + sent(&keyed) + sent(&after);
        assert_eq!(version.requests, total as u64, "{}", version.model);
    }
    assert_eq!(seen.metrics.requests, 1100);
    assert_eq!(
        (seen.metrics.window_requests, seen.metrics.window_errors),
        (1100, 0)
    );

    // A change in more than weights is not a retune.
    let other = web(port, &file, &[(1, 50), (3, 50)], None);
    assert!(stage.retune(&other).is_err());
    // Promoting the canary shares its loaded version: still nothing loads.
    stage
        .apply(&web(port, &file, &[(2, 0)], None))
        .await
        .expect("promoted");
    assert_eq!(stage.loads(), 2);
    assert_eq!(
        tally(addr, 20).await,
        BTreeMap::from([("diabetes:2".into(), 20)])
    );
    // A new version beside it loads exactly that version.
    let canary = web(port, &file, &[(2, 80), (3, 20)], None);
    stage.apply(&canary).await.expect("applied");
    assert_eq!(stage.loads(), 3, "diabetes:3 loaded, diabetes:2 shared");
    let answered = tally(addr, 100).await;
    assert_split(&answered, &[("diabetes:2", 80), ("diabetes:3", 20)], 3);
    stage.stop_all().await;
}

/// A stand-in for the hub: publishes desired states and passes on the agent's reports.
struct Hub {
    client: AsyncClient,
    reports: mpsc::UnboundedReceiver<ReportedState>,
}

impl Hub {
    async fn connect(broker_port: u16, device: &str) -> Self {
        let mut options = MqttOptions::new("edgeship-test-hub", "127.0.0.1", broker_port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, reports) = mpsc::unbounded_channel();
        let reported = topics::device(device, DeviceTopic::Reported);
        client
            .subscribe(reported.clone(), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == reported => {
                        let report = pb::ReportedState::decode(p.payload.as_ref())
                            .map_err(|e| e.to_string())
                            .and_then(|r| ReportedState::try_from(r).map_err(|e| e.to_string()))
                            .expect("a valid report");
                        let _ = tx.send(report);
                    }
                    Ok(_) => {}
                    // Mosquitto runs for the whole test; an error means it is gone.
                    Err(err) => panic!("test hub lost the broker: {err}"),
                }
            }
        });
        Hub { client, reports }
    }

    async fn publish(&self, device: &str, generation: u64, workload: &Workload) {
        let desired = DesiredState {
            device_id: device.into(),
            generation,
            workloads: vec![workload.clone()],
            rejected: vec![],
            issued_at_ms: 0,
            jobs: vec![],
            rejected_jobs: vec![],
        };
        let payload = testkit::trust::signed_desired(testkit::trust::test_director(), &desired);
        self.client
            .publish(
                topics::device(device, DeviceTopic::Desired),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await
            .expect("publish");
    }

    /// Waits for a report whose `web` workload is in `state`.
    async fn reported(&mut self, state: ServiceState) -> ReportedState {
        let wanted = async {
            while let Some(report) = self.reports.recv().await {
                if report
                    .workloads
                    .iter()
                    .any(|w| w.deployment == "web" && w.state == state)
                {
                    return report;
                }
            }
            panic!("the report stream ended");
        };
        tokio::time::timeout(WAIT, wanted)
            .await
            .unwrap_or_else(|_| panic!("no report with web {state}"))
    }
}

async fn wait_for(agent: &RunningAgent, what: &str, f: impl Fn(&AgentView) -> bool) -> AgentView {
    agent
        .wait_for(WAIT, f)
        .await
        .unwrap_or_else(|view| panic!("{what}: the agent shows {view:#?}"))
}

fn web_state(view: &AgentView) -> Option<ServiceState> {
    view.workload("web").map(|w| w.state)
}

#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install -y mosquitto)"
)]
#[tokio::test]
async fn an_agent_serves_a_split_takes_new_weights_without_loading_and_reports_its_health() {
    let Some(broker) = Mosquitto::start(
        "an_agent_serves_a_split_takes_new_weights_without_loading_and_reports_its_health",
    ) else {
        return;
    };
    let device = "edge-split";
    let dir = tempfile::tempdir().expect("temp");
    // The blobs are in the cache already, as after an earlier download: nothing is fetched.
    let file = seed_diabetes(&BlobCache::open(dir.path().join("blobs")).expect("cache"));
    let mut hub = Hub::connect(broker.port, device).await;
    let config = RawConfig {
        device_id: Some(device.into()),
        broker: Some(broker.url()),
        data_dir: Some(dir.path().to_owned()),
        serve_host: Some(IpAddr::from([127, 0, 0, 1])),
        director_key: Some(testkit::trust::test_director().public().to_string()),
        insecure: Some(true),
        ..RawConfig::default()
    }
    .validate()
    .expect("config");
    let agent = RunningAgent::start(config).await.expect("agent");
    let port = free_port();

    hub.publish(device, 1, &web(port, &file, &[(1, 90), (2, 10)], None))
        .await;
    let view = wait_for(&agent, "the split serves", |v| {
        v.applied_generation == 1 && web_state(v) == Some(ServiceState::Healthy)
    })
    .await;
    assert_eq!(view.models_loaded, 2);
    let addr = view
        .workload("web")
        .and_then(|w| w.addr)
        .expect("listening");
    let before = tally(addr, 300).await;
    assert_split(&before, &[("diabetes:1", 90), ("diabetes:2", 10)], 3);

    hub.publish(device, 2, &web(port, &file, &[(1, 50), (2, 50)], None))
        .await;
    let view = wait_for(&agent, "the new weights apply", |v| {
        v.applied_generation == 2
    })
    .await;
    assert_eq!(view.models_loaded, 2, "new weights load nothing");
    let web_view = view.workload("web").expect("web");
    assert_eq!(
        (web_view.state, web_view.addr),
        (ServiceState::Healthy, Some(addr))
    );
    // The reported per-version counters run on: the versions serving are the ones loaded.
    let counted: BTreeMap<String, usize> = web_view
        .metrics
        .versions
        .iter()
        .map(|v| (v.model.clone(), v.requests as usize))
        .collect();
    assert_eq!(counted, before);
    let after = tally(addr, 200).await;
    assert_split(&after, &[("diabetes:1", 50), ("diabetes:2", 50)], 3);

    // A gate no request can pass (p99 under a microsecond) over a 2 s window: a health gate
    // change alone, so again nothing loads.
    let gate = HealthThresholds {
        max_error_rate: None,
        max_p99_ms: Some(0.001),
        window_seconds: 2,
        min_requests: 20,
    };
    hub.publish(
        device,
        3,
        &web(port, &file, &[(1, 50), (2, 50)], Some(gate)),
    )
    .await;
    let view = wait_for(&agent, "the gate applies", |v| v.applied_generation == 3).await;
    assert_eq!(view.models_loaded, 2, "a new gate loads nothing");
    // Traffic runs until the agent's health check sees it; then it stops.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            while !stop.load(Ordering::Relaxed) {
                score(addr, None).await;
            }
        }
    });
    let view = wait_for(&agent, "the workload turns unhealthy", |v| {
        web_state(v) == Some(ServiceState::Unhealthy)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");
    let error = &view.workload("web").expect("web").error;
    assert!(
        error.starts_with("p99 latency") && error.contains("exceeds 0.001 ms"),
        "{error}"
    );
    let report = hub.reported(ServiceState::Unhealthy).await;
    assert_eq!(report.applied_generation, 3);
    // Without traffic the window empties, too few requests are left to judge, and the agent
    // reports the workload healthy again.
    wait_for(&agent, "the workload recovers", |v| {
        web_state(v) == Some(ServiceState::Healthy)
    })
    .await;
    let report = hub.reported(ServiceState::Healthy).await;
    let web_report = report
        .workloads
        .iter()
        .find(|w| w.deployment == "web")
        .expect("web");
    assert_eq!(web_report.error, "");
    assert_eq!(web_report.metrics.window_seconds, 2);
    assert_eq!(web_report.metrics.versions.len(), 2);

    agent.stop().await.expect("stops");
    broker.stop();
}
