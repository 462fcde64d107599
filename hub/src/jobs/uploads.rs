//! Outputs on their way from devices (device protocol `uploads/req`): each job's bytes so far
//! in `<data>/uploads/<job>/<sha256>-<size>.part`, named by the digest and size the device
//! announced, so a restarted hub knows what it holds and the device resumes from its length.
//!
//! Rules (docs/protocol.md, *Batch jobs*): a chunk at the partial's length is appended, any
//! other offset is not written; a chunk for another digest or size replaces the partial; when
//! the length reaches the size the file is fsynced and its sha256 checked. Partials are not
//! fsynced per chunk: after a crash the device learns the length the hub really holds from
//! its next acknowledgement, and the final digest check catches anything else.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::registry::StagedBlob;

/// The most output bytes one `UploadChunk` may carry.
pub const MAX_UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// One piece of a job's output, as the link decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadChunk {
    pub job_id: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub offset: u64,
    pub data: Bytes,
}

/// The hub's answer to every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadAck {
    pub job_id: String,
    pub sha256: String,
    /// Bytes held from the start; the size once the output is verified and stored.
    pub received_bytes: u64,
    /// Why the upload is refused; empty otherwise.
    pub error: String,
    /// The refusal is not final: the device sends again (from `received_bytes`), later.
    pub retry: bool,
}

/// Where a partial stands after a chunk.
#[derive(Debug)]
pub enum Held {
    /// This many bytes, from the start.
    Partial(u64),
    /// Whole, fsynced and matching its digest: ready to move into the blob store.
    Complete(StagedBlob),
    /// Whole, but another digest: the partial is gone.
    Mismatch { actual: String },
}

#[derive(Debug)]
pub struct Partials {
    root: PathBuf,
    /// One chunk at a time touches the files (the link's worker and cancels).
    lock: Mutex<()>,
}

impl Partials {
    pub fn open(root: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            lock: Mutex::new(()),
        })
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The jobs with a partial (or its folder), for the clean-up at start.
    pub fn jobs(&self) -> io::Result<Vec<String>> {
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            if let Some(name) = entry?.file_name().to_str() {
                jobs.push(name.to_owned());
            }
        }
        Ok(jobs)
    }

    /// Takes one chunk of `chunk.job_id`, whose name the caller has checked (it becomes a
    /// folder name).
    pub fn receive(&self, chunk: &UploadChunk) -> io::Result<Held> {
        let _guard = self.guard();
        let dir = self.root.join(&chunk.job_id);
        let wanted = format!("{}-{}.part", chunk.sha256, chunk.size_bytes);
        let path = dir.join(&wanted);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name() != wanted.as_str() {
                tracing::info!(job = %chunk.job_id, sha256 = %chunk.sha256, "an upload of another output replaces the partial one");
                remove_entry(&entry.path())?;
            }
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut length = file.metadata()?.len();
        if length > chunk.size_bytes {
            // Cannot come from these rules; start over rather than trust it.
            file.set_len(0)?;
            length = 0;
        }
        if chunk.offset == length && !chunk.data.is_empty() {
            file.write_all(&chunk.data)?;
            length += chunk.data.len() as u64;
        }
        if length < chunk.size_bytes {
            return Ok(Held::Partial(length));
        }
        file.sync_all()?;
        drop(file);
        let actual = sha256_of(&path)?;
        if actual != chunk.sha256 {
            remove_entry(&dir)?;
            return Ok(Held::Mismatch { actual });
        }
        Ok(Held::Complete(StagedBlob {
            location: path,
            sha256: actual,
        }))
    }

    /// Drops whatever a job's upload left (after it is stored, cancelled or refused).
    pub fn discard(&self, job: &str) {
        let _guard = self.guard();
        let dir = self.root.join(job);
        if let Err(err) = remove_entry(&dir) {
            tracing::warn!(job = %job, error = %err, "could not remove a partial upload");
        }
    }
}

fn remove_entry(path: &Path) -> io::Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match removed {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn sha256_of(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], offset: u64, whole: &[u8]) -> UploadChunk {
        UploadChunk {
            job_id: "job-1".into(),
            sha256: hex::encode(Sha256::digest(whole)),
            size_bytes: whole.len() as u64,
            offset,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn chunks_append_only_at_the_end_and_complete_when_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partials = Partials::open(dir.path().join("uploads")).expect("open");
        let whole = b"line one\nline two\n";
        let held = |h: Held| match h {
            Held::Partial(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            held(partials.receive(&chunk(b"", 0, whole)).expect("probe")),
            0
        );
        assert_eq!(
            held(
                partials
                    .receive(&chunk(&whole[..9], 0, whole))
                    .expect("first")
            ),
            9
        );
        // A duplicate and a chunk from ahead change nothing.
        assert_eq!(
            held(
                partials
                    .receive(&chunk(&whole[..9], 0, whole))
                    .expect("dup")
            ),
            9
        );
        assert_eq!(
            held(
                partials
                    .receive(&chunk(&whole[12..], 12, whole))
                    .expect("ahead")
            ),
            9
        );
        match partials
            .receive(&chunk(&whole[9..], 9, whole))
            .expect("last")
        {
            Held::Complete(staged) => {
                assert_eq!(fs::read(&staged.location).expect("read"), whole);
            }
            other => panic!("{other:?}"),
        }
        partials.discard("job-1");
        assert!(partials.jobs().expect("list").is_empty());
    }

    #[test]
    fn a_wrong_digest_discards_everything_and_another_digest_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partials = Partials::open(dir.path().to_owned()).expect("open");
        let whole = b"abcdef";
        let mut lying = chunk(&whole[..3], 0, b"xyzxyz");
        assert!(matches!(
            partials.receive(&lying).expect("first"),
            Held::Partial(3)
        ));
        lying.offset = 3;
        lying.data = Bytes::copy_from_slice(&whole[3..]);
        assert!(matches!(
            partials.receive(&lying).expect("last"),
            Held::Mismatch { .. }
        ));
        assert!(matches!(
            partials
                .receive(&chunk(&whole[..2], 0, whole))
                .expect("new"),
            Held::Partial(2)
        ));
        // A chunk of another output replaces the partial.
        let other = chunk(b"", 0, b"other output");
        assert!(matches!(
            partials.receive(&other).expect("probe"),
            Held::Partial(0)
        ));
    }
}
