//! edgeship hub: the control plane library behind the `edgeship` binary.

pub mod api;
pub mod blob_server;
pub mod blobs;
pub mod broadcast;
pub mod broker;
pub mod cli;
pub mod client;
pub mod device_logs;
pub mod fleet;
pub mod link;
pub mod registry;
pub mod server;

pub use server::{HubConfig, Mqtt, RunningHub};

/// Milliseconds since the Unix epoch: how records and reports carry time.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
