//! Deployments: validated creation and deletion, lookups, and each deployment's view of its
//! devices.

use edgeship_domain::{AuthMode, ServingCertificate, names};

use super::keys::EndpointKeys;
use super::model::{Deployment, DeviceWorkload, EndpointCertificate, Revision, device_workload};
use super::profiles::PROFILE_PREFIX;
use super::rollout::{Phase, Rollout};
use super::spec::{DeploymentSpec, Manifest, ModulePin, PinRole, TrafficWeight};
use super::tokens::TokenSigner;
use super::{Fleet, FleetError, decode, desired, encode, placements};
use crate::now_ms;
use crate::registry::{VersionRef, VersionSelector};

pub(super) fn invalid(err: names::InvalidName) -> FleetError {
    FleetError::InvalidArgument(err.0)
}

/// How `apply` treats an existing deployment of the same name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Validate and compute the changes, store nothing.
    pub dry_run: bool,
    /// Fail if the deployment exists (`deploy create`).
    pub create_only: bool,
    /// A profile makes it: the name may start with the reserved `profile-`.
    pub profile: bool,
}

/// What an apply did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct Applied {
    pub deployment: Deployment,
    pub created: bool,
    /// One line per changed field; empty when nothing changed.
    pub changes: Vec<String>,
    /// The rollout it started: what devices run changed (a new revision).
    pub rollout: Option<Rollout>,
}

impl Fleet {
    /// Creates or updates a deployment from a manifest: validates it, pins the model (and
    /// entry module) versions it names, and starts a rollout when what devices run changes.
    pub fn apply(&self, manifest: &Manifest, options: ApplyOptions) -> Result<Applied, FleetError> {
        let spec = manifest
            .validate()
            .map_err(|e| FleetError::InvalidArgument(e.to_string()))?;
        // The versions must exist now, each fit for its role (an ONNX file the runtime can
        // load, an image archive).
        let pins = self.pin(&spec)?;
        let module = self.pin_module(&spec)?;
        let _guard = self.guard();
        let existing = self.find_deployment(&spec.name)?;
        if options.create_only && existing.is_some() {
            return Err(FleetError::AlreadyExists(format!(
                "deployment {} already exists (use `deploy apply` to change it)",
                spec.name
            )));
        }
        if existing.is_none() && !options.profile && spec.name.starts_with(PROFILE_PREFIX) {
            return Err(FleetError::InvalidArgument(format!(
                "name: deployment names starting with {PROFILE_PREFIX:?} are reserved for `edgeship model profile`"
            )));
        }
        self.check_port(&spec)?;
        let now = now_ms();
        let candidate = Revision {
            number: 0,
            models: pins,
            runtime: spec.runtime,
            endpoint: spec.endpoint.clone(),
            options: spec.options.clone(),
            container: spec.container.clone(),
            entry_module: module,
            model_signers: spec.model_signers.clone(),
            create_time_ms: now,
        };
        let (mut deployment, created, mut changes) = match existing {
            Some(old) => {
                let changes = spec.changes_from(&old.spec);
                let update_time_ms = if changes.is_empty() {
                    old.update_time_ms
                } else {
                    now
                };
                let deployment = Deployment {
                    spec: spec.clone(),
                    update_time_ms,
                    ..old
                };
                (deployment, false, changes)
            }
            None => {
                let deployment = Deployment {
                    id: spec.name.clone(),
                    spec: spec.clone(),
                    create_time_ms: now,
                    update_time_ms: now,
                    revisions: Vec::new(),
                    keys: None,
                    token_signer: None,
                    tls_certificate: None,
                };
                (deployment, true, vec!["created".to_owned()])
            }
        };
        // Keys are made once, when a deployment first asks for them, and kept across applies.
        if spec.endpoint.auth == AuthMode::Key && deployment.keys.is_none() {
            deployment.keys = Some(EndpointKeys::generate()?);
        }
        if spec.endpoint.auth == AuthMode::Token && deployment.token_signer.is_none() {
            deployment.token_signer = Some(TokenSigner::generate()?);
        }
        // The serving certificate, issued by the hub's CA for the names the manifest gives,
        // and issued again only when they change.
        let hostnames = &spec.endpoint.tls_hostnames;
        if hostnames.is_empty() {
            deployment.tls_certificate = None;
        } else if deployment
            .tls_certificate
            .as_ref()
            .is_none_or(|c| c.hostnames != *hostnames)
        {
            let identity = self.authority.server_identity(hostnames).map_err(|err| {
                FleetError::Internal(format!("issuing the endpoint's certificate: {err:#}"))
            })?;
            deployment.tls_certificate = Some(EndpointCertificate {
                hostnames: hostnames.clone(),
                certificate: ServingCertificate {
                    cert_pem: identity.cert_pem,
                    key_pem: identity.key_pem,
                },
            });
        }
        // Applying again what was rolled back or aborted is a retry: a fresh rollout.
        let retry = self
            .current_rollout(&deployment)?
            .filter(|r| matches!(r.phase, Phase::RolledBack(_) | Phase::Aborted(_)));
        let new_revision = retry.is_some()
            || deployment
                .current()
                .is_none_or(|current| !current.same_workload(&candidate));
        if let Some(retried) = &retry {
            let how = match retried.phase {
                Phase::RolledBack(_) => "rolled back",
                _ => "aborted",
            };
            changes.push(format!(
                "retry of revision {}, which was {how}",
                retried.revision
            ));
        }
        if let Some(current) = deployment.current()
            && new_revision
            && !created
            && current.models != candidate.models
            && !changes.iter().any(|c| {
                [
                    "model:",
                    "traffic",
                    "container.image_artifact:",
                    "container.model:",
                ]
                .iter()
                .any(|field| c.starts_with(field))
            })
        {
            changes.push(format!(
                "model {} now resolves to {} (was {})",
                spec.describe_models(),
                candidate.describe(),
                current.describe()
            ));
        }
        if let Some(current) = deployment.current()
            && new_revision
            && !created
            && current.entry_module != candidate.entry_module
            && !changes
                .iter()
                .any(|c| c.starts_with("entry_module") || c.starts_with("sandbox"))
        {
            let pin = |pin: Option<&ModulePin>| pin.map_or("none".to_owned(), ToString::to_string);
            changes.push(format!(
                "entry module {} now resolves to {} (was {})",
                spec.entry_module
                    .as_ref()
                    .map_or("none".to_owned(), ToString::to_string),
                pin(candidate.entry_module.as_ref()),
                pin(current.entry_module.as_ref())
            ));
        }
        if options.dry_run {
            return Ok(Applied {
                deployment,
                created,
                changes,
                rollout: None,
            });
        }
        let rollout = if new_revision {
            let cause = if created { "created" } else { "apply" };
            Some(self.start_rollout(&mut deployment, candidate, cause, changes.clone(), now)?)
        } else {
            self.deployments
                .insert(deployment.id.as_bytes(), encode(&deployment))?;
            if !changes.is_empty() {
                self.record_change(&deployment, "apply (no new revision)", changes.clone(), now)?;
            }
            None
        };
        // Named devices get a record (never seen, offline) so their desired state is waiting,
        // retained, when they first come online.
        for id in &deployment.spec.target.devices {
            if self.device(id)?.is_none() {
                self.put_device(&super::Device {
                    id: id.clone(),
                    ..super::Device::default()
                })?;
            }
        }
        self.db.flush()?;
        self.advance_locked(now)?;
        self.reconcile_locked(None)?;
        // As the first step left it (an all-at-once rollout has moved every device).
        let rollout = match rollout {
            Some(_) => self.current_rollout(&deployment)?,
            None => None,
        };
        if created {
            tracing::info!(deployment = %deployment.id, model = %deployment.model_ref(), "deployment created");
        } else {
            tracing::info!(deployment = %deployment.id, changes = changes.len(), "deployment updated");
        }
        Ok(Applied {
            deployment,
            created,
            changes,
            rollout,
        })
    }

    /// The versions `spec` runs now: the split's, or those its references resolve to.
    fn pin(&self, spec: &DeploymentSpec) -> Result<Vec<TrafficWeight>, FleetError> {
        let refs: Vec<(VersionRef, u32, PinRole)> = if spec.traffic.is_empty() {
            spec.pinned()
                .map(|(m, role)| {
                    (
                        VersionRef {
                            model_id: m.model_id.clone(),
                            version: m.version,
                        },
                        0,
                        role,
                    )
                })
                .collect()
        } else {
            spec.traffic
                .iter()
                .map(|t| {
                    (
                        VersionRef {
                            model_id: t.model_id.clone(),
                            version: VersionSelector::Exact(t.version),
                        },
                        t.weight,
                        PinRole::Model,
                    )
                })
                .collect()
        };
        let mut pins = Vec::new();
        for (reference, weight, role) in refs {
            let model = self.registry.get(&reference)?;
            desired::usable_as(&model, role).map_err(FleetError::FailedPrecondition)?;
            pins.push(TrafficWeight {
                model_id: model.model_id,
                version: model.version,
                weight,
            });
        }
        Ok(pins)
    }

    /// The module version `spec`'s entry module resolves to now, with its sandbox bounds. A
    /// module or version that does not exist is refused with the registry's reason.
    fn pin_module(&self, spec: &DeploymentSpec) -> Result<Option<ModulePin>, FleetError> {
        let Some(entry) = &spec.entry_module else {
            return Ok(None);
        };
        let module = self.modules.get(&VersionRef {
            model_id: entry.module_id.clone(),
            version: entry.version,
        })?;
        Ok(Some(ModulePin {
            module_id: module.model_id,
            version: module.version,
            sandbox: entry.sandbox,
        }))
    }

    /// Today's rule for equal priorities: a deployment cannot take a port another one of the
    /// same priority already uses on a device both target. (A higher priority may: it wins
    /// the port there, and the other is `Unschedulable` on that device.)
    fn check_port(&self, spec: &DeploymentSpec) -> Result<(), FleetError> {
        let devices = self.all_devices()?;
        for other in self.all_deployments()? {
            // The REST and gRPC ports both count.
            let Some(port) = spec
                .endpoint
                .ports()
                .find(|p| other.spec.endpoint.ports().any(|q| q == *p))
            else {
                continue;
            };
            if other.id == spec.name || other.spec.priority != spec.priority {
                continue;
            }
            let shared = devices
                .iter()
                .find(|d| {
                    let labels = d.labels();
                    spec.target.matches(&d.id, &labels) && other.spec.target.matches(&d.id, &labels)
                })
                .map(|d| d.id.clone())
                .or_else(|| {
                    spec.target
                        .devices
                        .intersection(&other.spec.target.devices)
                        .next()
                        .cloned()
                });
            if let Some(device) = shared {
                return Err(FleetError::FailedPrecondition(format!(
                    "port {port} on device {device} is already used by deployment {} at the same priority ({}); choose another port, or a higher priority to take it there",
                    other.id, other.spec.priority
                )));
            }
        }
        Ok(())
    }

    pub fn delete_deployment(&self, id: &str) -> Result<(), FleetError> {
        names::deployment_id(id).map_err(invalid)?;
        let _guard = self.guard();
        let Some(deployment) = self.find_deployment(id)? else {
            return Err(FleetError::NotFound(format!(
                "deployment {id} does not exist"
            )));
        };
        self.record_change(&deployment, "deleted", vec![], now_ms())?;
        self.deployments.remove(id.as_bytes())?;
        self.db.flush()?;
        self.reconcile_locked(None)?;
        tracing::info!(deployment = %id, "deployment deleted");
        Ok(())
    }

    fn find_deployment(&self, id: &str) -> Result<Option<Deployment>, FleetError> {
        match self.deployments.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(decode_deployment(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn get_deployment(&self, id: &str) -> Result<Deployment, FleetError> {
        names::deployment_id(id).map_err(invalid)?;
        match self.deployments.get(id.as_bytes())? {
            Some(bytes) => decode_deployment(&bytes),
            None => Err(FleetError::NotFound(format!(
                "deployment {id} does not exist"
            ))),
        }
    }

    pub fn all_deployments(&self) -> Result<Vec<Deployment>, FleetError> {
        let mut all = Vec::new();
        for entry in self.deployments.iter() {
            let (_, bytes) = entry?;
            all.push(decode_deployment(&bytes)?);
        }
        Ok(all)
    }

    /// The version the deployment's newest revision runs (the first of a split).
    pub fn resolved_version(&self, deployment: &Deployment) -> Option<u32> {
        deployment.current()?.models.first().map(|m| m.version)
    }

    /// Per-device states of a deployment's targeted devices. A device where the deployment
    /// cannot run (port taken by an older deployment, a capability missing) is
    /// `Unschedulable` with the reason, rather than a silent wait.
    pub fn deployment_devices(
        &self,
        deployment: &Deployment,
    ) -> Result<Vec<DeviceWorkload>, FleetError> {
        let devices = self.all_devices()?;
        let targeted = devices
            .iter()
            .filter(|d| deployment.spec.target.matches(&d.id, &d.labels()));
        self.workloads_on(deployment, targeted)
    }

    /// [`deployment_devices`](Self::deployment_devices) for one device, reading only its
    /// record (a profile asks every 200 ms; a fleet's records are too many for that).
    /// `None` when the deployment does not target it.
    pub fn deployment_device(
        &self,
        deployment: &Deployment,
        device_id: &str,
    ) -> Result<Option<DeviceWorkload>, FleetError> {
        let Some(device) = self.device(device_id)? else {
            return Ok(None);
        };
        if !deployment.spec.target.matches(&device.id, &device.labels()) {
            return Ok(None);
        }
        Ok(self.workloads_on(deployment, [&device])?.pop())
    }

    fn workloads_on<'a>(
        &self,
        deployment: &Deployment,
        devices: impl IntoIterator<Item = &'a super::Device>,
    ) -> Result<Vec<DeviceWorkload>, FleetError> {
        let deployments = self.all_deployments()?;
        let rollouts = self.current_rollouts(&deployments)?;
        let placements = placements(&deployments, &rollouts);
        let resolved = self.resolve_pins(&deployments);
        Ok(devices
            .into_iter()
            .map(|d| {
                let mut workload = device_workload(d, &deployment.id);
                let previous = self.stored_desired(&d.id);
                let computed = desired::for_device(d, &placements, &resolved, previous.as_ref());
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
        self.users(
            |revision| {
                revision
                    .models
                    .iter()
                    .any(|m| m.model_id == model_id && version.is_none_or(|v| m.version == v))
            },
            |spec| version.is_none() && spec.all_models().any(|m| m.model_id == model_id),
        )
    }

    /// Which deployments use an entry module (all versions when `version` is `None`).
    pub fn deployments_using_module(
        &self,
        module_id: &str,
        version: Option<u32>,
    ) -> Result<Vec<String>, FleetError> {
        let named = |id: &str| id == module_id;
        self.users(
            |revision| {
                revision
                    .entry_module
                    .as_ref()
                    .is_some_and(|m| named(&m.module_id) && version.is_none_or(|v| m.version == v))
            },
            |spec| {
                version.is_none()
                    && spec
                        .entry_module
                        .as_ref()
                        .is_some_and(|m| named(&m.module_id))
            },
        )
    }

    /// Deployments whose running revisions, or whose spec, use something.
    fn users(
        &self,
        revision_uses: impl Fn(&Revision) -> bool,
        spec_uses: impl Fn(&DeploymentSpec) -> bool,
    ) -> Result<Vec<String>, FleetError> {
        let mut users = Vec::new();
        for deployment in self.all_deployments()? {
            // What devices run: the newest revision, and the one before it while any device
            // is still on it (a rollout not completed). Older revisions are history: their
            // versions may go, and a rollback to one of them is refused then.
            let rollout = self.current_rollout(&deployment)?;
            let running_from = rollout
                .filter(|r| r.phase != Phase::Completed)
                .and_then(|r| r.from_revision)
                .and_then(|n| deployment.revision(n));
            let uses = deployment
                .current()
                .into_iter()
                .chain(running_from)
                .any(&revision_uses)
                || spec_uses(&deployment.spec);
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

fn decode_deployment(bytes: &[u8]) -> Result<Deployment, FleetError> {
    decode(bytes, "deployment")
}
