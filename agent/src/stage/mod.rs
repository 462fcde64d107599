//! Staging, self-test and switch: turns a workload whose blobs are in the cache into
//! self-tested scorers (one per model of a traffic split), then points the deployment's
//! endpoint at them. Any failure leaves the previous versions serving. A change of weights or
//! health gate alone is a retune: a new routing table over the versions already loaded.
//!
//! Layout: `models/<model_id>/<version>/` holds each staged model with its files' layout,
//! hard-linked from the cache. Only verified cache files are ever linked (invariant 1).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeship_domain::trust::PublicKey;
use edgeship_domain::{
    BlobRef, DeployedModel, ModelWorkload, RuntimeOptions, TensorSpec, Workload, WorkloadKind,
};
use edgeship_runtime::{ModelBundle, RuntimeError, Tensor};

use crate::cache::{self, BlobCache};
use crate::reconcile::only_tuning_differs;
use crate::serve::auth::Auth;
use crate::serve::batch::{BatchPolicy, Batcher};
use crate::serve::clients::CLIENTS;
use crate::serve::json::inputs_from_data;
use crate::serve::router::window_length;
use crate::serve::{Backend, Endpoint, Observation, Routes, Scorer, ServingModel, Surface};

/// Why a workload could not be applied; the message goes into the device's report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// This device cannot run it (runtime missing).
    #[error("{0}")]
    Unschedulable(String),
    #[error("{0}")]
    Failed(String),
}

impl From<RuntimeError> for StageError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::Unavailable { .. } => StageError::Unschedulable(err.to_string()),
            other => StageError::Failed(other.to_string()),
        }
    }
}

#[cfg(feature = "containers")]
mod container;
#[cfg(feature = "wasm")]
mod entry;

/// A deployment's endpoint and the workload it serves; the endpoint's routing table holds
/// one loaded version per model of `workload.models`, in the same order, or the container.
#[derive(Debug)]
struct Served {
    endpoint: Endpoint,
    workload: Workload,
    /// How much the agent's resident memory grew while this workload was loaded.
    load_bytes: u64,
    /// The container behind the endpoint's proxy, for a container workload.
    #[cfg(feature = "containers")]
    container: Option<crate::containers::RunningContainer>,
}

impl Served {
    /// The loaded version of `model` under `settings`, if this endpoint has one to share.
    fn loaded(&self, settings: &ModelWorkload, model: &DeployedModel) -> Option<Arc<Backend>> {
        let current = self.workload.as_model()?;
        if !loads_alike(current, settings) {
            return None;
        }
        let index = current.models.iter().position(|m| same_files(m, model))?;
        self.endpoint.routes().backends().get(index).cloned()
    }
}

/// How the workload's models batch, if they do: one worker per core, since each runs one
/// runtime call at a time.
fn batch_policy(options: &RuntimeOptions) -> Option<BatchPolicy> {
    if options.max_batch_size < 2 {
        return None;
    }
    let max_batch_size = options.max_batch_size as usize;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let max_queue_size = match options.max_queue_size {
        0 => BatchPolicy::default_queue_size(max_batch_size, workers),
        n => n as usize,
    };
    Some(BatchPolicy {
        max_batch_size,
        max_queue_delay: Duration::from_millis(u64::from(options.max_queue_delay_ms)),
        max_queue_size,
        workers,
    })
}

/// Whether models loaded under `a` serve as they would under `b`: the runtime and its
/// settings are the same. (The entry module is not a model setting: a new module version
/// gets a new pool over the models already loaded.)
fn loads_alike(a: &ModelWorkload, b: &ModelWorkload) -> bool {
    a.runtime == b.runtime && a.options == b.options
}

/// The same model, files and signature, whatever share of the traffic each is given.
fn same_files(a: &DeployedModel, b: &DeployedModel) -> bool {
    DeployedModel {
        weight: 0,
        ..a.clone()
    } == DeployedModel {
        weight: 0,
        ..b.clone()
    }
}

/// The endpoints of this device, one per deployment, and the staged models behind them.
#[derive(Debug)]
pub struct Stage {
    models_dir: PathBuf,
    cache: BlobCache,
    serve_host: IpAddr,
    endpoints: HashMap<String, Served>,
    /// Model versions loaded (prepared and self-tested) since the agent started.
    loads: u64,
    /// The host's container engine, when the agent runs container workloads.
    #[cfg(feature = "containers")]
    containers: Option<crate::containers::Containers>,
    /// The device's own signature policy: keys of which one must have signed every model.
    model_signers: Vec<PublicKey>,
}

impl Stage {
    pub fn new(models_dir: PathBuf, cache: BlobCache, serve_host: IpAddr) -> Self {
        Self {
            models_dir,
            cache,
            serve_host,
            endpoints: HashMap::new(),
            loads: 0,
            #[cfg(feature = "containers")]
            containers: None,
            model_signers: Vec::new(),
        }
    }

    /// Requires every model to be signed by one of `signers` (besides what deployments ask).
    pub fn with_model_signers(mut self, signers: Vec<PublicKey>) -> Self {
        self.model_signers = signers;
        self
    }

    /// Runs container workloads on `containers` too.
    #[cfg(feature = "containers")]
    pub fn with_containers(mut self, containers: crate::containers::Containers) -> Self {
        self.containers = Some(containers);
        self
    }

    fn model_dir(&self, model: &DeployedModel) -> PathBuf {
        self.version_dir(&model.model_id, model.version)
    }

    fn version_dir(&self, model_id: &str, version: u32) -> PathBuf {
        self.models_dir.join(model_id).join(version.to_string())
    }

    /// Hard-links `files` from the cache into `folder`, in their layout.
    fn stage_files(&self, folder: &Path, files: &[BlobRef]) -> Result<(), StageError> {
        if let Some(missing) = files.iter().find(|f| !self.cache.contains(&f.sha256)) {
            return Err(StageError::Failed(format!(
                "{} is missing from the cache",
                missing.path
            )));
        }
        let files: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect();
        cache::materialize(&self.cache, folder, &files)
            .map_err(|err| StageError::Failed(format!("staging the model: {err}")))
    }

    /// Model versions loaded since the agent started: what a change that should load nothing
    /// (new weights, a new health gate, a split that keeps a version) leaves unchanged.
    pub fn loads(&self) -> u64 {
        self.loads
    }

    /// Stages, loads and self-tests every model of `workload`, then switches its endpoint to
    /// them. A version the endpoint already has loaded, with the same files and runtime
    /// settings, is shared rather than loaded again: starting a canary keeps the stable
    /// version as it is, and promoting it keeps the canary.
    pub async fn apply(&mut self, workload: &Workload) -> Result<(), StageError> {
        let model = match &workload.kind {
            WorkloadKind::Model(model) => model,
            #[cfg(feature = "containers")]
            WorkloadKind::Container(spec) => return self.apply_container(workload, spec).await,
            #[cfg(not(feature = "containers"))]
            WorkloadKind::Container(_) => {
                return Err(StageError::Unschedulable(
                    "this agent is built without container workloads".into(),
                ));
            }
        };
        // Before anything is staged: an unsigned version never reaches a runtime.
        for deployed in &model.models {
            deployed
                .check_signed(&self.model_signers)
                .map_err(StageError::Failed)?;
        }
        let rss_before = crate::profile::rss_bytes();
        let window = window_length(workload.health.as_ref());
        let mut entries = Vec::with_capacity(model.models.len());
        for deployed in &model.models {
            let shared = self
                .endpoints
                .get(&workload.deployment)
                .and_then(|served| served.loaded(model, deployed));
            let backend = match shared {
                Some(backend) => backend,
                None => Backend::new(self.prepare(model, deployed).await?, window),
            };
            entries.push((deployed.weight, backend));
        }
        // Only now that every version is ready: a failure above leaves the serving versions
        // (and their windows) untouched.
        for (_, backend) in &entries {
            backend.resize_window(window);
        }
        let routes = Routes::new(entries)
            .ok_or_else(|| StageError::Failed("the workload has no model".into()))?;
        let routes = match &model.entry_module {
            None => routes,
            #[cfg(feature = "wasm")]
            Some(module) => {
                let pool = self.entry_pool(workload, model, module, &routes).await?;
                routes.with_entry(pool)
            }
            #[cfg(not(feature = "wasm"))]
            Some(_) => {
                return Err(StageError::Unschedulable(
                    "this agent is built without entry modules".into(),
                ));
            }
        };
        self.switch(workload, routes).await?;
        if let Some(served) = self.endpoints.get_mut(&workload.deployment) {
            served.load_bytes = crate::profile::rss_bytes().saturating_sub(rss_before);
        }
        Ok(())
    }

    /// Changes the weights and health gate of what serves `workload.deployment`, loading and
    /// restarting nothing. `Err` (with why) when the endpoint serves something that differs in
    /// more than that; the caller then applies the workload in full.
    pub fn retune(&mut self, workload: &Workload) -> Result<(), String> {
        let served = self
            .endpoints
            .get_mut(&workload.deployment)
            .ok_or("nothing serves the deployment")?;
        if served.workload != *workload && !only_tuning_differs(&served.workload, workload) {
            return Err("the workload differs in more than weights and health gate".into());
        }
        let model = workload.as_model().ok_or("not a model workload")?;
        let weights: Vec<u32> = model.models.iter().map(|m| m.weight).collect();
        let current = served.endpoint.routes();
        let routes = current
            .reweighted(&weights)
            .ok_or("the endpoint serves another number of versions")?;
        let window = window_length(workload.health.as_ref());
        for backend in routes.backends() {
            backend.resize_window(window);
        }
        served.endpoint.switch(routes);
        served.workload = workload.clone();
        Ok(())
    }

    /// Stages and loads one model, and self-tests it through the `Scorer` interface.
    async fn prepare(
        &mut self,
        workload: &ModelWorkload,
        model: &DeployedModel,
    ) -> Result<Arc<dyn Scorer>, StageError> {
        let runtime = edgeship_runtime::by_kind(workload.runtime)?;
        let folder = self.model_dir(model);
        self.stage_files(&folder, &model.files)?;
        let sample = match &model.sample_input {
            Some(text) => Some(
                serde_json::from_str::<serde_json::Value>(text).map_err(|err| {
                    StageError::Failed(format!("the registered sample input is not JSON: {err}"))
                })?,
            ),
            None => None,
        };
        let bundle = ModelBundle {
            entry: folder.join(&model.entry_file),
            inputs: model.inputs.clone(),
            outputs: model.outputs.clone(),
            device: workload.options.opencl_device.clone(),
            precision: workload.options.opencl_precision,
        };
        let model_ref = model.model_ref();
        let batching = batch_policy(&workload.options);
        let scorer = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let runnable = runtime.prepare(&bundle)?;
            let load_seconds = started.elapsed().as_secs_f64();
            let inputs = self_test_inputs(runnable.inputs(), sample.as_ref())?;
            runnable
                .run(inputs.clone())
                .map_err(|err| StageError::Failed(format!("self-test failed: {err}")))?;
            let batcher = batching.and_then(|policy| {
                Batcher::start(Arc::clone(&runnable), &model_ref, policy, &inputs, &CLIENTS)
                    .inspect_err(|why| tracing::warn!(model = %model_ref, "not batching: {why}; requests run one by one"))
                    .ok()
            });
            let scorer: Arc<dyn Scorer> = Arc::new(ServingModel {
                model_ref,
                runnable,
                sample_input: sample,
                load_seconds,
                recent_micros: Default::default(),
                batcher,
            });
            Ok::<_, StageError>(scorer)
        })
        .await
        .map_err(|err| StageError::Failed(format!("loading task failed: {err}")))?
        .map_err(|err| match err {
            // Which version of a split failed matters to whoever reads the report.
            StageError::Failed(why) if workload.models.len() > 1 => {
                StageError::Failed(format!("{}: {why}", model.model_ref()))
            }
            other => other,
        })?;
        self.loads += 1;
        tracing::info!(model = %model.model_ref(), "model loaded and self-tested");
        Ok(scorer)
    }

    /// Points the deployment's endpoint at `routes`, starting or moving the endpoint as
    /// needed. On error the previous endpoint (if any) is untouched, unless the new one reuses
    /// one of its ports with other protocols (it was stopped to free them).
    async fn switch(&mut self, workload: &Workload, routes: Routes) -> Result<(), StageError> {
        let port = workload.endpoint.port;
        let grpc_port = workload.endpoint.grpc_port;
        // The same listeners: the running endpoint takes the new routes and auth in place.
        // (Not between a model and a container workload: they answer with other routes.)
        if let Some(served) = self.endpoints.get_mut(&workload.deployment)
            && served.workload.endpoint.same_listeners(&workload.endpoint)
            && served.workload.as_container().is_some() == workload.as_container().is_some()
        {
            served
                .endpoint
                .set_auth(Auth::from_spec(&workload.deployment, &workload.endpoint));
            served.endpoint.switch(routes);
            served.workload = workload.clone();
            return Ok(());
        }
        // A protocol change on the same port: the old endpoint must let go of its ports
        // before the new one binds them (the only case where a failed start leaves none).
        let overlaps = self
            .endpoints
            .get(&workload.deployment)
            .is_some_and(|served| {
                let held = served.workload.endpoint.ports().collect::<Vec<_>>();
                workload.endpoint.ports().any(|p| held.contains(&p))
            });
        if overlaps && let Some(old) = self.endpoints.remove(&workload.deployment) {
            old.endpoint.stop().await;
            // A container workload replaced by a model workload: its container goes too.
            #[cfg(feature = "containers")]
            if let Some(container) = old.container {
                self.stop_container(container).await;
            }
        }
        let addr = SocketAddr::new(self.serve_host, port);
        let grpc_addr = grpc_port.map(|p| SocketAddr::new(self.serve_host, p));
        let surface = match &workload.kind {
            #[cfg(feature = "containers")]
            WorkloadKind::Container(_) => Surface::Proxy,
            _ => Surface::Scoring(&workload.endpoint.protocols),
        };
        if !workload.endpoint.tls_hostnames.is_empty() && workload.endpoint.tls.is_none() {
            // Never a silent downgrade to plain HTTP.
            return Err(StageError::Failed(
                "the endpoint asks for TLS, but the desired state carries no certificate".into(),
            ));
        }
        let listen = crate::serve::Listen {
            addr,
            grpc_addr,
            tls: workload.endpoint.tls.clone(),
        };
        let endpoint = Endpoint::start_on(
            listen,
            &workload.deployment,
            surface,
            &workload.endpoint.cors_origins,
            Auth::from_spec(&workload.deployment, &workload.endpoint),
            routes,
        )
        .await
        .map_err(|err| StageError::Failed(format!("cannot listen on {addr}: {err}")))?;
        let served = Served {
            endpoint,
            workload: workload.clone(),
            load_bytes: 0,
            #[cfg(feature = "containers")]
            container: None,
        };
        if let Some(old) = self.endpoints.insert(workload.deployment.clone(), served) {
            old.endpoint.stop().await;
            // A container workload replaced by a model workload: its container goes too.
            #[cfg(feature = "containers")]
            if let Some(container) = old.container {
                self.stop_container(container).await;
            }
        }
        Ok(())
    }

    /// Stops the deployment's endpoint, if it has one, and its container.
    pub async fn remove(&mut self, deployment: &str) {
        if let Some(served) = self.endpoints.remove(deployment) {
            served.endpoint.stop().await;
            #[cfg(feature = "containers")]
            self.remove_container(deployment, served.container).await;
        }
    }

    pub async fn stop_all(&mut self) {
        for (_, served) in self.endpoints.drain() {
            served.endpoint.stop().await;
        }
    }

    pub fn is_serving(&self, deployment: &str) -> bool {
        self.endpoints.contains_key(deployment)
    }

    /// How much the agent's resident memory grew when `deployment`'s workload was loaded.
    pub fn load_bytes(&self, deployment: &str) -> Option<u64> {
        self.endpoints.get(deployment).map(|s| s.load_bytes)
    }

    pub fn addr(&self, deployment: &str) -> Option<SocketAddr> {
        self.endpoints.get(deployment).map(|s| s.endpoint.addr())
    }

    /// The deployment's figures at `at`, judged against the health gate of what serves.
    pub fn observe(&self, deployment: &str, at: Instant) -> Option<Observation> {
        let served = self.endpoints.get(deployment)?;
        #[allow(unused_mut)]
        let mut seen = served.endpoint.observe(at, served.workload.health.as_ref());
        #[cfg(feature = "containers")]
        if let Some(container) = &served.container {
            use crate::containers::monitor::Verdict;
            match container.verdict() {
                Verdict::Fine => {}
                Verdict::Unhealthy(why) => seen.breach = Some(why),
                Verdict::Failed(why) => seen.failed = Some(why),
            }
        }
        Some(seen)
    }

    /// Deletes staged model folders that no workload in `live` uses.
    pub fn collect_garbage<'a>(&self, live: impl Iterator<Item = &'a Workload>) {
        let live: Vec<&Workload> = live.collect();
        #[cfg(feature = "wasm")]
        self.collect_compiled(live.iter().copied());
        let keep: BTreeSet<PathBuf> = live
            .iter()
            .flat_map(|w| {
                let models = w.as_model().into_iter().flat_map(|m| m.models.iter());
                let mounted = w.as_container().and_then(|c| c.model.as_ref());
                models
                    .map(|m| self.model_dir(m))
                    .chain(mounted.map(|m| self.version_dir(&m.model_id, m.version)))
            })
            .collect();
        let Ok(models) = std::fs::read_dir(&self.models_dir) else {
            return;
        };
        for model in models.flatten() {
            let Ok(versions) = std::fs::read_dir(model.path()) else {
                continue;
            };
            for version in versions.flatten() {
                if !keep.contains(&version.path()) {
                    let _ = std::fs::remove_dir_all(version.path());
                }
            }
            // Fails, harmlessly, while another version remains.
            let _ = std::fs::remove_dir(model.path());
        }
    }
}

/// The self-test's request: the registered sample input (or zeros of the declared shapes),
/// decoded exactly as a scoring request would be.
pub(crate) fn self_test_inputs(
    specs: &[TensorSpec],
    sample: Option<&serde_json::Value>,
) -> Result<Vec<Tensor>, StageError> {
    Ok(match sample {
        Some(body) => inputs_from_data(specs, body)
            .map_err(|err| StageError::Failed(format!("self-test input rejected: {}", err.0)))?,
        None => specs
            .iter()
            .map(|spec| {
                Tensor::zeros(spec).ok_or_else(|| {
                    StageError::Failed(format!(
                        "input {spec} has a type scoring cannot carry; register a sample input"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    })
}
