//! Deployment records from before revisions and rollouts, rewritten once at start-up in
//! today's shape. (Records from before later additions, such as containers or entry modules,
//! need no rewrite: their new fields are optional and default to none.)

use super::{Deployment, Fleet, FleetError, encode};

impl Fleet {
    /// Rewrites deployment records from before rollouts existed in today's shape, pinning
    /// the version each one runs now. Run once at start, before anything reads them.
    pub(super) fn upgrade_deployments(&self) -> Result<(), FleetError> {
        for entry in self.deployments.iter() {
            let (key, bytes) = entry?;
            if serde_json::from_slice::<Deployment>(&bytes).is_ok() {
                continue;
            }
            let Ok(old) = serde_json::from_slice::<legacy::Deployment>(&bytes) else {
                continue; // Reported as damaged where it is read.
            };
            let version = self
                .registry
                .get(&old.version_ref())
                .map_or(1, |m| m.version);
            let deployment = old.upgrade(version);
            tracing::info!(deployment = %deployment.id, version, "deployment record upgraded");
            self.deployments.insert(key, encode(&deployment))?;
        }
        Ok(())
    }
}

/// The record before revisions and rollouts: a deployment ran its resolved version
/// everywhere at once.
mod legacy {
    use std::collections::{BTreeMap, BTreeSet};

    use edgeship_domain::{Endpoint, RuntimeKind};
    use serde::Deserialize;

    use crate::fleet::model::Revision;
    use crate::fleet::selector::from_equalities;
    use crate::fleet::spec::{DeploymentSpec, ModelRef, RolloutPolicy, Target, TrafficWeight};
    use crate::registry::VersionSelector;

    #[derive(Deserialize)]
    struct OldTarget {
        device_ids: BTreeSet<String>,
        label_selector: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Deployment {
        id: String,
        model_id: String,
        version: Option<u32>,
        runtime: RuntimeKind,
        endpoint: Endpoint,
        target: OldTarget,
        create_time_ms: i64,
    }

    impl Deployment {
        pub(super) fn version_ref(&self) -> crate::registry::VersionRef {
            crate::registry::VersionRef {
                model_id: self.model_id.clone(),
                version: self
                    .version
                    .map_or(VersionSelector::Latest, VersionSelector::Exact),
            }
        }

        /// As if it had been applied with today's defaults; its one revision pins `version`.
        pub(super) fn upgrade(self, version: u32) -> crate::fleet::Deployment {
            let spec = DeploymentSpec {
                name: self.id.clone(),
                model: Some(ModelRef {
                    model_id: self.model_id.clone(),
                    version: self
                        .version
                        .map_or(VersionSelector::Latest, VersionSelector::Exact),
                }),
                runtime: self.runtime,
                endpoint: self.endpoint.clone(),
                target: Target {
                    devices: self.target.device_ids,
                    selector: from_equalities(&self.target.label_selector),
                },
                priority: 0,
                rollout: RolloutPolicy::default(),
                traffic: vec![],
                options: Default::default(),
                extra_models: vec![],
                container: None,
                model_signers: vec![],
                entry_module: None,
            };
            crate::fleet::Deployment {
                id: self.id,
                spec,
                create_time_ms: self.create_time_ms,
                update_time_ms: self.create_time_ms,
                revisions: vec![Revision {
                    number: 1,
                    models: vec![TrafficWeight {
                        model_id: self.model_id,
                        version,
                        weight: 0,
                    }],
                    runtime: self.runtime,
                    endpoint: self.endpoint,
                    options: Default::default(),
                    container: None,
                    entry_module: None,
                    model_signers: Vec::new(),
                    create_time_ms: self.create_time_ms,
                }],
                keys: None,
                token_signer: None,
                tls_certificate: None,
            }
        }
    }
}
