//! Compiles `alps/v1/*.proto` and `inference/open_inference.proto` with protox (pure Rust, no
//! system `protoc`) and generates the tonic clients and servers. The encoded descriptor sets are
//! written too, for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "alps/v1/common.proto",
    "alps/v1/projects.proto",
    "alps/v1/inference.proto",
    "alps/v1/heuristics.proto",
    "alps/v1/examples.proto",
    "alps/v1/training.proto",
    "alps/v1/models.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=alps");
    println!("cargo:rerun-if-changed=inference");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["."])?;
    fs::write(out_dir.join("alps_v1_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    let inference = protox::compile(["inference/open_inference.proto"], ["."])?;
    fs::write(out_dir.join("inference_descriptor.bin"), inference.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(inference)?;
    Ok(())
}
