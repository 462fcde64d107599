//! Generated protobuf types and gRPC stubs for the edgeship hub API and device protocol.
//!
//! Only adapter modules (the hub's `api`, the CLI client, the agent's MQTT link) use these
//! types; domain code works with plain Rust types converted at that edge.

#![allow(
    missing_debug_implementations,
    unused_qualifications,
    clippy::large_enum_variant
)]

/// Version 1 of the hub API (`package edgeship.v1`).
pub mod v1 {
    tonic::include_proto!("edgeship.v1");
}

/// Encoded `FileDescriptorSet` of every edgeship `.proto` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("edgeship_descriptor");
