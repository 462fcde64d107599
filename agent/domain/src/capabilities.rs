//! What a device can run, and what a workload requires of it. The hub checks a workload's
//! requirements against each device's capabilities (from its birth message) before sending it,
//! so an unsupported workload is `Unschedulable` before anything is downloaded; the agent runs
//! the same check against its own capabilities, which catches a hub newer than the agent.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::workload::{AuthMode, Protocol, RuntimeKind, Workload, WorkloadKind};

/// A device's self-description (the birth message's `capabilities`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub arch: String,
    pub os: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    /// Runtimes whose libraries are present and working on this device, by name.
    pub runtimes: Vec<String>,
    #[serde(default)]
    pub opencl_devices: Vec<OpenClDevice>,
    /// Feature tokens (see [`Requirement::token`]); unknown tokens from newer agents are kept.
    #[serde(default)]
    pub features: BTreeSet<String>,
    /// The container engine the agent drives, with its version (`docker 28.2.2`); empty when
    /// it runs no containers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_engine: String,
}

/// One OpenCL device as the agent found it at start (`edgeship device show` lists them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenClDevice {
    pub platform: String,
    pub name: String,
    /// `gpu`, `cpu`, `accelerator` (FPGAs and other fixed-function parts) or `custom`.
    pub kind: String,
    #[serde(default)]
    pub vendor: String,
    /// The driver's version string: compiled programs and tuned tile sizes are kept per driver.
    #[serde(default)]
    pub driver_version: String,
    #[serde(default)]
    pub compute_units: u32,
    #[serde(default)]
    pub global_memory_bytes: u64,
    /// `OpenCL C 1.2`, `OpenCL C 3.0`, …
    #[serde(default)]
    pub opencl_c_version: String,
    /// Whether the device computes in half precision (`cl_khr_fp16`).
    #[serde(default)]
    pub fp16: bool,
}

impl OpenClDevice {
    /// Whether this device answers a manifest's `opencl_device` selector: empty (any), a kind
    /// (`gpu`, `cpu`, `accelerator`) or a part of the device's name.
    pub fn matches(&self, selector: &str) -> bool {
        let selector = selector.trim();
        selector.is_empty() || self.kind == selector || self.name.contains(selector)
    }
}

/// One thing a workload needs from the device that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    ModelWorkloads,
    ContainerWorkloads,
    Runtime(RuntimeKind),
    Protocol(Protocol),
    Auth(AuthMode),
    /// Several versions of a model behind one endpoint, sharing traffic by weight.
    TrafficSplit,
    /// Several models behind one endpoint, routed by name.
    MultiModel,
    /// The Open Inference Protocol over gRPC, on the endpoint's `grpc_port`.
    GrpcEndpoint,
    EntryModule,
    Batching,
    Threads,
    Cors,
}

impl Requirement {
    /// What every agent since 0.1.0 offers besides its runtimes: model workloads on an Azure
    /// ML endpoint without auth.
    pub const BASELINE: [Requirement; 3] = [
        Requirement::ModelWorkloads,
        Requirement::Protocol(Protocol::Azureml),
        Requirement::Auth(AuthMode::None),
    ];

    /// The token a device lists in `Capabilities::features` (runtimes are listed by name in
    /// `Capabilities::runtimes` instead, since they depend on the device's libraries).
    pub fn token(self) -> String {
        match self {
            Requirement::ModelWorkloads => "kind/model".into(),
            Requirement::ContainerWorkloads => "kind/container".into(),
            Requirement::Runtime(runtime) => format!("runtime/{runtime}"),
            Requirement::Protocol(protocol) => format!("protocol/{protocol}"),
            Requirement::Auth(auth) => format!("auth/{auth}"),
            Requirement::TrafficSplit => "traffic_split".into(),
            Requirement::MultiModel => "multi_model".into(),
            Requirement::GrpcEndpoint => "protocol/v2/grpc".into(),
            Requirement::EntryModule => "entry_module".into(),
            Requirement::Batching => "batching".into(),
            Requirement::Threads => "threads".into(),
            Requirement::Cors => "cors".into(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::ModelWorkloads => f.write_str("model workloads"),
            Requirement::ContainerWorkloads => f.write_str("container workloads"),
            Requirement::Runtime(runtime) => write!(f, "the {runtime} runtime"),
            Requirement::Protocol(protocol) => write!(f, "the {protocol} scoring protocol"),
            Requirement::Auth(auth) => write!(f, "endpoint auth {auth}"),
            Requirement::TrafficSplit => f.write_str("traffic splits across several versions"),
            Requirement::MultiModel => f.write_str("several models on one endpoint"),
            Requirement::GrpcEndpoint => f.write_str("a gRPC scoring port"),
            Requirement::EntryModule => f.write_str("entry modules"),
            Requirement::Batching => f.write_str("request batching"),
            Requirement::Threads => f.write_str("a thread count per inference"),
            Requirement::Cors => f.write_str("CORS origins"),
        }
    }
}

/// Everything `workload` needs, in a stable order.
pub fn requirements(workload: &Workload) -> Vec<Requirement> {
    let mut needs = BTreeSet::new();
    match &workload.kind {
        WorkloadKind::Model(model) => {
            needs.insert(Requirement::ModelWorkloads);
            needs.insert(Requirement::Runtime(model.runtime));
            let ids: BTreeSet<&str> = model.models.iter().map(|m| m.model_id.as_str()).collect();
            if ids.len() > 1 {
                needs.insert(Requirement::MultiModel);
            }
            if model.models.len() > ids.len() {
                needs.insert(Requirement::TrafficSplit);
            }
            if model.entry_module.is_some() {
                needs.insert(Requirement::EntryModule);
            }
            if model.options.max_batch_size > 1 {
                needs.insert(Requirement::Batching);
            }
            if model.options.threads > 0 {
                needs.insert(Requirement::Threads);
            }
        }
        WorkloadKind::Container(_) => {
            needs.insert(Requirement::ContainerWorkloads);
        }
    }
    for protocol in &workload.endpoint.protocols {
        needs.insert(Requirement::Protocol(*protocol));
    }
    if workload.endpoint.grpc_port.is_some() {
        needs.insert(Requirement::GrpcEndpoint);
    }
    needs.insert(Requirement::Auth(workload.endpoint.auth));
    if !workload.endpoint.cors_origins.is_empty() {
        needs.insert(Requirement::Cors);
    }
    needs.into_iter().collect()
}

impl Capabilities {
    pub fn has(&self, requirement: Requirement) -> bool {
        match requirement {
            Requirement::Runtime(runtime) => self.runtimes.iter().any(|r| r == runtime.name()),
            other => self.features.contains(&other.token()),
        }
    }

    /// The first requirement of `workload` this device lacks, as a message for its state.
    pub fn check(&self, workload: &Workload) -> Result<(), String> {
        match requirements(workload).into_iter().find(|r| !self.has(*r)) {
            None => self.check_opencl_device(workload),
            Some(Requirement::Runtime(runtime)) => Err(format!(
                "runtime {runtime} is not available on this device (available: {})",
                if self.runtimes.is_empty() {
                    "none".to_owned()
                } else {
                    self.runtimes.join(", ")
                }
            )),
            // The one requirement an operator meets by starting the agent differently.
            Some(Requirement::ContainerWorkloads) => Err(
                "this device's agent does not run container workloads; start it with --containers docker on a host whose Docker engine runs (the agent's log says why when the engine was unreachable)"
                    .to_owned(),
            ),
            Some(missing) => Err(format!("this device's agent does not support {missing}")),
        }
    }

    /// An OpenCL workload whose manifest names a device (`opencl_device`) needs one that
    /// matches here.
    fn check_opencl_device(&self, workload: &Workload) -> Result<(), String> {
        let WorkloadKind::Model(model) = &workload.kind else {
            return Ok(());
        };
        let selector = model.options.opencl_device.trim();
        if model.runtime != RuntimeKind::Opencl
            || selector.is_empty()
            || self.opencl_devices.iter().any(|d| d.matches(selector))
        {
            return Ok(());
        }
        let found: Vec<String> = self
            .opencl_devices
            .iter()
            .map(|d| format!("{} ({})", d.name, d.kind))
            .collect();
        Err(format!(
            "no OpenCL device here matches opencl_device `{selector}` (found: {})",
            if found.is_empty() {
                "none".to_owned()
            } else {
                found.join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, tract_agent as tract_device};

    fn model_workload(models: usize) -> Workload {
        let mut workload = fixtures::model_workload("d", 1, 1);
        if let WorkloadKind::Model(model) = &mut workload.kind {
            model.models = vec![model.models[0].clone(); models];
        }
        workload
    }

    #[test]
    fn a_plain_model_workload_fits_a_tract_device() {
        assert_eq!(tract_device().check(&model_workload(1)), Ok(()));
    }

    #[test]
    fn an_opencl_device_selector_needs_a_matching_device() {
        let mut device = tract_device();
        device.runtimes.push("opencl".into());
        device.opencl_devices.push(OpenClDevice {
            platform: "NVIDIA CUDA".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            kind: "gpu".into(),
            ..OpenClDevice::default()
        });
        let opencl = |selector: &str| {
            let mut workload = model_workload(1);
            if let WorkloadKind::Model(model) = &mut workload.kind {
                model.runtime = RuntimeKind::Opencl;
                model.options.opencl_device = selector.into();
            }
            workload
        };
        for selector in ["", "gpu", "H100"] {
            assert_eq!(device.check(&opencl(selector)), Ok(()), "{selector}");
        }
        assert_eq!(
            device.check(&opencl("accelerator")).expect_err("no FPGA"),
            "no OpenCL device here matches opencl_device `accelerator` (found: NVIDIA H100 80GB HBM3 (gpu))"
        );
    }

    #[test]
    fn what_the_device_lacks_is_named() {
        let device = tract_device();
        let err = device.check(&model_workload(2)).expect_err("split");
        assert_eq!(
            err,
            "this device's agent does not support traffic splits across several versions"
        );
        let mut opencl = model_workload(1);
        if let WorkloadKind::Model(model) = &mut opencl.kind {
            model.runtime = RuntimeKind::Opencl;
        }
        assert_eq!(
            device.check(&opencl).expect_err("opencl"),
            "runtime opencl is not available on this device (available: tract)"
        );
        let mut keyed = model_workload(1);
        keyed.endpoint.auth = AuthMode::Key;
        assert!(
            device
                .check(&keyed)
                .expect_err("key")
                .contains("endpoint auth key")
        );
        // A minimal agent (built without its `grpc` feature) serves REST only.
        let mut grpc = model_workload(1);
        grpc.endpoint.grpc_port = Some(5002);
        assert_eq!(
            device.check(&grpc).expect_err("grpc"),
            "this device's agent does not support a gRPC scoring port"
        );
        let container = Workload {
            kind: WorkloadKind::Container(Default::default()),
            ..model_workload(1)
        };
        assert_eq!(
            device.check(&container).expect_err("container"),
            "this device's agent does not run container workloads; start it with --containers docker on a host whose Docker engine runs (the agent's log says why when the engine was unreachable)"
        );
    }
}
