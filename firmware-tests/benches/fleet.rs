//! Fleet-scale rollout benchmark: time from `deploy apply` to every device `Healthy` for a
//! 1 MB model, all at once, on 1,000 and 10,000 simulated devices (each its own MQTT
//! connection, doing the real chunked transfer with per-chunk and whole-file sha256 checks),
//! over the embedded broker and over Mosquitto, with the hub's memory and CPU time; and, side
//! by side at 1,000 devices, the same rollout with every device fetching on its own topic (no
//! broadcast), as agents did before broadcasts.
//!
//! Real release `edgeship hub` processes; the devices live in this process. Run with
//! `just bench`, or: `cargo build --release --bins && cargo bench -p edgeship-firmware-tests
//! --bench fleet`. `EDGESHIP_FLEET_SIZES=1000,10000` and `EDGESHIP_BENCH_ROUNDS=3` are the
//! defaults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use testkit::sim::{Behaviour, SimDevice};
use testkit::{HubProcess, Mosquitto, TempDir, free_port};

const MODEL_BYTES: usize = 1024 * 1024;
/// Every wait is bounded: a stuck rollout fails the benchmark instead of hanging it.
const LIMIT: Duration = Duration::from_secs(240);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn setting(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|v| *v > 0)
        .collect()
}

/// What one rollout measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    seconds: f64,
    /// The hub's resident memory with the devices connected and the rollout done.
    rss_kib: u64,
    /// Before any device connected.
    idle_rss_kib: u64,
    /// CPU time the hub spent from `apply` to the end.
    cpu_seconds: f64,
    /// Meanwhile, the broker's (Mosquitto; the embedded one is the hub's) and the simulated
    /// devices' (this process: transfer, two sha256 passes over every byte).
    broker_cpu_seconds: f64,
    devices_cpu_seconds: f64,
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) close with `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// One rollout on a fresh hub (and a fresh Mosquitto, with `mosquitto`): `devices`
/// simulated devices, all at once.
async fn rollout(
    dir: &std::path::Path,
    label: &str,
    mosquitto: bool,
    devices: usize,
    broadcast: bool,
) -> Measured {
    let data = dir.join(label);
    std::fs::create_dir_all(&data).expect("bench folder");
    let broker = mosquitto.then(|| Mosquitto::start("fleet bench").expect("mosquitto"));
    let hub = HubProcess::start(
        &data.join("hub"),
        broker
            .as_ref()
            .map(Mosquitto::url)
            .as_deref()
            .ok_or(free_port()),
        &data.join("hub.log"),
    );
    let pid = hub.process.pid();
    let idle_rss_kib = testkit::rss_kib(pid);
    let (host, port) = edgeship_proto::parse_broker_url(&hub.mqtt_url).expect("broker url");
    let labels = BTreeMap::from([("fleet".to_owned(), label.to_owned())]);
    let behaviour = Behaviour {
        no_broadcast: !broadcast,
        ..Behaviour::default()
    };
    let sims: Vec<SimDevice> = (0..devices)
        .map(|i| {
            SimDevice::start_with(
                &format!("{label}-{i:05}"),
                &host,
                port,
                &labels,
                behaviour.clone(),
            )
        })
        .collect();
    let deadline = Instant::now() + LIMIT;
    let connecting = Instant::now();
    let mut reported = Instant::now();
    loop {
        // Only this run's devices: a broker may still hold another run's retained births.
        let count = testkit::online_devices(&hub.url, &format!("fleet={label}")).await;
        if count >= devices {
            break;
        }
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "{label}: {count} of {devices} online after {:.0} s",
                connecting.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{label}: only {count} of {devices} devices came online"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{label}: {devices} online in {:.1} s",
        connecting.elapsed().as_secs_f64()
    );
    let folder = testkit::big_model(&data, "model", MODEL_BYTES - 512, devices as u64);
    let mut registry = client::connect(&hub.url).await.expect("connect");
    client::register(
        &mut registry,
        NewModel {
            model_id: "m".into(),
            framework: "onnx".into(),
            ..NewModel::default()
        },
        &folder,
    )
    .await
    .expect("register");
    let mut deployments = DeploymentsClient::connect(hub.url.clone())
        .await
        .expect("connect");
    let broker_pid = broker.as_ref().map(Mosquitto::pid);
    let broker_before = broker_pid.map_or(0.0, cpu_seconds);
    let own_pid = std::process::id();
    let devices_before = cpu_seconds(own_pid);
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    deployments
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest: format!(
                "name: fleet\nmodel: m:1\nendpoint: {{port: 7001}}\ntarget: {{selector: \"fleet={label}\"}}\n"
            ),
            dry_run: false,
        })
        .await
        .expect("apply");
    // The rollout completes when every device reported the new revision Healthy.
    loop {
        let rollout = deployments
            .get_rollout(pb::GetRolloutRequest {
                name: "deployments/fleet".into(),
            })
            .await
            .expect("rollout")
            .into_inner();
        if rollout.phase == "Completed" {
            assert_eq!(rollout.moved as usize, devices, "{label}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: rollout stuck: {rollout:?}"
        );
        // Each look at a rollout counts the targeted devices; looking too often would load
        // the hub being measured. The resolution is a quarter second.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let measured = Measured {
        seconds,
        rss_kib: testkit::rss_kib(pid),
        idle_rss_kib,
        cpu_seconds: cpu_seconds(pid) - cpu_before,
        broker_cpu_seconds: broker_pid.map_or(0.0, cpu_seconds) - broker_before,
        devices_cpu_seconds: cpu_seconds(own_pid) - devices_before,
    };
    for sim in &sims {
        let state = sim.state.borrow();
        assert_eq!(state.error, None, "{label}: {}", sim.id);
        assert!(
            state.verified_bytes >= MODEL_BYTES as u64 - 512,
            "{label}: {}",
            sim.id
        );
    }
    drop(sims);
    drop(hub);
    // The hub's log outlives the run, for a look at how the bytes went out.
    let _ = std::fs::copy(
        data.join("hub.log"),
        std::env::temp_dir().join(format!("fleet-bench-{label}.log")),
    );
    if let Some(broker) = broker {
        broker.stop();
    }
    measured
}

fn median_worst(values: &[f64], worse_is_larger: bool) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let worst = if worse_is_larger {
        sorted[sorted.len() - 1]
    } else {
        sorted[0]
    };
    (sorted[sorted.len() / 2], worst)
}

fn row(label: String, devices: usize, runs: &[Measured]) -> String {
    let (t, t_worst) = median_worst(&runs.iter().map(|m| m.seconds).collect::<Vec<_>>(), true);
    let (rss, _) = median_worst(
        &runs.iter().map(|m| m.rss_kib as f64).collect::<Vec<_>>(),
        true,
    );
    let (idle, _) = median_worst(
        &runs
            .iter()
            .map(|m| m.idle_rss_kib as f64)
            .collect::<Vec<_>>(),
        true,
    );
    let (cpu, _) = median_worst(
        &runs.iter().map(|m| m.cpu_seconds).collect::<Vec<_>>(),
        true,
    );
    let (broker_cpu, _) = median_worst(
        &runs
            .iter()
            .map(|m| m.broker_cpu_seconds)
            .collect::<Vec<_>>(),
        true,
    );
    let (devices_cpu, _) = median_worst(
        &runs
            .iter()
            .map(|m| m.devices_cpu_seconds)
            .collect::<Vec<_>>(),
        true,
    );
    let per_device = (rss - idle).max(0.0) / devices as f64;
    format!(
        "| {label} | {devices} | {t:.2} s ({t_worst:.2} s) | {:.0} MiB | {per_device:.1} KiB | {cpu:.1} s | {broker_cpu:.1} s | {devices_cpu:.1} s |",
        rss / 1024.0
    )
}

async fn run() -> anyhow::Result<()> {
    let sizes = setting("EDGESHIP_FLEET_SIZES", "1000,10000");
    // The embedded broker keeps about 1 MiB per device after a 1 MB rollout (measured):
    // beyond this many devices it is not the fleet broker, Mosquitto is.
    let embedded_max = setting("EDGESHIP_FLEET_EMBEDDED_MAX", "1000")
        .first()
        .copied()
        .unwrap_or(1000);
    let rounds = setting("EDGESHIP_BENCH_ROUNDS", "3")
        .first()
        .copied()
        .unwrap_or(3);
    let mosquitto = testkit::find_program("mosquitto").is_some();
    let dir = TempDir::new("fleet-bench");
    let mut rows = Vec::new();
    for &devices in &sizes {
        let brokers = [("embedded", false), ("Mosquitto 2.0", true)]
            .into_iter()
            .filter(|(_, external)| {
                if *external {
                    mosquitto
                } else {
                    devices <= embedded_max
                }
            });
        for (broker, external) in brokers {
            // Per-device fetching is the comparison, at the smaller size only (it is the slow one).
            let modes: &[bool] = if devices <= 1000 {
                &[true, false]
            } else {
                &[true]
            };
            for &broadcast in modes {
                let mut runs = Vec::new();
                for round in 0..rounds {
                    let label = format!(
                        "{}-{devices}-{}-{round}",
                        if external { "mq" } else { "emb" },
                        if broadcast { "bc" } else { "pd" }
                    );
                    let measured = rollout(dir.path(), &label, external, devices, broadcast).await;
                    eprintln!("{label}: {measured:?}");
                    runs.push(measured);
                }
                let how = if broadcast { "broadcast" } else { "per device" };
                rows.push(row(format!("{broker}, {how}"), devices, &runs));
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!("## fleet rollout benchmark ({cpus} CPUs), 1 MB model, all at once");
    println!();
    println!("median (worst) of {rounds} rounds; hub memory with every device connected");
    println!();
    println!(
        "| broker, transfer | devices | apply → all Healthy | hub RSS | hub RSS per device | hub CPU | Mosquitto CPU | devices' CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
