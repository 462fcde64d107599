//! Container workloads on the host's engine: the image (loaded from a verified artifact, or
//! pulled), the container (labelled as this agent's, with the workload's limits, restart
//! policy and read-only model mount), its start up to a passing health probe, adoption after
//! an agent restart, and removal with the image it no longer needs.
//!
//! Design: a container is named and labelled by a digest of its workload, so the agent finds
//! the one it made for exactly this workload after a restart (adoption: no duplicate) and
//! every other container it labelled is a stray to remove (no orphan). The stage decides
//! when; this module only does what it is asked, and cleans up after itself when a start
//! fails, so a failed version leaves nothing behind.

pub mod engine;
pub mod monitor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use edgeship_domain::ContainerWorkload;
use sha2::{Digest, Sha256};

use crate::cache::BlobCache;
use crate::serve::proxy::Upstream;
use crate::stage::StageError;
use engine::{Engine, NewContainer};
use monitor::{Probe, Verdict, Watch, with_log_lines};

/// Labels on every container the agent makes.
pub const DEVICE_LABEL: &str = "dev.edgeship.device";
pub const DEPLOYMENT_LABEL: &str = "dev.edgeship.deployment";
pub const WORKLOAD_LABEL: &str = "dev.edgeship.workload";
/// Set when the agent loaded the container's image itself (from an artifact): the image then
/// goes with the last container that uses it. An image that was on the host before stays.
pub const LOADED_IMAGE_LABEL: &str = "dev.edgeship.loaded-image";

/// Where a mounted model appears inside the container: Azure ML's layout, so scoring images
/// written for Azure ML find it where they look.
pub const MODEL_MOUNT_ROOT: &str = "/var/azureml-app/azureml-models";

/// How long a new container has to pass its health probe.
const START_DEADLINE: Duration = Duration::from_secs(60);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long a stopping container gets to exit on SIGTERM before it is killed.
const STOP_GRACE_SECONDS: i32 = 10;

/// The host's container engine, as this device's agent uses it.
#[derive(Debug, Clone)]
pub struct Containers {
    engine: Engine,
    device_id: String,
}

/// A container that serves (or is about to serve) a workload.
#[derive(Debug)]
pub struct RunningContainer {
    /// The deployment it serves (its log lines name it, for `deploy logs`).
    pub deployment: String,
    pub id: String,
    pub name: String,
    /// The digest of the workload it was made for ([`workload_key`]).
    pub key: String,
    /// Where its port is reached, as the endpoint's proxy (and the watch, which moves it when
    /// the engine restarts the container elsewhere) sees it.
    pub upstream: Arc<Upstream>,
    /// The image's id, and whether the agent loaded it from an artifact (and so removes it).
    pub image_id: String,
    pub loaded_image: bool,
    watch: Watch,
}

impl RunningContainer {
    pub fn verdict(&self) -> Verdict {
        self.watch.verdict()
    }
}

/// A short, stable digest of what makes a container: the same workload, the same key.
pub fn workload_key(spec: &ContainerWorkload) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..6])
}

impl Containers {
    /// Connects to the Docker engine (`socket`: see [`Engine::connect`]).
    pub async fn connect(socket: Option<&str>, device_id: &str) -> Result<Self, String> {
        Ok(Self {
            engine: Engine::connect(socket).await?,
            device_id: device_id.to_owned(),
        })
    }

    /// `docker 28.2.2`.
    pub fn description(&self) -> &str {
        self.engine.description()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn name(&self, deployment: &str, key: &str) -> String {
        format!("edgeship.{}.{deployment}.{key}", self.device_id)
    }

    /// Makes the workload's image present and returns its id, and whether this call loaded it:
    /// loaded from the artifact's verified file when the engine lacks it, else pulled; an
    /// image whose id is not the one the hub recorded is refused.
    async fn image(
        &self,
        deployment: &str,
        spec: &ContainerWorkload,
        cache: &BlobCache,
    ) -> Result<(String, bool), StageError> {
        let failed = |why: String| StageError::Failed(why);
        let wanted = image_ref(spec);
        if let Some(id) = self.engine.image_id(wanted).await.map_err(failed)? {
            return Ok((self.check_id(spec, id)?, false));
        }
        match spec.image_files.first() {
            Some(file) => {
                let path = cache.path(&file.sha256);
                if !cache.contains(&file.sha256) {
                    return Err(failed(format!("{} is missing from the cache", file.path)));
                }
                self.engine.load(&path).await.map_err(|why| {
                    failed(format!("loading image {}: {why}", spec.image_artifact))
                })?;
                tracing::info!(%deployment, image = %spec.image, artifact = %spec.image_artifact, "image loaded into the engine");
            }
            None => {
                self.engine.pull(&spec.image).await.map_err(|why| {
                    failed(format!(
                        "image {} is not on this host and cannot be pulled: {why}",
                        spec.image
                    ))
                })?;
                tracing::info!(%deployment, image = %spec.image, "image pulled");
            }
        }
        match self.engine.image_id(wanted).await.map_err(failed)? {
            Some(id) => Ok((self.check_id(spec, id)?, !spec.image_files.is_empty())),
            None => Err(failed(format!(
                "the image archive of {} does not hold image {wanted}",
                spec.image_artifact
            ))),
        }
    }

    fn check_id(&self, spec: &ContainerWorkload, id: String) -> Result<String, StageError> {
        if !spec.image_digest.is_empty() && id != spec.image_digest {
            return Err(StageError::Failed(format!(
                "image {} is {id} on this host, not {} as registered",
                spec.image, spec.image_digest
            )));
        }
        Ok(id)
    }

    /// The running container this agent made for exactly `spec` of `deployment`, if there is
    /// one (after an agent restart: adopted, not started again).
    pub async fn adopt(
        &self,
        deployment: &str,
        spec: &ContainerWorkload,
    ) -> Option<RunningContainer> {
        let key = workload_key(spec);
        let found = self
            .engine
            .list(&[
                (DEVICE_LABEL, &self.device_id),
                (DEPLOYMENT_LABEL, deployment),
                (WORKLOAD_LABEL, &key),
            ])
            .await
            .ok()?;
        let listed = found.into_iter().find(|c| c.running)?;
        let state = self.engine.inspect(&listed.id).await.ok()??;
        let image_id = self.engine.image_id(image_ref(spec)).await.ok()??;
        tracing::info!(%deployment, container = %listed.name, "running container adopted");
        let upstream = Upstream::new(
            spec.describe(),
            SocketAddr::new(state.ip?, spec.container_port),
        );
        Some(RunningContainer {
            deployment: deployment.to_owned(),
            watch: Watch::start(
                self.engine.clone(),
                listed.id.clone(),
                deployment.to_owned(),
                spec.clone(),
                Arc::clone(&upstream),
            ),
            upstream,
            loaded_image: listed.labels.contains_key(LOADED_IMAGE_LABEL),
            id: listed.id,
            name: listed.name,
            key,
            image_id,
        })
    }

    /// Starts a container for `spec` of `deployment` and waits until its health probe passes.
    /// On any failure the new container is removed, and the error says why, with the
    /// container's last log lines when it ran. `loaded_before`: ids of the images this agent
    /// loaded for containers that run now (a new container of such an image owns it too).
    pub async fn start(
        &self,
        deployment: &str,
        spec: &ContainerWorkload,
        model_dir: Option<&Path>,
        cache: &BlobCache,
        loaded_before: &[&str],
    ) -> Result<RunningContainer, StageError> {
        let (image_id, loaded_now) = self.image(deployment, spec, cache).await?;
        let loaded_image = loaded_now || loaded_before.contains(&image_id.as_str());
        let key = workload_key(spec);
        let name = self.name(deployment, &key);
        // A container of that name is a leftover of an earlier try (adoption takes running
        // ones before this): make room.
        let _ = self.engine.remove(&name).await;
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut binds = Vec::new();
        if let (Some(model), Some(dir)) = (&spec.model, model_dir) {
            let inside = format!("{MODEL_MOUNT_ROOT}/{}/{}", model.model_id, model.version);
            binds.push(format!("{}:{inside}:ro", dir.display()));
            env.push(format!("AZUREML_MODEL_DIR={inside}"));
            env.push(format!("EDGESHIP_MODEL_DIR={inside}"));
        }
        let new = NewContainer {
            name: name.clone(),
            image: image_id.clone(),
            command: spec.command.clone(),
            env,
            labels: HashMap::from_iter(
                [
                    (DEVICE_LABEL, self.device_id.as_str()),
                    (DEPLOYMENT_LABEL, deployment),
                    (WORKLOAD_LABEL, key.as_str()),
                ]
                .into_iter()
                .chain(loaded_image.then_some((LOADED_IMAGE_LABEL, "true")))
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            ),
            binds,
            nano_cpus: i64::from(spec.cpu_millis) * 1_000_000,
            memory_bytes: i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX),
            restart: spec.restart,
        };
        let id = match self.engine.create(&new).await {
            Ok(id) => id,
            Err(why) => {
                if loaded_image {
                    self.remove_image_if_unused(deployment, &image_id).await;
                }
                return Err(StageError::Failed(format!(
                    "the engine refused the container: {why}"
                )));
            }
        };
        match self.until_healthy(&id, spec).await {
            Ok(addr) => {
                tracing::info!(%deployment, container = %name, %addr, "container started and healthy");
                let upstream = Upstream::new(spec.describe(), addr);
                Ok(RunningContainer {
                    deployment: deployment.to_owned(),
                    watch: Watch::start(
                        self.engine.clone(),
                        id.clone(),
                        deployment.to_owned(),
                        spec.clone(),
                        Arc::clone(&upstream),
                    ),
                    upstream,
                    id,
                    name,
                    key,
                    image_id,
                    loaded_image,
                })
            }
            Err(why) => {
                let lines = self
                    .engine
                    .logs(&id, monitor::REPORTED_LOG_LINES)
                    .await
                    .unwrap_or_default();
                let _ = self.engine.remove(&id).await;
                if loaded_image {
                    self.remove_image_if_unused(deployment, &image_id).await;
                }
                Err(StageError::Failed(with_log_lines(why, &lines)))
            }
        }
    }

    /// Starts container `id` and probes it until it answers, it stops, or time runs out.
    async fn until_healthy(
        &self,
        id: &str,
        spec: &ContainerWorkload,
    ) -> Result<SocketAddr, String> {
        self.engine
            .start(id)
            .await
            .map_err(|why| format!("the container did not start: {why}"))?;
        let probe = Probe::default();
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let mut last = String::from("no answer yet");
        loop {
            let state = self.engine.inspect(id).await?;
            let Some(state) = state else {
                return Err("the container was removed while starting".into());
            };
            if !state.running {
                // A container that stops before it ever answered is broken, whatever its
                // restart policy would do next.
                if state.status != "created" {
                    return Err(format!(
                        "{} before passing its health check",
                        monitor::describe_stop(&state, spec)
                    ));
                }
            } else if let Some(ip) = state.ip {
                match probe
                    .check(SocketAddr::new(ip, spec.probe_port()), &spec.health_path)
                    .await
                {
                    Ok(()) => return Ok(SocketAddr::new(ip, spec.container_port)),
                    Err(why) => last = why,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the container did not pass its health check within {} s (last probe: {last})",
                    START_DEADLINE.as_secs()
                ));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Stops and removes a container, then its image when the agent loaded it and nothing
    /// uses it any more (`image_in_use`: another workload of this agent needs it).
    pub async fn stop(&self, container: RunningContainer, image_in_use: bool) {
        drop(container.watch);
        let _ = self.engine.stop(&container.id, STOP_GRACE_SECONDS).await;
        if let Err(why) = self.engine.remove(&container.id).await {
            tracing::warn!(deployment = %container.deployment, container = %container.name, %why, "cannot remove the container");
            return;
        }
        tracing::info!(deployment = %container.deployment, container = %container.name, "container stopped and removed");
        if container.loaded_image && !image_in_use {
            self.remove_image_if_unused(&container.deployment, &container.image_id)
                .await;
        }
    }

    async fn remove_image_if_unused(&self, deployment: &str, image_id: &str) {
        match self.engine.containers_of_image(image_id).await {
            Ok(0) => match self.engine.remove_image(image_id).await {
                Ok(()) => {
                    tracing::info!(%deployment, image = %image_id, "image no longer used; removed")
                }
                Err(why) => {
                    tracing::warn!(%deployment, image = %image_id, %why, "cannot remove the image")
                }
            },
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(%deployment, image = %image_id, %why, "cannot list the image's containers")
            }
        }
    }

    /// Removes every container this agent labelled, of `deployment` when given, except those
    /// in `keep` (ids): what a crash left behind mid-switch, or a deleted deployment's.
    pub async fn remove_strays(&self, deployment: Option<&str>, keep: &[&str]) {
        let mut labels = vec![(DEVICE_LABEL, self.device_id.as_str())];
        if let Some(deployment) = deployment {
            labels.push((DEPLOYMENT_LABEL, deployment));
        }
        let Ok(found) = self.engine.list(&labels).await else {
            return;
        };
        for stray in found.iter().filter(|c| !keep.contains(&c.id.as_str())) {
            let deployment = stray
                .labels
                .get(DEPLOYMENT_LABEL)
                .map_or("", String::as_str);
            match self.engine.remove(&stray.id).await {
                Ok(()) => {
                    tracing::info!(%deployment, container = %stray.name, "stray container removed")
                }
                Err(why) => {
                    tracing::warn!(%deployment, container = %stray.name, %why, "cannot remove a stray container")
                }
            }
        }
    }
}

/// The image by id when the hub recorded one, else by reference.
fn image_ref(spec: &ContainerWorkload) -> &str {
    match spec.image_digest.as_str() {
        "" => &spec.image,
        id => id,
    }
}
