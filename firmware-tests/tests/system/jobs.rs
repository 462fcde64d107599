//! Batch jobs through real processes: `edgeship job run` over 100,000 records of a `.npy`
//! file on a real agent, which is killed with SIGKILL half-way and started again; the job
//! resumes after its last saved mini-batch and the output that `edgeship job download` fetches
//! holds every record exactly once, in order, each the model's own answer.

use std::time::{Duration, Instant};

use edgeship_domain::RuntimeKind;
use edgeship_proto::v1 as pb;
use edgeship_runtime::{ModelBundle, Tensor, TensorData};
use serde_json::Value;
use testkit::images::register_diabetes_cli;
use testkit::jobs::{DIABETES_FEATURES, diabetes_npy, record_of};
use testkit::{TempDir, edgeship, eventually, expected, fixture, start_agent};

use crate::support::{hub_and_agent, now_ms, wait_heard_from};

const RECORDS: usize = 100_000;

#[tokio::test]
async fn a_job_over_100000_records_killed_half_way_writes_every_record_exactly_once() {
    let dir = TempDir::new("batch-job");
    let device = "batch-dev";
    let (hub, mut agent) = hub_and_agent(&dir, device);
    let started = now_ms();
    register_diabetes_cli(&hub.url);
    wait_heard_from(&hub.url, device, started, Duration::from_secs(60)).await;
    let rows = expected("diabetes")["inputs"]
        .as_array()
        .expect("rows")
        .clone();
    let input = dir.path().join("records.npy");
    std::fs::write(&input, diabetes_npy(RECORDS)).expect("input");
    let output = dir.path().join("scores.jsonl");
    edgeship(
        &hub.url,
        &[
            "job",
            "run",
            "score-all",
            "--model",
            "diabetes:1",
            "--input",
            &input.to_string_lossy(),
            "--output",
            &output.to_string_lossy(),
            "--device",
            device,
            "--mini-batch",
            "100",
            "--detach",
        ],
    );

    // Half-way (as the hub last heard), the agent dies without a word.
    let at_kill = eventually(Duration::from_secs(300), "the job half-way", || {
        let hub = hub.url.clone();
        async move {
            let job = testkit::jobs::job(&hub, "score-all").await;
            (job.records_done >= RECORDS as u64 / 2).then_some(job)
        }
    })
    .await;
    agent.kill_hard();
    // The device's own record of where it stood: part-way, its output not finished.
    let job_dir = dir.path().join("agent/jobs/score-all");
    let progress: Value = serde_json::from_slice(
        &std::fs::read(job_dir.join("progress.json")).expect("progress saved"),
    )
    .expect("progress JSON");
    let saved_at = progress["next"]["record"].as_u64().expect("a record");
    eprintln!(
        "killed with {} records reported and {saved_at} saved",
        at_kill.records_done
    );
    assert!(
        saved_at < RECORDS as u64 && !job_dir.join("finished.json").exists(),
        "killed before the end: {saved_at} of {RECORDS} saved"
    );
    assert_eq!(at_kill.records_total, RECORDS as u64);
    let _agent = start_agent(
        device,
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
    );
    let resumed_at = Instant::now();
    let done = eventually(Duration::from_secs(300), "the job succeeding", || {
        let hub = hub.url.clone();
        async move {
            let job = testkit::jobs::job(&hub, "score-all").await;
            assert_ne!(job.state(), pb::job::State::Failed, "{job:?}");
            (job.state() == pb::job::State::Succeeded).then_some(job)
        }
    })
    .await;
    eprintln!(
        "resumed and finished in {:.1} s",
        resumed_at.elapsed().as_secs_f64()
    );
    assert_eq!(done.records_done, RECORDS as u64);
    assert_eq!(done.record_errors, 0);

    edgeship(
        &hub.url,
        &[
            "job",
            "download",
            "score-all",
            "--output",
            &output.to_string_lossy(),
        ],
    );
    let text = std::fs::read_to_string(&output).expect("output");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let indexes: Vec<u64> = lines
        .iter()
        .map(|l| l["record"].as_u64().expect("a record index"))
        .collect();
    assert_eq!(
        indexes,
        (0..RECORDS as u64).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    // Every 97th record against the model's answer for its row alone.
    let onnx = fixture("diabetes").join("model.onnx");
    let signature = edgeship_runtime::onnx::inspect("model.onnx", &onnx).expect("signature");
    let model = edgeship_runtime::by_kind(RuntimeKind::Tract)
        .expect("tract")
        .prepare(&ModelBundle {
            entry: onnx,
            inputs: signature.inputs,
            outputs: signature.outputs,
            device: String::new(),
            precision: Default::default(),
        })
        .expect("loads");
    for i in (0..RECORDS).step_by(97) {
        let alone = model
            .run(vec![Tensor {
                shape: vec![1, DIABETES_FEATURES],
                data: TensorData::F32(record_of(&rows, i)),
            }])
            .expect("runs");
        let TensorData::F32(want) = &alone[0].data else {
            panic!("a float output");
        };
        let got = lines[i]["output"][0].as_f64().expect("a prediction");
        let want = f64::from(want[0]);
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1.0),
            "record {i}: {got} vs {want}"
        );
    }
}
