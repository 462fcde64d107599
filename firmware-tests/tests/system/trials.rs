//! The fault trials CI runs: one trial of each fault kind from a fixed seed, and the seeds of
//! trials that once found a defect (each a regression test). `just trials N` runs N random
//! ones with release processes (`firmware-tests/benches/trials.rs`).

use testkit::trials::{self, FaultKind, Outcome};

/// Seeds that found defects, with what they found; each must pass from now on.
const REGRESSIONS: &[(u64, &str)] = &[];

fn report(outcome: &Outcome) -> Option<String> {
    eprintln!(
        "seed {} {}: {}; converged after {:?}; re-sent {} of {} chunks; served {:?}, refused {}",
        outcome.seed,
        outcome.kind.name(),
        outcome.injected,
        outcome.convergence,
        outcome.resent_chunks,
        outcome.chunks,
        outcome.served.by_version,
        outcome.served.refused,
    );
    if let Some(why) = &outcome.skipped {
        eprintln!(
            "SKIP: fault trial {} ({}): {why}; set EDGESHIP_CI=1 to make this a failure",
            outcome.seed,
            outcome.kind.name()
        );
    }
    (!outcome.passed()).then(|| {
        format!(
            "seed {} ({}): {}",
            outcome.seed,
            outcome.kind.name(),
            outcome.failures.join(" | ")
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fixed_seed_trial_of_each_fault_kind_ends_on_the_new_version_with_nothing_lost() {
    let mut failures = Vec::new();
    for (index, kind) in FaultKind::ALL.into_iter().enumerate() {
        let outcome = trials::run_kind(7_000 + index as u64, kind).await;
        failures.extend(report(&outcome));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_once_found_a_defect_pass() {
    let mut failures = Vec::new();
    for (seed, found) in REGRESSIONS {
        eprintln!("regression seed {seed}: {found}");
        failures.extend(report(&trials::run(*seed).await));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
