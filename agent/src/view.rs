//! The agent's state as observers in the same process (tests, `edgeship dev`) see it.

use std::net::SocketAddr;

use edgeship_domain::ServiceState;

/// A workload as observers (tests, `edgeship dev`) see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadView {
    pub deployment: String,
    pub state: ServiceState,
    pub error: String,
    pub serving_model: String,
    pub desired_model: String,
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentView {
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadView>,
}

impl AgentView {
    pub fn workload(&self, deployment: &str) -> Option<&WorkloadView> {
        self.workloads.iter().find(|w| w.deployment == deployment)
    }
}
