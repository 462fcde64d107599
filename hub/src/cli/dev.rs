//! `edgeship dev`: the whole system in one process on embedded defaults — a hub with its
//! embedded broker and sled store, an agent named `local`, and the sample diabetes model
//! registered and deployed — so a new user gets a real prediction from one command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use edgeship_agent::RunningAgent;
use edgeship_agent::config::RawConfig;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;

use super::hub::shutdown_signal;
use crate::client::{self, rpc_error, wait_healthy};
use crate::registry::NewModel;
use crate::server::{HubConfig, Mqtt, RunningHub};

/// The sample model: Ridge regression on scikit-learn's diabetes data, built by
/// `scripts/fixtures/make_fixtures.py`, compiled in so `dev` works from any folder.
const SAMPLE_MODEL: &[u8] = include_bytes!("../../../scripts/fixtures/diabetes/model.onnx");
const SAMPLE_INPUT: &str = include_str!("../../../scripts/fixtures/diabetes/sample_input.json");
const SAMPLE_OUTPUT: &str = include_str!("../../../scripts/fixtures/diabetes/sample_output.json");

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Folder for the hub's and the local agent's data (created if missing; reused).
    #[arg(long, default_value = "edgeship-dev")]
    pub data_dir: PathBuf,
    /// The hub's gRPC address.
    #[arg(long, default_value = super::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The embedded broker's address (other agents can join here).
    #[arg(long, default_value = super::DEFAULT_MQTT_LISTEN)]
    pub mqtt_listen: SocketAddr,
    /// Port of the sample model's scoring endpoint (Azure ML and Open Inference Protocol
    /// REST).
    #[arg(long, default_value_t = 5001)]
    pub port: u16,
    /// Port of the sample model's Open Inference Protocol gRPC service.
    #[arg(long, default_value_t = 5002)]
    pub grpc_port: u16,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&args.data_dir).unwrap_or(args.data_dir.clone());
    announce!("data dir:    {}", data_dir.display());
    // The terminal shows only warnings (see `logs.rs`), so say where the rest goes.
    announce!(
        "log:         {}",
        super::logs::dev_log_path(&args.data_dir).display()
    );
    let hub = RunningHub::start(HubConfig {
        listen: args.listen,
        mqtt: Mqtt::Embedded {
            listen: args.mqtt_listen,
        },
        ..HubConfig::local(data_dir.join("hub"))
    })
    .await?;
    announce!("hub:         {}   (EDGESHIP_HUB for the CLI)", hub.url());
    announce!(
        "broker:      {}   (agents join with --broker)",
        hub.mqtt_url()
    );
    announce!(
        "director:    {}   (agents join with --director-key)",
        crate::trust::director_public_key_file(&data_dir.join("hub")).display()
    );

    let agent_config = RawConfig {
        device_id: Some("local".into()),
        broker: Some(hub.mqtt_url()),
        data_dir: Some(data_dir.join("agent-local")),
        serve_host: Some(args.listen.ip()),
        director_key: Some(hub.director_key().to_string()),
        // Loopback, in one process: plain MQTT; desired states are still signed and checked.
        insecure: Some(true),
        ..RawConfig::default()
    }
    .validate()?;
    let agent = RunningAgent::start(agent_config).await?;

    let mut registry = client::connect(&hub.url()).await?;
    let existing = registry
        .get_model(pb::GetModelRequest {
            name: "models/diabetes/versions/latest".into(),
        })
        .await;
    if existing.is_err() {
        let sample_dir = data_dir.join("sample");
        std::fs::create_dir_all(&sample_dir)
            .with_context(|| format!("creating {}", sample_dir.display()))?;
        let model_path = sample_dir.join("model.onnx");
        std::fs::write(&model_path, SAMPLE_MODEL)?;
        let model = NewModel {
            model_id: "diabetes".into(),
            description: "Ridge regression on the scikit-learn diabetes data (sample)".into(),
            framework: "onnx".into(),
            sample_input: Some(SAMPLE_INPUT.to_owned()),
            sample_output: Some(SAMPLE_OUTPUT.to_owned()),
            ..NewModel::default()
        };
        let registered = client::register(&mut registry, model, &model_path).await?;
        announce!("registered:  diabetes:{}", registered.version);
    }

    let channel = client::channel(&hub.url()).await?;
    let mut deployments = DeploymentsClient::new(channel);
    let existing = deployments
        .get_deployment(pb::GetDeploymentRequest {
            name: "deployments/diabetes".into(),
        })
        .await;
    if existing.is_err() {
        let endpoint = pb::Endpoint {
            port: u32::from(args.port),
            protocols: vec![pb::Protocol::Azureml.into(), pb::Protocol::V2.into()],
            grpc_port: u32::from(args.grpc_port),
            ..Default::default()
        };
        client::deploy_endpoint_to_devices(
            &hub.url(),
            "diabetes",
            "diabetes:latest",
            endpoint,
            &["local"],
        )
        .await
        .map_err(rpc_error)?;
    }
    let deployment = wait_healthy(&mut deployments, "diabetes", Duration::from_secs(120)).await?;
    let endpoint = deployment.endpoint.clone().unwrap_or_default();
    let host = args.listen.ip();
    let url = format!("http://{host}:{}/score", endpoint.port);
    let body = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(SAMPLE_INPUT)?)?;
    let devices: Vec<String> = deployment
        .devices
        .iter()
        .map(|d| d.device_id.clone())
        .collect();
    announce!(
        "deployed:    diabetes ({}) -> {}, Healthy",
        deployment.model,
        devices.join(", ")
    );
    announce!("scoring:     {url}   (Azure ML)");
    let serves_v2 = endpoint.protocols.contains(&i32::from(pb::Protocol::V2));
    if serves_v2 {
        announce!(
            "v2:          http://{host}:{}/v2/models/diabetes/infer   (Open Inference Protocol, REST)",
            endpoint.port
        );
    }
    if endpoint.grpc_port != 0 {
        announce!(
            "grpc:        {host}:{}   (Open Inference Protocol, inference.GRPCInferenceService)",
            endpoint.grpc_port
        );
    }
    announce!();
    announce!("try it:");
    announce!("  curl -s -X POST {url} -H 'content-type: application/json' -d '{body}'");
    announce!();
    announce!(
        "Ctrl-C stops everything; data stays in {}",
        data_dir.display()
    );

    shutdown_signal().await?;
    announce!("stopping");
    agent.stop().await?;
    hub.stop().await
}
