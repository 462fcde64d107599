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
use edgeship_runtime::RuntimeError;
use serde_json::{Value, json};

use super::json::{inputs_from_data, outputs_to_json};
use super::{Scorer, Shared};

/// The adapter's routes, merged into an endpoint's router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(health))
        .route("/score", post(score))
        .route("/swagger.json", get(swagger))
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

async fn health() -> &'static str {
    "Healthy"
}

async fn score(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let call = shared.begin(request.headers());
    let response = score_inner(&shared, call.scorer(), request).await;
    shared.finish(call, response)
}

async fn score_inner(shared: &Shared, scorer: &Arc<dyn Scorer>, request: Request) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the body as application/json (got content type {shown})"),
        );
    }
    let limit = shared.max_body_bytes();
    let declared = request
        .headers()
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
    let bytes = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large(),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(err) => {
            return message(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {err}"),
            );
        }
    };
    let inputs = match inputs_from_data(scorer.inputs(), &body) {
        Ok(inputs) => inputs,
        Err(err) => return message(StatusCode::BAD_REQUEST, err.0),
    };
    // Inference is CPU-bound: keep it off the async workers.
    let running = Arc::clone(scorer);
    let result = tokio::task::spawn_blocking(move || {
        let outputs = running.infer(inputs)?;
        Ok::<_, RuntimeError>(outputs_to_json(running.outputs(), &outputs))
    })
    .await;
    match result {
        Ok(Ok(json)) => axum::Json(json).into_response(),
        Ok(Err(RuntimeError::BadInput(why))) => message(StatusCode::BAD_REQUEST, why),
        Ok(Err(err)) => {
            tracing::warn!(deployment = %shared.deployment(), model = %scorer.model_ref(), error = %err, "scoring failed");
            message(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
        Err(err) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task failed: {err}"),
        ),
    }
}

async fn swagger(State(shared): State<Arc<Shared>>) -> Response {
    // A split's versions normally share a signature; where they do not, the document
    // describes the heaviest, the one most callers reach.
    let doc = swagger_document(shared.deployment(), shared.primary().as_ref());
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
        "consumes": ["application/json"],
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
