//! Batch job throughput with real release processes, beside in-process tract on the same
//! records in the same run: 100,000 diabetes records (a `.npy` file and the same records as
//! JSON lines), mini-batches of 100. Figures: the device's scoring rate (from `Running` to
//! `Uploading`, as the hub saw it: parsing, inference, output lines and saved progress),
//! and `job run` end to end (the input's upload, its transfer to the device, scoring, the
//! output's upload to the hub and its download), each in records/s and as a share of tract
//! alone (the model run on tensors already in memory, no parsing and no output).
//!
//! Run with `just bench`, or `cargo build --release --bins && cargo bench -p
//! edgeship-firmware-tests --bench jobs`.

use std::path::Path;
use std::time::{Duration, Instant};

use edgeship_domain::RuntimeKind;
use edgeship_proto::v1 as pb;
use edgeship_runtime::{ModelBundle, Runnable, Tensor, TensorData};
use serde_json::Value;
use testkit::jobs::{DIABETES_FEATURES, diabetes_npy, record_of};
use testkit::{HubProcess, TempDir, edgeship, expected, fixture, free_port, start_agent};

const RECORDS: usize = 100_000;
const MINI_BATCH: usize = 100;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn write_inputs(dir: &Path, rows: &[Value]) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut jsonl = String::new();
    for i in 0..RECORDS {
        jsonl.push_str(&serde_json::to_string(&record_of(rows, i)).expect("JSON"));
        jsonl.push('\n');
    }
    let (npy_path, jsonl_path) = (dir.join("records.npy"), dir.join("records.jsonl"));
    std::fs::write(&npy_path, diabetes_npy(RECORDS)).expect("npy");
    std::fs::write(&jsonl_path, jsonl).expect("jsonl");
    (npy_path, jsonl_path)
}

fn load_model() -> std::sync::Arc<dyn Runnable> {
    let onnx = fixture("diabetes").join("model.onnx");
    let signature = edgeship_runtime::onnx::inspect("model.onnx", &onnx).expect("signature");
    edgeship_runtime::by_kind(RuntimeKind::Tract)
        .expect("tract")
        .prepare(&ModelBundle {
            entry: onnx,
            inputs: signature.inputs,
            outputs: signature.outputs,
            device: String::new(),
            precision: Default::default(),
        })
        .expect("loads")
}

/// Seconds for tract alone over every record, mini-batch by mini-batch, tensors in memory.
fn tract_seconds(model: &dyn Runnable, rows: &[Value]) -> f64 {
    let batches: Vec<Tensor> = (0..RECORDS)
        .step_by(MINI_BATCH)
        .map(|start| {
            let end = (start + MINI_BATCH).min(RECORDS);
            let data: Vec<f32> = (start..end).flat_map(|i| record_of(rows, i)).collect();
            Tensor {
                shape: vec![end - start, DIABETES_FEATURES],
                data: TensorData::F32(data),
            }
        })
        .collect();
    let started = Instant::now();
    for batch in batches {
        let outputs = model.run(vec![batch]).expect("runs");
        std::hint::black_box(outputs);
    }
    started.elapsed().as_secs_f64()
}

/// Runs one job end to end; returns (scoring seconds as the hub saw them, end-to-end seconds).
async fn job_seconds(
    hub: &HubProcess,
    device: &str,
    name: &str,
    input: &Path,
    out: &Path,
) -> (f64, f64) {
    let started = Instant::now();
    edgeship(
        &hub.url,
        &[
            "job",
            "run",
            name,
            "--model",
            "diabetes:1",
            "--input",
            &input.to_string_lossy(),
            "--output",
            &out.to_string_lossy(),
            "--device",
            device,
            "--mini-batch",
            &MINI_BATCH.to_string(),
            "--detach",
        ],
    );
    let mut running_at = None;
    let mut scored_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let job = testkit::jobs::job(&hub.url, name).await;
        let state = job.state();
        if running_at.is_none() && state == pb::job::State::Running {
            running_at = Some(Instant::now());
        }
        if scored_at.is_none()
            && matches!(state, pb::job::State::Uploading | pb::job::State::Succeeded)
        {
            scored_at = Some(Instant::now());
        }
        if state == pb::job::State::Succeeded {
            break;
        }
        assert!(
            !matches!(state, pb::job::State::Failed | pb::job::State::Canceled),
            "{job:?}"
        );
        assert!(Instant::now() < deadline, "the job never finished: {job:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    edgeship(
        &hub.url,
        &["job", "download", name, "--output", &out.to_string_lossy()],
    );
    let total = started.elapsed().as_secs_f64();
    let scoring = match (running_at, scored_at) {
        (Some(from), Some(to)) => to.duration_since(from).as_secs_f64(),
        _ => total,
    };
    (scoring, total)
}

/// "median (worst)" of records/s, where a lower rate is worse.
fn rates(seconds: &[f64]) -> (f64, f64) {
    let mut rates: Vec<f64> = seconds.iter().map(|s| RECORDS as f64 / s).collect();
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0])
}

async fn run() -> anyhow::Result<()> {
    let dir = TempDir::new("jobs-bench");
    let rows = expected("diabetes")["inputs"]
        .as_array()
        .expect("rows")
        .clone();
    let (npy, jsonl) = write_inputs(dir.path(), &rows);
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let device = "bench-jobs";
    let _agent = start_agent(
        device,
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
    );
    testkit::images::register_diabetes_cli(&hub.url);
    testkit::wait_heard_from(&hub.url, device, 0, Duration::from_secs(60)).await;
    let model = load_model();

    let mut tract = Vec::new();
    let mut by_format: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        (".npy", Vec::new(), Vec::new()),
        ("JSON lines", Vec::new(), Vec::new()),
    ];
    // Side by side, round by round: tract alone, then a job over each format.
    for round in 0..testkit::bench_rounds() {
        tract.push(tract_seconds(model.as_ref(), &rows));
        for (format, input) in [(0, &npy), (1, &jsonl)] {
            let name = format!("bench-{round}-{format}");
            let out = dir.path().join(format!("{name}.jsonl"));
            let (scoring, total) = job_seconds(&hub, device, &name, input, &out).await;
            by_format[format].1.push(scoring);
            by_format[format].2.push(total);
        }
    }
    let (tract_rate, tract_worst) = rates(&tract);
    println!("| figure | median (worst) |");
    println!("|---|---|");
    println!(
        "| tract alone, in process, {MINI_BATCH}-record mini-batches in memory | {tract_rate:.0} records/s ({tract_worst:.0}) |"
    );
    for (format, scoring, total) in &by_format {
        let (rate, worst) = rates(scoring);
        println!(
            "| job scoring on the device, {format} ({RECORDS} records) | {rate:.0} records/s ({worst:.0}); {:.2}x tract alone |",
            rate / tract_rate
        );
        let (rate, worst) = rates(total);
        println!(
            "| `job run` end to end, {format} (upload, transfer, scoring, output back, download) | {rate:.0} records/s ({worst:.0}); {:.2}x tract alone |",
            rate / tract_rate
        );
    }
    Ok(())
}
