//! Endpoint tokens of deployments with auth `token`, as Azure ML's `aml_token` endpoints have:
//! short-lived bearer tokens, signed, that callers refresh. Each such deployment has its own
//! Ed25519 key pair. The hub keeps the private key and signs JWTs (`EdDSA`, audience the
//! deployment, issuer `edgeship`, `exp`); devices receive only the public key (see
//! `desired::workload`) and verify tokens offline, with no call to the hub.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgeship_domain::{AuthMode, names};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use super::deployments::invalid;
use super::{Fleet, FleetError};
use crate::now_ms;

/// The issuer named in every token, which devices require.
pub const TOKEN_ISSUER: &str = "edgeship";
/// How long a token lives when the caller does not say (Azure ML's tokens live an hour too).
pub const DEFAULT_TOKEN_SECONDS: u32 = 3600;
/// The longest life a token may ask for: a token cannot be revoked before it expires, short of
/// rotating the deployment's signing key.
pub const MAX_TOKEN_SECONDS: u32 = 7 * 24 * 3600;

/// A deployment's token signing key: the PKCS#8 document of an Ed25519 key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSigner {
    /// base64url of the PKCS#8 v2 document.
    pub pkcs8: String,
}

/// What a token carries. Devices check `aud`, `iss` and `exp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// A signed token and when to use a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointToken {
    pub access_token: String,
    pub expiry_time_ms: i64,
    /// Half-way through its life: callers that refresh then never hold an expired token.
    pub refresh_after_time_ms: i64,
}

fn internal(what: &str) -> impl Fn(String) -> FleetError + '_ {
    move |err| FleetError::Internal(format!("{what}: {err}"))
}

impl TokenSigner {
    pub fn generate() -> Result<Self, FleetError> {
        let document = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|err| FleetError::Internal(format!("no key pair for tokens: {err}")))?;
        Ok(Self {
            pkcs8: URL_SAFE_NO_PAD.encode(document.as_ref()),
        })
    }

    fn document(&self) -> Result<Vec<u8>, FleetError> {
        URL_SAFE_NO_PAD
            .decode(&self.pkcs8)
            .map_err(|err| internal("the stored token key is damaged")(err.to_string()))
    }

    /// base64url of the 32-byte public key: what devices verify with.
    pub fn public_key(&self) -> Result<String, FleetError> {
        let pair = Ed25519KeyPair::from_pkcs8(&self.document()?)
            .map_err(|err| internal("the stored token key is damaged")(err.to_string()))?;
        Ok(URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()))
    }

    /// A token for `deployment`, issued at `now_ms`, that expires `seconds` later.
    pub fn sign(
        &self,
        deployment: &str,
        now_ms: i64,
        seconds: u32,
    ) -> Result<EndpointToken, FleetError> {
        let issued = now_ms.div_euclid(1000);
        let claims = TokenClaims {
            iss: TOKEN_ISSUER.to_owned(),
            aud: deployment.to_owned(),
            iat: issued,
            exp: issued + i64::from(seconds),
        };
        let key = EncodingKey::from_ed_der(&self.document()?);
        let access_token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)
            .map_err(|err| internal("signing a token")(err.to_string()))?;
        Ok(EndpointToken {
            access_token,
            expiry_time_ms: claims.exp * 1000,
            refresh_after_time_ms: (issued + i64::from(seconds / 2)) * 1000,
        })
    }
}

impl Fleet {
    /// A new token for deployment `id`, which must use auth `token`, living `seconds`
    /// ([`DEFAULT_TOKEN_SECONDS`] when `None`).
    pub fn deployment_token(
        &self,
        id: &str,
        seconds: Option<u32>,
    ) -> Result<EndpointToken, FleetError> {
        names::deployment_id(id).map_err(invalid)?;
        let seconds = seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
        if !(1..=MAX_TOKEN_SECONDS).contains(&seconds) {
            return Err(FleetError::InvalidArgument(format!(
                "a token lives from 1 second to {MAX_TOKEN_SECONDS} seconds (7 days), not {seconds}"
            )));
        }
        let deployment = self.get_deployment(id)?;
        match (deployment.spec.endpoint.auth, deployment.token_signer) {
            (AuthMode::Token, Some(signer)) => signer.sign(id, now_ms(), seconds),
            (auth, _) => Err(FleetError::FailedPrecondition(format!(
                "deployment {id} uses auth {auth}, not token: set endpoint.auth to token to get tokens"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn tokens_verify_with_the_public_key_only_and_carry_the_deployment_and_expiry() {
        let signer = TokenSigner::generate().expect("key pair");
        let other = TokenSigner::generate().expect("key pair");
        let public = URL_SAFE_NO_PAD
            .decode(signer.public_key().expect("public"))
            .expect("base64url");
        assert_eq!(public.len(), 32);
        let now = 1_800_000_000_123;
        let token = signer.sign("web", now, 600).expect("signed");
        assert_eq!(token.expiry_time_ms, 1_800_000_600_000);
        assert_eq!(token.refresh_after_time_ms, 1_800_000_300_000);
        assert!(!token.access_token.contains(&signer.pkcs8));
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["web"]);
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<TokenClaims>(
            &token.access_token,
            &DecodingKey::from_ed_der(&public),
            &validation,
        )
        .expect("verifies")
        .claims;
        assert_eq!((claims.aud.as_str(), claims.exp), ("web", 1_800_000_600));
        let foreign = URL_SAFE_NO_PAD
            .decode(other.public_key().expect("public"))
            .expect("base64url");
        assert!(
            jsonwebtoken::decode::<TokenClaims>(
                &token.access_token,
                &DecodingKey::from_ed_der(&foreign),
                &validation,
            )
            .is_err(),
            "another deployment's key does not verify it"
        );
    }
}
