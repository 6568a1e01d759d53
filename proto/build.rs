//! Compiles `banger/**/*.proto` with protox (no protoc needed) and generates
//! tonic clients and servers, plus one encoded descriptor set for reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "banger/runtime/v1/info.proto",
    "banger/runtime/v1/progress.proto",
    "banger/kernelcat/v1/kernelcat.proto",
    "banger/imagestore/v1/imagestore.proto",
    "banger/netd/v1/netd.proto",
    "banger/vmm/v1/vmm.proto",
    "banger/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("banger_descriptor.bin"), encoded)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
