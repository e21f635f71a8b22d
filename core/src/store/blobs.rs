//! Content-addressed sample bytes: `<data-dir>/blobs/<first two hex digits>/<sha256>`. A blob is
//! written to a temporary file, fsync'ed and renamed into place, so a crash never leaves a
//! partial blob under its final name, and writing the same bytes twice stores them once.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use sha2::{Digest, Sha256};

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// File system failure.
    #[error("blob store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The stored bytes no longer hash to their name (disk corruption or tampering).
    #[error("blob {sha256} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The blob's name.
        sha256: String,
        /// What the content hashes to now.
        actual: String,
    },
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The blob directory of one data directory.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating) `dir`.
    ///
    /// # Errors
    /// [`BlobError::Io`] if it cannot be created.
    pub fn open(dir: PathBuf) -> Result<Self, BlobError> {
        let temporary = dir.join("tmp");
        fs::create_dir_all(&temporary).map_err(|source| BlobError::Io { path: temporary, source })?;
        Ok(Self { dir })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    /// Stores `bytes` durably and returns their SHA-256.
    ///
    /// # Errors
    /// [`BlobError::Io`] on a file system failure.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let sha256 = sha256_hex(bytes);
        let path = self.path(&sha256);
        if path.exists() {
            return Ok(sha256);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BlobError::Io { path, source }
        };
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(io(parent))?;
        // Unique per writer: two requests storing the same bytes at once must not share (and
        // rename away) each other's temporary file.
        static WRITERS: AtomicU64 = AtomicU64::new(0);
        let writer = WRITERS.fetch_add(1, Ordering::Relaxed);
        let temporary = self.dir.join("tmp").join(format!("{sha256}.{}.{writer}", std::process::id()));
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&temporary))?;
        fs::rename(&temporary, &path).map_err(io(&path))?;
        File::open(parent).and_then(|dir| dir.sync_all()).map_err(io(parent))?;
        Ok(sha256)
    }

    /// The bytes of blob `sha256`, checked against their hash.
    ///
    /// # Errors
    /// [`BlobError`] if missing, unreadable or corrupt.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(sha256);
        let bytes = fs::read(&path).map_err(|source| BlobError::Io { path, source })?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(BlobError::Corrupt { sha256: sha256.to_owned(), actual });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_checked_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let sha = store.put(b"hello").unwrap();
        assert_eq!(sha, sha256_hex(b"hello"));
        assert_eq!(store.put(b"hello").unwrap(), sha, "idempotent");
        assert_eq!(store.get(&sha).unwrap(), b"hello");
        std::fs::write(store.path(&sha), b"jello").unwrap();
        assert!(matches!(store.get(&sha), Err(BlobError::Corrupt { .. })));
        assert!(matches!(store.get(&sha256_hex(b"absent")), Err(BlobError::Io { .. })));
    }

    #[test]
    fn concurrent_writers_of_the_same_bytes_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let bytes = vec![7u8; 1 << 20];
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8).map(|_| scope.spawn(|| store.put(&bytes))).collect();
            for writer in writers {
                assert_eq!(writer.join().unwrap().unwrap(), sha256_hex(&bytes));
            }
        });
        assert_eq!(store.get(&sha256_hex(&bytes)).unwrap(), bytes);
    }
}
