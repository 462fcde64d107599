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
use sha2::{Digest as _, Sha256};

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

    /// The persisted state. A damaged `state.json` (a failing disk, a stray hand) must not
    /// keep the device down: it is set aside as `state.json.damaged`, reported, and the agent
    /// starts afresh, the hub's retained desired state bringing its workloads back. The
    /// newest generation it had accepted is taken from `desired.json` where that survives,
    /// so an older desired state is still refused.
    pub fn load(&self) -> Result<PersistedState, String> {
        let path = self.dir.join("state.json");
        match fs::read(&path) {
            Ok(bytes) => match checked_body(&bytes)
                .and_then(|body| serde_json::from_slice(body).map_err(|err| err.to_string()))
            {
                Ok(state) => Ok(state),
                Err(err) => {
                    let aside = self.dir.join("state.json.damaged");
                    fs::rename(&path, &aside).map_err(|e| {
                        format!("state.json is damaged ({err}) and cannot be set aside: {e}")
                    })?;
                    tracing::error!(error = %err, kept = %aside.display(), "state.json is damaged; starting afresh from the hub's desired state");
                    let accepted_generation =
                        self.load_desired().map_or(0, |desired| desired.generation);
                    Ok(PersistedState {
                        accepted_generation,
                        ..PersistedState::default()
                    })
                }
            },
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
        serde_json::from_slice(checked_body(&bytes).ok()?).ok()
    }

    pub fn save_desired(&self, desired: &DesiredState) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(desired).map_err(std::io::Error::other)?;
        self.replace("desired.json", &bytes)
    }

    /// Writes `name` whole, readable by the agent's user alone (a desired state may carry an
    /// endpoint's private key), behind a line with the sha256 of what follows: a file that a
    /// failing disk or a stray hand changed is found damaged even when it still parses.
    fn replace(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        let mut bytes =
            format!("{CHECKED_PREFIX}{}\n", hex::encode(Sha256::digest(body))).into_bytes();
        bytes.extend_from_slice(body);
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = self.dir.join(format!("{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
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

/// The first line of a state file: the sha256 of the rest follows it.
const CHECKED_PREFIX: &str = "edgeship-checked sha256=";

/// The body of a state file whose checksum holds; a file without the line (written by an
/// agent before checksums) is all body.
fn checked_body(bytes: &[u8]) -> Result<&[u8], String> {
    let Some(rest) = bytes.strip_prefix(CHECKED_PREFIX.as_bytes()) else {
        return Ok(bytes);
    };
    let newline = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("its checksum line is cut off")?;
    let (digest, body) = (&rest[..newline], &rest[newline + 1..]);
    if hex::encode(Sha256::digest(body)).as_bytes() == digest {
        Ok(body)
    } else {
        Err("its contents do not match their checksum".into())
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
    fn a_damaged_state_file_is_set_aside_and_the_agent_starts_afresh() {
        let dir = tempfile::tempdir().expect("temp");
        let store = StateStore::new(dir.path()).expect("store");
        let desired = DesiredState {
            device_id: "edge-1".into(),
            generation: 9,
            workloads: Vec::new(),
            rejected: Vec::new(),
            issued_at_ms: 0,
            jobs: Vec::new(),
            rejected_jobs: Vec::new(),
        };
        store.save_desired(&desired).expect("save desired");
        fs::write(dir.path().join("state.json"), "{not json").expect("write");
        let state = store.load().expect("starts afresh");
        assert_eq!(
            state,
            PersistedState {
                accepted_generation: 9,
                ..PersistedState::default()
            }
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("state.json.damaged")).expect("kept aside"),
            "{not json"
        );
        // A byte changed that still parses is found by the checksum.
        store.save(&PersistedState::default()).expect("save");
        let mut bytes = fs::read(dir.path().join("state.json")).expect("read");
        let last = bytes.len() - 2;
        bytes[last] = b' ';
        fs::write(dir.path().join("state.json"), &bytes).expect("write");
        assert!(checked_body(&bytes).is_err());
        assert_eq!(store.load().expect("afresh").accepted_generation, 9);
        let mut desired_bytes = fs::read(dir.path().join("desired.json")).expect("read");
        desired_bytes.push(b' ');
        fs::write(dir.path().join("desired.json"), &desired_bytes).expect("write");
        assert_eq!(
            store.load_desired(),
            None,
            "a changed desired state was taken"
        );
        // Without a desired state either, it starts from nothing.
        fs::remove_file(dir.path().join("desired.json")).expect("remove");
        fs::write(dir.path().join("state.json"), "[]").expect("write");
        assert_eq!(store.load().expect("afresh"), PersistedState::default());
    }
}
