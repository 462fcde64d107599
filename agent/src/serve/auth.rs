//! Endpoint auth, checked on the device with nothing but what the desired state carries:
//! with `key`, the sha256 digests of the deployment's primary and secondary keys (never the
//! keys), and a request passes with `Authorization: Bearer <either key>`. Digests are
//! compared in constant time. Health routes stay open: probes carry no credentials.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edgeship_domain::{AuthMode, Endpoint as EndpointSpec};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;

/// Paths that answer without credentials (liveness and readiness probes; OIP's model
/// readiness, `/v2/models/{name}[/versions/{v}]/ready`, is one too).
const OPEN_PATHS: [&str; 3] = ["/", "/v2/health/live", "/v2/health/ready"];

fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || (path.starts_with("/v2/models/") && path.ends_with("/ready"))
}

/// What an endpoint accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// sha256 of each accepted key; empty: no auth.
    key_digests: Vec<[u8; 32]>,
    /// Keys are required even if no digest arrived (a broken desired state fails closed).
    required: bool,
}

/// Why a request was refused, for the `WWW-Authenticate` challenge and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "this endpoint needs a key: send Authorization: Bearer <key>",
            Refusal::Invalid => "the key is not valid for this endpoint",
        }
    }

    fn challenge(self) -> &'static str {
        match self {
            Refusal::Missing => "Bearer realm=\"edgeship\"",
            Refusal::Invalid => "Bearer realm=\"edgeship\", error=\"invalid_token\"",
        }
    }
}

impl Auth {
    /// The endpoint's auth as its workload describes it.
    pub fn from_spec(spec: &EndpointSpec) -> Self {
        match spec.auth {
            AuthMode::None => Self::default(),
            AuthMode::Key | AuthMode::Token => Self {
                key_digests: spec
                    .key_digests
                    .iter()
                    .filter_map(|d| hex::decode(d).ok()?.try_into().ok())
                    .collect(),
                required: true,
            },
        }
    }

    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        if !self.required {
            return Ok(());
        }
        let presented = authorization.ok_or(Refusal::Missing)?;
        let key = presented
            .strip_prefix(b"Bearer ")
            .or_else(|| presented.strip_prefix(b"bearer "))
            .ok_or(Refusal::Invalid)?;
        let digest: [u8; 32] = Sha256::digest(key.trim_ascii()).into();
        // Every digest is compared, whatever matched, so timing tells nothing.
        let matched = self
            .key_digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&digest));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
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
        Auth::from_spec(&spec)
    }

    #[test]
    fn either_key_passes_and_anything_else_is_refused() {
        let auth = keyed(&["primary-key", "secondary-key"]);
        assert_eq!(auth.check(Some(b"Bearer primary-key")), Ok(()));
        assert_eq!(auth.check(Some(b"Bearer secondary-key")), Ok(()));
        assert_eq!(auth.check(None), Err(Refusal::Missing));
        assert_eq!(auth.check(Some(b"Bearer other")), Err(Refusal::Invalid));
        assert_eq!(auth.check(Some(b"primary-key")), Err(Refusal::Invalid));
        assert_eq!(Auth::default().check(None), Ok(()), "no auth");
        // A key endpoint whose digests did not arrive refuses everything.
        assert_eq!(keyed(&[]).check(Some(b"Bearer x")), Err(Refusal::Invalid));
    }

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
            &[Protocol::Azureml, Protocol::V2],
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
