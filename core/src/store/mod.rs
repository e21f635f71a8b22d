//! Persistence: the data directory, opened for exclusive use by one server, and its SQLite
//! index ([`db`]).
//!
//! Layout (see the architecture page): `alps.db` (SQLite index), `blobs/` (content-addressed
//! sample bytes), `models/<project>/<version>/` (weights and manifests), `LOCK`.

pub mod blobs;
pub mod db;

use std::{
    fs::{self, File, TryLockError},
    io::{self, Write},
    path::{Path, PathBuf},
};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created (a parent is a file, permission denied, read-only fs).
    #[error("cannot create data dir {path}: {source}")]
    Create {
        /// The data directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The directory exists but a file cannot be written in it.
    #[error("data dir {path} is not writable: {source}")]
    NotWritable {
        /// The data directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Another process (normally another `alps-server`) holds the directory's lock.
    #[error("data dir {path} is in use by another alps-server (lock {lock} is held)")]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

/// An open data directory. Holds an exclusive advisory lock on `<dir>/LOCK` for as long as it
/// lives, so two servers never write the same files.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed, checks that it is writable and takes its lock.
    ///
    /// # Errors
    /// [`DataDirError`] naming the path and the cause.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        fs::create_dir_all(path).map_err(|source| DataDirError::Create { path: path.to_owned(), source })?;
        let lock_path = path.join("LOCK");
        let not_writable = |source| DataDirError::NotWritable { path: path.to_owned(), source };
        let mut lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(not_writable)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse { path: path.to_owned(), lock: lock_path });
            }
            Err(TryLockError::Error(source)) => return Err(not_writable(source)),
        }
        // Writing our pid both proves the directory is writable and helps whoever finds the lock.
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .and_then(|()| lock.sync_all())
            .map_err(not_writable)?;
        Ok(Self { path: path.to_owned(), _lock: lock })
    }

    /// The directory's path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Content-addressed sample bytes, `<dir>/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.path.join("blobs")
    }

    /// Model versions, `<dir>/models` (see [`model_version_dir`]).
    pub fn models_dir(&self) -> PathBuf {
        self.path.join("models")
    }

    /// The SQLite index, `<dir>/alps.db`.
    pub fn database_path(&self) -> PathBuf {
        self.path.join("alps.db")
    }

    /// Where the plugin host keeps the copies of plugin files it loads (`<dir>/plugin-copies`).
    pub fn plugin_copies_dir(&self) -> PathBuf {
        self.path.join("plugin-copies")
    }
}

/// `time` as milliseconds since the Unix epoch, the unit of every stored timestamp (0 before
/// the epoch, `i64::MAX` far after it).
pub fn unix_ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    unix_ms(std::time::SystemTime::now())
}

/// The directory of `project`'s model `version` under `models_dir`:
/// `<models>/<project>/<version>/` with `weights.safetensors` and `manifest.json`.
pub fn model_version_dir(models_dir: &Path, project: &str, version: &str) -> PathBuf {
    models_dir.join(project).join(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        let data = DataDir::open(&dir).unwrap();
        assert_eq!(data.path(), dir);
        assert!(dir.join("LOCK").is_file());
    }

    #[test]
    fn a_second_open_while_the_first_lives_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let first = DataDir::open(root.path()).unwrap();
        let error = DataDir::open(root.path()).unwrap_err();
        assert!(matches!(error, DataDirError::InUse { .. }), "{error}");
        drop(first);
        DataDir::open(root.path()).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_reported_with_its_path() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        fs::write(&file, b"x").unwrap();
        let error = DataDir::open(&file.join("data")).unwrap_err();
        assert!(matches!(error, DataDirError::Create { .. }), "{error}");
        assert!(error.to_string().contains(&file.display().to_string()), "{error}");
    }
}
