//! Batch inference jobs (`edgeship job run`): what the hub asks a device to run over an input
//! file, and what the device says about its progress.

use serde::{Deserialize, Serialize};

use crate::workload::{BlobRef, DeployedModel, RuntimeKind, RuntimeOptions};

/// Records per inference and per saved progress point when a job names none.
pub const DEFAULT_MINI_BATCH: u32 = 100;
/// The largest mini-batch a job may ask for: a mini-batch is held in memory whole.
pub const MAX_MINI_BATCH: u32 = 10_000;

/// One job as a device runs it: a model version over every record of one input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    pub job_id: String,
    pub runtime: RuntimeKind,
    pub model: DeployedModel,
    /// The input file; its `path` is `input`.
    pub input: BlobRef,
    pub input_format: InputFormat,
    /// Records per inference and per saved progress point (1 to [`MAX_MINI_BATCH`]).
    pub mini_batch: u32,
    #[serde(default)]
    pub options: RuntimeOptions,
}

impl BatchJob {
    /// Every blob the job needs on the device: the model's files and the input.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        self.model.files.iter().chain(std::iter::once(&self.input))
    }
}

/// How an input file holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// One JSON value per line: a record's input without its batch axis, or an object keyed
    /// by input name.
    JsonLines,
    /// A NumPy `.npy` array whose first axis enumerates the records of the only input.
    Npy,
}

impl InputFormat {
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::JsonLines => "jsonl",
            InputFormat::Npy => "npy",
        }
    }

    /// From a file name: `.npy` is NumPy, `.jsonl`, `.ndjson` and `.json` are JSON lines.
    pub fn from_path(path: &str) -> Option<InputFormat> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".npy") {
            Some(InputFormat::Npy)
        } else if [".jsonl", ".ndjson", ".json"]
            .iter()
            .any(|ext| lower.ends_with(ext))
        {
            Some(InputFormat::JsonLines)
        } else {
            None
        }
    }
}

/// Where a job stands on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobPhase {
    /// Fetching the model or the input, or loading the model.
    Preparing,
    Running,
    /// Every record has its output line; the output is on its way to the hub.
    Uploading,
    /// The hub holds the whole output.
    Uploaded,
    /// The job cannot run on this device; the status says why.
    Failed,
}

impl JobPhase {
    pub fn name(self) -> &'static str {
        match self {
            JobPhase::Preparing => "Preparing",
            JobPhase::Running => "Running",
            JobPhase::Uploading => "Uploading",
            JobPhase::Uploaded => "Uploaded",
            JobPhase::Failed => "Failed",
        }
    }
}

/// A device's account of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: String,
    pub phase: JobPhase,
    /// Records with their output line written (errors included).
    pub records_done: u64,
    /// Records in the input; 0 until counted.
    pub records_total: u64,
    /// Records whose output line is an error.
    pub record_errors: u64,
    /// The finished output (JSON lines), from `Uploading` on.
    pub output: Option<BlobRef>,
    /// Why the job failed; empty otherwise.
    pub error: String,
}

impl JobStatus {
    pub fn new(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            phase: JobPhase::Preparing,
            records_done: 0,
            records_total: 0,
            record_errors: 0,
            output: None,
            error: String::new(),
        }
    }
}

/// A job of a desired state that this side could not take; the device reports it `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedJob {
    pub job_id: String,
    pub reason: String,
}
