//! The registry API end to end over gRPC: register, list, download, update, delete, restart.

use std::collections::BTreeMap;

use edgeship_hub::client;
use edgeship_hub::registry::{Dim, ModelVersion, NewModel};
use edgeship_proto::v1 as pb;

use crate::support::*;

#[tokio::test]
async fn registering_the_diabetes_model_extracts_its_signature() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let sample = std::fs::read_to_string(fixture("diabetes/sample_input.json")).expect("sample");
    let model = NewModel {
        model_id: "diabetes".into(),
        description: "Ridge regression on the diabetes data".into(),
        framework: "ONNX".into(),
        framework_version: "1.20".into(),
        tags: BTreeMap::from([("stage".into(), "dev".into())]),
        properties: BTreeMap::from([("r2".into(), "0.51".into())]),
        sample_input: Some(sample.clone()),
        sample_output: None,
    };
    let registered = register(&mut client, model, &fixture("diabetes/model.onnx")).await;

    assert_eq!(registered.version, 1);
    assert_eq!(registered.resource_name(), "models/diabetes/versions/1");
    assert_eq!(registered.framework, "onnx", "framework is normalized");
    assert_eq!(registered.sample_input.as_deref(), Some(sample.as_str()));
    assert_eq!(registered.files.len(), 1);
    let file = &registered.files[0];
    assert_eq!(file.path, "model.onnx");
    assert_eq!(file.size_bytes, 284);
    let bytes = std::fs::read(fixture("diabetes/model.onnx")).expect("fixture");
    assert_eq!(file.sha256, sha256_hex(&bytes));
    let signature = file.onnx.as_ref().expect("onnx signature");
    assert_eq!(signature.inputs[0].name, "data");
    assert_eq!(signature.inputs[0].element_type.name(), "float32");
    assert_eq!(signature.inputs[0].shape, [Dim::Unknown, Dim::Fixed(10)]);
    assert_eq!(signature.outputs[0].name, "variable");
    assert_eq!(signature.tract_incompatibility, None);

    let fetched = client
        .get_model(pb::GetModelRequest {
            name: "models/diabetes/versions/latest".into(),
        })
        .await
        .expect("get latest")
        .into_inner();
    assert_eq!(fetched.version, 1);
    assert_eq!(fetched.tags.get("stage").map(String::as_str), Some("dev"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn a_folder_keeps_its_layout_through_register_and_download() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let source = tempfile::tempdir().expect("temp");
    let root = source.path();
    std::fs::copy(fixture("digits/model.onnx"), root.join("model.onnx")).expect("copy");
    std::fs::create_dir_all(root.join("assets/labels")).expect("mkdir");
    std::fs::write(
        root.join("assets/labels/classes.txt"),
        "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n",
    )
    .expect("write");
    std::fs::write(root.join("assets/empty.bin"), b"").expect("write");
    std::fs::copy(fixture("digits/expected.json"), root.join("expected.json")).expect("copy");

    let registered = register(&mut client, new_model("digits"), root).await;
    let paths: Vec<&str> = registered.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "assets/empty.bin",
            "assets/labels/classes.txt",
            "expected.json",
            "model.onnx"
        ]
    );
    assert_eq!(registered.framework, "onnx", "inferred from the .onnx file");
    assert!(registered.files[3].onnx.is_some());
    assert!(
        registered.files[2].onnx.is_none(),
        "only .onnx files are parsed"
    );

    let target = tempfile::tempdir().expect("temp");
    let downloaded = client::download(
        &mut client,
        "models/digits/versions/1",
        target.path(),
        false,
    )
    .await
    .expect("download");
    assert_eq!(
        ModelVersion::try_from(downloaded).expect("a valid model"),
        registered
    );
    for path in paths {
        let original = std::fs::read(root.join(path)).expect("original");
        let copy = std::fs::read(target.path().join(path)).expect("downloaded");
        assert_eq!(original, copy, "{path} differs after download");
    }
    let again = client::download(
        &mut client,
        "models/digits/versions/1",
        target.path(),
        false,
    )
    .await;
    let err = again.expect_err("existing files are not overwritten silently");
    assert!(err.to_string().contains("use --overwrite"), "{err}");
}

#[tokio::test]
async fn versions_count_up_per_name_and_identical_files_are_stored_once() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    assert_eq!(register_diabetes(&mut client, "a").await.version, 1);
    assert_eq!(register_diabetes(&mut client, "a").await.version, 2);
    assert_eq!(register_diabetes(&mut client, "b").await.version, 1);
    assert_eq!(register_diabetes(&mut client, "a").await.version, 3);
    assert_eq!(
        hub.blob_files().len(),
        1,
        "one blob for four identical files"
    );
    assert_eq!(list_all(&mut client).await, ["a:1", "a:2", "a:3", "b:1"]);
}

#[tokio::test]
async fn list_filters_by_name_tags_properties_and_framework() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let onnx = fixture("diabetes/model.onnx");
    let custom = fixture("diabetes/expected.json");
    for (name, tags, props, path) in [
        (
            "ridge",
            vec![("stage", "prod"), ("team", "a")],
            vec![("r2", "0.5")],
            &onnx,
        ),
        ("ridge", vec![("stage", "dev")], vec![], &onnx),
        (
            "notes",
            vec![("stage", "prod")],
            vec![("r2", "0.9")],
            &custom,
        ),
    ] {
        let model = NewModel {
            model_id: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..NewModel::default()
        };
        register(&mut client, model, path).await;
    }
    let query = |f: fn(&mut pb::ListModelsRequest)| {
        let mut request = pb::ListModelsRequest::default();
        f(&mut request);
        request
    };
    assert_eq!(
        list(&mut client, query(|r| r.model_id = "ridge".into())).await,
        ["ridge:1", "ridge:2"]
    );
    assert_eq!(
        list(&mut client, query(|r| r.tags = vec!["stage=prod".into()])).await,
        ["notes:1", "ridge:1"]
    );
    assert_eq!(
        list(&mut client, query(|r| r.tags = vec!["team".into()])).await,
        ["ridge:1"]
    );
    assert_eq!(
        list(
            &mut client,
            query(|r| r.tags = vec!["stage=prod".into(), "team=a".into()])
        )
        .await,
        ["ridge:1"]
    );
    assert_eq!(
        list(&mut client, query(|r| r.properties = vec!["r2=0.9".into()])).await,
        ["notes:1"]
    );
    assert_eq!(
        list(&mut client, query(|r| r.framework = "custom".into())).await,
        ["notes:1"]
    );
    assert_eq!(
        list(&mut client, query(|r| r.tags = vec!["stage=none".into()])).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn list_paginates_with_tokens_bound_to_the_filter() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    for _ in 0..7 {
        register_diabetes(&mut client, "m").await;
    }
    let mut seen = Vec::new();
    let mut request = pb::ListModelsRequest {
        page_size: 3,
        model_id: "m".into(),
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = client
            .list_models(request.clone())
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.models.len() <= 3);
        seen.extend(page.models.iter().map(|m| m.version));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7]);

    let first = client
        .list_models(pb::ListModelsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let reused = client
        .list_models(pb::ListModelsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            tags: vec!["other".into()],
            ..Default::default()
        })
        .await
        .expect_err("token with another filter");
    assert_eq!(reused.code(), tonic::Code::InvalidArgument);
    assert!(
        reused.message().contains("different filter"),
        "{}",
        reused.message()
    );
}

#[tokio::test]
async fn update_adds_and_removes_tags_and_properties() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let model = NewModel {
        model_id: "m".into(),
        tags: BTreeMap::from([("old".into(), "1".into()), ("keep".into(), "yes".into())]),
        ..NewModel::default()
    };
    register(&mut client, model, &fixture("diabetes/model.onnx")).await;
    let updated = client
        .update_model(pb::UpdateModelRequest {
            name: "models/m/versions/1".into(),
            add_tags: [("new".to_string(), "2".to_string())].into(),
            remove_tags: vec!["old".into(), "never-set".into()],
            add_properties: [("accuracy".to_string(), "0.9".to_string())].into(),
            remove_properties: vec![],
            description: Some("retrained".into()),
        })
        .await
        .expect("update")
        .into_inner();
    let tags: BTreeMap<_, _> = updated.tags.into_iter().collect();
    assert_eq!(
        tags,
        BTreeMap::from([("keep".into(), "yes".into()), ("new".into(), "2".into())])
    );
    assert_eq!(
        updated.properties.get("accuracy").map(String::as_str),
        Some("0.9")
    );
    assert_eq!(updated.description, "retrained");
    let seconds = |t: Option<prost_types::Timestamp>| t.expect("timestamp").seconds;
    assert!(seconds(updated.update_time) >= seconds(updated.create_time));

    let removed = client
        .update_model(pb::UpdateModelRequest {
            name: "models/m/versions/1".into(),
            remove_properties: vec!["accuracy".into()],
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert!(removed.properties.is_empty());
    assert_eq!(
        removed.description, "retrained",
        "unset description is left alone"
    );
}

#[tokio::test]
async fn delete_frees_blobs_only_when_no_version_uses_them() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    register_diabetes(&mut client, "m").await;
    register_diabetes(&mut client, "m").await;
    register(&mut client, new_model("m"), &fixture("digits/model.onnx")).await;
    assert_eq!(hub.blob_files().len(), 2);

    let deleted = client
        .delete_model(pb::DeleteModelRequest {
            name: "models/m/versions/1".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted_versions, [1]);
    assert_eq!(hub.blob_files().len(), 2, "version 2 still uses the blob");

    let deleted = client
        .delete_model(pb::DeleteModelRequest {
            name: "models/m".into(),
        })
        .await
        .expect("delete all")
        .into_inner();
    assert_eq!(deleted.deleted_versions, [2, 3]);
    assert!(hub.blob_files().is_empty());
    assert!(list_all(&mut client).await.is_empty());

    // Version numbers are never reused: a pinned `m:1` cannot silently change meaning.
    assert_eq!(register_diabetes(&mut client, "m").await.version, 4);
}

#[tokio::test]
async fn a_restarted_hub_finds_everything_it_acknowledged() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    register_diabetes(&mut client, "diabetes").await;
    register(&mut client, new_model("digits"), &fixture("digits")).await;
    register_diabetes(&mut client, "diabetes").await;
    client
        .update_model(pb::UpdateModelRequest {
            name: "models/digits/versions/1".into(),
            add_tags: [("stage".to_string(), "prod".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("update");
    client
        .delete_model(pb::DeleteModelRequest {
            name: "models/diabetes/versions/1".into(),
        })
        .await
        .expect("delete");
    let before = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let blobs_before = hub.blob_files();

    hub.restart().await;
    let mut client = hub.client().await;
    let after = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(before, after);
    assert_eq!(blobs_before, hub.blob_files());
    let target = tempfile::tempdir().expect("temp");
    client::download(
        &mut client,
        "models/digits/versions/1",
        target.path(),
        false,
    )
    .await
    .expect("download after restart");
    assert_eq!(
        register_diabetes(&mut client, "diabetes").await.version,
        3,
        "the version counter survives the restart"
    );
}

#[tokio::test]
async fn a_crash_between_storing_a_blob_and_recording_it_leaves_no_orphan() {
    let mut hub = TestHub::start().await;
    let mut client = hub.client().await;
    register_diabetes(&mut client, "m").await;
    // What a crash after the blob rename and before the sled commit leaves behind.
    let orphan = hub
        .data
        .path()
        .join("blobs/sha256/ee")
        .join("ee".repeat(32));
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("mkdir");
    std::fs::write(&orphan, b"half registered").expect("write");
    let stale_upload = hub.data.path().join("blobs/staging/upload-1-1");
    std::fs::create_dir_all(&stale_upload).expect("mkdir");

    hub.restart().await;
    assert!(!orphan.exists(), "orphaned blob removed at start-up");
    assert!(hub.staging_entries().is_empty(), "stale staging removed");
    assert_eq!(hub.blob_files().len(), 1, "referenced blob kept");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let hub = TestHub::start().await;
    let channel = tonic::transport::Channel::from_shared(hub.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "edgeship.v1.ModelRegistry"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            status.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "service {service:?}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"edgeship.v1.ModelRegistry".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
