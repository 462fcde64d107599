//! Domain types of the model registry: plain Rust, independent of protobuf and storage.

use std::collections::BTreeMap;
use std::fmt;

use edgeship_domain::trust::ModelSignature;
use serde::{Deserialize, Serialize};

pub use edgeship_domain::{Dim, ElementType, OnnxSignature, TensorSpec};

/// Which registry a record belongs to. Models and entry modules are registered and versioned
/// alike, each in a namespace of its own (a module may share a model's name); both keep their
/// files in the one blob store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Model,
    Module,
}

impl Kind {
    /// `model` or `module`, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Module => "module",
        }
    }

    /// The AIP-122 collection: `models` or `modules`.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Module => "modules",
        }
    }

    pub fn name_kind(self) -> edgeship_domain::names::NameKind {
        match self {
            Kind::Model => edgeship_domain::names::NameKind::Model,
            Kind::Module => edgeship_domain::names::NameKind::Module,
        }
    }

    /// `{collection}/{id}/versions/{version}`.
    pub fn resource_name(self, id: &str, version: impl fmt::Display) -> String {
        format!("{}/{id}/versions/{version}", self.collection())
    }
}

/// One registered version of a model (or of an entry module: the same record in the module
/// registry's trees), as the registry stores and returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model_id: String,
    pub version: u32,
    pub description: String,
    pub framework: String,
    pub framework_version: String,
    pub tags: BTreeMap<String, String>,
    pub properties: BTreeMap<String, String>,
    pub files: Vec<ModelFile>,
    /// JSON document, e.g. `{"data": [[...]]}`; drives the scoring schema and self-test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_output: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub create_time_ms: i64,
    pub update_time_ms: i64,
    /// Signatures over the files by model-signing keys, each verified when it was added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<VersionSignature>,
}

/// A model signature as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSignature {
    #[serde(flatten)]
    pub signed: ModelSignature,
    pub sign_time_ms: i64,
}

impl ModelVersion {
    /// What a model signature over this version covers.
    pub fn statement(&self) -> Vec<u8> {
        edgeship_domain::trust::model_statement(
            &self.model_id,
            self.version,
            self.files
                .iter()
                .map(|f| (f.path.as_str(), f.sha256.as_str(), f.size_bytes)),
        )
    }

    /// AIP-122 resource name, `models/{model_id}/versions/{version}`.
    pub fn resource_name(&self) -> String {
        format!("models/{}/versions/{}", self.model_id, self.version)
    }

    pub fn total_size_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size_bytes).sum()
    }
}

/// A file of a model version; its bytes live in the blob store under `sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxSignature>,
}

impl ModelFile {
    /// The file as a device fetches it: where it goes, and which blob holds it.
    pub fn blob_ref(&self) -> edgeship_domain::BlobRef {
        edgeship_domain::BlobRef {
            path: self.path.clone(),
            sha256: self.sha256.clone(),
            size_bytes: self.size_bytes,
        }
    }
}

/// Which version of a model a request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSelector {
    Exact(u32),
    Latest,
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSelector::Exact(version) => write!(f, "{version}"),
            VersionSelector::Latest => f.write_str("latest"),
        }
    }
}

/// A reference to one model version, e.g. parsed from `models/diabetes/versions/3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    pub model_id: String,
    pub version: VersionSelector,
}

impl VersionRef {
    /// AIP-122 resource name, `models/{model_id}/versions/{version|latest}`.
    pub fn resource_name(&self) -> String {
        format!("models/{}/versions/{}", self.model_id, self.version)
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.model_id, self.version)
    }
}

/// What a delete removes: one version, or every version of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteTarget {
    Version(VersionRef),
    AllVersions(String),
}

/// Metadata of a model version about to be registered (files follow separately).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewModel {
    pub model_id: String,
    pub description: String,
    pub framework: String,
    pub framework_version: String,
    pub tags: BTreeMap<String, String>,
    pub properties: BTreeMap<String, String>,
    pub sample_input: Option<String>,
    pub sample_output: Option<String>,
}

/// A change to a version's mutable metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelUpdate {
    pub add_tags: BTreeMap<String, String>,
    pub remove_tags: Vec<String>,
    pub add_properties: BTreeMap<String, String>,
    pub remove_properties: Vec<String>,
    pub description: Option<String>,
}

/// A condition on a tag or property: the key is present, optionally with exactly this value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyMatch {
    pub key: String,
    pub value: Option<String>,
}

impl KeyMatch {
    pub fn matches(&self, map: &BTreeMap<String, String>) -> bool {
        match (map.get(&self.key), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(actual), Some(wanted)) => actual == wanted,
        }
    }
}

impl fmt::Display for KeyMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={}", self.key, value),
            None => f.write_str(&self.key),
        }
    }
}

/// Filter and page position of a list request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub model_id: Option<String>,
    pub tags: Vec<KeyMatch>,
    pub properties: Vec<KeyMatch>,
    pub framework: Option<String>,
    pub page_size: usize,
    pub page_token: Option<String>,
}

impl ListQuery {
    pub fn matches(&self, model: &ModelVersion) -> bool {
        self.model_id
            .as_ref()
            .is_none_or(|id| *id == model.model_id)
            && self
                .framework
                .as_ref()
                .is_none_or(|fw| *fw == model.framework)
            && self.tags.iter().all(|m| m.matches(&model.tags))
            && self.properties.iter().all(|m| m.matches(&model.properties))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub models: Vec<ModelVersion>,
    pub next_page_token: Option<String>,
}
