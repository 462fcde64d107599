//! Error rate and latency percentiles over a recent sliding window, per endpoint and version.
//!
//! Why sliding: rollout health gates and the agent's `Unhealthy` state judge what the workload
//! does *now*. Counters since start would let hours of good traffic hide a version that began
//! failing a minute ago, and would keep a recovered version flagged for hours.
//!
//! Design: the window is a ring of [`SLICES`] slots, each covering `window / SLICES` and holding
//! counts plus a fixed-size log-linear latency histogram. Recording touches one slot under a
//! short lock and never allocates; a slot is cleared when time comes back round to it.
//! Percentiles are read from the merged histograms of the live slots, so several windows (one
//! per version) can be merged exactly into one endpoint-wide view with [`combined`].

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Ring slots per window: the window moves in steps of a tenth of its length.
pub const SLICES: usize = 10;

/// Linear sub-buckets per power of two (2^5 = 32): a bucket is at most 1/32 of its lower
/// bound wide, so a reported percentile is at most ~3.1% above the true value.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies are kept in microseconds; everything from 2^26 µs (~67 s) on shares the last bucket.
const MAX_EXP: u32 = 25;
const MAX_US: u64 = (1 << (MAX_EXP + 1)) - 1;
/// Below 32 µs one bucket per microsecond; then 32 buckets for each power of two up to 2^25.
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

fn bucket_index(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let us = us.min(MAX_US);
    let shift = 63 - us.leading_zeros() - SUB_BITS;
    let mantissa = us >> shift; // in [SUB, 2 * SUB)
    ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as usize
}

/// Largest latency (µs, inclusive) that falls into bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let mantissa = SUB + index % SUB;
    ((mantissa + 1) << shift) - 1
}

/// One ring slot: everything recorded during one `window / SLICES` step.
struct Slot {
    /// Which step since the window's origin this slot holds; `i64::MIN` when never used.
    epoch: i64,
    requests: u64,
    errors: u64,
    max_us: u64,
    buckets: [u32; BUCKETS],
}

impl Slot {
    fn empty() -> Self {
        Slot {
            epoch: i64::MIN,
            requests: 0,
            errors: 0,
            max_us: 0,
            buckets: [0; BUCKETS],
        }
    }
}

/// Live slots added together; what percentiles are read from.
struct Merged {
    requests: u64,
    errors: u64,
    max_us: u64,
    buckets: [u64; BUCKETS],
}

impl Merged {
    fn new() -> Self {
        Merged {
            requests: 0,
            errors: 0,
            max_us: 0,
            buckets: [0; BUCKETS],
        }
    }

    /// Percentile as the upper bound of the bucket holding rank `ceil(n * num / den)`: never
    /// below the true value, at most ~3.1% above it, and capped at the exact maximum seen.
    fn percentile_us(&self, num: u64, den: u64) -> u64 {
        if self.requests == 0 {
            return 0;
        }
        let rank = (self.requests * num).div_ceil(den).clamp(1, self.requests);
        let mut seen = 0;
        for (index, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                // The last bucket is open-ended; the exact maximum is the honest answer there.
                if index == BUCKETS - 1 {
                    return self.max_us;
                }
                return bucket_upper(index).min(self.max_us);
            }
        }
        self.max_us
    }

    fn snapshot(&self) -> WindowSnapshot {
        let ms = |us: u64| us as f64 / 1000.0;
        WindowSnapshot {
            requests: self.requests,
            errors: self.errors,
            p50_ms: ms(self.percentile_us(50, 100)),
            p99_ms: ms(self.percentile_us(99, 100)),
            max_ms: ms(self.max_us),
        }
    }
}

/// Requests, errors and a latency histogram over the last `window`, kept as [`SLICES`] ring slots.
///
/// A snapshot counts the current slot and the `SLICES - 1` before it, so it covers between
/// 90% and 100% of `window`: never anything older than `window`, always the last 90% of it.
pub struct SlidingWindow {
    window: Duration,
    slot_nanos: i128,
    /// Slot boundaries are measured from here; times before it get negative epochs.
    origin: Instant,
    /// One lock for the ring: a record holds it for a few additions (a slot clear at most once
    /// per step), cheaper than a lock per slot would save.
    slots: Mutex<Box<[Slot]>>,
}

impl fmt::Debug for SlidingWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The histograms are thousands of counts; the shape is what a log line needs.
        f.debug_struct("SlidingWindow")
            .field("window", &self.window)
            .field("slices", &SLICES)
            .finish_non_exhaustive()
    }
}

impl SlidingWindow {
    /// A window of `window` (raised to 1 s if shorter, so a step is at least 100 ms).
    pub fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_secs(1));
        let slot_nanos = (window / SLICES as u32).as_nanos() as i128;
        let slots = (0..SLICES).map(|_| Slot::empty()).collect();
        SlidingWindow {
            window,
            slot_nanos,
            origin: Instant::now(),
            slots: Mutex::new(slots),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn epoch(&self, at: Instant) -> i64 {
        let nanos = match at.checked_duration_since(self.origin) {
            Some(after) => after.as_nanos() as i128,
            None => -((self.origin - at).as_nanos() as i128),
        };
        nanos.div_euclid(self.slot_nanos) as i64
    }

    /// Records one request that finished at `at`. Failed requests count in the latency too:
    /// the gate judges what callers saw, and a timeout is both an error and slow.
    pub fn record(&self, at: Instant, latency: Duration, ok: bool) {
        let epoch = self.epoch(at);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let index = bucket_index(us);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[epoch.rem_euclid(SLICES as i64) as usize];
        if slot.epoch > epoch {
            // The slot already holds a later step: this request is older than the window.
            return;
        }
        if slot.epoch < epoch {
            // Time came round the ring (or jumped far ahead): what the slot held has expired.
            *slot = Slot {
                epoch,
                ..Slot::empty()
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(!ok);
        slot.max_us = slot.max_us.max(us);
        slot.buckets[index] = slot.buckets[index].saturating_add(1);
    }

    /// Adds the slots live at `at` (the current step and the `SLICES - 1` before it).
    fn add_to(&self, merged: &mut Merged, at: Instant) {
        let current = self.epoch(at);
        let oldest = current - (SLICES as i64 - 1);
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in slots
            .iter()
            .filter(|s| (oldest..=current).contains(&s.epoch))
        {
            merged.requests += slot.requests;
            merged.errors += slot.errors;
            merged.max_us = merged.max_us.max(slot.max_us);
            for (sum, &count) in merged.buckets.iter_mut().zip(slot.buckets.iter()) {
                *sum += u64::from(count);
            }
        }
    }

    /// Counts and percentiles over the window ending at `at`.
    pub fn snapshot(&self, at: Instant) -> WindowSnapshot {
        combined(&[self], at)
    }
}

/// One snapshot over several windows (e.g. every version behind an endpoint), with percentiles
/// computed over all their requests together rather than averaged. Each window decides which
/// of its own slots are live at `at`.
pub fn combined(windows: &[&SlidingWindow], at: Instant) -> WindowSnapshot {
    let mut merged = Merged::new();
    for window in windows {
        window.add_to(&mut merged, at);
    }
    merged.snapshot()
}

/// What a window saw. Percentiles are bucket upper bounds: at most ~3.1% above the truth.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl WindowSnapshot {
    /// Errors per request; 0 when there were no requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Gate thresholds a workload carries (from the deployment's rollout health gate).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<f64>,
    /// Fewer requests than this in the window are too few to judge.
    pub min_requests: u64,
}

/// Why the window breaches the thresholds (both reasons, joined by "; ", when both apply);
/// `None` when within them, or when fewer than `min_requests` requests (or none) were seen.
pub fn breach(
    snapshot: &WindowSnapshot,
    thresholds: &Thresholds,
    window: Duration,
) -> Option<String> {
    if snapshot.requests == 0 || snapshot.requests < thresholds.min_requests {
        return None;
    }
    let secs = window.as_secs_f64();
    let mut reasons = Vec::new();
    let rate = snapshot.error_rate();
    if let Some(max) = thresholds.max_error_rate.filter(|&max| rate > max) {
        reasons.push(format!(
            "error rate {rate:.3} over the last {secs} s exceeds {max:.3} ({} of {} requests)",
            snapshot.errors, snapshot.requests
        ));
    }
    if let Some(max) = thresholds.max_p99_ms.filter(|&max| snapshot.p99_ms > max) {
        reasons.push(format!(
            "p99 latency {:.1} ms over the last {secs} s exceeds {max} ms",
            snapshot.p99_ms
        ));
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn within_5_percent(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.05
    }

    #[test]
    fn buckets_never_under_report_and_stay_within_a_thirty_second_of_the_value() {
        let edges = (0..=MAX_EXP + 1).flat_map(|e| [(1 << e) - 1, 1 << e, (1 << e) + 1]);
        for us in (0..200_000).chain(edges).filter(|&us| us <= MAX_US) {
            let upper = bucket_upper(bucket_index(us));
            assert!(
                upper >= us && (upper - us) * SUB <= us,
                "{us} µs reported as {upper}"
            );
        }
        assert!(
            (1..200_000).all(|us| bucket_index(us) >= bucket_index(us - 1)),
            "indices grow with latency"
        );
        assert_eq!(bucket_index(MAX_US), BUCKETS - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_within_five_percent_and_errors_are_counted() {
        let w = SlidingWindow::new(WINDOW);
        let base = Instant::now();
        for n in 1..=1000 {
            w.record(base + ms(n), ms(n), n % 4 != 0);
        }
        let s = w.snapshot(base + ms(1000));
        assert_eq!((s.requests, s.errors, s.error_rate()), (1000, 250, 0.25));
        assert!(within_5_percent(s.p50_ms, 500.0), "p50 {}", s.p50_ms);
        assert!(within_5_percent(s.p99_ms, 990.0), "p99 {}", s.p99_ms);
        assert!(
            s.p50_ms >= 500.0 && s.p99_ms >= 990.0,
            "upper bounds never under-report"
        );
        assert_eq!(s.max_ms, 1000.0);
    }

    #[test]
    fn one_slow_request_in_a_hundred_is_the_max_but_two_move_the_p99() {
        let w = SlidingWindow::new(WINDOW);
        let base = Instant::now();
        for _ in 0..99 {
            w.record(base, ms(2), true);
        }
        w.record(base, ms(800), true);
        let s = w.snapshot(base);
        assert!(
            within_5_percent(s.p50_ms, 2.0) && within_5_percent(s.p99_ms, 2.0),
            "{s:?}"
        );
        assert_eq!(s.max_ms, 800.0);

        w.record(base, ms(800), true);
        let s = w.snapshot(base);
        assert!(within_5_percent(s.p99_ms, 800.0), "{s:?}");

        // Beyond the histogram's ~67 s the exact maximum is reported, not the last bucket's edge.
        w.record(base, Duration::from_secs(200), true);
        w.record(base, Duration::from_secs(200), true);
        let s = w.snapshot(base);
        assert_eq!((s.p99_ms, s.max_ms), (200_000.0, 200_000.0));
    }

    #[test]
    fn requests_older_than_the_window_expire() {
        let w = SlidingWindow::new(WINDOW);
        let base = Instant::now();
        w.record(base, ms(5), false);
        assert_eq!(w.snapshot(base + WINDOW - WINDOW / 10).requests, 1);
        let s = w.snapshot(base + WINDOW);
        assert_eq!(s, WindowSnapshot::default());
        assert_eq!(s.error_rate(), 0.0);
        // A request reported late, after its slot was reused, is dropped rather than miscounted.
        w.record(base + WINDOW, ms(5), true);
        w.record(base, ms(5), false);
        assert_eq!(w.snapshot(base + WINDOW).errors, 0);
    }

    #[test]
    fn combined_windows_equal_one_window_fed_both_streams() {
        let [a, b, both] = [(); 3].map(|_| SlidingWindow::new(WINDOW));
        let base = Instant::now();
        for n in 0..1000u64 {
            let (at, fast, slow) = (base + ms(n * 7), ms(1 + n % 13), ms(40 + n % 97));
            a.record(at, fast, n % 50 != 0);
            b.record(at, slow, n % 3 != 0);
            both.record(at, fast, n % 50 != 0);
            both.record(at, slow, n % 3 != 0);
        }
        let at = base + ms(8000);
        let merged = combined(&[&a, &b], at);
        assert_eq!(merged, both.snapshot(at));
        assert_eq!(merged.requests, 2000);
        // Computed over both streams, not the mean of the two versions' p99s.
        assert!(merged.p99_ms > (a.snapshot(at).p99_ms + b.snapshot(at).p99_ms) / 2.0);
    }

    #[test]
    fn a_record_far_in_the_future_leaves_no_stale_slots_behind() {
        let w = SlidingWindow::new(WINDOW);
        let base = Instant::now();
        for n in 0..30 {
            w.record(base + Duration::from_secs(n), ms(100), false);
        }
        let later = base + Duration::from_secs(3600);
        w.record(later, ms(1), true);
        let s = w.snapshot(later);
        assert_eq!((s.requests, s.errors, s.p99_ms, s.max_ms), (1, 0, 1.0, 1.0));
        // Every other slot still holds hour-old counts; reusing each one must clear it first.
        for n in 1..10 {
            w.record(later + Duration::from_secs(3 * n), ms(1), true);
        }
        let s = w.snapshot(later + Duration::from_secs(27));
        assert_eq!((s.requests, s.errors, s.max_ms), (10, 0, 1.0));
    }

    #[test]
    fn breach_explains_each_threshold_and_waits_for_enough_requests() {
        let gate = |max_error_rate, max_p99_ms, min_requests| Thresholds {
            max_error_rate,
            max_p99_ms,
            min_requests,
        };
        let s = WindowSnapshot {
            requests: 100,
            errors: 12,
            p99_ms: 84.1,
            ..Default::default()
        };
        assert_eq!(
            breach(&s, &gate(Some(0.01), None, 50), WINDOW).as_deref(),
            Some("error rate 0.120 over the last 30 s exceeds 0.010 (12 of 100 requests)")
        );
        assert_eq!(
            breach(&s, &gate(None, Some(50.0), 0), WINDOW).as_deref(),
            Some("p99 latency 84.1 ms over the last 30 s exceeds 50 ms")
        );
        let both = gate(Some(0.01), Some(50.0), 0);
        let message = breach(&s, &both, WINDOW).unwrap_or_default();
        assert!(message.starts_with("error rate 0.120") && message.contains("; p99 latency 84.1"));

        assert_eq!(breach(&s, &gate(Some(0.2), Some(100.0), 0), WINDOW), None);
        assert_eq!(
            breach(&s, &gate(Some(0.01), Some(50.0), 101), WINDOW),
            None,
            "too few"
        );
        let nothing = WindowSnapshot::default();
        assert_eq!(breach(&nothing, &both, WINDOW), None, "nothing to judge");
    }

    #[test]
    fn threads_recording_at_once_lose_no_counts() {
        fn shared<T: Send + Sync>(_: &T) {}
        let w = SlidingWindow::new(WINDOW);
        shared(&w);
        let base = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let w = &w;
                scope.spawn(move || {
                    for n in 0..10_000u64 {
                        w.record(base + ms(n % 20_000), ms(1 + (n + t) % 50), n % 10 != 0);
                    }
                });
            }
        });
        let s = w.snapshot(base + ms(20_000));
        assert_eq!((s.requests, s.errors), (80_000, 8_000));
    }
}
