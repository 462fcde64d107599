//! HTTPS on scoring endpoints: a deployment whose manifest names `endpoint.tls.hostnames` is
//! served with a certificate from the hub's CA for those names, and its key reaches only the
//! devices (never the API).

use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::*;

/// POSTs `body` to `/score` over TLS, trusting `ca_pem` for `name`; returns the response.
async fn https_score(
    addr: std::net::SocketAddr,
    name: &str,
    ca_pem: &str,
    body: &str,
) -> Result<String, String> {
    let config = rustls::ClientConfig::builder_with_provider(edgeship_proto::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(edgeship_proto::tls::roots(ca_pem)?)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let server =
        rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST /score HTTP/1.1\r\nhost: {name}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    tls.read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_tls_serves_https_with_the_deployments_certificate() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    crate::e2e::register_diabetes_with_sample(&mut registry).await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = edgeship_agent::RunningAgent::start(agent_config("edge-h", &hub, dir.path()))
        .await
        .expect("agent");
    let port = free_port();
    let manifest = format!(
        "name: web\nmodel: diabetes:1\nendpoint: {{port: {port}, tls: {{hostnames: [scoring.example, 127.0.0.1]}}}}\n\
         target: {{devices: [edge-h]}}\n"
    );
    apply(&hub.url(), &manifest).await.expect("applied");
    let addr = crate::e2e::wait_serving(&agent, "web", "diabetes:1").await;
    let ca = std::fs::read_to_string(edgeship_hub::trust::keys_dir(hub.data.path()).join("ca.crt"))
        .expect("the hub's CA");
    let body = serde_json::json!({"data": expected("diabetes")["inputs"]}).to_string();
    for name in ["scoring.example", "127.0.0.1"] {
        let response = https_score(addr, name, &ca, &body)
            .await
            .expect("an HTTPS answer");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
        let expected_values = expected("diabetes")["predictions"].clone();
        let (answer, wanted) = (
            answer.as_array().expect("predictions"),
            expected_values.as_array().expect("expected"),
        );
        assert_eq!(answer.len(), wanted.len());
        for (got, want) in answer.iter().zip(wanted) {
            // Each answer is a row of one prediction.
            let (got, want) = (
                got[0].as_f64().expect("number"),
                want.as_f64().expect("number"),
            );
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }
    // A name the certificate does not carry, or another CA, fails the handshake.
    assert!(
        https_score(addr, "elsewhere.example", &ca, &body)
            .await
            .is_err()
    );
    let other_ca = {
        let dir = tempfile::tempdir().expect("temp");
        edgeship_hub::trust::pki::Authority::open(dir.path())
            .expect("another CA")
            .ca_pem()
            .to_owned()
    };
    assert!(
        https_score(addr, "127.0.0.1", &other_ca, &body)
            .await
            .is_err()
    );
    // Plain HTTP gets no answer from a TLS endpoint.
    assert!(
        score(
            addr,
            &serde_json::json!({"data": expected("diabetes")["inputs"]})
        )
        .await
        .is_err()
    );

    // The API shows the names, never the key.
    let deployment = DeploymentsClient::connect(hub.url())
        .await
        .expect("connect")
        .get_deployment(pb::GetDeploymentRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let endpoint = deployment.endpoint.expect("endpoint");
    assert_eq!(endpoint.tls_hostnames, ["scoring.example", "127.0.0.1"]);
    assert!(endpoint.tls_key_pem.is_empty() && endpoint.tls_certificate_pem.is_empty());
    // The device keeps its desired state, key included, for its own user alone.
    use std::os::unix::fs::PermissionsExt as _;
    let kept = std::fs::metadata(dir.path().join("desired.json")).expect("desired.json");
    assert_eq!(kept.permissions().mode() & 0o777, 0o600);
    agent.stop().await.expect("stop");
}
