//! The ALPS gRPC protocol, version 1 (`package alps.v1`), generated from `proto/alps/v1/*.proto`,
//! and the Open Inference Protocol (`package inference`, KServe v2 with Triton's extensions),
//! generated from `proto/inference/open_inference.proto`.
//!
//! Every `alps.v1` message and field is documented in its `.proto` file (units and shapes); the
//! generated Rust items carry those comments. The Open Inference Protocol's messages are those
//! of its specification, described in `proto/inference/open_inference.proto` and the README.

/// Generated messages, clients (`*_client`) and servers (`*_server`) of `alps.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("alps.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `alps.v1` file, for gRPC server
/// reflection (so `grpcurl` works without the `.proto` files).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("alps_v1_descriptor");

/// Generated messages, client and server of the Open Inference Protocol's
/// `inference.GRPCInferenceService`.
pub mod inference {
    #![allow(missing_docs, clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("inference");
}

/// Encoded `google.protobuf.FileDescriptorSet` of the Open Inference Protocol file, for
/// reflection.
pub const INFERENCE_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");
