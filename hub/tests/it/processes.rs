//! The `edgeship` binary as a long-running process: the hub serving the CLI (with API tokens
//! and roles) and stopping on SIGTERM, a hub whose stdout is closed, and `edgeship dev` serving a real prediction.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeship_hub::client;

use crate::cli::BIN;
use crate::support::*;

#[test]
fn the_hub_process_serves_the_cli_with_api_tokens_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temp");
    let log_dir = tempfile::tempdir().expect("temp");
    let log = log_dir.path().join("hub.log");
    let mut hub = Command::new(BIN)
        .args([
            "hub",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start hub");
    // Keep reading stdout for the hub's whole life, as a supervisor would.
    let mut lines = BufReader::new(hub.stdout.take().expect("stdout")).lines();
    let line = lines
        .next()
        .expect("a first line")
        .expect("read the listening line");
    let _mqtt_line = lines.next().expect("the broker line").expect("read");
    let fingerprint_line = lines.next().expect("the CA line").expect("read");
    let drain = std::thread::spawn(move || lines.count());
    let url = line
        .trim()
        .strip_prefix("edgeship hub listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    // API tokens: the first start wrote an admin token that only the hub's user can read.
    let admin_file = data.path().join("keys/admin.token");
    let admin = std::fs::read_to_string(&admin_file).expect("admin token written");
    let admin = admin.trim();
    assert_eq!(file_mode(&admin_file), 0o600);
    assert_eq!(file_mode(&data.path().join("keys/director.key")), 0o600);
    // The API speaks TLS; clients trust the hub's CA file.
    assert!(url.starts_with("https://"), "{url}");
    let ca = data.path().join("keys/ca.crt");
    let as_token = |token: &str, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("EDGESHIP_HUB", &url)
            .env("EDGESHIP_HUB_CA", &ca)
            .env("EDGESHIP_TOKEN", token)
            .env_remove("RUST_LOG")
            .output()
            .expect("run edgeship")
    };
    let refused = |out: std::process::Output, what: &str| {
        assert!(!out.status.success(), "{what}: succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let model = fixture("diabetes/model.onnx").display().to_string();
    let register = ["model", "register", "-n", "diabetes", "-p", &model];
    let stderr = refused(as_token("", &register), "no token");
    assert!(
        stderr.contains("unauthenticated") && stderr.contains("EDGESHIP_TOKEN"),
        "{stderr}"
    );
    // A plaintext client, and a client that trusts nothing, are refused.
    let plain = url.replace("https://", "http://");
    let out = Command::new(BIN)
        .args(["model", "list", "--hub", &plain])
        .env("EDGESHIP_TOKEN", admin)
        .output()
        .expect("run edgeship");
    assert!(!out.status.success(), "a plaintext call was answered");
    let out = Command::new(BIN)
        .args(["model", "list", "--hub", &url])
        .env("EDGESHIP_TOKEN", admin)
        .env_remove("EDGESHIP_HUB_CA")
        .env_remove("EDGESHIP_HUB_FINGERPRINT")
        .output()
        .expect("run edgeship");
    let stderr = refused(out, "no CA");
    assert!(stderr.contains("EDGESHIP_HUB_CA"), "{stderr}");
    // The fingerprint the hub printed pins it as well as the CA file.
    let fingerprint = fingerprint_line
        .trim_start_matches("edgeship hub CA sha256:")
        .to_owned();
    let out = Command::new(BIN)
        .args(["model", "list", "--hub", &url])
        .env("EDGESHIP_TOKEN", admin)
        .env("EDGESHIP_HUB_FINGERPRINT", &fingerprint)
        .output()
        .expect("run edgeship");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = "0".repeat(64);
    let out = Command::new(BIN)
        .args(["model", "list", "--hub", &url])
        .env("EDGESHIP_TOKEN", admin)
        .env("EDGESHIP_HUB_FINGERPRINT", &wrong)
        .output()
        .expect("run edgeship");
    let stderr = refused(out, "a wrong fingerprint");
    assert!(stderr.contains("pinned CA"), "{stderr}");
    let stderr = refused(as_token("est_forged", &register), "an unknown token");
    assert!(stderr.contains("unknown or deleted API token"), "{stderr}");
    let out = as_token(admin, &["token", "create", "watcher", "--role", "reader"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let stderr = refused(as_token(&reader, &register), "a reader registering");
    assert!(
        stderr.contains("permission denied") && stderr.contains("needs the deployer role"),
        "{stderr}"
    );
    let deploy = [
        "deploy",
        "create",
        "web",
        "-m",
        "diabetes:1",
        "--device",
        "edge-1",
        "--port",
        "5001",
    ];
    let stderr = refused(as_token(&reader, &deploy), "a reader deploying");
    assert!(stderr.contains("permission denied"), "{stderr}");
    let stderr = refused(
        as_token(&reader, &["token", "list"]),
        "a reader listing tokens",
    );
    assert!(stderr.contains("needs the admin role"), "{stderr}");
    let out = as_token(admin, &register);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_token(&reader, &["model", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0]["name"], "models/diabetes/versions/1");
    let out = as_token(admin, &["token", "list", "-o", "json"]);
    let tokens = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        tokens.contains("\"watcher\"") && tokens.contains("\"reader\""),
        "{tokens}"
    );
    assert!(
        !tokens.contains(&reader) && !tokens.contains(admin),
        "{tokens}"
    );
    let out = as_token(admin, &["token", "delete", "watcher"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = refused(as_token(&reader, &["model", "list"]), "a deleted token");
    assert!(stderr.contains("unknown or deleted API token"), "{stderr}");
    let stderr = refused(
        as_token(admin, &["token", "delete", "admin"]),
        "the last admin",
    );
    assert!(stderr.contains("last admin token"), "{stderr}");

    let status = Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = hub.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "hub did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "hub exited with {exit}");
    let _ = drain.join();
    // Nothing the hub logged holds a token.
    let log = std::fs::read_to_string(&log).expect("hub log");
    assert!(log.contains("an admin token was written"), "{log}");
    assert!(
        !log.contains(admin) && !log.contains(&reader),
        "a token in the log"
    );
}

fn file_mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_hub_whose_stdout_is_closed_keeps_running() {
    let data = tempfile::tempdir().expect("temp");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut hub = testkit::Process::spawn(
        "edgeship hub",
        Command::new(BIN)
            .args([
                "hub",
                "--insecure",
                "--listen",
                &listen,
                "--mqtt-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // Read nothing and close the pipe at once: the hub's announcements hit a closed stdout.
    drop(hub.child.stdout.take());
    // The announcements are written as soon as the API listens; two answered calls later
    // they are long done, and the hub must still be there.
    let hub_url = format!("http://{listen}");
    assert!(testkit::wait_for_port(
        listen.parse().expect("addr"),
        Duration::from_secs(30)
    ));
    let token = std::fs::read_to_string(data.path().join("keys/admin.token")).expect("token");
    for _ in 0..2 {
        let listed = Command::new(BIN)
            .args(["model", "list", "--hub", &hub_url])
            .env("EDGESHIP_TOKEN", token.trim())
            .output()
            .expect("run the CLI");
        assert!(listed.status.success(), "{listed:?}");
    }
    assert!(
        hub.child.try_wait().expect("wait").is_none(),
        "the hub died when its stdout was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgeship_dev_serves_a_real_prediction_and_stops_on_sigterm() {
    let data = tempfile::tempdir().expect("temp");
    let port = free_port();
    let grpc_port = free_port();
    let stderr_path = data.path().join("stderr.txt");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut dev = testkit::Process::spawn(
        "edgeship dev",
        Command::new(BIN)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--port",
            ])
            .arg(port.to_string())
            .arg("--grpc-port")
            .arg(grpc_port.to_string())
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(stderr),
    );
    let lines = dev.read_lines_starting(
        &["hub:", "broker:", "scoring:", "log:", "v2:", "grpc:"],
        Duration::from_secs(120),
    );
    let log_path = data.path().join("dev.log");
    assert_eq!(lines[3].trim(), log_path.display().to_string());
    let hub_url = lines[0]
        .split_whitespace()
        .next()
        .expect("hub url")
        .to_owned();
    let broker_url = lines[1]
        .split_whitespace()
        .next()
        .expect("broker url")
        .to_owned();
    let url = lines[2].split_whitespace().next().expect("scoring url");
    assert_eq!(url, format!("http://127.0.0.1:{port}/score"));
    assert_eq!(
        lines[4].split_whitespace().next(),
        Some(format!("http://127.0.0.1:{port}/v2/models/diabetes/infer").as_str())
    );
    assert_eq!(
        lines[5].split_whitespace().next(),
        Some(format!("127.0.0.1:{grpc_port}").as_str())
    );
    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("diabetes/sample_input.json")).expect("sample"),
    )
    .expect("json");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let response = score(addr, &sample).await.expect("score");
    assert_eq!(response.status, 200, "{}", response.body);
    let want = expected("diabetes")["predictions"].clone();
    let got = response.json();
    for row in 0..2 {
        let (got, want) = (
            got[row][0].as_f64().expect("number"),
            want[row].as_f64().expect("number"),
        );
        assert!(
            (got - want).abs() < 1e-3 * want.abs(),
            "row {row}: {got} vs {want}"
        );
    }
    // Another agent joins the dev broker and gets a deployment of its own.
    let agent_dir = tempfile::tempdir().expect("temp");
    let _agent = testkit::start_agent(
        "joiner",
        &broker_url,
        &agent_dir.path().join("data"),
        &agent_dir.path().join("agent.log"),
    );
    let joined_port = free_port();
    client::deploy_to_devices(
        &hub_url,
        "joined",
        "diabetes:latest",
        joined_port,
        &["joiner"],
    )
    .await
    .expect("deploy to the joining agent");
    let joined = std::net::SocketAddr::from(([127, 0, 0, 1], joined_port));
    let response = testkit::eventually(
        Duration::from_secs(60),
        "the joining agent's endpoint",
        || async {
            score(joined, &sample)
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await;
    assert_eq!(response.json()[0], got[0], "same model, same prediction");

    let status = dev.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "dev did not stop cleanly: {status:?}"
    );
    // The log goes to the file; the terminal gets warnings and errors only, so the summary
    // is not interleaved with INFO lines.
    let log = std::fs::read_to_string(&log_path).expect("dev.log");
    assert!(log.contains("INFO"), "{log}");
    assert!(log.contains("scoring endpoint listening"), "{log}");
    let stderr = std::fs::read_to_string(&stderr_path).expect("stderr");
    assert!(
        !stderr.lines().any(|line| line.contains(" INFO ")),
        "INFO lines on the terminal:\n{stderr}"
    );
}
