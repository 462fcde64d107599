//! Batch inference jobs (`edgeship job run`): a registered model run over every record of an
//! input file on one device. The hub checks and stores the input (`input.rs`, `npy.rs`),
//! keeps each job's record (`store.rs`), puts live jobs in their device's desired state (the
//! fleet's reconcile asks the store), follows the device's reports, and receives the output
//! over MQTT (`uploads.rs`); [`Jobs`] (`service.rs`) ties these to the fleet for the API and
//! the link.
//!
//! Architecture invariant: a job's input and output bytes live in the registry's blob store
//! and the job holds a reference on each (`registry/holds.rs`), released when the job is
//! deleted; deleting a model never takes a job's bytes. Like `fleet/`, this module knows
//! nothing of gRPC or protobuf.

mod input;
mod service;
mod store;
mod uploads;

use edgeship_domain::{InputFormat, RuntimeKind};
use serde::{Deserialize, Serialize};

pub use input::{InputCheck, check_input};
pub use service::{Accepted, Jobs, MAX_OUTPUT_BYTES, NewJob, StagedInput};
pub use store::JobStore;
pub use uploads::{MAX_UPLOAD_CHUNK_BYTES, UploadAck, UploadChunk};

use crate::fleet::FleetError;
use crate::registry;

/// Where a job stands. The first four are live: the job is in its device's desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Created; its device has not reported it yet.
    Queued,
    Preparing,
    Running,
    /// Every record has its output line; the device uploads the output.
    Uploading,
    /// The hub holds the whole output, verified.
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "Queued",
            JobState::Preparing => "Preparing",
            JobState::Running => "Running",
            JobState::Uploading => "Uploading",
            JobState::Succeeded => "Succeeded",
            JobState::Failed => "Failed",
            JobState::Canceled => "Canceled",
        }
    }

    /// Succeeded, Failed or Canceled: nothing changes the job any more but a delete.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }
}

/// A file the hub holds for a job, in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobData {
    pub sha256: String,
    pub size_bytes: u64,
}

/// A job as stored (JSON in the `jobs` tree, by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub model_id: String,
    /// Resolved at creation (`latest` becomes a number).
    pub model_version: u32,
    pub device_id: String,
    pub runtime: RuntimeKind,
    pub input: JobData,
    pub input_format: InputFormat,
    /// As the device gets it (never 0).
    pub mini_batch: u32,
    pub state: JobState,
    pub records_done: u64,
    /// Counted at creation.
    pub records_total: u64,
    pub record_errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<JobData>,
    /// Why the job failed; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

impl Job {
    /// `NAME:VERSION` of its model.
    pub fn model(&self) -> String {
        format!("{}:{}", self.model_id, self.model_version)
    }
}

/// Everything a job operation can refuse or fail at; `api/jobs.rs` maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("stored job data is damaged: {0}")]
    DataLoss(String),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A registry error keeps its own class (a model not found, storage).
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// A fleet error keeps its own class (an unknown device, storage).
    #[error(transparent)]
    Fleet(Box<FleetError>),
}

impl From<FleetError> for JobError {
    fn from(err: FleetError) -> Self {
        JobError::Fleet(Box::new(err))
    }
}

impl JobError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| JobError::Io { context, source }
    }
}
