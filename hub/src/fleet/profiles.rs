//! The deployments profiles make (`edgeship model profile`): each is recorded, durably, in
//! the `profiles` tree before it is applied and forgotten after it is deleted, so a hub that
//! stops mid-profile deletes it when it starts again ([`Fleet::end_leftover_profiles`]).
//!
//! Design: the record, not the name, marks a deployment as a profile's. Only deployments the
//! hub recorded are ever deleted by it, so a deployment a user named `profile-…` before the
//! prefix was reserved is never touched. The prefix is reserved too (`apply` refuses new
//! deployments named so unless a profile makes them), so a user's deployment cannot take the
//! name a profile needs.

use serde::{Deserialize, Serialize};

use super::{Fleet, FleetError, decode, encode};

/// What names of profile deployments start with; reserved for them.
pub const PROFILE_PREFIX: &str = "profile-";

/// A profile whose deployment exists, or may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// `diabetes:1`.
    pub model: String,
    pub device: String,
    pub started_ms: i64,
}

impl Fleet {
    /// Reserves deployment `name` for a profile: refused while another profile runs under that
    /// name or on that device (an agent runs one profile at a time), or when a deployment of
    /// that name exists that no profile made. Durable before it returns.
    pub fn begin_profile(&self, name: &str, record: &ProfileRecord) -> Result<(), FleetError> {
        let _guard = self.guard();
        for entry in self.profiles.iter() {
            let (key, bytes) = entry?;
            let running: ProfileRecord = decode(&bytes, "profile")?;
            if key.as_ref() == name.as_bytes() {
                return Err(FleetError::FailedPrecondition(format!(
                    "a profile of {} is running on device {} (deployment {name}); wait for it to end",
                    running.model, running.device
                )));
            }
            if running.device == record.device {
                return Err(FleetError::FailedPrecondition(format!(
                    "a profile of {} is running on device {}; a device runs one profile at a time",
                    running.model, running.device
                )));
            }
        }
        if self.deployments.contains_key(name.as_bytes())? {
            return Err(FleetError::FailedPrecondition(format!(
                "deployment {name} exists and is not a profile's; delete it to profile {}",
                record.model
            )));
        }
        self.profiles.insert(name.as_bytes(), encode(record))?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes a profile's deployment (if it was made) and then its record. In this order, a
    /// hub that stops between the two finds the record and finishes the job.
    pub fn end_profile(&self, name: &str) -> Result<(), FleetError> {
        match self.delete_deployment(name) {
            Ok(()) | Err(FleetError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
        let _guard = self.guard();
        self.profiles.remove(name.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Ends the profiles a previous run of the hub left (it stopped mid-profile); at start-up,
    /// before any profile can begin. Returns the names of the deployments it ended. One that
    /// cannot be ended is logged and left for the next start: it must not keep the hub down.
    pub fn end_leftover_profiles(&self) -> Result<Vec<String>, FleetError> {
        let names = self
            .profiles
            .iter()
            .keys()
            .map(|key| key.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ended = Vec::new();
        for name in names {
            match self.end_profile(&name) {
                Ok(()) => {
                    tracing::info!(deployment = %name, "deployment of an interrupted profile deleted");
                    ended.push(name);
                }
                Err(err) => {
                    tracing::error!(deployment = %name, error = %err, "cannot delete the deployment of an interrupted profile")
                }
            }
        }
        Ok(ended)
    }
}
