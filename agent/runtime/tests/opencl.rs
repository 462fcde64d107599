//! The OpenCL building blocks on a real OpenCL platform (PoCL on the CPU in CI): discovery,
//! every GEMM tiling against a CPU reference over shapes that fit no tile, the fused bias and
//! ReLU, and the tuning cache. Without an OpenCL platform each test prints a `SKIP:` line,
//! except under `EDGESHIP_CI=1`, where that is a failure.
#![cfg(feature = "opencl")]

mod support;

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::memory::ClMem;
use support::devices_or_skip;

use edgeship_runtime::opencl::buffers::{
    Precision, download, max_relative_error, pseudo_random, reference, scratch, stored, upload,
};
use edgeship_runtime::opencl::{
    Bias, ClError, Epilogue, Gemm, GemmParams, GemmTuning, Operand, Programs, TuneCache,
    VERIFY_TOLERANCE, candidates, tune_gemm, verification_shapes, verify, verify_tolerance,
};

#[test]
fn discovery_describes_every_device() {
    let Some(devices) = devices_or_skip("discovery_describes_every_device") else {
        return;
    };
    for device in &devices {
        let info = &device.info;
        assert!(
            !info.platform.is_empty() && !info.name.is_empty(),
            "{info:?}"
        );
        assert!(
            ["gpu", "cpu", "accelerator", "custom"].contains(&info.kind.as_str()),
            "{info:?}"
        );
        assert!(info.compute_units > 0, "{info:?}");
        assert!(info.global_memory_bytes > 0, "{info:?}");
        assert!(info.opencl_c_version.starts_with("OpenCL C "), "{info:?}");
        assert!(!info.driver_version.is_empty(), "{info:?}");
        assert!(device.local_memory_bytes > 0 && device.max_work_group_size > 0);
    }
}

/// Runs `gemm` on `m×k · k×n` (stored as its build reads them) and returns the worst
/// relative error against the reference with the build's bias and ReLU.
fn gemm_error(
    (context, queue): (&Context, &CommandQueue),
    gemm: &Gemm,
    (m, n, k): (usize, usize, usize),
) -> Result<f32, ClError> {
    let (e, precision) = (gemm.epilogue, gemm.precision);
    // The operands as the device stores them, so that only the kernel's error shows.
    let a = stored(&pseudo_random(m * k, 11), precision);
    let b = stored(&pseudo_random(k * n, 12), precision);
    let bias = stored(&pseudo_random(m.max(n), 13), precision);
    let mut expected = reference(&a, &b, m, n, k);
    for (i, value) in expected.iter_mut().enumerate() {
        match e.bias {
            Bias::None => {}
            Bias::Rows => *value += bias[i / n],
            Bias::Columns => *value += bias[i % n],
        }
        if e.relu {
            *value = value.max(0.0);
        }
    }
    let transpose = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
        (0..rows * cols)
            .map(|i| x[(i % rows) * cols + i / rows])
            .collect()
    };
    let (a_stored, a_stride) = if e.trans_a {
        (transpose(&a, m, k), m)
    } else {
        (a, k)
    };
    let (b_stored, b_stride) = if e.trans_b {
        (transpose(&b, k, n), k)
    } else {
        (b, n)
    };
    // Every operand sits after a few floats of something else, as in a buffer of several.
    let shifted = |x: &[f32]| [vec![7.0; 3], x.to_vec()].concat();
    let a_buf = upload(context, queue, &shifted(&a_stored), precision)?;
    let b_buf = upload(context, queue, &shifted(&b_stored), precision)?;
    let bias_buf = upload(context, queue, &shifted(&bias), precision)?;
    let c_buf = scratch(context, m * n + 5, precision)?;
    gemm.enqueue(
        queue,
        (m, n, k),
        Operand::new(&a_buf, 3, a_stride),
        Operand::new(&b_buf, 3, b_stride),
        (e.bias != Bias::None).then(|| Operand::new(&bias_buf, 3, 0)),
        Operand::new(&c_buf, 5, n),
    )?;
    let actual = download(queue, &c_buf, m * n + 5, precision)?;
    Ok(max_relative_error(&expected, &actual[5..]))
}

#[test]
fn tuning_times_every_tiling_and_each_matches_the_reference() {
    let Some(devices) = devices_or_skip("tuning_times_every_tiling") else {
        return;
    };
    let device = &devices[0];
    let (context, queue) = device.open().expect("open");
    let tuning = tune_gemm(&context, &queue, device, 64, &Programs::uncached()).expect("tune");
    // Tuning checks each tiling on `verification_shapes` (odd sizes, single rows, exact
    // multiples) and keeps only those within the tolerance: all of them must be kept.
    assert!(tuning.rejected.is_empty(), "{:#?}", tuning.rejected);
    assert_eq!(tuning.tried.len(), candidates(device).len());
    let fastest = tuning.tried.iter().map(|t| t.1).fold(0.0, f64::max);
    assert_eq!(tuning.gflops, fastest);
    let gemm = Gemm::build(
        &context,
        device,
        tuning.params,
        Epilogue::default(),
        Precision::Fp32,
        &Programs::uncached(),
    )
    .expect("build");
    for shape in verification_shapes(&tuning.params) {
        let error = gemm_error((&context, &queue), &gemm, shape).expect("gemm");
        println!("{} {shape:?}: max relative error {error:e}", tuning.params);
        assert!(error <= VERIFY_TOLERANCE);
    }
}

#[test]
fn transposed_operands_offsets_biases_and_relu_are_built_in() {
    let Some(devices) = devices_or_skip("transposed_operands_offsets_biases_and_relu") else {
        return;
    };
    let device = &devices[0];
    let (context, queue) = device.open().expect("open");
    let params = candidates(device)[0];
    let mut builds = Vec::new();
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            for (bias, relu) in [
                (Bias::None, false),
                (Bias::Rows, false),
                (Bias::Columns, true),
            ] {
                let epilogue = Epilogue {
                    trans_a,
                    trans_b,
                    bias,
                    relu,
                };
                builds.push((epilogue, Precision::Fp32));
                // Half-precision storage changes only the loads and stores: each of them
                // once (every layout of A and B, each bias) rather than every combination,
                // since each build is a compilation (seconds on PoCL).
                if bias
                    == [Bias::None, Bias::Rows, Bias::Columns]
                        [usize::from(trans_a) + usize::from(trans_b)]
                {
                    builds.push((epilogue, Precision::Fp16));
                }
            }
        }
    }
    for (epilogue, precision) in builds {
        let programs = Programs::uncached();
        let gemm =
            Gemm::build(&context, device, params, epilogue, precision, &programs).expect("build");
        for shape in [(3, 5, 7), (params.tsm, params.tsn, params.tsk * 2)] {
            let error = gemm_error((&context, &queue), &gemm, shape).expect("gemm");
            assert!(
                error <= verify_tolerance(precision),
                "{precision} {epilogue:?} {shape:?}: off by {error:e}"
            );
        }
    }
}

#[test]
fn half_precision_storage_holds_each_value_in_two_bytes_and_rounds_to_nearest() {
    let Some(devices) = devices_or_skip("half_precision_storage") else {
        return;
    };
    let device = &devices[0];
    let (context, queue) = device.open().expect("open");
    // Exact in half: small integers, powers of two, the largest finite half. Rounded: 1/3,
    // and 65519 (just under the midpoint to 65536, so it rounds down to 65504).
    let values = [0.0, -2.0, 1024.0, 0.5, 65504.0, 1.0 / 3.0, 65519.0, -0.0];
    let buffer = upload(&context, &queue, &values, Precision::Fp16).expect("upload");
    assert_eq!(buffer.size().expect("size"), values.len() * 2);
    let back = download(&queue, &buffer, values.len(), Precision::Fp16).expect("download");
    assert_eq!(back, stored(&values, Precision::Fp16));
    assert_eq!(back[..5], values[..5]);
    assert_eq!(back[6], 65504.0);
    assert!((back[5] - 1.0 / 3.0).abs() < 1e-3 && back[5] != 1.0 / 3.0);
    // The smallest and the largest tiling that fit the device compute correctly on
    // half-precision storage, the kernel's rounding of its results included (every tiling
    // shares the loads and stores; each build is seconds of compiling on PoCL).
    let fitting = candidates(device);
    for params in [fitting[0], fitting[fitting.len() - 1]] {
        let gemm = Gemm::build(
            &context,
            device,
            params,
            Epilogue::default(),
            Precision::Fp16,
            &Programs::uncached(),
        )
        .expect("build");
        verify(&context, &queue, &gemm).expect("half-precision GEMM");
    }
}

#[test]
fn mismatched_arguments_are_refused_with_the_reason() {
    let Some(devices) = devices_or_skip("mismatched_arguments_are_refused_with_the_reason") else {
        return;
    };
    let device = &devices[0];
    let (context, queue) = device.open().expect("open");
    let params = candidates(device)[0];
    let gemm = Gemm::build(
        &context,
        device,
        params,
        Epilogue::default(),
        Precision::Fp32,
        &Programs::uncached(),
    )
    .expect("build");
    let buffer = scratch(&context, 64, Precision::Fp32).expect("buffer");
    let short_rows = gemm
        .enqueue(
            &queue,
            (4, 4, 8),
            Operand::new(&buffer, 0, 4),
            Operand::new(&buffer, 0, 4),
            None,
            Operand::new(&buffer, 0, 4),
        )
        .expect_err("lda < k");
    assert!(
        short_rows.to_string().contains("shorter than the rows"),
        "{short_rows}"
    );
    let stray_bias = gemm
        .enqueue(
            &queue,
            (4, 4, 4),
            Operand::new(&buffer, 0, 4),
            Operand::new(&buffer, 0, 4),
            Some(Operand::new(&buffer, 0, 0)),
            Operand::new(&buffer, 0, 4),
        )
        .expect_err("bias without a bias build");
    assert!(stray_bias.to_string().contains("bias"), "{stray_bias}");
    let misfit = GemmParams { tsm: 48, ..params };
    let refused = Gemm::build(
        &context,
        device,
        misfit,
        Epilogue::default(),
        Precision::Fp32,
        &Programs::uncached(),
    )
    .expect_err("48");
    assert!(refused.to_string().contains("tsm=48"), "{refused}");
}

#[test]
fn a_tuning_is_kept_per_device_and_a_damaged_file_means_tune_again() {
    let Some(devices) = devices_or_skip("a_tuning_is_kept_per_device") else {
        return;
    };
    let device = &devices[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = TuneCache::new(dir.path());
    assert_eq!(cache.load(device), None);
    let params = candidates(device)[0];
    let tuning = GemmTuning {
        params,
        gflops: 12.5,
        tried: vec![(params, 12.5)],
        rejected: vec![],
    };
    cache.store(device, &tuning).expect("store");
    assert_eq!(cache.load(device), Some(params));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one file, no temporary left: {files:?}");
    std::fs::write(&files[0], "tsm=banana\n").expect("damage");
    assert_eq!(cache.load(device), None);
}
