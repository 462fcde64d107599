//! Compiles the `.proto` files with protox (pure Rust), so building edgeship never needs a
//! system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "edgeship/v1/registry.proto",
    "edgeship/v1/device.proto",
    "edgeship/v1/fleet.proto",
];

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
    Ok(())
}
