//! Compiles `proto/orderflow/v1/*.proto` with protox (pure Rust: no system `protoc`),
//! then prost for the types and pbjson for the canonical protobuf JSON mapping.
use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["orderflow/v1/order_event.proto", "orderflow/v1/merchant.proto", "orderflow/v1/pipeline.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("orderflow_descriptor.bin");
    let bytes = descriptors.encode_to_vec();
    std::fs::write(&descriptor_path, &bytes)?;

    prost_build::Config::new()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_well_known_types()
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .compile_protos(PROTOS, &[root])?;
    pbjson_build::Builder::new().register_descriptors(&bytes)?.ignore_unknown_fields().build(&[".orderflow"])?;
    Ok(())
}
