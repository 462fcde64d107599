//! Device-side benchmark with real release processes: model transfer throughput over the
//! embedded broker and over Mosquitto (side by side, same run), chunks re-sent after the agent
//! is killed mid-download, agent memory (idle and with the diabetes model loaded), and the
//! stripped size of `edgeship-agent`.
//!
//! Run with `just bench` (it builds the release binaries first), or:
//! `cargo build --release --bins && cargo bench -p edgeship-firmware-tests --bench transfer`.

use std::path::Path;
use std::time::{Duration, Instant};

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use testkit::{HubProcess, Mosquitto, TempDir, free_port, median_worst, start_agent};

const MODEL_BYTES: usize = 50 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn register(hub: &str, name: &str, path: &Path) {
    let mut registry = client::connect(hub).await.expect("connect");
    let model = NewModel {
        model_id: name.into(),
        framework: "onnx".into(),
        ..NewModel::default()
    };
    client::register(&mut registry, model, path)
        .await
        .expect("register");
}

async fn deploy(hub: &str, name: &str, model: &str, port: u16, device: &str) {
    client::deploy_to_devices(hub, name, model, port, &[device])
        .await
        .expect("deploy");
}

/// Polls every 5 ms (the CLI's `--wait` polls slower; here the poll is the resolution).
async fn wait_healthy(hub: &str, name: &str) {
    let channel = client::channel(hub).await.expect("connect");
    let mut deployments = DeploymentsClient::new(channel);
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

/// Deploys a fresh 50 MiB model and returns the seconds from deployment to Healthy.
async fn transfer_seconds(hub: &HubProcess, dir: &Path, label: &str) -> f64 {
    // A seed per label: every transfer moves bytes no agent or registry has seen.
    let seed = label.bytes().fold(7919u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let folder = testkit::big_model(dir, label, MODEL_BYTES, seed);
    register(&hub.url, label, &folder).await;
    let agent_dir = dir.join(format!("agent-{label}"));
    let _agent = start_agent(
        label,
        &hub.mqtt_url,
        &agent_dir,
        &dir.join(format!("{label}.log")),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    deploy(&hub.url, label, &format!("{label}:1"), free_port(), label).await;
    wait_healthy(&hub.url, label).await;
    started.elapsed().as_secs_f64()
}

fn throughput(seconds: &[f64]) -> String {
    testkit::transfer_times(seconds, MODEL_BYTES)
}

/// Kills an agent half-way through a 50 MiB download, restarts it, and returns how many
/// chunks the hub sent twice (and how many distinct ones it sent).
async fn resent_after_kill(hub: &HubProcess, dir: &Path, round: usize) -> (u32, usize) {
    let name = format!("resume{round}");
    let folder = testkit::big_model(dir, &name, MODEL_BYTES, 99 + round as u64);
    register(&hub.url, &name, &folder).await;
    let spy = testkit::spy::chunk_spy(&hub.mqtt_url, &name).await;
    let agent_dir = dir.join(format!("agent-{name}"));
    let log = dir.join(format!("{name}.log"));
    let mut agent = start_agent(&name, &hub.mqtt_url, &agent_dir, &log);
    deploy(&hub.url, &name, &format!("{name}:1"), free_port(), &name).await;
    let partial_dir = agent_dir.join("blobs/partial");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let size: u64 = std::fs::read_dir(&partial_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if size > (MODEL_BYTES / 2) as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "download never reached half-way");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    agent.kill_hard();
    let _agent = start_agent(&name, &hub.mqtt_url, &agent_dir, &log);
    wait_healthy(&hub.url, &name).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    testkit::spy::resent(&spy)
}

async fn run() -> anyhow::Result<()> {
    let dir = TempDir::new("bench");
    let rounds = testkit::bench_rounds();
    let mut rows: Vec<(String, String)> = Vec::new();

    // Throughput: embedded broker and Mosquitto, alternating in the same run.
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let mosquitto = Mosquitto::start("transfer bench");
    let hub_m = mosquitto.as_ref().map(|mosquitto| {
        HubProcess::start(
            &dir.path().join("hub-m"),
            Ok(&mosquitto.url()),
            &dir.path().join("hub-m.log"),
        )
    });
    let (mut embedded, mut over_mosquitto) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        embedded.push(transfer_seconds(&hub, dir.path(), &format!("embedded{round}")).await);
        if let Some(hub_m) = &hub_m {
            over_mosquitto
                .push(transfer_seconds(hub_m, dir.path(), &format!("mosquitto{round}")).await);
        }
    }
    rows.push((
        "50 MiB model, deploy → Healthy, embedded broker".into(),
        throughput(&embedded),
    ));
    if !over_mosquitto.is_empty() {
        let ratio = median_worst(&over_mosquitto).0 / median_worst(&embedded).0;
        rows.push((
            "50 MiB model, deploy → Healthy, Mosquitto".into(),
            format!(
                "{}; {ratio:.2}x the embedded broker's time",
                throughput(&over_mosquitto)
            ),
        ));
    }
    drop(hub_m);
    if let Some(mosquitto) = mosquitto {
        mosquitto.stop();
    }

    // Resume: kill the agent half-way, restart it, count chunks the hub sent twice.
    let mut resent = Vec::new();
    let mut distinct = 0;
    for round in 0..rounds {
        let (twice, chunks) = resent_after_kill(&hub, dir.path(), round).await;
        resent.push(f64::from(twice));
        distinct = chunks;
    }
    let (median, worst) = median_worst(&resent);
    rows.push((
        "chunks (256 KiB) re-sent after kill -9 at ~50% and restart".into(),
        format!("{median} ({worst}) of {distinct} distinct chunks"),
    ));

    // Memory of a fresh agent: idle (connected, nothing deployed), then serving diabetes.
    let mem_dir = dir.path().join("agent-mem");
    let agent = start_agent("mem", &hub.mqtt_url, &mem_dir, &dir.path().join("mem.log"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = testkit::rss_kib(agent.pid());
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    deploy(&hub.url, "mem", "diabetes:1", free_port(), "mem").await;
    wait_healthy(&hub.url, "mem").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = testkit::rss_kib(agent.pid());
    rows.push((
        "agent RSS, idle and connected".into(),
        format!("{:.1} MiB", idle as f64 / 1024.0),
    ));
    rows.push((
        "agent RSS, serving the diabetes model".into(),
        format!("{:.1} MiB", loaded as f64 / 1024.0),
    ));

    // Size: strip a copy of the release binary completely.
    let binary = testkit::binary("edgeship-agent");
    let stripped = dir.path().join("edgeship-agent.stripped");
    std::fs::copy(&binary, &stripped)?;
    let _ = std::process::Command::new("strip").arg(&stripped).status();
    let size = std::fs::metadata(&stripped)?.len();
    rows.push((
        "edgeship-agent release binary, stripped".into(),
        format!("{:.1} MiB", size as f64 / 1048576.0),
    ));

    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!("## device transfer benchmark ({cpus} CPUs)");
    println!();
    println!("median (worst) of {rounds} rounds where a figure is repeated");
    println!();
    println!("| measure | result |");
    println!("|---|---|");
    for (measure, result) in rows {
        println!("| {measure} | {result} |");
    }
    Ok(())
}
