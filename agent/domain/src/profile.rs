//! A profile's figures as a device measures them (`edgeship model profile`): one entry per
//! concurrency level, and the memory the deployment took. The agent fills them in; the hub
//! turns them into a recommendation.

/// What one level of a profile measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileLevel {
    pub concurrency: u32,
    /// Requests answered 2xx; every other answer and broken connection is in `errors`.
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The cores the agent kept busy serving (its callers' own CPU time taken out).
    pub cpu_cores: f64,
    /// The agent's largest resident memory seen during the level.
    pub peak_rss_bytes: u64,
}

/// A device's answer to a profile request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceProfile {
    pub levels: Vec<ProfileLevel>,
    /// How much the agent's resident memory grew when the deployment was loaded.
    pub load_bytes: u64,
    /// The agent's resident memory when the first level began.
    pub start_rss_bytes: u64,
    pub cpu_count: u32,
}

impl ProfileLevel {
    /// Requests answered per second; 0 for a level that took no time.
    pub fn requests_per_second(&self) -> f64 {
        let rps = self.requests as f64 / self.seconds;
        if rps.is_finite() { rps } else { 0.0 }
    }
}
