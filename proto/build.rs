//! Compiles `alps/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! tonic clients and servers. The encoded descriptor set is written too, for server reflection.

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
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("alps_v1_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
