//! `edgeship-agent serve`: a model folder served by a real agent process with no hub and no
//! broker. Its answers are scikit-learn's, its key is required on scoring routes (not on
//! health), v2 sees the model by the folder's name, SIGTERM stops it cleanly, and a folder or
//! port that cannot serve is refused at start with the reason.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{Process, TempDir, binary, expected, fixture, free_port, http};

const KEY: &str = "standalone-key-7f3a";

fn serve(args: &[&str]) -> Command {
    let mut command = Command::new(binary("edgeship-agent"));
    command
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_folder_is_served_without_a_hub_and_its_key_is_required() {
    let port = free_port();
    let folder = fixture("diabetes");
    let mut agent = Process::spawn(
        "edgeship-agent serve",
        serve(&[
            "--model",
            &folder.to_string_lossy(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("EDGESHIP_SERVE_KEY", KEY),
    );
    let listening = agent.read_line_starting("serving ", Duration::from_secs(60));
    assert_eq!(listening, format!("diabetes:1 on http://127.0.0.1:{port}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let body = serde_json::json!({ "data": expected("diabetes")["inputs"] }).to_string();
    let json = ("content-type", "application/json");
    let bearer = format!("Bearer {KEY}");

    let refused = http(addr, "POST", "/score", &[json], body.as_bytes())
        .await
        .expect("score without a key");
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.header("www-authenticate").is_some());
    let answered = http(
        addr,
        "POST",
        "/score",
        &[json, ("authorization", &bearer)],
        body.as_bytes(),
    )
    .await
    .expect("score");
    testkit::assert_diabetes_predictions(&answered);
    assert_eq!(answered.header("x-edgeship-model"), Some("diabetes:1"));

    let metadata = http(
        addr,
        "GET",
        "/v2/models/diabetes",
        &[("authorization", &bearer)],
        b"",
    )
    .await
    .expect("v2 metadata");
    assert_eq!(metadata.status, 200, "{}", metadata.body);
    assert_eq!(metadata.json()["name"], "diabetes");
    let ready = http(addr, "GET", "/v2/health/ready", &[], b"")
        .await
        .expect("ready");
    assert_eq!(ready.status, 200, "health needs no key: {}", ready.body);

    let status = agent
        .terminate(Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
}

/// Runs `serve` expecting it to refuse: returns its stderr.
fn refused(args: &[&str]) -> String {
    let output = serve(args)
        .stdin(Stdio::null())
        .output()
        .expect("run edgeship-agent serve");
    assert!(!output.status.success(), "{args:?} should be refused");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_folder_or_port_that_cannot_serve_is_refused_with_the_reason() {
    let dir = TempDir::new("standalone-bad");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("folder");
    let port = free_port().to_string();
    let stderr = refused(&["--model", &empty.to_string_lossy(), "--port", &port]);
    assert!(stderr.contains("holds no .onnx file"), "{stderr}");

    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("folder");
    std::fs::write(broken.join("model.onnx"), b"not a model").expect("write");
    let stderr = refused(&["--model", &broken.to_string_lossy(), "--port", &port]);
    assert!(stderr.contains("model.onnx"), "{stderr}");

    let bad_sample = dir.path().join("bad-sample");
    std::fs::create_dir_all(&bad_sample).expect("folder");
    std::fs::copy(
        fixture("diabetes").join("model.onnx"),
        bad_sample.join("model.onnx"),
    )
    .expect("copy");
    std::fs::write(
        bad_sample.join("sample_input.json"),
        b"{\"data\": [[1, 2]]}",
    )
    .expect("write");
    let stderr = refused(&["--model", &bad_sample.to_string_lossy(), "--port", &port]);
    assert!(stderr.contains("self-test input rejected"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port().to_string();
    let diabetes = fixture("diabetes");
    let stderr = refused(&[
        "--model",
        &diabetes.to_string_lossy(),
        "--host",
        "127.0.0.1",
        "--port",
        &taken_port,
    ]);
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");

    let stderr = refused(&[
        "--model",
        &diabetes.to_string_lossy(),
        "--runtime",
        "cuda",
        "--port",
        &port,
    ]);
    assert!(stderr.contains("--runtime: unknown runtime"), "{stderr}");
}
