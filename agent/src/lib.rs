//! edgeship agent: the per-device data plane behind the `edgeship-agent` binary.

pub mod agent;
pub mod cache;
pub mod config;
pub mod link;
pub mod runtime;
pub mod scoring;
pub mod serve;
pub mod state;
pub mod tensor;

pub use agent::{AgentView, RunningAgent, WorkloadView};
pub use config::AgentConfig;
