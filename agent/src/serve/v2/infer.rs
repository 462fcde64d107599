//! The Open Inference Protocol's request semantics, shared by its REST and gRPC adapters:
//! which model and version a request names, how its named inputs map onto the model's
//! signature, and which outputs go back. The adapters only decode and encode tensors.

use std::sync::Arc;

use edgeship_domain::{Dim, ElementType, TensorSpec};
use edgeship_runtime::{RuntimeError, Tensor, TensorData};

use crate::serve::{Call, Scorer, Shared};

/// A protocol error and the class of status it maps to (HTTP status, gRPC code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Error {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the model (400, INVALID_ARGUMENT).
    BadRequest,
    /// No such model or version here (404, NOT_FOUND).
    NotFound,
    /// The endpoint is stopping (503, UNAVAILABLE).
    Unavailable,
    /// The body is over the endpoint's limit (413, RESOURCE_EXHAUSTED).
    TooLarge,
    /// The model failed (500, INTERNAL).
    Internal,
}

impl V2Error {
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BadRequest,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }
}

/// One decoded input as the request names it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// One output to return.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedOutput {
    pub name: String,
    pub tensor: Tensor,
}

/// The model id and version of a `model_ref` (`id:version`).
pub fn split_ref(model_ref: &str) -> (&str, &str) {
    model_ref.rsplit_once(':').unwrap_or((model_ref, ""))
}

/// Routes a request for model `name` (and `version`, when given) on this endpoint. Without a
/// version the endpoint's own routing (a traffic split, sticky by routing key) picks one.
pub fn route(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
    routing_key: Option<&[u8]>,
) -> Result<Call, V2Error> {
    if !shared.is_ready() {
        return Err(V2Error {
            kind: ErrorKind::Unavailable,
            message: "the endpoint is shutting down".into(),
        });
    }
    let call = match version.filter(|v| !v.is_empty()) {
        None => shared.begin_model(Some(name), routing_key),
        Some(version) => shared.begin_version(&format!("{name}:{version}")),
    };
    // What the endpoint serves is listed only for a request that missed it.
    call.ok_or_else(|| {
        let routes = shared.routes();
        let served: Vec<&str> = routes.backends().iter().map(|b| b.model_ref()).collect();
        let what = match version.filter(|v| !v.is_empty()) {
            Some(version) if routes.models().any(|m| m == name) => {
                format!("version {version} of model {name:?}")
            }
            _ => format!("model {name:?}"),
        };
        V2Error::not_found(format!(
            "{what} is not served here; this endpoint serves {}",
            served.join(", ")
        ))
    })
}

/// The version metadata describes: the one named, else the endpoint's primary. Looking is not
/// scoring: nothing is counted.
pub fn scorer_for(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<dyn Scorer>, V2Error> {
    let call = route(shared, name, version, None)?;
    Ok(match version {
        Some(_) => Arc::clone(call.scorer()),
        None => shared
            .primary_of(name)
            .unwrap_or_else(|| Arc::clone(call.scorer())),
    })
}

/// The versions of `name` this endpoint serves.
pub fn versions_of(shared: &Shared, name: &str) -> Vec<String> {
    shared
        .routes()
        .backends()
        .iter()
        .map(|b| split_ref(b.model_ref()))
        .filter(|(id, _)| *id == name)
        .map(|(_, version)| version.to_owned())
        .collect()
}

/// A dimension as OIP metadata writes it: -1 for any size.
pub fn metadata_shape(spec: &TensorSpec) -> Vec<i64> {
    spec.shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
            Dim::Symbol(_) | Dim::Unknown => -1,
        })
        .collect()
}

/// The OIP datatype name of a signature's element type (`FP32`, …), or its ONNX name when the
/// protocol has none.
pub fn datatype(spec: &TensorSpec) -> String {
    spec.element_type
        .oip_name()
        .map_or_else(|| spec.element_type.name().to_uppercase(), str::to_owned)
}

/// The element type a request's `datatype` names, checked against what the model takes.
pub fn input_type(
    spec: Option<&TensorSpec>,
    name: &str,
    datatype: &str,
) -> Result<ElementType, V2Error> {
    let element_type = ElementType::from_oip_name(datatype).ok_or_else(|| {
        V2Error::bad(format!(
            "input {name:?}: unknown datatype {datatype:?} (use BOOL, UINT8…UINT64, INT8…INT64, FP16, FP32, FP64 or BYTES)"
        ))
    })?;
    if let Some(spec) = spec
        && spec.element_type != element_type
    {
        return Err(V2Error::bad(format!(
            "input {name:?}: the model takes {}, the request sent {datatype}",
            self::datatype(spec)
        )));
    }
    Ok(element_type)
}

/// The element count a shape describes, refusing negative dimensions and overflow.
pub fn element_count(name: &str, shape: &[i64]) -> Result<(Vec<usize>, usize), V2Error> {
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            V2Error::bad(format!(
                "input {name:?}: shape {shape:?} has a negative dimension"
            ))
        })?;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| V2Error::bad(format!("input {name:?}: shape {shape:?} is too large")))?;
    Ok((dims, count))
}

/// Orders named inputs as the signature lists them, checking names and shapes.
pub fn arrange(scorer: &dyn Scorer, inputs: Vec<NamedInput>) -> Result<Vec<Tensor>, V2Error> {
    let specs = scorer.inputs();
    let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
    for input in inputs {
        let Some(index) = specs.iter().position(|s| s.name == input.name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(V2Error::bad(format!(
                "the model has no input named {:?}; its inputs are {}",
                input.name,
                names.join(", ")
            )));
        };
        let spec = &specs[index];
        if spec.element_type != input.data.element_type() {
            return Err(V2Error::bad(format!(
                "input {:?}: the model takes {}, the request sent {}",
                input.name,
                datatype(spec),
                input.data.element_type().oip_name().unwrap_or("?")
            )));
        }
        check_shape(spec, &input.shape)?;
        if slots[index].is_some() {
            return Err(V2Error::bad(format!(
                "input {:?} is given twice",
                input.name
            )));
        }
        slots[index] = Some(Tensor {
            shape: input.shape,
            data: input.data,
        });
    }
    slots
        .into_iter()
        .zip(specs)
        .map(|(slot, spec)| {
            slot.ok_or_else(|| V2Error::bad(format!("input {:?} is missing", spec.name)))
        })
        .collect()
}

fn check_shape(spec: &TensorSpec, shape: &[usize]) -> Result<(), V2Error> {
    crate::serve::json::check_shape(spec, shape).map_err(|err| V2Error::bad(err.0))
}

/// Runs the model off the async workers and keeps the requested outputs (all when `requested`
/// is empty), in the order requested.
pub async fn run(
    scorer: &Arc<dyn Scorer>,
    inputs: Vec<Tensor>,
    requested: &[String],
) -> Result<Vec<NamedOutput>, V2Error> {
    let specs = scorer.outputs();
    let mut picks = Vec::with_capacity(requested.len());
    for name in requested {
        let index = specs.iter().position(|s| &s.name == name).ok_or_else(|| {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            V2Error::bad(format!(
                "the model has no output named {name:?}; its outputs are {}",
                names.join(", ")
            ))
        })?;
        picks.push(index);
    }
    let outputs = crate::serve::run_inference(scorer, inputs)
        .await
        .map_err(|err| match err {
            RuntimeError::BadInput(why) => V2Error::bad(why),
            RuntimeError::Overloaded(why) => V2Error {
                kind: ErrorKind::Unavailable,
                message: why,
            },
            other => V2Error {
                kind: ErrorKind::Internal,
                message: other.to_string(),
            },
        })?;
    let name = |index: usize| {
        specs
            .get(index)
            .map_or_else(|| format!("output_{index}"), |s| s.name.clone())
    };
    if picks.is_empty() {
        return Ok(outputs
            .into_iter()
            .enumerate()
            .map(|(index, tensor)| NamedOutput {
                name: name(index),
                tensor,
            })
            .collect());
    }
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    picks
        .into_iter()
        .map(|index| {
            let tensor = outputs
                .get_mut(index)
                .and_then(Option::take)
                .ok_or_else(|| {
                    V2Error::bad(format!("output {:?} is requested twice", name(index)))
                })?;
            Ok(NamedOutput {
                name: name(index),
                tensor,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_counted_without_overflow() {
        assert_eq!(element_count("x", &[2, 3]), Ok((vec![2, 3], 6)));
        assert_eq!(element_count("x", &[]), Ok((vec![], 1)));
        let err = element_count("x", &[i64::MAX, i64::MAX]).expect_err("overflow");
        assert!(err.message.contains("too large"), "{}", err.message);
        let err = element_count("x", &[2, -1]).expect_err("negative");
        assert!(err.message.contains("negative"), "{}", err.message);
    }

    #[test]
    fn datatypes_are_checked_against_the_signature() {
        let spec = TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Unknown, Dim::Fixed(2)],
        };
        assert_eq!(input_type(Some(&spec), "x", "FP32"), Ok(ElementType::F32));
        let err = input_type(Some(&spec), "x", "INT64").expect_err("mismatch");
        assert!(
            err.message
                .contains("the model takes FP32, the request sent INT64")
        );
        let err = input_type(None, "x", "FLOAT").expect_err("unknown");
        assert!(err.message.contains("unknown datatype \"FLOAT\""));
        assert_eq!(metadata_shape(&spec), [-1, 2]);
        assert_eq!(datatype(&spec), "FP32");
    }
}
