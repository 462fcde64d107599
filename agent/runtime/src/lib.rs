//! Model runtimes behind one trait, so tract, OpenCL and later backends are interchangeable.
//! The agent loads and runs models through it; the hub asks it at registration which runtimes
//! can run a file, and if not, why. Each backend sits behind a cargo feature; a runtime that is
//! compiled out, or whose system library is missing, is an explicit "unavailable" error (the
//! workload becomes `Unschedulable`), never a silent fallback to another runtime.
//!
//! Architecture invariant: nothing here knows about HTTP, MQTT or the registry. Backends take
//! and return [`Tensor`]s in signature order.

#[cfg(feature = "tract")]
pub mod onnx;
// The OpenCL API is C: its calls are the crate's only unsafe code, each with its reason.
pub mod npy;
#[cfg(feature = "opencl")]
#[allow(unsafe_code)]
pub mod opencl;
pub mod tensor;
#[cfg(feature = "tract")]
pub mod tract;

use std::path::PathBuf;
use std::sync::Arc;

use edgeship_domain::{RuntimeKind, TensorSpec};

pub use tensor::{Tensor, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime {runtime} is not available on this device: {why}")]
    Unavailable { runtime: RuntimeKind, why: String },
    #[error("cannot load the model: {0}")]
    Load(String),
    /// The request does not fit the model (shape, type); the caller's fault.
    #[error("{0}")]
    BadInput(String),
    #[error("inference failed: {0}")]
    Run(String),
    /// Not run: too many requests are waiting for the model. The caller may retry later.
    #[error("{0}")]
    Overloaded(String),
}

/// What a runtime needs to prepare a model: its files on disk (verified) and its signature.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    /// The file the runtime loads (e.g. the `.onnx` file), inside the model's folder.
    pub entry: PathBuf,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Which of the runtime's devices to run on (the manifest's `opencl_device`); empty for
    /// the runtime's default.
    pub device: String,
    /// How the OpenCL runtime stores tensors on its device (the manifest's
    /// `opencl_precision`); other runtimes compute in the model's own types.
    pub precision: edgeship_domain::Precision,
}

pub trait Runtime: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> RuntimeKind;
    /// Whether this device can run models with this runtime at all (library and hardware).
    fn check(&self) -> Result<(), RuntimeError>;
    /// Loads and plans the model once; the result serves any number of requests.
    fn prepare(&self, bundle: &ModelBundle) -> Result<Arc<dyn Runnable>, RuntimeError>;
    /// Whether this runtime can plan the model file at `path`; `Err` says why not. Used by the
    /// hub at registration, with exactly the code devices use.
    fn can_plan(&self, path: &std::path::Path) -> Result<(), String>;
}

/// A prepared model. Inputs and outputs are in the order of its signature.
pub trait Runnable: Send + Sync + std::fmt::Debug {
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError>;
}

/// The runtimes compiled into this build.
pub fn compiled() -> Vec<Arc<dyn Runtime>> {
    vec![
        #[cfg(feature = "tract")]
        Arc::new(tract::TractRuntime),
        #[cfg(feature = "opencl")]
        Arc::new(opencl::OpenClRuntime),
    ]
}

/// The runtimes that work on this device: compiled in, and their check passes.
pub fn available() -> Vec<Arc<dyn Runtime>> {
    compiled()
        .into_iter()
        .filter(|r| r.check().is_ok())
        .collect()
}

/// The runtime of `kind`, if it is compiled in and works here.
pub fn by_kind(kind: RuntimeKind) -> Result<Arc<dyn Runtime>, RuntimeError> {
    let runtime = compiled()
        .into_iter()
        .find(|r| r.kind() == kind)
        .ok_or_else(|| RuntimeError::Unavailable {
            runtime: kind,
            why: "this agent was built without it".into(),
        })?;
    runtime.check()?;
    Ok(runtime)
}
