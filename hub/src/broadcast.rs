//! One-to-many blob delivery. When many devices fetch the same blob at once (a rollout
//! moving hundreds of them), the hub sends each chunk once, on the blob's shared topic
//! `edgeship/v1/blobs/<sha256>`, and the broker fans it out: far faster than answering every
//! device on its own topic. Per-device requests stay for stragglers and resumes.
//!
//! Design: a device subscribes to the shared topic, then *joins* (a `BlobRequest` with
//! `broadcast` set, for offset 0). The first join of a blob opens a session: it gathers joins
//! for `GATHER`, or until every device that just gained the blob has joined, then sends one
//! round, every chunk in order. Devices that join during a round wait for the next one,
//! gathered the same way (only they still listen: a device unsubscribes once its file is
//! complete). A device that sees nothing on the topic falls back to asking for chunks itself,
//! so a lost round costs time, never correctness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeship_proto::topics;
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, QoS};

use crate::blob_server::{BlobServer, ChunkRequest, MAX_CHUNK_BYTES};

/// The longest a session gathers joins before a round: a rollout's devices receive their
/// desired states within about this long of each other. A round starts sooner once every
/// device that gained the blob with its desired state has joined: a single device fetching a
/// small file (the model beside its weights) waited the whole of it, 0.3 s of a 0.5 s
/// deployment.
const GATHER: Duration = Duration::from_millis(300);
/// Blobs larger than this are served per device: a round must fit the broker's per-topic
/// log (64 MiB on the embedded broker) for a slow subscriber to read it whole.
pub const MAX_BROADCAST_BYTES: u64 = 48 * 1024 * 1024;

#[derive(Debug)]
struct Session {
    /// Devices that joined since the current round started (they need the next one).
    waiting: usize,
    /// Devices that gained the blob with their desired state and have not joined yet: once
    /// none is left, nobody else is coming.
    awaited: usize,
    /// Rounds sent so far, for the log.
    rounds: u32,
}

/// Blob broadcasts in progress, by digest.
#[derive(Debug)]
pub struct Broadcasts {
    sessions: Mutex<HashMap<String, Session>>,
    /// Wakes gathering sessions when one has all its devices (each checks its own).
    all_joined: tokio::sync::Notify,
    blobs: Arc<BlobServer>,
    client: AsyncClient,
}

impl Broadcasts {
    pub fn new(blobs: Arc<BlobServer>, client: AsyncClient) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::new(HashMap::new()),
            all_joined: tokio::sync::Notify::new(),
            blobs,
            client,
        })
    }

    /// A device joins the broadcast of `request.sha256`; `false` when the blob is not sent by
    /// broadcast (too large, or not the device's), and the request is to be answered on the
    /// device's own topic instead.
    pub fn join(self: &Arc<Self>, device_id: &str, request: &ChunkRequest) -> bool {
        if request.offset != 0 || !self.blobs.entitled(device_id, &request.sha256) {
            return false;
        }
        // Entitlements are locked inside the sessions' lock (below) or alone, never around it.
        let was_awaited = self.blobs.joined(device_id, &request.sha256);
        let mut sessions = self.lock();
        match sessions.get_mut(&request.sha256) {
            Some(session) => {
                session.waiting += 1;
                if was_awaited {
                    session.awaited = session.awaited.saturating_sub(1);
                    if session.awaited == 0 {
                        self.all_joined.notify_waiters();
                    }
                }
            }
            None => {
                // Checked once per session, not per join (joins arrive on the poll loop).
                match self.blobs.size(&request.sha256) {
                    Some(size) if size <= MAX_BROADCAST_BYTES => {}
                    _ => return false,
                }
                sessions.insert(
                    request.sha256.clone(),
                    Session {
                        waiting: 1,
                        awaited: self.blobs.awaited(&request.sha256),
                        rounds: 0,
                    },
                );
                let this = Arc::clone(self);
                let digest = request.sha256.clone();
                tokio::spawn(async move { this.run(digest).await });
            }
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends rounds while devices wait for one, then closes the session.
    async fn run(self: Arc<Self>, digest: String) {
        loop {
            self.gather(&digest).await;
            let devices = {
                let mut sessions = self.lock();
                let Some(session) = sessions.get_mut(&digest) else {
                    return;
                };
                if session.waiting == 0 {
                    tracing::debug!(sha256 = %digest, rounds = session.rounds, "broadcast finished");
                    sessions.remove(&digest);
                    return;
                }
                session.rounds += 1;
                std::mem::take(&mut session.waiting)
            };
            let started = Instant::now();
            match self.round(&digest).await {
                Ok(bytes) => {
                    tracing::info!(sha256 = %digest, devices, bytes, seconds = started.elapsed().as_secs_f64(), "blob broadcast")
                }
                Err(err) => {
                    // The devices fall back to asking for chunks themselves.
                    tracing::warn!(sha256 = %digest, error = %err, "blob broadcast failed");
                    self.lock().remove(&digest);
                    return;
                }
            }
        }
    }

    /// Waits until every awaited device has joined, or `GATHER` has passed.
    async fn gather(&self, digest: &str) {
        let deadline = tokio::time::Instant::now() + GATHER;
        loop {
            // Registered before the check, so a join between the two still wakes it.
            let notified = self.all_joined.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.lock().get(digest) {
                Some(session) if session.awaited > 0 => {}
                _ => return,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Publishes every chunk of the blob once, in order; returns the bytes sent.
    async fn round(&self, digest: &str) -> Result<u64, String> {
        let topic = topics::blob_broadcast(digest);
        let mut offset = 0;
        loop {
            let reply = self
                .blobs
                .read(&ChunkRequest {
                    sha256: digest.to_owned(),
                    offset,
                    length: MAX_CHUNK_BYTES,
                    broadcast: true,
                })
                .await;
            if !reply.error.is_empty() {
                return Err(reply.error);
            }
            let total = reply.total_size;
            let length = reply.data.len() as u64;
            let chunk = pb::BlobChunk {
                sha256: reply.sha256,
                offset: reply.offset,
                data: reply.data,
                total_size: reply.total_size,
                error: String::new(),
                chunk_sha256: reply.chunk_sha256,
                chunk_crc32: Some(reply.chunk_crc32),
            };
            self.client
                .publish(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    chunk.encode_to_vec(),
                )
                .await
                .map_err(|e| format!("publishing a chunk failed: {e}"))?;
            offset += length;
            if offset >= total || length == 0 {
                return Ok(offset);
            }
        }
    }
}
