//! What this device is and can do: the capabilities and birth message the agent announces on
//! every connect. The hub schedules workloads by them.

use std::collections::BTreeSet;

use edgeship_domain::{AuthMode, Birth, Capabilities, Protocol, Requirement, RuntimeKind};

use crate::config::AgentConfig;

/// The feature tokens this agent implements, whatever the device: the baseline, traffic
/// splits (several models behind one endpoint, see `serve::router`), the Open Inference
/// Protocol (`serve::v2`; over gRPC too with the `grpc` cargo feature), CORS (`serve::cors`),
/// endpoint keys (and tokens with the `tokens` feature, `serve::auth`) and dynamic batching
/// (`serve::batch`).
pub fn features() -> BTreeSet<String> {
    let built_in = [
        cfg!(feature = "grpc").then_some(Requirement::GrpcEndpoint),
        cfg!(feature = "tokens").then_some(Requirement::Auth(AuthMode::Token)),
        cfg!(feature = "wasm").then_some(Requirement::EntryModule),
    ];
    Requirement::BASELINE
        .iter()
        .chain(&[
            Requirement::TrafficSplit,
            Requirement::MultiModel,
            Requirement::Protocol(Protocol::V2),
            Requirement::Cors,
            Requirement::Auth(AuthMode::Key),
            Requirement::Batching,
        ])
        .chain(built_in.iter().flatten())
        .map(|f| f.token())
        .collect()
}

/// What this agent can run: the runtimes that work here (of those `allowed`, when the config
/// restricts them) and the features it implements.
pub fn capabilities(allowed: Option<&[RuntimeKind]>) -> Capabilities {
    Capabilities {
        arch: std::env::consts::ARCH.to_owned(),
        os: std::env::consts::OS.to_owned(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: total_memory_bytes(),
        runtimes: edgeship_runtime::compiled()
            .iter()
            .filter(|r| allowed.is_none_or(|allowed| allowed.contains(&r.kind())))
            .filter(|r| works_here(r.as_ref()))
            .map(|r| r.kind().name().to_owned())
            .collect(),
        opencl_devices: opencl_devices(),
        features: features(),
        container_engine: String::new(),
    }
}

/// Process-wide set-up that must happen before any thread starts: where the OpenCL library is
/// looked for (see `edgeship_runtime::opencl::use_installed_library`). The agent's `main` and
/// the `edgeship` binary's (for `edgeship dev`'s in-process agent) call it first.
///
/// # Safety
/// Sets environment variables: no other thread may run yet.
#[allow(unsafe_code)]
pub unsafe fn prepare_process() {
    // SAFETY: passed on from the caller.
    #[cfg(feature = "opencl")]
    unsafe {
        edgeship_runtime::opencl::use_installed_library()
    };
}

/// Where to list OpenCL devices from: `None` lists them in this process; `Some(program)`
/// runs `program opencl-devices` (the agent binary itself) and reads its answer.
#[cfg(feature = "opencl")]
static DISCOVERY_PROGRAM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Lists OpenCL devices in a child process from now on. Listing loads every vendor's driver
/// into the process that lists (PoCL's LLVM alone is 60 MB of resident memory), so the agent
/// process loads them only when a model runs on OpenCL; a driver that crashes or hangs while
/// listing takes only the child with it.
#[cfg(feature = "opencl")]
pub fn discover_opencl_in_child(program: std::path::PathBuf) {
    let _ = DISCOVERY_PROGRAM.set(program);
}

/// The OpenCL devices found here, listed once per process; a machine without an OpenCL
/// library has none.
#[cfg(feature = "opencl")]
pub fn opencl_devices() -> Vec<edgeship_domain::OpenClDevice> {
    static FOUND: std::sync::OnceLock<Vec<edgeship_domain::OpenClDevice>> =
        std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = match DISCOVERY_PROGRAM.get() {
                Some(program) => discover_in_child(program),
                None => edgeship_runtime::opencl::discover()
                    .map(|devices| devices.into_iter().map(|d| d.info).collect())
                    .map_err(|err| err.to_string()),
            };
            found.unwrap_or_else(|err| {
                tracing::info!("no OpenCL devices: {err}");
                vec![]
            })
        })
        .clone()
}

/// Runs `program opencl-devices` and reads the JSON list it prints; gives up after 30 s.
#[cfg(feature = "opencl")]
fn discover_in_child(
    program: &std::path::Path,
) -> Result<Vec<edgeship_domain::OpenClDevice>, String> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .arg("opencl-devices")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", program.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("listing OpenCL devices took over 30 s".into());
            }
            Err(err) => return Err(format!("waiting for the device listing: {err}")),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("listing OpenCL devices failed ({status})"));
    }
    serde_json::from_str(&out).map_err(|err| format!("reading the device listing: {err}"))
}

/// Whether `runtime` works here. OpenCL works where a device was found, which says so without
/// loading the drivers into this process.
fn works_here(runtime: &dyn edgeship_runtime::Runtime) -> bool {
    if runtime.kind() == RuntimeKind::Opencl {
        return !opencl_devices().is_empty();
    }
    runtime.check().is_ok()
}

#[cfg(not(feature = "opencl"))]
pub fn opencl_devices() -> Vec<edgeship_domain::OpenClDevice> {
    vec![]
}

/// The device's self-description, sent on every connect.
/// The birth message; `container_engine` names the engine the agent reached (`docker 28.2.2`),
/// which makes the device schedulable for container workloads.
pub fn birth(config: &AgentConfig, container_engine: Option<&str>) -> Birth {
    let mut capabilities = capabilities(config.runtimes.as_deref());
    if let Some(engine) = container_engine {
        capabilities
            .features
            .insert(Requirement::ContainerWorkloads.token());
        capabilities.container_engine = engine.to_owned();
    }
    Birth {
        device_id: config.device_id.clone(),
        online: true,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities,
        labels: config.labels.clone(),
        at_ms: crate::now_ms(),
    }
}

fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_announces_traffic_splits_beside_the_baseline() {
        let announced = capabilities(None);
        assert!(announced.has(Requirement::TrafficSplit));
        assert!(Requirement::BASELINE.iter().all(|r| announced.has(*r)));
        assert!(!announced.has(Requirement::ContainerWorkloads));
    }

    #[test]
    fn runtimes_left_out_by_the_config_are_not_announced() {
        let only_tract = capabilities(Some(&[RuntimeKind::Tract]));
        assert_eq!(only_tract.runtimes, vec!["tract".to_owned()]);
    }
}
