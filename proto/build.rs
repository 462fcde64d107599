//! Compiles the `.proto` files with protox (pure Rust), so building edgeship never needs a
//! system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "edgeship/v1/registry.proto",
    "edgeship/v1/device.proto",
    "edgeship/v1/fleet.proto",
    "edgeship/v1/profile.proto",
    "edgeship/v1/job.proto",
    "edgeship/v1/access.proto",
];
/// The Open Inference Protocol's gRPC service, served by agents' scoring endpoints.
const INFERENCE_PROTOS: &[&str] = &["inference/grpc_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Served by the hub's gRPC reflection service so grpcurl & co. work without .proto files.
    fs::write(
        out_dir.join("edgeship_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Agents speak only MQTT: the gRPC stubs (and tonic) exist with the `grpc` feature.
        .client_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        // File chunks decode as `Bytes` slices of the received buffer instead of copies.
        .bytes(".")
        .compile_fds(descriptors)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .client_mod_attribute(".", "#[cfg(feature = \"inference\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"inference\")]")
        // Raw tensor contents decode as slices of the received buffer, not copies.
        .bytes(".")
        .compile_fds(protox::compile(INFERENCE_PROTOS, ["proto"])?)?;
    Ok(())
}
