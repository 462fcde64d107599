//! The reverse proxy in front of a container workload: the endpoint's own listener, with its
//! auth, CORS, request ids and `/metrics`, forwards every other request to the container that
//! serves now.
//!
//! Design: a container is one more version behind the endpoint's routing table, an
//! [`Upstream`] in a [`super::Backend`], so counting, windows, health gates and the atomic
//! switch are the same code as for models: a blue/green switch is one routing-table store, a
//! request in flight finishes on the container it was routed to (the response body holds the
//! backend until its last byte is sent), and the agent stops the old container once nothing
//! holds its backend.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use edgeship_domain::TensorSpec;
use edgeship_runtime::{RuntimeError, Tensor};
use futures::StreamExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{ROUTING_KEY_HEADER, Scorer, Shared};

/// Connections kept open to a container between requests.
const IDLE_CONNECTIONS: usize = 64;

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// A running container as a version behind an endpoint: where its port is, and a pool of
/// kept-alive connections to it.
#[derive(Debug)]
pub struct Upstream {
    /// What the container runs (`scorer-image:2, diabetes:1`), as responses name it.
    name: String,
    /// Moves when the engine restarts the container on another address.
    addr: RwLock<SocketAddr>,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    pub fn new(name: String, addr: SocketAddr) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Arc::new(Self {
            name,
            addr: RwLock::new(addr),
            client,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        *self.addr.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the next requests to `addr` (the container's new address).
    pub fn move_to(&self, addr: SocketAddr) {
        *self.addr.write().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Sends `request` to the container and returns its answer, or a 502 naming why it gave
    /// none.
    async fn forward(&self, request: Request) -> Response {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(self.addr().to_string())
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(err) => return bad_gateway(&format!("cannot address the container: {err}")),
        };
        for name in &HOP_BY_HOP {
            parts.headers.remove(name);
        }
        // The routing key chose the container; the container has no use for it.
        parts.headers.remove(ROUTING_KEY_HEADER);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                for name in &HOP_BY_HOP {
                    parts.headers.remove(name);
                }
                Response::from_parts(parts, Body::new(body))
            }
            Err(err) => bad_gateway(&format!("the container did not answer: {err}")),
        }
    }
}

fn bad_gateway(why: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        axum::Json(serde_json::json!({ "message": why })),
    )
        .into_response()
}

/// A container answers over HTTP, never with tensors: the scoring adapters are not mounted
/// on a proxying endpoint, so nothing calls `infer`.
impl Scorer for Upstream {
    fn model_ref(&self) -> &str {
        &self.name
    }

    fn inputs(&self) -> &[TensorSpec] {
        &[]
    }

    fn outputs(&self) -> &[TensorSpec] {
        &[]
    }

    fn sample_input(&self) -> Option<&serde_json::Value> {
        None
    }

    fn infer(&self, _inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        Err(RuntimeError::Run(
            "a container workload answers over HTTP, not with tensors".into(),
        ))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(self)
    }
}

/// Every path the endpoint does not answer itself goes to the container.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new().fallback(forward)
}

async fn forward(State(shared): State<Arc<Shared>>, mut request: Request) -> Response {
    let key = request
        .headers()
        .get(ROUTING_KEY_HEADER)
        .map(|v| v.as_bytes().to_vec());
    // The endpoint's key or token was for the agent, which checked it; the container never
    // sees it.
    if shared.auth().is_required() {
        request.headers_mut().remove(header::AUTHORIZATION);
    }
    let call = shared.begin_with_key(key.as_deref());
    let held = call.backend();
    let response = match call.scorer().upstream() {
        Some(upstream) => upstream.forward(request).await,
        None => bad_gateway("the endpoint has no container behind it"),
    };
    let (parts, body) = shared.finish(call, response).into_parts();
    // The container answered with its headers; its body may still be streaming. The body
    // holds the backend, so a blue/green switch waits for it before stopping the container.
    let body = body.into_data_stream().map(move |chunk| {
        let _still_sending = &held;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
