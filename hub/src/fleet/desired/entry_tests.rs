//! Entry modules in desired states: what a revision that pins one sends a device, when it
//! cannot, and that deployments stored before entry modules still read.

use edgeship_domain::{BlobRef, SandboxSpec};

use super::tests::{by_id, deployment, device, model, placed, resolved, summary};
use super::*;

/// `records:version`, as the module registry records a component.
fn module(version: u32) -> ModelVersion {
    let wasm = ModelFile {
        path: "records.wasm".into(),
        size_bytes: 4096,
        sha256: format!("{:064x}", 0xa000 + version),
        onnx: None,
    };
    ModelVersion {
        model_id: "records".into(),
        version,
        framework: crate::registry::module::FRAMEWORK.into(),
        framework_version: "1.0.0".into(),
        files: vec![wasm],
        ..model("records", version)
    }
}

/// `web` on port 5001 for d1, serving `m:1` behind `records:module_version`.
fn with_module(module_version: u32, sandbox: SandboxSpec) -> Deployment {
    let mut web = deployment("web", 5001, 1, by_id("d1"));
    web.revisions[0].entry_module = Some(ModulePin {
        module_id: "records".into(),
        version: module_version,
        sandbox,
    });
    web
}

fn registry_with(modules: &[ModelVersion]) -> Resolved {
    let mut registry = resolved(&[(1, Some(model("m", 1)))]);
    for module in modules {
        let key = (module.model_id.clone(), module.version);
        registry.modules.insert(key, Some(module.clone()));
    }
    registry
}

#[test]
fn a_revision_with_an_entry_module_sends_its_component_and_sandbox() {
    let sandbox = SandboxSpec {
        deadline_ms: 250,
        memory_mb: 32,
        instances: 2,
    };
    let web = with_module(2, sandbox);
    let revision = &web.revisions[0];
    let workload = workload(&web, revision, &registry_with(&[module(2)])).expect("runnable");
    let entry = workload
        .as_model()
        .and_then(|m| m.entry_module.as_ref())
        .expect("an entry module");
    assert_eq!((entry.module_id.as_str(), entry.version), ("records", 2));
    assert_eq!(entry.entry_file, "records.wasm");
    assert_eq!(entry.sandbox, sandbox);
    let wasm = BlobRef {
        path: "records.wasm".into(),
        sha256: format!("{:064x}", 0xa002),
        size_bytes: 4096,
    };
    assert_eq!(entry.files, std::slice::from_ref(&wasm));
    // The device is entitled to the component: its digest is among the state's blobs.
    let desired = DesiredState {
        device_id: "d1".into(),
        generation: 1,
        workloads: vec![workload.clone()],
        rejected: vec![],
        issued_at_ms: 0,
        jobs: vec![],
        rejected_jobs: vec![],
    };
    assert!(
        desired.blobs().any(|b| *b == wasm),
        "the .wasm is fetchable"
    );
    assert_eq!(
        desired.blobs().count(),
        2,
        "the model's file and the module's"
    );
    // What the agent reports as desired is what the rollout waits for.
    assert_eq!(revision.model_list(), workload.describe());
    assert_eq!(revision.describe(), "m:1 + module records:2");
}

#[test]
fn a_module_version_that_is_gone_makes_the_deployment_unschedulable() {
    let deployments = [with_module(3, SandboxSpec::default())];
    let desired = for_device(
        &device("d1", &[]),
        &placed(&deployments),
        &registry_with(&[module(2)]),
        None,
    );
    assert_eq!(
        summary(&desired),
        ["web!module records:3 does not exist"],
        "nothing is sent for it"
    );
    let mut no_wasm = module(3);
    no_wasm.files[0].path = "records.bin".into();
    let desired = for_device(
        &device("d1", &[]),
        &placed(&deployments),
        &registry_with(&[no_wasm]),
        None,
    );
    assert_eq!(
        summary(&desired),
        ["web!module records:3 has no .wasm file"]
    );
}

#[test]
fn a_module_and_a_model_of_one_name_resolve_apart() {
    let mut web = with_module(1, SandboxSpec::default());
    web.revisions[0].models[0].model_id = "records".into();
    let mut registry = registry_with(&[module(1)]);
    registry
        .models
        .insert(("records".into(), 1), Some(model("records", 1)));
    let workload = workload(&web, &web.revisions[0], &registry).expect("runnable");
    let served = workload.as_model().expect("a model workload");
    assert_eq!(served.models[0].entry_file, "model.onnx");
    let entry = served.entry_module.as_ref().expect("entry module");
    assert_eq!(entry.entry_file, "records.wasm");
}

#[test]
fn deployments_stored_before_entry_modules_still_decode() {
    let stored = serde_json::to_value(deployment("web", 5001, 1, by_id("d1"))).expect("json");
    let text = stored.to_string();
    assert!(!text.contains("entry_module"), "{text}");
    assert!(!text.contains("sandbox"), "{text}");
    let decoded: Deployment = serde_json::from_value(stored).expect("decodes");
    assert_eq!(decoded.spec.entry_module, None);
    assert_eq!(decoded.revisions[0].entry_module, None);
    // And a pin stored without its sandbox takes the defaults.
    let pin: ModulePin =
        serde_json::from_str(r#"{"module_id":"records","version":2}"#).expect("pin");
    assert_eq!(pin.sandbox, SandboxSpec::default());
}
