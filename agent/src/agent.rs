//! The agent's driver: turns desired states into running workloads.
//!
//! For each workload of an accepted desired state: check the runtime is here (else
//! `Unschedulable`), fetch every file into the verified cache, stage the model folder, load it,
//! self-test it, and only then switch the endpoint to it. Any failure leaves the previous
//! version serving and reports `Failed` with the reason. The last good state is persisted, so
//! a restart serves it at once, broker or not.
//!
//! Design: the desired state arrives on a `watch` (only the newest matters); blob chunks on a
//! channel the fetch consumes. A newer desired state that arrives during a download
//! supersedes the one being applied: the download stops (its partial file stays, resumable)
//! and the newer state is applied at once; otherwise one arriving during an apply is taken up
//! right after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use edgeship_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cache::{self, BlobCache, CHUNK_SIZE, CacheError};
use crate::config::AgentConfig;
use crate::link::{self, LinkSender};
use crate::runtime::{self, ModelBundle, Runnable, RuntimeError};
use crate::scoring;
use crate::serve::{Endpoint, ServingModel};
use crate::state::{AppliedWorkload, PersistedState, StateStore, TensorRecord, WorkloadFailure};
use crate::tensor::Tensor;

/// Chunk requests kept in flight per blob (8 MiB): enough to cover broker round trips on
/// loopback and LANs without flooding a slow link.
pub const FETCH_WINDOW: u64 = 32;
/// Re-request the missing range after this long without progress.
const FETCH_STALL: Duration = Duration::from_secs(3);
/// How long a resumed download listens for chunks still queued from before the restart.
const RESUME_GRACE: Duration = Duration::from_millis(300);
/// Give up on a blob after this long without any progress.
const FETCH_GIVE_UP: Duration = Duration::from_secs(120);

/// A workload as observers (tests, `edgeship dev`) see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadView {
    pub deployment: String,
    pub state: pb::ServiceState,
    pub error: String,
    pub serving_model: String,
    pub desired_model: String,
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentView {
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadView>,
}

impl AgentView {
    pub fn workload(&self, deployment: &str) -> Option<&WorkloadView> {
        self.workloads.iter().find(|w| w.deployment == deployment)
    }
}

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
        let birth = birth(&config);
        let link = link::start(&config, birth.clone());
        let (view_tx, view) = watch::channel(AgentView::default());
        let mut agent = Agent {
            config,
            store,
            state,
            cache,
            endpoints: HashMap::new(),
            statuses: BTreeMap::new(),
            sender: link.sender.clone(),
            connected: link.events.connected.clone(),
            newest: link.events.desired.clone(),
            applying: 0,
            view: view_tx,
            birth,
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

struct Agent {
    config: AgentConfig,
    store: StateStore,
    state: PersistedState,
    cache: BlobCache,
    endpoints: HashMap<String, Endpoint>,
    statuses: BTreeMap<String, pb::WorkloadStatus>,
    sender: LinkSender,
    /// Connection count from the link (0 until the first connect).
    connected: watch::Receiver<u64>,
    /// The newest desired state received, watched during downloads: a newer generation
    /// supersedes the one being applied.
    newest: watch::Receiver<Option<pb::DesiredState>>,
    /// The generation being applied now (0 when idle).
    applying: u64,
    view: watch::Sender<AgentView>,
    birth: pb::Birth,
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("{0}")]
    Unschedulable(String),
    #[error("{0}")]
    Failed(String),
    /// A newer desired state arrived; this one is abandoned (downloads stay resumable).
    #[error("superseded by a newer desired state")]
    Superseded,
}

impl From<RuntimeError> for ApplyError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::Unavailable(_) => ApplyError::Unschedulable(err.to_string()),
            other => ApplyError::Failed(other.to_string()),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The device's self-description, sent on every connect.
pub fn birth(config: &AgentConfig) -> pb::Birth {
    pb::Birth {
        device_id: config.device_id.clone(),
        online: true,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: Some(pb::Capabilities {
            arch: std::env::consts::ARCH.to_owned(),
            os: std::env::consts::OS.to_owned(),
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: total_memory_bytes(),
            runtimes: runtime::available()
                .iter()
                .filter(|r| r.check().is_ok())
                .map(|r| r.name().to_owned())
                .collect(),
            opencl_devices: vec![],
        }),
        labels: config.labels.clone().into_iter().collect(),
        at_ms: now_ms(),
    }
}

fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

impl Agent {
    fn models_dir(&self) -> PathBuf {
        self.config.data_dir.join("models")
    }

    fn model_dir(&self, model_id: &str, version: u32) -> PathBuf {
        self.models_dir().join(model_id).join(version.to_string())
    }

    async fn run(
        mut self,
        mut link: link::Link,
        mut shutdown: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        // A desired state accepted before a crash but not fully applied is resumed now.
        if let Some(desired) = self.store.load_desired()
            && desired.generation > self.state.applied_generation
        {
            tokio::select! {
                _ = self.on_desired(desired, &mut link.events.chunks) => {}
                _ = &mut shutdown => return self.shut_down().await,
            }
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = link.events.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let desired = link.events.desired.borrow_and_update().clone();
                    if let Some(desired) = desired {
                        tokio::select! {
                            _ = self.on_desired(desired, &mut link.events.chunks) => {}
                            _ = &mut shutdown => break,
                        }
                    }
                }
                _ = link.events.connected.changed() => self.report().await,
                _ = ticker.tick() => self.report().await,
            }
        }
        self.shut_down().await
    }

    async fn shut_down(mut self) -> anyhow::Result<()> {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.sender.goodbye(&self.birth)).await;
        // Give the link a moment to flush the offline birth and the DISCONNECT before it is
        // dropped, so the broker sees a clean goodbye rather than a reset connection.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (_, endpoint) in self.endpoints.drain() {
            endpoint.stop().await;
        }
        Ok(())
    }

    /// Serves the persisted last good workloads before any broker contact.
    async fn restore(&mut self) {
        let workloads: Vec<AppliedWorkload> = self.state.workloads.values().cloned().collect();
        for workload in workloads {
            let mut status =
                self.status_for(&workload.deployment, &workload.model_ref(), workload.port);
            match self.start_applied(&workload).await {
                Ok(()) => {
                    status.state = pb::ServiceState::Healthy.into();
                    status.serving_model = workload.model_ref();
                    tracing::info!(deployment = %workload.deployment, model = %workload.model_ref(), port = workload.port, "restored last good workload");
                }
                Err(err) => {
                    status.state = pb::ServiceState::Failed.into();
                    status.error = format!("restoring after restart: {err}");
                    tracing::error!(deployment = %workload.deployment, error = %err, "could not restore workload");
                }
            }
            self.statuses.insert(workload.deployment.clone(), status);
        }
        // A version that failed before the restart is still failed: say so.
        for (deployment, failure) in &self.state.failures {
            let port = self.state.workloads.get(deployment).map_or(0, |w| w.port);
            let mut status = self.status_for(deployment, &failure.desired_model, port);
            status.state = if failure.unschedulable {
                pb::ServiceState::Unschedulable
            } else {
                pb::ServiceState::Failed
            }
            .into();
            status.error.clone_from(&failure.error);
            self.statuses.insert(deployment.clone(), status);
        }
        self.publish_view();
    }

    async fn start_applied(&mut self, workload: &AppliedWorkload) -> Result<(), ApplyError> {
        let serving = self.prepare(workload).await?;
        self.switch(&workload.deployment, workload.port, serving)
            .await
    }

    fn status_for(&self, deployment: &str, desired_model: &str, port: u16) -> pb::WorkloadStatus {
        let mut status = self.statuses.get(deployment).cloned().unwrap_or_default();
        status.deployment = deployment.to_owned();
        status.desired_model = desired_model.to_owned();
        status.port = u32::from(port);
        status
    }

    async fn on_desired(
        &mut self,
        desired: pb::DesiredState,
        chunks: &mut mpsc::Receiver<pb::BlobChunk>,
    ) {
        if desired.generation < self.state.accepted_generation {
            tracing::warn!(
                generation = desired.generation,
                accepted = self.state.accepted_generation,
                "older desired state ignored"
            );
            return;
        }
        if desired.generation <= self.state.applied_generation {
            return;
        }
        tracing::info!(
            generation = desired.generation,
            workloads = desired.workloads.len(),
            "desired state accepted"
        );
        self.state.accepted_generation = desired.generation;
        if let Err(err) = self
            .store
            .save_desired(&desired)
            .and_then(|()| self.store.save(&self.state))
        {
            tracing::error!(error = %err, "cannot persist the desired state");
        }
        let wanted: HashSet<String> = desired
            .workloads
            .iter()
            .map(|w| w.deployment.clone())
            .collect();
        self.applying = desired.generation;
        for workload in &desired.workloads {
            self.apply(workload, chunks).await;
            if self.superseded() {
                // Take up the newer state at once; partial downloads stay for it to resume.
                tracing::info!(
                    generation = desired.generation,
                    "a newer desired state arrived; switching to it"
                );
                self.applying = 0;
                return;
            }
        }
        self.applying = 0;
        // Workloads no longer desired stop serving and release their files.
        let gone: Vec<String> = self
            .statuses
            .keys()
            .filter(|d| !wanted.contains(*d))
            .cloned()
            .collect();
        for deployment in gone {
            if let Some(endpoint) = self.endpoints.remove(&deployment) {
                endpoint.stop().await;
            }
            self.state.workloads.remove(&deployment);
            self.state.failures.remove(&deployment);
            self.statuses.remove(&deployment);
            tracing::info!(%deployment, "workload removed");
        }
        self.state.applied_generation = desired.generation;
        if let Err(err) = self.store.save(&self.state) {
            tracing::error!(error = %err, "cannot persist the applied state");
        }
        self.collect_garbage(&desired);
        self.report().await;
    }

    async fn apply(&mut self, workload: &pb::Workload, chunks: &mut mpsc::Receiver<pb::BlobChunk>) {
        let Some(model) = &workload.model else {
            tracing::warn!(deployment = %workload.deployment, "workload without a model ignored");
            return;
        };
        let desired_ref = format!("{}:{}", model.model_id, model.version);
        let port = workload
            .endpoint
            .as_ref()
            .and_then(|e| u16::try_from(e.port).ok())
            .unwrap_or(0);
        let mut status = self.status_for(&workload.deployment, &desired_ref, port);
        let current = self.state.workloads.get(&workload.deployment);
        let unchanged = current.is_some_and(|c| {
            c.model_ref() == desired_ref && c.port == port && c.runtime == workload.runtime
        }) && self.endpoints.contains_key(&workload.deployment)
            && status.state == i32::from(pb::ServiceState::Healthy);
        if unchanged {
            return;
        }
        status.state = pb::ServiceState::Transitioning.into();
        status.error.clear();
        self.statuses
            .insert(workload.deployment.clone(), status.clone());
        self.report().await;

        let outcome = self.stage_and_switch(workload, model, port, chunks).await;
        match outcome {
            Ok(applied) => {
                status.state = pb::ServiceState::Healthy.into();
                status.serving_model = applied.model_ref();
                status.error.clear();
                tracing::info!(deployment = %workload.deployment, model = %desired_ref, port, "workload switched");
                self.state
                    .workloads
                    .insert(workload.deployment.clone(), applied);
                self.state.failures.remove(&workload.deployment);
                if let Err(err) = self.store.save(&self.state) {
                    tracing::error!(error = %err, "cannot persist the applied state");
                }
            }
            Err(ApplyError::Superseded) => {}
            Err(err) => {
                let (state, text) = match err {
                    ApplyError::Unschedulable(text) => (pb::ServiceState::Unschedulable, text),
                    ApplyError::Failed(text) => (pb::ServiceState::Failed, text),
                    ApplyError::Superseded => return,
                };
                tracing::warn!(deployment = %workload.deployment, model = %desired_ref, error = %text, state = ?state, "workload not applied; the previous version keeps serving");
                status.state = state.into();
                status.error.clone_from(&text);
                self.state.failures.insert(
                    workload.deployment.clone(),
                    WorkloadFailure {
                        desired_model: desired_ref.clone(),
                        unschedulable: state == pb::ServiceState::Unschedulable,
                        error: text,
                    },
                );
                if let Err(err) = self.store.save(&self.state) {
                    tracing::error!(error = %err, "cannot persist the failure");
                }
            }
        }
        self.statuses.insert(workload.deployment.clone(), status);
        self.publish_view();
    }

    async fn stage_and_switch(
        &mut self,
        workload: &pb::Workload,
        model: &pb::DeployedModel,
        port: u16,
        chunks: &mut mpsc::Receiver<pb::BlobChunk>,
    ) -> Result<AppliedWorkload, ApplyError> {
        // Unschedulable before any download: no point fetching what cannot run here.
        runtime::by_name(&workload.runtime)?;
        if port == 0 {
            return Err(ApplyError::Failed(
                "the workload has no endpoint port".into(),
            ));
        }
        // The model id names a folder on this device: the registry's name rule, enforced
        // again here because a desired state is input like any other.
        let id_ok = model
            .model_id
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && model.model_id.len() <= 255
            && model
                .model_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !id_ok || model.version == 0 {
            return Err(ApplyError::Failed(format!(
                "invalid model reference {:?} version {}",
                model.model_id, model.version
            )));
        }
        if !model.files.iter().any(|f| f.path == model.entry_file) {
            return Err(ApplyError::Failed(format!(
                "the entry file {} is not among the model's files",
                model.entry_file
            )));
        }
        for file in &model.files {
            if file
                .path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
                || file.path.starts_with('/')
                || file.sha256.len() != 64
            {
                return Err(ApplyError::Failed(format!(
                    "invalid file entry {:?}",
                    file.path
                )));
            }
        }
        for file in &model.files {
            self.fetch(&file.sha256, file.size_bytes, chunks)
                .await
                .map_err(|err| match err {
                    CacheError::Superseded => ApplyError::Superseded,
                    err => ApplyError::Failed(format!("downloading {}: {err}", file.path)),
                })?;
        }
        let applied = AppliedWorkload {
            deployment: workload.deployment.clone(),
            model_id: model.model_id.clone(),
            version: model.version,
            runtime: workload.runtime.clone(),
            port,
            entry_file: model.entry_file.clone(),
            files: model
                .files
                .iter()
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect(),
            inputs: model.inputs.iter().map(TensorRecord::from_wire).collect(),
            outputs: model.outputs.iter().map(TensorRecord::from_wire).collect(),
            sample_input: (!model.sample_input.is_empty()).then(|| model.sample_input.clone()),
        };
        let serving = self.prepare(&applied).await?;
        self.switch(&workload.deployment, port, serving).await?;
        Ok(applied)
    }

    /// Stages the model folder from the cache, loads it and self-tests it.
    async fn prepare(&self, workload: &AppliedWorkload) -> Result<Arc<ServingModel>, ApplyError> {
        let runtime = runtime::by_name(&workload.runtime)?;
        let folder = self.model_dir(&workload.model_id, workload.version);
        for (path, digest) in &workload.files {
            if !self.cache.contains(digest) {
                return Err(ApplyError::Failed(format!(
                    "{path} is missing from the cache"
                )));
            }
        }
        cache::materialize(&self.cache, &folder, &workload.files)
            .map_err(|err| ApplyError::Failed(format!("staging the model: {err}")))?;
        let inputs = workload
            .inputs
            .iter()
            .map(TensorRecord::to_info)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApplyError::Failed)?;
        let outputs = workload
            .outputs
            .iter()
            .map(TensorRecord::to_info)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApplyError::Failed)?;
        let bundle = ModelBundle {
            entry: folder.join(&workload.entry_file),
            inputs,
            outputs,
        };
        let sample = match &workload.sample_input {
            Some(text) => Some(
                serde_json::from_str::<serde_json::Value>(text).map_err(|err| {
                    ApplyError::Failed(format!("the registered sample input is not JSON: {err}"))
                })?,
            ),
            None => None,
        };
        let sample_for_test = sample.clone();
        let runnable = tokio::task::spawn_blocking(move || {
            let runnable = runtime.prepare(&bundle)?;
            self_test(runnable.as_ref(), sample_for_test.as_ref())?;
            Ok::<_, RuntimeError>(runnable)
        })
        .await
        .map_err(|err| ApplyError::Failed(format!("loading task failed: {err}")))??;
        Ok(Arc::new(ServingModel {
            model_ref: workload.model_ref(),
            runnable,
            sample_input: sample,
        }))
    }

    /// Points the deployment's endpoint at `serving`, starting or moving the endpoint as
    /// needed. On error the previous endpoint (if any) is untouched.
    async fn switch(
        &mut self,
        deployment: &str,
        port: u16,
        serving: Arc<ServingModel>,
    ) -> Result<(), ApplyError> {
        if let Some(endpoint) = self.endpoints.get(deployment)
            && endpoint.addr().port() == port
        {
            endpoint.switch(serving);
            return Ok(());
        }
        let addr = SocketAddr::new(self.config.serve_host, port);
        let endpoint = Endpoint::start(addr, deployment, serving)
            .await
            .map_err(|err| ApplyError::Failed(format!("cannot listen on {addr}: {err}")))?;
        if let Some(old) = self.endpoints.insert(deployment.to_owned(), endpoint) {
            old.stop().await;
        }
        Ok(())
    }

    /// Fetches a blob into the cache, resuming a partial download, verifying every chunk and
    /// then the whole file.
    async fn fetch(
        &self,
        digest: &str,
        size: u64,
        chunks: &mut mpsc::Receiver<pb::BlobChunk>,
    ) -> Result<(), CacheError> {
        let mut attempts = 0;
        loop {
            if self.cache.contains(digest) {
                return Ok(());
            }
            attempts += 1;
            let mut partial = self.cache.begin(digest, size)?;
            if partial.resumed_from() > 0 {
                tracing::info!(%digest, offset = partial.resumed_from(), size, "resuming download");
            }
            let result = self.fetch_partial(&mut partial, chunks).await;
            match result.and_then(|()| partial.finish().map(drop)) {
                Ok(()) => return Ok(()),
                Err(CacheError::CorruptFile { .. }) if attempts < 3 => {
                    tracing::warn!(%digest, "downloaded file failed verification; fetching again");
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Whether a newer desired state than the one being applied has arrived.
    fn superseded(&self) -> bool {
        self.applying > 0
            && self
                .newest
                .borrow()
                .as_ref()
                .is_some_and(|d| d.generation > self.applying)
    }

    async fn fetch_partial(
        &self,
        partial: &mut cache::PartialBlob,
        chunks: &mut mpsc::Receiver<pb::BlobChunk>,
    ) -> Result<(), CacheError> {
        let size = partial.size();
        let digest = partial.digest().to_owned();
        // Chunks a previous run asked for may still be on their way: the broker keeps them
        // for our persistent session and delivers them right after we connect. On a resume,
        // wait for the connection and take what arrives for a moment before asking again, so
        // an interrupted download costs (almost) no bytes twice.
        if partial.offset() > 0 {
            let mut connected = self.connected.clone();
            let _ = tokio::time::timeout(FETCH_STALL, connected.wait_for(|n| *n > 0)).await;
            let grace = tokio::time::sleep(RESUME_GRACE);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    _ = &mut grace => break,
                    chunk = chunks.recv() => match chunk {
                        Some(chunk) if chunk.sha256 == digest && chunk.error.is_empty() => {
                            let _ = partial.append(chunk.offset, &chunk.data, &chunk.chunk_sha256);
                        }
                        Some(_) => {}
                        None => break,
                    },
                }
            }
        }
        // A resumed download starts with one request and widens once data flows, so chunks
        // still queued for us from before a restart are not all requested twice.
        let mut window = if partial.offset() > 0 {
            1
        } else {
            FETCH_WINDOW
        };
        let mut next_request = partial.offset();
        let mut last_progress = Instant::now();
        let mut reset_at: Option<u64> = None;
        // Wakes the loop when a newer desired state arrives (a clone starts with the
        // original's "seen" mark, which is never advanced: mark it first).
        let mut newest = self.newest.clone();
        newest.borrow_and_update();
        while !partial.is_complete() {
            while next_request < size && next_request < partial.offset() + window * CHUNK_SIZE {
                self.sender
                    .request_blob(pb::BlobRequest {
                        sha256: digest.clone(),
                        offset: next_request,
                        length: CHUNK_SIZE.min(size - next_request),
                    })
                    .await;
                next_request += CHUNK_SIZE;
            }
            if self.superseded() {
                return Err(CacheError::Superseded);
            }
            let next = tokio::select! {
                next = tokio::time::timeout(FETCH_STALL, chunks.recv()) => next,
                // Wake up for a newer desired state even while no chunk arrives.
                _ = newest.changed() => continue,
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    return Err(CacheError::Io {
                        context: "the broker link closed".into(),
                        source: std::io::Error::other("link closed"),
                    });
                }
                Err(_) => {
                    if last_progress.elapsed() > FETCH_GIVE_UP {
                        return Err(CacheError::Io {
                            context: format!("no progress for {} s", FETCH_GIVE_UP.as_secs()),
                            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                        });
                    }
                    tracing::debug!(%digest, offset = partial.offset(), "fetch stalled; requesting again");
                    next_request = partial.offset();
                    continue;
                }
            };
            if chunk.sha256 != digest {
                continue;
            }
            if !chunk.error.is_empty() {
                return Err(CacheError::Io {
                    context: format!("the hub refused the download: {}", chunk.error),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
            match partial.append(chunk.offset, &chunk.data, &chunk.chunk_sha256) {
                Ok(true) => {
                    last_progress = Instant::now();
                    window = FETCH_WINDOW;
                    // Requests already answered by queued chunks need not be sent again.
                    next_request = next_request.max(partial.offset());
                }
                Ok(false) => {}
                Err(CacheError::CorruptChunk { offset, .. }) => {
                    tracing::warn!(%digest, offset, "corrupted chunk rejected; requesting it again");
                    // Re-request the window once per stuck offset: resetting on every damaged
                    // chunk would multiply requests on a bad link (each reset re-sends the
                    // window while the previous one is still in flight). Further damage at
                    // the same offset waits for the stall timeout instead.
                    if reset_at != Some(partial.offset()) {
                        reset_at = Some(partial.offset());
                        next_request = partial.offset();
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn collect_garbage(&self, desired: &pb::DesiredState) {
        let mut keep: HashSet<String> = HashSet::new();
        for workload in self.state.workloads.values() {
            keep.extend(workload.files.iter().map(|(_, d)| d.clone()));
        }
        for workload in &desired.workloads {
            if let Some(model) = &workload.model {
                keep.extend(model.files.iter().map(|f| f.sha256.clone()));
            }
        }
        match self.cache.retain(&keep) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "unreferenced blobs removed"),
            Err(err) => tracing::warn!(error = %err, "cache clean-up failed"),
        }
        let live: HashSet<PathBuf> = self
            .state
            .workloads
            .values()
            .map(|w| self.model_dir(&w.model_id, w.version))
            .collect();
        let Ok(models) = std::fs::read_dir(self.models_dir()) else {
            return;
        };
        for model in models.flatten() {
            let Ok(versions) = std::fs::read_dir(model.path()) else {
                continue;
            };
            for version in versions.flatten() {
                if !live.contains(&version.path()) {
                    let _ = std::fs::remove_dir_all(version.path());
                }
            }
            let _ = std::fs::remove_dir(model.path());
        }
    }

    fn publish_view(&self) {
        let workloads = self
            .statuses
            .values()
            .map(|s| WorkloadView {
                deployment: s.deployment.clone(),
                state: s.state(),
                error: s.error.clone(),
                serving_model: s.serving_model.clone(),
                desired_model: s.desired_model.clone(),
                addr: self.endpoints.get(&s.deployment).map(Endpoint::addr),
            })
            .collect();
        self.view.send_replace(AgentView {
            applied_generation: self.state.applied_generation,
            workloads,
        });
    }

    async fn report(&mut self) {
        for (deployment, status) in self.statuses.iter_mut() {
            if let Some(endpoint) = self.endpoints.get(deployment) {
                let metrics = endpoint.metrics();
                status.metrics = Some(pb::EndpointMetrics {
                    requests: metrics.requests,
                    errors: metrics.errors,
                    mean_latency_ms: metrics.mean_latency_ms,
                });
            }
        }
        self.publish_view();
        let report = pb::ReportedState {
            device_id: self.config.device_id.clone(),
            applied_generation: self.state.applied_generation,
            workloads: self.statuses.values().cloned().collect(),
            reported_at_ms: now_ms(),
        };
        self.sender.report(&report).await;
    }
}

/// Runs the registered sample input (or zeros of the declared shapes) through the model.
fn self_test(model: &dyn Runnable, sample: Option<&serde_json::Value>) -> Result<(), RuntimeError> {
    let inputs = match sample {
        Some(body) => scoring::request_tensors(model, body)
            .map_err(|err| RuntimeError::Run(format!("self-test input rejected: {}", err.0)))?,
        None => model.inputs().iter().map(Tensor::zeros).collect(),
    };
    model
        .run(inputs)
        .map_err(|err| RuntimeError::Run(format!("self-test failed: {err}")))?;
    Ok(())
}
