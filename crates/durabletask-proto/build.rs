//! Generates the prost messages and the tonic clients and servers from our `.proto` files.
//!
//! protoc comes from the `protoc-bin-vendored` crate so a fresh machine (or the
//! Docker builder) needs no system package; a `PROTOC` variable still wins, for
//! platforms the vendored crate does not cover.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = [
        proto_dir.join("orchestrator_service.proto"),
        proto_dir.join("backend_service.proto"),
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");

    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let wkt_include = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // The proto has no `package`, so prost would name the output `_.rs`; give it a real name.
    config.default_package_filename("durabletask");

    // The descriptors too: the SDK's claim check walks any message for its `StringValue`s.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("durabletask_descriptor.bin"))
        .build_client(true)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_with_config(config, &protos, &[proto_dir, wkt_include])?;
    Ok(())
}
