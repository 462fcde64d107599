//! What the hub refuses about jobs, and how it says so: bad headers and inputs over gRPC, and
//! malformed or hostile upload messages over MQTT, none of which may hurt it.

use bytes::Bytes;
use edgeship_proto::topics::DeviceTopic;
use edgeship_proto::v1 as pb;
use prost::Message;
use tonic::Code;

use super::device::{digest, upload_chunk};
use super::{Setup, create, diabetes_lines, get, header, setup};
use crate::support::*;

/// An `.npy` file of float32 with this shape, values 0, 1, 2, ...
fn npy(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let count: usize = shape.iter().product();
    let data: Vec<u8> = (0..count).flat_map(|i| (i as f32).to_le_bytes()).collect();
    testkit::jobs::npy("<f4", &shape_text, &data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_refused_up_front_with_the_reason() {
    let Setup { hub, mut jobs, .. } = setup("edge-r1").await;
    let mut registry = hub.client().await;
    // A model without an ONNX file has no signature to run.
    let dir = tempfile::tempdir().expect("tempdir");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a model").expect("write");
    register(&mut registry, new_model("notes"), &notes).await;

    let json = pb::JobInputFormat::JsonLines;
    let npy_format = pb::JobInputFormat::Npy;
    let lines = diabetes_lines(5);
    // A valid .npy input counts its first axis.
    let counted = create(
        &mut jobs,
        header("npy-ok", "edge-r1", npy_format),
        &npy(&[250, 10]),
    )
    .await
    .expect("npy job");
    assert_eq!(counted.records_total, 250);
    // JSON lines count their non-blank lines only.
    let mut sparse = b"\n".to_vec();
    sparse.extend_from_slice(&diabetes_lines(300));
    sparse.extend_from_slice(b"\r\n   \n");
    let counted = create(&mut jobs, header("jsonl-ok", "edge-r1", json), &sparse)
        .await
        .expect("jsonl job");
    assert_eq!(counted.records_total, 300);

    let with = |change: &dyn Fn(&mut pb::JobHeader)| {
        let mut h = header("refused", "edge-r1", json);
        change(&mut h);
        h
    };
    let cases: Vec<(&str, pb::JobHeader, Vec<u8>, Code, &str)> = vec![
        (
            "bad name",
            with(&|h| h.job_id = "../etc".into()),
            lines.clone(),
            Code::InvalidArgument,
            "job name",
        ),
        (
            "taken name",
            with(&|h| h.job_id = "npy-ok".into()),
            lines.clone(),
            Code::AlreadyExists,
            "job npy-ok already exists",
        ),
        (
            "unknown device",
            with(&|h| h.device_id = "nowhere".into()),
            lines.clone(),
            Code::NotFound,
            "device nowhere",
        ),
        (
            "unknown model",
            with(&|h| h.model = "ghost:1".into()),
            lines.clone(),
            Code::NotFound,
            "model ghost does not exist",
        ),
        (
            "missing version",
            with(&|h| h.model = "diabetes:7".into()),
            lines.clone(),
            Code::NotFound,
            "has no version 7",
        ),
        (
            "no signature",
            with(&|h| h.model = "notes".into()),
            lines.clone(),
            Code::InvalidArgument,
            "has no ONNX file",
        ),
        (
            "no format",
            with(&|h| h.input_format = 0),
            lines.clone(),
            Code::InvalidArgument,
            "no input format",
        ),
        (
            "huge mini-batch",
            with(&|h| h.mini_batch = 10_001),
            lines.clone(),
            Code::InvalidArgument,
            "mini-batch of 10001",
        ),
        (
            "unknown runtime",
            with(&|h| h.runtime = "cuda".into()),
            lines.clone(),
            Code::InvalidArgument,
            "unknown runtime",
        ),
        (
            "runtime the device lacks",
            with(&|h| h.runtime = "opencl".into()),
            lines.clone(),
            Code::FailedPrecondition,
            "no opencl runtime",
        ),
        (
            "empty input",
            with(&|_| {}),
            vec![],
            Code::InvalidArgument,
            "is empty",
        ),
        (
            "blank lines only",
            with(&|_| {}),
            b"\n \n\t\n".to_vec(),
            Code::InvalidArgument,
            "no records",
        ),
        (
            "not UTF-8",
            with(&|_| {}),
            [&lines[..], b"[1, \xff]\n"].concat(),
            Code::InvalidArgument,
            "not valid UTF-8 (line 6)",
        ),
        (
            "truncated input",
            with(&|h| h.input_size_bytes = lines.len() as u64 + 10),
            lines.clone(),
            Code::InvalidArgument,
            "truncated",
        ),
        (
            "wrong digest",
            with(&|h| h.input_sha256 = "0".repeat(64)),
            lines.clone(),
            Code::InvalidArgument,
            "does not match its announced sha256",
        ),
        (
            "npy without magic",
            with(&|h| h.input_format = npy_format.into()),
            lines.clone(),
            Code::InvalidArgument,
            "magic",
        ),
        (
            "npy header broken",
            with(&|h| h.input_format = npy_format.into()),
            {
                let mut bad = npy(&[4, 10]);
                bad[20] = b'!';
                bad
            },
            Code::InvalidArgument,
            "does not parse",
        ),
        (
            "npy shape",
            with(&|h| h.input_format = npy_format.into()),
            npy(&[5, 3]),
            Code::InvalidArgument,
            "has shape [3], but input data",
        ),
        (
            "npy rank",
            with(&|h| h.input_format = npy_format.into()),
            npy(&[5, 2, 10]),
            Code::InvalidArgument,
            "takes records of shape [10]",
        ),
        (
            "npy scalar records",
            with(&|h| h.input_format = npy_format.into()),
            npy(&[5]),
            Code::InvalidArgument,
            "has shape []",
        ),
        (
            "npy truncated data",
            with(&|h| h.input_format = npy_format.into()),
            {
                let mut short = npy(&[4, 10]);
                short.truncate(short.len() - 4);
                short
            },
            Code::InvalidArgument,
            "calls for",
        ),
    ];
    for (what, header, input, code, message) in cases {
        let err = create(&mut jobs, header, &input).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(err.message().contains(message), "{what}: {}", err.message());
    }
    // Nothing refused was stored, and no staged input is left.
    let listed = jobs
        .list_jobs(pb::ListJobsRequest {
            device_id: "edge-r1".into(),
        })
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = listed.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(names, ["npy-ok", "jsonl-ok"]);
    hub.wait_for_empty_staging().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_upload_messages_get_refusals_and_do_not_hurt_the_hub() {
    let Setup {
        hub,
        mut jobs,
        mut device,
    } = setup("edge-r2").await;
    create(
        &mut jobs,
        header("target", "edge-r2", pb::JobInputFormat::JsonLines),
        &diabetes_lines(100),
    )
    .await
    .expect("job created");
    let other = super::device::FakeDevice::connect(&hub.url(), &hub.mqtt_url(), "edge-r2b").await;
    // Garbage is dropped without an answer.
    for garbage in [
        vec![0xff, 0x00, 0x13, 0x37],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ] {
        device
            .publish(DeviceTopic::UploadRequest, garbage.clone())
            .await;
        other.publish(DeviceTopic::UploadRequest, garbage).await;
    }
    let output = b"{\"index\": 0}\n".repeat(1000);
    let sha = digest(&output);
    let good = |offset: usize, len: usize| upload_chunk("target", &output, &sha, offset, len);
    let cases: Vec<(&str, pb::UploadChunk, &str)> = vec![
        (
            "a path for a name",
            pb::UploadChunk {
                job_id: "../../etc/passwd".into(),
                ..good(0, 10)
            },
            "job name",
        ),
        (
            "an unknown job",
            pb::UploadChunk {
                job_id: "nobody".into(),
                ..good(0, 10)
            },
            "job nobody does not exist",
        ),
        (
            "a bad digest",
            pb::UploadChunk {
                sha256: "XYZ".into(),
                ..good(0, 10)
            },
            "64 lower-case hex",
        ),
        (
            "past the end",
            pb::UploadChunk {
                offset: output.len() as u64 - 5,
                ..good(0, 10)
            },
            "ends past the output's size",
        ),
        (
            "an overflowing offset",
            pb::UploadChunk {
                offset: u64::MAX - 2,
                ..good(0, 10)
            },
            "ends past",
        ),
        (
            "a huge size",
            pb::UploadChunk {
                size_bytes: u64::MAX,
                ..good(0, 10)
            },
            "more than",
        ),
        (
            "an oversized chunk",
            pb::UploadChunk {
                data: Bytes::from(vec![b'x'; 300 * 1024]),
                size_bytes: 400 * 1024,
                ..good(0, 0)
            },
            "at most 262144 bytes",
        ),
    ];
    for (what, chunk, expected) in cases {
        let ack = device.upload(chunk).await;
        assert!(ack.error.contains(expected), "{what}: {:?}", ack.error);
        assert_eq!(ack.received_bytes, 0, "{what}");
    }
    // Another device cannot write this device's job.
    let mut other = other;
    let ack = other.upload(good(0, 100)).await;
    assert!(
        ack.error.contains("does not run on device edge-r2b"),
        "{}",
        ack.error
    );
    // Through all of it the hub kept serving, and the real upload works.
    let ack = device.upload_all("target", &output, 4096).await;
    assert_eq!(
        (ack.received_bytes, ack.error.as_str()),
        (output.len() as u64, "")
    );
    assert_eq!(
        get(&mut jobs, "target").await.state(),
        pb::job::State::Succeeded
    );
    // Asking again as the other device is refused alike.
    let stranger = pb::UploadChunk {
        job_id: "target".into(),
        ..good(0, 10)
    };
    other
        .publish(DeviceTopic::UploadRequest, stranger.encode_to_vec())
        .await;
    let ack = other.next_ack().await;
    assert!(
        ack.error.contains("does not run on device"),
        "{}",
        ack.error
    );
}
