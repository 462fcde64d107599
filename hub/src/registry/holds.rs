//! Blobs held by records outside the registry (a batch job's input and output): they count
//! in the same `blob_refs` tree as model and module files, under the same write lock, so a
//! blob a job and a model share stays until neither holds it, and deleting a model never
//! takes a job's bytes.
//!
//! The holder's own trees change in the same sled transaction as the counts, so a crash
//! leaves either the old or the new state; files move in before it and out after it, as for
//! registrations.

use std::path::PathBuf;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::Error;
use super::store::{Registry, adjust_ref, from_tx};

/// A fsynced file to move into the blob store under its digest.
#[derive(Debug, Clone)]
pub struct StagedBlob {
    pub location: PathBuf,
    pub sha256: String,
}

/// Reference counts inside a holder's transaction.
pub struct BlobHolds<'a> {
    refs: &'a TransactionalTree,
    freed: Vec<String>,
}

impl std::fmt::Debug for BlobHolds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobHolds")
            .field("freed", &self.freed)
            .finish_non_exhaustive()
    }
}

impl BlobHolds<'_> {
    /// One more reference to `digest`.
    pub fn hold(&mut self, digest: &str) -> Result<(), ConflictableTransactionError<Error>> {
        adjust_ref(self.refs, digest, 1).map(|_| ())
    }

    /// One reference less; the blob's file goes once nothing holds it and the change is
    /// durable.
    pub fn release(&mut self, digest: &str) -> Result<(), ConflictableTransactionError<Error>> {
        if adjust_ref(self.refs, digest, -1)? == 0 {
            self.freed.push(digest.to_owned());
        }
        Ok(())
    }
}

impl Registry {
    /// Runs `work` on `trees` and the blob reference counts in one transaction, after moving
    /// `adopt` into the blob store; flushes, then removes the files no reference holds any
    /// longer. On failure, adopted files nothing references are removed again. `work` may run
    /// more than once (sled retries conflicts), so it must only write through its arguments.
    pub fn write_holding_blobs<R>(
        &self,
        adopt: &[StagedBlob],
        trees: &[&sled::Tree],
        work: impl Fn(
            &[TransactionalTree],
            &mut BlobHolds<'_>,
        ) -> Result<R, ConflictableTransactionError<Error>>,
    ) -> Result<R, Error> {
        let shared = &*self.shared;
        let _guard = self.write_guard();
        for blob in adopt {
            shared
                .blobs
                .adopt(&blob.location, &blob.sha256)
                .map_err(Error::io(format!("storing blob {}", blob.sha256)))?;
        }
        let mut all: Vec<&sled::Tree> = trees.to_vec();
        all.push(&shared.blob_refs);
        let result = all.as_slice().transaction(|views| {
            let Some((refs, own)) = views.split_last() else {
                return Err(ConflictableTransactionError::Abort(Error::DataLoss(
                    "a blob transaction without its reference tree".into(),
                )));
            };
            let mut holds = BlobHolds {
                refs,
                freed: Vec::new(),
            };
            let value = work(own, &mut holds)?;
            Ok((value, holds.freed))
        });
        let (value, freed) = match result.map_err(from_tx) {
            Ok(done) => done,
            Err(err) => {
                for blob in adopt {
                    if let Ok(false) = shared.blob_refs.contains_key(blob.sha256.as_bytes())
                        && let Err(err) = shared.blobs.remove(&blob.sha256)
                    {
                        tracing::warn!(digest = %blob.sha256, error = %err, "could not remove an unreferenced blob");
                    }
                }
                return Err(err);
            }
        };
        shared.db.flush()?;
        for digest in &freed {
            if let Err(err) = shared.blobs.remove(digest) {
                // Harmless: the next start-up removes unreferenced blobs.
                tracing::warn!(%digest, error = %err, "could not remove a freed blob");
            }
        }
        Ok(value)
    }
}
