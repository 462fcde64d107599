//! OpenCL on GPUs, CPUs (PoCL) and FPGAs: device discovery and kernels tiled per device. The
//! OpenCL library (the ICD loader) is opened at run time, never linked, so an agent built with
//! this module starts, and reports no OpenCL devices, on a machine without one.

pub mod buffers;
mod device;
mod gemm;
pub mod graph;
pub mod ops;
mod programs;
mod runtime;
mod tune;

pub use device::{ClDevice, discover, use_installed_library};
pub use gemm::{Bias, Epilogue, Gemm, GemmParams, Operand};
pub use programs::Programs;
pub use runtime::{Engine, OpenClRuntime, concrete_model, pick_device, set_cache_dir};
pub use tune::{
    GemmTuning, TuneCache, VERIFY_TOLERANCE, candidates, tune_gemm, verification_shapes, verify,
    verify_tolerance,
};

/// An OpenCL call that failed, with what was being done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClError {
    /// No OpenCL library (ICD loader) could be opened on this machine.
    #[error("no OpenCL library is installed (libOpenCL.so.1 could not be loaded)")]
    NoLibrary,
    #[error("{doing}: {} ({code})", opencl3::error_codes::error_text(*code))]
    Call { doing: String, code: i32 },
    /// A program did not build; `log` is the compiler's output.
    #[error("building {what} for {device} failed: {log}")]
    Build {
        what: String,
        device: String,
        log: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Maps an OpenCL error code to [`ClError::Call`] naming what was being done.
pub(crate) fn doing(
    what: impl Into<String>,
) -> impl FnOnce(opencl3::error_codes::ClError) -> ClError {
    let doing = what.into();
    move |code| {
        if code.0 == opencl3::error_codes::DLOPEN_RUNTIME_LOAD_FAILED {
            ClError::NoLibrary
        } else {
            ClError::Call {
                doing,
                code: code.0,
            }
        }
    }
}
