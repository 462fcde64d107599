//! edgeship hub: the control plane library behind the `edgeship` binary.

pub mod api;
pub mod blobs;
pub mod broker;
pub mod cli;
pub mod client;
pub mod fleet;
pub mod registry;
pub mod server;

pub use server::{HubConfig, Mqtt, RunningHub};
