//! Endpoint auth, checked on the device with nothing but what the desired state carries:
//! with `key`, the sha256 digests of the deployment's primary and secondary keys (never the
//! keys), and a request passes with `Authorization: Bearer <either key>`, digests compared in
//! constant time; with `token`, the Ed25519 public key of the deployment's signing key, and a
//! request passes with `Authorization: Bearer <JWT>` signed by it (`EdDSA`), for this
//! deployment (`aud`), by the hub (`iss`), not expired (`exp`, with a few seconds' leeway for
//! clocks). Health routes stay open: probes carry no credentials.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use edgeship_domain::{AuthMode, Endpoint as EndpointSpec};
#[cfg(feature = "tokens")]
use jsonwebtoken::errors::ErrorKind as JwtError;
#[cfg(feature = "tokens")]
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;

/// Paths that answer without credentials (liveness and readiness probes; OIP's model
/// readiness, `/v2/models/{name}[/versions/{v}]/ready`, is one too).
const OPEN_PATHS: [&str; 3] = ["/", "/v2/health/live", "/v2/health/ready"];

/// The issuer the hub names in every token.
pub const TOKEN_ISSUER: &str = "edgeship";

/// Seconds a token is still accepted after its `exp`: devices' clocks drift a little from
/// the hub's, and a token refreshed on time never comes near its expiry anyway.
pub const TOKEN_LEEWAY_SECONDS: u64 = 5;

fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || (path.starts_with("/v2/models/") && path.ends_with("/ready"))
}

/// What an endpoint accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    mode: Option<AuthMode>,
    /// With `key`: sha256 of each accepted key.
    key_digests: Vec<[u8; 32]>,
    /// With `token`: the Ed25519 public keys whose signatures are accepted.
    token_keys: Vec<[u8; 32]>,
    /// With `token`: the deployment, which a token must name as its audience.
    audience: String,
}

/// The credential a connection's last accepted request presented, for
/// [`Auth::check_on`].
#[derive(Debug, Default)]
pub struct Accepted {
    /// The auth it was accepted under.
    auth: Option<Arc<Auth>>,
    /// The `Authorization` value.
    value: Vec<u8>,
    /// A token's expiry with the leeway, in seconds since the epoch.
    until: Option<u64>,
}

/// The one claim a remembered token needs again: its expiry (which validation required).
#[cfg(feature = "tokens")]
#[derive(serde::Deserialize)]
struct Expiry {
    exp: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Why a request was refused, for the `WWW-Authenticate` challenge and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingKey,
    InvalidKey,
    MissingToken,
    InvalidToken,
    ExpiredToken,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::MissingKey => "this endpoint needs a key: send Authorization: Bearer <key>",
            Refusal::InvalidKey => "the key is not valid for this endpoint",
            Refusal::MissingToken => {
                "this endpoint needs a token: send Authorization: Bearer <token> (edgeship deploy token)"
            }
            Refusal::InvalidToken => "the token is not valid for this endpoint",
            Refusal::ExpiredToken => "the token has expired: get a new one",
        }
    }

    fn challenge(self) -> &'static str {
        match self {
            Refusal::MissingKey | Refusal::MissingToken => "Bearer realm=\"edgeship\"",
            Refusal::InvalidKey | Refusal::InvalidToken => {
                "Bearer realm=\"edgeship\", error=\"invalid_token\""
            }
            Refusal::ExpiredToken => {
                "Bearer realm=\"edgeship\", error=\"invalid_token\", error_description=\"The access token expired\""
            }
        }
    }
}

/// Decodes the 32-byte values a desired state carries as hex (key digests) or base64url
/// (public keys); anything else is dropped, so a damaged list fails closed.
fn bytes32(values: &[String], decode: impl Fn(&str) -> Option<Vec<u8>>) -> Vec<[u8; 32]> {
    values
        .iter()
        .filter_map(|v| decode(v)?.try_into().ok())
        .collect()
}

impl Auth {
    /// The auth of `deployment`'s endpoint as its workload describes it.
    pub fn from_spec(deployment: &str, spec: &EndpointSpec) -> Self {
        match spec.auth {
            AuthMode::None => Self::default(),
            AuthMode::Key => Self {
                mode: Some(AuthMode::Key),
                key_digests: bytes32(&spec.key_digests, |d| hex::decode(d).ok()),
                ..Self::default()
            },
            AuthMode::Token => Self {
                mode: Some(AuthMode::Token),
                token_keys: bytes32(&spec.token_keys, |k| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(k)
                        .ok()
                }),
                audience: deployment.to_owned(),
                ..Self::default()
            },
        }
    }

    pub fn is_required(&self) -> bool {
        self.mode.is_some()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        self.verify(authorization).map(drop)
    }

    /// Checks an `Authorization` header value; with a token, also says until when (seconds
    /// since the epoch, leeway included) it stays valid.
    fn verify(&self, authorization: Option<&[u8]>) -> Result<Option<u64>, Refusal> {
        let Some(mode) = self.mode else {
            return Ok(None);
        };
        let (missing, invalid) = match mode {
            AuthMode::Token => (Refusal::MissingToken, Refusal::InvalidToken),
            _ => (Refusal::MissingKey, Refusal::InvalidKey),
        };
        let presented = authorization.ok_or(missing)?;
        let credential = presented
            .strip_prefix(b"Bearer ")
            .or_else(|| presented.strip_prefix(b"bearer "))
            .ok_or(invalid)?
            .trim_ascii();
        match mode {
            AuthMode::Token => self.check_token(credential).map(Some),
            _ => self.check_key(credential).map(|()| None),
        }
    }

    /// [`check`](Self::check) for a request on a connection whose earlier request was
    /// accepted: the same `Authorization` value under the same auth passes without hashing
    /// the key or verifying the token again (a sha256 of a key was about a twentieth of a
    /// small model's whole request; an Ed25519 verification costs more than the run). The
    /// value is compared in constant time, as digests are; a token is remembered only until
    /// its expiry, and keys rotated in place are a new `Auth`, which forgets everything.
    pub fn check_on(
        self: &Arc<Self>,
        authorization: Option<&[u8]>,
        accepted: &mut Accepted,
    ) -> Result<(), Refusal> {
        if !self.is_required() {
            return Ok(());
        }
        if let (Some(presented), Some(auth)) = (authorization, &accepted.auth)
            && Arc::ptr_eq(auth, self)
            && accepted.until.is_none_or(|until| unix_now() <= until)
            && bool::from(presented.ct_eq(&accepted.value))
        {
            return Ok(());
        }
        let until = self.verify(authorization)?;
        accepted.auth = Some(Arc::clone(self));
        accepted.value.clear();
        accepted
            .value
            .extend_from_slice(authorization.unwrap_or_default());
        accepted.until = until;
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Refusal> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Every digest is compared, whatever matched, so timing tells nothing.
        let matched = self
            .key_digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&digest));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::InvalidKey)
        }
    }

    /// Verifies a JWT with each accepted public key. The signature is checked before the
    /// claims, so an expired token is reported as such only when it is genuine.
    #[cfg(feature = "tokens")]
    fn check_token(&self, token: &[u8]) -> Result<u64, Refusal> {
        let token = std::str::from_utf8(token).map_err(|_| Refusal::InvalidToken)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = TOKEN_LEEWAY_SECONDS;
        let mut refusal = Refusal::InvalidToken;
        for key in &self.token_keys {
            match jsonwebtoken::decode::<Expiry>(token, &DecodingKey::from_ed_der(key), &validation)
            {
                Ok(data) => return Ok(data.claims.exp.saturating_add(TOKEN_LEEWAY_SECONDS)),
                Err(err) if *err.kind() == JwtError::ExpiredSignature => {
                    refusal = Refusal::ExpiredToken;
                }
                Err(_) => {}
            }
        }
        Err(refusal)
    }

    /// Built without the `tokens` feature, the agent announces no token auth and the hub
    /// sends it no such endpoint; one arriving anyway admits nobody.
    #[cfg(not(feature = "tokens"))]
    fn check_token(&self, _token: &[u8]) -> Result<u64, Refusal> {
        Err(Refusal::InvalidToken)
    }
}

/// The 401 for a refused request.
pub fn unauthorized(refusal: Refusal, body_key: &str) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ body_key: refusal.message() })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(refusal.challenge()),
    );
    response
}

/// Middleware: every route but the open ones needs a valid key when the endpoint asks for one.
pub async fn require(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let auth = shared.auth();
    if !auth.is_required() || is_open(request.uri().path()) {
        return next.run(request).await;
    }
    // A preflight carries no credentials by design; CORS answers it before this runs.
    match auth.check(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            // Each protocol's error shape: OIP's `error`, Azure ML's `message`.
            let key = if request.uri().path().starts_with("/v2") {
                "error"
            } else {
                "message"
            };
            unauthorized(refusal, key)
        }
    }
}

#[cfg(test)]
mod tests;
