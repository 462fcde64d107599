//! The agent's MQTT connection: a persistent session with a Last Will, reconnecting with
//! backoff. It announces the device (birth) on every connect, turns incoming desired states
//! and blob chunks into domain values for the driver, and publishes what the driver sends.
//! This is the only module of the agent that touches protobuf types.
//!
//! Design: the poll loop awaits nothing but `poll()` (and its backoff), so it always drains
//! the client's request queue. Reports go through a latest-wins slot that a publisher task
//! empties: the driver never waits for the broker, and a report superseded before it was sent
//! is simply replaced. Malformed payloads are logged and dropped here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeship_domain::{Birth, DesiredState, DeviceProfile, ReportedState};
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

mod requests;
pub mod verify;

use crate::acks::{AckToken, Acks};
use crate::config::AgentConfig;
use crate::fetch::Chunk;

/// Chunks buffered for the download in progress (its whole window and then some); beyond
/// that chunks are dropped and the download re-requests them.
const CHUNK_QUEUE: usize = 256;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the connection delivers to the driver.
#[derive(Debug)]
pub struct LinkEvents {
    /// The newest desired state received (not yet filtered by generation).
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// The generation of `desired`, for downloads that must notice a newer one.
    pub newest_generation: watch::Receiver<u64>,
    pub chunks: mpsc::Receiver<Chunk>,
    /// Bumped on every (re)connect, so the driver can re-report.
    pub connected: watch::Receiver<u64>,
    /// Requests for a deployment's log lines (`edgeship deploy logs`).
    pub log_requests: mpsc::Receiver<LogRequest>,
    /// Requests to load a deployment's endpoint (`edgeship model profile`).
    pub profile_requests: mpsc::Receiver<ProfileRequest>,
    /// The hub's answers about jobs' outputs being uploaded.
    pub upload_acks: mpsc::Receiver<UploadAck>,
}

/// Upload answers waiting for the jobs' uploaders; more are dropped (an uploader that hears
/// nothing asks again).
const UPLOAD_ACK_QUEUE: usize = 64;

/// Log requests waiting for the driver; more are dropped (the caller times out and asks
/// again), so a flood of them cannot grow the agent.
const LOG_REQUEST_QUEUE: usize = 16;

pub use requests::{
    DEFAULT_LOG_TAIL, LogRequest, MAX_LOG_TAIL, MAX_PROFILE_CONNECTIONS, MAX_PROFILE_LEVELS,
    MAX_PROFILE_SECONDS, ProfileRequest, UploadAck,
};

/// Sends to the hub through the broker; cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkSender {
    client: AsyncClient,
    device_id: String,
    reports: watch::Sender<Option<ReportedState>>,
}

impl LinkSender {
    /// Asks the hub for one chunk. Waits while the client's queue is full: downloads are
    /// paced by the link.
    pub async fn request_blob(&self, sha256: &str, offset: u64, length: u64) {
        self.send_blob_request(sha256, offset, length, false).await;
    }

    /// Listens on the blob's broadcast topic, then asks for its first chunk saying so: the
    /// hub may answer by broadcasting the whole blob to every device that asked.
    pub async fn join_broadcast(&self, sha256: &str, length: u64) {
        // The broker handles a client's packets in order: the subscription is in place
        // before the hub can see the request.
        if let Err(err) = self
            .client
            .subscribe(topics::blob_broadcast(sha256), QoS::AtLeastOnce)
            .await
        {
            tracing::debug!(error = %err, "broadcast subscription dropped");
        }
        self.send_blob_request(sha256, 0, length, true).await;
    }

    /// Stops listening on the blob's broadcast topic.
    pub async fn leave_broadcast(&self, sha256: &str) {
        let _ = self
            .client
            .unsubscribe(topics::blob_broadcast(sha256))
            .await;
    }

    async fn send_blob_request(&self, sha256: &str, offset: u64, length: u64, broadcast: bool) {
        let request = pb::BlobRequest {
            sha256: sha256.to_owned(),
            offset,
            length,
            broadcast,
        };
        let topic = topics::device(&self.device_id, DeviceTopic::BlobRequest);
        if let Err(err) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, request.encode_to_vec())
            .await
        {
            tracing::debug!(error = %err, "blob request dropped");
        }
    }

    /// Answers a log request: `lines` oldest first, or why there are none.
    pub async fn send_logs(
        &self,
        request_id: &str,
        lines: Vec<crate::logbook::LogLine>,
        error: Option<String>,
    ) {
        let response = pb::LogResponse {
            request_id: request_id.to_owned(),
            lines: lines
                .into_iter()
                .map(|l| pb::LogLine {
                    at_ms: l.at_ms,
                    source: l.source,
                    text: l.text,
                })
                .collect(),
            error: error.unwrap_or_default(),
        };
        let topic = topics::device(&self.device_id, DeviceTopic::LogResponse);
        if let Err(err) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, response.encode_to_vec())
            .await
        {
            tracing::debug!(error = %err, "log response dropped");
        }
    }

    /// Answers a profile request with its figures, or why there are none.
    pub async fn send_profile(&self, request_id: &str, answer: Result<DeviceProfile, String>) {
        let response = edgeship_domain::wire::profile_response(
            request_id,
            answer.as_ref().map_err(String::as_str),
        );
        let topic = topics::device(&self.device_id, DeviceTopic::ProfileResponse);
        if let Err(err) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, response.encode_to_vec())
            .await
        {
            tracing::debug!(error = %err, "profile response dropped");
        }
    }

    /// Sends a piece of a job's output (an empty one asks how much the hub holds). Waits
    /// while the client's queue is full: uploads are paced by the link.
    pub async fn send_upload(
        &self,
        job_id: &str,
        sha256: &str,
        size_bytes: u64,
        offset: u64,
        data: Vec<u8>,
    ) {
        let chunk = pb::UploadChunk {
            job_id: job_id.to_owned(),
            sha256: sha256.to_owned(),
            size_bytes,
            offset,
            data: data.into(),
        };
        let topic = topics::device(&self.device_id, DeviceTopic::UploadRequest);
        if let Err(err) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, chunk.encode_to_vec())
            .await
        {
            tracing::debug!(error = %err, "upload piece dropped");
        }
    }

    /// Queues a report; never waits. A report not yet sent is replaced by this one.
    pub fn report(&self, report: ReportedState) {
        self.reports.send_replace(Some(report));
    }

    /// Marks the device offline (retained) and disconnects cleanly, within `timeout`.
    pub async fn goodbye(&self, birth: &Birth, timeout: Duration) {
        let offline = pb::Birth::from(&Birth {
            online: false,
            ..birth.clone()
        });
        let topic = topics::device(&self.device_id, DeviceTopic::Birth);
        let bye = async {
            let _ = self
                .client
                .publish(topic, QoS::AtLeastOnce, true, offline.encode_to_vec())
                .await;
            let _ = self.client.disconnect().await;
        };
        let _ = tokio::time::timeout(timeout, bye).await;
    }
}

#[derive(Debug)]
pub struct Link {
    pub sender: LinkSender,
    pub events: LinkEvents,
    /// Set once the driver is stopping: the poll loop then stops reconnecting.
    stopping: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Stops reconnecting; the connection ends with the goodbye or when the link is dropped.
    pub fn stop_reconnecting(&self) {
        self.stopping.send_replace(true);
    }

    /// Waits (at most `timeout`) for the poll loop to deliver what is queued, then ends it.
    pub async fn close(mut self, timeout: Duration) {
        if let Some(poller) = self.tasks.first_mut() {
            let _ = tokio::time::timeout(timeout, poller).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A delay between `base / 2` and `base`, so a fleet that lost its broker does not come back
/// in lockstep.
pub fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fraction = f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(0.5 + fraction / 2.0)
}

/// `newest_generation`: the newest generation the agent took before; older desired states
/// are refused from the start.
pub fn start(config: &AgentConfig, birth: &Birth, newest_generation: u64) -> anyhow::Result<Link> {
    let device_id = config.device_id.clone();
    let mut options = MqttOptions::new(
        format!("edgeship-agent-{device_id}"),
        config.broker.host.clone(),
        config.broker.port,
    );
    let will = pb::Birth::from(&Birth {
        online: false,
        ..birth.clone()
    });
    options
        .set_keep_alive(config.keep_alive)
        // Persistent session: chunks and desired states published while the link was down
        // are delivered when it comes back.
        .set_clean_session(false)
        // Chunks are acknowledged once written (see `acks`), so a killed agent loses none.
        .set_manual_acks(true)
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
        .set_last_will(LastWill::new(
            topics::device(&device_id, DeviceTopic::Birth),
            will.encode_to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
    if config.broker.tls {
        let identity = config.trust.identity.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the broker speaks TLS and this device has no identity")
        })?;
        let tls = identity.client_config().map_err(anyhow::Error::msg)?;
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (desired_tx, desired_rx) = watch::channel(None);
    let (generation_tx, generation_rx) = watch::channel(0u64);
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let (reports_tx, reports_rx) = watch::channel(None);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let (log_tx, log_rx) = mpsc::channel(LOG_REQUEST_QUEUE);
    // One profile runs at a time; one more may wait its turn.
    let (profile_tx, profile_rx) = mpsc::channel(2);
    let (upload_tx, upload_rx) = mpsc::channel(UPLOAD_ACK_QUEUE);
    let sender = LinkSender {
        client: client.clone(),
        device_id: device_id.clone(),
        reports: reports_tx,
    };
    let inbound = Inbound {
        device_id: device_id.clone(),
        gate: verify::StateGate::new(&device_id, &config.trust, newest_generation),
        desired: desired_tx,
        generation: generation_tx,
        chunks: chunk_tx,
        log_requests: log_tx,
        profile_requests: profile_tx,
        upload_acks: upload_tx,
    };
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        config.broker.to_string(),
        pb::Birth::from(birth),
        inbound,
        connected_tx,
        stopping_rx,
    ));
    let reporter = tokio::spawn(publish_reports(client, device_id, reports_rx));
    Ok(Link {
        sender,
        events: LinkEvents {
            desired: desired_rx,
            newest_generation: generation_rx,
            chunks: chunk_rx,
            connected: connected_rx,
            log_requests: log_rx,
            profile_requests: profile_rx,
            upload_acks: upload_rx,
        },
        stopping: stopping_tx,
        tasks: vec![poller, reporter],
    })
}

/// Where incoming messages go; every hand-off is non-blocking.
struct Inbound {
    device_id: String,
    gate: verify::StateGate,
    desired: watch::Sender<Option<DesiredState>>,
    generation: watch::Sender<u64>,
    chunks: mpsc::Sender<Chunk>,
    log_requests: mpsc::Sender<LogRequest>,
    profile_requests: mpsc::Sender<ProfileRequest>,
    upload_acks: mpsc::Sender<UploadAck>,
}

impl Inbound {
    /// Hands a message on; `ack` acknowledges it when dropped (at once, except for a chunk,
    /// which goes with it to the download).
    fn deliver(&mut self, topic: &str, payload: &[u8], ack: Option<AckToken>) {
        if let Some(digest) = topics::parse_blob_broadcast(topic) {
            self.chunk(payload, ack, Some(digest));
            return;
        }
        match topics::parse(topic) {
            Some((id, DeviceTopic::Desired)) if id == self.device_id => {
                let desired = match self.gate.open(payload, crate::now_ms()) {
                    Ok(desired) => desired,
                    Err(refusal) => {
                        tracing::warn!(%refusal, bytes = payload.len(), "desired state refused");
                        return;
                    }
                };
                match DesiredState::try_from(desired) {
                    Ok(desired) => {
                        self.generation.send_replace(desired.generation);
                        self.desired.send_replace(Some(desired));
                    }
                    Err(err) => tracing::warn!(error = %err, "invalid desired state ignored"),
                }
            }
            Some((id, DeviceTopic::BlobResponse)) if id == self.device_id => {
                self.chunk(payload, ack, None);
            }
            Some((id, DeviceTopic::LogRequest)) if id == self.device_id => {
                match pb::LogRequest::decode(payload) {
                    Ok(request) if !request.request_id.is_empty() => {
                        let tail = match request.tail {
                            0 => DEFAULT_LOG_TAIL,
                            n => (n as usize).min(MAX_LOG_TAIL),
                        };
                        let _ = self.log_requests.try_send(LogRequest {
                            request_id: request.request_id,
                            deployment: request.deployment,
                            tail,
                            since_ms: request.since_ms,
                        });
                    }
                    Ok(_) => tracing::warn!("log request without an id ignored"),
                    Err(err) => tracing::warn!(error = %err, "malformed log request ignored"),
                }
            }
            Some((id, DeviceTopic::ProfileRequest)) if id == self.device_id => {
                let request = match pb::ProfileRequest::decode(payload) {
                    Ok(request) if !request.request_id.is_empty() => ProfileRequest {
                        request_id: request.request_id,
                        deployment: request.deployment,
                        path: request.path,
                        content_type: request.content_type,
                        body: request.body,
                        concurrency: request.concurrency,
                        seconds_per_level: request.seconds_per_level,
                    },
                    Ok(_) => return tracing::warn!("profile request without an id ignored"),
                    Err(err) => {
                        return tracing::warn!(error = %err, "malformed profile request ignored");
                    }
                };
                if self.profile_requests.try_send(request).is_err() {
                    tracing::warn!("profile request dropped: profiles are queued already");
                }
            }
            Some((id, DeviceTopic::UploadResponse)) if id == self.device_id => {
                match pb::UploadAck::decode(payload) {
                    Ok(ack) if !ack.job_id.is_empty() => {
                        let _ = self.upload_acks.try_send(UploadAck {
                            job_id: ack.job_id,
                            sha256: ack.sha256,
                            received_bytes: ack.received_bytes,
                            error: ack.error,
                            retry: ack.retry,
                        });
                    }
                    Ok(_) => tracing::warn!("upload answer without a job ignored"),
                    Err(err) => tracing::warn!(error = %err, "malformed upload answer ignored"),
                }
            }
            _ => tracing::debug!(%topic, "message on an unexpected topic ignored"),
        }
    }

    /// A chunk from the device's own topic, or from the broadcast topic of `broadcast`.
    fn chunk(&self, payload: &[u8], ack: Option<AckToken>, broadcast: Option<&str>) {
        match pb::BlobChunk::decode(payload) {
            // A broadcast carries only its own blob, and never a refusal.
            Ok(chunk)
                if broadcast.is_some_and(|d| d != chunk.sha256 || !chunk.error.is_empty()) =>
            {
                tracing::warn!(topic = ?broadcast, "broadcast chunk for another blob ignored");
            }
            Ok(chunk) => {
                // A full queue means a stalled fetch; dropping is safe (the fetch
                // re-requests what it misses).
                let _ = self.chunks.try_send(Chunk {
                    sha256: chunk.sha256,
                    offset: chunk.offset,
                    data: chunk.data,
                    error: chunk.error,
                    chunk_sha256: chunk.chunk_sha256,
                    chunk_crc32: chunk.chunk_crc32,
                    broadcast: broadcast.is_some(),
                    ack,
                });
            }
            Err(err) => tracing::warn!(error = %err, "malformed blob chunk ignored"),
        }
    }
}

async fn poll(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    broker: String,
    birth: pb::Birth,
    mut inbound: Inbound,
    connected: watch::Sender<u64>,
    stopping: watch::Receiver<bool>,
) {
    let (mut acks, acker) = Acks::start(client.clone());
    // The acknowledging task ends with this loop.
    let _acker = AbortOnDrop(acker);
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                acks.reconnected();
                tracing::info!(%broker, session_present = ack.session_present, "connected to the broker");
                // Awaiting the client here would deadlock on a full request queue, which only
                // this loop drains: subscribe and announce from a task while polling goes on.
                let client = client.clone();
                let birth = birth.clone();
                let device_id = inbound.device_id.clone();
                tokio::spawn(async move {
                    // The birth below also asks the hub for the desired state again: a
                    // broker that restores the session (rumqttd) does not resend a retained
                    // message on a repeated subscribe.
                    for kind in [
                        DeviceTopic::Desired,
                        DeviceTopic::BlobResponse,
                        DeviceTopic::LogRequest,
                        DeviceTopic::ProfileRequest,
                        DeviceTopic::UploadResponse,
                    ] {
                        let _ = client
                            .subscribe(topics::device(&device_id, kind), QoS::AtLeastOnce)
                            .await;
                    }
                    let _ = client
                        .publish(
                            topics::device(&device_id, DeviceTopic::Birth),
                            QoS::AtLeastOnce,
                            true,
                            birth.encode_to_vec(),
                        )
                        .await;
                });
                connected.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let ack = acks.track(&publish);
                inbound.deliver(&publish.topic, &publish.payload, ack);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                tracing::debug!("disconnected from the broker");
                return;
            }
            Ok(_) => {}
            Err(err) => {
                if *stopping.borrow() {
                    return;
                }
                let wait = jitter(backoff);
                tracing::warn!(%broker, error = %err, retry_in = ?wait, "broker unreachable");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes the newest report whenever one is queued. Only this task waits on the client
/// for reports, so a full queue or a dead broker delays reports, never the driver.
async fn publish_reports(
    client: AsyncClient,
    device_id: String,
    mut reports: watch::Receiver<Option<ReportedState>>,
) {
    let topic = topics::device(&device_id, DeviceTopic::Reported);
    while reports.changed().await.is_ok() {
        let Some(report) = reports.borrow_and_update().clone() else {
            continue;
        };
        let payload = pb::ReportedState::from(&report).encode_to_vec();
        if let Err(err) = client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::debug!(error = %err, "report dropped");
        }
    }
}
