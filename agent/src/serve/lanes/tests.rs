//! Serving lanes: connections spread over the lanes and kept on one, head timeouts over HTTP
//! and HTTPS, and shutdown.

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
            post(|_body: String| async { std::thread::current().name().unwrap_or("?").to_owned() }),
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

/// Asserts that the server has closed `stream` (long ago: the read ends at once, with the end
/// of the stream, a reset, or at most an error answer).
async fn assert_closed(name: &str, mut stream: impl AsyncRead + Unpin) {
    use tokio::io::AsyncReadExt;

    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("the {name} connection is still open"));
    if let Ok(n) = read {
        let text = String::from_utf8_lossy(&rest[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 "), "{name}: {text}");
    }
}

/// Clients that send nothing, or stop halfway through a head, are cut off after the
/// head timeout; a kept-alive client that keeps sending requests is not, however long
/// it stays.
#[tokio::test]
async fn connections_without_a_whole_request_head_are_closed_in_time() {
    use tokio::io::AsyncWriteExt;

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
    for (name, stream) in [("silent", silent), ("halfway", halfway)] {
        assert_closed(name, stream).await;
    }
    let _ = stop.send(());
    task.await.expect("stops");
}

/// HTTPS alike: a client that completes its handshake and then sends nothing, or half a
/// head, is cut off after the head timeout; one that keeps sending requests is answered.
#[tokio::test]
async fn https_connections_without_a_whole_request_head_are_closed_in_time() {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let issued =
        rcgen::generate_simple_self_signed(vec!["edge.example".to_owned()]).expect("certificate");
    let certificate = edgeship_domain::ServingCertificate {
        cert_pem: issued.cert.pem(),
        key_pem: issued.signing_key.serialize_pem(),
    };
    let config = tls::server_config(&certificate, &[b"http/1.1"]).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let timeout = Duration::from_millis(300);
    let task = tokio::spawn(serve_tls_with(listener, app(), config, shutdown, timeout));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(issued.cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let name = ServerName::try_from("edge.example").expect("name");
        connector.connect(name, tcp).await.expect("handshake")
    };
    let silent = connect().await;
    let mut halfway = connect().await;
    halfway
        .write_all(b"POST /where HTTP/1.1\r\nhost: edge\r\ncontent-le")
        .await
        .expect("writes");
    let mut kept = connect().await;
    let started = std::time::Instant::now();
    while started.elapsed() < 4 * timeout {
        kept.write_all(b"POST /where HTTP/1.1\r\nhost: edge\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .expect("writes");
        let mut answer = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = kept.read(&mut chunk).await.expect("answers");
            assert!(n > 0, "closed while in use");
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a content-length");
            if body.len() >= length {
                break;
            }
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        tokio::time::sleep(timeout / 3).await;
    }
    for (name, stream) in [("silent", silent), ("halfway", halfway)] {
        assert_closed(name, stream).await;
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

/// A connection that opens with HTTP/2's preface may carry several requests at once, and is
/// counted so (batches then never stop waiting for more while it is open).
#[tokio::test]
async fn an_http2_connection_counts_as_one_that_can_send_several_requests() {
    use tokio::io::AsyncWriteExt as _;

    let (addr, stop, task) = start().await;
    let mut h2 = TcpStream::connect(addr).await.expect("connects");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("writes");
    let started = std::time::Instant::now();
    while CLIENTS.all_waiting(usize::MAX) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the HTTP/2 connection was never counted as multiplexed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(h2);
    let _ = stop.send(());
    task.await.expect("stops");
}

#[test]
fn a_lane_is_shared_while_it_serves_two_connections_or_more() {
    assert!(!lane_is_shared(), "no lane on this thread");
    let first = LaneSeat::take();
    assert!(!lane_is_shared(), "one connection");
    let second = LaneSeat::take();
    assert!(lane_is_shared());
    drop(first);
    assert!(!lane_is_shared());
    drop(second);
    assert!(!lane_is_shared());
}
