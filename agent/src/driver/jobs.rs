//! The driver's side of batch jobs: fetching each desired job's model and input (like a
//! workload's files, superseded by a newer desired state the same way), then handing the jobs
//! to [`crate::jobs::Jobs`], which runs them in the background.

use edgeship_domain::DesiredState;
use tokio::sync::mpsc;

use super::{Agent, StepError};
use crate::fetch::{Chunk, FetchError};

impl Agent {
    /// Fetches what the desired jobs lack, then starts and stops jobs to match. `Err` when a
    /// newer desired state arrived (`Superseded`) or a download must be retried (`Transient`);
    /// a job whose files cannot be had fails alone.
    pub(super) async fn converge_jobs(
        &mut self,
        desired: &DesiredState,
        chunks: &mut mpsc::Receiver<Chunk>,
    ) -> Result<(), StepError> {
        let mut transient = false;
        for job in &desired.jobs {
            if self.jobs.is_running(&job.job_id) {
                continue;
            }
            for blob in job.blobs() {
                if self.fetcher.cache.contains(&blob.sha256) {
                    continue;
                }
                let what = if blob.sha256 == job.input.sha256 {
                    "the input".to_owned()
                } else {
                    blob.path.clone()
                };
                match self
                    .fetcher
                    .fetch(&blob.sha256, blob.size_bytes, desired.generation, chunks)
                    .await
                {
                    Ok(()) => {}
                    Err(FetchError::Superseded) => return Err(StepError::Superseded),
                    Err(FetchError::Transient(why)) => {
                        tracing::warn!(job = %job.job_id, %why, "job download interrupted; retrying");
                        transient = true;
                        break;
                    }
                    Err(FetchError::Failed(why)) => {
                        let reason = format!("downloading {what}: {why}");
                        tracing::warn!(job = %job.job_id, %reason, "job download failed");
                        self.jobs.fail(&job.job_id, &reason);
                        break;
                    }
                }
            }
        }
        let cache = self.fetcher.cache.clone();
        self.jobs
            .sync(&desired.jobs, &desired.rejected_jobs, |job| {
                job.blobs().all(|b| cache.contains(&b.sha256))
            });
        if transient {
            Err(StepError::Transient)
        } else {
            Ok(())
        }
    }

    /// Takes up the jobs of the last accepted desired state after a restart, before any
    /// broker contact: each resumes after its last saved mini-batch.
    pub(super) fn restore_jobs(&mut self) {
        let Some(desired) = self.store.load_desired() else {
            return;
        };
        let cache = self.fetcher.cache.clone();
        self.jobs
            .sync(&desired.jobs, &desired.rejected_jobs, |job| {
                job.blobs().all(|b| cache.contains(&b.sha256))
            });
    }
}
