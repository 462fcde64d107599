//! Batch inference jobs on the device (`edgeship job run`): each job of the desired state runs
//! its model over every record of its input into an output file, then uploads the output to
//! the hub. A job survives an agent restart: it resumes after its last saved mini-batch, or
//! goes on uploading from where the hub's copy ends.
//!
//! Design: the driver fetches a job's model and input like a workload's (same cache, same
//! entitlement) and then hands the desired state's jobs to [`Jobs::sync`], which starts the new
//! ones, cancels the ones no longer wanted and removes their files. Each job is a task; its
//! scoring runs on a blocking thread, one job's at a time (a device's cores serve its
//! endpoints too). Statuses live here and reach the hub in the driver's reports, which a job
//! asks for (at most a few times a second) through [`Jobs::changed`].

pub mod input;
pub mod score;
pub mod upload;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeship_domain::trust::PublicKey;
use edgeship_domain::{BatchJob, BlobRef, JobPhase, JobStatus, RejectedJob};
use edgeship_runtime::{ModelBundle, Runnable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::cache::{self, BlobCache};
use crate::link::{LinkSender, UploadAck};
use score::{JobFiles, Progress, Stopped};
use upload::Uploaded;

/// Longest wait for a scoring thread to finish its mini-batch when the agent stops.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// Least time between two progress reports of one job.
const REPORT_EVERY: Duration = Duration::from_millis(250);

type Statuses = Arc<Mutex<BTreeMap<String, JobStatus>>>;
type AckRoutes = Arc<Mutex<HashMap<String, mpsc::Sender<UploadAck>>>>;

/// What a finished output is, kept beside it so a restart does not score or hash it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Finished {
    output: BlobRef,
    progress: Progress,
}

#[derive(Debug)]
struct Running {
    job: BatchJob,
    cancelled: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// The device's jobs: their tasks, statuses and folders (`<data>/jobs/<job_id>/`).
#[derive(Debug)]
pub struct Jobs {
    root: PathBuf,
    cache: BlobCache,
    sender: LinkSender,
    statuses: Statuses,
    changed: Arc<Notify>,
    running: HashMap<String, Running>,
    routes: AckRoutes,
    /// One job scores at a time.
    scoring: Arc<Semaphore>,
    router: JoinHandle<()>,
    /// The device's signature policy, as for workloads.
    model_signers: Arc<Vec<PublicKey>>,
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.router.abort();
        for running in self.running.values() {
            running.cancelled.store(true, Ordering::Relaxed);
            running.task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// Jobs kept under `root`, sending through `sender` and hearing the hub's upload answers on
    /// `acks`.
    pub fn new(
        root: PathBuf,
        cache: BlobCache,
        sender: LinkSender,
        mut acks: mpsc::Receiver<UploadAck>,
    ) -> Self {
        let routes: AckRoutes = Arc::default();
        let router = {
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                while let Some(ack) = acks.recv().await {
                    let route = lock(&routes).get(&ack.job_id).cloned();
                    match route {
                        Some(route) => {
                            let _ = route.try_send(ack);
                        }
                        None => {
                            tracing::debug!(job = %ack.job_id, "upload answer for no upload in progress ignored")
                        }
                    }
                }
            })
        };
        Self {
            root,
            cache,
            sender,
            statuses: Arc::default(),
            changed: Arc::new(Notify::new()),
            running: HashMap::new(),
            routes,
            scoring: Arc::new(Semaphore::new(1)),
            router,
            model_signers: Arc::default(),
        }
    }

    /// Requires every job's model to be signed by one of `signers`.
    pub fn with_model_signers(mut self, signers: Vec<PublicKey>) -> Self {
        self.model_signers = Arc::new(signers);
        self
    }

    /// Notified when a job's status changed enough to report.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Whether the job has a task (scoring, uploading or done).
    pub fn is_running(&self, job_id: &str) -> bool {
        self.running.contains_key(job_id)
    }

    pub fn statuses(&self) -> Vec<JobStatus> {
        lock(&self.statuses).values().cloned().collect()
    }

    /// Makes the running jobs those of `jobs` that `ready` says have their files: starts new
    /// ones, stops and removes the rest (a job that changed under the same name starts over),
    /// and marks `rejected` ones `Failed`.
    pub fn sync(
        &mut self,
        jobs: &[BatchJob],
        rejected: &[RejectedJob],
        ready: impl Fn(&BatchJob) -> bool,
    ) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| !jobs.iter().any(|j| &j.job_id == *id && *j == r.job))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(running) = self.running.remove(&id) {
                running.cancelled.store(true, Ordering::Relaxed);
                running.task.abort();
                tracing::info!(job = %id, "job no longer desired; stopped");
            }
            lock(&self.routes).remove(&id);
        }
        {
            let mut statuses = lock(&self.statuses);
            statuses.retain(|id, _| {
                jobs.iter().any(|j| &j.job_id == id) || rejected.iter().any(|r| &r.job_id == id)
            });
            for reject in rejected {
                statuses.insert(
                    reject.job_id.clone(),
                    JobStatus {
                        phase: JobPhase::Failed,
                        error: reject.reason.clone(),
                        ..JobStatus::new(&reject.job_id)
                    },
                );
            }
        }
        self.remove_strays(jobs);
        for job in jobs {
            if self.running.contains_key(&job.job_id) || !ready(job) {
                continue;
            }
            let failed_already = lock(&self.statuses)
                .get(&job.job_id)
                .is_some_and(|s| s.phase == JobPhase::Failed);
            if failed_already {
                continue;
            }
            self.start(job.clone());
        }
        self.changed.notify_one();
    }

    /// Marks a job `Failed` (its files could not be fetched, say) without starting it.
    pub fn fail(&mut self, job_id: &str, reason: &str) {
        lock(&self.statuses).insert(
            job_id.to_owned(),
            JobStatus {
                phase: JobPhase::Failed,
                error: reason.to_owned(),
                ..JobStatus::new(job_id)
            },
        );
        self.changed.notify_one();
    }

    /// Stops every job (the agent is stopping) and waits, a few seconds at most, for a
    /// mini-batch being scored to end; the jobs' files stay for the next start.
    pub async fn stop_all(&mut self) {
        for (_, running) in self.running.drain() {
            running.cancelled.store(true, Ordering::Relaxed);
            running.task.abort();
        }
        let _ = tokio::time::timeout(STOP_WAIT, self.scoring.acquire()).await;
    }

    fn start(&mut self, job: BatchJob) {
        let files = JobFiles {
            dir: self.root.join(&job.job_id),
        };
        let (ack_tx, ack_rx) = mpsc::channel(64);
        lock(&self.routes).insert(job.job_id.clone(), ack_tx);
        let cancelled = Arc::new(AtomicBool::new(false));
        let context = JobContext {
            job: job.clone(),
            files,
            cache: self.cache.clone(),
            model_signers: Arc::clone(&self.model_signers),
            sender: self.sender.clone(),
            statuses: Arc::clone(&self.statuses),
            changed: Arc::clone(&self.changed),
            cancelled: Arc::clone(&cancelled),
            scoring: Arc::clone(&self.scoring),
        };
        tracing::info!(job = %job.job_id, model = %job.model.model_ref(), records_per_batch = job.mini_batch, "job started");
        let task = tokio::spawn(context.run(ack_rx));
        self.running.insert(
            job.job_id.clone(),
            Running {
                job,
                cancelled,
                task,
            },
        );
    }

    /// Removes the folders of jobs that are not desired (cancelled, finished, or changed while
    /// the agent was down). A job's folder records which job it holds, so a new job that
    /// reuses a name never resumes an old one's output.
    fn remove_strays(&self, jobs: &[BatchJob]) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let wanted = jobs.iter().find(|j| j.job_id == name);
            let keep = wanted.is_some_and(|job| {
                self.running.contains_key(&name) || spec_matches(&entry.path(), job)
            });
            if !keep {
                // Renamed first: a scoring thread still finishing its mini-batch writes into
                // files no one will read, never into a new job's folder.
                let trash = self
                    .root
                    .join(format!(".removed-{name}-{}", std::process::id()));
                let target = match std::fs::rename(entry.path(), &trash) {
                    Ok(()) => trash,
                    Err(_) => entry.path(),
                };
                match std::fs::remove_dir_all(&target) {
                    Ok(()) => {
                        tracing::info!(job = %name, "files of a job no longer desired removed")
                    }
                    Err(err) => {
                        tracing::warn!(job = %name, error = %err, "cannot remove a finished job's files")
                    }
                }
            }
        }
    }
}

fn spec_path(dir: &Path) -> PathBuf {
    dir.join("job.json")
}

fn spec_matches(dir: &Path, job: &BatchJob) -> bool {
    std::fs::read(spec_path(dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<BatchJob>(&bytes).ok())
        .is_some_and(|stored| stored == *job)
}

/// What one job's task needs.
struct JobContext {
    job: BatchJob,
    files: JobFiles,
    cache: BlobCache,
    model_signers: Arc<Vec<PublicKey>>,
    sender: LinkSender,
    statuses: Statuses,
    changed: Arc<Notify>,
    cancelled: Arc<AtomicBool>,
    scoring: Arc<Semaphore>,
}

impl JobContext {
    fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        let mut statuses = lock(&self.statuses);
        let status = statuses
            .entry(self.job.job_id.clone())
            .or_insert_with(|| JobStatus::new(&self.job.job_id));
        change(status);
        drop(statuses);
        self.changed.notify_one();
    }

    async fn run(self, mut acks: mpsc::Receiver<UploadAck>) {
        let finished = match self.finished() {
            Some(finished) => finished,
            None => match self.produce().await {
                Ok(finished) => finished,
                Err(Stopped::Cancelled) => return,
                Err(Stopped::Failed(why)) => {
                    tracing::warn!(job = %self.job.job_id, error = %why, "job failed");
                    self.update(|s| {
                        s.phase = JobPhase::Failed;
                        s.error = why;
                    });
                    return;
                }
            },
        };
        self.update(|s| {
            s.phase = JobPhase::Uploading;
            s.records_done = finished.progress.next.record;
            s.records_total = finished.progress.records_total;
            s.record_errors = finished.progress.record_errors;
            s.output = Some(finished.output.clone());
        });
        let uploaded = upload::upload(
            &self.sender,
            &self.job.job_id,
            &self.files.output(),
            &finished.output,
            &mut acks,
        )
        .await;
        match uploaded {
            Ok(Uploaded::Done) => {
                tracing::info!(job = %self.job.job_id, bytes = finished.output.size_bytes, "job output uploaded");
                self.update(|s| s.phase = JobPhase::Uploaded);
            }
            Ok(Uploaded::Refused(why)) => {
                tracing::warn!(job = %self.job.job_id, error = %why, "the hub refused the job's output");
                self.update(|s| s.error = format!("the hub refused the output: {why}"));
            }
            Err(why) => {
                if !self.cancelled.load(Ordering::Relaxed) {
                    self.update(|s| {
                        s.phase = JobPhase::Failed;
                        s.error = format!("uploading the output: {why}");
                    });
                }
            }
        }
    }

    /// The output of an earlier run that finished scoring, if its files are intact.
    fn finished(&self) -> Option<Finished> {
        let bytes = std::fs::read(self.files.dir.join("finished.json")).ok()?;
        let finished: Finished = serde_json::from_slice(&bytes).ok()?;
        let length = std::fs::metadata(self.files.output()).ok()?.len();
        (spec_matches(&self.files.dir, &self.job) && length == finished.output.size_bytes)
            .then_some(finished)
    }

    /// Loads the model and scores every record into the output, then describes it.
    async fn produce(&self) -> Result<Finished, Stopped> {
        let failed = |why: String| Stopped::Failed(why);
        self.update(|s| s.phase = JobPhase::Preparing);
        self.prepare_folder().map_err(failed)?;
        let model = self.load().await?;
        let turn = Arc::clone(&self.scoring)
            .acquire_owned()
            .await
            .map_err(|_| Stopped::Cancelled)?;
        self.update(|s| s.phase = JobPhase::Running);
        let (job, files, cancelled) = (
            self.job.clone(),
            self.files.clone(),
            Arc::clone(&self.cancelled),
        );
        let input = self.cache.path(&self.job.input.sha256);
        let statuses = Arc::clone(&self.statuses);
        let changed = Arc::clone(&self.changed);
        let started = Instant::now();
        let progress = tokio::task::spawn_blocking(move || {
            // The turn is the thread's, not the task's: an aborted task leaves it held until
            // the mini-batch in hand is saved (`stop_all` waits for it).
            let _turn = turn;
            let mut last = Instant::now() - REPORT_EVERY;
            let mut report = |p: &Progress| {
                if let Some(status) = lock(&statuses).get_mut(&job.job_id) {
                    status.records_done = p.next.record;
                    status.records_total = p.records_total;
                    status.record_errors = p.record_errors;
                }
                if last.elapsed() >= REPORT_EVERY {
                    last = Instant::now();
                    changed.notify_one();
                }
            };
            score::score(
                &job,
                model.as_ref(),
                &input,
                &files,
                &cancelled,
                &mut report,
            )
        })
        .await
        .map_err(|e| failed(format!("the scoring task ended: {e}")))??;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(job = %self.job.job_id, records = progress.next.record, errors = progress.record_errors, seconds, "job scored every record");
        let output = self.files.output();
        let digest = tokio::task::spawn_blocking(move || file_sha256(&output))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(failed)?;
        let finished = Finished {
            output: BlobRef {
                path: "output.jsonl".into(),
                sha256: digest,
                size_bytes: progress.output_len,
            },
            progress,
        };
        let bytes = serde_json::to_vec(&finished).unwrap_or_default();
        std::fs::write(self.files.dir.join("finished.json"), bytes)
            .map_err(|e| failed(format!("recording the finished output: {e}")))?;
        Ok(finished)
    }

    /// The job's folder, holding this job: an older job's files under the same name go.
    fn prepare_folder(&self) -> Result<(), String> {
        let dir = &self.files.dir;
        if dir.exists() && !spec_matches(dir, &self.job) {
            std::fs::remove_dir_all(dir)
                .map_err(|e| format!("clearing an older job's files: {e}"))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating the job's folder: {e}"))?;
        if !spec_path(dir).exists() {
            let bytes = serde_json::to_vec(&self.job).unwrap_or_default();
            std::fs::write(spec_path(dir), bytes).map_err(|e| format!("recording the job: {e}"))?;
        }
        Ok(())
    }

    async fn load(&self) -> Result<Arc<dyn Runnable>, Stopped> {
        let failed = |why: String| Stopped::Failed(why);
        self.job
            .model
            .check_signed(&self.model_signers)
            .map_err(failed)?;
        let runtime =
            edgeship_runtime::by_kind(self.job.runtime).map_err(|e| failed(e.to_string()))?;
        let folder = self.files.dir.join("model");
        let files: Vec<(String, String)> = self
            .job
            .model
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect();
        cache::materialize(&self.cache, &folder, &files)
            .map_err(|e| failed(format!("placing the model's files: {e}")))?;
        let bundle = ModelBundle {
            entry: folder.join(&self.job.model.entry_file),
            inputs: self.job.model.inputs.clone(),
            outputs: self.job.model.outputs.clone(),
            device: self.job.options.opencl_device.clone(),
            precision: self.job.options.opencl_precision,
        };
        tokio::task::spawn_blocking(move || runtime.prepare(&bundle))
            .await
            .map_err(|e| failed(format!("the loading task ended: {e}")))?
            .map_err(|e| failed(e.to_string()))
    }
}

fn file_sha256(path: &Path) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("reading the output: {e}"))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("reading the output: {e}"))?;
    Ok(hex::encode(hasher.finalize()))
}
