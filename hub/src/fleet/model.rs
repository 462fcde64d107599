//! Domain types of deployments and devices, and the pure rules over them: which devices a
//! deployment targets, and how per-device states add up to a deployment's state.

use std::collections::{BTreeMap, BTreeSet};

pub use edgeship_domain::ServiceState;
use edgeship_domain::{Capabilities, Endpoint, RuntimeKind, WorkloadStatus};
use serde::{Deserialize, Serialize};

use crate::registry::VersionSelector;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub device_ids: BTreeSet<String>,
    pub label_selector: BTreeMap<String, String>,
}

impl Target {
    pub fn is_empty(&self) -> bool {
        self.device_ids.is_empty() && self.label_selector.is_empty()
    }

    /// A device is targeted when it is named, or when its labels include the whole selector.
    pub fn matches(&self, device_id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.device_ids.contains(device_id)
            || (!self.label_selector.is_empty()
                && self
                    .label_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// A deployment as stored: what to run where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub model_id: String,
    /// `None` follows the latest version (continuous deployment).
    pub version: Option<u32>,
    pub runtime: RuntimeKind,
    pub endpoint: Endpoint,
    pub target: Target,
    pub create_time_ms: i64,
}

impl Deployment {
    pub fn version_selector(&self) -> VersionSelector {
        self.version
            .map_or(VersionSelector::Latest, VersionSelector::Exact)
    }

    pub fn model_ref(&self) -> String {
        format!("{}:{}", self.model_id, self.version_selector())
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
    fn targets_match_by_id_or_by_every_selector_label() {
        let labels = BTreeMap::from([("site".into(), "north".into()), ("gpu".into(), "no".into())]);
        let by_id = Target {
            device_ids: ["d1".to_string()].into(),
            ..Target::default()
        };
        assert!(by_id.matches("d1", &BTreeMap::new()));
        assert!(!by_id.matches("d2", &labels));
        let by_label = Target {
            label_selector: [("site".to_string(), "north".to_string())].into(),
            ..Target::default()
        };
        assert!(by_label.matches("d2", &labels));
        let stricter = Target {
            label_selector: [
                ("site".into(), "north".into()),
                ("gpu".into(), "yes".into()),
            ]
            .into(),
            ..Target::default()
        };
        assert!(!stricter.matches("d2", &labels));
    }

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
