//! Auth against keys, tokens and rotation: unit checks, and every route of a live endpoint.

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
    let mut check = |auth: &Arc<Auth>, value: Option<&[u8]>| auth.check_on(value, &mut accepted);
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
fn bearer(key: &jsonwebtoken::EncodingKey, claims: serde_json::Value, alg: Algorithm) -> String {
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
    let claims =
        |aud: &str, iss: &str, exp: i64| json!({"aud": aud, "iss": iss, "iat": now, "exp": exp});
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
