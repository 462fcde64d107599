//! Batch jobs on a whole agent that takes its desired state from a real broker (Mosquitto:
//! skipped with a `SKIP:` line where it is missing, a failure under `EDGESHIP_CI=1`): a job
//! over thousands of diabetes records, some of them bad, stopped part-way and resumed by a new
//! agent on the same data folder, uploads an output holding every record exactly once, in
//! order, each equal to the model's own answer; a job the hub no longer lists leaves nothing
//! behind.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeship_agent::RunningAgent;
use edgeship_agent::cache::BlobCache;
use edgeship_agent::config::{AgentConfig, RawConfig};
use edgeship_domain::{BatchJob, DesiredState, InputFormat, JobPhase, RuntimeKind};
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use edgeship_runtime::{ModelBundle, Tensor, TensorData};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use testkit::{Mosquitto, expected, fixture};

use crate::split::{fixture_model, seed};

const WAIT: Duration = Duration::from_secs(60);
const RECORDS: usize = 100_000;

/// A stand-in for the hub's upload receiver: keeps the bytes in a row, answers every piece
/// with their length, and checks the digest at the end.
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    pieces: usize,
    verified: bool,
}

async fn hub(broker_port: u16, device: &str) -> (AsyncClient, Arc<Mutex<Received>>) {
    let mut options = MqttOptions::new("edgeship-test-hub", "127.0.0.1", broker_port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let uploads = topics::device(device, DeviceTopic::UploadRequest);
    let answers = topics::device(device, DeviceTopic::UploadResponse);
    client
        .subscribe(uploads.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let received = Arc::new(Mutex::new(Received::default()));
    let state = Arc::clone(&received);
    let replier = client.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == uploads => {
                    let piece = pb::UploadChunk::decode(p.payload.as_ref()).expect("a piece");
                    let ack = {
                        let mut state = state.lock().expect("lock");
                        state.pieces += 1;
                        if piece.offset == state.bytes.len() as u64 && !piece.data.is_empty() {
                            state.bytes.extend_from_slice(&piece.data);
                        }
                        let complete = state.bytes.len() as u64 == piece.size_bytes;
                        if complete {
                            let digest = hex::encode(Sha256::digest(&state.bytes));
                            assert_eq!(digest, piece.sha256, "the output's digest");
                            state.verified = true;
                        }
                        pb::UploadAck {
                            job_id: piece.job_id,
                            sha256: piece.sha256,
                            received_bytes: state.bytes.len() as u64,
                            ..Default::default()
                        }
                    };
                    let replier = replier.clone();
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let _ = replier
                            .publish(answers, QoS::AtLeastOnce, false, ack.encode_to_vec())
                            .await;
                    });
                }
                Ok(_) => {}
                Err(err) => panic!("test hub lost the broker: {err}"),
            }
        }
    });
    (client, received)
}

async fn publish(client: &AsyncClient, device: &str, generation: u64, jobs: Vec<BatchJob>) {
    let desired = DesiredState {
        device_id: device.into(),
        generation,
        workloads: vec![],
        rejected: vec![],
        issued_at_ms: 0,
        jobs,
        rejected_jobs: vec![],
    };
    client
        .publish(
            topics::device(device, DeviceTopic::Desired),
            QoS::AtLeastOnce,
            true,
            testkit::trust::signed_desired(testkit::trust::test_director(), &desired),
        )
        .await
        .expect("publish");
}

/// `RECORDS` diabetes rows (the fixture's, scaled so records differ), every 500th broken in
/// one of two ways; returns the file's text and which records are broken.
fn records() -> (String, Vec<usize>) {
    let rows = expected("diabetes")["inputs"]
        .as_array()
        .expect("rows")
        .clone();
    let mut text = String::new();
    let mut broken = Vec::new();
    for i in 0..RECORDS {
        if i % 500 == 7 {
            broken.push(i);
            text.push_str(if i % 1000 == 7 {
                "[1, 2]\n"
            } else {
                "{\"oops\": \n"
            });
            continue;
        }
        let scale = 1.0 + (i % 97) as f64 / 100.0;
        let row: Vec<f64> = rows[i % rows.len()]
            .as_array()
            .expect("row")
            .iter()
            .map(|v| v.as_f64().expect("number") * scale)
            .collect();
        text.push_str(&json!(row).to_string());
        text.push('\n');
    }
    (text, broken)
}

fn config(device: &str, broker: &Mosquitto, dir: &std::path::Path) -> AgentConfig {
    RawConfig {
        device_id: Some(device.into()),
        broker: Some(broker.url()),
        data_dir: Some(dir.to_owned()),
        serve_host: Some(IpAddr::from([127, 0, 0, 1])),
        director_key: Some(testkit::trust::test_director().public().to_string()),
        insecure: Some(true),
        ..RawConfig::default()
    }
    .validate()
    .expect("config")
}

#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install -y mosquitto)"
)]
#[tokio::test]
async fn a_job_stopped_part_way_resumes_and_uploads_every_record_exactly_once() {
    let Some(broker) =
        Mosquitto::start("a_job_stopped_part_way_resumes_and_uploads_every_record_exactly_once")
    else {
        return;
    };
    let device = "edge-jobs";
    let dir = tempfile::tempdir().expect("temp");
    let cache = BlobCache::open(dir.path().join("blobs")).expect("cache");
    // The model and input are in the cache already, as after their download.
    let model_file = seed(
        &cache,
        &fixture("diabetes").join("model.onnx"),
        "model.onnx",
    );
    let (text, broken) = records();
    let input_path = dir.path().join("records.jsonl");
    std::fs::write(&input_path, &text).expect("input");
    let input = seed(&cache, &input_path, "input");
    let job = BatchJob {
        job_id: "score-all".into(),
        runtime: RuntimeKind::Tract,
        model: fixture_model("diabetes", 1, 0, &model_file),
        input,
        input_format: InputFormat::JsonLines,
        mini_batch: 25,
        options: Default::default(),
    };
    let (client, received) = hub(broker.port, device).await;
    publish(&client, device, 1, vec![job.clone()]).await;

    let first = RunningAgent::start(config(device, &broker, dir.path()))
        .await
        .expect("agent");
    let view = first
        .wait_for(WAIT, |v| {
            v.job("score-all").is_some_and(|j| j.records_done >= 500)
        })
        .await
        .unwrap_or_else(|v| panic!("the job makes progress: {v:#?}"));
    let status = view.job("score-all").expect("job").clone();
    assert_eq!(status.records_total, RECORDS as u64);
    first.stop().await.expect("stops");
    let progress: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("jobs/score-all/progress.json")).expect("progress saved"),
    )
    .expect("progress JSON");
    let saved_at = progress["next"]["record"].as_u64().expect("a record");
    assert!(
        (200..RECORDS as u64).contains(&saved_at),
        "stopped part-way, at {saved_at}"
    );
    let saved = received.lock().expect("lock").bytes.len();
    assert_eq!(
        saved, 0,
        "nothing is uploaded before every record is scored"
    );

    let second = RunningAgent::start(config(device, &broker, dir.path()))
        .await
        .expect("agent");
    let view = second
        .wait_for(WAIT, |v| {
            v.job("score-all")
                .is_some_and(|j| j.phase == JobPhase::Uploaded)
        })
        .await
        .unwrap_or_else(|v| panic!("the job finishes: {v:#?}"));
    let status = view.job("score-all").expect("job");
    assert_eq!(status.records_done, RECORDS as u64);
    assert_eq!(status.record_errors, broken.len() as u64);
    let output_ref = status.output.clone().expect("output");

    let received = std::mem::take(&mut *received.lock().expect("lock"));
    assert!(received.verified);
    assert_eq!(received.bytes.len() as u64, output_ref.size_bytes);
    let lines: Vec<Value> = std::str::from_utf8(&received.bytes)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let indexes: Vec<u64> = lines
        .iter()
        .map(|l| l["record"].as_u64().expect("index"))
        .collect();
    assert_eq!(
        indexes,
        (0..RECORDS as u64).collect::<Vec<_>>(),
        "every record once, in order"
    );
    // Every good record's output is the model's own answer for that row alone.
    let runtime = edgeship_runtime::by_kind(RuntimeKind::Tract).expect("tract");
    let model = runtime
        .prepare(&ModelBundle {
            entry: fixture("diabetes").join("model.onnx"),
            inputs: job.model.inputs.clone(),
            outputs: job.model.outputs.clone(),
            device: String::new(),
            precision: Default::default(),
        })
        .expect("loads");
    for (line, record) in lines.iter().zip(text.lines()) {
        let index = line["record"].as_u64().expect("index") as usize;
        if broken.contains(&index) {
            assert!(line["error"].is_string(), "record {index}: {line}");
            continue;
        }
        let row: Vec<f32> = serde_json::from_str::<Vec<f64>>(record)
            .expect("row")
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let alone = model
            .run(vec![Tensor {
                shape: vec![1, row.len()],
                data: TensorData::F32(row),
            }])
            .expect("runs");
        let TensorData::F32(want) = &alone[0].data else {
            panic!("a float output");
        };
        let got = line["output"][0].as_f64().expect("a prediction");
        let want = f64::from(want[0]);
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1.0),
            "record {index}: {got} vs {want}"
        );
    }
    let errors = lines.iter().filter(|l| l.get("error").is_some()).count();
    assert_eq!(errors, broken.len());

    // The hub lists the job no more: its files go.
    publish(&client, device, 2, vec![]).await;
    second
        .wait_for(WAIT, |v| v.applied_generation == 2 && v.jobs.is_empty())
        .await
        .unwrap_or_else(|v| panic!("the job is dropped: {v:#?}"));
    assert!(!dir.path().join("jobs/score-all").exists());
    second.stop().await.expect("stops");
}
