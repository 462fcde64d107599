//! `/score` through a WASM entry module: the request (credentials left out) goes to the
//! module's `run`, whose `infer` calls reach the endpoint's models, and the module's answer
//! goes back as it is. The request is routed and counted like any other: `infer("")` runs the
//! version the split picked, and that version answers for it in `x-edgeship-model`.
//!
//! A module that traps (past its deadline, over its memory cap, a panic) answers 500 with the
//! reason; its instance is replaced and the endpoint keeps serving.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgeship_runtime::{RuntimeError, Tensor};
use edgeship_wasm::{EntryPool, Infer, InferFuture};

use super::azureml::{message, not_served};
use super::router::model_id;
use super::{Call, Routes, Scorer, Shared, run_inference};

/// Request headers a module never sees: the caller's credentials are the endpoint's business.
const WITHHELD: [&str; 3] = ["authorization", "cookie", "x-api-key"];

/// Response headers the module cannot set: HTTP framing is the server's, and the version
/// header is the endpoint's.
const RESERVED: [&str; 6] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    super::MODEL_HEADER,
];

/// Answers one `/score` request through `pool`, routed on `routes` by `model` and `key`.
pub async fn score(
    shared: &Shared,
    routes: Arc<Routes>,
    pool: Arc<EntryPool>,
    model: Option<&str>,
    key: Option<Vec<u8>>,
    request: Request,
) -> Response {
    let Some(backend) = routes.pick_model(model, key.as_deref()).cloned() else {
        return not_served(shared, model);
    };
    let call = Call {
        backend,
        started: Instant::now(),
    };
    let input = match module_request(shared, request).await {
        Ok(input) => input,
        Err(response) => return shared.finish(call, response),
    };
    let models: Arc<dyn Infer> = Arc::new(RoutedModels {
        routed: Arc::clone(call.scorer()),
        routes,
        key,
    });
    // The module runs on this task (it yields at every epoch tick); the models it calls run
    // where `run_inference` puts them, as for any request.
    let result = pool.lease().await.run(&input, models).await;
    let response = match result {
        Ok(answer) => http_response(answer),
        Err(why) => {
            tracing::warn!(deployment = %shared.deployment(), "{why}");
            message(StatusCode::INTERNAL_SERVER_ERROR, why)
        }
    };
    shared.finish(call, response)
}

/// The HTTP request as the module's `request` record.
async fn module_request(
    shared: &Shared,
    request: Request,
) -> Result<edgeship_wasm::Request, Response> {
    let (parts, body) = request.into_parts();
    let limit = shared.max_body_bytes();
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        message(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds the limit of {limit} bytes"),
        )
    })?;
    let text = |value: &HeaderValue| value.to_str().ok().map(str::to_owned);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(text)
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !WITHHELD.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), text(value)?)))
        .collect();
    Ok(edgeship_wasm::Request {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type,
        headers,
        body: body.to_vec(),
    })
}

/// The module's answer as an HTTP response; what HTTP cannot carry is refused with a 500
/// that names it.
fn http_response(answer: edgeship_wasm::Response) -> Response {
    let Some(status) = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
    else {
        return message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the entry module answered status {}, which HTTP cannot send",
                answer.status
            ),
        );
    };
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in answer.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(name, value);
        }
    }
    response
}

/// Runs a scorer as any request's inference runs (inline, on the blocking pool, or batched).
async fn run(scorer: &Arc<dyn Scorer>, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
    run_inference(scorer, inputs)
        .await
        .map_err(|err| match err {
            RuntimeError::BadInput(why) => format!("the model refused the input: {why}"),
            other => other.to_string(),
        })
}

/// The models as one request sees them: the routed version for `""` and for its own model,
/// the split's pick (by the same routing key) for another model.
struct RoutedModels {
    routed: Arc<dyn Scorer>,
    routes: Arc<Routes>,
    key: Option<Vec<u8>>,
}

impl Infer for RoutedModels {
    fn infer<'a>(&'a self, model: &'a str, inputs: Vec<Tensor>) -> InferFuture<'a> {
        Box::pin(async move {
            if model.is_empty() || model == model_id(self.routed.model_ref()) {
                return run(&self.routed, inputs).await;
            }
            let backend = self
                .routes
                .pick_model(Some(model), self.key.as_deref())
                .ok_or_else(|| format!("no model {model:?} behind this endpoint"))?;
            run(backend.scorer(), inputs).await
        })
    }
}

/// The models as `init` sees them: each model's first version.
#[derive(Debug)]
pub struct FirstVersions(pub Vec<Arc<dyn Scorer>>);

impl Infer for FirstVersions {
    fn infer<'a>(&'a self, model: &'a str, inputs: Vec<Tensor>) -> InferFuture<'a> {
        Box::pin(async move {
            let scorer = self
                .0
                .iter()
                .find(|s| model.is_empty() || model_id(s.model_ref()) == model)
                .ok_or_else(|| format!("no model {model:?} in this deployment"))?;
            run(scorer, inputs).await
        })
    }
}
