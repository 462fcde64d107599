//! Taking a workload up: staging, self-test and switch (a failure is kept out and the previous
//! version keeps serving), or new weights and health gate in place.

use edgeship_domain::{ServiceState, Workload, WorkloadStatus};

use super::{Agent, StepError, status};
use crate::stage::StageError;

impl Agent {
    /// Stages, self-tests and switches to `workload`; a failure is kept out, and the previous
    /// version keeps serving.
    pub(super) async fn apply(&mut self, workload: Workload) -> Result<(), StepError> {
        let deployment = workload.deployment.clone();
        let mut status = self.begin(&workload);
        match self.stage.apply(&workload).await {
            Ok(()) => {
                status.state = ServiceState::Healthy;
                status.serving_model = workload.describe();
                status.error.clear();
                tracing::info!(%deployment, model = %workload.describe(), port = workload.endpoint.port, "workload switched");
                self.state.workloads.insert(deployment.clone(), workload);
                self.state.failures.remove(&deployment);
                self.persist("applied state");
                self.statuses.insert(deployment, status);
                self.publish_view();
                Ok(())
            }
            Err(err) => {
                let (state, reason) = match err {
                    StageError::Unschedulable(reason) => (ServiceState::Unschedulable, reason),
                    StageError::Failed(reason) => (ServiceState::Failed, reason),
                };
                tracing::warn!(%deployment, model = %workload.describe(), error = %reason, ?state, "workload not applied; the previous version keeps serving");
                let port = workload.endpoint.port;
                self.fail(
                    &deployment,
                    Some(workload.clone()),
                    &workload.describe(),
                    port,
                    state,
                    &reason,
                );
                Err(StepError::Lasting)
            }
        }
    }

    /// New weights or health gate for what serves: a new routing table over the loaded
    /// versions. The deployment stays in its state (`Healthy` or `Unhealthy`, judged again
    /// with the new gate at the next check) instead of passing through `Transitioning`, since
    /// nothing stops serving for a moment.
    pub(super) async fn retune(&mut self, workload: Workload) -> Result<(), StepError> {
        let deployment = workload.deployment.clone();
        if let Err(why) = self.stage.retune(&workload) {
            // The planner saw the same workload serving; if the stage disagrees, a full apply
            // still gets the device where it should be.
            tracing::warn!(%deployment, %why, "cannot retune in place; applying in full");
            return self.apply(workload).await;
        }
        tracing::info!(%deployment, traffic = %status::traffic(&workload), "weights and health gate changed in place; nothing reloaded");
        let status = self.statuses.entry(deployment.clone()).or_insert_with(|| {
            WorkloadStatus::new(&deployment, &workload.describe(), workload.endpoint.port)
        });
        if status.state != ServiceState::Unhealthy {
            status.state = ServiceState::Healthy;
            status.error.clear();
        }
        status.serving_model = workload.describe();
        status.desired_model = workload.describe();
        self.state.workloads.insert(deployment.clone(), workload);
        self.state.failures.remove(&deployment);
        self.persist("applied state");
        self.publish_view();
        Ok(())
    }
}
