//! The container engine as the agent uses it: the Docker Engine API through `bollard`,
//! reduced to the few calls workloads need, each returning a message fit for a report.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

/// How long one call to the engine may take before it counts as unreachable.
const CALL_TIMEOUT_SECONDS: u64 = 120;
/// Loading or pulling an image of gigabytes on slow storage or a slow link takes longer than
/// any other call: those two have this bound instead.
const IMAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A connection to the host's Docker engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    /// `docker 28.2.2`: what the birth message announces.
    description: String,
}

/// What a new container is made of.
#[derive(Debug, Clone, Default)]
pub struct NewContainer {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// `host:container:ro` bind mounts.
    pub binds: Vec<String>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub restart: edgeship_domain::RestartPolicy,
}

/// What the engine says about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    pub id: String,
    /// `created`, `running`, `restarting`, `exited`, `dead`, …
    pub status: String,
    pub running: bool,
    pub exit_code: i64,
    /// The last exit was the kernel's out-of-memory kill.
    pub oom_killed: bool,
    pub restart_count: i64,
    /// The engine's own error starting it (a bad command, say).
    pub error: String,
    /// The container's address on its network, where the agent reaches its port.
    pub ip: Option<IpAddr>,
}

/// One container of a listing.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
}

fn message(err: DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

fn not_found(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects to the engine at `socket` (a Unix socket path or `unix://`/`tcp://` URL;
    /// default: `DOCKER_HOST`, else `/var/run/docker.sock`) and asks its version, so an
    /// unreachable engine is found at start, not at the first deployment.
    pub async fn connect(socket: Option<&str>) -> Result<Self, String> {
        let docker = match socket {
            Some(socket) if socket.starts_with("tcp://") || socket.starts_with("http://") => {
                Docker::connect_with_http(
                    socket,
                    CALL_TIMEOUT_SECONDS,
                    bollard::API_DEFAULT_VERSION,
                )
            }
            Some(socket) => Docker::connect_with_unix(
                socket.trim_start_matches("unix://"),
                CALL_TIMEOUT_SECONDS,
                bollard::API_DEFAULT_VERSION,
            ),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|err| format!("cannot reach the Docker engine: {err}"))?;
        let version = docker
            .version()
            .await
            .map_err(|err| format!("cannot reach the Docker engine: {}", message(err)))?;
        let description = format!("docker {}", version.version.unwrap_or_default());
        Ok(Self {
            docker,
            description,
        })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The id of the image `reference` names, if the engine has it.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, String> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(err) if not_found(&err) => Ok(None),
            Err(err) => Err(message(err)),
        }
    }

    /// Loads an image archive (`docker save` layout) from `tarball`, streamed from disk.
    pub async fn load(&self, tarball: &Path) -> Result<(), String> {
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|err| format!("cannot read the image archive: {err}"))?;
        let chunks = file_chunks(file);
        let options = ImportImageOptionsBuilder::new().quiet(true).build();
        let docker = self.docker.clone().with_timeout(IMAGE_TIMEOUT);
        let load = async {
            let mut progress = docker.import_image_stream(options, chunks, None);
            while let Some(item) = progress.next().await {
                let info =
                    item.map_err(|err| format!("the engine refused the image: {}", message(err)))?;
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("the engine refused the image: {detail}"));
                }
            }
            Ok(())
        };
        tokio::time::timeout(IMAGE_TIMEOUT, load)
            .await
            .map_err(|_| format!("loading took longer than {} s", IMAGE_TIMEOUT.as_secs()))?
    }

    /// Pulls `reference` from its registry.
    pub async fn pull(&self, reference: &str) -> Result<(), String> {
        let options = CreateImageOptionsBuilder::new()
            .from_image(reference)
            .build();
        let docker = self.docker.clone().with_timeout(IMAGE_TIMEOUT);
        let pull = async {
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                let info = item.map_err(message)?;
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(detail);
                }
            }
            Ok(())
        };
        tokio::time::timeout(IMAGE_TIMEOUT, pull)
            .await
            .map_err(|_| format!("the pull took longer than {} s", IMAGE_TIMEOUT.as_secs()))?
    }

    /// Creates (does not start) a container; returns its id.
    pub async fn create(&self, spec: &NewContainer) -> Result<String, String> {
        let (name, maximum_retry_count) = match spec.restart {
            edgeship_domain::RestartPolicy::No => (RestartPolicyNameEnum::NO, None),
            edgeship_domain::RestartPolicy::Always => (RestartPolicyNameEnum::ALWAYS, None),
            // Docker reads a count of 0 as "no limit"; the hub never sends one, and no
            // restarts is what it would mean.
            edgeship_domain::RestartPolicy::OnFailure { max_restarts: 0 } => {
                (RestartPolicyNameEnum::NO, None)
            }
            edgeship_domain::RestartPolicy::OnFailure { max_restarts } => (
                RestartPolicyNameEnum::ON_FAILURE,
                Some(i64::from(max_restarts)),
            ),
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            // Kubernetes' meaning of `command`: it replaces the image's entrypoint, and the
            // image's own arguments go with it.
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            host_config: Some(HostConfig {
                binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
                nano_cpus: (spec.nano_cpus > 0).then_some(spec.nano_cpus),
                memory: (spec.memory_bytes > 0).then_some(spec.memory_bytes),
                // No swap beyond the memory limit: the limit is what the container gets.
                memory_swap: (spec.memory_bytes > 0).then_some(spec.memory_bytes),
                restart_policy: Some(DockerRestart {
                    name: Some(name),
                    maximum_retry_count,
                }),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(message)?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), String> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(message)
    }

    /// The container's state, or `None` when the engine no longer has it.
    pub async fn inspect(&self, id: &str) -> Result<Option<Inspected>, String> {
        let info = match self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(info) => info,
            Err(err) if not_found(&err) => return Ok(None),
            Err(err) => return Err(message(err)),
        };
        let state = info.state.unwrap_or_default();
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|networks| {
                networks
                    .into_values()
                    .filter_map(|n| n.ip_address)
                    .find_map(|ip| ip.parse::<IpAddr>().ok())
            });
        Ok(Some(Inspected {
            id: info.id.unwrap_or_default(),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            running: state.status == Some(ContainerStateStatusEnum::RUNNING),
            exit_code: state.exit_code.unwrap_or_default(),
            oom_killed: state.oom_killed.unwrap_or_default(),
            restart_count: info.restart_count.unwrap_or_default(),
            error: state.error.unwrap_or_default(),
            ip,
        }))
    }

    /// The container's last `tail` lines of stdout and stderr, interleaved as written.
    pub async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(id, Some(options))
            .try_collect()
            .await
            .map_err(message)?;
        let text: String = chunks.iter().map(ToString::to_string).collect();
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// The container's newest `tail` lines written after `since_ms`, with their times, oldest
    /// first.
    pub async fn timed_logs(
        &self,
        id: &str,
        tail: usize,
        since_ms: i64,
    ) -> Result<Vec<crate::logbook::LogLine>, String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            // The engine counts in whole seconds; the milliseconds are filtered below.
            .since(i32::try_from(since_ms.max(0) / 1000).unwrap_or(i32::MAX))
            .tail(&tail.to_string())
            .build();
        let chunks: Vec<LogOutput> = self
            .docker
            .logs(id, Some(options))
            .try_collect()
            .await
            .map_err(message)?;
        let mut lines = Vec::new();
        for chunk in chunks {
            let source = match &chunk {
                LogOutput::StdErr { .. } => "stderr",
                _ => "stdout",
            };
            for line in chunk.to_string().lines() {
                let (at_ms, text) = match line.split_once(' ') {
                    Some((stamp, text)) => match humantime::parse_rfc3339(stamp) {
                        Ok(at) => (
                            at.duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as i64),
                            text,
                        ),
                        Err(_) => (0, line),
                    },
                    None => (0, line),
                };
                if at_ms > since_ms || since_ms == 0 {
                    lines.push(crate::logbook::LogLine {
                        at_ms,
                        source: source.into(),
                        text: crate::logbook::clipped(text).to_owned(),
                    });
                }
            }
        }
        Ok(lines)
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace_seconds`.
    pub async fn stop(&self, id: &str, grace_seconds: i32) -> Result<(), String> {
        let options = StopContainerOptionsBuilder::new().t(grace_seconds).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(message(err)),
        }
    }

    /// Stops and removes a container; one already gone is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), String> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(message(err)),
        }
    }

    /// Every container (running or not) carrying all of `labels`.
    pub async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<Listed>, String> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(message)?;
        Ok(found
            .into_iter()
            .map(|c| Listed {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                labels: c.labels.unwrap_or_default(),
                running: c.state.map(|s| s.to_string()).as_deref() == Some("running"),
            })
            .collect())
    }

    /// How many containers, of any owner and in any state, were made from `image_id`.
    pub async fn containers_of_image(&self, image_id: &str) -> Result<usize, String> {
        let filters = HashMap::from([("ancestor".to_owned(), vec![image_id.to_owned()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        Ok(self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(message)?
            .len())
    }

    /// Removes an image with all its tags; one already gone is not an error.
    pub async fn remove_image(&self, image_id: &str) -> Result<(), String> {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        match self
            .docker
            .remove_image(image_id, Some(options), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(message(err)),
        }
    }
}

/// A file as a stream of chunks, for request bodies of any size.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; 256 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(Bytes::from(buffer)), Some(file)))
            }
            Err(err) => Some((Err(err), None)),
        }
    })
}
