//! Deployments and devices: the hub's desired-state engine. It stores deployments and what
//! devices report (sled), computes each device's desired state, bumps its generation when that
//! state changes, and hands the result to the MQTT link for publication (retained).
//!
//! Architecture invariant: a device's desired generation only moves forward, and it moves
//! exactly when the workloads it is asked to run change; it is stored (and flushed) before the
//! desired state is published, so a hub restart never reissues an older generation.

pub mod link;
pub mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use edgeship_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;

pub use model::*;

use crate::now_ms;
use crate::registry::{self, Registry, VersionRef, validate};

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
}

impl From<registry::Error> for FleetError {
    fn from(err: registry::Error) -> Self {
        match err {
            registry::Error::NotFound(m) => FleetError::NotFound(m),
            registry::Error::InvalidArgument(m) => FleetError::InvalidArgument(m),
            other => FleetError::FailedPrecondition(other.to_string()),
        }
    }
}

/// A message for the MQTT link to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Runtimes a deployment may ask for today.
pub const RUNTIMES: &[&str] = &["tract"];

#[derive(Debug)]
pub struct Fleet {
    db: sled::Db,
    deployments: sled::Tree,
    devices: sled::Tree,
    desired: sled::Tree,
    registry: Arc<Registry>,
    outbox: mpsc::UnboundedSender<Publication>,
    /// Serializes read-modify-write of device records and generations.
    lock: Mutex<()>,
    /// Per device, the blob digests its desired state names. Every chunk request is checked
    /// against it, so it is kept in memory instead of decoding the stored desired state per
    /// chunk; filled from sled on first use and replaced whenever a desired state is written.
    entitlements: Mutex<HashMap<String, Arc<HashSet<String>>>>,
}

/// The blob digests a desired state lets its device fetch.
fn digests_of(desired: &pb::DesiredState) -> HashSet<String> {
    desired
        .workloads
        .iter()
        .filter_map(|w| w.model.as_ref())
        .flat_map(|m| m.files.iter().map(|f| f.sha256.clone()))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, FleetError> {
    serde_json::from_slice(bytes)
        .map_err(|err| FleetError::DataLoss(format!("a {what} record cannot be decoded: {err}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Deployment ids: same rule as model names (they appear in resource names and on devices).
pub fn validate_deployment_id(id: &str) -> Result<(), FleetError> {
    validate::model_id(id).map_err(|_| {
        FleetError::InvalidArgument(format!(
            "invalid deployment name {id:?}: use 1-255 letters, digits, '-', '_' and '.', starting with a letter or digit"
        ))
    })
}

pub fn validate_device_id(id: &str) -> Result<(), FleetError> {
    edgeship_proto::topics::validate_device_id(id).map_err(FleetError::InvalidArgument)
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), FleetError> {
    for (key, value) in labels {
        validate::key("label", key).map_err(|e| FleetError::InvalidArgument(e.to_string()))?;
        validate::value("label", key, value)
            .map_err(|e| FleetError::InvalidArgument(e.to_string()))?;
    }
    Ok(())
}

impl Fleet {
    pub fn open(
        db: sled::Db,
        registry: Arc<Registry>,
        outbox: mpsc::UnboundedSender<Publication>,
    ) -> Result<Self, FleetError> {
        Ok(Self {
            deployments: db.open_tree("deployments")?,
            devices: db.open_tree("devices")?,
            desired: db.open_tree("desired")?,
            db,
            registry,
            outbox,
            lock: Mutex::new(()),
            entitlements: Mutex::new(HashMap::new()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- deployments -------------------------------------------------------------------

    pub fn create_deployment(&self, mut deployment: Deployment) -> Result<Deployment, FleetError> {
        validate_deployment_id(&deployment.id)?;
        validate::model_id(&deployment.model_id)
            .map_err(|e| FleetError::InvalidArgument(e.to_string()))?;
        if !RUNTIMES.contains(&deployment.runtime.as_str()) {
            return Err(FleetError::InvalidArgument(format!(
                "unknown runtime {:?}: use one of {}",
                deployment.runtime,
                RUNTIMES.join(", ")
            )));
        }
        if deployment.auth != "none" {
            return Err(FleetError::InvalidArgument(format!(
                "endpoint auth {:?} is not supported yet: use none",
                deployment.auth
            )));
        }
        if deployment.port == 0 {
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
            validate_device_id(id)?;
        }
        validate_labels(&deployment.target.label_selector)?;
        // The model must exist now, and carry an ONNX file the runtime can load.
        let model = self.registry.get(&VersionRef {
            model_id: deployment.model_id.clone(),
            version: deployment.version_selector(),
        })?;
        entry_file(&model).map_err(FleetError::FailedPrecondition)?;

        let _guard = self.guard();
        if self.deployments.contains_key(deployment.id.as_bytes())? {
            return Err(FleetError::AlreadyExists(format!(
                "deployment {} already exists",
                deployment.id
            )));
        }
        let devices = self.all_devices()?;
        for other in self.all_deployments()? {
            if other.port != deployment.port {
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
                    "port {} on device {device} is already used by deployment {}",
                    deployment.port, other.id
                )));
            }
        }
        deployment.create_time_ms = now_ms();
        self.deployments
            .insert(deployment.id.as_bytes(), encode(&deployment))?;
        // Named devices get a record (offline until they connect) so their desired state is
        // waiting, retained, when they first come online.
        for id in &deployment.target.device_ids {
            if !self.devices.contains_key(id.as_bytes())? {
                let device = Device {
                    id: id.clone(),
                    ..Device::default()
                };
                self.devices.insert(id.as_bytes(), encode(&device))?;
            }
        }
        self.db.flush()?;
        self.reconcile_locked(None)?;
        tracing::info!(deployment = %deployment.id, model = %deployment.model_ref(), "deployment created");
        Ok(deployment)
    }

    pub fn delete_deployment(&self, id: &str) -> Result<(), FleetError> {
        validate_deployment_id(id)?;
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
        validate_deployment_id(id)?;
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
        self.registry
            .get(&VersionRef {
                model_id: deployment.model_id.clone(),
                version: deployment.version_selector(),
            })
            .ok()
            .map(|m| m.version)
    }

    /// Per-device states of a deployment's targeted devices. A device where an older
    /// deployment holds the same port (possible after a label change) cannot run it: that is
    /// `Unschedulable`, with the reason, rather than a silent wait.
    pub fn deployment_devices(
        &self,
        deployment: &Deployment,
    ) -> Result<Vec<DeviceWorkload>, FleetError> {
        let deployments = self.all_deployments()?;
        Ok(self
            .all_devices()?
            .iter()
            .filter(|d| deployment.target.matches(&d.id, &d.labels()))
            .map(|d| {
                let mut workload = device_workload(d, &deployment.id);
                if let Some(holder) = port_holder(&deployments, d, deployment.port)
                    && holder != deployment.id
                {
                    workload.state = ServiceState::Unschedulable;
                    workload.error = format!(
                        "port {} on this device is taken by deployment {holder}",
                        deployment.port
                    );
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

    // ---- devices -----------------------------------------------------------------------

    pub fn all_devices(&self) -> Result<Vec<Device>, FleetError> {
        let mut all = Vec::new();
        for entry in self.devices.iter() {
            let (_, bytes) = entry?;
            all.push(decode::<Device>(&bytes, "device")?);
        }
        Ok(all)
    }

    pub fn get_device(&self, id: &str) -> Result<Device, FleetError> {
        validate_device_id(id)?;
        self.device(id)?
            .ok_or_else(|| FleetError::NotFound(format!("device {id} is not known to the hub")))
    }

    fn device(&self, id: &str) -> Result<Option<Device>, FleetError> {
        self.devices
            .get(id.as_bytes())?
            .map(|bytes| decode(&bytes, "device"))
            .transpose()
    }

    fn put_device(&self, device: &Device) -> Result<(), FleetError> {
        self.devices.insert(device.id.as_bytes(), encode(device))?;
        Ok(())
    }

    pub fn set_labels(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Device, FleetError> {
        validate_device_id(id)?;
        validate_labels(&set)?;
        let _guard = self.guard();
        let mut device = self
            .device(id)?
            .ok_or_else(|| FleetError::NotFound(format!("device {id} is not known to the hub")))?;
        for key in &remove {
            device.user_labels.remove(key);
        }
        device.user_labels.extend(set);
        self.put_device(&device)?;
        self.db.flush()?;
        self.reconcile_locked(Some(id))?;
        self.device(id)?
            .ok_or_else(|| FleetError::NotFound(format!("device {id} is not known to the hub")))
    }

    /// A birth (or the Last Will, `online = false`) from a device.
    pub fn on_birth(&self, id: &str, birth: pb::Birth) -> Result<(), FleetError> {
        validate_device_id(id)?;
        let _guard = self.guard();
        let mut device = self.device(id)?.unwrap_or_else(|| Device {
            id: id.to_owned(),
            ..Device::default()
        });
        device.online = birth.online;
        device.last_seen_ms = now_ms();
        let mut relabelled = false;
        if birth.online {
            let labels: BTreeMap<String, String> = birth.labels.into_iter().collect();
            validate_labels(&labels)?;
            relabelled = labels != device.reported_labels;
            device.reported_labels = labels;
            device.agent_version = birth.agent_version;
            if let Some(c) = birth.capabilities {
                device.capabilities = Capabilities {
                    arch: c.arch,
                    os: c.os,
                    cpu_count: c.cpu_count,
                    memory_bytes: c.memory_bytes,
                    runtimes: c.runtimes,
                };
            }
        }
        self.put_device(&device)?;
        self.db.flush()?;
        tracing::info!(device = %id, online = device.online, "device birth");
        if relabelled || device.desired_generation == 0 {
            self.reconcile_locked(Some(id))?;
        }
        Ok(())
    }

    pub fn on_reported(&self, id: &str, report: pb::ReportedState) -> Result<(), FleetError> {
        validate_device_id(id)?;
        let _guard = self.guard();
        let mut device = self.device(id)?.unwrap_or_else(|| Device {
            id: id.to_owned(),
            ..Device::default()
        });
        device.online = true;
        device.last_seen_ms = now_ms();
        device.applied_generation = report.applied_generation.min(device.desired_generation);
        device.workloads = report
            .workloads
            .into_iter()
            .map(|w| {
                let metrics = w.metrics.unwrap_or_default();
                WorkloadReport {
                    state: service_state(w.state()),
                    deployment: w.deployment,
                    error: w.error,
                    serving_model: w.serving_model,
                    desired_model: w.desired_model,
                    port: u16::try_from(w.port).unwrap_or(0),
                    requests: metrics.requests,
                    errors: metrics.errors,
                    mean_latency_ms: metrics.mean_latency_ms,
                }
            })
            .collect();
        self.put_device(&device)?;
        Ok(())
    }

    // ---- desired state -----------------------------------------------------------------

    /// Recomputes desired states after a model registration (for `latest` deployments).
    pub fn on_model_registered(&self, model_id: &str) -> Result<(), FleetError> {
        let follows = self
            .all_deployments()?
            .iter()
            .any(|d| d.model_id == model_id && d.version.is_none());
        if follows {
            let _guard = self.guard();
            self.reconcile_locked(None)?;
        }
        Ok(())
    }

    /// Recomputes every device's desired state (at start-up and after broad changes).
    pub fn reconcile_all(&self) -> Result<(), FleetError> {
        let _guard = self.guard();
        self.reconcile_locked(None)
    }

    fn reconcile_locked(&self, only: Option<&str>) -> Result<(), FleetError> {
        let deployments = self.all_deployments()?;
        let devices = match only {
            Some(id) => self.device(id)?.into_iter().collect(),
            None => self.all_devices()?,
        };
        let mut changed = Vec::new();
        for mut device in devices {
            let workloads = self.workloads_for(&device, &deployments);
            let previous = self.stored_desired(&device.id)?;
            if previous.as_ref().is_some_and(|p| p.workloads == workloads) {
                continue;
            }
            device.desired_generation += 1;
            let desired = pb::DesiredState {
                device_id: device.id.clone(),
                generation: device.desired_generation,
                workloads,
                signature: Default::default(),
                issued_at_ms: now_ms(),
            };
            self.desired
                .insert(device.id.as_bytes(), desired.encode_to_vec())?;
            self.entitlements
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(device.id.clone(), Arc::new(digests_of(&desired)));
            self.put_device(&device)?;
            changed.push(desired);
        }
        if changed.is_empty() {
            return Ok(());
        }
        // Durable before published: a restart must never hand out an older generation.
        self.db.flush()?;
        for desired in changed {
            tracing::info!(device = %desired.device_id, generation = desired.generation, workloads = desired.workloads.len(), "desired state changed");
            self.publish_desired(&desired);
        }
        Ok(())
    }

    fn publish_desired(&self, desired: &pb::DesiredState) {
        let topic = edgeship_proto::topics::device(
            &desired.device_id,
            edgeship_proto::topics::DeviceTopic::Desired,
        );
        let _ = self.outbox.send(Publication {
            topic,
            payload: desired.encode_to_vec(),
            retain: true,
        });
    }

    /// Re-publishes every stored desired state (after the link (re)connects: an embedded
    /// broker keeps retained messages in memory only).
    pub fn republish_all(&self) -> Result<usize, FleetError> {
        let mut count = 0;
        for entry in self.desired.iter() {
            let (_, bytes) = entry?;
            let desired = pb::DesiredState::decode(bytes.as_ref()).map_err(|e| {
                FleetError::DataLoss(format!("a desired state cannot be decoded: {e}"))
            })?;
            self.publish_desired(&desired);
            count += 1;
        }
        Ok(count)
    }

    fn stored_desired(&self, id: &str) -> Result<Option<pb::DesiredState>, FleetError> {
        self.desired
            .get(id.as_bytes())?
            .map(|bytes| {
                pb::DesiredState::decode(bytes.as_ref()).map_err(|e| {
                    FleetError::DataLoss(format!(
                        "the desired state of {id} cannot be decoded: {e}"
                    ))
                })
            })
            .transpose()
    }

    fn workloads_for(&self, device: &Device, deployments: &[Deployment]) -> Vec<pb::Workload> {
        let labels = device.labels();
        let mut ports = HashSet::new();
        let mut ordered: Vec<&Deployment> = deployments
            .iter()
            .filter(|d| d.target.matches(&device.id, &labels))
            .collect();
        // The oldest deployment keeps a contested port (a label change can create overlap).
        ordered.sort_by_key(|d| (d.create_time_ms, d.id.clone()));
        let mut workloads = Vec::new();
        for deployment in ordered {
            if !ports.insert(deployment.port) {
                tracing::warn!(device = %device.id, deployment = %deployment.id, port = deployment.port, "port already taken on this device; deployment skipped");
                continue;
            }
            let model = match self.registry.get(&VersionRef {
                model_id: deployment.model_id.clone(),
                version: deployment.version_selector(),
            }) {
                Ok(model) => model,
                Err(err) => {
                    tracing::warn!(deployment = %deployment.id, error = %err, "deployment's model is gone; skipped");
                    continue;
                }
            };
            let Ok((entry, signature)) = entry_file(&model) else {
                continue;
            };
            workloads.push(pb::Workload {
                deployment: deployment.id.clone(),
                model: Some(pb::DeployedModel {
                    model_id: model.model_id.clone(),
                    version: model.version,
                    files: model.files.iter().map(pb::BlobRef::from).collect(),
                    entry_file: entry.path.clone(),
                    inputs: signature.inputs.iter().map(pb::TensorSpec::from).collect(),
                    outputs: signature.outputs.iter().map(pb::TensorSpec::from).collect(),
                    sample_input: model.sample_input.clone().unwrap_or_default(),
                }),
                runtime: deployment.runtime.clone(),
                endpoint: Some(pb::Endpoint {
                    port: u32::from(deployment.port),
                    auth: deployment.auth.clone(),
                }),
            });
        }
        workloads
    }

    // ---- blobs -------------------------------------------------------------------------

    fn entitled(&self, device_id: &str) -> Arc<HashSet<String>> {
        let cached = self
            .entitlements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .cloned();
        if let Some(digests) = cached {
            return digests;
        }
        let digests = Arc::new(
            self.stored_desired(device_id)
                .ok()
                .flatten()
                .map(|desired| digests_of(&desired))
                .unwrap_or_default(),
        );
        // A desired state written meanwhile has put the newer set in place: keep that one.
        Arc::clone(
            self.entitlements
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(device_id.to_owned())
                .or_insert(digests),
        )
    }

    /// Serves one chunk of a blob to a device. A device may read only blobs of its own
    /// desired state (the topic tree confines it to its id; this confines it to its models).
    pub async fn blob_chunk(&self, device_id: &str, request: &pb::BlobRequest) -> pb::BlobChunk {
        let mut chunk = pb::BlobChunk {
            sha256: request.sha256.clone(),
            offset: request.offset,
            ..Default::default()
        };
        if !self.entitled(device_id).contains(&request.sha256) {
            chunk.error = format!(
                "blob {} is not part of device {device_id}'s desired state",
                request.sha256
            );
            return chunk;
        }
        match read_range(
            &self.registry.blob_path(&request.sha256),
            request.offset,
            request.length,
        )
        .await
        {
            Ok((data, total)) => {
                use sha2::Digest;
                chunk.chunk_sha256 = hex::encode(sha2::Sha256::digest(&data));
                chunk.total_size = total;
                chunk.data = data.into();
            }
            Err(err) => chunk.error = err,
        }
        chunk
    }
}

/// Largest chunk the hub sends, whatever a device asks for: the agents' request size, so a
/// chunk plus its envelope fits the 320 KiB minimum packet size both sides enforce.
pub const MAX_CHUNK_BYTES: u64 = 256 * 1024;

/// Reads one range of a blob: one trip to the blocking pool (open, seek, read), since this
/// runs once per chunk and every hop shows in transfer throughput.
async fn read_range(
    path: &std::path::Path,
    offset: u64,
    length: u64,
) -> Result<(Vec<u8>, u64), String> {
    use std::io::{Read, Seek};
    let path = path.to_owned();
    let read = move || -> std::io::Result<Result<(Vec<u8>, u64), String>> {
        let mut file = std::fs::File::open(&path)?;
        let total = file.metadata()?.len();
        if offset >= total {
            return Ok(Err(format!(
                "offset {offset} is beyond the blob's {total} bytes"
            )));
        }
        let length = length.clamp(1, MAX_CHUNK_BYTES).min(total - offset);
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut data = vec![0; length as usize];
        file.read_exact(&mut data)?;
        Ok(Ok((data, total)))
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => Err(format!("the blob cannot be read: {err}")),
        Err(err) => Err(format!("the blob read failed: {err}")),
    }
}

/// The deployment that owns `port` on a device: the oldest one targeting it with that port.
fn port_holder(deployments: &[Deployment], device: &Device, port: u16) -> Option<String> {
    let labels = device.labels();
    deployments
        .iter()
        .filter(|d| d.port == port && d.target.matches(&device.id, &labels))
        .min_by_key(|d| (d.create_time_ms, d.id.clone()))
        .map(|d| d.id.clone())
}

/// The file a runtime loads, the model's first ONNX file, with its signature.
pub fn entry_file(
    model: &registry::ModelVersion,
) -> Result<(&registry::ModelFile, &registry::OnnxSignature), String> {
    model
        .files
        .iter()
        .find_map(|f| f.onnx.as_ref().map(|signature| (f, signature)))
        .ok_or_else(|| {
            format!(
                "model {}:{} has no ONNX file with a signature; register it with --framework onnx",
                model.model_id, model.version
            )
        })
}

fn service_state(state: pb::ServiceState) -> ServiceState {
    match state {
        pb::ServiceState::Healthy => ServiceState::Healthy,
        pb::ServiceState::Unhealthy => ServiceState::Unhealthy,
        pb::ServiceState::Unschedulable => ServiceState::Unschedulable,
        pb::ServiceState::Failed => ServiceState::Failed,
        pb::ServiceState::Transitioning | pb::ServiceState::Unspecified => {
            ServiceState::Transitioning
        }
    }
}
