//! The manifest file as users write it (YAML or JSON, snake_case keys, optional fields
//! optional), its parsing with field paths in every error, its validation into a
//! [`DeploymentSpec`], and the way back (`to_manifest`) with the change list `apply` prints.

use std::collections::BTreeSet;

use edgeship_domain::{Precision, RuntimeKind, RuntimeOptions, names};
use serde::{Deserialize, Serialize};

use super::{
    AbortPolicy, BatchingManifest, ContainerManifest, DEFAULT_DEVICE_TIMEOUT_SECONDS,
    DeploymentSpec, ExponentialRate, HealthGate, ModelRef, OnFailure, RolloutPolicy,
    SandboxManifest, SpecError, Strategy, Target, WaveSize, err,
};
use crate::fleet::selector::Selector;
use crate::registry::VersionSelector;
use edgeship_domain::trust::{PublicKey, TrustError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Several models on one endpoint, routed by name (instead of `model`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// A registered WASM entry module in front of the models, `NAME:VERSION` or
    /// `NAME:latest` (`spec/entry.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_module: Option<String>,
    /// Bounds of the entry module's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxManifest>,
    /// A container workload instead of models (`spec/container.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// With `runtime: opencl`: which OpenCL device runs the model on each device (`gpu`,
    /// `cpu`, `accelerator`, or a part of the device's name); a device without a match is
    /// `Unschedulable`. Default: the first GPU, else accelerator, else CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencl_device: Option<String>,
    /// With `runtime: opencl`: `fp16` stores weights and activations on the device in half
    /// precision (half the memory and bandwidth; arithmetic stays single precision), `fp32`
    /// (the default) in single.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencl_precision: Option<String>,
    pub endpoint: EndpointManifest,
    #[serde(default)]
    pub target: TargetManifest,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutManifest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficManifest>,
    /// Dynamic batching of each model's concurrent requests on the devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingManifest>,
    /// Model-signing public keys (`ed25519:…`): devices run a model version only if one of
    /// them signed its files (`edgeship model sign`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_signers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointManifest {
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
    /// The Open Inference Protocol over gRPC on this second port (needs `v2` in `protocols`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<u32>,
    /// HTTPS (and gRPC over TLS) with a certificate the hub's CA issues for the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTlsManifest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTlsManifest {
    /// Names clients reach the endpoint by (DNS names or IP addresses), at least one.
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetManifest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutManifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential: Option<ExponentialRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_gate: Option<HealthGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_timeout_seconds: Option<u32>,
}

/// A wave's size as written: `"10%"`, or a device count (`5` or `"5"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaveManifest {
    Count(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortManifest {
    pub max_failure_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_devices: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficManifest {
    pub model: String,
    pub weight: u32,
}

/// Reads a manifest file's text: JSON when it starts with `{`, YAML otherwise.
pub fn parse_manifest(text: &str) -> Result<Manifest, SpecError> {
    let located = |path: String, message: String| {
        let path = if path.is_empty() || path == "." {
            "manifest".to_owned()
        } else {
            path
        };
        err(path, message)
    };
    if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| located(e.path().to_string(), e.inner().to_string()))
    } else {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            // The YAML error names (part of) the path itself; say it once.
            let path = e.path().to_string();
            let message = e.inner().to_string();
            let message = match message.split_once(": ") {
                Some((head, rest)) if path.starts_with(head) => rest.to_owned(),
                _ => message,
            };
            located(path, message)
        })
    }
}

impl Manifest {
    /// Checks every field and fills in defaults.
    pub fn validate(&self) -> Result<DeploymentSpec, SpecError> {
        names::deployment_id(&self.name).map_err(|e| err("name", e.0))?;
        if let Some(container) = &self.container {
            return self.container_spec(container);
        }
        let traffic = self.traffic()?;
        let (model, extra_models) = self.models(&traffic)?;
        let entry_module = self.entry_module()?;
        let model = match (model, &self.model, traffic.first()) {
            (Some(first), _, _) => first,
            (None, Some(text), _) => ModelRef::parse(text).map_err(|e| err("model", e))?,
            (None, None, Some(first)) => ModelRef {
                model_id: first.model_id.clone(),
                version: VersionSelector::Exact(first.version),
            },
            (None, None, None) => {
                return Err(err(
                    "model",
                    "required (NAME:VERSION or NAME:latest), or `models` for several",
                ));
            }
        };
        if let Some(other) = traffic.iter().find(|t| t.model_id != model.model_id) {
            return Err(err(
                "traffic",
                format!(
                    "{}:{} is not a version of model {} (a split is between versions of one model)",
                    other.model_id, other.version, model.model_id
                ),
            ));
        }
        let runtime = match &self.runtime {
            Some(name) => RuntimeKind::parse(name).map_err(|e| err("runtime", e))?,
            None => RuntimeKind::Tract,
        };
        let opencl_device = match self.opencl_device.as_deref().map(str::trim) {
            None | Some("") => String::new(),
            Some(_) if runtime != RuntimeKind::Opencl => {
                return Err(err("opencl_device", "only for runtime: opencl".to_owned()));
            }
            Some(selector) if selector.len() > 128 || selector.chars().any(char::is_control) => {
                return Err(err(
                    "opencl_device",
                    "must be at most 128 printable characters".to_owned(),
                ));
            }
            Some(selector) => selector.to_owned(),
        };
        let opencl_precision = match self.opencl_precision.as_deref().map(str::trim) {
            None | Some("") => Precision::Fp32,
            Some(_) if runtime != RuntimeKind::Opencl => {
                return Err(err(
                    "opencl_precision",
                    "only for runtime: opencl".to_owned(),
                ));
            }
            Some(name) => Precision::parse(name).map_err(|e| err("opencl_precision", e))?,
        };
        Ok(DeploymentSpec {
            name: self.name.clone(),
            model: Some(model),
            runtime,
            endpoint: self.endpoint.validate()?,
            target: self.target.validate()?,
            priority: self.priority,
            rollout: match &self.rollout {
                Some(rollout) => rollout.validate()?,
                None => RolloutPolicy::default(),
            },
            traffic,
            options: RuntimeOptions {
                opencl_device,
                opencl_precision,
                ..match &self.batching {
                    Some(batching) => batching.validate()?,
                    None => RuntimeOptions::default(),
                }
            },
            extra_models,
            container: None,
            entry_module,
            model_signers: self.model_signers()?,
        })
    }

    /// The `model_signers` keys, parsed.
    pub(super) fn model_signers(&self) -> Result<Vec<PublicKey>, SpecError> {
        self.model_signers
            .iter()
            .enumerate()
            .map(|(i, key)| {
                key.parse()
                    .map_err(|e: TrustError| err(format!("model_signers[{i}]"), e.to_string()))
            })
            .collect()
    }
}

impl TargetManifest {
    pub(super) fn validate(&self) -> Result<Target, SpecError> {
        let mut devices = BTreeSet::new();
        for (i, id) in self.devices.iter().enumerate() {
            names::device_id(id).map_err(|e| err(format!("target.devices[{i}]"), e.0))?;
            devices.insert(id.clone());
        }
        let selector = match &self.selector {
            Some(text) => {
                Some(Selector::parse(text).map_err(|e| err("target.selector", e.to_string()))?)
            }
            None => None,
        };
        let target = Target { devices, selector };
        if target.is_empty() {
            return Err(err(
                "target",
                "is empty: name devices (target.devices) or a label selector (target.selector)",
            ));
        }
        Ok(target)
    }
}

impl RolloutManifest {
    pub(super) fn validate(&self) -> Result<RolloutPolicy, SpecError> {
        let strategy_name = self.strategy.as_deref().unwrap_or(
            match (self.waves.is_empty(), self.exponential.is_some()) {
                (false, _) => "waves",
                (true, true) => "exponential",
                (true, false) => "all_at_once",
            },
        );
        let strategy = match strategy_name {
            "all_at_once" => Strategy::AllAtOnce,
            "waves" => Strategy::Waves(self.waves()?),
            "exponential" => Strategy::Exponential(self.exponential()?),
            other => {
                return Err(err(
                    "rollout.strategy",
                    format!("unknown strategy {other:?}: use all_at_once, waves or exponential"),
                ));
            }
        };
        if !self.waves.is_empty() && !matches!(strategy, Strategy::Waves(_)) {
            return Err(err(
                "rollout.waves",
                format!("given, but the strategy is {strategy_name}"),
            ));
        }
        if self.exponential.is_some() && !matches!(strategy, Strategy::Exponential(_)) {
            return Err(err(
                "rollout.exponential",
                format!("given, but the strategy is {strategy_name}"),
            ));
        }
        if self.max_unavailable == Some(0) {
            return Err(err(
                "rollout.max_unavailable",
                "must be at least 1 (a rollout with none unavailable cannot move a device)",
            ));
        }
        let health_gate = self.health_gate.unwrap_or_default();
        if let Some(rate) = health_gate.max_error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(err(
                "rollout.health_gate.max_error_rate",
                format!("{rate} is not a fraction from 0 to 1 (0.01 is 1%)"),
            ));
        }
        if let Some(ms) = health_gate.max_p99_ms
            && !(ms.is_finite() && ms > 0.0)
        {
            return Err(err("rollout.health_gate.max_p99_ms", "must be above 0"));
        }
        let abort = match &self.abort {
            Some(abort) => Some(abort.validate()?),
            None => None,
        };
        let device_timeout_seconds = self
            .device_timeout_seconds
            .unwrap_or(DEFAULT_DEVICE_TIMEOUT_SECONDS);
        if device_timeout_seconds == 0 {
            return Err(err("rollout.device_timeout_seconds", "must be at least 1"));
        }
        Ok(RolloutPolicy {
            strategy,
            max_unavailable: self.max_unavailable,
            health_gate,
            abort,
            device_timeout_seconds,
        })
    }

    fn waves(&self) -> Result<Vec<WaveSize>, SpecError> {
        if self.waves.is_empty() {
            return Err(err(
                "rollout.waves",
                "the waves strategy needs waves, e.g. [\"10%\", \"50%\", \"100%\"]",
            ));
        }
        let mut waves: Vec<WaveSize> = Vec::new();
        for (i, wave) in self.waves.iter().enumerate() {
            let path = format!("rollout.waves[{i}]");
            let size = match wave {
                WaveManifest::Count(0) => return Err(err(path, "a wave moves at least 1 device")),
                WaveManifest::Count(n) => WaveSize::Devices(*n),
                WaveManifest::Text(text) => parse_wave(text).map_err(|e| err(&path, e))?,
            };
            if let Some(previous) = waves.last() {
                let larger = match (previous, &size) {
                    (WaveSize::Percent(a), WaveSize::Percent(b)) => b > a,
                    (WaveSize::Devices(a), WaveSize::Devices(b)) => b > a,
                    // Mixed kinds cannot be compared before the population is known.
                    _ => true,
                };
                if !larger {
                    return Err(err(
                        path,
                        format!(
                            "must be larger than waves[{}] ({previous}): waves are cumulative",
                            i - 1
                        ),
                    ));
                }
            }
            waves.push(size);
        }
        // The last wave covers everyone: a rollout never ends with devices left behind.
        if !matches!(waves.last(), Some(WaveSize::Percent(p)) if *p >= 100.0) {
            waves.push(WaveSize::Percent(100.0));
        }
        Ok(waves)
    }

    fn exponential(&self) -> Result<ExponentialRate, SpecError> {
        let rate = self.exponential.ok_or_else(|| {
            err(
                "rollout.exponential",
                "the exponential strategy needs {base_per_minute, increment_factor, max_per_minute}",
            )
        })?;
        if rate.base_per_minute == 0 {
            return Err(err(
                "rollout.exponential.base_per_minute",
                "must be at least 1",
            ));
        }
        if !(rate.increment_factor.is_finite() && rate.increment_factor >= 1.0) {
            return Err(err(
                "rollout.exponential.increment_factor",
                format!("{} must be 1 or more", rate.increment_factor),
            ));
        }
        if rate.max_per_minute < rate.base_per_minute {
            return Err(err(
                "rollout.exponential.max_per_minute",
                format!(
                    "{} is below base_per_minute ({})",
                    rate.max_per_minute, rate.base_per_minute
                ),
            ));
        }
        Ok(rate)
    }
}

impl AbortManifest {
    fn validate(&self) -> Result<AbortPolicy, SpecError> {
        if !(self.max_failure_percent.is_finite()
            && (0.0..100.0).contains(&self.max_failure_percent))
        {
            return Err(err(
                "rollout.abort.max_failure_percent",
                format!(
                    "{} is not a percentage from 0 to below 100",
                    self.max_failure_percent
                ),
            ));
        }
        let on_failure = match self.on_failure.as_deref() {
            None | Some("rollback") => OnFailure::Rollback,
            Some("pause") => OnFailure::Pause,
            Some(other) => {
                return Err(err(
                    "rollout.abort.on_failure",
                    format!("unknown action {other:?}: use rollback or pause"),
                ));
            }
        };
        Ok(AbortPolicy {
            max_failure_percent: self.max_failure_percent,
            min_devices: self.min_devices.unwrap_or(1).max(1),
            on_failure,
        })
    }
}

fn parse_wave(text: &str) -> Result<WaveSize, String> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(WaveSize::Percent(p)),
            _ => Err(format!(
                "{text:?} is not a percentage above 0% and up to 100%"
            )),
        };
    }
    match text.parse::<u64>() {
        Ok(0) => Err("a wave moves at least 1 device".into()),
        Ok(n) => Ok(WaveSize::Devices(n)),
        Err(_) => Err(format!(
            "{text:?} is neither a percentage (\"10%\") nor a device count (5)"
        )),
    }
}

impl DeploymentSpec {
    /// The manifest that applies this spec (defaults written out).
    pub fn to_manifest(&self) -> Manifest {
        let rollout = &self.rollout;
        let (strategy, waves, exponential) = match &rollout.strategy {
            Strategy::AllAtOnce => ("all_at_once", vec![], None),
            Strategy::Waves(waves) => (
                "waves",
                waves
                    .iter()
                    .map(|w| WaveManifest::Text(w.to_string()))
                    .collect(),
                None,
            ),
            Strategy::Exponential(rate) => ("exponential", vec![], Some(*rate)),
        };
        let (model, models) = if self.extra_models.is_empty() {
            (self.model.as_ref().map(ToString::to_string), Vec::new())
        } else {
            (None, self.all_models().map(ToString::to_string).collect())
        };
        let (entry_module, sandbox) = self
            .entry_module
            .as_ref()
            .map(super::EntryModuleSpec::to_manifest)
            .unzip();
        let mut manifest = Manifest {
            name: self.name.clone(),
            model,
            models,
            entry_module,
            sandbox: sandbox.flatten(),
            runtime: Some(self.runtime.name().to_owned()),
            opencl_device: (!self.options.opencl_device.is_empty())
                .then(|| self.options.opencl_device.clone()),
            opencl_precision: (self.options.opencl_precision != Precision::Fp32)
                .then(|| self.options.opencl_precision.name().to_owned()),
            model_signers: self.model_signers.iter().map(ToString::to_string).collect(),
            endpoint: EndpointManifest {
                port: u32::from(self.endpoint.port),
                auth: Some(self.endpoint.auth.name().to_owned()),
                protocols: self
                    .endpoint
                    .protocols
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect(),
                cors_origins: self.endpoint.cors_origins.clone(),
                grpc_port: self.endpoint.grpc_port.map(u32::from),
                tls: (!self.endpoint.tls_hostnames.is_empty()).then(|| EndpointTlsManifest {
                    hostnames: self.endpoint.tls_hostnames.clone(),
                }),
            },
            target: TargetManifest {
                devices: self.target.devices.iter().cloned().collect(),
                selector: self.target.selector.as_ref().map(ToString::to_string),
            },
            priority: self.priority,
            rollout: Some(RolloutManifest {
                strategy: Some(strategy.to_owned()),
                waves,
                exponential,
                max_unavailable: rollout.max_unavailable,
                health_gate: Some(rollout.health_gate),
                abort: rollout.abort.map(|a| AbortManifest {
                    max_failure_percent: a.max_failure_percent,
                    min_devices: Some(a.min_devices),
                    on_failure: Some(
                        match a.on_failure {
                            OnFailure::Rollback => "rollback",
                            OnFailure::Pause => "pause",
                        }
                        .to_owned(),
                    ),
                }),
                device_timeout_seconds: Some(rollout.device_timeout_seconds),
            }),
            traffic: self
                .traffic
                .iter()
                .map(|t| TrafficManifest {
                    model: format!("{}:{}", t.model_id, t.version),
                    weight: t.weight,
                })
                .collect(),
            batching: (self.options.max_batch_size > 0).then(|| BatchingManifest {
                max_batch_size: self.options.max_batch_size,
                max_queue_delay_ms: self.options.max_queue_delay_ms,
                max_queue_size: (self.options.max_queue_size > 0)
                    .then_some(self.options.max_queue_size),
            }),
            container: None,
        };
        // A container workload has no runtime or protocols of its own to write back.
        if let Some(container) = &self.container {
            manifest.runtime = None;
            manifest.endpoint.protocols.clear();
            manifest.container = Some(container.to_manifest());
        }
        manifest
    }
}
