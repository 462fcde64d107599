//! A job as `job status` and `job list` print it: the `-o json` shape documented in
//! `docs/cli-json.md`, and its table and fields.

use edgeship_proto::v1 as pb;
use serde::Serialize;

use crate::cli::output::{self, field, table};

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// `jobs/{job_id}`.
    pub name: String,
    pub job_id: String,
    /// `NAME:VERSION`, resolved at creation.
    pub model: String,
    pub device: String,
    pub runtime: String,
    /// `jsonl` or `npy`.
    pub input_format: String,
    pub mini_batch: u32,
    /// Queued, Preparing, Running, Uploading, Succeeded, Failed or Canceled.
    pub state: String,
    pub records_done: u64,
    pub records_total: u64,
    pub record_errors: u64,
    pub input: DataView,
    /// `null` until Succeeded.
    pub output: Option<DataView>,
    /// Why it failed; `null` otherwise.
    pub error: Option<String>,
    pub create_time: String,
    pub update_time: String,
    /// `null` while the job is live.
    pub finish_time: Option<String>,
    /// From creation to the end (or to now, while live), by the hub's clock.
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataView {
    pub sha256: String,
    pub size_bytes: u64,
}

pub fn state_name(state: pb::job::State) -> &'static str {
    match state {
        pb::job::State::Unspecified => "Unknown",
        pb::job::State::Queued => "Queued",
        pb::job::State::Preparing => "Preparing",
        pb::job::State::Running => "Running",
        pb::job::State::Uploading => "Uploading",
        pb::job::State::Succeeded => "Succeeded",
        pb::job::State::Failed => "Failed",
        pb::job::State::Canceled => "Canceled",
    }
}

fn millis(time: Option<prost_types::Timestamp>) -> Option<i64> {
    time.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

impl From<pb::Job> for JobView {
    fn from(job: pb::Job) -> Self {
        let created = millis(job.create_time).unwrap_or_default();
        let finished = millis(job.finish_time);
        let end = finished.unwrap_or_else(crate::now_ms);
        let data = |d: pb::JobData| DataView {
            sha256: d.sha256,
            size_bytes: d.size_bytes,
        };
        let input_format = match job.input_format() {
            pb::JobInputFormat::Npy => "npy",
            pb::JobInputFormat::JsonLines => "jsonl",
            pb::JobInputFormat::Unspecified => "unknown",
        };
        let state = state_name(job.state());
        Self {
            model: format!("{}:{}", job.model_id, job.model_version),
            device: job.device_id,
            runtime: job.runtime,
            input_format: input_format.to_owned(),
            mini_batch: job.mini_batch,
            state: state.to_owned(),
            records_done: job.records_done,
            records_total: job.records_total,
            record_errors: job.record_errors,
            input: data(job.input.unwrap_or_default()),
            output: job.output.map(data),
            error: Some(job.error).filter(|e| !e.is_empty()),
            create_time: output::rfc3339(created),
            update_time: output::rfc3339(millis(job.update_time).unwrap_or_default()),
            finish_time: finished.map(output::rfc3339),
            seconds: (end - created).max(0) as f64 / 1000.0,
            name: job.name,
            job_id: job.job_id,
        }
    }
}

impl JobView {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "Succeeded" | "Failed" | "Canceled")
    }

    /// Records per second over the job's life so far.
    pub fn records_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records_done as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// `Running 120/300 records, 2 errors, 40.0 records/s`.
    pub fn progress_line(&self) -> String {
        format!(
            "{} {}/{} records, {} error{}, {:.1} records/s",
            self.state,
            self.records_done,
            self.records_total,
            self.record_errors,
            if self.record_errors == 1 { "" } else { "s" },
            self.records_per_second()
        )
    }

    /// Every field, one per line.
    pub fn details(&self) -> String {
        let mut out = String::new();
        let mut field = |name: &str, value: &str| field(&mut out, 13, name, value);
        field("job", &self.job_id);
        field("state", &self.state);
        field("device", &self.device);
        field("model", &self.model);
        field("runtime", &self.runtime);
        field(
            "input",
            &format!(
                "{} ({}, {})",
                self.input_format,
                output::size(self.input.size_bytes),
                self.input.sha256
            ),
        );
        field("mini-batch", &self.mini_batch.to_string());
        field(
            "records",
            &format!("{}/{}", self.records_done, self.records_total),
        );
        field("errors", &self.record_errors.to_string());
        if let Some(out_data) = &self.output {
            field(
                "output",
                &format!(
                    "{} ({})",
                    output::size(out_data.size_bytes),
                    out_data.sha256
                ),
            );
        }
        if let Some(error) = &self.error {
            field("error", error);
        }
        field("created", &self.create_time);
        if let Some(finished) = &self.finish_time {
            field("finished", finished);
        }
        field("seconds", &format!("{:.1}", self.seconds));
        out
    }
}

/// Aligned columns: NAME DEVICE MODEL STATE RECORDS ERRORS CREATED.
pub fn jobs_table(jobs: &[JobView]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.device.clone(),
                j.model.clone(),
                j.state.clone(),
                format!("{}/{}", j.records_done, j.records_total),
                j.record_errors.to_string(),
                j.create_time.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "DEVICE", "MODEL", "STATE", "RECORDS", "ERRORS", "CREATED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_shows_its_progress_and_no_output() {
        let job = pb::Job {
            name: "jobs/score".into(),
            job_id: "score".into(),
            model_id: "diabetes".into(),
            model_version: 2,
            device_id: "edge-1".into(),
            runtime: "tract".into(),
            input_format: pb::JobInputFormat::JsonLines.into(),
            mini_batch: 100,
            state: pb::job::State::Running.into(),
            records_done: 120,
            records_total: 300,
            record_errors: 1,
            input: Some(pb::JobData {
                sha256: "ab".repeat(32),
                size_bytes: 2048,
            }),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let view = JobView::from(job);
        assert_eq!(view.model, "diabetes:2");
        assert_eq!(view.output, None);
        assert_eq!(view.finish_time, None);
        assert!(!view.is_terminal());
        insta::assert_snapshot!(jobs_table(&[view]), @r"
        NAME   DEVICE  MODEL       STATE    RECORDS  ERRORS  CREATED
        score  edge-1  diabetes:2  Running  120/300  1       2027-01-15T08:00:00Z
        ");
    }
}
