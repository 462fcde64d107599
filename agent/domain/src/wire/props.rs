//! Property tests of every device-protocol decoder a remote party reaches: whatever bytes
//! arrive on a topic, decoding and conversion answer with a value or an error, never a panic;
//! and what converts is valid by the name rules.

use edgeship_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use crate::fixtures::{batch_job, model_workload};
use crate::{Birth, DesiredState, ReportedState, names};

/// A desired state with a workload and a job, encoded: a realistic starting point that
/// mutations turn into nearly valid messages, which reach deeper than random bytes.
fn valid_desired() -> Vec<u8> {
    let desired = DesiredState {
        device_id: "edge-1".into(),
        generation: 7,
        workloads: vec![model_workload("web", 2, 3)],
        rejected: vec![],
        issued_at_ms: 1,
        jobs: vec![batch_job("score", 4)],
        rejected_jobs: vec![],
    };
    pb::DesiredState::from(&desired).encode_to_vec()
}

/// `bytes` with each `(position, value)` written over it, then cut at `cut` (a fraction).
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<f64>) -> Vec<u8> {
    for &(position, value) in edits {
        if !bytes.is_empty() {
            let at = position % bytes.len();
            bytes[at] = value;
        }
    }
    if let Some(fraction) = cut {
        bytes.truncate((bytes.len() as f64 * fraction) as usize);
    }
    bytes
}

fn convert_everything(bytes: &[u8]) {
    if let Ok(message) = pb::DesiredState::decode(bytes)
        && let Ok(desired) = DesiredState::try_from(message)
    {
        assert!(names::device_id(&desired.device_id).is_ok());
        for workload in &desired.workloads {
            assert!(names::deployment_id(&workload.deployment).is_ok());
        }
    }
    if let Ok(message) = pb::ReportedState::decode(bytes)
        && let Ok(report) = ReportedState::try_from(message)
    {
        assert!(names::device_id(&report.device_id).is_ok());
    }
    if let Ok(message) = pb::Birth::decode(bytes) {
        let _ = Birth::try_from(message);
    }
    let _ = pb::SignedDesiredState::decode(bytes);
    let _ = pb::BlobRequest::decode(bytes);
    let _ = pb::BlobChunk::decode(bytes);
    let _ = pb::UploadChunk::decode(bytes);
    let _ = pb::UploadAck::decode(bytes);
    let _ = pb::LogRequest::decode(bytes);
    let _ = pb::ProfileRequest::decode(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        convert_everything(&bytes);
    }

    #[test]
    fn a_damaged_desired_state_converts_or_fails_cleanly(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(0.0f64..1.0),
    ) {
        convert_everything(&mutate(valid_desired(), &edits, cut));
    }
}

#[test]
fn the_undamaged_desired_state_converts() {
    let desired =
        DesiredState::try_from(pb::DesiredState::decode(&valid_desired()[..]).expect("decodes"))
            .expect("converts");
    assert_eq!(desired.workloads.len(), 1);
    assert_eq!(desired.jobs.len(), 1);
}
