//! Batch jobs through the hub: created over gRPC with a real registered model, carried to a
//! device in its retained desired state, followed through the device's reports, and finished
//! by an upload over MQTT (`uploads/req`) that survives duplicates, gaps, a wrong digest and
//! a hub restart. The device is a raw MQTT client (`jobs/device.rs`); refusals of bad jobs
//! are in `jobs/refusals.rs`, the command line in `jobs/cli.rs`.

mod cli;
mod device;
mod refusals;

use std::time::Duration;

use edgeship_hub::client::{self, JobsClient};
use edgeship_proto::topics::DeviceTopic;
use edgeship_proto::v1 as pb;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;
use device::{FakeDevice, digest, status, upload_chunk};

/// `n` records for the diabetes model (10 features each), one JSON array per line.
pub fn diabetes_lines(n: usize) -> Vec<u8> {
    let mut text = String::new();
    for i in 0..n {
        let features: Vec<String> = (0..10)
            .map(|f| format!("{:.4}", (i * 10 + f) as f32 / 1000.0))
            .collect();
        text.push_str(&format!("[{}]\n", features.join(", ")));
    }
    text.into_bytes()
}

/// An output of `n` lines of about 1 KiB each, as a device would write it.
fn output_of(n: usize) -> Vec<u8> {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "{{\"index\": {i}, \"outputs\": [{}], \"pad\": \"{}\"}}\n",
            i as f32 * 1.5,
            "x".repeat(1000)
        ));
    }
    text.into_bytes()
}

pub fn header(name: &str, device: &str, format: pb::JobInputFormat) -> pb::JobHeader {
    pb::JobHeader {
        job_id: name.to_owned(),
        model: "diabetes:1".into(),
        device_id: device.to_owned(),
        input_format: format.into(),
        ..Default::default()
    }
}

/// Sends a header (its size set to the input's, unless given) and the input in 64 KiB chunks.
pub async fn create(
    jobs: &mut JobsClient,
    mut header: pb::JobHeader,
    input: &[u8],
) -> Result<pb::Job, tonic::Status> {
    use pb::create_job_request::Payload;
    if header.input_size_bytes == 0 {
        header.input_size_bytes = input.len() as u64;
    }
    let mut messages = vec![Payload::Header(header)];
    messages.extend(
        input
            .chunks(64 * 1024)
            .map(|c| Payload::Chunk(c.to_vec().into())),
    );
    let (sender, receiver) = tokio::sync::mpsc::channel(messages.len());
    for payload in messages {
        sender
            .send(pb::CreateJobRequest {
                payload: Some(payload),
            })
            .await
            .expect("queue");
    }
    drop(sender);
    jobs.create_job(ReceiverStream::new(receiver))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get(jobs: &mut JobsClient, name: &str) -> pb::Job {
    jobs.get_job(pb::GetJobRequest {
        name: format!("jobs/{name}"),
    })
    .await
    .expect("get job")
    .into_inner()
}

/// Polls until the job satisfies `accept`.
async fn job_where(
    jobs: &JobsClient,
    name: &str,
    what: &str,
    accept: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    testkit::eventually(Duration::from_secs(30), what, || {
        let mut jobs = jobs.clone();
        let accepted = &accept;
        async move {
            let job = get(&mut jobs, name).await;
            accepted(&job).then_some(job)
        }
    })
    .await
}

/// A hub with the diabetes model registered, and a device it knows.
pub struct Setup {
    pub hub: TestHub,
    pub jobs: JobsClient,
    pub device: FakeDevice,
}

pub async fn setup(device: &str) -> Setup {
    let hub = TestHub::start().await;
    register_diabetes(&mut hub.client().await, "diabetes").await;
    let device = FakeDevice::connect(&hub.url(), &hub.mqtt_url(), device).await;
    let jobs = client::connect_jobs(&hub.url()).await.expect("connect");
    Setup { hub, jobs, device }
}

fn listed(desired: &pb::DesiredState, job: &str) -> bool {
    desired.jobs.iter().any(|j| j.job_id == job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaches_its_device_reports_progress_and_its_uploaded_output_comes_back_whole() {
    let Setup {
        hub,
        mut jobs,
        mut device,
    } = setup("edge-j1").await;
    let input = diabetes_lines(300);
    let job = create(
        &mut jobs,
        header("score-300", "edge-j1", pb::JobInputFormat::JsonLines),
        &input,
    )
    .await
    .expect("job created");
    assert_eq!(job.state(), pb::job::State::Queued);
    assert_eq!(job.records_total, 300);
    assert_eq!((job.model_id.as_str(), job.model_version), ("diabetes", 1));
    assert_eq!(job.mini_batch, 100, "0 becomes the default");
    let input_sha = digest(&input);
    assert_eq!(
        job.input.as_ref().map(|i| i.sha256.as_str()),
        Some(input_sha.as_str())
    );

    // The retained desired state carries the job, its model resolved, its input by digest.
    let desired = device
        .desired_where("with the job", |d| listed(d, "score-300"))
        .await;
    let sent = &desired.jobs[0];
    let model = sent.model.as_ref().expect("model");
    assert_eq!((model.model_id.as_str(), model.version), ("diabetes", 1));
    assert_eq!(model.entry_file, "model.onnx");
    assert_eq!(model.inputs.len(), 1);
    let blob = sent.input.as_ref().expect("input");
    assert_eq!(
        (blob.path.as_str(), blob.sha256.as_str()),
        ("input", input_sha.as_str())
    );
    assert_eq!(blob.size_bytes, input.len() as u64);
    assert_eq!(sent.input_format(), pb::JobInputFormat::JsonLines);
    // ... and the device may fetch the input.
    let chunk = device.fetch(&input_sha, 0, 4096).await;
    assert!(chunk.error.is_empty(), "{}", chunk.error);
    assert_eq!(&chunk.data[..], &input[..4096]);
    let generation = desired.generation;

    // Progress: every report shows, state changes and counts alike.
    device
        .report(vec![status("score-300", pb::JobState::Running, 120, 300)])
        .await;
    job_where(&jobs, "score-300", "Running at 120", |j| {
        j.state() == pb::job::State::Running && j.records_done == 120
    })
    .await;
    let mut at_250 = status("score-300", pb::JobState::Running, 250, 300);
    at_250.record_errors = 3;
    device.report(vec![at_250]).await;
    job_where(&jobs, "score-300", "Running at 250", |j| {
        j.records_done == 250 && j.record_errors == 3
    })
    .await;
    // Reports about other jobs change nothing and hurt nothing.
    device
        .report(vec![status("nobody-knows", pb::JobState::Failed, 0, 0)])
        .await;

    // The output arrives in 64 KiB pieces after a probe; the last acknowledgement is whole.
    let output = output_of(300);
    assert!(output.len() > 4 * 64 * 1024, "several chunks");
    let ack = device.upload_all("score-300", &output, 64 * 1024).await;
    assert_eq!(ack.error, "");
    assert_eq!(ack.received_bytes, output.len() as u64);
    let done = get(&mut jobs, "score-300").await;
    assert_eq!(done.state(), pb::job::State::Succeeded);
    assert_eq!(
        done.output.as_ref().map(|o| o.sha256.clone()),
        Some(digest(&output))
    );
    assert!(done.finish_time.is_some());
    assert_eq!(done.records_done, 300);
    assert_eq!(done.record_errors, 3);

    // The job leaves the desired state, under a newer generation.
    let after = device
        .desired_where("without the job", |d| !listed(d, "score-300"))
        .await;
    assert!(after.generation > generation);

    // A device that missed the last acknowledgement is told it is done.
    let last = output.len() - 1000;
    let again = device
        .upload(upload_chunk(
            "score-300",
            &output,
            &digest(&output),
            last,
            1000,
        ))
        .await;
    assert_eq!(
        (again.received_bytes, again.error.as_str()),
        (output.len() as u64, "")
    );

    // The output downloads byte for byte.
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("out.jsonl");
    client::download_job_output(&mut jobs, "score-300", &target)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&target).expect("read"), output);

    // Deleting the job frees its input and output.
    jobs.delete_job(pb::DeleteJobRequest {
        name: "score-300".into(),
    })
    .await
    .expect("delete");
    let blobs = hub.blob_files();
    for sha in [digest(&output), input_sha] {
        assert!(
            !blobs.iter().any(|p| p.ends_with(&sha)),
            "blob {sha} is gone"
        );
    }
    assert!(
        hub.data
            .path()
            .join("uploads")
            .read_dir()
            .expect("uploads")
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_interrupted_by_a_hub_restart_resumes_from_the_partial_length() {
    let Setup {
        mut hub,
        mut jobs,
        mut device,
    } = setup("edge-j2").await;
    create(
        &mut jobs,
        header("resume", "edge-j2", pb::JobInputFormat::JsonLines),
        &diabetes_lines(400),
    )
    .await
    .expect("job created");
    let output = output_of(400);
    let sha = digest(&output);
    let piece = 100 * 1024;
    for offset in [0, piece] {
        let ack = device
            .upload(upload_chunk("resume", &output, &sha, offset, piece))
            .await;
        assert_eq!(ack.received_bytes, (offset + piece) as u64, "{}", ack.error);
    }
    drop(device);
    hub.restart().await;
    let mut jobs = client::connect_jobs(&hub.url()).await.expect("connect");
    let mut device = FakeDevice::connect(&hub.url(), &hub.mqtt_url(), "edge-j2").await;
    device
        .desired_where("still with the job", |d| listed(d, "resume"))
        .await;
    // A probe learns what the hub kept; the device goes on from there.
    let probe = device
        .upload(upload_chunk("resume", &output, &sha, 0, 0))
        .await;
    assert_eq!(
        (probe.received_bytes, probe.error.as_str()),
        (2 * piece as u64, "")
    );
    let ack = device.upload_all("resume", &output, 256 * 1024).await;
    assert_eq!(
        (ack.received_bytes, ack.error.as_str()),
        (output.len() as u64, "")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("out.jsonl");
    client::download_job_output(&mut jobs, "resume", &target)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&target).expect("read"), output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_early_chunks_are_not_written_and_each_ack_gives_the_held_length() {
    let Setup {
        mut jobs,
        mut device,
        hub: _hub,
    } = setup("edge-j3").await;
    create(
        &mut jobs,
        header("dups", "edge-j3", pb::JobInputFormat::JsonLines),
        &diabetes_lines(200),
    )
    .await
    .expect("job created");
    let output = output_of(200);
    let sha = digest(&output);
    let piece = 50 * 1024;
    let send = |offset: usize| upload_chunk("dups", &output, &sha, offset, piece);
    assert_eq!(device.upload(send(0)).await.received_bytes, piece as u64);
    // The same chunk again, and one from further ahead: nothing is written.
    assert_eq!(device.upload(send(0)).await.received_bytes, piece as u64);
    assert_eq!(
        device.upload(send(3 * piece)).await.received_bytes,
        piece as u64
    );
    // Several in flight at once, in order: each acknowledged with the length then held.
    for offset in [piece, 2 * piece, 3 * piece] {
        device
            .publish(DeviceTopic::UploadRequest, send(offset).encode_to_vec())
            .await;
    }
    for expected in [2, 3, 4] {
        assert_eq!(
            device.next_ack().await.received_bytes,
            (expected * piece) as u64
        );
    }
    let ack = device.upload_all("dups", &output, piece).await;
    assert_eq!(
        (ack.received_bytes, ack.error.as_str()),
        (output.len() as u64, "")
    );
    let job = get(&mut jobs, "dups").await;
    assert_eq!(job.output.map(|o| o.sha256), Some(sha));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_whose_digest_does_not_match_is_refused_and_sent_again_from_zero() {
    let Setup {
        mut jobs,
        mut device,
        hub: _hub,
    } = setup("edge-j4").await;
    create(
        &mut jobs,
        header("mismatch", "edge-j4", pb::JobInputFormat::JsonLines),
        &diabetes_lines(100),
    )
    .await
    .expect("job created");
    let output = output_of(100);
    let mut damaged = output.clone();
    damaged[5000] ^= 0xff;
    // The device announces the true digest but sends damaged bytes.
    let sha = digest(&output);
    let mut ack = device
        .upload(upload_chunk("mismatch", &damaged, &sha, 0, 0))
        .await;
    while ack.error.is_empty() {
        let offset = ack.received_bytes as usize;
        let len = (64 * 1024).min(damaged.len() - offset);
        ack = device
            .upload(upload_chunk("mismatch", &damaged, &sha, offset, len))
            .await;
    }
    assert_eq!(ack.received_bytes, 0);
    assert!(
        ack.error.contains("sha256") && ack.error.contains(&digest(&damaged)),
        "{}",
        ack.error
    );
    assert_eq!(
        get(&mut jobs, "mismatch").await.state(),
        pb::job::State::Queued
    );
    // The hub holds nothing: the next attempt starts at 0 and succeeds.
    let probe = device
        .upload(upload_chunk("mismatch", &output, &sha, 0, 0))
        .await;
    assert_eq!((probe.received_bytes, probe.error.as_str()), (0, ""));
    let ack = device.upload_all("mismatch", &output, 64 * 1024).await;
    assert_eq!(
        (ack.received_bytes, ack.error.as_str()),
        (output.len() as u64, "")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_and_failed_jobs_leave_the_desired_state_and_take_no_output() {
    let Setup {
        mut jobs,
        mut device,
        hub: _hub,
    } = setup("edge-j5").await;
    for name in ["to-cancel", "to-fail"] {
        create(
            &mut jobs,
            header(name, "edge-j5", pb::JobInputFormat::JsonLines),
            &diabetes_lines(150),
        )
        .await
        .expect("job created");
    }
    device
        .desired_where("with both jobs", |d| d.jobs.len() == 2)
        .await;
    // A live job cannot be deleted.
    let refused = jobs
        .delete_job(pb::DeleteJobRequest {
            name: "to-cancel".into(),
        })
        .await
        .expect_err("live");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("cancel it first"),
        "{}",
        refused.message()
    );

    let canceled = jobs
        .cancel_job(pb::CancelJobRequest {
            name: "jobs/to-cancel".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(canceled.state(), pb::job::State::Canceled);
    device
        .desired_where("without the canceled job", |d| {
            d.jobs.len() == 1 && listed(d, "to-fail")
        })
        .await;
    let again = jobs
        .cancel_job(pb::CancelJobRequest {
            name: "to-cancel".into(),
        })
        .await
        .expect_err("over");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let output = output_of(10);
    let ack = device
        .upload(upload_chunk("to-cancel", &output, &digest(&output), 0, 100))
        .await;
    assert!(ack.error.contains("already Canceled"), "{}", ack.error);
    let download = client::download_job_output(
        &mut jobs,
        "to-cancel",
        &std::env::temp_dir().join("never-written"),
    )
    .await
    .expect_err("no output");
    assert!(download.to_string().contains("has no output"), "{download}");

    // A device that cannot run a job fails it with its reason.
    let mut failed = status("to-fail", pb::JobState::Failed, 0, 0);
    failed.error = "the input is not readable as npy".into();
    device.report(vec![failed]).await;
    let job = job_where(&jobs, "to-fail", "Failed", |j| {
        j.state() == pb::job::State::Failed
    })
    .await;
    assert_eq!(job.error, "the input is not readable as npy");
    device
        .desired_where("without any job", |d| d.jobs.is_empty())
        .await;
    // A later report of the failed job cannot revive it.
    device
        .report(vec![status("to-fail", pb::JobState::Running, 10, 150)])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&mut jobs, "to-fail").await.state(),
        pb::job::State::Failed
    );
    for name in ["to-cancel", "to-fail"] {
        jobs.delete_job(pb::DeleteJobRequest { name: name.into() })
            .await
            .expect("delete");
    }
    let left = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(left.jobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_model_is_deleted_fails_with_the_reason_and_keeps_its_input() {
    let Setup {
        hub,
        mut jobs,
        mut device,
    } = setup("edge-j6").await;
    let mut registry = hub.client().await;
    register(
        &mut registry,
        new_model("doomed"),
        &fixture("diabetes").join("model.onnx"),
    )
    .await;
    let input = diabetes_lines(120);
    let mut head = header("orphan", "edge-j6", pb::JobInputFormat::JsonLines);
    head.model = "doomed".into();
    create(&mut jobs, head, &input).await.expect("job created");
    device
        .desired_where("with the job", |d| listed(d, "orphan"))
        .await;
    registry
        .delete_model(pb::DeleteModelRequest {
            name: "models/doomed".into(),
        })
        .await
        .expect("delete model");
    let job = job_where(&jobs, "orphan", "Failed", |j| {
        j.state() == pb::job::State::Failed
    })
    .await;
    assert!(job.error.contains("doomed:1 was deleted"), "{}", job.error);
    device
        .desired_where("without the job", |d| d.jobs.is_empty())
        .await;
    // The model's file is shared with the diabetes model, the input is the job's own: both
    // are still there.
    let input_sha = digest(&input);
    assert!(hub.blob_files().iter().any(|p| p.ends_with(&input_sha)));
}
