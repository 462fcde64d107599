//! OpenCL through real processes: an `edgeship-agent` on a machine with an OpenCL platform
//! (PoCL in CI) announces its devices in its birth and `edgeship device show` lists them; a
//! deployment with `runtime: opencl` answers as the same model in tract does (with
//! `opencl_precision: fp16` too, within half-precision rounding), and one whose
//! `opencl_device` matches nothing there is `Unschedulable` with the reason. Without an
//! OpenCL platform the tests print a `SKIP:` line (a failure under `EDGESHIP_CI=1`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::{TempDir, edgeship, eventually, free_port};

use crate::support::hub_and_agent;

/// Whether an ICD loader and at least one registered platform are installed, read from the
/// file system so that this process never loads OpenCL itself.
fn opencl_installed(test: &str) -> bool {
    let vendors = std::env::var("OCL_ICD_VENDORS").unwrap_or_else(|_| "/etc/OpenCL/vendors".into());
    let platform = std::fs::read_dir(&vendors).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "icd"))
    });
    let loader = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("libOpenCL.so.1").exists());
    if platform && loader {
        return true;
    }
    let why =
        format!("no OpenCL platform (loader found: {loader}, platform in {vendors}: {platform})");
    if testkit::ci() {
        panic!("{test}: OpenCL is required under EDGESHIP_CI=1: {why}");
    }
    eprintln!(
        "SKIP: {test}: {why} (apt-get install -y pocl-opencl-icd ocl-icd-libopencl1); set EDGESHIP_CI=1 to make this a failure"
    );
    false
}

fn device_show(hub: &str, args: &[&str]) -> Option<String> {
    let output = testkit::edgeship_command(hub)
        .args(["device", "show", "edge-cl"])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_announces_its_opencl_devices_and_device_show_lists_them() {
    let test = "an_agent_announces_its_opencl_devices";
    if !opencl_installed(test) {
        return;
    }
    let dir = TempDir::new("opencl-birth");
    let (hub, _agent) = hub_and_agent(&dir, "edge-cl");
    let url = hub.url.clone();
    let devices = eventually(
        Duration::from_secs(30),
        "edge-cl announces OpenCL devices",
        || {
            let url = url.clone();
            async move {
                let shown = tokio::task::spawn_blocking(move || device_show(&url, &["-o", "json"]))
                    .await
                    .ok()??;
                let json: serde_json::Value = serde_json::from_str(&shown).ok()?;
                let devices = json["capabilities"]["opencl_devices"].as_array()?.clone();
                (!devices.is_empty()).then_some(devices)
            }
        },
    )
    .await;
    for device in &devices {
        assert!(
            device["name"].as_str().is_some_and(|n| !n.is_empty()),
            "{device}"
        );
        assert!(
            device["platform"].as_str().is_some_and(|p| !p.is_empty()),
            "{device}"
        );
        assert!(
            ["gpu", "cpu", "accelerator", "custom"]
                .contains(&device["kind"].as_str().unwrap_or("")),
            "{device}"
        );
        assert!(
            device["compute_units"].as_u64().is_some_and(|n| n > 0),
            "{device}"
        );
        assert!(
            device["global_memory_bytes"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{device}"
        );
        assert!(
            device["opencl_c_version"]
                .as_str()
                .is_some_and(|v| v.starts_with("OpenCL C ")),
            "{device}"
        );
    }
    let url = hub.url.clone();
    let text = tokio::task::spawn_blocking(move || device_show(&url, &[]))
        .await
        .expect("cli task")
        .expect("device show");
    let first = devices[0]["name"].as_str().unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("opencl 0:") && l.contains(first)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opencl_deployment_answers_as_tract_does_and_a_missing_device_is_unschedulable() {
    let test = "an_opencl_deployment_answers_as_tract_does";
    if !opencl_installed(test) {
        return;
    }
    let _turn = testkit::heavy_turn().await;
    let dir = TempDir::new("opencl-serve");
    let (hub, _agent) = hub_and_agent(&dir, "edge-cl");
    let url = hub.url.clone();
    let digits = testkit::fixture("digits");
    let folder = digits.to_string_lossy().into_owned();
    let sample = digits
        .join("sample_input.json")
        .to_string_lossy()
        .into_owned();
    let (tract_port, opencl_port, half_port, none_port) =
        (free_port(), free_port(), free_port(), free_port());
    let manifests = [
        ("on-tract", "tract", "", tract_port),
        ("on-opencl", "opencl", "opencl_device: cpu\n", opencl_port),
        (
            "on-opencl-fp16",
            "opencl",
            "opencl_device: cpu\nopencl_precision: fp16\n",
            half_port,
        ),
        (
            "on-fpga",
            "opencl",
            "opencl_device: accelerator\n",
            none_port,
        ),
    ];
    let setup = tokio::task::spawn_blocking({
        let url = url.clone();
        let dir = dir.path().to_owned();
        move || {
            edgeship(
                &url,
                &[
                    "model",
                    "register",
                    "-n",
                    "digits",
                    "-p",
                    &folder,
                    "--sample-input",
                    &sample,
                ],
            );
            for (name, runtime, options, port) in manifests {
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(
                    &path,
                    format!(
                        "name: {name}\nmodel: digits:1\nruntime: {runtime}\n{options}endpoint: {{port: {port}, auth: none}}\ntarget: {{devices: [edge-cl]}}\n"
                    ),
                )
                .expect("manifest");
                edgeship(&url, &["deploy", "apply", "-f", &path.to_string_lossy()]);
            }
        }
    });
    setup.await.expect("setup");
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(digits.join("sample_input.json")).expect("sample"),
    )
    .expect("json");
    let answer = |port: u16| {
        let body = body.clone();
        async move {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // The OpenCL deployment compiles and tunes its kernels before it serves: this whole
            // test takes about 50 s alone on 2 cores, and more beside the rest of the suite
            // (the 1,000-device fleet test, which once made it take over 120 s, waits its turn).
            eventually(
                Duration::from_secs(300),
                &format!("an answer on {port}"),
                || async {
                    testkit::score(addr, &body)
                        .await
                        .ok()
                        .filter(|r| r.status == 200)
                },
            )
            .await
        }
    };
    let on_tract = answer(tract_port).await;
    let on_opencl = answer(opencl_port).await;
    assert_eq!(on_opencl.header("x-edgeship-model"), Some("digits:1"));
    let (tract_json, opencl_json) = (on_tract.json(), on_opencl.json());
    // The same labels, and probabilities equal within single-precision rounding.
    let labels = |json: &serde_json::Value| json["label"].clone();
    assert_eq!(
        labels(&tract_json),
        labels(&opencl_json),
        "{tract_json} {opencl_json}"
    );
    let probabilities = |json: &serde_json::Value| -> Vec<f64> {
        json["probabilities"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .flat_map(|row| row.as_array().cloned().unwrap_or_default())
                    .filter_map(|v| v.as_f64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (expected, actual) = (probabilities(&tract_json), probabilities(&opencl_json));
    assert!(
        !expected.is_empty() && expected.len() == actual.len(),
        "{tract_json} {opencl_json}"
    );
    for (e, a) in expected.iter().zip(&actual) {
        assert!((e - a).abs() <= 1e-5, "{e} vs {a}");
    }
    // Stored in half precision: the same labels, probabilities within its rounding (11
    // significant bits per stored value, through two dense layers and a softmax).
    let half_json = answer(half_port).await.json();
    assert_eq!(labels(&tract_json), labels(&half_json), "{half_json}");
    let half = probabilities(&half_json);
    assert_eq!(expected.len(), half.len(), "{half_json}");
    for (e, a) in expected.iter().zip(&half) {
        assert!((e - a).abs() <= 2e-3, "fp16: {e} vs {a}");
    }
    // No accelerator here: the third deployment is refused on the device, with the reason.
    let url = hub.url.clone();
    let refused = eventually(Duration::from_secs(60), "on-fpga unschedulable", || {
        let url = url.clone();
        async move {
            let shown = tokio::task::spawn_blocking(move || {
                edgeship(&url, &["deploy", "show", "on-fpga", "-o", "json"])
            })
            .await
            .ok()?;
            let json: serde_json::Value = serde_json::from_str(&shown).ok()?;
            let device = json["devices"][0].clone();
            (device["state"] == "Unschedulable").then_some(device)
        }
    })
    .await;
    assert!(
        refused["error"].as_str().is_some_and(
            |e| e.contains("no OpenCL device here matches opencl_device `accelerator`")
        ),
        "{refused}"
    );
}
