//! Where an inference runs: in the model's batch queue when it batches (unless it would be
//! a batch of one for certain); else on the async worker that took the request when the
//! model is cheap, or on tokio's blocking pool, one inference per core at a time. Every
//! run's time feeds the model's cost estimate.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Semaphore;

use edgeship_runtime::{RuntimeError, Tensor};

use super::Scorer;

/// A model whose estimated inference time (see [`fold`]) is below this runs on the async
/// worker that took the request: handing it to the blocking pool and back costs more than
/// such a model's whole run. Slower models (or one not yet measured) go to the blocking pool,
/// so they never hold up the workers that accept and parse other requests.
const INLINE_BELOW_MICROS: u64 = 200;

/// A model's new cost estimate after a run that took `measured` µs: a faster run replaces
/// the estimate at once, a slower one moves it an eighth of the way.
///
/// Why not the last run's time: a run's wall time includes whatever time its thread was not
/// on a core, which on a loaded machine can be many times the run itself. Taken as is, one
/// preempted run sends a cheap model's next request to the blocking pool, and while that
/// pool's runs are preempted too (each hand-off adds a thread to a busy machine) the model
/// would stay there. The fastest recent runs are the model's cost; a model that really got
/// slower is followed within a few runs.
fn fold(estimate: u64, measured: u64) -> u64 {
    let measured = measured.max(1);
    if estimate == 0 || measured <= estimate {
        measured
    } else {
        estimate + (measured - estimate).div_ceil(8)
    }
}

/// Inferences that run on the blocking pool at once, over every endpoint of the agent: one
/// per core. More would not finish sooner, only share the cores, and each would hold its
/// activations meanwhile (a resnet50 holds over 100 MB), so memory would grow with load and
/// every request would slow down: requests beyond it wait, in order, without a thread.
fn running() -> &'static Semaphore {
    static RUNNING: OnceLock<Semaphore> = OnceLock::new();
    RUNNING
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from)))
}

/// Runs one inference where it is cheapest (see [`INLINE_BELOW_MICROS`]). A panic in the
/// runtime fails this request, never the endpoint.
pub async fn run_inference(
    scorer: &Arc<dyn Scorer>,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, RuntimeError> {
    fn timed(scorer: &dyn Scorer, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.infer(inputs)))
                .unwrap_or_else(|_| Err(RuntimeError::Run("the runtime panicked".into())));
        if let Some(recent) = scorer.recent_micros() {
            let measured = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            // Runs on other threads may fold in between; losing one of their updates is
            // harmless, the next run folds again.
            let estimate = recent.load(Ordering::Relaxed);
            recent.store(fold(estimate, measured), Ordering::Relaxed);
        }
        result
    }
    if let Some(batcher) = scorer.batcher() {
        if !batcher.would_run_alone() {
            return batcher.infer(inputs).await;
        }
        // A batch of one for certain: run it where an unbatched request runs (its results
        // are the same, as the batcher's probe made sure).
        batcher.count_alone();
    }
    let recent = scorer
        .recent_micros()
        .map_or(0, |r| r.load(Ordering::Relaxed));
    if (1..INLINE_BELOW_MICROS).contains(&recent) {
        return timed(scorer.as_ref(), inputs);
    }
    // The semaphore is never closed, so a permit always comes.
    let _turn = running()
        .acquire()
        .await
        .map_err(|err| RuntimeError::Run(format!("no turn to run: {err}")))?;
    let scorer = Arc::clone(scorer);
    tokio::task::spawn_blocking(move || timed(scorer.as_ref(), inputs))
        .await
        .unwrap_or_else(|err| Err(RuntimeError::Run(format!("inference task failed: {err}"))))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use edgeship_domain::TensorSpec;

    use super::*;

    /// Answers after `delay_ms` (at once by default), or panics as a broken runtime might;
    /// counts how many of its runs overlap.
    #[derive(Debug, Default)]
    struct Fake {
        panics: bool,
        delay_ms: u64,
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        recent: AtomicU64,
    }

    impl Scorer for Fake {
        fn model_ref(&self) -> &str {
            "fake:1"
        }
        fn inputs(&self) -> &[TensorSpec] {
            &[]
        }
        fn outputs(&self) -> &[TensorSpec] {
            &[]
        }
        fn sample_input(&self) -> Option<&serde_json::Value> {
            None
        }
        fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
            assert!(!self.panics, "the runtime broke");
            let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(running, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(self.delay_ms));
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(inputs)
        }
        fn recent_micros(&self) -> Option<&AtomicU64> {
            Some(&self.recent)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn costly_inferences_run_one_per_core_however_many_requests_wait() {
        let slow = Arc::new(Fake {
            delay_ms: 20,
            ..Fake::default()
        });
        let scorer: Arc<dyn Scorer> = slow.clone();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let calls = (0..4 * cores).map(|_| {
            let scorer = Arc::clone(&scorer);
            tokio::spawn(async move { run_inference(&scorer, vec![]).await })
        });
        for call in futures::future::join_all(calls).await {
            assert!(call.expect("task").is_ok());
        }
        let most = slow.most.load(Ordering::SeqCst);
        assert!(
            (1..=cores).contains(&most),
            "{most} inferences at once on {cores} cores"
        );
    }

    #[test]
    fn the_estimate_follows_fast_runs_at_once_and_slow_runs_slowly() {
        assert_eq!(fold(0, 5_000), 5_000, "the first run sets it");
        assert_eq!(fold(5_000, 10), 10, "a faster run replaces it");
        // A preempted run of a cheap model moves it, but one cheap run brings it back.
        let after_outlier = fold(10, 3_000);
        assert!(after_outlier < 400, "{after_outlier}");
        assert_eq!(fold(after_outlier, 12), 12);
        // A model that became slow for good is followed.
        let mut estimate = 10;
        for _ in 0..40 {
            estimate = fold(estimate, 1_000);
        }
        assert!(estimate > 990, "{estimate}");
        assert_eq!(fold(u64::MAX - 1, u64::MAX), u64::MAX, "no overflow");
        assert_eq!(fold(7, 0), 1, "a run takes at least a microsecond");
    }

    #[tokio::test]
    async fn cheap_models_run_inline_after_one_measured_run_and_a_panic_fails_only_the_call() {
        let quick: Arc<dyn Scorer> = Arc::new(Fake::default());
        assert!(run_inference(&quick, vec![]).await.is_ok());
        let measured = quick.recent_micros().map(|r| r.load(Ordering::Relaxed));
        assert!(measured.is_some_and(|us| (1..INLINE_BELOW_MICROS).contains(&us)));
        assert!(run_inference(&quick, vec![]).await.is_ok(), "inline now");

        let broken: Arc<dyn Scorer> = Arc::new(Fake {
            panics: true,
            recent: AtomicU64::new(5),
            ..Fake::default()
        });
        let err = run_inference(&broken, vec![])
            .await
            .expect_err("panicked inline");
        assert!(err.to_string().contains("the runtime panicked"), "{err}");
        if let Some(recent) = broken.recent_micros() {
            recent.store(0, Ordering::Relaxed);
        }
        let err = run_inference(&broken, vec![])
            .await
            .expect_err("panicked in the pool");
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
