//! Fault trials: real `edgeship` and `edgeship-agent` processes (and Mosquitto) taken through
//! a version roll while a fault, drawn from a seed, strikes at a random moment. Every trial
//! ends with the same checks (see [`checks`]); a seed replays the same schedule.
//!
//! One trial: register versions 1 and 2 of a model, deploy 1 and wait until it serves, start
//! a scoring client and a chunk counter, apply version 2, inject the fault, heal it, then wait
//! for the hub to report the device healthy on version 2 and check everything.

pub mod checks;
mod inject;
pub mod probe;
pub mod world;

use std::path::Path;
use std::time::{Duration, Instant};

pub use inject::Injected;
use world::World;

/// The answer header that names the model version that answered.
pub const MODEL_HEADER: &str = "x-edgeship-model";
const MODEL_ID: &str = "m";
const DEPLOYMENT: &str = "web";
/// How long the hub may take to report the device on the new version once a fault is gone.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(120);
/// Memory a process may hold at the end of a trial (KiB): far above what they use, so only a
/// leak or a runaway buffer trips it.
const AGENT_RSS_BOUND_KIB: u64 = 128 * 1024;
const HUB_RSS_BOUND_KIB: u64 = 512 * 1024;

/// The kinds of fault a trial injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 of the agent, one to three times, at random points of the roll.
    AgentKill,
    /// kill -9 of the agent, then a file of its data folder truncated, damaged or removed.
    CacheDamage,
    /// kill -9 of the hub (and its embedded broker) mid-rollout, just after an acknowledged
    /// write.
    HubKill,
    /// kill -9 of Mosquitto, which forgets sessions and retained messages, and a restart.
    BrokerRestart,
    /// The agent's link to the broker blackholed or down for 0.5–6 s.
    Partition,
    /// Latency of 20–300 ms each way and a bandwidth cap on the agent's link.
    SlowLink,
    /// The agent's connections cut again and again for a few seconds.
    Flapping,
    /// The agent's data folder on a tmpfs too small for the new version, then enlarged.
    DiskFull,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::AgentKill,
        FaultKind::CacheDamage,
        FaultKind::HubKill,
        FaultKind::BrokerRestart,
        FaultKind::Partition,
        FaultKind::SlowLink,
        FaultKind::Flapping,
        FaultKind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::AgentKill => "agent kill -9",
            FaultKind::CacheDamage => "damaged agent files",
            FaultKind::HubKill => "hub kill -9",
            FaultKind::BrokerRestart => "broker kill -9",
            FaultKind::Partition => "partition",
            FaultKind::SlowLink => "slow link",
            FaultKind::Flapping => "flapping link",
            FaultKind::DiskFull => "full disk",
        }
    }

    /// The kind a seed draws.
    pub fn of_seed(seed: u64) -> FaultKind {
        FaultKind::ALL[Rng::new(seed).below(FaultKind::ALL.len() as u64) as usize]
    }
}

/// splitmix64: small, and a seed gives the same schedule on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// What one trial did and found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub kind: FaultKind,
    /// The fault as it happened (where each kill landed, how long a partition held).
    pub injected: String,
    /// From the fault's end to the hub reporting the device healthy on the new version (0
    /// when the roll finished before the fault ended).
    pub convergence: Option<Duration>,
    /// From the apply of the new version to the same report: the roll, fault included.
    pub roll: Option<Duration>,
    /// Setting up: processes started, both versions registered, version 1 serving.
    pub setup: Option<Duration>,
    /// Chunks the hub sent more than once, and distinct chunks sent, after the apply.
    pub resent_chunks: u32,
    pub chunks: usize,
    pub served: probe::Served,
    pub hub_rss_kib: u64,
    pub agent_rss_kib: u64,
    /// Where each agent kill landed in the roll (download, verify, …).
    pub phases: Vec<&'static str>,
    /// Broken promises; empty when the trial passed.
    pub failures: Vec<String>,
    /// Why the trial could not run here (a component missing), when it did not.
    pub skipped: Option<String>,
}

impl Outcome {
    fn new(seed: u64, kind: FaultKind) -> Outcome {
        Outcome {
            seed,
            kind,
            injected: String::new(),
            convergence: None,
            roll: None,
            setup: None,
            resent_chunks: 0,
            chunks: 0,
            served: probe::Served::default(),
            hub_rss_kib: 0,
            agent_rss_kib: 0,
            phases: Vec::new(),
            failures: Vec::new(),
            skipped: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the trial of `seed` (its fault kind drawn from the seed). A panic inside (a helper's
/// assertion) is a failure of the trial, not of the run.
pub async fn run(seed: u64) -> Outcome {
    let kind = FaultKind::of_seed(seed);
    run_kind(seed, kind).await
}

/// Runs a trial of `kind` with the schedule drawn from `seed`.
pub async fn run_kind(seed: u64, kind: FaultKind) -> Outcome {
    let trial = tokio::spawn(trial(seed, kind));
    match tokio::time::timeout(Duration::from_secs(300), trial).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let mut outcome = Outcome::new(seed, kind);
            outcome
                .failures
                .push(format!("the trial panicked: {}", panic_text(panic)));
            outcome
        }
        Err(_) => {
            let mut outcome = Outcome::new(seed, kind);
            outcome
                .failures
                .push("the trial did not end within 300 s".into());
            outcome
        }
    }
}

fn panic_text(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into()),
        Err(err) => err.to_string(),
    }
}

async fn trial(seed: u64, kind: FaultKind) -> Outcome {
    let mut outcome = Outcome::new(seed, kind);
    let started = Instant::now();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let model_bytes: u64 = [1, 4, 10][rng.below(3) as usize] << 20;
    let mosquitto = match kind {
        FaultKind::BrokerRestart => match crate::find_program("mosquitto") {
            Some(program) => Some(program),
            None => return skipped(outcome, "mosquitto is not installed"),
        },
        _ => None,
    };
    let tmpfs = match kind {
        FaultKind::DiskFull if !world::can_mount_tmpfs() => {
            return skipped(outcome, "a tmpfs cannot be mounted here (needs root)");
        }
        // Room for version 1 and part of version 2: the download, its check or its staging
        // runs out of space, depending on the draw.
        FaultKind::DiskFull => Some(model_bytes + rng.below(model_bytes) + (256 << 10)),
        _ => None,
    };
    let proxied = matches!(
        kind,
        FaultKind::Partition | FaultKind::SlowLink | FaultKind::Flapping
    );
    let mut world = match World::start(&format!("trial-{seed}"), mosquitto, proxied, tmpfs).await {
        Ok(world) => world,
        Err(err) => {
            outcome.failures.push(format!("setting up: {err:#}"));
            return outcome;
        }
    };
    let hub = world.hub_url();
    let versions = [1u64, 2].map(|v| {
        let folder = crate::big_model(
            world.dir.path(),
            &format!("v{v}"),
            model_bytes as usize,
            seed.wrapping_mul(2).wrapping_add(v),
        );
        register(&hub, &folder);
        checks::digests(&folder)
    });

    world.start_agent();
    apply(&world, 1);
    if let Err(why) = converge(&world, 1, Duration::from_secs(60)).await {
        outcome.failures.push(format!("before the fault: {why}"));
        return outcome;
    }
    let spy = crate::spy::chunk_spy(&world.broker_url(), &world.device).await;
    let versions_served = vec![format!("{MODEL_ID}:1"), format!("{MODEL_ID}:2")];
    let probe = probe::Probe::start(world.endpoint(), versions_served, Duration::from_millis(10));

    outcome.setup = Some(started.elapsed());
    apply(&world, 2);
    let applied = Instant::now();
    let injected = inject::inject(kind, &mut world, &mut rng, model_bytes, &versions[1]).await;
    outcome.injected = injected.description.clone();
    outcome.phases = injected.phases.clone();
    match converge(&world, 2, CONVERGENCE_BOUND).await {
        Ok(()) => {
            outcome.convergence = Some(injected.healed.elapsed());
            outcome.roll = Some(applied.elapsed());
        }
        Err(why) => outcome.failures.push(why),
    }
    // The hub's view must be the device's: the endpoint answers with version 2.
    if let Err(why) = endpoint_serves(&world, "m:2", Duration::from_secs(10)).await {
        outcome.failures.push(why);
    }
    outcome.served = probe.finish().await;
    let served = &outcome.served;
    if served.wrong > 0 {
        outcome.failures.push(format!(
            "{} wrong answers, e.g. {:?}",
            served.wrong, served.wrong_examples
        ));
    }
    if !injected.agent_was_down && served.refused > 0 {
        outcome.failures.push(format!(
            "{} requests refused while the agent process ran",
            served.refused
        ));
    }
    (outcome.resent_chunks, outcome.chunks) = crate::spy::resent(&spy);
    outcome.failures.extend(checks::agent_files(
        &world.agent_dir(),
        MODEL_ID,
        2,
        &versions[1],
    ));
    outcome
        .failures
        .extend(checks::temporary_files(&world.hub_dir()));
    let label = injected
        .label
        .as_ref()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let registered = [(1, &versions[0]), (2, &versions[1])];
    outcome
        .failures
        .extend(checks::hub_state(&world, MODEL_ID, &registered, DEPLOYMENT, "m:2", label).await);
    (outcome.hub_rss_kib, outcome.agent_rss_kib) = world.rss_kib();
    if outcome.agent_rss_kib > AGENT_RSS_BOUND_KIB || outcome.hub_rss_kib > HUB_RSS_BOUND_KIB {
        outcome.failures.push(format!(
            "memory out of bounds: hub {} KiB, agent {} KiB",
            outcome.hub_rss_kib, outcome.agent_rss_kib
        ));
    }
    if !outcome.passed() {
        keep_logs(&world, seed);
    }
    outcome
}

fn skipped(mut outcome: Outcome, why: &str) -> Outcome {
    if crate::ci() {
        outcome
            .failures
            .push(format!("{why}, and EDGESHIP_CI=1 requires it"));
    } else {
        outcome.skipped = Some(why.to_owned());
    }
    outcome
}

/// Copies a failed trial's logs next to the system's temporary folder, named by seed.
fn keep_logs(world: &World, seed: u64) {
    let kept = std::env::temp_dir().join(format!("edgeship-trial-{seed}-logs"));
    let _ = std::fs::create_dir_all(&kept);
    for log in ["hub.log", "agent.log"] {
        let _ = std::fs::copy(world.dir.path().join(log), kept.join(log));
    }
}

/// `edgeship model register` of `folder` as the next version of the trials' model.
pub fn register(hub: &str, folder: &Path) {
    let sample = crate::fixture("diabetes/sample_input.json");
    crate::edgeship(
        hub,
        &[
            "model",
            "register",
            "-n",
            MODEL_ID,
            "-p",
            &folder.to_string_lossy(),
            "--sample-input",
            &sample.to_string_lossy(),
        ],
    );
}

/// `edgeship deploy apply` of the trial's deployment on `version`.
fn apply(world: &World, version: u32) {
    apply_deployment(world, DEPLOYMENT, version, world.port);
}

/// `edgeship deploy apply` of deployment `name`: the trials' model at `version`, on `port`
/// of the world's device.
pub fn apply_deployment(world: &World, name: &str, version: u32, port: u16) {
    let manifest = world.dir.path().join(format!("{name}-{version}.yaml"));
    let text = format!(
        "name: {name}\nmodel: {MODEL_ID}:{version}\nendpoint: {{port: {port}}}\ntarget: {{devices: [{}]}}\n",
        world.device
    );
    std::fs::write(&manifest, text).expect("write manifest");
    crate::edgeship(
        &world.hub_url(),
        &["deploy", "apply", "-f", &manifest.to_string_lossy()],
    );
}

/// Waits until the hub reports the trial's deployment healthy with its device on `version`.
async fn converge(world: &World, version: u32, limit: Duration) -> Result<(), String> {
    wait_converged(world, DEPLOYMENT, version, limit).await
}

/// Waits until the hub reports deployment `name` healthy with its device on `version`.
pub async fn wait_converged(
    world: &World,
    name: &str,
    version: u32,
    limit: Duration,
) -> Result<(), String> {
    let want = format!("{MODEL_ID}:{version}");
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer from the hub");
    while Instant::now() < deadline {
        if let Some(found) = world.deployment(name).await {
            let healthy = found.state() == edgeship_proto::v1::ServiceState::Healthy;
            if healthy && found.devices.iter().all(|d| d.serving_model == want) {
                return Ok(());
            }
            last = format!(
                "{:?}: {:?}",
                found.state(),
                found
                    .devices
                    .iter()
                    .map(|d| format!("{} {:?} {}", d.serving_model, d.state(), d.error))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the hub did not report {want} healthy within {limit:?}; last: {last}"
    ))
}

async fn endpoint_serves(world: &World, version: &str, limit: Duration) -> Result<(), String> {
    let body = serde_json::json!({"data": crate::expected("diabetes")["inputs"]});
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match crate::score(world.endpoint(), &body).await {
            Ok(answer) if answer.header(MODEL_HEADER) == Some(version) => return Ok(()),
            Ok(answer) => last = format!("{:?}", answer.header(MODEL_HEADER)),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the hub reports {version}, the endpoint still answers as {last} after {limit:?}"
    ))
}
