//! The scoring endpoint's contract (Azure ML conventions) and a self-test failure that must
//! leave the previous version serving.

use edgeship_agent::RunningAgent;
use edgeship_hub::fleet::ServiceState;
use edgeship_hub::registry::NewModel;
use edgeship_proto::v1 as pb;
use serde_json::json;

use crate::e2e::{ServingWeb, serving_web, wait_for_deployment};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scoring_requests_get_the_right_4xx_with_a_message() {
    let ServingWeb {
        hub: _hub,
        agent,
        addr,
        dir: _dir,
        ..
    } = serving_web("edge-s", "diabetes:1").await;

    let json_header = [("content-type", "application/json")];
    // (case, headers, body, expected status, expected text in the message)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong shape",
            json_header.to_vec(),
            json!({"data": [[1.0, 2.0]]}).to_string().into_bytes(),
            400,
            "dimension 1 must be 10, got 2",
        ),
        (
            "wrong type",
            json_header.to_vec(),
            json!({"data": [["a", 1, 1, 1, 1, 1, 1, 1, 1, 1]]})
                .to_string()
                .into_bytes(),
            400,
            "element 0 is the string \"a\", expected a number",
        ),
        (
            "ragged rows",
            json_header.to_vec(),
            json!({"data": [[1,2,3,4,5,6,7,8,9,10],[1]]})
                .to_string()
                .into_bytes(),
            400,
            "dimension 1 must be 10, got 10",
        ),
        (
            "not json",
            json_header.to_vec(),
            b"{\"data\": [[1,".to_vec(),
            400,
            "the body is not valid JSON",
        ),
        (
            "no data field",
            json_header.to_vec(),
            json!({"rows": []}).to_string().into_bytes(),
            400,
            "with a \"data\" field",
        ),
        (
            "text body",
            vec![("content-type", "text/plain")],
            b"1,2,3".to_vec(),
            415,
            "send the body as application/json",
        ),
        (
            "oversized",
            json_header.to_vec(),
            vec![b' '; 17 * 1024 * 1024],
            413,
            "exceeds the limit",
        ),
    ];
    for (case, headers, body, status, text) in cases {
        let response = http(addr, "POST", "/score", &headers, &body)
            .await
            .expect(case);
        assert_eq!(response.status, status, "{case}: {}", response.body);
        let message = response.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if case == "ragged rows" {
            assert!(
                message.contains("not rectangular") || message.contains("must be 10"),
                "{case}: {message}"
            );
        } else {
            assert!(message.contains(text), "{case}: {message}");
        }
    }

    let traced = http(
        addr,
        "POST",
        "/score",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "trace-42"),
        ],
        json!({"data": expected("diabetes")["inputs"]})
            .to_string()
            .as_bytes(),
    )
    .await
    .expect("score");
    assert_eq!(traced.header("x-request-id"), Some("trace-42"));
    assert_diabetes_predictions(&traced);
    let generated = http(addr, "GET", "/", &[], b"").await.expect("health");
    assert!(
        generated.header("x-request-id").is_some(),
        "a request id is generated"
    );

    let swagger = http(addr, "GET", "/swagger.json", &[], b"")
        .await
        .expect("swagger")
        .json();
    assert_eq!(swagger["swagger"], "2.0");
    let data = &swagger["definitions"]["ServiceInput"]["properties"]["data"];
    assert_eq!(data["items"]["minItems"], 10, "{data}");
    assert_eq!(data["items"]["items"]["type"], "number");
    assert!(swagger["definitions"]["ServiceInput"]["example"]["data"].is_array());
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_its_self_test_is_failed_and_the_old_one_keeps_serving() {
    let ServingWeb {
        hub,
        registry: mut client,
        agent,
        dir,
        addr,
        ..
    } = serving_web("edge-t", "diabetes:latest").await;

    // Version 2's registered sample has 3 features per row: the self-test must reject it.
    let broken = NewModel {
        model_id: "diabetes".into(),
        sample_input: Some(json!({"data": [[0.1, 0.2, 0.3]]}).to_string()),
        ..NewModel::default()
    };
    register(&mut client, broken, &fixture("diabetes/model.onnx")).await;
    let view = agent
        .wait_for(std::time::Duration::from_secs(60), |v| {
            v.workload("web")
                .is_some_and(|w| w.state == ServiceState::Failed)
        })
        .await
        .expect("version 2 fails");
    let workload = view.workload("web").expect("workload");
    assert!(workload.error.contains("self-test"), "{}", workload.error);
    assert_eq!(workload.serving_model, "diabetes:1");
    assert_eq!(workload.desired_model, "diabetes:2");
    let deployment = wait_for_deployment(&hub.url(), "web", pb::ServiceState::Failed).await;
    assert!(deployment.devices[0].error.contains("self-test"));
    let rows = json!({"data": expected("diabetes")["inputs"]});
    assert_diabetes_predictions(&score(addr, &rows).await.expect("old version still serves"));

    // After a restart the device still says version 2 failed (not a misleading Healthy).
    agent.stop().await.expect("stop");
    let agent = RunningAgent::start(agent_config("edge-t", &hub, dir.path()))
        .await
        .expect("agent restarts");
    let view = agent
        .wait_for(std::time::Duration::from_secs(30), |v| {
            v.workload("web").is_some_and(|w| w.addr.is_some())
        })
        .await
        .expect("restored");
    let workload = view.workload("web").expect("workload");
    assert_eq!(workload.state, ServiceState::Failed, "{workload:?}");
    assert_eq!(workload.serving_model, "diabetes:1");
    assert_eq!(workload.desired_model, "diabetes:2");
    assert_diabetes_predictions(&score(addr, &rows).await.expect("restored version serves"));
    agent.stop().await.expect("stop");
}

/// Auth `key`: the hub makes a primary and a secondary key, devices get only their digests,
/// either key scores, and a regenerated key takes effect on the device within seconds while
/// the other keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_keys_are_checked_on_the_device_and_rotate_without_a_restart() {
    use edgeship_proto::v1::deployments_client::DeploymentsClient;

    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    crate::e2e::register_diabetes_with_sample(&mut registry).await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = RunningAgent::start(agent_config("edge-key", &hub, dir.path()))
        .await
        .expect("agent");
    let endpoint = pb::Endpoint {
        port: u32::from(free_port()),
        auth: pb::AuthMode::Key.into(),
        ..Default::default()
    };
    edgeship_hub::client::deploy_endpoint_to_devices(
        &hub.url(),
        "web",
        "diabetes:1",
        endpoint,
        &["edge-key"],
    )
    .await
    .expect("deploy with keys");
    let addr = crate::e2e::wait_serving(&agent, "web", "diabetes:1").await;
    let mut deployments = DeploymentsClient::connect(hub.url())
        .await
        .expect("connect");
    let keys = deployments
        .get_deployment_keys(pb::GetDeploymentKeysRequest {
            name: "deployments/web".into(),
        })
        .await
        .expect("keys")
        .into_inner();
    assert_ne!(keys.primary_key, keys.secondary_key);
    let desired =
        std::fs::read_to_string(dir.path().join("desired.json")).expect("desired state on disk");
    assert!(
        !desired.contains(&keys.primary_key) && !desired.contains(&keys.secondary_key),
        "the device holds digests, never keys"
    );

    let rows =
        json!({"data": [[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]]})
            .to_string();
    let post = |key: Option<String>| {
        let rows = rows.clone();
        async move {
            let bearer = key.map(|k| format!("Bearer {k}"));
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(bearer.as_deref().map(|b| ("authorization", b)));
            http(addr, "POST", "/score", &headers, rows.as_bytes())
                .await
                .expect("answers")
                .status
        }
    };
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("guess".into())).await, 401);
    assert_eq!(post(Some(keys.primary_key.clone())).await, 200);
    assert_eq!(post(Some(keys.secondary_key.clone())).await, 200);

    let rotated = deployments
        .regenerate_deployment_key(pb::RegenerateDeploymentKeyRequest {
            name: "deployments/web".into(),
            key: "secondary".into(),
        })
        .await
        .expect("regenerate")
        .into_inner();
    assert_eq!(
        rotated.primary_key, keys.primary_key,
        "only the secondary changes"
    );
    assert_ne!(rotated.secondary_key, keys.secondary_key);
    let loads_before = agent.view().borrow().models_loaded;
    testkit::eventually(
        std::time::Duration::from_secs(60),
        "the device takes the new key",
        || {
            let key = rotated.secondary_key.clone();
            async move { (post(Some(key)).await == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        post(Some(keys.secondary_key.clone())).await,
        401,
        "the old key is refused"
    );
    assert_eq!(
        post(Some(keys.primary_key.clone())).await,
        200,
        "the other key kept working"
    );
    assert_eq!(
        agent.view().borrow().models_loaded,
        loads_before,
        "no model was reloaded"
    );

    let wrong = deployments
        .regenerate_deployment_key(pb::RegenerateDeploymentKeyRequest {
            name: "deployments/web".into(),
            key: "tertiary".into(),
        })
        .await
        .expect_err("no third key");
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
    assert!(
        wrong.message().contains("use primary or secondary"),
        "{}",
        wrong.message()
    );
}

/// Batching from the manifest to the device: 64 concurrent requests to a deployment with
/// `batching` share runtime calls (the device's `/metrics` counts batches of several), and
/// every answer equals the answer to the same request alone, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batching_deployment_coalesces_concurrent_requests_into_the_same_answers() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    crate::e2e::register_diabetes_with_sample(&mut registry).await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = RunningAgent::start(agent_config("edge-batch", &hub, dir.path()))
        .await
        .expect("agent");
    let manifest = format!(
        "name: web\nmodel: diabetes:1\nendpoint: {{port: {}}}\ntarget: {{devices: [edge-batch]}}\n\
         batching: {{max_batch_size: 8, max_queue_delay_ms: 20, max_queue_size: 256}}\n",
        free_port()
    );
    apply(&hub, manifest).await;
    let addr = crate::e2e::wait_serving(&agent, "web", "diabetes:1").await;
    let body = |i: usize| {
        let row: Vec<f64> = (0..10)
            .map(|k| ((i * 10 + k) as f64 * 0.37).sin() * 0.05)
            .collect();
        json!({ "data": [row] }).to_string()
    };
    let score = |body: String| async move {
        let response = http(
            addr,
            "POST",
            "/score",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .expect("answers");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    };
    // Alone first, one at a time: the reference answers.
    let mut alone = Vec::new();
    for i in 0..64 {
        alone.push(score(body(i)).await);
    }
    let together = futures::future::join_all((0..64).map(|i| score(body(i)))).await;
    assert_eq!(
        together, alone,
        "answers under concurrency equal answers alone"
    );
    let metrics = http(addr, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics")
        .body;
    let batches = |le: &str| -> u64 {
        let prefix = format!(
            "edgeship_batch_size_bucket{{deployment=\"web\",model=\"diabetes\",version=\"1\",le=\"{le}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
    };
    assert!(
        batches("+Inf") > batches("1"),
        "some runtime calls carried several requests:\n{metrics}"
    );
    assert!(metrics.contains("edgeship_queue_depth{deployment=\"web\""));
}

/// A multi-model endpoint: two models behind one port, each reached by name over Azure ML
/// (`?model=` or the header) and v2 (the path), each with its own swagger and metadata; a new
/// version of one model rolls out and leaves the other as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_behind_one_endpoint_are_routed_by_name() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    crate::e2e::register_diabetes_with_sample(&mut registry).await;
    let digits = NewModel {
        model_id: "digits".into(),
        ..NewModel::default()
    };
    register(&mut registry, digits, &fixture("digits/model.onnx")).await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = RunningAgent::start(agent_config("edge-multi", &hub, dir.path()))
        .await
        .expect("agent");
    let manifest = format!(
        "name: shop\nmodels: [diabetes:latest, digits:1]\n\
         endpoint: {{port: {}, protocols: [azureml, v2]}}\ntarget: {{devices: [edge-multi]}}\n",
        free_port()
    );
    apply(&hub, manifest).await;
    let addr = crate::e2e::wait_serving(&agent, "shop", "diabetes:1, digits:1").await;
    let json_type = ("content-type", "application/json");
    let diabetes_row =
        br#"{"data": [[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]]}"#;
    let digits_rows = serde_json::to_vec(&json!({"data": [vec![0.0; 64]]})).expect("json");
    let post = |path: &'static str, headers: Vec<(&'static str, &'static str)>, body: Vec<u8>| async move {
        let mut headers = headers;
        headers.push(json_type);
        http(addr, "POST", path, &headers, &body)
            .await
            .expect("answers")
    };
    let default = post("/score", vec![], diabetes_row.to_vec()).await;
    assert_eq!(default.status, 200, "{}", default.body);
    assert_eq!(
        default.header("x-edgeship-model"),
        Some("diabetes:1"),
        "the first model by default"
    );
    for (path, headers) in [
        ("/score?model=digits", vec![]),
        ("/score", vec![("x-edgeship-model-name", "digits")]),
    ] {
        let answer = post(path, headers, digits_rows.clone()).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.header("x-edgeship-model"), Some("digits:1"));
    }
    let unknown = post("/score?model=iris", vec![], diabetes_row.to_vec()).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown
            .body
            .contains("this endpoint serves diabetes, digits"),
        "{}",
        unknown.body
    );
    let swagger = http(addr, "GET", "/swagger.json?model=digits", &[], b"")
        .await
        .expect("answers");
    assert!(
        swagger.body.contains("\"pixels\"") || swagger.body.contains("64"),
        "{}",
        swagger.body
    );
    let digits_meta = http(addr, "GET", "/v2/models/digits", &[], b"")
        .await
        .expect("answers");
    assert_eq!(digits_meta.json()["name"], "digits");
    assert_eq!(digits_meta.json()["versions"], json!(["1"]));
    let v2 = json!({"inputs": [{"name": digits_meta.json()["inputs"][0]["name"], "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}]});
    let inferred = post(
        "/v2/models/digits/infer",
        vec![],
        v2.to_string().into_bytes(),
    )
    .await;
    assert_eq!(inferred.status, 200, "{}", inferred.body);
    assert_eq!(inferred.json()["model_name"], "digits");

    // diabetes follows `latest`: version 2 rolls out; digits stays on version 1.
    crate::e2e::register_diabetes_with_sample(&mut registry).await;
    crate::e2e::wait_serving(&agent, "shop", "diabetes:2, digits:1").await;
    let again = post("/score?model=digits", vec![], digits_rows.clone()).await;
    assert_eq!(again.header("x-edgeship-model"), Some("digits:1"));
}

/// Applies a manifest through the API, as `edgeship deploy apply` does.
async fn apply(hub: &TestHub, manifest: String) {
    edgeship_proto::v1::deployments_client::DeploymentsClient::connect(hub.url())
        .await
        .expect("connect")
        .apply_deployment(pb::ApplyDeploymentRequest {
            manifest,
            dry_run: false,
        })
        .await
        .expect("apply");
}
