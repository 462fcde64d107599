//! Versions that need no model file, for tests of routing, counting and health.

use super::*;
use edgeship_domain::{Dim, ElementType};
use std::time::Duration;

/// Echoes its one input `x: float32[n]`, or fails every inference as a broken model would.
#[derive(Debug)]
pub(crate) struct FakeScorer {
    name: String,
    fails: bool,
    inputs: Vec<TensorSpec>,
}

impl Scorer for FakeScorer {
    fn model_ref(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn sample_input(&self) -> Option<&serde_json::Value> {
        None
    }
    fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        if self.fails {
            return Err(RuntimeError::Run("the model is broken".into()));
        }
        Ok(inputs)
    }
}

pub(crate) fn scorer(name: &str, fails: bool) -> Arc<dyn Scorer> {
    Arc::new(FakeScorer {
        name: name.to_owned(),
        fails,
        inputs: vec![TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Unknown],
        }],
    })
}

/// A working version `name` with a 30 s window.
pub(crate) fn backend(name: &str) -> Arc<Backend> {
    Backend::new(scorer(name, false), Duration::from_secs(30))
}

/// A plain Azure ML endpoint (no gRPC, CORS or auth) on an ephemeral loopback port.
pub(crate) async fn azureml_endpoint(routes: Routes) -> Endpoint {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Endpoint::start(
        any,
        None,
        "web",
        Surface::Scoring(&[Protocol::Azureml]),
        &[],
        Default::default(),
        routes,
    )
    .await
    .expect("listens")
}
