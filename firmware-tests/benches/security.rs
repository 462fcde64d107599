//! What security costs, measured side by side in one run with real release processes:
//! a 50 MiB model transferred to an enrolled agent over mutual TLS through the broker gate,
//! beside the same transfer in plaintext (`--insecure`); enrolling a device; and signing and
//! checking a desired state.
//!
//! `cargo build --release --bins && cargo bench -p edgeship-firmware-tests --bench security`
//! (`EDGESHIP_BENCH_ROUNDS` sets the rounds, default 3).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeship_agent::config::Trust;
use edgeship_agent::link::verify::StateGate;
use edgeship_domain::DesiredState;
use edgeship_domain::fixtures::model_workload;
use edgeship_domain::trust::SigningKey;
use edgeship_hub::client::{self, HubChannel};
use edgeship_proto::tls::HubTrust;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use testkit::{HubProcess, Process, TempDir, binary, free_port, median_worst, start_agent};

const MODEL_BYTES: usize = 50 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// A hub process and how to call it.
struct Hub {
    _process: Process,
    url: String,
    mqtt_url: String,
    /// For a TLS hub: its CA file.
    ca: Option<PathBuf>,
}

impl Hub {
    fn plain(dir: &Path) -> Hub {
        let hub = HubProcess::start(
            &dir.join("hub-plain"),
            Err(free_port()),
            &dir.join("hub-plain.log"),
        );
        Hub {
            _process: hub.process,
            url: hub.url,
            mqtt_url: hub.mqtt_url,
            ca: None,
        }
    }

    /// As `edgeship hub` runs by default (TLS API, the broker behind the gate), without API
    /// tokens (not what is measured).
    fn tls(dir: &Path) -> Hub {
        let data = dir.join("hub-tls");
        let mut process = Process::spawn(
            "edgeship hub",
            Command::new(binary("edgeship"))
                .args([
                    "hub",
                    "--no-auth",
                    "--listen",
                    "127.0.0.1:0",
                    "--mqtt-listen",
                ])
                .arg(format!("127.0.0.1:{}", free_port()))
                .arg("--data-dir")
                .arg(&data)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let lines = process.read_lines_starting(
            &["edgeship hub listening on ", "edgeship mqtt broker at "],
            Duration::from_secs(30),
        );
        Hub {
            _process: process,
            url: lines[0].clone(),
            mqtt_url: lines[1].clone(),
            ca: Some(data.join("keys/ca.crt")),
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new(binary("edgeship"));
        command.args(args).env("EDGESHIP_HUB", &self.url);
        if let Some(ca) = &self.ca {
            command.env("EDGESHIP_HUB_CA", ca);
        }
        let out = command.output().expect("run edgeship");
        assert!(
            out.status.success(),
            "edgeship {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    async fn channel(&self) -> HubChannel {
        let trust = self
            .ca
            .as_ref()
            .map(|ca| HubTrust::CaPem(std::fs::read_to_string(ca).expect("the hub's CA")));
        client::channel_trusting(&self.url, trust.as_ref(), None)
            .await
            .expect("connect")
    }
}

/// Polls every 5 ms until the deployment is Healthy.
async fn wait_healthy(hub: &Hub, name: &str) {
    let mut deployments = DeploymentsClient::new(hub.channel().await);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let deployment = deployments
            .get_deployment(pb::GetDeploymentRequest {
                name: format!("deployments/{name}"),
            })
            .await
            .expect("get deployment")
            .into_inner();
        if deployment.state() == pb::ServiceState::Healthy {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never became healthy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Deploys a fresh 50 MiB model to `device` and returns the seconds from deployment to
/// Healthy (the desired state, the download with its checks, staging, load, self-test).
async fn transfer_seconds(hub: &Hub, dir: &Path, device: &str, label: &str) -> f64 {
    let seed = label.bytes().fold(7919u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let folder = testkit::big_model(dir, label, MODEL_BYTES, seed);
    hub.cli(&[
        "model",
        "register",
        "-n",
        label,
        "-p",
        &folder.display().to_string(),
    ]);
    let started = Instant::now();
    hub.cli(&[
        "deploy",
        "create",
        label,
        "-m",
        &format!("{label}:1"),
        "--device",
        device,
        "--port",
        &free_port().to_string(),
    ]);
    wait_healthy(hub, label).await;
    let seconds = started.elapsed().as_secs_f64();
    // Free the port and the agent's memory for the next round.
    hub.cli(&["deploy", "delete", label]);
    seconds
}

/// Enrolls `device` with the TLS hub into `data`; returns the seconds `edgeship-agent
/// enroll` took (its key pair, the signing request, the TLS call and the files).
fn enroll(hub: &Hub, device: &str, data: &Path) -> f64 {
    let token = hub.cli(&["device", "enroll", device]);
    let started = Instant::now();
    let out = Command::new(binary("edgeship-agent"))
        .args(["enroll", "--hub", &hub.url, "--data-dir"])
        .arg(data)
        .env("EDGESHIP_BOOTSTRAP_TOKEN", &token)
        .output()
        .expect("run edgeship-agent enroll");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

fn throughput(seconds: &[f64]) -> String {
    testkit::transfer_times(seconds, MODEL_BYTES)
}

/// Microseconds per call of `work`, over `count` calls.
fn micros_per_call(count: u32, mut work: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..count {
        work();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(count)
}

async fn run() -> anyhow::Result<()> {
    let dir = TempDir::new("security-bench");
    let rounds = testkit::bench_rounds();
    let mut rows: Vec<(String, String)> = Vec::new();

    // Transfer: a plaintext agent and an enrolled TLS agent, rounds alternating.
    let plain = Hub::plain(dir.path());
    let tls = Hub::tls(dir.path());
    let _plain_agent = start_agent(
        "plain",
        &plain.mqtt_url,
        &dir.path().join("agent-plain"),
        &dir.path().join("plain.log"),
    );
    let tls_data = dir.path().join("agent-tls");
    let mut enrollments = vec![enroll(&tls, "secure", &tls_data)];
    let _tls_agent = Process::spawn(
        "edgeship-agent",
        Command::new(binary("edgeship-agent"))
            .args(["run", "--serve-host", "127.0.0.1", "--data-dir"])
            .arg(&tls_data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut plain_seconds, mut tls_seconds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        plain_seconds
            .push(transfer_seconds(&plain, dir.path(), "plain", &format!("plain{round}")).await);
        tls_seconds
            .push(transfer_seconds(&tls, dir.path(), "secure", &format!("tls{round}")).await);
    }
    let plain_rate = 1.0 / median_worst(&plain_seconds).0;
    let tls_rate = 1.0 / median_worst(&tls_seconds).0;
    rows.push((
        "50 MiB model, deploy → Healthy, plaintext (--insecure)".into(),
        throughput(&plain_seconds),
    ));
    rows.push((
        "50 MiB model, deploy → Healthy, mutual TLS through the gate".into(),
        format!(
            "{}; {:.0}% of plaintext",
            throughput(&tls_seconds),
            tls_rate / plain_rate * 100.0
        ),
    ));

    // Enrollment: more devices, each a fresh bootstrap token and data folder.
    for round in 1..rounds.max(3) {
        enrollments.push(enroll(
            &tls,
            &format!("enroll{round}"),
            &dir.path().join(format!("enroll{round}")),
        ));
    }
    let (median, worst) = median_worst(&enrollments);
    rows.push((
        "`edgeship-agent enroll` (key pair, CSR, TLS call, files; a process)".into(),
        format!("{:.0} ms ({:.0} ms)", median * 1e3, worst * 1e3),
    ));

    // Signing and checking a desired state of 10 workloads.
    let director = SigningKey::generate()?;
    let desired = DesiredState {
        device_id: "edge-1".into(),
        generation: 9,
        workloads: (0..10)
            .map(|i| model_workload(&format!("web{i}"), 1, i))
            .collect(),
        rejected: vec![],
        issued_at_ms: 0,
        jobs: vec![],
        rejected_jobs: vec![],
    };
    let payload = testkit::trust::signed_desired(&director, &desired);
    let checked = Trust {
        director_key: Some(director.public()),
        insecure: false,
        identity: None,
        model_signers: vec![],
    };
    let unchecked = Trust {
        director_key: None,
        insecure: true,
        ..checked.clone()
    };
    let now = testkit::trust::now_ms();
    let (mut verify, mut decode_only, mut sign) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut gate = StateGate::new("edge-1", &checked, 0);
        verify.push(micros_per_call(2000, || {
            gate.open(&payload, now).expect("valid");
        }));
        let mut gate = StateGate::new("edge-1", &unchecked, 0);
        decode_only.push(micros_per_call(2000, || {
            gate.open(&payload, now).expect("valid");
        }));
        sign.push(micros_per_call(2000, || {
            let _ = testkit::trust::signed_desired(&director, &desired);
        }));
    }
    let (v, vw) = median_worst(&verify);
    let (d, dw) = median_worst(&decode_only);
    let (s, sw) = median_worst(&sign);
    rows.push((
        format!("agent: check a signed desired state ({} bytes, 10 workloads)", payload.len()),
        format!("{v:.1} µs ({vw:.1}); decoding alone {d:.1} µs ({dw:.1}), so the signature costs {:.1} µs", v - d),
    ));
    rows.push((
        "hub: encode and sign that state".into(),
        format!("{s:.1} µs ({sw:.1})"),
    ));

    println!("median (worst) of {rounds} rounds, this machine, release processes\n");
    println!("| measure | result |\n|---|---|");
    for (measure, result) in rows {
        println!("| {measure} | {result} |");
    }
    Ok(())
}
