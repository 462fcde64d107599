//! What a device is asked to run: a desired state is a list of workloads, one per deployment.
//! A workload is a tagged union (models in a runtime, or a container) behind an endpoint.
//!
//! The hub builds these from deployments and the registry; the agent plans and applies them;
//! `wire` converts them to and from the device protocol at each side's MQTT link.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::{BatchJob, RejectedJob};
use crate::signature::TensorSpec;
use crate::trust::{ModelSignature, PublicKey};

pub use crate::endpoint::{AuthMode, Endpoint, Protocol, ServingCertificate};

/// Everything one device should run: the whole truth, not a diff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub device_id: String,
    /// Strictly increasing per device.
    pub generation: u64,
    pub workloads: Vec<Workload>,
    /// Workloads of the message that this side could not take (a newer hub's workload kind,
    /// a bad field): each becomes `Unschedulable` or `Failed` on the device, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedWorkload>,
    /// Milliseconds since the Unix epoch, when the hub computed it.
    pub issued_at_ms: i64,
    /// Batch inference jobs to run (`edgeship job run`), until the hub has their output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<BatchJob>,
    /// Jobs of the message that this side could not take; each is reported `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_jobs: Vec<RejectedJob>,
}

/// A workload of a desired state that could not be decoded into a [`Workload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedWorkload {
    pub deployment: String,
    pub port: u16,
    /// `true`: valid but not supported here (`Unschedulable`); `false`: invalid (`Failed`).
    pub unsupported: bool,
    pub reason: String,
}

impl DesiredState {
    /// Every blob the state names (models, entry modules, images, jobs' models and inputs),
    /// for entitlement and cache GC.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        self.workloads
            .iter()
            .flat_map(Workload::blobs)
            .chain(self.jobs.iter().flat_map(BatchJob::blobs))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// The deployment's name; unique on a device.
    pub deployment: String,
    pub endpoint: Endpoint,
    pub kind: WorkloadKind,
    /// When a serving workload counts as `Unhealthy` (the rollout's health gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthThresholds>,
}

/// Endpoint metrics over a sliding window that make a serving workload `Unhealthy`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HealthThresholds {
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub window_seconds: u32,
    /// Fewer requests than this in the window are too few to judge.
    pub min_requests: u32,
}

impl HealthThresholds {
    pub const DEFAULT_WINDOW_SECONDS: u32 = 30;
    pub const DEFAULT_MIN_REQUESTS: u32 = 20;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Model(ModelWorkload),
    Container(ContainerWorkload),
}

impl Workload {
    /// The blobs this workload needs on the device.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        let (models, module, container): (
            &[DeployedModel],
            Option<&EntryModule>,
            Option<&ContainerWorkload>,
        ) = match &self.kind {
            WorkloadKind::Model(model) => (&model.models, model.entry_module.as_ref(), None),
            WorkloadKind::Container(container) => (&[], None, Some(container)),
        };
        models
            .iter()
            .flat_map(|m| m.files.iter())
            .chain(module.into_iter().flat_map(|m| m.files.iter()))
            .chain(container.into_iter().flat_map(|c| {
                c.image_files
                    .iter()
                    .chain(c.model.iter().flat_map(|m| m.files.iter()))
            }))
    }

    /// What runs, for people and for the hub's rollouts: `diabetes:2`, `a:1, b:2`, or the
    /// container's image artifact (or image) and mounted model.
    pub fn describe(&self) -> String {
        match &self.kind {
            WorkloadKind::Model(model) => {
                let models = model
                    .models
                    .iter()
                    .map(DeployedModel::model_ref)
                    .collect::<Vec<_>>()
                    .join(", ");
                match &model.entry_module {
                    Some(module) => format!("{models} + module {}", module.module_ref()),
                    None => models,
                }
            }
            WorkloadKind::Container(container) => container.describe(),
        }
    }

    pub fn as_model(&self) -> Option<&ModelWorkload> {
        match &self.kind {
            WorkloadKind::Model(model) => Some(model),
            WorkloadKind::Container(_) => None,
        }
    }

    pub fn as_container(&self) -> Option<&ContainerWorkload> {
        match &self.kind {
            WorkloadKind::Model(_) => None,
            WorkloadKind::Container(container) => Some(container),
        }
    }
}

/// Which engine runs a model workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    Tract,
    Opencl,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Tract, RuntimeKind::Opencl];

    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Tract => "tract",
            RuntimeKind::Opencl => "opencl",
        }
    }

    /// Parses a runtime name as users write it in manifests and on the command line.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|r| r.name()).collect();
                format!("unknown runtime {name:?}: use one of {}", known.join(", "))
            })
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the OpenCL runtime stores tensors on the device (the manifest's `opencl_precision`).
/// Arithmetic is single precision either way: `Fp16` halves the memory weights and
/// activations take, and the bandwidth they use, at about three decimal digits per value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Fp16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }

    /// Bytes one stored element takes.
    pub fn bytes(self) -> usize {
        match self {
            Precision::Fp32 => 4,
            Precision::Fp16 => 2,
        }
    }

    /// Parses a precision as users write it in manifests (`fp32`, `fp16`).
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("unknown precision {name:?}: use fp32 or fp16"))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWorkload {
    pub runtime: RuntimeKind,
    /// One model, or several sharing the traffic by weight.
    pub models: Vec<DeployedModel>,
    pub options: RuntimeOptions,
    pub entry_module: Option<EntryModule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployedModel {
    pub model_id: String,
    pub version: u32,
    pub files: Vec<BlobRef>,
    /// The file the runtime loads, a path among `files`.
    pub entry_file: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// JSON body in the registry's sample convention (`{"data": ...}`).
    pub sample_input: Option<String>,
    /// Relative share of traffic; 0 with a single model.
    pub weight: u32,
    /// Signatures over the version's files (see [`crate::trust::model_statement`]).
    #[serde(default)]
    pub signatures: Vec<ModelSignature>,
    /// Keys of which at least one must have signed this version (the deployment's policy);
    /// empty: none required by the deployment.
    #[serde(default)]
    pub required_signers: Vec<PublicKey>,
}

impl DeployedModel {
    /// `model_id:version`.
    pub fn model_ref(&self) -> String {
        format!("{}:{}", self.model_id, self.version)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    /// 0 lets the runtime decide.
    pub threads: u32,
    /// 0 or 1: no batching.
    pub max_batch_size: u32,
    pub max_queue_delay_ms: u32,
    /// Requests waiting for a batch, at most; 0 lets the agent decide.
    #[serde(default)]
    pub max_queue_size: u32,
    /// Empty picks the runtime's default device.
    pub opencl_device: String,
    /// How the OpenCL runtime stores tensors on its device.
    #[serde(default)]
    pub opencl_precision: Precision,
}

/// A WASM entry module in front of a model workload's models (Azure ML's entry script).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryModule {
    pub module_id: String,
    pub version: u32,
    pub files: Vec<BlobRef>,
    /// The `.wasm` file among `files`.
    pub entry_file: String,
    /// The manifest's `sandbox:` bounds.
    #[serde(default)]
    pub sandbox: SandboxSpec,
}

impl EntryModule {
    /// `module_id:version`.
    pub fn module_ref(&self) -> String {
        format!("{}:{}", self.module_id, self.version)
    }
}

/// The bounds of an entry module's instances; 0 in a field takes its default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Longest one request may run in the module, models included (default 1000).
    pub deadline_ms: u32,
    /// Largest memory one instance may grow to, in MiB (default 64).
    pub memory_mb: u32,
    /// Instances kept ready, each serving one request at a time (default: one per core).
    pub instances: u32,
}

impl SandboxSpec {
    pub const DEFAULT_DEADLINE_MS: u32 = 1000;
    pub const DEFAULT_MEMORY_MB: u32 = 64;
    /// Bounds a manifest may set: a deadline of a minute, 4 GiB (a 32-bit memory's most),
    /// 64 instances.
    pub const MAX_DEADLINE_MS: u32 = 60_000;
    pub const MAX_MEMORY_MB: u32 = 4096;
    pub const MAX_INSTANCES: u32 = 64;

    pub fn deadline_ms(&self) -> u32 {
        match self.deadline_ms {
            0 => Self::DEFAULT_DEADLINE_MS,
            n => n,
        }
    }

    pub fn memory_mb(&self) -> u32 {
        match self.memory_mb {
            0 => Self::DEFAULT_MEMORY_MB,
            n => n,
        }
    }
}

/// A container the agent runs on its host's engine and fronts with the deployment's endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerWorkload {
    /// The engine's reference for the image, e.g. `diabetes-scorer:1`.
    pub image: String,
    /// `sha256:<hex>`, the image's id: the agent refuses an image whose id differs. Empty for
    /// an image the engine pulls from a registry by reference alone.
    pub image_digest: String,
    /// `NAME:VERSION` of the registered image artifact; empty when the engine pulls `image`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_artifact: String,
    /// The artifact's tarball (`docker save` or `edgeship package` output), fetched like model
    /// files and loaded into the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_files: Vec<BlobRef>,
    /// Replaces the image's entrypoint, and its arguments with it, when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The port inside the container that the endpoint's port fronts.
    pub container_port: u16,
    /// CPU limit in thousandths of a core; 0 is unlimited.
    pub cpu_millis: u32,
    /// Memory limit in bytes; 0 is unlimited.
    pub memory_bytes: u64,
    /// HTTP path the agent probes for health.
    pub health_path: String,
    /// Port the health probe uses; 0 is `container_port`.
    #[serde(default)]
    pub health_port: u16,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A model whose files are mounted read-only into the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<MountedModel>,
}

impl ContainerWorkload {
    /// What runs, as the hub's revision names it: the artifact (or the image reference), then
    /// the mounted model: `scorer-image:2, diabetes:1`.
    pub fn describe(&self) -> String {
        let image = match self.image_artifact.is_empty() {
            true => self.image.clone(),
            false => self.image_artifact.clone(),
        };
        match &self.model {
            Some(model) => format!("{image}, {}", model.model_ref()),
            None => image,
        }
    }

    /// The port the health probe calls inside the container.
    pub fn probe_port(&self) -> u16 {
        match self.health_port {
            0 => self.container_port,
            port => port,
        }
    }
}

/// When the engine restarts a container that stopped (Docker's restart policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Never: a stopped container stays stopped (and the workload is `Failed`).
    No,
    /// After a non-zero exit (a crash, an out-of-memory kill), at most this many times.
    OnFailure { max_restarts: u32 },
    /// Always, however it stopped (each restart is still reported).
    Always,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::OnFailure {
            max_restarts: RestartPolicy::DEFAULT_MAX_RESTARTS,
        }
    }
}

impl RestartPolicy {
    pub const DEFAULT_MAX_RESTARTS: u32 = 3;

    /// The policy's name as manifests write it (`no`, `on_failure`, `always`).
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure { .. } => "on_failure",
            RestartPolicy::Always => "always",
        }
    }

    /// Parses a policy name with `max_restarts` for `on_failure` (the default when `None`).
    pub fn parse(name: &str, max_restarts: Option<u32>) -> Result<Self, String> {
        match (name, max_restarts) {
            ("no", None) => Ok(RestartPolicy::No),
            ("always", None) => Ok(RestartPolicy::Always),
            ("on_failure", max) => Ok(RestartPolicy::OnFailure {
                max_restarts: max.unwrap_or(Self::DEFAULT_MAX_RESTARTS),
            }),
            ("no" | "always", Some(_)) => Err(format!(
                "max_restarts applies to on_failure only, not {name}"
            )),
            (other, _) => Err(format!(
                "unknown restart policy {other:?}: use no, on_failure or always"
            )),
        }
    }
}

/// A registered model mounted read-only into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountedModel {
    pub model_id: String,
    pub version: u32,
    pub files: Vec<BlobRef>,
}

impl MountedModel {
    /// `model_id:version`.
    pub fn model_ref(&self) -> String {
        format!("{}:{}", self.model_id, self.version)
    }
}

/// A file as a device fetches it: where it goes, and which blob holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    pub path: String,
    pub sha256: String,
    pub size_bytes: u64,
}
