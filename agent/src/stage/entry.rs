//! Loads a workload's entry module in front of its freshly staged models: the module's file
//! from the blob cache, compiled once per engine and kept compiled on disk (so a restart
//! compiles nothing), its instances made and initialized before the switch. A module whose
//! `init` fails or traps fails the version; the previous one keeps serving.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeship_domain::{EntryModule, ModelWorkload, Workload};
use edgeship_wasm::tensor::model_info;
use edgeship_wasm::{CompiledCache, EntryPool, ModuleEngine, Mount, PoolSettings, SandboxLimits};

use super::{Stage, StageError};
use crate::logbook::{self, LogLine};
use crate::serve::entry::FirstVersions;
use crate::serve::{Routes, Scorer};

impl Stage {
    /// Where compiled modules are kept: beside the staged models.
    fn compiled_cache(&self) -> CompiledCache {
        let data = self.models_dir.parent().unwrap_or(&self.models_dir);
        CompiledCache::new(data.join("compiled-modules"))
    }

    /// Makes the pool of `module` instances for `routes`' versions of `model`'s models.
    pub(super) async fn entry_pool(
        &self,
        workload: &Workload,
        model: &ModelWorkload,
        module: &EntryModule,
        routes: &Routes,
    ) -> Result<Arc<EntryPool>, StageError> {
        let engine = ModuleEngine::shared().map_err(StageError::Unschedulable)?;
        let file = module
            .files
            .iter()
            .find(|f| f.path == module.entry_file)
            .ok_or_else(|| {
                StageError::Failed(format!(
                    "{}: {} is not among its files",
                    module.module_ref(),
                    module.entry_file
                ))
            })?;
        if !self.cache.contains(&file.sha256) {
            return Err(StageError::Failed(format!(
                "{}: {} is missing from the cache",
                module.module_ref(),
                file.path
            )));
        }
        let wasm = self.cache.path(&file.sha256);
        let digest = file.sha256.clone();
        let compiled = self.compiled_cache();
        // Each model once (the first version of a split), at `/models/<name>`; the first
        // model also at `/model`, where Azure ML's AZUREML_MODEL_DIR points.
        let mut seen = BTreeSet::new();
        let mut mounts = Vec::new();
        let mut infos = Vec::new();
        let mut firsts: Vec<Arc<dyn Scorer>> = Vec::new();
        for (deployed, backend) in model.models.iter().zip(routes.backends()) {
            if !seen.insert(deployed.model_id.as_str()) {
                continue;
            }
            let folder: PathBuf = self.model_dir(deployed);
            if mounts.is_empty() {
                mounts.push(Mount {
                    host: folder.clone(),
                    guest: "/model".into(),
                });
            }
            mounts.push(Mount {
                host: folder,
                guest: format!("/models/{}", deployed.model_id),
            });
            infos.push(model_info(
                &deployed.model_id,
                deployed.version,
                &deployed.inputs,
                &deployed.outputs,
            ));
            firsts.push(Arc::clone(backend.scorer()));
        }
        let deployment = workload.deployment.clone();
        let settings = PoolSettings {
            module_ref: module.module_ref(),
            limits: SandboxLimits {
                deadline: Duration::from_millis(u64::from(module.sandbox.deadline_ms())),
                memory_bytes: module.sandbox.memory_mb() as usize * 1024 * 1024,
                instances: match module.sandbox.instances {
                    0 => SandboxLimits::default().instances,
                    n => n as usize,
                },
            },
            mounts,
            models: infos,
            log: Arc::new(move |source, text| {
                logbook::record(
                    &deployment,
                    LogLine {
                        at_ms: crate::now_ms(),
                        source: source.to_owned(),
                        text: logbook::clipped(text).to_owned(),
                    },
                )
            }),
        };
        let module_ref = module.module_ref();
        let started = Instant::now();
        // Compiling takes a core for seconds: off the async workers.
        let (component, cached) =
            tokio::task::spawn_blocking(move || compiled.load(engine, &wasm, &digest))
                .await
                .map_err(|err| {
                    StageError::Failed(format!("loading the entry module failed: {err}"))
                })?
                .map_err(StageError::Failed)?;
        let firsts = Arc::new(FirstVersions(firsts));
        let pool = EntryPool::start(engine, &component, settings, firsts)
            .await
            .map_err(StageError::Failed)?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            deployment = %workload.deployment,
            module = %module_ref,
            from_cache = cached,
            "entry module ready in {:.1} ms",
            seconds * 1000.0
        );
        Ok(Arc::new(pool))
    }

    /// Deletes compiled modules that no workload in `live` uses.
    pub(super) fn collect_compiled<'a>(&self, live: impl Iterator<Item = &'a Workload>) {
        let Ok(engine) = ModuleEngine::shared() else {
            return;
        };
        let digests: Vec<&str> = live
            .filter_map(|w| w.as_model()?.entry_module.as_ref())
            .flat_map(|m| m.files.iter().map(|f| f.sha256.as_str()))
            .collect();
        self.compiled_cache().retain(engine, &digests);
    }
}
