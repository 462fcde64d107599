//! What devices say about themselves: births (with capabilities) and reported state.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::capabilities::Capabilities;
use crate::job::JobStatus;

/// Service states, as Azure ML names them; ordered from best to worst, so the worst over a
/// deployment's devices is its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceState {
    Healthy,
    Transitioning,
    Unhealthy,
    Unschedulable,
    Failed,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Healthy => "Healthy",
            ServiceState::Transitioning => "Transitioning",
            ServiceState::Unhealthy => "Unhealthy",
            ServiceState::Unschedulable => "Unschedulable",
            ServiceState::Failed => "Failed",
        })
    }
}

/// A device announcing itself (online), or its Last Will (offline).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Birth {
    pub device_id: String,
    pub online: bool,
    pub agent_version: String,
    pub capabilities: Capabilities,
    pub labels: BTreeMap<String, String>,
    pub at_ms: i64,
}

/// A device's report: the newest generation it has processed and each workload's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportedState {
    pub device_id: String,
    pub applied_generation: u64,
    pub workloads: Vec<WorkloadStatus>,
    pub reported_at_ms: i64,
    /// Every job of the desired state the device has taken up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub deployment: String,
    pub state: ServiceState,
    /// Why the workload is not healthy; empty when it is.
    pub error: String,
    /// What serves now (`model:version`, several joined by `, `).
    pub serving_model: String,
    /// What the desired state asks for, in the same form.
    pub desired_model: String,
    pub port: u16,
    #[serde(default)]
    pub metrics: EndpointMetrics,
}

impl WorkloadStatus {
    pub fn new(deployment: &str, desired_model: &str, port: u16) -> Self {
        Self {
            deployment: deployment.to_owned(),
            state: ServiceState::Transitioning,
            error: String::new(),
            serving_model: String::new(),
            desired_model: desired_model.to_owned(),
            port,
            metrics: EndpointMetrics::default(),
        }
    }
}

/// A scoring endpoint's counters since it started, and its sliding window (what health gates
/// and `Unhealthy` judge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointMetrics {
    pub requests: u64,
    pub errors: u64,
    pub mean_latency_ms: f64,
    #[serde(default)]
    pub window_seconds: u32,
    #[serde(default)]
    pub window_requests: u64,
    #[serde(default)]
    pub window_errors: u64,
    #[serde(default)]
    pub p50_ms: f64,
    #[serde(default)]
    pub p99_ms: f64,
    /// Per version behind a traffic split; empty with one model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionMetrics>,
}

impl EndpointMetrics {
    /// Failed share of the window's requests (0 with none).
    pub fn window_error_rate(&self) -> f64 {
        if self.window_requests == 0 {
            0.0
        } else {
            self.window_errors as f64 / self.window_requests as f64
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMetrics {
    /// `model_id:version`.
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub window_requests: u64,
    pub window_errors: u64,
    pub p99_ms: f64,
}
