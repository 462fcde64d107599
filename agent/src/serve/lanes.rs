//! Serving lanes: one thread per core, each with a single-threaded async runtime, where a
//! scoring endpoint's connections (HTTP, or HTTPS from the handshake on) are served from
//! accept to close.
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

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use bytes::BytesMut;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::clients::{CLIENTS, Seat, may_be_http2};
use super::fast::{self, FastPath, Rewind};
use super::tls;

pub(super) mod poll;

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

thread_local! {
    /// Connections served by the lane on this thread (none on other threads).
    static ON_THIS_LANE: Cell<usize> = const { Cell::new(0) };
}

/// A connection counted on its lane while it lives; taken and dropped on the lane's thread
/// (a lane's runtime never moves a task to another).
struct LaneSeat(());

impl LaneSeat {
    fn take() -> Self {
        ON_THIS_LANE.with(|n| n.set(n.get() + 1));
        LaneSeat(())
    }
}

impl Drop for LaneSeat {
    fn drop(&mut self) {
        ON_THIS_LANE.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Whether the lane running this code serves other connections too.
pub(super) fn lane_is_shared() -> bool {
    ON_THIS_LANE.with(|n| n.get() > 1)
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

/// [`serve`] over TLS (HTTPS): each connection's handshake runs on its lane, bounded in time,
/// and its requests have the same head timeout as plain HTTP's.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_tls_with(listener, app, config, shutdown, HEADER_READ_TIMEOUT).await;
}

/// [`serve`] with another time limit on request heads.
pub(super) async fn serve_with(
    listener: TcpListener,
    app: Router,
    fast: Option<Arc<FastPath>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) {
    let serving = Serving {
        app,
        fast,
        tls: None,
        header_timeout,
    };
    accept(listener, serving, shutdown).await;
}

/// [`serve_tls`] with another time limit on request heads.
pub(super) async fn serve_tls_with(
    listener: TcpListener,
    app: Router,
    config: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) {
    let serving = Serving {
        app,
        fast: None,
        tls: Some(TlsAcceptor::from(Arc::new(config))),
        header_timeout,
    };
    accept(listener, serving, shutdown).await;
}

/// The accept loop of [`serve`] and [`serve_tls`].
async fn accept(
    listener: TcpListener,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
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
            Ok((stream, peer)) => hand_over(stream, peer, serving.clone(), &closing, &token),
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
#[derive(Clone)]
struct Serving {
    app: Router,
    /// Scoring requests answered without the router, where the endpoint allows.
    fast: Option<Arc<FastPath>>,
    /// HTTPS: the endpoint's certificate and protocols.
    tls: Option<TlsAcceptor>,
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
            let mut seat = CLIENTS.seat();
            connection(stream, serving, &mut closing, &mut seat).await;
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
        let mut seat = CLIENTS.seat();
        let _on_lane = LaneSeat::take();
        match TcpStream::from_std(stream) {
            Ok(stream) => connection(stream, serving, &mut closing, &mut seat).await,
            Err(err) => tracing::debug!(%peer, error = %err, "a lane cannot take a connection"),
        }
        drop(token);
    });
}

/// One connection until the client closes it, sends no request head within the head
/// timeout, or the endpoint stops: on the fast path while its requests are scoring requests
/// it answers, then (or from the start, without one) with hyper and the router. `seat` is
/// told when the connection turns out to be HTTP/2.
async fn connection(
    mut stream: TcpStream,
    serving: Serving,
    closing: &mut watch::Receiver<()>,
    seat: &mut Seat,
) {
    let Serving {
        app,
        fast,
        tls,
        header_timeout,
    } = serving;
    if let Some(acceptor) = tls {
        return secure_connection(stream, &acceptor, app, header_timeout, closing, seat).await;
    }
    if let Some(fast) = fast {
        let Some(read) = fast::serve(&mut stream, &fast, header_timeout, closing).await else {
            return;
        };
        if may_be_http2(&read) {
            seat.multiplexing();
        }
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
    let mut first = [0; 16];
    let peeked = stream.peek(&mut first).await.unwrap_or(0);
    if may_be_http2(&first[..peeked]) {
        seat.multiplexing();
    }
    with_hyper(stream, app, header_timeout, closing).await;
}

/// One HTTPS connection: the handshake (bounded by [`tls::HANDSHAKE_TIMEOUT`]), then, as on
/// plain HTTP, the first bytes of a request within the head timeout (hyper's own starts once
/// it knows the protocol), then hyper and the router. The first bytes are read through the
/// TLS stream, not awaited on the socket: a client's request often arrives with its last
/// handshake message, already decrypted into rustls' buffer.
async fn secure_connection(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    app: Router,
    header_timeout: Duration,
    closing: &mut watch::Receiver<()>,
    seat: &mut Seat,
) {
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
        _ = closing.changed() => return,
    };
    let mut stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let mut first = BytesMut::with_capacity(FIRST_READ);
    tokio::select! {
        read = tokio::time::timeout(header_timeout, stream.read_buf(&mut first)) => {
            if !matches!(read, Ok(Ok(1..))) {
                return;
            }
        }
        _ = closing.changed() => return,
    }
    if may_be_http2(&first) {
        seat.multiplexing();
    }
    with_hyper(
        Rewind::new(first.freeze(), stream),
        app,
        header_timeout,
        closing,
    )
    .await;
}

/// What an HTTPS connection's first read takes: a whole small request, typically.
const FIRST_READ: usize = 4096;

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
mod tests;
