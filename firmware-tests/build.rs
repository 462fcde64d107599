//! Marks tests that need an external component as ignored when it is missing.

include!("build/components.rs");

fn main() {
    detect_components(&["mosquitto"]);
    detect_oip_clients();
}

/// Emits `cfg(no_oip_clients)` unless `EDGESHIP_PYTHON` (or `python3`) can import the Open
/// Inference Protocol clients the protocol tests drive.
fn detect_oip_clients() {
    println!("cargo:rerun-if-env-changed=EDGESHIP_PYTHON");
    println!("cargo:rustc-check-cfg=cfg(no_oip_clients)");
    let ci = std::env::var("EDGESHIP_CI").is_ok_and(|v| v == "1");
    let python = std::env::var("EDGESHIP_PYTHON").unwrap_or_else(|_| "python3".into());
    let importable = std::process::Command::new(&python)
        .args(["-c", "import numpy, tritonclient.http, tritonclient.grpc"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable && !ci {
        println!("cargo:rustc-cfg=no_oip_clients");
    }
}
