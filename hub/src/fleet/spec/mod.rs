//! Deployment specs: what a user applies (a manifest file, YAML or JSON, in Azure ML CLI v2's
//! snake_case shape, or the flags of `deploy create`), checked field by field into the
//! [`DeploymentSpec`] the fleet stores. Nothing here touches storage: a spec that fails
//! validation names the field and the reason, and nothing is applied.
//!
//! The manifest types mirror the file; the spec types are what the rollout engine reads
//! (defaults filled in, strings parsed). `DeploymentSpec::to_manifest` goes back, for
//! `deploy show` and for the change list `deploy apply` prints (`changes.rs`). A deployment
//! runs models (`models.rs`), optionally behind an entry module (`entry.rs`), or one
//! container (`container.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use edgeship_domain::names::{self, NameKind};
use edgeship_domain::{Endpoint, RuntimeKind, RuntimeOptions};
use serde::{Deserialize, Serialize};

use super::selector::Selector;
use crate::registry::VersionSelector;

mod changes;
mod container;
mod endpoint;
mod entry;
mod manifest;
mod models;

pub use container::*;
pub use entry::*;
pub use manifest::*;
pub use models::*;

/// A manifest mistake: the field's path (`rollout.waves[2]`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SpecError {
    pub path: String,
    pub reason: String,
}

pub(crate) fn err(path: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// A model and which of its versions: `NAME:VERSION` or `NAME:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub model_id: String,
    pub version: VersionSelector,
}

impl ModelRef {
    /// Parses `NAME:VERSION`, `NAME:latest` or `NAME` (the latest version).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (model_id, version) = parse_versioned(NameKind::Model, text)?;
        Ok(Self { model_id, version })
    }
}

/// `NAME:VERSION`, `NAME:latest` or `NAME` (the latest) of a model or module.
pub(crate) fn parse_versioned(
    kind: NameKind,
    text: &str,
) -> Result<(String, VersionSelector), String> {
    let (id, version) = match text.rsplit_once(':') {
        Some((id, "latest")) => (id, VersionSelector::Latest),
        Some((id, v)) => match v.parse::<u32>() {
            Ok(n) if n > 0 => (id, VersionSelector::Exact(n)),
            _ => {
                return Err(format!(
                    "{text:?}: the version must be a number from 1 or `latest`"
                ));
            }
        },
        None => (text, VersionSelector::Latest),
    };
    names::id(kind, id).map_err(|e| e.0)?;
    Ok((id.to_owned(), version))
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.model_id, self.version)
    }
}

/// Which devices a deployment runs on: named devices, and devices whose labels match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub devices: BTreeSet<String>,
    pub selector: Option<Selector>,
}

impl Target {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.selector.is_none()
    }

    pub fn matches(&self, device_id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.devices.contains(device_id)
            || self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    AllAtOnce,
    /// Cumulative sizes, increasing; the last covers every targeted device.
    Waves(Vec<WaveSize>),
    Exponential(ExponentialRate),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    Percent(f64),
    Devices(u64),
}

impl WaveSize {
    /// How many of `population` devices this wave covers (at least one, when there are any).
    pub fn devices(self, population: usize) -> usize {
        let n = match self {
            WaveSize::Percent(p) => (population as f64 * p / 100.0).ceil() as usize,
            WaveSize::Devices(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        n.clamp(population.min(1), population)
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Percent(p) => write!(f, "{p}%"),
            WaveSize::Devices(n) => write!(f, "{n}"),
        }
    }
}

/// AWS IoT Jobs' exponential rollout rate: `base_per_minute`, multiplied by
/// `increment_factor` every minute, up to `max_per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExponentialRate {
    pub base_per_minute: u32,
    pub increment_factor: f64,
    pub max_per_minute: u32,
}

/// What a wave's devices must show before the next wave starts; the thresholds are also the
/// agent's line between `Healthy` and `Unhealthy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthGate {
    #[serde(default)]
    pub min_healthy_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Every moved device returns to the previous revision.
    Rollback,
    /// The rollout holds where it is until an operator resumes, rolls back or aborts it.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AbortPolicy {
    pub max_failure_percent: f64,
    pub min_devices: u32,
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    pub strategy: Strategy,
    /// Moved devices allowed to be not yet `Healthy` at once; `None` is no limit.
    pub max_unavailable: Option<u32>,
    pub health_gate: HealthGate,
    pub abort: Option<AbortPolicy>,
    pub device_timeout_seconds: u32,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            strategy: Strategy::AllAtOnce,
            max_unavailable: None,
            health_gate: HealthGate::default(),
            abort: None,
            device_timeout_seconds: DEFAULT_DEVICE_TIMEOUT_SECONDS,
        }
    }
}

pub const DEFAULT_DEVICE_TIMEOUT_SECONDS: u32 = 300;

/// One version behind a traffic split, with its share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficWeight {
    pub model_id: String,
    pub version: u32,
    pub weight: u32,
}

/// A validated deployment spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub name: String,
    /// The model served (the first, with `extra_models`); `None` for a container workload,
    /// whose models are in `container`. (Stored before containers existed: always present.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    pub runtime: RuntimeKind,
    pub endpoint: Endpoint,
    pub target: Target,
    pub priority: i32,
    pub rollout: RolloutPolicy,
    /// Several versions behind the endpoint; empty serves `model` alone.
    pub traffic: Vec<TrafficWeight>,
    /// Dynamic batching (and threads) on the devices.
    #[serde(default)]
    pub options: RuntimeOptions,
    /// More models served on the same endpoint, routed by name (`model` is the first and
    /// the default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_models: Vec<ModelRef>,
    /// A container workload instead of models (then `model` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// The WASM entry module in front of the models (stored before entry modules: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_module: Option<EntryModuleSpec>,
    /// Keys of which one must have signed each model version served (stored before model
    /// signatures existed: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_signers: Vec<edgeship_domain::trust::PublicKey>,
}

/// What a registered version is to the deployment that pins it; each role asks something
/// else of the version (see `desired::usable_as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinRole {
    /// Served by a runtime: it needs an ONNX file.
    Model,
    /// A container's image artifact: an `oci-image` version.
    ImageArtifact,
    /// Mounted into a container: any files.
    MountedModel,
}

impl DeploymentSpec {
    /// Every registered version the deployment runs, in the order revisions pin them: `model`
    /// then the others; for a container, its image artifact then its mounted model.
    pub fn all_models(&self) -> impl Iterator<Item = &ModelRef> {
        self.pinned().map(|(model, _)| model)
    }

    /// [`all_models`](Self::all_models) with the role each plays.
    pub fn pinned(&self) -> impl Iterator<Item = (&ModelRef, PinRole)> {
        let container = self.container.iter().flat_map(|c| {
            let artifact = c.image_artifact.iter().map(|m| (m, PinRole::ImageArtifact));
            artifact.chain(c.model.iter().map(|m| (m, PinRole::MountedModel)))
        });
        self.model
            .iter()
            .chain(&self.extra_models)
            .map(|m| (m, PinRole::Model))
            .chain(container)
    }

    /// What it serves, for people: `diabetes:latest`, or `diabetes:latest, digits:2`; for a
    /// container, its image artifact (or image) and mounted model.
    pub fn describe_models(&self) -> String {
        match &self.container {
            Some(container) => container.describe(),
            None => self
                .all_models()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
