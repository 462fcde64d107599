//! The job records: tree `jobs` (name → JSON record) and tree `live_jobs` (`device \0 name` of
//! every live job, so a device's desired state reads only its own jobs). Inputs and outputs
//! are held in the registry's blob store through [`Registry::write_holding_blobs`].
//!
//! Design: devices report progress every second or so per running job; a record is written
//! when its state changes, and otherwise at most every [`PROGRESS_WRITE_INTERVAL`]. The
//! counts in between are kept in memory and shown by [`JobStore::get`] and
//! [`JobStore::list`]; a restart loses at most that much progress, which the device's next
//! report brings back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edgeship_domain::{JobPhase, JobStatus};
use sled::transaction::ConflictableTransactionError;

use super::{Job, JobData, JobError, JobState};
use crate::now_ms;
use crate::registry::{self, Registry, StagedBlob};

/// Longest time reported progress waits in memory before it is written.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(5);

/// Counts reported since the record was last written.
#[derive(Debug, Clone, Copy)]
struct Progress {
    records_done: u64,
    record_errors: u64,
    /// When the record was last written for a report; `None`: not since the hub started.
    written: Option<Instant>,
    pending: bool,
}

#[derive(Debug)]
pub struct JobStore {
    db: sled::Db,
    jobs: sled::Tree,
    live: sled::Tree,
    registry: Arc<Registry>,
    /// Serializes every write of job records.
    lock: Mutex<()>,
    progress: Mutex<HashMap<String, Progress>>,
}

fn decode(bytes: &[u8]) -> Result<Job, JobError> {
    serde_json::from_slice(bytes)
        .map_err(|err| JobError::DataLoss(format!("a job record cannot be decoded: {err}")))
}

fn encode(job: &Job) -> Vec<u8> {
    // Plain owned data serializes to a Vec without fail.
    serde_json::to_vec(job).unwrap_or_default()
}

fn live_key(device: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + name.len() + 1);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

fn device_prefix(device: &str) -> Vec<u8> {
    let mut key = device.as_bytes().to_vec();
    key.push(0);
    key
}

/// The trees a holder's transaction was given are not there: a bug, reported, not a panic.
fn missing_trees() -> ConflictableTransactionError<registry::Error> {
    ConflictableTransactionError::Abort(registry::Error::DataLoss(
        "a job transaction lacks its trees".into(),
    ))
}

fn not_found(name: &str) -> JobError {
    JobError::NotFound(format!("job {name} does not exist"))
}

impl JobStore {
    pub fn open(db: sled::Db, registry: Arc<Registry>) -> Result<Self, JobError> {
        Ok(Self {
            jobs: db.open_tree("jobs")?,
            live: db.open_tree("live_jobs")?,
            db,
            registry,
            lock: Mutex::new(()),
            progress: Mutex::new(HashMap::new()),
        })
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn progress(&self) -> MutexGuard<'_, HashMap<String, Progress>> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a blob's bytes are (inputs and outputs are in the registry's store).
    pub fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        self.registry.blob_path(digest)
    }

    /// The stored record, without progress that waits in memory.
    fn stored(&self, name: &str) -> Result<Option<Job>, JobError> {
        self.jobs
            .get(name.as_bytes())?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    /// Progress that waits in memory laid over the record.
    fn with_progress(&self, mut job: Job) -> Job {
        if let Some(progress) = self.progress().get(&job.name)
            && progress.pending
            && !job.state.is_terminal()
        {
            job.records_done = progress.records_done;
            job.record_errors = progress.record_errors;
        }
        job
    }

    pub fn find(&self, name: &str) -> Result<Option<Job>, JobError> {
        Ok(self.stored(name)?.map(|job| self.with_progress(job)))
    }

    pub fn get(&self, name: &str) -> Result<Job, JobError> {
        self.find(name)?.ok_or_else(|| not_found(name))
    }

    /// Every job, or one device's, oldest first.
    pub fn list(&self, device: Option<&str>) -> Result<Vec<Job>, JobError> {
        let mut jobs = Vec::new();
        for entry in self.jobs.iter() {
            let (_, bytes) = entry?;
            let job = decode(&bytes)?;
            if device.is_none_or(|d| d == job.device_id) {
                jobs.push(self.with_progress(job));
            }
        }
        jobs.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        Ok(jobs)
    }

    /// A device's live jobs, oldest first: what its desired state lists.
    pub fn live_for_device(&self, device: &str) -> Result<Vec<Job>, JobError> {
        let mut jobs = Vec::new();
        for entry in self.live.scan_prefix(device_prefix(device)) {
            let (key, _) = entry?;
            let name = String::from_utf8_lossy(&key[device.len() + 1..]).into_owned();
            match self.stored(&name)? {
                Some(job) if !job.state.is_terminal() => jobs.push(job),
                _ => {
                    tracing::warn!(job = %name, device = %device, "a live-job index entry names no live job")
                }
            }
        }
        jobs.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
        Ok(jobs)
    }

    /// The devices with live jobs on a model (every version, or one).
    pub fn devices_running(
        &self,
        model_id: &str,
        version: Option<u32>,
    ) -> Result<Vec<String>, JobError> {
        let mut devices = Vec::new();
        for entry in self.live.iter() {
            let (key, _) = entry?;
            let Some(split) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let name = String::from_utf8_lossy(&key[split + 1..]).into_owned();
            if let Some(job) = self.stored(&name)?
                && job.model_id == model_id
                && version.is_none_or(|v| v == job.model_version)
                && !devices.contains(&job.device_id)
            {
                devices.push(job.device_id);
            }
        }
        Ok(devices)
    }

    /// Stores a new job holding its staged input (moved into the blob store); refused when
    /// the name is taken.
    pub fn insert(&self, job: &Job, input: StagedBlob) -> Result<(), JobError> {
        // Under the lock, a name checked here is still free when the transaction runs.
        let _guard = self.guard();
        if self.jobs.contains_key(job.name.as_bytes())? {
            return Err(JobError::AlreadyExists(format!(
                "job {} already exists; delete it first (edgeship job delete {}) or choose another name",
                job.name, job.name
            )));
        }
        let record = encode(job);
        let live = live_key(&job.device_id, &job.name);
        let digest = job.input.sha256.clone();
        self.registry.write_holding_blobs(
            &[input],
            &[&self.jobs, &self.live],
            |trees, holds| {
                let [jobs, live_tree] = trees else {
                    return Err(missing_trees());
                };
                jobs.insert(job.name.as_bytes(), record.as_slice())?;
                live_tree.insert(live.as_slice(), &[])?;
                holds.hold(&digest)
            },
        )?;
        Ok(())
    }

    /// Changes a job with `change` (which may refuse); the live index follows its state.
    /// `flush`: durable before returning (API calls), or left to the caller's batch (reports).
    pub fn update(
        &self,
        name: &str,
        flush: bool,
        change: impl FnOnce(&mut Job) -> Result<(), JobError>,
    ) -> Result<Job, JobError> {
        let _guard = self.guard();
        let stored = self.stored(name)?.ok_or_else(|| not_found(name))?;
        let mut job = self.with_progress(stored);
        let was_live = !job.state.is_terminal();
        change(&mut job)?;
        job.updated_ms = now_ms();
        self.write(&job, was_live)?;
        if flush {
            self.db.flush()?;
        }
        Ok(job)
    }

    fn write(&self, job: &Job, was_live: bool) -> Result<(), JobError> {
        self.jobs.insert(job.name.as_bytes(), encode(job))?;
        if was_live && job.state.is_terminal() {
            self.live.remove(live_key(&job.device_id, &job.name))?;
            self.progress().remove(&job.name);
        } else if let Some(progress) = self.progress().get_mut(&job.name) {
            progress.pending = false;
        }
        Ok(())
    }

    /// Applies a device's account of one of its jobs; says whether the job ended with it
    /// (then the device's desired state must drop it). Reports about jobs that are unknown,
    /// another device's or over are ignored.
    pub fn apply_report(&self, device: &str, status: &JobStatus) -> Result<bool, JobError> {
        let _guard = self.guard();
        let name = &status.job_id;
        let Some(stored) = self.stored(name)? else {
            tracing::debug!(device = %device, job = %name, "report about an unknown job ignored");
            return Ok(false);
        };
        if stored.device_id != device {
            tracing::warn!(device = %device, job = %name, owner = %stored.device_id, "report about another device's job ignored");
            return Ok(false);
        }
        if stored.state.is_terminal() {
            tracing::debug!(device = %device, job = %name, state = stored.state.name(), "report about a finished job ignored");
            return Ok(false);
        }
        let state = match status.phase {
            JobPhase::Preparing => JobState::Preparing,
            JobPhase::Running => JobState::Running,
            JobPhase::Uploading => JobState::Uploading,
            // Success is the hub's to declare, once it holds the verified output.
            JobPhase::Uploaded => stored.state.max_live(JobState::Uploading),
            JobPhase::Failed => JobState::Failed,
        };
        let now = Instant::now();
        let due = {
            let mut progress = self.progress();
            let entry = progress.entry(name.clone()).or_insert(Progress {
                records_done: 0,
                record_errors: 0,
                written: None,
                pending: false,
            });
            entry.records_done = status.records_done;
            entry.record_errors = status.record_errors;
            entry.pending = true;
            let due = entry
                .written
                .is_none_or(|at| now.duration_since(at) >= PROGRESS_WRITE_INTERVAL);
            if state != stored.state || due {
                entry.written = Some(now);
            }
            due
        };
        if state == stored.state && !due {
            return Ok(false);
        }
        let mut job = stored;
        job.records_done = status.records_done;
        job.record_errors = status.record_errors;
        job.state = state;
        job.updated_ms = now_ms();
        if state == JobState::Failed {
            job.error = match status.error.is_empty() {
                true => format!("device {device} reports the job failed"),
                false => status.error.clone(),
            };
            job.finished_ms = Some(job.updated_ms);
            tracing::info!(device = %device, job = %name, error = %job.error, "job failed on its device");
        } else if state != JobState::Running || job.state != state {
            tracing::debug!(device = %device, job = %name, state = state.name(), "job state reported");
        }
        self.write(&job, true)?;
        Ok(state == JobState::Failed)
    }

    /// Gives a live job its verified output (moved into the blob store) and ends it Succeeded.
    pub fn succeed(
        &self,
        name: &str,
        output: StagedBlob,
        size_bytes: u64,
    ) -> Result<Job, JobError> {
        let _guard = self.guard();
        let stored = self.stored(name)?.ok_or_else(|| not_found(name))?;
        let mut job = self.with_progress(stored);
        if job.state.is_terminal() {
            return Err(JobError::FailedPrecondition(format!(
                "job {name} is already {}",
                job.state.name()
            )));
        }
        let now = now_ms();
        job.output = Some(JobData {
            sha256: output.sha256.clone(),
            size_bytes,
        });
        job.state = JobState::Succeeded;
        job.records_done = job.records_done.max(job.records_total);
        job.updated_ms = now;
        job.finished_ms = Some(now);
        let record = encode(&job);
        let live = live_key(&job.device_id, name);
        let digest = output.sha256.clone();
        self.registry.write_holding_blobs(
            &[output],
            &[&self.jobs, &self.live],
            |trees, holds| {
                let [jobs, live_tree] = trees else {
                    return Err(missing_trees());
                };
                jobs.insert(name.as_bytes(), record.as_slice())?;
                live_tree.remove(live.as_slice())?;
                holds.hold(&digest)
            },
        )?;
        self.progress().remove(name);
        Ok(job)
    }

    /// Deletes a job that has ended, releasing its input and output.
    pub fn delete(&self, name: &str) -> Result<Job, JobError> {
        let _guard = self.guard();
        let job = self.stored(name)?.ok_or_else(|| not_found(name))?;
        if !job.state.is_terminal() {
            return Err(JobError::FailedPrecondition(format!(
                "job {name} is {}; cancel it first (edgeship job cancel {name})",
                job.state.name()
            )));
        }
        let held: Vec<String> = std::iter::once(job.input.sha256.clone())
            .chain(job.output.as_ref().map(|o| o.sha256.clone()))
            .collect();
        self.registry
            .write_holding_blobs(&[], &[&self.jobs], |trees, holds| {
                let [jobs] = trees else {
                    return Err(missing_trees());
                };
                jobs.remove(name.as_bytes())?;
                for digest in &held {
                    holds.release(digest)?;
                }
                Ok(())
            })?;
        tracing::info!(job = %name, "job deleted");
        Ok(job)
    }
}

impl JobState {
    /// The later of two live states (reports may arrive out of order around a restart).
    fn max_live(self, other: JobState) -> JobState {
        let rank = |s: JobState| match s {
            JobState::Queued => 0,
            JobState::Preparing => 1,
            JobState::Running => 2,
            _ => 3,
        };
        if rank(self) >= rank(other) {
            self
        } else {
            other
        }
    }
}
