//! Traffic behind one endpoint: the loaded versions ([`Backend`]s) of one model or of several
//! (a multi-model endpoint, routed by model name), their weights, and which version answers a
//! request. Each version also keeps its own counters and sliding
//! window, because a split is judged per version (the report's `versions`) and as a whole (the
//! health gate).
//!
//! Design: a [`Routes`] table never changes once built. New weights (or a new health window)
//! build a new table around the same `Arc<Backend>`s and the endpoint swaps the table's `Arc`:
//! nothing is loaded again, no listener restarts, and a request in flight finishes on the
//! version it was routed to.
//!
//! Choosing a version: the weights are laid end to end over `[0, total)` (90/10 is `[0, 90)`
//! and `[90, 100)`), and a request picks the version whose range holds its point. A request
//! with a routing key takes the key's hash as its point, so the same key lands on the same
//! version for as long as the weights stay, on every device (the hash is defined here, not by
//! std, so no restart or toolchain changes it). When the weights move, only the keys in the
//! part of the line that changed hands move: 90/10 → 80/20 sends the keys in `[80, 90)` to the
//! second version and leaves every other key where it was. A request without a key takes the
//! next point of a golden-ratio sequence over a counter: exact shares in the long run, spread
//! evenly (no run of one version), and no lock or random source on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use edgeship_domain::{EndpointMetrics, HealthThresholds, VersionMetrics};

use super::Scorer;
use super::metrics::VersionCounters;
use super::window::{SlidingWindow, Thresholds, WindowSnapshot, breach, combined};

/// The request header whose value pins a caller to one version of a split.
pub const ROUTING_KEY_HEADER: &str = "x-edgeship-routing-key";
/// The response header naming the version that answered (`model:version`).
pub const MODEL_HEADER: &str = "x-edgeship-model";

/// How long the window of a workload with this health gate is: the gate's, else the default
/// (the report carries windowed figures with or without a gate).
pub fn window_length(health: Option<&HealthThresholds>) -> Duration {
    let seconds = health.map_or(HealthThresholds::DEFAULT_WINDOW_SECONDS, |h| {
        h.window_seconds
    });
    // `SlidingWindow` raises shorter windows to a second; doing it here too keeps the length
    // comparable with what a window reports, so an unchanged gate never restarts a window.
    Duration::from_secs(u64::from(seconds.max(1)))
}

/// One loaded, self-tested version behind an endpoint, with what it has served.
#[derive(Debug)]
pub struct Backend {
    scorer: Arc<dyn Scorer>,
    /// `model:version` as the response header carries it, made once.
    header: Option<HeaderValue>,
    requests: AtomicU64,
    errors: AtomicU64,
    /// By status code and latency bucket, for `/metrics`.
    counters: VersionCounters,
    /// Replaced (not cleared in place) when the gate's window length changes: figures over
    /// the old length would not mean what the new gate asks.
    window: RwLock<Arc<SlidingWindow>>,
}

impl Backend {
    pub fn new(scorer: Arc<dyn Scorer>, window: Duration) -> Arc<Self> {
        // Model ids and versions are name-checked, so the value is always a valid header.
        let header = HeaderValue::from_str(scorer.model_ref()).ok();
        Arc::new(Self {
            scorer,
            header,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            counters: VersionCounters::default(),
            window: RwLock::new(Arc::new(SlidingWindow::new(window))),
        })
    }

    pub fn scorer(&self) -> &Arc<dyn Scorer> {
        &self.scorer
    }

    /// `model:version`.
    pub fn model_ref(&self) -> &str {
        self.scorer.model_ref()
    }

    /// `model:version` as a header value.
    pub fn model_header(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }

    /// What `/metrics` shows of this version.
    pub fn counters(&self) -> &VersionCounters {
        &self.counters
    }

    /// Counts one scoring request that finished at `at` with `code`; only a 5xx is an error.
    pub fn record(&self, at: Instant, latency: Duration, code: u16) {
        let ok = code < 500;
        self.counters.record(code, latency);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.window().record(at, latency, ok);
    }

    fn window(&self) -> Arc<SlidingWindow> {
        Arc::clone(&self.window.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Starts a new, empty window if `length` differs from the current one.
    pub fn resize_window(&self, length: Duration) {
        let mut window = self.window.write().unwrap_or_else(PoisonError::into_inner);
        if window.window() != length {
            *window = Arc::new(SlidingWindow::new(length));
        }
    }

    /// Requests and errors since this version was loaded, and its window at `at`.
    pub fn metrics(&self, at: Instant) -> VersionMetrics {
        let window = self.window().snapshot(at);
        VersionMetrics {
            model: self.model_ref().to_owned(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            window_requests: window.requests,
            window_errors: window.errors,
            p99_ms: window.p99_ms,
        }
    }
}

/// An endpoint's routing table: its versions in the workload's order, with their weights,
/// grouped by model. A request names a model (or takes the first); the weights split it
/// between that model's versions.
#[derive(Debug)]
pub struct Routes {
    backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    /// One per model, in the order models first appear.
    groups: Vec<Group>,
    /// The entry module `/score` requests go through, when the workload has one; it is
    /// swapped with the versions it was initialized against.
    #[cfg(feature = "wasm")]
    entry: Option<Arc<edgeship_wasm::EntryPool>>,
}

/// The versions of one model behind the endpoint, laid end to end by weight.
#[derive(Debug)]
struct Group {
    model_id: String,
    /// Indexes into `Routes::backends`.
    members: Vec<usize>,
    /// Where each member's range ends on `[0, total)`; a zero weight gets an empty range.
    ends: Vec<u64>,
    total: u64,
    /// Requests without a routing key taken so far (the golden-ratio sequence's index).
    next: AtomicU64,
}

impl Group {
    fn new(model_id: String, members: Vec<usize>, weights: &[u32]) -> Self {
        let shares: Vec<u64> = if members.iter().all(|&i| weights[i] == 0) {
            vec![1; members.len()]
        } else {
            members.iter().map(|&i| u64::from(weights[i])).collect()
        };
        let ends: Vec<u64> = shares
            .iter()
            .scan(0, |end, share| {
                *end += share;
                Some(*end)
            })
            .collect();
        let total = ends.last().copied().unwrap_or(1);
        Self {
            model_id,
            members,
            ends,
            total,
            next: AtomicU64::new(0),
        }
    }

    /// The member that answers a request with this routing key (or none).
    fn pick(&self, key: Option<&[u8]>) -> usize {
        let point = match key {
            Some(key) => scale(hash(key), self.total),
            None => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                scale(n.wrapping_mul(GOLDEN), self.total)
            }
        };
        let index = self.ends.partition_point(|&end| end <= point);
        self.members[index.min(self.members.len() - 1)]
    }

    /// The heaviest member (the first among equals).
    fn heaviest(&self) -> usize {
        let heaviest = (0..self.members.len())
            .rev()
            .max_by_key(|&i| self.ends[i] - i.checked_sub(1).map_or(0, |p| self.ends[p]))
            .unwrap_or(0);
        self.members[heaviest]
    }
}

/// 2^64 / φ: successive multiples, read as fractions of 2^64, fill `[0, 1)` as evenly as any
/// sequence can (a Weyl sequence with the golden ratio).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The model id of a `model:version` reference.
pub(crate) fn model_id(model_ref: &str) -> &str {
    model_ref.rsplit_once(':').map_or(model_ref, |(id, _)| id)
}

impl Routes {
    /// A table over `entries` (weight, version), in order; `None` when there are none. Weights
    /// are relative shares between the versions of one model: the hub sends ones that add up
    /// to 100 (or 0 for a single version), and if all of a model's are 0 its versions share
    /// equally.
    pub fn new(entries: Vec<(u32, Arc<Backend>)>) -> Option<Self> {
        if entries.is_empty() {
            return None;
        }
        let (weights, backends): (Vec<u32>, Vec<Arc<Backend>>) = entries.into_iter().unzip();
        let mut grouped: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, backend) in backends.iter().enumerate() {
            let id = model_id(backend.model_ref());
            match grouped.iter_mut().find(|(g, _)| g == id) {
                Some((_, members)) => members.push(i),
                None => grouped.push((id.to_owned(), vec![i])),
            }
        }
        let groups = grouped
            .into_iter()
            .map(|(id, members)| Group::new(id, members, &weights))
            .collect();
        Some(Self {
            backends,
            weights,
            groups,
            #[cfg(feature = "wasm")]
            entry: None,
        })
    }

    /// One version and no split.
    pub fn single(backend: Arc<Backend>) -> Self {
        let id = model_id(backend.model_ref()).to_owned();
        Self {
            backends: vec![backend],
            weights: vec![0],
            groups: vec![Group::new(id, vec![0], &[0])],
            #[cfg(feature = "wasm")]
            entry: None,
        }
    }

    /// The same versions with new weights (one per version, in order); `None` when the count
    /// differs. Nothing is loaded: the versions are shared with this table.
    pub fn reweighted(&self, weights: &[u32]) -> Option<Self> {
        if weights.len() != self.backends.len() {
            return None;
        }
        #[allow(unused_mut)]
        let mut table = Self::new(
            weights
                .iter()
                .copied()
                .zip(self.backends.iter().cloned())
                .collect(),
        )?;
        #[cfg(feature = "wasm")]
        {
            table.entry = self.entry.clone();
        }
        Some(table)
    }

    /// The same table with `/score` going through `entry`.
    #[cfg(feature = "wasm")]
    pub fn with_entry(self, entry: Arc<edgeship_wasm::EntryPool>) -> Self {
        Self {
            entry: Some(entry),
            ..self
        }
    }

    /// The entry module in front of the models, if the workload has one.
    #[cfg(feature = "wasm")]
    pub fn entry(&self) -> Option<&Arc<edgeship_wasm::EntryPool>> {
        self.entry.as_ref()
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The models served, the default (the first) first.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.model_id.as_str())
    }

    fn group(&self, model: Option<&str>) -> Option<&Group> {
        match model {
            None => self.groups.first(),
            Some(name) => self.groups.iter().find(|g| g.model_id == name),
        }
    }

    /// The version of the first model that answers a request with this routing key (or none).
    pub fn pick(&self, key: Option<&[u8]>) -> &Arc<Backend> {
        &self.backends[self.groups[0].pick(key)]
    }

    /// The version of `model` (the first model when `None`) that answers a request with this
    /// routing key; `None` when the endpoint does not serve that model.
    pub fn pick_model(&self, model: Option<&str>, key: Option<&[u8]>) -> Option<&Arc<Backend>> {
        Some(&self.backends[self.group(model)?.pick(key)])
    }

    /// The version generated documents describe: the first model's heaviest (the first among
    /// equals).
    pub fn primary(&self) -> &Arc<Backend> {
        &self.backends[self.groups[0].heaviest()]
    }

    /// The version of `model` that generated documents describe, if it is served here.
    pub fn primary_of(&self, model: &str) -> Option<&Arc<Backend>> {
        Some(&self.backends[self.group(Some(model))?.heaviest()])
    }

    /// The length of the versions' windows (they all share the workload's).
    pub fn window_length(&self) -> Duration {
        self.backends[0].window().window()
    }

    /// All versions' windows as one, at `at`.
    pub fn snapshot(&self, at: Instant) -> WindowSnapshot {
        let windows: Vec<Arc<SlidingWindow>> = self.backends.iter().map(|b| b.window()).collect();
        let refs: Vec<&SlidingWindow> = windows.iter().map(Arc::as_ref).collect();
        combined(&refs, at)
    }
}

/// What an endpoint did, as reported, and why it breaches its health gate (if it does).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub metrics: EndpointMetrics,
    pub breach: Option<String>,
    /// Why the workload stopped for good (a container its engine will not restart).
    pub failed: Option<String>,
}

/// The windowed part of an observation: all versions' windows combined (percentiles over all
/// their requests, not averaged), and each version's own figures when there is a split.
/// Lifetime counters are left at zero for the endpoint to fill in.
pub fn observe_routes(
    routes: &Routes,
    at: Instant,
    health: Option<&HealthThresholds>,
) -> Observation {
    let window = routes.window_length();
    let snapshot = routes.snapshot(at);
    let versions = if routes.backends().len() > 1 {
        routes.backends().iter().map(|b| b.metrics(at)).collect()
    } else {
        Vec::new()
    };
    Observation {
        metrics: EndpointMetrics {
            window_seconds: u32::try_from(window.as_secs()).unwrap_or(u32::MAX),
            window_requests: snapshot.requests,
            window_errors: snapshot.errors,
            p50_ms: snapshot.p50_ms,
            p99_ms: snapshot.p99_ms,
            versions,
            ..EndpointMetrics::default()
        },
        breach: verdict(&snapshot, health, window),
        failed: None,
    }
}

/// Why the window breaches the workload's health gate, if it does; never without a gate.
pub fn verdict(
    snapshot: &WindowSnapshot,
    health: Option<&HealthThresholds>,
    window: Duration,
) -> Option<String> {
    let health = health?;
    let thresholds = Thresholds {
        max_error_rate: health.max_error_rate,
        max_p99_ms: health.max_p99_ms,
        min_requests: u64::from(health.min_requests),
    };
    breach(snapshot, &thresholds, window)
}

/// FNV-1a over the key, then a 64-bit finalizer (MurmurHash3's): FNV alone leaves the high
/// bits, which [`scale`] reads, poorly mixed for short keys that differ in their last byte.
fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Maps `x` from `[0, 2^64)` onto `[0, total)` by its high bits (no modulo bias).
fn scale(x: u64, total: u64) -> u64 {
    ((u128::from(x) * u128::from(total)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::fake::backend;

    fn split(weights: &[(u32, &str)]) -> Routes {
        Routes::new(weights.iter().map(|&(w, n)| (w, backend(n))).collect()).expect("versions")
    }

    /// How many of `n` picks went to the first version.
    fn first_share(routes: &Routes, n: usize, key: impl Fn(usize) -> Option<String>) -> usize {
        let first = routes.backends()[0].model_ref().to_owned();
        (0..n)
            .filter(|&i| {
                let key = key(i);
                routes.pick(key.as_deref().map(str::as_bytes)).model_ref() == first
            })
            .count()
    }

    #[test]
    fn ten_thousand_keys_split_ninety_ten_within_statistical_tolerance() {
        let routes = split(&[(90, "m:1"), (10, "m:2")]);
        let hits = first_share(&routes, 10_000, |i| Some(format!("user-{i}")));
        // Binomial(10 000, 0.9): σ = 30; ±5σ is a failure only a broken hash would produce.
        assert!((8_850..=9_150).contains(&hits), "{hits} of 10 000 to m:1");
    }

    #[test]
    fn requests_without_a_key_follow_the_weights_evenly() {
        let routes = split(&[(90, "m:1"), (10, "m:2")]);
        let hits = first_share(&routes, 10_000, |_| None);
        assert!((8_990..=9_010).contains(&hits), "{hits} of 10 000 to m:1");
        // Evenly spread: every 20 consecutive requests reach the small version once or more.
        let routes = split(&[(90, "m:1"), (10, "m:2")]);
        let picks: Vec<bool> = (0..1000)
            .map(|_| routes.pick(None).model_ref() == "m:2")
            .collect();
        assert!(picks.windows(20).all(|w| w.contains(&true)));
    }

    #[test]
    fn a_key_always_reaches_the_same_version_and_moves_only_as_far_as_the_weights_do() {
        let routes = split(&[(90, "m:1"), (10, "m:2")]);
        let again = split(&[(90, "m:1"), (10, "m:2")]);
        let moved = routes.reweighted(&[80, 20]).expect("same versions");
        let mut moved_keys = 0;
        for i in 0..2000 {
            let key = format!("session-{i}");
            let key = Some(key.as_bytes());
            let first = routes.pick(key).model_ref();
            assert_eq!(first, routes.pick(key).model_ref(), "sticky within a table");
            assert_eq!(first, again.pick(key).model_ref(), "sticky across tables");
            let now = moved.pick(key).model_ref();
            if now != first {
                assert_eq!(
                    (first, now),
                    ("m:1", "m:2"),
                    "keys only move to the grown side"
                );
                moved_keys += 1;
            }
        }
        // A tenth of the keys changed hands (σ ≈ 13).
        assert!((130..=270).contains(&moved_keys), "{moved_keys} moved");
    }

    #[test]
    fn reweighting_shares_the_loaded_versions_and_checks_the_count() {
        let routes = split(&[(50, "m:1"), (50, "m:2")]);
        let moved = routes.reweighted(&[100, 0]).expect("same count");
        for (a, b) in routes.backends().iter().zip(moved.backends()) {
            assert!(Arc::ptr_eq(a, b), "the same loaded version");
        }
        assert_eq!(first_share(&moved, 500, |_| None), 500, "0% gets nothing");
        assert!(routes.reweighted(&[100]).is_none());
        assert_eq!(moved.weights(), [100, 0]);
    }

    #[test]
    fn odd_weights_never_fail_a_request() {
        assert!(Routes::new(vec![]).is_none());
        let single = Routes::single(backend("m:1"));
        assert_eq!(single.pick(Some(b"k")).model_ref(), "m:1");
        let equal = split(&[(0, "m:1"), (0, "m:2")]);
        let hits = first_share(&equal, 1000, |_| None);
        assert!(
            (490..=510).contains(&hits),
            "all-zero weights share equally: {hits}"
        );
        let lopsided = split(&[(0, "m:1"), (7, "m:2"), (0, "m:3")]);
        assert_eq!(first_share(&lopsided, 100, |i| Some(i.to_string())), 0);
        assert_eq!(lopsided.primary().model_ref(), "m:2");
        assert_eq!(
            split(&[(30, "a:1"), (70, "a:2")]).primary().model_ref(),
            "a:2"
        );
        assert_eq!(
            split(&[(50, "a:1"), (50, "a:2")]).primary().model_ref(),
            "a:1"
        );
    }

    #[test]
    fn several_models_are_routed_by_name_and_split_within_each() {
        let routes = split(&[(0, "a:1"), (90, "b:1"), (10, "b:2")]);
        assert_eq!(routes.models().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            routes.pick(None).model_ref(),
            "a:1",
            "the first model by default"
        );
        assert_eq!(
            routes
                .pick_model(Some("a"), Some(b"k"))
                .map(|b| b.model_ref()),
            Some("a:1")
        );
        let to_b1 = (0..1000)
            .filter(|_| routes.pick_model(Some("b"), None).map(|b| b.model_ref()) == Some("b:1"))
            .count();
        assert!((895..=905).contains(&to_b1), "90/10 within b: {to_b1}");
        assert!(routes.pick_model(Some("c"), None).is_none());
        assert_eq!(routes.primary().model_ref(), "a:1");
        assert_eq!(routes.primary_of("b").map(|b| b.model_ref()), Some("b:1"));
        assert!(routes.primary_of("c").is_none());
        let moved = routes.reweighted(&[0, 50, 50]).expect("same versions");
        assert_eq!(moved.models().count(), 2);
    }

    #[test]
    fn the_window_follows_the_gate_and_a_changed_length_starts_afresh() {
        let gate = HealthThresholds {
            max_error_rate: Some(0.1),
            max_p99_ms: None,
            window_seconds: 60,
            min_requests: 1,
        };
        assert_eq!(window_length(None), Duration::from_secs(30));
        assert_eq!(window_length(Some(&gate)), Duration::from_secs(60));
        let b = backend("m:1");
        let at = Instant::now();
        b.record(at, Duration::from_millis(3), 500);
        b.resize_window(Duration::from_secs(30));
        assert_eq!(b.metrics(at).window_requests, 1, "same length: kept");
        b.resize_window(Duration::from_secs(60));
        let m = b.metrics(at);
        assert_eq!((m.requests, m.errors, m.window_requests), (1, 1, 0));
    }
}
