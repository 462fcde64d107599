//! Whole models on the OpenCL runtime against tract: the fixture models (digits ends in
//! integer operators that run in tract on the CPU: the fallback path), and three real image
//! classifiers, squeezenet, resnet50 and densenet121, from the `onnx` wheel's "light" test
//! data (`scripts/fixtures/light/`). Those make their weights with `ConstantOfShape`, so their
//! answers hardly depend on the arithmetic: each is also run with pseudo-random weights in
//! place of every convolution and dense layer's, where a wrong kernel shows. Two of them run
//! again with tensors stored in half precision (`opencl_precision: fp16`).
#![cfg(feature = "opencl")]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use edgeship_runtime::opencl::Engine;
use edgeship_runtime::opencl::buffers::pseudo_random;
use support::{
    Difference, Precision, compare, compare_typed, engine_or_skip, engines_or_skip, floats, tensor,
    typed_for,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

/// Largest difference accepted, relative to the largest output magnitude, for graphs of up
/// to 120 convolutions in single precision summed in another order than tract's.
const TOLERANCE: f32 = 1e-3;

/// The same in half-precision storage: every activation of up to 50 layers is rounded to 11
/// significant bits (2⁻¹² relative) and the rounding errors compound from layer to layer.
const HALF_TOLERANCE: f32 = 3e-2;

fn light(name: &str) -> InferenceModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/fixtures/light")
        .join(format!("light_{name}.onnx"));
    onnx().model_for_path(&path).expect("a light model")
}

fn image() -> Tensor {
    tensor(&[1, 3, 224, 224], floats(3 * 224 * 224, 99, (0.0, 1.0)))
}

/// Replaces the weights of every convolution (4-D constants) and dense layer (2-D constants
/// of more than one row and column) with pseudo-random values of a variance that keeps
/// activations in range through the network (He initialisation).
fn with_random_weights(mut model: TypedModel) -> TypedModel {
    let mut seed = 1000;
    for node in model.nodes_mut() {
        let Some(konst) = node.outputs[0].fact.konst.clone() else {
            continue;
        };
        let shape = konst.shape().to_vec();
        let fan_in: usize = match shape.len() {
            4 => shape[1..].iter().product(),
            2 if shape[0] > 1 && shape[1] > 1 => shape[1],
            _ => continue,
        };
        if konst.datum_type() != DatumType::F32 {
            continue;
        }
        seed += 1;
        let bound = (6.0 / fan_in as f32).sqrt();
        let values: Vec<f32> = pseudo_random(konst.len(), seed)
            .into_iter()
            .map(|v| v * bound)
            .collect();
        let tensor = Arc::new(Tensor::from_shape(&shape, &values).expect("weights"));
        node.op = Box::new(Const::new(tensor.clone()).expect("const"));
        node.outputs[0].fact = TypedFact::try_from(tensor).expect("fact");
    }
    model
}

fn check(case: &str, (difference, placement): (Difference, support::Placement)) {
    check_within(case, TOLERANCE, (difference, placement));
}

fn check_within(
    case: &str,
    tolerance: f32,
    (difference, placement): (Difference, support::Placement),
) {
    println!("{case}: {difference:?}, {placement:?}");
    assert!(
        difference.relative <= tolerance,
        "{case}: off by {difference:?}"
    );
}

#[test]
fn fixture_models_match_tract_with_integer_operators_on_the_cpu() {
    let Some(engine) = engine_or_skip("fixture models") else {
        return;
    };
    let fixture = |name: &str| {
        onnx()
            .model_for_path(testkit::fixture(name).join("model.onnx"))
            .expect("fixture")
    };
    let rows = tensor(&[3, 10], floats(30, 5, (-0.1, 0.1)));
    let diabetes = compare(&engine, &fixture("diabetes"), vec![rows]);
    check("diabetes", diabetes);
    let pixels = tensor(&[4, 64], floats(256, 6, (0.0, 16.0)));
    let (difference, placement) = compare(&engine, &fixture("digits"), vec![pixels]);
    check("digits", (difference, placement.clone()));
    // The label comes from integer operators (ArgMax, casts): tract runs them, fed by the
    // device's probabilities.
    assert!(!placement.on_cpu.is_empty(), "{placement:?}");
    assert!(placement.transfers > 0, "{placement:?}");
}

fn light_model(engine: &Engine, name: &str) {
    let model = light(name);
    let (difference, placement) = compare(engine, &model, vec![image()]);
    check(name, (difference, placement.clone()));
    assert!(placement.on_cpu.is_empty(), "{name}: {placement:?}");
    let typed = with_random_weights(typed_for(&model, &[image()]));
    check(
        &format!("{name} with random weights"),
        compare_typed(engine, &typed, vec![image()]),
    );
}

#[test]
fn squeezenet_matches_tract() {
    if let Some(engine) = engine_or_skip("squeezenet") {
        light_model(&engine, "squeezenet");
    }
}

#[test]
fn resnet50_matches_tract() {
    if let Some(engine) = engine_or_skip("resnet50") {
        light_model(&engine, "resnet50");
    }
}

#[test]
fn densenet121_matches_tract() {
    if let Some(engine) = engine_or_skip("densenet121") {
        light_model(&engine, "densenet121");
    }
}

/// squeezenet and resnet50 with random weights, stored in half precision: the answers stay
/// within [`HALF_TOLERANCE`] of tract's, and the weights and activations take half the
/// device memory they take in single precision.
#[test]
fn half_precision_storage_matches_tract_in_half_the_memory() {
    let engines = engines_or_skip("half precision");
    let [single, half] = engines.as_slice() else {
        return;
    };
    assert_eq!(
        (single.precision, half.precision),
        (Precision::Fp32, Precision::Fp16)
    );
    for name in ["squeezenet", "resnet50"] {
        let typed = with_random_weights(typed_for(&light(name), &[image()]));
        check_within(
            &format!("{name} with random weights, fp16"),
            HALF_TOLERANCE,
            compare_typed(half, &typed, vec![image()]),
        );
        let graphs = [
            single.plan(&typed).expect("fp32"),
            half.plan(&typed).expect("fp16"),
        ];
        println!(
            "{name}: activations {} → {} bytes",
            graphs[0].activation_bytes, graphs[1].activation_bytes
        );
        assert_eq!(graphs[1].activation_bytes * 2, graphs[0].activation_bytes);
    }
    println!(
        "weights: {} → {} bytes",
        single.constants.bytes(),
        half.constants.bytes()
    );
    // `compare_typed` planned each model once on `half`; `single` planned them above.
    assert!(half.constants.bytes() > 1 << 20);
    assert_eq!(half.constants.bytes() * 2, single.constants.bytes());
}
