//! SGEMM throughput by size: the OpenCL GEMM kernel, tuned once per device, beside tract's own
//! matrix product (an ONNX `MatMul` with constant weights) on this machine's CPU, in one run.
//!
//! `cargo bench -p edgeship-runtime --features opencl --bench sgemm` (or `just
//! bench-sgemm`). Settings: `EDGESHIP_SGEMM_SIZES` (default `256,512,1024,2048,4096`),
//! `EDGESHIP_BENCH_ROUNDS` (timed products per figure, default 5: median and worst are
//! reported), `EDGESHIP_SGEMM_CPU_MAX` (largest size run on CPUs, tract's and OpenCL CPU
//! devices', default 2048: 4096 takes minutes there), `EDGESHIP_OPENCL_DEVICE` (only devices
//! whose name contains it), `EDGESHIP_SGEMM_JSON` (also write one JSON object per figure to
//! this file).

use std::fmt::Write as _;
use std::time::Instant;

use edgeship_runtime::opencl::buffers::{Precision, pseudo_random, scratch, upload};
use edgeship_runtime::opencl::{self, ClDevice, Epilogue, Gemm, Operand, Programs, tune_gemm};
use tract_onnx::pb;
use tract_onnx::prelude::*;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn sizes() -> Vec<usize> {
    setting("EDGESHIP_SGEMM_SIZES", "256,512,1024,2048,4096")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// (median, worst) of GFLOP/s figures.
fn median_worst(mut gflops: Vec<f64>) -> (f64, f64) {
    gflops.sort_by(f64::total_cmp);
    (gflops[gflops.len() / 2], gflops[0])
}

fn gflops(n: usize, seconds: f64) -> f64 {
    2.0 * (n as f64).powi(3) / seconds / 1e9
}

struct Figure {
    engine: String,
    device: String,
    n: usize,
    median: f64,
    worst: f64,
    note: String,
}

/// tract's plan for `a[n×n] · b` with `b` a constant, as a model with weights is planned.
fn tract_matmul(n: usize) -> TractResult<Arc<TypedSimplePlan>> {
    let dims = |n: usize| pb::TensorShapeProto {
        dim: vec![
            pb::tensor_shape_proto::Dimension {
                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(n as i64)),
                ..Default::default()
            };
            2
        ],
    };
    let value = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(dims(n)),
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
                op_type: "MatMul".into(),
                input: vec!["a".into(), "b".into()],
                output: vec!["c".into()],
                ..Default::default()
            }],
            initializer: vec![pb::TensorProto {
                name: "b".into(),
                dims: vec![n as i64, n as i64],
                data_type: pb::tensor_proto::DataType::Float as i32,
                float_data: pseudo_random(n * n, 2),
                ..Default::default()
            }],
            input: vec![value("a")],
            output: vec![value("c")],
            ..Default::default()
        }),
        ..Default::default()
    };
    onnx()
        .model_for_proto_model(&proto)?
        .into_optimized()?
        .into_runnable()
}

fn bench_tract(n: usize, rounds: usize) -> TractResult<Figure> {
    let plan = tract_matmul(n)?;
    let a: Tensor = tract_ndarray::Array2::from_shape_vec((n, n), pseudo_random(n * n, 1))?.into();
    let a = a.into_tvalue();
    plan.run(tvec![a.clone()])?;
    let mut figures = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        plan.run(tvec![a.clone()])?;
        figures.push(gflops(n, start.elapsed().as_secs_f64()));
    }
    let (median, worst) = median_worst(figures);
    Ok(Figure {
        engine: "tract".into(),
        device: "CPU, one thread".into(),
        n,
        median,
        worst,
        note: String::new(),
    })
}

fn bench_opencl(
    device: &ClDevice,
    sizes: &[usize],
    cpu_max: usize,
    rounds: usize,
) -> Result<Vec<Figure>, opencl::ClError> {
    let (context, queue) = device.open()?;
    let tune_size = if device.info.kind == "cpu" { 512 } else { 2048 };
    let started = Instant::now();
    let programs = Programs::uncached();
    let tuning = tune_gemm(&context, &queue, device, tune_size, &programs)?;
    eprintln!(
        "{}: tuned in {:.1} s at {tune_size}³: {} ({:.1} GFLOP/s)",
        device.label(),
        started.elapsed().as_secs_f64(),
        tuning.params,
        tuning.gflops
    );
    for (params, g) in &tuning.tried {
        eprintln!("    {params}: {g:.1} GFLOP/s");
    }
    let mut figures = Vec::new();
    for precision in Precision::ALL {
        let gemm = Gemm::build(
            &context,
            device,
            tuning.params,
            Epilogue::default(),
            precision,
            &programs,
        )?;
        figures.extend(time_gemm(
            (&context, &queue),
            device,
            &gemm,
            sizes,
            cpu_max,
            rounds,
        )?);
    }
    Ok(figures)
}

/// GFLOP/s of `gemm` (its kernel time, from the queue's profiling) at each size.
fn time_gemm(
    (context, queue): (
        &opencl3::context::Context,
        &opencl3::command_queue::CommandQueue,
    ),
    device: &ClDevice,
    gemm: &Gemm,
    sizes: &[usize],
    cpu_max: usize,
    rounds: usize,
) -> Result<Vec<Figure>, opencl::ClError> {
    let precision = gemm.precision;
    let mut figures = Vec::new();
    for &n in sizes {
        if device.info.kind == "cpu" && n > cpu_max {
            continue;
        }
        let a = upload(context, queue, &pseudo_random(n * n, 1), precision)?;
        let b = upload(context, queue, &pseudo_random(n * n, 2), precision)?;
        let c = scratch(context, n * n, precision)?;
        let run = || -> Result<f64, opencl::ClError> {
            let event = gemm.enqueue(
                queue,
                (n, n, n),
                Operand::new(&a, 0, n),
                Operand::new(&b, 0, n),
                None,
                Operand::new(&c, 0, n),
            )?;
            event
                .wait()
                .map_err(|code| opencl::ClError::Invalid(format!("waiting: {code}")))?;
            let ns = event.profiling_command_end().unwrap_or(0)
                - event.profiling_command_start().unwrap_or(0);
            Ok(ns as f64 / 1e9)
        };
        run()?;
        let mut kernel = Vec::new();
        for _ in 0..rounds {
            kernel.push(gflops(n, run()?));
        }
        let (median, worst) = median_worst(kernel);
        figures.push(Figure {
            engine: match precision {
                Precision::Fp32 => "edgeship OpenCL".into(),
                other => format!("edgeship OpenCL, {other} storage"),
            },
            device: device.label(),
            n,
            median,
            worst,
            note: gemm.params.to_string(),
        });
    }
    Ok(figures)
}

fn main() {
    // SAFETY: first thing in `main`, before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        opencl::use_installed_library()
    };
    let sizes = sizes();
    let rounds: usize = setting("EDGESHIP_BENCH_ROUNDS", "5")
        .parse()
        .unwrap_or(5)
        .max(1);
    let cpu_max: usize = setting("EDGESHIP_SGEMM_CPU_MAX", "2048")
        .parse()
        .unwrap_or(2048);
    let only = std::env::var("EDGESHIP_OPENCL_DEVICE").ok();
    let mut figures = Vec::new();
    for &n in sizes.iter().filter(|&&n| n <= cpu_max) {
        match bench_tract(n, rounds) {
            Ok(figure) => figures.push(figure),
            Err(err) => eprintln!("tract {n}: {err:#}"),
        }
    }
    match opencl::discover() {
        Err(err) => eprintln!("skipped OpenCL: {err}"),
        Ok(devices) if devices.is_empty() => eprintln!("skipped OpenCL: no OpenCL device"),
        Ok(devices) => {
            for device in devices {
                if only
                    .as_ref()
                    .is_some_and(|o| !device.info.name.contains(o.as_str()))
                {
                    continue;
                }
                match bench_opencl(&device, &sizes, cpu_max, rounds) {
                    Ok(found) => figures.extend(found),
                    Err(err) => eprintln!("{}: {err}", device.label()),
                }
            }
        }
    }
    println!("| engine | device | n | GFLOP/s median | worst | tiling |");
    println!("|---|---|---|---|---|---|");
    let mut json = String::new();
    for f in &figures {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {} |",
            f.engine, f.device, f.n, f.median, f.worst, f.note
        );
        let _ = writeln!(
            json,
            "{{\"engine\":{:?},\"device\":{:?},\"n\":{},\"gflops_median\":{:.2},\"gflops_worst\":{:.2},\"rounds\":{rounds},\"tiling\":{:?}}}",
            f.engine, f.device, f.n, f.median, f.worst, f.note
        );
    }
    if let Ok(path) = std::env::var("EDGESHIP_SGEMM_JSON")
        && let Err(err) = std::fs::write(&path, json)
    {
        eprintln!("writing {path}: {err}");
    }
}
