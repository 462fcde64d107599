//! Entry modules served for real: the example modules of `edge-modules/` (built for
//! wasm32-wasip2 by this test build; skipped with a `SKIP:` line where the target is missing,
//! a failure under `EDGESHIP_CI=1`) in front of the diabetes and digits fixtures, through a
//! stage and its endpoint, as a deployment would serve them; then modules that misbehave.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use edgeship_agent::cache::BlobCache;
use edgeship_agent::logbook;
use edgeship_agent::stage::Stage;
use edgeship_domain::{
    EntryModule, ModelWorkload, RuntimeKind, RuntimeOptions, SandboxSpec, Workload, WorkloadKind,
};
use futures::StreamExt;
use serde_json::json;
use testkit::modules::{diabetes_records, digit_png, entry_modules};
use testkit::{HttpResponse, expected, fixture, free_port};

use crate::split::{fixture_model, seed};

/// A stage in a temporary data folder, with the fixtures' and the modules' files in its cache.
struct Bench {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    stage: Stage,
    modules: std::path::PathBuf,
}

impl Bench {
    fn new(modules: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp");
        let data = dir.path().to_owned();
        Self {
            stage: Self::stage_in(&data),
            data,
            _dir: dir,
            modules: modules.to_owned(),
        }
    }

    /// A stage over `data`, as a restarted agent makes one.
    fn stage_in(data: &Path) -> Stage {
        let cache = BlobCache::open(data.join("blobs")).expect("cache");
        Stage::new(data.join("models"), cache, IpAddr::from([127, 0, 0, 1]))
    }

    fn cache(&self) -> BlobCache {
        BlobCache::open(self.data.join("blobs")).expect("cache")
    }

    /// Deployment `web` on `port`: fixture `model` behind module `module` (a built `.wasm`).
    fn workload(&self, port: u16, model: &str, module: &str, sandbox: SandboxSpec) -> Workload {
        let cache = self.cache();
        let model_file = seed(&cache, &fixture(model).join("model.onnx"), "model.onnx");
        let wasm = seed(
            &cache,
            &self.modules.join(format!("{module}.wasm")),
            "module.wasm",
        );
        Workload {
            deployment: "web".into(),
            endpoint: edgeship_domain::Endpoint::azureml(port),
            kind: WorkloadKind::Model(ModelWorkload {
                runtime: RuntimeKind::Tract,
                models: vec![fixture_model(model, 1, 0, &model_file)],
                options: RuntimeOptions::default(),
                entry_module: Some(EntryModule {
                    module_id: module.replace('_', "-"),
                    version: 1,
                    files: vec![wasm],
                    entry_file: "module.wasm".into(),
                    sandbox,
                }),
            }),
            health: None,
        }
    }
}

impl Bench {
    /// Applies [`Bench::workload`] and returns where it serves.
    async fn deploy(
        &mut self,
        port: u16,
        model: &str,
        module: &str,
        sandbox: SandboxSpec,
    ) -> SocketAddr {
        let workload = self.workload(port, model, module, sandbox);
        self.stage.apply(&workload).await.expect("the module loads");
        self.stage.addr("web").expect("serves")
    }
}

async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> HttpResponse {
    testkit::http(addr, "POST", path, &[("content-type", content_type)], body)
        .await
        .expect("answers")
}

#[tokio::test]
async fn the_records_module_feeds_the_diabetes_model_and_names_a_missing_column() {
    let Some(modules) = entry_modules("entry::records") else {
        return;
    };
    let mut bench = Bench::new(&modules);
    let port = free_port();
    let addr = bench
        .deploy(port, "diabetes", "records", SandboxSpec::default())
        .await;
    let workload = bench.workload(port, "diabetes", "records", SandboxSpec::default());

    let body = diabetes_records().to_string();
    let answer = post(addr, "/score", "application/json", body.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-edgeship-model"), Some("diabetes:1"));
    let got: Vec<f64> = serde_json::from_str(&answer.body).expect("a list of predictions");
    let want = expected("diabetes")["predictions"].clone();
    let want: Vec<f64> = serde_json::from_value(want).expect("predictions");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-3 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
    // Many callers at once share the instances (one per core): each gets its own answer.
    let answers = futures::stream::iter(0..200)
        .map(|_| post(addr, "/score", "application/json", body.as_bytes()))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for answer in answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        let again: Vec<f64> = serde_json::from_str(&answer.body).expect("predictions");
        assert_eq!(again, got);
    }

    let mut short = diabetes_records();
    short["data"][1]
        .as_object_mut()
        .expect("record")
        .remove("bmi");
    let answer = post(
        addr,
        "/score",
        "application/json",
        short.to_string().as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer
            .body
            .contains(r#"record 1 has no number for \"bmi\""#),
        "{}",
        answer.body
    );
    let swagger = testkit::http(addr, "GET", "/swagger.json", &[], b"")
        .await
        .expect("swagger")
        .json();
    let described = swagger["definitions"]["ServiceInput"]["description"].as_str();
    assert_eq!(
        described,
        Some("the request body of entry module records:1")
    );
    let answer = post(addr, "/score", "application/json", b"{not json").await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body.contains("not the JSON expected"),
        "{}",
        answer.body
    );

    // The compiled module was cached: a restarted agent's stage compiles nothing.
    let compiled = bench.data.join("compiled-modules");
    let files: Vec<_> = std::fs::read_dir(&compiled)
        .expect("compiled modules")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let written = std::fs::metadata(&files[0])
        .expect("cached")
        .modified()
        .expect("mtime");
    bench.stage.stop_all().await;
    let mut restarted = Bench::stage_in(&bench.data);
    restarted
        .apply(&workload)
        .await
        .expect("loads from the cache");
    let again = std::fs::metadata(&files[0])
        .expect("cached")
        .modified()
        .expect("mtime");
    assert_eq!(written, again, "loaded, not compiled and written again");
    let answer = post(addr, "/score", "application/json", body.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // A damaged cache file is compiled again, never loaded.
    restarted.stop_all().await;
    let mut bytes = std::fs::read(&files[0]).expect("cached");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&files[0], &bytes).expect("damaged");
    let mut repaired = Bench::stage_in(&bench.data);
    repaired.apply(&workload).await.expect("compiled again");
    let answer = post(addr, "/score", "application/json", body.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_ne!(std::fs::read(&files[0]).expect("rewritten"), bytes);
    repaired.stop_all().await;
}

#[tokio::test]
async fn the_image_module_labels_a_png_and_top_k_names_the_classes() {
    let Some(modules) = entry_modules("entry::image_label") else {
        return;
    };
    let expected_digits = expected("digits");
    let rows = expected_digits["inputs"].as_array().expect("rows").clone();
    let labels = expected_digits["labels"]
        .as_array()
        .expect("labels")
        .clone();

    let mut bench = Bench::new(&modules);
    let port = free_port();
    let addr = bench
        .deploy(port, "digits", "image_label", SandboxSpec::default())
        .await;
    for (row, label) in rows.iter().zip(&labels).take(5) {
        let ink: Vec<f64> = serde_json::from_value(row.clone()).expect("pixels");
        let png = digit_png(&ink, 4);
        let answer = post(addr, "/score", "application/octet-stream", &png).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let got = answer.json();
        assert_eq!(&got["label"], label, "{}", answer.body);
        assert_eq!(got["probabilities"].as_array().map(Vec::len), Some(10));
    }
    let answer = post(addr, "/score", "application/octet-stream", b"GIF89a").await;
    assert_eq!(answer.status, 400);
    assert!(answer.body.contains("not a PNG image"), "{}", answer.body);

    // Top-k over the same model, with the class names from the module's label file.
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    bench
        .deploy(port, "digits", "top_k", SandboxSpec::default())
        .await;
    let body = json!({ "data": rows[..3] }).to_string();
    let answer = post(addr, "/score?k=2", "application/json", body.as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ranked = answer.json();
    for (i, label) in labels.iter().take(3).enumerate() {
        let top = &ranked[i];
        assert_eq!(top.as_array().map(Vec::len), Some(2), "{ranked}");
        let index = label.as_u64().expect("label") as usize;
        assert_eq!(top[0]["index"], json!(index), "{ranked}");
        assert_eq!(top[0]["label"], json!(names[index]), "{ranked}");
        assert!(top[0]["probability"].as_f64() >= top[1]["probability"].as_f64());
    }
    let answer = post(addr, "/score?k=zero", "application/json", body.as_bytes()).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    bench.stage.stop_all().await;
}

#[tokio::test]
async fn hostile_modules_are_stopped_and_the_endpoint_keeps_serving() {
    let Some(modules) = entry_modules("entry::hostile") else {
        return;
    };
    let mut bench = Bench::new(&modules);
    let port = free_port();
    let sandbox = SandboxSpec {
        deadline_ms: 200,
        memory_mb: 32,
        instances: 2,
    };
    let addr = bench.deploy(port, "diabetes", "hostile", sandbox).await;
    let ask = |what: &'static str| async move {
        post(addr, "/score", "text/plain", what.as_bytes()).await
    };

    let started = std::time::Instant::now();
    let answer = ask("loop").await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body.contains("ran past its deadline of 200 ms"),
        "{}",
        answer.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped near its deadline"
    );
    assert_eq!(
        ask("hello").await.body,
        "ok",
        "the next request is answered"
    );

    let answer = ask("bomb").await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body.contains("went over its memory cap of 32 MiB"),
        "{}",
        answer.body
    );
    let answer = ask("panic").await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(answer.body.contains("asked to panic"), "{}", answer.body);
    assert_eq!(ask("hello").await.status, 200);

    let answer = ask("file").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("outside: denied"), "{}", answer.body);
    assert!(answer.body.contains("model: 1 entries"), "{}", answer.body);
    assert!(answer.body.contains("write: denied"), "{}", answer.body);
    let model_dir = bench.data.join("models/diabetes/1");
    assert!(!model_dir.join("planted").exists());
    let answer = ask("socket").await;
    assert!(answer.body.contains("socket: denied"), "{}", answer.body);
    let answer = ask("clock").await;
    assert_eq!(answer.body, "wall clock: 0");

    // What the module printed, and why requests failed, are in the deployment's log.
    let lines = logbook::recent("web", 100, 0);
    assert!(
        lines
            .iter()
            .any(|l| l.source == "stdout" && l.text.contains("hostile module asked for \"hello\"")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.source == "stderr" && l.text.contains("asked to panic")),
        "{lines:?}"
    );

    // A version whose module panics in init fails; the version before keeps serving.
    let broken = bench.workload(port, "diabetes", "init_panics", SandboxSpec::default());
    let err = bench.stage.apply(&broken).await.expect_err("init panics");
    assert!(
        err.to_string().contains("init cannot find its labels"),
        "{err}"
    );
    assert_eq!(
        ask("hello").await.body,
        "ok",
        "the hostile module still serves"
    );

    // Registration's check: a component of another world is refused with the reason; one
    // whose init panics passes it (init runs on devices).
    let wrong = std::fs::read(modules.join("wrong_exports.wasm")).expect("built");
    let why = edgeship_wasm::inspect(&wrong).expect_err("another world");
    assert!(why.contains("edgeship:entry"), "{why}");
    let panics = std::fs::read(modules.join("init_panics.wasm")).expect("built");
    let summary = edgeship_wasm::inspect(&panics).expect("a well-formed entry module");
    assert_eq!(summary.interface, "1.0.0");
    bench.stage.stop_all().await;
}
