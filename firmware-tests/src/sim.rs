//! Lightweight simulated devices: each speaks the real device protocol over a real MQTT
//! connection (birth, desired state, chunked blob fetch with per-chunk and whole-file sha256
//! checks, report), without running models. A thousand fit in one test process, so fleet
//! behaviour is tested at fleet size.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Chunk size the real agent requests (and the hub's maximum).
const CHUNK: u64 = 256 * 1024;

/// What a simulated device has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimState {
    pub connected: bool,
    /// Newest desired generation whose blobs all arrived and verified.
    pub applied_generation: u64,
    /// Blob bytes received and verified.
    pub verified_bytes: u64,
    /// Why the last desired state could not be applied.
    pub error: Option<String>,
    /// Deployment → the model versions it runs (`m:2`, or `m:1, m:2` for a split).
    pub running: BTreeMap<String, String>,
}

/// How a simulated device answers for model versions: failures and regressions to inject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Versions whose workload reports `Failed`, as a failed self-test would.
    pub failing_versions: BTreeSet<u32>,
    /// Versions whose endpoint reports this p99 latency (ms) over a busy window.
    pub slow_versions: BTreeMap<u32, f64>,
    /// Fetch every chunk on the device's own topic, never joining a broadcast (what agents
    /// did before broadcasts; the fleet benchmark compares the two).
    pub no_broadcast: bool,
    /// How long to listen for a broadcast before asking for chunks itself; `None`: the
    /// agent's 2 s. Tests on loaded, unoptimized builds wait longer to check the mechanism,
    /// not the timing.
    pub broadcast_wait: Option<Duration>,
}

/// How long a simulated device listens for a broadcast before asking for chunks itself, and
/// how long it waits for progress before asking again, as the agent does.
const BROADCAST_WAIT: Duration = Duration::from_secs(2);
const FETCH_STALL: Duration = Duration::from_secs(3);

/// Requests a simulated endpoint reports in its window: enough for a gate to judge.
const SIM_WINDOW_REQUESTS: u64 = 100;

/// A simulated device; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct SimDevice {
    pub id: String,
    pub state: watch::Receiver<SimState>,
    behaviour: watch::Sender<Behaviour>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Capabilities of a tract agent, as the real agent announces them.
pub fn agent_capabilities() -> pb::Capabilities {
    pb::Capabilities {
        arch: "x86_64".into(),
        os: "linux".into(),
        cpu_count: 1,
        memory_bytes: 1 << 30,
        runtimes: vec!["tract".into()],
        opencl_devices: vec![],
        features: vec![
            "kind/model".into(),
            "protocol/azureml".into(),
            "auth/none".into(),
            "traffic_split".into(),
        ],
        container_engine: String::new(),
    }
}

impl SimDevice {
    /// Connects a device to the broker at `host:port` with these labels.
    pub fn start(id: &str, host: &str, port: u16, labels: &BTreeMap<String, String>) -> Self {
        Self::start_with(id, host, port, labels, Behaviour::default())
    }

    /// Changes how the device answers from its next report on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.behaviour.send_replace(behaviour);
    }

    /// Like `start`, answering with `behaviour`.
    pub fn start_with(
        id: &str,
        host: &str,
        port: u16,
        labels: &BTreeMap<String, String>,
        behaviour: Behaviour,
    ) -> Self {
        let (behaviour_tx, behaviour_rx) = watch::channel(behaviour);
        let mut options = MqttOptions::new(format!("edgeship-sim-{id}"), host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(SimState::default());
        let birth = pb::Birth {
            device_id: id.to_owned(),
            online: true,
            agent_version: "sim".into(),
            capabilities: Some(agent_capabilities()),
            labels: labels.clone().into_iter().collect(),
            at_ms: 0,
        };
        // The poll loop only polls and forwards; the device task does the talking.
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = inbound_tx.send(Inbound::Connected);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = inbound_tx.send(Inbound::Message(p.topic, p.payload));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let device = tokio::spawn(run(
            Identity {
                id: id.to_owned(),
                birth,
                behaviour: behaviour_rx,
            },
            client,
            inbound_rx,
            state_tx,
        ));
        Self {
            id: id.to_owned(),
            state,
            behaviour: behaviour_tx,
            tasks: vec![poller, device],
        }
    }
}

enum Inbound {
    Connected,
    Message(String, bytes::Bytes),
}

/// One blob being fetched: its chunks by offset until all are there.
struct Fetch {
    sha256: String,
    size: u64,
    /// The whole-file hash over the contiguous prefix received so far, and where it ends:
    /// ten thousand devices must not each hold their model in memory.
    hasher: Sha256,
    prefix: u64,
    /// Chunks that arrived ahead of the prefix.
    ahead: BTreeMap<u64, bytes::Bytes>,
}

impl Fetch {
    fn new(sha256: String, size: u64) -> Self {
        Self {
            sha256,
            size,
            hasher: Sha256::new(),
            prefix: 0,
            ahead: BTreeMap::new(),
        }
    }

    /// Takes a verified chunk; duplicates and chunks behind the prefix are dropped.
    fn take(&mut self, offset: u64, data: bytes::Bytes) {
        if offset < self.prefix || data.is_empty() {
            return;
        }
        self.ahead.insert(offset, data);
        while let Some(data) = self.ahead.remove(&self.prefix) {
            self.hasher.update(&data);
            self.prefix += data.len() as u64;
        }
    }

    fn has(&self, offset: u64) -> bool {
        offset < self.prefix || self.ahead.contains_key(&offset)
    }

    fn complete(&self) -> bool {
        self.prefix >= self.size
    }
}

/// Who the device is and how it answers.
struct Identity {
    id: String,
    birth: pb::Birth,
    behaviour: watch::Receiver<Behaviour>,
}

async fn run(
    identity: Identity,
    client: AsyncClient,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    state: watch::Sender<SimState>,
) {
    let Identity {
        id,
        birth,
        behaviour,
    } = identity;
    let mut behaviour = behaviour;
    let mut desired: Option<pb::DesiredState> = None;
    let mut fetches: Vec<Fetch> = Vec::new();
    let mut fallback_at: Option<tokio::time::Instant> = None;
    // How long the current fetch waits for progress: for a broadcast, then for its own chunks.
    let mut patience = BROADCAST_WAIT;
    loop {
        let message = tokio::select! {
            message = inbound.recv() => match message {
                Some(message) => message,
                None => return,
            },
            // No broadcast came: ask for every chunk still missing.
            () = sleep_until_some(fallback_at) => {
                // Still fetching: ask again for what is missing, as an agent does on a stall.
                patience = FETCH_STALL;
                fallback_at = (!fetches.is_empty()).then(|| tokio::time::Instant::now() + patience);
                for fetch in &fetches {
                    request_missing(&client, &id, fetch).await;
                }
                continue;
            }
            // A changed behaviour shows in a fresh report of what the device runs.
            changed = behaviour.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = behaviour.borrow_and_update().clone();
                if let Some(desired) = &desired {
                    let applied = state.borrow().applied_generation;
                    report(&client, &id, desired, applied, &now).await;
                }
                continue;
            }
        };
        match message {
            Inbound::Connected => {
                for kind in [
                    DeviceTopic::Desired,
                    DeviceTopic::BlobResponse,
                    DeviceTopic::LogRequest,
                ] {
                    let _ = client
                        .subscribe(topics::device(&id, kind), QoS::AtLeastOnce)
                        .await;
                }
                let _ = client
                    .publish(
                        topics::device(&id, DeviceTopic::Birth),
                        QoS::AtLeastOnce,
                        true,
                        birth.encode_to_vec(),
                    )
                    .await;
                state.send_modify(|s| s.connected = true);
            }
            Inbound::Message(topic, payload) => match topics::parse(&topic) {
                Some((_, DeviceTopic::Desired)) => {
                    let Some(new) = crate::trust::open_desired(payload.as_ref()) else {
                        continue;
                    };
                    let applied = state.borrow().applied_generation;
                    if new.generation <= applied {
                        let now = behaviour.borrow().clone();
                        report(&client, &id, &new, applied, &now).await;
                        continue;
                    }
                    fetches = blobs_of(&new)
                        .into_iter()
                        .map(|(sha256, size)| Fetch::new(sha256, size))
                        .collect();
                    let listen = !behaviour.borrow().no_broadcast;
                    for fetch in &fetches {
                        if listen {
                            join_broadcast(&client, &id, fetch).await;
                        } else {
                            request_missing(&client, &id, fetch).await;
                        }
                    }
                    patience = match (listen, behaviour.borrow().broadcast_wait) {
                        (true, Some(wait)) => wait,
                        (true, None) => BROADCAST_WAIT,
                        (false, _) => FETCH_STALL,
                    };
                    fallback_at = Some(tokio::time::Instant::now() + patience);
                    desired = Some(new);
                    finish_if_complete(
                        &client,
                        &id,
                        &mut fetches,
                        desired.as_ref(),
                        &state,
                        &behaviour,
                    )
                    .await;
                }
                Some((_, DeviceTopic::LogRequest)) => {
                    let Ok(request) = pb::LogRequest::decode(payload.as_ref()) else {
                        continue;
                    };
                    // One line naming the device and the deployment, as an agent's log would.
                    let answer = pb::LogResponse {
                        request_id: request.request_id,
                        lines: vec![pb::LogLine {
                            at_ms: crate::now_ms(),
                            source: "agent".into(),
                            text: format!("{id} runs {}", request.deployment),
                        }],
                        error: String::new(),
                    };
                    let _ = client
                        .publish(
                            topics::device(&id, DeviceTopic::LogResponse),
                            QoS::AtLeastOnce,
                            false,
                            answer.encode_to_vec(),
                        )
                        .await;
                }
                _ if topics::parse_blob_broadcast(&topic).is_some()
                    || matches!(topics::parse(&topic), Some((_, DeviceTopic::BlobResponse))) =>
                {
                    let Ok(chunk) = pb::BlobChunk::decode(payload.as_ref()) else {
                        continue;
                    };
                    // Progress: the stall timer starts again.
                    fallback_at = fallback_at.map(|_| tokio::time::Instant::now() + patience);
                    if !chunk.error.is_empty() {
                        state.send_modify(|s| s.error = Some(chunk.error.clone()));
                        continue;
                    }
                    // As the agent does: a chunk already held is dropped before it is hashed
                    // (a broadcast round overlaps what a device took from the one before).
                    if let Some(fetch) = fetches.iter_mut().find(|f| f.sha256 == chunk.sha256)
                        && !fetch.has(chunk.offset)
                        && intact(&chunk)
                    {
                        fetch.take(chunk.offset, chunk.data);
                    }
                    finish_if_complete(
                        &client,
                        &id,
                        &mut fetches,
                        desired.as_ref(),
                        &state,
                        &behaviour,
                    )
                    .await;
                }
                _ => {}
            },
        }
    }
}

/// A chunk's transport check, as the agent makes it: its CRC-32 when the hub sent one, else
/// its sha256 (the whole file's sha256 is checked when it is complete).
fn intact(chunk: &pb::BlobChunk) -> bool {
    match chunk.chunk_crc32 {
        Some(crc) => crc32fast::hash(&chunk.data) == crc,
        None => hex::encode(Sha256::digest(&chunk.data)) == chunk.chunk_sha256,
    }
}

fn blobs_of(desired: &pb::DesiredState) -> Vec<(String, u64)> {
    let mut blobs: Vec<(String, u64)> = desired
        .workloads
        .iter()
        .filter_map(|w| match &w.kind {
            Some(pb::workload::Kind::Model(m)) => Some(m),
            _ => None,
        })
        .flat_map(|m| m.models.iter().flat_map(|d| d.files.iter()))
        .map(|f| (f.sha256.clone(), f.size_bytes))
        .collect();
    blobs.sort();
    blobs.dedup();
    blobs
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Listens on the blob's broadcast topic, then asks for its first chunk saying so.
async fn join_broadcast(client: &AsyncClient, id: &str, fetch: &Fetch) {
    let _ = client
        .subscribe(topics::blob_broadcast(&fetch.sha256), QoS::AtLeastOnce)
        .await;
    let request = pb::BlobRequest {
        sha256: fetch.sha256.clone(),
        offset: 0,
        length: CHUNK.min(fetch.size),
        broadcast: true,
    };
    send_request(client, id, &request).await;
}

async fn send_request(client: &AsyncClient, id: &str, request: &pb::BlobRequest) {
    let _ = client
        .publish(
            topics::device(id, DeviceTopic::BlobRequest),
            QoS::AtLeastOnce,
            false,
            request.encode_to_vec(),
        )
        .await;
}

/// Asks for every chunk of the blob not received yet, on the device's own topic.
async fn request_missing(client: &AsyncClient, id: &str, fetch: &Fetch) {
    let mut offset = 0;
    while offset < fetch.size {
        if fetch.has(offset) {
            offset += CHUNK;
            continue;
        }
        let request = pb::BlobRequest {
            sha256: fetch.sha256.clone(),
            offset,
            length: CHUNK.min(fetch.size - offset),
            broadcast: false,
        };
        send_request(client, id, &request).await;
        offset += CHUNK;
    }
}

async fn finish_if_complete(
    client: &AsyncClient,
    id: &str,
    fetches: &mut Vec<Fetch>,
    desired: Option<&pb::DesiredState>,
    state: &watch::Sender<SimState>,
    behaviour: &watch::Receiver<Behaviour>,
) {
    let Some(desired) = desired else {
        return;
    };
    if !fetches.iter().all(Fetch::complete) {
        return;
    }
    let mut verified = 0;
    for fetch in fetches.iter() {
        if hex::encode(fetch.hasher.clone().finalize()) != fetch.sha256 {
            state.send_modify(|s| s.error = Some(format!("{} failed verification", fetch.sha256)));
            return;
        }
        verified += fetch.size;
    }
    for fetch in fetches.iter() {
        let _ = client
            .unsubscribe(topics::blob_broadcast(&fetch.sha256))
            .await;
    }
    fetches.clear();
    let running = desired
        .workloads
        .iter()
        .map(|w| (w.deployment.clone(), models_of(w)))
        .collect();
    state.send_modify(|s| {
        s.applied_generation = desired.generation;
        s.verified_bytes += verified;
        s.error = None;
        s.running = running;
    });
    let applied = state.borrow().applied_generation;
    let behaviour = behaviour.borrow().clone();
    report(client, id, desired, applied, &behaviour).await;
}

/// `m:1` or `m:1, m:2`: what a workload runs, as agents report it.
fn models_of(workload: &pb::Workload) -> String {
    match &workload.kind {
        Some(pb::workload::Kind::Model(m)) => m
            .models
            .iter()
            .map(|d| format!("{}:{}", d.model_id, d.version))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// Reports every workload of `desired` healthy (the simulator runs no model), except where
/// `behaviour` says a version fails or is slow.
async fn report(
    client: &AsyncClient,
    id: &str,
    desired: &pb::DesiredState,
    applied: u64,
    behaviour: &Behaviour,
) {
    let workloads = desired
        .workloads
        .iter()
        .map(|w| {
            let versions: Vec<(String, u32)> = match &w.kind {
                Some(pb::workload::Kind::Model(m)) => m
                    .models
                    .iter()
                    .map(|d| (d.model_id.clone(), d.version))
                    .collect(),
                _ => Vec::new(),
            };
            let model = models_of(w);
            let failing = versions
                .iter()
                .any(|(_, v)| behaviour.failing_versions.contains(v));
            let p99_ms = versions
                .iter()
                .filter_map(|(_, v)| behaviour.slow_versions.get(v))
                .fold(1.0, |a: f64, b| a.max(*b));
            let (state, error) = match failing {
                true => (
                    pb::ServiceState::Failed,
                    "self-test failed (simulated)".to_owned(),
                ),
                false => (pb::ServiceState::Healthy, String::new()),
            };
            pb::WorkloadStatus {
                deployment: w.deployment.clone(),
                state: state.into(),
                error,
                serving_model: model.clone(),
                desired_model: model,
                port: w.endpoint.as_ref().map_or(0, |e| e.port),
                metrics: Some(pb::EndpointMetrics {
                    window_seconds: 30,
                    window_requests: SIM_WINDOW_REQUESTS,
                    p50_ms: 1.0,
                    p99_ms,
                    ..Default::default()
                }),
            }
        })
        .collect();
    let report = pb::ReportedState {
        device_id: id.to_owned(),
        applied_generation: applied,
        workloads,
        reported_at_ms: 0,
        jobs: vec![],
    };
    let _ = client
        .publish(
            topics::device(id, DeviceTopic::Reported),
            QoS::AtLeastOnce,
            false,
            report.encode_to_vec(),
        )
        .await;
}
