//! What the agent persists so it can serve its last good state after a restart with no
//! broker: the last accepted desired state and the last good workload per deployment.
//!
//! Files are replaced atomically (write, fsync, rename, fsync the folder), so a crash leaves
//! either the old or the new version, never a torn one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use edgeship_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::tensor::{Dim, ElementType, TensorInfo};

/// A workload that passed its self-test and serves (or served) traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedWorkload {
    pub deployment: String,
    pub model_id: String,
    pub version: u32,
    pub runtime: String,
    pub port: u16,
    pub entry_file: String,
    /// `(path, sha256)` of every file of the model.
    pub files: Vec<(String, String)>,
    pub inputs: Vec<TensorRecord>,
    pub outputs: Vec<TensorRecord>,
    pub sample_input: Option<String>,
}

impl AppliedWorkload {
    pub fn model_ref(&self) -> String {
        format!("{}:{}", self.model_id, self.version)
    }
}

/// A tensor signature as persisted (`None` dims are unknown, strings are symbols).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRecord {
    pub name: String,
    pub element_type: String,
    pub shape: Vec<Option<String>>,
}

impl TensorRecord {
    pub fn from_wire(spec: &pb::TensorSpec) -> Self {
        TensorRecord {
            name: spec.name.clone(),
            element_type: spec.element_type.clone(),
            shape: spec
                .shape
                .iter()
                .map(|d| match &d.value {
                    Some(pb::dim::Value::Fixed(n)) => Some(n.to_string()),
                    Some(pb::dim::Value::Symbol(s)) => Some(format!("${s}")),
                    None => None,
                })
                .collect(),
        }
    }

    /// The runtime's view; fails on element types the runtimes cannot take as JSON.
    pub fn to_info(&self) -> Result<TensorInfo, String> {
        let element_type = ElementType::from_name(&self.element_type).ok_or_else(|| {
            format!(
                "tensor {:?} has element type {}, which scoring does not support",
                self.name, self.element_type
            )
        })?;
        let shape = self
            .shape
            .iter()
            .map(|d| match d {
                None => Dim::Any(None),
                Some(s) => match s.strip_prefix('$') {
                    Some(symbol) => Dim::Any(Some(symbol.to_owned())),
                    None => s.parse().map(Dim::Fixed).unwrap_or(Dim::Any(None)),
                },
            })
            .collect();
        Ok(TensorInfo {
            name: self.name.clone(),
            element_type,
            shape,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Highest desired generation accepted.
    pub accepted_generation: u64,
    /// Highest generation fully processed (each workload applied or failed).
    pub applied_generation: u64,
    pub workloads: BTreeMap<String, AppliedWorkload>,
    /// Why the desired version of a deployment is not the one serving; kept so a restart
    /// reports the failure instead of a misleading `Healthy`.
    #[serde(default)]
    pub failures: BTreeMap<String, WorkloadFailure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadFailure {
    pub desired_model: String,
    /// `Failed` or `Unschedulable`.
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

    pub fn load_desired(&self) -> Option<pb::DesiredState> {
        let bytes = fs::read(self.dir.join("desired.pb")).ok()?;
        pb::DesiredState::decode(bytes.as_slice()).ok()
    }

    pub fn save_desired(&self, desired: &pb::DesiredState) -> std::io::Result<()> {
        self.replace("desired.pb", &desired.encode_to_vec())
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
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
            AppliedWorkload {
                deployment: "web".into(),
                model_id: "m".into(),
                version: 2,
                runtime: "tract".into(),
                port: 8080,
                entry_file: "model.onnx".into(),
                files: vec![("model.onnx".into(), "ab".into())],
                inputs: vec![],
                outputs: vec![],
                sample_input: None,
            },
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

    #[test]
    fn tensor_records_keep_fixed_symbolic_and_unknown_dims() {
        let record = TensorRecord::from_wire(&pb::TensorSpec {
            name: "x".into(),
            element_type: "float32".into(),
            shape: vec![
                pb::Dim { value: None },
                pb::Dim {
                    value: Some(pb::dim::Value::Symbol("batch".into())),
                },
                pb::Dim {
                    value: Some(pb::dim::Value::Fixed(3)),
                },
            ],
        });
        let info = record.to_info().expect("supported");
        assert_eq!(
            info.shape,
            [
                Dim::Any(None),
                Dim::Any(Some("batch".into())),
                Dim::Fixed(3)
            ]
        );
        let text = TensorRecord {
            element_type: "string".into(),
            ..record
        };
        assert!(text.to_info().is_err());
    }
}
