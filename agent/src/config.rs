//! Agent configuration: a TOML file and command-line flags (flags win), parsed once into a
//! validated [`AgentConfig`] before anything binds or connects.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeship_domain::RuntimeKind;
use serde::Deserialize;

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub device_id: String,
    pub broker: BrokerAddress,
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Address scoring endpoints bind to (their ports come from deployments).
    pub serve_host: IpAddr,
    pub keep_alive: Duration,
    /// Largest MQTT packet the agent sends or accepts.
    pub max_packet_bytes: usize,
    /// The runtimes this agent may use (and announces), where they work; `None`: every one
    /// that works here. An operator keeps a GPU for other work with `runtimes = ["tract"]`.
    pub runtimes: Option<Vec<RuntimeKind>>,
    /// The container engine the agent drives for container workloads; `None`: it runs none.
    pub containers: Option<ContainerEngine>,
}

/// A container engine and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEngine {
    /// The Docker Engine API on `socket` (a Unix socket path, `unix://` or `tcp://` URL);
    /// `None`: `DOCKER_HOST`, else `/var/run/docker.sock`.
    Docker { socket: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

/// The file format, every field optional (flags or defaults fill the rest).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub device_id: Option<String>,
    pub broker: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub serve_host: Option<IpAddr>,
    pub keep_alive_secs: Option<u64>,
    pub max_packet_bytes: Option<usize>,
    /// Runtime names (`tract`, `opencl`); empty: every runtime that works here.
    #[serde(default)]
    pub runtimes: Vec<String>,
    /// `docker` runs container workloads on the host's Docker engine.
    pub containers: Option<String>,
    /// Where the Docker engine listens (default: `DOCKER_HOST`, else its usual socket).
    pub docker_socket: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The broker when neither the flags nor the config file name one: the hub's embedded broker
/// on the same machine, as `edgeship dev` and `edgeship hub` start it by default.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1024 * 1024;
/// A 256 KiB blob chunk plus its protobuf and MQTT envelopes.
pub const MIN_PACKET_BYTES: usize = 320 * 1024;

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| {
            // One line: where, then what (toml's own rendering spans several lines).
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = match line {
                Some(line) => format!("line {line}: {}", err.message().trim()),
                None => err.message().trim().to_owned(),
            };
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })
    }

    /// Applies `overrides` (from flags) on top of this (from the file).
    pub fn merge(mut self, overrides: RawConfig) -> Self {
        self.device_id = overrides.device_id.or(self.device_id);
        self.broker = overrides.broker.or(self.broker);
        self.data_dir = overrides.data_dir.or(self.data_dir);
        self.labels.extend(overrides.labels);
        self.serve_host = overrides.serve_host.or(self.serve_host);
        self.keep_alive_secs = overrides.keep_alive_secs.or(self.keep_alive_secs);
        self.max_packet_bytes = overrides.max_packet_bytes.or(self.max_packet_bytes);
        if !overrides.runtimes.is_empty() {
            self.runtimes = overrides.runtimes;
        }
        self.containers = overrides.containers.or(self.containers);
        self.docker_socket = overrides.docker_socket.or(self.docker_socket);
        self
    }

    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let device_id = self
            .device_id
            .ok_or_else(|| ConfigError::Invalid("a device id is required (--device-id)".into()))?;
        edgeship_domain::names::device_id(&device_id).map_err(|e| ConfigError::Invalid(e.0))?;
        let broker = parse_broker_url(self.broker.as_deref().unwrap_or(DEFAULT_BROKER))
            .map_err(ConfigError::Invalid)?;
        let data_dir = self
            .data_dir
            .ok_or_else(|| ConfigError::Invalid("a data dir is required (--data-dir)".into()))?;
        for (key, value) in &self.labels {
            edgeship_domain::names::label(key, value).map_err(|e| ConfigError::Invalid(e.0))?;
        }
        let max_packet_bytes = self.max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
        if max_packet_bytes < MIN_PACKET_BYTES {
            return Err(ConfigError::Invalid(format!(
                "max_packet_bytes is {max_packet_bytes}; at least {MIN_PACKET_BYTES} is needed for 256 KiB model chunks"
            )));
        }
        let runtimes = if self.runtimes.is_empty() {
            None
        } else {
            let parsed = self
                .runtimes
                .iter()
                .map(|name| RuntimeKind::parse(name))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::Invalid(format!("runtimes: {e}")))?;
            Some(parsed)
        };
        let containers = match (self.containers.as_deref(), self.docker_socket) {
            (None | Some("none"), None) => None,
            (None | Some("none"), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "docker_socket is set, but containers is not (add --containers docker)".into(),
                ));
            }
            (Some("docker"), socket) => Some(ContainerEngine::Docker { socket }),
            (Some(other), _) => {
                return Err(ConfigError::Invalid(format!(
                    "containers: unknown engine {other:?}: use docker (or none)"
                )));
            }
        };
        if containers.is_some() && !cfg!(feature = "containers") {
            return Err(ConfigError::Invalid(
                "containers: this agent is built without container workloads (the `containers` feature)".into(),
            ));
        }
        Ok(AgentConfig {
            containers,
            device_id,
            broker,
            data_dir,
            labels: self.labels,
            serve_host: self.serve_host.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            keep_alive: Duration::from_secs(self.keep_alive_secs.unwrap_or(15).max(5)),
            max_packet_bytes,
            runtimes,
        })
    }
}

/// Parses `mqtt://host:port` (or `tcp://`, or a bare `host:port`).
pub fn parse_broker_url(url: &str) -> Result<BrokerAddress, String> {
    let (host, port) = edgeship_proto::parse_broker_url(url)?;
    Ok(BrokerAddress { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_labels_merge() {
        let file: RawConfig = toml::from_str(
            "device_id = \"from-file\"\nbroker = \"mqtt://10.0.0.1:1884\"\ndata_dir = \"/var/lib/edgeship\"\n[labels]\nsite = \"north\"\n",
        )
        .expect("valid toml");
        let flags = RawConfig {
            device_id: Some("from-flag".into()),
            labels: BTreeMap::from([("gpu".into(), "none".into())]),
            ..RawConfig::default()
        };
        let config = file.merge(flags).validate().expect("valid");
        assert_eq!(config.device_id, "from-flag");
        assert_eq!(config.broker.to_string(), "mqtt://10.0.0.1:1884");
        assert_eq!(config.labels.len(), 2);
    }

    #[test]
    fn bad_values_are_named() {
        let err = |raw: RawConfig| raw.validate().expect_err("invalid").to_string();
        let base = || RawConfig {
            device_id: Some("d1".into()),
            data_dir: Some("/tmp/x".into()),
            ..RawConfig::default()
        };
        assert!(
            err(RawConfig {
                device_id: Some("a/b".into()),
                ..base()
            })
            .contains("invalid device id")
        );
        assert!(
            err(RawConfig {
                broker: Some("mqtts://h:1".into()),
                ..base()
            })
            .contains("unsupported broker URL")
        );
        assert!(
            err(RawConfig {
                broker: Some("mqtt://h:notaport".into()),
                ..base()
            })
            .contains("invalid port")
        );
        assert!(
            err(RawConfig {
                device_id: None,
                ..base()
            })
            .contains("device id is required")
        );
        assert!(
            err(RawConfig {
                runtimes: vec!["tract".into(), "cuda".into()],
                ..base()
            })
            .contains("runtimes:")
        );
        assert!(
            err(RawConfig {
                containers: Some("podman".into()),
                ..base()
            })
            .contains("unknown engine \"podman\"")
        );
        assert!(
            err(RawConfig {
                docker_socket: Some("/run/docker.sock".into()),
                ..base()
            })
            .contains("containers is not")
        );
        let unknown = toml::from_str::<RawConfig>("devise_id = \"x\"").expect_err("unknown field");
        assert!(unknown.to_string().contains("devise_id"), "{unknown}");
    }
}
