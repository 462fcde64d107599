//! The driver's bookkeeping of workload states: what each deployment is doing, as reported to
//! the hub and shown to in-process observers.

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
                status.state = ServiceState::Healthy;
                status.error.clear();
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
            })
            .collect();
        self.view.send_replace(AgentView {
            applied_generation: self.state.applied_generation,
            workloads,
        });
    }

    /// Queues a report of every workload; never waits.
    pub(super) fn report(&mut self) {
        for (deployment, status) in self.statuses.iter_mut() {
            if let Some(metrics) = self.stage.metrics(deployment) {
                status.metrics = metrics;
            }
        }
        self.publish_view();
        self.sender.report(ReportedState {
            device_id: self.device_id.clone(),
            applied_generation: self.state.applied_generation,
            workloads: self.statuses.values().cloned().collect(),
            reported_at_ms: now_ms(),
        });
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
