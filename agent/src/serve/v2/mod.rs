//! The Open Inference Protocol v2 (KServe, Triton, MLServer): over REST on the endpoint's
//! port (`rest`) and over gRPC on its second port (`grpc`). Both decode their tensors and
//! hand them to `infer`, which holds what the protocol means: model and version routing,
//! inputs matched to the signature by name, requested outputs.

mod flat;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod infer;
mod quick;
pub mod rest;

/// What server metadata names.
pub const SERVER_NAME: &str = "edgeship";
/// Protocol extensions served: the binary tensor data extension over REST.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];
/// The platform model metadata names (ONNX models, whichever runtime runs them).
pub const PLATFORM: &str = "onnx";

// Over both transports: the agent's tests are built with its default features.
#[cfg(all(test, feature = "grpc"))]
mod tests;
