//! Batching on a real agent process: a lone client's requests wait for no batch, however long
//! the deployment's `max_queue_delay_ms`; while another client is connected (one that could
//! send a request to join the batch), a request waits out the delay as the manifest says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::images::register_diabetes_cli;
use testkit::{KeepAlive, TempDir, edgeship, free_port, http};

use crate::support::{diabetes_rows, hub_and_agent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_waits_for_no_batch_and_a_second_client_keeps_batches_waiting() {
    let dir = TempDir::new("batching");
    let (hub, _agent) = hub_and_agent(&dir, "edge-batching");
    register_diabetes_cli(&hub.url);
    // Far longer than any of the twenty requests below may take: one that waited it out
    // would fail the test.
    let long = (free_port(), 10_000);
    // Short enough to wait out once.
    let short = (free_port(), 1_000);
    for (name, (port, delay_ms)) in [("long", long), ("short", short)] {
        let manifest = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "name: {name}\nmodel: diabetes:1\nendpoint: {{port: {port}}}\n\
                 target: {{devices: [edge-batching]}}\n\
                 batching: {{max_batch_size: 8, max_queue_delay_ms: {delay_ms}}}\n"
            ),
        )
        .expect("manifest");
        edgeship(
            &hub.url,
            &[
                "deploy",
                "apply",
                "-f",
                &manifest.to_string_lossy(),
                "--wait",
            ],
        );
    }
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let body = diabetes_rows().to_string();

    // One client on one kept-alive connection: twenty requests, none waiting for a batch.
    let mut lone = KeepAlive::new(addr(long.0));
    for n in 0..20 {
        let asked = Instant::now();
        score_on(&mut lone, &body).await;
        assert!(
            asked.elapsed() < Duration::from_millis(long.1 / 2),
            "request {n} of a lone client waited for a batch ({:?})",
            asked.elapsed()
        );
    }
    assert!(
        batching(addr(long.0), "long").await,
        "the deployment does not batch (the agent's log says why)"
    );
    drop(lone);

    // A second client, connected but silent, could send a request to join the batch: the
    // request waits the deployment's delay. (The second client is answered once first, so
    // the agent is sure to have counted its connection; on the short delay, in case the
    // agent has not yet seen the first client leave.)
    let mut silent = KeepAlive::new(addr(short.0));
    score_on(&mut silent, &body).await;
    let mut client = KeepAlive::new(addr(short.0));
    let started = Instant::now();
    score_on(&mut client, &body).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(short.1),
        "a request went without waiting while another client was connected ({waited:?})"
    );
    // Without it, no wait again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = Instant::now();
        score_on(&mut client, &body).await;
        // The agent sees the silent connection's close a moment after it happens.
        if asked.elapsed() < Duration::from_millis(short.1 / 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client, alone again, still waits for batches"
        );
    }
}

/// Scores the diabetes rows on `client`, which must answer 200.
async fn score_on(client: &mut KeepAlive, body: &str) {
    let answer = client
        .post_json("/score", body.as_bytes())
        .await
        .expect("answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// Whether the deployment's `/metrics` counts batches (the agent batches its model).
async fn batching(addr: SocketAddr, deployment: &str) -> bool {
    let metrics = http(addr, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics")
        .body;
    metrics.contains(&format!(
        "edgeship_batch_size_count{{deployment=\"{deployment}\""
    ))
}
