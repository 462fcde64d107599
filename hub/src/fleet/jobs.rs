//! Batch jobs in desired states: every live job of a device is listed in its desired state,
//! with its model version resolved as a workload's is; a job whose version is gone (or can no
//! longer run) ends Failed with the reason instead. Devices' reports about their jobs arrive
//! here with the rest of their reports.

use edgeship_domain::{BatchJob, BlobRef, JobStatus, RuntimeOptions};

use super::{Fleet, FleetError, desired};
use crate::jobs::{Job, JobState, JobStore};
use crate::now_ms;
use crate::registry::{self, VersionRef, VersionSelector};

/// The file name a job's input has on the device.
pub const JOB_INPUT_PATH: &str = "input";

impl Fleet {
    /// The job records (they live in the fleet's database).
    pub fn jobs(&self) -> &std::sync::Arc<JobStore> {
        &self.jobs
    }

    /// The model registry, for checks outside the fleet (jobs).
    pub fn registry(&self) -> &registry::Registry {
        &self.registry
    }

    /// Where uploads are staged before they move into the blob store.
    pub fn staging_dir(&self) -> std::path::PathBuf {
        self.registry.staging_dir()
    }

    /// Recomputes one device's desired state (a job of it started or ended).
    pub fn reconcile_device(&self, id: &str) -> Result<(), FleetError> {
        let _guard = self.guard();
        self.reconcile_locked(Some(id))
    }

    /// After versions of a model were deleted: devices with live jobs on them get their jobs
    /// failed and their desired states recomputed.
    pub fn on_model_deleted(&self, model_id: &str) -> Result<(), FleetError> {
        let devices = self.jobs.devices_running(model_id, None)?;
        let _guard = self.guard();
        for device in devices {
            self.reconcile_locked(Some(&device))?;
        }
        Ok(())
    }

    /// The jobs `device` must run; a job whose model version cannot run any more ends Failed.
    pub(super) fn desired_jobs(&self, device: &str) -> Result<Vec<BatchJob>, FleetError> {
        let mut jobs = Vec::new();
        for job in self.jobs.live_for_device(device)? {
            match self.batch_job(&job)? {
                Ok(batch) => jobs.push(batch),
                Err(reason) => {
                    tracing::info!(job = %job.name, device = %device, %reason, "job failed before it ran");
                    self.jobs.update(&job.name, true, |job| {
                        job.state = JobState::Failed;
                        job.error = reason;
                        job.finished_ms = Some(now_ms());
                        Ok(())
                    })?;
                }
            }
        }
        Ok(jobs)
    }

    /// A job as its device gets it, or why it cannot run any more.
    fn batch_job(&self, job: &Job) -> Result<Result<BatchJob, String>, FleetError> {
        let reference = VersionRef {
            model_id: job.model_id.clone(),
            version: VersionSelector::Exact(job.model_version),
        };
        let model = match self.registry.get(&reference) {
            Ok(model) => model,
            Err(registry::Error::NotFound(_)) => {
                return Ok(Err(format!(
                    "model {} was deleted before the job ended",
                    job.model()
                )));
            }
            Err(err) => return Err(err.into()),
        };
        Ok(
            desired::deployed_model(&model, 0, &[]).map(|model| BatchJob {
                job_id: job.name.clone(),
                runtime: job.runtime,
                model,
                input: BlobRef {
                    path: JOB_INPUT_PATH.to_owned(),
                    sha256: job.input.sha256.clone(),
                    size_bytes: job.input.size_bytes,
                },
                input_format: job.input_format,
                mini_batch: job.mini_batch,
                options: RuntimeOptions::default(),
            }),
        )
    }

    /// Applies what `device` reports about its jobs; says whether one of them ended (failed).
    pub(super) fn apply_job_reports(
        &self,
        device: &str,
        statuses: &[JobStatus],
    ) -> Result<bool, FleetError> {
        let mut ended = false;
        for status in statuses {
            ended |= self.jobs.apply_report(device, status)?;
        }
        Ok(ended)
    }
}
