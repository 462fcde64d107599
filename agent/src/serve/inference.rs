//! Where an inference runs: in the model's batch queue when it batches; else on the async
//! worker that took the request when the model is cheap, or on tokio's blocking pool,
//! measured on every run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use edgeship_runtime::{RuntimeError, Tensor};

use super::Scorer;

/// A model whose last inference took less than this runs on the async worker that took the
/// request: handing it to the blocking pool and back costs more than such a model's whole
/// run. Slower models (or one not yet measured) go to the blocking pool, so they never hold
/// up the workers that accept and parse other requests.
const INLINE_BELOW_MICROS: u64 = 200;

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
            recent.store(
                started.elapsed().as_micros().max(1) as u64,
                Ordering::Relaxed,
            );
        }
        result
    }
    if let Some(batcher) = scorer.batcher() {
        return batcher.infer(inputs).await;
    }
    let recent = scorer
        .recent_micros()
        .map_or(0, |r| r.load(Ordering::Relaxed));
    if (1..INLINE_BELOW_MICROS).contains(&recent) {
        return timed(scorer.as_ref(), inputs);
    }
    let running = Arc::clone(scorer);
    tokio::task::spawn_blocking(move || timed(running.as_ref(), inputs))
        .await
        .unwrap_or_else(|err| Err(RuntimeError::Run(format!("inference task failed: {err}"))))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use edgeship_domain::TensorSpec;

    use super::*;

    /// Answers at once, or panics as a broken runtime might.
    #[derive(Debug, Default)]
    struct Quick {
        panics: bool,
        recent: AtomicU64,
    }

    impl Scorer for Quick {
        fn model_ref(&self) -> &str {
            "q:1"
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
            Ok(inputs)
        }
        fn recent_micros(&self) -> Option<&AtomicU64> {
            Some(&self.recent)
        }
    }

    #[tokio::test]
    async fn cheap_models_run_inline_after_one_measured_run_and_a_panic_fails_only_the_call() {
        let quick: Arc<dyn Scorer> = Arc::new(Quick::default());
        assert!(run_inference(&quick, vec![]).await.is_ok());
        let measured = quick.recent_micros().map(|r| r.load(Ordering::Relaxed));
        assert!(measured.is_some_and(|us| (1..INLINE_BELOW_MICROS).contains(&us)));
        assert!(run_inference(&quick, vec![]).await.is_ok(), "inline now");

        let broken: Arc<dyn Scorer> = Arc::new(Quick {
            panics: true,
            recent: AtomicU64::new(5),
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
