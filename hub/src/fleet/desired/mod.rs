//! Desired-state computation: a pure function of the deployments (with their rollouts), one
//! device and the model versions their revisions pin. No storage, no clock: `Fleet` stores
//! and publishes what this returns, and the table-driven tests (`tests.rs`) pin the rules.
//! A container revision becomes its workload in `container.rs`.
//!
//! Rules: a device runs every deployment that targets it (by id or label selector), at the
//! revision the deployment's rollout gives it (none yet: not there yet); when two meet on one
//! port the higher priority keeps it, and at equal priority the older; a deployment whose
//! pinned version is gone or unfit for its role (a model without a runnable ONNX file, an
//! image artifact that is no image, an entry module without its component), or which needs
//! something the device's agent does not offer (read from its birth, entry modules included),
//! is `Unschedulable` there with the reason and is not sent, so nothing is downloaded for it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use edgeship_domain::trust::PublicKey;
use edgeship_domain::{
    AuthMode, DeployedModel, DesiredState, EntryModule, HealthThresholds, ModelWorkload, Workload,
    WorkloadKind,
};

use super::keys::EndpointKeys;
use super::model::{Deployment, Device, Revision};
use super::rollout::Rollout;
use super::spec::{ModulePin, PinRole};
use crate::registry::{ModelFile, ModelVersion, OnnxSignature, image};

mod container;

/// What one device should run, and which targeting deployments it cannot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceDesired {
    pub workloads: Vec<Workload>,
    /// Deployment id → why it cannot run on this device.
    pub unschedulable: BTreeMap<String, String>,
}

/// A deployment with its current rollout (none: every device runs the newest revision).
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub deployment: &'a Deployment,
    pub rollout: Option<&'a Rollout>,
}

impl<'a> Placement<'a> {
    /// The revision `device` runs, if the deployment is on it yet.
    pub fn revision_for(&self, device: &str) -> Option<&'a Revision> {
        let number = match self.rollout {
            Some(rollout) => rollout.revision_for(device)?,
            None => self.deployment.current()?.number,
        };
        self.deployment.revision(number)
    }
}

/// The registry's record of each pinned version by name and number (`None`: it is gone).
pub type Pinned = HashMap<(String, u32), Option<ModelVersion>>;

/// The registry's records of every pinned model and entry-module version: two namespaces, as
/// a module may share a model's name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub models: Pinned,
    pub modules: Pinned,
}

/// Computes `device`'s workloads from every deployment. `previous` is what the device was last
/// asked to run: a deployment that can no longer run there keeps its previous workload, so
/// the device goes on serving the last version that could (a capability the device stopped
/// announcing, say), while the deployment reports the device `Unschedulable` with the reason.
pub fn for_device(
    device: &Device,
    placements: &[Placement<'_>],
    resolved: &Resolved,
    previous: Option<&DesiredState>,
) -> DeviceDesired {
    let labels = device.labels();
    let mut targeting: Vec<(&Placement<'_>, &Revision)> = placements
        .iter()
        .filter(|p| p.deployment.spec.target.matches(&device.id, &labels))
        .filter_map(|p| Some((p, p.revision_for(&device.id)?)))
        .collect();
    // A contested port goes to the higher priority, then to the older deployment (a label
    // change can create overlap).
    targeting.sort_by_key(|(p, _)| {
        let d = p.deployment;
        (Reverse(d.spec.priority), d.create_time_ms, d.id.clone())
    });
    let mut desired = DeviceDesired::default();
    let mut ports: HashMap<u16, &Deployment> = HashMap::new();
    for (placement, revision) in targeting {
        let deployment = placement.deployment;
        if let Some((port, holder)) = revision
            .endpoint
            .ports()
            .find_map(|port| Some((port, *ports.get(&port)?)))
        {
            let why = if holder.spec.priority > deployment.spec.priority {
                format!("priority {} is higher", holder.spec.priority)
            } else {
                "same priority, created earlier".to_owned()
            };
            desired.unschedulable.insert(
                deployment.id.clone(),
                format!(
                    "port {port} on this device is taken by deployment {} ({why})",
                    holder.id
                ),
            );
            continue;
        }
        // Capabilities are known once the device has announced itself; before that it gets
        // the workload and its agent judges.
        let workload = workload(deployment, revision, resolved).and_then(|w| {
            match device.ever_seen() && !device.agent_version.is_empty() {
                true => device.capabilities.check(&w).map(|()| w),
                false => Ok(w),
            }
        });
        match workload {
            Ok(workload) => {
                for port in revision.endpoint.ports() {
                    ports.insert(port, deployment);
                }
                desired.workloads.push(workload);
            }
            Err(reason) => {
                let kept = previous
                    .and_then(|p| p.workloads.iter().find(|w| w.deployment == deployment.id))
                    .filter(|w| w.endpoint.ports().all(|p| !ports.contains_key(&p)));
                if let Some(kept) = kept {
                    for port in kept.endpoint.ports() {
                        ports.insert(port, deployment);
                    }
                    desired.workloads.push(kept.clone());
                }
                desired.unschedulable.insert(deployment.id.clone(), reason);
            }
        }
    }
    desired
}

/// The registry's record of a pinned version.
fn pinned<'a>(
    resolved: &'a Resolved,
    pin: &super::spec::TrafficWeight,
) -> Result<&'a ModelVersion, String> {
    resolved
        .models
        .get(&(pin.model_id.clone(), pin.version))
        .and_then(Option::as_ref)
        .ok_or_else(|| format!("model {}:{} does not exist", pin.model_id, pin.version))
}

/// The workload `revision` of `deployment` becomes, with the registry's records of its
/// model versions.
pub fn workload(
    deployment: &Deployment,
    revision: &Revision,
    resolved: &Resolved,
) -> Result<Workload, String> {
    let kind = match &revision.container {
        Some(spec) => WorkloadKind::Container(container::workload(spec, revision, resolved)?),
        None => WorkloadKind::Model(model_workload(revision, resolved)?),
    };
    let gate = &deployment.spec.rollout.health_gate;
    let health =
        (gate.max_error_rate.is_some() || gate.max_p99_ms.is_some()).then_some(HealthThresholds {
            max_error_rate: gate.max_error_rate,
            max_p99_ms: gate.max_p99_ms,
            window_seconds: HealthThresholds::DEFAULT_WINDOW_SECONDS,
            min_requests: HealthThresholds::DEFAULT_MIN_REQUESTS,
        });
    let mut endpoint = revision.endpoint.clone();
    if endpoint.auth == AuthMode::Key {
        // Digests only: the keys themselves never leave the hub.
        endpoint.key_digests = deployment
            .keys
            .as_ref()
            .map(EndpointKeys::digests)
            .unwrap_or_default();
    }
    if !endpoint.tls_hostnames.is_empty() {
        // The deployment's certificate and key: only devices of this deployment receive them.
        endpoint.tls = deployment
            .tls_certificate
            .as_ref()
            .map(|c| c.certificate.clone());
    }
    if endpoint.auth == AuthMode::Token {
        // The public half only: the signing key never leaves the hub.
        endpoint.token_keys = match &deployment.token_signer {
            Some(signer) => vec![signer.public_key().map_err(|e| e.to_string())?],
            None => Vec::new(),
        };
    }
    Ok(Workload {
        deployment: deployment.id.clone(),
        endpoint,
        kind,
        health,
    })
}

/// The models a model revision serves, each with its ONNX entry file.
fn model_workload(revision: &Revision, resolved: &Resolved) -> Result<ModelWorkload, String> {
    let mut models = Vec::with_capacity(revision.models.len());
    for pin in &revision.models {
        models.push(deployed_model(
            pinned(resolved, pin)?,
            pin.weight,
            &revision.model_signers,
        )?);
    }
    let entry_module = match &revision.entry_module {
        Some(pin) => Some(entry_module(pin, resolved)?),
        None => None,
    };
    Ok(ModelWorkload {
        runtime: revision.runtime,
        models,
        options: revision.options.clone(),
        entry_module,
    })
}

/// A registered version as a device runs it (in a workload or a batch job): its files, the
/// ONNX entry file and its signature.
pub fn deployed_model(
    model: &ModelVersion,
    weight: u32,
    required_signers: &[PublicKey],
) -> Result<DeployedModel, String> {
    let (entry, signature) = entry_file(model)?;
    Ok(DeployedModel {
        signatures: model.signatures.iter().map(|s| s.signed.clone()).collect(),
        required_signers: required_signers.to_vec(),
        model_id: model.model_id.clone(),
        version: model.version,
        files: model.files.iter().map(ModelFile::blob_ref).collect(),
        entry_file: entry.path.clone(),
        inputs: signature.inputs.clone(),
        outputs: signature.outputs.clone(),
        sample_input: model.sample_input.clone(),
        weight,
    })
}

/// The entry module a revision pins, as a device fetches and runs it: its files (the
/// component), the one it instantiates, and the sandbox bounds.
fn entry_module(pin: &ModulePin, resolved: &Resolved) -> Result<EntryModule, String> {
    let module = resolved
        .modules
        .get(&(pin.module_id.clone(), pin.version))
        .and_then(Option::as_ref)
        .ok_or_else(|| format!("module {pin} does not exist"))?;
    let wasm = module
        .wasm_file()
        .ok_or_else(|| format!("module {pin} has no .wasm file"))?;
    Ok(EntryModule {
        module_id: module.model_id.clone(),
        version: module.version,
        files: module.files.iter().map(ModelFile::blob_ref).collect(),
        entry_file: wasm.path.clone(),
        sandbox: pin.sandbox,
    })
}

/// Whether a registered version can play `role` in a deployment: the check at apply, when
/// continuous deployment picks up a new version, and (through the workload) on every device.
pub fn usable_as(model: &ModelVersion, role: PinRole) -> Result<(), String> {
    match role {
        PinRole::Model => entry_file(model).map(|_| ()),
        PinRole::ImageArtifact => image_of(model).map(|_| ()),
        // Mounted as files: the container decides what they are.
        PinRole::MountedModel => Ok(()),
    }
}

/// The image an image artifact recorded at registration.
pub fn image_of(model: &ModelVersion) -> Result<image::ImageInfo, String> {
    model.image().ok_or_else(|| {
        format!(
            "model {}:{} is not an image artifact (framework {}); container.image_artifact names a version registered from a `docker save` archive (framework {})",
            model.model_id,
            model.version,
            model.framework,
            image::FRAMEWORK
        )
    })
}

/// The file a runtime loads, the model's first ONNX file, with its signature.
pub fn entry_file(model: &ModelVersion) -> Result<(&ModelFile, &OnnxSignature), String> {
    if model.framework == image::FRAMEWORK {
        return Err(format!(
            "model {}:{} is an image artifact (framework {}): run it as a container workload (container.image_artifact)",
            model.model_id,
            model.version,
            image::FRAMEWORK
        ));
    }
    model
        .files
        .iter()
        .find_map(|f| f.onnx.as_ref().map(|signature| (f, signature)))
        .ok_or_else(|| {
            let files: Vec<&str> = model.files.iter().map(|f| f.path.as_str()).collect();
            format!(
                "model {}:{} has no ONNX file (files: {}, framework {}); register a version whose model file ends in .onnx",
                model.model_id,
                model.version,
                files.join(", "),
                model.framework
            )
        })
}

#[cfg(test)]
mod entry_tests;
#[cfg(test)]
mod tests;
