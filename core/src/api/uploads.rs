//! `UploadModelFile` (in `alps.v1.ProjectService`): receives a model file in chunks, checks its
//! declared size and SHA-256, and stores it under the model root with a content-addressed name.
//! Nothing half-received is ever visible under that name: an aborted, oversized or mismatched
//! upload leaves no file.

use alps_proto::v1::{ModelFileKind, UploadModelFileResponse, upload_model_file_request::Part};
use tonic::{Status, Streaming};

use crate::models::files::{ModelFiles, human_bytes};

/// Receives one upload from `stream` into `files`.
///
/// # Errors
/// INVALID_ARGUMENT for a missing or malformed header, a chunk before the header, more or fewer
/// bytes than declared, or a digest mismatch; RESOURCE_EXHAUSTED for a declared size over the
/// limit; INTERNAL (logged) for a write failure.
pub async fn receive(
    files: &ModelFiles,
    mut stream: Streaming<alps_proto::v1::UploadModelFileRequest>,
) -> Result<UploadModelFileResponse, Status> {
    let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream: send the header"))?;
    let Some(Part::Header(header)) = first.part else {
        return Err(Status::invalid_argument("header: the first message must be the header"));
    };
    let extension = match ModelFileKind::try_from(header.kind) {
        Ok(ModelFileKind::Safetensors) => "safetensors",
        Ok(ModelFileKind::Torchscript) => "pt",
        _ => {
            return Err(Status::invalid_argument(
                "header.kind: MODEL_FILE_KIND_SAFETENSORS or MODEL_FILE_KIND_TORCHSCRIPT",
            ));
        }
    };
    let expected = header.sha256.to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument("header.sha256: 64 hex digits"));
    }
    if header.size_bytes == 0 {
        return Err(Status::invalid_argument("header.size_bytes: the file is empty"));
    }
    if header.size_bytes > files.max_bytes() {
        return Err(Status::resource_exhausted(format!(
            "header.size_bytes: the file is {}; the limit is {} MiB (--max-model-file-mib)",
            human_bytes(header.size_bytes),
            files.max_bytes() / (1024 * 1024)
        )));
    }
    let failed = |error: std::io::Error| crate::errors::internal("storing the upload", &error);
    let mut upload = tokio::task::block_in_place(|| files.begin_upload()).map_err(failed)?;
    while let Some(message) = stream.message().await? {
        let Some(Part::Chunk(chunk)) = message.part else {
            return Err(Status::invalid_argument("header: only the first message may be a header"));
        };
        if upload.bytes() + chunk.len() as u64 > header.size_bytes {
            return Err(Status::invalid_argument(format!(
                "more bytes than header.size_bytes ({}) were sent",
                header.size_bytes
            )));
        }
        tokio::task::block_in_place(|| upload.write(&chunk)).map_err(failed)?;
    }
    if upload.bytes() != header.size_bytes {
        return Err(Status::invalid_argument(format!(
            "the stream ended after {} of the {} bytes in header.size_bytes",
            upload.bytes(),
            header.size_bytes
        )));
    }
    let actual = upload.sha256();
    if actual != expected {
        return Err(Status::invalid_argument(format!(
            "header.sha256 is {expected}, the bytes received hash to {actual}"
        )));
    }
    let path = tokio::task::block_in_place(|| upload.finish(extension)).map_err(failed)?;
    tracing::info!(path = %path.display(), bytes = header.size_bytes, "model file uploaded");
    Ok(UploadModelFileResponse { path: path.display().to_string(), size_bytes: header.size_bytes, sha256: actual })
}
