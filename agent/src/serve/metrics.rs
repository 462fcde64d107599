//! `GET /metrics` on every scoring endpoint, in Prometheus' text exposition format: requests
//! by deployment, model, version and status code; a latency histogram per version; each
//! version's load time; batch sizes, queue depth and refusals of batching versions; the
//! agent's resident memory. The counters are atomics updated on the
//! request path (no lock); the same requests feed the sliding window behind health reports.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;
use super::batch::{Batcher, SIZE_BUCKETS};
use super::router::Backend;

/// Upper bounds of the latency buckets, in seconds (Prometheus' own defaults start at 5 ms;
/// models on edge devices answer in well under a millisecond, so these start lower).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Status codes counted on their own; anything else counts as its class (`2xx` … `5xx`).
const CODES: [u16; 10] = [200, 400, 401, 404, 413, 415, 429, 500, 503, 504];

/// What one version has answered since it was loaded.
#[derive(Debug, Default)]
pub struct VersionCounters {
    codes: [AtomicU64; CODES.len()],
    /// `2xx` … `5xx` for codes not in `CODES`.
    classes: [AtomicU64; 4],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl VersionCounters {
    /// Counts one request answered with `code` after `latency`.
    pub fn record(&self, code: u16, latency: Duration) {
        match CODES.iter().position(|c| *c == code) {
            Some(slot) => self.codes[slot].fetch_add(1, Ordering::Relaxed),
            None => {
                let class = usize::from(code / 100).clamp(2, 5) - 2;
                self.classes[class].fetch_add(1, Ordering::Relaxed)
            }
        };
        let seconds = latency.as_secs_f64();
        // Cumulative on render: each request lands in its first bucket only.
        if let Some(slot) = BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The route, merged into every endpoint's router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = render(&shared);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Escapes a label value as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The endpoint's figures as exposition text.
pub fn render(shared: &Shared) -> String {
    let routes = shared.routes();
    let deployment = label(shared.deployment());
    let versions: Vec<(String, &Arc<Backend>)> = routes
        .backends()
        .iter()
        .map(|b| {
            let (model, version) = super::v2::infer::split_ref(b.model_ref());
            (
                format!(
                    "deployment=\"{deployment}\",model=\"{}\",version=\"{}\"",
                    label(model),
                    label(version)
                ),
                b,
            )
        })
        .collect();
    let mut out = String::new();
    out.push_str("# HELP edgeship_requests_total Scoring requests answered, by status code.\n");
    out.push_str("# TYPE edgeship_requests_total counter\n");
    for (labels, backend) in &versions {
        let c = backend.counters();
        for (code, n) in CODES.iter().zip(&c.codes) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "edgeship_requests_total{{{labels},code=\"{code}\"}} {n}"
                );
            }
        }
        for (class, n) in c.classes.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "edgeship_requests_total{{{labels},code=\"{}xx\"}} {n}",
                    class + 2
                );
            }
        }
    }
    out.push_str(
        "# HELP edgeship_request_duration_seconds Time from routing a request to its answer.\n",
    );
    out.push_str("# TYPE edgeship_request_duration_seconds histogram\n");
    for (labels, backend) in &versions {
        let c = backend.counters();
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(&c.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "edgeship_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let count = c.count.load(Ordering::Relaxed);
        let sum = c.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "edgeship_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "edgeship_request_duration_seconds_sum{{{labels}}} {sum}"
        );
        let _ = writeln!(
            out,
            "edgeship_request_duration_seconds_count{{{labels}}} {count}"
        );
    }
    out.push_str(
        "# HELP edgeship_model_load_seconds Time to load, plan and self-test the version.\n",
    );
    out.push_str("# TYPE edgeship_model_load_seconds gauge\n");
    for (labels, backend) in &versions {
        if let Some(seconds) = backend.scorer().load_seconds() {
            let _ = writeln!(out, "edgeship_model_load_seconds{{{labels}}} {seconds}");
        }
    }
    render_batching(&mut out, &versions);
    if let Some(bytes) = resident_memory_bytes() {
        out.push_str("# HELP process_resident_memory_bytes Resident memory of the agent.\n");
        out.push_str("# TYPE process_resident_memory_bytes gauge\n");
        let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
    }
    out
}

/// Batch sizes, queue depth and refusals of the versions that batch.
fn render_batching(out: &mut String, versions: &[(String, &Arc<Backend>)]) {
    let batching: Vec<(&String, &Batcher)> = versions
        .iter()
        .filter_map(|(labels, b)| b.scorer().batcher().map(|batcher| (labels, batcher)))
        .collect();
    if batching.is_empty() {
        return;
    }
    out.push_str("# HELP edgeship_batch_size Requests in each runtime call of a batching model.\n");
    out.push_str("# TYPE edgeship_batch_size histogram\n");
    for (labels, batcher) in &batching {
        let stats = batcher.stats();
        let mut cumulative = 0;
        for (le, n) in SIZE_BUCKETS.iter().zip(&stats.sizes) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "edgeship_batch_size_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let batches = stats.batches.load(Ordering::Relaxed);
        let requests = stats.requests.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "edgeship_batch_size_bucket{{{labels},le=\"+Inf\"}} {batches}"
        );
        let _ = writeln!(out, "edgeship_batch_size_sum{{{labels}}} {requests}");
        let _ = writeln!(out, "edgeship_batch_size_count{{{labels}}} {batches}");
    }
    out.push_str("# HELP edgeship_queue_depth Requests waiting for a batch now.\n");
    out.push_str("# TYPE edgeship_queue_depth gauge\n");
    for (labels, batcher) in &batching {
        let _ = writeln!(
            out,
            "edgeship_queue_depth{{{labels}}} {}",
            batcher.queue_depth()
        );
    }
    out.push_str(
        "# HELP edgeship_queue_refused_total Requests refused (503) because the queue was full.\n",
    );
    out.push_str("# TYPE edgeship_queue_refused_total counter\n");
    for (labels, batcher) in &batching {
        let refused = batcher.stats().refused.load(Ordering::Relaxed);
        let _ = writeln!(out, "edgeship_queue_refused_total{{{labels}}} {refused}");
    }
}

/// The agent's resident set, from `/proc/self/statm` (Linux; `None` elsewhere).
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Linux's page size on every architecture agents ship for (x86_64, aarch64, armv7).
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_latencies_are_counted_in_their_buckets() {
        let c = VersionCounters::default();
        c.record(200, Duration::from_micros(300));
        c.record(200, Duration::from_millis(3));
        c.record(418, Duration::from_secs(9));
        assert_eq!(c.codes[0].load(Ordering::Relaxed), 2);
        assert_eq!(c.classes[2].load(Ordering::Relaxed), 1, "418 counts as 4xx");
        assert_eq!(c.buckets[0].load(Ordering::Relaxed), 1, "300 µs ≤ 0.5 ms");
        assert_eq!(c.buckets[3].load(Ordering::Relaxed), 1, "3 ms ≤ 5 ms");
        assert_eq!(c.count.load(Ordering::Relaxed), 3, "9 s only in +Inf");
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[tokio::test]
    async fn the_endpoint_exposes_its_requests_by_version_and_code() {
        use crate::serve::{Routes, fake};
        use testkit::http;

        let endpoint = fake::azureml_endpoint(Routes::single(fake::backend("m:1"))).await;
        let json = [("content-type", "application/json")];
        for body in [r#"{"data": [1.0]}"#, r#"{"data": [2.0]}"#, "not json"] {
            http(endpoint.addr(), "POST", "/score", &json, body.as_bytes())
                .await
                .expect("answers");
        }
        let page = http(endpoint.addr(), "GET", "/metrics", &[], b"")
            .await
            .expect("answers");
        assert_eq!(page.status, 200);
        assert!(
            page.header("content-type")
                .unwrap_or_default()
                .starts_with("text/plain")
        );
        let labels = r#"deployment="web",model="m",version="1""#;
        for line in [
            format!("edgeship_requests_total{{{labels},code=\"200\"}} 2"),
            format!("edgeship_requests_total{{{labels},code=\"400\"}} 1"),
            format!("edgeship_request_duration_seconds_count{{{labels}}} 3"),
            format!("edgeship_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
        ] {
            assert!(
                page.body.lines().any(|l| l == line),
                "{line} in:\n{}",
                page.body
            );
        }
        assert!(
            page.body
                .contains("# TYPE edgeship_request_duration_seconds histogram")
        );
        assert!(page.body.contains("process_resident_memory_bytes "));
        endpoint.stop().await;
    }
}
