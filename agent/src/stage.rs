//! Staging, self-test and switch: turns a workload whose blobs are in the cache into a
//! self-tested scorer, then points the deployment's endpoint at it. Any failure leaves the
//! previous version serving.
//!
//! Layout: `models/<model_id>/<version>/` holds each staged model with its files' layout,
//! hard-linked from the cache. Only verified cache files are ever linked (invariant 1).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use edgeship_domain::{DeployedModel, EndpointMetrics, ModelWorkload, Workload, WorkloadKind};
use edgeship_runtime::{ModelBundle, RuntimeError, Tensor};

use crate::cache::{self, BlobCache};
use crate::serve::json::inputs_from_data;
use crate::serve::{Endpoint, Scorer, ServingModel};

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

/// The endpoints of this device, one per deployment, and the staged models behind them.
#[derive(Debug)]
pub struct Stage {
    models_dir: PathBuf,
    cache: BlobCache,
    serve_host: IpAddr,
    endpoints: HashMap<String, Endpoint>,
}

impl Stage {
    pub fn new(models_dir: PathBuf, cache: BlobCache, serve_host: IpAddr) -> Self {
        Self {
            models_dir,
            cache,
            serve_host,
            endpoints: HashMap::new(),
        }
    }

    fn model_dir(&self, model: &DeployedModel) -> PathBuf {
        self.models_dir
            .join(&model.model_id)
            .join(model.version.to_string())
    }

    /// Stages, loads and self-tests `workload`, then switches its endpoint to it.
    pub async fn apply(&mut self, workload: &Workload) -> Result<(), StageError> {
        let WorkloadKind::Model(model) = &workload.kind else {
            return Err(StageError::Unschedulable(
                "this agent does not run container workloads".into(),
            ));
        };
        let scorer = self.prepare(model).await?;
        self.switch(workload, scorer).await
    }

    async fn prepare(&self, workload: &ModelWorkload) -> Result<Arc<dyn Scorer>, StageError> {
        let runtime = edgeship_runtime::by_kind(workload.runtime)?;
        let [model] = workload.models.as_slice() else {
            return Err(StageError::Unschedulable(format!(
                "this agent serves one model per endpoint; the workload has {}",
                workload.models.len()
            )));
        };
        let folder = self.model_dir(model);
        let files: Vec<(String, String)> = model
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect();
        if let Some((path, _)) = files.iter().find(|(_, d)| !self.cache.contains(d)) {
            return Err(StageError::Failed(format!(
                "{path} is missing from the cache"
            )));
        }
        cache::materialize(&self.cache, &folder, &files)
            .map_err(|err| StageError::Failed(format!("staging the model: {err}")))?;
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
        };
        let model_ref = model.model_ref();
        let scorer = tokio::task::spawn_blocking(move || {
            let runnable = runtime.prepare(&bundle)?;
            let scorer: Arc<dyn Scorer> = Arc::new(ServingModel {
                model_ref,
                runnable,
                sample_input: sample,
            });
            self_test(scorer.as_ref())?;
            Ok::<_, StageError>(scorer)
        })
        .await
        .map_err(|err| StageError::Failed(format!("loading task failed: {err}")))??;
        Ok(scorer)
    }

    /// Points the deployment's endpoint at `scorer`, starting or moving the endpoint as
    /// needed. On error the previous endpoint (if any) is untouched.
    async fn switch(
        &mut self,
        workload: &Workload,
        scorer: Arc<dyn Scorer>,
    ) -> Result<(), StageError> {
        let port = workload.endpoint.port;
        if let Some(endpoint) = self.endpoints.get(&workload.deployment)
            && endpoint.addr().port() == port
        {
            endpoint.switch(scorer);
            return Ok(());
        }
        let addr = SocketAddr::new(self.serve_host, port);
        let endpoint = Endpoint::start(
            addr,
            &workload.deployment,
            &workload.endpoint.protocols,
            scorer,
        )
        .await
        .map_err(|err| StageError::Failed(format!("cannot listen on {addr}: {err}")))?;
        if let Some(old) = self.endpoints.insert(workload.deployment.clone(), endpoint) {
            old.stop().await;
        }
        Ok(())
    }

    /// Stops the deployment's endpoint, if it has one.
    pub async fn remove(&mut self, deployment: &str) {
        if let Some(endpoint) = self.endpoints.remove(deployment) {
            endpoint.stop().await;
        }
    }

    pub async fn stop_all(&mut self) {
        for (_, endpoint) in self.endpoints.drain() {
            endpoint.stop().await;
        }
    }

    pub fn is_serving(&self, deployment: &str) -> bool {
        self.endpoints.contains_key(deployment)
    }

    pub fn addr(&self, deployment: &str) -> Option<SocketAddr> {
        self.endpoints.get(deployment).map(Endpoint::addr)
    }

    pub fn metrics(&self, deployment: &str) -> Option<EndpointMetrics> {
        self.endpoints.get(deployment).map(Endpoint::metrics)
    }

    /// Deletes staged model folders that no workload in `live` uses.
    pub fn collect_garbage<'a>(&self, live: impl Iterator<Item = &'a Workload>) {
        let keep: BTreeSet<PathBuf> = live
            .filter_map(Workload::as_model)
            .flat_map(|m| m.models.iter())
            .map(|m| self.model_dir(m))
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

/// Runs the registered sample input (or zeros of the declared shapes) through the scorer,
/// exactly as a scoring request would.
fn self_test(scorer: &dyn Scorer) -> Result<(), StageError> {
    let inputs = match scorer.sample_input() {
        Some(body) => inputs_from_data(scorer.inputs(), body)
            .map_err(|err| StageError::Failed(format!("self-test input rejected: {}", err.0)))?,
        None => scorer
            .inputs()
            .iter()
            .map(|spec| {
                Tensor::zeros(spec).ok_or_else(|| {
                    StageError::Failed(format!(
                        "input {spec} has a type scoring cannot carry; register a sample input"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    scorer
        .infer(inputs)
        .map_err(|err| StageError::Failed(format!("self-test failed: {err}")))?;
    Ok(())
}
