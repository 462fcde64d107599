//! Domain types of deployments and devices, and the pure rules over them: which devices a
//! deployment targets, and how per-device states add up to a deployment's state.

use std::collections::BTreeMap;

pub use edgeship_domain::ServiceState;
use edgeship_domain::trust::PublicKey;
use edgeship_domain::{Capabilities, Endpoint, RuntimeKind, RuntimeOptions, WorkloadStatus};
use serde::{Deserialize, Serialize};

use super::spec::{ContainerSpec, DeploymentSpec, ModulePin, TrafficWeight};
use crate::registry::VersionSelector;

pub use super::spec::Target;

/// What devices run for one revision of a deployment: the model versions it pinned (with
/// their weights in a traffic split), its entry module, the runtime and the endpoint, or a
/// container. Changing any of them makes a new revision, which devices reach through a
/// rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u64,
    /// One entry with weight 0, or the versions of a split with their weights; for a
    /// container, its image artifact (if any) then its mounted model (if any).
    pub models: Vec<TrafficWeight>,
    pub runtime: RuntimeKind,
    pub endpoint: Endpoint,
    /// Batching and threads (stored before batching existed: none).
    #[serde(default)]
    pub options: RuntimeOptions,
    /// A container workload instead of models (stored before containers existed: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// The entry module version in front of the models, with its sandbox (stored before entry
    /// modules existed: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_module: Option<ModulePin>,
    /// Keys of which one must have signed each model version (the manifest's
    /// `model_signers`; stored before model signatures existed: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_signers: Vec<PublicKey>,
    pub create_time_ms: i64,
}

impl Revision {
    /// Whether `other` asks devices for the same thing (the number and time aside).
    pub fn same_workload(&self, other: &Revision) -> bool {
        self.models == other.models
            && self.runtime == other.runtime
            && self.endpoint == other.endpoint
            && self.options == other.options
            && self.container == other.container
            && self.entry_module == other.entry_module
            && self.model_signers == other.model_signers
    }

    /// A container revision's pins: its image artifact and its mounted model.
    pub fn container_pins(&self) -> (Option<&TrafficWeight>, Option<&TrafficWeight>) {
        let Some(container) = &self.container else {
            return (None, None);
        };
        let mut pins = self.models.iter();
        let artifact = container.image_artifact.as_ref().and_then(|_| pins.next());
        let model = container.model.as_ref().and_then(|_| pins.next());
        (artifact, model)
    }

    /// `diabetes:3`, or `diabetes:3 (90%), diabetes:4 (10%)`, then the entry module
    /// (`diabetes:3 + module records:2`); a container as [`model_list`](Self::model_list)
    /// gives it.
    pub fn describe(&self) -> String {
        if self.container.is_some() {
            return self.model_list();
        }
        let models = self
            .models
            .iter()
            .map(|m| match m.weight {
                0 => format!("{}:{}", m.model_id, m.version),
                w => format!("{}:{} ({w}%)", m.model_id, m.version),
            })
            .collect::<Vec<_>>()
            .join(", ");
        match &self.entry_module {
            Some(module) => format!("{models} + module {module}"),
            None => models,
        }
    }

    /// What agents report as `desired_model` for this revision, which rollouts compare: the
    /// model versions, `a:1, a:2`; for a container what `ContainerWorkload::describe` gives,
    /// the artifact's `NAME:VERSION` (or the image reference), then the mounted model's. It
    /// must equal `Workload::describe` of the workload the revision becomes, entry module
    /// included (`a:1 + module m:2`), so that a revision that changes only the module is told
    /// apart by what devices report.
    pub fn model_list(&self) -> String {
        let pinned = |m: &TrafficWeight| format!("{}:{}", m.model_id, m.version);
        if let Some(container) = &self.container {
            let (artifact, model) = self.container_pins();
            let image = artifact.map_or_else(|| container.image.clone(), pinned);
            return match model {
                Some(model) => format!("{image}, {}", pinned(model)),
                None => image,
            };
        }
        let models = self
            .models
            .iter()
            .map(pinned)
            .collect::<Vec<_>>()
            .join(", ");
        match &self.entry_module {
            Some(module) => format!("{models} + module {module}"),
            None => models,
        }
    }
}

/// A deployment as stored: the spec last applied, and the revisions devices may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub spec: DeploymentSpec,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
    /// The newest last: the current rollout's target, its origin, and a few before them for
    /// rollbacks.
    pub revisions: Vec<Revision>,
    /// With auth `key`: the endpoint's keys (devices get their digests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<super::keys::EndpointKeys>,
    /// With auth `token`: the key that signs the endpoint's tokens (devices get its public
    /// half only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_signer: Option<super::tokens::TokenSigner>,
    /// With `endpoint.tls`: the certificate the hub's CA issued for the deployment's
    /// hostnames, and its key (devices receive both to serve HTTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<EndpointCertificate>,
}

/// A deployment's serving certificate, for the hostnames it names.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCertificate {
    pub hostnames: Vec<String>,
    pub certificate: edgeship_domain::ServingCertificate,
}

impl std::fmt::Debug for EndpointCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointCertificate")
            .field("hostnames", &self.hostnames)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    pub fn current(&self) -> Option<&Revision> {
        self.revisions.last()
    }

    pub fn revision(&self, number: u64) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == number)
    }

    pub fn model_ref(&self) -> String {
        self.spec.describe_models()
    }

    /// Whether new registrations of module `module_id` reach this deployment.
    pub fn follows_latest_module(&self, module_id: &str) -> bool {
        self.spec
            .entry_module
            .as_ref()
            .is_some_and(|m| m.module_id == module_id && m.version == VersionSelector::Latest)
    }

    /// Whether new registrations of `model_id` reach this deployment (continuous deployment).
    pub fn follows_latest_of(&self, model_id: &str) -> bool {
        self.spec.traffic.is_empty()
            && self
                .spec
                .all_models()
                .any(|m| m.model_id == model_id && m.version == VersionSelector::Latest)
    }
}

/// A device as the hub knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    /// Labels set through the hub API; they win over reported ones.
    pub user_labels: BTreeMap<String, String>,
    /// Labels the agent announced in its birth message.
    pub reported_labels: BTreeMap<String, String>,
    pub capabilities: Capabilities,
    pub agent_version: String,
    pub online: bool,
    pub last_seen_ms: i64,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadStatus>,
}

impl Device {
    /// A device a deployment named before it ever connected has a record but no birth.
    pub fn ever_seen(&self) -> bool {
        self.last_seen_ms != 0
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.reported_labels.clone();
        labels.extend(self.user_labels.clone());
        labels
    }
}

/// One targeted device's view of a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceWorkload {
    pub device_id: String,
    pub online: bool,
    pub state: ServiceState,
    pub error: String,
    pub serving_model: String,
}

/// How a targeted device stands on a deployment: its report if it has applied the newest
/// desired state, else `Transitioning` (it has not caught up yet).
pub fn device_workload(device: &Device, deployment: &str) -> DeviceWorkload {
    let report = device.workloads.iter().find(|w| w.deployment == deployment);
    let caught_up = device.applied_generation >= device.desired_generation;
    let (state, error, serving_model) = match report {
        Some(r) if caught_up => (r.state, r.error.clone(), r.serving_model.clone()),
        Some(r) => (
            ServiceState::Transitioning,
            String::new(),
            r.serving_model.clone(),
        ),
        None => (ServiceState::Transitioning, String::new(), String::new()),
    };
    DeviceWorkload {
        device_id: device.id.clone(),
        online: device.online,
        state,
        error,
        serving_model,
    }
}

/// The deployment's state: the worst over its devices; `Unschedulable` with no devices.
pub fn aggregate(devices: &[DeviceWorkload]) -> ServiceState {
    devices
        .iter()
        .map(|d| d.state)
        .max()
        .unwrap_or(ServiceState::Unschedulable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_device_state_is_the_deployments_state() {
        let at = |state| DeviceWorkload {
            device_id: "d".into(),
            online: true,
            state,
            error: String::new(),
            serving_model: String::new(),
        };
        assert_eq!(
            aggregate(&[at(ServiceState::Healthy), at(ServiceState::Healthy)]),
            ServiceState::Healthy
        );
        assert_eq!(
            aggregate(&[at(ServiceState::Healthy), at(ServiceState::Transitioning)]),
            ServiceState::Transitioning
        );
        assert_eq!(
            aggregate(&[at(ServiceState::Failed), at(ServiceState::Transitioning)]),
            ServiceState::Failed
        );
        assert_eq!(aggregate(&[]), ServiceState::Unschedulable);
    }

    #[test]
    fn a_device_behind_the_desired_generation_is_transitioning() {
        let mut device = Device {
            id: "d".into(),
            desired_generation: 3,
            applied_generation: 2,
            workloads: vec![WorkloadStatus {
                state: ServiceState::Healthy,
                serving_model: "m:1".into(),
                ..WorkloadStatus::new("web", "m:1", 8080)
            }],
            ..Device::default()
        };
        assert_eq!(
            device_workload(&device, "web").state,
            ServiceState::Transitioning
        );
        device.applied_generation = 3;
        assert_eq!(device_workload(&device, "web").state, ServiceState::Healthy);
        assert_eq!(
            device_workload(&device, "other").state,
            ServiceState::Transitioning
        );
    }
}
