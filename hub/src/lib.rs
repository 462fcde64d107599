//! edgeship hub: the control plane library behind the `edgeship` binary.

pub mod blobs;
pub mod registry;
