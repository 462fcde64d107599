//! The `container` section of a manifest: a container workload, its image (a registered image
//! artifact, or a reference the device's engine pulls), command, environment, port, limits,
//! health probe, restart policy and an optional model mounted read-only, checked field by
//! field into a [`ContainerSpec`] and written back for `to_manifest`.

use std::collections::BTreeMap;

use edgeship_domain::{Protocol, RestartPolicy, RuntimeKind, RuntimeOptions};
use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::{DeploymentSpec, ModelRef, RolloutPolicy, SpecError, err};

/// Environment variables the agent sets itself, to the mounted model's folder.
pub const RESERVED_ENV: [&str; 2] = ["AZUREML_MODEL_DIR", "EDGESHIP_MODEL_DIR"];
/// The least memory limit Docker accepts (6 MiB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Most CPUs a limit may name.
pub const MAX_CPUS: f64 = 1024.0;
/// Most environment variables and command arguments: they travel in every desired state.
pub const MAX_ENV: usize = 256;
pub const MAX_COMMAND: usize = 256;
/// Longest environment value or command argument.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;

/// The section as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerManifest {
    /// The engine's reference; optional with `image_artifact` (then the artifact's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `NAME[:VERSION|:latest]` of a registered `oci-image` artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_artifact: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The container port the endpoint fronts: exactly one.
    #[serde(default)]
    pub ports: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthManifest>,
    /// `no`, `on_failure` (default) or `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// With `on_failure` only; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// `NAME[:VERSION|:latest]` of a registered model mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesManifest {
    /// CPUs, fractions allowed (`0.5`); absent or 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// `256Mi`, `1G`, or bytes; absent or 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryManifest>,
}

/// A memory size as written: bytes (`268435456`) or with a unit (`"256Mi"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemoryManifest {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthManifest {
    /// HTTP path probed for health; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The container port probed; default the first of `ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// A validated container workload, as deployments and revisions store it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The engine's reference; empty: the image artifact's recorded one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_artifact: Option<ModelRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The container port the endpoint fronts.
    pub port: u16,
    /// Thousandths of a CPU; 0 is unlimited.
    #[serde(default)]
    pub cpu_millis: u32,
    /// 0 is unlimited.
    #[serde(default)]
    pub memory_bytes: u64,
    pub health_path: String,
    pub health_port: u16,
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
}

impl ContainerSpec {
    /// What it runs, for people: `scorer-image:latest, diabetes:1`, or the image reference.
    pub fn describe(&self) -> String {
        let image = match &self.image_artifact {
            Some(artifact) => artifact.to_string(),
            None => self.image.clone(),
        };
        match &self.model {
            Some(model) => format!("{image}, {model}"),
            None => image,
        }
    }

    /// The section that applies this spec (defaults written out).
    pub fn to_manifest(&self) -> ContainerManifest {
        let (restart, max_restarts) = match self.restart {
            RestartPolicy::OnFailure { max_restarts } => ("on_failure", Some(max_restarts)),
            other => (other.name(), None),
        };
        let limited = self.cpu_millis > 0 || self.memory_bytes > 0;
        ContainerManifest {
            image: (!self.image.is_empty()).then(|| self.image.clone()),
            image_artifact: self.image_artifact.as_ref().map(ToString::to_string),
            command: self.command.clone(),
            env: self.env.clone(),
            ports: vec![u32::from(self.port)],
            resources: limited.then(|| ResourcesManifest {
                cpus: (self.cpu_millis > 0).then(|| f64::from(self.cpu_millis) / 1000.0),
                memory: (self.memory_bytes > 0).then(|| memory_text(self.memory_bytes)),
            }),
            health: Some(HealthManifest {
                path: Some(self.health_path.clone()),
                port: Some(u32::from(self.health_port)),
            }),
            restart: Some(restart.to_owned()),
            max_restarts,
            model: self.model.as_ref().map(ToString::to_string),
        }
    }
}

impl ContainerManifest {
    pub(super) fn validate(&self) -> Result<ContainerSpec, SpecError> {
        let image_artifact = match &self.image_artifact {
            Some(text) => {
                Some(ModelRef::parse(text).map_err(|e| err("container.image_artifact", e))?)
            }
            None => None,
        };
        let image = match self.image.as_deref().map(str::trim) {
            Some(image) => {
                image_reference(image).map_err(|e| err("container.image", e))?;
                image.to_owned()
            }
            None if image_artifact.is_some() => String::new(),
            None => {
                return Err(err(
                    "container",
                    "give `image` (a reference the device's engine pulls) or `image_artifact` (a registered oci-image artifact), or both",
                ));
            }
        };
        if self.command.len() > MAX_COMMAND {
            return Err(err(
                "container.command",
                format!(
                    "has {} entries; the limit is {MAX_COMMAND}",
                    self.command.len()
                ),
            ));
        }
        if self.command.first().is_some_and(|c| c.trim().is_empty()) {
            return Err(err(
                "container.command[0]",
                "is empty: name the program to run",
            ));
        }
        for (i, arg) in self.command.iter().enumerate() {
            plain_value(arg).map_err(|e| err(format!("container.command[{i}]"), e))?;
        }
        self.check_env()?;
        let port = match self.ports.as_slice() {
            [port] => tcp_port(*port).map_err(|e| err("container.ports[0]", e))?,
            [] => {
                return Err(err(
                    "container.ports",
                    "required: the container port the endpoint fronts, e.g. [5001]",
                ));
            }
            [_, ..] => {
                return Err(err(
                    "container.ports",
                    "give exactly one port: the endpoint fronts one container port (a container that serves several needs a deployment per port)",
                ));
            }
        };
        let (cpu_millis, memory_bytes) = match &self.resources {
            Some(resources) => resources.validate()?,
            None => (0, 0),
        };
        let health = self.health.clone().unwrap_or_default();
        let health_path = health.path.unwrap_or_else(|| "/".to_owned());
        // Visible ASCII only: the agent's probe puts the path in a request line as it is.
        if !health_path.starts_with('/')
            || health_path.len() > 1024
            || !health_path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(err(
                "container.health.path",
                format!("{health_path:?} is not an HTTP path (`/`, `/healthz`)"),
            ));
        }
        let health_port = match health.port {
            Some(p) => tcp_port(p).map_err(|e| err("container.health.port", e))?,
            None => port,
        };
        let restart = RestartPolicy::parse(
            self.restart.as_deref().unwrap_or("on_failure"),
            self.max_restarts,
        )
        .map_err(|e| {
            let field = match e.starts_with("max_restarts") {
                true => "container.max_restarts",
                false => "container.restart",
            };
            err(field, e)
        })?;
        // Docker reads a retry count of 0 as "no limit": the opposite of what it says.
        if restart == (RestartPolicy::OnFailure { max_restarts: 0 }) {
            return Err(err(
                "container.max_restarts",
                "must be at least 1 (for no restarts, use restart: no)",
            ));
        }
        let model = match &self.model {
            Some(text) => Some(ModelRef::parse(text).map_err(|e| err("container.model", e))?),
            None => None,
        };
        if let (Some(model), Some(artifact)) = (&model, &image_artifact)
            && model.model_id == artifact.model_id
        {
            return Err(err(
                "container.model",
                format!(
                    "{} is the image artifact itself; mount a model registered on its own",
                    model.model_id
                ),
            ));
        }
        Ok(ContainerSpec {
            image,
            image_artifact,
            command: self.command.clone(),
            env: self.env.clone(),
            port,
            cpu_millis,
            memory_bytes,
            health_path,
            health_port,
            restart,
            model,
        })
    }

    fn check_env(&self) -> Result<(), SpecError> {
        if self.env.len() > MAX_ENV {
            return Err(err(
                "container.env",
                format!("has {} variables; the limit is {MAX_ENV}", self.env.len()),
            ));
        }
        for (name, value) in &self.env {
            let path = format!("container.env.{name}");
            let valid = !name.is_empty()
                && name.len() <= 256
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(err(
                    path,
                    "not a variable name: use letters, digits and `_`, not starting with a digit",
                ));
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                return Err(err(
                    path,
                    "reserved: the agent sets it to the mounted model's folder",
                ));
            }
            plain_value(value).map_err(|e| err(&path, e))?;
        }
        Ok(())
    }
}

impl ResourcesManifest {
    fn validate(&self) -> Result<(u32, u64), SpecError> {
        let cpu_millis = match self.cpus {
            None => 0,
            Some(cpus) if !(cpus.is_finite() && (0.0..=MAX_CPUS).contains(&cpus)) => {
                return Err(err(
                    "container.resources.cpus",
                    format!("{cpus} is not a CPU count from 0 (unlimited) to {MAX_CPUS}"),
                ));
            }
            // A limit never rounds down to none: 0.0001 CPUs is the smallest, a thousandth.
            Some(cpus) if cpus > 0.0 => ((cpus * 1000.0).round() as u32).max(1),
            Some(_) => 0,
        };
        let memory_bytes = match &self.memory {
            None => 0,
            Some(MemoryManifest::Bytes(bytes)) => *bytes,
            Some(MemoryManifest::Text(text)) => {
                parse_memory(text).map_err(|e| err("container.resources.memory", e))?
            }
        };
        if memory_bytes > i64::MAX as u64 {
            return Err(err(
                "container.resources.memory",
                format!("{memory_bytes} bytes is more than any engine takes"),
            ));
        }
        if memory_bytes > 0 && memory_bytes < MIN_MEMORY_BYTES {
            return Err(err(
                "container.resources.memory",
                format!("{memory_bytes} bytes is below 6Mi, the least Docker accepts"),
            ));
        }
        Ok((cpu_millis, memory_bytes))
    }
}

impl Manifest {
    /// A container workload's spec: the fields of model workloads are refused, each with why.
    pub(super) fn container_spec(
        &self,
        container: &ContainerManifest,
    ) -> Result<DeploymentSpec, SpecError> {
        let refuse =
            |field: &str, why: &str| Err(err(field, format!("not with `container`: {why}")));
        if self.model.is_some() {
            return refuse(
                "model",
                "a container workload runs its image; give the model it mounts as container.model",
            );
        }
        if !self.models.is_empty() {
            return refuse(
                "models",
                "a container workload runs one image; give the model it mounts as container.model",
            );
        }
        self.no_entry_module()?;
        if !self.traffic.is_empty() {
            return refuse(
                "traffic",
                "a container workload runs one image version (a new version is a new revision, switched blue/green)",
            );
        }
        if self.runtime.is_some() {
            return refuse("runtime", "the image brings its own runtime");
        }
        for (field, value) in [
            ("opencl_device", &self.opencl_device),
            ("opencl_precision", &self.opencl_precision),
        ] {
            if value.is_some() {
                return refuse(field, "it is for model workloads on runtime: opencl");
            }
        }
        if self.batching.is_some() {
            return refuse(
                "batching",
                "the agent batches for its own runtimes; a container batches requests itself",
            );
        }
        if self.endpoint.grpc_port.is_some() {
            return refuse(
                "endpoint.grpc_port",
                "the endpoint proxies HTTP to the container (gRPC scoring is for model workloads)",
            );
        }
        if let Some(i) = self
            .endpoint
            .protocols
            .iter()
            .position(|p| p != Protocol::Azureml.name())
        {
            return refuse(
                &format!("endpoint.protocols[{i}]"),
                "the endpoint proxies HTTP to the container, whatever it speaks; leave protocols out",
            );
        }
        let endpoint = self.endpoint.validate()?;
        let container = container.validate()?;
        Ok(DeploymentSpec {
            name: self.name.clone(),
            model: None,
            // Unused by a container workload; kept so that the record's shape stays one.
            runtime: RuntimeKind::Tract,
            endpoint,
            target: self.target.validate()?,
            priority: self.priority,
            rollout: match &self.rollout {
                Some(rollout) => rollout.validate()?,
                None => RolloutPolicy::default(),
            },
            traffic: Vec::new(),
            options: RuntimeOptions::default(),
            extra_models: Vec::new(),
            container: Some(container),
            model_signers: self.model_signers()?,
            entry_module: None,
        })
    }
}

fn tcp_port(port: u32) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port} is not a TCP port (1-65535)"))
}

/// An environment value or command argument: what an engine can pass to a process.
fn plain_value(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("contains a NUL character, which no process can be given".into());
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

/// `256Mi`, `1G`, `512k`, or bytes.
fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit_bytes: u64 = match unit.trim() {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => 0,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| unit_bytes > 0)
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a size: use bytes or a whole number with Ki, Mi, Gi (binary) or k, M, G (decimal), e.g. 256Mi"
            )
        })
}

/// A size as `to_manifest` writes it: with the largest binary unit that divides it.
fn memory_text(bytes: u64) -> MemoryManifest {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes.is_multiple_of(size) {
            return MemoryManifest::Text(format!("{}{unit}", bytes / size));
        }
    }
    MemoryManifest::Bytes(bytes)
}

/// An image reference as Docker reads it: `[registry[:port]/]path[:tag][@sha256:<hex>]`, the
/// path in lower case.
pub fn image_reference(text: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("{text:?} is not an image reference: {why}"));
    if text.is_empty() {
        return invalid("it is empty");
    }
    if text.len() > 512 {
        return invalid("it is longer than 512 characters");
    }
    let (name_tag, digest) = match text.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return invalid("a digest is sha256: and 64 lower-case hex digits");
        }
    }
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (name_tag, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return invalid(
                "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            );
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A first part with a dot or a port, or `localhost`, is a registry host.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let ok = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !ok {
            return invalid("the registry host has characters a host name cannot have");
        }
    }
    for part in parts {
        let ok = !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !ok {
            return invalid(
                "its name is lower-case letters, digits, '.', '_' and '-', with '/' between parts",
            );
        }
    }
    Ok(())
}
