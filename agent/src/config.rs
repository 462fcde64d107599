//! Agent configuration: a TOML file and command-line flags (flags win), parsed once into a
//! validated [`AgentConfig`] before anything binds or connects.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeship_domain::RuntimeKind;
use edgeship_domain::trust::PublicKey;
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
    /// What the agent trusts desired states from.
    pub trust: Trust,
}

/// How the agent checks desired states, and what it proves itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The hub's director key: every desired state must carry its signature. `None` only
    /// with `insecure`: unsigned states are then taken.
    pub director_key: Option<PublicKey>,
    /// Explicitly asked for (`--insecure`): runs without a director key, over plaintext MQTT.
    pub insecure: bool,
    /// The identity enrollment left (`<data>/identity/`), for MQTT over TLS.
    pub identity: Option<TlsIdentity>,
    /// The device's own signature policy: one of these keys must have signed every model
    /// it runs (deployments may require more); empty: only what deployments require.
    pub model_signers: Vec<PublicKey>,
}

/// A device's certificate and key, and the CA it trusts brokers by (all PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(<certificate, key and CA>)")
    }
}

impl TlsIdentity {
    /// A TLS client configuration that trusts the hub's CA and presents this identity.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|err| format!("identity/ca.crt: {err}"))?;
            roots
                .add(cert)
                .map_err(|err| format!("identity/ca.crt: {err}"))?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("identity/device.crt: {err}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|err| format!("identity/device.key: {err}"))?;
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| format!("the device's identity: {err}"))
    }

    /// The identity in `dir`, if enrollment completed there (`device.crt` is written last).
    pub fn load(dir: &Path) -> Result<Option<Self>, ConfigError> {
        if !dir.join("device.crt").exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path, source })
        };
        Ok(Some(TlsIdentity {
            ca_pem: read("ca.crt")?,
            cert_pem: read("device.crt")?,
            key_pem: read("device.key")?,
        }))
    }
}

/// Where enrollment leaves the device's identity, inside the agent's data folder.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// Where enrollment leaves the director's public key.
pub fn enrolled_director_key(data_dir: &Path) -> PathBuf {
    identity_dir(data_dir).join("director.pub")
}

/// A container engine and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEngine {
    /// The Docker Engine API on `socket` (a Unix socket path, `unix://` or `tcp://` URL);
    /// `None`: `DOCKER_HOST`, else `/var/run/docker.sock`.
    Docker { socket: Option<String> },
}

pub type BrokerAddress = edgeship_proto::BrokerUrl;

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
    /// The hub's director key (`ed25519:…`), or a file holding it; default: the one
    /// enrollment stored in the data folder.
    pub director_key: Option<String>,
    /// Runs without a director key (unsigned desired states taken) over plaintext MQTT.
    pub insecure: Option<bool>,
    /// Model-signing keys (`ed25519:…`) of which one must have signed every model.
    #[serde(default)]
    pub model_signers: Vec<String>,
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
        self.director_key = overrides.director_key.or(self.director_key);
        self.insecure = overrides.insecure.or(self.insecure);
        if !overrides.model_signers.is_empty() {
            self.model_signers = overrides.model_signers;
        }
        self
    }

    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let data_dir = self
            .data_dir
            .ok_or_else(|| ConfigError::Invalid("a data dir is required (--data-dir)".into()))?;
        // An enrolled device's id and broker come from its enrollment unless given.
        let enrolled = Enrollment::load(&data_dir)?;
        let device_id = self
            .device_id
            .or_else(|| enrolled.as_ref().map(|e| e.device_id.clone()))
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "a device id is required (--device-id, or enroll the device first)".into(),
                )
            })?;
        edgeship_domain::names::device_id(&device_id).map_err(|e| ConfigError::Invalid(e.0))?;
        if let Some(enrolled) = &enrolled
            && enrolled.device_id != device_id
        {
            return Err(ConfigError::Invalid(format!(
                "this data folder holds the identity of device {:?}, not {device_id:?}",
                enrolled.device_id
            )));
        }
        let broker_url = self
            .broker
            .or_else(|| enrolled.as_ref().map(|e| e.broker.clone()))
            .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
        let broker = parse_broker_url(&broker_url).map_err(ConfigError::Invalid)?;
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
        let mut trust = trust(
            self.director_key.as_deref(),
            self.insecure.unwrap_or(false),
            &data_dir,
            &broker,
        )?;
        trust.model_signers = self
            .model_signers
            .iter()
            .map(|key| {
                key.parse()
                    .map_err(|err| ConfigError::Invalid(format!("model_signers: {err}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(AgentConfig {
            trust,
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

/// The director key from the configuration (the key itself or a file holding it), else the
/// enrolled one; without either, only an explicitly insecure agent runs.
fn trust(
    configured: Option<&str>,
    insecure: bool,
    data_dir: &Path,
    broker: &BrokerAddress,
) -> Result<Trust, ConfigError> {
    let read_file = |path: &Path| -> Result<PublicKey, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        text.parse().map_err(|err| {
            ConfigError::Invalid(format!("director key in {}: {err}", path.display()))
        })
    };
    let director_key = match configured {
        Some(text) if text.trim_start().starts_with("ed25519:") => Some(
            text.parse()
                .map_err(|err| ConfigError::Invalid(format!("director_key: {err}")))?,
        ),
        Some(path) => Some(read_file(Path::new(path))?),
        None => {
            let enrolled = enrolled_director_key(data_dir);
            if enrolled.exists() {
                Some(read_file(&enrolled)?)
            } else {
                None
            }
        }
    };
    if director_key.is_none() && !insecure {
        return Err(ConfigError::Invalid(
            "no director key to check desired states with: enroll this device (edgeship-agent enroll), \
             give the hub's key (--director-key FILE, the hub's <data>/keys/director.pub), \
             or run with --insecure to take unsigned states"
                .into(),
        ));
    }
    let identity = TlsIdentity::load(&identity_dir(data_dir))?;
    if let Some(identity) = &identity {
        identity.client_config().map_err(ConfigError::Invalid)?;
    }
    if broker.tls && identity.is_none() {
        return Err(ConfigError::Invalid(format!(
            "the broker {broker} speaks TLS: this device needs its identity first (edgeship-agent enroll)"
        )));
    }
    if !broker.tls && !insecure {
        return Err(ConfigError::Invalid(format!(
            "plaintext MQTT to {broker}: give the mqtts:// broker (enrollment records it), or run with --insecure"
        )));
    }
    Ok(Trust {
        director_key,
        insecure,
        identity,
        model_signers: Vec::new(),
    })
}

/// What enrollment recorded besides keys and certificates (`identity/enrollment.toml`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Enrollment {
    pub device_id: String,
    /// The broker the hub named (`mqtts://host:port`).
    pub broker: String,
}

impl Enrollment {
    pub const FILE: &str = "enrollment.toml";

    /// The enrollment recorded in `data_dir`, if the device enrolled.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = identity_dir(data_dir).join(Self::FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|err| ConfigError::Parse {
                    path,
                    message: err.message().to_owned(),
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

/// Parses `mqtts://host:port`, `mqtt://host:port` (or `tcp://`, or a bare `host:port`).
pub fn parse_broker_url(url: &str) -> Result<BrokerAddress, String> {
    edgeship_proto::parse_broker(url)
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
            insecure: Some(true),
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
            insecure: Some(true),
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
                broker: Some("ws://h:1".into()),
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
        assert!(
            err(RawConfig {
                insecure: None,
                ..base()
            })
            .contains("no director key")
        );
        assert!(
            err(RawConfig {
                director_key: Some("ed25519:short".into()),
                ..base()
            })
            .contains("director_key:")
        );
        assert!(
            err(RawConfig {
                director_key: Some("/nonexistent/director.pub".into()),
                ..base()
            })
            .contains("/nonexistent/director.pub")
        );
        let unknown = toml::from_str::<RawConfig>("devise_id = \"x\"").expect_err("unknown field");
        assert!(unknown.to_string().contains("devise_id"), "{unknown}");
    }

    #[test]
    fn the_director_key_comes_from_text_a_file_or_enrollment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = edgeship_domain::trust::SigningKey::generate()
            .expect("key")
            .public();
        let raw = |director_key: Option<String>| RawConfig {
            device_id: Some("d1".into()),
            data_dir: Some(dir.path().to_owned()),
            director_key,
            insecure: Some(true),
            ..RawConfig::default()
        };
        let trust = |raw: RawConfig| raw.validate().expect("valid").trust;
        assert_eq!(trust(raw(Some(key.to_string()))).director_key, Some(key));
        let file = dir.path().join("hub.pub");
        std::fs::write(&file, format!("{key}\n")).expect("write");
        let from_file = trust(raw(Some(file.display().to_string())));
        assert_eq!(from_file.director_key, Some(key));
        let enrolled = enrolled_director_key(dir.path());
        std::fs::create_dir_all(enrolled.parent().expect("parent")).expect("mkdir");
        std::fs::write(&enrolled, key.to_string()).expect("write");
        assert_eq!(trust(raw(None)).director_key, Some(key));
    }
}
