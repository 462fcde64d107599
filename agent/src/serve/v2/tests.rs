//! The Open Inference Protocol adapters against an endpoint with a model-free version
//! (`fake`: echoes `x: float32[n]`), over real HTTP and gRPC connections.

use std::net::SocketAddr;
use std::time::Duration;

use edgeship_domain::Protocol;
use edgeship_proto::inference as pb;
use edgeship_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{Value, json};
use testkit::{HttpResponse, http};

use super::rest::{HEADER_LENGTH, decode_request};
use crate::serve::{Backend, Endpoint, MODEL_HEADER, Routes, fake};

async fn endpoint(routes: Routes) -> Endpoint {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Endpoint::start(
        any,
        Some(any),
        "web",
        crate::serve::Surface::Scoring(&[Protocol::V2]),
        &[],
        Default::default(),
        routes,
    )
    .await
    .expect("listens")
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], b"").await.expect("answers")
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    http(addr, "POST", path, headers, body)
        .await
        .expect("answers")
}

fn infer_body(data: Value, shape: &[i64], datatype: &str) -> Vec<u8> {
    json!({"id": "r-1", "inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]})
        .to_string()
        .into_bytes()
}

/// A JSON header followed by raw bytes, as the binary tensor data extension frames a body.
fn framed(header: &Value, raw: &[u8]) -> (Vec<u8>, String) {
    let mut body = header.to_string().into_bytes();
    let length = body.len().to_string();
    body.extend_from_slice(raw);
    (body, length)
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test]
async fn health_and_metadata_describe_the_served_versions() {
    let routes = Routes::new(vec![(80, fake::backend("m:1")), (20, fake::backend("m:2"))])
        .expect("versions");
    let endpoint = endpoint(routes).await;
    let addr = endpoint.addr();
    let server = get(addr, "/v2").await;
    assert_eq!(server.status, 200);
    assert_eq!(server.json()["name"], "edgeship");
    assert_eq!(server.json()["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(get(addr, "/v2/health/live").await.status, 200);
    assert_eq!(get(addr, "/v2/health/ready").await.status, 200);

    let model = get(addr, "/v2/models/m").await;
    assert_eq!(model.status, 200, "{}", model.body);
    assert_eq!(
        model.json(),
        json!({"name": "m", "versions": ["1", "2"], "platform": "onnx",
               "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
               "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]})
    );
    assert_eq!(get(addr, "/v2/models/m/versions/2").await.status, 200);
    assert_eq!(get(addr, "/v2/models/m/ready").await.status, 200);
    assert_eq!(get(addr, "/v2/models/m/versions/2/ready").await.status, 200);

    let missing = get(addr, "/v2/models/other").await;
    assert_eq!(missing.status, 404);
    let error = missing.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("\"other\" is not served here; this endpoint serves m:1, m:2"),
        "{error}"
    );
    let missing = get(addr, "/v2/models/m/versions/9/ready").await;
    assert_eq!(missing.status, 404, "not ready is a non-200");
    endpoint.stop().await;
}

#[tokio::test]
async fn json_tensors_flat_or_nested_are_scored_and_the_id_echoed() {
    let endpoint = endpoint(Routes::single(fake::backend("m:1"))).await;
    let addr = endpoint.addr();
    for data in [json!([1.5, 2, -3]), json!([[1.5], [2, -3]])] {
        let response = post(
            addr,
            "/v2/models/m/infer",
            &[],
            &infer_body(data, &[3], "FP32"),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.header(MODEL_HEADER), Some("m:1"));
        assert_eq!(
            response.json(),
            json!({"model_name": "m", "model_version": "1", "id": "r-1",
                   "outputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1.5, 2.0, -3.0]}]})
        );
    }
    let pinned = post(
        addr,
        "/v2/models/m/versions/1/infer",
        &[],
        &infer_body(json!([1]), &[1], "FP32"),
    )
    .await;
    assert_eq!(pinned.status, 200, "{}", pinned.body);
    let m = endpoint.observe(std::time::Instant::now(), None).metrics;
    assert_eq!(m.requests, 3, "every infer is counted");
    endpoint.stop().await;
}

#[tokio::test]
async fn binary_tensors_travel_raw_both_ways() {
    let endpoint = endpoint(Routes::single(fake::backend("m:1"))).await;
    let values = [0.25f32, -1.0, 7.5, 1e-3];
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "x", "parameters": {"binary_data": true}}]
    });
    let (body, length) = framed(&header, &raw);
    let response = post(
        endpoint.addr(),
        "/v2/models/m/infer",
        &[(HEADER_LENGTH, &length)],
        &body,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );
    let json_length: usize = response
        .header(HEADER_LENGTH)
        .and_then(|v| v.parse().ok())
        .expect("the response frames its header");
    let (head, tail) = response.bytes.split_at(json_length);
    let head: Value = serde_json::from_slice(head).expect("JSON header");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(floats(tail), values, "bit for bit");

    // `binary_data_output` with no outputs listed: every output binary.
    let header = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [0.25, -1, 7.5, 0.001]}]
    });
    let response = post(
        endpoint.addr(),
        "/v2/models/m/infer",
        &[],
        header.to_string().as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.header(HEADER_LENGTH).is_some());
    endpoint.stop().await;
}

#[tokio::test]
async fn mistakes_get_the_right_status_and_a_message_naming_them() {
    let endpoint = endpoint(Routes::single(fake::backend("m:1"))).await;
    let addr = endpoint.addr();
    // (what, body, Inference-Header-Content-Length, what the 400 says)
    let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        (
            "wrong datatype",
            infer_body(json!([1]), &[1], "INT64"),
            None,
            "the model takes FP32, the request sent INT64",
        ),
        (
            "unknown datatype",
            infer_body(json!([1]), &[1], "FLOAT"),
            None,
            "unknown datatype \"FLOAT\"",
        ),
        (
            "count mismatch",
            infer_body(json!([1, 2, 3]), &[4], "FP32"),
            None,
            "shape [4] holds 4 elements, the request sent 3",
        ),
        (
            "too much data",
            infer_body(json!([1, 2, 3]), &[2], "FP32"),
            None,
            "more than the shape's 2 elements",
        ),
        (
            "wrong rank",
            infer_body(json!([[1]]), &[1, 1], "FP32"),
            None,
            "expected 1 dimensions",
        ),
        (
            "a string",
            infer_body(json!(["a"]), &[1], "FP32"),
            None,
            "element 0 is the string \"a\", expected a number",
        ),
        (
            "not JSON",
            b"{".to_vec(),
            None,
            "not a valid inference request",
        ),
        (
            "no inputs field",
            b"{}".to_vec(),
            None,
            "missing field `inputs`",
        ),
        (
            "missing input",
            br#"{"inputs": []}"#.to_vec(),
            None,
            "input \"x\" is missing",
        ),
        (
            "unknown input",
            br#"{"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1]}]}"#
                .to_vec(),
            None,
            "no input named \"y\"; its inputs are x",
        ),
        (
            "header beyond body",
            b"{}".to_vec(),
            Some("999"),
            "is 999 but the body has only 2 bytes",
        ),
        (
            "bad header length",
            b"{}".to_vec(),
            Some("lots"),
            "must be a byte count",
        ),
    ];
    for (what, body, length, message) in cases {
        let headers: Vec<(&str, &str)> = length.map(|l| (HEADER_LENGTH, l)).into_iter().collect();
        let response = post(addr, "/v2/models/m/infer", &headers, &body).await;
        assert_eq!(response.status, 400, "{what}: {}", response.body);
        let error = response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(message), "{what}: {error}");
    }
    let (body, length) = framed(
        &json!({"inputs": [{"name": "x", "shape": [1000000], "datatype": "FP32", "parameters": {"binary_data_size": 4000000}}]}),
        &[0; 8],
    );
    let response = post(
        addr,
        "/v2/models/m/infer",
        &[(HEADER_LENGTH, &length)],
        &body,
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(
        response
            .body
            .contains("binary_data_size is 4000000 but only 8 bytes"),
        "{}",
        response.body
    );
    let requested = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                           "outputs": [{"name": "y"}]});
    let response = post(
        addr,
        "/v2/models/m/infer",
        &[],
        requested.to_string().as_bytes(),
    )
    .await;
    assert_eq!(response.status, 400);
    let error = response.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("no output named \"y\"; its outputs are x"),
        "{error}"
    );
    let response = post(
        addr,
        "/v2/models/nope/infer",
        &[],
        &infer_body(json!([1]), &[1], "FP32"),
    )
    .await;
    assert_eq!(response.status, 404);

    let broken = Backend::new(fake::scorer("m:1", true), Duration::from_secs(30));
    let failing = self::endpoint(Routes::single(broken)).await;
    let response = post(
        failing.addr(),
        "/v2/models/m/infer",
        &[],
        &infer_body(json!([1]), &[1], "FP32"),
    )
    .await;
    assert_eq!(response.status, 500);
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("the model is broken")
    );
    failing.stop().await;
    endpoint.stop().await;
}

/// A small xorshift generator: reproducible inputs without a test dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn the_decoder_refuses_mangled_bodies_without_panicking_or_over_allocating() {
    let scorer = fake::scorer("m:1", false);
    let raw: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (valid, length) = framed(
        &json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}),
        &raw,
    );
    let length: usize = length.parse().expect("number");
    assert!(decode_request(scorer.as_ref(), &valid, Some(length)).is_ok());
    let json_valid = infer_body(json!([[1, 2], [3, 4]]), &[2, 2], "FP32");
    let mut noise = Noise(0x5eed_1234_abcd_0001);
    let mut refused = 0;
    for round in 0..20_000 {
        let (mut body, mut header) = if round % 2 == 0 {
            (valid.clone(), Some(length))
        } else {
            (json_valid.clone(), None)
        };
        match noise.below(5) {
            0 => {
                let at = noise.below(body.len());
                body[at] = noise.next() as u8;
            }
            1 => body.truncate(noise.below(body.len())),
            2 => header = Some(noise.below(body.len() * 2)),
            3 => {
                // Declared sizes far beyond the body, in the shape and in binary_data_size.
                let text = String::from_utf8_lossy(&body)
                    .replace("[3]", "[4611686018427387904]")
                    .replace("12}", "18446744073709551615}");
                body = text.into_bytes();
            }
            _ => body = (0..noise.below(64)).map(|_| noise.next() as u8).collect(),
        }
        if let Err(err) = decode_request(scorer.as_ref(), &body, header) {
            assert_eq!(
                err.kind,
                super::infer::ErrorKind::BadRequest,
                "{}",
                err.message
            );
            assert!(!err.message.is_empty());
            refused += 1;
        }
    }
    assert!(
        refused > 10_000,
        "most mangled bodies are refused ({refused})"
    );
    // Deep nesting is refused by the JSON parser's depth limit, not by the stack.
    let deep = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": {}1{}}}]}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let err = decode_request(scorer.as_ref(), deep.as_bytes(), None).expect_err("too deep");
    assert!(err.message.contains("recursion limit"), "{}", err.message);
}

#[tokio::test]
async fn grpc_scores_raw_and_typed_contents_and_names_errors() {
    let endpoint = endpoint(Routes::single(fake::backend("m:1"))).await;
    let grpc = endpoint.grpc_addr().expect("a gRPC port");
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connects");
    let live = client
        .server_live(pb::ServerLiveRequest {})
        .await
        .expect("live");
    assert!(live.into_inner().live);
    // The connection can carry any number of requests at once: while it is open, no batch
    // takes the requests it holds for all that can come.
    assert!(!crate::serve::clients::CLIENTS.all_waiting(usize::MAX));
    let ready = client
        .server_ready(pb::ServerReadyRequest {})
        .await
        .expect("ready");
    assert!(ready.into_inner().ready);
    let metadata = client
        .model_metadata(pb::ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(metadata.versions, ["1"]);
    assert_eq!(metadata.inputs[0].datatype, "FP32");
    assert_eq!(metadata.inputs[0].shape, [-1]);

    let input =
        |contents: Option<pb::InferTensorContents>| pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![2],
            parameters: Default::default(),
            contents,
        };
    let raw = pb::ModelInferRequest {
        model_name: "m".into(),
        id: "g-1".into(),
        inputs: vec![input(None)],
        raw_input_contents: vec![
            [0.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    };
    let typed = pb::ModelInferRequest {
        model_name: "m".into(),
        model_version: "1".into(),
        inputs: vec![input(Some(pb::InferTensorContents {
            fp32_contents: vec![0.5, -2.0],
            ..Default::default()
        }))],
        ..Default::default()
    };
    for request in [raw, typed] {
        let response = client.model_infer(request.clone()).await.expect("infers");
        assert_eq!(
            response
                .metadata()
                .get(MODEL_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("m:1")
        );
        let response = response.into_inner();
        assert_eq!(
            (
                response.model_name.as_str(),
                response.model_version.as_str()
            ),
            ("m", "1")
        );
        assert_eq!(response.id, request.id);
        assert_eq!(response.outputs[0].shape, [2]);
        assert_eq!(floats(&response.raw_output_contents[0]), [0.5, -2.0]);
    }

    let unknown = pb::ModelInferRequest {
        model_name: "other".into(),
        ..Default::default()
    };
    let status = client
        .model_infer(unknown)
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let short = pb::ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![input(None)],
        raw_input_contents: vec![vec![0u8; 5].into()],
        ..Default::default()
    };
    let status = client
        .model_infer(short)
        .await
        .expect_err("ragged raw contents");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("5 bytes is not a whole number of float32"),
        "{}",
        status.message()
    );
    endpoint.stop().await;
}
