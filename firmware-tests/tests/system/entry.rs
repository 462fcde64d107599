//! Entry modules through real processes: modules registered with `edgeship module register`
//! (and refused there when they are not entry modules), deployed beside a model by a manifest
//! to a real agent, answering through `/score`; a new module version rolling out like a new
//! model version; a version whose `init` panics failing while the one before keeps serving;
//! the module's output in `deploy logs`; and a restarted agent loading the compiled module
//! from its cache. Skipped with a `SKIP:` line without the wasm32-wasip2 target (a failure
//! under `EDGESHIP_CI=1`).

use std::path::Path;
use std::time::Duration;

use testkit::images::register_diabetes_cli;
use testkit::modules::{diabetes_records, entry_modules};

use crate::support::hub_and_agent;
use testkit::{TempDir, edgeship, eventually, expected, free_port, start_agent};

/// `edgeship ARGS` that must fail: its stderr.
fn refused(hub: &str, args: &[&str]) -> String {
    let output = testkit::edgeship_command(hub)
        .args(args)
        .output()
        .expect("edgeship runs");
    assert!(!output.status.success(), "edgeship {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn register_module(hub: &str, name: &str, file: &Path) -> String {
    edgeship(
        hub,
        &[
            "module",
            "register",
            "-n",
            name,
            "-p",
            &file.to_string_lossy(),
        ],
    )
}

async fn post(port: u16, body: &[u8]) -> testkit::HttpResponse {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    testkit::http(
        addr,
        "POST",
        "/score",
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("answers")
}

/// The deployment's one device, as `deploy show -o json` has it.
async fn device_of(hub: &str, deployment: &str) -> serde_json::Value {
    let (hub, deployment) = (hub.to_owned(), deployment.to_owned());
    tokio::task::spawn_blocking(move || {
        let shown = edgeship(&hub, &["deploy", "show", &deployment, "-o", "json"]);
        let json: serde_json::Value = serde_json::from_str(&shown).expect("json");
        json["devices"][0].clone()
    })
    .await
    .expect("cli task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_modules_are_registered_deployed_rolled_and_cached_on_a_real_agent() {
    let Some(modules) = entry_modules("system::entry") else {
        return;
    };
    let dir = TempDir::new("entry-modules");
    let (hub, agent) = hub_and_agent(&dir, "edge-wasm");
    let agent_log = dir.path().join("agent.log");
    let url = hub.url.clone();
    register_diabetes_cli(&url);

    // Registration checks what it is given; nothing refused is stored.
    let refused_module = |name: &str, file: &Path| {
        let file = file.to_string_lossy();
        refused(&url, &["module", "register", "-n", name, "-p", &file])
    };
    let why = refused_module("wrong", &modules.join("wrong_exports.wasm"));
    assert!(why.contains("edgeship:entry"), "{why}");
    let onnx = testkit::fixture("diabetes").join("model.onnx");
    let why = refused_module("onnx", &onnx);
    assert!(why.contains("not a .wasm file"), "{why}");
    let disguised = dir.path().join("model.wasm");
    std::fs::copy(&onnx, &disguised).expect("copy");
    let why = refused_module("onnx", &disguised);
    assert!(why.contains("not a WebAssembly file"), "{why}");
    register_module(&url, "records", &modules.join("records.wasm"));
    let listed = edgeship(&url, &["module", "list"]);
    assert!(listed.contains("records"), "{listed}");
    assert!(
        !listed.contains("wrong") && !listed.contains("onnx"),
        "{listed}"
    );

    // records:latest beside the model, on a real agent.
    let port = free_port();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: web\nmodel: diabetes:1\nentry_module: records:latest\n\
             sandbox: {{deadline_ms: 500, memory_mb: 32, instances: 1}}\n\
             endpoint: {{port: {port}}}\ntarget: {{devices: [edge-wasm]}}\n"
        ),
    )
    .expect("manifest");
    edgeship(
        &url,
        &[
            "deploy",
            "apply",
            "-f",
            &manifest.to_string_lossy(),
            "--wait",
        ],
    );
    let body = diabetes_records().to_string();
    let answer = post(port, body.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got: Vec<f64> = serde_json::from_str(&answer.body).expect("predictions");
    let want: Vec<f64> =
        serde_json::from_value(expected("diabetes")["predictions"].clone()).expect("predictions");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-3 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
    assert_eq!(got.len(), want.len());

    // A module in use is not deleted.
    let why = refused(&url, &["module", "delete", "records:1"]);
    assert!(why.contains("web"), "{why}");

    // A new version of the module rolls out like a new model version (latest follows it).
    register_module(&url, "records", &modules.join("hostile.wasm"));
    eventually(Duration::from_secs(60), "records:2 serves", || async move {
        let answer = post(port, b"hello").await;
        (answer.status == 200 && answer.body == "ok").then_some(())
    })
    .await;
    // Its output is the deployment's log.
    let logs = edgeship(&url, &["deploy", "logs", "web", "--tail", "50"]);
    assert!(logs.contains("hostile module asked for"), "{logs}");
    // A deadline past: 500 with the reason, and the endpoint answers the next request.
    let answer = post(port, b"loop").await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body.contains("deadline of 500 ms"),
        "{}",
        answer.body
    );
    assert_eq!(post(port, b"hello").await.body, "ok");

    // A version whose init panics fails on the device; the one before keeps serving.
    register_module(&url, "records", &modules.join("init_panics.wasm"));
    let device = eventually(Duration::from_secs(60), "records:3 fails", || {
        let url = url.clone();
        async move {
            let device = device_of(&url, "web").await;
            let error = device["error"].as_str().unwrap_or_default().to_owned();
            error
                .contains("init cannot find its labels")
                .then_some(device)
        }
    })
    .await;
    assert_eq!(device["state"], "Failed", "{device}");
    assert_eq!(
        post(port, b"hello").await.body,
        "ok",
        "records:2 still serves"
    );

    // A restarted agent loads the compiled module from its cache.
    drop(agent);
    let _agent = start_agent(
        "edge-wasm",
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &agent_log,
    );
    eventually(
        Duration::from_secs(60),
        "the restarted agent serves",
        || async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let answer = testkit::http(addr, "POST", "/score", &[], b"hello")
                .await
                .ok()?;
            (answer.status == 200).then_some(())
        },
    )
    .await;
    let log = std::fs::read_to_string(&agent_log).expect("agent log");
    let restarted = log.rsplit("agent starting").next().unwrap_or_default();
    let ready: Vec<&str> = restarted
        .lines()
        .filter(|l| l.contains("entry module ready"))
        .collect();
    assert!(
        !ready.is_empty(),
        "no module loaded after the restart: {restarted}"
    );
    assert!(
        ready.iter().all(|l| l.contains("from_cache=true")),
        "the restarted agent compiled a module again: {ready:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_top_k_examples_answer_through_manifests_on_a_real_agent() {
    let Some(modules) = entry_modules("system::entry_examples") else {
        return;
    };
    let dir = TempDir::new("entry-examples");
    let (hub, _agent) = hub_and_agent(&dir, "edge-img");
    let url = hub.url.clone();
    let digits = testkit::fixture("digits");
    edgeship(
        &url,
        &[
            "model",
            "register",
            "-n",
            "digits",
            "-p",
            &digits.to_string_lossy(),
            "--sample-input",
            &digits.join("sample_input.json").to_string_lossy(),
        ],
    );
    register_module(&url, "image-label", &modules.join("image_label.wasm"));
    register_module(&url, "top-k", &modules.join("top_k.wasm"));
    let mut ports = Vec::new();
    for module in ["image-label", "top-k"] {
        let port = free_port();
        let manifest = dir.path().join(format!("{module}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "name: {module}\nmodel: digits:1\nentry_module: {module}:1\n\
                 endpoint: {{port: {port}}}\ntarget: {{devices: [edge-img]}}\n"
            ),
        )
        .expect("manifest");
        edgeship(
            &url,
            &[
                "deploy",
                "apply",
                "-f",
                &manifest.to_string_lossy(),
                "--wait",
            ],
        );
        ports.push(port);
    }
    let expected_digits = expected("digits");
    let rows = expected_digits["inputs"].as_array().expect("rows").clone();
    let labels = expected_digits["labels"]
        .as_array()
        .expect("labels")
        .clone();
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // Real PNG bytes, made here: the fixture's rows drawn 32×32, dark ink on white.
    for (row, label) in rows.iter().zip(&labels).take(5) {
        let ink: Vec<f64> = serde_json::from_value(row.clone()).expect("pixels");
        let png = testkit::modules::digit_png(&ink, 4);
        let answer = testkit::http(
            addr(ports[0]),
            "POST",
            "/score",
            &[("content-type", "application/octet-stream")],
            &png,
        )
        .await
        .expect("answers");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(&answer.json()["label"], label, "{}", answer.body);
    }

    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let body = serde_json::json!({ "data": rows[..5] }).to_string();
    let answer = testkit::http(
        addr(ports[1]),
        "POST",
        "/score?k=3",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
    .expect("answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ranked = answer.json();
    for (i, label) in labels.iter().take(5).enumerate() {
        let index = label.as_u64().expect("label") as usize;
        assert_eq!(ranked[i].as_array().map(Vec::len), Some(3), "{ranked}");
        assert_eq!(ranked[i][0]["label"], names[index], "{ranked}");
    }
}
