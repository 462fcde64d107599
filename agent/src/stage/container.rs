//! Staging a container workload: its model folder, its container (adopted or started up to a
//! passing health probe), and the blue/green switch of the endpoint's proxy to it. The old
//! container stops only after the switch, once the requests it was serving have finished;
//! a new container that fails leaves the old one serving.

use std::sync::Arc;
use std::time::Duration;

use edgeship_domain::{ContainerWorkload, MountedModel, Workload};

use super::{Stage, StageError};
use crate::containers::monitor::Verdict;
use crate::containers::{RunningContainer, workload_key};
use crate::serve::router::window_length;
use crate::serve::{Backend, Routes};

/// How long the old container keeps serving the requests routed to it before the switch.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

impl Stage {
    pub(super) async fn apply_container(
        &mut self,
        workload: &Workload,
        spec: &ContainerWorkload,
    ) -> Result<(), StageError> {
        let Some(containers) = self.containers.clone() else {
            return Err(StageError::Unschedulable(
                "this agent runs no containers: start it with --containers docker".into(),
            ));
        };
        let deployment = workload.deployment.as_str();
        let window = window_length(workload.health.as_ref());
        // The container that serves was made for this very spec (the endpoint's auth, CORS or
        // health gate changed): it stays, and only the endpoint changes.
        let key = workload_key(spec);
        let same = self
            .endpoints
            .get(deployment)
            // A container the engine gave up on is replaced, even for the same spec.
            .filter(|served| {
                served
                    .container
                    .as_ref()
                    .is_some_and(|c| c.key == key && !matches!(c.verdict(), Verdict::Failed(_)))
            })
            .and_then(|served| served.endpoint.routes().backends().first().cloned());
        if let Some(backend) = same {
            backend.resize_window(window);
            let kept = self.take_container(deployment);
            let switched = self.switch(workload, Routes::single(backend)).await;
            self.put_back(deployment, kept).await;
            return switched;
        }
        let model_dir = match &spec.model {
            Some(model) => Some(self.stage_mounted(model)?),
            None => None,
        };
        let green = match containers.adopt(deployment, spec).await {
            Some(adopted) => adopted,
            None => {
                let loaded_before: Vec<&str> = self
                    .endpoints
                    .values()
                    .filter_map(|served| served.container.as_ref())
                    .filter(|c| c.loaded_image)
                    .map(|c| c.image_id.as_str())
                    .collect();
                containers
                    .start(
                        deployment,
                        spec,
                        model_dir.as_deref(),
                        &self.cache,
                        &loaded_before,
                    )
                    .await?
            }
        };
        let backend = Backend::new(green.upstream.clone(), window);
        let blue_backends = self
            .endpoints
            .get(deployment)
            .map(|served| served.endpoint.routes().backends().to_vec())
            .unwrap_or_default();
        let blue = self.take_container(deployment);
        if let Err(err) = self.switch(workload, Routes::single(backend)).await {
            self.put_back(deployment, blue).await;
            let in_use = self.image_in_use(&green.image_id);
            containers.stop(green, in_use).await;
            return Err(err);
        }
        if let Some(served) = self.endpoints.get_mut(deployment) {
            served.container = Some(green);
        }
        if let Some(blue) = blue {
            drain(&blue_backends).await;
            let in_use = self.image_in_use(&blue.image_id);
            containers.stop(blue, in_use).await;
        }
        Ok(())
    }

    /// The model's files, hard-linked from the cache into their folder (mounted read-only).
    fn stage_mounted(&self, model: &MountedModel) -> Result<std::path::PathBuf, StageError> {
        let folder = self.version_dir(&model.model_id, model.version);
        self.stage_files(&folder, &model.files)?;
        // The engine mounts by absolute path.
        std::fs::canonicalize(&folder)
            .map_err(|err| StageError::Failed(format!("staging the model: {err}")))
    }

    fn take_container(&mut self, deployment: &str) -> Option<RunningContainer> {
        self.endpoints
            .get_mut(deployment)
            .and_then(|served| served.container.take())
    }

    /// Gives a container back to its endpoint; stops it when the endpoint is gone.
    async fn put_back(&mut self, deployment: &str, container: Option<RunningContainer>) {
        let Some(container) = container else {
            return;
        };
        match self.endpoints.get_mut(deployment) {
            Some(served) => served.container = Some(container),
            None => self.stop_container(container).await,
        }
    }

    /// Stops a container no endpoint holds any more (and its image, when unused).
    pub(super) async fn stop_container(&mut self, container: RunningContainer) {
        let Some(containers) = self.containers.clone() else {
            return;
        };
        let in_use = self.image_in_use(&container.image_id);
        containers.stop(container, in_use).await;
    }

    /// Whether a container that serves another deployment runs this image.
    fn image_in_use(&self, image_id: &str) -> bool {
        self.endpoints
            .values()
            .filter_map(|served| served.container.as_ref())
            .any(|c| c.image_id == image_id)
    }

    /// Stops a removed deployment's container, and any other its agent labelled for it.
    pub(super) async fn remove_container(
        &mut self,
        deployment: &str,
        container: Option<RunningContainer>,
    ) {
        if let Some(container) = container {
            self.stop_container(container).await;
        }
        if let Some(containers) = &self.containers {
            containers.remove_strays(Some(deployment), &[]).await;
        }
    }

    /// The engine and id of the deployment's container, for its output.
    pub fn container_of(
        &self,
        deployment: &str,
    ) -> Option<(crate::containers::engine::Engine, String)> {
        let container = self.endpoints.get(deployment)?.container.as_ref()?;
        Some((
            self.containers.as_ref()?.engine().clone(),
            container.id.clone(),
        ))
    }

    /// Removes the containers this agent labelled that no endpoint holds: what a crash left
    /// mid-switch, or workloads removed while the agent was down. Called once the last good
    /// workloads are restored (and their containers adopted).
    pub async fn remove_stray_containers(&self) {
        let Some(containers) = &self.containers else {
            return;
        };
        let keep: Vec<&str> = self
            .endpoints
            .values()
            .filter_map(|served| served.container.as_ref())
            .map(|c| c.id.as_str())
            .collect();
        containers.remove_strays(None, &keep).await;
    }
}

/// Waits until no request holds any of `backends` (the caller's own handles aside), or the
/// drain deadline passes.
async fn drain(backends: &[Arc<Backend>]) {
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    while backends.iter().any(|b| Arc::strong_count(b) > 1)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
