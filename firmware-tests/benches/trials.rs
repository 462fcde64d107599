//! Fault trials with real release processes (`just trials N`): N trials, each a version roll
//! struck by a fault drawn from its seed (see `testkit::trials`), then a summary by fault
//! kind: failures, convergence time after the fault (median and p99), chunks re-sent.
//!
//! `EDGESHIP_TRIALS` (default 16) trials from seed `EDGESHIP_TRIAL_SEED` (default: the clock,
//! printed), or exactly the seeds in `EDGESHIP_TRIAL_SEEDS` (comma-separated) to replay some;
//! `EDGESHIP_TRIALS_PARALLEL` (default 2) run at once.
//! A failed trial keeps its logs in `$TMPDIR/edgeship-trial-SEED-logs`. Exits 1 when any
//! trial failed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::trials::{self, FaultKind, Outcome};

fn main() {
    testkit::bench_main(async { !run().await });
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seeds() -> Vec<u64> {
    if let Ok(list) = std::env::var("EDGESHIP_TRIAL_SEEDS") {
        return list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
    }
    let count = env_u64("EDGESHIP_TRIALS").unwrap_or(16);
    let first = env_u64("EDGESHIP_TRIAL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() * 1000)
            .unwrap_or_default()
    });
    (first..first + count).collect()
}

async fn run() -> bool {
    let seeds = seeds();
    println!(
        "{} fault trials from seed {} (replay one: EDGESHIP_TRIAL_SEEDS=SEED)",
        seeds.len(),
        seeds.first().copied().unwrap_or_default()
    );
    // Trials spend most of their time waiting out faults: a few at once keep the machine
    // busy without starving any (each has its own processes, ports and folders).
    let parallel = env_u64("EDGESHIP_TRIALS_PARALLEL").unwrap_or(2).max(1) as usize;
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(seeds.len());
    let mut running = tokio::task::JoinSet::new();
    for seed in seeds {
        if running.len() >= parallel
            && let Some(Ok(outcome)) = running.join_next().await
        {
            print_trial(&outcome);
            outcomes.push(outcome);
        }
        running.spawn(trials::run(seed));
    }
    while let Some(finished) = running.join_next().await {
        if let Ok(outcome) = finished {
            print_trial(&outcome);
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by_key(|o| o.seed);
    summary(&outcomes, started.elapsed());
    outcomes.iter().any(|o| !o.passed())
}

fn print_trial(o: &Outcome) {
    let verdict = match (&o.skipped, o.passed()) {
        (Some(why), _) => format!("skipped: {why}"),
        (None, true) => "ok".to_owned(),
        (None, false) => format!("FAILED: {}", o.failures.join(" | ")),
    };
    let served: Vec<String> = o
        .served
        .by_version
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    println!(
        "seed {} {}: {}; set up in {}, converged {} after the fault, {} after the apply; re-sent {} of {} chunks; served {} refused {}; rss hub {} agent {} KiB: {verdict}",
        o.seed,
        o.kind.name(),
        o.injected,
        o.setup
            .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        o.convergence
            .map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        o.roll
            .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        o.resent_chunks,
        o.chunks,
        served.join(", "),
        o.served.refused,
        o.hub_rss_kib,
        o.agent_rss_kib,
    );
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.2} s", sorted[index].as_secs_f64())
}

fn summary(outcomes: &[Outcome], took: Duration) {
    let mut by_kind: BTreeMap<FaultKind, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_kind.entry(o.kind).or_default().push(o);
    }
    println!(
        "\n| fault | trials | failed | skipped | converged after the fault: p50 | p99 | worst | apply → converged: p50 | p99 | chunks re-sent: total (max) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (kind, list) in &by_kind {
        let mut times: Vec<Duration> = list.iter().filter_map(|o| o.convergence).collect();
        times.sort();
        let mut rolls: Vec<Duration> = list.iter().filter_map(|o| o.roll).collect();
        rolls.sort();
        let resent: u32 = list.iter().map(|o| o.resent_chunks).sum();
        let worst_resent = list.iter().map(|o| o.resent_chunks).max().unwrap_or(0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {resent} ({worst_resent}) |",
            kind.name(),
            list.len(),
            list.iter().filter(|o| !o.passed()).count(),
            list.iter().filter(|o| o.skipped.is_some()).count(),
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times
                .last()
                .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            percentile(&rolls, 0.5),
            percentile(&rolls, 0.99),
        );
    }
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for phase in outcomes.iter().flat_map(|o| &o.phases) {
        *phases.entry(phase).or_default() += 1;
    }
    println!("\nagent kills by where they landed in the roll: {phases:?}");
    let resent: Vec<u32> = outcomes
        .iter()
        .filter(|o| o.kind == FaultKind::AgentKill)
        .map(|o| o.resent_chunks)
        .collect();
    println!(
        "chunks re-sent after agent kills: {} in {} trials, at most {} in one",
        resent.iter().sum::<u32>(),
        resent.len(),
        resent.iter().max().unwrap_or(&0)
    );
    let wrong: u64 = outcomes.iter().map(|o| o.served.wrong).sum();
    let answered: u64 = outcomes
        .iter()
        .flat_map(|o| o.served.by_version.values())
        .sum();
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.seed)
        .collect();
    println!(
        "\n{} trials in {:.0} s: {} failed {failed:?}; {answered} scoring answers, {wrong} wrong",
        outcomes.len(),
        took.as_secs_f64(),
        failed.len()
    );
}
