//! Container workload benchmark, on the real Docker engine: time from `deploy apply` to
//! `Healthy` for a container workload with its image delivered as an artifact (download over
//! MQTT, `docker load`, start, health probe) and with the image already on the device (a new
//! version of the container: blue/green); and the latency the agent's proxy adds to `/score`
//! against calling the container directly, side by side over kept-alive connections.
//!
//! The image is `edgeship package diabetes:1` (the static agent and the model). Real release
//! `edgeship hub` and `edgeship-agent --containers docker` processes. Run with `just bench`,
//! or: `cargo build --release --bins && cargo bench -p edgeship-firmware-tests --bench
//! containers`. `EDGESHIP_BENCH_ROUNDS=5` rounds of each; medians and worsts are printed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use testkit::{HubProcess, TempDir, edgeship, free_port, start_agent_with};

/// Every wait is bounded: a stuck deployment fails the benchmark instead of hanging it.
const LIMIT: Duration = Duration::from_secs(180);
/// Requests per latency sample, per path.
const REQUESTS: usize = 2000;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn rounds() -> usize {
    std::env::var("EDGESHIP_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5)
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker").args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Waits until the deployment is `Healthy` on its device serving `model`; returns the wait.
async fn until_healthy(hub: &str, deployment: &str, model: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        let mut client = DeploymentsClient::connect(hub.to_owned()).await?;
        let d = client
            .get_deployment(pb::GetDeploymentRequest {
                name: format!("deployments/{deployment}"),
            })
            .await?
            .into_inner();
        let healthy = d
            .devices
            .iter()
            .any(|w| w.state() == pb::ServiceState::Healthy && w.serving_model == model);
        if healthy {
            return Ok(started.elapsed());
        }
        if let Some(failed) = d
            .devices
            .iter()
            .find(|w| w.state() == pb::ServiceState::Failed)
        {
            anyhow::bail!("{deployment} failed: {}", failed.error);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{deployment} not healthy within {LIMIT:?}")
}

fn apply(hub: &str, dir: &Path, manifest: &str) {
    let path = dir.join("manifest.yaml");
    std::fs::write(&path, manifest).expect("manifest");
    edgeship(hub, &["deploy", "apply", "-f", &path.to_string_lossy()]);
}

/// One kept-alive HTTP/1.1 connection that posts the same request again and again.
struct KeptAlive {
    stream: TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl KeptAlive {
    async fn connect(addr: SocketAddr, body: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "POST /score HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Ok(Self {
            stream,
            request,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends the request and reads the whole response; returns how long that took.
    async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stream.write_all(&self.request).await?;
        self.buffer.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buffer.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
                anyhow::ensure!(head.starts_with("http/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buffer.len() >= end + 4 + length {
                    return Ok(started.elapsed());
                }
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Median and worst of `values`.
fn median_worst(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (percentile(&sorted, 0.5), sorted[sorted.len() - 1])
}

async fn run() -> anyhow::Result<()> {
    let rounds = rounds();
    docker(&["info", "--format", "{{.ServerVersion}}"])?;
    let agent_binary = tokio::task::spawn_blocking(testkit::static_agent).await?;
    let dir = TempDir::new("bench-containers");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let url = hub.url.clone();
    let device = format!("bench-ctr-{}", std::process::id());
    let tag = format!("edgeship-bench/scorer:{}", std::process::id());
    let archive = dir.path().join("scorer.tar");
    testkit::register_diabetes_cli(&url);
    testkit::package_archive(&url, "diabetes:1", &agent_binary, &tag, &archive);
    let image_bytes = std::fs::metadata(&archive)?.len();
    edgeship(
        &url,
        &[
            "model",
            "register",
            "-n",
            "scorer",
            "-p",
            &archive.to_string_lossy(),
        ],
    );
    let mut agent = start_agent_with(
        &device,
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
        &["--containers", "docker"],
    );
    let port = free_port();
    let manifest = |round: usize| {
        format!(
            "name: bench\ncontainer:\n  image_artifact: scorer:1\n  ports: [5001]\n  env: {{ROUND: \"{round}\"}}\nendpoint: {{port: {port}}}\ntarget: {{devices: [{device}]}}\n"
        )
    };

    // With delivery: a deleted deployment takes its image and cached file with it, so each
    // round downloads, loads, starts and probes from nothing.
    let mut delivered = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        apply(&url, dir.path(), &manifest(round));
        until_healthy(&url, "bench", "scorer:1").await?;
        delivered.push(started.elapsed().as_secs_f64());
        edgeship(&url, &["deploy", "delete", "bench"]);
        let gone = Instant::now();
        while !docker(&["images", "-q", &tag])?.is_empty() && gone.elapsed() < LIMIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Image on the device: a new version of the container (another environment), switched
    // blue/green.
    apply(&url, dir.path(), &manifest(0));
    until_healthy(&url, "bench", "scorer:1").await?;
    let mut switched = Vec::new();
    for round in 1..=rounds {
        let before = docker(&[
            "ps",
            "-q",
            "--filter",
            "label=dev.edgeship.deployment=bench",
        ])?;
        let started = Instant::now();
        apply(&url, dir.path(), &manifest(round));
        // Healthy on the new container: the old one is gone.
        loop {
            until_healthy(&url, "bench", "scorer:1").await?;
            let now = docker(&[
                "ps",
                "-q",
                "--filter",
                "label=dev.edgeship.deployment=bench",
            ])?;
            if now != before && !now.contains('\n') {
                break;
            }
            anyhow::ensure!(started.elapsed() < LIMIT, "no switch within {LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        switched.push(started.elapsed().as_secs_f64());
    }

    // The proxy's added latency: the same request through the agent and straight to the
    // container, in alternating samples.
    let container = docker(&[
        "ps",
        "-q",
        "--filter",
        "label=dev.edgeship.deployment=bench",
    ])?;
    let ip = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    ])?;
    let direct: SocketAddr = format!("{ip}:5001").parse()?;
    let proxied = SocketAddr::from(([127, 0, 0, 1], port));
    let body = serde_json::json!({ "data": testkit::expected("diabetes")["inputs"] }).to_string();
    let (mut added_p50, mut added_p99) = (Vec::new(), Vec::new());
    let (mut direct_p50, mut proxied_p50) = (Vec::new(), Vec::new());
    let mut through = KeptAlive::connect(proxied, &body).await?;
    let mut straight = KeptAlive::connect(direct, &body).await?;
    for _ in 0..200 {
        through.round_trip().await?;
        straight.round_trip().await?;
    }
    for _ in 0..rounds {
        let (mut a, mut b) = (Vec::with_capacity(REQUESTS), Vec::with_capacity(REQUESTS));
        for _ in 0..REQUESTS {
            a.push(through.round_trip().await?.as_secs_f64() * 1000.0);
            b.push(straight.round_trip().await?.as_secs_f64() * 1000.0);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        proxied_p50.push(percentile(&a, 0.5));
        direct_p50.push(percentile(&b, 0.5));
        added_p50.push(percentile(&a, 0.5) - percentile(&b, 0.5));
        added_p99.push(percentile(&a, 0.99) - percentile(&b, 0.99));
    }
    edgeship(&url, &["deploy", "delete", "bench"]);
    agent.terminate(Duration::from_secs(10));

    println!(
        "container workloads ({rounds} rounds, image {:.1} MB, docker {})",
        image_bytes as f64 / 1e6,
        docker(&["version", "--format", "{{.Server.Version}}"])?
    );
    println!("| measure | median | worst |");
    println!("|---|---|---|");
    let row = |name: &str, values: &[f64], unit: &str| {
        let (median, worst) = median_worst(values);
        println!("| {name} | {median:.3} {unit} | {worst:.3} {unit} |");
    };
    row(
        "apply → Healthy, image delivered (download, load, start, probe)",
        &delivered,
        "s",
    );
    row(
        "apply → Healthy on a new container, image on the device",
        &switched,
        "s",
    );
    row("/score p50 straight to the container", &direct_p50, "ms");
    row("/score p50 through the agent's proxy", &proxied_p50, "ms");
    row("proxy's added p50", &added_p50, "ms");
    row("proxy's added p99", &added_p99, "ms");
    let _ = docker(&["rmi", "-f", &tag]);
    Ok(())
}
