//! Batch jobs (`DesiredState.jobs`) and their statuses (`ReportedState.jobs`) to and from the
//! domain's types. A job that does not convert is rejected alone, with the reason, and the
//! rest of its desired state still applies.

use edgeship_proto::v1 as pb;

use super::WireError;
use super::workload::{runtime_kind, runtime_options, wire_options, wire_runtime};
use crate::job::{BatchJob, InputFormat, JobPhase, JobStatus, MAX_MINI_BATCH};
use crate::names;
use crate::workload::{BlobRef, DeployedModel};

impl From<&BatchJob> for pb::BatchJob {
    fn from(job: &BatchJob) -> Self {
        pb::BatchJob {
            job_id: job.job_id.clone(),
            runtime: wire_runtime(job.runtime).into(),
            model: Some(pb::DeployedModel::from(&job.model)),
            input: Some(pb::BlobRef::from(&job.input)),
            input_format: match job.input_format {
                InputFormat::JsonLines => pb::JobInputFormat::JsonLines,
                InputFormat::Npy => pb::JobInputFormat::Npy,
            }
            .into(),
            mini_batch: job.mini_batch,
            options: Some(wire_options(&job.options)),
        }
    }
}

impl TryFrom<pb::BatchJob> for BatchJob {
    type Error = WireError;

    fn try_from(job: pb::BatchJob) -> Result<Self, WireError> {
        names::id(names::NameKind::Job, &job.job_id)?;
        let model = job
            .model
            .ok_or_else(|| WireError::Invalid(format!("job {} names no model", job.job_id)))?;
        let input = job
            .input
            .ok_or_else(|| WireError::Invalid(format!("job {} names no input", job.job_id)))?;
        let input_format = match pb::JobInputFormat::try_from(job.input_format) {
            Ok(pb::JobInputFormat::JsonLines) => InputFormat::JsonLines,
            Ok(pb::JobInputFormat::Npy) => InputFormat::Npy,
            Ok(pb::JobInputFormat::Unspecified) => {
                return Err(WireError::Invalid(format!(
                    "job {} names no input format",
                    job.job_id
                )));
            }
            Err(_) => {
                return Err(WireError::Unsupported(format!(
                    "input format number {} is not known to this agent (version {})",
                    job.input_format,
                    env!("CARGO_PKG_VERSION")
                )));
            }
        };
        let mini_batch = match job.mini_batch {
            0 => crate::job::DEFAULT_MINI_BATCH,
            n if n > MAX_MINI_BATCH => {
                return Err(WireError::Invalid(format!(
                    "job {}: a mini-batch of {n} records is more than the {MAX_MINI_BATCH} allowed",
                    job.job_id
                )));
            }
            n => n,
        };
        Ok(BatchJob {
            runtime: runtime_kind(job.runtime)?,
            model: DeployedModel::try_from(model)?,
            input: BlobRef::try_from(input)?,
            input_format,
            mini_batch,
            options: runtime_options(job.options.unwrap_or_default())?,
            job_id: job.job_id,
        })
    }
}

fn wire_phase(phase: JobPhase) -> pb::JobState {
    match phase {
        JobPhase::Preparing => pb::JobState::Preparing,
        JobPhase::Running => pb::JobState::Running,
        JobPhase::Uploading => pb::JobState::Uploading,
        JobPhase::Uploaded => pb::JobState::Uploaded,
        JobPhase::Failed => pb::JobState::Failed,
    }
}

impl From<&JobStatus> for pb::JobStatus {
    fn from(status: &JobStatus) -> Self {
        pb::JobStatus {
            job_id: status.job_id.clone(),
            state: wire_phase(status.phase).into(),
            records_done: status.records_done,
            records_total: status.records_total,
            record_errors: status.record_errors,
            output: status.output.as_ref().map(pb::BlobRef::from),
            error: status.error.clone(),
        }
    }
}

/// A device's account of a job is checked like any report: a known phase, counts that add up,
/// an output from `Uploading` on.
impl TryFrom<pb::JobStatus> for JobStatus {
    type Error = WireError;

    fn try_from(status: pb::JobStatus) -> Result<Self, WireError> {
        names::id(names::NameKind::Job, &status.job_id)?;
        let phase = match pb::JobState::try_from(status.state) {
            Ok(pb::JobState::Preparing) => JobPhase::Preparing,
            Ok(pb::JobState::Running) => JobPhase::Running,
            Ok(pb::JobState::Uploading) => JobPhase::Uploading,
            Ok(pb::JobState::Uploaded) => JobPhase::Uploaded,
            Ok(pb::JobState::Failed) => JobPhase::Failed,
            Ok(pb::JobState::Unspecified) | Err(_) => {
                return Err(WireError::Invalid(format!(
                    "job {}: state number {} is not known",
                    status.job_id, status.state
                )));
            }
        };
        let total_known = status.records_total > 0;
        if status.record_errors > status.records_done
            || (total_known && status.records_done > status.records_total)
        {
            return Err(WireError::Invalid(format!(
                "job {}: the record counts do not add up ({} done of {}, {} errors)",
                status.job_id, status.records_done, status.records_total, status.record_errors
            )));
        }
        let output = status.output.map(BlobRef::try_from).transpose()?;
        if matches!(phase, JobPhase::Uploading | JobPhase::Uploaded) && output.is_none() {
            return Err(WireError::Invalid(format!(
                "job {} is {} but names no output",
                status.job_id,
                phase.name()
            )));
        }
        Ok(JobStatus {
            job_id: status.job_id,
            phase,
            records_done: status.records_done,
            records_total: status.records_total,
            record_errors: status.record_errors,
            output,
            error: status.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn job() -> BatchJob {
        BatchJob {
            input_format: InputFormat::Npy,
            mini_batch: 50,
            ..fixtures::batch_job("score-all", 7)
        }
    }

    #[test]
    fn a_job_crosses_the_wire_and_bad_ones_say_why() {
        let job = job();
        let wire = pb::BatchJob::from(&job);
        assert_eq!(BatchJob::try_from(wire.clone()), Ok(job));
        let mut huge = wire.clone();
        huge.mini_batch = MAX_MINI_BATCH + 1;
        let err = BatchJob::try_from(huge).expect_err("too big").to_string();
        assert!(err.contains("mini-batch of 10001"), "{err}");
        let mut newer = wire.clone();
        newer.input_format = 9;
        assert!(matches!(
            BatchJob::try_from(newer),
            Err(WireError::Unsupported(_))
        ));
        let mut default = wire;
        default.mini_batch = 0;
        let taken = BatchJob::try_from(default).expect("valid");
        assert_eq!(taken.mini_batch, crate::job::DEFAULT_MINI_BATCH);
    }

    #[test]
    fn statuses_cross_the_wire_and_impossible_counts_are_refused() {
        let status = JobStatus {
            records_done: 10,
            records_total: 20,
            record_errors: 1,
            phase: JobPhase::Running,
            ..JobStatus::new("score-all")
        };
        let wire = pb::JobStatus::from(&status);
        assert_eq!(JobStatus::try_from(wire.clone()), Ok(status));
        let mut more_errors = wire.clone();
        more_errors.record_errors = 11;
        assert!(JobStatus::try_from(more_errors).is_err());
        let mut no_output = wire;
        no_output.state = pb::JobState::Uploading.into();
        let err = JobStatus::try_from(no_output)
            .expect_err("no output")
            .to_string();
        assert!(err.contains("names no output"), "{err}");
    }
}
