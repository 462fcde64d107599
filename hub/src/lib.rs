//! edgeship hub: the control plane library behind the `edgeship` binary.

pub mod access;
pub mod api;
pub mod blob_server;
pub mod blobs;
pub mod broadcast;
pub mod broker;
pub mod cli;
pub mod client;
pub mod device_logs;
pub mod device_requests;
pub mod fleet;
pub mod jobs;
pub mod link;
pub mod profiles;
pub mod registry;
pub mod server;
pub mod trust;

pub use server::{HubConfig, Mqtt, RunningHub};

/// Milliseconds since the Unix epoch: how records and reports carry time.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// UTC time as RFC 3339 with second precision, e.g. `2026-11-25T20:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
