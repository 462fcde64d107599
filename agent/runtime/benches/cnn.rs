//! Image-classifier latency: squeezenet and resnet50 (the `onnx` wheel's "light" graphs, with
//! the batch axis opened) at batch 1 and 32, in tract on the CPU (one thread) and in the
//! OpenCL runtime on every OpenCL device, in one run. Times are whole runs as the agent makes
//! them: inputs copied to the device, the graph, outputs copied back.
//!
//! `cargo bench -p edgeship-runtime --features opencl --bench cnn` (or `just bench-cnn`).
//! Settings: `EDGESHIP_CNN_MODELS` (default `squeezenet,resnet50`), `EDGESHIP_CNN_BATCHES`
//! (`1,32`), `EDGESHIP_BENCH_ROUNDS` (timed runs per figure, default 5: median and worst),
//! `EDGESHIP_OPENCL_DEVICE` (only devices whose name contains it), `EDGESHIP_CNN_TRACT=0`
//! (skip tract), `EDGESHIP_CNN_PRECISIONS` (how the OpenCL runtime stores tensors, default
//! `fp32,fp16`), `EDGESHIP_CNN_JSON` (also write one JSON object per figure to this file).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use edgeship_runtime::opencl::buffers::{Precision, pseudo_random};
use edgeship_runtime::opencl::{self, Engine, Programs, concrete_model};
use tract_onnx::pb;
use tract_onnx::prelude::*;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    setting(name, default)
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The light model `name` with its first input and output axis opened, and a reshape to a
/// fixed batch of 1 (resnet50's before its dense layer) made to follow the batch.
fn open_batch(name: &str) -> TractResult<InferenceModel> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/fixtures/light")
        .join(format!("light_{name}.onnx"));
    let mut proto = onnx().proto_model_for_path(&path)?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| TractError::msg("no graph"))?;
    let open = |value: &mut pb::ValueInfoProto| {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            value.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.first_mut())
        {
            dim.value = Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                "N".into(),
            ));
        }
    };
    graph.input.iter_mut().for_each(open);
    graph.output.iter_mut().for_each(open);
    let reshape_shapes: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Reshape")
        .filter_map(|n| n.input.get(1).cloned())
        .collect();
    for init in graph
        .initializer
        .iter_mut()
        .filter(|i| reshape_shapes.contains(&i.name))
    {
        if init.int64_data.first() == Some(&1) {
            init.int64_data[0] = -1;
        } else if init.raw_data.len() >= 8 && init.raw_data[..8] == 1i64.to_le_bytes() {
            init.raw_data[..8].copy_from_slice(&(-1i64).to_le_bytes());
        }
    }
    onnx().model_for_proto_model(&proto)
}

fn image(batch: usize) -> Tensor {
    let values: Vec<f32> = pseudo_random(batch * 3 * 224 * 224, 7)
        .into_iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    Tensor::from_shape(&[batch, 3, 224, 224], &values).expect("image")
}

/// (median, worst) in milliseconds.
fn median_worst(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

fn time(rounds: usize, mut run: impl FnMut() -> Result<(), String>) -> Result<(f64, f64), String> {
    run()?;
    run()?;
    let mut ms = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        run()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median_worst(ms))
}

struct Figure {
    model: String,
    engine: String,
    batch: usize,
    median_ms: f64,
    worst_ms: f64,
}

fn main() {
    // SAFETY: first thing in `main`, before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        opencl::use_installed_library()
    };
    let models: Vec<String> = list("EDGESHIP_CNN_MODELS", "squeezenet,resnet50");
    let batches: Vec<usize> = list("EDGESHIP_CNN_BATCHES", "1,32");
    let rounds = setting("EDGESHIP_BENCH_ROUNDS", "5")
        .parse()
        .unwrap_or(5)
        .max(1);
    let only = std::env::var("EDGESHIP_OPENCL_DEVICE").ok();
    let with_tract = setting("EDGESHIP_CNN_TRACT", "1") != "0";
    let precisions: Vec<Precision> = setting("EDGESHIP_CNN_PRECISIONS", "fp32,fp16")
        .split(',')
        .filter_map(|p| Precision::parse(p.trim()).ok())
        .collect();
    let engines: Vec<Engine> = match opencl::discover() {
        Ok(devices) => devices
            .into_iter()
            .filter(|d| {
                only.as_ref()
                    .is_none_or(|o| d.info.name.contains(o.as_str()))
            })
            .flat_map(|d| {
                // Tuned once per device: the tiling serves every precision.
                let mut tiling = None;
                let mut opened = Vec::new();
                for &precision in &precisions {
                    let label = format!("{} ({precision})", d.label());
                    let started = Instant::now();
                    match Engine::open(d.clone(), tiling, Programs::uncached(), precision) {
                        Ok(engine) => {
                            eprintln!(
                                "{label}: opened and tuned in {:.1} s: {}",
                                started.elapsed().as_secs_f64(),
                                engine.tiling
                            );
                            tiling = Some(engine.tiling);
                            opened.push(engine);
                        }
                        Err(err) => eprintln!("{label}: {err}"),
                    }
                }
                opened
            })
            .collect(),
        Err(err) => {
            eprintln!("skipped OpenCL: {err}");
            vec![]
        }
    };
    let mut figures = Vec::new();
    for name in &models {
        let model = match open_batch(name) {
            Ok(model) => model,
            Err(err) => {
                eprintln!("{name}: {err:#}");
                continue;
            }
        };
        for &batch in &batches {
            let input = image(batch);
            let key = vec![(DatumType::F32, input.shape().to_vec())];
            let typed = match concrete_model(&model, &key) {
                Ok(typed) => typed,
                Err(err) => {
                    eprintln!("{name} batch {batch}: {err:#}");
                    continue;
                }
            };
            let mut push = |engine: String, result: Result<(f64, f64), String>| match result {
                Ok((median_ms, worst_ms)) => figures.push(Figure {
                    model: name.clone(),
                    engine,
                    batch,
                    median_ms,
                    worst_ms,
                }),
                Err(err) => eprintln!("{name} batch {batch} on {engine}: {err}"),
            };
            if with_tract {
                let plan = typed
                    .clone()
                    .into_optimized()
                    .and_then(|m| m.into_runnable());
                let result = match plan {
                    Ok(plan) => time(rounds, || {
                        plan.run(tvec![input.clone().into_tvalue()])
                            .map(drop)
                            .map_err(|e| format!("{e:#}"))
                    }),
                    Err(err) => Err(format!("{err:#}")),
                };
                push("tract, CPU, one thread".into(), result);
            }
            for engine in &engines {
                let label = match engine.precision {
                    Precision::Fp32 => format!("OpenCL, {}", engine.device.label()),
                    other => format!("OpenCL {other} storage, {}", engine.device.label()),
                };
                let result = engine
                    .plan(&typed)
                    .map_err(|e| e.to_string())
                    .and_then(|graph| {
                        eprintln!("{name} batch {batch} on {label}: {:?}", graph.placement);
                        time(rounds, || {
                            engine
                                .run(&graph, tvec![input.clone().into_tvalue()])
                                .map(drop)
                                .map_err(|e| e.to_string())
                        })
                    });
                push(label, result);
            }
        }
    }
    println!("| model | engine | batch | ms per run, median | worst | images/s |");
    println!("|---|---|---|---|---|---|");
    let mut json = String::new();
    for f in &figures {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} |",
            f.model,
            f.engine,
            f.batch,
            f.median_ms,
            f.worst_ms,
            f.batch as f64 / f.median_ms * 1e3
        );
        let _ = writeln!(
            json,
            "{{\"model\":{:?},\"engine\":{:?},\"batch\":{},\"ms_median\":{:.3},\"ms_worst\":{:.3},\"rounds\":{rounds}}}",
            f.model, f.engine, f.batch, f.median_ms, f.worst_ms
        );
    }
    if let Ok(path) = std::env::var("EDGESHIP_CNN_JSON")
        && let Err(err) = std::fs::write(&path, json)
    {
        eprintln!("writing {path}: {err}");
    }
}
