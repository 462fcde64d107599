//! The rules of desired-state computation, pinned in tables.

use super::*;
use crate::fleet::model::Target;
use crate::fleet::selector::Selector;
use crate::fleet::spec::{DeploymentSpec, ModelRef, RolloutPolicy, TrafficWeight};
use crate::registry::VersionSelector;
use edgeship_domain::{Dim, ElementType, Endpoint, RuntimeKind, TensorSpec};
use std::collections::BTreeSet;

pub(super) fn model(id: &str, version: u32) -> ModelVersion {
    let spec = TensorSpec {
        name: "x".into(),
        element_type: ElementType::F32,
        shape: vec![Dim::Unknown, Dim::Fixed(2)],
    };
    ModelVersion {
        model_id: id.into(),
        version,
        description: String::new(),
        framework: "onnx".into(),
        framework_version: String::new(),
        tags: BTreeMap::new(),
        properties: BTreeMap::new(),
        files: vec![ModelFile {
            path: "model.onnx".into(),
            size_bytes: 10,
            sha256: format!("{version:064x}"),
            onnx: Some(OnnxSignature {
                inputs: vec![spec.clone()],
                outputs: vec![spec],
                ir_version: 8,
                opsets: vec![],
                producer: String::new(),
                tract_incompatibility: None,
                placements: vec![],
            }),
        }],
        sample_input: None,
        sample_output: None,
        create_time_ms: 0,
        update_time_ms: 0,
        signatures: vec![],
    }
}

/// A deployment of `m` whose one revision pins `m:1`.
pub(super) fn deployment(id: &str, port: u16, created: i64, target: Target) -> Deployment {
    let spec = DeploymentSpec {
        name: id.into(),
        model: Some(ModelRef {
            model_id: "m".into(),
            version: VersionSelector::Latest,
        }),
        runtime: RuntimeKind::Tract,
        endpoint: Endpoint::azureml(port),
        target,
        priority: 0,
        rollout: RolloutPolicy::default(),
        traffic: vec![],
        options: Default::default(),
        extra_models: vec![],
        container: None,
        entry_module: None,
        model_signers: vec![],
    };
    Deployment {
        id: id.into(),
        revisions: vec![Revision {
            number: 1,
            models: vec![TrafficWeight {
                model_id: "m".into(),
                version: 1,
                weight: 0,
            }],
            runtime: RuntimeKind::Tract,
            endpoint: Endpoint::azureml(port),
            options: Default::default(),
            container: None,
            entry_module: None,
            model_signers: vec![],
            create_time_ms: created,
        }],
        spec,
        create_time_ms: created,
        update_time_ms: created,
        keys: None,
        token_signer: None,
        tls_certificate: None,
    }
}

/// `deployment` at `m:version`, through a second revision.
fn at_version(mut deployment: Deployment, version: u32) -> Deployment {
    let mut revision = deployment.revisions[0].clone();
    revision.number = 2;
    revision.models[0].version = version;
    deployment.revisions.push(revision);
    deployment
}

fn prioritized(mut deployment: Deployment, priority: i32) -> Deployment {
    deployment.spec.priority = priority;
    deployment
}

pub(super) fn by_id(id: &str) -> Target {
    Target {
        devices: BTreeSet::from([id.to_owned()]),
        selector: None,
    }
}

fn by_label(key: &str, value: &str) -> Target {
    Target {
        devices: BTreeSet::new(),
        selector: Some(Selector::parse(&format!("{key}={value}")).expect("selector")),
    }
}

pub(super) fn device(id: &str, labels: &[(&str, &str)]) -> Device {
    Device {
        id: id.into(),
        reported_labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        agent_version: "0.1.0".into(),
        last_seen_ms: 1,
        capabilities: edgeship_domain::fixtures::tract_agent(),
        ..Device::default()
    }
}

/// The registry's answer for `m:version` of each pair.
pub(super) fn resolved(pairs: &[(u32, Option<ModelVersion>)]) -> Resolved {
    Resolved {
        models: pairs
            .iter()
            .map(|(v, m)| (("m".to_owned(), *v), m.clone()))
            .collect(),
        ..Resolved::default()
    }
}

pub(super) fn placed(deployments: &[Deployment]) -> Vec<Placement<'_>> {
    deployments
        .iter()
        .map(|deployment| Placement {
            deployment,
            rollout: None,
        })
        .collect()
}

/// One row: what the case is, the device, the deployments, what they resolve to, and
/// the expected summary.
type Case = (
    &'static str,
    Device,
    Vec<Deployment>,
    Resolved,
    Vec<&'static str>,
);

/// `deployment=model:version` for each workload, `deployment!reason` for the others.
pub(super) fn summary(desired: &DeviceDesired) -> Vec<String> {
    desired
        .workloads
        .iter()
        .map(|w| format!("{}={}", w.deployment, w.describe()))
        .chain(
            desired
                .unschedulable
                .iter()
                .map(|(d, why)| format!("{d}!{why}")),
        )
        .collect()
}

#[test]
fn the_desired_state_for_each_situation() {
    let north = device("d1", &[("site", "north")]);
    let south = device("d1", &[("site", "south")]);
    // An agent that runs containers only (announces no `kind/model`).
    let mut containers_only = north.clone();
    containers_only.capabilities.features = [
        "kind/container".to_owned(),
        "protocol/azureml".into(),
        "auth/none".into(),
    ]
    .into();
    let never_seen = Device {
        id: "d1".into(),
        ..Device::default()
    };
    let mut no_opencl = deployment("gpu", 5003, 3, by_id("d1"));
    no_opencl.revisions[0].runtime = RuntimeKind::Opencl;
    let mut no_onnx = model("m", 4);
    no_onnx.files[0].onnx = None;
    no_onnx.files[0].path = "weights.bin".into();
    no_onnx.framework = "custom".into();
    let table: Vec<Case> = vec![
        (
            "a new deployment targeting the device by id",
            north.clone(),
            vec![deployment("web", 5001, 1, by_id("d1"))],
            resolved(&[(1, Some(model("m", 1)))]),
            vec!["web=m:1"],
        ),
        (
            "a new revision changes the version",
            north.clone(),
            vec![at_version(deployment("web", 5001, 1, by_id("d1")), 2)],
            resolved(&[(2, Some(model("m", 2)))]),
            vec!["web=m:2"],
        ),
        (
            "a removed deployment is no longer desired",
            north.clone(),
            vec![],
            resolved(&[]),
            vec![],
        ),
        (
            "a device in the selector runs the deployment",
            north.clone(),
            vec![deployment("web", 5001, 1, by_label("site", "north"))],
            resolved(&[(1, Some(model("m", 1)))]),
            vec!["web=m:1"],
        ),
        (
            "a device leaving the selector does not",
            south.clone(),
            vec![deployment("web", 5001, 1, by_label("site", "north"))],
            resolved(&[(1, Some(model("m", 1)))]),
            vec![],
        ),
        (
            "the older deployment keeps a contested port",
            north.clone(),
            vec![
                deployment("new", 5001, 2, by_label("site", "north")),
                deployment("old", 5001, 1, by_id("d1")),
            ],
            resolved(&[(1, Some(model("m", 1)))]),
            vec![
                "old=m:1",
                "new!port 5001 on this device is taken by deployment old (same priority, created earlier)",
            ],
        ),
        (
            "a higher priority takes a contested port from an older deployment",
            north.clone(),
            vec![
                prioritized(deployment("new", 5001, 2, by_label("site", "north")), 5),
                deployment("old", 5001, 1, by_id("d1")),
            ],
            resolved(&[(1, Some(model("m", 1)))]),
            vec![
                "new=m:1",
                "old!port 5001 on this device is taken by deployment new (priority 5 is higher)",
            ],
        ),
        (
            "a runtime the device lacks is unschedulable before any download",
            north.clone(),
            vec![no_opencl.clone()],
            resolved(&[(1, Some(model("m", 1)))]),
            vec!["gpu!runtime opencl is not available on this device (available: tract)"],
        ),
        (
            "a workload kind the device's agent does not run is unschedulable",
            containers_only,
            vec![deployment("web", 5001, 1, by_id("d1"))],
            resolved(&[(1, Some(model("m", 1)))]),
            vec!["web!this device's agent does not support model workloads"],
        ),
        (
            "a device never seen gets the workload; its agent judges",
            never_seen,
            vec![no_opencl],
            resolved(&[(1, Some(model("m", 1)))]),
            vec!["gpu=m:1"],
        ),
        (
            "a model that is gone is unschedulable",
            north.clone(),
            vec![deployment("web", 5001, 1, by_id("d1"))],
            resolved(&[(1, None)]),
            vec!["web!model m:1 does not exist"],
        ),
        (
            "a model without an ONNX file is unschedulable with advice",
            north,
            vec![at_version(deployment("web", 5001, 1, by_id("d1")), 4)],
            resolved(&[(4, Some(no_onnx))]),
            vec![
                "web!model m:4 has no ONNX file (files: weights.bin, framework custom); register a version whose model file ends in .onnx",
            ],
        ),
    ];
    for (case, device, deployments, resolved, expected) in table {
        let desired = for_device(&device, &placed(&deployments), &resolved, None);
        assert_eq!(summary(&desired), expected, "{case}");
    }
}

#[test]
fn a_deployment_that_can_no_longer_run_keeps_its_previous_workload() {
    let device = device("d1", &[]);
    let web = deployment("web", 5001, 1, by_id("d1"));
    let serving = for_device(
        &device,
        &placed(std::slice::from_ref(&web)),
        &resolved(&[(1, Some(model("m", 1)))]),
        None,
    );
    let previous = DesiredState {
        device_id: "d1".into(),
        generation: 1,
        workloads: serving.workloads.clone(),
        rejected: vec![],
        issued_at_ms: 0,
        jobs: vec![],
        rejected_jobs: vec![],
    };
    let mut no_onnx = model("m", 2);
    no_onnx.files[0].onnx = None;
    let next = for_device(
        &device,
        &placed(&[at_version(web, 2)]),
        &resolved(&[(2, Some(no_onnx))]),
        Some(&previous),
    );
    assert_eq!(next.workloads, serving.workloads, "m:1 keeps serving");
    assert!(next.unschedulable["web"].contains("m:2 has no ONNX file"));
}

#[test]
fn the_workload_carries_files_signature_and_endpoint() {
    let deployment = at_version(deployment("web", 5001, 1, by_id("d1")), 3);
    let workload = workload(
        &deployment,
        &deployment.revisions[1],
        &resolved(&[(3, Some(model("m", 3)))]),
    )
    .expect("runnable");
    assert_eq!(workload.endpoint, Endpoint::azureml(5001));
    let model = workload.as_model().expect("model workload");
    assert_eq!(model.models[0].entry_file, "model.onnx");
    assert_eq!(model.models[0].files[0].sha256, format!("{:064x}", 3));
    assert_eq!(model.models[0].inputs[0].to_string(), "x: float32[?, 2]");
}

/// `scorer-image:version`, an image artifact as registration records it.
fn image_artifact(version: u32) -> ModelVersion {
    let mut artifact = model("scorer-image", version);
    artifact.framework = image::FRAMEWORK.into();
    artifact.files[0].path = "image.tar".into();
    artifact.files[0].onnx = None;
    artifact.files[0].sha256 = format!("{:064x}", 100 + version);
    artifact.properties = BTreeMap::from([
        (
            image::ID_PROPERTY.into(),
            format!("sha256:{:064x}", 200 + version),
        ),
        (
            image::REFERENCE_PROPERTY.into(),
            format!("diabetes-scorer:{version}"),
        ),
    ]);
    artifact
}

/// A container deployment on `d1` of `spec` (validated from its manifest section), pinned to
/// `pins` (`model_id`, version).
fn container_deployment(section: &str, pins: &[(&str, u32)]) -> Deployment {
    let manifest = crate::fleet::spec::parse_manifest(&format!(
        "name: scorer\ncontainer: {section}\nendpoint: {{port: 8080, auth: key}}\ntarget: {{devices: [d1]}}\n"
    ))
    .expect("manifest");
    let spec = manifest.validate().expect("valid");
    let mut deployment = deployment("scorer", 8080, 1, by_id("d1"));
    let revision = &mut deployment.revisions[0];
    revision.container = spec.container.clone();
    revision.endpoint = spec.endpoint.clone();
    revision.models = pins
        .iter()
        .map(|(id, version)| TrafficWeight {
            model_id: (*id).into(),
            version: *version,
            weight: 0,
        })
        .collect();
    deployment.spec = spec;
    deployment.keys = Some(EndpointKeys {
        primary: "primary".into(),
        secondary: "secondary".into(),
    });
    deployment
}

fn registry_of(models: &[ModelVersion]) -> Resolved {
    Resolved {
        models: models
            .iter()
            .map(|m| ((m.model_id.clone(), m.version), Some(m.clone())))
            .collect(),
        ..Resolved::default()
    }
}

/// A device whose agent runs containers (`--containers docker`).
fn docker_device() -> Device {
    let mut device = device("d1", &[]);
    for feature in ["kind/container", "auth/key"] {
        device.capabilities.features.insert(feature.into());
    }
    device.capabilities.container_engine = "docker 28.2.2".into();
    device
}

#[test]
fn a_container_revision_carries_its_image_artifact_and_mounted_model() {
    let deployment = container_deployment(
        "{image_artifact: scorer-image, model: m:2, ports: [5001], env: {MODE: fast}, command: [/serve], resources: {cpus: 0.5, memory: 64Mi}, health: {path: /healthz}, restart: no}",
        &[("scorer-image", 3), ("m", 2)],
    );
    let revision = &deployment.revisions[0];
    let workload = workload(
        &deployment,
        revision,
        &registry_of(&[image_artifact(3), model("m", 2)]),
    )
    .expect("runnable");
    let container = workload.as_container().expect("a container workload");
    assert_eq!(
        container.image, "diabetes-scorer:3",
        "the archive's own tag"
    );
    assert_eq!(container.image_digest, format!("sha256:{:064x}", 203));
    assert_eq!(container.image_artifact, "scorer-image:3");
    assert_eq!(container.image_files[0].path, "image.tar");
    assert_eq!(container.image_files[0].sha256, format!("{:064x}", 103));
    assert_eq!(container.command, ["/serve"]);
    assert_eq!(container.env["MODE"], "fast");
    assert_eq!(
        (container.container_port, container.health_port),
        (5001, 5001)
    );
    assert_eq!(
        (container.cpu_millis, container.memory_bytes),
        (500, 64 << 20)
    );
    assert_eq!(container.health_path, "/healthz");
    assert_eq!(container.restart, edgeship_domain::RestartPolicy::No);
    let mounted = container.model.as_ref().expect("a mounted model");
    assert_eq!((mounted.model_id.as_str(), mounted.version), ("m", 2));
    assert_eq!(mounted.files[0].path, "model.onnx");
    // What the agent will report as desired is what the rollout waits for.
    assert_eq!(workload.describe(), "scorer-image:3, m:2");
    assert_eq!(revision.model_list(), workload.describe());
    assert_eq!(revision.describe(), workload.describe());
    assert_eq!(workload.endpoint.port, 8080);
    assert_eq!(
        workload.endpoint.key_digests.len(),
        2,
        "key digests as for models"
    );
    assert_eq!(
        workload.blobs().count(),
        2,
        "the archive and the model's file"
    );
}

#[test]
fn an_image_the_engine_pulls_has_no_artifact_and_the_manifest_reference_wins() {
    let pulled = container_deployment("{image: \"web:2\", ports: [80]}", &[]);
    let pulled_workload =
        workload(&pulled, &pulled.revisions[0], &Resolved::default()).expect("runnable");
    let container = pulled_workload
        .as_container()
        .expect("a container workload");
    assert_eq!(
        (
            container.image.as_str(),
            container.image_digest.as_str(),
            container.image_artifact.as_str()
        ),
        ("web:2", "", "")
    );
    assert!(container.image_files.is_empty() && container.model.is_none());
    assert_eq!(pulled.revisions[0].model_list(), "web:2");
    assert_eq!(pulled_workload.describe(), "web:2");

    let renamed = container_deployment(
        "{image: \"scorer:local\", image_artifact: scorer-image:1, ports: [80]}",
        &[("scorer-image", 1)],
    );
    let workload = workload(
        &renamed,
        &renamed.revisions[0],
        &registry_of(&[image_artifact(1)]),
    )
    .expect("runnable");
    let container = workload.as_container().expect("a container workload");
    assert_eq!(container.image, "scorer:local");
    assert_eq!(container.image_digest, format!("sha256:{:064x}", 201));
    assert_eq!(workload.describe(), "scorer-image:1");
}

#[test]
fn where_a_container_cannot_run_it_is_unschedulable_with_the_reason() {
    let artifact_and_model = container_deployment(
        "{image_artifact: scorer-image, model: m:1, ports: [80]}",
        &[("scorer-image", 1), ("m", 1)],
    );
    let registry = registry_of(&[image_artifact(1), model("m", 1)]);
    let on = |device: &Device, deployment: &Deployment, resolved: &Resolved| {
        summary(&for_device(
            device,
            &placed(std::slice::from_ref(deployment)),
            resolved,
            None,
        ))
    };
    assert_eq!(
        on(&docker_device(), &artifact_and_model, &registry),
        ["scorer=scorer-image:1, m:1"]
    );
    assert_eq!(
        on(&device("d1", &[]), &artifact_and_model, &registry),
        [
            "scorer!this device's agent does not run container workloads; start it with --containers docker on a host whose Docker engine runs (the agent's log says why when the engine was unreachable)"
        ]
    );
    // An artifact that is no image (an ONNX model named by mistake).
    let mut not_an_image = registry.clone();
    not_an_image
        .models
        .insert(("scorer-image".into(), 1), Some(model("scorer-image", 1)));
    assert_eq!(
        on(&docker_device(), &artifact_and_model, &not_an_image),
        [
            "scorer!model scorer-image:1 is not an image artifact (framework onnx); container.image_artifact names a version registered from a `docker save` archive (framework oci-image)"
        ]
    );
    // A mounted model may be any files; a gone one is gone.
    let mut no_onnx = registry.clone();
    let mut weights = model("m", 1);
    weights.files[0].onnx = None;
    no_onnx.models.insert(("m".into(), 1), Some(weights));
    assert_eq!(
        on(&docker_device(), &artifact_and_model, &no_onnx),
        ["scorer=scorer-image:1, m:1"]
    );
    no_onnx.models.insert(("m".into(), 1), None);
    assert_eq!(
        on(&docker_device(), &artifact_and_model, &no_onnx),
        ["scorer!model m:1 does not exist"]
    );
    // And an image artifact is no model for a runtime.
    let web = deployment("web", 5001, 1, by_id("d1"));
    let mut image_as_model = image_artifact(1);
    image_as_model.model_id = "m".into();
    assert_eq!(
        on(
            &docker_device(),
            &web,
            &resolved(&[(1, Some(image_as_model))])
        ),
        [
            "web!model m:1 is an image artifact (framework oci-image): run it as a container workload (container.image_artifact)"
        ]
    );
}
