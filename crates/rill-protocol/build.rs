//! Compiles `proto/rill/v1/*.proto` with protox (pure Rust, so no system `protoc`), generates the
//! tonic clients and servers, and writes the encoded `FileDescriptorSet` for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["common", "broker", "controller", "quorum", "group"]
        .map(|name| root.join(format!("rill/v1/{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("rill_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".rill.v1")
        .compile_fds(fds)?;
    Ok(())
}
