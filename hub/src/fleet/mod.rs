//! Deployments and devices: the hub's desired-state engine. It stores deployments and what
//! devices report (sled), computes each device's desired state with the pure
//! [`desired::for_device`], bumps the device's generation when that state changes, and hands
//! the result to the MQTT link (through the outbox) for publication.
//!
//! Architecture invariant: a device's desired generation only moves forward, and it moves
//! exactly when the workloads or batch jobs it is asked to run change; it is stored (and flushed) before the
//! desired state is published, so a hub restart never reissues an older generation. This
//! module knows nothing of gRPC or protobuf: the API and the link convert at their edges.

mod continuous;
pub mod deployments;
pub mod desired;
pub mod devices;
mod jobs;
pub mod keys;
pub mod model;
pub mod profiles;
pub mod rollout;
pub mod rollouts;
pub mod selector;
pub mod spec;
pub mod tokens;
mod upgrade;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use edgeship_domain::DesiredState;
use tokio::sync::mpsc;

pub use deployments::{Applied, ApplyOptions};
pub use jobs::JOB_INPUT_PATH;
pub use model::*;
pub use rollouts::RolloutAction;
use rollouts::placements;

use crate::blob_server::Entitlements;
use crate::jobs::{JobError, JobStore};
use crate::now_ms;
use crate::registry::{self, Registry, VersionRef};

/// Errors of deployment and fleet operations; mapped to gRPC codes in `api`.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("stored fleet data is damaged: {0}")]
    DataLoss(String),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The hub itself failed (no randomness for a key).
    #[error("{0}")]
    Internal(String),
    /// A registry error keeps its own class (not found, invalid, storage, data loss).
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// A job store error keeps its own class.
    #[error(transparent)]
    Job(#[from] JobError),
}

#[derive(Debug)]
pub struct Fleet {
    db: sled::Db,
    deployments: sled::Tree,
    devices: sled::Tree,
    desired: sled::Tree,
    /// Rollout records and history notes, `{deployment}/{revision:020}[.{seq}]`.
    rollouts: sled::Tree,
    /// Deployments that profiles made and have not deleted yet (`profiles.rs`).
    profiles: sled::Tree,
    registry: Arc<Registry>,
    /// Entry modules, registered beside the models (`Registry::modules`).
    modules: Arc<Registry>,
    /// Batch jobs; the live ones are part of their devices' desired states.
    jobs: Arc<JobStore>,
    outbox: mpsc::UnboundedSender<DesiredState>,
    entitlements: Arc<Entitlements>,
    /// Issues deployments' serving certificates (`endpoint.tls`).
    authority: Arc<crate::trust::pki::Authority>,
    /// Serializes read-modify-write of device records and generations.
    lock: Mutex<()>,
    /// Wakes the rollout driver when devices report.
    nudge: tokio::sync::Notify,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, FleetError> {
    serde_json::from_slice(bytes)
        .map_err(|err| FleetError::DataLoss(format!("a {what} record cannot be decoded: {err}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl Fleet {
    /// Opens the fleet's trees in `db` and loads every device's entitlements.
    pub fn open(
        db: sled::Db,
        registry: Arc<Registry>,
        modules: Arc<Registry>,
        outbox: mpsc::UnboundedSender<DesiredState>,
        entitlements: Arc<Entitlements>,
        authority: Arc<crate::trust::pki::Authority>,
    ) -> Result<Self, FleetError> {
        let fleet = Self {
            deployments: db.open_tree("deployments")?,
            devices: db.open_tree("devices")?,
            desired: db.open_tree("desired")?,
            rollouts: db.open_tree("rollouts")?,
            profiles: db.open_tree("profiles")?,
            jobs: Arc::new(JobStore::open(db.clone(), Arc::clone(&registry))?),
            db,
            registry,
            modules,
            outbox,
            entitlements,
            authority,
            lock: Mutex::new(()),
            nudge: tokio::sync::Notify::new(),
        };
        fleet.upgrade_deployments()?;
        for entry in fleet.desired.iter() {
            let (id, _) = entry?;
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(desired) = fleet.stored_desired(&id) {
                fleet.entitlements.set(&id, digests_of(&desired));
            }
        }
        Ok(fleet)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes every device's desired state (at start-up and after broad changes).
    pub fn reconcile_all(&self) -> Result<(), FleetError> {
        let _guard = self.guard();
        self.reconcile_locked(None)
    }

    /// The registry's record of every model and module version a kept revision pins.
    fn resolve_pins(&self, deployments: &[Deployment]) -> desired::Resolved {
        let mut resolved = desired::Resolved::default();
        let revisions = deployments.iter().flat_map(|d| &d.revisions);
        for revision in revisions {
            let models = revision.models.iter().map(|m| (&m.model_id, m.version));
            for (id, version) in models {
                lookup(&self.registry, &mut resolved.models, id, version);
            }
            if let Some(module) = &revision.entry_module {
                lookup(
                    &self.modules,
                    &mut resolved.modules,
                    &module.module_id,
                    module.version,
                );
            }
        }
        resolved
    }

    fn reconcile_locked(&self, only: Option<&str>) -> Result<(), FleetError> {
        let deployments = self.all_deployments()?;
        let rollouts = self.current_rollouts(&deployments)?;
        let placements = placements(&deployments, &rollouts);
        let resolved = self.resolve_pins(&deployments);
        let devices = match only {
            Some(id) => self.device(id)?.into_iter().collect(),
            None => self.all_devices()?,
        };
        let mut changed = Vec::new();
        for mut device in devices {
            let previous = self.stored_desired(&device.id);
            let computed = desired::for_device(&device, &placements, &resolved, previous.as_ref());
            for (deployment, reason) in &computed.unschedulable {
                tracing::debug!(device = %device.id, %deployment, %reason, "deployment unschedulable on device");
            }
            let jobs = self.desired_jobs(&device.id)?;
            if previous.is_some_and(|p| p.workloads == computed.workloads && p.jobs == jobs) {
                continue;
            }
            device.desired_generation += 1;
            let desired = DesiredState {
                device_id: device.id.clone(),
                generation: device.desired_generation,
                workloads: computed.workloads,
                rejected: vec![],
                issued_at_ms: now_ms(),
                jobs,
                rejected_jobs: vec![],
            };
            self.desired
                .insert(device.id.as_bytes(), encode(&desired))?;
            self.entitlements.set(&device.id, digests_of(&desired));
            self.put_device(&device)?;
            changed.push(desired);
        }
        if changed.is_empty() {
            return Ok(());
        }
        // Durable before published: a restart must never hand out an older generation.
        self.db.flush()?;
        for desired in changed {
            tracing::info!(device = %desired.device_id, generation = desired.generation, workloads = desired.workloads.len(), jobs = desired.jobs.len(), "desired state changed");
            let _ = self.outbox.send(desired);
        }
        Ok(())
    }

    /// Re-publishes every stored desired state (after the link (re)connects: an embedded
    /// broker keeps retained messages in memory only).
    pub fn republish_all(&self) -> Result<usize, FleetError> {
        // Under the lock: a reconcile running meanwhile must not have its newer state
        // overtaken (and replaced as the retained message) by an older copy.
        let _guard = self.guard();
        let mut count = 0;
        for entry in self.desired.iter() {
            let (id, _) = entry?;
            if let Some(desired) = self.stored_desired(&String::from_utf8_lossy(&id)) {
                let _ = self.outbox.send(desired);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Re-publishes the stored desired states of `devices` (they just connected).
    pub fn republish(&self, devices: &HashSet<String>) -> Result<(), FleetError> {
        if devices.is_empty() {
            return Ok(());
        }
        let _guard = self.guard();
        for device in devices {
            if let Some(desired) = self.stored_desired(device) {
                let _ = self.outbox.send(desired);
            }
        }
        Ok(())
    }

    /// A device's stored desired state. It is derived data: one that cannot be read (an older
    /// hub's format) is recomputed, under a newer generation, rather than refused.
    fn stored_desired(&self, id: &str) -> Option<DesiredState> {
        let bytes = match self.desired.get(id.as_bytes()) {
            Ok(bytes) => bytes?,
            Err(err) => {
                tracing::error!(device = %id, error = %err, "cannot read a stored desired state");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(desired) => Some(desired),
            Err(err) => {
                tracing::warn!(device = %id, error = %err, "stored desired state unreadable; it will be recomputed");
                None
            }
        }
    }
}

/// Looks a pinned version up once per reconcile (`None`: it is gone).
fn lookup(
    registry: &Registry,
    found: &mut std::collections::HashMap<(String, u32), Option<registry::ModelVersion>>,
    id: &str,
    version: u32,
) {
    let key = (id.to_owned(), version);
    if found.contains_key(&key) {
        return;
    }
    let record = registry
        .get(&VersionRef {
            model_id: id.to_owned(),
            version: registry::VersionSelector::Exact(version),
        })
        .ok();
    found.insert(key, record);
}

/// The blob digests a desired state lets its device fetch: model files, an entry module's
/// `.wasm`, a container's image and jobs' models and inputs, through `DesiredState::blobs`.
fn digests_of(desired: &DesiredState) -> HashSet<String> {
    desired.blobs().map(|b| b.sha256.clone()).collect()
}
