//! Table-driven tests of the module above.

use super::*;
use crate::fleet::spec::{AbortPolicy, HealthGate, WaveSize};

const S: i64 = 1000;

fn fleet(n: usize) -> Vec<Observed> {
    (0..n)
        .map(|i| Observed {
            device_id: format!("d{i:03}"),
            online: true,
            state: None,
            error: String::new(),
            error_rate: 0.0,
            p99_ms: 0.0,
            window_requests: 0,
        })
        .collect()
}

/// Every moved device reports the new revision with `state`.
fn report(devices: &mut [Observed], rollout: &Rollout, state: ServiceState) {
    for d in devices.iter_mut() {
        if rollout.moved.contains_key(&d.device_id) {
            d.state = Some(state);
        }
    }
}

fn new_rollout() -> Rollout {
    Rollout::new("web", 2, Some(1), "apply".into(), vec![], 0)
}

fn waves(sizes: &[WaveSize], hold_seconds: u32) -> RolloutPolicy {
    RolloutPolicy {
        strategy: Strategy::Waves(sizes.to_vec()),
        health_gate: HealthGate {
            min_healthy_seconds: hold_seconds,
            ..HealthGate::default()
        },
        ..RolloutPolicy::default()
    }
}

fn abort(on_failure: OnFailure) -> RolloutPolicy {
    RolloutPolicy {
        abort: Some(AbortPolicy {
            max_failure_percent: 20.0,
            min_devices: 3,
            on_failure,
        }),
        ..RolloutPolicy::default()
    }
}

#[test]
fn all_at_once_moves_every_device_and_completes_once_all_are_healthy() {
    let policy = RolloutPolicy::default();
    let mut rollout = new_rollout();
    let mut devices = fleet(10);
    let moved = step(&policy, &mut rollout, &devices, 0);
    assert_eq!(moved.reassigned.len(), 10);
    assert_eq!(rollout.phase, Phase::Progressing);
    report(&mut devices, &rollout, ServiceState::Healthy);
    devices[3].state = None; // still on its way
    step(&policy, &mut rollout, &devices, S);
    assert_eq!(rollout.phase, Phase::Progressing);
    devices[3].state = Some(ServiceState::Healthy);
    step(&policy, &mut rollout, &devices, 2 * S);
    assert_eq!(rollout.phase, Phase::Completed);
    assert_eq!(rollout.finished_ms, Some(2 * S));
}

#[test]
fn waves_advance_only_after_their_gate_holds() {
    let policy = waves(
        &[
            WaveSize::Percent(10.0),
            WaveSize::Percent(50.0),
            WaveSize::Percent(100.0),
        ],
        30,
    );
    let mut rollout = new_rollout();
    let mut devices = fleet(20);
    // (time, what the moved devices report, moved after the step, waves started)
    let table: &[(i64, Option<ServiceState>, usize, usize)] = &[
        (0, None, 2, 1),
        (10 * S, Some(ServiceState::Healthy), 2, 1), // healthy since 10 s
        (39 * S, Some(ServiceState::Healthy), 2, 1), // held 29 s: not yet
        (40 * S, Some(ServiceState::Healthy), 10, 2), // held 30 s: wave 2 moves
        (41 * S, None, 10, 2),                       // wave 2 on its way
        (50 * S, Some(ServiceState::Healthy), 10, 2),
        (80 * S, Some(ServiceState::Healthy), 20, 3),
    ];
    for (at, state, moved, started) in table {
        if let Some(state) = state {
            report(&mut devices, &rollout, *state);
        }
        step(&policy, &mut rollout, &devices, *at);
        assert_eq!(rollout.moved.len(), *moved, "moved at {at} ms");
        assert_eq!(rollout.waves.len(), *started, "waves at {at} ms");
    }
    assert!(rollout.waves[0].passed_ms.is_some() && rollout.waves[1].passed_ms.is_some());
    report(&mut devices, &rollout, ServiceState::Healthy);
    step(&policy, &mut rollout, &devices, 81 * S);
    step(&policy, &mut rollout, &devices, 111 * S);
    assert_eq!(rollout.phase, Phase::Completed);
}

#[test]
fn max_unavailable_moves_devices_a_few_at_a_time() {
    let policy = RolloutPolicy {
        max_unavailable: Some(2),
        ..RolloutPolicy::default()
    };
    let mut rollout = new_rollout();
    let mut devices = fleet(5);
    for (at, moved) in [(0, 2), (S, 4), (2 * S, 5)] {
        step(&policy, &mut rollout, &devices, at);
        assert_eq!(rollout.moved.len(), moved, "at {at} ms");
        report(&mut devices, &rollout, ServiceState::Healthy);
    }
    step(&policy, &mut rollout, &devices, 3 * S);
    assert_eq!(rollout.phase, Phase::Completed);
}

#[test]
fn failures_above_the_threshold_roll_every_moved_device_back() {
    let policy = abort(OnFailure::Rollback);
    let mut rollout = new_rollout();
    let mut devices = fleet(10);
    step(&policy, &mut rollout, &devices, 0);
    report(&mut devices, &rollout, ServiceState::Healthy);
    devices[0].state = Some(ServiceState::Failed);
    devices[0].error = "self-test failed".into();
    devices[1].state = Some(ServiceState::Failed);
    // 1 of 10 failed is 10%: under 20%, the rollout goes on.
    devices[1].state = Some(ServiceState::Healthy);
    let decision = step(&policy, &mut rollout, &devices, S);
    assert!(decision.reassigned.is_empty());
    assert_eq!(rollout.phase, Phase::Completed, "9 of 10 healthy, 1 failed");

    let mut rollout = new_rollout();
    step(&policy, &mut rollout, &devices, 0);
    for d in &mut devices[..3] {
        d.state = Some(ServiceState::Failed);
    }
    let decision = step(&policy, &mut rollout, &devices, S);
    assert_eq!(
        decision.reassigned.len(),
        10,
        "every moved device goes back"
    );
    assert!(matches!(&rollout.phase, Phase::RolledBack(why) if why.contains("3 of 10")));
    assert_eq!(rollout.revision_for("d000"), Some(1));
}

#[test]
fn the_abort_rule_waits_for_min_devices_and_can_pause_instead() {
    let policy = RolloutPolicy {
        max_unavailable: Some(1),
        ..abort(OnFailure::Pause)
    };
    let mut rollout = new_rollout();
    let mut devices = fleet(10);
    step(&policy, &mut rollout, &devices, 0);
    report(&mut devices, &rollout, ServiceState::Failed);
    // One moved, one failed: 100%, but below min_devices (3): no verdict yet; and the
    // failed device keeps the unavailability budget used up.
    step(&policy, &mut rollout, &devices, S);
    assert_eq!(rollout.phase, Phase::Progressing);
    assert_eq!(rollout.moved.len(), 1);

    let policy = abort(OnFailure::Pause);
    let mut rollout = new_rollout();
    step(&policy, &mut rollout, &devices, 0);
    for d in &mut devices[..4] {
        d.state = Some(ServiceState::Unhealthy);
    }
    let decision = step(&policy, &mut rollout, &devices, S);
    assert!(decision.reassigned.is_empty(), "a pause moves nobody back");
    assert!(matches!(rollout.phase, Phase::Paused(_)));
    assert_eq!(rollout.revision_for("d000"), Some(2), "moved devices stay");
}

#[test]
fn a_silent_device_times_out_as_a_failure_and_counts_again_when_it_returns() {
    let policy = RolloutPolicy {
        device_timeout_seconds: 60,
        ..RolloutPolicy::default()
    };
    let mut rollout = new_rollout();
    let mut devices = fleet(3);
    step(&policy, &mut rollout, &devices, 0);
    report(&mut devices, &rollout, ServiceState::Healthy);
    devices[2].state = None;
    devices[2].online = false;
    step(&policy, &mut rollout, &devices, 61 * S);
    let failure = &rollout.moved["d002"].failure;
    assert!(
        failure.contains("timed out") && failure.contains("offline"),
        "{failure}"
    );
    assert_eq!(rollout.phase, Phase::Progressing);
    devices[2].state = Some(ServiceState::Healthy);
    devices[2].online = true;
    step(&policy, &mut rollout, &devices, 70 * S);
    assert_eq!(rollout.phase, Phase::Completed);
}

#[test]
fn a_latency_regression_trips_the_gate_once_there_are_enough_requests() {
    let policy = RolloutPolicy {
        health_gate: HealthGate {
            max_p99_ms: Some(50.0),
            ..HealthGate::default()
        },
        ..abort(OnFailure::Rollback)
    };
    let mut rollout = new_rollout();
    let mut devices = fleet(4);
    step(&policy, &mut rollout, &devices, 0);
    report(&mut devices, &rollout, ServiceState::Healthy);
    for d in &mut devices {
        d.p99_ms = 80.0;
        d.window_requests = MIN_GATE_REQUESTS - 1;
    }
    step(&policy, &mut rollout, &devices, S);
    assert_eq!(rollout.phase, Phase::Completed, "too few requests to judge");

    let mut rollout = new_rollout();
    step(&policy, &mut rollout, &devices, 0);
    for d in &mut devices {
        d.window_requests = MIN_GATE_REQUESTS;
    }
    step(&policy, &mut rollout, &devices, S);
    assert!(
        matches!(&rollout.phase, Phase::RolledBack(why) if why.contains("p99 latency 80.0 ms above 50 ms")),
        "{:?}",
        rollout.phase
    );
}

#[test]
fn exponential_rollouts_speed_up_to_their_cap() {
    let rate = ExponentialRate {
        base_per_minute: 2,
        increment_factor: 2.0,
        max_per_minute: 5,
    };
    let allowed: Vec<usize> = (0..4)
        .map(|m| exponential_allowance(&rate, m * 60 * S))
        .collect();
    assert_eq!(allowed, [2, 6, 11, 16]);
    let policy = RolloutPolicy {
        strategy: Strategy::Exponential(rate),
        ..RolloutPolicy::default()
    };
    let mut rollout = new_rollout();
    let mut devices = fleet(8);
    step(&policy, &mut rollout, &devices, 0);
    assert_eq!(rollout.moved.len(), 2);
    report(&mut devices, &rollout, ServiceState::Healthy);
    step(&policy, &mut rollout, &devices, 59 * S);
    assert_eq!(
        rollout.moved.len(),
        2,
        "the first minute's allowance is spent"
    );
    step(&policy, &mut rollout, &devices, 60 * S);
    assert_eq!(rollout.moved.len(), 6);
}

#[test]
fn which_revision_a_device_runs_in_each_phase() {
    let mut rollout = new_rollout();
    rollout.moved.insert(
        "moved".into(),
        Moved {
            at_ms: 0,
            wave: 0,
            healthy_since_ms: None,
            failure: String::new(),
        },
    );
    let table = [
        (Phase::Progressing, Some(2), Some(1)),
        (Phase::Paused("x".into()), Some(2), Some(1)),
        (Phase::Aborted("x".into()), Some(2), Some(1)),
        (Phase::Superseded, Some(2), Some(1)),
        (Phase::Completed, Some(2), Some(2)),
        (Phase::RolledBack("x".into()), Some(1), Some(1)),
    ];
    for (phase, moved, other) in table {
        rollout.phase = phase.clone();
        assert_eq!(rollout.revision_for("moved"), moved, "{phase:?}");
        assert_eq!(rollout.revision_for("other"), other, "{phase:?}");
    }
    let mut first = Rollout::new("web", 1, None, "created".into(), vec![], 0);
    assert_eq!(
        first.revision_for("other"),
        None,
        "not on a new deployment's device yet"
    );
    first.phase = Phase::RolledBack("x".into());
    assert_eq!(first.revision_for("other"), None);
}

#[test]
fn devices_are_picked_in_a_stable_spread_out_order() {
    let policy = waves(&[WaveSize::Devices(3), WaveSize::Percent(100.0)], 0);
    let devices = fleet(30);
    let mut a = new_rollout();
    let mut b = new_rollout();
    step(&policy, &mut a, &devices, 0);
    let mut reversed = devices.clone();
    reversed.reverse();
    step(&policy, &mut b, &reversed, 0);
    assert_eq!(
        a.moved.keys().collect::<Vec<_>>(),
        b.moved.keys().collect::<Vec<_>>()
    );
    let first_three: Vec<&String> = a.moved.keys().collect();
    assert_ne!(
        first_three,
        ["d000", "d001", "d002"],
        "not simply the first ids"
    );
}

#[test]
fn a_policy_edited_mid_rollout_takes_effect_without_tripping() {
    let three = waves(
        &[
            WaveSize::Devices(1),
            WaveSize::Devices(2),
            WaveSize::Percent(100.0),
        ],
        0,
    );
    let mut rollout = new_rollout();
    let mut devices = fleet(6);
    for at in 0..3 {
        step(&three, &mut rollout, &devices, at * S);
        report(&mut devices, &rollout, ServiceState::Healthy);
    }
    assert_eq!(rollout.waves.len(), 3);
    // Fewer waves now, then none at all: the rollout goes on under the new policy.
    let one = waves(&[WaveSize::Percent(100.0)], 0);
    step(&one, &mut rollout, &devices, 10 * S);
    report(&mut devices, &rollout, ServiceState::Healthy);
    step(&RolloutPolicy::default(), &mut rollout, &devices, 11 * S);
    assert_eq!(rollout.moved.len(), 6);
    assert_eq!(rollout.phase, Phase::Completed);
}
