//! Workloads and desired states on the wire.

use edgeship_proto::v1 as pb;

use super::WireError;
use crate::job::{BatchJob, RejectedJob};
use crate::names;
use crate::signature::TensorSpec;
use crate::trust::{ModelSignature, PublicKey};
use crate::workload::ServingCertificate;
use crate::workload::{
    AuthMode, BlobRef, ContainerWorkload, DeployedModel, DesiredState, Endpoint, EntryModule,
    HealthThresholds, ModelWorkload, MountedModel, Precision, Protocol, RejectedWorkload,
    RestartPolicy, RuntimeKind, RuntimeOptions, SandboxSpec, Workload, WorkloadKind,
};

impl From<&BlobRef> for pb::BlobRef {
    fn from(blob: &BlobRef) -> Self {
        pb::BlobRef {
            path: blob.path.clone(),
            sha256: blob.sha256.clone(),
            size_bytes: blob.size_bytes,
        }
    }
}

impl TryFrom<pb::BlobRef> for BlobRef {
    type Error = WireError;

    fn try_from(blob: pb::BlobRef) -> Result<Self, WireError> {
        names::relative_path(&blob.path)?;
        names::sha256(&blob.sha256)?;
        Ok(BlobRef {
            path: blob.path,
            sha256: blob.sha256,
            size_bytes: blob.size_bytes,
        })
    }
}

fn blobs(files: Vec<pb::BlobRef>, entry_file: &str, what: &str) -> Result<Vec<BlobRef>, WireError> {
    let files = files
        .into_iter()
        .map(BlobRef::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    if !files.iter().any(|f| f.path == entry_file) {
        return Err(WireError::Invalid(format!(
            "the entry file {entry_file:?} is not among the files of {what}"
        )));
    }
    Ok(files)
}

pub(super) fn runtime_kind(code: i32) -> Result<RuntimeKind, WireError> {
    match pb::Runtime::try_from(code) {
        Ok(pb::Runtime::Tract) => Ok(RuntimeKind::Tract),
        Ok(pb::Runtime::Opencl) => Ok(RuntimeKind::Opencl),
        Ok(pb::Runtime::Unspecified) => {
            Err(WireError::Invalid("the workload names no runtime".into()))
        }
        Err(_) => Err(WireError::Unsupported(format!(
            "runtime number {code} is not known to this agent (version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

pub(super) fn wire_runtime(runtime: RuntimeKind) -> pb::Runtime {
    match runtime {
        RuntimeKind::Tract => pb::Runtime::Tract,
        RuntimeKind::Opencl => pb::Runtime::Opencl,
    }
}

fn auth_mode(code: i32) -> Result<AuthMode, WireError> {
    match pb::AuthMode::try_from(code) {
        Ok(pb::AuthMode::Unspecified | pb::AuthMode::None) => Ok(AuthMode::None),
        Ok(pb::AuthMode::Key) => Ok(AuthMode::Key),
        Ok(pb::AuthMode::Token) => Ok(AuthMode::Token),
        Err(_) => Err(WireError::Unsupported(format!(
            "endpoint auth number {code} is not known to this agent"
        ))),
    }
}

fn wire_auth(auth: AuthMode) -> pb::AuthMode {
    match auth {
        AuthMode::None => pb::AuthMode::None,
        AuthMode::Key => pb::AuthMode::Key,
        AuthMode::Token => pb::AuthMode::Token,
    }
}

fn protocol(code: i32) -> Result<Protocol, WireError> {
    match pb::Protocol::try_from(code) {
        Ok(pb::Protocol::Azureml) => Ok(Protocol::Azureml),
        Ok(pb::Protocol::V2) => Ok(Protocol::V2),
        Ok(pb::Protocol::Unspecified) => Err(WireError::Invalid(
            "an endpoint protocol is unspecified".into(),
        )),
        Err(_) => Err(WireError::Unsupported(format!(
            "protocol number {code} is not known to this agent"
        ))),
    }
}

fn wire_protocol(protocol: Protocol) -> pb::Protocol {
    match protocol {
        Protocol::Azureml => pb::Protocol::Azureml,
        Protocol::V2 => pb::Protocol::V2,
    }
}

fn port(value: u32, what: &str) -> Result<u16, WireError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| WireError::Invalid(format!("{what} {value} is not a port (1-65535)")))
}

impl From<&Endpoint> for pb::Endpoint {
    fn from(endpoint: &Endpoint) -> Self {
        pb::Endpoint {
            port: u32::from(endpoint.port),
            auth: wire_auth(endpoint.auth).into(),
            protocols: endpoint
                .protocols
                .iter()
                .map(|p| wire_protocol(*p).into())
                .collect(),
            cors_origins: endpoint.cors_origins.clone(),
            grpc_port: endpoint.grpc_port.map_or(0, u32::from),
            key_digests: endpoint.key_digests.clone(),
            token_keys: endpoint.token_keys.clone(),
            tls_hostnames: endpoint.tls_hostnames.clone(),
            tls_certificate_pem: endpoint
                .tls
                .as_ref()
                .map(|t| t.cert_pem.clone())
                .unwrap_or_default(),
            tls_key_pem: endpoint
                .tls
                .as_ref()
                .map(|t| t.key_pem.clone())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Endpoint> for Endpoint {
    type Error = WireError;

    fn try_from(endpoint: pb::Endpoint) -> Result<Self, WireError> {
        let mut protocols = endpoint
            .protocols
            .into_iter()
            .map(protocol)
            .collect::<Result<Vec<_>, _>>()?;
        if protocols.is_empty() {
            protocols.push(Protocol::Azureml);
        }
        Ok(Endpoint {
            port: port(endpoint.port, "the endpoint port")?,
            auth: auth_mode(endpoint.auth)?,
            protocols,
            cors_origins: endpoint.cors_origins,
            grpc_port: match endpoint.grpc_port {
                0 => None,
                p => Some(port(p, "the endpoint's gRPC port")?),
            },
            key_digests: endpoint.key_digests,
            token_keys: endpoint.token_keys,
            tls: match (
                endpoint.tls_certificate_pem.is_empty(),
                endpoint.tls_key_pem.is_empty(),
            ) {
                (true, true) => None,
                (false, false) => Some(ServingCertificate {
                    cert_pem: endpoint.tls_certificate_pem,
                    key_pem: endpoint.tls_key_pem,
                }),
                _ => {
                    return Err(WireError::Invalid(
                        "the endpoint's TLS certificate and key come together".into(),
                    ));
                }
            },
            tls_hostnames: endpoint.tls_hostnames,
        })
    }
}

impl From<&DeployedModel> for pb::DeployedModel {
    fn from(model: &DeployedModel) -> Self {
        pb::DeployedModel {
            model_id: model.model_id.clone(),
            version: model.version,
            files: model.files.iter().map(pb::BlobRef::from).collect(),
            entry_file: model.entry_file.clone(),
            inputs: model.inputs.iter().map(pb::TensorSpec::from).collect(),
            outputs: model.outputs.iter().map(pb::TensorSpec::from).collect(),
            sample_input: model.sample_input.clone().unwrap_or_default(),
            weight: model.weight,
            signatures: model
                .signatures
                .iter()
                .map(|s| pb::ModelSignature {
                    public_key: s.key.to_string(),
                    signature: s.signature.clone().into(),
                    sign_time: None,
                })
                .collect(),
            required_signers: model
                .required_signers
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

impl TryFrom<pb::DeployedModel> for DeployedModel {
    type Error = WireError;

    fn try_from(model: pb::DeployedModel) -> Result<Self, WireError> {
        names::model_id(&model.model_id)?;
        if model.version == 0 {
            return Err(WireError::Invalid(format!(
                "model {} has version 0; versions start at 1",
                model.model_id
            )));
        }
        let what = format!("model {}:{}", model.model_id, model.version);
        let signatures = model
            .signatures
            .into_iter()
            .map(|s| {
                Ok(ModelSignature {
                    key: s.public_key.parse().map_err(|err| {
                        WireError::Invalid(format!("{what}: a signature's key: {err}"))
                    })?,
                    signature: s.signature.to_vec(),
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let required_signers = model
            .required_signers
            .iter()
            .map(|key| {
                key.parse()
                    .map_err(|err| WireError::Invalid(format!("{what}: a required signer: {err}")))
            })
            .collect::<Result<Vec<PublicKey>, WireError>>()?;
        Ok(DeployedModel {
            signatures,
            required_signers,
            files: blobs(model.files, &model.entry_file, &what)?,
            model_id: model.model_id,
            version: model.version,
            entry_file: model.entry_file,
            inputs: model.inputs.into_iter().map(TensorSpec::from).collect(),
            outputs: model.outputs.into_iter().map(TensorSpec::from).collect(),
            sample_input: (!model.sample_input.is_empty()).then_some(model.sample_input),
            weight: model.weight,
        })
    }
}

impl From<&ModelWorkload> for pb::ModelWorkload {
    fn from(model: &ModelWorkload) -> Self {
        pb::ModelWorkload {
            runtime: wire_runtime(model.runtime).into(),
            models: model.models.iter().map(pb::DeployedModel::from).collect(),
            options: Some(wire_options(&model.options)),
            entry_module: model.entry_module.as_ref().map(|m| pb::EntryModule {
                module_id: m.module_id.clone(),
                version: m.version,
                files: m.files.iter().map(pb::BlobRef::from).collect(),
                entry_file: m.entry_file.clone(),
                deadline_ms: m.sandbox.deadline_ms,
                memory_mb: m.sandbox.memory_mb,
                instances: m.sandbox.instances,
            }),
        }
    }
}

impl TryFrom<pb::ModelWorkload> for ModelWorkload {
    type Error = WireError;

    fn try_from(model: pb::ModelWorkload) -> Result<Self, WireError> {
        let runtime = runtime_kind(model.runtime)?;
        if model.models.is_empty() {
            return Err(WireError::Invalid("the workload has no model".into()));
        }
        let models = model
            .models
            .into_iter()
            .map(DeployedModel::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let entry_module = match model.entry_module {
            None => None,
            Some(module) => {
                names::id(names::NameKind::Module, &module.module_id)?;
                let what = format!("module {}:{}", module.module_id, module.version);
                Some(EntryModule {
                    files: blobs(module.files, &module.entry_file, &what)?,
                    module_id: module.module_id,
                    version: module.version,
                    entry_file: module.entry_file,
                    sandbox: SandboxSpec {
                        deadline_ms: module.deadline_ms,
                        memory_mb: module.memory_mb,
                        instances: module.instances,
                    },
                })
            }
        };
        Ok(ModelWorkload {
            runtime,
            models,
            options: runtime_options(model.options.unwrap_or_default())?,
            entry_module,
        })
    }
}

pub(super) fn wire_options(options: &RuntimeOptions) -> pb::RuntimeOptions {
    pb::RuntimeOptions {
        threads: options.threads,
        max_batch_size: options.max_batch_size,
        max_queue_delay_ms: options.max_queue_delay_ms,
        max_queue_size: options.max_queue_size,
        opencl_device: options.opencl_device.clone(),
        opencl_precision: match options.opencl_precision {
            Precision::Fp32 => String::new(),
            other => other.name().to_owned(),
        },
    }
}

pub(super) fn runtime_options(options: pb::RuntimeOptions) -> Result<RuntimeOptions, WireError> {
    Ok(RuntimeOptions {
        threads: options.threads,
        max_batch_size: options.max_batch_size,
        max_queue_delay_ms: options.max_queue_delay_ms,
        max_queue_size: options.max_queue_size,
        opencl_device: options.opencl_device,
        opencl_precision: match options.opencl_precision.as_str() {
            "" => Precision::Fp32,
            // A precision a newer hub knows and this agent does not.
            name => Precision::parse(name).map_err(WireError::Unsupported)?,
        },
    })
}

impl From<&ContainerWorkload> for pb::ContainerWorkload {
    fn from(container: &ContainerWorkload) -> Self {
        let (restart_policy, max_restarts) = match container.restart {
            RestartPolicy::OnFailure { max_restarts } => ("on_failure", max_restarts),
            other => (other.name(), 0),
        };
        pb::ContainerWorkload {
            image: container.image.clone(),
            image_digest: container.image_digest.clone(),
            env: container.env.clone().into_iter().collect(),
            container_port: u32::from(container.container_port),
            cpu_millis: container.cpu_millis,
            memory_bytes: container.memory_bytes,
            health_path: container.health_path.clone(),
            command: container.command.clone(),
            image_artifact: container.image_artifact.clone(),
            image_files: container
                .image_files
                .iter()
                .map(pb::BlobRef::from)
                .collect(),
            health_port: u32::from(container.health_port),
            restart_policy: restart_policy.to_owned(),
            max_restarts,
            model: container.model.as_ref().map(|m| pb::MountedModel {
                model_id: m.model_id.clone(),
                version: m.version,
                files: m.files.iter().map(pb::BlobRef::from).collect(),
            }),
        }
    }
}

impl TryFrom<pb::ContainerWorkload> for ContainerWorkload {
    type Error = WireError;

    fn try_from(container: pb::ContainerWorkload) -> Result<Self, WireError> {
        if container.image.is_empty() {
            return Err(WireError::Invalid(
                "the container workload names no image".into(),
            ));
        }
        if !container.image_files.is_empty() && container.image_digest.is_empty() {
            return Err(WireError::Invalid(
                "the container workload's image artifact comes without its image id".into(),
            ));
        }
        let restart = match (container.restart_policy.as_str(), container.max_restarts) {
            // An empty policy is the default; a count of 0 would mean "no limit" to Docker.
            ("" | "on_failure", 0) => RestartPolicy::default(),
            ("" | "on_failure", max_restarts) => RestartPolicy::OnFailure { max_restarts },
            // A policy a newer hub knows and this agent does not.
            (name, _) => RestartPolicy::parse(name, None).map_err(WireError::Unsupported)?,
        };
        let model = match container.model {
            Some(model) => {
                names::model_id(&model.model_id)?;
                Some(MountedModel {
                    model_id: model.model_id,
                    version: model.version,
                    files: model
                        .files
                        .into_iter()
                        .map(BlobRef::try_from)
                        .collect::<Result<_, _>>()?,
                })
            }
            None => None,
        };
        Ok(ContainerWorkload {
            container_port: port(container.container_port, "the container port")?,
            health_port: match container.health_port {
                0 => 0,
                p => port(p, "the health probe's port")?,
            },
            image: container.image,
            image_digest: container.image_digest,
            image_artifact: container.image_artifact,
            image_files: container
                .image_files
                .into_iter()
                .map(BlobRef::try_from)
                .collect::<Result<_, _>>()?,
            command: container.command,
            env: container.env.into_iter().collect(),
            cpu_millis: container.cpu_millis,
            memory_bytes: container.memory_bytes,
            health_path: container.health_path,
            restart,
            model,
        })
    }
}

impl From<&Workload> for pb::Workload {
    fn from(workload: &Workload) -> Self {
        pb::Workload {
            deployment: workload.deployment.clone(),
            endpoint: Some(pb::Endpoint::from(&workload.endpoint)),
            kind: Some(match &workload.kind {
                WorkloadKind::Model(model) => pb::workload::Kind::Model(model.into()),
                WorkloadKind::Container(container) => {
                    pb::workload::Kind::Container(container.into())
                }
            }),
            health: workload.health.map(|h| pb::HealthThresholds {
                max_error_rate: h.max_error_rate,
                max_p99_ms: h.max_p99_ms,
                window_seconds: h.window_seconds,
                min_requests: h.min_requests,
            }),
        }
    }
}

/// Zero means "not set" on the wire.
fn limit(value: Option<f64>, what: &str) -> Result<Option<f64>, WireError> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => Err(WireError::Invalid(format!(
            "health {what} {v} is not a number from 0"
        ))),
        other => Ok(other),
    }
}

impl TryFrom<pb::HealthThresholds> for HealthThresholds {
    type Error = WireError;

    fn try_from(h: pb::HealthThresholds) -> Result<Self, WireError> {
        Ok(HealthThresholds {
            max_error_rate: limit(h.max_error_rate, "max_error_rate")?,
            max_p99_ms: limit(h.max_p99_ms, "max_p99_ms")?,
            window_seconds: match h.window_seconds {
                0 => HealthThresholds::DEFAULT_WINDOW_SECONDS,
                n => n.min(3600),
            },
            min_requests: match h.min_requests {
                0 => HealthThresholds::DEFAULT_MIN_REQUESTS,
                n => n,
            },
        })
    }
}

impl TryFrom<pb::Workload> for Workload {
    type Error = WireError;

    fn try_from(workload: pb::Workload) -> Result<Self, WireError> {
        names::deployment_id(&workload.deployment)?;
        let endpoint = workload
            .endpoint
            .ok_or_else(|| WireError::Invalid("the workload has no endpoint".into()))?;
        let kind = match workload.kind {
            Some(pb::workload::Kind::Model(model)) => WorkloadKind::Model(model.try_into()?),
            Some(pb::workload::Kind::Container(container)) => {
                WorkloadKind::Container(container.try_into()?)
            }
            // A oneof member this build does not know decodes as no member at all.
            None => {
                return Err(WireError::Unsupported(format!(
                    "the workload's kind is not known to this agent (version {})",
                    env!("CARGO_PKG_VERSION")
                )));
            }
        };
        Ok(Workload {
            deployment: workload.deployment,
            endpoint: endpoint.try_into()?,
            kind,
            health: workload.health.map(TryInto::try_into).transpose()?,
        })
    }
}

impl From<&DesiredState> for pb::DesiredState {
    fn from(desired: &DesiredState) -> Self {
        pb::DesiredState {
            device_id: desired.device_id.clone(),
            generation: desired.generation,
            workloads: desired.workloads.iter().map(pb::Workload::from).collect(),
            issued_at_ms: desired.issued_at_ms,
            jobs: desired.jobs.iter().map(pb::BatchJob::from).collect(),
            // The hub's link sets it when it signs.
            expires_at_ms: 0,
        }
    }
}

/// A desired state is taken whole even when some of its workloads are not: those are listed in
/// `rejected`, so each gets its own state on the device while the others apply.
impl TryFrom<pb::DesiredState> for DesiredState {
    type Error = WireError;

    fn try_from(desired: pb::DesiredState) -> Result<Self, WireError> {
        names::device_id(&desired.device_id)?;
        let mut workloads = Vec::new();
        let mut rejected = Vec::new();
        for workload in desired.workloads {
            let deployment = workload.deployment.clone();
            let port = workload
                .endpoint
                .as_ref()
                .and_then(|e| u16::try_from(e.port).ok())
                .unwrap_or(0);
            match Workload::try_from(workload) {
                Ok(workload) => workloads.push(workload),
                Err(err) => rejected.push(RejectedWorkload {
                    deployment,
                    port,
                    unsupported: matches!(err, WireError::Unsupported(_)),
                    reason: err.to_string(),
                }),
            }
        }
        let mut jobs = Vec::new();
        let mut rejected_jobs = Vec::new();
        for job in desired.jobs {
            let job_id = job.job_id.clone();
            match BatchJob::try_from(job) {
                Ok(job) => jobs.push(job),
                Err(err) => rejected_jobs.push(RejectedJob {
                    job_id,
                    reason: err.to_string(),
                }),
            }
        }
        Ok(DesiredState {
            device_id: desired.device_id,
            generation: desired.generation,
            workloads,
            rejected,
            issued_at_ms: desired.issued_at_ms,
            jobs,
            rejected_jobs,
        })
    }
}

#[cfg(test)]
mod tests;
