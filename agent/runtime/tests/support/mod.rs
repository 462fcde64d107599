//! What the OpenCL tests share: finding the devices (or skipping with one clear line), one-node
//! ONNX graphs, and comparing the device's outputs with tract's.
#![allow(dead_code)]

use std::sync::Once;

pub use edgeship_runtime::opencl::buffers::Precision;
use edgeship_runtime::opencl::buffers::pseudo_random;
pub use edgeship_runtime::opencl::graph::Placement;
use edgeship_runtime::opencl::{self, ClDevice, Engine, Programs, candidates, concrete_model};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The OpenCL devices here, or `None` after a skip line (a failure under `EDGESHIP_CI=1`).
pub fn devices_or_skip(test: &str) -> Option<Vec<ClDevice>> {
    static LIBRARY: Once = Once::new();
    // SAFETY: every test of this binary passes here before its first OpenCL call, so no
    // OpenCL code (the only C code reading the environment here) runs while it is set; the
    // standard library serialises its own environment accesses.
    #[allow(unsafe_code)]
    LIBRARY.call_once(|| unsafe { opencl::use_installed_library() });
    let found = opencl::discover();
    let why = match &found {
        Ok(devices) if !devices.is_empty() => return found.ok(),
        Ok(_) => "no OpenCL platform has a device".to_owned(),
        Err(err) => err.to_string(),
    };
    if testkit::ci() {
        panic!("{test}: OpenCL is required under EDGESHIP_CI=1: {why}");
    }
    eprintln!(
        "SKIP: {test}: {why} (apt-get install -y pocl-opencl-icd ocl-icd-libopencl1); set EDGESHIP_CI=1 to make this a failure"
    );
    None
}

/// An engine on the first OpenCL device with a small fixed tiling (tuning compiles every
/// candidate, which tests do elsewhere), or `None` after a skip line.
pub fn engine_or_skip(test: &str) -> Option<Engine> {
    let device = devices_or_skip(test)?.remove(0);
    Some(open(device, Precision::Fp32))
}

/// Engines on the first OpenCL device storing tensors in single and in half precision, or
/// none after a skip line.
pub fn engines_or_skip(test: &str) -> Vec<Engine> {
    let Some(mut devices) = devices_or_skip(test) else {
        return vec![];
    };
    let device = devices.remove(0);
    Precision::ALL
        .into_iter()
        .map(|precision| open(device.clone(), precision))
        .collect()
}

fn open(device: ClDevice, precision: Precision) -> Engine {
    let tiling = candidates(&device)
        .into_iter()
        .find(|p| p.tsm == 32 && p.tsn == 32)
        .expect("a 32×32 tiling fits every OpenCL device");
    Engine::open(device, Some(tiling), Programs::uncached(), precision).expect("open the device")
}

/// Largest difference from tract accepted, relative to the largest output magnitude, when
/// tensors are stored in half precision: inputs, weights and every intermediate result are
/// rounded to 11 significant bits (a relative 2⁻¹² each), and the sums stay in single
/// precision. A wrong kernel is off by the size of the output itself.
pub const HALF_TOLERANCE: f32 = 2e-3;

/// `single` for an engine storing floats, [`HALF_TOLERANCE`] for one storing halves.
pub fn tolerance(engine: &Engine, single: f32) -> f32 {
    match engine.precision {
        Precision::Fp32 => single,
        Precision::Fp16 => HALF_TOLERANCE,
    }
}

/// How far the device's outputs are from tract's, over every float output: the largest
/// absolute difference, and that divided by the largest magnitude tract gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    pub max_abs: f32,
    pub relative: f32,
}

/// Runs `model` with `inputs` in tract (its optimized plan) and on the device, and compares
/// the outputs (non-float outputs must be equal). Returns the difference and the placement.
pub fn compare(
    engine: &Engine,
    model: &InferenceModel,
    inputs: Vec<Tensor>,
) -> (Difference, Placement) {
    compare_typed(engine, &typed_for(model, &inputs), inputs)
}

/// `model` typed and decluttered for the shapes of `inputs`.
pub fn typed_for(model: &InferenceModel, inputs: &[Tensor]) -> TypedModel {
    let key: Vec<(DatumType, Vec<usize>)> = inputs
        .iter()
        .map(|t| (t.datum_type(), t.shape().to_vec()))
        .collect();
    concrete_model(model, &key).expect("concrete model")
}

/// As [`compare`], for a typed model with concrete shapes.
pub fn compare_typed(
    engine: &Engine,
    typed: &TypedModel,
    inputs: Vec<Tensor>,
) -> (Difference, Placement) {
    let values: TVec<TValue> = inputs.into_iter().map(IntoTValue::into_tvalue).collect();
    let expected = typed
        .clone()
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .and_then(|plan| plan.run(values.clone()))
        .expect("tract runs the model");
    let graph = engine.plan(typed).expect("plan on the device");
    let actual = engine.run(&graph, values).expect("run on the device");
    assert_eq!(expected.len(), actual.len());
    let mut difference = Difference {
        max_abs: 0.0,
        relative: 0.0,
    };
    for (e, a) in expected.iter().zip(&actual) {
        assert_eq!(e.shape(), a.shape(), "output shapes");
        if e.datum_type() != DatumType::F32 {
            assert_eq!(e, a, "non-float output");
            continue;
        }
        let e = e.to_plain_array_view::<f32>().expect("f32");
        let a = a.to_plain_array_view::<f32>().expect("f32");
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let max_abs = e
            .iter()
            .zip(a.iter())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(max_abs.is_finite(), "non-finite output");
        difference.max_abs = difference.max_abs.max(max_abs);
        difference.relative = difference.relative.max(max_abs / scale);
    }
    (difference, graph.placement.clone())
}

/// Deterministic floats in [lo, hi).
pub fn floats(len: usize, seed: u64, (lo, hi): (f32, f32)) -> Vec<f32> {
    pseudo_random(len, seed)
        .into_iter()
        .map(|v| lo + (v + 1.0) / 2.0 * (hi - lo))
        .collect()
}

pub fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::from_shape(shape, &data).expect("tensor")
}

/// A one-node ONNX graph: `op_type` over inputs `x…` (fed at run time) and initializers,
/// with attributes, producing `y`.
pub fn single_op(
    op_type: &str,
    inputs: &[(&str, &[usize])],
    initializers: &[(&str, &[usize], Vec<f32>)],
    attributes: Vec<pb::AttributeProto>,
) -> InferenceModel {
    let value = |name: &str, shape: Option<&[usize]>| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: shape.map(|dims| pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                                d as i64,
                            )),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let proto = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                op_type: op_type.into(),
                input: inputs
                    .iter()
                    .map(|i| i.0)
                    .chain(initializers.iter().map(|i| i.0))
                    .map(str::to_owned)
                    .collect(),
                output: vec!["y".into()],
                attribute: attributes,
                ..Default::default()
            }],
            initializer: initializers
                .iter()
                .map(|(name, shape, data)| pb::TensorProto {
                    name: (*name).into(),
                    dims: shape.iter().map(|&d| d as i64).collect(),
                    data_type: pb::tensor_proto::DataType::Float as i32,
                    float_data: data.clone(),
                    ..Default::default()
                })
                .collect(),
            input: inputs
                .iter()
                .map(|(name, shape)| value(name, Some(shape)))
                .collect(),
            output: vec![value("y", None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    onnx()
        .model_for_proto_model(&proto)
        .expect("a valid one-node model")
}

pub fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub fn float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}
