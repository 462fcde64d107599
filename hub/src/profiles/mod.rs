//! Profiles (`edgeship model profile`, Azure ML's `Model.profile`): a model version measured
//! on one device under rising load, and a recommended CPU and memory stored on the version.
//!
//! A profile deploys the model (behind its entry module, if any) to the device through the
//! normal fleet machinery, as a deployment of its own on a free port, so the workloads the
//! device already serves are left alone; waits until the device reports it `Healthy`; asks the
//! device's agent over MQTT to load that endpoint itself (`profile/req`, answered on
//! `profile/resp`: [`DeviceRequests`]); deletes the deployment, whatever happened; and stores
//! the recommendation as properties of the version, per device class (`recommend.rs`).
//!
//! Design: a profile runs in a task of its own, so that a caller who goes away (a cancelled
//! call) or a hub that stops still gets its deployment deleted: the task hears either and
//! ends the profile. A hub that dies outright leaves the deployment's record
//! (`fleet/profiles.rs`), and the next start deletes it. Nothing here touches protobuf:
//! `api/profiles.rs` and `link.rs` convert at the edges.

mod plan;
pub mod recommend;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

pub use plan::{
    DEFAULT_CONCURRENCY, DEFAULT_CONTENT_TYPE, DEFAULT_SECONDS_PER_LEVEL, DEVICE_CLASS_LABEL,
    MAX_BODY_BYTES, MAX_CONNECTIONS, MAX_LEVELS, MAX_SECONDS_PER_LEVEL, ProfileRequest,
};
pub use recommend::Recommendation;

use crate::device_requests::{AskError, Asked, DeviceRequests, Exchange};
use crate::fleet::profiles::ProfileRecord;
use crate::fleet::spec::{Manifest, PinRole};
use crate::fleet::{ApplyOptions, Fleet, FleetError, ServiceState, desired};
use crate::registry::{self, ModelUpdate, Registry, VersionRef, VersionSelector, validate};

/// How long the device has to report the profile's deployment `Healthy`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the deployment's state is looked at meanwhile.
const READY_POLL: Duration = Duration::from_millis(200);
/// The path the requests go to: Azure ML's scoring route, which every model endpoint serves.
const SCORE_PATH: &str = "/score";

/// What a profile request asks a device to do: load `deployment`'s endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileQuery {
    pub deployment: String,
    pub path: String,
    pub content_type: String,
    pub body: Bytes,
    pub concurrency: Vec<u32>,
    pub seconds_per_level: u32,
}

impl Exchange for ProfileQuery {
    type Answer = DeviceProfile;
    const NOUN: &'static str = "profile";
    const SILENCE: &'static str = "offline, or an agent without profiles";
}

/// A profile request on its way to a device.
pub type ProfileAsk = Asked<ProfileQuery>;
/// Profile requests waiting for their answers; shared by the profiler and the link.
pub type DeviceProfiles = DeviceRequests<ProfileQuery>;

/// One level's figures, as the device measured them, and a device's whole answer.
pub use edgeship_domain::{DeviceProfile, ProfileLevel as Level};

/// Why a profile did not run, or did not finish; `api/profiles.rs` picks the gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The device did not become ready, or did not answer, in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The hub is stopping, or the caller went away.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// A finished profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub model_id: String,
    pub version: u32,
    pub device: String,
    pub device_class: String,
    /// `records:2`, the version it resolved to.
    pub entry_module: Option<String>,
    pub profile: DeviceProfile,
    pub recommendation: Recommendation,
    /// What was written on the model version.
    pub properties: BTreeMap<String, String>,
}

/// A profile ready to deploy: everything checked, its name reserved.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    model_id: String,
    version: u32,
    device: String,
    device_class: String,
    entry_module: Option<String>,
    manifest: Manifest,
    query: ProfileQuery,
    deadline: Duration,
}

/// Runs profiles; one per hub.
#[derive(Debug)]
pub struct Profiler {
    registry: Arc<Registry>,
    modules: Arc<Registry>,
    fleet: Arc<Fleet>,
    devices: Arc<DeviceProfiles>,
    /// Set when the hub stops: running profiles end (and clean up) at once.
    closing: watch::Sender<bool>,
    /// Profiles in flight, aborted when the hub is dropped without stopping.
    running: Mutex<Vec<AbortHandle>>,
}

impl Profiler {
    pub fn new(
        registry: Arc<Registry>,
        modules: Arc<Registry>,
        fleet: Arc<Fleet>,
        devices: Arc<DeviceProfiles>,
    ) -> Self {
        Self {
            registry,
            modules,
            fleet,
            devices,
            closing: watch::Sender::new(false),
            running: Mutex::default(),
        }
    }

    /// Runs a profile and waits for it. Dropping the returned future ends the profile early,
    /// its deployment deleted all the same.
    pub async fn profile(
        self: &Arc<Self>,
        request: ProfileRequest,
    ) -> Result<Outcome, ProfileError> {
        let request = request.validate()?;
        let (_cancel, cancelled) = oneshot::channel::<()>();
        let stop = Stop {
            cancelled,
            closing: self.closing.subscribe(),
        };
        let this = Arc::clone(self);
        let task = tokio::spawn(async move { this.run(request, stop).await });
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running.retain(|t| !t.is_finished());
            running.push(task.abort_handle());
        }
        task.await
            .map_err(|_| ProfileError::Unavailable("the hub stopped during the profile".into()))?
    }

    /// Ends every running profile (the hub stops): each deletes its deployment and answers
    /// its caller.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Stops every running profile where it stands, cleaning nothing up: the hub is going
    /// away without stopping, and its next start deletes what they left.
    pub fn abort_all(&self) {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for task in running.iter() {
            task.abort();
        }
    }

    async fn run(
        self: Arc<Self>,
        request: ProfileRequest,
        mut stop: Stop,
    ) -> Result<Outcome, ProfileError> {
        let plan = self.blocking(move |this| this.plan(request)).await?;
        tracing::info!(deployment = %plan.name, model = %format!("{}:{}", plan.model_id, plan.version), device = %plan.device, "profile started");
        let measured = self.measure(&plan, &mut stop).await;
        let name = plan.name.clone();
        if let Err(err) = self
            .blocking(move |this| Ok(this.fleet.end_profile(&name)?))
            .await
        {
            // Its record stays: the hub's next start deletes the deployment.
            tracing::error!(deployment = %plan.name, error = %err, "cannot delete a profile's deployment");
        }
        let profile = measured?;
        let recommendation = recommend::recommend(&profile).ok_or_else(|| {
            ProfileError::FailedPrecondition(format!("device {} answered no levels", plan.device))
        })?;
        let properties = recommend::properties(
            &plan.device_class,
            &profile,
            &recommendation,
            plan.entry_module.as_deref(),
            &crate::rfc3339(crate::now_ms()),
        );
        let update = ModelUpdate {
            add_properties: properties.clone(),
            ..ModelUpdate::default()
        };
        let reference = exact(&plan.model_id, plan.version);
        self.blocking(move |this| Ok(this.registry.update(&reference, &update)?))
            .await?;
        tracing::info!(deployment = %plan.name, class = %plan.device_class, cpu = recommendation.cpu, memory_bytes = recommendation.memory_bytes, "profile stored");
        Ok(Outcome {
            model_id: plan.model_id,
            version: plan.version,
            device: plan.device,
            device_class: plan.device_class,
            entry_module: plan.entry_module,
            profile,
            recommendation,
            properties,
        })
    }

    /// Checks what the request names and reserves the deployment's name.
    fn plan(&self, request: ProfileRequest) -> Result<Plan, ProfileError> {
        let model = self.registry.get(&request.model)?;
        desired::usable_as(&model, PinRole::Model).map_err(ProfileError::FailedPrecondition)?;
        let entry_module = match &request.entry_module {
            Some(reference) => {
                let module = self.modules.get(reference)?;
                Some(format!("{}:{}", module.model_id, module.version))
            }
            None => None,
        };
        let device = self.fleet.get_device(&request.device)?;
        if !device.online {
            return Err(ProfileError::FailedPrecondition(format!(
                "device {} is offline; a profile runs on a device that is online",
                device.id
            )));
        }
        let device_class = plan::device_class(&device)?;
        let keys = recommend::property_keys(&device_class);
        let after = model.properties.len()
            + keys
                .iter()
                .filter(|k| !model.properties.contains_key(*k))
                .count();
        if after > validate::MAX_PROPERTIES {
            return Err(ProfileError::FailedPrecondition(format!(
                "{}:{} has {} properties; this profile's {} would pass the limit of {}: remove some first (`edgeship model update --remove-property`)",
                model.model_id,
                model.version,
                model.properties.len(),
                keys.len(),
                validate::MAX_PROPERTIES
            )));
        }
        let used = plan::ports_in_use(&device, &self.fleet.all_deployments()?);
        let port = plan::pick_port(&used, random_u16()?).ok_or_else(|| {
            ProfileError::FailedPrecondition(format!(
                "no free port for the profile on device {}",
                device.id
            ))
        })?;
        let name = plan::deployment_name(&model.model_id, model.version);
        let model_ref = format!("{}:{}", model.model_id, model.version);
        let manifest =
            plan::manifest(&name, &model_ref, entry_module.as_deref(), port, &device.id)?;
        let record = ProfileRecord {
            model: model_ref,
            device: device.id.clone(),
            started_ms: crate::now_ms(),
        };
        self.fleet.begin_profile(&name, &record)?;
        Ok(Plan {
            deadline: request.answer_deadline(),
            query: ProfileQuery {
                deployment: name.clone(),
                path: SCORE_PATH.to_owned(),
                content_type: request.content_type,
                body: request.body,
                concurrency: request.concurrency,
                seconds_per_level: request.seconds_per_level,
            },
            name,
            model_id: model.model_id,
            version: model.version,
            device: device.id,
            device_class,
            entry_module,
            manifest,
        })
    }

    /// Deploys, waits for `Healthy` and has the device load the endpoint.
    async fn measure(
        self: &Arc<Self>,
        plan: &Plan,
        stop: &mut Stop,
    ) -> Result<DeviceProfile, ProfileError> {
        let manifest = plan.manifest.clone();
        self.blocking(move |this| {
            let options = ApplyOptions {
                create_only: true,
                profile: true,
                ..ApplyOptions::default()
            };
            this.fleet.apply(&manifest, options)?;
            Ok(())
        })
        .await?;
        self.wait_healthy(plan, stop).await?;
        let asked = self
            .devices
            .ask(&plan.device, plan.query.clone(), plan.deadline);
        let answer = tokio::select! {
            answer = asked => answer,
            stopped = stop.wait() => return Err(stopped),
        };
        answer.map_err(|err| match err {
            AskError::Silent { .. } => ProfileError::DeadlineExceeded(format!(
                "device {} did not answer the profile: {err}",
                plan.device
            )),
            AskError::NotConnected | AskError::Dropped => {
                ProfileError::Unavailable(err.to_string())
            }
            AskError::Refused(why) => {
                ProfileError::FailedPrecondition(format!("device {}: {why}", plan.device))
            }
        })
    }

    /// Waits until the device reports the profile's deployment `Healthy`; a state it will
    /// not leave by itself (`Failed`, `Unschedulable`) ends the profile with the device's
    /// reason.
    async fn wait_healthy(
        self: &Arc<Self>,
        plan: &Plan,
        stop: &mut Stop,
    ) -> Result<(), ProfileError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let (name, device) = (plan.name.clone(), plan.device.clone());
            let workload = self
                .blocking(move |this| {
                    let deployment = match this.fleet.get_deployment(&name) {
                        Err(FleetError::NotFound(_)) => {
                            return Err(ProfileError::FailedPrecondition(format!(
                                "deployment {name} was deleted during the profile"
                            )));
                        }
                        other => other?,
                    };
                    Ok(this.fleet.deployment_device(&deployment, &device)?)
                })
                .await?;
            let Some(workload) = workload else {
                return Err(ProfileError::FailedPrecondition(format!(
                    "deployment {} no longer targets device {}",
                    plan.name, plan.device
                )));
            };
            let reason = match workload.error.as_str() {
                "" => String::new(),
                error => format!(": {error}"),
            };
            match workload.state {
                ServiceState::Healthy => return Ok(()),
                ServiceState::Failed | ServiceState::Unschedulable => {
                    return Err(ProfileError::FailedPrecondition(format!(
                        "the model did not start on device {}: {}{reason}",
                        plan.device, workload.state
                    )));
                }
                _ if !workload.online => {
                    return Err(ProfileError::FailedPrecondition(format!(
                        "device {} went offline",
                        plan.device
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProfileError::DeadlineExceeded(format!(
                    "deployment {} did not become Healthy on device {} within {} s (it is {}{reason})",
                    plan.name,
                    plan.device,
                    READY_TIMEOUT.as_secs(),
                    workload.state
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(READY_POLL) => {}
                stopped = stop.wait() => return Err(stopped),
            }
        }
    }

    /// Runs storage work off the async threads.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Profiler) -> Result<T, ProfileError> + Send + 'static,
    ) -> Result<T, ProfileError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|err| ProfileError::Internal(format!("a profile task failed: {err}")))?
    }
}

/// What ends a profile early: its caller going away, or the hub stopping.
struct Stop {
    cancelled: oneshot::Receiver<()>,
    closing: watch::Receiver<bool>,
}

impl Stop {
    async fn wait(&mut self) -> ProfileError {
        tokio::select! {
            _ = &mut self.cancelled => ProfileError::Unavailable("the profile was cancelled".into()),
            _ = self.closing.wait_for(|closing| *closing) => {
                ProfileError::Unavailable("the hub is shutting down".into())
            }
        }
    }
}

fn exact(model_id: &str, version: u32) -> VersionRef {
    VersionRef {
        model_id: model_id.to_owned(),
        version: VersionSelector::Exact(version),
    }
}

/// Where the search for a free port starts.
fn random_u16() -> Result<u16, ProfileError> {
    let mut bytes = [0u8; 2];
    getrandom::getrandom(&mut bytes)
        .map_err(|err| ProfileError::Internal(format!("no randomness for a port: {err}")))?;
    Ok(u16::from_le_bytes(bytes))
}
