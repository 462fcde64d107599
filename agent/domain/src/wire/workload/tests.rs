//! The wire form of workloads: round trips, defaults, and what an agent refuses.

use super::*;
use edgeship_proto::v1 as pb;

fn wire_workload() -> pb::Workload {
    pb::Workload {
        deployment: "web".into(),
        endpoint: Some(pb::Endpoint {
            port: 5001,
            ..Default::default()
        }),
        kind: Some(pb::workload::Kind::Model(pb::ModelWorkload {
            runtime: pb::Runtime::Tract.into(),
            models: vec![pb::DeployedModel {
                model_id: "m".into(),
                version: 2,
                files: vec![pb::BlobRef {
                    path: "model.onnx".into(),
                    sha256: "a".repeat(64),
                    size_bytes: 10,
                }],
                entry_file: "model.onnx".into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        health: None,
    }
}

#[test]
fn health_thresholds_cross_the_wire_with_defaults_and_are_checked() {
    let mut wire = wire_workload();
    wire.health = Some(pb::HealthThresholds {
        max_p99_ms: Some(50.0),
        ..Default::default()
    });
    let workload = Workload::try_from(wire.clone()).expect("valid");
    assert_eq!(
        workload.health,
        Some(HealthThresholds {
            max_error_rate: None,
            max_p99_ms: Some(50.0),
            window_seconds: HealthThresholds::DEFAULT_WINDOW_SECONDS,
            min_requests: HealthThresholds::DEFAULT_MIN_REQUESTS,
        })
    );
    assert_eq!(
        Workload::try_from(pb::Workload::from(&workload)),
        Ok(workload)
    );
    wire.health = Some(pb::HealthThresholds {
        max_error_rate: Some(f64::NAN),
        ..Default::default()
    });
    let err = Workload::try_from(wire).expect_err("NaN is no threshold");
    assert!(err.to_string().contains("max_error_rate"), "{err}");
}

#[test]
fn a_workload_survives_the_round_trip_with_defaults_filled() {
    let workload = Workload::try_from(wire_workload()).expect("valid");
    assert_eq!(workload.endpoint, Endpoint::azureml(5001));
    assert_eq!(workload.describe(), "m:2");
    assert_eq!(
        Workload::try_from(pb::Workload::from(&workload)),
        Ok(workload)
    );
}

#[test]
fn an_opencl_precision_crosses_the_wire_and_an_unknown_one_is_unsupported() {
    let mut wire = wire_workload();
    let options = |wire: &mut pb::Workload, precision: &str| {
        if let Some(pb::workload::Kind::Model(model)) = &mut wire.kind {
            model.runtime = pb::Runtime::Opencl.into();
            model.options = Some(pb::RuntimeOptions {
                opencl_precision: precision.into(),
                ..Default::default()
            });
        }
    };
    options(&mut wire, "fp16");
    let workload = Workload::try_from(wire.clone()).expect("valid");
    let WorkloadKind::Model(model) = &workload.kind else {
        panic!("a model workload");
    };
    assert_eq!(model.options.opencl_precision, Precision::Fp16);
    assert_eq!(
        Workload::try_from(pb::Workload::from(&workload)),
        Ok(workload)
    );
    options(&mut wire, "bf16");
    assert!(matches!(
        Workload::try_from(wire),
        Err(WireError::Unsupported(m)) if m.contains("unknown precision \"bf16\"")
    ));
}

#[test]
fn what_a_newer_hub_sends_is_unsupported_and_bad_fields_are_invalid() {
    let unknown_kind = pb::Workload {
        kind: None,
        ..wire_workload()
    };
    assert!(matches!(
        Workload::try_from(unknown_kind),
        Err(WireError::Unsupported(m)) if m.contains("kind is not known")
    ));
    let mut unknown_runtime = wire_workload();
    if let Some(pb::workload::Kind::Model(model)) = &mut unknown_runtime.kind {
        model.runtime = 42;
    }
    assert!(matches!(
        Workload::try_from(unknown_runtime),
        Err(WireError::Unsupported(m)) if m.contains("runtime number 42")
    ));
    let mut escaping = wire_workload();
    if let Some(pb::workload::Kind::Model(model)) = &mut escaping.kind {
        model.models[0].files[0].path = "../../etc/passwd".into();
        model.models[0].entry_file = "../../etc/passwd".into();
    }
    assert!(matches!(
        Workload::try_from(escaping),
        Err(WireError::Invalid(m)) if m.contains("invalid file path")
    ));
    let mut missing_entry = wire_workload();
    if let Some(pb::workload::Kind::Model(model)) = &mut missing_entry.kind {
        model.models[0].entry_file = "other.onnx".into();
    }
    assert!(matches!(
        Workload::try_from(missing_entry),
        Err(WireError::Invalid(m)) if m.contains("not among the files")
    ));
    let no_port = pb::Workload {
        endpoint: Some(pb::Endpoint::default()),
        ..wire_workload()
    };
    assert!(matches!(
        Workload::try_from(no_port),
        Err(WireError::Invalid(_))
    ));
}

#[test]
fn a_desired_state_keeps_the_workloads_it_can_take() {
    let desired = pb::DesiredState {
        device_id: "d1".into(),
        generation: 3,
        workloads: vec![
            wire_workload(),
            pb::Workload {
                deployment: "future".into(),
                kind: None,
                ..wire_workload()
            },
        ],
        ..Default::default()
    };
    let desired = DesiredState::try_from(desired).expect("valid");
    assert_eq!(desired.workloads.len(), 1);
    assert_eq!(desired.rejected.len(), 1);
    assert_eq!(desired.rejected[0].deployment, "future");
    assert_eq!(desired.rejected[0].port, 5001);
    assert!(desired.rejected[0].unsupported);
}
