//! Ed25519 keys and signatures, as hub and devices use them: the director key signs desired
//! states, model-signing keys (kept offline) sign model versions' files. Every signature covers a purpose prefix
//! ahead of the message, so a signature made for one purpose never verifies for another.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// What a signature vouches for. The prefix is part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A device's desired state (the director role).
    DesiredState,
    /// A model version's files (the image role).
    Model,
}

impl Purpose {
    fn prefix(self) -> &'static [u8] {
        match self {
            Purpose::DesiredState => b"edgeship/v1 desired state\0",
            Purpose::Model => b"edgeship/v1 model\0",
        }
    }
}

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
const PUBLIC_KEY_LEN: usize = 32;
/// How public keys are written: `ed25519:` and the 32 bytes in base64.
const TEXT_PREFIX: &str = "ed25519:";

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("a public key is written `ed25519:` and 32 bytes in base64; got {0:?}")]
    KeyText(String),
    #[error("the signature does not verify with key {0}")]
    BadSignature(String),
    #[error("a signature is {SIGNATURE_LEN} bytes; got {0}")]
    SignatureLength(usize),
    #[error("not an Ed25519 private key (PKCS#8): {0}")]
    PrivateKey(String),
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(PublicKey)
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// A short name for the key: the first 8 bytes of its sha256, in hex. Messages carry it
    /// so that a receiver holding several keys knows which one to try.
    pub fn key_id(&self) -> String {
        use sha2::Digest as _;
        hex::encode(&sha2::Sha256::digest(self.0)[..8])
    }

    /// Checks `signature` over `message` for `purpose`.
    pub fn verify(
        &self,
        purpose: Purpose,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TrustError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(TrustError::SignatureLength(signature.len()));
        }
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(&signed_bytes(purpose, message), signature)
            .map_err(|_| TrustError::BadSignature(self.key_id()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEXT_PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl FromStr for PublicKey {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        text.strip_prefix(TEXT_PREFIX)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .and_then(|bytes| PublicKey::from_bytes(&bytes))
            .ok_or_else(|| TrustError::KeyText(text.chars().take(64).collect()))
    }
}

/// An Ed25519 key pair. Its `Debug` shows the public half only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, TrustError> {
        let document = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| TrustError::PrivateKey("no randomness available".into()))?;
        Self::from_pkcs8(document.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TrustError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|err| TrustError::PrivateKey(err.to_string()))?;
        Ok(SigningKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The private key as PKCS#8 (for a file only its owner may read).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public(&self) -> PublicKey {
        let mut bytes = [0; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    pub fn sign(&self, purpose: Purpose, message: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&signed_bytes(purpose, message))
            .as_ref()
            .to_vec()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().key_id())
    }
}

/// A signature over a model version (the image role): who signed, and the signature over
/// [`model_statement`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelSignature {
    pub key: PublicKey,
    #[serde(with = "base64_bytes")]
    pub signature: Vec<u8>,
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a model signature covers: the model's name and version and every file's path,
/// size and sha256, in path order, so the same files always give the same bytes.
pub fn model_statement<'a>(
    model_id: &str,
    version: u32,
    files: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
) -> Vec<u8> {
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_unstable();
    let mut statement = format!("model {model_id}\nversion {version}\n");
    for (path, sha256, size) in files {
        statement.push_str(&format!("file {sha256} {size} {path}\n"));
    }
    statement.into_bytes()
}

/// The first of `required` that signed `statement` among `signatures`; `None` when none did.
pub fn signed_by_any<'a>(
    statement: &[u8],
    signatures: &[ModelSignature],
    required: &'a [PublicKey],
) -> Option<&'a PublicKey> {
    required.iter().find(|key| {
        signatures.iter().any(|signed| {
            signed.key == **key
                && key
                    .verify(Purpose::Model, statement, &signed.signature)
                    .is_ok()
        })
    })
}

/// A model version's signature policy, as a device checks it before staging.
impl crate::workload::DeployedModel {
    /// Checks both signature policies, each on its own: when the deployment names keys
    /// (`required_signers`), one of them must have signed this version's files as the
    /// desired state lists them (so also their sha256, which every downloaded file was checked
    /// against); when the device names keys (`device_signers`), one of those must have, too.
    /// The device's policy holds whatever a desired state says, so a hub that was broken into
    /// cannot lift it. The error names the version and the policy that failed.
    pub fn check_signed(&self, device_signers: &[PublicKey]) -> Result<(), String> {
        let statement = self.statement();
        for (policy, required) in [
            ("the deployment's", self.required_signers.as_slice()),
            ("this device's", device_signers),
        ] {
            if required.is_empty()
                || signed_by_any(&statement, &self.signatures, required).is_some()
            {
                continue;
            }
            let keys: Vec<String> = required.iter().map(PublicKey::key_id).collect();
            return Err(format!(
                "model {} is not signed over these files by any key of {policy} policy ({}); {} signature(s) present",
                self.model_ref(),
                keys.join(", "),
                self.signatures.len()
            ));
        }
        Ok(())
    }

    /// The statement a signature over this version covers.
    pub fn statement(&self) -> Vec<u8> {
        model_statement(
            &self.model_id,
            self.version,
            self.files
                .iter()
                .map(|f| (f.path.as_str(), f.sha256.as_str(), f.size_bytes)),
        )
    }
}

fn signed_bytes(purpose: Purpose, message: &[u8]) -> Vec<u8> {
    let prefix = purpose.prefix();
    let mut bytes = Vec::with_capacity(prefix.len() + message.len());
    bytes.extend_from_slice(prefix);
    bytes.extend_from_slice(message);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_for_its_key_message_and_purpose_only() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let signature = key.sign(Purpose::DesiredState, b"state");
        let public = key.public();
        assert_eq!(
            public.verify(Purpose::DesiredState, b"state", &signature),
            Ok(())
        );
        assert!(
            public
                .verify(Purpose::DesiredState, b"statf", &signature)
                .is_err()
        );
        assert!(public.verify(Purpose::Model, b"state", &signature).is_err());
        assert!(
            other
                .public()
                .verify(Purpose::DesiredState, b"state", &signature)
                .is_err()
        );
        assert_eq!(
            public.verify(Purpose::DesiredState, b"state", &signature[..10]),
            Err(TrustError::SignatureLength(10))
        );
    }

    #[test]
    fn a_model_signature_covers_exactly_its_files() {
        let signer = SigningKey::generate().expect("key");
        let files = [("model.onnx", "aa", 10), ("labels.txt", "bb", 2)];
        let statement = model_statement("digits", 3, files);
        // The order files are listed in does not matter; anything else does.
        let reordered = model_statement("digits", 3, [files[1], files[0]]);
        assert_eq!(statement, reordered);
        let signature = ModelSignature {
            key: signer.public(),
            signature: signer.sign(Purpose::Model, &statement),
        };
        let required = [
            SigningKey::generate().expect("key").public(),
            signer.public(),
        ];
        assert_eq!(
            signed_by_any(&statement, std::slice::from_ref(&signature), &required),
            Some(&signer.public())
        );
        for other in [
            model_statement("digits", 4, files),
            model_statement("digitz", 3, files),
            model_statement("digits", 3, [("model.onnx", "ab", 10), files[1]]),
            model_statement("digits", 3, [files[0]]),
        ] {
            assert_eq!(
                signed_by_any(&other, std::slice::from_ref(&signature), &required),
                None
            );
        }
        assert_eq!(
            signed_by_any(&statement, &[signature], &required[..1]),
            None
        );
        // A desired-state signature never passes as a model signature.
        let wrong_purpose = ModelSignature {
            key: signer.public(),
            signature: signer.sign(Purpose::DesiredState, &statement),
        };
        assert_eq!(signed_by_any(&statement, &[wrong_purpose], &required), None);
    }

    #[test]
    fn keys_round_trip_through_text_and_pkcs8() {
        let key = SigningKey::generate().expect("key");
        let text = key.public().to_string();
        assert!(text.starts_with("ed25519:"), "{text}");
        assert_eq!(text.parse::<PublicKey>(), Ok(key.public()));
        let again = SigningKey::from_pkcs8(key.pkcs8()).expect("pkcs8");
        assert_eq!(again.public(), key.public());
        assert_eq!(key.public().key_id().len(), 16);
        for bad in ["", "ed25519:", "ed25519:!!", "rsa:AAAA", "ed25519:AAAA"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        // The private half never shows in debug output.
        assert!(!format!("{key:?}").contains(&STANDARD.encode(key.pkcs8())));
    }
}

#[cfg(test)]
mod signature_policy_tests {
    use crate::fixtures::model_workload;
    use crate::trust::{ModelSignature, Purpose, SigningKey};
    use crate::workload::{DeployedModel, WorkloadKind};

    fn deployed() -> DeployedModel {
        let WorkloadKind::Model(model) = model_workload("web", 3, 7).kind else {
            unreachable!("a model workload")
        };
        model.models[0].clone()
    }

    #[test]
    fn a_device_or_a_deployment_may_require_a_signer() {
        let signer = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let mut model = deployed();
        // No policy: nothing required.
        assert_eq!(model.check_signed(&[]), Ok(()));
        // The device's policy alone.
        let refused = model
            .check_signed(&[signer.public()])
            .expect_err("unsigned");
        assert!(refused.contains("m:3 is not signed"), "{refused}");
        model.signatures.push(ModelSignature {
            key: signer.public(),
            signature: signer.sign(Purpose::Model, &model.statement()),
        });
        assert_eq!(model.check_signed(&[signer.public()]), Ok(()));
        // The deployment's policy, with a key that did not sign, fails even where the
        // device's holds; and a deployment cannot lift the device's policy.
        model.required_signers = vec![other.public()];
        let refused = model.check_signed(&[]).expect_err("deployment policy");
        assert!(refused.contains("the deployment's policy"), "{refused}");
        assert!(model.check_signed(&[signer.public()]).is_err());
        model.required_signers = vec![signer.public()];
        let refused = model
            .check_signed(&[other.public()])
            .expect_err("device policy");
        assert!(refused.contains("this device's policy"), "{refused}");
        assert_eq!(model.check_signed(&[signer.public()]), Ok(()));
        // Another file behind the same signature: refused.
        model.files[0].sha256 = crate::fixtures::digest(99);
        assert!(model.check_signed(&[signer.public()]).is_err());
    }
}
