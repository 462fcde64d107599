//! `edgeship deploy …` and `edgeship device …`: deployments and the fleet, as a gRPC client.

use std::time::Duration;

use crate::client::HubChannel;
use anyhow::bail;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use edgeship_proto::v1::fleet_client::FleetClient;

use super::output::{self, pairs, print_json, rfc3339};
use super::view::{DeploymentView, DeviceView};
use super::{
    DeployCommand, DeviceCommand, OutputFormat, RolloutCommand, key_values, names, rollout,
};
use crate::client::{channel, rpc_error, wait_healthy};

fn print_deployment(deployment: pb::Deployment, format: OutputFormat) {
    let deployment = DeploymentView::from(deployment);
    match format {
        OutputFormat::Json => print_json(&deployment),
        OutputFormat::Table => print!("{}", output::deployment_details(&deployment)),
    }
}

/// The named devices the hub has never heard from: it has no record of them, or only the one
/// a deployment created by naming them. A typo in `--device` looks exactly like this, and a
/// deployment to such a device would wait for it forever.
async fn never_connected(
    fleet: &mut FleetClient<HubChannel>,
    devices: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut never = Vec::new();
    for id in devices {
        let found = fleet
            .get_device(pb::GetDeviceRequest {
                name: format!("devices/{id}"),
            })
            .await;
        let seen = match found {
            Ok(device) => device.get_ref().last_seen_ms != 0,
            Err(status) if status.code() == tonic::Code::NotFound => false,
            Err(status) => return Err(rpc_error(status)),
        };
        if !seen && !never.contains(id) {
            never.push(id.clone());
        }
    }
    Ok(never)
}

/// `device a has never connected` / `devices a, b have never connected`.
fn never_connected_text(devices: &[String]) -> String {
    match devices {
        [one] => format!("device {one} has never connected"),
        many => format!("devices {} have never connected", many.join(", ")),
    }
}

pub async fn run_deploy(hub: &str, command: DeployCommand) -> anyhow::Result<()> {
    let channel = channel(hub).await?;
    let mut client = DeploymentsClient::new(channel.clone());
    let mut fleet = FleetClient::new(channel);
    match command {
        DeployCommand::Create {
            name,
            model,
            port,
            runtime,
            auth,
            devices,
            selector,
            priority,
            wait,
            timeout_secs,
            output,
        } => {
            let name = names::deployment_id(&name)?;
            let devices = devices
                .iter()
                .map(|device| names::device_id(device))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let never_seen = never_connected(&mut fleet, &devices).await?;
            // Waiting for a device that has never connected can only end at the timeout;
            // say so now, before anything is created, rather than after minutes.
            if wait && !never_seen.is_empty() {
                bail!(
                    "{}, so --wait would only time out; deployment {name} was not created \
                     (without --wait it is created and waits for the device)",
                    never_connected_text(&never_seen)
                );
            }
            let deployment = pb::Deployment {
                deployment_id: name.clone(),
                model: names::deployment_model(&model)?,
                runtime,
                endpoint: Some(pb::Endpoint::from(&edgeship_domain::Endpoint {
                    auth: edgeship_domain::AuthMode::parse(&auth).map_err(anyhow::Error::msg)?,
                    ..edgeship_domain::Endpoint::azureml(port)
                })),
                target: Some(pb::Target {
                    device_ids: devices,
                    label_selector: Default::default(),
                    selector: selector.join(","),
                }),
                priority,
                ..Default::default()
            };
            let mut created = client
                .create_deployment(pb::CreateDeploymentRequest {
                    deployment: Some(deployment),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for device in &never_seen {
                eprintln!(
                    "warning: {}; the deployment waits for it",
                    never_connected_text(std::slice::from_ref(device))
                );
            }
            if wait {
                let timeout = Duration::from_secs(timeout_secs);
                wait_healthy(&mut client, &name, timeout).await?;
                // Healthy devices, and the rollout that moved them recorded as finished.
                let ended = tokio::time::timeout(timeout, rollout::follow(&mut client, &name))
                    .await
                    .map_err(|_| anyhow::anyhow!("the rollout of {name} did not end in time"))??;
                ended.ensure_completed()?;
                created = client
                    .get_deployment(pb::GetDeploymentRequest {
                        name: format!("deployments/{name}"),
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
            }
            print_deployment(created, output);
        }
        DeployCommand::Show {
            name,
            manifest,
            output,
        } => {
            let found = client
                .get_deployment(pb::GetDeploymentRequest {
                    name: format!("deployments/{}", names::deployment_id(&name)?),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if manifest {
                print!("{}", rollout::manifest_yaml(&found.manifest_json)?);
            } else {
                print_deployment(found, output);
            }
        }
        DeployCommand::List { output } => {
            let mut request = pb::ListDeploymentsRequest {
                page_size: 1000,
                ..Default::default()
            };
            let mut all = Vec::new();
            loop {
                let page = client
                    .list_deployments(request.clone())
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                all.extend(page.deployments);
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            let all: Vec<DeploymentView> = all.into_iter().map(DeploymentView::from).collect();
            match output {
                OutputFormat::Json => print_json(&all),
                OutputFormat::Table => print!("{}", output::deployment_table(&all)),
            }
        }
        DeployCommand::Delete { name } => {
            let name = names::deployment_id(&name)?;
            client
                .delete_deployment(pb::DeleteDeploymentRequest {
                    name: format!("deployments/{name}"),
                })
                .await
                .map_err(rpc_error)?;
            println!("deleted deployment {name}");
        }
        DeployCommand::Logs {
            name,
            device,
            tail,
            follow,
            output,
        } => {
            let query = super::deploy_logs::LogsQuery {
                deployment: names::deployment_id(&name)?,
                device: device.map(|d| names::device_id(&d)).transpose()?,
                tail,
                follow,
                output,
            };
            super::deploy_logs::run(&mut client, query).await?;
        }
        DeployCommand::Keys {
            name,
            regenerate,
            output,
        } => {
            let name = format!("deployments/{}", names::deployment_id(&name)?);
            let keys = match regenerate {
                Some(key) => {
                    client
                        .regenerate_deployment_key(pb::RegenerateDeploymentKeyRequest { name, key })
                        .await
                }
                None => {
                    client
                        .get_deployment_keys(pb::GetDeploymentKeysRequest { name })
                        .await
                }
            }
            .map_err(rpc_error)?
            .into_inner();
            match output {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "primary_key": keys.primary_key,
                    "secondary_key": keys.secondary_key,
                })),
                OutputFormat::Table => {
                    println!("primary:    {}", keys.primary_key);
                    println!("secondary:  {}", keys.secondary_key);
                }
            }
        }
        DeployCommand::Token { name, ttl, output } => {
            let name = format!("deployments/{}", names::deployment_id(&name)?);
            let token = client
                .get_deployment_token(pb::GetDeploymentTokenRequest {
                    name,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let expires = rfc3339(token.expiry_time_ms);
            let refresh = rfc3339(token.refresh_after_time_ms);
            match output {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "access_token": token.access_token,
                    "token_type": token.token_type,
                    "expiry_time": expires,
                    "refresh_after_time": refresh,
                })),
                OutputFormat::Table => {
                    println!("token:          {}", token.access_token);
                    println!("expires:        {expires}");
                    println!("refresh after:  {refresh}");
                }
            }
        }
        DeployCommand::Apply {
            file,
            dry_run,
            wait,
            timeout_secs,
            output,
        } => {
            let wait = wait.then(|| Duration::from_secs(timeout_secs));
            rollout::apply(&mut client, &file, dry_run, wait, output).await?;
        }
        DeployCommand::Rollout {
            command:
                RolloutCommand::Status {
                    name,
                    watch,
                    output,
                },
        } => rollout::status(&mut client, &name, watch, output).await?,
        DeployCommand::Pause { name, output } => {
            rollout::control(&mut client, &name, pb::RolloutAction::Pause, output).await?;
        }
        DeployCommand::Resume { name, output } => {
            rollout::control(&mut client, &name, pb::RolloutAction::Resume, output).await?;
        }
        DeployCommand::Abort { name, output } => {
            rollout::control(&mut client, &name, pb::RolloutAction::Abort, output).await?;
        }
        DeployCommand::Rollback { name, output } => {
            rollout::control(&mut client, &name, pb::RolloutAction::Rollback, output).await?;
        }
        DeployCommand::History { name, output } => {
            rollout::history(&mut client, &name, output).await?;
        }
    }
    Ok(())
}

pub async fn run_device(hub: &str, command: DeviceCommand) -> anyhow::Result<()> {
    let channel = channel(hub).await?;
    let mut client = FleetClient::new(channel.clone());
    match command {
        DeviceCommand::List { selector, output } => {
            let mut request = pb::ListDevicesRequest {
                page_size: 1000,
                selector: selector.join(","),
                ..Default::default()
            };
            let mut response = pb::ListDevicesResponse::default();
            loop {
                let page = client
                    .list_devices(request.clone())
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                response.devices.extend(page.devices);
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            let devices: Vec<DeviceView> =
                response.devices.into_iter().map(DeviceView::from).collect();
            match output {
                OutputFormat::Json => print_json(&devices),
                OutputFormat::Table => print!("{}", output::device_table(&devices)),
            }
        }
        DeviceCommand::Show { device, output } => {
            let found = client
                .get_device(pb::GetDeviceRequest {
                    name: format!("devices/{}", names::device_id(&device)?),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let found = DeviceView::from(found);
            match output {
                OutputFormat::Json => print_json(&found),
                OutputFormat::Table => print!("{}", output::device_details(&found)),
            }
        }
        DeviceCommand::Label {
            device,
            set,
            remove,
        } => {
            if set.is_empty() && remove.is_empty() {
                bail!("nothing to change: give --set KEY=VALUE and/or --remove KEY");
            }
            let updated = client
                .set_device_labels(pb::SetDeviceLabelsRequest {
                    name: format!("devices/{}", names::device_id(&device)?),
                    set: key_values("label", &set)?.into_iter().collect(),
                    remove,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("{}: {}", updated.device_id, pairs(&updated.labels));
        }
        DeviceCommand::Enroll { device, ttl_secs } => {
            super::identity::enroll(channel, hub, &device, ttl_secs).await?;
        }
        DeviceCommand::Revoke { device } => super::identity::revoke(channel, &device).await?,
    }
    Ok(())
}
