//! What the hub asks of a device and answers it, as the link hands it to the driver: log and
//! profile requests (bounds checked here) and acknowledgements of uploaded job output.

/// The hub's answer to a piece of a job's output: how much of it the hub holds, or why it
/// refuses the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadAck {
    pub job_id: String,
    pub sha256: String,
    pub received_bytes: u64,
    pub error: String,
    /// With `error`: the hub will take the output if it is sent again (later).
    pub retry: bool,
}

/// The hub asking for a deployment's recent log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    pub request_id: String,
    pub deployment: String,
    pub tail: usize,
    pub since_ms: i64,
}

/// The hub asking for a deployment's endpoint to be loaded at rising concurrency; bounds
/// checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRequest {
    pub request_id: String,
    pub deployment: String,
    pub path: String,
    pub content_type: String,
    pub body: bytes::Bytes,
    pub concurrency: Vec<u32>,
    pub seconds_per_level: u32,
}

/// The bounds of a profile: levels, connections per level, seconds per level.
pub const MAX_PROFILE_LEVELS: usize = 8;
pub const MAX_PROFILE_CONNECTIONS: u32 = 64;
pub const MAX_PROFILE_SECONDS: u32 = 30;

impl ProfileRequest {
    /// Why the hub's request cannot be run as it is, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency.is_empty() || self.concurrency.len() > MAX_PROFILE_LEVELS {
            return Err(format!("a profile has 1 to {MAX_PROFILE_LEVELS} levels"));
        }
        if self
            .concurrency
            .iter()
            .any(|&c| c == 0 || c > MAX_PROFILE_CONNECTIONS)
        {
            return Err(format!(
                "each level has 1 to {MAX_PROFILE_CONNECTIONS} connections"
            ));
        }
        if !(1..=MAX_PROFILE_SECONDS).contains(&self.seconds_per_level) {
            return Err(format!(
                "each level runs 1 to {MAX_PROFILE_SECONDS} seconds"
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(|c: char| c.is_whitespace()) {
            return Err(format!("{:?} is not a request path", self.path));
        }
        if self.content_type.contains(['\r', '\n']) {
            return Err("the content type spans lines".into());
        }
        Ok(())
    }
}

/// Lines a log request gets when it names no number.
pub const DEFAULT_LOG_TAIL: usize = 100;
/// The most lines one answer carries (a `tail` above is lowered): an answer must fit in one
/// MQTT packet.
pub const MAX_LOG_TAIL: usize = 2000;
