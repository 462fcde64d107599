//! What the CLI shows: plain view types built from the hub's gRPC responses, rendered both as
//! tables and as `-o json`.
//!
//! Their JSON form is a contract for scripts, documented in `docs/cli-json.md`: snake_case
//! keys, times as RFC 3339 strings, sizes in bytes, service states by their Azure ML names
//! (`Healthy`), other enums as lower-case names (`none`, `azureml`). Every key is always
//! present (`null` when there is no value), so a script can tell "absent" from a typo. Adding a
//! key is a compatible change; renaming or removing one is not. The views are built from the
//! wire types, not from the hub's stored records, so the hub can change how it stores things
//! without changing what scripts read.

use std::collections::BTreeMap;
use std::fmt;

use edgeship_proto::v1 as pb;
use serde::Serialize;

use super::output::rfc3339;
use crate::client::state_name;

/// One model version (`model register|show|update`, and each entry of `model list`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    /// `models/{model_id}/versions/{version}`.
    pub name: String,
    pub model_id: String,
    pub version: u32,
    pub description: String,
    pub framework: String,
    pub framework_version: String,
    pub tags: BTreeMap<String, String>,
    pub properties: BTreeMap<String, String>,
    pub total_size_bytes: u64,
    pub files: Vec<ModelFileView>,
    /// The sample request body as JSON (it was checked to be JSON at registration).
    pub sample_input: Option<serde_json::Value>,
    pub sample_output: Option<serde_json::Value>,
    pub create_time: String,
    pub update_time: String,
    /// Model-signing keys (`ed25519:…`) whose signatures over the files the hub holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<String>,
}

/// One entry-module version (`module register|show`, and each entry of `module list`).
#[derive(Debug, Clone, Serialize)]
pub struct ModuleView {
    /// `modules/{module_id}/versions/{version}`.
    pub name: String,
    pub module_id: String,
    pub version: u32,
    pub description: String,
    /// The entry interface version it was built against (`1.0.0`).
    pub interface: String,
    /// Every interface it imports, WASI's and the host's.
    pub imports: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// With those the hub recorded (`module.interface`, `module.sha256`, ...).
    pub properties: BTreeMap<String, String>,
    pub total_size_bytes: u64,
    /// Its component (`onnx` is always `null`).
    pub files: Vec<ModelFileView>,
    pub create_time: String,
    pub update_time: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelFileView {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Present for ONNX files.
    pub onnx: Option<OnnxView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OnnxView {
    pub inputs: Vec<TensorView>,
    pub outputs: Vec<TensorView>,
    pub ir_version: i64,
    pub opsets: Vec<String>,
    pub producer: String,
    /// `null` when tract can run the model; else why it cannot.
    pub tract_incompatibility: Option<String>,
    /// Per runtime that splits a model between an accelerator and the CPU (OpenCL): which
    /// operators run where, as planned at registration.
    pub placements: Vec<edgeship_domain::RuntimePlacement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorView {
    pub name: String,
    pub element_type: String,
    /// One entry per axis: a number (fixed), a string (a named symbol such as `batch`) or
    /// `null` (unknown), the way ONNX tools print shapes.
    pub shape: Vec<Option<DimView>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DimView {
    Fixed(u64),
    Symbol(String),
}

/// A deployment with the state of each targeted device (`deploy create|show`, and each entry
/// of `deploy list`).
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    /// `deployments/{deployment_id}`.
    pub name: String,
    pub deployment_id: String,
    /// `model_id:version` or `model_id:latest`, as created (several joined by `, `); for a
    /// container, its image artifact (or image) and mounted model.
    pub model: String,
    /// The version `model` resolves to now; `null` when that model no longer exists (or a
    /// container pins none).
    pub resolved_version: Option<u32>,
    /// The entry module in front of the models, `module_id:version` or `module_id:latest`;
    /// `null` without one.
    pub entry_module: Option<String>,
    /// The module version the newest revision runs; `null` without an entry module.
    pub resolved_entry_module_version: Option<u32>,
    /// `tract`, `opencl`, or `container` for a container workload.
    pub runtime: String,
    pub endpoint: EndpointView,
    pub target: TargetView,
    pub state: &'static str,
    pub create_time: String,
    pub update_time: String,
    /// Where two deployments want one port on a device, the higher wins.
    pub priority: i32,
    /// The newest revision (what the last rollout moves devices to).
    pub revision: u64,
    /// The newest revision's rollout.
    pub rollout: Option<super::rollout::RolloutView>,
    pub devices: Vec<DeploymentDeviceView>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub port: u32,
    /// `none`, `key` or `token`.
    pub auth: &'static str,
    /// `azureml`, `v2`.
    pub protocols: Vec<&'static str>,
    pub cors_origins: Vec<String>,
    /// 0 when the endpoint serves no gRPC.
    #[serde(skip_serializing_if = "is_zero")]
    pub grpc_port: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub device_ids: Vec<String>,
    /// The selector's `key=value` terms when it has no others (kept for scripts written
    /// before set-based selectors); `selector` is the whole of it.
    pub label_selector: BTreeMap<String, String>,
    /// Kubernetes-style: `site in (berlin,paris),accelerator=opencl,!canary`.
    pub selector: Option<String>,
}

/// One targeted device's view of a deployment.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentDeviceView {
    pub device_id: String,
    pub online: bool,
    pub state: &'static str,
    /// Why the device is not healthy; `null` when it is.
    pub error: Option<String>,
    /// `model_id:version` serving now; `null` when nothing is.
    pub serving_model: Option<String>,
}

/// A device (`device show`, and each entry of `device list`).
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// `devices/{device_id}`.
    pub name: String,
    pub device_id: String,
    pub online: bool,
    /// False for a device a deployment named but that has never connected.
    pub ever_seen: bool,
    /// `null` when the device has never connected.
    pub last_seen: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub capabilities: CapabilitiesView,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapabilitiesView {
    pub arch: String,
    pub os: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub runtimes: Vec<String>,
    /// Every OpenCL device the agent found (GPUs, CPUs through PoCL, FPGAs).
    pub opencl_devices: Vec<edgeship_domain::OpenClDevice>,
    /// The container engine the agent drives (`docker 28.2.2`); `null` when it runs no
    /// containers.
    pub container_engine: Option<String>,
}

/// One deployment as a device reports it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadView {
    pub deployment: String,
    pub state: &'static str,
    /// Why the workload is not healthy; `null` when it is.
    pub error: Option<String>,
    /// What is serving now; `null` when nothing is.
    pub serving_model: Option<String>,
    /// What the device has been asked to serve.
    pub desired_model: Option<String>,
    pub port: u32,
    pub requests: u64,
    pub errors: u64,
    pub mean_latency_ms: f64,
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn sorted(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn millis(time: Option<prost_types::Timestamp>) -> i64 {
    time.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or_default()
}

/// A sample as JSON; the hub checked it is JSON, but a string is kept rather than lost.
fn sample(text: String) -> Option<serde_json::Value> {
    let text = non_empty(text)?;
    Some(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

impl From<pb::Model> for ModelView {
    fn from(model: pb::Model) -> Self {
        let files: Vec<ModelFileView> = model.files.into_iter().map(ModelFileView::from).collect();
        ModelView {
            name: format!("models/{}/versions/{}", model.model_id, model.version),
            model_id: model.model_id,
            version: model.version,
            description: model.description,
            framework: model.framework,
            framework_version: model.framework_version,
            tags: sorted(model.tags),
            properties: sorted(model.properties),
            // Summed here rather than trusted from the response: it is what the files listed
            // below add up to, whichever hub version answered.
            total_size_bytes: files.iter().map(|f| f.size_bytes).sum(),
            files,
            sample_input: sample(model.sample_input),
            sample_output: sample(model.sample_output),
            create_time: rfc3339(millis(model.create_time)),
            update_time: rfc3339(millis(model.update_time)),
            signed_by: model.signatures.into_iter().map(|s| s.public_key).collect(),
        }
    }
}

impl From<pb::Module> for ModuleView {
    fn from(module: pb::Module) -> Self {
        let files: Vec<ModelFileView> = module.files.into_iter().map(ModelFileView::from).collect();
        ModuleView {
            name: format!("modules/{}/versions/{}", module.module_id, module.version),
            module_id: module.module_id,
            version: module.version,
            description: module.description,
            interface: module.interface_version,
            imports: module.imports,
            tags: sorted(module.tags),
            properties: sorted(module.properties),
            total_size_bytes: files.iter().map(|f| f.size_bytes).sum(),
            files,
            create_time: rfc3339(millis(module.create_time)),
            update_time: rfc3339(millis(module.update_time)),
        }
    }
}

impl From<pb::ModelFile> for ModelFileView {
    fn from(file: pb::ModelFile) -> Self {
        ModelFileView {
            path: file.path,
            size_bytes: file.size_bytes,
            sha256: file.sha256,
            onnx: file.onnx.map(|onnx| OnnxView {
                inputs: onnx.inputs.into_iter().map(TensorView::from).collect(),
                outputs: onnx.outputs.into_iter().map(TensorView::from).collect(),
                ir_version: onnx.ir_version,
                opsets: onnx.opsets,
                producer: onnx.producer,
                tract_incompatibility: non_empty(onnx.tract_incompatibility),
                placements: onnx
                    .placements
                    .into_iter()
                    .map(edgeship_domain::RuntimePlacement::from)
                    .collect(),
            }),
        }
    }
}

impl From<pb::TensorSpec> for TensorView {
    fn from(spec: pb::TensorSpec) -> Self {
        TensorView {
            name: spec.name,
            element_type: spec.element_type,
            shape: spec
                .shape
                .into_iter()
                .map(|dim| match dim.value {
                    Some(pb::dim::Value::Fixed(size)) => Some(DimView::Fixed(size)),
                    Some(pb::dim::Value::Symbol(symbol)) => Some(DimView::Symbol(symbol)),
                    None => None,
                })
                .collect(),
        }
    }
}

/// `data: float32[?, 10]`, as the tables show a tensor.
impl fmt::Display for TensorView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|dim| match dim {
                Some(DimView::Fixed(size)) => size.to_string(),
                Some(DimView::Symbol(symbol)) => symbol.clone(),
                None => "?".to_owned(),
            })
            .collect();
        write!(
            f,
            "{}: {}[{}]",
            self.name,
            self.element_type,
            dims.join(", ")
        )
    }
}

/// The endpoint's auth mode by name; unspecified means `none` (see `device.proto`).
pub fn auth_name(code: i32) -> &'static str {
    match pb::AuthMode::try_from(code) {
        Ok(pb::AuthMode::Unspecified | pb::AuthMode::None) => "none",
        Ok(pb::AuthMode::Key) => "key",
        Ok(pb::AuthMode::Token) => "token",
        // A newer hub's mode: say so rather than guess.
        Err(_) => "unknown",
    }
}

pub fn protocol_name(code: i32) -> &'static str {
    match pb::Protocol::try_from(code) {
        Ok(pb::Protocol::Azureml) => "azureml",
        Ok(pb::Protocol::V2) => "v2",
        Ok(pb::Protocol::Unspecified) | Err(_) => "unknown",
    }
}

impl From<pb::Endpoint> for EndpointView {
    fn from(endpoint: pb::Endpoint) -> Self {
        let mut protocols: Vec<&'static str> = endpoint
            .protocols
            .iter()
            .map(|code| protocol_name(*code))
            .collect();
        // An empty list means Azure ML alone (see `device.proto`); show what is served.
        if protocols.is_empty() {
            protocols.push("azureml");
        }
        EndpointView {
            port: endpoint.port,
            auth: auth_name(endpoint.auth),
            protocols,
            cors_origins: endpoint.cors_origins,
            grpc_port: endpoint.grpc_port,
        }
    }
}

impl From<pb::Deployment> for DeploymentView {
    fn from(deployment: pb::Deployment) -> Self {
        let state = state_name(deployment.state());
        let target = deployment.target.unwrap_or_default();
        DeploymentView {
            name: format!("deployments/{}", deployment.deployment_id),
            deployment_id: deployment.deployment_id,
            model: deployment.model,
            resolved_version: (deployment.resolved_version != 0)
                .then_some(deployment.resolved_version),
            entry_module: non_empty(deployment.entry_module),
            resolved_entry_module_version: (deployment.resolved_entry_module_version != 0)
                .then_some(deployment.resolved_entry_module_version),
            runtime: deployment.runtime,
            endpoint: EndpointView::from(deployment.endpoint.unwrap_or_default()),
            target: TargetView {
                device_ids: target.device_ids,
                label_selector: sorted(target.label_selector),
                selector: (!target.selector.is_empty()).then_some(target.selector),
            },
            state,
            create_time: rfc3339(deployment.create_time_ms),
            update_time: rfc3339(deployment.update_time_ms.max(deployment.create_time_ms)),
            priority: deployment.priority,
            revision: deployment.revision,
            rollout: deployment.rollout.map(super::rollout::RolloutView::from),
            devices: deployment
                .devices
                .into_iter()
                .map(|device| DeploymentDeviceView {
                    state: state_name(device.state()),
                    device_id: device.device_id,
                    online: device.online,
                    error: non_empty(device.error),
                    serving_model: non_empty(device.serving_model),
                })
                .collect(),
        }
    }
}

impl From<pb::Device> for DeviceView {
    fn from(device: pb::Device) -> Self {
        let caps = device.capabilities.unwrap_or_default();
        let ever_seen = device.last_seen_ms != 0;
        DeviceView {
            name: format!("devices/{}", device.device_id),
            device_id: device.device_id,
            online: device.online,
            ever_seen,
            last_seen: ever_seen.then(|| rfc3339(device.last_seen_ms)),
            labels: sorted(device.labels),
            agent_version: device.agent_version,
            capabilities: CapabilitiesView {
                arch: caps.arch,
                os: caps.os,
                cpu_count: caps.cpu_count,
                memory_bytes: caps.memory_bytes,
                runtimes: caps.runtimes,
                opencl_devices: caps
                    .opencl_devices
                    .into_iter()
                    .map(edgeship_domain::OpenClDevice::from)
                    .collect(),
                container_engine: non_empty(caps.container_engine),
            },
            desired_generation: device.desired_generation,
            applied_generation: device.applied_generation,
            workloads: device
                .workloads
                .into_iter()
                .map(WorkloadView::from)
                .collect(),
        }
    }
}

impl From<pb::WorkloadStatus> for WorkloadView {
    fn from(workload: pb::WorkloadStatus) -> Self {
        let state = state_name(workload.state());
        let metrics = workload.metrics.unwrap_or_default();
        WorkloadView {
            state,
            deployment: workload.deployment,
            error: non_empty(workload.error),
            serving_model: non_empty(workload.serving_model),
            desired_model: non_empty(workload.desired_model),
            port: workload.port,
            requests: metrics.requests,
            errors: metrics.errors,
            mean_latency_ms: metrics.mean_latency_ms,
        }
    }
}

impl DeviceView {
    /// The ONLINE column: a device that has never connected is not merely offline.
    pub fn online_text(&self) -> &'static str {
        match (self.online, self.ever_seen) {
            (true, _) => "yes",
            (false, true) => "no",
            (false, false) => "never seen",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_enums_are_shown_by_name() {
        let view = EndpointView::from(pb::Endpoint {
            port: 5001,
            auth: pb::AuthMode::Key.into(),
            protocols: vec![pb::Protocol::Azureml.into(), pb::Protocol::V2.into()],
            cors_origins: vec![],
            grpc_port: 0,
            key_digests: vec![],
            token_keys: vec![],
            ..Default::default()
        });
        assert_eq!(view.auth, "key");
        assert_eq!(view.protocols, ["azureml", "v2"]);
        let defaults = EndpointView::from(pb::Endpoint::default());
        assert_eq!(defaults.auth, "none", "unspecified auth means none");
        assert_eq!(
            defaults.protocols,
            ["azureml"],
            "no protocol means Azure ML"
        );
        assert_eq!(auth_name(99), "unknown");
    }

    #[test]
    fn a_device_that_never_connected_has_no_last_seen() {
        let never = DeviceView::from(pb::Device {
            device_id: "ghost".into(),
            ..Default::default()
        });
        assert!(!never.ever_seen);
        assert_eq!(never.online_text(), "never seen");
        let json = serde_json::to_value(&never).expect("json");
        assert_eq!(json["last_seen"], serde_json::Value::Null);
        assert_eq!(json["ever_seen"], false);
        assert_eq!(json["name"], "devices/ghost");

        let seen = DeviceView::from(pb::Device {
            device_id: "edge".into(),
            last_seen_ms: 1_795_636_800_000,
            ..Default::default()
        });
        assert_eq!(seen.online_text(), "no");
        assert_eq!(seen.last_seen.as_deref(), Some("2026-11-25T20:00:00Z"));
    }

    #[test]
    fn tensors_print_unknown_axes_as_question_marks() {
        let tensor = TensorView::from(pb::TensorSpec {
            name: "data".into(),
            element_type: "float32".into(),
            shape: vec![
                pb::Dim { value: None },
                pb::Dim {
                    value: Some(pb::dim::Value::Symbol("batch".into())),
                },
                pb::Dim {
                    value: Some(pb::dim::Value::Fixed(10)),
                },
            ],
        });
        assert_eq!(tensor.to_string(), "data: float32[?, batch, 10]");
        assert_eq!(
            serde_json::to_value(&tensor).expect("json")["shape"],
            serde_json::json!([null, "batch", 10])
        );
    }
}
