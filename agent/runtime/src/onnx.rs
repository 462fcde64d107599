//! Reads an ONNX file with tract-onnx for the registry: rejects what is not ONNX, extracts the
//! signature (names, element types, shapes with symbolic dimensions) and checks that tract can
//! plan it, with the very code a device uses to load it.

use std::collections::HashSet;
use std::path::Path;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::pb::{ModelProto, ValueInfoProto, type_proto};
use tract_onnx::prelude::*;

use edgeship_domain::{Dim, ElementType, OnnxSignature, RuntimePlacement, TensorSpec};

/// Why a file declared as ONNX was rejected; `path` is the file's path inside the model.
#[derive(Debug, thiserror::Error)]
#[error("{path} is not a valid ONNX model: {cause}")]
pub struct InvalidOnnx {
    pub path: String,
    pub cause: String,
}

/// Inspects `file` (stored on disk at `location`; other files of the model sit beside it with
/// their layout, so external tensor data resolves).
pub fn inspect(path: &str, location: &Path) -> Result<OnnxSignature, InvalidOnnx> {
    let invalid = |cause: String| InvalidOnnx {
        path: path.to_owned(),
        cause,
    };
    let onnx = onnx();
    let proto = onnx
        .proto_model_for_path(location)
        .map_err(|err| invalid(format!("cannot decode the protobuf ({})", root_cause(&err))))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| invalid("the file has no graph".to_owned()))?;
    if graph.node.is_empty() && graph.output.is_empty() {
        return Err(invalid("the graph is empty".to_owned()));
    }
    if proto.opset_import.is_empty() {
        return Err(invalid("the model imports no operator set".to_owned()));
    }
    // Old exporters list initializers among the inputs; they are weights, not inputs.
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|input| !initializers.contains(input.name.as_str()))
        .map(tensor_spec)
        .collect();
    let outputs = graph.output.iter().map(tensor_spec).collect();

    // Parsing into tract's graph is what proves the file is a model and not just protobuf
    // that happens to decode; a failure to *plan* it only means tract cannot run it.
    let model = onnx
        .model_for_path(location)
        .map_err(|err| invalid(root_cause(&err)))?;
    let placements = runtime_placements(&model);
    let tract_incompatibility = plan_with_symbolic_dims(model).err();

    Ok(OnnxSignature {
        inputs,
        outputs,
        ir_version: proto.ir_version,
        opsets: opsets(&proto),
        producer: format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_owned(),
        tract_incompatibility,
        placements,
    })
}

/// Which operators the OpenCL runtime would run on the device and which in tract, planned
/// without a device for a batch of one (open dimensions taken as 1), as devices plan it.
#[cfg(feature = "opencl")]
fn runtime_placements(model: &InferenceModel) -> Vec<RuntimePlacement> {
    use tract_onnx::tract_hir::infer::Factoid;
    let planned = (|| -> Result<crate::opencl::graph::Placement, String> {
        let mut inputs = Vec::new();
        for index in 0..model.inputs.len() {
            let fact = model.input_fact(index).map_err(|e| root_cause(&e))?;
            let datum_type = fact
                .datum_type
                .concretize()
                .ok_or("an input of unknown element type")?;
            let shape: Vec<usize> = fact
                .shape
                .dims()
                .map(|d| {
                    d.concretize()
                        .and_then(|d| d.to_i64().ok())
                        .map_or(1, |d| d.max(1) as usize)
                })
                .collect();
            inputs.push((datum_type, shape));
        }
        let typed = crate::opencl::concrete_model(model, &inputs).map_err(|e| root_cause(&e))?;
        crate::opencl::graph::placement_without_device(&typed).map_err(|e| e.to_string())
    })();
    let placement = match planned {
        Ok(placement) => placement,
        Err(why) => {
            return vec![RuntimePlacement {
                runtime: "opencl".into(),
                operators: vec![],
                transfers: 0,
                incompatibility: Some(why),
            }];
        }
    };
    let mut operators: std::collections::BTreeMap<String, edgeship_domain::OperatorPlacement> =
        Default::default();
    for (name, count) in &placement.on_device {
        operators
            .entry(name.clone())
            .or_insert_with(|| empty_placement(name))
            .on_device = *count as u32;
    }
    for (name, (count, why)) in &placement.on_cpu {
        let entry = operators
            .entry(name.clone())
            .or_insert_with(|| empty_placement(name));
        entry.on_cpu = *count as u32;
        entry.cpu_reason = why.clone();
    }
    vec![RuntimePlacement {
        runtime: "opencl".into(),
        operators: operators.into_values().collect(),
        transfers: placement.transfers as u32,
        incompatibility: None,
    }]
}

#[cfg(feature = "opencl")]
fn empty_placement(name: &str) -> edgeship_domain::OperatorPlacement {
    edgeship_domain::OperatorPlacement {
        operator: name.to_owned(),
        on_device: 0,
        on_cpu: 0,
        cpu_reason: String::new(),
    }
}

#[cfg(not(feature = "opencl"))]
fn runtime_placements(_: &InferenceModel) -> Vec<RuntimePlacement> {
    vec![]
}

/// Plans the model exactly as a device will (same code), so "runs in tract" means it.
fn plan_with_symbolic_dims(model: InferenceModel) -> Result<(), String> {
    crate::tract::plan_symbolic(model, &[])
        .map(drop)
        .map_err(|err| format!("{err:#}"))
}

fn root_cause(err: &TractError) -> String {
    format!("{err:#}")
}

fn opsets(proto: &ModelProto) -> Vec<String> {
    let mut opsets: Vec<String> = proto
        .opset_import
        .iter()
        .map(|opset| {
            let domain = if opset.domain.is_empty() {
                "ai.onnx"
            } else {
                &opset.domain
            };
            format!("{domain}:{}", opset.version)
        })
        .collect();
    // Some exporters repeat an import; listing it once is what a reader wants.
    opsets.sort();
    opsets.dedup();
    opsets
}

fn tensor_spec(value: &ValueInfoProto) -> TensorSpec {
    let tensor = value.r#type.as_ref().and_then(|t| {
        t.value
            .as_ref()
            .map(|type_proto::Value::TensorType(tensor)| tensor)
    });
    let Some(tensor) = tensor else {
        return TensorSpec {
            name: value.name.clone(),
            element_type: ElementType::from("non-tensor"),
            shape: Vec::new(),
        };
    };
    let shape = tensor
        .shape
        .as_ref()
        .map(|shape| {
            shape
                .dim
                .iter()
                .map(|dim| match &dim.value {
                    Some(dimension::Value::DimValue(size)) if *size >= 0 => {
                        Dim::Fixed(*size as u64)
                    }
                    Some(dimension::Value::DimParam(symbol)) if !symbol.is_empty() => {
                        Dim::Symbol(symbol.clone())
                    }
                    _ => Dim::Unknown,
                })
                .collect()
        })
        .unwrap_or_default();
    TensorSpec {
        name: value.name.clone(),
        element_type: ElementType::from(element_type_name(tensor.elem_type)),
        shape,
    }
}

fn element_type_name(code: i32) -> String {
    let name = match DataType::try_from(code) {
        Ok(DataType::Float) => "float32",
        Ok(DataType::Double) => "float64",
        Ok(DataType::Float16) => "float16",
        Ok(DataType::Bfloat16) => "bfloat16",
        Ok(DataType::Int8) => "int8",
        Ok(DataType::Int16) => "int16",
        Ok(DataType::Int32) => "int32",
        Ok(DataType::Int64) => "int64",
        Ok(DataType::Uint8) => "uint8",
        Ok(DataType::Uint16) => "uint16",
        Ok(DataType::Uint32) => "uint32",
        Ok(DataType::Uint64) => "uint64",
        Ok(DataType::Bool) => "bool",
        Ok(DataType::String) => "string",
        Ok(DataType::Complex64) => "complex64",
        Ok(DataType::Complex128) => "complex128",
        _ => return format!("onnx-type-{code}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        testkit::fixture(name).join("model.onnx")
    }

    #[test]
    fn diabetes_signature_has_a_symbolic_batch() {
        let signature = inspect("model.onnx", &fixture("diabetes")).expect("valid onnx");
        assert_eq!(signature.inputs.len(), 1);
        assert_eq!(signature.inputs[0].to_string(), "data: float32[?, 10]");
        assert_eq!(signature.outputs[0].to_string(), "variable: float32[?, 1]");
        assert_eq!(signature.tract_incompatibility, None);
        assert!(signature.opsets.contains(&"ai.onnx.ml:1".to_owned()));
    }

    #[test]
    fn digits_signature_lists_both_outputs() {
        let signature = inspect("model.onnx", &fixture("digits")).expect("valid onnx");
        let outputs: Vec<String> = signature.outputs.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            outputs,
            ["label: int64[?]", "probabilities: float32[?, 10]"]
        );
        assert_eq!(signature.tract_incompatibility, None);
    }

    #[cfg(feature = "opencl")]
    #[test]
    fn the_opencl_placement_names_what_runs_in_tract_and_why() {
        let signature = inspect("model.onnx", &fixture("digits")).expect("valid onnx");
        let [placement] = signature.placements.as_slice() else {
            panic!("one placement: {:?}", signature.placements);
        };
        assert_eq!(placement.runtime, "opencl");
        assert_eq!(placement.incompatibility, None);
        let of = |name: &str| placement.operators.iter().find(|o| o.operator == name);
        let einsum = of("EinSum").expect("the dense layers");
        assert_eq!((einsum.on_device, einsum.on_cpu), (2, 0));
        let cast = of("Cast").expect("the label's cast");
        assert_eq!(cast.on_device, 0);
        assert_eq!(cast.cpu_reason, "not single-precision floats");
        assert!(placement.transfers >= 1);
        // Without a device (the hub has none): planning needs no OpenCL library.
        let diabetes = inspect("model.onnx", &fixture("diabetes")).expect("valid onnx");
        assert!(
            diabetes.placements[0]
                .operators
                .iter()
                .all(|o| o.on_cpu == 0)
        );
    }

    #[test]
    fn text_is_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, "this is not a model").expect("write");
        let err = inspect("nested/model.onnx", &path).expect_err("not onnx");
        assert!(
            err.to_string()
                .starts_with("nested/model.onnx is not a valid ONNX model"),
            "{err}"
        );
    }
}
