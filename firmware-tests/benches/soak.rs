//! Soak with real release processes (`just soak`): an agent scoring under sustained load for
//! 10 minutes while a new version rolls out every 30 s (zero failed requests, memory flat),
//! then 1,000 deploy/delete cycles of another deployment on the same agent (no growth in disk
//! use, file descriptors or memory).
//!
//! `EDGESHIP_SOAK_SECS` (600), `EDGESHIP_SOAK_ROLL_SECS` (30), `EDGESHIP_SOAK_CLIENTS` (4
//! kept-alive connections, each sending its next request when the last is answered) and
//! `EDGESHIP_SOAK_CYCLES` (1000) size it. `EDGESHIP_SOAK_BROKER=mosquitto` puts the hub on
//! Mosquitto instead of its embedded broker (to tell the broker's memory from the hub's own).
//! Exits 1 when a request failed or a cycle did not complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::KeepAlive;
use testkit::trials::{self, world::World};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    testkit::bench_main(run());
}

/// Memory, descriptors and disk of the agent and the hub at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    agent_rss_kib: u64,
    agent_fds: usize,
    agent_disk: u64,
    hub_rss_kib: u64,
    hub_fds: usize,
    hub_disk: u64,
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn sample(world: &World) -> Sample {
    let (hub_rss_kib, agent_rss_kib) = world.rss_kib();
    let agent = world.agent.as_ref().map_or(0, testkit::Process::pid);
    let hub = world.hub.as_ref().map_or(0, |h| h.process.pid());
    Sample {
        agent_rss_kib,
        agent_fds: fds(agent),
        agent_disk: trials::checks::bytes_under(&world.agent_dir()),
        hub_rss_kib,
        hub_fds: fds(hub),
        hub_disk: trials::checks::bytes_under(&world.hub_dir()),
    }
}

fn print_samples(title: &str, rows: &[(String, Sample)]) {
    println!("\n{title}\n");
    println!(
        "| at | agent RSS (MiB) | agent fds | agent disk (MiB) | hub RSS (MiB) | hub fds | hub disk (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (at, s) in rows {
        println!(
            "| {at} | {:.1} | {} | {:.1} | {:.1} | {} | {:.1} |",
            s.agent_rss_kib as f64 / 1024.0,
            s.agent_fds,
            s.agent_disk as f64 / 1048576.0,
            s.hub_rss_kib as f64 / 1024.0,
            s.hub_fds,
            s.hub_disk as f64 / 1048576.0,
        );
    }
}

/// Registers the next version of the soak's model (1 MiB of its own bytes beside the graph).
fn register_version(world: &World, version: u32) {
    let folder = testkit::big_model(
        world.dir.path(),
        &format!("v{version}"),
        1 << 20,
        u64::from(version),
    );
    trials::register(&world.hub_url(), &folder);
    let _ = std::fs::remove_dir_all(folder);
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

async fn run() -> bool {
    let seconds = env_u64("EDGESHIP_SOAK_SECS", 600);
    let roll_every = Duration::from_secs(env_u64("EDGESHIP_SOAK_ROLL_SECS", 30));
    let clients = env_u64("EDGESHIP_SOAK_CLIENTS", 4);
    let cycles = env_u64("EDGESHIP_SOAK_CYCLES", 1000);
    let mosquitto = match std::env::var("EDGESHIP_SOAK_BROKER").as_deref() {
        Ok("mosquitto") => Some(testkit::find_program("mosquitto").expect("mosquitto installed")),
        Ok("embedded") | Err(_) => None,
        Ok(other) => panic!("EDGESHIP_SOAK_BROKER is embedded or mosquitto, not {other:?}"),
    };
    let mut world = World::start("soak", mosquitto, false, None)
        .await
        .expect("hub starts");
    world.start_agent();
    register_version(&world, 1);
    trials::apply_deployment(&world, "web", 1, world.port);
    trials::wait_converged(&world, "web", 1, Duration::from_secs(60))
        .await
        .expect("version 1 serves");

    // Scoring under load, every answer checked.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let examples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut loaders = Vec::new();
    for _ in 0..clients {
        let (counts, stop, examples) = (counts.clone(), stop.clone(), examples.clone());
        let addr = world.endpoint();
        loaders.push(tokio::spawn(async move {
            let body = serde_json::json!({"data": testkit::expected("diabetes")["inputs"]})
                .to_string()
                .into_bytes();
            let mut client = KeepAlive::new(addr);
            while !stop.load(Ordering::Relaxed) {
                let verdict = match client.post_json("/score", &body).await {
                    Ok(answer) => testkit::diabetes_predictions_match(&answer),
                    Err(err) => Err(err.to_string()),
                };
                match verdict {
                    Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Err(why) => {
                        let mut examples = examples.lock().unwrap_or_else(|e| e.into_inner());
                        if examples.len() < 5 {
                            examples.push(why);
                        }
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    let started = Instant::now();
    let mut samples = vec![("start".to_owned(), sample(&world))];
    let mut rolls = Vec::new();
    let mut version = 1;
    let mut next_roll = started + roll_every;
    let mut next_sample = started + Duration::from_secs(60);
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = Instant::now();
        if now >= next_roll {
            version += 1;
            let rolled = Instant::now();
            register_version(&world, version);
            trials::apply_deployment(&world, "web", version, world.port);
            match trials::wait_converged(&world, "web", version, Duration::from_secs(60)).await {
                Ok(()) => rolls.push(rolled.elapsed()),
                Err(why) => println!("roll to version {version} did not converge: {why}"),
            }
            next_roll += roll_every;
        }
        if now >= next_sample {
            samples.push((format!("{} s", started.elapsed().as_secs()), sample(&world)));
            next_sample += Duration::from_secs(60);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        let _ = loader.await;
    }
    samples.push(("end".to_owned(), sample(&world)));
    let took = started.elapsed().as_secs_f64();
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    rolls.sort();
    println!(
        "soak: {seconds} s, {clients} kept-alive clients: {ok} answers ({:.0}/s), {failed} failed {:?}; {} rolls of {} planned, apply → converged p50 {:.2} s, worst {:.2} s",
        ok as f64 / took,
        examples.lock().unwrap_or_else(|e| e.into_inner()),
        rolls.len(),
        version - 1,
        rolls
            .get(rolls.len() / 2)
            .map_or(0.0, Duration::as_secs_f64),
        rolls.last().map_or(0.0, Duration::as_secs_f64),
    );
    print_samples("Soak, sampled every minute:", &samples);

    // Deploy/delete cycles of a second deployment on the same agent.
    let cycle_port = testkit::free_port();
    let cycle_addr = std::net::SocketAddr::from(([127, 0, 0, 1], cycle_port));
    let mut cycle_samples = vec![("before".to_owned(), sample(&world))];
    let mut incomplete = 0;
    let cycles_started = Instant::now();
    for cycle in 1..=cycles {
        trials::apply_deployment(&world, "cycle", version, cycle_port);
        if let Err(why) =
            trials::wait_converged(&world, "cycle", version, Duration::from_secs(30)).await
        {
            println!("cycle {cycle}: {why}");
            incomplete += 1;
        }
        testkit::edgeship(&world.hub_url(), &["deploy", "delete", "cycle"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(cycle_addr).await.is_ok() {
            if Instant::now() > deadline {
                println!("cycle {cycle}: the endpoint still listens 30 s after the delete");
                incomplete += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if [10, 100, 250, 500, 750, 1000].contains(&cycle) || cycle == cycles {
            cycle_samples.push((format!("cycle {cycle}"), sample(&world)));
        }
    }
    println!(
        "\n{cycles} deploy/delete cycles in {:.0} s ({:.2} s each), {incomplete} incomplete",
        cycles_started.elapsed().as_secs_f64(),
        cycles_started.elapsed().as_secs_f64() / cycles.max(1) as f64
    );
    print_samples("Deploy/delete cycles:", &cycle_samples);
    failed == 0 && incomplete == 0
}
