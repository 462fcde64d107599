//! The endpoint as a whole: routing, counting and health over HTTP, with versions that need
//! no model file.

use std::time::Duration;

use super::*;
use edgeship_domain::HealthThresholds;
use testkit::http;

const GATE: HealthThresholds = HealthThresholds {
    max_error_rate: Some(0.2),
    max_p99_ms: None,
    window_seconds: 30,
    min_requests: 4,
};

async fn endpoint(routes: Routes) -> Endpoint {
    fake::azureml_endpoint(routes).await
}

async fn score(addr: SocketAddr, body: &str, key: Option<&str>) -> testkit::HttpResponse {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(key.map(|k| (ROUTING_KEY_HEADER, k)));
    http(addr, "POST", "/score", &headers, body.as_bytes())
        .await
        .expect("answers")
}

#[tokio::test]
async fn a_failed_inference_is_an_error_and_a_bad_request_is_not() {
    let broken = Backend::new(fake::scorer("m:1", true), Duration::from_secs(30));
    let endpoint = endpoint(Routes::single(broken)).await;
    let addr = endpoint.addr();
    for body in [r#"{"data": [1.0]}"#; 2] {
        let response = score(addr, body, None).await;
        assert_eq!(response.status, 500, "{}", response.body);
        assert_eq!(response.header(MODEL_HEADER), Some("m:1"));
    }
    for body in ["not json", r#"{"data": "text"}"#] {
        let response = score(addr, body, None).await;
        assert_eq!(response.status, 400, "{}", response.body);
        assert_eq!(response.header(MODEL_HEADER), Some("m:1"), "on errors too");
    }
    let seen = endpoint.observe(Instant::now(), Some(&GATE));
    let m = &seen.metrics;
    assert_eq!((m.requests, m.errors), (4, 2), "lifetime: 5xx only");
    assert_eq!(
        (m.window_requests, m.window_errors),
        (4, 2),
        "window: 5xx only"
    );
    assert!(m.versions.is_empty(), "no split, no per-version figures");
    assert_eq!(m.window_seconds, 30);
    let breach = seen.breach.expect("half the requests failed");
    assert!(breach.starts_with("error rate 0.500"), "{breach}");
    endpoint.stop().await;
}

#[tokio::test]
async fn a_split_answers_from_both_versions_and_reports_each() {
    let routes = Routes::new(vec![(50, fake::backend("m:1")), (50, fake::backend("m:2"))])
        .expect("versions");
    let endpoint = endpoint(routes).await;
    let mut answered = Vec::new();
    for i in 0..40 {
        let key = format!("k{i}");
        let response = score(endpoint.addr(), r#"{"data": [2.5]}"#, Some(&key)).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.json(), serde_json::json!([2.5]));
        answered.push(response.header(MODEL_HEADER).unwrap_or_default().to_owned());
    }
    assert!(answered.iter().any(|m| m == "m:1") && answered.iter().any(|m| m == "m:2"));
    // The same key is answered by the same version.
    let again = score(endpoint.addr(), r#"{"data": [2.5]}"#, Some("k0")).await;
    assert_eq!(again.header(MODEL_HEADER), Some(answered[0].as_str()));

    let m = endpoint.observe(Instant::now(), None).metrics;
    assert_eq!(
        (m.requests, m.window_requests, m.window_errors),
        (41, 41, 0)
    );
    let per_version: Vec<(&str, u64)> = m
        .versions
        .iter()
        .map(|v| (v.model.as_str(), v.window_requests))
        .collect();
    let ones = answered.iter().filter(|m| *m == "m:1").count() as u64;
    let ones = ones + u64::from(answered[0] == "m:1");
    assert_eq!(per_version, [("m:1", ones), ("m:2", 41 - ones)]);
    assert!(m.p99_ms >= m.p50_ms && m.p50_ms > 0.0);
    endpoint.stop().await;
}
