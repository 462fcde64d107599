//! OpenCL discovery through real processes: an `edgeship-agent` on a machine with an OpenCL
//! platform (PoCL in CI) announces its devices in its birth, and `edgeship device show` lists
//! them. Without an OpenCL platform the test prints a `SKIP:` line (a failure under
//! `EDGESHIP_CI=1`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{HubProcess, TempDir, binary, eventually, free_port, start_agent};

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
    let output = Command::new(binary("edgeship"))
        .args(["device", "show", "edge-cl"])
        .args(args)
        .env("EDGESHIP_HUB", hub)
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
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    // The agent finds the loader under its versioned name (`libOpenCL.so.1`), as on devices
    // without development packages.
    let _agent = start_agent(
        "edge-cl",
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
    );
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
