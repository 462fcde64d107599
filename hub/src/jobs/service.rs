//! [`Jobs`]: the operations on jobs that the API and the MQTT link call: creating one (its
//! header checked before the input is read, the input checked before anything is stored),
//! cancelling, deleting, reading the output, and taking upload chunks. Each change that
//! starts or ends a job recomputes its device's desired state through the [`Fleet`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgeship_domain::job::{DEFAULT_MINI_BATCH, MAX_MINI_BATCH};
use edgeship_domain::{InputFormat, Requirement, RuntimeKind, TensorSpec, names};

use super::input::check_input;
use super::store::JobStore;
use super::uploads::{Held, MAX_UPLOAD_CHUNK_BYTES, Partials, UploadAck, UploadChunk};
use super::{Job, JobData, JobError, JobState};
use crate::fleet::{Fleet, desired};
use crate::now_ms;
use crate::registry::{Kind, ModelVersion, StagedBlob, VersionRef, validate};

/// The largest output the hub takes for one job.
pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// A job as its creator describes it; the input follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub name: String,
    /// `NAME:VERSION`, `NAME`, `NAME:latest` or `models/NAME/versions/VERSION`.
    pub model: String,
    pub device_id: String,
    /// `None`: the creator named no format.
    pub input_format: Option<InputFormat>,
    /// 0: the default.
    pub mini_batch: u32,
    /// Empty: tract.
    pub runtime: String,
}

/// A header that passed its checks: what the job will run.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub name: String,
    pub model: ModelVersion,
    pub inputs: Vec<TensorSpec>,
    pub device_id: String,
    pub input_format: InputFormat,
    pub mini_batch: u32,
    pub runtime: RuntimeKind,
}

/// The input, staged and fsynced, with what was measured as it arrived.
#[derive(Debug)]
pub struct StagedInput {
    pub location: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
}

#[derive(Debug)]
pub struct Jobs {
    fleet: Arc<Fleet>,
    store: Arc<JobStore>,
    partials: Partials,
    staging: PathBuf,
    max_input_bytes: u64,
}

impl Jobs {
    /// Opens the upload folder under `data_dir` and drops partial outputs of jobs that are
    /// gone or over.
    pub fn open(
        fleet: Arc<Fleet>,
        data_dir: &Path,
        max_input_bytes: u64,
    ) -> Result<Self, JobError> {
        let store = Arc::clone(fleet.jobs());
        let partials = Partials::open(data_dir.join("uploads"))
            .map_err(JobError::io("opening the uploads folder"))?;
        let jobs = Self {
            staging: fleet.staging_dir(),
            fleet,
            store,
            partials,
            max_input_bytes,
        };
        for name in jobs
            .partials
            .jobs()
            .map_err(JobError::io("listing partial uploads"))?
        {
            let live = names::id(names::NameKind::Job, &name).is_ok()
                && jobs
                    .store
                    .find(&name)?
                    .is_some_and(|j| !j.state.is_terminal());
            if !live {
                jobs.partials.discard(&name);
            }
        }
        Ok(jobs)
    }

    /// Where inputs are staged while they arrive (beside the blob store).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The most input bytes a job may have.
    pub fn max_input_bytes(&self) -> u64 {
        self.max_input_bytes
    }

    /// Checks what a header says, before any input is read.
    pub fn accept(&self, new: &NewJob) -> Result<Accepted, JobError> {
        names::id(names::NameKind::Job, &new.name).map_err(|e| JobError::InvalidArgument(e.0))?;
        if self.store.find(&new.name)?.is_some() {
            return Err(JobError::AlreadyExists(format!(
                "job {} already exists; delete it first (edgeship job delete {}) or choose another name",
                new.name, new.name
            )));
        }
        let Some(input_format) = new.input_format else {
            return Err(JobError::InvalidArgument(
                "the job names no input format: jsonl or npy".into(),
            ));
        };
        let mini_batch = match new.mini_batch {
            0 => DEFAULT_MINI_BATCH,
            n if n > MAX_MINI_BATCH => {
                return Err(JobError::InvalidArgument(format!(
                    "a mini-batch of {n} records is more than the {MAX_MINI_BATCH} allowed"
                )));
            }
            n => n,
        };
        let runtime = match new.runtime.as_str() {
            "" => RuntimeKind::Tract,
            name => RuntimeKind::parse(name).map_err(JobError::InvalidArgument)?,
        };
        let reference = model_ref(&new.model)?;
        let model = self.fleet.registry().get(&reference)?;
        let (_, signature) = desired::entry_file(&model).map_err(JobError::InvalidArgument)?;
        let inputs = signature.inputs.clone();
        let device = self.fleet.get_device(&new.device_id)?;
        let announced = device.ever_seen() && !device.agent_version.is_empty();
        if announced && !device.capabilities.has(Requirement::Runtime(runtime)) {
            return Err(JobError::FailedPrecondition(format!(
                "device {} has no {runtime} runtime (it has: {})",
                device.id,
                device.capabilities.runtimes.join(", ")
            )));
        }
        Ok(Accepted {
            name: new.name.clone(),
            model,
            inputs,
            device_id: device.id,
            input_format,
            mini_batch,
            runtime,
        })
    }

    /// Checks the staged input, stores the job (holding its input) and puts it in its
    /// device's desired state. Blocking.
    pub fn create(&self, accepted: Accepted, input: StagedInput) -> Result<Job, JobError> {
        let model = format!("{}:{}", accepted.model.model_id, accepted.model.version);
        if input.size_bytes == 0 {
            return Err(JobError::InvalidArgument("the input is empty".into()));
        }
        let checked = check_input(
            &input.location,
            input.size_bytes,
            accepted.input_format,
            &model,
            &accepted.inputs,
        )?;
        let now = now_ms();
        let job = Job {
            name: accepted.name,
            model_id: accepted.model.model_id,
            model_version: accepted.model.version,
            device_id: accepted.device_id,
            runtime: accepted.runtime,
            input: JobData {
                sha256: input.sha256.clone(),
                size_bytes: input.size_bytes,
            },
            input_format: accepted.input_format,
            mini_batch: accepted.mini_batch,
            state: JobState::Queued,
            records_done: 0,
            records_total: checked.records,
            record_errors: 0,
            output: None,
            error: String::new(),
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
        };
        self.store.insert(
            &job,
            StagedBlob {
                location: input.location,
                sha256: input.sha256,
            },
        )?;
        tracing::info!(job = %job.name, device = %job.device_id, model = %model, records = job.records_total, "job created");
        self.fleet.reconcile_device(&job.device_id)?;
        Ok(job)
    }

    pub fn get(&self, name: &str) -> Result<Job, JobError> {
        self.store.get(name)
    }

    pub fn list(&self, device: Option<&str>) -> Result<Vec<Job>, JobError> {
        self.store.list(device)
    }

    /// Ends a live job Canceled; its device drops it with its next desired state.
    pub fn cancel(&self, name: &str) -> Result<Job, JobError> {
        let job = self.store.update(name, true, |job| {
            if job.state.is_terminal() {
                return Err(JobError::FailedPrecondition(format!(
                    "job {name} is already {}",
                    job.state.name()
                )));
            }
            job.state = JobState::Canceled;
            job.finished_ms = Some(now_ms());
            Ok(())
        })?;
        self.partials.discard(name);
        tracing::info!(job = %name, device = %job.device_id, "job canceled");
        self.fleet.reconcile_device(&job.device_id)?;
        Ok(job)
    }

    /// Deletes a job that has ended, with its input and output.
    pub fn delete(&self, name: &str) -> Result<Job, JobError> {
        let job = self.store.delete(name)?;
        self.partials.discard(name);
        Ok(job)
    }

    /// A Succeeded job's output and where its bytes are.
    pub fn output(&self, name: &str) -> Result<(JobData, PathBuf), JobError> {
        let job = self.store.get(name)?;
        match (&job.output, job.state) {
            (Some(output), JobState::Succeeded) => {
                Ok((output.clone(), self.store.blob_path(&output.sha256)))
            }
            _ => Err(JobError::FailedPrecondition(format!(
                "job {name} is {} and has no output{}",
                job.state.name(),
                if job.state.is_terminal() { "" } else { " yet" }
            ))),
        }
    }

    /// Takes one upload chunk from `device` and says how much of the output the hub holds, or
    /// why it refuses. Never fails: every chunk gets an answer. Blocking.
    pub fn receive_chunk(&self, device: &str, chunk: &UploadChunk) -> UploadAck {
        let (received_bytes, error, retry) = match self.try_receive(device, chunk) {
            Ok(held) => (held, String::new(), false),
            Err(Refusal { why, retry }) => {
                tracing::warn!(device = %device, job = %chunk.job_id, offset = chunk.offset, error = %why, retry, "upload chunk refused");
                (0, why, retry)
            }
        };
        UploadAck {
            job_id: chunk.job_id.clone(),
            sha256: chunk.sha256.clone(),
            received_bytes,
            error,
            retry,
        }
    }

    fn try_receive(&self, device: &str, chunk: &UploadChunk) -> Result<u64, Refusal> {
        let name = &chunk.job_id;
        names::id(names::NameKind::Job, name).map_err(|e| e.0)?;
        if chunk.sha256.len() != 64
            || !chunk
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Refusal::from(format!(
                "the output's sha256 must be 64 lower-case hex digits, not {:?}",
                chunk.sha256
            )));
        }
        if chunk.size_bytes > MAX_OUTPUT_BYTES {
            return Err(Refusal::from(format!(
                "an output of {} bytes is more than the {MAX_OUTPUT_BYTES} the hub takes",
                chunk.size_bytes
            )));
        }
        if chunk.data.len() > MAX_UPLOAD_CHUNK_BYTES {
            return Err(Refusal::from(format!(
                "a chunk holds at most {MAX_UPLOAD_CHUNK_BYTES} bytes; this one holds {}",
                chunk.data.len()
            )));
        }
        let end = chunk.offset.checked_add(chunk.data.len() as u64);
        if end.is_none_or(|end| end > chunk.size_bytes) {
            return Err(Refusal::from(format!(
                "the chunk at offset {} ({} bytes) ends past the output's size of {} bytes",
                chunk.offset,
                chunk.data.len(),
                chunk.size_bytes
            )));
        }
        let job = self
            .store
            .find(name)
            .map_err(|e| Refusal::later(format!("the hub cannot read job {name}: {e}")))?
            .ok_or_else(|| format!("job {name} does not exist"))?;
        if job.device_id != device {
            return Err(Refusal::from(format!(
                "job {name} does not run on device {device}"
            )));
        }
        if job.state.is_terminal() {
            // A device that missed the final acknowledgement learns that it is done.
            return match &job.output {
                Some(output)
                    if job.state == JobState::Succeeded
                        && output.sha256 == chunk.sha256
                        && output.size_bytes == chunk.size_bytes =>
                {
                    Ok(output.size_bytes)
                }
                _ => Err(Refusal::from(format!(
                    "job {name} is already {}; the hub takes no output for it",
                    job.state.name()
                ))),
            };
        }
        let held = self.partials.receive(chunk).map_err(|e| {
            Refusal::later(format!(
                "the hub cannot write the output of job {name}: {e}"
            ))
        })?;
        match held {
            Held::Partial(length) => Ok(length),
            Held::Mismatch { actual } => Err(Refusal::later(format!(
                "the output of job {name} has sha256 {actual}, not the {} announced; the hub discarded it: send it again from offset 0",
                chunk.sha256
            ))),
            Held::Complete(staged) => {
                let stored = self.store.succeed(name, staged, chunk.size_bytes);
                self.partials.discard(name);
                let job = stored.map_err(|e| {
                    Refusal::later(format!(
                        "the hub cannot store the output of job {name}: {e}"
                    ))
                })?;
                tracing::info!(job = %name, device = %device, bytes = chunk.size_bytes, records = job.records_total, errors = job.record_errors, "job succeeded");
                if let Err(err) = self.fleet.reconcile_device(device) {
                    // The job is stored; the device drops it with the next change or restart.
                    tracing::error!(device = %device, job = %name, error = %err, "recomputing a desired state after a job succeeded failed");
                }
                Ok(chunk.size_bytes)
            }
        }
    }
}

/// Why an upload chunk is refused, and whether the device should send again later.
struct Refusal {
    why: String,
    retry: bool,
}

impl Refusal {
    /// A failure of the hub's own, or a copy to send again: not the end of the upload.
    fn later(why: String) -> Self {
        Self { why, retry: true }
    }
}

/// The device's upload is over: the job is not (or no longer) its to send.
impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Self { why, retry: false }
    }
}

/// A model reference as a job names it; without a version, the latest.
fn model_ref(text: &str) -> Result<VersionRef, JobError> {
    let reference = if text.contains('/') {
        validate::version_name(text)?
    } else {
        validate::short_ref_in(Kind::Model, text)?
    };
    Ok(reference)
}
