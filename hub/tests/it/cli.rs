//! The real `edgeship` binary against a real hub; outputs are snapshot-tested.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edgeship_hub::client;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::fleet_client::FleetClient;

use crate::support::*;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_edgeship");

pub(crate) fn edgeship(hub: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("EDGESHIP_HUB", hub)
        .env_remove("RUST_LOG")
        .output()
        .expect("run edgeship")
}

/// Replaces what changes from run to run (times, temp paths) with stable placeholders.
fn normalize(text: &str, temp: &Path) -> String {
    let text = text.replace(&temp.display().to_string(), "<tmp>");
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if is_timestamp(&bytes[i..]) {
            out.push_str("<time>");
            i += 20;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Matches `YYYY-MM-DDTHH:MM:SSZ` at the start of `b`.
fn is_timestamp(b: &[u8]) -> bool {
    const SHAPE: &[u8; 20] = b"0000-00-00T00:00:00Z";
    b.len() >= 20
        && SHAPE.iter().zip(b).all(|(shape, c)| match shape {
            b'0' => c.is_ascii_digit(),
            other => other == c,
        })
}

fn stdout(output: &Output, temp: &Path) -> String {
    assert!(
        output.status.success(),
        "edgeship failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    normalize(&String::from_utf8_lossy(&output.stdout), temp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walks_the_register_list_show_download_update_delete_cycle() {
    let hub = TestHub::start().await;
    let url = hub.url();
    let temp = tempfile::tempdir().expect("temp");
    let t = temp.path();
    let diabetes = fixture("diabetes");
    let model_path = diabetes.join("model.onnx").display().to_string();
    let sample = diabetes.join("sample_input.json").display().to_string();
    let digits = fixture("digits").display().to_string();

    let out = edgeship(
        &url,
        &[
            "model",
            "register",
            "-n",
            "diabetes",
            "-p",
            &model_path,
            "--tag",
            "stage=dev",
            "--property",
            "r2=0.51",
            "--description",
            "Ridge on diabetes",
            "--sample-input",
            &sample,
        ],
    );
    insta::assert_snapshot!("register_diabetes", stdout(&out, t));
    let out = edgeship(&url, &["model", "register", "-n", "digits", "-p", &digits]);
    insta::assert_snapshot!("register_digits_folder", stdout(&out, t));
    let out = edgeship(&url, &["model", "list"]);
    insta::assert_snapshot!("list_table", stdout(&out, t));
    let out = edgeship(&url, &["model", "list", "--tag", "stage=dev", "-o", "json"]);
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&out, t)).expect("list -o json is JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["name"], "models/diabetes/versions/1");
    let out = edgeship(&url, &["model", "show", "diabetes"]);
    let shown = stdout(&out, t);
    insta::assert_snapshot!("show_diabetes", shown);
    // The resource names `-o json` prints work wherever a short name does.
    for name in [
        "models/diabetes/versions/1",
        "models/diabetes",
        "diabetes:latest",
    ] {
        let out = edgeship(&url, &["model", "show", name]);
        assert_eq!(stdout(&out, t), shown, "model show {name}");
    }
    let out = edgeship(&url, &["model", "show", "diabetes:1", "-o", "json"]);
    insta::assert_snapshot!("show_diabetes_json", stdout(&out, t));
    let out = edgeship(&url, &["model", "show", "digits:1", "-o", "json"]);
    insta::assert_snapshot!("show_digits_json", stdout(&out, t));
    let out = edgeship(&url, &["model", "list", "-n", "models/digits"]);
    assert_eq!(stdout(&out, t).lines().count(), 2, "a header and digits:1");

    let target = t.join("download");
    let target_arg = target.display().to_string();
    let out = edgeship(
        &url,
        &[
            "model",
            "download",
            "models/digits/versions/1",
            "-d",
            &target_arg,
        ],
    );
    insta::assert_snapshot!("download_digits", stdout(&out, t));
    for file in [
        "model.onnx",
        "expected.json",
        "sample_input.json",
        "sample_output.json",
    ] {
        assert_eq!(
            std::fs::read(fixture("digits").join(file)).expect("fixture"),
            std::fs::read(target.join(file)).expect("downloaded"),
            "{file}"
        );
    }

    let out = edgeship(
        &url,
        &[
            "model",
            "update",
            "diabetes:1",
            "--add-tag",
            "stage=prod",
            "--remove-property",
            "r2",
            "--description",
            "promoted",
        ],
    );
    insta::assert_snapshot!("update_diabetes", stdout(&out, t));
    let out = edgeship(&url, &["model", "delete", "models/digits/versions/1"]);
    insta::assert_snapshot!("delete_digits_version", stdout(&out, t));
    let out = edgeship(&url, &["model", "delete", "diabetes"]);
    insta::assert_snapshot!("delete_all_diabetes", stdout(&out, t));
    let out = edgeship(&url, &["model", "list"]);
    insta::assert_snapshot!("list_empty", stdout(&out, t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_one_line_on_stderr_with_a_failing_exit_code() {
    let hub = TestHub::start().await;
    let url = hub.url();
    let temp = tempfile::tempdir().expect("temp");
    let not_onnx = temp.path().join("model.onnx");
    std::fs::write(&not_onnx, "plain text").expect("write");
    let not_onnx = not_onnx.display().to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (url.clone(), vec!["model", "show", "diabetes:3"]),
        (
            url.clone(),
            vec!["model", "register", "-n", "bad", "-p", &not_onnx],
        ),
        (
            url.clone(),
            vec!["model", "register", "-n", "bad name", "-p", &not_onnx],
        ),
        (
            url.clone(),
            vec!["model", "register", "-n", "m", "-p", "/no/such/file"],
        ),
        (
            url.clone(),
            vec!["model", "update", "m:1", "--add-tag", "novalue"],
        ),
        (url.clone(), vec!["model", "delete", "m:x"]),
        (url.clone(), vec!["model", "show", "models/m/versions/x"]),
        (url.clone(), vec!["model", "show", "deployments/m"]),
        (
            url.clone(),
            vec!["model", "update", "models/m", "--add-tag", "a=b"],
        ),
        (url.clone(), vec!["deploy", "show", "devices/web"]),
        (url.clone(), vec!["device", "show", "devices/a/b"]),
        ("http://127.0.0.1:1".to_owned(), vec!["model", "list"]),
    ];
    let mut transcript = String::new();
    for (hub_url, args) in cases {
        let output = edgeship(&hub_url, &args);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        transcript.push_str(&format!("$ edgeship {}\n{}", args.join(" "), stderr));
    }
    insta::assert_snapshot!("cli_errors", normalize(&transcript, temp.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_lists_labels_and_deletes_with_a_real_agent() {
    let hub = TestHub::start().await;
    let url = hub.url();
    let mut client = hub.client().await;
    register_diabetes(&mut client, "diabetes").await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = edgeship_agent::RunningAgent::start(agent_config("edge-cli", &hub, dir.path()))
        .await
        .expect("agent");
    // `deploy create --wait` refuses a device that has never connected: let it connect first.
    let fleet = FleetClient::new(client::channel(&url).await.expect("channel"));
    testkit::eventually(Duration::from_secs(30), "edge-cli connects", || {
        let mut fleet = fleet.clone();
        async move {
            let device = fleet
                .get_device(pb::GetDeviceRequest {
                    name: "devices/edge-cli".into(),
                })
                .await
                .ok()?;
            (device.get_ref().last_seen_ms != 0).then_some(())
        }
    })
    .await;
    let port = free_port().to_string();
    let run = |args: Vec<&str>| {
        let url = url.clone();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                edgeship(&url, &args)
            })
            .await
            .expect("cli task")
        }
    };
    let ok = |output: &Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let created = ok(&run(vec![
        "deploy",
        "create",
        "web",
        "--model",
        "models/diabetes/versions/1",
        "--port",
        &port,
        "--device",
        "edge-cli",
        "--wait",
        "--timeout-secs",
        "60",
    ])
    .await);
    assert!(created.contains("state:      Healthy"), "{created}");
    assert!(
        created.contains("edge-cli  yes     Healthy  diabetes:1"),
        "{created}"
    );
    let listed = ok(&run(vec!["deploy", "list"]).await);
    assert!(
        listed.contains(&format!(
            "web   diabetes:1  {port}  Healthy  1/1      devices edge-cli"
        )),
        "{listed}"
    );
    let shown = ok(&run(vec!["deploy", "show", "deployments/web", "-o", "json"]).await);
    let json: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(json["state"], "Healthy");
    assert_eq!(json["devices"][0]["serving_model"], "diabetes:1");
    let shown = normalize(&shown, dir.path()).replace(&format!(": {port},"), ": \"<port>\",");
    insta::assert_snapshot!("show_deployment_json", shown);

    let devices = ok(&run(vec!["device", "list"]).await);
    assert!(devices.contains("edge-cli  yes"), "{devices}");
    let labelled = ok(&run(vec!["device", "label", "edge-cli", "--set", "site=north"]).await);
    assert_eq!(labelled.trim(), "edge-cli: site=north");
    let shown = ok(&run(vec!["device", "show", "devices/edge-cli"]).await);
    assert!(shown.contains("labels:     site=north"), "{shown}");
    assert!(shown.contains("web         Healthy  diabetes:1"), "{shown}");

    let clash = run(vec![
        "deploy",
        "create",
        "other",
        "--model",
        "diabetes:1",
        "--port",
        &port,
        "--device",
        "edge-cli",
    ])
    .await;
    assert!(!clash.status.success());
    let stderr = String::from_utf8_lossy(&clash.stderr);
    assert!(
        stderr.contains("is already used by deployment web"),
        "{stderr}"
    );
    let deleted = ok(&run(vec!["deploy", "delete", "deployments/web"]).await);
    assert_eq!(deleted.trim(), "deleted deployment web");

    // Auth token: the CLI prints a token and its times; the device accepts it, and nothing
    // else, offline.
    let token_port = free_port();
    let token_port_text = token_port.to_string();
    ok(&run(vec![
        "deploy",
        "create",
        "tok",
        "--model",
        "diabetes:1",
        "--port",
        &token_port_text,
        "--auth",
        "token",
        "--device",
        "edge-cli",
        "--wait",
        "--timeout-secs",
        "60",
    ])
    .await);
    let printed = ok(&run(vec!["deploy", "token", "tok"]).await);
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        lines.len() == 3
            && lines[1].starts_with("expires:")
            && lines[2].starts_with("refresh after:"),
        "{printed}"
    );
    let token = ok(&run(vec!["deploy", "token", "tok", "--ttl", "120", "-o", "json"]).await);
    let token: serde_json::Value = serde_json::from_str(&token).expect("json");
    assert_eq!(token["token_type"], "Bearer");
    let bearer = format!("Bearer {}", token["access_token"].as_str().expect("token"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], token_port));
    let rows = br#"{"data": [[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]]}"#;
    let score = |authorization: Option<String>| async move {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(authorization.map(|a| ("authorization".to_owned(), a)));
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http(addr, "POST", "/score", &headers, rows)
            .await
            .expect("answers")
            .status
    };
    assert_eq!(score(Some(bearer)).await, 200);
    assert_eq!(score(None).await, 401);
    let refused = run(vec!["deploy", "token", "tok", "--ttl", "999999999"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("a token lives from 1 second to 604800 seconds"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let keyless = run(vec!["deploy", "keys", "tok"]).await;
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("uses auth token, not key"));
    ok(&run(vec!["deploy", "delete", "tok"]).await);

    // A device id the hub has never heard from: --wait fails at once, naming it, and creates
    // nothing; without --wait the deployment is created with a warning.
    let ghost_port = free_port().to_string();
    let ghost = |wait: bool| {
        let mut args = vec![
            "deploy",
            "create",
            "ghost",
            "--model",
            "diabetes:1",
            "--port",
            &ghost_port,
            "--device",
            "no-such-device",
        ];
        if wait {
            args.push("--wait");
        }
        run(args)
    };
    let started = Instant::now();
    let waited = ghost(true).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--wait waited for a device that never connected"
    );
    assert_eq!(waited.status.code(), Some(1));
    assert!(waited.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(
        stderr.trim(),
        "error: device no-such-device has never connected, so --wait would only time out; \
         deployment ghost was not created (without --wait it is created and waits for the device)"
    );
    let listed = ok(&run(vec!["deploy", "list"]).await);
    assert!(!listed.contains("ghost"), "{listed}");

    let created = ghost(false).await;
    ok(&created);
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert_eq!(
        stderr.trim(),
        "warning: device no-such-device has never connected; the deployment waits for it"
    );
    let devices = ok(&run(vec!["device", "list"]).await);
    assert!(devices.contains("no-such-device  never seen"), "{devices}");
    let never = ok(&run(vec!["device", "show", "no-such-device", "-o", "json"]).await);
    insta::assert_snapshot!("show_never_seen_device_json", never);
    ok(&run(vec!["deploy", "delete", "ghost"]).await);
    agent.stop().await.expect("stop");
}
