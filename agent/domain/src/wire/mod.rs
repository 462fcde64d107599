//! Conversions between the device protocol's protobuf messages and the domain types. Wire →
//! domain validates and says precisely what is wrong or unsupported; domain → wire cannot fail.
//! Only the hub's and the agent's MQTT links call these.

mod job;
mod placement;
mod profile;
#[cfg(test)]
mod props;
mod report;
mod workload;

pub use profile::{profile_answer, profile_response};
pub use report::{service_state, wire_state};

use edgeship_proto::v1 as pb;

use crate::names;
use crate::signature::{Dim, ElementType, TensorSpec};

/// Why a wire message could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Well-formed, but names something this side does not know (a newer peer).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<names::InvalidName> for WireError {
    fn from(err: names::InvalidName) -> Self {
        WireError::Invalid(err.0)
    }
}

// ---- signatures ---------------------------------------------------------------------------

impl From<&TensorSpec> for pb::TensorSpec {
    fn from(spec: &TensorSpec) -> Self {
        pb::TensorSpec {
            name: spec.name.clone(),
            element_type: spec.element_type.name().to_owned(),
            shape: spec
                .shape
                .iter()
                .map(|dim| pb::Dim {
                    value: match dim {
                        Dim::Fixed(size) => Some(pb::dim::Value::Fixed(*size)),
                        Dim::Symbol(symbol) => Some(pb::dim::Value::Symbol(symbol.clone())),
                        Dim::Unknown => None,
                    },
                })
                .collect(),
        }
    }
}

impl From<pb::TensorSpec> for TensorSpec {
    fn from(spec: pb::TensorSpec) -> Self {
        TensorSpec {
            name: spec.name,
            element_type: ElementType::from(spec.element_type),
            shape: spec
                .shape
                .into_iter()
                .map(|dim| match dim.value {
                    Some(pb::dim::Value::Fixed(size)) => Dim::Fixed(size),
                    Some(pb::dim::Value::Symbol(symbol)) => Dim::Symbol(symbol),
                    None => Dim::Unknown,
                })
                .collect(),
        }
    }
}
