//! The agent's state as observers in the same process (tests, `edgeship dev`) see it.

use std::net::SocketAddr;

use edgeship_domain::{EndpointMetrics, JobStatus, ServiceState};

/// A workload as observers (tests, `edgeship dev`) see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadView {
    pub deployment: String,
    pub state: ServiceState,
    pub error: String,
    pub serving_model: String,
    pub desired_model: String,
    pub addr: Option<SocketAddr>,
    /// The endpoint's figures as of the last report or health check.
    pub metrics: EndpointMetrics,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentView {
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadView>,
    /// Model versions loaded since the agent started: a change of weights or health gate, or
    /// a split that keeps a loaded version, leaves it as it was.
    pub models_loaded: u64,
    /// Batch jobs of the desired state, with their progress.
    pub jobs: Vec<JobStatus>,
}

impl AgentView {
    pub fn workload(&self, deployment: &str) -> Option<&WorkloadView> {
        self.workloads.iter().find(|w| w.deployment == deployment)
    }

    pub fn job(&self, job_id: &str) -> Option<&JobStatus> {
        self.jobs.iter().find(|j| j.job_id == job_id)
    }
}
