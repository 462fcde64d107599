//! How benchmarks sum up their rounds: the median and the worst, never one lucky run.

/// Rounds of each benchmark figure (`EDGESHIP_BENCH_ROUNDS`, default 3): tables show the
/// median and the worst.
pub fn bench_rounds() -> usize {
    std::env::var("EDGESHIP_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

/// "median (worst)" of `values`, where a larger value is worse.
pub fn median_worst(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}

/// Transfer times of `bytes` as "median s, MB/s (worst s, MB/s)".
pub fn transfer_times(seconds: &[f64], bytes: usize) -> String {
    let (median, worst) = median_worst(seconds);
    let mbps = |s: f64| bytes as f64 / 1e6 / s;
    format!(
        "{median:.2} s, {:.0} MB/s ({worst:.2} s, {:.0} MB/s)",
        mbps(median),
        mbps(worst)
    )
}

/// Runs a benchmark's body on a two-worker runtime and exits with 1 when it reports
/// failure (`false`), so a recipe stops on a failed run.
pub fn bench_main(body: impl Future<Output = bool>) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(body);
    std::process::exit(i32::from(!ok));
}
