//! Scoring endpoints. One [`Endpoint`] per workload listens on the workload's port and serves
//! the protocols the workload asks for through their adapters (`azureml` today; OIP v2 next).
//!
//! Design: adapters never see a runtime and backends never see HTTP. Between them sits
//! [`Scorer`], a request-level interface: input tensors in signature order in, output tensors
//! out. The self-test goes through the same interface as traffic. The scorer behind an
//! endpoint is an `Arc` swapped under a lock, so a switch to a new version is one pointer
//! store: requests already running finish on the old version, the next request sees the new
//! one, and no request ever sees none.

pub mod azureml;
pub mod json;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use edgeship_domain::{EndpointMetrics, Protocol, TensorSpec};
use edgeship_runtime::{Runnable, RuntimeError, Tensor};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Largest scoring body accepted (413 beyond).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What every protocol adapter calls: one inference request, tensors in signature order.
pub trait Scorer: Send + Sync + std::fmt::Debug {
    /// `model:version` of what answers.
    fn model_ref(&self) -> &str;
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    /// The registered sample request (`{"data": …}`), for generated API documents.
    fn sample_input(&self) -> Option<&serde_json::Value>;
    /// Runs one inference. CPU-bound: callers run it off the async workers.
    fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError>;
}

/// A prepared, self-tested model ready to take traffic.
#[derive(Debug)]
pub struct ServingModel {
    pub model_ref: String,
    pub runnable: Arc<dyn Runnable>,
    pub sample_input: Option<serde_json::Value>,
}

impl Scorer for ServingModel {
    fn model_ref(&self) -> &str {
        &self.model_ref
    }

    fn inputs(&self) -> &[TensorSpec] {
        self.runnable.inputs()
    }

    fn outputs(&self) -> &[TensorSpec] {
        self.runnable.outputs()
    }

    fn sample_input(&self) -> Option<&serde_json::Value> {
        self.sample_input.as_ref()
    }

    fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        self.runnable.run(inputs)
    }
}

#[derive(Debug, Default)]
struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_micros: AtomicU64,
}

/// State shared by an endpoint's adapters.
#[derive(Debug)]
pub struct Shared {
    deployment: String,
    current: RwLock<Arc<dyn Scorer>>,
    metrics: Metrics,
    max_body_bytes: usize,
    next_request_id: AtomicU64,
}

impl Shared {
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The scorer that takes the next request.
    pub fn current(&self) -> Arc<dyn Scorer> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Counts one scoring request (health and documents are not counted).
    pub fn record(&self, started: Instant, ok: bool) {
        let m = &self.metrics;
        m.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
        m.latency_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
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
    /// Binds `addr` and starts serving `scorer` over `protocols`.
    pub async fn start(
        addr: SocketAddr,
        deployment: &str,
        protocols: &[Protocol],
        scorer: Arc<dyn Scorer>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            deployment: deployment.to_owned(),
            current: RwLock::new(scorer),
            metrics: Metrics::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            next_request_id: AtomicU64::new(1),
        });
        let mut app = Router::new();
        for protocol in protocols {
            app = match protocol {
                Protocol::Azureml => app.merge(azureml::routes()),
                // The capability check keeps v2 workloads off agents without the adapter.
                Protocol::V2 => app,
            };
        }
        let app = app
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

    /// Atomically replaces the scorer that serves new requests.
    pub fn switch(&self, scorer: Arc<dyn Scorer>) {
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *current = scorer;
    }

    pub fn metrics(&self) -> EndpointMetrics {
        let m = &self.shared.metrics;
        let requests = m.requests.load(Ordering::Relaxed);
        let latency = m.latency_micros.load(Ordering::Relaxed);
        EndpointMetrics {
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
