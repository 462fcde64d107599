//! Continuous deployment: a deployment that names a model or its entry module as
//! `NAME:latest` rolls each newly registered version out as a new revision, with its own
//! strategy and gates, like any other change of what its devices run.

use super::desired;
use super::model::{Deployment, Revision};
use super::spec::{ModulePin, PinRole, TrafficWeight};
use super::{Fleet, FleetError};
use crate::now_ms;
use crate::registry::{Registry, VersionRef, VersionSelector};

impl Fleet {
    /// Every deployment following `model_id:latest` moves to the newly registered version (a
    /// version unfit for the model's role there is not rolled out); its other models stay.
    pub fn on_model_registered(&self, model_id: &str) -> Result<(), FleetError> {
        let Some(latest) = newest(&self.registry, model_id) else {
            return Ok(());
        };
        let cause = format!(
            "continuous deployment ({model_id}:{} registered)",
            latest.version
        );
        self.roll_forward(&cause, |deployment, current| {
            let pinned = current
                .models
                .iter()
                .any(|m| m.model_id == model_id && m.version == latest.version);
            if !deployment.follows_latest_of(model_id) || pinned {
                return None;
            }
            let role = deployment
                .spec
                .pinned()
                .find(|(m, _)| m.model_id == model_id)
                .map_or(PinRole::Model, |(_, role)| role);
            if let Err(reason) = desired::usable_as(&latest, role) {
                tracing::warn!(deployment = %deployment.id, version = latest.version, %reason, "new version not rolled out");
                return None;
            }
            // The new version replaces the model's pin; the endpoint's other models stay.
            let models = current
                .models
                .iter()
                .map(|m| TrafficWeight {
                    version: if m.model_id == model_id {
                        latest.version
                    } else {
                        m.version
                    },
                    ..m.clone()
                })
                .collect();
            Some(Revision {
                models,
                ..current.clone()
            })
        })
    }

    /// Every deployment whose `entry_module` follows `module_id:latest` moves to the newly
    /// registered module version, its models and sandbox unchanged.
    pub fn on_module_registered(&self, module_id: &str) -> Result<(), FleetError> {
        let Some(latest) = newest(&self.modules, module_id) else {
            return Ok(());
        };
        let cause = format!(
            "continuous deployment (module {module_id}:{} registered)",
            latest.version
        );
        self.roll_forward(&cause, |deployment, current| {
            let pin = current.entry_module.as_ref()?;
            if !deployment.follows_latest_module(module_id) || pin.version == latest.version {
                return None;
            }
            let entry_module = Some(ModulePin {
                version: latest.version,
                ..pin.clone()
            });
            Some(Revision {
                entry_module,
                ..current.clone()
            })
        })
    }

    /// Starts a rollout of the revision `next` makes of each deployment's current one, where
    /// it makes one; then steps the rollouts and recomputes desired states once.
    fn roll_forward(
        &self,
        cause: &str,
        next: impl Fn(&Deployment, &Revision) -> Option<Revision>,
    ) -> Result<(), FleetError> {
        let _guard = self.guard();
        let now = now_ms();
        let mut started = false;
        for mut deployment in self.all_deployments()? {
            let Some(revision) = deployment.current().and_then(|c| next(&deployment, c)) else {
                continue;
            };
            self.start_rollout(&mut deployment, revision, cause, vec![], now)?;
            started = true;
        }
        if started {
            self.db.flush()?;
            self.advance_locked(now)?;
            self.reconcile_locked(None)?;
        }
        Ok(())
    }
}

/// The newest version of `id`, if it has any.
fn newest(registry: &Registry, id: &str) -> Option<crate::registry::ModelVersion> {
    registry
        .get(&VersionRef {
            model_id: id.to_owned(),
            version: VersionSelector::Latest,
        })
        .ok()
}
