//! The chunked, resumable download of one blob from the hub through the broker, into the
//! verified cache. Chunks are requested in a window, each checked against its own digest, and
//! the whole file against its sha256 before it enters the cache (see `cache`).
//!
//! Design: a newer desired state supersedes a download at once (its partial file stays for a
//! later resume); a download that cannot make progress fails as `Transient`, so the driver
//! retries it with backoff; a file that fails its whole-file check three times fails as
//! `Corrupt`, which retrying will not fix.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::acks::AckToken;
use crate::cache::{BlobCache, CHUNK_SIZE, CacheError, ChunkCheck, PartialBlob};
use crate::link::LinkSender;

/// Chunk requests kept in flight per blob (8 MiB): enough to cover broker round trips on
/// loopback and LANs without flooding a slow link.
pub const FETCH_WINDOW: u64 = 32;
/// Re-request the missing range after this long without progress.
const FETCH_STALL: Duration = Duration::from_secs(3);
/// A resumed download takes chunks still queued from before the restart until none has come
/// for this long.
const RESUME_GRACE: Duration = Duration::from_millis(300);
/// A download from the start first listens for a broadcast this long before asking for
/// chunks itself (also when a broadcast stops before the file is complete).
const BROADCAST_WAIT: Duration = Duration::from_secs(2);
/// Give up (for now: the driver retries) after this long without any progress.
const FETCH_GIVE_UP: Duration = Duration::from_secs(60);
/// Whole-file verification failures before the download counts as corrupt for good.
const MAX_ATTEMPTS: u32 = 3;

/// One chunk as the hub sent it.
#[derive(Debug)]
pub struct Chunk {
    pub sha256: String,
    pub offset: u64,
    pub data: Bytes,
    /// Set when the hub refused the request.
    pub error: String,
    pub chunk_sha256: String,
    /// The cheaper check, from hubs that send it.
    pub chunk_crc32: Option<u32>,
    /// It came on the blob's broadcast topic, not the device's own.
    pub broadcast: bool,
    /// Acknowledges the chunk to the broker when dropped: once the download has written it
    /// or let it go. Until then a killed agent gets it again from its persistent session.
    pub ack: Option<AckToken>,
}

impl Chunk {
    /// How to check the chunk's bytes: its CRC-32 when the hub sent one, else its sha256.
    pub fn check(&self) -> ChunkCheck<'_> {
        match self.chunk_crc32 {
            Some(crc) => ChunkCheck::Crc32(crc),
            None => ChunkCheck::Sha256(&self.chunk_sha256),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("superseded by a newer desired state")]
    Superseded,
    /// Retrying may help: no progress, the broker gone, the hub refusing (restarting).
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: the bytes do not match the digest after several downloads.
    #[error("{0}")]
    Failed(String),
}

/// Downloads blobs; one per agent, used by one download at a time.
#[derive(Debug)]
pub struct Fetcher {
    pub cache: BlobCache,
    pub sender: LinkSender,
    /// Connection count from the link (0 until the first connect).
    pub connected: watch::Receiver<u64>,
    /// The newest desired generation received; a download for an older one is superseded.
    pub newest: watch::Receiver<u64>,
}

impl Fetcher {
    /// Fetches a blob into the cache for desired generation `generation`, resuming a partial
    /// download, verifying every chunk and then the whole file.
    pub async fn fetch(
        &self,
        digest: &str,
        size: u64,
        generation: u64,
        chunks: &mut mpsc::Receiver<Chunk>,
    ) -> Result<(), FetchError> {
        let mut attempts = 0;
        loop {
            if self.cache.contains(digest) {
                return Ok(());
            }
            attempts += 1;
            let mut partial = self.cache.begin(digest, size).map_err(disk)?;
            if partial.resumed_from() > 0 {
                tracing::info!(%digest, offset = partial.resumed_from(), size, "resuming download");
            }
            self.download(&mut partial, generation, chunks).await?;
            match partial.finish() {
                Ok(_) => return Ok(()),
                Err(CacheError::CorruptFile { .. }) if attempts < MAX_ATTEMPTS => {
                    tracing::warn!(%digest, "downloaded file failed verification; fetching again");
                }
                Err(err @ CacheError::CorruptFile { .. }) => {
                    return Err(FetchError::Failed(err.to_string()));
                }
                Err(err) => return Err(disk(err)),
            }
        }
    }

    fn superseded(&self, generation: u64) -> bool {
        *self.newest.borrow() > generation
    }

    async fn download(
        &self,
        partial: &mut PartialBlob,
        generation: u64,
        chunks: &mut mpsc::Receiver<Chunk>,
    ) -> Result<(), FetchError> {
        let size = partial.size();
        let digest = partial.digest().to_owned();
        // Chunks a previous run asked for may still be on their way: the broker keeps them
        // for our persistent session (with those a killed run received but never wrote: see
        // `acks`) and delivers them, in order, right after we connect. On a resume, wait for
        // the connection and take chunks until they stop coming before asking again, so an
        // interrupted download costs (almost) no bytes twice.
        if partial.offset() > 0 {
            let mut connected = self.connected.clone();
            let _ = tokio::time::timeout(FETCH_STALL, connected.wait_for(|n| *n > 0)).await;
            // Bounded: a flood of chunks that do not fit cannot hold the download here.
            let listen_until = Instant::now() + FETCH_STALL;
            let (mut queued, mut taken) = (0u32, 0u32);
            while Instant::now() < listen_until
                && let Ok(Some(chunk)) = tokio::time::timeout(RESUME_GRACE, chunks.recv()).await
            {
                queued += 1;
                if chunk.sha256 == digest
                    && chunk.error.is_empty()
                    && partial
                        .append_checked(chunk.offset, &chunk.data, chunk.check())
                        .unwrap_or(false)
                {
                    taken += 1;
                }
            }
            tracing::info!(%digest, queued, taken, offset = partial.offset(), "chunks queued from before the restart taken; asking for the rest");
        }
        // A download from the start joins the blob's broadcast: it asks for the first chunk
        // saying it listens, then takes what the broadcast brings, and asks for chunks
        // itself only once the hub answers on the device's own topic or the broadcast goes
        // quiet. A resumed download starts with one request and widens once data flows, so
        // chunks still queued for us from before a restart are not all requested twice.
        let joined = partial.offset() == 0;
        let (window, next_request) = if joined {
            self.sender
                .join_broadcast(&digest, CHUNK_SIZE.min(size))
                .await;
            (FETCH_WINDOW, CHUNK_SIZE.min(size))
        } else {
            (1, partial.offset())
        };
        let result = self
            .transfer(partial, generation, chunks, joined, window, next_request)
            .await;
        if joined {
            self.sender.leave_broadcast(&digest).await;
        }
        result
    }

    /// Requests and takes chunks until the file is complete (see `download`).
    async fn transfer(
        &self,
        partial: &mut PartialBlob,
        generation: u64,
        chunks: &mut mpsc::Receiver<Chunk>,
        mut listening: bool,
        mut window: u64,
        mut next_request: u64,
    ) -> Result<(), FetchError> {
        let size = partial.size();
        let digest = partial.digest().to_owned();
        let mut last_progress = Instant::now();
        let mut reset_at: Option<u64> = None;
        // Wakes the loop when a newer desired state arrives (a clone starts with the
        // original's "seen" mark, which is never advanced: mark it first).
        let mut newest = self.newest.clone();
        newest.borrow_and_update();
        while !partial.is_complete() {
            // While listening to a broadcast, ask for nothing: the hub sends it all.
            while !listening
                && next_request < size
                && next_request < partial.offset() + window * CHUNK_SIZE
            {
                // With the broker gone the client's queue fills and stops taking requests; a
                // request that cannot be queued counts as a stall, so the give-up timer runs.
                let request = self.sender.request_blob(
                    &digest,
                    next_request,
                    CHUNK_SIZE.min(size - next_request),
                );
                if tokio::time::timeout(FETCH_STALL, request).await.is_err() {
                    break;
                }
                next_request += CHUNK_SIZE;
            }
            if self.superseded(generation) {
                return Err(FetchError::Superseded);
            }
            // A late joiner sees the rest of a round go by and waits for the next one; a
            // broadcast that brings nothing usable for long is given up on.
            if listening && last_progress.elapsed() > BROADCAST_WAIT * 4 {
                listening = false;
                next_request = partial.offset();
                continue;
            }
            let wait = if listening {
                BROADCAST_WAIT
            } else {
                FETCH_STALL
            };
            let next = tokio::select! {
                next = tokio::time::timeout(wait, chunks.recv()) => next,
                // Wake up for a newer desired state even while no chunk arrives.
                _ = newest.changed() => continue,
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Err(FetchError::Transient("the broker link closed".into())),
                Err(_) if listening => {
                    tracing::debug!(%digest, offset = partial.offset(), "no broadcast; fetching chunk by chunk");
                    listening = false;
                    next_request = partial.offset();
                    continue;
                }
                Err(_) => {
                    if last_progress.elapsed() > FETCH_GIVE_UP {
                        return Err(FetchError::Transient(format!(
                            "no progress for {} s",
                            FETCH_GIVE_UP.as_secs()
                        )));
                    }
                    tracing::debug!(%digest, offset = partial.offset(), "fetch stalled; requesting again");
                    next_request = partial.offset();
                    continue;
                }
            };
            if chunk.sha256 != digest {
                continue;
            }
            if listening && !chunk.broadcast {
                // The hub answered on our own topic: it does not broadcast this blob.
                listening = false;
            }
            if !chunk.error.is_empty() {
                // The hub refuses a blob outside the device's desired state; right after a
                // hub restart or a newer desired state that is a race, not a verdict.
                return Err(FetchError::Transient(format!(
                    "the hub refused the download: {}",
                    chunk.error
                )));
            }
            match partial.append_checked(chunk.offset, &chunk.data, chunk.check()) {
                Ok(true) => {
                    last_progress = Instant::now();
                    window = FETCH_WINDOW;
                    // Requests already answered by queued chunks need not be sent again.
                    next_request = next_request.max(partial.offset());
                }
                Ok(false) => {}
                Err(CacheError::CorruptChunk { offset, .. }) => {
                    tracing::warn!(%digest, offset, "corrupted chunk rejected; requesting it again");
                    // Re-request the window once per stuck offset: resetting on every damaged
                    // chunk would multiply requests on a bad link (each reset re-sends the
                    // window while the previous one is still in flight). Further damage at
                    // the same offset waits for the stall timeout instead.
                    if reset_at != Some(partial.offset()) {
                        reset_at = Some(partial.offset());
                        next_request = partial.offset();
                    }
                }
                Err(err) => return Err(disk(err)),
            }
        }
        Ok(())
    }
}

/// The cache could not take the bytes (a full disk, an I/O error): a condition that can end,
/// so the download is retried with backoff, the workload `Transitioning` with the reason,
/// and the partial file kept to resume from.
fn disk(err: CacheError) -> FetchError {
    FetchError::Transient(err.to_string())
}
