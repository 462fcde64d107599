//! edgeship agent: the per-device data plane behind the `edgeship-agent` binary.

pub mod cache;
pub mod config;
pub mod runtime;
pub mod scoring;
pub mod serve;
pub mod tensor;
