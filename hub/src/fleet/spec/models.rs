//! What a manifest runs: `model` or `models` (several models on one endpoint), a `traffic`
//! split between versions of one model, and `batching`, each checked with the field's path in
//! every error.

use std::collections::BTreeSet;

use edgeship_domain::RuntimeOptions;
use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::{ModelRef, SpecError, TrafficWeight, err};
use crate::registry::VersionSelector;

/// Triton's dynamic batcher settings, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingManifest {
    pub max_batch_size: u32,
    #[serde(default)]
    pub max_queue_delay_ms: u32,
    /// Requests waiting, at most (503 beyond); absent lets the agent size it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_size: Option<u32>,
}

/// Largest batch a manifest may ask for: beyond it, one runtime call's memory and latency
/// stop being small on any edge device.
pub const MAX_BATCH_SIZE: u32 = 1024;
/// Longest batch wait a manifest may ask for.
pub const MAX_QUEUE_DELAY_MS: u32 = 10_000;
/// Most requests a manifest may let wait per model.
pub const MAX_QUEUE_SIZE: u32 = 100_000;

impl BatchingManifest {
    pub(super) fn validate(&self) -> Result<RuntimeOptions, SpecError> {
        if !(1..=MAX_BATCH_SIZE).contains(&self.max_batch_size) {
            return Err(err(
                "batching.max_batch_size",
                format!("must be from 1 (no batching) to {MAX_BATCH_SIZE}"),
            ));
        }
        if self.max_queue_delay_ms > MAX_QUEUE_DELAY_MS {
            return Err(err(
                "batching.max_queue_delay_ms",
                format!("must be at most {MAX_QUEUE_DELAY_MS} (10 s)"),
            ));
        }
        let max_queue_size = self.max_queue_size.unwrap_or(0);
        if self.max_queue_size.is_some() && !(1..=MAX_QUEUE_SIZE).contains(&max_queue_size) {
            return Err(err(
                "batching.max_queue_size",
                format!("must be from 1 to {MAX_QUEUE_SIZE}"),
            ));
        }
        Ok(RuntimeOptions {
            max_batch_size: self.max_batch_size,
            max_queue_delay_ms: self.max_queue_delay_ms,
            max_queue_size,
            ..RuntimeOptions::default()
        })
    }
}

impl Manifest {
    /// `models`: the first and the others, each model once; `None` without the field.
    pub(super) fn models(
        &self,
        traffic: &[TrafficWeight],
    ) -> Result<(Option<ModelRef>, Vec<ModelRef>), SpecError> {
        if self.models.is_empty() {
            return Ok((None, Vec::new()));
        }
        if self.model.is_some() {
            return Err(err("models", "give `model` or `models`, not both"));
        }
        if !traffic.is_empty() {
            return Err(err(
                "traffic",
                "a split is between versions of one model: it cannot be combined with `models` (split in a deployment of its own)",
            ));
        }
        let mut refs: Vec<ModelRef> = Vec::new();
        for (i, text) in self.models.iter().enumerate() {
            let path = format!("models[{i}]");
            let model = ModelRef::parse(text).map_err(|e| err(&path, e))?;
            if refs.iter().any(|m| m.model_id == model.model_id) {
                return Err(err(
                    path,
                    format!(
                        "model {} is listed twice: an endpoint serves one version of each model by name",
                        model.model_id
                    ),
                ));
            }
            refs.push(model);
        }
        let mut refs = refs.into_iter();
        Ok((refs.next(), refs.collect()))
    }

    pub(super) fn traffic(&self) -> Result<Vec<TrafficWeight>, SpecError> {
        let mut seen = BTreeSet::new();
        let mut weights = Vec::new();
        for (i, entry) in self.traffic.iter().enumerate() {
            let path = format!("traffic[{i}].model");
            let model = ModelRef::parse(&entry.model).map_err(|e| err(&path, e))?;
            let VersionSelector::Exact(version) = model.version else {
                return Err(err(
                    path,
                    "a traffic split names exact versions (NAME:VERSION)",
                ));
            };
            if !seen.insert(version) {
                return Err(err(path, format!("version {version} is listed twice")));
            }
            if entry.weight == 0 || entry.weight > 100 {
                return Err(err(format!("traffic[{i}].weight"), "must be from 1 to 100"));
            }
            weights.push(TrafficWeight {
                model_id: model.model_id,
                version,
                weight: entry.weight,
            });
        }
        let total: u32 = weights.iter().map(|w| w.weight).sum();
        if !weights.is_empty() && total != 100 {
            return Err(err(
                "traffic",
                format!("weights add up to {total}, not 100"),
            ));
        }
        if weights.len() == 1 {
            return Err(err(
                "traffic",
                "a split needs at least two versions; use `model` for one",
            ));
        }
        Ok(weights)
    }
}
