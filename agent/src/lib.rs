//! edgeship agent: the per-device data plane behind the `edgeship-agent` binary.
//!
//! `driver` runs the event loop over the pure `reconcile` planner; `fetch` downloads into
//! `cache`; `stage` stages, self-tests and switches; `serve` holds the scoring endpoints and
//! their protocol adapters; `link` is the MQTT connection; `state` what survives a restart;
//! `device` what the agent announces about itself; `view` what in-process observers see.

pub mod acks;
pub mod aligned;
pub mod cache;
pub mod config;
#[cfg(feature = "containers")]
pub mod containers;
pub mod device;
pub mod driver;
#[cfg(feature = "enroll")]
pub mod enroll;
pub mod fetch;
pub mod jobs;
pub mod link;
pub mod logbook;
pub mod profile;
pub mod reconcile;
pub mod serve;
pub mod stage;
pub mod standalone;
pub mod state;
pub mod view;

pub use config::AgentConfig;
pub use driver::RunningAgent;
pub use view::{AgentView, WorkloadView};

/// Milliseconds since the Unix epoch: how births and reports carry time.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
