//! The driver's bookkeeping of workload states: what each deployment is doing, as reported to
//! the hub and shown to in-process observers. `Healthy` and `Unhealthy` follow the endpoint's
//! sliding window and the workload's health gate ([`judge`]), checked on a ticker and before
//! every report.

use edgeship_domain::{DesiredState, ReportedState, ServiceState, Workload, WorkloadStatus};

use super::Agent;
use crate::now_ms;
use crate::state::WorkloadFailure;
use crate::view::{AgentView, WorkloadView};

impl Agent {
    /// Deployments whose desired workload is the one already serving are `Healthy`, whatever
    /// an abandoned switch left in their status; a failure recorded for another workload no
    /// longer applies (the hub went back to what serves).
    pub(super) fn settle(&mut self, desired: &DesiredState) {
        let mut changed = false;
        for workload in &desired.workloads {
            let deployment = &workload.deployment;
            let serves = self.state.workloads.get(deployment) == Some(workload)
                && self.stage.is_serving(deployment);
            if !serves {
                continue;
            }
            let stale_failure = self
                .state
                .failures
                .get(deployment)
                .is_some_and(|f| f.workload.as_ref() != Some(workload));
            if stale_failure {
                self.state.failures.remove(deployment);
                changed = true;
            }
            if let Some(status) = self.statuses.get_mut(deployment)
                && !self.state.failures.contains_key(deployment)
            {
                // `Unhealthy` is the window's verdict, not a leftover: only a check clears it.
                if status.state != ServiceState::Unhealthy {
                    status.state = ServiceState::Healthy;
                    status.error.clear();
                }
                status.desired_model = workload.describe();
                status.serving_model = workload.describe();
            }
        }
        if changed {
            self.persist("failures");
        }
        self.publish_view();
    }

    /// Marks a deployment as transitioning to `workload` and reports it (without waiting).
    pub(super) fn begin(&mut self, workload: &Workload) -> WorkloadStatus {
        let status = self
            .statuses
            .entry(workload.deployment.clone())
            .or_insert_with(|| {
                WorkloadStatus::new(
                    &workload.deployment,
                    &workload.describe(),
                    workload.endpoint.port,
                )
            });
        status.state = ServiceState::Transitioning;
        status.error.clear();
        status.desired_model = workload.describe();
        status.port = workload.endpoint.port;
        let status = status.clone();
        self.report();
        status
    }

    /// Records a lasting failure: reported, persisted, and (with the workload) kept out.
    pub(super) fn fail(
        &mut self,
        deployment: &str,
        workload: Option<Workload>,
        desired: &str,
        port: u16,
        state: ServiceState,
        reason: &str,
    ) {
        let failure = WorkloadFailure {
            desired_model: desired.to_owned(),
            workload,
            port,
            unschedulable: state == ServiceState::Unschedulable,
            error: reason.to_owned(),
        };
        let status = self
            .statuses
            .entry(deployment.to_owned())
            .or_insert_with(|| WorkloadStatus::new(deployment, desired, port));
        failure.describe_on(status);
        self.state.failures.insert(deployment.to_owned(), failure);
        self.persist("failure");
        self.publish_view();
    }

    pub(super) fn publish_view(&self) {
        let workloads = self
            .statuses
            .values()
            .map(|s| WorkloadView {
                deployment: s.deployment.clone(),
                state: s.state,
                error: s.error.clone(),
                serving_model: s.serving_model.clone(),
                desired_model: s.desired_model.clone(),
                addr: self.stage.addr(&s.deployment),
                metrics: s.metrics.clone(),
            })
            .collect();
        self.view.send_replace(AgentView {
            applied_generation: self.state.applied_generation,
            workloads,
            models_loaded: self.stage.loads(),
            jobs: self.jobs.statuses(),
        });
    }

    /// Reads every endpoint's figures and judges each serving workload against its health
    /// gate; returns whether any workload's state changed.
    pub(super) fn refresh(&mut self) -> bool {
        let now = std::time::Instant::now();
        let mut changed = false;
        for (deployment, status) in self.statuses.iter_mut() {
            let Some(seen) = self.stage.observe(deployment, now) else {
                continue;
            };
            status.metrics = seen.metrics;
            let before = status.state;
            if let Some(why) = seen.failed {
                // Stopped for good (a container its engine will not restart): only a new
                // version brings it back.
                if status.state != ServiceState::Failed {
                    tracing::warn!(%deployment, reason = %why, "workload failed");
                    status.state = ServiceState::Failed;
                    status.error = why;
                    changed = true;
                }
                continue;
            }
            if judge(status, seen.breach) {
                changed = true;
                match status.state {
                    ServiceState::Unhealthy => {
                        tracing::warn!(%deployment, reason = %status.error, "workload unhealthy");
                    }
                    _ => tracing::info!(%deployment, was = %before, "workload healthy again"),
                }
            }
        }
        changed
    }

    /// The health ticker: reports at once when a workload turned `Unhealthy` or recovered,
    /// rather than at the next periodic report.
    pub(super) fn check_health(&mut self) {
        if self.refresh() {
            self.send_report();
        }
    }

    /// Queues a report of every workload, with fresh figures; never waits.
    pub(super) fn report(&mut self) {
        self.refresh();
        self.send_report();
    }

    fn send_report(&mut self) {
        self.publish_view();
        self.sender.report(ReportedState {
            device_id: self.device_id.clone(),
            applied_generation: self.state.applied_generation,
            workloads: self.statuses.values().cloned().collect(),
            reported_at_ms: now_ms(),
            jobs: self.jobs.statuses(),
        });
    }
}

/// Moves a serving workload between `Healthy` and `Unhealthy` by its window's verdict (why it
/// breaches its gate, or `None`); returns whether the state changed. Other states are left
/// alone: `Transitioning`, `Failed` and `Unschedulable` say something a window cannot undo.
pub(super) fn judge(status: &mut WorkloadStatus, breach: Option<String>) -> bool {
    match (status.state, breach) {
        (ServiceState::Healthy, Some(why)) => {
            status.state = ServiceState::Unhealthy;
            status.error = why;
            true
        }
        (ServiceState::Unhealthy, Some(why)) => {
            // Still unhealthy: the figures in the message move, the state does not.
            status.error = why;
            false
        }
        (ServiceState::Unhealthy, None) => {
            status.state = ServiceState::Healthy;
            status.error.clear();
            true
        }
        _ => false,
    }
}

impl WorkloadFailure {
    /// Writes this failure into a status: state, reason and what was asked for.
    pub(super) fn describe_on(&self, status: &mut WorkloadStatus) {
        status.state = if self.unschedulable {
            ServiceState::Unschedulable
        } else {
            ServiceState::Failed
        };
        status.error.clone_from(&self.error);
        if !self.desired_model.is_empty() {
            status.desired_model.clone_from(&self.desired_model);
        }
        if self.port != 0 {
            status.port = self.port;
        }
    }
}

/// `m:1 90%, m:2 10%`: a workload's traffic split, for logs.
pub(super) fn traffic(workload: &Workload) -> String {
    let Some(model) = workload.as_model() else {
        return workload.describe();
    };
    model
        .models
        .iter()
        .map(|m| format!("{} {}%", m.model_ref(), m.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::serve::fake::backend;
    use crate::serve::{Routes, observe_routes};
    use edgeship_domain::HealthThresholds;

    const GATE: HealthThresholds = HealthThresholds {
        max_error_rate: Some(0.05),
        max_p99_ms: Some(100.0),
        window_seconds: 30,
        min_requests: 20,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn serving() -> WorkloadStatus {
        WorkloadStatus {
            state: ServiceState::Healthy,
            ..WorkloadStatus::new("web", "m:1, m:2", 5001)
        }
    }

    /// Judges `status` by what `routes` saw up to `at`; returns whether its state changed.
    fn check(status: &mut WorkloadStatus, routes: &Routes, at: Instant) -> bool {
        let seen = observe_routes(routes, at, Some(&GATE));
        judge(status, seen.breach)
    }

    #[test]
    fn slow_requests_make_a_workload_unhealthy_until_they_leave_the_window() {
        let routes = Routes::new(vec![(90, backend("m:1")), (10, backend("m:2"))]).expect("split");
        let [stable, canary] = [&routes.backends()[0], &routes.backends()[1]];
        let start = Instant::now();
        let mut status = serving();

        // Slow, but too few to judge.
        for n in 0..10 {
            canary.record(start + ms(n), ms(400), 200);
        }
        assert!(!check(&mut status, &routes, start + ms(10)));
        assert_eq!(status.state, ServiceState::Healthy);

        // Enough requests, and more than 1% of them slow: the p99 crosses 100 ms.
        for n in 0..30 {
            stable.record(start + ms(1000 + n), ms(5), 200);
        }
        assert!(check(&mut status, &routes, start + Duration::from_secs(2)));
        assert_eq!(status.state, ServiceState::Unhealthy);
        assert!(
            status.error.starts_with("p99 latency 4") && status.error.contains("exceeds 100 ms"),
            "{}",
            status.error
        );

        // Fast traffic alone does not clear it while the slow requests are in the window.
        for n in 0..500 {
            stable.record(start + Duration::from_secs(10) + ms(n), ms(5), 200);
        }
        assert!(!check(
            &mut status,
            &routes,
            start + Duration::from_secs(11)
        ));
        assert_eq!(status.state, ServiceState::Unhealthy);

        // 30 s on, the slow requests have left the window; the fast ones remain.
        let later = start + Duration::from_secs(31);
        assert_eq!(
            observe_routes(&routes, later, Some(&GATE))
                .metrics
                .window_requests,
            500
        );
        assert!(check(&mut status, &routes, later));
        assert_eq!(
            (status.state, status.error.as_str()),
            (ServiceState::Healthy, "")
        );
    }

    #[test]
    fn failed_requests_make_a_workload_unhealthy_and_the_message_follows_the_window() {
        let routes = Routes::single(backend("m:1"));
        let version = &routes.backends()[0];
        let start = Instant::now();
        let mut status = serving();
        for n in 0..100 {
            version.record(start + ms(n), ms(2), if n % 10 != 0 { 200 } else { 500 });
        }
        assert!(check(&mut status, &routes, start + ms(100)));
        assert_eq!(
            (status.state, status.error.as_str()),
            (
                ServiceState::Unhealthy,
                "error rate 0.100 over the last 30 s exceeds 0.050 (10 of 100 requests)"
            )
        );
        for n in 0..50 {
            version.record(start + ms(200 + n), ms(2), 200);
        }
        assert!(
            !check(&mut status, &routes, start + ms(300)),
            "still over 5%"
        );
        assert!(
            status.error.contains("(10 of 150 requests)"),
            "{}",
            status.error
        );
        // Enough good requests bring the window's rate under the gate: healthy again.
        for n in 0..150 {
            version.record(start + ms(400 + n), ms(2), 200);
        }
        assert!(check(&mut status, &routes, start + ms(600)));
        assert_eq!(status.state, ServiceState::Healthy);
    }

    #[test]
    fn only_a_serving_workload_with_a_gate_is_judged() {
        let routes = Routes::single(backend("m:1"));
        let start = Instant::now();
        for n in 0..50 {
            routes.backends()[0].record(start + ms(n), ms(2), 500);
        }
        let at = start + ms(50);
        for state in [
            ServiceState::Transitioning,
            ServiceState::Failed,
            ServiceState::Unschedulable,
        ] {
            let mut status = WorkloadStatus {
                state,
                error: "why".into(),
                ..serving()
            };
            assert!(!check(&mut status, &routes, at));
            assert_eq!((status.state, status.error.as_str()), (state, "why"));
        }
        let mut ungated = serving();
        let seen = observe_routes(&routes, at, None);
        assert_eq!(
            seen.metrics.window_errors, 50,
            "figures are kept without a gate"
        );
        assert!(!judge(&mut ungated, seen.breach));
        assert_eq!(ungated.state, ServiceState::Healthy);
    }
}
