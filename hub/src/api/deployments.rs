//! `edgeship.v1.Deployments`: deployments, their manifests and their rollouts over gRPC.
//! `CreateDeployment` and `ApplyDeployment` both end in one manifest, validated in one place
//! (`fleet::spec`); this adapter only converts.

use crate::fleet::keys::{EndpointKeys, KeySlot};
use std::pin::Pin;
use std::time::Duration;

use edgeship_domain::wire::wire_state;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_server::Deployments;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::fleet::{FleetService, page_size, paginate, resource_id};
use crate::fleet::rollout::Rollout;
use crate::fleet::selector::{Selector, Term, from_equalities};
use crate::fleet::spec::{
    EndpointManifest, EndpointTlsManifest, Manifest, TargetManifest, parse_manifest,
};
use crate::fleet::{self, ApplyOptions, Deployment, FleetError, RolloutAction};

/// How often a watch looks for progress.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Failures listed per rollout; the counts cover the rest.
const LISTED_FAILURES: usize = 20;

impl FleetService {
    fn deployment_view(&self, deployment: &Deployment) -> Result<pb::Deployment, FleetError> {
        let devices = self.fleet.deployment_devices(deployment)?;
        let state = fleet::aggregate(&devices);
        let rollout = self.fleet.current_rollout(deployment)?;
        let spec = &deployment.spec;
        Ok(pb::Deployment {
            name: format!("deployments/{}", deployment.id),
            deployment_id: deployment.id.clone(),
            model: deployment.model_ref(),
            // A container brings its own runtime: the deployment's is the container.
            runtime: match spec.container {
                Some(_) => "container".to_owned(),
                None => spec.runtime.name().to_owned(),
            },
            endpoint: Some(pb::Endpoint::from(&spec.endpoint)),
            target: Some(pb::Target {
                device_ids: spec.target.devices.iter().cloned().collect(),
                label_selector: spec
                    .target
                    .selector
                    .as_ref()
                    .and_then(equalities)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                selector: spec
                    .target
                    .selector
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            }),
            create_time_ms: deployment.create_time_ms,
            update_time_ms: deployment.update_time_ms,
            resolved_version: self.fleet.resolved_version(deployment).unwrap_or(0),
            state: wire_state(state).into(),
            devices: devices
                .into_iter()
                .map(|d| pb::DeviceWorkload {
                    device_id: d.device_id,
                    online: d.online,
                    state: wire_state(d.state).into(),
                    error: d.error,
                    serving_model: d.serving_model,
                })
                .collect(),
            priority: spec.priority,
            manifest_json: serde_json::to_string(&spec.to_manifest()).unwrap_or_default(),
            revision: deployment.current().map_or(0, |r| r.number),
            rollout: rollout
                .map(|r| self.rollout_view(deployment, &r))
                .transpose()?,
            entry_module: entry_module_of(deployment),
            resolved_entry_module_version: deployment
                .current()
                .and_then(|r| r.entry_module.as_ref())
                .map_or(0, |m| m.version),
        })
    }

    fn rollout_view(
        &self,
        deployment: &Deployment,
        rollout: &Rollout,
    ) -> Result<pb::Rollout, FleetError> {
        // The count from the rollout's last step: reading every device record to count them
        // again cost a 10,000-device hub seconds of CPU under a watch.
        Ok(rollout_message(Some(deployment), rollout, rollout.targeted))
    }

    fn deployment_id(&self, name: &str) -> Result<String, Status> {
        Ok(resource_id(name, "deployments")?.to_owned())
    }
}

/// `records:latest`, as the manifest names it; empty without an entry module.
fn entry_module_of(deployment: &Deployment) -> String {
    deployment
        .spec
        .entry_module
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn keys_message(keys: EndpointKeys) -> pb::DeploymentKeys {
    pb::DeploymentKeys {
        primary_key: keys.primary,
        secondary_key: keys.secondary,
    }
}

/// A rollout record as the API shows it; `targeted` is how many devices the deployment
/// targets now. Without the deployment (deleted) the record shows no models.
fn rollout_message(
    deployment: Option<&Deployment>,
    rollout: &Rollout,
    targeted: usize,
) -> pb::Rollout {
    let healthy = rollout
        .moved
        .values()
        .filter(|m| m.healthy_since_ms.is_some())
        .count();
    let failures: Vec<pb::DeviceFailure> = rollout
        .failures()
        .map(|(id, m)| pb::DeviceFailure {
            device_id: id.clone(),
            reason: m.failure.clone(),
        })
        .collect();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::Rollout {
        deployment_id: rollout.deployment.clone(),
        revision: rollout.revision,
        from_revision: rollout.from_revision.unwrap_or(0),
        phase: rollout.phase.name().to_owned(),
        reason: rollout.phase.reason().to_owned(),
        cause: rollout.cause.clone(),
        changes: rollout.changes.clone(),
        start_time_ms: rollout.started_ms,
        finish_time_ms: rollout.finished_ms.unwrap_or(0),
        models: deployment
            .and_then(|d| d.revision(rollout.revision))
            .map(fleet::Revision::describe)
            .unwrap_or_default(),
        waves: rollout
            .waves
            .iter()
            .map(|w| pb::RolloutWave {
                target: count(w.target),
                start_time_ms: w.started_ms,
                pass_time_ms: w.passed_ms.unwrap_or(0),
            })
            .collect(),
        devices: count(targeted),
        moved: count(rollout.moved.len()),
        healthy: count(healthy),
        failed: count(failures.len()),
        failures: failures.into_iter().take(LISTED_FAILURES).collect(),
        note: rollout.note,
    }
}

/// The manifest a `CreateDeployment` request amounts to.
fn manifest_of(wire: pb::Deployment) -> Result<Manifest, Status> {
    let endpoint = wire.endpoint.unwrap_or_default();
    let auth = match pb::AuthMode::try_from(endpoint.auth) {
        Ok(pb::AuthMode::Unspecified) => None,
        Ok(pb::AuthMode::None) => Some("none"),
        Ok(pb::AuthMode::Key) => Some("key"),
        Ok(pb::AuthMode::Token) => Some("token"),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "endpoint.auth: unknown value {}",
                endpoint.auth
            )));
        }
    };
    let mut protocols = Vec::new();
    for code in endpoint.protocols {
        protocols.push(match pb::Protocol::try_from(code) {
            Ok(pb::Protocol::Azureml) => "azureml".to_owned(),
            Ok(pb::Protocol::V2) => "v2".to_owned(),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "endpoint.protocols: unknown value {code}"
                )));
            }
        });
    }
    let target = wire.target.unwrap_or_default();
    // Equality labels and a selector string combine by AND.
    let equalities =
        from_equalities(&target.label_selector.into_iter().collect()).map(|s| s.to_string());
    let selector = match (equalities, target.selector.trim()) {
        (Some(eq), "") => Some(eq),
        (Some(eq), text) => Some(format!("{eq},{text}")),
        (None, "") => None,
        (None, text) => Some(text.to_owned()),
    };
    if let Some(text) = &selector {
        Selector::parse(text)
            .map_err(|e| Status::invalid_argument(format!("target.selector: {e}")))?;
    }
    Ok(Manifest {
        name: wire.deployment_id,
        model: Some(wire.model),
        models: vec![],
        runtime: (!wire.runtime.is_empty()).then_some(wire.runtime),
        opencl_device: None,
        opencl_precision: None,
        endpoint: EndpointManifest {
            port: endpoint.port,
            auth: auth.map(str::to_owned),
            protocols,
            cors_origins: endpoint.cors_origins,
            grpc_port: (endpoint.grpc_port != 0).then_some(endpoint.grpc_port),
            tls: (!endpoint.tls_hostnames.is_empty()).then(|| EndpointTlsManifest {
                hostnames: endpoint.tls_hostnames.clone(),
            }),
        },
        target: TargetManifest {
            devices: target.device_ids,
            selector,
        },
        priority: wire.priority,
        rollout: None,
        traffic: vec![],
        batching: None,
        container: None,
        // Set through manifests.
        model_signers: vec![],
        // Output only on the wire: entry modules are set through manifests.
        entry_module: None,
        sandbox: None,
    })
}

type RolloutStream = Pin<Box<dyn Stream<Item = Result<pb::Rollout, Status>> + Send>>;

#[tonic::async_trait]
impl Deployments for FleetService {
    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let Some(wire) = request.into_inner().deployment else {
            return Err(Status::invalid_argument("the request has no deployment"));
        };
        let manifest = manifest_of(wire)?;
        let service = self.clone();
        let view = self
            .blocking(move |fleet| {
                let options = ApplyOptions {
                    create_only: true,
                    ..ApplyOptions::default()
                };
                let applied = fleet.apply(&manifest, options)?;
                service.deployment_view(&applied.deployment)
            })
            .await?;
        Ok(Response::new(view))
    }

    async fn apply_deployment(
        &self,
        request: Request<pb::ApplyDeploymentRequest>,
    ) -> Result<Response<pb::ApplyDeploymentResponse>, Status> {
        let request = request.into_inner();
        let manifest = parse_manifest(&request.manifest)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let service = self.clone();
        let response = self
            .blocking(move |fleet| {
                let options = ApplyOptions {
                    dry_run: request.dry_run,
                    ..ApplyOptions::default()
                };
                let applied = fleet.apply(&manifest, options)?;
                // A dry run's deployment is not stored: show what it would be, without devices.
                let deployment = if request.dry_run {
                    pb::Deployment {
                        name: format!("deployments/{}", applied.deployment.id),
                        deployment_id: applied.deployment.id.clone(),
                        model: applied.deployment.model_ref(),
                        entry_module: entry_module_of(&applied.deployment),
                        manifest_json: serde_json::to_string(
                            &applied.deployment.spec.to_manifest(),
                        )
                        .unwrap_or_default(),
                        ..pb::Deployment::default()
                    }
                } else {
                    service.deployment_view(&applied.deployment)?
                };
                let rollout = applied
                    .rollout
                    .map(|r| service.rollout_view(&applied.deployment, &r))
                    .transpose()?;
                Ok(pb::ApplyDeploymentResponse {
                    deployment: Some(deployment),
                    created: applied.created,
                    changes: applied.changes,
                    rollout,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let id = self.deployment_id(&request.into_inner().name)?;
        let service = self.clone();
        let view = self
            .blocking(move |fleet| service.deployment_view(&fleet.get_deployment(&id)?))
            .await?;
        Ok(Response::new(view))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let service = self.clone();
        let response = self
            .blocking(move |fleet| {
                let all = fleet.all_deployments()?;
                let (page, next_page_token) = paginate(all, |d| &d.id, size, &request.page_token);
                let deployments = page
                    .iter()
                    .map(|d| service.deployment_view(d))
                    .collect::<Result<_, _>>()?;
                Ok(pb::ListDeploymentsResponse {
                    deployments,
                    next_page_token,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn delete_deployment(
        &self,
        request: Request<pb::DeleteDeploymentRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let id = self.deployment_id(&request.into_inner().name)?;
        self.blocking(move |fleet| fleet.delete_deployment(&id))
            .await?;
        Ok(Response::new(pb::DeleteDeploymentResponse {}))
    }

    async fn get_deployment_keys(
        &self,
        request: Request<pb::GetDeploymentKeysRequest>,
    ) -> Result<Response<pb::DeploymentKeys>, Status> {
        let id = self.deployment_id(&request.into_inner().name)?;
        let keys = self
            .blocking(move |fleet| fleet.deployment_keys(&id))
            .await?;
        Ok(Response::new(keys_message(keys)))
    }

    async fn regenerate_deployment_key(
        &self,
        request: Request<pb::RegenerateDeploymentKeyRequest>,
    ) -> Result<Response<pb::DeploymentKeys>, Status> {
        let request = request.into_inner();
        let id = self.deployment_id(&request.name)?;
        let slot = KeySlot::parse(&request.key)
            .map_err(|e| Status::invalid_argument(format!("key: {e}")))?;
        let keys = self
            .blocking(move |fleet| fleet.regenerate_key(&id, slot))
            .await?;
        Ok(Response::new(keys_message(keys)))
    }

    async fn get_deployment_token(
        &self,
        request: Request<pb::GetDeploymentTokenRequest>,
    ) -> Result<Response<pb::DeploymentToken>, Status> {
        let request = request.into_inner();
        let id = self.deployment_id(&request.name)?;
        let seconds = (request.ttl_seconds != 0).then_some(request.ttl_seconds);
        let token = self
            .blocking(move |fleet| fleet.deployment_token(&id, seconds))
            .await?;
        Ok(Response::new(pb::DeploymentToken {
            access_token: token.access_token,
            expiry_time_ms: token.expiry_time_ms,
            refresh_after_time_ms: token.refresh_after_time_ms,
            token_type: "Bearer".into(),
        }))
    }

    async fn get_deployment_logs(
        &self,
        request: Request<pb::GetDeploymentLogsRequest>,
    ) -> Result<Response<pb::GetDeploymentLogsResponse>, Status> {
        let request = request.into_inner();
        let id = self.deployment_id(&request.name)?;
        Ok(Response::new(self.deployment_logs(id, request).await?))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let id = self.deployment_id(&request.into_inner().name)?;
        let service = self.clone();
        let view = self
            .blocking(move |fleet| service.current_rollout_view(fleet, &id))
            .await?;
        Ok(Response::new(view))
    }

    type WatchDeploymentStream = RolloutStream;

    async fn watch_deployment(
        &self,
        request: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        let id = self.deployment_id(&request.into_inner().name)?;
        let service = self.clone();
        // The first answer comes before the stream: a missing deployment is an error status.
        let first = {
            let (service, id) = (service.clone(), id.clone());
            self.blocking(move |fleet| service.current_rollout_view(fleet, &id))
                .await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let mut ticker = tokio::time::interval(WATCH_INTERVAL);
            while is_running(&last.phase) {
                ticker.tick().await;
                let (watcher, id) = (service.clone(), id.clone());
                let next = service
                    .blocking(move |fleet| watcher.current_rollout_view(fleet, &id))
                    .await;
                match next {
                    Ok(view) if view == last => {}
                    Ok(view) => {
                        last = view.clone();
                        if tx.send(Ok(view)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn update_rollout(
        &self,
        request: Request<pb::UpdateRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let request = request.into_inner();
        let id = self.deployment_id(&request.name)?;
        let action = match pb::RolloutAction::try_from(request.action) {
            Ok(pb::RolloutAction::Pause) => RolloutAction::Pause,
            Ok(pb::RolloutAction::Resume) => RolloutAction::Resume,
            Ok(pb::RolloutAction::Abort) => RolloutAction::Abort,
            Ok(pb::RolloutAction::Rollback) => RolloutAction::Rollback,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "action: unknown value {} (pause, resume, abort or rollback)",
                    request.action
                )));
            }
        };
        let service = self.clone();
        let view = self
            .blocking(move |fleet| {
                let rollout = fleet.control_rollout(&id, action)?;
                service.rollout_view(&fleet.get_deployment(&id)?, &rollout)
            })
            .await?;
        Ok(Response::new(view))
    }

    async fn list_rollout_history(
        &self,
        request: Request<pb::ListRolloutHistoryRequest>,
    ) -> Result<Response<pb::ListRolloutHistoryResponse>, Status> {
        let id = self.deployment_id(&request.into_inner().name)?;
        let response = self
            .blocking(move |fleet| {
                let history = fleet.rollout_history(&id)?;
                if history.is_empty() {
                    return Err(FleetError::NotFound(format!(
                        "deployment {id} has no history (it never existed)"
                    )));
                }
                // A deleted deployment's history is still shown, with what its records know.
                let deployment = fleet.get_deployment(&id).ok();
                Ok(pb::ListRolloutHistoryResponse {
                    rollouts: history
                        .iter()
                        .map(|r| rollout_message(deployment.as_ref(), r, r.targeted))
                        .collect(),
                })
            })
            .await?;
        Ok(Response::new(response))
    }
}

impl FleetService {
    fn current_rollout_view(
        &self,
        fleet: &fleet::Fleet,
        id: &str,
    ) -> Result<pb::Rollout, FleetError> {
        let deployment = fleet.get_deployment(id)?;
        match fleet.current_rollout(&deployment)? {
            Some(rollout) => self.rollout_view(&deployment, &rollout),
            None => Err(FleetError::NotFound(format!(
                "deployment {id} has no rollout"
            ))),
        }
    }
}

/// A selector's terms as a `key=value` map, when they are all equalities (what clients from
/// before set-based selectors read).
fn equalities(selector: &Selector) -> Option<std::collections::BTreeMap<String, String>> {
    selector
        .terms()
        .iter()
        .map(|term| match term {
            Term::Equals(key, value) => Some((key.clone(), value.clone())),
            _ => None,
        })
        .collect()
}

fn is_running(phase: &str) -> bool {
    matches!(phase, "Progressing" | "Paused")
}
