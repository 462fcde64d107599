//! `edgeship.v1.Fleet` (devices) service implementation, and what the fleet services share:
//! error mapping, resource names, paging.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::fleet_server::Fleet as FleetApi;
use tonic::{Request, Response, Status};

use crate::device_logs::DeviceLogs;
use crate::fleet::selector::Selector;
use crate::fleet::{Device, Fleet, FleetError};

#[derive(Debug, Clone)]
pub struct FleetService {
    pub(super) fleet: Arc<Fleet>,
    /// Log lines asked of devices over MQTT.
    pub(super) logs: Arc<DeviceLogs>,
}

impl FleetService {
    pub fn new(fleet: Arc<Fleet>, logs: Arc<DeviceLogs>) -> Self {
        Self { fleet, logs }
    }

    pub(super) async fn blocking<T: Send + 'static>(
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
            FleetError::Storage(_) | FleetError::Internal(_) => {
                tracing::error!(error = %message, "fleet storage failure");
                Status::internal(message)
            }
            FleetError::Registry(err) => Status::from(err),
            FleetError::Job(err) => Status::from(err),
        }
    }
}

pub(super) fn resource_id<'a>(name: &'a str, collection: &str) -> Result<&'a str, Status> {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "invalid resource name {name:?}: expected {collection}/{{id}}"
            ))
        })
}

pub(super) fn page_size(size: i32) -> Result<usize, Status> {
    match size {
        s if s < 0 => Err(Status::invalid_argument(format!(
            "page_size must not be negative (got {s}); use 0 for the default"
        ))),
        0 => Ok(50),
        s => Ok((s as usize).min(1000)),
    }
}

/// Pages over items sorted by id; the token is the last id of the previous page.
pub(super) fn paginate<T>(
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
impl FleetApi for FleetService {
    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let equalities: BTreeMap<String, String> = request.label_selector.into_iter().collect();
        let selector = match request.selector.trim() {
            "" => None,
            text => Some(
                Selector::parse(text)
                    .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?,
            ),
        };
        let all: Vec<Device> = self
            .fleet
            .all_devices()?
            .into_iter()
            .filter(|d| {
                let labels = d.labels();
                equalities.iter().all(|(k, v)| labels.get(k) == Some(v))
                    && selector.as_ref().is_none_or(|s| s.matches(&labels))
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
