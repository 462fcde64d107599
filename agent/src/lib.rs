//! edgeship agent: the per-device data plane behind the `edgeship-agent` binary.
//!
//! `driver` runs the event loop over the pure `reconcile` planner; `fetch` downloads into
//! `cache`; `stage` stages, self-tests and switches; `serve` holds the scoring endpoints and
//! their protocol adapters; `link` is the MQTT connection; `state` what survives a restart.

pub mod cache;
pub mod config;
pub mod driver;
pub mod fetch;
pub mod link;
pub mod reconcile;
pub mod serve;
pub mod stage;
pub mod state;

pub use config::AgentConfig;
pub use driver::{AgentView, RunningAgent, WorkloadView};
