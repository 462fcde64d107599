//! The entry-module registry over gRPC: refusals that store nothing, and (with the example
//! modules built) the round trip, its own namespace beside models, blobs shared with models,
//! deployments naming a module, and continuous deployment of a new module version.
//!
//! Valid components are the edge-modules build, which this test build runs
//! (`testkit::modules`); without the wasm32-wasip2 target the tests that need one print a
//! `SKIP:` line and return (a failure under `EDGESHIP_CI=1`), and the refusals still run.

use std::path::PathBuf;

use edgeship_hub::client::{self, ModuleClient};
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use tonic::Code;

use crate::cli::edgeship;
use crate::support::*;

/// A component built from edge-modules by this test build (`testkit::modules`): `None` after a
/// `SKIP:` line where the wasm32-wasip2 target is missing, a failure under `EDGESHIP_CI=1`.
fn built_module(name: &str) -> Option<PathBuf> {
    testkit::modules::entry_modules("hub::modules").map(|dir| dir.join(format!("{name}.wasm")))
}

fn new_module(name: &str) -> NewModel {
    NewModel {
        model_id: name.to_owned(),
        description: "records to tensors".into(),
        tags: [("stage".to_owned(), "dev".to_owned())].into(),
        ..NewModel::default()
    }
}

async fn modules(hub: &TestHub) -> ModuleClient {
    client::connect_modules(&hub.url()).await.expect("connect")
}

async fn module_list(client: &mut ModuleClient, module_id: &str) -> Vec<String> {
    let request = pb::ListModulesRequest {
        module_id: module_id.to_owned(),
        ..Default::default()
    };
    let page = client.list_modules(request).await.expect("list");
    page.into_inner()
        .modules
        .iter()
        .map(|m| format!("{}:{}", m.module_id, m.version))
        .collect()
}

async fn deployment(url: &str, name: &str) -> pb::Deployment {
    DeploymentsClient::connect(url.to_owned())
        .await
        .expect("connect")
        .get_deployment(pb::GetDeploymentRequest {
            name: format!("deployments/{name}"),
        })
        .await
        .expect("get deployment")
        .into_inner()
}

fn assert_refused(result: anyhow::Result<pb::Module>, expected: &str) {
    let error = format!("{:#}", result.expect_err(expected));
    assert!(error.starts_with("invalid argument: "), "{error}");
    assert!(error.contains(expected), "expected {expected:?} in {error}");
}

#[tokio::test]
async fn anything_but_an_entry_module_component_is_refused_and_nothing_is_stored() {
    let hub = TestHub::start().await;
    let mut client = modules(&hub).await;
    let dir = tempfile::tempdir().expect("temp");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let cases = [
        (
            write("notes.txt", b"hello"),
            "\"notes.txt\" is not a .wasm file",
        ),
        (
            write("text.wasm", b"hello, not wasm"),
            "text.wasm is not a usable entry module: not a WebAssembly file",
        ),
        (
            write("core.wasm", b"\0asm\x01\0\0\0"),
            "core.wasm is not a usable entry module: a core WebAssembly module, not a component",
        ),
        (
            write("broken.wasm", b"\0asm\x0d\0\x01\0\xff\xff"),
            "broken.wasm is not a usable entry module: ",
        ),
    ];
    for (path, expected) in cases {
        let result = client::register_module(&mut client, new_module("records"), &path).await;
        assert_refused(result, expected);
    }
    if let Some(wrong) = built_module("wrong_exports") {
        let result = client::register_module(&mut client, new_module("records"), &wrong).await;
        assert_refused(result, "wrong_exports.wasm is not a usable entry module: ");
    }
    let folder = client::register_module(&mut client, new_module("records"), dir.path()).await;
    let error = format!("{:#}", folder.expect_err("a folder"));
    assert!(error.contains("a module is one .wasm file"), "{error}");

    assert!(module_list(&mut client, "").await.is_empty());
    assert!(hub.blob_files().is_empty(), "no blob kept");
    hub.wait_for_empty_staging().await;
}

#[tokio::test]
async fn module_names_and_sizes_are_checked_before_any_byte_is_kept() {
    let hub = TestHub::start().await;
    let mut client = modules(&hub).await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("m.wasm");
    std::fs::write(&path, b"\0asm").expect("write");
    let bad_name = client::register_module(&mut client, new_module("-bad"), &path).await;
    assert_refused(bad_name, "invalid module name \"-bad\"");

    let mut reserved = new_module("records");
    reserved
        .properties
        .insert("module.interface".into(), "9.9.9".into());
    let reserved = client::register_module(&mut client, reserved, &path).await;
    assert_refused(reserved, "property \"module.interface\" is reserved");

    // Declared larger than modules may be: refused at the file header.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let message = |payload| pb::RegisterModuleRequest {
        payload: Some(payload),
    };
    use pb::register_module_request::Payload;
    for payload in [
        Payload::Metadata(pb::ModuleMetadata {
            module_id: "big".into(),
            ..Default::default()
        }),
        Payload::File(pb::FileHeader {
            path: "big.wasm".into(),
            size_bytes: 65 * 1024 * 1024,
            sha256: String::new(),
        }),
    ] {
        sender.send(message(payload)).await.expect("queue");
    }
    drop(sender);
    let status = client
        .register_module(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("module exceeds the hub's size limit of 67108864 bytes (64 MiB)"),
        "{}",
        status.message()
    );
    assert!(hub.blob_files().is_empty());
}

#[tokio::test]
async fn unknown_modules_are_not_found_in_their_own_namespace() {
    let hub = TestHub::start().await;
    let mut models = hub.client().await;
    register_diabetes(&mut models, "diabetes").await;
    let mut client = modules(&hub).await;
    // A model of that name is no module.
    let status = client
        .get_module(pb::GetModuleRequest {
            name: "modules/diabetes/versions/latest".into(),
        })
        .await
        .expect_err("no such module");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "module diabetes does not exist");
    let status = client
        .get_module(pb::GetModuleRequest {
            name: "models/diabetes/versions/1".into(),
        })
        .await
        .expect_err("a model's name");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("expected modules/{name}/versions/{version}"),
        "{}",
        status.message()
    );
    assert!(module_list(&mut client, "").await.is_empty());

    let manifest = "name: web\nmodel: diabetes:1\nentry_module: records:2\nendpoint: {port: 5001}\ntarget: {devices: [d1]}\n";
    let status = apply(&hub.url(), manifest).await.expect_err("no module");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "module records does not exist");
}

#[tokio::test]
async fn a_module_registers_lists_shows_downloads_and_deletes_beside_a_model_of_its_name() {
    let Some(wasm) = built_module("records") else {
        return;
    };
    let hub = TestHub::start().await;
    let mut models = hub.client().await;
    let mut client = modules(&hub).await;
    register_diabetes(&mut models, "records").await;

    let registered = client::register_module(&mut client, new_module("records"), &wasm)
        .await
        .expect("registers");
    let bytes = std::fs::read(&wasm).expect("read");
    assert_eq!(registered.name, "modules/records/versions/1");
    assert_eq!(registered.version, 1);
    assert_eq!(registered.interface_version, "1.0.0");
    assert!(
        registered
            .imports
            .iter()
            .any(|i| i.starts_with("edgeship:entry/host@")),
        "{:?}",
        registered.imports
    );
    assert_eq!(registered.files.len(), 1);
    let file = &registered.files[0];
    assert_eq!(file.path, "records.wasm");
    assert_eq!(file.size_bytes, bytes.len() as u64);
    assert_eq!(registered.properties["module.sha256"], file.sha256);
    assert_eq!(
        registered.properties["module.size_bytes"],
        bytes.len().to_string()
    );
    assert_eq!(registered.properties["module.interface"], "1.0.0");
    assert_eq!(registered.tags["stage"], "dev");

    // Each registry lists its own.
    let again = client::register_module(&mut client, new_module("records"), &wasm)
        .await
        .expect("second version");
    assert_eq!(again.version, 2);
    assert_eq!(
        module_list(&mut client, "").await,
        ["records:1", "records:2"]
    );
    assert_eq!(list_all(&mut models).await, ["records:1"]);
    let latest = client
        .get_module(pb::GetModuleRequest {
            name: "modules/records/versions/latest".into(),
        })
        .await
        .expect("get latest")
        .into_inner();
    assert_eq!(latest.version, 2);

    let out = tempfile::tempdir().expect("temp");
    let target = out.path().join("copy.wasm");
    let downloaded =
        client::download_module(&mut client, "modules/records/versions/1", &target, false)
            .await
            .expect("download");
    assert_eq!(downloaded.version, 1);
    assert_eq!(std::fs::read(&target).expect("downloaded"), bytes);
    let again = client::download_module(&mut client, "modules/records/versions/1", &target, false)
        .await
        .expect_err("exists");
    assert!(again.to_string().contains("already exists"), "{again}");

    // Versions are not reused, and the model of the same name is untouched.
    let deleted = client
        .delete_module(pb::DeleteModuleRequest {
            name: "modules/records/versions/2".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted_versions, [2]);
    let next = client::register_module(&mut client, new_module("records"), &wasm)
        .await
        .expect("third version");
    assert_eq!(next.version, 3);
    let deleted = client
        .delete_module(pb::DeleteModuleRequest {
            name: "modules/records".into(),
        })
        .await
        .expect("delete all")
        .into_inner();
    assert_eq!(deleted.deleted_versions, [1, 3]);
    assert!(module_list(&mut client, "").await.is_empty());
    assert_eq!(list_all(&mut models).await, ["records:1"]);
    assert_eq!(hub.blob_files().len(), 1, "only the model's blob is left");
}

#[tokio::test]
async fn a_blob_a_model_and_a_module_share_stays_until_neither_holds_it() {
    let Some(wasm) = built_module("records") else {
        return;
    };
    let mut hub = TestHub::start().await;
    let mut models = hub.client().await;
    let mut client = modules(&hub).await;
    // The same bytes as a plain model file (framework custom).
    register(&mut models, new_model("raw"), &wasm).await;
    client::register_module(&mut client, new_module("records"), &wasm)
        .await
        .expect("registers");
    assert_eq!(hub.blob_files().len(), 1, "one blob for both");

    client
        .delete_module(pb::DeleteModuleRequest {
            name: "modules/records/versions/1".into(),
        })
        .await
        .expect("delete module");
    assert_eq!(hub.blob_files().len(), 1, "the model still holds it");
    // A restart's clean-up counts the model's reference too.
    hub.restart().await;
    assert_eq!(hub.blob_files().len(), 1);
    let mut models = hub.client().await;
    let out = tempfile::tempdir().expect("temp");
    client::download(&mut models, "models/raw/versions/1", out.path(), false)
        .await
        .expect("the model's file is still served");
    models
        .delete_model(pb::DeleteModelRequest {
            name: "models/raw".into(),
        })
        .await
        .expect("delete model");
    assert!(hub.blob_files().is_empty());
}

// Multi-threaded: the CLI it runs blocks this thread while the hub answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_a_module_follows_its_latest_and_keeps_it_from_deletion() {
    let Some(wasm) = built_module("records") else {
        return;
    };
    let hub = TestHub::start().await;
    let mut models = hub.client().await;
    let mut client = modules(&hub).await;
    register_diabetes(&mut models, "diabetes").await;
    client::register_module(&mut client, new_module("records"), &wasm)
        .await
        .expect("registers");

    let manifest = "name: web\nmodel: diabetes:1\nentry_module: records:latest\nsandbox: {deadline_ms: 500}\nendpoint: {port: 5001}\ntarget: {devices: [d1]}\n";
    let applied = apply(&hub.url(), manifest).await.expect("applies");
    let rollout = applied.rollout.expect("a rollout");
    assert_eq!(rollout.cause, "created: diabetes:1 + module records:1");
    let shown = deployment(&hub.url(), "web").await;
    assert_eq!(shown.entry_module, "records:latest");
    assert_eq!(shown.resolved_entry_module_version, 1);
    assert!(
        shown
            .manifest_json
            .contains("\"entry_module\":\"records:latest\"")
    );
    assert!(
        shown
            .manifest_json
            .contains("\"sandbox\":{\"deadline_ms\":500}")
    );

    let status = client
        .delete_module(pb::DeleteModuleRequest {
            name: "modules/records/versions/1".into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "module records is used by deployment web; delete the deployment first"
    );

    // A new module version rolls out like a new model version.
    client::register_module(&mut client, new_module("records"), &wasm)
        .await
        .expect("second version");
    let shown = deployment(&hub.url(), "web").await;
    assert_eq!(shown.revision, 2);
    assert_eq!(shown.resolved_entry_module_version, 2);
    let cause = shown.rollout.expect("rollout").cause;
    assert_eq!(
        cause,
        "continuous deployment (module records:2 registered): diabetes:1 + module records:2"
    );
    let out = edgeship(&hub.url(), &["deploy", "show", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("module:     records:latest (resolves to version 2)"),
        "{text}"
    );
    // Applying the same file again changes nothing.
    let again = apply(&hub.url(), manifest).await.expect("applies");
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(again.rollout.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_core_module_with_the_reason_on_one_line() {
    let hub = TestHub::start().await;
    let url = hub.url();
    let dir = tempfile::tempdir().expect("temp");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let core = core.display().to_string();
    let out = edgeship(&url, &["module", "register", "-n", "records", "-p", &core]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: invalid argument: core.wasm is not a usable entry module: a core WebAssembly module, not a component"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let out = edgeship(&url, &["module", "list", "-o", "json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = edgeship(&url, &["module", "show", "records:x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid version \"x\" of module \"records\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_walks_the_module_register_list_show_download_delete_cycle() {
    let Some(wasm) = built_module("records") else {
        return;
    };
    let hub = TestHub::start().await;
    let url = hub.url();
    let wasm = wasm.display().to_string();
    let run = |args: &[&str]| {
        let out = edgeship(&url, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let registered = run(&[
        "module",
        "register",
        "-n",
        "records",
        "-p",
        &wasm,
        "--tag",
        "stage=dev",
    ]);
    assert!(
        registered.starts_with("registered module records:1 (")
            && registered.contains("interface 1.0.0"),
        "{registered}"
    );
    let table = run(&["module", "list"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "VERSION", "INTERFACE", "SIZE", "CREATED", "TAGS"]
    );
    assert!(
        table.lines().nth(1).expect("row").starts_with("records  1"),
        "{table}"
    );
    assert!(
        run(&["model", "list", "-o", "json"]).trim() == "[]",
        "models are apart"
    );

    let details = run(&["module", "show", "records"]);
    for line in [
        "module:      records:1",
        "resource:    modules/records/versions/1",
        "interface:   1.0.0",
        "tags:        stage=dev",
    ] {
        assert!(details.contains(line), "{line:?} in {details}");
    }
    assert!(details.contains("edgeship:entry/host@"), "{details}");
    assert!(details.contains("records.wasm"), "{details}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["module", "show", "records:1", "-o", "json"])).expect("json");
    assert_eq!(json["name"], "modules/records/versions/1");
    assert_eq!(json["interface"], "1.0.0");
    assert_eq!(json["files"][0]["path"], "records.wasm");
    assert_eq!(json["properties"]["module.interface"], "1.0.0");

    let out = tempfile::tempdir().expect("temp");
    let copy = out.path().join("copy.wasm").display().to_string();
    let downloaded = run(&["module", "download", "records:1", "-o", &copy]);
    assert!(
        downloaded.starts_with("downloaded module records:1 ("),
        "{downloaded}"
    );
    assert_eq!(
        std::fs::read(&copy).expect("copy"),
        std::fs::read(&wasm).expect("original")
    );
    assert_eq!(
        run(&["module", "delete", "records:1"]).trim(),
        "deleted records version 1"
    );
    assert_eq!(run(&["module", "list", "-o", "json"]).trim(), "[]");
}
