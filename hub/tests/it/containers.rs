//! Container workloads at the hub: image artifacts (`docker save` archives) registered with
//! their image recorded, malformed archives refused with nothing stored, container manifests
//! applied and protected from deletion, continuous deployment of a new image, and a device
//! whose agent runs no containers told why.

use std::path::{Path, PathBuf};

use edgeship_agent::RunningAgent;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::bad_input::{assert_status, assert_untouched};
use crate::support::*;

/// An archive's members: path and bytes.
type Members = Vec<(String, Vec<u8>)>;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The members of a one-image archive as `docker save` writes it (OCI layout): a layer, the
/// config named by its digest, `manifest.json`. Returns them with the config's digest.
fn image_members(tag: &str) -> (Members, String) {
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(6);
    header.set_mode(0o755);
    header.set_cksum();
    layer
        .append_data(&mut header, "serve", b"#!/bin".as_slice())
        .expect("layer entry");
    let layer = layer.into_inner().expect("layer");
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/serve"], "ExposedPorts": {"5001/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]},
    }))
    .expect("config");
    let config_digest = sha(&config);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [tag],
        "Layers": [format!("blobs/sha256/{}", sha(&layer))],
    }]))
    .expect("manifest");
    let members = vec![
        (format!("blobs/sha256/{config_digest}"), config),
        (format!("blobs/sha256/{}", sha(&layer)), layer),
        ("manifest.json".to_owned(), manifest),
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
    ];
    (members, config_digest)
}

/// Writes `members` as `dir/image.tar`.
fn write_archive(dir: &Path, members: &[(String, Vec<u8>)]) -> PathBuf {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, bytes.as_slice())
            .expect("entry");
    }
    let path = dir.join("image.tar");
    std::fs::write(&path, builder.into_inner().expect("archive")).expect("write");
    path
}

/// Registers a valid archive tagged `tag` as `name`; returns the image id it recorded.
async fn register_image(
    client: &mut edgeship_hub::client::RegistryClient,
    name: &str,
    tag: &str,
) -> String {
    let dir = tempfile::tempdir().expect("temp");
    let (members, digest) = image_members(tag);
    let registered = register(
        client,
        new_model(name),
        &write_archive(dir.path(), &members),
    )
    .await;
    assert_eq!(
        registered.framework, "oci-image",
        "detected from the archive"
    );
    assert_eq!(
        registered.image().map(|i| i.reference),
        Some(tag.to_owned())
    );
    format!("sha256:{digest}")
}

#[tokio::test]
async fn a_docker_save_archive_registers_as_an_image_with_its_id_and_tag() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let id = register_image(&mut client, "scorer-image", "diabetes-scorer:1").await;
    let fetched = client
        .get_model(pb::GetModelRequest {
            name: "models/scorer-image/versions/1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.properties["image.id"], id);
    assert_eq!(fetched.properties["image.reference"], "diabetes-scorer:1");
    assert_eq!(fetched.files.len(), 1);
    assert!(fetched.files[0].onnx.is_none());

    // Declared, under any name; and the recorded properties are the hub's alone.
    let dir = tempfile::tempdir().expect("temp");
    let (members, _) = image_members("other:2");
    let declared = NewModel {
        framework: "OCI-Image".into(),
        ..new_model("other")
    };
    let archive = write_archive(dir.path(), &members);
    let renamed = dir.path().join("other.img");
    std::fs::rename(&archive, &renamed).expect("rename");
    let registered = register(&mut client, declared, &renamed).await;
    assert_eq!(registered.framework, "oci-image");
    let update = client
        .update_model(pb::UpdateModelRequest {
            name: "models/other/versions/1".into(),
            add_properties: [("image.reference".to_owned(), "evil:1".to_owned())].into(),
            ..Default::default()
        })
        .await;
    assert_status(
        update,
        Code::InvalidArgument,
        "\"image.reference\" is reserved",
    );
}

#[tokio::test]
async fn malformed_image_archives_are_refused_and_nothing_is_stored() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let (valid, digest) = image_members("scorer:1");
    let config = format!("blobs/sha256/{digest}");
    let edit = |path: &str, bytes: Option<Vec<u8>>| {
        let mut members = valid.clone();
        members.retain(|(p, _)| p != path);
        if let Some(bytes) = bytes {
            members.push((path.to_owned(), bytes));
        }
        members
    };
    let manifest = |value: serde_json::Value| Some(serde_json::to_vec(&value).expect("json"));
    let cases: Vec<(&str, Members, &str)> = vec![
        (
            "no manifest.json",
            edit("manifest.json", None),
            "has no manifest.json",
        ),
        (
            "two images",
            edit(
                "manifest.json",
                manifest(
                    json!([{"Config": config, "RepoTags": ["a:1"]}, {"Config": config, "RepoTags": ["b:1"]}]),
                ),
            ),
            "it holds 2 images",
        ),
        (
            "no config",
            edit("manifest.json", manifest(json!([{"RepoTags": ["a:1"]}]))),
            "names no Config",
        ),
        (
            "a config that is not its digest",
            edit(&config, Some(b"{}".to_vec())),
            "does not match the digest in its name",
        ),
        (
            "no tag",
            edit(
                "manifest.json",
                manifest(json!([{"Config": config, "RepoTags": null}])),
            ),
            "has no tag",
        ),
    ];
    for (case, members, expected) in cases {
        let dir = tempfile::tempdir().expect("temp");
        let declared = NewModel {
            framework: "oci-image".into(),
            ..new_model("scorer")
        };
        let result = edgeship_hub::client::register(
            &mut client,
            declared,
            &write_archive(dir.path(), &members),
        )
        .await;
        let err = result.expect_err(case).to_string();
        assert!(
            err.contains("image.tar is not a valid image archive") && err.contains(expected),
            "{case}: {err}"
        );
        assert_untouched(&hub, &mut client).await;
    }
    // Not a tar at all: refused when declared, a plain file when not.
    let dir = tempfile::tempdir().expect("temp");
    let text = dir.path().join("notes.tar");
    std::fs::write(&text, b"plain text, not a tar archive".repeat(40)).expect("write");
    let declared = NewModel {
        framework: "oci-image".into(),
        ..new_model("scorer")
    };
    let err = edgeship_hub::client::register(&mut client, declared, &text)
        .await
        .expect_err("not a tar")
        .to_string();
    assert!(err.contains("it is not a tar archive"), "{err}");
    assert_untouched(&hub, &mut client).await;
    let plain = register(&mut client, new_model("notes"), &text).await;
    assert_eq!(plain.framework, "custom");
    assert!(plain.properties.is_empty());
    // Reserved properties are refused at registration too.
    let mut claimed = new_model("claimed");
    claimed
        .properties
        .insert("image.id".into(), "sha256:00".into());
    let err = edgeship_hub::client::register(&mut client, claimed, &text)
        .await
        .expect_err("reserved")
        .to_string();
    assert!(err.contains("\"image.id\" is reserved"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_deployment_pins_its_image_and_model_and_protects_them() {
    let hub = TestHub::start().await;
    let url = hub.url();
    let mut client = hub.client().await;
    register_image(&mut client, "scorer-image", "diabetes-scorer:1").await;
    register_diabetes(&mut client, "diabetes").await;
    let manifest = "name: scorer\ncontainer:\n  image_artifact: scorer-image\n  model: diabetes:1\n  ports: [5001]\n  env: {MODE: fast}\nendpoint: {port: 8080, auth: key}\ntarget: {devices: [edge-1]}\n";
    let applied = apply(&url, manifest).await.expect("applied");
    let deployment = applied.deployment.expect("deployment");
    assert_eq!(deployment.runtime, "container");
    assert_eq!(deployment.model, "scorer-image:latest, diabetes:1");
    let rollout = deployment.rollout.expect("a rollout");
    assert_eq!(rollout.models, "scorer-image:1, diabetes:1");
    let written: serde_json::Value =
        serde_json::from_str(&deployment.manifest_json).expect("manifest json");
    assert_eq!(
        written["container"]["image_artifact"],
        "scorer-image:latest"
    );
    assert_eq!(written["container"]["env"]["MODE"], "fast");
    assert_eq!(written["runtime"], serde_json::Value::Null);

    for name in [
        "models/scorer-image/versions/1",
        "models/diabetes/versions/1",
    ] {
        let refused = client
            .delete_model(pb::DeleteModelRequest { name: name.into() })
            .await;
        assert_status(
            refused,
            Code::FailedPrecondition,
            "is used by deployment scorer",
        );
    }

    // A new image follows `latest`: a new revision, the mounted model unchanged.
    register_image(&mut client, "scorer-image", "diabetes-scorer:2").await;
    let now = crate::e2e::deployment_state(&url, "scorer").await;
    assert_eq!(
        now.rollout.map(|r| r.models).as_deref(),
        Some("scorer-image:2, diabetes:1")
    );

    // Each version must be fit for its role.
    let wrong_artifact = manifest
        .replace("name: scorer", "name: other")
        .replace("image_artifact: scorer-image", "image_artifact: diabetes:1")
        .replace("model: diabetes:1", "model: scorer-image:1")
        .replace("8080", "8081");
    assert_status(
        apply(&url, &wrong_artifact).await,
        Code::FailedPrecondition,
        "model diabetes:1 is not an image artifact (framework onnx)",
    );
    assert_status(
        apply(
            &url,
            "name: web\nmodel: scorer-image:1\nendpoint: {port: 8082}\ntarget: {devices: [edge-1]}\n",
        )
        .await,
        Code::FailedPrecondition,
        "model scorer-image:1 is an image artifact (framework oci-image)",
    );
    assert_status(
        apply(
            &url,
            &manifest.replace("  ports: [5001]\n", "  ports: [5001, 5002]\n"),
        )
        .await,
        Code::InvalidArgument,
        "container.ports: give exactly one port",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_agent_runs_no_containers_is_unschedulable_with_the_reason() {
    unschedulable_for_containers(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_docker_engine_is_unreachable_starts_and_is_unschedulable_for_containers() {
    let engine = edgeship_agent::config::ContainerEngine::Docker {
        socket: Some("/nonexistent/docker.sock".into()),
    };
    unschedulable_for_containers(Some(engine)).await;
}

async fn unschedulable_for_containers(engine: Option<edgeship_agent::config::ContainerEngine>) {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().expect("temp");
    let config = edgeship_agent::config::AgentConfig {
        containers: engine,
        ..agent_config("edge-1", &hub, dir.path())
    };
    let agent = RunningAgent::start(config).await.expect("agent");
    let since = now_ms() - 1000;
    wait_heard_from(&hub.url(), "edge-1", since).await;
    apply(
        &hub.url(),
        "name: web\ncontainer: {image: \"nginx:1.27\", ports: [80]}\nendpoint: {port: 8080}\ntarget: {devices: [edge-1]}\n",
    )
    .await
    .expect("applied");
    let deployment =
        crate::e2e::wait_for_deployment(&hub.url(), "web", pb::ServiceState::Unschedulable).await;
    assert!(
        deployment.devices[0]
            .error
            .contains("does not run container workloads; start it with --containers docker"),
        "{:?}",
        deployment.devices[0]
    );
    drop(agent);
}
