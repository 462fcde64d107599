//! `edgeship.v1.Jobs`: batch jobs over gRPC. The jobs themselves are `jobs/`; this adapter
//! receives a job's input into the staging folder, streams outputs back, converts records,
//! and decides the error codes.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use edgeship_domain::{InputFormat, names};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::jobs_server;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::CHUNK_SIZE;
use super::convert::timestamp;
use crate::jobs::{Job, JobData, JobError, JobState, Jobs, NewJob, StagedInput};

/// The one place that decides which gRPC code each job error becomes.
impl From<JobError> for Status {
    fn from(err: JobError) -> Self {
        let message = err.to_string();
        match err {
            JobError::InvalidArgument(_) => Status::invalid_argument(message),
            JobError::NotFound(_) => Status::not_found(message),
            JobError::AlreadyExists(_) => Status::already_exists(message),
            JobError::FailedPrecondition(_) => Status::failed_precondition(message),
            JobError::DataLoss(_) => {
                tracing::error!(error = %message, "job data damaged");
                Status::data_loss(message)
            }
            JobError::Storage(_) | JobError::Io { .. } => {
                tracing::error!(error = %message, "job storage failure");
                Status::internal(message)
            }
            JobError::Registry(err) => Status::from(err),
            JobError::Fleet(err) => Status::from(*err),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobsService {
    jobs: Arc<Jobs>,
}

impl JobsService {
    pub fn new(jobs: Arc<Jobs>) -> Self {
        Self { jobs }
    }

    /// Runs blocking job work (input checks, flushes) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Jobs) -> Result<T, JobError> + Send + 'static,
    ) -> Result<T, Status> {
        let jobs = Arc::clone(&self.jobs);
        tokio::task::spawn_blocking(move || work(&jobs))
            .await
            .map_err(|err| Status::internal(format!("job task failed: {err}")))?
            .map_err(Status::from)
    }
}

type OutputStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadJobOutputResponse, Status>> + Send>>;

#[tonic::async_trait]
impl jobs_server::Jobs for JobsService {
    async fn create_job(
        &self,
        request: Request<Streaming<pb::CreateJobRequest>>,
    ) -> Result<Response<pb::Job>, Status> {
        use pb::create_job_request::Payload;
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|m| m.payload) {
            Some(Payload::Header(header)) => header,
            Some(Payload::Chunk(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of a job must be its header",
                ));
            }
            None => return Err(Status::invalid_argument("the job stream is empty")),
        };
        let (new, size, sha256) = new_job(header)?;
        if size == 0 {
            return Err(Status::invalid_argument(format!(
                "the input of job {} is empty; a job needs at least one record",
                new.name
            )));
        }
        let max = self.jobs.max_input_bytes();
        if size > max {
            return Err(Status::invalid_argument(format!(
                "the input of job {} is {size} bytes; the hub takes at most {max}",
                new.name
            )));
        }
        let accepted = self.blocking(move |jobs| jobs.accept(&new)).await?;
        let staged = StagingFile::new(self.jobs.staging_dir());
        let input = receive_input(&mut stream, &accepted.name, &staged, size, sha256).await?;
        let job = self
            .blocking(move |jobs| jobs.create(accepted, input))
            .await?;
        drop(staged);
        Ok(Response::new(pb::Job::from(&job)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let name = job_id(&request.into_inner().name)?;
        let job = self.jobs.get(&name)?;
        Ok(Response::new(pb::Job::from(&job)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let device = request.into_inner().device_id;
        if !device.is_empty() {
            names::device_id(&device).map_err(|e| Status::invalid_argument(e.0))?;
        }
        let jobs = self
            .blocking(move |jobs| jobs.list(Some(device.as_str()).filter(|d| !d.is_empty())))
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(pb::Job::from).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let name = job_id(&request.into_inner().name)?;
        let job = self.blocking(move |jobs| jobs.cancel(&name)).await?;
        Ok(Response::new(pb::Job::from(&job)))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let name = job_id(&request.into_inner().name)?;
        let job = self.blocking(move |jobs| jobs.delete(&name)).await?;
        Ok(Response::new(pb::DeleteJobResponse { job_id: job.name }))
    }

    type DownloadJobOutputStream = OutputStream;

    async fn download_job_output(
        &self,
        request: Request<pb::DownloadJobOutputRequest>,
    ) -> Result<Response<Self::DownloadJobOutputStream>, Status> {
        let name = job_id(&request.into_inner().name)?;
        let (output, path) = self.jobs.output(&name)?;
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(status) = send_output(&name, &output, path, &sender).await {
                // The receiver may be gone (the client hung up); nothing more to do then.
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// `jobs/NAME` or `NAME`.
fn job_id(name: &str) -> Result<String, Status> {
    let id = name.strip_prefix("jobs/").unwrap_or(name);
    names::id(names::NameKind::Job, id).map_err(|e| Status::invalid_argument(e.0))?;
    Ok(id.to_owned())
}

/// The header as the jobs module takes it, with the input's announced size and digest.
fn new_job(header: pb::JobHeader) -> Result<(NewJob, u64, Option<String>), Status> {
    let input_format = match pb::JobInputFormat::try_from(header.input_format) {
        Ok(pb::JobInputFormat::Unspecified) => None,
        Ok(pb::JobInputFormat::JsonLines) => Some(InputFormat::JsonLines),
        Ok(pb::JobInputFormat::Npy) => Some(InputFormat::Npy),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "input format number {} is not known to this hub",
                header.input_format
            )));
        }
    };
    let sha256 = match header.input_sha256.as_str() {
        "" => None,
        sha if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(sha.to_ascii_lowercase())
        }
        sha => {
            return Err(Status::invalid_argument(format!(
                "input_sha256 must be 64 hex digits, got {sha:?}"
            )));
        }
    };
    let new = NewJob {
        name: header.job_id,
        model: header.model,
        device_id: header.device_id,
        input_format,
        mini_batch: header.mini_batch,
        runtime: header.runtime,
    };
    Ok((new, header.input_size_bytes, sha256))
}

/// A file in the staging folder, removed when dropped unless it moved into the blob store.
struct StagingFile(PathBuf);

static STAGED: AtomicU64 = AtomicU64::new(0);

impl StagingFile {
    fn new(dir: &std::path::Path) -> Self {
        let unique = format!(
            "job-input-{}-{}",
            std::process::id(),
            STAGED.fetch_add(1, Ordering::Relaxed)
        );
        Self(dir.join(unique))
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.0.display(), error = %err, "could not remove a staged input");
        }
    }
}

/// Writes the input's chunks to the staging file, hashing them; the stream must end with
/// exactly `size` bytes (and the digest, when one was announced).
async fn receive_input(
    stream: &mut Streaming<pb::CreateJobRequest>,
    name: &str,
    staged: &StagingFile,
    size: u64,
    expected: Option<String>,
) -> Result<StagedInput, Status> {
    use pb::create_job_request::Payload;
    let io =
        |err: std::io::Error| Status::internal(format!("staging the input of job {name}: {err}"));
    let file = tokio::fs::File::create(&staged.0).await.map_err(io)?;
    let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                return Err(Status::aborted(format!(
                    "the upload of job {name} was interrupted ({}); nothing was created",
                    status.message()
                )));
            }
        };
        match message.payload {
            Some(Payload::Chunk(bytes)) => {
                written += bytes.len() as u64;
                if written > size {
                    return Err(Status::invalid_argument(format!(
                        "the input of job {name} is larger than its announced {size} bytes"
                    )));
                }
                hasher.update(&bytes);
                writer.write_all(&bytes).await.map_err(io)?;
            }
            Some(Payload::Header(_)) => {
                return Err(Status::invalid_argument(
                    "a job's header may be sent only once, as the first message",
                ));
            }
            None => return Err(Status::invalid_argument("a job message is empty")),
        }
    }
    if written != size {
        return Err(Status::invalid_argument(format!(
            "the input of job {name} is truncated: {written} of its {size} bytes arrived; nothing was created"
        )));
    }
    let sha256 = hex::encode(hasher.finalize());
    if let Some(expected) = expected
        && expected != sha256
    {
        return Err(Status::invalid_argument(format!(
            "the input of job {name} does not match its announced sha256 (expected {expected}, got {sha256})"
        )));
    }
    writer.flush().await.map_err(io)?;
    writer.into_inner().sync_all().await.map_err(io)?;
    Ok(StagedInput {
        location: staged.0.clone(),
        sha256,
        size_bytes: size,
    })
}

/// The output's digest and size, then its bytes, re-hashed as they are read so that damage on
/// disk is reported instead of served.
async fn send_output(
    name: &str,
    output: &JobData,
    path: PathBuf,
    sender: &mpsc::Sender<Result<pb::DownloadJobOutputResponse, Status>>,
) -> Result<(), Status> {
    use pb::download_job_output_response::Payload;
    let send = |payload| async move {
        sender
            .send(Ok(pb::DownloadJobOutputResponse {
                payload: Some(payload),
            }))
            .await
            .map_err(|_| Status::cancelled("the client stopped reading"))
    };
    let mut reader = tokio::fs::File::open(&path).await.map_err(|err| {
        Status::data_loss(format!(
            "the stored output of job {name} cannot be read: {err}"
        ))
    })?;
    send(Payload::Output(pb::JobData::from(output))).await?;
    let mut hasher = Sha256::new();
    let mut remaining = output.size_bytes;
    while remaining > 0 {
        let mut chunk = vec![0; CHUNK_SIZE.min(remaining as usize)];
        reader.read_exact(&mut chunk).await.map_err(|err| {
            Status::data_loss(format!("reading the stored output of job {name}: {err}"))
        })?;
        hasher.update(&chunk);
        remaining -= chunk.len() as u64;
        send(Payload::Chunk(chunk.into())).await?;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != output.sha256 {
        let message = format!(
            "the stored output of job {name} is damaged (sha256 {actual}, expected {})",
            output.sha256
        );
        tracing::error!(job = %name, error = %message, "job output damaged");
        return Err(Status::data_loss(message));
    }
    Ok(())
}

impl From<&JobData> for pb::JobData {
    fn from(data: &JobData) -> Self {
        pb::JobData {
            sha256: data.sha256.clone(),
            size_bytes: data.size_bytes,
        }
    }
}

pub(crate) fn wire_state(state: JobState) -> pb::job::State {
    match state {
        JobState::Queued => pb::job::State::Queued,
        JobState::Preparing => pb::job::State::Preparing,
        JobState::Running => pb::job::State::Running,
        JobState::Uploading => pb::job::State::Uploading,
        JobState::Succeeded => pb::job::State::Succeeded,
        JobState::Failed => pb::job::State::Failed,
        JobState::Canceled => pb::job::State::Canceled,
    }
}

impl From<&Job> for pb::Job {
    fn from(job: &Job) -> Self {
        pb::Job {
            name: format!("jobs/{}", job.name),
            job_id: job.name.clone(),
            model_id: job.model_id.clone(),
            model_version: job.model_version,
            device_id: job.device_id.clone(),
            runtime: job.runtime.name().to_owned(),
            input_format: match job.input_format {
                InputFormat::JsonLines => pb::JobInputFormat::JsonLines,
                InputFormat::Npy => pb::JobInputFormat::Npy,
            }
            .into(),
            mini_batch: job.mini_batch,
            state: wire_state(job.state).into(),
            records_done: job.records_done,
            records_total: job.records_total,
            record_errors: job.record_errors,
            input: Some(pb::JobData::from(&job.input)),
            output: job.output.as_ref().map(pb::JobData::from),
            error: job.error.clone(),
            create_time: Some(timestamp(job.created_ms)),
            update_time: Some(timestamp(job.updated_ms)),
            finish_time: job.finished_ms.map(timestamp),
        }
    }
}
