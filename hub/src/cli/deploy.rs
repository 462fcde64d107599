//! `edgeship deploy …` and `edgeship device …`: deployments and the fleet, as a gRPC client.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use edgeship_proto::v1::fleet_client::FleetClient;
use serde_json::{Value, json};

use super::output::{field, pairs, print_json, rfc3339, table};
use super::{DeployCommand, DeviceCommand, OutputFormat, key_values};
use crate::client::{channel, rpc_error, state_name, wait_healthy};

fn target_text(target: &pb::Target) -> String {
    let mut parts = Vec::new();
    if !target.device_ids.is_empty() {
        parts.push(format!("devices {}", target.device_ids.join(",")));
    }
    if !target.label_selector.is_empty() {
        parts.push(format!("labels {}", pairs(&target.label_selector)));
    }
    parts.join("; ")
}

pub fn deployment_json(d: &pb::Deployment) -> Value {
    let endpoint = d.endpoint.clone().unwrap_or_default();
    let target = d.target.clone().unwrap_or_default();
    json!({
        "name": d.name,
        "deployment_id": d.deployment_id,
        "model": d.model,
        "resolved_version": d.resolved_version,
        "runtime": d.runtime,
        "endpoint": {"port": endpoint.port, "auth": endpoint.auth},
        "target": {
            "device_ids": target.device_ids,
            "label_selector": target.label_selector.into_iter().collect::<BTreeMap<_, _>>(),
        },
        "state": state_name(d.state()),
        "create_time": rfc3339(d.create_time_ms),
        "devices": d.devices.iter().map(|w| json!({
            "device_id": w.device_id,
            "online": w.online,
            "state": state_name(w.state()),
            "error": w.error,
            "serving_model": w.serving_model,
        })).collect::<Vec<_>>(),
    })
}

pub fn deployment_details(d: &pb::Deployment) -> String {
    let endpoint = d.endpoint.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |name: &str, value: String| field(&mut out, 12, name, &value);
    field("deployment", d.deployment_id.clone());
    let resolved = if d.resolved_version == 0 {
        "model missing".to_owned()
    } else {
        format!("resolves to version {}", d.resolved_version)
    };
    field("model", format!("{} ({resolved})", d.model));
    field("runtime", d.runtime.clone());
    field(
        "endpoint",
        format!("port {}, auth {}", endpoint.port, endpoint.auth),
    );
    field("target", target_text(&d.target.clone().unwrap_or_default()));
    field("state", state_name(d.state()).to_owned());
    field("created", rfc3339(d.create_time_ms));
    out.push_str("devices:\n");
    let rows: Vec<Vec<String>> = d
        .devices
        .iter()
        .map(|w| {
            vec![
                w.device_id.clone(),
                if w.online { "yes" } else { "no" }.into(),
                state_name(w.state()).into(),
                w.serving_model.clone(),
                w.error.clone(),
            ]
        })
        .collect();
    for line in table(&["DEVICE", "ONLINE", "STATE", "SERVING", "ERROR"], &rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn device_json(d: &pb::Device) -> Value {
    let caps = d.capabilities.clone().unwrap_or_default();
    json!({
        "name": d.name,
        "device_id": d.device_id,
        "online": d.online,
        "last_seen": if d.last_seen_ms > 0 { json!(rfc3339(d.last_seen_ms)) } else { Value::Null },
        "labels": d.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
        "agent_version": d.agent_version,
        "capabilities": {
            "arch": caps.arch, "os": caps.os, "cpu_count": caps.cpu_count,
            "memory_bytes": caps.memory_bytes, "runtimes": caps.runtimes,
        },
        "desired_generation": d.desired_generation,
        "applied_generation": d.applied_generation,
        "workloads": d.workloads.iter().map(|w| {
            let m = w.metrics.unwrap_or_default();
            json!({
                "deployment": w.deployment, "state": state_name(w.state()), "error": w.error,
                "serving_model": w.serving_model, "desired_model": w.desired_model, "port": w.port,
                "requests": m.requests, "errors": m.errors, "mean_latency_ms": m.mean_latency_ms,
            })
        }).collect::<Vec<_>>(),
    })
}

fn device_details(d: &pb::Device) -> String {
    let caps = d.capabilities.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |name: &str, value: String| field(&mut out, 12, name, &value);
    field("device", d.device_id.clone());
    field("online", if d.online { "yes" } else { "no" }.into());
    let seen = if d.last_seen_ms > 0 {
        rfc3339(d.last_seen_ms)
    } else {
        "never".into()
    };
    field("last seen", seen);
    field("labels", pairs(&d.labels));
    field("agent", d.agent_version.clone());
    field(
        "hardware",
        format!(
            "{} {}, {} CPUs, {} MiB",
            caps.os,
            caps.arch,
            caps.cpu_count,
            caps.memory_bytes >> 20
        ),
    );
    field("runtimes", caps.runtimes.join(","));
    field(
        "generation",
        format!(
            "desired {}, applied {}",
            d.desired_generation, d.applied_generation
        ),
    );
    out.push_str("workloads:\n");
    let rows: Vec<Vec<String>> = d
        .workloads
        .iter()
        .map(|w| {
            let m = w.metrics.unwrap_or_default();
            vec![
                w.deployment.clone(),
                state_name(w.state()).into(),
                w.serving_model.clone(),
                w.port.to_string(),
                m.requests.to_string(),
                w.error.clone(),
            ]
        })
        .collect();
    for line in table(
        &[
            "DEPLOYMENT",
            "STATE",
            "SERVING",
            "PORT",
            "REQUESTS",
            "ERROR",
        ],
        &rows,
    )
    .lines()
    {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub async fn run_deploy(hub: &str, command: DeployCommand) -> anyhow::Result<()> {
    let mut client = DeploymentsClient::new(channel(hub).await?);
    match command {
        DeployCommand::Create {
            name,
            model,
            port,
            runtime,
            auth,
            devices,
            selector,
            wait,
            timeout_secs,
            output,
        } => {
            let deployment = pb::Deployment {
                deployment_id: name.clone(),
                model,
                runtime,
                endpoint: Some(pb::Endpoint::from(&edgeship_domain::Endpoint {
                    auth: edgeship_domain::AuthMode::parse(&auth).map_err(anyhow::Error::msg)?,
                    ..edgeship_domain::Endpoint::azureml(port)
                })),
                target: Some(pb::Target {
                    device_ids: devices,
                    label_selector: key_values("label", &selector)?.into_iter().collect(),
                }),
                ..Default::default()
            };
            let mut created = client
                .create_deployment(pb::CreateDeploymentRequest {
                    deployment: Some(deployment),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if wait {
                created =
                    wait_healthy(&mut client, &name, Duration::from_secs(timeout_secs)).await?;
            }
            match output {
                OutputFormat::Json => print_json(&deployment_json(&created)),
                OutputFormat::Table => print!("{}", deployment_details(&created)),
            }
        }
        DeployCommand::Show { name, output } => {
            let found = client
                .get_deployment(pb::GetDeploymentRequest {
                    name: format!("deployments/{name}"),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            match output {
                OutputFormat::Json => print_json(&deployment_json(&found)),
                OutputFormat::Table => print!("{}", deployment_details(&found)),
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
            match output {
                OutputFormat::Json => {
                    print_json(&Value::Array(all.iter().map(deployment_json).collect()))
                }
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = all
                        .iter()
                        .map(|d| {
                            let healthy = d
                                .devices
                                .iter()
                                .filter(|w| w.state() == pb::ServiceState::Healthy)
                                .count();
                            vec![
                                d.deployment_id.clone(),
                                d.model.clone(),
                                d.endpoint.as_ref().map_or(0, |e| e.port).to_string(),
                                state_name(d.state()).into(),
                                format!("{healthy}/{}", d.devices.len()),
                                target_text(&d.target.clone().unwrap_or_default()),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(
                            &["NAME", "MODEL", "PORT", "STATE", "HEALTHY", "TARGET"],
                            &rows
                        )
                    );
                }
            }
        }
        DeployCommand::Delete { name } => {
            client
                .delete_deployment(pb::DeleteDeploymentRequest {
                    name: format!("deployments/{name}"),
                })
                .await
                .map_err(rpc_error)?;
            println!("deleted deployment {name}");
        }
    }
    Ok(())
}

pub async fn run_device(hub: &str, command: DeviceCommand) -> anyhow::Result<()> {
    let mut client = FleetClient::new(channel(hub).await?);
    match command {
        DeviceCommand::List { selector, output } => {
            let mut request = pb::ListDevicesRequest {
                page_size: 1000,
                page_token: String::new(),
                label_selector: key_values("label", &selector)?.into_iter().collect(),
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
            match output {
                OutputFormat::Json => print_json(&Value::Array(
                    response.devices.iter().map(device_json).collect(),
                )),
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = response
                        .devices
                        .iter()
                        .map(|d| {
                            vec![
                                d.device_id.clone(),
                                if d.online { "yes" } else { "no" }.into(),
                                d.workloads.len().to_string(),
                                format!("{}/{}", d.applied_generation, d.desired_generation),
                                pairs(&d.labels),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(
                            &["DEVICE", "ONLINE", "WORKLOADS", "GENERATION", "LABELS"],
                            &rows
                        )
                    );
                }
            }
        }
        DeviceCommand::Show { device, output } => {
            let found = client
                .get_device(pb::GetDeviceRequest {
                    name: format!("devices/{device}"),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            match output {
                OutputFormat::Json => print_json(&device_json(&found)),
                OutputFormat::Table => print!("{}", device_details(&found)),
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
                    name: format!("devices/{device}"),
                    set: key_values("label", &set)?.into_iter().collect(),
                    remove,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("{}: {}", updated.device_id, pairs(&updated.labels));
        }
    }
    Ok(())
}
