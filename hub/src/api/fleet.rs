//! `edgeship.v1.Deployments` and `edgeship.v1.Fleet` service implementations.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_server::Deployments;
use edgeship_proto::v1::fleet_server::Fleet as FleetApi;
use tonic::{Request, Response, Status};

use edgeship_domain::wire::wire_state;
use edgeship_domain::{AuthMode, Endpoint, Protocol, RuntimeKind};

use crate::fleet::{self, Deployment, Device, Fleet, FleetError, Target};

#[derive(Debug, Clone)]
pub struct FleetService {
    fleet: Arc<Fleet>,
}

impl FleetService {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Fleet) -> Result<T, FleetError> + Send + 'static,
    ) -> Result<T, Status> {
        let fleet = Arc::clone(&self.fleet);
        tokio::task::spawn_blocking(move || work(&fleet))
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "fleet task failed");
                Status::internal(format!("fleet task failed: {err}"))
            })?
            .map_err(Status::from)
    }
}

impl From<FleetError> for Status {
    fn from(err: FleetError) -> Self {
        let message = err.to_string();
        match err {
            FleetError::InvalidArgument(_) => Status::invalid_argument(message),
            FleetError::NotFound(_) => Status::not_found(message),
            FleetError::AlreadyExists(_) => Status::already_exists(message),
            FleetError::FailedPrecondition(_) => Status::failed_precondition(message),
            FleetError::DataLoss(_) => {
                tracing::error!(error = %message, "fleet data damaged");
                Status::data_loss(message)
            }
            FleetError::Storage(_) => {
                tracing::error!(error = %message, "fleet storage failure");
                Status::internal(message)
            }
            FleetError::Registry(err) => Status::from(err),
        }
    }
}

/// The endpoint a create request asks for; unset fields take the defaults (Azure ML, no
/// auth).
fn endpoint(wire: pb::Endpoint) -> Result<Endpoint, Status> {
    let port = u16::try_from(wire.port).map_err(|_| {
        Status::invalid_argument(format!("port {} is out of range (1-65535)", wire.port))
    })?;
    let auth = match pb::AuthMode::try_from(wire.auth) {
        Ok(pb::AuthMode::Unspecified | pb::AuthMode::None) => AuthMode::None,
        Ok(pb::AuthMode::Key) => AuthMode::Key,
        Ok(pb::AuthMode::Token) => AuthMode::Token,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown endpoint auth {}",
                wire.auth
            )));
        }
    };
    let mut protocols = Vec::new();
    for code in wire.protocols {
        protocols.push(match pb::Protocol::try_from(code) {
            Ok(pb::Protocol::Azureml) => Protocol::Azureml,
            Ok(pb::Protocol::V2) => Protocol::V2,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown endpoint protocol {code}"
                )));
            }
        });
    }
    if protocols.is_empty() {
        protocols.push(Protocol::Azureml);
    }
    Ok(Endpoint {
        port,
        auth,
        protocols,
        cors_origins: wire.cors_origins,
    })
}

/// Parses `name`, `name:VERSION` or `name:latest` into a model id and optional version.
fn model_ref(text: &str) -> Result<(String, Option<u32>), Status> {
    let reference = crate::registry::validate::short_ref(text).map_err(Status::from)?;
    let version = match reference.version {
        crate::registry::VersionSelector::Exact(v) => Some(v),
        crate::registry::VersionSelector::Latest => None,
    };
    Ok((reference.model_id, version))
}

fn resource_id<'a>(name: &'a str, collection: &str) -> Result<&'a str, Status> {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "invalid resource name {name:?}: expected {collection}/{{id}}"
            ))
        })
}

fn page_size(size: i32) -> Result<usize, Status> {
    match size {
        s if s < 0 => Err(Status::invalid_argument(format!(
            "page_size must not be negative (got {s}); use 0 for the default"
        ))),
        0 => Ok(50),
        s => Ok((s as usize).min(1000)),
    }
}

/// Pages over items sorted by id; the token is the last id of the previous page.
fn paginate<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    size: usize,
    token: &str,
) -> (Vec<T>, String) {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| token.is_empty() || id(item) > token)
        .collect();
    let next = if rest.len() > size {
        rest.truncate(size);
        rest.last()
            .map(|item| id(item).to_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    (rest, next)
}

impl FleetService {
    fn deployment_view(&self, deployment: &Deployment) -> Result<pb::Deployment, FleetError> {
        let devices = self.fleet.deployment_devices(deployment)?;
        let state = fleet::aggregate(&devices);
        Ok(pb::Deployment {
            name: format!("deployments/{}", deployment.id),
            deployment_id: deployment.id.clone(),
            model: deployment.model_ref(),
            runtime: deployment.runtime.name().to_owned(),
            endpoint: Some(pb::Endpoint::from(&deployment.endpoint)),
            target: Some(pb::Target {
                device_ids: deployment.target.device_ids.iter().cloned().collect(),
                label_selector: deployment
                    .target
                    .label_selector
                    .clone()
                    .into_iter()
                    .collect(),
            }),
            create_time_ms: deployment.create_time_ms,
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
        })
    }
}

fn device_view(device: &Device) -> pb::Device {
    pb::Device {
        name: format!("devices/{}", device.id),
        device_id: device.id.clone(),
        labels: device.labels().into_iter().collect(),
        capabilities: Some(pb::Capabilities::from(&device.capabilities)),
        agent_version: device.agent_version.clone(),
        online: device.online,
        last_seen_ms: device.last_seen_ms,
        desired_generation: device.desired_generation,
        applied_generation: device.applied_generation,
        workloads: device
            .workloads
            .iter()
            .map(pb::WorkloadStatus::from)
            .collect(),
    }
}

#[tonic::async_trait]
impl Deployments for FleetService {
    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let Some(wire) = request.into_inner().deployment else {
            return Err(Status::invalid_argument("the request has no deployment"));
        };
        let (model_id, version) = model_ref(&wire.model)?;
        let endpoint = endpoint(wire.endpoint.unwrap_or_default())?;
        let target = wire.target.unwrap_or_default();
        let runtime = if wire.runtime.is_empty() {
            RuntimeKind::Tract
        } else {
            RuntimeKind::parse(&wire.runtime).map_err(Status::invalid_argument)?
        };
        let deployment = Deployment {
            id: wire.deployment_id,
            model_id,
            version,
            runtime,
            endpoint,
            target: Target {
                device_ids: target.device_ids.into_iter().collect(),
                label_selector: target
                    .label_selector
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            },
            create_time_ms: 0,
        };
        let service = self.clone();
        let view = self
            .blocking(move |fleet| {
                let created = fleet.create_deployment(deployment)?;
                service.deployment_view(&created)
            })
            .await?;
        Ok(Response::new(view))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let name = request.into_inner().name;
        let id = resource_id(&name, "deployments")?;
        let deployment = self.fleet.get_deployment(id)?;
        Ok(Response::new(self.deployment_view(&deployment)?))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let all = self.fleet.all_deployments()?;
        let (page, next_page_token) = paginate(all, |d| &d.id, size, &request.page_token);
        let deployments = page
            .iter()
            .map(|d| self.deployment_view(d))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments,
            next_page_token,
        }))
    }

    async fn delete_deployment(
        &self,
        request: Request<pb::DeleteDeploymentRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let name = request.into_inner().name;
        let id = resource_id(&name, "deployments")?.to_owned();
        self.blocking(move |fleet| fleet.delete_deployment(&id))
            .await?;
        Ok(Response::new(pb::DeleteDeploymentResponse {}))
    }
}

#[tonic::async_trait]
impl FleetApi for FleetService {
    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let selector: BTreeMap<String, String> = request.label_selector.into_iter().collect();
        let all: Vec<Device> = self
            .fleet
            .all_devices()?
            .into_iter()
            .filter(|d| {
                let labels = d.labels();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        let (page, next_page_token) = paginate(all, |d| &d.id, size, &request.page_token);
        Ok(Response::new(pb::ListDevicesResponse {
            devices: page.iter().map(device_view).collect(),
            next_page_token,
        }))
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let name = request.into_inner().name;
        let id = resource_id(&name, "devices")?;
        Ok(Response::new(device_view(&self.fleet.get_device(id)?)))
    }

    async fn set_device_labels(
        &self,
        request: Request<pb::SetDeviceLabelsRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let request = request.into_inner();
        let id = resource_id(&request.name, "devices")?.to_owned();
        let set = request.set.into_iter().collect();
        let remove = request.remove;
        let device = self
            .blocking(move |fleet| fleet.set_labels(&id, set, remove))
            .await?;
        Ok(Response::new(device_view(&device)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn fleet_errors_keep_their_class_as_status_codes() {
        let code = |err: FleetError| Status::from(err).code();
        assert_eq!(
            code(FleetError::NotFound("x".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(FleetError::DataLoss("x".into())),
            tonic::Code::DataLoss
        );
        assert_eq!(
            code(FleetError::Registry(registry::Error::NotFound("m".into()))),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(FleetError::Registry(registry::Error::Io {
                context: "reading".into(),
                source: std::io::Error::other("disk"),
            })),
            tonic::Code::Internal
        );
        assert_eq!(
            code(FleetError::Registry(registry::Error::DataLoss("x".into()))),
            tonic::Code::DataLoss
        );
        assert_eq!(
            code(FleetError::Registry(registry::Error::invalid("bad"))),
            tonic::Code::InvalidArgument
        );
    }
}
