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
mod tests {
    use super::*;

    fn keyed(keys: &[&str]) -> Auth {
        let spec = EndpointSpec {
            auth: AuthMode::Key,
            key_digests: keys
                .iter()
                .map(|k| hex::encode(Sha256::digest(k)))
                .collect(),
            ..EndpointSpec::azureml(5001)
        };
        Auth::from_spec("web", &spec)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any `Authorization` header is refused by a key endpoint and a token endpoint alike,
        /// without a panic, unless it is the key.
        #[test]
        fn any_authorization_header_is_refused_cleanly(header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            proptest::prop_assert!(keyed(&["primary-key"]).check(Some(&header)).is_err());
            #[cfg(feature = "tokens")]
            proptest::prop_assert!(token_auth("web").1.check(Some(&header)).is_err());
        }

        #[test]
        fn bearer_texts_near_a_token_are_refused_cleanly(text in "Bearer [A-Za-z0-9_.=-]{0,200}") {
            proptest::prop_assert!(keyed(&["primary-key"]).check(Some(text.as_bytes())).is_err());
            #[cfg(feature = "tokens")]
            proptest::prop_assert!(token_auth("web").1.check(Some(text.as_bytes())).is_err());
        }
    }

    #[test]
    fn either_key_passes_and_anything_else_is_refused() {
        let auth = keyed(&["primary-key", "secondary-key"]);
        assert_eq!(auth.check(Some(b"Bearer primary-key")), Ok(()));
        assert_eq!(auth.check(Some(b"Bearer secondary-key")), Ok(()));
        assert_eq!(auth.check(None), Err(Refusal::MissingKey));
        assert_eq!(auth.check(Some(b"Bearer other")), Err(Refusal::InvalidKey));
        assert_eq!(auth.check(Some(b"primary-key")), Err(Refusal::InvalidKey));
        assert_eq!(Auth::default().check(None), Ok(()), "no auth");
        // A key endpoint whose digests did not arrive refuses everything.
        assert_eq!(
            keyed(&[]).check(Some(b"Bearer x")),
            Err(Refusal::InvalidKey)
        );
    }

    #[test]
    fn a_connection_remembers_only_the_value_it_had_accepted_under_the_same_auth() {
        let auth = Arc::new(keyed(&["primary-key", "secondary-key"]));
        let mut accepted = Accepted::default();
        let mut check =
            |auth: &Arc<Auth>, value: Option<&[u8]>| auth.check_on(value, &mut accepted);
        assert_eq!(check(&auth, Some(b"Bearer primary-key")), Ok(()));
        assert_eq!(
            check(&auth, Some(b"Bearer primary-key")),
            Ok(()),
            "remembered"
        );
        assert_eq!(
            check(&auth, Some(b"Bearer primary-kez")),
            Err(Refusal::InvalidKey)
        );
        assert_eq!(
            check(&auth, Some(b"Bearer primary-key ")),
            Ok(()),
            "verified again"
        );
        assert_eq!(check(&auth, None), Err(Refusal::MissingKey));
        assert_eq!(check(&auth, Some(b"Bearer secondary-key")), Ok(()));
        // Keys rotated in place: a new auth, under which the remembered key is refused.
        let rotated = Arc::new(keyed(&["new-key"]));
        assert_eq!(
            check(&rotated, Some(b"Bearer secondary-key")),
            Err(Refusal::InvalidKey)
        );
        assert_eq!(check(&rotated, Some(b"Bearer new-key")), Ok(()));
        assert_eq!(check(&Arc::new(Auth::default()), None), Ok(()), "no auth");
    }

    #[test]
    fn a_remembered_token_is_trusted_only_until_its_expiry() {
        let auth = Arc::new(Auth {
            mode: Some(AuthMode::Token),
            ..Auth::default()
        });
        // What a connection would hold after its token was verified: this value would not
        // verify (no key is accepted), so a pass can only come from the memory.
        let remembered = |until: u64| Accepted {
            auth: Some(Arc::clone(&auth)),
            value: b"Bearer remembered".to_vec(),
            until: Some(until),
        };
        let mut fresh = remembered(unix_now() + 60);
        assert_eq!(
            auth.check_on(Some(b"Bearer remembered"), &mut fresh),
            Ok(())
        );
        let mut expired = remembered(unix_now() - 1);
        assert_eq!(
            auth.check_on(Some(b"Bearer remembered"), &mut expired),
            Err(Refusal::InvalidToken)
        );
    }

    /// A signing key pair as the hub keeps one, and the endpoint auth its desired state gives.
    #[cfg(feature = "tokens")]
    fn token_auth(deployment: &str) -> (jsonwebtoken::EncodingKey, Auth) {
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let document =
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key pair");
        let pair = Ed25519KeyPair::from_pkcs8(document.as_ref()).expect("pkcs8");
        let spec = EndpointSpec {
            auth: AuthMode::Token,
            token_keys: vec![
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key()),
            ],
            ..EndpointSpec::azureml(5001)
        };
        (
            jsonwebtoken::EncodingKey::from_ed_der(document.as_ref()),
            Auth::from_spec(deployment, &spec),
        )
    }

    #[cfg(feature = "tokens")]
    fn bearer(
        key: &jsonwebtoken::EncodingKey,
        claims: serde_json::Value,
        alg: Algorithm,
    ) -> String {
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).expect("signed");
        format!("Bearer {token}")
    }

    #[cfg(feature = "tokens")]
    #[test]
    fn a_signed_token_for_this_deployment_passes_until_it_expires() {
        let (key, auth) = token_auth("web");
        let (foreign_key, _) = token_auth("web");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let claims = |aud: &str, iss: &str, exp: i64| json!({"aud": aud, "iss": iss, "iat": now, "exp": exp});
        let check = |header: String| auth.check(Some(header.as_bytes()));
        let good = claims("web", TOKEN_ISSUER, now + 60);
        assert_eq!(check(bearer(&key, good.clone(), Algorithm::EdDSA)), Ok(()));
        let cases = [
            (
                "expired",
                bearer(
                    &key,
                    claims("web", TOKEN_ISSUER, now - 60),
                    Algorithm::EdDSA,
                ),
                Refusal::ExpiredToken,
            ),
            (
                "another deployment",
                bearer(
                    &key,
                    claims("other", TOKEN_ISSUER, now + 60),
                    Algorithm::EdDSA,
                ),
                Refusal::InvalidToken,
            ),
            (
                "another issuer",
                bearer(&key, claims("web", "someone", now + 60), Algorithm::EdDSA),
                Refusal::InvalidToken,
            ),
            (
                "another signer",
                bearer(&foreign_key, good.clone(), Algorithm::EdDSA),
                Refusal::InvalidToken,
            ),
            (
                "no expiry",
                bearer(
                    &key,
                    json!({"aud": "web", "iss": TOKEN_ISSUER}),
                    Algorithm::EdDSA,
                ),
                Refusal::InvalidToken,
            ),
            (
                "a key, not a token",
                "Bearer k-primary".into(),
                Refusal::InvalidToken,
            ),
            (
                "unsigned",
                format!(
                    "Bearer {}.e30.",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)
                ),
                Refusal::InvalidToken,
            ),
        ];
        for (what, header, refusal) in cases {
            assert_eq!(check(header), Err(refusal), "{what}");
        }
        // An expired token with a forged signature is invalid, not expired.
        let forged = bearer(
            &foreign_key,
            claims("web", TOKEN_ISSUER, now - 60),
            Algorithm::EdDSA,
        );
        assert_eq!(check(forged), Err(Refusal::InvalidToken));
        assert_eq!(auth.check(None), Err(Refusal::MissingToken));
        assert!(Refusal::ExpiredToken.challenge().contains("expired"));
        // A token endpoint whose public key did not arrive refuses everything.
        let keyless = Auth::from_spec(
            "web",
            &EndpointSpec {
                auth: AuthMode::Token,
                ..EndpointSpec::azureml(1)
            },
        );
        assert_eq!(
            keyless.check(Some(bearer(&key, good, Algorithm::EdDSA).as_bytes())),
            Err(Refusal::InvalidToken)
        );
    }

    #[cfg(feature = "grpc")]
    #[tokio::test]
    async fn every_route_but_health_needs_a_key_over_rest_and_grpc_and_keys_rotate_in_place() {
        use std::net::SocketAddr;

        use edgeship_domain::Protocol;
        use edgeship_proto::inference as pb;
        use edgeship_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
        use testkit::http;

        use crate::serve::{Endpoint, Routes, fake};

        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint = Endpoint::start(
            any,
            Some(any),
            "web",
            crate::serve::Surface::Scoring(&[Protocol::Azureml, Protocol::V2]),
            &[],
            keyed(&["k-primary", "k-secondary"]),
            Routes::single(fake::backend("m:1")),
        )
        .await
        .expect("listens");
        let addr = endpoint.addr();
        let json = ("content-type", "application/json");
        let body = br#"{"data": [1.0]}"#;
        let v2 = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}"#;
        for path in [
            "/",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/m/ready",
        ] {
            let open = http(addr, "GET", path, &[], b"").await.expect("answers");
            assert_eq!(open.status, 200, "{path} needs no key");
        }
        let missing = http(addr, "POST", "/score", &[json], body)
            .await
            .expect("answers");
        assert_eq!(missing.status, 401);
        assert_eq!(
            missing.header("www-authenticate"),
            Some("Bearer realm=\"edgeship\"")
        );
        assert!(
            missing.json()["message"]
                .as_str()
                .unwrap_or_default()
                .contains("needs a key")
        );
        let wrong = http(
            addr,
            "POST",
            "/score",
            &[json, ("authorization", "Bearer nope")],
            body,
        )
        .await
        .expect("answers");
        assert_eq!(wrong.status, 401);
        assert!(
            wrong
                .header("www-authenticate")
                .unwrap_or_default()
                .contains("invalid_token")
        );
        for key in ["Bearer k-primary", "Bearer k-secondary"] {
            let ok = http(
                addr,
                "POST",
                "/score",
                &[json, ("authorization", key)],
                body,
            )
            .await
            .expect("answers");
            assert_eq!(ok.status, 200, "{}", ok.body);
        }
        for path in ["/swagger.json", "/metrics", "/v2/models/m"] {
            let closed = http(addr, "GET", path, &[], b"").await.expect("answers");
            assert_eq!(closed.status, 401, "{path}");
        }
        let swagger = http(
            addr,
            "GET",
            "/swagger.json",
            &[("authorization", "Bearer k-primary")],
            b"",
        )
        .await
        .expect("answers");
        assert_eq!(swagger.status, 200);
        let doc = swagger.json();
        assert_eq!(
            doc["securityDefinitions"]["Bearer"]["name"],
            "Authorization"
        );
        assert_eq!(
            doc["paths"]["/score"]["post"]["security"][0]["Bearer"],
            serde_json::json!([])
        );
        let v2_missing = http(addr, "POST", "/v2/models/m/infer", &[], v2)
            .await
            .expect("answers");
        assert_eq!(v2_missing.status, 401);
        assert!(v2_missing.json()["error"].is_string(), "OIP's error shape");

        let grpc = endpoint.grpc_addr().expect("grpc");
        let mut client = GrpcInferenceServiceClient::connect(format!("http://{grpc}"))
            .await
            .expect("connects");
        let infer = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: vec![1.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            client.server_ready(pb::ServerReadyRequest {}).await.is_ok(),
            "health is open"
        );
        let refused = client.model_infer(infer.clone()).await.expect_err("no key");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let mut with_key = tonic::Request::new(infer.clone());
        with_key
            .metadata_mut()
            .insert("authorization", "Bearer k-primary".parse().expect("ascii"));
        assert!(client.model_infer(with_key).await.is_ok());

        // Rotation: the new secondary works at once, the old one no longer does.
        endpoint.set_auth(keyed(&["k-primary", "k-rotated"]));
        let old = http(
            addr,
            "POST",
            "/score",
            &[json, ("authorization", "Bearer k-secondary")],
            body,
        )
        .await
        .expect("answers");
        assert_eq!(old.status, 401);
        let new = http(
            addr,
            "POST",
            "/score",
            &[json, ("authorization", "Bearer k-rotated")],
            body,
        )
        .await
        .expect("answers");
        assert_eq!(new.status, 200);
        endpoint.stop().await;
    }
}
