//! Ready-made domain values for tests on both sides (compiled for this crate's tests and with
//! the `fixtures` feature), so every test builds workloads and devices the same way.

use crate::capabilities::{Capabilities, Requirement};
use crate::workload::{
    BlobRef, DeployedModel, Endpoint, ModelWorkload, RuntimeKind, RuntimeOptions, Workload,
    WorkloadKind,
};

/// A fake digest, distinct per `n`.
pub fn digest(n: u32) -> String {
    format!("{n:064x}")
}

/// Deployment `deployment` running model `m:version` on tract, one file `model.onnx` whose
/// blob is `digest(blob)`, on port `5000 + version`.
pub fn model_workload(deployment: &str, version: u32, blob: u32) -> Workload {
    Workload {
        deployment: deployment.into(),
        endpoint: Endpoint::azureml(5000 + version as u16),
        kind: WorkloadKind::Model(ModelWorkload {
            runtime: RuntimeKind::Tract,
            models: vec![DeployedModel {
                model_id: "m".into(),
                version,
                files: vec![BlobRef {
                    path: "model.onnx".into(),
                    sha256: digest(blob),
                    size_bytes: 10,
                }],
                entry_file: "model.onnx".into(),
                inputs: vec![],
                outputs: vec![],
                sample_input: None,
                weight: 0,
                signatures: vec![],
                required_signers: vec![],
            }],
            options: RuntimeOptions::default(),
            entry_module: None,
        }),
        health: None,
    }
}

/// What a tract agent of this version announces.
pub fn tract_agent() -> Capabilities {
    Capabilities {
        runtimes: vec![RuntimeKind::Tract.name().to_owned()],
        features: Requirement::BASELINE.iter().map(|r| r.token()).collect(),
        ..Capabilities::default()
    }
}

/// Job `job_id` running model `m:1` (as [`model_workload`]) over a JSON-lines input whose
/// blob is `digest(input_blob)`, 100 records a mini-batch.
pub fn batch_job(job_id: &str, input_blob: u32) -> crate::job::BatchJob {
    let WorkloadKind::Model(workload) = model_workload("job", 1, 1).kind else {
        unreachable!("model_workload makes a model workload")
    };
    crate::job::BatchJob {
        job_id: job_id.into(),
        runtime: RuntimeKind::Tract,
        model: workload.models[0].clone(),
        input: BlobRef {
            path: "input".into(),
            sha256: digest(input_blob),
            size_bytes: 100,
        },
        input_format: crate::job::InputFormat::JsonLines,
        mini_batch: crate::job::DEFAULT_MINI_BATCH,
        options: RuntimeOptions::default(),
    }
}
