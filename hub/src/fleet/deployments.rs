//! Deployments: validated creation and deletion, lookups, and each deployment's view of its
//! devices.

use edgeship_domain::{AuthMode, Protocol, names};

use super::model::{Deployment, DeviceWorkload, device_workload};
use super::{Fleet, FleetError, decode, desired, encode};
use crate::now_ms;
use crate::registry::VersionRef;

fn invalid(err: names::InvalidName) -> FleetError {
    FleetError::InvalidArgument(err.0)
}

impl Fleet {
    pub fn create_deployment(&self, mut deployment: Deployment) -> Result<Deployment, FleetError> {
        names::deployment_id(&deployment.id).map_err(invalid)?;
        names::model_id(&deployment.model_id).map_err(invalid)?;
        if deployment.endpoint.auth != AuthMode::None {
            return Err(FleetError::InvalidArgument(format!(
                "endpoint auth {} is not supported yet: use none",
                deployment.endpoint.auth
            )));
        }
        if let Some(protocol) = deployment
            .endpoint
            .protocols
            .iter()
            .find(|p| **p != Protocol::Azureml)
        {
            return Err(FleetError::InvalidArgument(format!(
                "protocol {protocol} is not supported yet: use azureml"
            )));
        }
        if deployment.endpoint.port == 0 {
            return Err(FleetError::InvalidArgument(
                "an endpoint port (1-65535) is required".into(),
            ));
        }
        if deployment.target.is_empty() {
            return Err(FleetError::InvalidArgument(
                "the target is empty: name device ids or a label selector".into(),
            ));
        }
        for id in &deployment.target.device_ids {
            names::device_id(id).map_err(invalid)?;
        }
        super::devices::validate_labels(&deployment.target.label_selector)?;
        // The model must exist now, and carry an ONNX file the runtime can load.
        let model = self.registry.get(&VersionRef {
            model_id: deployment.model_id.clone(),
            version: deployment.version_selector(),
        })?;
        desired::entry_file(&model).map_err(FleetError::FailedPrecondition)?;

        let _guard = self.guard();
        if self.deployments.contains_key(deployment.id.as_bytes())? {
            return Err(FleetError::AlreadyExists(format!(
                "deployment {} already exists",
                deployment.id
            )));
        }
        let devices = self.all_devices()?;
        let port = deployment.endpoint.port;
        for other in self.all_deployments()? {
            if other.endpoint.port != port {
                continue;
            }
            let shared = devices.iter().find(|d| {
                let labels = d.labels();
                deployment.target.matches(&d.id, &labels) && other.target.matches(&d.id, &labels)
            });
            let shared = shared.map(|d| d.id.clone()).or_else(|| {
                deployment
                    .target
                    .device_ids
                    .intersection(&other.target.device_ids)
                    .next()
                    .cloned()
            });
            if let Some(device) = shared {
                return Err(FleetError::FailedPrecondition(format!(
                    "port {port} on device {device} is already used by deployment {}",
                    other.id
                )));
            }
        }
        deployment.create_time_ms = now_ms();
        self.deployments
            .insert(deployment.id.as_bytes(), encode(&deployment))?;
        // Named devices get a record (never seen, offline) so their desired state is waiting,
        // retained, when they first come online.
        for id in &deployment.target.device_ids {
            if self.device(id)?.is_none() {
                self.put_device(&super::Device {
                    id: id.clone(),
                    ..super::Device::default()
                })?;
            }
        }
        self.db.flush()?;
        self.reconcile_locked(None)?;
        tracing::info!(deployment = %deployment.id, model = %deployment.model_ref(), "deployment created");
        Ok(deployment)
    }

    pub fn delete_deployment(&self, id: &str) -> Result<(), FleetError> {
        names::deployment_id(id).map_err(invalid)?;
        let _guard = self.guard();
        if self.deployments.remove(id.as_bytes())?.is_none() {
            return Err(FleetError::NotFound(format!(
                "deployment {id} does not exist"
            )));
        }
        self.db.flush()?;
        self.reconcile_locked(None)?;
        tracing::info!(deployment = %id, "deployment deleted");
        Ok(())
    }

    pub fn get_deployment(&self, id: &str) -> Result<Deployment, FleetError> {
        names::deployment_id(id).map_err(invalid)?;
        match self.deployments.get(id.as_bytes())? {
            Some(bytes) => decode(&bytes, "deployment"),
            None => Err(FleetError::NotFound(format!(
                "deployment {id} does not exist"
            ))),
        }
    }

    pub fn all_deployments(&self) -> Result<Vec<Deployment>, FleetError> {
        let mut all = Vec::new();
        for entry in self.deployments.iter() {
            let (_, bytes) = entry?;
            all.push(decode::<Deployment>(&bytes, "deployment")?);
        }
        Ok(all)
    }

    /// The version a deployment resolves to now, if the model still exists.
    pub fn resolved_version(&self, deployment: &Deployment) -> Option<u32> {
        self.resolve(deployment).map(|m| m.version)
    }

    /// Per-device states of a deployment's targeted devices. A device where the deployment
    /// cannot run (port taken by an older deployment, a capability missing) is
    /// `Unschedulable` with the reason, rather than a silent wait.
    pub fn deployment_devices(
        &self,
        deployment: &Deployment,
    ) -> Result<Vec<DeviceWorkload>, FleetError> {
        let deployments = self.all_deployments()?;
        let resolved = self.resolve_all(&deployments);
        Ok(self
            .all_devices()?
            .iter()
            .filter(|d| deployment.target.matches(&d.id, &d.labels()))
            .map(|d| {
                let mut workload = device_workload(d, &deployment.id);
                let previous = self.stored_desired(&d.id);
                let computed = desired::for_device(d, &deployments, &resolved, previous.as_ref());
                if let Some(reason) = computed.unschedulable.get(&deployment.id) {
                    workload.state = super::ServiceState::Unschedulable;
                    workload.error.clone_from(reason);
                }
                workload
            })
            .collect())
    }

    /// Which deployments use a model (all versions when `version` is `None`).
    pub fn deployments_using(
        &self,
        model_id: &str,
        version: Option<u32>,
    ) -> Result<Vec<String>, FleetError> {
        let mut users = Vec::new();
        for deployment in self.all_deployments()? {
            if deployment.model_id != model_id {
                continue;
            }
            let uses = match version {
                None => true,
                Some(v) => self.resolved_version(&deployment) == Some(v),
            };
            if uses {
                users.push(deployment.id);
            }
        }
        Ok(users)
    }
}

/// Label keys and values follow the tag rules.
pub(super) fn validate_label(key: &str, value: &str) -> Result<(), FleetError> {
    names::label(key, value).map_err(invalid)
}
