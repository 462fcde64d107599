//! Rollouts as the fleet stores and drives them: one record per deployment revision (its
//! progress while it runs, its history after), the periodic step that feeds the pure
//! [`rollout::step`] with what devices report, operator actions (pause, resume, abort,
//! rollback); continuous deployment of newly registered versions is in `continuous.rs`.
//!
//! Records live in the `rollouts` tree under `{deployment}/{revision:020}`, so a prefix scan
//! is a deployment's history in order; they outlive the deployment (its deletion is the last
//! entry), and a hub restarted mid-rollout takes up the stored record where it stood. Each
//! deployment keeps its newest [`HISTORY_KEPT`] records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgeship_domain::ServiceState;

use super::desired::{self, Placement};
use super::model::{Deployment, Device, Revision};
use super::rollout::{self, Observed, Phase, Rollout};
use super::{Fleet, FleetError, decode, encode};
use crate::now_ms;
use crate::registry::{VersionRef, VersionSelector};

/// Revisions kept per deployment beyond those a rollout still references.
const KEPT_REVISIONS: usize = 5;
/// History records (rollouts and notes) kept per deployment, the newest: a deployment applied
/// and deleted a thousand times grew the hub's disk with every cycle
/// (docs/reliability.md, soak). Kubernetes keeps 10 revisions of a Deployment by default;
/// this keeps the last few months of a busy deployment.
pub const HISTORY_KEPT: usize = 100;
/// Rollouts are stepped at least this often (timeouts and health holds need the clock) ...
const STEP_INTERVAL: Duration = Duration::from_secs(1);
/// ... and at most this often when device news nudges them (each step reads every device
/// record: at 10,000 devices reporting at once, stepping on every batch cost the hub seconds).
const MIN_STEP_GAP: Duration = Duration::from_millis(250);

/// Steps running rollouts every `STEP_INTERVAL`, and soon after device news arrives: at once
/// when the last step is `MIN_STEP_GAP` old, else when it will be (news that waited a fixed
/// gap made every rollout a quarter of a second slower to notice its last device).
pub fn drive(fleet: Arc<Fleet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_step = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(STEP_INTERVAL) => {}
                () = fleet.nudge.notified() => tokio::time::sleep_until(last_step + MIN_STEP_GAP).await,
            }
            last_step = tokio::time::Instant::now();
            let stepping = Arc::clone(&fleet);
            match tokio::task::spawn_blocking(move || stepping.advance_rollouts()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "stepping rollouts failed"),
                Err(err) => tracing::error!(error = %err, "stepping rollouts panicked"),
            }
        }
    })
}

/// What an operator asks of a deployment's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    /// Stop moving devices; moved ones keep the new revision.
    Abort,
    /// Moved devices return to the previous revision; after a completed rollout, a new
    /// rollout back to the revision before it.
    Rollback,
}

fn key(deployment: &str, revision: u64) -> Vec<u8> {
    format!("{deployment}/{revision:020}").into_bytes()
}

/// The revision devices fall back to: the last one a rollout completed.
fn stable_revision(rollout: &Rollout) -> Option<u64> {
    match rollout.phase {
        Phase::Completed => Some(rollout.revision),
        _ => rollout.from_revision,
    }
}

/// Pairs each deployment with its current rollout.
pub(super) fn placements<'a>(
    deployments: &'a [Deployment],
    rollouts: &'a HashMap<String, Rollout>,
) -> Vec<Placement<'a>> {
    deployments
        .iter()
        .map(|deployment| Placement {
            deployment,
            rollout: rollouts.get(&deployment.id),
        })
        .collect()
}

impl Fleet {
    /// Every record of a deployment, oldest first (its history).
    pub fn rollout_history(&self, deployment: &str) -> Result<Vec<Rollout>, FleetError> {
        let mut history = Vec::new();
        for entry in self.rollouts.scan_prefix(format!("{deployment}/")) {
            let (_, bytes) = entry?;
            history.push(decode::<Rollout>(&bytes, "rollout")?);
        }
        Ok(history)
    }

    /// The rollout of the deployment's newest revision.
    pub fn current_rollout(&self, deployment: &Deployment) -> Result<Option<Rollout>, FleetError> {
        let Some(current) = deployment.current() else {
            return Ok(None);
        };
        match self.rollouts.get(key(&deployment.id, current.number))? {
            Some(bytes) => Ok(Some(decode(&bytes, "rollout")?)),
            None => Ok(None),
        }
    }

    pub(super) fn current_rollouts(
        &self,
        deployments: &[Deployment],
    ) -> Result<HashMap<String, Rollout>, FleetError> {
        let mut rollouts = HashMap::new();
        for deployment in deployments {
            if let Some(rollout) = self.current_rollout(deployment)? {
                rollouts.insert(deployment.id.clone(), rollout);
            }
        }
        Ok(rollouts)
    }

    fn put_rollout(&self, rollout: &Rollout) -> Result<(), FleetError> {
        self.rollouts
            .insert(key(&rollout.deployment, rollout.revision), encode(rollout))?;
        Ok(())
    }

    /// The next revision number: past every record, so a re-created deployment's history
    /// goes on rather than overwriting.
    fn next_revision(&self, deployment: &Deployment) -> Result<u64, FleetError> {
        let recorded = match self
            .rollouts
            .scan_prefix(format!("{}/", deployment.id))
            .last()
        {
            Some(entry) => decode::<Rollout>(&entry?.1, "rollout")?.revision,
            None => 0,
        };
        let kept = deployment.current().map_or(0, |r| r.number);
        Ok(recorded.max(kept) + 1)
    }

    /// Stores `revision` as the deployment's newest and starts its rollout (a newer rollout
    /// supersedes one still running). The caller holds the fleet lock and reconciles.
    pub(super) fn start_rollout(
        &self,
        deployment: &mut Deployment,
        mut revision: Revision,
        cause: &str,
        changes: Vec<String>,
        now: i64,
    ) -> Result<Rollout, FleetError> {
        revision.number = self.next_revision(deployment)?;
        revision.create_time_ms = now;
        let previous = self.current_rollout(deployment)?;
        let from = match &previous {
            Some(previous) => stable_revision(previous),
            None => deployment.current().map(|r| r.number),
        };
        if let Some(mut previous) = previous
            && previous.phase.is_active()
        {
            previous.phase = Phase::Superseded;
            previous.finished_ms = Some(now);
            self.put_rollout(&previous)?;
        }
        let rollout = Rollout::new(
            &deployment.id,
            revision.number,
            from,
            format!("{cause}: {}", revision.describe()),
            changes,
            now,
        );
        deployment.revisions.push(revision);
        prune_revisions(deployment, from);
        self.deployments
            .insert(deployment.id.as_bytes(), encode(&*deployment))?;
        self.put_rollout(&rollout)?;
        self.prune_history(&deployment.id, rollout.revision)?;
        tracing::info!(deployment = %deployment.id, revision = rollout.revision, from = ?from, cause = %rollout.cause, "rollout started");
        Ok(rollout)
    }

    /// Records a change that moves no device (a target or policy edit, a deletion) in the
    /// history: a finished note on the current revision, keyed after its rollout.
    pub(super) fn record_change(
        &self,
        deployment: &Deployment,
        cause: &str,
        changes: Vec<String>,
        now: i64,
    ) -> Result<(), FleetError> {
        let revision = deployment.current().map_or(0, |r| r.number);
        let mut note = Rollout::new(
            &deployment.id,
            revision,
            None,
            cause.to_owned(),
            changes,
            now,
        );
        note.note = true;
        note.phase = Phase::Completed;
        note.finished_ms = Some(now);
        let key = format!(
            "{}/{revision:020}.{:020}",
            deployment.id,
            self.db.generate_id()?
        );
        self.rollouts.insert(key.into_bytes(), encode(&note))?;
        self.prune_history(&deployment.id, revision)
    }

    /// Drops the oldest of a deployment's history records beyond [`HISTORY_KEPT`], never the
    /// rollout of its `current` revision (which notes after it may outnumber).
    fn prune_history(&self, deployment: &str, current: u64) -> Result<(), FleetError> {
        let keys = self
            .rollouts
            .scan_prefix(format!("{deployment}/"))
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let current = key(deployment, current);
        let mut excess = keys.len().saturating_sub(HISTORY_KEPT);
        for old in keys {
            if excess == 0 {
                break;
            }
            if old.as_ref() != current.as_slice() {
                self.rollouts.remove(old)?;
                excess -= 1;
            }
        }
        Ok(())
    }

    /// One step of every running rollout; recomputes the desired states of devices that moved.
    pub fn advance_rollouts(&self) -> Result<(), FleetError> {
        let _guard = self.guard();
        if self.advance_locked(now_ms())? {
            self.reconcile_locked(None)?;
        }
        Ok(())
    }

    /// Steps every active rollout; says whether any device changed revision.
    pub(super) fn advance_locked(&self, now: i64) -> Result<bool, FleetError> {
        let deployments = self.all_deployments()?;
        let mut rollouts = self.current_rollouts(&deployments)?;
        if !rollouts.values().any(|r| r.phase.is_active()) {
            return Ok(false);
        }
        let devices = self.all_devices()?;
        let resolved = self.resolve_pins(&deployments);
        let mut reassigned = false;
        for deployment in &deployments {
            let Some(mut rollout) = rollouts.remove(&deployment.id) else {
                continue;
            };
            if !rollout.phase.is_active() {
                rollouts.insert(deployment.id.clone(), rollout);
                continue;
            }
            let placed = placements(&deployments, &rollouts);
            let observed = self.observe(deployment, &rollout, &devices, &placed, &resolved);
            let before = rollout.clone();
            let decision = rollout::step(&deployment.spec.rollout, &mut rollout, &observed, now);
            if rollout != before {
                if rollout.phase != before.phase {
                    tracing::info!(deployment = %deployment.id, revision = rollout.revision, phase = rollout.phase.name(), reason = rollout.phase.reason(), "rollout phase changed");
                }
                self.put_rollout(&rollout)?;
            }
            reassigned |= !decision.reassigned.is_empty();
            rollouts.insert(deployment.id.clone(), rollout);
        }
        Ok(reassigned)
    }

    /// What each device the deployment targets reports about the rollout's revision.
    fn observe(
        &self,
        deployment: &Deployment,
        rollout: &Rollout,
        devices: &[Device],
        placed: &[Placement<'_>],
        resolved: &desired::Resolved,
    ) -> Vec<Observed> {
        let expected = deployment
            .revision(rollout.revision)
            .map(Revision::model_list)
            .unwrap_or_default();
        devices
            .iter()
            .filter(|d| deployment.spec.target.matches(&d.id, &d.labels()))
            .map(|device| {
                let report = device
                    .workloads
                    .iter()
                    .find(|w| w.deployment == deployment.id);
                let caught_up = device.applied_generation >= device.desired_generation;
                let on_revision = report.filter(|r| caught_up && r.desired_model == expected);
                let mut observed = Observed {
                    device_id: device.id.clone(),
                    online: device.online,
                    state: on_revision.map(|r| r.state),
                    error: on_revision.map(|r| r.error.clone()).unwrap_or_default(),
                    error_rate: on_revision.map_or(0.0, |r| r.metrics.window_error_rate()),
                    p99_ms: on_revision.map_or(0.0, |r| r.metrics.p99_ms),
                    window_requests: on_revision.map_or(0, |r| r.metrics.window_requests),
                };
                // The hub itself may keep the revision off a moved device (a port taken by a
                // higher priority, a missing capability): that is a failure it knows at once.
                if on_revision.is_none() && rollout.moved.contains_key(&device.id) {
                    let computed = desired::for_device(device, placed, resolved, None);
                    if let Some(reason) = computed.unschedulable.get(&deployment.id) {
                        observed.state = Some(ServiceState::Unschedulable);
                        observed.error.clone_from(reason);
                    }
                }
                observed
            })
            .collect()
    }

    /// An operator's action on a deployment's rollout; returns the rollout it leaves.
    pub fn control_rollout(&self, id: &str, action: RolloutAction) -> Result<Rollout, FleetError> {
        let _guard = self.guard();
        let mut deployment = self.get_deployment(id)?;
        let now = now_ms();
        let Some(mut rollout) = self.current_rollout(&deployment)? else {
            return Err(FleetError::FailedPrecondition(format!(
                "deployment {id} has no rollout"
            )));
        };
        let not_running = |what: &str| {
            FleetError::FailedPrecondition(format!(
                "cannot {what}: the rollout of revision {} is {}",
                rollout.revision,
                rollout.phase.name()
            ))
        };
        match action {
            RolloutAction::Pause => {
                if rollout.phase != Phase::Progressing {
                    return Err(not_running("pause"));
                }
                rollout.phase = Phase::Paused("paused by an operator".into());
            }
            RolloutAction::Resume => {
                if !matches!(rollout.phase, Phase::Paused(_)) {
                    return Err(not_running("resume"));
                }
                rollout.phase = Phase::Progressing;
            }
            RolloutAction::Abort => {
                if !rollout.phase.is_active() {
                    return Err(not_running("abort"));
                }
                rollout.phase = Phase::Aborted("aborted by an operator".into());
                rollout.finished_ms = Some(now);
            }
            // An aborted rollout left its moved devices on the new revision: send them back.
            RolloutAction::Rollback
                if rollout.phase.is_active() || matches!(rollout.phase, Phase::Aborted(_)) =>
            {
                if rollout.from_revision.is_none() {
                    return Err(FleetError::FailedPrecondition(format!(
                        "deployment {id} has no earlier revision to roll back to"
                    )));
                }
                rollout.phase = Phase::RolledBack("rolled back by an operator".into());
                rollout.finished_ms = Some(now);
            }
            RolloutAction::Rollback => {
                // Finished: roll out the revision before this one again, as a new revision.
                let back_to = match rollout.phase {
                    Phase::Completed => rollout.from_revision,
                    _ => None,
                }
                .and_then(|n| deployment.revision(n).cloned())
                .ok_or_else(|| {
                    FleetError::FailedPrecondition(format!(
                        "deployment {id} has no earlier revision to roll back to"
                    ))
                })?;
                // Its model and module versions may have been deleted since it last ran.
                let models = back_to
                    .models
                    .iter()
                    .map(|m| (&self.registry, &m.model_id, m.version));
                let module = back_to
                    .entry_module
                    .iter()
                    .map(|m| (&self.modules, &m.module_id, m.version));
                for (registry, id, version) in models.chain(module) {
                    let exists = registry.get(&VersionRef {
                        model_id: id.clone(),
                        version: VersionSelector::Exact(version),
                    });
                    if exists.is_err() {
                        return Err(FleetError::FailedPrecondition(format!(
                            "cannot roll back to revision {}: {} {id}:{version} it runs was deleted; apply a manifest with the version to run instead",
                            back_to.number,
                            registry.kind().noun()
                        )));
                    }
                }
                let cause = format!("rollback to revision {}", back_to.number);
                let started = self.start_rollout(&mut deployment, back_to, &cause, vec![], now)?;
                self.db.flush()?;
                self.advance_locked(now)?;
                self.reconcile_locked(None)?;
                return Ok(self.current_rollout(&deployment)?.unwrap_or(started));
            }
        }
        self.put_rollout(&rollout)?;
        self.db.flush()?;
        tracing::info!(deployment = %id, revision = rollout.revision, phase = rollout.phase.name(), "rollout changed by an operator");
        self.reconcile_locked(None)?;
        Ok(rollout)
    }
}

/// Drops revisions nothing needs: keeps the newest few and `from` (a rollback target).
fn prune_revisions(deployment: &mut Deployment, from: Option<u64>) {
    let keep_after = deployment.revisions.len().saturating_sub(KEPT_REVISIONS);
    let mut index = 0;
    deployment.revisions.retain(|r| {
        index += 1;
        index > keep_after || Some(r.number) == from
    });
}
