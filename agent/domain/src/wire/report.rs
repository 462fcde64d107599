//! Births and reports on the wire.

use std::collections::BTreeMap;

use edgeship_proto::v1 as pb;

use super::WireError;
use crate::capabilities::{Capabilities, OpenClDevice};
use crate::job::JobStatus;
use crate::names;
use crate::report::{
    Birth, EndpointMetrics, ReportedState, ServiceState, VersionMetrics, WorkloadStatus,
};

impl From<&OpenClDevice> for pb::OpenClDevice {
    fn from(d: &OpenClDevice) -> Self {
        pb::OpenClDevice {
            platform: d.platform.clone(),
            name: d.name.clone(),
            kind: d.kind.clone(),
            vendor: d.vendor.clone(),
            driver_version: d.driver_version.clone(),
            compute_units: d.compute_units,
            global_memory_bytes: d.global_memory_bytes,
            opencl_c_version: d.opencl_c_version.clone(),
            fp16: d.fp16,
        }
    }
}

impl From<pb::OpenClDevice> for OpenClDevice {
    fn from(d: pb::OpenClDevice) -> Self {
        OpenClDevice {
            platform: d.platform,
            name: d.name,
            kind: d.kind,
            vendor: d.vendor,
            driver_version: d.driver_version,
            compute_units: d.compute_units,
            global_memory_bytes: d.global_memory_bytes,
            opencl_c_version: d.opencl_c_version,
            fp16: d.fp16,
        }
    }
}

impl From<&Capabilities> for pb::Capabilities {
    fn from(c: &Capabilities) -> Self {
        pb::Capabilities {
            arch: c.arch.clone(),
            os: c.os.clone(),
            cpu_count: c.cpu_count,
            memory_bytes: c.memory_bytes,
            runtimes: c.runtimes.clone(),
            opencl_devices: c
                .opencl_devices
                .iter()
                .map(pb::OpenClDevice::from)
                .collect(),
            features: c.features.iter().cloned().collect(),
            container_engine: c.container_engine.clone(),
        }
    }
}

impl From<pb::Capabilities> for Capabilities {
    fn from(c: pb::Capabilities) -> Self {
        Capabilities {
            arch: c.arch,
            os: c.os,
            cpu_count: c.cpu_count,
            memory_bytes: c.memory_bytes,
            runtimes: c.runtimes,
            opencl_devices: c
                .opencl_devices
                .into_iter()
                .map(OpenClDevice::from)
                .collect(),
            features: c.features.into_iter().collect(),
            container_engine: c.container_engine,
        }
    }
}

impl From<&Birth> for pb::Birth {
    fn from(birth: &Birth) -> Self {
        pb::Birth {
            device_id: birth.device_id.clone(),
            online: birth.online,
            agent_version: birth.agent_version.clone(),
            capabilities: Some((&birth.capabilities).into()),
            labels: birth.labels.clone().into_iter().collect(),
            at_ms: birth.at_ms,
        }
    }
}

impl TryFrom<pb::Birth> for Birth {
    type Error = WireError;

    fn try_from(birth: pb::Birth) -> Result<Self, WireError> {
        names::device_id(&birth.device_id)?;
        Ok(Birth {
            device_id: birth.device_id,
            online: birth.online,
            agent_version: birth.agent_version,
            capabilities: birth
                .capabilities
                .map(Capabilities::from)
                .unwrap_or_default(),
            labels: birth.labels.into_iter().collect::<BTreeMap<_, _>>(),
            at_ms: birth.at_ms,
        })
    }
}

pub fn wire_state(state: ServiceState) -> pb::ServiceState {
    match state {
        ServiceState::Healthy => pb::ServiceState::Healthy,
        ServiceState::Transitioning => pb::ServiceState::Transitioning,
        ServiceState::Unhealthy => pb::ServiceState::Unhealthy,
        ServiceState::Unschedulable => pb::ServiceState::Unschedulable,
        ServiceState::Failed => pb::ServiceState::Failed,
    }
}

/// Unknown or unspecified states read as `Transitioning`: not yet known to be anything else.
pub fn service_state(code: i32) -> ServiceState {
    match pb::ServiceState::try_from(code) {
        Ok(pb::ServiceState::Healthy) => ServiceState::Healthy,
        Ok(pb::ServiceState::Unhealthy) => ServiceState::Unhealthy,
        Ok(pb::ServiceState::Unschedulable) => ServiceState::Unschedulable,
        Ok(pb::ServiceState::Failed) => ServiceState::Failed,
        _ => ServiceState::Transitioning,
    }
}

impl From<&WorkloadStatus> for pb::WorkloadStatus {
    fn from(status: &WorkloadStatus) -> Self {
        pb::WorkloadStatus {
            deployment: status.deployment.clone(),
            state: wire_state(status.state).into(),
            error: status.error.clone(),
            serving_model: status.serving_model.clone(),
            desired_model: status.desired_model.clone(),
            port: u32::from(status.port),
            metrics: Some(pb::EndpointMetrics::from(&status.metrics)),
        }
    }
}

impl From<&EndpointMetrics> for pb::EndpointMetrics {
    fn from(m: &EndpointMetrics) -> Self {
        pb::EndpointMetrics {
            requests: m.requests,
            errors: m.errors,
            mean_latency_ms: m.mean_latency_ms,
            window_seconds: m.window_seconds,
            window_requests: m.window_requests,
            window_errors: m.window_errors,
            p50_ms: m.p50_ms,
            p99_ms: m.p99_ms,
            versions: m
                .versions
                .iter()
                .map(|v| pb::VersionMetrics {
                    model: v.model.clone(),
                    requests: v.requests,
                    errors: v.errors,
                    window_requests: v.window_requests,
                    window_errors: v.window_errors,
                    p99_ms: v.p99_ms,
                })
                .collect(),
        }
    }
}

/// Figures a device sends are shown and compared, never trusted as counts of anything: a
/// non-finite latency becomes 0 and a window cannot hold more errors than requests.
impl From<pb::EndpointMetrics> for EndpointMetrics {
    fn from(m: pb::EndpointMetrics) -> Self {
        let finite = |v: f64| if v.is_finite() && v >= 0.0 { v } else { 0.0 };
        EndpointMetrics {
            requests: m.requests,
            errors: m.errors.min(m.requests),
            mean_latency_ms: finite(m.mean_latency_ms),
            window_seconds: m.window_seconds,
            window_requests: m.window_requests,
            window_errors: m.window_errors.min(m.window_requests),
            p50_ms: finite(m.p50_ms),
            p99_ms: finite(m.p99_ms),
            versions: m
                .versions
                .into_iter()
                .map(|v| VersionMetrics {
                    model: v.model,
                    requests: v.requests,
                    errors: v.errors.min(v.requests),
                    window_requests: v.window_requests,
                    window_errors: v.window_errors.min(v.window_requests),
                    p99_ms: finite(v.p99_ms),
                })
                .collect(),
        }
    }
}

impl From<pb::WorkloadStatus> for WorkloadStatus {
    fn from(status: pb::WorkloadStatus) -> Self {
        let metrics = status.metrics.unwrap_or_default();
        WorkloadStatus {
            state: service_state(status.state),
            deployment: status.deployment,
            error: status.error,
            serving_model: status.serving_model,
            desired_model: status.desired_model,
            port: u16::try_from(status.port).unwrap_or(0),
            metrics: EndpointMetrics::from(metrics),
        }
    }
}

impl From<&ReportedState> for pb::ReportedState {
    fn from(report: &ReportedState) -> Self {
        pb::ReportedState {
            device_id: report.device_id.clone(),
            applied_generation: report.applied_generation,
            workloads: report
                .workloads
                .iter()
                .map(pb::WorkloadStatus::from)
                .collect(),
            reported_at_ms: report.reported_at_ms,
            jobs: report.jobs.iter().map(pb::JobStatus::from).collect(),
        }
    }
}

impl TryFrom<pb::ReportedState> for ReportedState {
    type Error = WireError;

    fn try_from(report: pb::ReportedState) -> Result<Self, WireError> {
        names::device_id(&report.device_id)?;
        Ok(ReportedState {
            device_id: report.device_id,
            applied_generation: report.applied_generation,
            workloads: report
                .workloads
                .into_iter()
                .map(WorkloadStatus::from)
                .collect(),
            reported_at_ms: report.reported_at_ms,
            jobs: report
                .jobs
                .into_iter()
                .map(JobStatus::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}
