//! Profiles measured for real: the agent loads its own endpoint serving the diabetes fixture,
//! and what it measures agrees with wrk's figures for the same endpoint and request (wrk is
//! needed: a `SKIP:` line without it, a failure under `EDGESHIP_CI=1`).

use std::net::IpAddr;
use std::process::Command;

use edgeship_agent::cache::BlobCache;
use edgeship_agent::link::ProfileRequest;
use edgeship_agent::profile;
use edgeship_agent::stage::Stage;
use testkit::{fixture, free_port, require_program};

use crate::split::{seed, web};

/// wrk's requests per second and p50 in ms, at `connections`, for `seconds`.
fn wrk(url: &str, body: &str, connections: u32, seconds: u32, dir: &std::path::Path) -> (f64, f64) {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers[\"content-type\"] = \"application/json\"\n"
        ),
    )
    .expect("script");
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("wrk's rate: {text}"));
    let p50 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("50%"))
        .map(|v| {
            let v = v.trim();
            let (number, scale) = if let Some(us) = v.strip_suffix("us") {
                (us, 0.001)
            } else if let Some(ms) = v.strip_suffix("ms") {
                (ms, 1.0)
            } else {
                (v.trim_end_matches('s'), 1000.0)
            };
            number.parse::<f64>().expect("a number") * scale
        })
        .unwrap_or_else(|| panic!("wrk's p50: {text}"));
    (rps, p50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_agrees_with_wrk_on_the_same_endpoint() {
    if require_program("wrk", "profile::a_profile_agrees_with_wrk").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp");
    let cache = BlobCache::open(dir.path().join("blobs")).expect("cache");
    let file = seed(
        &cache,
        &fixture("diabetes").join("model.onnx"),
        "model.onnx",
    );
    let mut stage = Stage::new(
        dir.path().join("models"),
        cache,
        IpAddr::from([127, 0, 0, 1]),
    );
    let port = free_port();
    stage
        .apply(&web(port, &file, &[(1, 0)], None))
        .await
        .expect("serves");
    let addr = stage.addr("web").expect("serves");
    let body =
        std::fs::read_to_string(fixture("diabetes").join("sample_input.json")).expect("sample");
    let request = ProfileRequest {
        request_id: "p1".into(),
        deployment: "web".into(),
        path: "/score".into(),
        content_type: "application/json".into(),
        body: body.clone().into_bytes().into(),
        concurrency: vec![1, 4],
        seconds_per_level: 2,
    };
    request.check().expect("a valid request");
    let load_bytes = stage.load_bytes("web").expect("loaded");
    let profile = profile::run(addr, &request, load_bytes)
        .await
        .expect("profiled");
    assert_eq!(profile.levels.len(), 2);
    assert!(profile.start_rss_bytes > 0);
    for level in &profile.levels {
        assert_eq!(level.errors, 0, "{level:?}");
        assert!(level.requests > 100, "{level:?}");
        assert!(
            level.p50_ms > 0.0 && level.p50_ms <= level.p99_ms,
            "{level:?}"
        );
        assert!(
            level.cpu_cores > 0.05,
            "the agent's own work is counted: {level:?}"
        );
        assert!(
            level.peak_rss_bytes >= profile.start_rss_bytes / 2,
            "{level:?}"
        );
    }

    // The same request from outside, with wrk: the figures agree within what sharing two cores
    // between the caller and the server allows (the profile's callers run in the agent).
    let url = format!("http://{addr}/score");
    for level in &profile.levels {
        let (url, body, connections, folder) = (
            url.clone(),
            body.trim().to_owned(),
            level.concurrency,
            dir.path().to_owned(),
        );
        let (rps, p50) =
            tokio::task::spawn_blocking(move || wrk(&url, &body, connections, 2, &folder))
                .await
                .expect("wrk ran");
        let profiled = level.requests as f64 / level.seconds;
        eprintln!(
            "c{}: profile {profiled:.0} req/s p50 {:.3} ms; wrk {rps:.0} req/s p50 {p50:.3} ms",
            level.concurrency, level.p50_ms
        );
        let ratio = profiled / rps;
        assert!(
            (0.33..=3.0).contains(&ratio),
            "c{}: the profile's {profiled:.0} req/s against wrk's {rps:.0}",
            level.concurrency
        );
        let ratio = level.p50_ms / p50;
        assert!(
            (0.33..=3.0).contains(&ratio),
            "c{}: the profile's p50 {} ms against wrk's {p50} ms",
            level.concurrency,
            level.p50_ms
        );
    }

    // A request beyond the bounds is refused with the reason.
    let greedy = ProfileRequest {
        concurrency: vec![1000],
        ..request
    };
    assert!(
        greedy
            .check()
            .expect_err("too many")
            .contains("connections")
    );
    stage.stop_all().await;
}
