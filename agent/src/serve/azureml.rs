//! The Azure ML scoring convention: `GET /` → `Healthy`, `POST /score` with `{"data": …}`,
//! `GET /swagger.json` (OpenAPI 2.0 from the signature); errors are `{"message": …}` with the
//! status that fits. One input takes `data` as nested arrays, several an object keyed by input
//! name; one output is returned as nested arrays, several as an object keyed by output name.
//! Every `/score` response names the version that answered in `x-edgeship-model` (set by
//! `Shared::finish`, for every adapter alike).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgeship_domain::{Dim, ElementType, TensorSpec};
use edgeship_runtime::{RuntimeError, Tensor, TensorData};
use serde_json::{Value, json};

use super::json::{self, inputs_from_data};
use super::reply::{Reply, header_text};
use super::{ROUTING_KEY_HEADER, Scorer, Shared, run_inference};

/// The adapter's routes, merged into an endpoint's router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(health))
        .route("/score", post(score))
        .route("/swagger.json", get(swagger))
}

pub(super) fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

async fn health() -> &'static str {
    "Healthy"
}

/// The header that names the model to score on a multi-model endpoint (or `?model=NAME`).
pub const MODEL_NAME_HEADER: &str = "x-edgeship-model-name";

/// The model a request names, by query parameter or header; `None` takes the endpoint's
/// first model.
fn requested_model(request: &Request) -> Option<String> {
    model_named(
        request.uri().query(),
        request
            .headers()
            .get(MODEL_NAME_HEADER)
            .map(HeaderValue::as_bytes),
    )
    .map(str::to_owned)
}

/// The model named by `model=` in `query`, else by the model name header's value.
pub fn model_named<'a>(query: Option<&'a str>, header: Option<&'a [u8]>) -> Option<&'a str> {
    let from_query = query.and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("model="))
    });
    from_query.or_else(|| header.and_then(header_text))
}

pub(super) fn not_served(shared: &Shared, model: Option<&str>) -> Response {
    message(
        StatusCode::NOT_FOUND,
        format!(
            "model {:?} is not served here; this endpoint serves {}",
            model.unwrap_or_default(),
            shared.model_names()
        ),
    )
}

async fn score(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let model = requested_model(&request);
    let key = request
        .headers()
        .get(ROUTING_KEY_HEADER)
        .map(HeaderValue::as_bytes);
    #[cfg(feature = "wasm")]
    {
        let routes = shared.routes();
        if let Some(pool) = routes.entry().cloned() {
            let key = key.map(<[u8]>::to_vec);
            return super::entry::score(&shared, routes, pool, model.as_deref(), key, request)
                .await;
        }
    }
    let Some(call) = shared.begin_model(model.as_deref(), key) else {
        return not_served(&shared, model.as_deref());
    };
    let response = score_inner(&shared, call.scorer(), request).await;
    shared.finish(call, response)
}

async fn score_inner(shared: &Shared, scorer: &Arc<dyn Scorer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let head = ScoreHead {
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
        shape: parts.headers.get(SHAPE_HEADER).map(HeaderValue::as_bytes),
    };
    let form = match head.form() {
        Ok(form) => form,
        Err(refusal) => return refusal.into_response(),
    };
    let limit = shared.max_body_bytes();
    let declared = parts
        .headers
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
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large(),
    };
    score_body(shared, scorer, form, &bytes)
        .await
        .into_response()
}

/// What `/score` reads of a request's head besides routing: the raw header values.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreHead<'a> {
    pub content_type: Option<&'a [u8]>,
    pub shape: Option<&'a [u8]>,
}

/// How a `/score` body is to be read.
#[derive(Debug, Clone, Copy)]
pub enum BodyForm<'a> {
    Json,
    /// One raw little-endian tensor, shaped by the shape header if sent.
    Raw(Option<&'a str>),
}

impl<'a> ScoreHead<'a> {
    /// The body's form by content type, or the refusal (415, or 400 for a shape header that
    /// is not text); checked before the body is read.
    pub fn form(&self) -> Result<BodyForm<'a>, Reply> {
        let content_type = self.content_type.and_then(header_text).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/json") {
            return Ok(BodyForm::Json);
        }
        if !mime.eq_ignore_ascii_case("application/octet-stream") {
            let shown = if content_type.is_empty() {
                "none"
            } else {
                content_type
            };
            return Err(refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "send the body as application/json, or one raw tensor as application/octet-stream (got content type {shown})"
                ),
            ));
        }
        match self.shape.map(header_text) {
            None => Ok(BodyForm::Raw(None)),
            Some(Some(text)) => Ok(BodyForm::Raw(Some(text))),
            Some(None) => Err(refusal(
                StatusCode::BAD_REQUEST,
                &format!("{SHAPE_HEADER} must be dimensions like 2,10"),
            )),
        }
    }
}

fn refusal(status: StatusCode, why: &str) -> Reply {
    Reply::error(status, "message", why)
}

/// Scores a whole `/score` body of `form` with `scorer`.
pub async fn score_body(
    shared: &Shared,
    scorer: &Arc<dyn Scorer>,
    form: BodyForm<'_>,
    bytes: &[u8],
) -> Reply {
    let inputs = match form {
        BodyForm::Raw(shape) => raw_input(scorer.inputs(), bytes, shape),
        BodyForm::Json => match json::float_input(scorer.inputs(), bytes) {
            Some(tensor) => Ok(vec![tensor]),
            None => match serde_json::from_slice::<Value>(bytes) {
                Ok(body) => inputs_from_data(scorer.inputs(), &body).map_err(|err| err.0),
                Err(err) => Err(format!("the body is not valid JSON: {err}")),
            },
        },
    };
    let inputs = match inputs {
        Ok(inputs) => inputs,
        Err(why) => return refusal(StatusCode::BAD_REQUEST, &why),
    };
    match run_inference(scorer, inputs).await {
        Ok(outputs) => {
            let mut body = Vec::with_capacity(256);
            json::write_outputs(scorer.outputs(), &outputs, &mut body);
            Reply::json(StatusCode::OK, body)
        }
        Err(RuntimeError::BadInput(why)) => refusal(StatusCode::BAD_REQUEST, &why),
        Err(RuntimeError::Overloaded(why)) => {
            refusal(StatusCode::SERVICE_UNAVAILABLE, &why).retry_later()
        }
        Err(err) => {
            tracing::warn!(deployment = %shared.deployment(), model = %scorer.model_ref(), error = %err, "scoring failed");
            refusal(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string())
        }
    }
}

/// The shape of a raw `application/octet-stream` body, as `2,10`; without it the shape comes
/// from the signature (an open first dimension from the body's length).
pub const SHAPE_HEADER: &str = "x-edgeship-shape";

/// One raw little-endian tensor for a single-input model.
fn raw_input(
    specs: &[TensorSpec],
    bytes: &[u8],
    shape_header: Option<&str>,
) -> Result<Vec<Tensor>, String> {
    let [spec] = specs else {
        return Err(format!(
            "a raw application/octet-stream body carries one tensor, and this model has {} inputs: send JSON",
            specs.len()
        ));
    };
    let data = TensorData::from_raw(&spec.element_type, bytes)
        .map_err(|why| format!("input {:?} ({spec}): {why}", spec.name))?;
    let shape = match shape_header {
        Some(text) => text
            .split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("{SHAPE_HEADER} must be dimensions like 2,10, got {text:?}"))?,
        None => shape_from_signature(spec, data.len())?,
    };
    let count = shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    if count != Some(data.len()) {
        return Err(format!(
            "shape {shape:?} does not hold the body's {} elements of {}",
            data.len(),
            spec.element_type
        ));
    }
    let tensor = Tensor { shape, data };
    json::check_shape(spec, &tensor.shape).map_err(|e| e.0)?;
    Ok(vec![tensor])
}

/// The signature's shape with at most one open dimension, sized to hold `elements`.
fn shape_from_signature(spec: &TensorSpec, elements: usize) -> Result<Vec<usize>, String> {
    let fixed: usize = spec
        .shape
        .iter()
        .filter_map(|d| match d {
            Dim::Fixed(n) => usize::try_from(*n).ok(),
            _ => None,
        })
        .product();
    let open = spec.shape.iter().filter(|d| d.is_open()).count();
    if open > 1 {
        return Err(format!(
            "input {:?} ({spec}) has {open} open dimensions: send the shape in {SHAPE_HEADER}",
            spec.name
        ));
    }
    if fixed == 0 || !elements.is_multiple_of(fixed) {
        return Err(format!(
            "{elements} elements do not fill whole rows of {fixed} for input {:?} ({spec})",
            spec.name
        ));
    }
    Ok(spec
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            _ => elements / fixed,
        })
        .collect())
}

async fn swagger(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // A split's versions normally share a signature; where they do not, the document
    // describes the heaviest, the one most callers reach. Each model of a multi-model
    // endpoint has its own (`?model=NAME`).
    let model = requested_model(&request);
    let scorer = match &model {
        None => shared.primary(),
        Some(name) => match shared.primary_of(name) {
            Some(scorer) => scorer,
            None => return not_served(&shared, Some(name)),
        },
    };
    let mut doc = swagger_document(shared.deployment(), scorer.as_ref());
    // Behind an entry module the body is the module's to define, as an Azure ML entry script
    // without schema decorators: the document says so instead of describing the model.
    #[cfg(feature = "wasm")]
    if let Some(pool) = shared.routes().entry() {
        let what = |side: &str| json!({"description": format!("the {side} of entry module {}", pool.module_ref())});
        doc["definitions"]["ServiceInput"] = what("request body");
        doc["definitions"]["ServiceOutput"] = what("answer");
    }
    if shared.auth().is_required() {
        add_bearer_scheme(&mut doc);
    }
    let mut response = axum::Json(doc).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn tensor_schema(info: &TensorSpec) -> Value {
    let item = match &info.element_type {
        ElementType::F32 => json!({"type": "number", "format": "float"}),
        ElementType::F64 => json!({"type": "number", "format": "double"}),
        ElementType::F16 => json!({"type": "number", "format": "float"}),
        ElementType::I32 => json!({"type": "integer", "format": "int32"}),
        ElementType::I64 => json!({"type": "integer", "format": "int64"}),
        ElementType::I8 | ElementType::I16 => json!({"type": "integer", "format": "int32"}),
        ElementType::U8 | ElementType::U16 | ElementType::U32 | ElementType::U64 => {
            json!({"type": "integer", "format": "int64", "minimum": 0})
        }
        ElementType::Bool => json!({"type": "boolean"}),
        ElementType::String => json!({"type": "string"}),
        ElementType::Other(_) => json!({}),
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

/// Declares the endpoint's keys as Azure ML's documents do: a Bearer `Authorization` header
/// on the scoring operation.
pub fn add_bearer_scheme(doc: &mut Value) {
    doc["securityDefinitions"] = json!({
        "Bearer": {
            "type": "apiKey",
            "name": "Authorization",
            "in": "header",
            "description": "For example: Bearer abc123",
        }
    });
    doc["paths"]["/score"]["post"]["security"] = json!([{"Bearer": []}]);
}

/// OpenAPI 2.0 document of this endpoint, generated from the model's signature (Azure ML
/// serves the same version, so its client generators work unchanged).
pub fn swagger_document(deployment: &str, scorer: &dyn Scorer) -> Value {
    let inputs = scorer.inputs();
    let outputs = scorer.outputs();
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
    if let Some(sample) = scorer.sample_input() {
        input_schema["example"] = sample.clone();
    }
    json!({
        "swagger": "2.0",
        "info": {
            "title": deployment,
            "description": format!("scoring endpoint of deployment {deployment}, serving {}", scorer.model_ref()),
            "version": scorer.model_ref(),
        },
        "schemes": ["http"],
        "consumes": ["application/json", "application/octet-stream"],
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

#[cfg(test)]
mod tests {
    use testkit::http;

    use super::SHAPE_HEADER;
    use crate::serve::{Routes, fake};

    fn raw(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[tokio::test]
    async fn a_raw_little_endian_body_is_one_tensor_shaped_by_header_or_signature() {
        let endpoint = fake::azureml_endpoint(Routes::single(fake::backend("m:1"))).await;
        let octets = ("content-type", "application/octet-stream");
        let body = raw(&[1.5, -2.0, 4.0]);
        // x: float32[?]: the open dimension is sized from the body.
        let scored = http(endpoint.addr(), "POST", "/score", &[octets], &body)
            .await
            .expect("answers");
        assert_eq!(scored.status, 200, "{}", scored.body);
        assert_eq!(scored.json(), serde_json::json!([1.5, -2.0, 4.0]));
        let shaped = http(
            endpoint.addr(),
            "POST",
            "/score",
            &[octets, (SHAPE_HEADER, "3")],
            &body,
        )
        .await
        .expect("answers");
        assert_eq!(shaped.status, 200, "{}", shaped.body);

        for (headers, body, expected) in [
            (
                vec![octets, (SHAPE_HEADER, "2")],
                body.clone(),
                "shape [2] does not hold the body's 3 elements",
            ),
            (
                vec![octets, (SHAPE_HEADER, "3,1")],
                body.clone(),
                "expected 1 dimensions",
            ),
            (
                vec![octets, (SHAPE_HEADER, "three")],
                body.clone(),
                "must be dimensions like 2,10",
            ),
            (
                vec![octets],
                vec![0u8; 6],
                "6 bytes is not a whole number of float32 elements",
            ),
        ] {
            let refused = http(endpoint.addr(), "POST", "/score", &headers, &body)
                .await
                .expect("answers");
            assert_eq!(refused.status, 400, "{}", refused.body);
            let message = refused.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(message.contains(expected), "{message}");
        }
        let text = http(
            endpoint.addr(),
            "POST",
            "/score",
            &[("content-type", "text/plain")],
            b"1",
        )
        .await
        .expect("answers");
        assert_eq!(text.status, 415);
        endpoint.stop().await;
    }
}
