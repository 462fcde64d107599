//! Each operator of the OpenCL runtime against tract, on one-node ONNX graphs over odd shapes
//! (sizes off the GEMM tiles, groups, strides, padding, dilations, broadcasting): the outputs
//! must agree within the tolerance below, and the node must have run on the device. Each runs
//! twice: with tensors stored in single and in half precision (`opencl_precision: fp16`).
#![cfg(feature = "opencl")]

mod support;

use edgeship_runtime::opencl::Engine;
use support::{compare, engines_or_skip, float, floats, int, ints, single_op, tensor, tolerance};
use tract_onnx::prelude::*;

/// Largest difference accepted, relative to the largest output magnitude: single-precision
/// sums of at most a few hundred terms, reordered.
const TOLERANCE: f32 = 1e-5;

/// Runs a one-node graph on both and checks the outputs and that `op` ran on the device
/// (`Conv|EinSum`: either; tract turns a 1×1 convolution into a product).
fn check(engine: &Engine, case: &str, model: InferenceModel, inputs: Vec<Tensor>, op: &str) {
    let (difference, placement) = compare(engine, &model, inputs);
    let precision = engine.precision;
    println!("{case} ({precision}): {difference:?}");
    assert!(
        difference.relative <= tolerance(engine, TOLERANCE),
        "{case} ({precision}): off by {difference:?}"
    );
    assert!(
        op.split('|').any(|op| placement.on_device.contains_key(op)),
        "{case}: {placement:?}"
    );
    assert!(placement.on_cpu.is_empty(), "{case}: {placement:?}");
}

#[test]
fn convolutions_with_groups_strides_padding_and_dilations() {
    for engine in engines_or_skip("convolutions") {
        // (input NCHW, weights OIHW, group, strides, pads, dilations)
        type Case = (
            &'static [usize],
            &'static [usize],
            i64,
            [i64; 2],
            [i64; 4],
            [i64; 2],
        );
        let cases: [Case; 5] = [
            (
                &[2, 4, 9, 7],
                &[6, 2, 3, 3],
                2,
                [2, 1],
                [1, 0, 2, 1],
                [1, 2],
            ),
            (
                &[1, 5, 6, 6],
                &[3, 5, 1, 1],
                1,
                [1, 1],
                [0, 0, 0, 0],
                [1, 1],
            ),
            (
                &[1, 6, 11, 5],
                &[6, 1, 3, 3],
                6,
                [1, 1],
                [1, 1, 1, 1],
                [1, 1],
            ),
            (
                &[1, 3, 17, 17],
                &[33, 3, 7, 7],
                1,
                [2, 2],
                [3, 3, 3, 3],
                [1, 1],
            ),
            (
                &[3, 2, 5, 4],
                &[1, 2, 2, 2],
                1,
                [1, 1],
                [0, 0, 0, 0],
                [1, 1],
            ),
        ];
        for (i, (x, w, group, strides, pads, dilations)) in cases.into_iter().enumerate() {
            let weights = floats(w.iter().product(), 20 + i as u64, (-0.5, 0.5));
            let bias = floats(w[0], 40 + i as u64, (-1.0, 1.0));
            let model = single_op(
                "Conv",
                &[("x", x)],
                &[("w", w, weights), ("b", &[w[0]], bias)],
                vec![
                    int("group", group),
                    ints("strides", &strides),
                    ints("pads", &pads),
                    ints("dilations", &dilations),
                ],
            );
            let input = tensor(x, floats(x.iter().product(), i as u64, (-1.0, 1.0)));
            check(
                &engine,
                &format!("conv {i}"),
                model,
                vec![input],
                "Conv|EinSum",
            );
        }
    }
}

#[test]
fn pooling_max_average_and_global() {
    for engine in engines_or_skip("pooling") {
        let x: &[usize] = &[2, 3, 7, 9];
        let input = || tensor(x, floats(x.iter().product(), 3, (-2.0, 2.0)));
        let window = || {
            vec![
                ints("kernel_shape", &[3, 2]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 0]),
            ]
        };
        check(
            &engine,
            "max pool",
            single_op("MaxPool", &[("x", x)], &[], window()),
            vec![input()],
            "MaxPool",
        );
        for include_pad in [0, 1] {
            let mut attributes = window();
            attributes.push(int("count_include_pad", include_pad));
            check(
                &engine,
                &format!("average pool, count_include_pad={include_pad}"),
                single_op("AveragePool", &[("x", x)], &[], attributes),
                vec![input()],
                "SumPool",
            );
        }
        let (difference, placement) = compare(
            &engine,
            &single_op("GlobalAveragePool", &[("x", x)], &[], vec![]),
            vec![input()],
        );
        assert!(
            difference.relative <= tolerance(&engine, TOLERANCE),
            "global average: {difference:?}"
        );
        assert!(placement.on_cpu.is_empty(), "{placement:?}");
    }
}

#[test]
fn matrix_products_plain_transposed_batched_and_with_bias() {
    for engine in engines_or_skip("matrix products") {
        // Gemm with B transposed and a bias: a dense layer as exported by most frameworks.
        let model = single_op(
            "Gemm",
            &[("a", &[3, 5])],
            &[
                ("b", &[4, 5], floats(20, 1, (-1.0, 1.0))),
                ("c", &[4], floats(4, 2, (-1.0, 1.0))),
            ],
            vec![int("transB", 1)],
        );
        let (difference, placement) = compare(
            &engine,
            &model,
            vec![tensor(&[3, 5], floats(15, 3, (-1.0, 1.0)))],
        );
        assert!(
            difference.relative <= tolerance(&engine, TOLERANCE),
            "gemm: {difference:?}"
        );
        assert!(placement.on_cpu.is_empty(), "{placement:?}");
        // A batch of matrices times constant weights.
        let model = single_op(
            "MatMul",
            &[("a", &[2, 3, 37])],
            &[("b", &[37, 70], floats(37 * 70, 4, (-1.0, 1.0)))],
            vec![],
        );
        check(
            &engine,
            "batched matmul",
            model,
            vec![tensor(&[2, 3, 37], floats(222, 5, (-1.0, 1.0)))],
            "EinSum",
        );
        // Two run-time operands, batched.
        let model = single_op(
            "MatMul",
            &[("a", &[2, 3, 5]), ("b", &[2, 5, 4])],
            &[],
            vec![],
        );
        check(
            &engine,
            "two operands",
            model,
            vec![
                tensor(&[2, 3, 5], floats(30, 6, (-1.0, 1.0))),
                tensor(&[2, 5, 4], floats(40, 7, (-1.0, 1.0))),
            ],
            "EinSum",
        );
    }
}

#[test]
fn element_wise_operators_broadcast() {
    for engine in engines_or_skip("element-wise") {
        // tract divides by multiplying with the reciprocal.
        for (op, node) in [
            ("Add", "Add"),
            ("Sub", "Sub"),
            ("Mul", "Mul"),
            ("Div", "Mul"),
            ("Max", "Max"),
            ("Min", "Min"),
        ] {
            let model = single_op(op, &[("a", &[2, 3, 4]), ("b", &[3, 1])], &[], vec![]);
            check(
                &engine,
                op,
                model,
                vec![
                    tensor(&[2, 3, 4], floats(24, 8, (-2.0, 2.0))),
                    tensor(&[3, 1], floats(3, 9, (0.5, 2.0))),
                ],
                node,
            );
        }
        let model = single_op("Mul", &[("a", &[2, 1, 4]), ("b", &[1, 3, 1])], &[], vec![]);
        check(
            &engine,
            "both broadcast",
            model,
            vec![
                tensor(&[2, 1, 4], floats(8, 10, (-2.0, 2.0))),
                tensor(&[1, 3, 1], floats(3, 11, (-2.0, 2.0))),
            ],
            "Mul",
        );
        for (op, node) in [
            ("Sigmoid", "Sigmoid"),
            ("Tanh", "Tanh"),
            ("Exp", "Exp"),
            ("Abs", "Abs"),
        ] {
            let model = single_op(op, &[("x", &[3, 7])], &[], vec![]);
            check(
                &engine,
                op,
                model,
                vec![tensor(&[3, 7], floats(21, 12, (-3.0, 3.0)))],
                node,
            );
        }
        // Relu becomes a maximum with zero.
        let model = single_op("Relu", &[("x", &[3, 7])], &[], vec![]);
        let (difference, placement) = compare(
            &engine,
            &model,
            vec![tensor(&[3, 7], floats(21, 13, (-3.0, 3.0)))],
        );
        assert!(
            difference.relative <= tolerance(&engine, 0.0),
            "{difference:?}"
        );
        assert!(placement.on_cpu.is_empty(), "{placement:?}");
    }
}

#[test]
fn softmax_concat_transpose_and_reshape() {
    for engine in engines_or_skip("softmax and shapes") {
        for op in ["Softmax", "LogSoftmax"] {
            let model = single_op(op, &[("x", &[2, 5, 3])], &[], vec![int("axis", 1)]);
            let (difference, placement) = compare(
                &engine,
                &model,
                vec![tensor(&[2, 5, 3], floats(30, 14, (-4.0, 4.0)))],
            );
            assert!(
                difference.relative <= tolerance(&engine, TOLERANCE),
                "{op}: {difference:?}"
            );
            assert!(placement.on_cpu.is_empty(), "{op}: {placement:?}");
        }
        let model = single_op(
            "Concat",
            &[("a", &[1, 2, 3, 3]), ("b", &[1, 4, 3, 3])],
            &[],
            vec![int("axis", 1)],
        );
        check(
            &engine,
            "concat",
            model,
            vec![
                tensor(&[1, 2, 3, 3], floats(18, 15, (-1.0, 1.0))),
                tensor(&[1, 4, 3, 3], floats(36, 16, (-1.0, 1.0))),
            ],
            "Concat",
        );
        let model = single_op(
            "Transpose",
            &[("x", &[2, 3, 4])],
            &[],
            vec![ints("perm", &[0, 2, 1])],
        );
        let (difference, placement) = compare(
            &engine,
            &model,
            vec![tensor(&[2, 3, 4], floats(24, 17, (-1.0, 1.0)))],
        );
        assert!(
            difference.relative <= tolerance(&engine, 0.0),
            "transpose: {difference:?}"
        );
        assert!(placement.on_cpu.is_empty(), "{placement:?}");
        let model = single_op("Flatten", &[("x", &[2, 3, 4])], &[], vec![int("axis", 1)]);
        let (difference, _) = compare(
            &engine,
            &model,
            vec![tensor(&[2, 3, 4], floats(24, 18, (-1.0, 1.0)))],
        );
        assert!(
            difference.relative <= tolerance(&engine, 0.0),
            "flatten: {difference:?}"
        );
        let _ = float;
    }
}
