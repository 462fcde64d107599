//! `ProfileModel` (`edgeship model profile`): a real profile of the diabetes fixture on an
//! in-process agent beside a deployment it already serves, the refusals, and the profile's
//! deployment deleted however the profile ends, a hub that dies mid-profile included.

use std::time::{Duration, Instant};

use edgeship_hub::RunningHub;
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use edgeship_proto::v1::profiles_client::ProfilesClient;
use prost::Message;
use tonic::Code;

use crate::e2e::{ServingWeb, deploy, serving_web, try_deployment_state, wait_for_deployment};
use crate::protocol::{raw_listener, send};
use crate::support::*;

/// The deployment a profile of diabetes:1 makes.
const PROFILE_DEPLOYMENT: &str = "profile-diabetes-1";

fn sample() -> Vec<u8> {
    std::fs::read(fixture("diabetes/sample_input.json")).expect("sample input")
}

fn request(device: &str, concurrency: &[u32], seconds: u32) -> pb::ProfileModelRequest {
    pb::ProfileModelRequest {
        name: "models/diabetes/versions/1".into(),
        device: device.into(),
        body: sample().into(),
        concurrency: concurrency.to_vec(),
        seconds_per_level: seconds,
        ..Default::default()
    }
}

async fn profile(
    url: &str,
    request: pb::ProfileModelRequest,
) -> Result<pb::ModelProfile, tonic::Status> {
    ProfilesClient::connect(url.to_owned())
        .await
        .expect("connect")
        .profile_model(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Starts a profile in the background.
fn start_profile(
    url: &str,
    request: pb::ProfileModelRequest,
) -> tokio::task::JoinHandle<Result<pb::ModelProfile, tonic::Status>> {
    let url = url.to_owned();
    tokio::spawn(async move { profile(&url, request).await })
}

/// Waits (30 s at most) until deployment `name` exists, or no longer does.
async fn wait_exists(url: &str, name: &str, exists: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_deployment_state(url, name).await {
            Ok(_) if exists => return,
            Err(status) if !exists && status.code() == Code::NotFound => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "deployment {name} exists is not {exists}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused(result: Result<pb::ModelProfile, tonic::Status>, code: Code, words: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(words),
        "{words:?} not in {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_measures_the_model_on_its_device_and_stores_the_recommendation() {
    let ServingWeb {
        hub,
        mut registry,
        agent,
        addr,
        dir: _dir,
        ..
    } = serving_web("edge-p", "diabetes:1").await;
    let url = hub.url();
    // Sees the profile request go out, to forge answers to it.
    let requests = topics::device("edge-p", DeviceTopic::ProfileRequest);
    let (forger, mut asked) = raw_listener(&hub.mqtt_url(), "forger", &requests).await;

    let running = start_profile(&url, request("edge-p", &[1, 2], 1));
    wait_exists(&url, PROFILE_DEPLOYMENT, true).await;
    // While it runs: a second profile of the version is refused, and so is a user's
    // deployment under the reserved prefix.
    refused(
        profile(&url, request("edge-p", &[1], 1)).await,
        Code::FailedPrecondition,
        "a profile of diabetes:1 is running on device edge-p",
    );
    let reserved = apply(
        &url,
        "name: profile-mine\nmodel: diabetes:1\nendpoint: {port: 5999}\ntarget: {devices: [edge-p]}\n",
    )
    .await
    .expect_err("reserved");
    assert_eq!(reserved.code(), Code::InvalidArgument);
    assert!(reserved.message().contains("reserved"), "{reserved:?}");
    // Answers from another device, and garbage, do not end it.
    let request_id = loop {
        let payload = tokio::time::timeout(Duration::from_secs(60), asked.recv())
            .await
            .expect("the profile request goes out")
            .expect("payload");
        let request = pb::ProfileRequest::decode(payload.as_ref()).expect("a request");
        if !request.request_id.is_empty() {
            assert_eq!(request.deployment, PROFILE_DEPLOYMENT);
            assert_eq!(
                (request.path.as_str(), request.content_type.as_str()),
                ("/score", "application/json")
            );
            break request.request_id;
        }
    };
    let forged = pb::ProfileResponse {
        request_id,
        levels: vec![pb::ProfileLevel {
            concurrency: 1,
            requests: 999_999_999,
            seconds: 1.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    send(
        &forger,
        "edge-q",
        DeviceTopic::ProfileResponse,
        forged.encode_to_vec(),
    )
    .await;
    send(
        &forger,
        "edge-p",
        DeviceTopic::ProfileResponse,
        vec![0xff, 0x13, 0x37],
    )
    .await;

    let measured = running.await.expect("task").expect("the profile succeeds");
    assert_eq!(measured.name, "models/diabetes/versions/1");
    assert_eq!(measured.device, "edge-p");
    let concurrency: Vec<u32> = measured.levels.iter().map(|l| l.concurrency).collect();
    assert_eq!(concurrency, [1, 2]);
    for level in &measured.levels {
        assert!(
            level.requests > 0 && level.requests < 999_999_999,
            "{level:?}"
        );
        assert_eq!(level.errors, 0, "{level:?}");
        assert!(level.seconds >= 0.9, "{level:?}");
        assert!(
            0.0 < level.p50_ms && level.p50_ms <= level.p99_ms,
            "{level:?}"
        );
        assert!(level.peak_rss_bytes > 0, "{level:?}");
    }
    assert!(measured.recommended_cpu >= 0.1, "{measured:?}");
    assert!(
        measured.recommended_memory_bytes >= 16 << 20,
        "{measured:?}"
    );
    assert_eq!(measured.recommended_memory_bytes % (1 << 20), 0);
    assert!(concurrency.contains(&measured.best_concurrency));
    let class = format!(
        "{}-{}cpu",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    assert_eq!(measured.device_class, class);
    let cpu = format!("{:.1}", measured.recommended_cpu);
    let memory_mb = (measured.recommended_memory_bytes >> 20).to_string();
    for (key, value) in [
        ("cpu", cpu.as_str()),
        ("memory_mb", memory_mb.as_str()),
        ("entry_module", "none"),
    ] {
        let key = format!("profile/{class}/{key}");
        assert_eq!(
            measured.properties.get(&key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(measured.properties.len(), 8, "{:?}", measured.properties);

    // Stored on the version, durably like any update.
    let model = get_model(&mut registry, "models/diabetes/versions/1").await;
    for (key, value) in &measured.properties {
        assert_eq!(model.properties.get(key), Some(value), "{key}");
    }

    // The profile's deployment is gone, from the hub and from the device; the device's own
    // deployment never noticed.
    wait_exists(&url, PROFILE_DEPLOYMENT, false).await;
    agent
        .wait_for(Duration::from_secs(30), |v| {
            v.workload(PROFILE_DEPLOYMENT).is_none()
        })
        .await
        .expect("the agent stops serving the profile");
    let web = wait_for_deployment(&url, "web", pb::ServiceState::Healthy).await;
    assert_eq!(web.revision, 1, "the web deployment was not touched");
    let rows = serde_json::json!({"data": expected("diabetes")["inputs"]});
    assert_diabetes_predictions(&score(addr, &rows).await.expect("web still answers"));
    // Log requests go through the same request-and-answer machinery, beside profiles: the
    // device answers (a silent one would be named in `errors`). It has no lines to give: the
    // agent's logbook is a layer of the agent binary's subscriber, not of this test's.
    let logs = DeploymentsClient::connect(url.clone())
        .await
        .expect("connect")
        .get_deployment_logs(pb::GetDeploymentLogsRequest {
            name: "deployments/web".into(),
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    assert!(logs.errors.is_empty(), "{:?}", logs.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_that_cannot_run_are_refused_with_the_reason() {
    let hub = TestHub::start().await;
    let url = hub.url();
    register_diabetes(&mut hub.client().await, "diabetes").await;
    // A device the hub knows only because a deployment names it: never online.
    deploy(&url, "ghost-web", "diabetes:1", free_port(), &["ghost"])
        .await
        .expect("deploy");

    let named = |name: &str| pb::ProfileModelRequest {
        name: name.into(),
        ..request("ghost", &[1], 1)
    };
    let cases = [
        (named("models/nope/versions/1"), Code::NotFound, "nope"),
        (
            named("models/diabetes/versions/7"),
            Code::NotFound,
            "diabetes",
        ),
        (
            named("diabetes:1"),
            Code::InvalidArgument,
            "invalid resource name",
        ),
        (
            pb::ProfileModelRequest {
                entry_module: "records:1".into(),
                ..request("ghost", &[1], 1)
            },
            Code::NotFound,
            "records",
        ),
        (
            request("nowhere", &[1], 1),
            Code::NotFound,
            "device nowhere",
        ),
        (
            request("ghost", &[1], 1),
            Code::FailedPrecondition,
            "device ghost is offline",
        ),
        (
            request("ghost", &[1, 2, 3, 4, 5, 6, 7, 8, 9], 1),
            Code::InvalidArgument,
            "9 levels",
        ),
        (
            request("ghost", &[1], 31),
            Code::InvalidArgument,
            "seconds_per_level",
        ),
        (
            pb::ProfileModelRequest {
                body: vec![b' '; 1 << 20].into(),
                ..request("ghost", &[1], 1)
            },
            Code::InvalidArgument,
            "body: 1048576 bytes",
        ),
    ];
    for (asked, code, words) in cases {
        refused(profile(&url, asked).await, code, words);
    }

    // Nothing was deployed for any of them.
    let listed = DeploymentsClient::connect(url.clone())
        .await
        .expect("connect")
        .list_deployments(pb::ListDeploymentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed
        .deployments
        .iter()
        .map(|d| d.deployment_id.as_str())
        .collect();
    assert_eq!(names, ["ghost-web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_dies_mid_profile_deletes_the_profile_deployment_when_it_starts_again() {
    let ServingWeb {
        mut hub,
        agent: _agent,
        dir: _dir,
        ..
    } = serving_web("edge-d", "diabetes:1").await;
    let running = start_profile(&hub.url(), request("edge-d", &[1], 30));
    wait_exists(&hub.url(), PROFILE_DEPLOYMENT, true).await;

    // Dropped without stopping, as a crash would leave it: nothing cleans up.
    drop(hub.hub.take());
    let status = running
        .await
        .expect("task")
        .expect_err("the call ends with the hub");
    assert_ne!(status.code(), Code::Ok, "{status:?}");
    // The old hub's tasks let go of the database as they unwind.
    let deadline = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        let config = edgeship_hub::HubConfig::local(hub.data.path().to_owned());
        match RunningHub::start(config).await {
            Ok(started) => break started,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %format!("{err:#}"), "data folder still held");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the hub does not start again: {err:#}"),
        }
    };
    let status = try_deployment_state(&restarted.url(), PROFILE_DEPLOYMENT)
        .await
        .expect_err("deleted at start-up");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    try_deployment_state(&restarted.url(), "web")
        .await
        .expect("web stays");
    hub.hub = Some(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_stops_mid_profile_ends_it_and_deletes_its_deployment() {
    let ServingWeb {
        mut hub,
        agent,
        dir: _dir,
        ..
    } = serving_web("edge-s", "diabetes:1").await;
    let running = start_profile(&hub.url(), request("edge-s", &[1], 30));
    wait_exists(&hub.url(), PROFILE_DEPLOYMENT, true).await;
    let started = Instant::now();
    hub.restart().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stop waited for the profile"
    );
    let status = running.await.expect("task").expect_err("ended by the stop");
    assert_ne!(status.code(), Code::Ok, "{status:?}");
    let status = try_deployment_state(&hub.url(), PROFILE_DEPLOYMENT)
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_ends_the_profile_and_its_deployment() {
    let ServingWeb {
        hub,
        agent: _agent,
        dir: _dir,
        ..
    } = serving_web("edge-c", "diabetes:1").await;
    let running = start_profile(&hub.url(), request("edge-c", &[1], 30));
    wait_exists(&hub.url(), PROFILE_DEPLOYMENT, true).await;
    // Ctrl-C on `edgeship model profile`: the call is dropped.
    running.abort();
    wait_exists(&hub.url(), PROFILE_DEPLOYMENT, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_levels_and_the_recommendation_and_model_show_lists_it() {
    let ServingWeb {
        hub,
        agent: _agent,
        dir: _dir,
        ..
    } = serving_web("edge-l", "diabetes:1").await;
    let input = fixture("diabetes/sample_input.json");
    let run = |args: Vec<String>| {
        let url = hub.url();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = crate::cli::edgeship(&url, &args);
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{args:?}: {stderr}");
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
    };
    let profile_args = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "model",
            "profile",
            "diabetes:1",
            "--device",
            "edge-l",
            "--concurrency",
            "1",
            "--seconds",
            "1",
            "--input",
        ]
        .map(String::from)
        .to_vec();
        args.push(input.display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    let table = run(profile_args(&[])).await.expect("task");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("CONCURRENCY  REQ/S"), "{table}");
    assert!(lines[1].starts_with("1 "), "{table}");
    let class = format!(
        "{}-{}cpu",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    assert!(
        lines[2].starts_with("recommended: ")
            && lines[2].ends_with(&format!(" MiB for {class} (stored on diabetes:1)")),
        "{table}"
    );

    let json = run(profile_args(&["-o", "json"])).await.expect("task");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["name"], "models/diabetes/versions/1");
    assert_eq!(json["entry_module"], serde_json::Value::Null);
    assert_eq!(json["levels"][0]["concurrency"], 1);
    assert_eq!(json["recommendation"]["concurrency"], 1);
    assert!(json["properties"][format!("profile/{class}/memory_mb")].is_string());

    let shown = run(["model", "show", "diabetes:1"].map(String::from).to_vec())
        .await
        .expect("task");
    assert!(shown.contains(&format!("profile/{class}/cpu=")), "{shown}");
}
