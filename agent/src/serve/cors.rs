//! Cross-origin requests from browsers: a deployment's `cors_origins` (exact origins, or `*`)
//! may call its endpoint. Preflights (`OPTIONS` with `Access-Control-Request-Method`) are
//! answered before routing and auth; an origin not on the list gets no CORS headers, so the
//! browser refuses the response, as browsers expect.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{MODEL_HEADER, ROUTING_KEY_HEADER};
use crate::serve::v2::rest::HEADER_LENGTH;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS policy for `origins` (validated by the hub: `*` or `http(s)://host[:port]`).
pub fn layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static(ROUTING_KEY_HEADER),
            HeaderName::from_static(super::azureml::MODEL_NAME_HEADER),
            HeaderName::from_static(HEADER_LENGTH),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static(MODEL_HEADER),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static(HEADER_LENGTH),
        ])
        .max_age(PREFLIGHT_MAX_AGE)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use edgeship_domain::Protocol;
    use testkit::http;

    use crate::serve::{Endpoint, Routes, fake};

    const ALLOWED: &str = "https://app.example.com";

    async fn endpoint(origins: &[String]) -> Endpoint {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let protocols = [Protocol::Azureml, Protocol::V2];
        Endpoint::start(
            any,
            None,
            "web",
            crate::serve::Surface::Scoring(&protocols),
            origins,
            Default::default(),
            Routes::single(fake::backend("m:1")),
        )
        .await
        .expect("listens")
    }

    fn preflight(origin: &str) -> Vec<(&'static str, String)> {
        vec![
            ("origin", origin.to_owned()),
            ("access-control-request-method", "POST".into()),
            (
                "access-control-request-headers",
                "content-type, authorization".into(),
            ),
        ]
    }

    #[tokio::test]
    async fn allowed_origins_pass_preflight_and_see_the_answering_version() {
        let endpoint = endpoint(&[ALLOWED.to_owned()]).await;
        let addr = endpoint.addr();
        for path in ["/score", "/v2/models/m/infer"] {
            let headers = preflight(ALLOWED);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = http(addr, "OPTIONS", path, &headers, b"")
                .await
                .expect("answers");
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
            let methods = answer
                .header("access-control-allow-methods")
                .unwrap_or_default();
            assert!(methods.contains("POST"), "{methods}");
            let allowed = answer
                .header("access-control-allow-headers")
                .unwrap_or_default();
            assert!(allowed.contains("authorization"), "{allowed}");
        }
        let scored = http(
            addr,
            "POST",
            "/score",
            &[("origin", ALLOWED), ("content-type", "application/json")],
            br#"{"data": [1.0]}"#,
        )
        .await
        .expect("answers");
        assert_eq!(scored.status, 200, "{}", scored.body);
        assert_eq!(scored.header("access-control-allow-origin"), Some(ALLOWED));
        let exposed = scored
            .header("access-control-expose-headers")
            .unwrap_or_default();
        assert!(exposed.contains("x-edgeship-model"), "{exposed}");
        endpoint.stop().await;
    }

    #[tokio::test]
    async fn other_origins_get_no_cors_headers_so_browsers_refuse_them() {
        let endpoint = endpoint(&[ALLOWED.to_owned()]).await;
        let headers = preflight("https://evil.example.net");
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = http(endpoint.addr(), "OPTIONS", "/score", &headers, b"")
            .await
            .expect("answers");
        assert_eq!(answer.header("access-control-allow-origin"), None);
        endpoint.stop().await;

        // Without origins configured there is no CORS at all; with `*`, any origin.
        let closed = self::endpoint(&[]).await;
        let headers = preflight(ALLOWED);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = http(closed.addr(), "OPTIONS", "/score", &headers, b"")
            .await
            .expect("answers");
        assert_eq!(answer.header("access-control-allow-origin"), None);
        closed.stop().await;
        let open = self::endpoint(&["*".to_owned()]).await;
        let answer = http(open.addr(), "OPTIONS", "/score", &headers, b"")
            .await
            .expect("answers");
        assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
        open.stop().await;
    }
}
