//! Model runtimes behind one trait, so tract, OpenCL, WASM-wrapped and container backends are
//! interchangeable. A runtime that is requested but unavailable on this device is an explicit
//! error (the workload becomes `Unschedulable`), never a silent fallback to another one.

pub mod tract;

use std::path::PathBuf;
use std::sync::Arc;

use crate::tensor::{Tensor, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime {0:?} is not available on this device")]
    Unavailable(String),
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("{0}")]
    BadInput(String),
    #[error("inference failed: {0}")]
    Run(String),
}

/// What a runtime needs to prepare a model: its files on disk (verified) and its signature.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    /// The file the runtime loads (e.g. the `.onnx` file), inside the model's folder.
    pub entry: PathBuf,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

pub trait Runtime: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// Whether this device can run models with this runtime at all.
    fn check(&self) -> Result<(), RuntimeError>;
    /// Loads and plans the model once; the result serves any number of requests.
    fn prepare(&self, bundle: &ModelBundle) -> Result<Arc<dyn Runnable>, RuntimeError>;
}

pub trait Runnable: Send + Sync + std::fmt::Debug {
    fn inputs(&self) -> &[TensorInfo];
    fn outputs(&self) -> &[TensorInfo];
    /// Runs one inference; inputs are in the order of [`Runnable::inputs`].
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError>;
}

/// The runtimes compiled into this agent, by name.
pub fn available() -> Vec<Arc<dyn Runtime>> {
    vec![Arc::new(tract::TractRuntime)]
}

pub fn by_name(name: &str) -> Result<Arc<dyn Runtime>, RuntimeError> {
    let runtime = available()
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| RuntimeError::Unavailable(name.to_owned()))?;
    runtime.check()?;
    Ok(runtime)
}
