//! The registry's durable state: sled trees for version records, per-name version counters
//! and blob reference counts, plus the blob store for file bytes. Models and entry modules
//! are two [`Registry`]s over one [`Shared`] store: each has its own version and counter
//! trees (`versions`/`counters`, `module_versions`/`module_counters`), and both count their
//! references to blobs in the one `blob_refs` tree under the one write lock, so a blob a model
//! and a module both hold stays until neither does. Batch jobs count theirs there too
//! (`holds.rs`).
//!
//! Architecture invariant: a write is acknowledged only after `sled::Db::flush`, and the
//! version record and its blob reference counts change in one sled transaction, so a crash at
//! any point leaves either the old or the new state. Blob files are moved in *before* the
//! transaction and deleted *after* it; the only debris a crash can leave is an unreferenced
//! blob or a staging folder, both removed by [`Registry::open`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::upload::{StagedFile, StagedModel, Upload};
use super::{
    DeleteTarget, Error, Kind, ListQuery, ModelFile, ModelUpdate, ModelVersion, NewModel, Page,
    VersionRef, VersionSelector, module, page, validate,
};
use crate::blobs::BlobStore;
use crate::now_ms;

/// Size limits the hub enforces on registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_model_bytes: u64,
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_model_bytes: 16 * 1024 * 1024 * 1024,
            max_files: 10_000,
        }
    }
}

/// What the model and module registries share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) db: sled::Db,
    pub(super) blob_refs: sled::Tree,
    pub(super) blobs: BlobStore,
    /// Serializes writes of both registries, so that moving blobs in or out of the store and
    /// the reference-count transaction happen as one step relative to other writers.
    pub(super) write_lock: Mutex<()>,
}

/// The registry of models, or (from [`Registry::modules`]) of entry modules.
#[derive(Debug)]
pub struct Registry {
    kind: Kind,
    pub(super) shared: Arc<Shared>,
    pub(super) versions: sled::Tree,
    counters: sled::Tree,
    limits: Limits,
}

fn version_key(model_id: &str, version: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(model_id.len() + 5);
    key.extend_from_slice(model_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn model_prefix(model_id: &str) -> Vec<u8> {
    let mut key = model_id.as_bytes().to_vec();
    key.push(0);
    key
}

pub(super) fn decode(bytes: &[u8]) -> Result<ModelVersion, Error> {
    serde_json::from_slice(bytes)
        .map_err(|err| Error::DataLoss(format!("a model record cannot be decoded: {err}")))
}

pub(super) fn encode(model: &ModelVersion) -> Vec<u8> {
    // Serializing plain owned data to a Vec cannot fail.
    serde_json::to_vec(model).unwrap_or_default()
}

fn read_u64(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn abort<T>(err: Error) -> Result<T, ConflictableTransactionError<Error>> {
    Err(ConflictableTransactionError::Abort(err))
}

pub(super) fn from_tx(err: TransactionError<Error>) -> Error {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => Error::Storage(err),
    }
}

/// sled's page cache: the hub's whole database (registry, deployments, devices, desired
/// states, rollouts) shares it.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Registry {
    /// Opens (or creates) the model registry under `data_dir` and clears crash debris.
    pub fn open(data_dir: &Path, limits: Limits) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(Error::io(format!(
            "creating data dir {}",
            data_dir.display()
        )))?;
        let db = sled::Config::new()
            .path(data_dir.join("registry.sled"))
            // sled caches up to 1 GiB of pages by default; a hub of 10,000 devices rewrites
            // their records during a rollout and grew to 760 MiB. The live data is a few KiB
            // per device: this bounds the cache (docs/benchmarks.md, fleet rollouts).
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let blobs =
            BlobStore::open(data_dir.join("blobs")).map_err(Error::io("opening the blob store"))?;
        let shared = Arc::new(Shared {
            blob_refs: db.open_tree("blob_refs")?,
            db,
            blobs,
            write_lock: Mutex::new(()),
        });
        let registry = Self::over(Kind::Model, shared, limits)?;
        registry.recover()?;
        Ok(registry)
    }

    /// The registry of entry modules, over the same database and blob store: one `.wasm` file
    /// of at most [`module::MAX_MODULE_BYTES`] per version.
    pub fn modules(&self) -> Result<Self, Error> {
        Self::over(Kind::Module, Arc::clone(&self.shared), module::limits())
    }

    fn over(kind: Kind, shared: Arc<Shared>, limits: Limits) -> Result<Self, Error> {
        // The model trees keep their original names, so existing data dirs read unchanged.
        let (versions, counters) = match kind {
            Kind::Model => ("versions", "counters"),
            Kind::Module => ("module_versions", "module_counters"),
        };
        Ok(Self {
            kind,
            versions: shared.db.open_tree(versions)?,
            counters: shared.db.open_tree(counters)?,
            shared,
            limits,
        })
    }

    /// Models or modules.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Removes blobs no version of either registry references (a crash between moving a file
    /// in and committing), and reports referenced blobs that are missing.
    fn recover(&self) -> Result<(), Error> {
        let Shared {
            blobs, blob_refs, ..
        } = &*self.shared;
        blobs
            .clear_staging()
            .map_err(Error::io("clearing the staging folder"))?;
        let mut orphans = 0;
        for digest in blobs.digests().map_err(Error::io("listing blobs"))? {
            if !blob_refs.contains_key(digest.as_bytes())? {
                blobs
                    .remove(&digest)
                    .map_err(Error::io("removing an orphaned blob"))?;
                orphans += 1;
            }
        }
        let mut missing = 0;
        for entry in blob_refs.iter() {
            let (digest, _) = entry?;
            let digest = String::from_utf8_lossy(&digest);
            if !blobs.contains(&digest) {
                tracing::error!(%digest, "a referenced blob is missing from the blob store");
                missing += 1;
            }
        }
        tracing::info!(
            versions = self.versions.len(),
            orphans_removed = orphans,
            missing_blobs = missing,
            "registry opened"
        );
        Ok(())
    }

    /// The database, shared with the fleet store (one sled instance per data dir).
    pub fn db(&self) -> sled::Db {
        self.shared.db.clone()
    }

    /// Starts a registration; files are staged until [`Registry::commit`].
    pub async fn begin_upload(&self, model: NewModel) -> Result<Upload, Error> {
        Upload::begin(
            self.kind,
            model,
            self.shared.blobs.staging_dir(),
            self.limits,
        )
        .await
    }

    /// Folder for files on their way into the blob store (same file system: moving one in is
    /// a rename). Emptied when the hub starts.
    pub fn staging_dir(&self) -> PathBuf {
        self.shared.blobs.staging_dir()
    }

    /// Where the bytes of a blob are, for streaming downloads (models' and modules' alike).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.shared.blobs.path(digest)
    }

    /// Validates the staged files and registers them as the next version. Blocking: ONNX
    /// parsing, module compilation and the durable flush all take time, so async callers use
    /// `spawn_blocking`.
    pub fn commit(&self, staged: StagedModel) -> Result<ModelVersion, Error> {
        let StagedModel {
            mut model,
            files,
            dir,
        } = staged;
        let model_files = match self.kind {
            Kind::Model => model_files(&mut model, &files)?,
            Kind::Module => module::classify(&mut model, &files)?,
        };
        let now = now_ms();
        let mut record = ModelVersion {
            model_id: model.model_id,
            version: 0,
            description: model.description,
            framework: model.framework,
            framework_version: model.framework_version,
            tags: model.tags,
            properties: model.properties,
            files: model_files,
            sample_input: model.sample_input,
            sample_output: model.sample_output,
            create_time_ms: now,
            update_time_ms: now,
            signatures: Vec::new(),
        };

        let _guard = self.write_guard();
        for file in &files {
            self.shared
                .blobs
                .adopt(&file.location, &file.sha256)
                .map_err(Error::io(format!("storing {}", file.path)))?;
        }
        let digests: Vec<&str> = distinct(record.files.iter().map(|f| f.sha256.as_str()));
        let kind = self.kind;
        let result = (&self.versions, &self.counters, &self.shared.blob_refs).transaction(
            |(versions, counters, refs)| {
                let last = counters
                    .get(record.model_id.as_bytes())?
                    .and_then(|b| <[u8; 4]>::try_from(b.as_ref()).ok())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                let Some(version) = last.checked_add(1) else {
                    return abort(Error::FailedPrecondition(format!(
                        "{} {} has used up its version numbers",
                        kind.noun(),
                        record.model_id
                    )));
                };
                let mut record = record.clone();
                record.version = version;
                counters.insert(record.model_id.as_bytes(), &version.to_be_bytes())?;
                versions.insert(version_key(&record.model_id, version), encode(&record))?;
                for digest in &digests {
                    adjust_ref(refs, digest, 1)?;
                }
                Ok(version)
            },
        );
        match result.map_err(from_tx) {
            Ok(version) => {
                self.shared.db.flush()?;
                record.version = version;
                drop(dir);
                tracing::info!(kind = kind.noun(), name = %record.model_id, version, files = record.files.len(), "version registered");
                Ok(record)
            }
            Err(err) => {
                // Blobs moved in for this registration may now be referenced by nothing.
                self.remove_unreferenced(&digests);
                Err(err)
            }
        }
    }

    pub(super) fn write_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .write_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn remove_unreferenced(&self, digests: &[&str]) {
        for digest in digests {
            if let Ok(false) = self.shared.blob_refs.contains_key(digest.as_bytes())
                && let Err(err) = self.shared.blobs.remove(digest)
            {
                tracing::warn!(%digest, error = %err, "could not remove an unreferenced blob");
            }
        }
    }

    pub(super) fn resolve(
        &self,
        reference: &VersionRef,
    ) -> Result<Option<(Vec<u8>, sled::IVec)>, Error> {
        let entry = match reference.version {
            VersionSelector::Exact(version) => {
                let key = version_key(&reference.model_id, version);
                self.versions.get(&key)?.map(|value| (key, value))
            }
            VersionSelector::Latest => self
                .versions
                .scan_prefix(model_prefix(&reference.model_id))
                .next_back()
                .transpose()?
                .map(|(key, value)| (key.to_vec(), value)),
        };
        Ok(entry)
    }

    /// "does not exist" when the model has no version at all, else "has no version N".
    pub(super) fn not_found(&self, reference: &VersionRef) -> Error {
        let exists = self
            .versions
            .scan_prefix(model_prefix(&reference.model_id))
            .next()
            .is_some();
        let noun = self.kind.noun();
        match reference.version {
            VersionSelector::Exact(version) if exists => Error::NotFound(format!(
                "{noun} {} has no version {version}",
                reference.model_id
            )),
            _ => Error::NotFound(format!("{noun} {} does not exist", reference.model_id)),
        }
    }

    pub fn get(&self, reference: &VersionRef) -> Result<ModelVersion, Error> {
        match self.resolve(reference)? {
            Some((_, value)) => decode(&value),
            None => Err(self.not_found(reference)),
        }
    }

    pub fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let page_size = page::size(query);
        let fingerprint = page::fingerprint(self.kind, query);
        let after = match &query.page_token {
            None => None,
            Some(token) => Some(page::decode_token(token, &fingerprint)?),
        };
        let prefix = query
            .model_id
            .as_deref()
            .map(model_prefix)
            .unwrap_or_default();
        let start = match &after {
            Some(key) => std::ops::Bound::Excluded(key.clone()),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut models = Vec::new();
        let mut next_page_token = None;
        let mut last_key = Vec::new();
        for entry in self.versions.range((start, std::ops::Bound::Unbounded)) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            let model = decode(&value)?;
            if !query.matches(&model) {
                continue;
            }
            if models.len() == page_size {
                next_page_token = Some(page::encode_token(&fingerprint, &last_key));
                break;
            }
            last_key = key.to_vec();
            models.push(model);
        }
        Ok(Page {
            models,
            next_page_token,
        })
    }

    pub fn update(
        &self,
        reference: &VersionRef,
        update: &ModelUpdate,
    ) -> Result<ModelVersion, Error> {
        validate::update(update)?;
        let _guard = self.write_guard();
        let Some((key, value)) = self.resolve(reference)? else {
            return Err(self.not_found(reference));
        };
        let mut model = decode(&value)?;
        apply_changes(&mut model.tags, &update.add_tags, &update.remove_tags);
        apply_changes(
            &mut model.properties,
            &update.add_properties,
            &update.remove_properties,
        );
        for (kind, map, max) in [
            ("tag", &model.tags, validate::MAX_TAGS),
            ("property", &model.properties, validate::MAX_PROPERTIES),
        ] {
            if map.len() > max {
                return Err(Error::invalid(format!(
                    "the update would leave {} {kind}s on {}:{}; the limit is {max}",
                    map.len(),
                    model.model_id,
                    model.version
                )));
            }
        }
        if let Some(description) = &update.description {
            model.description.clone_from(description);
        }
        model.update_time_ms = now_ms();
        self.versions.insert(key, encode(&model))?;
        self.shared.db.flush()?;
        Ok(model)
    }

    /// Deletes one version or all versions of a model; returns the deleted version numbers.
    /// Blob files no other version uses are removed once the change is durable.
    pub fn delete(&self, target: &DeleteTarget) -> Result<(String, Vec<u32>), Error> {
        let _guard = self.write_guard();
        let noun = self.kind.noun();
        let (model_id, entries) = match target {
            DeleteTarget::Version(reference) => match self.resolve(reference)? {
                Some(entry) => (reference.model_id.clone(), vec![entry]),
                None => return Err(self.not_found(reference)),
            },
            DeleteTarget::AllVersions(model_id) => {
                let entries = self
                    .versions
                    .scan_prefix(model_prefix(model_id))
                    .map(|entry| entry.map(|(k, v)| (k.to_vec(), v)))
                    .collect::<Result<Vec<_>, _>>()?;
                if entries.is_empty() {
                    return Err(Error::NotFound(format!("{noun} {model_id} does not exist")));
                }
                (model_id.clone(), entries)
            }
        };
        let mut keys = Vec::new();
        let mut versions = Vec::new();
        let mut released: HashMap<String, u64> = HashMap::new();
        for (key, value) in &entries {
            let model = decode(value)?;
            for digest in distinct(model.files.iter().map(|f| f.sha256.as_str())) {
                *released.entry(digest.to_owned()).or_default() += 1;
            }
            versions.push(model.version);
            keys.push(key.clone());
        }
        let freed = (&self.versions, &self.shared.blob_refs)
            .transaction(|(tx_versions, refs)| {
                for key in &keys {
                    tx_versions.remove(key.as_slice())?;
                }
                let mut freed = Vec::new();
                for (digest, count) in &released {
                    if adjust_ref(refs, digest, -(*count as i64))? == 0 {
                        freed.push(digest.clone());
                    }
                }
                Ok(freed)
            })
            .map_err(from_tx)?;
        self.shared.db.flush()?;
        for digest in &freed {
            if let Err(err) = self.shared.blobs.remove(digest) {
                // Harmless: the next start-up removes unreferenced blobs.
                tracing::warn!(%digest, error = %err, "could not remove a freed blob");
            }
        }
        tracing::info!(kind = noun, name = %model_id, ?versions, blobs_freed = freed.len(), "versions deleted");
        Ok((model_id, versions))
    }
}

/// A model's files as the registry records them: an image artifact is recognized (and its
/// archive checked) first; the framework defaults from the files; each ONNX file of an ONNX
/// model is inspected for its signature.
fn model_files(model: &mut NewModel, files: &[StagedFile]) -> Result<Vec<ModelFile>, Error> {
    super::image::classify(model, files)?;
    let has_onnx_file = files.iter().any(|f| validate::is_onnx_path(&f.path));
    if model.framework.is_empty() {
        model.framework = if has_onnx_file { "onnx" } else { "custom" }.to_owned();
    }
    let is_onnx = model.framework == "onnx";
    if is_onnx && !has_onnx_file {
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        return Err(Error::invalid(format!(
            "framework is onnx but no file has the .onnx extension (files: {}); give the ONNX file a name ending in .onnx",
            names.join(", ")
        )));
    }
    let mut model_files = Vec::with_capacity(files.len());
    for file in files {
        let onnx = if is_onnx && validate::is_onnx_path(&file.path) {
            Some(edgeship_runtime::onnx::inspect(&file.path, &file.location)?)
        } else {
            None
        };
        model_files.push(ModelFile {
            onnx,
            ..file.record()
        });
    }
    Ok(model_files)
}

fn distinct<'a>(digests: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    digests.filter(|d| seen.insert(*d)).collect()
}

/// Adds `delta` to a blob's reference count, removing the entry at zero; returns the new count.
pub(super) fn adjust_ref(
    refs: &TransactionalTree,
    digest: &str,
    delta: i64,
) -> Result<u64, ConflictableTransactionError<Error>> {
    let current = read_u64(refs.get(digest.as_bytes())?);
    let Some(updated) = current.checked_add_signed(delta) else {
        return abort(Error::DataLoss(format!(
            "reference count of blob {digest} would go below zero"
        )));
    };
    if updated == 0 {
        refs.remove(digest.as_bytes())?;
    } else {
        refs.insert(digest.as_bytes(), &updated.to_be_bytes())?;
    }
    Ok(updated)
}

fn apply_changes(
    map: &mut BTreeMap<String, String>,
    add: &BTreeMap<String, String>,
    remove: &[String],
) {
    // Removing an absent key is a no-op so that scripted updates can be re-run safely.
    for key in remove {
        map.remove(key);
    }
    for (key, value) in add {
        map.insert(key.clone(), value.clone());
    }
}
