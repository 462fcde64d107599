//! The agent's reconciler: a pure function from what the device runs now and what the hub
//! wants to the steps that close the gap. No I/O, no clock: the driver executes the steps and
//! the table-driven tests below pin the decisions.
//!
//! Rules: a workload this device cannot run is rejected before anything is downloaded; an
//! unchanged workload that serves is left alone; one that differs from what serves only in
//! traffic weights or health gate is retuned in place (nothing is fetched or loaded); a workload that failed for a reason retrying
//! will not fix stays out (the previous version keeps serving) until the hub asks for
//! something else; deployments no longer desired are removed first, so their ports are free
//! for the workloads that follow; only blobs missing from the cache are fetched.

use std::collections::{BTreeMap, BTreeSet};

use edgeship_domain::{BlobRef, Capabilities, DesiredState, ServiceState, Workload, WorkloadKind};

/// What the device knows about one deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    /// The last good workload (it served, or serves).
    pub applied: Option<Workload>,
    /// Whether an endpoint serves `applied` right now.
    pub serving: bool,
    /// A desired workload that failed for good, and why.
    pub failed: Option<Workload>,
}

/// One step of convergence, in the order the driver must take them.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop serving the deployment and forget it.
    Remove { deployment: String },
    /// The workload cannot be taken here; nothing is downloaded.
    Reject {
        deployment: String,
        port: u16,
        desired: String,
        state: ServiceState,
        reason: String,
    },
    /// Download these blobs (all missing from the cache) before applying `workload`.
    Fetch {
        workload: Workload,
        blobs: Vec<BlobRef>,
    },
    /// Stage, self-test and switch the deployment's endpoint to this workload.
    Apply { workload: Workload },
    /// Give the serving versions new weights or a new health gate in place: nothing is
    /// fetched, staged or loaded, and the listener stays.
    Retune { workload: Workload },
}

impl Action {
    pub fn deployment(&self) -> &str {
        match self {
            Action::Remove { deployment } | Action::Reject { deployment, .. } => deployment,
            Action::Fetch { workload, .. }
            | Action::Apply { workload }
            | Action::Retune { workload } => &workload.deployment,
        }
    }
}

/// The steps that take `current` to `desired`. `cached` says whether a blob is in the cache.
pub fn plan(
    current: &BTreeMap<String, Slot>,
    desired: &DesiredState,
    capabilities: &Capabilities,
    cached: &dyn Fn(&str) -> bool,
) -> Vec<Action> {
    let wanted: BTreeSet<&str> = desired
        .workloads
        .iter()
        .map(|w| w.deployment.as_str())
        .chain(desired.rejected.iter().map(|r| r.deployment.as_str()))
        .collect();
    let mut actions: Vec<Action> = current
        .keys()
        .filter(|d| !wanted.contains(d.as_str()))
        .map(|d| Action::Remove {
            deployment: d.clone(),
        })
        .collect();
    for rejected in &desired.rejected {
        actions.push(Action::Reject {
            deployment: rejected.deployment.clone(),
            port: rejected.port,
            desired: String::new(),
            state: if rejected.unsupported {
                ServiceState::Unschedulable
            } else {
                ServiceState::Failed
            },
            reason: rejected.reason.clone(),
        });
    }
    for workload in &desired.workloads {
        let slot = current.get(&workload.deployment);
        if let Err(reason) = capabilities.check(workload) {
            actions.push(Action::Reject {
                deployment: workload.deployment.clone(),
                port: workload.endpoint.port,
                desired: workload.describe(),
                state: ServiceState::Unschedulable,
                reason,
            });
            continue;
        }
        let serving = slot.is_some_and(|s| s.serving && s.applied.as_ref() == Some(workload));
        let kept_out = slot.is_some_and(|s| s.failed.as_ref() == Some(workload));
        if serving || kept_out {
            continue;
        }
        let retunable = slot.is_some_and(|s| {
            s.serving
                && s.applied
                    .as_ref()
                    .is_some_and(|applied| only_tuning_differs(applied, workload))
        });
        if retunable {
            actions.push(Action::Retune {
                workload: workload.clone(),
            });
            continue;
        }
        let mut seen = BTreeSet::new();
        let missing: Vec<BlobRef> = workload
            .blobs()
            .filter(|b| !cached(&b.sha256) && seen.insert(b.sha256.clone()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            actions.push(Action::Fetch {
                workload: workload.clone(),
                blobs: missing,
            });
        }
        actions.push(Action::Apply {
            workload: workload.clone(),
        });
    }
    actions
}

/// Whether `desired` asks for exactly what `serving` runs, only with other traffic weights or
/// another health gate: then the loaded versions can take the new values in place.
pub fn only_tuning_differs(serving: &Workload, desired: &Workload) -> bool {
    serving != desired && untuned(serving) == untuned(desired)
}

/// The workload without what can change while it serves.
fn untuned(workload: &Workload) -> Workload {
    let mut workload = workload.clone();
    workload.health = None;
    if let WorkloadKind::Model(model) = &mut workload.kind {
        for deployed in &mut model.models {
            deployed.weight = 0;
        }
    }
    workload
}

/// Every blob digest the device must keep: what serves and what is desired.
pub fn live_blobs<'a>(
    applied: impl Iterator<Item = &'a Workload>,
    desired: &'a DesiredState,
) -> BTreeSet<String> {
    applied
        .flat_map(Workload::blobs)
        .chain(desired.blobs())
        .map(|b| b.sha256.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeship_domain::fixtures::{digest, model_workload, tract_agent};
    use edgeship_domain::{
        ContainerWorkload, DeployedModel, Endpoint, HealthThresholds, RejectedWorkload,
    };

    fn workload(deployment: &str, version: u32, blob: u32) -> Workload {
        model_workload(deployment, version, blob)
    }

    /// What this agent announces, with tract.
    fn tract_device() -> Capabilities {
        Capabilities {
            features: crate::device::features(),
            ..tract_agent()
        }
    }

    /// A traffic split on port 5001: `(version, blob, weight)` per model, in order.
    fn split(deployment: &str, models: &[(u32, u32, u32)]) -> Workload {
        let mut split = workload(deployment, 1, 1);
        if let WorkloadKind::Model(model) = &mut split.kind {
            model.models = models
                .iter()
                .map(|&(version, blob, weight)| {
                    let WorkloadKind::Model(one) = workload(deployment, version, blob).kind else {
                        unreachable!("a model workload")
                    };
                    DeployedModel {
                        weight,
                        ..one.models[0].clone()
                    }
                })
                .collect();
        }
        split
    }

    fn gated(workload: &Workload, max_error_rate: f64) -> Workload {
        Workload {
            health: Some(HealthThresholds {
                max_error_rate: Some(max_error_rate),
                max_p99_ms: None,
                window_seconds: 30,
                min_requests: 20,
            }),
            ..workload.clone()
        }
    }

    fn desired(workloads: Vec<Workload>) -> DesiredState {
        DesiredState {
            device_id: "d".into(),
            generation: 2,
            workloads,
            rejected: vec![],
            issued_at_ms: 0,
            jobs: vec![],
            rejected_jobs: vec![],
        }
    }

    fn serving(workload: &Workload) -> (String, Slot) {
        (
            workload.deployment.clone(),
            Slot {
                applied: Some(workload.clone()),
                serving: true,
                failed: None,
            },
        )
    }

    /// One row: what the case is, the slots, the desired state, what is cached, and the
    /// expected plan.
    type Case<'a> = (
        &'static str,
        BTreeMap<String, Slot>,
        DesiredState,
        &'a dyn Fn(&str) -> bool,
        Vec<&'static str>,
    );

    /// Short names for the actions, so each table row reads on one line.
    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Remove { deployment } => format!("remove {deployment}"),
                Action::Reject {
                    deployment, state, ..
                } => format!("reject {deployment} {state}"),
                Action::Fetch { workload, blobs } => {
                    format!("fetch {} {}", workload.deployment, blobs.len())
                }
                Action::Apply { workload } => {
                    format!("apply {} {}", workload.deployment, workload.describe())
                }
                Action::Retune { workload } => {
                    format!("retune {} {}", workload.deployment, workload.describe())
                }
            })
            .collect()
    }

    #[test]
    fn the_plan_for_each_situation() {
        let v1 = workload("web", 1, 1);
        let v2 = workload("web", 2, 2);
        let v2_same_file = workload("web", 2, 1);
        let other = workload("other", 3, 3);
        let container = Workload {
            kind: WorkloadKind::Container(ContainerWorkload::default()),
            ..workload("box", 4, 4)
        };
        let mut keyed = workload("keyed", 9, 9);
        if let WorkloadKind::Model(model) = &mut keyed.kind {
            // A setting this agent does not implement yet.
            model.options.threads = 4;
        }
        let failed_v2 = Slot {
            failed: Some(v2.clone()),
            ..serving(&v1).1
        };
        let restored_but_down = Slot {
            serving: false,
            ..serving(&v1).1
        };
        let rejected_by_wire = DesiredState {
            rejected: vec![RejectedWorkload {
                deployment: "future".into(),
                port: 6000,
                unsupported: true,
                reason: "the workload's kind is not known".into(),
            }],
            ..desired(vec![])
        };
        let ninety_ten = split("web", &[(1, 1, 90), (2, 2, 10)]);
        let v2_alone = split("web", &[(2, 2, 0)]);
        let failed_canary = Slot {
            failed: Some(split("web", &[(1, 1, 90), (3, 3, 10)])),
            ..serving(&ninety_ten).1
        };
        let split_down = Slot {
            serving: false,
            ..serving(&ninety_ten).1
        };
        let nothing_cached: &dyn Fn(&str) -> bool = &|_| false;
        let blob_1_cached: &dyn Fn(&str) -> bool = &|d| d == digest(1);
        let both_cached: &dyn Fn(&str) -> bool = &|d| d == digest(1) || d == digest(2);
        let table: Vec<Case> = vec![
            (
                "a new deployment is fetched, then applied",
                BTreeMap::new(),
                desired(vec![v1.clone()]),
                nothing_cached,
                vec!["fetch web 1", "apply web m:1"],
            ),
            (
                "an unchanged deployment that serves is left alone",
                BTreeMap::from([serving(&v1)]),
                desired(vec![v1.clone()]),
                nothing_cached,
                vec![],
            ),
            (
                "a version change fetches the new file and applies it",
                BTreeMap::from([serving(&v1)]),
                desired(vec![v2.clone()]),
                blob_1_cached,
                vec!["fetch web 1", "apply web m:2"],
            ),
            (
                "a cached blob is reused: nothing is fetched",
                BTreeMap::from([serving(&v1)]),
                desired(vec![v2_same_file.clone()]),
                blob_1_cached,
                vec!["apply web m:2"],
            ),
            (
                "a deployment no longer desired is removed before the others apply",
                BTreeMap::from([serving(&v1)]),
                desired(vec![other.clone()]),
                nothing_cached,
                vec!["remove web", "fetch other 1", "apply other m:3"],
            ),
            (
                "a device leaving a selector gets an empty state: everything goes",
                BTreeMap::from([serving(&v1), serving(&other)]),
                desired(vec![]),
                nothing_cached,
                vec!["remove other", "remove web"],
            ),
            (
                "an unsupported workload kind is rejected before any download",
                BTreeMap::new(),
                desired(vec![container.clone()]),
                nothing_cached,
                vec!["reject box Unschedulable"],
            ),
            (
                "an unsupported field value is rejected before any download",
                BTreeMap::new(),
                desired(vec![keyed.clone()]),
                nothing_cached,
                vec!["reject keyed Unschedulable"],
            ),
            (
                "a workload the link could not decode is rejected",
                BTreeMap::new(),
                rejected_by_wire,
                nothing_cached,
                vec!["reject future Unschedulable"],
            ),
            (
                "a failed version is kept out while the old one serves",
                BTreeMap::from([("web".to_owned(), failed_v2.clone())]),
                desired(vec![v2.clone()]),
                nothing_cached,
                vec![],
            ),
            (
                "a newer version after a failure is tried",
                BTreeMap::from([("web".to_owned(), failed_v2)]),
                desired(vec![workload("web", 3, 3)]),
                nothing_cached,
                vec!["fetch web 1", "apply web m:3"],
            ),
            (
                "the last good version that does not serve after a restart is applied again",
                BTreeMap::from([("web".to_owned(), restored_but_down)]),
                desired(vec![v1.clone()]),
                blob_1_cached,
                vec!["apply web m:1"],
            ),
            (
                "only the weights change: retuned in place, nothing fetched or loaded",
                BTreeMap::from([serving(&ninety_ten)]),
                desired(vec![split("web", &[(1, 1, 80), (2, 2, 20)])]),
                nothing_cached,
                vec!["retune web m:1, m:2"],
            ),
            (
                "only the health gate changes: retuned in place",
                BTreeMap::from([serving(&gated(&v1, 0.05))]),
                desired(vec![gated(&v1, 0.01)]),
                nothing_cached,
                vec!["retune web m:1"],
            ),
            (
                "a health gate added to what serves: retuned in place",
                BTreeMap::from([serving(&v1)]),
                desired(vec![gated(&v1, 0.05)]),
                nothing_cached,
                vec!["retune web m:1"],
            ),
            (
                "new weights while a failed version is kept out: retuned",
                BTreeMap::from([("web".to_owned(), failed_canary)]),
                desired(vec![split("web", &[(1, 1, 50), (2, 2, 50)])]),
                nothing_cached,
                vec!["retune web m:1, m:2"],
            ),
            (
                "new weights for a split that does not serve (after a restart): applied",
                BTreeMap::from([("web".to_owned(), split_down)]),
                desired(vec![split("web", &[(1, 1, 80), (2, 2, 20)])]),
                both_cached,
                vec!["apply web m:1, m:2"],
            ),
            (
                "a canary added beside the serving version: fetched and applied",
                BTreeMap::from([serving(&v1)]),
                desired(vec![ninety_ten.clone()]),
                blob_1_cached,
                vec!["fetch web 1", "apply web m:1, m:2"],
            ),
            (
                "another version in the split, with new weights: fetched and applied",
                BTreeMap::from([serving(&ninety_ten)]),
                desired(vec![split("web", &[(1, 1, 50), (3, 3, 50)])]),
                both_cached,
                vec!["fetch web 1", "apply web m:1, m:3"],
            ),
            (
                "the canary promoted to the only version: applied",
                BTreeMap::from([serving(&ninety_ten)]),
                desired(vec![v2_alone.clone()]),
                both_cached,
                vec!["apply web m:2"],
            ),
            (
                "new weights on another port: applied, since the listener must move",
                BTreeMap::from([serving(&ninety_ten)]),
                desired(vec![Workload {
                    endpoint: Endpoint::azureml(6001),
                    ..split("web", &[(1, 1, 80), (2, 2, 20)])
                }]),
                both_cached,
                vec!["apply web m:1, m:2"],
            ),
            (
                "the same versions in another order: applied",
                BTreeMap::from([serving(&ninety_ten)]),
                desired(vec![split("web", &[(2, 2, 10), (1, 1, 90)])]),
                both_cached,
                vec!["apply web m:2, m:1"],
            ),
        ];
        for (case, current, desired, cached, expected) in table {
            let actions = plan(&current, &desired, &tract_device(), cached);
            assert_eq!(summary(&actions), expected, "{case}");
        }
    }

    #[test]
    fn a_split_is_rejected_by_an_agent_without_traffic_splits() {
        let ninety_ten = split("web", &[(1, 1, 90), (2, 2, 10)]);
        let actions = plan(
            &BTreeMap::new(),
            &desired(vec![ninety_ten]),
            &tract_agent(),
            &|_| false,
        );
        assert_eq!(summary(&actions), ["reject web Unschedulable"]);
    }

    #[test]
    fn only_weights_and_the_health_gate_count_as_tuning() {
        let ninety_ten = split("web", &[(1, 1, 90), (2, 2, 10)]);
        let retuned = split("web", &[(1, 1, 70), (2, 2, 30)]);
        assert!(only_tuning_differs(&ninety_ten, &retuned));
        assert!(only_tuning_differs(&ninety_ten, &gated(&ninety_ten, 0.1)));
        assert!(!only_tuning_differs(&ninety_ten, &ninety_ten), "no change");
        let mut threads = retuned.clone();
        if let WorkloadKind::Model(model) = &mut threads.kind {
            model.options.threads = 2;
        }
        assert!(
            !only_tuning_differs(&ninety_ten, &threads),
            "a runtime setting"
        );
        let renamed = Workload {
            deployment: "other".into(),
            ..retuned
        };
        assert!(!only_tuning_differs(&ninety_ten, &renamed));
    }

    #[test]
    fn a_blob_shared_by_two_files_is_fetched_once() {
        let mut twice = workload("web", 1, 1);
        if let WorkloadKind::Model(model) = &mut twice.kind {
            let mut copy = model.models[0].files[0].clone();
            copy.path = "copy.onnx".into();
            model.models[0].files.push(copy);
        }
        let actions = plan(
            &BTreeMap::new(),
            &desired(vec![twice]),
            &tract_device(),
            &|_| false,
        );
        assert_eq!(summary(&actions), ["fetch web 1", "apply web m:1"]);
    }

    #[test]
    fn live_blobs_cover_what_serves_and_what_is_desired() {
        let v1 = workload("web", 1, 1);
        let v2 = workload("web", 2, 2);
        let live = live_blobs([&v1].into_iter(), &desired(vec![v2]));
        assert_eq!(live, BTreeSet::from([digest(1), digest(2)]));
    }
}
