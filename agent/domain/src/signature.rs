//! The one tensor-signature type: what a model takes and returns. The registry records it at
//! registration, desired states carry it to devices, runtimes check requests against it and
//! the scoring adapters describe it (OpenAPI, OIP metadata).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Name, element type and shape of one model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<Dim>,
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        write!(
            f,
            "{}: {}[{}]",
            self.name,
            self.element_type,
            dims.join(", ")
        )
    }
}

/// What an ONNX file takes and returns, read from the file at registration, and whether tract
/// can plan it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnnxSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub ir_version: i64,
    pub opsets: Vec<String>,
    pub producer: String,
    /// `None` when tract can plan the model; else why it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tract_incompatibility: Option<String>,
    /// Per runtime that splits a model between an accelerator and the CPU (OpenCL), which
    /// operators run where, as planned at registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<RuntimePlacement>,
}

/// Where one runtime runs a model's operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimePlacement {
    /// `opencl`.
    pub runtime: String,
    /// Per operator (as tract names it once the graph is simplified), by name.
    pub operators: Vec<OperatorPlacement>,
    /// Values copied between the accelerator and the CPU per run, between nodes.
    pub transfers: u32,
    /// Why the runtime cannot plan the model at all; `None` when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incompatibility: Option<String>,
}

/// How many nodes of one operator run on the accelerator and how many on the CPU, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorPlacement {
    pub operator: String,
    pub on_device: u32,
    pub on_cpu: u32,
    /// Why nodes of it run on the CPU; empty when none do.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_reason: String,
}

/// Element types, named as ONNX tools print them (`float32`, `int64`, …). Types no runtime
/// computes with yet (`bfloat16`, `complex64`, …) are kept by name, so a signature is never
/// lost, only refused at scoring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ElementType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    /// ONNX `string` tensors: byte strings on the wire (`BYTES` in the Open Inference Protocol).
    String,
    /// Any other type, by name.
    Other(String),
}

impl ElementType {
    /// Every type scoring carries, in the order the Open Inference Protocol lists them.
    pub const SUPPORTED: [ElementType; 13] = [
        ElementType::Bool,
        ElementType::U8,
        ElementType::U16,
        ElementType::U32,
        ElementType::U64,
        ElementType::I8,
        ElementType::I16,
        ElementType::I32,
        ElementType::I64,
        ElementType::F16,
        ElementType::F32,
        ElementType::F64,
        ElementType::String,
    ];

    pub fn name(&self) -> &str {
        match self {
            ElementType::Bool => "bool",
            ElementType::U8 => "uint8",
            ElementType::U16 => "uint16",
            ElementType::U32 => "uint32",
            ElementType::U64 => "uint64",
            ElementType::I8 => "int8",
            ElementType::I16 => "int16",
            ElementType::I32 => "int32",
            ElementType::I64 => "int64",
            ElementType::F16 => "float16",
            ElementType::F32 => "float32",
            ElementType::F64 => "float64",
            ElementType::String => "string",
            ElementType::Other(name) => name,
        }
    }

    /// The Open Inference Protocol's name (`FP32`, `INT64`, `BYTES`, …); `None` for types it
    /// has none for.
    pub fn oip_name(&self) -> Option<&'static str> {
        Some(match self {
            ElementType::Bool => "BOOL",
            ElementType::U8 => "UINT8",
            ElementType::U16 => "UINT16",
            ElementType::U32 => "UINT32",
            ElementType::U64 => "UINT64",
            ElementType::I8 => "INT8",
            ElementType::I16 => "INT16",
            ElementType::I32 => "INT32",
            ElementType::I64 => "INT64",
            ElementType::F16 => "FP16",
            ElementType::F32 => "FP32",
            ElementType::F64 => "FP64",
            ElementType::String => "BYTES",
            ElementType::Other(_) => return None,
        })
    }

    /// Reads an Open Inference Protocol datatype name.
    pub fn from_oip_name(name: &str) -> Option<ElementType> {
        // By reference: iterating the constant by value builds (and drops) all of it per call.
        Self::SUPPORTED
            .iter()
            .find(|t| t.oip_name() == Some(name))
            .cloned()
    }

    /// Bytes per element in a raw little-endian buffer; `None` for strings and unknown types.
    pub fn byte_size(&self) -> Option<usize> {
        match self {
            ElementType::Bool | ElementType::U8 | ElementType::I8 => Some(1),
            ElementType::U16 | ElementType::I16 | ElementType::F16 => Some(2),
            ElementType::U32 | ElementType::I32 | ElementType::F32 => Some(4),
            ElementType::U64 | ElementType::I64 | ElementType::F64 => Some(8),
            ElementType::String | ElementType::Other(_) => None,
        }
    }

    /// Whether scoring can carry this type.
    pub fn is_supported(&self) -> bool {
        !matches!(self, ElementType::Other(_))
    }
}

impl From<&str> for ElementType {
    fn from(name: &str) -> Self {
        Self::SUPPORTED
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| ElementType::Other(name.to_owned()))
    }
}

impl From<String> for ElementType {
    fn from(name: String) -> Self {
        ElementType::from(name.as_str())
    }
}

impl From<ElementType> for String {
    fn from(element_type: ElementType) -> Self {
        element_type.name().to_owned()
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a shape. Serialized as a number (fixed), a string (a named symbol such as
/// `batch`) or `null` (unknown), the way ONNX tools print shapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Option<DimRepr>", into = "Option<DimRepr>")]
pub enum Dim {
    Fixed(u64),
    Symbol(String),
    Unknown,
}

impl Dim {
    /// Whether any size is accepted on this axis.
    pub fn is_open(&self) -> bool {
        !matches!(self, Dim::Fixed(_))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DimRepr {
    Fixed(u64),
    Symbol(String),
}

impl From<Option<DimRepr>> for Dim {
    fn from(repr: Option<DimRepr>) -> Self {
        match repr {
            Some(DimRepr::Fixed(size)) => Dim::Fixed(size),
            Some(DimRepr::Symbol(symbol)) => Dim::Symbol(symbol),
            None => Dim::Unknown,
        }
    }
}

impl From<Dim> for Option<DimRepr> {
    fn from(dim: Dim) -> Self {
        match dim {
            Dim::Fixed(size) => Some(DimRepr::Fixed(size)),
            Dim::Symbol(symbol) => Some(DimRepr::Symbol(symbol)),
            Dim::Unknown => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(size) => write!(f, "{size}"),
            Dim::Symbol(symbol) => f.write_str(symbol),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_serialize_the_way_onnx_tools_print_them() {
        let spec = TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Symbol("batch".into()), Dim::Unknown, Dim::Fixed(3)],
        };
        let json = serde_json::to_string(&spec).expect("serialize");
        assert_eq!(
            json,
            r#"{"name":"x","element_type":"float32","shape":["batch",null,3]}"#
        );
        assert_eq!(
            serde_json::from_str::<TensorSpec>(&json).expect("parse"),
            spec
        );
        assert_eq!(spec.to_string(), "x: float32[batch, ?, 3]");
    }

    #[test]
    fn unknown_element_types_keep_their_name() {
        let brain = ElementType::from("bfloat16");
        assert_eq!(brain, ElementType::Other("bfloat16".into()));
        assert!(!brain.is_supported());
        assert_eq!(brain.oip_name(), None);
        assert_eq!(brain.to_string(), "bfloat16");
        assert!(ElementType::from("int64").is_supported());
    }

    #[test]
    fn every_supported_type_round_trips_its_names() {
        for t in ElementType::SUPPORTED {
            assert_eq!(ElementType::from(t.name()), t);
            let oip = t.oip_name().expect("every supported type has an OIP name");
            assert_eq!(ElementType::from_oip_name(oip), Some(t.clone()));
        }
        assert_eq!(ElementType::from("float16").byte_size(), Some(2));
        assert_eq!(ElementType::from_oip_name("FP8"), None);
    }
}
