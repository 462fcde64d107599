//! Endpoint keys of deployments with auth `key`: a primary and a secondary, as Azure ML
//! endpoints have, so one can be rotated while clients still use the other. The hub keeps
//! them; devices receive only their sha256 digests (see `desired::workload`), and a rotation
//! reaches them with the next desired state, without a rollout.

use edgeship_domain::{AuthMode, names};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::deployments::invalid;
use super::{Fleet, FleetError, encode};
use crate::now_ms;

/// Bytes of randomness in a key (256 bits).
const KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointKeys {
    pub primary: String,
    pub secondary: String,
}

/// Which of the two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "primary" => Ok(KeySlot::Primary),
            "secondary" => Ok(KeySlot::Secondary),
            other => Err(format!("unknown key {other:?}: use primary or secondary")),
        }
    }
}

/// A new random key: URL-safe text from the operating system's generator.
fn new_key() -> Result<String, FleetError> {
    use base64::Engine as _;
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::getrandom(&mut bytes)
        .map_err(|err| FleetError::Internal(format!("no randomness for a key: {err}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl EndpointKeys {
    pub fn generate() -> Result<Self, FleetError> {
        Ok(Self {
            primary: new_key()?,
            secondary: new_key()?,
        })
    }

    /// Hex sha256 of each key: what devices check a presented key against.
    pub fn digests(&self) -> Vec<String> {
        [&self.primary, &self.secondary]
            .iter()
            .map(|k| hex::encode(Sha256::digest(k.as_bytes())))
            .collect()
    }
}

impl Fleet {
    /// The keys of deployment `id`; it must use auth `key`.
    pub fn deployment_keys(&self, id: &str) -> Result<EndpointKeys, FleetError> {
        names::deployment_id(id).map_err(invalid)?;
        let deployment = self.get_deployment(id)?;
        match (deployment.spec.endpoint.auth, deployment.keys) {
            (AuthMode::Key, Some(keys)) => Ok(keys),
            (auth, _) => Err(FleetError::FailedPrecondition(format!(
                "deployment {id} uses auth {auth}, not key: set endpoint.auth to key to give it keys"
            ))),
        }
    }

    /// Replaces one key of deployment `id`; devices accept the new one (and stop accepting
    /// the old) with their next desired state.
    pub fn regenerate_key(&self, id: &str, slot: KeySlot) -> Result<EndpointKeys, FleetError> {
        let current = self.deployment_keys(id)?;
        let _guard = self.guard();
        let mut deployment = self.get_deployment(id)?;
        let fresh = new_key()?;
        let keys = match slot {
            KeySlot::Primary => EndpointKeys {
                primary: fresh,
                ..current
            },
            KeySlot::Secondary => EndpointKeys {
                secondary: fresh,
                ..current
            },
        };
        deployment.keys = Some(keys.clone());
        deployment.update_time_ms = now_ms();
        self.deployments
            .insert(deployment.id.as_bytes(), encode(&deployment))?;
        self.db.flush()?;
        self.reconcile_locked(None)?;
        tracing::info!(deployment = %id, key = ?slot, "endpoint key regenerated");
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_devices_get_only_digests() {
        let a = EndpointKeys::generate().expect("keys");
        let b = EndpointKeys::generate().expect("keys");
        assert_ne!(a.primary, b.primary);
        assert_ne!(a.primary, a.secondary);
        assert_eq!(a.primary.len(), 43, "256 bits, base64url");
        let digests = a.digests();
        assert_eq!(digests.len(), 2);
        assert!(!digests.iter().any(|d| d.contains(&a.primary)));
        assert_eq!(
            digests[0],
            hex::encode(Sha256::digest(a.primary.as_bytes()))
        );
        assert_eq!(
            KeySlot::parse("tertiary").expect_err("no third key"),
            "unknown key \"tertiary\": use primary or secondary"
        );
    }
}
