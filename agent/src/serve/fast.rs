//! The serving lanes' HTTP/1.1 fast path: scoring requests (`POST /score`, `POST
//! /v2/models/NAME[/versions/V]/infer`) read, answered and written by the lane itself, without
//! hyper's connection dispatcher, axum's router and middleware, or a `Request` and `Response`
//! per request.
//!
//! Why: on a small model a request's own work (decoding, a run of tens of µs, encoding) was
//! less than what the general HTTP stack spent around it (docs/benchmarks.md, *Scoring
//! throughput*). The fast path takes only what it answers exactly as the router would: plain
//! HTTP/1.1 requests framed by `content-length`, to a scoring route the endpoint serves, with
//! valid credentials, on an endpoint without CORS or an entry module. It calls the same
//! handlers (`azureml::score_body`, `v2::rest::infer_body`), counts the request the same way
//! and writes the same headers. Anything else (another route, refused credentials, a model not
//! served, chunked bodies, `Expect`, upgrades, HTTP/1.0, HTTP/2) hands the connection, with the
//! bytes read so far, to hyper and the router for the rest of its life: every error the router
//! gives stays the router's.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use edgeship_domain::Protocol;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::auth::Accepted;
use super::azureml::{MODEL_NAME_HEADER, SHAPE_HEADER, ScoreHead, model_named, score_body};
use super::lanes::lane_is_shared;
use super::lanes::poll::Pace;
use super::reply::Reply;
use super::v2::infer;
use super::v2::rest::{HEADER_LENGTH, error_reply, header_length, infer_body};
use super::{Call, MODEL_HEADER, ROUTING_KEY_HEADER, Shared};

/// Most headers a request on the fast path may have; one with more goes to hyper.
const MAX_HEADERS: usize = 32;

/// Longest request head the fast path waits for; a longer one goes to hyper, which allows
/// more or refuses it.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How much a read asks for at least: a small request whole, with its head.
const READ_CHUNK: usize = 4096;

/// The head timeout is re-armed after a response only once this much time (or a quarter of
/// the timeout, if less) has passed since it was last armed, so a busy connection touches the
/// timer once a second instead of once a request; the limit a client sees is then between
/// the timeout and a second less.
const REARM_AFTER: Duration = Duration::from_secs(1);

/// What an endpoint lets the fast path answer.
#[derive(Debug)]
pub struct FastPath {
    shared: Arc<Shared>,
    azureml: bool,
    v2: bool,
}

impl FastPath {
    /// For a plain-HTTP scoring endpoint serving `protocols`; none for an endpoint with CORS
    /// (the CORS layer adds headers to every answer, which only the router writes).
    pub fn new(shared: Arc<Shared>, protocols: &[Protocol], cors: bool) -> Option<Arc<Self>> {
        (!cors).then(|| {
            Arc::new(Self {
                shared,
                azureml: protocols.contains(&Protocol::Azureml),
                v2: protocols.contains(&Protocol::V2),
            })
        })
    }
}

/// Serves requests on `stream` until the client closes it, sends no whole request head
/// within `header_timeout`, or `closing` changes; or until a request the fast path does not
/// answer, whose bytes (and any after them) it returns for hyper to go on with.
pub(super) async fn serve(
    stream: &mut TcpStream,
    fast: &FastPath,
    header_timeout: Duration,
    closing: &watch::Receiver<()>,
) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    let mut deadline = pin!(tokio::time::sleep(header_timeout));
    let mut armed = Instant::now();
    let rearm_after = REARM_AFTER.min(header_timeout / 4);
    // A clone to wait on, so `closing` itself can be asked between requests.
    let mut watcher = closing.clone();
    let mut closed = pin!(watcher.changed());
    let mut pace = Pace::default();
    let mut accepted = Accepted::default();
    loop {
        let waiting_for_head = match parse(&buf, fast.shared.max_body_bytes()) {
            Parsed::Fast(request) if buf.len() >= request.total => {
                let total = request.total;
                let close = request.close;
                let body = &buf[request.head..total];
                let answered = fast.answer(&request, body, &mut accepted, &mut out);
                if answered.await.is_none() {
                    return Some(buf);
                }
                // Let the lane's other connections answer the requests that came with this
                // one first, so that the answers go out together: on loopback each write
                // wakes the client's thread if it sleeps, and answers spaced by a model's
                // run found it asleep every time.
                if lane_is_shared() {
                    tokio::task::yield_now().await;
                }
                if stream.write_all(&out).await.is_err() || close {
                    return None;
                }
                pace.answered();
                out.clear();
                buf.advance(total);
                if closing.has_changed().unwrap_or(true) {
                    return None;
                }
                let now = Instant::now();
                if now.duration_since(armed) >= rearm_after {
                    deadline.as_mut().reset((now + header_timeout).into());
                    armed = now;
                }
                continue;
            }
            Parsed::Fast(request) => {
                buf.reserve(request.total - buf.len());
                false
            }
            Parsed::Partial if buf.len() < MAX_HEAD_BYTES => true,
            Parsed::Partial | Parsed::Other => return Some(buf),
        };
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let idle = buf.is_empty();
        if idle && pace.poll(stream, &mut buf) {
            continue;
        }
        tokio::select! {
            biased;
            _ = closed.as_mut(), if idle => return None,
            () = deadline.as_mut(), if waiting_for_head => return None,
            read = tokio::io::AsyncReadExt::read_buf(stream, &mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return None;
                }
            }
        }
    }
}

impl FastPath {
    /// Answers `request` into `out`, or `None` (before anything is run or counted) when the
    /// router should. `accepted` is what the connection's last accepted request presented.
    async fn answer(
        &self,
        request: &Request<'_>,
        body: &[u8],
        accepted: &mut Accepted,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let shared = &*self.shared;
        if shared
            .auth()
            .check_on(request.authorization, accepted)
            .is_err()
        {
            return None;
        }
        let (call, reply) = match request.target {
            Target::Score { query } => {
                if !self.azureml {
                    return None;
                }
                #[cfg(feature = "wasm")]
                if shared.routes().entry().is_some() {
                    return None;
                }
                let model = model_named(query, request.model_name);
                let call = shared.begin_model(model, request.routing_key)?;
                let head = ScoreHead {
                    content_type: request.content_type,
                    shape: request.shape,
                };
                let reply = match head.form() {
                    Ok(form) => score_body(shared, call.scorer(), form, body).await,
                    Err(refusal) => refusal,
                };
                (call, reply)
            }
            Target::Infer { name, version } => {
                if !self.v2 {
                    return None;
                }
                let call = infer::route(shared, name, version, request.routing_key).ok()?;
                let scorer = Arc::clone(call.scorer());
                let reply = match header_length(request.header_length) {
                    Ok(length) => infer_body(&scorer, length, body).await,
                    Err(err) => Err(err),
                };
                (call, reply.unwrap_or_else(|err| error_reply(&err)))
            }
        };
        shared.count(&call, Instant::now(), reply.status.as_u16());
        write_response(shared, &call, &reply, request, out);
        Some(())
    }
}

/// The answer as hyper and the router would write it: the reply's headers, then the ones the
/// router's layers add (the version that answered, the request id), the length and the date.
fn write_response(
    shared: &Shared,
    call: &Call,
    reply: &Reply,
    request: &Request<'_>,
    out: &mut Vec<u8>,
) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(digits.format(reply.status.as_u16()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        reply
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(reply.content_type.as_bytes());
    for (name, value) in &reply.headers {
        header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(model) = call.backend.model_header() {
        header(out, MODEL_HEADER.as_bytes(), model.as_bytes());
    }
    out.extend_from_slice(b"\r\nx-request-id: ");
    match request.request_id {
        Some(id) => out.extend_from_slice(id),
        None => shared.write_request_id(out),
    }
    if request.close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(digits.format(reply.body.len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    write_date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&reply.body);
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
}

/// The `date` header's value, formatted once a second per thread (as hyper caches it).
fn write_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Where a request on the fast path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target<'b> {
    Score {
        query: Option<&'b str>,
    },
    Infer {
        name: &'b str,
        version: Option<&'b str>,
    },
}

/// A request head the fast path takes, with what its handlers read of it.
#[derive(Debug)]
struct Request<'b> {
    target: Target<'b>,
    /// The head's length; the body follows it.
    head: usize,
    /// The head's and the body's length.
    total: usize,
    /// `connection: close`: answer, then close.
    close: bool,
    content_type: Option<&'b [u8]>,
    shape: Option<&'b [u8]>,
    authorization: Option<&'b [u8]>,
    routing_key: Option<&'b [u8]>,
    model_name: Option<&'b [u8]>,
    request_id: Option<&'b [u8]>,
    header_length: Option<&'b [u8]>,
}

#[derive(Debug)]
enum Parsed<'b> {
    /// A whole head the fast path takes (its body may still be on its way).
    Fast(Request<'b>),
    /// The head is not all here yet.
    Partial,
    /// A request for hyper and the router.
    Other,
}

/// Reads the request head at the start of `buf`.
fn parse<'b>(buf: &'b [u8], max_body: usize) -> Parsed<'b> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let length = match head.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if head.method != Some("POST") || head.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = head.path.and_then(target) else {
        return Parsed::Other;
    };
    let mut request = Request {
        target,
        head: length,
        total: length,
        close: false,
        content_type: None,
        shape: None,
        authorization: None,
        routing_key: None,
        model_name: None,
        request_id: None,
        header_length: None,
    };
    let mut body: Option<usize> = None;
    for header in head.headers.iter() {
        let name = header.name;
        let value = header.value;
        // Where a header comes more than once, the first is read, as `HeaderMap::get` does.
        let first = |slot: &mut Option<&'b [u8]>| {
            if slot.is_none() {
                *slot = Some(value);
            }
        };
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (body, parsed) {
                (None, Some(n)) if n <= max_body => body = Some(n),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            first(&mut request.content_type);
        } else if name.eq_ignore_ascii_case("authorization") {
            first(&mut request.authorization);
        } else if name.eq_ignore_ascii_case(ROUTING_KEY_HEADER) {
            first(&mut request.routing_key);
        } else if name.eq_ignore_ascii_case(MODEL_NAME_HEADER) {
            first(&mut request.model_name);
        } else if name.eq_ignore_ascii_case(SHAPE_HEADER) {
            first(&mut request.shape);
        } else if name.eq_ignore_ascii_case("x-request-id") {
            first(&mut request.request_id);
        } else if name.eq_ignore_ascii_case(HEADER_LENGTH) {
            first(&mut request.header_length);
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case(b"close") {
                request.close = true;
            } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Other;
        }
    }
    request.total = length + body.unwrap_or(0);
    Parsed::Fast(request)
}

/// The scoring route a path names, as the router would match it; `None` for anything else
/// (including percent-escapes, which the router decodes).
fn target(path: &str) -> Option<Target<'_>> {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    if path.contains('%') {
        return None;
    }
    if path == "/score" {
        return Some(Target::Score { query });
    }
    let rest = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
    let (name, version) = match rest.split_once('/') {
        None => (rest, None),
        Some((name, versioned)) => (name, Some(versioned.strip_prefix("versions/")?)),
    };
    let plain = |segment: &str| !segment.is_empty() && !segment.contains('/');
    (plain(name) && version.is_none_or(plain)).then_some(Target::Infer { name, version })
}

/// A connection handed to hyper: the bytes read from it first (by the fast path, or to learn
/// that an HTTPS client sends a request at all), then the stream.
#[derive(Debug)]
pub(super) struct Rewind<S> {
    read: Bytes,
    stream: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(read: Bytes, stream: S) -> Self {
        Self { read, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
