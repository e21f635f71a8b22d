//! SHA-256 digests as lowercase hex: the names of content-addressed sample blobs and model
//! weights, and the checksums in model-version manifests. A leaf module, so that models, the
//! store and the domains' types can share it.

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`, lowercase hex (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
