//! Compiled programs kept on disk and prebuilt binaries: a second start on the same device
//! compiles nothing, and binaries produced by the device's own compiler (PoCL here), shipped
//! in a model's `opencl/` folder, run a model on an engine that may not compile at all, as
//! an FPGA's must.
#![cfg(feature = "opencl")]

mod support;

use edgeship_runtime::opencl::{Engine, Programs, candidates};
use support::{Precision, compare, devices_or_skip, floats, int, ints, single_op, tensor};
use tract_onnx::prelude::*;

/// A convolution with a bias (im2col, a GEMM with a row bias) and a ReLU after it.
fn conv_model() -> (InferenceModel, Tensor) {
    let model = single_op(
        "Conv",
        &[("x", &[1, 3, 9, 9])],
        &[
            ("w", &[8, 3, 3, 3], floats(216, 1, (-0.5, 0.5))),
            ("b", &[8], floats(8, 2, (-1.0, 1.0))),
        ],
        vec![ints("pads", &[1, 1, 1, 1]), int("group", 1)],
    );
    (model, tensor(&[1, 3, 9, 9], floats(243, 3, (-1.0, 1.0))))
}

/// Opens the first device with `programs`, runs the convolution against tract, and returns
/// the engine to read its counts.
fn run_with(test: &str, programs: Programs) -> Option<Engine> {
    let device = devices_or_skip(test)?.remove(0);
    let tiling = candidates(&device)
        .into_iter()
        .find(|p| p.tsm == 32 && p.tsn == 32)
        .expect("a 32×32 tiling");
    let engine = Engine::open(device, Some(tiling), programs, Precision::Fp32).expect("open");
    let (model, input) = conv_model();
    let (difference, placement) = compare(&engine, &model, vec![input]);
    assert!(difference.relative <= 1e-5, "{difference:?}");
    assert!(placement.on_cpu.is_empty(), "{placement:?}");
    Some(engine)
}

#[test]
fn a_second_start_on_the_same_device_compiles_nothing() {
    let dir = tempfile::tempdir().expect("temp");
    let Some(first) = run_with(
        "a_second_start_compiles_nothing",
        Programs::cached(dir.path()),
    ) else {
        return;
    };
    assert!(
        first.programs.compiled() >= 2,
        "operators and one GEMM at least"
    );
    assert_eq!(first.programs.loaded(), 0);
    let kept = std::fs::read_dir(dir.path()).expect("cache").count();
    assert_eq!(kept, first.programs.compiled(), "one binary per program");
    drop(first);
    let second = run_with(
        "a_second_start_compiles_nothing",
        Programs::cached(dir.path()),
    )
    .expect("the device is still there");
    assert_eq!(second.programs.compiled(), 0);
    assert_eq!(second.programs.loaded(), kept);
    // A damaged binary is passed over and compiled again.
    for entry in std::fs::read_dir(dir.path()).expect("cache") {
        std::fs::write(entry.expect("entry").path(), b"not a program").expect("damage");
    }
    let third = run_with(
        "a_second_start_compiles_nothing",
        Programs::cached(dir.path()),
    )
    .expect("the device is still there");
    assert_eq!(third.programs.compiled(), kept);
}

#[test]
fn prebuilt_binaries_shipped_with_a_model_run_without_compiling() {
    let built = tempfile::tempdir().expect("temp");
    // Binaries made offline, by the device's own compiler, as an FPGA toolchain makes them.
    let Some(maker) = run_with("prebuilt_binaries", Programs::cached(built.path())) else {
        return;
    };
    drop(maker);
    let model_folder = tempfile::tempdir().expect("temp");
    let shipped = model_folder.path().join("opencl");
    std::fs::create_dir_all(&shipped).expect("folder");
    for entry in std::fs::read_dir(built.path()).expect("binaries") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, shipped.join(path.file_name().expect("name"))).expect("ship");
    }
    let engine = run_with(
        "prebuilt_binaries",
        Programs::default().with_prebuilt(&shipped).binaries_only(),
    )
    .expect("the device is still there");
    assert_eq!(engine.programs.compiled(), 0);
    assert!(engine.programs.loaded() >= 2);
    // Without them, an engine that may not compile says which binary it lacks.
    let device = devices_or_skip("prebuilt_binaries")
        .expect("device")
        .remove(0);
    let refused = Engine::open(
        device,
        None,
        Programs::default().binaries_only(),
        Precision::Fp32,
    )
    .expect_err("no binaries");
    assert!(
        refused.to_string().contains("no prebuilt binary"),
        "{refused}"
    );
}

#[test]
fn graphs_for_another_batch_size_share_the_weights_on_the_device() {
    let Some(device) = devices_or_skip("graphs_share_the_weights").map(|mut d| d.remove(0)) else {
        return;
    };
    let tiling = candidates(&device)
        .into_iter()
        .find(|p| p.tsm == 32 && p.tsn == 32)
        .expect("a 32×32 tiling");
    let engine =
        Engine::open(device, Some(tiling), Programs::uncached(), Precision::Fp32).expect("open");
    let (model, one) = conv_model();
    let (difference, _) = compare(&engine, &model, vec![one]);
    assert!(difference.relative <= 1e-5, "{difference:?}");
    let weights = engine.constants.uploaded();
    assert!(weights >= 2, "kernel and bias: {weights}");
    // Dynamic batching asks for other batch sizes: new graphs, the same weights.
    let three = tensor(&[3, 3, 9, 9], floats(729, 4, (-1.0, 1.0)));
    let (difference, _) = compare(&engine, &model, vec![three]);
    assert!(difference.relative <= 1e-5, "{difference:?}");
    assert_eq!(engine.constants.uploaded(), weights);
}
