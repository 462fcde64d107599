//! The Open Inference Protocol v2 over HTTP/REST: health, server and model metadata, and
//! `infer` with JSON tensors (flat or nested `data`) and the binary tensor data extension
//! (`Inference-Header-Content-Length`: a JSON header, then the tensors' raw bytes), which
//! `tritonclient` uses by default. Errors are `{"error": …}` with the status that fits.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgeship_domain::ElementType;
use edgeship_runtime::TensorData;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::infer::{self, ErrorKind, NamedInput, NamedOutput, V2Error};
use super::{EXTENSIONS, PLATFORM, SERVER_NAME};
use super::{flat, quick};
use crate::serve::json::{values_from_json, write_values};
use crate::serve::reply::{Reply, header_text, write_json_str};
use crate::serve::{ROUTING_KEY_HEADER, Scorer, Shared};

/// Length of the JSON part of a body (request or response) that carries binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The adapter's routes, merged into an endpoint's router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer_latest))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
}

/// The HTTP status of an error class (also what gRPC outcomes are counted as).
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(err: &V2Error) -> Response {
    error_reply(err).into_response()
}

/// An error as OIP REST answers it: `{"error": …}`, and `Retry-After` on a 503.
pub fn error_reply(err: &V2Error) -> Reply {
    let reply = Reply::error(http_status(err.kind), "error", &err.message);
    if err.kind == ErrorKind::Unavailable {
        reply.retry_later()
    } else {
        reply
    }
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn model_metadata(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    metadata(&shared, &name, None)
}

async fn version_metadata(
    State(shared): State<Arc<Shared>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&shared, &name, Some(&version))
}

fn metadata(shared: &Shared, name: &str, version: Option<&str>) -> Response {
    let scorer = match infer::scorer_for(shared, name, version) {
        Ok(scorer) => scorer,
        Err(err) => return error_response(&err),
    };
    let describe = |specs: &[edgeship_domain::TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "datatype": infer::datatype(s),
                    "shape": infer::metadata_shape(s),
                })
            })
            .collect()
    };
    axum::Json(json!({
        "name": name,
        "versions": infer::versions_of(shared, name),
        "platform": PLATFORM,
        "inputs": describe(scorer.inputs()),
        "outputs": describe(scorer.outputs()),
    }))
    .into_response()
}

async fn model_ready(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    readiness(&shared, &name, None)
}

async fn version_ready(
    State(shared): State<Arc<Shared>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness(&shared, &name, Some(&version))
}

fn readiness(shared: &Shared, name: &str, version: Option<&str>) -> Response {
    match infer::route(shared, name, version, None) {
        Ok(_) => axum::Json(json!({ "name": name, "ready": true })).into_response(),
        Err(err) => error_response(&err),
    }
}

async fn infer_latest(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    infer_request(&shared, &name, None, request).await
}

async fn infer_version(
    State(shared): State<Arc<Shared>>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    infer_request(&shared, &name, Some(&version), request).await
}

async fn infer_request(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
    request: Request,
) -> Response {
    let key = request
        .headers()
        .get(ROUTING_KEY_HEADER)
        .map(|v| v.as_bytes().to_vec());
    let call = match infer::route(shared, name, version, key.as_deref()) {
        Ok(call) => call,
        Err(err) => return error_response(&err),
    };
    let scorer = Arc::clone(call.scorer());
    let response = match infer_inner(shared, &scorer, request).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    shared.finish(call, response)
}

#[derive(Debug, Deserialize)]
struct RequestHeader<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<InputHeader<'a>>,
    #[serde(default)]
    outputs: Vec<OutputHeader>,
}

#[derive(Debug, Deserialize)]
struct InputHeader<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Kept as JSON text: the datatype that says how to read it may come after it.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct OutputHeader {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer_inner(
    shared: &Shared,
    scorer: &Arc<dyn Scorer>,
    request: Request,
) -> Result<Response, V2Error> {
    let limit = shared.max_body_bytes();
    let header_length = header_length(
        request
            .headers()
            .get(HEADER_LENGTH)
            .map(HeaderValue::as_bytes),
    )?;
    let too_large = || V2Error {
        kind: ErrorKind::TooLarge,
        message: format!("the body exceeds the limit of {limit} bytes"),
    };
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| too_large())?;
    Ok(infer_body(scorer, header_length, &body)
        .await?
        .into_response())
}

/// Runs one whole infer body (`header_length` from the binary extension's header) on
/// `scorer`.
pub async fn infer_body(
    scorer: &Arc<dyn Scorer>,
    header_length: Option<usize>,
    body: &[u8],
) -> Result<Reply, V2Error> {
    let decoded = decode_request(scorer.as_ref(), body, header_length)?;
    let tensors = infer::arrange(scorer.as_ref(), decoded.inputs)?;
    let requested: Vec<String> = decoded.outputs.iter().map(|o| o.0.clone()).collect();
    let outputs = infer::run(scorer, tensors, &requested).await?;
    let binary: Vec<bool> = if decoded.outputs.is_empty() {
        vec![decoded.binary_default; outputs.len()]
    } else {
        decoded.outputs.iter().map(|o| o.1).collect()
    };
    let (model_name, model_version) = infer::split_ref(scorer.model_ref());
    Ok(encode_response(
        model_name,
        model_version,
        decoded.id.as_deref(),
        &outputs,
        &binary,
    ))
}

/// The binary extension's JSON header length, from its header's value.
pub fn header_length(value: Option<&[u8]>) -> Result<Option<usize>, V2Error> {
    value
        .map(|v| {
            header_text(v)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    V2Error::bad(format!(
                        "the {HEADER_LENGTH} header must be a byte count, got {:?}",
                        String::from_utf8_lossy(v)
                    ))
                })
        })
        .transpose()
}

/// A request's inputs, and its outputs with whether each goes back as binary data.
#[derive(Debug, PartialEq)]
pub struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<NamedInput>,
    pub outputs: Vec<(String, bool)>,
    /// `binary_data_output`: binary for every output not listed.
    pub binary_default: bool,
}

/// Decodes an infer body: JSON, or with `header_length`, a JSON header followed by the
/// binary data of the inputs whose parameters declare a `binary_data_size`, in order. Every
/// size is checked against the bytes actually present before anything is allocated for it.
pub fn decode_request(
    scorer: &dyn Scorer,
    body: &[u8],
    header_length: Option<usize>,
) -> Result<DecodedRequest, V2Error> {
    if header_length.is_none()
        && let Some(decoded) = quick::decode(scorer, body)
    {
        return decoded;
    }
    decode_general(scorer, body, header_length)
}

/// [`decode_request`] without the quick reader: any body, and the words for what is wrong.
pub(super) fn decode_general(
    scorer: &dyn Scorer,
    body: &[u8],
    header_length: Option<usize>,
) -> Result<DecodedRequest, V2Error> {
    let json_length = header_length.unwrap_or(body.len());
    if json_length > body.len() {
        return Err(V2Error::bad(format!(
            "{HEADER_LENGTH} is {json_length} but the body has only {} bytes",
            body.len()
        )));
    }
    let (json_part, mut binary) = body.split_at(json_length);
    let header: RequestHeader = serde_json::from_slice(json_part).map_err(|err| {
        V2Error::bad(format!(
            "the request is not a valid inference request: {err}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(header.inputs.len().min(scorer.inputs().len() + 1));
    for input in header.inputs {
        let spec = scorer.inputs().iter().find(|s| s.name == input.name);
        let element_type = infer::input_type(spec, &input.name, &input.datatype)?;
        let (shape, count) = infer::element_count(&input.name, &input.shape)?;
        let fail = |why: String| V2Error::bad(format!("input {:?}: {why}", input.name));
        let data = match binary_size(&input.parameters).map_err(fail)? {
            Some(size) => {
                if input.data.is_some() {
                    return Err(fail("has both data and binary_data_size".into()));
                }
                if size > binary.len() {
                    return Err(fail(format!(
                        "binary_data_size is {size} but only {} bytes of binary data remain",
                        binary.len()
                    )));
                }
                let (raw, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_raw(&element_type, raw).map_err(fail)?
            }
            None => {
                let data = input
                    .data
                    .ok_or_else(|| fail("has neither data nor binary_data_size".into()))?;
                match flat::read(&element_type, data, count) {
                    Some(values) => values,
                    None => {
                        let data: Value = serde_json::from_str(data.get())
                            .map_err(|err| fail(format!("data cannot be read: {err}")))?;
                        values_of(&element_type, &data, count).map_err(fail)?
                    }
                }
            }
        };
        check_count(&input.name, &input.shape, count, &data)?;
        inputs.push(NamedInput {
            name: input.name,
            shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(V2Error::bad(format!(
            "{} bytes of binary data follow the header but no input claims them",
            binary.len()
        )));
    }
    let binary_default = flag(&header.parameters, "binary_data_output")?;
    let outputs = header
        .outputs
        .into_iter()
        .map(|o| {
            let binary = match o.parameters.get("binary_data") {
                None => binary_default,
                Some(_) => flag(&o.parameters, "binary_data")?,
            };
            Ok((o.name, binary))
        })
        .collect::<Result<_, V2Error>>()?;
    Ok(DecodedRequest {
        id: header.id,
        inputs,
        outputs,
        binary_default,
    })
}

/// Refuses `data` unless it holds the `count` elements `shape` describes.
pub(super) fn check_count(
    name: &str,
    shape: &[i64],
    count: usize,
    data: &TensorData,
) -> Result<(), V2Error> {
    if data.len() == count {
        return Ok(());
    }
    Err(V2Error::bad(format!(
        "input {name:?}: shape {shape:?} holds {count} elements, the request sent {}",
        data.len()
    )))
}

fn binary_size(parameters: &Map<String, Value>) -> Result<Option<usize>, String> {
    match parameters.get("binary_data_size") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("binary_data_size must be a byte count, got {v}")),
    }
}

fn flag(parameters: &Map<String, Value>, name: &str) -> Result<bool, V2Error> {
    match parameters.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(V2Error::bad(format!(
            "parameter {name} must be true or false, got {other}"
        ))),
    }
}

/// Reads `data`, a leaf or flat or nested arrays, as `count` values of `element_type` in
/// row-major order, wording what is wrong (the general way: `flat::read` takes the common
/// cases without a `Value` tree).
pub(super) fn values_of(
    element_type: &ElementType,
    data: &Value,
    count: usize,
) -> Result<TensorData, String> {
    let mut leaves = Vec::new();
    flatten(data, &mut leaves, count)?;
    values_from_json(element_type, &leaves)
}

/// Collects the leaves of flat or nested arrays in row-major order, stopping as soon as there
/// are more than `expected` (a body cannot make the server collect more than it declared).
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>, expected: usize) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, expected)?;
            }
            Ok(())
        }
        Value::Object(_) => Err("data must be an array of values, not an object".into()),
        leaf => {
            if out.len() == expected {
                return Err(format!(
                    "data holds more than the shape's {expected} elements"
                ));
            }
            out.push(leaf);
            Ok(())
        }
    }
}

/// Encodes a response: outputs marked binary travel after the JSON header, the rest as flat
/// JSON `data`. The JSON is written directly (no `Value` tree): every infer answer goes
/// through here.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[NamedOutput],
    binary: &[bool],
) -> Reply {
    let mut raw = Vec::new();
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{\"model_name\":");
    write_json_str(model_name, &mut json);
    json.extend_from_slice(b",\"model_version\":");
    write_json_str(model_version, &mut json);
    if let Some(id) = id {
        json.extend_from_slice(b",\"id\":");
        write_json_str(id, &mut json);
    }
    json.extend_from_slice(b",\"outputs\":[");
    let flags = binary.iter().copied().chain(std::iter::repeat(false));
    for (index, (output, as_binary)) in outputs.iter().zip(flags).enumerate() {
        if index > 0 {
            json.push(b',');
        }
        let tensor = &output.tensor;
        json.extend_from_slice(b"{\"name\":");
        write_json_str(&output.name, &mut json);
        json.extend_from_slice(b",\"datatype\":");
        write_json_str(
            tensor.data.element_type().oip_name().unwrap_or("BYTES"),
            &mut json,
        );
        json.extend_from_slice(b",\"shape\":[");
        let mut digits = itoa::Buffer::new();
        for (i, dim) in tensor.shape.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(digits.format(*dim).as_bytes());
        }
        json.push(b']');
        if as_binary {
            let bytes = tensor.data.to_le_bytes();
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(digits.format(bytes.len()).as_bytes());
            json.push(b'}');
            raw.extend_from_slice(&bytes);
        } else {
            json.extend_from_slice(b",\"data\":");
            write_values(&tensor.data, &mut json);
        }
        json.push(b'}');
    }
    json.extend_from_slice(b"]}");
    if raw.is_empty() && !binary.iter().any(|b| *b) {
        return Reply::json(StatusCode::OK, json);
    }
    let length = json.len();
    let mut body = json;
    body.extend_from_slice(&raw);
    Reply {
        status: StatusCode::OK,
        content_type: "application/octet-stream",
        headers: vec![(
            HeaderName::from_static(HEADER_LENGTH),
            HeaderValue::from(length),
        )],
        body,
    }
}
