//! Scoring a job's records in mini-batches into its output file, saving progress after every
//! mini-batch so that a killed agent resumes after the last one saved, with every record in
//! the output exactly once.
//!
//! Design: the output is JSON lines, one per record in input order, `{"record": i, "output":
//! …}` or `{"record": i, "error": "…"}` (a record's error is not the job's). After a
//! mini-batch its lines are written out, then `progress.json` is overwritten in one small
//! write: it names the output's length at that point and where the input's next record
//! starts. On
//! resume the output is cut back to that length, so lines written after the last save (a
//! kill mid-mini-batch) are dropped and scored again. The output is synced at least once a
//! second (and at the end); a power cut that leaves the saved progress ahead of the lines on
//! disk is seen at resume (the output is shorter than the progress says) and the job starts
//! over rather than skip records.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgeship_domain::BatchJob;
use edgeship_runtime::{Runnable, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::input::{Position, Record, Source};
use crate::serve::batch::{has_batch_axis, split_outputs};
use crate::serve::json::outputs_to_json;

/// Longest time output lines stay in the page cache only.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What `progress.json` holds: where the job stands after its last saved mini-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The next record to score, and its byte offset in the input.
    pub next: Position,
    /// The output's length after the last saved mini-batch's lines.
    pub output_len: u64,
    pub record_errors: u64,
    pub records_total: u64,
}

/// Why scoring stopped short.
#[derive(Debug)]
pub enum Stopped {
    /// The job is no longer wanted (cancelled, or the agent is stopping).
    Cancelled,
    /// The job cannot go on: the input is unreadable, the disk refuses writes.
    Failed(String),
}

/// A job's folder and the files in it.
#[derive(Debug, Clone)]
pub struct JobFiles {
    pub dir: PathBuf,
}

impl JobFiles {
    pub fn output(&self) -> PathBuf {
        self.dir.join("output.jsonl")
    }
    fn progress(&self) -> PathBuf {
        self.dir.join("progress.json")
    }

    /// The last saved progress, or the start when there is none (or it cannot be read:
    /// starting over loses time, never records).
    pub fn load_progress(&self) -> Progress {
        fs::read(self.progress())
            .ok()
            .and_then(|bytes| serde_json::from_slice(bytes.trim_ascii()).ok())
            .unwrap_or_default()
    }

    fn open_progress(&self) -> Result<File, String> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.progress())
            .map_err(|e| format!("opening the job's progress: {e}"))
    }
}

/// A saved progress record's size: one write well inside a disk sector, so a save is whole
/// or not at all, and no rename (which costs a flush of the file's blocks on ext4, and took
/// half of a small model's scoring time).
const PROGRESS_BYTES: usize = 256;

fn save_progress(file: &File, progress: &Progress) -> Result<(), String> {
    let mut bytes = serde_json::to_vec(progress).map_err(|e| e.to_string())?;
    bytes.resize(PROGRESS_BYTES - 1, b' ');
    bytes.push(b'\n');
    file.write_all_at(&bytes, 0)
        .map_err(|e| format!("saving the job's progress: {e}"))
}

/// Scores every record from the last saved progress on; `report` hears the progress after
/// each mini-batch. Returns the final progress (every record has its line).
pub fn score(
    job: &BatchJob,
    model: &dyn Runnable,
    input: &Path,
    files: &JobFiles,
    cancelled: &AtomicBool,
    report: &mut dyn FnMut(&Progress),
) -> Result<Progress, Stopped> {
    let failed = |why: String| Stopped::Failed(why);
    let mut progress = files.load_progress();
    let output = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(files.output())
        .map_err(|e| failed(format!("opening the output: {e}")))?;
    let length = output
        .metadata()
        .map_err(|e| failed(format!("reading the output: {e}")))?
        .len();
    if length < progress.output_len {
        tracing::warn!(job = %job.job_id, saved = progress.output_len, found = length, "the output is shorter than its saved progress says; starting the job over");
        progress = Progress::default();
    }
    // Lines past the last save belong to a mini-batch that did not finish: it runs again.
    output
        .set_len(progress.output_len)
        .map_err(|e| failed(format!("trimming the output: {e}")))?;
    let mut source =
        Source::open(input, job.input_format, model.inputs(), progress.next).map_err(failed)?;
    let progress_file = files.open_progress().map_err(failed)?;
    progress.records_total = source.total();
    report(&progress);
    let mut writer = BufWriter::with_capacity(1 << 16, &output);
    use std::io::Seek;
    writer
        .seek(std::io::SeekFrom::Start(progress.output_len))
        .map_err(|e| failed(format!("positioning the output: {e}")))?;
    let batchable = has_batch_axis(model.inputs(), model.outputs());
    let mut last_sync = Instant::now();
    loop {
        if cancelled.load(Ordering::Relaxed) {
            return Err(Stopped::Cancelled);
        }
        let records = source
            .next_records(job.mini_batch as usize)
            .map_err(failed)?;
        if records.is_empty() {
            break;
        }
        let mut written = 0u64;
        for (index, outcome) in score_records(model, records, batchable) {
            let line = match outcome {
                Ok(output) => format!("{{\"record\":{index},\"output\":{output}}}\n"),
                Err(error) => {
                    progress.record_errors += 1;
                    format!("{{\"record\":{index},\"error\":{}}}\n", Value::from(error))
                }
            };
            writer
                .write_all(line.as_bytes())
                .map_err(|e| failed(format!("writing the output: {e}")))?;
            written += line.len() as u64;
        }
        writer
            .flush()
            .map_err(|e| failed(format!("writing the output: {e}")))?;
        if last_sync.elapsed() >= SYNC_INTERVAL {
            sync(&output)?;
            last_sync = Instant::now();
        }
        progress.output_len += written;
        progress.next = source.position();
        save_progress(&progress_file, &progress).map_err(failed)?;
        report(&progress);
    }
    sync(&output)?;
    save_progress(&progress_file, &progress).map_err(failed)?;
    Ok(progress)
}

fn sync(output: &File) -> Result<(), Stopped> {
    output
        .sync_data()
        .map_err(|e| Stopped::Failed(format!("syncing the output: {e}")))
}

/// Each record's outputs as JSON (without the batch axis), or its error, in input order. A
/// mini-batch of records with the same shapes runs as one inference when the model has a
/// batch axis; if that inference fails, its records run one by one, so one bad record fails
/// alone.
fn score_records(
    model: &dyn Runnable,
    records: Vec<Record>,
    batchable: bool,
) -> Vec<(u64, Result<Value, String>)> {
    let mut results: Vec<(u64, Result<Value, String>)> = Vec::with_capacity(records.len());
    let mut valid: Vec<(u64, Vec<Tensor>)> = Vec::new();
    for (index, record) in records {
        match record {
            Ok(inputs) => valid.push((index, inputs)),
            Err(error) => results.push((index, Err(error))),
        }
    }
    let same_shapes = valid.windows(2).all(|pair| {
        pair[0]
            .1
            .iter()
            .zip(&pair[1].1)
            .all(|(a, b)| a.shape == b.shape && a.data.element_type() == b.data.element_type())
    });
    let together = if batchable && same_shapes && valid.len() > 1 {
        run_together(model, &valid)
    } else {
        None
    };
    match together {
        Some(outputs) => {
            for ((index, _), output) in valid.iter().zip(outputs) {
                results.push((*index, Ok(output)));
            }
        }
        None => {
            for (index, inputs) in valid {
                results.push((index, run_one(model, inputs)));
            }
        }
    }
    results.sort_by_key(|(index, _)| *index);
    results
}

/// One inference over every record; `None` when it fails (the caller runs them one by one).
fn run_together(model: &dyn Runnable, records: &[(u64, Vec<Tensor>)]) -> Option<Vec<Value>> {
    let columns = (0..records[0].1.len())
        .map(|i| Tensor::concat_rows(records.iter().map(|(_, r)| r[i].clone()).collect()))
        .collect::<Option<Vec<Tensor>>>()?;
    let outputs = guarded_run(model, columns).ok()?;
    let rows = vec![1; records.len()];
    let parts = split_outputs(outputs, &rows).ok()?;
    Some(parts.into_iter().map(|part| render(model, part)).collect())
}

fn run_one(model: &dyn Runnable, inputs: Vec<Tensor>) -> Result<Value, String> {
    guarded_run(model, inputs)
        .map(|outputs| render(model, outputs))
        .map_err(|e| e.to_string())
}

/// One runtime call; a panic fails the record, never the agent.
fn guarded_run(
    model: &dyn Runnable,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, edgeship_runtime::RuntimeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(inputs))).unwrap_or_else(
        |_| {
            Err(edgeship_runtime::RuntimeError::Run(
                "the runtime panicked".into(),
            ))
        },
    )
}

/// A record's outputs as the endpoint renders them, less the batch axis of one.
fn render(model: &dyn Runnable, mut outputs: Vec<Tensor>) -> Value {
    for output in &mut outputs {
        if output.shape.first() == Some(&1) {
            output.shape.remove(0);
        }
    }
    outputs_to_json(model.outputs(), &outputs)
}
