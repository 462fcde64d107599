//! Faults with real processes: kill -9 during a download, corrupted bytes on the wire, a
//! stopped broker, a restarted hub, and a restart with no broker at all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::{HubProcess, Mosquitto, TempDir, free_port, http, score, start_agent};

use crate::support::*;

fn endpoint(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_download_resumes_and_never_serves_a_partial_model() {
    let dir = TempDir::new("resume");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let model = big_model(dir.path(), 48 * 1024 * 1024);
    let weights_digest = sha256_file(&model.join("weights.bin"));
    register(&hub.url, "big", &model).await;
    let agent_dir = dir.path().join("agent");
    let agent_log = dir.path().join("agent.log");
    let mut agent = start_agent("edge-r", &hub.mqtt_url, &agent_dir, &agent_log);
    let port = free_port();
    deploy(&hub.url, "big-web", "big:1", port, "edge-r").await;

    // Kill the agent once part of the big file has arrived.
    let partial = agent_dir.join("blobs/partial").join(&weights_digest);
    let total = 48 * 1024 * 1024;
    let at_kill = testkit::eventually(Duration::from_secs(120), "a partial download", || {
        let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        async move { (size > 2 * 1024 * 1024 && size < total - 4 * 1024 * 1024).then_some(size) }
    })
    .await;
    agent.kill_hard();
    assert!(
        http(endpoint(port), "GET", "/", &[], b"").await.is_err(),
        "nothing may serve before the model is complete"
    );
    let on_disk = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(on_disk >= at_kill, "the partial file survived the kill");

    let _agent = start_agent("edge-r", &hub.mqtt_url, &agent_dir, &agent_log);
    wait_serving(&hub.url, "big-web", "big:1").await;
    assert!(
        log_contains(&agent_log, "resuming download"),
        "the second run resumed instead of starting over"
    );
    let staged = agent_dir.join("models/big/1/weights.bin");
    assert_eq!(
        sha256_file(&staged),
        weights_digest,
        "the served model is complete and verified"
    );
    testkit::assert_diabetes_predictions(
        &score(endpoint(port), &diabetes_rows())
            .await
            .expect("score"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_in_transit_is_rejected_and_fetched_again() {
    let dir = TempDir::new("corrupt");
    let mqtt_port = free_port();
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(mqtt_port),
        &dir.path().join("hub.log"),
    );
    let model = big_model(dir.path(), 4 * 1024 * 1024);
    let weights_digest = sha256_file(&model.join("weights.bin"));
    register(&hub.url, "big", &model).await;
    let (proxy, corrupted) = crate::proxy::start(endpoint(mqtt_port), 2).await;
    let agent_dir = dir.path().join("agent");
    let agent_log = dir.path().join("agent.log");
    let _agent = start_agent("edge-c", &format!("mqtt://{proxy}"), &agent_dir, &agent_log);
    let port = free_port();
    deploy(&hub.url, "big-web", "big:1", port, "edge-c").await;
    wait_serving(&hub.url, "big-web", "big:1").await;
    assert_eq!(
        corrupted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "two chunks were damaged"
    );
    assert!(
        log_contains(&agent_log, "corrupted chunk rejected"),
        "the agent noticed"
    );
    assert_eq!(
        sha256_file(&agent_dir.join("models/big/1/weights.bin")),
        weights_digest
    );
    testkit::assert_diabetes_predictions(
        &score(endpoint(port), &diabetes_rows())
            .await
            .expect("score"),
    );
}

#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install -y mosquitto)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_serving_while_the_broker_is_down_and_reconnects_after() {
    let Some(mosquitto) = Mosquitto::start("the_agent_keeps_serving_while_the_broker_is_down")
    else {
        return;
    };
    let program = testkit::find_program("mosquitto").expect("found above");
    let broker_port = mosquitto.port;
    let dir = TempDir::new("broker-down");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Ok(&mosquitto.url()),
        &dir.path().join("hub.log"),
    );
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    let agent_log = dir.path().join("agent.log");
    let _agent = start_agent(
        "edge-b",
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &agent_log,
    );
    let port = free_port();
    deploy(&hub.url, "web", "diabetes:latest", port, "edge-b").await;
    wait_serving(&hub.url, "web", "diabetes:1").await;

    mosquitto.stop();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let response = score(endpoint(port), &diabetes_rows())
            .await
            .expect("still serving");
        testkit::assert_diabetes_predictions(&response);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The broker returns (empty: no persistence); the hub republishes, the agent reconnects
    // and follows a new version.
    let _mosquitto = Mosquitto::start_with(&program, broker_port);
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    wait_serving(&hub.url, "web", "diabetes:2").await;
    testkit::assert_diabetes_predictions(
        &score(endpoint(port), &diabetes_rows())
            .await
            .expect("score"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reconverge_after_the_hub_is_killed_and_restarted() {
    let dir = TempDir::new("hub-restart");
    let mqtt_port = free_port();
    let hub_dir = dir.path().join("hub");
    let hub_log = dir.path().join("hub.log");
    let mut hub = HubProcess::start(&hub_dir, Err(mqtt_port), &hub_log);
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    let _agent = start_agent(
        "edge-h",
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
    );
    let port = free_port();
    deploy(&hub.url, "web", "diabetes:latest", port, "edge-h").await;
    wait_serving(&hub.url, "web", "diabetes:1").await;

    // kill -9 takes the embedded broker down with the hub.
    hub.process.kill_hard();
    testkit::assert_diabetes_predictions(
        &score(endpoint(port), &diabetes_rows())
            .await
            .expect("serving without hub"),
    );
    // Issue 6: reconvergence sometimes took ~30 s. The restarted hub had lost the last
    // report (not flushed), the agent's fresh report could reach the new broker before the hub
    // subscribed, and nothing asked for another until the agent's 30 s ticker. Now reports are
    // flushed per batch, and the hub subscribes before republishing desired states, to which
    // an agent that already runs them answers with a report.
    let restarted_ms = now_ms();
    let restarted = Instant::now();
    let hub = HubProcess::start(&hub_dir, Err(mqtt_port), &hub_log);
    wait_heard_from(&hub.url, "edge-h", restarted_ms, RECONVERGE).await;
    wait_serving_within(&hub.url, "web", "diabetes:1", RECONVERGE).await;
    let reconverged = restarted.elapsed();
    assert!(
        reconverged <= RECONVERGE,
        "reconverged after {reconverged:?}"
    );
    let registered = Instant::now();
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    wait_serving_within(&hub.url, "web", "diabetes:2", RECONVERGE).await;
    eprintln!(
        "reconverged {reconverged:?} after the hub restart; v2 serving {:?} after registration",
        registered.elapsed()
    );
}

/// How long devices may take to reconverge with a restarted hub.
const RECONVERGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_with_no_broker_serves_its_last_good_model_at_once() {
    let dir = TempDir::new("offline-restart");
    let mut hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    let agent_dir = dir.path().join("agent");
    let agent_log = dir.path().join("agent.log");
    let mut agent = start_agent("edge-o", &hub.mqtt_url, &agent_dir, &agent_log);
    let port = free_port();
    deploy(&hub.url, "web", "diabetes:1", port, "edge-o").await;
    wait_serving(&hub.url, "web", "diabetes:1").await;

    agent.kill_hard();
    hub.process.kill_hard();
    let restarted = Instant::now();
    let _agent = start_agent("edge-o", &hub.mqtt_url, &agent_dir, &agent_log);
    let response =
        testkit::eventually(Duration::from_secs(30), "the restored endpoint", || async {
            score(endpoint(port), &diabetes_rows()).await.ok()
        })
        .await;
    testkit::assert_diabetes_predictions(&response);
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "serving took {took:?} with no broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_desired_state_takes_over_from_a_download_that_cannot_finish() {
    let dir = TempDir::new("superseded");
    let mqtt_port = free_port();
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(mqtt_port),
        &dir.path().join("hub.log"),
    );
    register(&hub.url, "big", &big_model(dir.path(), 4 * 1024 * 1024)).await;
    register(
        &hub.url,
        "diabetes",
        &testkit::fixture("diabetes/model.onnx"),
    )
    .await;
    // Every large chunk is damaged on its way: the big model can never finish downloading.
    let (proxy, _) = crate::proxy::start(endpoint(mqtt_port), usize::MAX).await;
    let agent_log = dir.path().join("agent.log");
    let _agent = start_agent(
        "edge-s",
        &format!("mqtt://{proxy}"),
        &dir.path().join("agent"),
        &agent_log,
    );
    deploy(&hub.url, "big-web", "big:1", free_port(), "edge-s").await;
    testkit::eventually(Duration::from_secs(60), "a download in trouble", || {
        let log = agent_log.clone();
        async move { log_contains(&log, "corrupted chunk rejected").then_some(()) }
    })
    .await;

    // The operator gives up on it and deploys a model that works: the device must not wait
    // for the stuck download to time out first.
    let started = Instant::now();
    let channel = edgeship_hub::client::channel(&hub.url)
        .await
        .expect("connect");
    edgeship_proto::v1::deployments_client::DeploymentsClient::new(channel)
        .delete_deployment(edgeship_proto::v1::DeleteDeploymentRequest {
            name: "deployments/big-web".into(),
        })
        .await
        .expect("delete");
    let port = free_port();
    deploy(&hub.url, "web", "diabetes:1", port, "edge-s").await;
    wait_serving(&hub.url, "web", "diabetes:1").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the new state took {took:?}"
    );
    // The stuck download ends one of two ways, whichever reaches the agent first: the newer
    // desired state supersedes it, or the hub refuses the next chunk because the blob left the
    // device's desired state. Either way it was abandoned, not left to time out.
    testkit::eventually(
        Duration::from_secs(5),
        "the agent's log of the abandoned apply",
        || {
            let log = agent_log.clone();
            async move {
                (log_contains(&log, "a newer desired state arrived")
                    || log_contains(&log, "the hub refused the download"))
                .then_some(())
            }
        },
    )
    .await;
    testkit::assert_diabetes_predictions(
        &score(endpoint(port), &diabetes_rows())
            .await
            .expect("score"),
    );
}
