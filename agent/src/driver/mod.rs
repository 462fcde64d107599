//! The agent's driver: the event loop that turns desired states into running workloads.
//!
//! It reacts to one closed set of events (a desired state, a retry coming due, a
//! (re)connect, the report ticker, the health ticker, shutdown). For each desired state it
//! asks the pure reconciler (`reconcile::plan`) for the steps, and executes them with `fetch`
//! (downloads) and `stage` (staging, self-test, switch, or a retune of weights and health gate
//! in place). Reports go to the link's latest-wins slot, so nothing here waits on the broker.
//! The health ticker judges each serving workload's window against its gate and reports at
//! once when one turns `Unhealthy` or recovers (`status.rs`).
//!
//! Design: the desired state arrives on a `watch` (only the newest matters). A newer one that
//! arrives during a download supersedes the one being applied at once (partial files stay,
//! resumable); one arriving during a load or self-test is taken up right after it. A download
//! that fails for a transient reason is retried with backoff and jitter, the workload staying
//! `Transitioning` with the reason; a failure that retrying will not fix is `Failed`, is kept
//! out until the hub asks for something else, and the previous version keeps serving.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

mod apply;
mod jobs;
mod logs;
mod profile;
mod status;

use anyhow::Context;
use edgeship_domain::{Birth, DesiredState, ServiceState, Workload, WorkloadStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::BlobCache;
use crate::config::AgentConfig;
use crate::device::birth;
use crate::fetch::{Chunk, FetchError, Fetcher};
use crate::link::{self, Link, LinkSender};
use crate::reconcile::{self, Action, Slot};
use crate::stage::Stage;
use crate::state::{PersistedState, StateStore};
pub use crate::view::{AgentView, WorkloadView};

/// How often the agent reports even when nothing changed (metrics, liveness).
const REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// How often serving workloads are judged against their health gates; a change of state is
/// reported at once. Windows move in tenths of their length (3 s for the default 30 s), so
/// looking more often would rarely see anything new; judging costs microseconds.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// First and longest wait before retrying a transient failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a stopping agent waits for its goodbye to reach the broker.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// An agent running in the background of this process.
#[derive(Debug)]
pub struct RunningAgent {
    view: watch::Receiver<AgentView>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    /// Starts the broker link and, without waiting for it, restores and serves the last good
    /// state, so a device with no broker serves at once.
    pub async fn start(config: AgentConfig) -> anyhow::Result<Self> {
        let store = StateStore::new(&config.data_dir)
            .with_context(|| format!("opening data dir {}", config.data_dir.display()))?;
        let state = store.load().map_err(anyhow::Error::msg)?;
        let cache = BlobCache::open(config.data_dir.join("blobs"))?;
        // GEMM tilings tuned per OpenCL device are kept here, so a restart does not tune again.
        #[cfg(feature = "opencl")]
        edgeship_runtime::opencl::set_cache_dir(config.data_dir.join("opencl"));
        #[allow(unused_mut)]
        let mut stage = Stage::new(
            config.data_dir.join("models"),
            cache.clone(),
            config.serve_host,
        )
        .with_model_signers(config.trust.model_signers.clone());
        #[allow(unused_mut)]
        let mut engine: Option<String> = None;
        #[cfg(feature = "containers")]
        if let Some(crate::config::ContainerEngine::Docker { socket }) = &config.containers {
            // An engine that is down costs the device its container workloads only: models
            // keep serving, and the hub reports container workloads for this device as
            // unschedulable (its birth names no engine).
            match crate::containers::Containers::connect(socket.as_deref(), &config.device_id).await
            {
                Ok(containers) => {
                    tracing::info!(engine = %containers.description(), "running container workloads");
                    engine = Some(containers.description().to_owned());
                    stage = stage.with_containers(containers);
                }
                Err(why) => tracing::error!(
                    "container workloads are off: {why}; restart the agent once the engine runs"
                ),
            }
        }
        let birth = birth(&config, engine.as_deref());
        let mut link = link::start(&config, &birth, state.accepted_generation)?;
        let upload_acks = std::mem::replace(&mut link.events.upload_acks, mpsc::channel(1).1);
        let jobs = crate::jobs::Jobs::new(
            config.data_dir.join("jobs"),
            cache.clone(),
            link.sender.clone(),
            upload_acks,
        )
        .with_model_signers(config.trust.model_signers.clone());
        let (view_tx, view) = watch::channel(AgentView::default());
        let mut agent = Agent {
            stage,
            fetcher: Fetcher {
                cache,
                sender: link.sender.clone(),
                connected: link.events.connected.clone(),
                newest: link.events.newest_generation.clone(),
            },
            sender: link.sender.clone(),
            device_id: config.device_id.clone(),
            store,
            state,
            statuses: BTreeMap::new(),
            retry: None,
            accepted: None,
            view: view_tx,
            birth,
            log_answers: std::sync::Arc::new(tokio::sync::Semaphore::new(LOG_ANSWERS_AT_ONCE)),
            profiling: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            jobs,
        };
        agent.restore().await;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(agent.run(link, shutdown_rx));
        Ok(Self {
            view,
            shutdown: Some(shutdown),
            task,
        })
    }

    pub fn view(&self) -> watch::Receiver<AgentView> {
        self.view.clone()
    }

    /// Waits until `predicate` holds for the agent's view, or the timeout passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        predicate: impl Fn(&AgentView) -> bool,
    ) -> Result<AgentView, AgentView> {
        let mut view = self.view.clone();
        let result = tokio::time::timeout(timeout, view.wait_for(|v| predicate(v))).await;
        match result {
            Ok(Ok(v)) => Ok(v.clone()),
            _ => Err(self.view.borrow().clone()),
        }
    }

    /// Says goodbye to the hub, stops endpoints and returns.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A transient failure waiting to be retried.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    attempt: u32,
}

/// How one pass over a desired state ended.
enum Pass {
    /// Every workload applied or failed for good.
    Done,
    /// Some workload hit a transient failure; retry the pass later.
    RetryLater,
    /// A newer desired state arrived; take it up now.
    Superseded,
}

/// Why one step failed (the reason is already in the workload's status).
enum StepError {
    Superseded,
    Transient,
    Lasting,
}

struct Agent {
    device_id: String,
    store: StateStore,
    state: PersistedState,
    stage: Stage,
    fetcher: Fetcher,
    sender: LinkSender,
    statuses: BTreeMap<String, WorkloadStatus>,
    retry: Option<Retry>,
    /// The desired state being applied or last applied (what a retry goes over again).
    accepted: Option<DesiredState>,
    view: watch::Sender<AgentView>,
    birth: Birth,
    /// Log answers being put together at once (see `logs.rs`).
    log_answers: std::sync::Arc<tokio::sync::Semaphore>,
    /// One profile at a time (see `profile.rs`).
    profiling: std::sync::Arc<tokio::sync::Semaphore>,
    /// Batch jobs running in the background (see `jobs.rs`).
    jobs: crate::jobs::Jobs,
}

/// Log answers the agent puts together at once; more requests are told to ask again.
const LOG_ANSWERS_AT_ONCE: usize = 2;

impl Agent {
    async fn run(
        mut self,
        mut link: Link,
        mut shutdown: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        // A desired state accepted before a crash but not fully applied is resumed now.
        // So is one whose last good workload could not be restored (a port briefly taken, say):
        // one more pass over it applies that workload again.
        let restore_failed = !self.serving_all();
        let mut current: Option<DesiredState> = self
            .store
            .load_desired()
            .filter(|d| d.generation > self.state.applied_generation || restore_failed);
        let mut chunks = std::mem::replace(&mut link.events.chunks, mpsc::channel(1).1);
        let mut ticker = tokio::time::interval(REPORT_INTERVAL);
        let jobs_changed = self.jobs.changed();
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if let Some(desired) = current.take() {
                tokio::select! {
                    pass = self.converge(&desired, &mut chunks) => {
                        if matches!(pass, Pass::Superseded) {
                            current = link.events.desired.borrow_and_update().clone();
                        }
                    }
                    _ = &mut shutdown => break,
                }
                continue;
            }
            let retry_at = self.retry.map(|r| r.at);
            tokio::select! {
                _ = &mut shutdown => break,
                changed = link.events.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = link.events.desired.borrow_and_update().clone();
                    if let Some(desired) = &current
                        && self.retry.is_some()
                        && desired.generation == self.state.accepted_generation
                    {
                        // The state being retried, delivered again (a reconnect, a hub
                        // republishing): the retry timer keeps its backoff.
                        current = None;
                    } else if let Some(desired) = &current
                        && desired.generation <= self.state.applied_generation
                        && self.serving_all()
                    {
                        // The hub republished what we have (it restarted, or we reconnected):
                        // tell it where we stand, since it may have lost our last report. A
                        // workload that could not be restored (its cached files damaged) is
                        // not what we have: the pass goes on and fetches it again.
                        current = None;
                        self.report();
                    }
                }
                _ = sleep_until_some(retry_at) => {
                    // Another pass over the state being applied; it schedules the next retry
                    // itself if one is still needed.
                    self.retry = None;
                    current = self.accepted.clone();
                }
                Some(request) = link.events.log_requests.recv() => self.answer_logs(request),
                Some(request) = link.events.profile_requests.recv() => self.run_profile(request),
                _ = link.events.connected.changed() => self.report(),
                _ = ticker.tick() => self.report(),
                _ = health.tick() => self.check_health(),
                _ = jobs_changed.notified() => self.report(),
                // Answers to requests of a download that has ended: let them go (which
                // acknowledges them) rather than keep them queued.
                Some(stale) = chunks.recv() => drop(stale),
            }
        }
        self.shut_down(link).await
    }

    async fn shut_down(mut self, link: Link) -> anyhow::Result<()> {
        link.stop_reconnecting();
        self.sender.goodbye(&self.birth, GOODBYE_TIMEOUT).await;
        link.close(GOODBYE_TIMEOUT).await;
        self.jobs.stop_all().await;
        self.stage.stop_all().await;
        Ok(())
    }

    /// Whether every last good workload is serving (one may have failed to restore).
    fn serving_all(&self) -> bool {
        self.state
            .workloads
            .keys()
            .all(|d| self.stage.is_serving(d))
    }

    /// Serves the persisted last good workloads before any broker contact.
    async fn restore(&mut self) {
        let workloads: Vec<Workload> = self.state.workloads.values().cloned().collect();
        for workload in workloads {
            let mut status = WorkloadStatus::new(
                &workload.deployment,
                &workload.describe(),
                workload.endpoint.port,
            );
            match self.stage.apply(&workload).await {
                Ok(()) => {
                    status.state = ServiceState::Healthy;
                    status.serving_model = workload.describe();
                    tracing::info!(deployment = %workload.deployment, model = %workload.describe(), port = workload.endpoint.port, "restored last good workload");
                }
                Err(err) => {
                    status.state = ServiceState::Failed;
                    status.error = format!("restoring after restart: {err}");
                    tracing::error!(deployment = %workload.deployment, error = %err, "could not restore workload");
                }
            }
            self.statuses.insert(workload.deployment.clone(), status);
        }
        // A version that failed before the restart is still failed: say so.
        for (deployment, failure) in &self.state.failures {
            let mut status = self
                .statuses
                .remove(deployment)
                .unwrap_or_else(|| WorkloadStatus::new(deployment, "", failure.port));
            failure.describe_on(&mut status);
            self.statuses.insert(deployment.clone(), status);
        }
        // Containers of this device that no restored workload adopted are left from a crash.
        #[cfg(feature = "containers")]
        self.stage.remove_stray_containers().await;
        self.restore_jobs();
        self.publish_view();
    }

    fn slots(&self) -> BTreeMap<String, Slot> {
        let deployments: HashSet<&String> = self
            .state
            .workloads
            .keys()
            .chain(self.state.failures.keys())
            .chain(self.statuses.keys())
            .collect();
        deployments
            .into_iter()
            .map(|d| {
                let slot = Slot {
                    applied: self.state.workloads.get(d).cloned(),
                    serving: self.stage.is_serving(d)
                        && self
                            .statuses
                            .get(d)
                            .is_some_and(|s| !s.serving_model.is_empty()),
                    failed: self.state.failures.get(d).and_then(|f| f.workload.clone()),
                };
                (d.clone(), slot)
            })
            .collect()
    }

    fn persist(&self, what: &str) {
        if let Err(err) = self.store.save(&self.state) {
            tracing::error!(error = %err, "cannot persist the {what}");
        }
    }

    /// One pass over `desired`: plan, then execute every step.
    async fn converge(
        &mut self,
        desired: &DesiredState,
        chunks: &mut mpsc::Receiver<Chunk>,
    ) -> Pass {
        if desired.generation < self.state.accepted_generation {
            tracing::warn!(
                generation = desired.generation,
                accepted = self.state.accepted_generation,
                "older desired state ignored"
            );
            return Pass::Done;
        }
        self.accepted = Some(desired.clone());
        if desired.generation > self.state.accepted_generation {
            tracing::info!(
                generation = desired.generation,
                workloads = desired.workloads.len(),
                "desired state accepted"
            );
            self.state.accepted_generation = desired.generation;
            self.retry = None;
            if let Err(err) = self.store.save_desired(desired) {
                tracing::error!(error = %err, "cannot persist the desired state");
            }
            self.persist("accepted generation");
        }
        let capabilities = self.birth.capabilities.clone();
        let cache = self.fetcher.cache.clone();
        let actions = reconcile::plan(&self.slots(), desired, &capabilities, &|d| {
            cache.contains(d)
        });
        let mut transient = false;
        // A deployment whose step failed skips its remaining steps in this pass.
        let mut stopped: HashSet<String> = HashSet::new();
        for action in actions {
            if stopped.contains(action.deployment()) {
                continue;
            }
            let deployment = action.deployment().to_owned();
            match self.execute(action, desired.generation, chunks).await {
                Ok(()) => {}
                Err(StepError::Superseded) => {
                    tracing::info!(
                        generation = desired.generation,
                        "a newer desired state arrived; switching to it"
                    );
                    return Pass::Superseded;
                }
                Err(StepError::Transient) => {
                    transient = true;
                    stopped.insert(deployment);
                }
                Err(StepError::Lasting) => {
                    stopped.insert(deployment);
                }
            }
        }
        match self.converge_jobs(desired, chunks).await {
            Ok(()) => {}
            Err(StepError::Superseded) => return Pass::Superseded,
            Err(StepError::Transient) => transient = true,
            Err(StepError::Lasting) => {}
        }
        self.settle(desired);
        let pass = if transient {
            let attempt = self.retry.map_or(1, |r| r.attempt + 1);
            let wait = link::jitter(
                RETRY_FIRST
                    .saturating_mul(1 << attempt.min(6))
                    .min(RETRY_MAX),
            );
            tracing::info!(attempt, retry_in = ?wait, "a download failed for a transient reason; retrying");
            self.retry = Some(Retry {
                at: Instant::now() + wait,
                attempt,
            });
            Pass::RetryLater
        } else {
            self.retry = None;
            self.state.applied_generation = desired.generation;
            self.persist("applied state");
            let live = reconcile::live_blobs(self.state.workloads.values(), desired);
            match self.fetcher.cache.retain(&live.into_iter().collect()) {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "unreferenced blobs removed"),
                Err(err) => tracing::warn!(error = %err, "cache clean-up failed"),
            }
            self.stage.collect_garbage(self.state.workloads.values());
            Pass::Done
        };
        self.report();
        pass
    }

    async fn execute(
        &mut self,
        action: Action,
        generation: u64,
        chunks: &mut mpsc::Receiver<Chunk>,
    ) -> Result<(), StepError> {
        match action {
            Action::Remove { deployment } => {
                self.stage.remove(&deployment).await;
                self.state.workloads.remove(&deployment);
                self.state.failures.remove(&deployment);
                self.statuses.remove(&deployment);
                self.persist("removal");
                tracing::info!(%deployment, "workload removed");
                self.publish_view();
                Ok(())
            }
            Action::Reject {
                deployment,
                port,
                desired,
                state,
                reason,
            } => {
                tracing::warn!(%deployment, %reason, "workload cannot run here");
                self.fail(&deployment, None, &desired, port, state, &reason);
                Err(StepError::Lasting)
            }
            Action::Fetch { workload, blobs } => {
                let deployment = workload.deployment.clone();
                self.begin(&workload);
                for blob in &blobs {
                    let fetched = self
                        .fetcher
                        .fetch(&blob.sha256, blob.size_bytes, generation, chunks)
                        .await;
                    match fetched {
                        Ok(()) => {}
                        Err(FetchError::Superseded) => return Err(StepError::Superseded),
                        Err(FetchError::Transient(why)) => {
                            let reason = format!("downloading {}: {why}; retrying", blob.path);
                            tracing::warn!(%deployment, %reason, "download interrupted");
                            if let Some(status) = self.statuses.get_mut(&deployment) {
                                status.error.clone_from(&reason);
                            }
                            self.report();
                            return Err(StepError::Transient);
                        }
                        Err(FetchError::Failed(why)) => {
                            let reason = format!("downloading {}: {why}", blob.path);
                            tracing::warn!(%deployment, %reason, "download failed");
                            let (desired, port) = (workload.describe(), workload.endpoint.port);
                            self.fail(
                                &deployment,
                                Some(workload),
                                &desired,
                                port,
                                ServiceState::Failed,
                                &reason,
                            );
                            return Err(StepError::Lasting);
                        }
                    }
                }
                Ok(())
            }
            Action::Apply { workload } => self.apply(workload).await,
            Action::Retune { workload } => self.retune(workload).await,
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
