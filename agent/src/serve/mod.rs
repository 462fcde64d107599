//! Scoring endpoints. One [`Endpoint`] per workload listens on the workload's port and serves
//! the protocols the workload asks for through their adapters (`azureml`, and OIP v2 in `v2`).
//!
//! Design: adapters never see a runtime and backends never see HTTP. Between them sits
//! [`Scorer`], a request-level interface: input tensors in signature order in, output tensors
//! out. Which scorer answers is decided before the adapter runs it: [`Shared::begin_model`]
//! routes the request through the endpoint's [`Routes`] (a model by name, then one version
//! or a traffic split; see `router`) and
//! [`Shared::finish`] counts it for that version and names it in `x-edgeship-model`, so an
//! adapter handles one request against one `Scorer` and knows nothing of splits. (The lanes'
//! fast path, `fast`, routes the same way, calls the adapters' handlers, and counts and names
//! the version itself, as it writes its answers without a `Response`.)
//!
//! The routing table behind an endpoint is an `Arc` swapped under a lock, so a switch to a new
//! version, or to new weights, is one pointer store: requests already running finish on the
//! version they were routed to, the next request sees the new table, and no request ever sees
//! none.

pub mod auth;
pub mod azureml;
pub mod batch;
pub mod clients;
pub mod cors;
#[cfg(feature = "wasm")]
pub mod entry;
pub mod fast;
pub mod inference;
pub mod json;
pub mod lanes;
pub mod metrics;
#[cfg(feature = "containers")]
pub mod proxy;
pub mod reply;
pub mod router;
pub mod tls;
pub mod v2;
pub mod window;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use edgeship_domain::{HealthThresholds, Protocol, TensorSpec};
use edgeship_runtime::{Runnable, RuntimeError, Tensor};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use inference::run_inference;
pub use router::{Backend, MODEL_HEADER, Observation, ROUTING_KEY_HEADER, Routes, observe_routes};

/// What a 503 asks callers to wait before they retry (`Retry-After`, in seconds): a full batch
/// queue drains in milliseconds, a stopping endpoint is replaced in about a second.
pub const RETRY_AFTER_SECONDS: &str = "1";

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
    /// How long loading, planning and the self-test took, where known.
    fn load_seconds(&self) -> Option<f64> {
        None
    }
    /// Where [`run_inference`] keeps its estimate of this model's inference time, µs.
    fn recent_micros(&self) -> Option<&AtomicU64> {
        None
    }
    /// The queue that batches this model's requests, when it batches.
    fn batcher(&self) -> Option<&batch::Batcher> {
        None
    }
    /// The container this version forwards to, when it is a container workload's.
    #[cfg(feature = "containers")]
    fn upstream(&self) -> Option<&proxy::Upstream> {
        None
    }
}

/// What an endpoint answers with: scoring protocols over loaded models, or the proxy to a
/// container workload.
#[derive(Debug, Clone, Copy)]
pub enum Surface<'a> {
    Scoring(&'a [Protocol]),
    #[cfg(feature = "containers")]
    Proxy,
}

/// A prepared, self-tested model ready to take traffic.
#[derive(Debug)]
pub struct ServingModel {
    pub model_ref: String,
    pub runnable: Arc<dyn Runnable>,
    pub sample_input: Option<serde_json::Value>,
    /// Time to prepare the runtime's plan (the self-test comes after and is not in it).
    pub load_seconds: f64,
    /// The estimated inference time, µs (see [`run_inference`]).
    pub recent_micros: AtomicU64,
    /// Set when the workload asks for batching and the model has a batch dimension.
    pub batcher: Option<batch::Batcher>,
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

    fn load_seconds(&self) -> Option<f64> {
        Some(self.load_seconds)
    }

    fn recent_micros(&self) -> Option<&AtomicU64> {
        Some(&self.recent_micros)
    }

    fn batcher(&self) -> Option<&batch::Batcher> {
        self.batcher.as_ref()
    }
}

/// An endpoint's counters since it started, over every version it has served.
#[derive(Debug, Default)]
struct Lifetime {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_micros: AtomicU64,
}

/// One scoring request on its way: the version it was routed to and when it began. Adapters
/// score with [`Call::scorer`] and hand their response to [`Shared::finish`].
#[derive(Debug)]
pub struct Call {
    backend: Arc<Backend>,
    started: Instant,
}

impl Call {
    /// The version that answers this request.
    pub fn scorer(&self) -> &Arc<dyn Scorer> {
        self.backend.scorer()
    }

    /// The version's backend, for work that outlives the call (a proxied body still
    /// streaming: see `proxy`).
    pub fn backend(&self) -> Arc<Backend> {
        Arc::clone(&self.backend)
    }
}

/// State shared by an endpoint's adapters.
#[derive(Debug)]
pub struct Shared {
    deployment: String,
    routes: RwLock<Arc<Routes>>,
    lifetime: Lifetime,
    max_body_bytes: usize,
    next_request_id: AtomicU64,
    ready: AtomicBool,
    /// Swapped in place when keys rotate: no restart, no dropped request.
    auth: RwLock<Arc<auth::Auth>>,
}

impl Shared {
    fn new(deployment: &str, routes: Routes, auth: auth::Auth) -> Arc<Self> {
        Arc::new(Shared {
            deployment: deployment.to_owned(),
            routes: RwLock::new(Arc::new(routes)),
            lifetime: Lifetime::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            next_request_id: AtomicU64::new(1),
            ready: AtomicBool::new(true),
            auth: RwLock::new(Arc::new(auth)),
        })
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The routing table that takes the next request.
    pub fn routes(&self) -> Arc<Routes> {
        Arc::clone(&self.routes.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The version generated documents describe (the heaviest of a split).
    pub fn primary(&self) -> Arc<dyn Scorer> {
        Arc::clone(self.routes().primary().scorer())
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Routes one scoring request by a routing key (sticky), or by weight without one.
    pub fn begin_with_key(&self, key: Option<&[u8]>) -> Call {
        Call {
            backend: Arc::clone(self.routes().pick(key)),
            started: Instant::now(),
        }
    }

    /// Routes one scoring request for `model` (the endpoint's first when `None`) by routing
    /// key or weight; `None` when the endpoint does not serve that model.
    pub fn begin_model(&self, model: Option<&str>, key: Option<&[u8]>) -> Option<Call> {
        Some(Call {
            backend: Arc::clone(self.routes().pick_model(model, key)?),
            started: Instant::now(),
        })
    }

    /// The version generated documents describe for `model`, if the endpoint serves it.
    pub fn primary_of(&self, model: &str) -> Option<Arc<dyn Scorer>> {
        Some(Arc::clone(self.routes().primary_of(model)?.scorer()))
    }

    /// The models this endpoint serves, for messages: `diabetes, digits`.
    pub fn model_names(&self) -> String {
        self.routes().models().collect::<Vec<_>>().join(", ")
    }

    /// Routes one scoring request to the version `model_ref` names, if the endpoint serves it.
    pub fn begin_version(&self, model_ref: &str) -> Option<Call> {
        let routes = self.routes();
        let backend = routes
            .backends()
            .iter()
            .find(|b| b.model_ref() == model_ref)?;
        Some(Call {
            backend: Arc::clone(backend),
            started: Instant::now(),
        })
    }

    /// A new request id, `DEPLOYMENT-0000002a`, for a request that brought none.
    fn write_request_id(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let _ = write!(out, "{}-{n:08x}", self.deployment);
    }

    /// What the endpoint accepts now.
    pub fn auth(&self) -> Arc<auth::Auth> {
        Arc::clone(&self.auth.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the endpoint takes requests: false once it is stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Counts a request answered without an HTTP response (gRPC), with the HTTP status its
    /// outcome corresponds to, and returns the `model:version` that answered.
    pub fn finish_call(&self, call: Call, code: u16) -> String {
        self.count(&call, Instant::now(), code);
        call.backend.model_ref().to_owned()
    }

    fn count(&self, call: &Call, now: Instant, code: u16) {
        let ok = code < 500;
        let latency = now.saturating_duration_since(call.started);
        let l = &self.lifetime;
        l.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            l.errors.fetch_add(1, Ordering::Relaxed);
        }
        l.latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        call.backend.record(now, latency, code);
    }

    /// Counts a scoring request (health and documents are not counted) for the endpoint and
    /// its version, and names the version in the response.
    ///
    /// Only a 5xx is an error. A 4xx is the caller's mistake (not JSON, a wrong shape, too
    /// large): the model did nothing wrong, and counting it would let one misbehaving client
    /// mark a good version `Unhealthy` and stop a rollout. It still counts as a request with
    /// its latency, since callers saw it (the convention of Istio's and Flagger's "request
    /// success rate": the share of non-5xx responses).
    pub fn finish(&self, call: Call, mut response: Response) -> Response {
        self.count(&call, Instant::now(), response.status().as_u16());
        if let Some(model) = call.backend.model_header() {
            response.headers_mut().insert(MODEL_HEADER, model.clone());
        }
        response
    }

    /// The endpoint's figures at `at` and whether they breach `health`.
    fn observe(&self, at: Instant, health: Option<&HealthThresholds>) -> Observation {
        let l = &self.lifetime;
        let requests = l.requests.load(Ordering::Relaxed);
        let latency = l.latency_micros.load(Ordering::Relaxed);
        let mut seen = observe_routes(&self.routes(), at, health);
        seen.metrics.requests = requests;
        seen.metrics.errors = l.errors.load(Ordering::Relaxed);
        seen.metrics.mean_latency_ms = if requests == 0 {
            0.0
        } else {
            latency as f64 / requests as f64 / 1000.0
        };
        seen
    }
}

/// Where an endpoint listens, and the certificate it serves HTTPS with, if any.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    pub tls: Option<edgeship_domain::ServingCertificate>,
}

/// A running scoring endpoint.
#[derive(Debug)]
pub struct Endpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    /// Stops the gRPC service, and its task.
    grpc: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` (and `grpc_addr`, for the Open Inference Protocol over gRPC) and starts
    /// serving `routes` over `surface`, to browsers on `cors_origins`, to callers `auth`
    /// accepts.
    pub async fn start(
        addr: SocketAddr,
        grpc_addr: Option<SocketAddr>,
        deployment: &str,
        surface: Surface<'_>,
        cors_origins: &[String],
        auth: auth::Auth,
        routes: Routes,
    ) -> std::io::Result<Self> {
        let listen = Listen {
            addr,
            grpc_addr,
            tls: None,
        };
        Self::start_on(listen, deployment, surface, cors_origins, auth, routes).await
    }

    /// [`Endpoint::start`] on `listen`, with HTTPS (and gRPC over TLS) when it has a
    /// certificate.
    pub async fn start_on(
        listen: Listen,
        deployment: &str,
        surface: Surface<'_>,
        cors_origins: &[String],
        auth: auth::Auth,
        routes: Routes,
    ) -> std::io::Result<Self> {
        let Listen {
            addr,
            grpc_addr,
            tls,
        } = listen;
        let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        let rest_tls = match &tls {
            Some(certificate) => {
                Some(tls::server_config(certificate, &[b"h2", b"http/1.1"]).map_err(invalid)?)
            }
            None => None,
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Both ports are bound before either serves: a taken gRPC port fails the start whole.
        let grpc_listener = match grpc_addr {
            Some(grpc_addr) => Some(TcpListener::bind(grpc_addr).await?),
            None => None,
        };
        let shared = Shared::new(deployment, routes, auth);
        let mut app = metrics::routes();
        match surface {
            Surface::Scoring(protocols) => {
                for protocol in protocols {
                    app = match protocol {
                        Protocol::Azureml => app.merge(azureml::routes()),
                        Protocol::V2 => app.merge(v2::rest::routes()),
                    };
                }
            }
            #[cfg(feature = "containers")]
            Surface::Proxy => app = app.merge(proxy::routes()),
        }
        let mut app = app
            .layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                auth::require,
            ))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                request_id,
            ));
        if !cors_origins.is_empty() {
            app = app.layer(cors::layer(cors_origins));
        }
        let fast = match surface {
            Surface::Scoring(protocols) => {
                fast::FastPath::new(Arc::clone(&shared), protocols, !cors_origins.is_empty())
            }
            #[cfg(feature = "containers")]
            Surface::Proxy => None,
        };
        let app = app.with_state(Arc::clone(&shared));
        let (shutdown, signal) = oneshot::channel::<()>();
        let grpc = match grpc_listener {
            #[cfg(feature = "grpc")]
            Some(listener) => {
                let (stop, stopped) = oneshot::channel::<()>();
                let (grpc_addr, task) =
                    v2::grpc::serve(listener, Arc::clone(&shared), tls.as_ref(), stopped)?;
                tracing::info!(%grpc_addr, deployment, "gRPC scoring endpoint listening");
                Some((grpc_addr, stop, task))
            }
            // Unreachable through the agent, which refuses such a workload by its features.
            #[cfg(not(feature = "grpc"))]
            Some(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "this agent is built without gRPC scoring (the `grpc` feature)",
                ));
            }
            None => None,
        };
        let shutdown_signal = async move {
            let _ = signal.await;
        };
        let task = match rest_tls {
            None => tokio::spawn(lanes::serve(listener, app, fast, shutdown_signal)),
            Some(config) => tokio::spawn(lanes::serve_tls(listener, app, config, shutdown_signal)),
        };
        tracing::info!(%addr, deployment, "scoring endpoint listening");
        let (grpc_addr, grpc) = match grpc {
            Some((grpc_addr, stop, task)) => (Some(grpc_addr), Some((stop, task))),
            None => (None, None),
        };
        Ok(Self {
            shared,
            addr,
            grpc_addr,
            grpc,
            shutdown: Some(shutdown),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the gRPC service listens, if the endpoint has one.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Atomically replaces the routing table that serves new requests.
    pub fn switch(&self, routes: Routes) {
        let mut current = self
            .shared
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(routes);
    }

    /// The routing table serving now.
    pub fn routes(&self) -> Arc<Routes> {
        self.shared.routes()
    }

    /// Replaces what the endpoint accepts (keys rotate without a restart).
    pub fn set_auth(&self, auth: auth::Auth) {
        *self
            .shared
            .auth
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
    }

    /// Lifetime counters, the window at `at`, and whether it breaches `health`.
    pub fn observe(&self, at: Instant, health: Option<&HealthThresholds>) -> Observation {
        self.shared.observe(at, health)
    }

    /// Stops accepting connections and waits for requests in flight.
    pub async fn stop(mut self) {
        self.shared.ready.store(false, Ordering::Relaxed);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some((stop, task)) = self.grpc.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some((stop, _)) = self.grpc.take() {
            let _ = stop.send(());
        }
    }
}

async fn request_id(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| {
            let mut id = Vec::with_capacity(shared.deployment.len() + 10);
            shared.write_request_id(&mut id);
            HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("edgeship"))
        });
    let mut response = next.run(request).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

/// Versions that need no model file, for tests of routing, counting and health.
#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests;
