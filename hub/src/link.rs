//! The hub's MQTT client: subscribes to every device's birth, reported, blob-request, upload,
//! log and profile answer topics, hands births and reports to the [`Fleet`], blob requests to
//! the [`BlobServer`], job output chunks to [`Jobs`] and answers to whoever waits for them
//! ([`DeviceRequests`](crate::device_requests::DeviceRequests)), and publishes desired
//! states (signed by the [`Director`]), blob chunks, upload acknowledgements, and log and
//! profile requests. This is the only module of the hub that touches device-protocol protobuf
//! types; it converts them to domain values here.
//!
//! Design (found at 300 devices: a poller that waited on a full worker queue while the worker
//! waited on the client's queue, which only the poller drains, stopped the link for good):
//! the poll loop awaits nothing but `poll()` and its backoff, and every hand-off from it is
//! non-blocking with an explicit overflow rule. Births and reports are coalesced per device
//! (only the newest matters) and applied in batches, one flush each. Blob requests go to a
//! bounded queue; when it is full a request is dropped and counted, and the device asks again
//! after its stall timeout. Upload chunks go to a bounded queue of their own, handled one at
//! a time in arrival order (a job's chunks must be appended in order); when it is full a
//! chunk is dropped and the device sends it again when its acknowledgement does not come.
//! Only the worker tasks wait on the client.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeship_domain::{Birth, DesiredState, ReportedState};
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use futures::StreamExt;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::blob_server::{BlobServer, ChunkReply, ChunkRequest};
use crate::broadcast::Broadcasts;
use crate::device_logs::{DeviceLogs, LogAsk, LogLine, LogQuery};
use crate::device_requests::{Asked, Exchange};
use crate::fleet::Fleet;
use crate::fleet::devices::DeviceNews;
use crate::jobs::{Jobs, UploadAck, UploadChunk};
use crate::profiles::{DeviceProfiles, ProfileAsk, ProfileQuery};
use crate::trust::enrollment::Enrollments;

/// Blob requests waiting to be served; beyond this they are dropped (devices re-request).
const BLOB_QUEUE: usize = 16 * 1024;
/// Chunks read from disk concurrently; replies still go out in request order.
const BLOB_READS_IN_FLIGHT: usize = 8;
/// Upload chunks waiting to be written (at most 256 KiB each: 64 MiB); beyond this they are
/// dropped (devices send them again).
const UPLOAD_QUEUE: usize = 256;
/// Client request queue: publishes and subscribes waiting for the poll loop.
const CLIENT_QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub max_packet_bytes: usize,
    /// TLS to an external `mqtts://` broker, with the hub's client certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

mod desired;

pub use desired::{LinkTrust, signed_state};
use desired::{publish_desired, refresh_signatures};

/// The requests the hub puts to devices: where answers go, and the outboxes of requests.
#[derive(Debug)]
pub struct Requests {
    pub logs: Arc<DeviceLogs>,
    pub log_asks: mpsc::UnboundedReceiver<LogAsk>,
    pub profiles: Arc<DeviceProfiles>,
    pub profile_asks: mpsc::UnboundedReceiver<ProfileAsk>,
}

/// Handles of the link's tasks; aborted on drop.
#[derive(Debug)]
pub struct Link {
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Stops the link's tasks and waits until they are gone (they hold the fleet, and with
    /// it the sled database, which a restarted hub must be able to open again).
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
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

/// Births and reports received since the news worker last ran, newest per device.
#[derive(Debug, Default)]
struct Pending {
    births: HashMap<String, Birth>,
    reports: HashMap<String, ReportedState>,
    /// Devices whose birth came live (they just connected), not retained from before.
    connected: HashSet<String>,
}

/// Where the poll loop puts what it receives; nothing here waits.
#[derive(Debug)]
struct Inbound {
    pending: Mutex<Pending>,
    news: Notify,
    /// Joins are taken here, never queued behind chunk requests: a join that waits lets its
    /// device give up on the broadcast and ask for every chunk itself, which at fleet size
    /// is the load broadcasts exist to avoid.
    broadcasts: Arc<Broadcasts>,
    blob_requests: mpsc::Sender<(String, ChunkRequest)>,
    dropped_requests: AtomicU64,
    uploads: mpsc::Sender<(String, UploadChunk)>,
    dropped_uploads: AtomicU64,
    logs: Arc<DeviceLogs>,
    profiles: Arc<DeviceProfiles>,
    /// Revoked devices are not heard.
    enrollments: Arc<Enrollments>,
}

impl Inbound {
    /// Takes one message; `retained`: the broker kept it from before this link subscribed.
    fn deliver(&self, topic: &str, payload: &[u8], retained: bool) {
        let Some((device_id, kind)) = topics::parse(topic) else {
            tracing::debug!(%topic, "message on an unknown topic ignored");
            return;
        };
        if self.enrollments.is_revoked(device_id) {
            tracing::debug!(device = %device_id, topic = kind.suffix(), "message from a revoked device ignored");
            return;
        }
        match kind {
            DeviceTopic::Birth => {
                let Some(birth) = decode::<pb::Birth>(device_id, kind, payload) else {
                    return;
                };
                if birth.device_id != device_id {
                    tracing::warn!(device = %device_id, claimed = %birth.device_id, "birth names another device; ignored");
                    return;
                }
                match Birth::try_from(birth) {
                    Ok(birth) => {
                        let mut pending = self.lock();
                        pending.births.insert(device_id.to_owned(), birth);
                        if !retained {
                            pending.connected.insert(device_id.to_owned());
                        }
                        drop(pending);
                        self.news.notify_one();
                    }
                    Err(err) => {
                        tracing::warn!(device = %device_id, error = %err, "invalid birth ignored")
                    }
                }
            }
            DeviceTopic::Reported => {
                let Some(report) = decode::<pb::ReportedState>(device_id, kind, payload) else {
                    return;
                };
                if report.device_id != device_id {
                    tracing::warn!(device = %device_id, claimed = %report.device_id, "report names another device; ignored");
                    return;
                }
                match ReportedState::try_from(report) {
                    Ok(report) => {
                        self.lock().reports.insert(device_id.to_owned(), report);
                        self.news.notify_one();
                    }
                    Err(err) => {
                        tracing::warn!(device = %device_id, error = %err, "invalid report ignored")
                    }
                }
            }
            DeviceTopic::BlobRequest => {
                let Some(request) = decode::<pb::BlobRequest>(device_id, kind, payload) else {
                    return;
                };
                let request = ChunkRequest {
                    sha256: request.sha256,
                    offset: request.offset,
                    length: request.length,
                    broadcast: request.broadcast,
                };
                if request.broadcast && self.broadcasts.join(device_id, &request) {
                    return;
                }
                if self
                    .blob_requests
                    .try_send((device_id.to_owned(), request))
                    .is_err()
                {
                    let dropped = self.dropped_requests.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "blob request queue full; requests dropped (devices ask again)"
                        );
                    }
                }
            }
            DeviceTopic::LogResponse => {
                let Some(response) = decode::<pb::LogResponse>(device_id, kind, payload) else {
                    return;
                };
                let answer = match response.error.is_empty() {
                    true => Ok(response
                        .lines
                        .into_iter()
                        .map(|l| LogLine {
                            at_ms: l.at_ms,
                            source: l.source,
                            text: l.text,
                        })
                        .collect()),
                    false => Err(response.error),
                };
                self.logs.answer(device_id, &response.request_id, answer);
            }
            DeviceTopic::ProfileResponse => {
                let Some(response) = decode::<pb::ProfileResponse>(device_id, kind, payload) else {
                    return;
                };
                let request_id = response.request_id.clone();
                // Broken figures end the caller's wait at once, with why.
                let answer = edgeship_domain::wire::profile_answer(response)
                    .unwrap_or_else(|err| Err(err.to_string()));
                self.profiles.answer(device_id, &request_id, answer);
            }
            DeviceTopic::UploadRequest => {
                let Some(chunk) = decode::<pb::UploadChunk>(device_id, kind, payload) else {
                    return;
                };
                let chunk = UploadChunk {
                    job_id: chunk.job_id,
                    sha256: chunk.sha256,
                    size_bytes: chunk.size_bytes,
                    offset: chunk.offset,
                    data: chunk.data,
                };
                if self
                    .uploads
                    .try_send((device_id.to_owned(), chunk))
                    .is_err()
                {
                    let dropped = self.dropped_uploads.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "upload queue full; chunks dropped (devices send them again)"
                        );
                    }
                }
            }
            DeviceTopic::Desired
            | DeviceTopic::BlobResponse
            | DeviceTopic::LogRequest
            | DeviceTopic::ProfileRequest
            | DeviceTopic::UploadResponse => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn start(
    config: LinkConfig,
    fleet: Arc<Fleet>,
    blobs: Arc<BlobServer>,
    jobs: Arc<Jobs>,
    outbox: mpsc::UnboundedReceiver<DesiredState>,
    trust: LinkTrust,
    requests: Requests,
) -> Link {
    let LinkTrust {
        director,
        enrollments,
    } = trust;
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        // A persistent session: reports sent while the hub was away are queued by the broker.
        .set_clean_session(false)
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
    if let Some(tls) = config.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
    let (blob_tx, blob_rx) = mpsc::channel(BLOB_QUEUE);
    let (upload_tx, upload_rx) = mpsc::channel(UPLOAD_QUEUE);
    let inbound = Arc::new(Inbound {
        pending: Mutex::new(Pending::default()),
        news: Notify::new(),
        broadcasts: Broadcasts::new(Arc::clone(&blobs), client.clone()),
        blob_requests: blob_tx,
        dropped_requests: AtomicU64::new(0),
        uploads: upload_tx,
        dropped_uploads: AtomicU64::new(0),
        logs: requests.logs,
        profiles: requests.profiles,
        enrollments: Arc::clone(&enrollments),
    });
    let broker = format!("{}:{}", config.host, config.port);
    Link {
        tasks: vec![
            tokio::spawn(poll(
                eventloop,
                client.clone(),
                broker,
                Arc::clone(&fleet),
                Arc::clone(&inbound),
            )),
            tokio::spawn(apply_news(Arc::clone(&fleet), inbound)),
            tokio::spawn(serve_blobs(client.clone(), blobs, blob_rx)),
            tokio::spawn(receive_uploads(client.clone(), jobs, upload_rx)),
            tokio::spawn(refresh_signatures(Arc::clone(&fleet), director.validity())),
            tokio::spawn(publish_desired(
                client.clone(),
                director,
                Arc::clone(&enrollments),
                outbox,
            )),
            tokio::spawn(publish_requests(
                client.clone(),
                requests.log_asks,
                DeviceTopic::LogRequest,
                log_request,
            )),
            tokio::spawn(publish_requests(
                client,
                requests.profile_asks,
                DeviceTopic::ProfileRequest,
                profile_request,
            )),
        ],
    }
}

async fn poll(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    broker: String,
    fleet: Arc<Fleet>,
    inbound: Arc<Inbound>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(%broker, session_present = ack.session_present, "hub connected to the broker");
                tokio::spawn(subscribe_and_republish(client.clone(), Arc::clone(&fleet)));
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                inbound.deliver(&publish.topic, &publish.payload, publish.retain);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Subscribes, then republishes every desired state. The broker handles one client's packets
/// in order, so each device's copy arrives after the subscriptions exist; an agent that
/// already runs that generation answers with a report, which the hub is then sure to hear
/// (this is what makes devices reconverge quickly after a hub restart).
async fn subscribe_and_republish(client: AsyncClient, fleet: Arc<Fleet>) {
    // What devices publish is what the hub hears (the same list the broker ACLs allow).
    for kind in crate::broker::DEVICE_WRITES {
        if let Err(err) = client
            .subscribe(topics::all_devices(kind), QoS::AtLeastOnce)
            .await
        {
            tracing::warn!(error = %err, "subscribe failed");
            return;
        }
    }
    let republished = tokio::task::spawn_blocking(move || fleet.republish_all()).await;
    match republished {
        Ok(Ok(count)) => tracing::debug!(count, "desired states republished"),
        Ok(Err(err)) => tracing::error!(error = %err, "republishing desired states failed"),
        Err(err) => tracing::error!(error = %err, "republishing desired states panicked"),
    }
}

/// Applies births and reports in batches: whatever arrived while the previous batch ran.
async fn apply_news(fleet: Arc<Fleet>, inbound: Arc<Inbound>) {
    loop {
        inbound.news.notified().await;
        let pending = std::mem::take(&mut *inbound.lock());
        if pending.births.is_empty() && pending.reports.is_empty() {
            continue;
        }
        let news = DeviceNews {
            births: pending.births.into_values().collect(),
            reports: pending.reports.into_values().collect(),
        };
        let connected = pending.connected;
        let fleet = Arc::clone(&fleet);
        // A device that just connected gets its desired state again, newest first recorded:
        // one it took but lost before saving it (a kill, a damaged file) is not sent again
        // by a broker that restores its session, and nothing else would send it until the
        // next change.
        let applied = tokio::task::spawn_blocking(move || {
            fleet.on_device_news(news)?;
            fleet.republish(&connected)
        });
        match applied.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "recording device births and reports failed")
            }
            Err(err) => {
                tracing::error!(error = %err, "recording device births and reports panicked")
            }
        }
    }
}

/// Publishes requests of one kind to their devices (not retained: an offline device misses
/// them, and its caller times out).
async fn publish_requests<Q, M>(
    client: AsyncClient,
    mut asks: mpsc::UnboundedReceiver<Asked<Q>>,
    kind: DeviceTopic,
    message: fn(String, Q) -> M,
) where
    Q: Exchange,
    M: Message,
{
    while let Some(asked) = asks.recv().await {
        let topic = topics::device(&asked.device_id, kind);
        let payload = message(asked.request_id, asked.query).encode_to_vec();
        if let Err(err) = client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(error = %err, topic = kind.suffix(), "publishing a request failed");
        }
    }
}

fn log_request(request_id: String, query: LogQuery) -> pb::LogRequest {
    pb::LogRequest {
        request_id,
        deployment: query.deployment,
        tail: query.tail,
        since_ms: query.since_ms,
    }
}

fn profile_request(request_id: String, query: ProfileQuery) -> pb::ProfileRequest {
    pb::ProfileRequest {
        request_id,
        deployment: query.deployment,
        path: query.path,
        content_type: query.content_type,
        body: query.body,
        concurrency: query.concurrency,
        seconds_per_level: query.seconds_per_level,
    }
}

async fn serve_blobs(
    client: AsyncClient,
    blobs: Arc<BlobServer>,
    requests: mpsc::Receiver<(String, ChunkRequest)>,
) {
    let replies = tokio_stream::wrappers::ReceiverStream::new(requests)
        .map(|(device_id, request)| {
            let blobs = Arc::clone(&blobs);
            async move {
                let reply = blobs.chunk(&device_id, &request).await;
                (device_id, reply)
            }
        })
        .buffered(BLOB_READS_IN_FLIGHT);
    tokio::pin!(replies);
    while let Some((device_id, reply)) = replies.next().await {
        if !reply.error.is_empty() {
            tracing::warn!(device = %device_id, sha256 = %reply.sha256, error = %reply.error, "blob request refused");
        }
        let topic = topics::device(&device_id, DeviceTopic::BlobResponse);
        if let Err(err) = client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                chunk_message(reply).encode_to_vec(),
            )
            .await
        {
            tracing::warn!(error = %err, "publishing a blob chunk failed");
        }
    }
}

/// Writes upload chunks one at a time, in arrival order, and answers each on the device's
/// `uploads/resp`.
async fn receive_uploads(
    client: AsyncClient,
    jobs: Arc<Jobs>,
    mut chunks: mpsc::Receiver<(String, UploadChunk)>,
) {
    while let Some((device_id, chunk)) = chunks.recv().await {
        let worker = Arc::clone(&jobs);
        let device = device_id.clone();
        let ack = match tokio::task::spawn_blocking(move || worker.receive_chunk(&device, &chunk))
            .await
        {
            Ok(ack) => ack,
            Err(err) => {
                tracing::error!(device = %device_id, error = %err, "receiving an upload chunk panicked");
                continue;
            }
        };
        let topic = topics::device(&device_id, DeviceTopic::UploadResponse);
        if let Err(err) = client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                ack_message(ack).encode_to_vec(),
            )
            .await
        {
            tracing::warn!(error = %err, "publishing an upload acknowledgement failed");
        }
    }
}

fn ack_message(ack: UploadAck) -> pb::UploadAck {
    pb::UploadAck {
        job_id: ack.job_id,
        sha256: ack.sha256,
        received_bytes: ack.received_bytes,
        error: ack.error,
        retry: ack.retry,
    }
}

fn chunk_message(reply: ChunkReply) -> pb::BlobChunk {
    let served = reply.error.is_empty();
    pb::BlobChunk {
        sha256: reply.sha256,
        offset: reply.offset,
        data: reply.data,
        total_size: reply.total_size,
        error: reply.error,
        chunk_sha256: reply.chunk_sha256,
        chunk_crc32: served.then_some(reply.chunk_crc32),
    }
}

fn decode<T: Message + Default>(device_id: &str, kind: DeviceTopic, payload: &[u8]) -> Option<T> {
    match T::decode(payload) {
        Ok(message) => Some(message),
        Err(err) => {
            tracing::warn!(device = %device_id, topic = kind.suffix(), error = %err, bytes = payload.len(), "malformed payload ignored");
            None
        }
    }
}
