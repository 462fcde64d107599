//! Content-addressed model file cache on the device, with resumable partial downloads.
//!
//! Layout under the cache root: `sha256/<digest>` holds complete, verified files;
//! `partial/<digest>` holds a download in progress. Chunks are appended only at the current end
//! of the partial file and only after their own digest checks out, so the partial file is
//! always a verified prefix; the whole-file sha256 is checked again before the file moves into
//! `sha256/`. Architecture invariant: nothing outside `sha256/` is ever loaded.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Blob chunks are requested in this size, aligned to it, so a torn tail after a crash is
/// recognisable (a partial file whose length is not a multiple of it) and cut off.
pub const CHUNK_SIZE: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("chunk at offset {offset} of {digest} failed its digest check")]
    CorruptChunk { digest: String, offset: u64 },
    #[error(
        "{digest} failed verification after download (got sha256 {actual}); it will be fetched again"
    )]
    CorruptFile { digest: String, actual: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}

/// How a chunk's bytes are checked on arrival, against damage in transport: the whole
/// file's sha256, checked before the file is used, is what makes a model trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCheck<'a> {
    /// CRC-32 (IEEE), from hubs that send it: about a tenth of a hash's cost.
    Crc32(u32),
    /// Lower-case hex sha256, from every hub.
    Sha256(&'a str),
}

#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    /// Digests whose files this process has hashed (downloaded, or checked on first use).
    /// A file found in `sha256/` at start is trusted only once hashed again: a power cut, a
    /// failing disk or a stray hand can change bytes after they were verified.
    checked: Arc<Mutex<HashSet<String>>>,
}

impl BlobCache {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        for dir in ["sha256", "partial"] {
            fs::create_dir_all(root.join(dir)).map_err(io_err("creating the blob cache"))?;
        }
        Ok(Self {
            root,
            checked: Arc::default(),
        })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.root.join("sha256").join(digest)
    }

    fn partial_path(&self, digest: &str) -> PathBuf {
        self.root.join("partial").join(digest)
    }

    /// Whether the cache holds the blob's exact bytes. The first call for a file this process
    /// did not download hashes it (once; a blocking read of the whole file), and removes it
    /// when the bytes are not the digest's, so it is fetched again rather than loaded.
    pub fn contains(&self, digest: &str) -> bool {
        let path = self.path(digest);
        if !path.is_file() {
            return false;
        }
        if self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
        {
            return true;
        }
        match sha256_of_file(&path) {
            Ok(actual) if actual == digest => {
                self.checked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(digest.to_owned());
                true
            }
            Ok(actual) => {
                tracing::error!(%digest, %actual, "a cached file no longer holds its bytes; removed, to be fetched again");
                let _ = fs::remove_file(&path);
                false
            }
            Err(err) => {
                tracing::error!(%digest, error = %err, "a cached file cannot be read; removed, to be fetched again");
                let _ = fs::remove_file(&path);
                false
            }
        }
    }

    /// Starts or resumes the download of a blob.
    pub fn begin(&self, digest: &str, size: u64) -> Result<PartialBlob, CacheError> {
        let mut partial =
            PartialBlob::open(self.partial_path(digest), self.path(digest), digest, size)?;
        partial.checked = Some(Arc::clone(&self.checked));
        Ok(partial)
    }

    /// Deletes complete and partial blobs not in `keep`; returns how many were removed.
    pub fn retain(&self, keep: &HashSet<String>) -> Result<usize, CacheError> {
        let mut removed = 0;
        for dir in ["sha256", "partial"] {
            let entries = fs::read_dir(self.root.join(dir)).map_err(io_err("listing the cache"))?;
            for entry in entries {
                let entry = entry.map_err(io_err("listing the cache"))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    fs::remove_file(entry.path()).map_err(io_err("removing a cached blob"))?;
                    self.checked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A blob being downloaded: a verified prefix on disk plus the running whole-file hash.
#[derive(Debug)]
pub struct PartialBlob {
    digest: String,
    size: u64,
    partial: PathBuf,
    complete: PathBuf,
    file: File,
    hasher: Sha256,
    offset: u64,
    /// Bytes found on disk when the download resumed (for reporting).
    resumed_from: u64,
    /// The cache's set of hashed digests, which a verified download joins.
    checked: Option<Arc<Mutex<HashSet<String>>>>,
}

impl PartialBlob {
    fn open(
        partial: PathBuf,
        complete: PathBuf,
        digest: &str,
        size: u64,
    ) -> Result<Self, CacheError> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&partial)
            .map_err(io_err(format!("opening {}", partial.display())))?;
        let on_disk = file
            .metadata()
            .map_err(io_err("reading a partial blob"))?
            .len();
        // Keep only whole chunks (a crash can tear the last write) and never more than the
        // blob's size.
        let mut keep = on_disk.min(size);
        if keep < size {
            keep -= keep % CHUNK_SIZE;
        }
        if keep != on_disk {
            file.set_len(keep)
                .map_err(io_err("trimming a partial blob"))?;
        }
        let mut hasher = Sha256::new();
        let mut reader = File::open(&partial).map_err(io_err("reading a partial blob"))?;
        let mut buffer = vec![0; 1 << 20];
        let mut left = keep;
        while left > 0 {
            let n = reader
                .read(&mut buffer[..(left.min(1 << 20)) as usize])
                .map_err(io_err("reading a partial blob"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            left -= n as u64;
        }
        Ok(Self {
            digest: digest.to_owned(),
            size,
            partial,
            complete,
            file,
            hasher,
            offset: keep,
            resumed_from: keep,
            checked: None,
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next byte wanted; everything before it is on disk and verified chunk by chunk.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    pub fn is_complete(&self) -> bool {
        self.offset == self.size
    }

    /// Appends a chunk if it is the next one and its sha256 matches. Returns false for a
    /// chunk that is not the next one (a duplicate or an early arrival), which is ignored.
    pub fn append(
        &mut self,
        offset: u64,
        data: &[u8],
        chunk_sha256: &str,
    ) -> Result<bool, CacheError> {
        self.append_checked(offset, data, ChunkCheck::Sha256(chunk_sha256))
    }

    /// As [`PartialBlob::append`], checking the chunk as `check` says.
    pub fn append_checked(
        &mut self,
        offset: u64,
        data: &[u8],
        check: ChunkCheck<'_>,
    ) -> Result<bool, CacheError> {
        if offset != self.offset || data.is_empty() || offset + data.len() as u64 > self.size {
            return Ok(false);
        }
        let intact = match check {
            ChunkCheck::Crc32(crc) => crc32fast::hash(data) == crc,
            ChunkCheck::Sha256(digest) => hex::encode(Sha256::digest(data)) == digest,
        };
        if !intact {
            return Err(CacheError::CorruptChunk {
                digest: self.digest.clone(),
                offset,
            });
        }
        self.file
            .write_all(data)
            .map_err(io_err(format!("writing {}", self.partial.display())))?;
        self.hasher.update(data);
        self.offset += data.len() as u64;
        Ok(true)
    }

    /// Verifies the whole file and moves it into the cache. On a mismatch the partial file is
    /// deleted, so the next attempt starts from zero.
    pub fn finish(self) -> Result<PathBuf, CacheError> {
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.digest || self.offset != self.size {
            let _ = fs::remove_file(&self.partial);
            return Err(CacheError::CorruptFile {
                digest: self.digest,
                actual,
            });
        }
        self.file
            .sync_all()
            .map_err(io_err("syncing a downloaded blob"))?;
        fs::rename(&self.partial, &self.complete)
            .map_err(io_err("moving a blob into the cache"))?;
        if let Some(checked) = &self.checked {
            checked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.digest.clone());
        }
        if let Some(dir) = self.complete.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing the cache folder"))?;
        }
        Ok(self.complete)
    }
}

/// The sha256 of a file's bytes, read in pieces (model files can be larger than memory).
fn sha256_of_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Links (or copies) cached blobs into a model folder with the model's layout.
pub fn materialize(
    cache: &BlobCache,
    folder: &Path,
    files: &[(String, String)],
) -> Result<(), CacheError> {
    for (path, digest) in files {
        let target = folder.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let _ = fs::remove_file(&target);
        let source = cache.path(digest);
        // A hard link costs no space; fall back to a copy across file systems, checked like
        // a download (a copy is bytes written again).
        if fs::hard_link(&source, &target).is_err() {
            fs::copy(&source, &target).map_err(io_err(format!("placing {path}")))?;
            let copied = fs::read(&target).map_err(io_err(format!("checking {path}")))?;
            let actual = hex::encode(Sha256::digest(&copied));
            if actual != *digest {
                let _ = fs::remove_file(&target);
                return Err(CacheError::CorruptFile {
                    digest: digest.clone(),
                    actual,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn a_download_resumes_from_the_last_whole_chunk() {
        let dir = tempfile::tempdir().expect("temp");
        let cache = BlobCache::open(dir.path()).expect("cache");
        let blob: Vec<u8> = (0..(CHUNK_SIZE * 2 + 100))
            .map(|i| (i % 253) as u8)
            .collect();
        let digest = sha(&blob);
        let chunks: Vec<&[u8]> = blob.chunks(CHUNK_SIZE as usize).collect();

        let mut partial = cache.begin(&digest, blob.len() as u64).expect("begin");
        assert!(
            partial
                .append(0, chunks[0], &sha(chunks[0]))
                .expect("append")
        );
        drop(partial);
        // A torn write: half of the second chunk reached the disk before a crash.
        let mut raw = OpenOptions::new()
            .append(true)
            .open(dir.path().join("partial").join(&digest))
            .expect("open");
        raw.write_all(&chunks[1][..1000]).expect("write");
        drop(raw);

        let mut resumed = cache.begin(&digest, blob.len() as u64).expect("resume");
        assert_eq!(
            resumed.offset(),
            CHUNK_SIZE,
            "torn tail cut back to a chunk boundary"
        );
        assert!(
            !resumed.append(0, chunks[0], &sha(chunks[0])).expect("dup"),
            "duplicate ignored"
        );
        for (i, chunk) in chunks.iter().enumerate().skip(1) {
            let offset = i as u64 * CHUNK_SIZE;
            assert!(resumed.append(offset, chunk, &sha(chunk)).expect("append"));
        }
        let path = resumed.finish().expect("verified");
        assert_eq!(fs::read(path).expect("read"), blob);
        assert!(cache.contains(&digest));
    }

    #[test]
    fn a_corrupted_chunk_is_rejected_and_a_wrong_file_is_discarded() {
        let dir = tempfile::tempdir().expect("temp");
        let cache = BlobCache::open(dir.path()).expect("cache");
        let blob = b"hello edge".to_vec();
        let digest = sha(&blob);
        let mut partial = cache.begin(&digest, blob.len() as u64).expect("begin");
        let err = partial
            .append(0, b"jello edge", &sha(&blob))
            .expect_err("corrupt");
        assert!(matches!(err, CacheError::CorruptChunk { offset: 0, .. }));
        assert_eq!(partial.offset(), 0, "nothing appended");
        // The same with the CRC-32 check newer hubs send.
        let crc = ChunkCheck::Crc32(crc32fast::hash(&blob));
        let err = partial
            .append_checked(0, b"jello edge", crc)
            .expect_err("corrupt");
        assert!(matches!(err, CacheError::CorruptChunk { offset: 0, .. }));
        let other = b"crc edge".to_vec();
        let mut intact = cache
            .begin(&sha(&other), other.len() as u64)
            .expect("begin");
        let other_crc = ChunkCheck::Crc32(crc32fast::hash(&other));
        assert!(intact.append_checked(0, &other, other_crc).expect("intact"));
        assert_eq!(intact.offset(), other.len() as u64);

        // A chunk that matches its own digest but not the file's is caught at the end.
        let mut partial = cache.begin(&digest, blob.len() as u64).expect("begin");
        partial
            .append(0, b"jello edge", &sha(b"jello edge"))
            .expect("append");
        assert!(matches!(
            partial.finish(),
            Err(CacheError::CorruptFile { .. })
        ));
        assert!(!cache.contains(&digest));
        assert_eq!(
            cache
                .begin(&digest, blob.len() as u64)
                .expect("restart")
                .offset(),
            0
        );
    }

    #[test]
    fn a_cached_file_damaged_between_runs_is_removed_on_first_use_not_trusted() {
        let dir = tempfile::tempdir().expect("temp");
        let blob = vec![7u8; (CHUNK_SIZE + 10) as usize];
        let digest = sha(&blob);
        {
            let cache = BlobCache::open(dir.path()).expect("cache");
            let mut partial = cache.begin(&digest, blob.len() as u64).expect("begin");
            for (i, chunk) in blob.chunks(CHUNK_SIZE as usize).enumerate() {
                let offset = i as u64 * CHUNK_SIZE;
                assert!(partial.append(offset, chunk, &sha(chunk)).expect("append"));
            }
            partial.finish().expect("verified");
            assert!(cache.contains(&digest));
        }
        // Between runs (a power cut, a failing disk), one byte changes.
        let path = dir.path().join("sha256").join(&digest);
        let mut bytes = fs::read(&path).expect("read");
        bytes[100] ^= 1;
        fs::write(&path, bytes).expect("write");

        let restarted = BlobCache::open(dir.path()).expect("cache");
        assert!(!restarted.contains(&digest), "damaged bytes were trusted");
        assert!(!path.exists(), "the damaged file stays in the cache");
        // An intact file found at start is checked once, then trusted.
        fs::write(&path, &blob).expect("write");
        assert!(restarted.contains(&digest));
        assert!(restarted.contains(&digest));
    }

    #[test]
    fn retain_removes_unreferenced_blobs() {
        let dir = tempfile::tempdir().expect("temp");
        let cache = BlobCache::open(dir.path()).expect("cache");
        for data in [b"a".as_slice(), b"b"] {
            let mut partial = cache.begin(&sha(data), 1).expect("begin");
            partial.append(0, data, &sha(data)).expect("append");
            partial.finish().expect("finish");
        }
        let keep = HashSet::from([sha(b"a")]);
        assert_eq!(cache.retain(&keep).expect("retain"), 1);
        assert!(cache.contains(&sha(b"a")));
        assert!(!cache.contains(&sha(b"b")));
    }
}
