//! The rollout engine: how a deployment moves its devices from one revision to the next.
//! [`step`] is a pure function of the policy, the rollout's record, what the targeted devices
//! report, and the time; `Fleet` stores the record it returns and recomputes the desired
//! states of the devices it moved. The table-driven tests below pin the rules.
//!
//! Rules: devices move in a stable order (a hash of deployment and device id, so waves are
//! spread over the fleet and a restarted hub picks the same ones); a wave's devices must all be
//! `Healthy`, for `min_healthy_seconds`, with metrics inside the gate, before the next wave
//! moves; at most `max_unavailable` moved devices are not yet healthy at any moment; a moved
//! device that is `Failed`, `Unschedulable`, `Unhealthy` or silent past its timeout is a
//! failure, and once `min_devices` have moved a failure share above `max_failure_percent`
//! rolls the moved devices back or pauses, as the policy says.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use edgeship_domain::ServiceState;
use serde::{Deserialize, Serialize};

use super::spec::{ExponentialRate, OnFailure, RolloutPolicy, Strategy};

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum Phase {
    Progressing,
    /// Held by an operator or by the abort rule (`on_failure: pause`).
    Paused(String),
    Completed,
    /// Every moved device was sent back to the previous revision.
    RolledBack(String),
    /// Stopped by an operator: moved devices keep the new revision, the rest the old one.
    Aborted(String),
    /// A newer revision started before this one finished.
    Superseded,
}

impl Phase {
    pub fn is_active(&self) -> bool {
        matches!(self, Phase::Progressing | Phase::Paused(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Paused(_) => "Paused",
            Phase::Completed => "Completed",
            Phase::RolledBack(_) => "RolledBack",
            Phase::Aborted(_) => "Aborted",
            Phase::Superseded => "Superseded",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Phase::Paused(r) | Phase::RolledBack(r) | Phase::Aborted(r) => r,
            _ => "",
        }
    }
}

/// One wave's progress, for `rollout status` and the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveRecord {
    /// Devices this wave brings the moved total to (cumulative).
    pub target: usize,
    pub started_ms: i64,
    /// When its gate passed.
    pub passed_ms: Option<i64>,
}

/// A device the rollout moved to the new revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub at_ms: i64,
    pub wave: usize,
    /// Since when it has reported the new revision `Healthy` (and inside the gate).
    pub healthy_since_ms: Option<i64>,
    /// Why it counts as failed now; empty when it does not.
    pub failure: String,
}

/// A deployment's move from `from_revision` (none for a new deployment) to `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub deployment: String,
    pub revision: u64,
    pub from_revision: Option<u64>,
    /// What started it: `created: diabetes:3`, `apply: diabetes:4`, `rollback to revision 2: …`.
    pub cause: String,
    /// The spec fields that changed, one line each.
    pub changes: Vec<String>,
    pub phase: Phase,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub waves: Vec<WaveRecord>,
    pub moved: BTreeMap<String, Moved>,
    /// Devices the deployment targeted at the last step (for status without reading every
    /// device record).
    #[serde(default)]
    pub targeted: usize,
    /// A history note (a change that moved no device, a deletion), not a rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub note: bool,
}

impl Rollout {
    pub fn new(
        deployment: &str,
        revision: u64,
        from_revision: Option<u64>,
        cause: String,
        changes: Vec<String>,
        now_ms: i64,
    ) -> Self {
        Self {
            deployment: deployment.to_owned(),
            revision,
            from_revision,
            cause,
            changes,
            phase: Phase::Progressing,
            started_ms: now_ms,
            finished_ms: None,
            waves: Vec::new(),
            moved: BTreeMap::new(),
            targeted: 0,
            note: false,
        }
    }

    /// Which revision `device` runs under this rollout; `None`: the deployment is not on it
    /// yet (a new deployment's device that has not moved).
    pub fn revision_for(&self, device: &str) -> Option<u64> {
        let moved = self.moved.contains_key(device);
        match &self.phase {
            Phase::Completed => Some(self.revision),
            Phase::RolledBack(_) => self.from_revision,
            Phase::Progressing | Phase::Paused(_) | Phase::Aborted(_) | Phase::Superseded => {
                if moved {
                    Some(self.revision)
                } else {
                    self.from_revision
                }
            }
        }
    }

    fn finish(&mut self, phase: Phase, now_ms: i64) {
        self.phase = phase;
        self.finished_ms = Some(now_ms);
    }

    /// Devices moved that count as failed now.
    pub fn failures(&self) -> impl Iterator<Item = (&String, &Moved)> {
        self.moved.iter().filter(|(_, m)| !m.failure.is_empty())
    }
}

/// What the hub knows of one targeted device, for one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub device_id: String,
    pub online: bool,
    /// Its report on this deployment, once it has caught up with its desired state and serves
    /// this rollout's revision; `None` while it is still on its way.
    pub state: Option<ServiceState>,
    pub error: String,
    /// Endpoint metrics over the agent's recent window.
    pub error_rate: f64,
    pub p99_ms: f64,
    pub window_requests: u64,
}

/// What one step decided, beyond the record it updated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Devices whose revision changed (moved forward, or sent back): their desired states
    /// must be recomputed.
    pub reassigned: Vec<String>,
}

/// Requests below this in a device's window are too few to judge its error rate or p99.
pub const MIN_GATE_REQUESTS: u64 = 20;

/// Advances `rollout` by what `devices` (every device the deployment targets now) report.
pub fn step(
    policy: &RolloutPolicy,
    rollout: &mut Rollout,
    devices: &[Observed],
    now_ms: i64,
) -> Decision {
    let mut decision = Decision::default();
    rollout.targeted = devices.len();
    observe(policy, rollout, devices, now_ms);
    if rollout.phase != Phase::Progressing {
        return decision;
    }
    if let Some(abort) = &policy.abort {
        let moved = rollout.moved.len();
        let failed = rollout.failures().count();
        if moved >= abort.min_devices as usize
            && failed as f64 * 100.0 > abort.max_failure_percent * moved as f64
        {
            let examples: Vec<String> = rollout
                .failures()
                .take(3)
                .map(|(id, m)| format!("{id}: {}", m.failure))
                .collect();
            let reason = format!(
                "{failed} of {moved} moved devices failed ({:.0}%, above {}%): {}",
                failed as f64 * 100.0 / moved as f64,
                abort.max_failure_percent,
                examples.join("; ")
            );
            match abort.on_failure {
                OnFailure::Rollback => {
                    decision.reassigned = rollout.moved.keys().cloned().collect();
                    rollout.finish(Phase::RolledBack(reason), now_ms);
                }
                OnFailure::Pause => rollout.phase = Phase::Paused(reason),
            }
            return decision;
        }
    }
    let population = devices.len();
    let mut order: Vec<&Observed> = devices.iter().collect();
    // Keys computed once per device, not once per comparison.
    order.sort_by_cached_key(|d| {
        (
            placement_key(&rollout.deployment, &d.device_id),
            d.device_id.clone(),
        )
    });
    let moved_here = order
        .iter()
        .filter(|d| rollout.moved.contains_key(&d.device_id))
        .count();

    // How many devices may have moved by now.
    let allowed = match &policy.strategy {
        Strategy::Waves(waves) if !waves.is_empty() => {
            // The policy may have changed since the rollout started (an apply that only
            // edits `rollout` is no new revision): never past its last wave.
            let mut wave = rollout.waves.len().saturating_sub(1).min(waves.len() - 1);
            ensure_wave(rollout, wave, waves[wave].devices(population), now_ms);
            let target = waves[wave].devices(population);
            if moved_here >= target && gate_passed(policy, rollout, &order, now_ms) {
                rollout.waves[wave].passed_ms.get_or_insert(now_ms);
                if wave + 1 < waves.len() {
                    wave += 1;
                    ensure_wave(rollout, wave, waves[wave].devices(population), now_ms);
                }
            }
            waves[wave].devices(population)
        }
        Strategy::Exponential(rate) => {
            ensure_wave(rollout, 0, population, now_ms);
            exponential_allowance(rate, now_ms - rollout.started_ms).min(population)
        }
        // All at once (as is a wave list that is somehow empty).
        Strategy::AllAtOnce | Strategy::Waves(_) => {
            ensure_wave(rollout, 0, population, now_ms);
            population
        }
    };
    let done = moved_here >= population && allowed >= population;
    if done && gate_passed(policy, rollout, &order, now_ms) {
        if let Some(last) = rollout.waves.last_mut() {
            last.passed_ms.get_or_insert(now_ms);
        }
        rollout.finish(Phase::Completed, now_ms);
        return decision;
    }
    // Move more, within the allowance and the unavailability budget.
    let unavailable = order
        .iter()
        .filter_map(|d| rollout.moved.get(&d.device_id))
        .filter(|m| m.healthy_since_ms.is_none())
        .count();
    let budget = policy
        .max_unavailable
        .map_or(usize::MAX, |max| (max as usize).saturating_sub(unavailable));
    let wave = rollout.waves.len().saturating_sub(1);
    let to_move: Vec<String> = order
        .iter()
        .filter(|d| !rollout.moved.contains_key(&d.device_id))
        .take(allowed.saturating_sub(moved_here).min(budget))
        .map(|d| d.device_id.clone())
        .collect();
    for id in to_move {
        rollout.moved.insert(
            id.clone(),
            Moved {
                at_ms: now_ms,
                wave,
                healthy_since_ms: None,
                failure: String::new(),
            },
        );
        decision.reassigned.push(id);
    }
    decision
}

/// Updates each moved device's health and failure from its report.
fn observe(policy: &RolloutPolicy, rollout: &mut Rollout, devices: &[Observed], now_ms: i64) {
    let timeout_ms = i64::from(policy.device_timeout_seconds) * 1000;
    let gate = &policy.health_gate;
    for device in devices {
        let Some(moved) = rollout.moved.get_mut(&device.device_id) else {
            continue;
        };
        let judged = device.window_requests >= MIN_GATE_REQUESTS;
        let breach = match (gate.max_error_rate, gate.max_p99_ms) {
            (Some(max), _) if judged && device.error_rate > max => {
                Some(format!("error rate {:.3} above {max}", device.error_rate))
            }
            (_, Some(max)) if judged && device.p99_ms > max => Some(format!(
                "p99 latency {:.1} ms above {max} ms",
                device.p99_ms
            )),
            _ => None,
        };
        let failure = match (device.state, breach) {
            (Some(ServiceState::Healthy), Some(breach)) => breach,
            (Some(ServiceState::Healthy), None) => String::new(),
            (Some(state @ (ServiceState::Failed | ServiceState::Unschedulable)), _)
            | (Some(state @ ServiceState::Unhealthy), _) => {
                if device.error.is_empty() {
                    state.to_string()
                } else {
                    format!("{state}: {}", device.error)
                }
            }
            _ if now_ms - moved.at_ms > timeout_ms => format!(
                "timed out: not healthy {} s after it was moved{}",
                policy.device_timeout_seconds,
                if device.online { "" } else { " (offline)" }
            ),
            _ => String::new(),
        };
        let healthy = device.state == Some(ServiceState::Healthy) && failure.is_empty();
        moved.healthy_since_ms = match (healthy, moved.healthy_since_ms) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now_ms),
            (false, _) => None,
        };
        moved.failure = failure;
    }
}

/// Every moved device among `order` healthy for long enough. A failing device is tolerated
/// only under an abort rule that has judged the share acceptable (enough devices moved, the
/// share within it, or `step` would have stopped the rollout); without one, or before it can
/// judge, a failure holds the gate until the device recovers or an operator acts.
fn gate_passed(
    policy: &RolloutPolicy,
    rollout: &Rollout,
    order: &[&Observed],
    now_ms: i64,
) -> bool {
    let hold_ms = i64::from(policy.health_gate.min_healthy_seconds) * 1000;
    let tolerated = policy
        .abort
        .is_some_and(|a| rollout.moved.len() >= a.min_devices as usize);
    order
        .iter()
        .filter_map(|d| rollout.moved.get(&d.device_id))
        .all(|m| match m.failure.is_empty() {
            true => m.healthy_since_ms.is_some_and(|s| now_ms - s >= hold_ms),
            false => tolerated,
        })
}

fn ensure_wave(rollout: &mut Rollout, index: usize, target: usize, now_ms: i64) {
    while rollout.waves.len() <= index {
        rollout.waves.push(WaveRecord {
            target,
            started_ms: now_ms,
            passed_ms: None,
        });
    }
    // The population can grow or shrink while a wave runs.
    rollout.waves[index].target = target;
}

/// Devices allowed to have moved `elapsed_ms` after the start: the first minute's rate at
/// once, then each minute's rate (growing by the factor, capped) as the minute begins.
fn exponential_allowance(rate: &ExponentialRate, elapsed_ms: i64) -> usize {
    let minutes = usize::try_from(elapsed_ms.max(0) / 60_000).unwrap_or(usize::MAX);
    let mut per_minute = f64::from(rate.base_per_minute);
    let mut total = 0.0;
    for _ in 0..=minutes.min(10_000) {
        total += per_minute.min(f64::from(rate.max_per_minute));
        per_minute *= rate.increment_factor;
        if total > 1e12 {
            break;
        }
    }
    total as usize
}

/// A stable, spread-out order of devices within a deployment.
fn placement_key(deployment: &str, device: &str) -> u64 {
    // FNV-1a: stable across builds and restarts (std's hasher is not guaranteed to be).
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    deployment.as_bytes().hash(&mut hasher);
    device.as_bytes().hash(&mut hasher);
    // FNV alone keeps ids that differ in their last character in order; a final mix (from
    // SplitMix64) spreads them.
    let mut h = hasher.finish();
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests;
