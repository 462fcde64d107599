//! Off-the-shelf clients against a real agent: the `tritonclient` Python package (REST with
//! binary tensors on and off, and gRPC), `kserve` where it is installed, and `requests` on
//! Azure ML's `/score` score the fixture models and must get scikit-learn's values
//! (`scripts/oip_clients.py`); one endpoint has keys, sent as Azure ML's documentation shows,
//! the other tokens and CORS origins: each refuses requests without credentials, the second
//! refuses an expired token, and browsers' preflights are allowed from its origin only. The Python environment comes from `EDGESHIP_PYTHON` (`.ci/run`
//! builds one); without the packages the test is ignored at build time, and fails under
//! `EDGESHIP_CI=1`.

use std::process::Command;

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use testkit::{HubProcess, TempDir, fixture, free_port, start_agent};

use crate::support::wait_serving;

/// The browser origin the token endpoint allows.
const ORIGIN: &str = "https://app.example";
/// `edgeship_agent::serve::auth::TOKEN_LEEWAY_SECONDS`.
const TOKEN_LEEWAY_SECONDS: u64 = 5;

async fn register_fixture(hub: &str, name: &str) {
    let mut registry = client::connect(hub).await.expect("connect");
    let sample = std::fs::read_to_string(fixture(&format!("{name}/sample_input.json")))
        .expect("sample input");
    let model = NewModel {
        model_id: name.into(),
        framework: "onnx".into(),
        sample_input: Some(sample),
        ..NewModel::default()
    };
    let folder = TempDir::new(&format!("oip-{name}"));
    std::fs::copy(
        fixture(&format!("{name}/model.onnx")),
        folder.path().join("model.onnx"),
    )
    .expect("copy model");
    client::register(&mut registry, model, &folder.path().join("model.onnx"))
        .await
        .expect("register");
}

#[cfg_attr(
    no_oip_clients,
    ignore = "tritonclient not installed for EDGESHIP_PYTHON (pip install 'tritonclient[http,grpc]' numpy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_scores_the_fixtures_over_rest_and_grpc() {
    let python = std::env::var("EDGESHIP_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = TempDir::new("oip-clients");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let _agent = start_agent(
        "edge-oip",
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
    );
    let mut arguments = Vec::new();
    let (mut http, mut grpc) = (String::new(), String::new());
    let mut expired_by = std::time::Instant::now();
    // One deployment per model, each with its REST and gRPC ports; diabetes with keys, digits
    // with tokens and a CORS origin.
    for (name, auth) in [
        ("diabetes", pb::AuthMode::Key),
        ("digits", pb::AuthMode::Token),
    ] {
        register_fixture(&hub.url, name).await;
        let (port, grpc_port) = (free_port(), free_port());
        let endpoint = pb::Endpoint {
            port: u32::from(port),
            auth: auth.into(),
            protocols: vec![pb::Protocol::Azureml.into(), pb::Protocol::V2.into()],
            grpc_port: u32::from(grpc_port),
            cors_origins: match auth {
                pb::AuthMode::Token => vec![ORIGIN.into()],
                _ => vec![],
            },
            ..Default::default()
        };
        client::deploy_endpoint_to_devices(
            &hub.url,
            name,
            &format!("{name}:1"),
            endpoint,
            &["edge-oip"],
        )
        .await
        .expect("deploy");
        wait_serving(&hub.url, name, &format!("{name}:1")).await;
        // A model workload's log is the agent's own lines about it, fetched over MQTT.
        let logs = testkit::edgeship(&hub.url, &["deploy", "logs", name]);
        assert!(
            logs.contains(&format!("[agent] INFO workload switched model={name}:1")),
            "{logs}"
        );
        http = format!("127.0.0.1:{port}");
        grpc = format!("127.0.0.1:{grpc_port}");
        let expected = fixture(&format!("{name}/expected.json"));
        let mut args = vec![
            "--http".to_owned(),
            http.clone(),
            "--grpc".to_owned(),
            grpc.clone(),
            "--model".to_owned(),
            format!("{name}={}", expected.display()),
        ];
        if auth == pb::AuthMode::Key {
            let channel = client::channel(&hub.url).await.expect("channel");
            let keys = DeploymentsClient::new(channel)
                .get_deployment_keys(pb::GetDeploymentKeysRequest {
                    name: format!("deployments/{name}"),
                })
                .await
                .expect("keys")
                .into_inner();
            args.extend(["--key".to_owned(), keys.secondary_key]);
        }
        if auth == pb::AuthMode::Token {
            let url = hub.url.clone();
            let token = |ttl_seconds| {
                let url = url.clone();
                async move {
                    let channel = client::channel(&url).await.expect("channel");
                    DeploymentsClient::new(channel)
                        .get_deployment_token(pb::GetDeploymentTokenRequest {
                            name: format!("deployments/{name}"),
                            ttl_seconds,
                        })
                        .await
                        .expect("token")
                        .into_inner()
                        .access_token
                }
            };
            // The short one expires while the other clients run (devices allow a few
            // seconds for clock drift).
            let short = token(1).await;
            expired_by = std::time::Instant::now()
                + std::time::Duration::from_secs(2 + TOKEN_LEEWAY_SECONDS);
            args.extend(["--key".to_owned(), token(600).await]);
            args.extend(["--expired-key".to_owned(), short]);
            args.extend(["--cors-origin".to_owned(), ORIGIN.to_owned()]);
        }
        arguments.push((auth, args));
    }
    assert!(!http.is_empty() && !grpc.is_empty());
    for (auth, args) in arguments {
        run_clients(&python, &args, "triton", 3);
        // kserve only where it installed (it brings a large dependency tree).
        run_clients(&python, &args, "kserve", 1);
        // The prediction, then 401 without a key and with a wrong one; with tokens, 401 for
        // an expired one and the two preflights.
        let checks = match auth {
            pb::AuthMode::Key => 3,
            _ => 6,
        };
        tokio::time::sleep_until(expired_by.into()).await;
        run_clients(&python, &args, "azureml", checks);
    }
}

/// Runs `scripts/oip_clients.py --client CLIENT`, expecting `checks` passed checks (or a skip
/// line for an optional client that is not installed).
fn run_clients(python: &str, args: &[String], client: &str, checks: usize) {
    let output = Command::new(python)
        .arg(fixture("../oip_clients.py"))
        .args(args)
        .args(["--client", client])
        .output()
        .expect("runs the Python clients");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the OIP clients failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let skipped = client == "kserve" && stdout.starts_with("skip:");
    assert!(
        skipped || stdout.matches("ok: ").count() == checks,
        "{checks} checks with {client}: {stdout}"
    );
}
