//! Device enrollment and revocation. An admin asks for a one-time bootstrap token for a device
//! id; the device sends it once, with a signing request for a key it made itself, and gets a
//! certificate naming that id. The pending tokens (tree `enrollments`, by the token's sha256)
//! and the issued identities (tree `device_identities`) live in sled; revoked ids and each
//! device's current certificate serial are also kept in memory, since the broker gate and
//! the link ask on every connection and message. A device enrolled again gets a new
//! certificate, and the old one (perhaps a stolen one) is refused from then on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sled::Transactional as _;

use super::pki::{Authority, PkiError};

/// What a bootstrap token starts with; the version of its layout.
const TOKEN_PREFIX: &str = "esb1";
/// How long a bootstrap token holds unless the admin says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    device_id: String,
    expires_at_ms: i64,
}

/// A device's certificate as the hub issued it, and whether it is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub device_id: String,
    /// The certificate's serial in hex; empty for a device revoked before it enrolled.
    pub serial: String,
    pub enrolled_at_ms: i64,
    pub not_after_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// Serials of this device's earlier certificates, superseded by re-enrollment.
    #[serde(default)]
    pub superseded: Vec<String>,
}

/// What a device receives when it enrolls.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub identity: DeviceIdentity,
    pub cert_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    InvalidName(#[from] edgeship_domain::names::InvalidName),
    #[error("the bootstrap token is malformed: it reads esb1.<secret>.<fingerprint>")]
    MalformedToken,
    #[error("unknown bootstrap token: it was never issued, or it was used already")]
    UnknownToken,
    #[error("the bootstrap token for {0} expired; ask for a new one (edgeship device enroll)")]
    Expired(String),
    #[error("{0}")]
    Certificate(#[from] PkiError),
    #[error("enrollment store: {0}")]
    Storage(String),
}

impl From<sled::Error> for EnrollError {
    fn from(err: sled::Error) -> Self {
        EnrollError::Storage(err.to_string())
    }
}

#[derive(Debug)]
pub struct Enrollments {
    pending: sled::Tree,
    identities: sled::Tree,
    revoked: RwLock<HashSet<String>>,
    /// Device id → the serial of its one valid certificate.
    current: RwLock<HashMap<String, String>>,
    authority: Arc<Authority>,
}

impl Enrollments {
    pub fn open(db: &sled::Db, authority: Arc<Authority>) -> Result<Self, EnrollError> {
        let identities = db.open_tree("device_identities")?;
        let mut revoked = HashSet::new();
        let mut current = HashMap::new();
        for entry in identities.iter() {
            let (_, value) = entry?;
            let Ok(identity) = serde_json::from_slice::<DeviceIdentity>(&value) else {
                continue;
            };
            if identity.revoked_at_ms.is_some() {
                revoked.insert(identity.device_id.clone());
            }
            current.insert(identity.device_id, identity.serial);
        }
        Ok(Enrollments {
            pending: db.open_tree("enrollments")?,
            identities,
            revoked: RwLock::new(revoked),
            current: RwLock::new(current),
            authority,
        })
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// A one-time bootstrap token for `device_id`, valid for `ttl`: `esb1.`, the secret, `.`,
    /// and the sha256 of the hub's CA certificate, which the device pins when it calls.
    pub fn create_token(
        &self,
        device_id: &str,
        ttl: Duration,
    ) -> Result<(String, i64), EnrollError> {
        edgeship_domain::names::device_id(device_id)?;
        if device_id == super::pki::HUB_CLIENT_NAME {
            return Err(EnrollError::InvalidName(
                edgeship_domain::names::InvalidName(format!(
                    "{device_id:?} is the hub's own name on brokers; choose another device id"
                )),
            ));
        }
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|err| EnrollError::Storage(format!("no randomness: {err}")))?;
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let expires_at_ms = crate::now_ms().saturating_add(ttl.as_millis() as i64);
        let pending = Pending {
            device_id: device_id.to_owned(),
            expires_at_ms,
        };
        self.pending.insert(digest(&secret), json(&pending)?)?;
        self.pending.flush()?;
        let token = format!("{TOKEN_PREFIX}.{secret}.{}", self.authority.fingerprint());
        Ok((token, expires_at_ms))
    }

    /// Uses a bootstrap token: issues the device's certificate over the key of `csr_pem`.
    /// The token is consumed in the same transaction that records the identity, so it
    /// works once, even when two devices race with it.
    pub fn enroll(&self, token: &str, csr_pem: &str) -> Result<Enrolled, EnrollError> {
        let secret = parse_token(token)?;
        let key = digest(secret);
        let pending: Pending = match self.pending.get(key)? {
            Some(value) => serde_json::from_slice(&value).map_err(|err| {
                EnrollError::Storage(format!("a pending enrollment is unreadable: {err}"))
            })?,
            None => return Err(EnrollError::UnknownToken),
        };
        if pending.expires_at_ms <= crate::now_ms() {
            self.pending.remove(key)?;
            self.pending.flush()?;
            return Err(EnrollError::Expired(pending.device_id));
        }
        let issued = self.authority.issue_device(&pending.device_id, csr_pem)?;
        let mut superseded = Vec::new();
        if let Some(earlier) = self.identity(&pending.device_id)? {
            superseded = earlier.superseded;
            if !earlier.serial.is_empty() {
                superseded.push(earlier.serial);
            }
        }
        let identity = DeviceIdentity {
            device_id: pending.device_id.clone(),
            serial: issued.serial,
            enrolled_at_ms: crate::now_ms(),
            not_after_ms: issued.not_after_ms,
            revoked_at_ms: None,
            superseded,
        };
        let value = json(&identity)?;
        (&self.pending, &self.identities)
            .transaction(|(pending, identities)| {
                if pending.remove(&key)?.is_none() {
                    return sled::transaction::abort(EnrollError::UnknownToken);
                }
                identities.insert(identity.device_id.as_bytes(), value.clone())?;
                Ok(())
            })
            .map_err(|err| match err {
                sled::transaction::TransactionError::Abort(err) => err,
                sled::transaction::TransactionError::Storage(err) => err.into(),
            })?;
        self.identities.flush()?;
        // A device enrolled again by an admin is trusted again, with its new certificate only.
        self.revoked_set().remove(&identity.device_id);
        self.current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(identity.device_id.clone(), identity.serial.clone());
        Ok(Enrolled {
            identity,
            cert_pem: issued.cert_pem,
        })
    }

    /// Cuts a device off: its certificate is refused from now on, and its pending tokens are
    /// void. Returns whether it had been enrolled.
    pub fn revoke(&self, device_id: &str) -> Result<bool, EnrollError> {
        edgeship_domain::names::device_id(device_id)?;
        let now = crate::now_ms();
        let (identity, enrolled) = match self.identity(device_id)? {
            Some(identity) => (identity, true),
            None => (
                DeviceIdentity {
                    device_id: device_id.to_owned(),
                    serial: String::new(),
                    enrolled_at_ms: 0,
                    not_after_ms: 0,
                    revoked_at_ms: None,
                    superseded: Vec::new(),
                },
                false,
            ),
        };
        let identity = DeviceIdentity {
            revoked_at_ms: Some(identity.revoked_at_ms.unwrap_or(now)),
            ..identity
        };
        self.identities
            .insert(device_id.as_bytes(), json(&identity)?)?;
        for entry in self.pending.iter() {
            let (key, value) = entry?;
            if serde_json::from_slice::<Pending>(&value).is_ok_and(|p| p.device_id == device_id) {
                self.pending.remove(key)?;
            }
        }
        self.identities.flush()?;
        self.pending.flush()?;
        self.revoked_set().insert(device_id.to_owned());
        Ok(enrolled)
    }

    /// Whether a certificate with `serial` (hex) may act as `device_id`: the device is not
    /// revoked and this is its newest certificate.
    pub fn admits(&self, device_id: &str, serial: &str) -> bool {
        !self.is_revoked(device_id)
            && self
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(device_id)
                .is_some_and(|current| current.eq_ignore_ascii_case(serial))
    }

    pub fn is_revoked(&self, device_id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(device_id)
    }

    pub fn identity(&self, device_id: &str) -> Result<Option<DeviceIdentity>, EnrollError> {
        self.identities
            .get(device_id.as_bytes())?
            .map(|value| {
                serde_json::from_slice(&value).map_err(|err| {
                    EnrollError::Storage(format!(
                        "the identity of {device_id} is unreadable: {err}"
                    ))
                })
            })
            .transpose()
    }

    /// Serials of revoked and superseded certificates, for a broker's revocation list.
    pub fn revoked_serials(&self) -> Result<Vec<String>, EnrollError> {
        let mut serials = Vec::new();
        for entry in self.identities.iter() {
            let (_, value) = entry?;
            let Ok(identity) = serde_json::from_slice::<DeviceIdentity>(&value) else {
                continue;
            };
            if identity.revoked_at_ms.is_some() && !identity.serial.is_empty() {
                serials.push(identity.serial);
            }
            serials.extend(identity.superseded);
        }
        Ok(serials)
    }

    fn revoked_set(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.revoked.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The secret part of a bootstrap token.
fn parse_token(token: &str) -> Result<&str, EnrollError> {
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(TOKEN_PREFIX), Some(secret), Some(_fingerprint), None) if !secret.is_empty() => {
            Ok(secret)
        }
        _ => Err(EnrollError::MalformedToken),
    }
}

/// The CA fingerprint a bootstrap token carries (what the device pins), in hex.
pub fn token_fingerprint(token: &str) -> Option<&str> {
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(TOKEN_PREFIX), Some(_), Some(fingerprint), None) => Some(fingerprint),
        _ => None,
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, EnrollError> {
    serde_json::to_vec(value).map_err(|err| EnrollError::Storage(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn a_token_enrolls_its_device_once_before_it_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("sled");
        let authority = Arc::new(Authority::open(dir.path()).expect("ca"));
        let enrollments = Enrollments::open(&db, Arc::clone(&authority)).expect("open");
        let (token, _) = enrollments
            .create_token("edge-1", Duration::from_secs(60))
            .expect("token");
        assert_eq!(
            token_fingerprint(&token),
            Some(authority.fingerprint().as_str())
        );
        let enrolled = enrollments.enroll(&token, &csr()).expect("enrolled");
        assert_eq!(enrolled.identity.device_id, "edge-1");
        assert!(matches!(
            enrollments.enroll(&token, &csr()),
            Err(EnrollError::UnknownToken)
        ));
        let (expired, _) = enrollments
            .create_token("edge-2", Duration::ZERO)
            .expect("token");
        assert!(matches!(
            enrollments.enroll(&expired, &csr()),
            Err(EnrollError::Expired(id)) if id == "edge-2"
        ));
        assert!(matches!(
            enrollments.enroll("esb1.nope", &csr()),
            Err(EnrollError::MalformedToken)
        ));
        // A bad signing request leaves the token usable.
        let (token, _) = enrollments
            .create_token("edge-3", Duration::from_secs(60))
            .expect("token");
        assert!(matches!(
            enrollments.enroll(&token, "garbage"),
            Err(EnrollError::Certificate(_))
        ));
        enrollments.enroll(&token, &csr()).expect("enrolled");

        // Revocation survives a restart and voids pending tokens.
        let (pending, _) = enrollments
            .create_token("edge-1", Duration::from_secs(60))
            .expect("token");
        assert!(enrollments.revoke("edge-1").expect("revoke"));
        assert!(enrollments.is_revoked("edge-1"));
        assert!(matches!(
            enrollments.enroll(&pending, &csr()),
            Err(EnrollError::UnknownToken)
        ));
        assert_eq!(
            enrollments.revoked_serials().expect("serials"),
            std::slice::from_ref(&enrolled.identity.serial)
        );
        assert!(!enrollments.admits("edge-1", &enrolled.identity.serial));
        // Enrolled again by an admin: only the new certificate is admitted, the old one is
        // on the revocation list.
        let (again, _) = enrollments
            .create_token("edge-1", Duration::from_secs(60))
            .expect("token");
        let renewed = enrollments.enroll(&again, &csr()).expect("enrolled");
        assert!(enrollments.admits("edge-1", &renewed.identity.serial));
        assert!(!enrollments.admits("edge-1", &enrolled.identity.serial));
        assert!(!enrollments.admits("edge-9", &renewed.identity.serial));
        assert_eq!(
            enrollments.revoked_serials().expect("serials"),
            std::slice::from_ref(&enrolled.identity.serial)
        );
        enrollments.revoke("edge-1").expect("revoke");
        drop(enrollments);
        let reopened = Enrollments::open(&db, authority).expect("open");
        assert!(reopened.is_revoked("edge-1"));
        assert!(!reopened.is_revoked("edge-3"));
        assert!(!reopened.admits("edge-1", &renewed.identity.serial));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Bootstrap tokens and public keys from anyone parse or fail cleanly.
        #[test]
        fn any_token_or_key_text_parses_or_fails_cleanly(text in "\\PC{0,160}") {
            let _ = parse_token(&text);
            let _ = token_fingerprint(&text);
            let _ = text.parse::<edgeship_domain::trust::PublicKey>();
        }
    }
}
