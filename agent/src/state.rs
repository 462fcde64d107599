//! What the agent persists so it can serve its last good state after a restart with no
//! broker: the last accepted desired state and the last good workload per deployment.
//!
//! Files are replaced atomically (write, fsync, rename, fsync the folder), so a crash leaves
//! either the old or the new version, never a torn one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use edgeship_domain::{DesiredState, Workload};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Highest desired generation accepted.
    pub accepted_generation: u64,
    /// Highest generation fully processed (each workload applied or failed).
    pub applied_generation: u64,
    /// The last good workload of each deployment: what serves, and what a restart serves.
    pub workloads: BTreeMap<String, Workload>,
    /// Why the desired workload of a deployment is not the one serving; kept so a restart
    /// reports the failure instead of a misleading `Healthy`, and so the same workload is not
    /// tried again until the hub asks for something else.
    #[serde(default)]
    pub failures: BTreeMap<String, WorkloadFailure>,
}

/// A desired workload that could not be applied for a reason retrying will not fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadFailure {
    /// What was asked for, as people read it (`model:version`).
    pub desired_model: String,
    /// The workload that failed; `None` when it could not even be decoded.
    pub workload: Option<Workload>,
    pub port: u16,
    /// `Unschedulable` (cannot run here) rather than `Failed`.
    pub unschedulable: bool,
    pub error: String,
}

#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn load(&self) -> Result<PersistedState, String> {
        match fs::read(self.dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| format!("state.json is damaged: {err}")),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(err) => Err(format!("cannot read state.json: {err}")),
        }
    }

    pub fn save(&self, state: &PersistedState) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        self.replace("state.json", &bytes)
    }

    /// The last accepted desired state; `None` if there is none or it cannot be read (the
    /// hub's retained message brings it back).
    pub fn load_desired(&self) -> Option<DesiredState> {
        let bytes = fs::read(self.dir.join("desired.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save_desired(&self, desired: &DesiredState) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(desired).map_err(std::io::Error::other)?;
        self.replace("desired.json", &bytes)
    }

    /// Writes `name` whole, readable by the agent's user alone: a desired state may carry an
    /// endpoint's private key.
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = self.dir.join(format!("{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, self.dir.join(name))
        })();
        if written.is_err() {
            // A full disk, say: the old file stands, and no half-written copy stays behind.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_round_trip_and_a_leftover_temp_file() {
        let dir = tempfile::tempdir().expect("temp");
        let store = StateStore::new(dir.path()).expect("store");
        assert_eq!(store.load().expect("empty"), PersistedState::default());
        let mut state = PersistedState {
            accepted_generation: 4,
            applied_generation: 3,
            ..PersistedState::default()
        };
        state.workloads.insert(
            "web".into(),
            edgeship_domain::fixtures::model_workload("web", 2, 1),
        );
        store.save(&state).expect("save");
        fs::write(dir.path().join("state.json.tmp"), "torn").expect("write");
        assert_eq!(store.load().expect("load"), state);
    }

    #[test]
    fn a_damaged_state_file_is_reported_not_ignored() {
        let dir = tempfile::tempdir().expect("temp");
        fs::write(dir.path().join("state.json"), "{not json").expect("write");
        let store = StateStore::new(dir.path()).expect("store");
        assert!(
            store
                .load()
                .expect_err("damaged")
                .contains("state.json is damaged")
        );
    }
}
