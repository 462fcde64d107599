//! Serves model bytes to devices, one chunk per request, from the registry's blob store. A
//! device may read only the blobs its own desired state names: the broker's topic tree
//! confines it to its id, the entitlements here confine it to its models.
//!
//! Design: entitlements are kept in memory (every chunk request is checked) and replaced by
//! the fleet whenever it writes a desired state; the fleet fills them at start-up. The last
//! chunks served are kept, read and hashed, since a rollout asks for the same few again and
//! again (a profile of a 10,000-device rollout spent a fifth of the hub's CPU reading,
//! allocating and hashing the same four chunks).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::Digest;

use crate::registry::Registry;

/// Largest chunk the hub sends, whatever a device asks for: the agents' request size, so a
/// chunk plus its envelope fits the 320 KiB minimum packet size both sides enforce.
pub const MAX_CHUNK_BYTES: u64 = 256 * 1024;

/// Per device, the blob digests its desired state names, and which of them it gained with
/// its latest desired state and has not yet joined a broadcast for (it will fetch those).
#[derive(Debug, Default)]
pub struct Entitlements {
    by_device: Mutex<HashMap<String, Entitled>>,
}

#[derive(Debug, Default)]
struct Entitled {
    digests: Arc<HashSet<String>>,
    awaited: HashSet<String>,
}

impl Entitlements {
    pub fn set(&self, device_id: &str, digests: HashSet<String>) {
        let mut by_device = self.lock();
        let entry = by_device.entry(device_id.to_owned()).or_default();
        entry.awaited = digests.difference(&entry.digests).cloned().collect();
        entry.digests = Arc::new(digests);
    }

    pub fn allows(&self, device_id: &str, digest: &str) -> bool {
        let digests = self
            .lock()
            .get(device_id)
            .map(|entry| Arc::clone(&entry.digests));
        digests.is_some_and(|d| d.contains(digest))
    }

    /// Marks that `device_id` joined the broadcast of `digest`; true when it had just gained
    /// the blob (it was awaited).
    pub fn joined(&self, device_id: &str, digest: &str) -> bool {
        self.lock()
            .get_mut(device_id)
            .is_some_and(|entry| entry.awaited.remove(digest))
    }

    /// How many devices gained `digest` with their latest desired state and have not joined
    /// its broadcast yet: who a broadcast starting now would leave out. Devices that held the
    /// blob before are not counted (they have it); nor are those that fetch it again after a
    /// loss, so a lone refetch does not wait for a crowd.
    pub fn awaited(&self, digest: &str) -> usize {
        self.lock()
            .values()
            .filter(|entry| entry.awaited.contains(digest))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entitled>> {
        self.by_device.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One chunk request from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    pub sha256: String,
    pub offset: u64,
    pub length: u64,
    /// The device listens on the blob's broadcast topic (see `broadcast`).
    pub broadcast: bool,
}

/// The answer: bytes with their digest, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReply {
    pub sha256: String,
    pub offset: u64,
    pub data: Bytes,
    pub total_size: u64,
    pub chunk_sha256: String,
    pub chunk_crc32: u32,
    /// Empty on success.
    pub error: String,
}

#[derive(Debug)]
pub struct BlobServer {
    entitlements: Arc<Entitlements>,
    registry: Arc<Registry>,
    /// The chunks served last: in a rollout thousands of devices ask for the same few.
    hot: HotChunks,
}

/// One chunk as read and hashed.
#[derive(Debug, Clone)]
struct HotChunk {
    data: Bytes,
    sha256: String,
    crc32: u32,
    total: u64,
}

type ChunkKey = (String, u64, u64);

/// The last `HOT_CHUNKS` chunks served, by digest, offset and length. Blobs never change
/// (they are content-addressed), so a cached chunk is never stale; a deleted blob's chunks
/// age out, and requests for it are refused by entitlements first.
#[derive(Debug, Default)]
struct HotChunks {
    inner: Mutex<(HashMap<ChunkKey, HotChunk>, VecDeque<ChunkKey>)>,
}

/// 64 chunks of 256 KiB: 16 MiB, a whole 1 MB model sixteen times over, or the front of a
/// large one.
const HOT_CHUNKS: usize = 64;

impl HotChunks {
    fn get(&self, key: &ChunkKey) -> Option<HotChunk> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.get(key).cloned()
    }

    fn put(&self, key: ChunkKey, chunk: HotChunk) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *inner;
        if map.insert(key.clone(), chunk).is_none() {
            order.push_back(key);
        }
        while order.len() > HOT_CHUNKS {
            if let Some(oldest) = order.pop_front() {
                map.remove(&oldest);
            }
        }
    }
}

impl BlobServer {
    pub fn new(entitlements: Arc<Entitlements>, registry: Arc<Registry>) -> Self {
        Self {
            entitlements,
            registry,
            hot: HotChunks::default(),
        }
    }

    /// Whether `device_id`'s desired state names the blob.
    pub fn entitled(&self, device_id: &str, digest: &str) -> bool {
        self.entitlements.allows(device_id, digest)
    }

    /// See `Entitlements::joined`.
    pub fn joined(&self, device_id: &str, digest: &str) -> bool {
        self.entitlements.joined(device_id, digest)
    }

    /// See `Entitlements::awaited`.
    pub fn awaited(&self, digest: &str) -> usize {
        self.entitlements.awaited(digest)
    }

    /// The blob's size, if the store has it.
    pub fn size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.registry.blob_path(digest))
            .ok()
            .map(|m| m.len())
    }

    /// Serves one chunk to `device_id`.
    pub async fn chunk(&self, device_id: &str, request: &ChunkRequest) -> ChunkReply {
        if !self.entitled(device_id, &request.sha256) {
            return ChunkReply {
                sha256: request.sha256.clone(),
                offset: request.offset,
                data: Bytes::new(),
                total_size: 0,
                chunk_sha256: String::new(),
                chunk_crc32: 0,
                error: format!(
                    "blob {} is not part of device {device_id}'s desired state",
                    request.sha256
                ),
            };
        }
        self.read(request).await
    }

    /// Reads one chunk, whoever it is for (the caller checked entitlements).
    pub async fn read(&self, request: &ChunkRequest) -> ChunkReply {
        let mut reply = ChunkReply {
            sha256: request.sha256.clone(),
            offset: request.offset,
            data: Bytes::new(),
            total_size: 0,
            chunk_sha256: String::new(),
            chunk_crc32: 0,
            error: String::new(),
        };
        let key = (request.sha256.clone(), request.offset, request.length);
        if let Some(hot) = self.hot.get(&key) {
            reply.data = hot.data;
            reply.chunk_sha256 = hot.sha256;
            reply.chunk_crc32 = hot.crc32;
            reply.total_size = hot.total;
            return reply;
        }
        let path = self.registry.blob_path(&request.sha256);
        match read_range(&path, request.offset, request.length).await {
            Ok((data, total)) => {
                let data = Bytes::from(data);
                reply.chunk_sha256 = hex::encode(sha2::Sha256::digest(&data));
                reply.chunk_crc32 = crc32fast::hash(&data);
                reply.total_size = total;
                reply.data = data.clone();
                self.hot.put(
                    key,
                    HotChunk {
                        data,
                        sha256: reply.chunk_sha256.clone(),
                        crc32: reply.chunk_crc32,
                        total,
                    },
                );
            }
            Err(err) => reply.error = err,
        }
        reply
    }
}

/// Reads one range of a blob: one trip to the blocking pool (open, seek, read), since this
/// runs once per chunk and every hop shows in transfer throughput.
async fn read_range(path: &Path, offset: u64, length: u64) -> Result<(Vec<u8>, u64), String> {
    use std::io::{Read, Seek};
    let path = path.to_owned();
    let read = move || -> std::io::Result<Result<(Vec<u8>, u64), String>> {
        let mut file = std::fs::File::open(&path)?;
        let total = file.metadata()?.len();
        if offset >= total {
            return Ok(Err(format!(
                "offset {offset} is beyond the blob's {total} bytes"
            )));
        }
        let length = length.clamp(1, MAX_CHUNK_BYTES).min(total - offset);
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut data = vec![0; length as usize];
        file.read_exact(&mut data)?;
        Ok(Ok((data, total)))
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => Err(format!("the blob cannot be read: {err}")),
        Err(err) => Err(format!("the blob read failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> HotChunk {
        HotChunk {
            data: Bytes::from(vec![n; 4]),
            sha256: format!("{n}"),
            crc32: u32::from(n),
            total: 4,
        }
    }

    #[test]
    fn hot_chunks_keep_the_newest_and_forget_the_oldest() {
        let hot = HotChunks::default();
        for n in 0..=HOT_CHUNKS as u64 {
            hot.put(("b".into(), n, 4), chunk(n as u8));
        }
        assert!(hot.get(&("b".into(), 0, 4)).is_none(), "the oldest went");
        let newest = hot.get(&("b".into(), HOT_CHUNKS as u64, 4)).expect("kept");
        assert_eq!(newest.data.as_ref(), &[HOT_CHUNKS as u8; 4]);
        // Putting a chunk again does not count it twice.
        hot.put(("b".into(), 1, 4), chunk(1));
        assert!(hot.get(&("b".into(), 1, 4)).is_some());
        assert!(hot.get(&("b".into(), 2, 4)).is_some());
    }

    fn digests(list: &[&str]) -> HashSet<String> {
        list.iter().map(|d| (*d).to_owned()).collect()
    }

    #[test]
    fn a_broadcast_awaits_only_devices_that_just_gained_the_blob() {
        let entitled = Entitlements::default();
        entitled.set("old", digests(&["graph", "weights-1"]));
        entitled.set("a", digests(&["graph", "weights-2"]));
        entitled.set("b", digests(&["graph", "weights-2"]));
        // "old" joined for its own files long ago; its desired state keeps the shared graph.
        assert!(entitled.joined("old", "graph"));
        assert!(entitled.joined("old", "weights-1"));
        assert_eq!(entitled.awaited("weights-2"), 2);
        assert_eq!(entitled.awaited("graph"), 2, "a and b have not fetched it");

        assert!(entitled.joined("a", "weights-2"));
        assert!(!entitled.joined("a", "weights-2"), "counted once");
        assert_eq!(entitled.awaited("weights-2"), 1);

        // A new version for "old": only what it did not hold before is awaited.
        entitled.set("old", digests(&["graph", "weights-2"]));
        assert_eq!(entitled.awaited("weights-2"), 2);
        assert_eq!(entitled.awaited("graph"), 2, "old still holds the graph");
        // A device refetching what it lost is entitled but awaited by nobody: it does not
        // make a broadcast wait for a crowd.
        assert!(entitled.allows("a", "weights-2"));
        assert!(!entitled.joined("a", "weights-2"));
        assert!(!entitled.allows("a", "weights-1"));
    }
}
