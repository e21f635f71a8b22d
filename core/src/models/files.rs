//! Model files a client names (`weights_path`, `torchscript_path`) or uploads: confined to the
//! model root (`--model-root`, default `<data-dir>/imports`) and read with a bound.
//!
//! A client path is accepted only if it names a regular file inside the root once every
//! symlink is resolved. Paths outside the root get one message whether or not they exist, so
//! the API cannot be used to probe the server's file system. Files are read through one open
//! descriptor (checked to be a regular file, then read to at most the size limit), so a special
//! file such as `/dev/zero` or a file swapped after the check is never read without bound.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    path::{Component, Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// Why a model file cannot be used; messages are safe to show a client (they name the path as
/// the client gave it, never the server's resolved path).
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// The path lies outside the model root (or resolves there through a symlink), or is
    /// absolute and not under the root. Same message whether or not it exists.
    #[error("{path:?} is not a file in the model root (--model-root); upload it with UploadModelFile")]
    OutsideRoot {
        /// The path as given.
        path: String,
    },
    /// Inside the root, but no such file.
    #[error("{path:?}: no such file in the model root")]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// Inside the root, but a directory, device, socket or pipe.
    #[error("{path:?} is not a regular file")]
    NotRegular {
        /// The path as given.
        path: String,
    },
    /// Larger than `--max-model-file-mib`.
    #[error("{path:?} is {size}; the limit is {limit_mib} MiB (--max-model-file-mib)")]
    TooLarge {
        /// The path as given.
        path: String,
        /// Its size, human-readable (e.g. `3.1 GiB`).
        size: String,
        /// The limit in MiB.
        limit_mib: u64,
    },
    /// A read failed inside the root (logged in full by the caller; the message is generic).
    #[error("{path:?} cannot be read")]
    Unreadable {
        /// The path as given.
        path: String,
        /// The I/O error, for the server log only.
        #[source]
        source: io::Error,
    },
}

/// The model root and the read limit, and the server's cache of published pretrained weights
/// (server-owned, so outside the root's confinement, but read with the same limit).
#[derive(Clone, Debug)]
pub struct ModelFiles {
    root: PathBuf,
    max_bytes: u64,
    pretrained: Option<super::pretrained::WeightsCache>,
}

impl ModelFiles {
    /// Files under `root` (created if missing), each at most `max_bytes` long.
    ///
    /// # Errors
    /// The I/O error if the root cannot be created.
    pub fn open(root: PathBuf, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        Ok(Self { root, max_bytes, pretrained: None })
    }

    /// The same files, with `cache` for projects that start from published pretrained weights.
    #[must_use]
    pub fn with_weights_cache(mut self, cache: super::pretrained::WeightsCache) -> Self {
        self.pretrained = Some(cache);
        self
    }

    /// The cache of published pretrained weights, if the server has one.
    pub fn weights_cache(&self) -> Option<&super::pretrained::WeightsCache> {
        self.pretrained.as_ref()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// No model root: every client path is refused ([`ModelFileError::OutsideRoot`]). For models
    /// that need no client file (trained versions, tests).
    pub fn none() -> Self {
        Self { root: PathBuf::new(), max_bytes: 0, pretrained: None }
    }

    /// Largest file read, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Resolves a client path (relative to the root, or absolute under it) to the real path of a
    /// regular file inside the root.
    ///
    /// # Errors
    /// [`ModelFileError::OutsideRoot`], [`NotFound`](ModelFileError::NotFound),
    /// [`NotRegular`](ModelFileError::NotRegular), [`TooLarge`](ModelFileError::TooLarge).
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, ModelFileError> {
        let shown = path.display().to_string();
        let outside = || ModelFileError::OutsideRoot { path: shown.clone() };
        if self.root.as_os_str().is_empty() {
            return Err(outside());
        }
        let root = fs::canonicalize(&self.root)
            .map_err(|source| ModelFileError::Unreadable { path: shown.clone(), source })?;
        // Lexical check first, before any file-system call: no `..`, and an absolute path must
        // already be under the root. Nothing outside the root is ever stat'ed.
        let relative = if path.is_absolute() {
            path.strip_prefix(&root).or_else(|_| path.strip_prefix(&self.root)).map_err(|_| outside())?
        } else {
            path
        };
        if relative.as_os_str().is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(outside());
        }
        let joined = root.join(relative);
        let real = match fs::canonicalize(&joined) {
            Ok(real) => real,
            // Through a symlinked directory a missing or unreadable path may lie outside the
            // root: say so only for paths whose nearest existing ancestor is inside it.
            Err(_) if !nearest_ancestor_inside(&joined, &root) => return Err(outside()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(ModelFileError::NotFound { path: shown });
            }
            Err(source) => return Err(ModelFileError::Unreadable { path: shown, source }),
        };
        // A symlink inside the root may point anywhere: judge where it lands.
        if !real.starts_with(&root) || real == root {
            return Err(outside());
        }
        let metadata =
            fs::metadata(&real).map_err(|source| ModelFileError::Unreadable { path: shown.clone(), source })?;
        if !metadata.is_file() {
            return Err(ModelFileError::NotRegular { path: shown });
        }
        self.check_size(&shown, metadata.len())?;
        Ok(real)
    }

    /// What tells the contents of the file `path` names apart without reading it: its size and
    /// modification time (`<bytes>@<ns since the epoch>`); `None` if it does not resolve. An
    /// operator who replaces a weights file in place changes it.
    pub fn stamp(&self, path: &Path) -> Option<String> {
        let metadata = fs::metadata(self.resolve(path).ok()?).ok()?;
        let modified = metadata.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(format!("{}@{}", metadata.len(), modified.as_nanos()))
    }

    /// Reads the file a client path names ([`resolve`](Self::resolve)), at most
    /// [`max_bytes`](Self::max_bytes) of it.
    ///
    /// # Errors
    /// As [`resolve`](Self::resolve); [`ModelFileError::TooLarge`] also if the file grew past the
    /// limit after the check, [`ModelFileError::NotRegular`] if it was swapped for a special file.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, ModelFileError> {
        let shown = path.display().to_string();
        let real = self.resolve(path)?;
        let unreadable = |source| ModelFileError::Unreadable { path: shown.clone(), source };
        let file = File::open(&real).map_err(unreadable)?;
        // Judge the descriptor we read, not the name we checked.
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(ModelFileError::NotRegular { path: shown });
        }
        self.check_size(&shown, metadata.len())?;
        let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
        file.take(self.max_bytes + 1).read_to_end(&mut bytes).map_err(unreadable)?;
        self.check_size(&shown, bytes.len() as u64)?;
        Ok(bytes)
    }

    fn check_size(&self, shown: &str, size: u64) -> Result<(), ModelFileError> {
        if size > self.max_bytes {
            return Err(ModelFileError::TooLarge {
                path: shown.to_owned(),
                size: human_bytes(size),
                limit_mib: self.max_bytes / (1024 * 1024),
            });
        }
        Ok(())
    }

    /// Starts an upload into `<root>/uploads`: bytes go to a temporary file there, which
    /// [`Upload::finish`] renames into place and a dropped upload removes.
    ///
    /// # Errors
    /// The I/O error if the directory or the temporary file cannot be created.
    pub fn begin_upload(&self) -> io::Result<Upload> {
        let dir = self.root.join("uploads");
        fs::create_dir_all(&dir)?;
        let file = tempfile::Builder::new().prefix(".upload-").tempfile_in(&dir)?;
        Ok(Upload { dir, file, hasher: Sha256::new(), bytes: 0 })
    }
}

/// Whether the nearest ancestor of `path` that resolves lies inside `root` (canonical).
fn nearest_ancestor_inside(path: &Path, root: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .find_map(|ancestor| fs::canonicalize(ancestor).ok())
        .is_some_and(|real| real.starts_with(root))
}

/// A model file being received: written to a temporary file while its SHA-256 is computed.
#[derive(Debug)]
pub struct Upload {
    dir: PathBuf,
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    bytes: u64,
}

impl Upload {
    /// Appends `chunk`.
    ///
    /// # Errors
    /// The I/O error of the write.
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk)?;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The hex SHA-256 of everything received.
    pub fn sha256(&self) -> String {
        self.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Stores the file as `uploads/<sha256>.<extension>`, crash-safely (fsync, rename, fsync of
    /// the directory), and returns that path relative to the root: the name to give in
    /// `weights_path` / `torchscript_path`. The same bytes uploaded twice get the same name.
    ///
    /// # Errors
    /// The I/O error if the file cannot be written.
    pub fn finish(self, extension: &str) -> io::Result<PathBuf> {
        let name = format!("{}.{extension}", self.sha256());
        let target = self.dir.join(&name);
        self.file.as_file().sync_all()?;
        self.file.persist(&target).map_err(|error| error.error)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Path::new("uploads").join(name))
    }
}

/// `bytes` as a short human-readable size (`512 B`, `3.1 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(limit: u64) -> (tempfile::TempDir, ModelFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = ModelFiles::open(dir.path().join("imports"), limit).unwrap();
        fs::write(files.root().join("w.safetensors"), b"weights").unwrap();
        fs::create_dir(files.root().join("sub")).unwrap();
        (dir, files)
    }

    #[test]
    fn files_inside_the_root_are_read_by_relative_or_absolute_path() {
        let (_dir, files) = files(1024);
        assert_eq!(files.read(Path::new("w.safetensors")).unwrap(), b"weights");
        assert_eq!(files.read(&files.root().join("w.safetensors")).unwrap(), b"weights");
    }

    #[test]
    fn outside_paths_get_one_message_whether_or_not_they_exist() {
        let (dir, files) = files(1024);
        fs::write(dir.path().join("secret"), b"x").unwrap();
        let messages: Vec<String> =
            ["/etc/passwd", "/nonexistent/file", "/dev/zero", "../secret", "../nope", "sub/../../secret"]
                .iter()
                .map(|p| {
                    let error = files.read(Path::new(p)).unwrap_err();
                    assert!(matches!(error, ModelFileError::OutsideRoot { .. }), "{p}: {error}");
                    error.to_string().replace(p, "PATH")
                })
                .collect();
        assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
    }

    #[test]
    fn symlinks_are_judged_by_where_they_land() {
        let (dir, files) = files(1024);
        fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), files.root().join("escape")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", files.root().join("zero")).unwrap();
        std::os::unix::fs::symlink(files.root().join("w.safetensors"), files.root().join("alias")).unwrap();
        assert!(matches!(files.read(Path::new("escape")), Err(ModelFileError::OutsideRoot { .. })));
        assert!(matches!(files.read(Path::new("zero")), Err(ModelFileError::OutsideRoot { .. })));
        assert_eq!(files.read(Path::new("alias")).unwrap(), b"weights");
        // Through a symlinked directory, existing and missing files outside the root look alike.
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/there"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), files.root().join("ext")).unwrap();
        for p in ["ext/there", "ext/missing", "ext/missing/deeper"] {
            assert!(matches!(files.read(Path::new(p)), Err(ModelFileError::OutsideRoot { .. })), "{p}");
        }
        assert!(matches!(files.read(Path::new("sub/missing")), Err(ModelFileError::NotFound { .. })));
    }

    #[test]
    fn directories_missing_files_and_large_files_are_named() {
        let (_dir, files) = files(4);
        assert!(matches!(files.read(Path::new("sub")), Err(ModelFileError::NotRegular { .. })));
        assert!(matches!(files.read(Path::new("missing")), Err(ModelFileError::NotFound { .. })));
        let error = files.read(Path::new("w.safetensors")).unwrap_err();
        assert!(matches!(error, ModelFileError::TooLarge { .. }), "{error}");
        assert!(error.to_string().contains("7 B; the limit is 0 MiB"), "{error}");
        for p in ["", ".", "sub/.."] {
            assert!(matches!(files.read(Path::new(p)), Err(ModelFileError::OutsideRoot { .. })), "{p:?}");
        }
    }

    #[test]
    fn uploads_are_content_addressed_and_readable() {
        let (_dir, files) = files(1024);
        let upload = |parts: &[&[u8]]| {
            let mut upload = files.begin_upload().unwrap();
            for part in parts {
                upload.write(part).unwrap();
            }
            upload.finish("pt").unwrap()
        };
        let name = upload(&[b"scr", b"ipt"]);
        let sha = crate::digest::sha256_hex(b"script");
        assert_eq!(name, Path::new("uploads").join(format!("{sha}.pt")));
        assert_eq!(upload(&[b"script"]), name);
        assert_eq!(files.read(&name).unwrap(), b"script");
        drop(files.begin_upload().unwrap());
        let left: Vec<_> = fs::read_dir(files.root().join("uploads")).unwrap().collect();
        assert_eq!(left.len(), 1, "an abandoned upload leaves nothing behind");
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3_328_599_654), "3.1 GiB");
    }
}
