//! `GetDeploymentLogs`: asks each device of a deployment for its log lines over MQTT, at
//! once, and merges the answers by time; a device that does not answer in time is named in
//! the response, not an error of the whole call.

use std::time::Duration;

use edgeship_proto::v1 as pb;
use futures::{StreamExt, stream};
use tonic::Status;

use super::FleetService;
use crate::fleet::FleetError;

/// How long a device has to answer.
const DEVICE_DEADLINE: Duration = Duration::from_secs(5);
/// Lines per device when the request names no number, and the most it may name.
const DEFAULT_TAIL: u32 = 100;
/// Devices asked for one answer, and how many at once.
const MAX_DEVICES: usize = 100;
const DEVICES_AT_ONCE: usize = 16;
/// The most text one answer carries.
const MAX_RESPONSE_BYTES: usize = 3 << 20;
const MAX_TAIL: u32 = 2000;

impl FleetService {
    pub(super) async fn deployment_logs(
        &self,
        deployment: String,
        request: pb::GetDeploymentLogsRequest,
    ) -> Result<pb::GetDeploymentLogsResponse, Status> {
        let wanted = request.device.clone();
        let id = deployment.clone();
        let devices = self
            .blocking(move |fleet| {
                let deployment = fleet.get_deployment(&id)?;
                let targeted = fleet.deployment_devices(&deployment)?;
                if wanted.is_empty() {
                    return Ok(targeted
                        .into_iter()
                        .filter(|d| d.online)
                        .map(|d| d.device_id)
                        .collect::<Vec<_>>());
                }
                if targeted.iter().any(|d| d.device_id == wanted) {
                    Ok(vec![wanted])
                } else {
                    Err(FleetError::NotFound(format!(
                        "deployment {id} does not target device {wanted}"
                    )))
                }
            })
            .await?;
        if devices.is_empty() {
            return Err(Status::failed_precondition(format!(
                "no device of deployment {deployment} is online to ask for its logs"
            )));
        }
        let tail = match request.tail {
            0 => DEFAULT_TAIL,
            n => n.min(MAX_TAIL),
        };
        let mut response = pb::GetDeploymentLogsResponse::default();
        let mut devices = devices;
        if devices.len() > MAX_DEVICES {
            response.errors.push(pb::DeviceLogError {
                device: String::new(),
                error: format!(
                    "the deployment runs on {} online devices; these are the first {MAX_DEVICES} (name one with --device)",
                    devices.len()
                ),
            });
            devices.truncate(MAX_DEVICES);
        }
        // A few devices at a time: each answer holds up to 256 KiB until it is merged.
        let answers: Vec<_> = stream::iter(devices)
            .map(|device| async {
                let answer = self
                    .logs
                    .fetch(
                        &device,
                        &deployment,
                        tail,
                        request.since_ms,
                        DEVICE_DEADLINE,
                    )
                    .await;
                (device, answer)
            })
            .buffered(DEVICES_AT_ONCE)
            .collect()
            .await;
        for (device, answer) in answers {
            match answer {
                Ok(lines) => response
                    .lines
                    .extend(lines.into_iter().map(|l| pb::DeviceLogLine {
                        device: device.clone(),
                        at_ms: l.at_ms,
                        source: l.source,
                        text: l.text,
                    })),
                Err(error) => response.errors.push(pb::DeviceLogError { device, error }),
            }
        }
        // Stable: each device's own order stays where times are equal.
        response.lines.sort_by_key(|l| l.at_ms);
        // The newest lines that fit one response a default client takes (4 MiB), with room.
        let mut bytes = 0;
        let keep_from = response
            .lines
            .iter()
            .rposition(|l| {
                bytes += l.text.len() + l.device.len() + 32;
                bytes > MAX_RESPONSE_BYTES
            })
            .map_or(0, |at| at + 1);
        if keep_from > 0 {
            response.lines.drain(..keep_from);
            response.errors.push(pb::DeviceLogError {
                device: String::new(),
                error: format!(
                    "{keep_from} older lines left out to keep the answer under {} MiB; ask with a smaller --tail or one --device",
                    MAX_RESPONSE_BYTES >> 20
                ),
            });
        }
        Ok(response)
    }
}
