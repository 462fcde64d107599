//! Bad input gets a precise status and message, and leaves stored state untouched.

use edgeship_hub::registry::{Limits, NewModel};
use edgeship_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::*;

pub fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, text: &str) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "message: {}", status.message());
    assert!(
        status.message().contains(text),
        "expected {text:?} in {:?}",
        status.message()
    );
}

/// Nothing was registered and nothing was left on disk.
pub async fn assert_untouched(hub: &TestHub, client: &mut edgeship_hub::client::RegistryClient) {
    assert!(list_all(client).await.is_empty());
    assert!(hub.blob_files().is_empty(), "blobs: {:?}", hub.blob_files());
    hub.wait_for_empty_staging().await;
}

#[tokio::test]
async fn a_text_file_declared_as_onnx_is_rejected_naming_the_file() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let text = b"name,value\nnot,a model\n";
    let result = register_raw(
        &mut client,
        vec![
            metadata("m", "onnx"),
            file_header("weights/model.onnx", text.len() as u64),
            chunk(text),
            commit(1),
        ],
    )
    .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "weights/model.onnx is not a valid ONNX model",
    );
    assert_untouched(&hub, &mut client).await;

    let no_onnx = register_raw(
        &mut client,
        vec![
            metadata("m", "onnx"),
            file_header("model.bin", 1),
            chunk(b"x"),
            commit(1),
        ],
    )
    .await;
    assert_status(
        no_onnx,
        Code::InvalidArgument,
        "no file has the .onnx extension",
    );
    assert_untouched(&hub, &mut client).await;
}

#[tokio::test]
async fn empty_and_invalid_names_are_rejected() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    for (name, text) in [
        ("", "model name must not be empty"),
        ("has space", "invalid model name \"has space\""),
        ("../escape", "invalid model name"),
        ("-dash", "starting with a letter or digit"),
    ] {
        let result = register_raw(
            &mut client,
            vec![
                metadata(name, "custom"),
                file_header("a", 1),
                chunk(b"a"),
                commit(1),
            ],
        )
        .await;
        assert_status(result, Code::InvalidArgument, text);
    }
    let result = client
        .get_model(pb::GetModelRequest {
            name: "models/bad name/versions/1".into(),
        })
        .await;
    assert_status(result, Code::InvalidArgument, "invalid model name");
    let result = client
        .get_model(pb::GetModelRequest {
            name: "diabetes".into(),
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "expected models/{name}/versions/{version}",
    );
    assert_untouched(&hub, &mut client).await;
}

#[tokio::test]
async fn parent_and_absolute_paths_in_a_folder_upload_are_rejected() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    for (path, text) in [
        ("../outside.txt", "'.' and '..' segments are not allowed"),
        (
            "nested/../../outside.txt",
            "'.' and '..' segments are not allowed",
        ),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("a\\b", "use '/' as the separator"),
    ] {
        let result = register_raw(
            &mut client,
            vec![
                metadata("m", "custom"),
                file_header("ok.txt", 2),
                chunk(b"ok"),
                file_header(path, 1),
                chunk(b"x"),
                commit(2),
            ],
        )
        .await;
        assert_status(result, Code::InvalidArgument, text);
        assert_untouched(&hub, &mut client).await;
    }
}

#[tokio::test]
async fn duplicate_paths_and_file_folder_clashes_are_rejected() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let duplicate = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("a.txt", 1),
            chunk(b"a"),
            file_header("a.txt", 1),
            chunk(b"a"),
            commit(2),
        ],
    )
    .await;
    assert_status(duplicate, Code::InvalidArgument, "\"a.txt\" is given twice");
    let clash = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("a", 1),
            chunk(b"a"),
            file_header("a/b", 1),
            chunk(b"b"),
            commit(2),
        ],
    )
    .await;
    assert_status(
        clash,
        Code::InvalidArgument,
        "both as a file and as a folder",
    );
    assert_untouched(&hub, &mut client).await;
}

#[tokio::test]
async fn unknown_versions_and_models_are_not_found() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    register_diabetes(&mut client, "diabetes").await;
    let result = client
        .get_model(pb::GetModelRequest {
            name: "models/diabetes/versions/9".into(),
        })
        .await;
    assert_status(result, Code::NotFound, "model diabetes has no version 9");
    let result = client
        .get_model(pb::GetModelRequest {
            name: "models/nothing/versions/latest".into(),
        })
        .await;
    assert_status(result, Code::NotFound, "model nothing does not exist");
    let mut download = client
        .download_model(pb::DownloadModelRequest {
            name: "models/diabetes/versions/2".into(),
        })
        .await;
    if let Ok(stream) = &mut download {
        // Errors may arrive as the first stream item rather than the call's result.
        let first = stream.get_mut().message().await;
        assert_status(first, Code::NotFound, "has no version 2");
    } else {
        assert_status(download, Code::NotFound, "has no version 2");
    }
    let result = client
        .update_model(pb::UpdateModelRequest {
            name: "models/diabetes/versions/0".into(),
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "use a positive integer or 'latest'",
    );
}

#[tokio::test]
async fn deleting_twice_is_not_found_the_second_time() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    register_diabetes(&mut client, "m").await;
    let delete = pb::DeleteModelRequest {
        name: "models/m/versions/1".into(),
    };
    client
        .delete_model(delete.clone())
        .await
        .expect("first delete");
    assert_status(
        client.delete_model(delete).await,
        Code::NotFound,
        "model m does not exist",
    );
    assert_status(
        client
            .delete_model(pb::DeleteModelRequest {
                name: "models/m".into(),
            })
            .await,
        Code::NotFound,
        "model m does not exist",
    );
}

#[tokio::test]
async fn negative_page_sizes_and_forged_page_tokens_are_invalid() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let result = client
        .list_models(pb::ListModelsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "page_size must not be negative (got -1)",
    );
    let result = client
        .list_models(pb::ListModelsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "invalid page_token");
    let result = client
        .list_models(pb::ListModelsRequest {
            tags: vec!["=prod".into()],
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "invalid tag key \"\"");
}

#[tokio::test]
async fn a_stream_that_ends_before_commit_registers_nothing() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let truncated = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("big.bin", 100),
            chunk(&[7; 10]),
        ],
    )
    .await;
    assert_status(
        truncated,
        Code::InvalidArgument,
        "ended before its commit message",
    );
    assert_untouched(&hub, &mut client).await;

    let short_file = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("big.bin", 100),
            chunk(&[7; 10]),
            commit(1),
        ],
    )
    .await;
    assert_status(
        short_file,
        Code::InvalidArgument,
        "big.bin is truncated: 10 of its 100 bytes",
    );
    let lost_file = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("a", 1),
            chunk(b"a"),
            commit(2),
        ],
    )
    .await;
    assert_status(
        lost_file,
        Code::InvalidArgument,
        "announces 2 files but 1 arrived",
    );
    let overlong = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("a", 1),
            chunk(b"ab"),
            commit(1),
        ],
    )
    .await;
    assert_status(
        overlong,
        Code::InvalidArgument,
        "larger than its declared size",
    );
    let headless = register_raw(&mut client, vec![metadata("m", "custom"), chunk(b"ab")]).await;
    assert_status(headless, Code::InvalidArgument, "before any file header");
    let no_metadata = register_raw(&mut client, vec![file_header("a", 1)]).await;
    assert_status(
        no_metadata,
        Code::InvalidArgument,
        "must carry the model's metadata",
    );
    let empty = register_raw(&mut client, vec![metadata("m", "custom"), commit(0)]).await;
    assert_status(empty, Code::InvalidArgument, "at least one file");
    assert_untouched(&hub, &mut client).await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_upload_leaves_nothing_behind() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    let mut upload_client = client.clone();
    let call = tokio::spawn(async move {
        upload_client
            .register_model(ReceiverStream::new(receiver))
            .await
    });
    for payload in [
        metadata("m", "custom"),
        file_header("big.bin", 1 << 20),
        chunk(&[1; 4096]),
    ] {
        sender
            .send(pb::RegisterModelRequest {
                payload: Some(payload),
            })
            .await
            .expect("send");
    }
    // Once the hub is staging the first bytes, drop the call as a crashing client would.
    testkit::eventually(
        std::time::Duration::from_secs(30),
        "the upload being staged",
        || async { (!hub.staging_entries().is_empty()).then_some(()) },
    )
    .await;
    call.abort();
    drop(sender);
    assert_untouched(&hub, &mut client).await;
}

#[tokio::test]
async fn a_wrong_declared_digest_and_oversized_models_are_rejected() {
    let hub = TestHub::with_limits(Limits {
        max_model_bytes: 1024,
        max_files: 2,
    })
    .await;
    let mut client = hub.client().await;
    let wrong_digest = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            pb::register_model_request::Payload::File(pb::FileHeader {
                path: "a".into(),
                size_bytes: 1,
                sha256: "0".repeat(64),
            }),
            chunk(b"a"),
            commit(1),
        ],
    )
    .await;
    assert_status(
        wrong_digest,
        Code::InvalidArgument,
        "does not match its declared sha256",
    );
    let too_big = register_raw(
        &mut client,
        vec![metadata("m", "custom"), file_header("a", 2048)],
    )
    .await;
    assert_status(too_big, Code::InvalidArgument, "size limit of 1024 bytes");
    let too_many = register_raw(
        &mut client,
        vec![
            metadata("m", "custom"),
            file_header("a", 0),
            file_header("b", 0),
            file_header("c", 0),
        ],
    )
    .await;
    assert_status(too_many, Code::InvalidArgument, "at most 2 files");
    assert_untouched(&hub, &mut client).await;
}

#[tokio::test]
async fn bad_metadata_is_rejected_before_any_bytes_are_stored() {
    let hub = TestHub::start().await;
    let mut client = hub.client().await;
    let cases = [
        (
            NewModel {
                sample_input: Some("{\"data\": [1,".into()),
                ..new_model("m")
            },
            "sample input is not valid JSON",
        ),
        (
            NewModel {
                tags: [("bad key".to_string(), "v".to_string())].into(),
                ..new_model("m")
            },
            "invalid tag key \"bad key\"",
        ),
        (
            NewModel {
                framework: "on nx".into(),
                ..new_model("m")
            },
            "invalid framework",
        ),
    ];
    for (model, text) in cases {
        let result = register_raw(
            &mut client,
            vec![
                pb::register_model_request::Payload::Metadata(model.into()),
                file_header("a", 1),
                chunk(b"a"),
                commit(1),
            ],
        )
        .await;
        assert_status(result, Code::InvalidArgument, text);
    }
    let update = client
        .update_model(pb::UpdateModelRequest {
            name: "models/m/versions/1".into(),
            add_tags: [("k".to_string(), "v".to_string())].into(),
            remove_tags: vec!["k".into()],
            ..Default::default()
        })
        .await;
    assert_status(update, Code::InvalidArgument, "both added and removed");
    assert_untouched(&hub, &mut client).await;
}
