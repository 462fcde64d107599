//! The scoring endpoint of one workload, Azure ML style: `GET /` → `Healthy`, `POST /score`,
//! `GET /swagger.json`; errors are `{"message": ...}` with the status that fits; every
//! response carries `x-request-id` (echoed, or generated when the caller sent none).
//!
//! Design: the model behind an endpoint is an `Arc` swapped under a lock, so a switch to a
//! new version is one pointer store: requests already running finish on the old version,
//! the next request sees the new one, and no request ever sees no model.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::runtime::{Runnable, RuntimeError};
use crate::scoring;
use crate::tensor::{Dim, ElementType, TensorInfo};

/// Largest scoring body accepted (413 beyond).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A prepared, self-tested model ready to take traffic.
#[derive(Debug)]
pub struct ServingModel {
    /// `model_id:version`.
    pub model_ref: String,
    pub runnable: Arc<dyn Runnable>,
    pub sample_input: Option<Value>,
}

#[derive(Debug, Default)]
struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_micros: AtomicU64,
}

/// Counters since the endpoint started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub mean_latency_ms: f64,
}

#[derive(Debug)]
struct Shared {
    deployment: String,
    current: RwLock<Arc<ServingModel>>,
    metrics: Metrics,
    max_body_bytes: usize,
    next_request_id: AtomicU64,
}

/// A running scoring endpoint.
#[derive(Debug)]
pub struct Endpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` and starts serving `model`.
    pub async fn start(
        addr: SocketAddr,
        deployment: &str,
        model: Arc<ServingModel>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            deployment: deployment.to_owned(),
            current: RwLock::new(model),
            metrics: Metrics::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            next_request_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/", get(health))
            .route("/score", post(score))
            .route("/swagger.json", get(swagger))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                request_id,
            ))
            .with_state(Arc::clone(&shared));
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = signal.await;
            });
            if let Err(err) = serve.await {
                tracing::error!(%addr, error = %err, "scoring endpoint failed");
            }
        });
        tracing::info!(%addr, deployment, "scoring endpoint listening");
        Ok(Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Atomically replaces the model that serves new requests.
    pub fn switch(&self, model: Arc<ServingModel>) {
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *current = model;
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let m = &self.shared.metrics;
        let requests = m.requests.load(Ordering::Relaxed);
        let latency = m.latency_micros.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests,
            errors: m.errors.load(Ordering::Relaxed),
            mean_latency_ms: if requests == 0 {
                0.0
            } else {
                latency as f64 / requests as f64 / 1000.0
            },
        }
    }

    /// Stops accepting connections and waits for requests in flight.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn current(shared: &Shared) -> Arc<ServingModel> {
    Arc::clone(&shared.current.read().unwrap_or_else(|e| e.into_inner()))
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

async fn request_id(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| {
            let n = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
            HeaderValue::from_str(&format!("{}-{n:08x}", shared.deployment))
                .unwrap_or(HeaderValue::from_static("edgeship"))
        });
    let mut response = next.run(request).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

async fn health() -> &'static str {
    "Healthy"
}

async fn score(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = Instant::now();
    let response = score_inner(&shared, request).await;
    let m = &shared.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    if !response.status().is_success() {
        m.errors.fetch_add(1, Ordering::Relaxed);
    }
    m.latency_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    response
}

async fn score_inner(shared: &Shared, request: Request) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the body as application/json (got content type {shown})"),
        );
    }
    let limit = shared.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        message(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds the limit of {limit} bytes"),
        )
    };
    if declared.is_some_and(|len| len > limit) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large(),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(err) => {
            return message(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {err}"),
            );
        }
    };
    let model = current(shared);
    let inputs = match scoring::request_tensors(model.runnable.as_ref(), &body) {
        Ok(inputs) => inputs,
        Err(err) => return message(StatusCode::BAD_REQUEST, err.0),
    };
    // Inference is CPU-bound: keep it off the async workers.
    let runnable = Arc::clone(&model.runnable);
    let result = tokio::task::spawn_blocking(move || {
        let outputs = runnable.run(inputs)?;
        Ok::<_, RuntimeError>(scoring::response_json(runnable.as_ref(), &outputs))
    })
    .await;
    match result {
        Ok(Ok(json)) => axum::Json(json).into_response(),
        Ok(Err(RuntimeError::BadInput(why))) => message(StatusCode::BAD_REQUEST, why),
        Ok(Err(err)) => {
            tracing::warn!(deployment = %shared.deployment, model = %model.model_ref, error = %err, "scoring failed");
            message(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
        Err(err) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {err}"),
        ),
    }
}

async fn swagger(State(shared): State<Arc<Shared>>) -> Response {
    let model = current(&shared);
    let doc = swagger_document(&shared.deployment, &model);
    let mut response = axum::Json(doc).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn tensor_schema(info: &TensorInfo) -> Value {
    let item = match info.element_type {
        ElementType::F32 => json!({"type": "number", "format": "float"}),
        ElementType::F64 => json!({"type": "number", "format": "double"}),
        ElementType::I32 => json!({"type": "integer", "format": "int32"}),
        ElementType::I64 => json!({"type": "integer", "format": "int64"}),
        ElementType::Bool => json!({"type": "boolean"}),
    };
    info.shape.iter().rev().fold(item, |inner, dim| {
        let mut array = json!({"type": "array", "items": inner});
        if let Dim::Fixed(size) = dim {
            array["minItems"] = json!(size);
            array["maxItems"] = json!(size);
        }
        array
    })
}

/// OpenAPI 2.0 document of this endpoint, generated from the model's signature (Azure ML
/// serves the same version, so its client generators work unchanged).
pub fn swagger_document(deployment: &str, model: &ServingModel) -> Value {
    let inputs = model.runnable.inputs();
    let outputs = model.runnable.outputs();
    let data_schema = match inputs {
        [only] => tensor_schema(only),
        many => json!({
            "type": "object",
            "required": many.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
            "properties": many.iter().map(|i| (i.name.clone(), tensor_schema(i))).collect::<serde_json::Map<_, _>>(),
        }),
    };
    let output_schema = match outputs {
        [only] => tensor_schema(only),
        many => json!({
            "type": "object",
            "properties": many.iter().map(|o| (o.name.clone(), tensor_schema(o))).collect::<serde_json::Map<_, _>>(),
        }),
    };
    let mut input_schema = json!({
        "type": "object",
        "required": ["data"],
        "properties": {"data": data_schema},
    });
    if let Some(sample) = &model.sample_input {
        input_schema["example"] = sample.clone();
    }
    json!({
        "swagger": "2.0",
        "info": {
            "title": deployment,
            "description": format!("scoring endpoint of deployment {deployment}, serving {}", model.model_ref),
            "version": model.model_ref,
        },
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {
            "/": {"get": {
                "operationId": "ServiceHealthCheck",
                "description": "simple health check endpoint to ensure the service is up",
                "responses": {"200": {"description": "service is up", "schema": {"type": "string", "example": "Healthy"}}},
            }},
            "/score": {"post": {
                "operationId": "RunMLService",
                "description": "run the model on a batch of inputs",
                "parameters": [{"name": "serviceInputPayload", "in": "body", "required": true, "schema": {"$ref": "#/definitions/ServiceInput"}}],
                "responses": {
                    "200": {"description": "predictions", "schema": {"$ref": "#/definitions/ServiceOutput"}},
                    "default": {"description": "an error", "schema": {"$ref": "#/definitions/ErrorResponse"}},
                },
            }},
        },
        "definitions": {
            "ServiceInput": input_schema,
            "ServiceOutput": output_schema,
            "ErrorResponse": {"type": "object", "properties": {"message": {"type": "string"}}},
        },
    })
}
