//! The fast path against the router: which requests it takes, that its answers are the
//! router's, and that a connection moves from one to the other mid-way without losing a byte.

use std::net::SocketAddr;

use edgeship_domain::Protocol;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::serve::{Endpoint, Routes, Surface, auth, fake, lanes};

fn parsed(head: &str) -> Parsed<'_> {
    parse(head.as_bytes(), 1000)
}

#[test]
fn only_plain_scoring_requests_framed_by_length_take_the_fast_path() {
    for head in [
        "POST /score HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n",
        "POST /score?model=b&x=1 HTTP/1.1\r\n\r\n",
        "POST /v2/models/m/infer HTTP/1.1\r\nconnection: close\r\n\r\n",
        "POST /v2/models/m/versions/3/infer HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n",
        "POST /score HTTP/1.1\r\ncontent-length: 1000\r\n\r\n",
    ] {
        assert!(matches!(parsed(head), Parsed::Fast(_)), "{head:?}");
    }
    let many_headers = format!(
        "POST /score HTTP/1.1\r\n{}\r\n",
        "x-a: b\r\n".repeat(MAX_HEADERS + 1)
    );
    for head in [
        "GET /score HTTP/1.1\r\n\r\n",
        "POST /score HTTP/1.0\r\n\r\n",
        "POST /score/ HTTP/1.1\r\n\r\n",
        "POST /scor%65 HTTP/1.1\r\n\r\n",
        "POST /swagger.json HTTP/1.1\r\n\r\n",
        "POST /v2/models//infer HTTP/1.1\r\n\r\n",
        "POST /v2/models/m/versions//infer HTTP/1.1\r\n\r\n",
        "POST /v2/models/m/other/3/infer HTTP/1.1\r\n\r\n",
        "POST /v2/models/m/ready HTTP/1.1\r\n\r\n",
        "POST /score HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST /score HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
        "POST /score HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
        "POST /score HTTP/1.1\r\nconnection: close, te\r\n\r\n",
        "POST /score HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
        "POST /score HTTP/1.1\r\ncontent-length: +2\r\n\r\n",
        "POST /score HTTP/1.1\r\ncontent-length: 1001\r\n\r\n",
        "POST /score HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "POST /score HTTP/1.1\r\nbad header\r\n\r\n",
        many_headers.as_str(),
    ] {
        assert!(matches!(parsed(head), Parsed::Other), "{head:?}");
    }
    for head in ["", "POST /score HTTP/1.1\r\ncontent-le"] {
        assert!(matches!(parsed(head), Parsed::Partial), "{head:?}");
    }
}

#[test]
fn a_fast_head_carries_its_framing_targets_and_first_header_values() {
    let head = "POST /v2/models/m/versions/2/infer?x HTTP/1.1\r\nContent-Length: 7\r\n\
                X-Request-Id: one\r\nx-request-id: two\r\nAuthorization: Bearer k\r\n\
                connection: close\r\n\r\n";
    let Parsed::Fast(request) = parsed(head) else {
        panic!("fast");
    };
    assert_eq!(
        request.target,
        Target::Infer {
            name: "m",
            version: Some("2")
        }
    );
    assert_eq!((request.head, request.total), (head.len(), head.len() + 7));
    assert_eq!(request.request_id, Some(&b"one"[..]));
    assert_eq!(request.authorization, Some(&b"Bearer k"[..]));
    assert!(request.close);
    assert_eq!(
        target("/score?model=a"),
        Some(Target::Score {
            query: Some("model=a")
        })
    );
}

/// One exchange on its own connection (`connection: close`), the answer read to its end:
/// status, headers (lower-case names, in order) and body.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request).await.expect("writes");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("answers in time")
        .expect("reads");
    let mut reader = BufReader::new(&raw[..]);
    read_answer(&mut reader).await
}

/// Reads one answer framed by `content-length`.
async fn read_answer<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("body");
    (status, headers, body)
}

/// `request` as a request head and body framed by `content-length` (which the fast path takes)
/// and as the same with a chunked body (which only the router takes).
fn framed(path: &str, headers: &[(&str, &str)], body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut by_length = format!("{head}content-length: {}\r\n\r\n", body.len()).into_bytes();
    by_length.extend_from_slice(body);
    let mut chunked = format!("{head}transfer-encoding: chunked\r\n\r\n").into_bytes();
    if !body.is_empty() {
        chunked.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        chunked.extend_from_slice(body);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    (by_length, chunked)
}

async fn both_protocols(auth: auth::Auth) -> Endpoint {
    Endpoint::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        "web",
        Surface::Scoring(&[Protocol::Azureml, Protocol::V2]),
        &[],
        auth,
        Routes::new(vec![(50, fake::backend("m:1")), (50, fake::backend("m:2"))])
            .expect("versions"),
    )
    .await
    .expect("listens")
}

#[tokio::test]
async fn the_fast_path_answers_as_the_router_does() {
    let endpoint = both_protocols(auth::Auth::default()).await;
    let json = ("content-type", "application/json");
    let octets = ("content-type", "application/octet-stream");
    let id = ("x-request-id", "req-7");
    let key = (ROUTING_KEY_HEADER, "user-3");
    let raw: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let infer = br#"{"id": "a\"b", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2.5]}]}"#;
    let binary_out = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [3]}], "parameters": {"binary_data_output": true}}"#;
    // Path, headers, body, the status both answer with.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case> = vec![
        (
            "/score",
            vec![json, id, key],
            br#"{"data": [1.5, 2e-7, -0.0]}"#,
            200,
        ),
        ("/score", vec![json, id, key], b"not json", 400),
        ("/score", vec![json, id, key], br#"{"data": [[1]]}"#, 400),
        (
            "/score",
            vec![("content-type", "text/plain"), id, key],
            b"1",
            415,
        ),
        ("/score", vec![id, key], b"1", 415),
        (
            "/score",
            vec![octets, id, key, (SHAPE_HEADER, "2")],
            &raw,
            200,
        ),
        (
            "/score",
            vec![octets, id, key, (SHAPE_HEADER, "x")],
            &raw,
            400,
        ),
        (
            "/score?model=nope",
            vec![json, id, key],
            br#"{"data": [1]}"#,
            404,
        ),
        (
            "/score?model=m",
            vec![json, id, key],
            br#"{"data": [1]}"#,
            200,
        ),
        ("/v2/models/m/infer", vec![json, id, key], infer, 200),
        ("/v2/models/m/versions/2/infer", vec![json, id], infer, 200),
        ("/v2/models/m/versions/9/infer", vec![json, id], infer, 404),
        ("/v2/models/m/infer", vec![json, id, key], binary_out, 200),
        ("/v2/models/m/infer", vec![json, id, key], b"{}", 400),
        (
            "/v2/models/m/infer",
            vec![json, id, key, (HEADER_LENGTH, "x")],
            infer,
            400,
        ),
    ];
    for (path, headers, body, status) in cases {
        let (fast, routed) = framed(path, &headers, body);
        let fast = exchange(endpoint.addr(), &fast).await;
        let routed = exchange(endpoint.addr(), &routed).await;
        let case = format!("{path} {headers:?}");
        assert_eq!(
            fast.0,
            status,
            "{case}: {}",
            String::from_utf8_lossy(&fast.2)
        );
        assert_eq!(fast.0, routed.0, "{case}");
        assert_eq!(fast.2, routed.2, "{case}: the same body, byte for byte");
        let names = |h: &[(String, String)]| {
            let mut kept: Vec<(String, String)> =
                h.iter().filter(|(k, _)| k != "date").cloned().collect();
            kept.sort();
            kept
        };
        assert_eq!(names(&fast.1), names(&routed.1), "{case}: the same headers");
        assert!(fast.1.iter().any(|(k, _)| k == "date"), "{case}");
    }
    // Both paths count alike: every case but the two 404s of routing, on each path. (The
    // routing key keeps each case on one version of the split, whichever path serves it.)
    let seen = endpoint.observe(Instant::now(), None).metrics;
    assert_eq!(seen.requests, 2 * 13);
    endpoint.stop().await;
}

#[tokio::test]
async fn one_connection_goes_from_the_fast_path_to_the_router_without_losing_a_byte() {
    let endpoint = both_protocols(auth::Auth::default()).await;
    let stream = TcpStream::connect(endpoint.addr()).await.expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let score = |n: u32| {
        let body = format!(r#"{{"data": [{n}]}}"#);
        format!(
            "POST /score HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Two requests in one write, then one in three pieces that split its head and its body.
    writer
        .write_all(format!("{}{}", score(1), score(2)).as_bytes())
        .await
        .expect("writes");
    let third = score(3);
    for piece in [
        &third[..20],
        &third[20..third.len() - 4],
        &third[third.len() - 4..],
    ] {
        writer.write_all(piece.as_bytes()).await.expect("writes");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // A request the router answers, then scoring again (on hyper from now on).
    writer
        .write_all(b"GET /swagger.json HTTP/1.1\r\nhost: edge\r\n\r\n")
        .await
        .expect("writes");
    writer.write_all(score(4).as_bytes()).await.expect("writes");
    for expected in ["[1.0]", "[2.0]", "[3.0]", "swagger", "[4.0]"] {
        let (status, _, body) =
            tokio::time::timeout(Duration::from_secs(10), read_answer(&mut reader))
                .await
                .expect("answers in time");
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(expected), "{expected}: {body}");
    }
    endpoint.stop().await;
}

#[tokio::test]
async fn refused_credentials_get_the_routers_401_and_the_connection_goes_on() {
    use sha2::Digest as _;
    let spec = edgeship_domain::Endpoint {
        auth: edgeship_domain::AuthMode::Key,
        key_digests: vec![hex::encode(sha2::Sha256::digest("right"))],
        ..edgeship_domain::Endpoint::azureml(5001)
    };
    let endpoint = both_protocols(auth::Auth::from_spec("web", &spec)).await;
    let mut client = testkit::KeepAlive::new(endpoint.addr());
    let body = br#"{"data": [1]}"#;
    for (key, status) in [("right", 200), ("wrong", 401), ("right", 200)] {
        let answer = client
            .post_json_with(
                "/score",
                &[("authorization", &format!("Bearer {key}"))],
                body,
            )
            .await
            .expect("answers");
        assert_eq!(answer.status, status, "{key}: {}", answer.body);
    }
    endpoint.stop().await;
}

/// Clients that send nothing, or stop halfway through a head, are cut off after the head
/// timeout on the fast path too; a kept-alive client scoring on and off is not.
#[tokio::test]
async fn the_head_timeout_holds_on_the_fast_path() {
    let timeout = Duration::from_millis(400);
    let shared = Shared::new(
        "web",
        Routes::single(fake::backend("m:1")),
        auth::Auth::default(),
    );
    let fast = FastPath::new(Arc::clone(&shared), &[Protocol::Azureml], false);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(lanes::serve_with(
        listener,
        axum::Router::new(),
        fast,
        shutdown,
        timeout,
    ));
    let silent = TcpStream::connect(addr).await.expect("connects");
    let mut halfway = TcpStream::connect(addr).await.expect("connects");
    halfway
        .write_all(b"POST /score HTTP/1.1\r\nhost: edge\r\ncontent-le")
        .await
        .expect("writes");
    let mut kept = testkit::KeepAlive::new(addr);
    let started = Instant::now();
    while started.elapsed() < 4 * timeout {
        let answer = kept
            .post_json("/score", br#"{"data": [1]}"#)
            .await
            .expect("answers");
        assert_eq!(answer.status, 200, "{}", answer.body);
        tokio::time::sleep(timeout / 4).await;
    }
    for (name, mut stream) in [("silent", silent), ("halfway", halfway)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection is still open"));
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "{name}: closed without an answer"
        );
    }
    let _ = stop.send(());
    task.await.expect("stops");
}

/// A hundred kept-alive clients at once, ten requests each: every answer is its own request's,
/// and the endpoint counts every one.
#[tokio::test]
async fn a_hundred_connections_at_once_each_get_their_own_answers() {
    let endpoint = both_protocols(auth::Auth::default()).await;
    let addr = endpoint.addr();
    let clients: Vec<_> = (0..100u32)
        .map(|client| {
            tokio::spawn(async move {
                let mut connection = testkit::KeepAlive::new(addr);
                for request in 0..10u32 {
                    let value = client * 10 + request;
                    let (path, body) = if request % 2 == 0 {
                        ("/score", format!(r#"{{"data": [{value}]}}"#))
                    } else {
                        (
                            "/v2/models/m/infer",
                            format!(
                                r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": [{value}]}}]}}"#
                            ),
                        )
                    };
                    let answer = connection
                        .post_json(path, body.as_bytes())
                        .await
                        .expect("answers");
                    assert_eq!(answer.status, 200, "{}", answer.body);
                    let json = answer.json();
                    let got = if request % 2 == 0 {
                        json[0].as_f64()
                    } else {
                        json["outputs"][0]["data"][0].as_f64()
                    };
                    assert_eq!(got, Some(f64::from(value)), "{}", answer.body);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("the client's answers were its own");
    }
    assert_eq!(
        endpoint.observe(Instant::now(), None).metrics.requests,
        1000
    );
    endpoint.stop().await;
}
