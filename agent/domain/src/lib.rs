//! Domain types that hub and agent share: the name rules, the one tensor-signature type, the
//! workload a deployment becomes on a device, and what a device can run.
//!
//! Architecture invariant: plain Rust. Protobuf types appear only in `wire`, the `TryFrom`
//! conversions that the hub's and the agent's MQTT links call, and nowhere else.

pub mod capabilities;
pub mod endpoint;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod job;
pub mod names;
pub mod profile;
pub mod report;
pub mod signature;
pub mod trust;
pub mod wire;
pub mod workload;

pub use capabilities::{Capabilities, OpenClDevice, Requirement};
pub use job::{BatchJob, InputFormat, JobPhase, JobStatus, RejectedJob};
pub use profile::{DeviceProfile, ProfileLevel};
pub use report::{
    Birth, EndpointMetrics, ReportedState, ServiceState, VersionMetrics, WorkloadStatus,
};
pub use signature::{
    Dim, ElementType, OnnxSignature, OperatorPlacement, RuntimePlacement, TensorSpec,
};
pub use workload::{
    AuthMode, BlobRef, ContainerWorkload, DeployedModel, DesiredState, Endpoint, EntryModule,
    HealthThresholds, ModelWorkload, MountedModel, Precision, Protocol, RejectedWorkload,
    RestartPolicy, RuntimeKind, RuntimeOptions, SandboxSpec, ServingCertificate, Workload,
    WorkloadKind,
};
