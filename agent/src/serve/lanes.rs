//! Serving lanes: one thread per core, each with a single-threaded async runtime, where a
//! plain-HTTP scoring endpoint's connections are served from accept to close.
//!
//! Why: on the agent's work-stealing runtime a connection's socket readiness is seen by
//! whichever worker polls the I/O driver and its task may then run on another, so each
//! request paid cross-core wake-ups (futex calls and context switches): about half of the
//! agent's CPU under load was in the kernel (docs/benchmarks.md, *Scoring throughput*). A
//! connection handed to a lane stays there: its reads, the routing, a cheap model's inference
//! and the response all happen on one thread, as in nginx's workers. Lanes are shared by every
//! endpoint of the agent, started on first use, and live as long as the process.
//!
//! A connection starts on the fast path (`fast`) where its endpoint has one: scoring requests
//! answered without hyper's dispatcher or axum's router. The first request it does not take
//! moves the connection, with the bytes already read, to hyper and the router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::fast::{self, FastPath, Rewind};

/// How long a client may take to send a request's head: from the connection's start, or
/// from the previous response on a kept-alive one, to the head's last byte. A connection that
/// sends no request in that time is closed, so clients that connect and send nothing (or a
/// byte at a time) cannot hold a device's descriptors and memory for ever. nginx allows 60 s
/// for a head and 75 s of keep-alive; a device has fewer descriptors to spare.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The lanes' runtimes, round-robin.
struct Lanes {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Lanes {
    /// One lane per core; none where not even one thread could start (the endpoint then
    /// serves on the agent's runtime, as it always could).
    fn start() -> Option<Self> {
        let count = std::thread::available_parallelism().map_or(1, usize::from);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            // Each runtime is built on its own thread and lives there: a runtime dropped
            // from async code (this runs in an endpoint's accept task) would panic.
            let (built, handle) = std::sync::mpsc::channel();
            let started = std::thread::Builder::new()
                .name(format!("edgeship-lane-{index}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("edgeship-lane-{index}"))
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = built.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(err) => {
                            let _ = built.send(Err(err));
                        }
                    }
                });
            let outcome = match started {
                Ok(_) => handle
                    .recv()
                    .map_err(|_| "the lane's thread ended".to_owned()),
                Err(err) => Err(err.to_string()),
            };
            match outcome {
                Ok(Ok(handle)) => handles.push(handle),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot build a serving lane's runtime");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start a serving lane");
                    break;
                }
            }
        }
        (!handles.is_empty()).then(|| Lanes {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[index]
    }
}

fn lanes() -> Option<&'static Lanes> {
    static LANES: OnceLock<Option<Lanes>> = OnceLock::new();
    LANES.get_or_init(Lanes::start).as_ref()
}

/// Accepts on `listener` (on the calling runtime) and serves each connection with `app` on a
/// lane, until `shutdown` resolves; then stops accepting, lets every connection finish the
/// request it is in, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    fast: Option<Arc<FastPath>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, app, fast, shutdown, HEADER_READ_TIMEOUT).await;
}

/// [`serve`] with another time limit on request heads.
pub(super) async fn serve_with(
    listener: TcpListener,
    app: Router,
    fast: Option<Arc<FastPath>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    // Connections watch `closing` for the shutdown and hold a clone of `token` until they
    // end; `tracker` tells when the last one has.
    let (closing, _) = watch::channel(());
    let (tracker, token) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let serving = Serving {
                    app: app.clone(),
                    fast: fast.clone(),
                    header_timeout,
                };
                hand_over(stream, peer, serving, &closing, &token)
            }
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                // Out of descriptors or memory: accepting at once would fail again.
                tracing::warn!(%addr, error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(token);
    let _ = closing.send(());
    tracker.closed().await;
}

/// What serves a connection.
struct Serving {
    app: Router,
    /// Scoring requests answered without the router, where the endpoint allows.
    fast: Option<Arc<FastPath>>,
    header_timeout: Duration,
}

/// Serves one accepted connection on a lane (on this runtime where there are none).
fn hand_over(
    stream: TcpStream,
    peer: SocketAddr,
    serving: Serving,
    closing: &watch::Sender<()>,
    token: &watch::Receiver<()>,
) {
    // Responses go out whole in one write; Nagle's delay would only hold a response that a
    // client reads before it sends the next request.
    let _ = stream.set_nodelay(true);
    let mut closing = closing.subscribe();
    let token = token.clone();
    let Some(lanes) = lanes() else {
        tokio::spawn(async move {
            connection(stream, serving, &mut closing).await;
            drop(token);
        });
        return;
    };
    // The socket is registered with this runtime's I/O driver: take it out, and register it
    // with the lane's.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "cannot hand a connection to a lane");
            return;
        }
    };
    lanes.pick().spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => connection(stream, serving, &mut closing).await,
            Err(err) => tracing::debug!(%peer, error = %err, "a lane cannot take a connection"),
        }
        drop(token);
    });
}

/// One connection until the client closes it, sends no request head within the head
/// timeout, or the endpoint stops: on the fast path while its requests are scoring requests
/// it answers, then (or from the start, without one) with hyper and the router.
async fn connection(mut stream: TcpStream, serving: Serving, closing: &mut watch::Receiver<()>) {
    let Serving {
        app,
        fast,
        header_timeout,
    } = serving;
    if let Some(fast) = fast {
        let Some(read) = fast::serve(&mut stream, &fast, header_timeout, closing).await else {
            return;
        };
        let io = Rewind::new(read.freeze(), stream);
        return with_hyper(io, app, header_timeout, closing).await;
    }
    // hyper's head timeout starts once it knows the protocol (HTTP/1.1 or HTTP/2), which it
    // learns from the first bytes: until some come, this wait is the limit.
    tokio::select! {
        first = tokio::time::timeout(header_timeout, stream.readable()) => {
            if !matches!(first, Ok(Ok(()))) {
                return;
            }
        }
        _ = closing.changed() => return,
    }
    with_hyper(stream, app, header_timeout, closing).await;
}

/// HTTP/1.1 (and HTTP/2 with prior knowledge, where the agent is built with it) on one
/// connection, through the router.
async fn with_hyper<I>(
    io: I,
    app: Router,
    header_timeout: Duration,
    closing: &mut watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let service = TowerToHyperService::new(app);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut served = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!(error = %err, "connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if !stopping => {
                let _ = changed;
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Errors of one connection that the listener itself survives.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use axum::routing::post;
    use tokio::sync::oneshot;

    use super::*;

    /// `/where` names the thread that answered; `/slow` answers after 300 ms. Both read the
    /// body: hyper closes a connection whose request body was left unread.
    fn app() -> Router {
        Router::new()
            .route(
                "/where",
                post(|_body: String| async {
                    std::thread::current().name().unwrap_or("?").to_owned()
                }),
            )
            .route(
                "/slow",
                post(|_body: String| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
    }

    async fn start() -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        start_with(HEADER_READ_TIMEOUT).await
    }

    async fn start_with(
        header_timeout: Duration,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("bound");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_with(listener, app(), None, shutdown, header_timeout));
        (addr, stop, task)
    }

    /// Clients that send nothing, or stop halfway through a head, are cut off after the
    /// head timeout; a kept-alive client that keeps sending requests is not, however long
    /// it stays.
    #[tokio::test]
    async fn connections_without_a_whole_request_head_are_closed_in_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let timeout = Duration::from_millis(300);
        let (addr, stop, task) = start_with(timeout).await;
        let silent = TcpStream::connect(addr).await.expect("connects");
        let mut halfway = TcpStream::connect(addr).await.expect("connects");
        halfway
            .write_all(b"POST /where HTTP/1.1\r\nhost: edge\r\ncontent-le")
            .await
            .expect("writes");
        let mut kept = testkit::KeepAlive::new(addr);
        let started = std::time::Instant::now();
        while started.elapsed() < 4 * timeout {
            let answer = kept.post_json("/where", b"{}").await.expect("answers");
            assert_eq!(answer.status, 200, "{}", answer.body);
            tokio::time::sleep(timeout / 3).await;
        }
        for (name, mut stream) in [("silent", silent), ("halfway", halfway)] {
            let mut rest = Vec::new();
            // Closed long ago: the read ends at once, with the end of the stream or a reset.
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("the {name} connection is still open"));
            if let Ok(n) = read {
                let text = String::from_utf8_lossy(&rest[..n]);
                assert!(n == 0 || text.starts_with("HTTP/1.1 "), "{name}: {text}");
            }
        }
        let _ = stop.send(());
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn each_connection_is_served_on_one_lane_and_the_lanes_share_them() {
        let (addr, stop, task) = start().await;
        let lanes = lanes().expect("lanes start").handles.len();
        let mut seen = HashSet::new();
        // Other tests of this process pick lanes too, so a few more connections than lanes
        // may be needed before each lane has taken one.
        for _ in 0..16 * lanes {
            if seen.len() == lanes {
                break;
            }
            let mut client = testkit::KeepAlive::new(addr);
            let mut threads = HashSet::new();
            for _ in 0..5 {
                let answer = client.post_json("/where", b"{}").await.expect("answers");
                assert_eq!(answer.status, 200, "{}", answer.body);
                threads.insert(answer.body);
            }
            assert_eq!(threads.len(), 1, "one connection, one thread: {threads:?}");
            let thread = threads.into_iter().next().expect("one");
            assert!(thread.starts_with("edgeship-lane-"), "{thread}");
            seen.insert(thread);
        }
        assert_eq!(
            seen.len(),
            lanes,
            "connections go round the lanes: {seen:?}"
        );
        let _ = stop.send(());
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn stopping_finishes_the_request_in_flight_then_refuses_connections() {
        let (addr, stop, task) = start().await;
        let mut client = testkit::KeepAlive::new(addr);
        let in_flight = tokio::spawn(async move { client.post_json("/slow", b"{}").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        let answer = in_flight.await.expect("joins").expect("answered");
        assert_eq!((answer.status, answer.body.as_str()), (200, "done"));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the server returns once its connections close")
            .expect("stops");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
