//! The fault trials CI runs: one trial of each fault kind from a fixed seed, and the seeds of
//! trials that once found a defect (each a regression test). `just trials N` runs N random
//! ones with release processes (`firmware-tests/benches/trials.rs`).

use testkit::trials::{self, FaultKind, Outcome};

/// Seeds that found defects, with what they found; each must pass from now on.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        1,
        "damaged agent files: the new version's weights, truncated in the cache while the agent \
         was down, were served after the restart (files found at start are now hashed before \
         their first use)",
    ),
    (
        7,
        "full disk: the download that hit ENOSPC failed for good and the device never took the \
         new version once the disk had room, leaving state.json.tmp behind (disk errors are now \
         retried with backoff; a failed state write removes its temporary file)",
    ),
    (
        111,
        "damaged agent files: a truncated state.json stopped the agent from starting at all \
         (it is now set aside as state.json.damaged and the agent starts afresh from the \
         hub's desired state)",
    ),
    (
        114,
        "damaged agent files: the same, with a staged file of the old version removed and the \
         agent killed mid-download",
    ),
    (
        20_261_127_108,
        "damaged agent files: bytes flipped in state.json and desired.json that still parsed \
         were taken as they were; the changed sample input failed the self-test and the device \
         stayed Failed (both files now carry a checksum line, and a mismatch counts as damage)",
    ),
    (
        20_261_127_159,
        "damaged agent files: with desired.json unreadable after a kill mid-roll, the agent \
         never got the desired state again (rumqttd does not resend a retained message on a \
         repeated subscribe of a restored session) and stayed on the old version (the \
         hub sends a device its desired state again whenever its birth comes live)",
    ),
    (
        20_261_127_107,
        "damaged agent files: killed just after taking version 2's desired state and before \
         saving it, the agent restarted on version 1 and never heard of version 2 again (the \
         same fix)",
    ),
    (
        20_261_127_867,
        "damaged agent files: the serving version's cached weights truncated and desired.json \
         cut short; the agent could not restore the workload, and when the hub sent the same \
         desired state again it only reported, serving nothing (a desired state the agent \
         already applied is now applied again when a workload of it is not serving)",
    ),
];

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
