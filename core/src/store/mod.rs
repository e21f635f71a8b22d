//! Persistence: the data directory, opened for exclusive use by one server; the catalogue
//! ([`catalog`]: projects, example index, model versions, jobs) in SQLite there ([`sqlite`]) or
//! in PostgreSQL ([`postgres`]); the content-addressed sample blobs ([`blobs`]) and their
//! garbage collection ([`gc`]).
//!
//! With `--object-store-url`, sample blobs and model weights live in the object store
//! ([`objects`]) and the data dir's `models/` is a bounded cache of it ([`weights`]); with
//! `--published-plugins` the heuristic plugins published there are copied to
//! `published-plugins/` ([`plugins`]). TLS to PostgreSQL is [`database_tls`].
//!
//! [`migrate`] copies one catalogue into the other (`alps-server migrate`).
//!
//! The store depends on the domains' plain data types only ([`crate::projects::spec`]'s
//! `Project` and `ProjectSpec`, [`crate::training::record`]'s `Manifest` and `JobRecord`),
//! which it takes and returns typed and encodes itself; the services that use it
//! (`projects`, `training`) pass its failures on as [`StorageFailure`].
//!
//! Layout: `alps.db` (the SQLite catalogue, unused with `--database-url`), `blobs/` (content-addressed
//! sample bytes), `models/<sha256 of project id>/<version>/` (weights and manifests), `imports/`
//! (the default model root: uploaded and operator-placed model files), `published-plugins/`
//! (replicas), `LOCK`.

pub mod blobs;
pub mod catalog;
#[cfg(test)]
mod conformance;
pub mod database_tls;
pub mod gc;
pub mod migrate;
pub mod objects;
pub mod plugins;
pub mod postgres;
pub mod sqlite;
pub mod weights;

use catalog::StoreError;
use std::{
    fs::{self, File, TryLockError},
    io::{self, Write},
    path::{Path, PathBuf},
};

/// What a storage failure means to the caller: whether trying again may succeed. The API
/// turns it into a gRPC code with [`crate::errors::storage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Busy or locked by another process, interrupted, timed out: the same request may succeed
    /// later (`UNAVAILABLE`).
    Transient,
    /// The disk is full (`RESOURCE_EXHAUSTED`, the code gRPC's status code documentation names
    /// for a file system out of space).
    Full,
    /// An I/O error, corruption or a defect: trying again soon does not help (`INTERNAL`).
    Permanent,
}

impl Failure {
    /// The failure an I/O error stands for.
    pub fn of_io(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::Full,
            io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ResourceBusy => Self::Transient,
            _ => Self::Permanent,
        }
    }
}

/// A storage failure as a domain passes it on to its callers: what it means to them
/// ([`Failure`]) and, for the server log only, what failed. The backends' own errors
/// ([`StoreError`], [`BlobError`](blobs::BlobError)) stay inside the domains, so the API layer
/// never depends on which backend is configured.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct StorageFailure {
    /// Whether trying again may help.
    pub failure: Failure,
    /// The backend's message, with its causes.
    detail: String,
}

impl From<StoreError> for StorageFailure {
    fn from(error: StoreError) -> Self {
        Self { failure: error.failure(), detail: error.to_string() }
    }
}

impl From<blobs::BlobError> for StorageFailure {
    fn from(error: blobs::BlobError) -> Self {
        Self { failure: error.failure(), detail: error.to_string() }
    }
}

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
    /// The directory's samples and model files belong to another catalogue: served with this
    /// one, garbage collection would remove what this catalogue does not know.
    #[error(
        "data dir {path} belongs to catalogue {bound}, not to this one ({given}); a data dir moved by \
         `alps-server migrate` is served with the same --database-url"
    )]
    OtherCatalogue {
        /// The data directory.
        path: PathBuf,
        /// The catalogue it belongs to.
        bound: String,
        /// The catalogue given.
        given: String,
    },
    /// The catalogue's samples and model files are in another data dir.
    #[error(
        "the database's samples and model files are in another data dir (id {bound}), not in {path} (id {given}): \
         serve it with that data dir"
    )]
    OtherDataDir {
        /// The data directory given.
        path: PathBuf,
        /// Its id.
        given: String,
        /// The id of the data dir the catalogue belongs with.
        bound: String,
    },
    /// `--database-url` with a data dir that has its own, unmoved catalogue.
    #[error(
        "data dir {path} has its own catalogue (alps.db): move it into the database with `alps-server migrate` \
         first, or use another data dir"
    )]
    Unmigrated {
        /// The data directory.
        path: PathBuf,
    },
    /// The catalogue binding could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    Binding {
        /// The binding file.
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

    fn binding_path(&self) -> PathBuf {
        self.path.join("CATALOGUE")
    }

    /// The id of the catalogue this directory belongs to (`<dir>/CATALOGUE`), if bound.
    ///
    /// # Errors
    /// [`DataDirError::Binding`] if the file exists but cannot be read.
    pub fn bound_catalogue(&self) -> Result<Option<String>, DataDirError> {
        let path = self.binding_path();
        match fs::read_to_string(&path) {
            Ok(id) => Ok(Some(id.trim().to_owned())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DataDirError::Binding { path, source }),
        }
    }

    /// Checks that this directory belongs to catalogue `id`, binding it if it belongs to none
    /// yet. Its blobs and model files are garbage-collected against that catalogue only.
    ///
    /// # Errors
    /// [`DataDirError::OtherCatalogue`] if bound to another; [`DataDirError::Binding`] on an
    /// I/O failure.
    pub fn bind_catalogue(&self, id: &str) -> Result<(), DataDirError> {
        match self.bound_catalogue()? {
            Some(bound) if bound == id => Ok(()),
            Some(bound) => Err(DataDirError::OtherCatalogue { path: self.path.clone(), bound, given: id.to_owned() }),
            None => self.rebind_catalogue(id),
        }
    }

    /// Binds this directory to catalogue `id` whatever it belonged to (after `migrate`).
    ///
    /// # Errors
    /// [`DataDirError::Binding`] on an I/O failure.
    pub fn rebind_catalogue(&self, id: &str) -> Result<(), DataDirError> {
        self.write_line(&self.binding_path(), id)
    }

    /// This directory's id (`<dir>/ID`, 32 hex digits, made on first use): its catalogue
    /// records it, so that no other data dir serves that catalogue.
    ///
    /// # Errors
    /// [`DataDirError::Binding`] on an I/O failure.
    pub fn id(&self) -> Result<String, DataDirError> {
        let path = self.path.join("ID");
        match fs::read_to_string(&path) {
            Ok(id) => Ok(id.trim().to_owned()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let id = format!("{:032x}", fastrand::u128(..));
                self.write_line(&path, &id)?;
                Ok(id)
            }
            Err(source) => Err(DataDirError::Binding { path, source }),
        }
    }

    /// Writes `line` as the whole of `path`, crash-safely (written aside, then renamed).
    fn write_line(&self, path: &Path, line: &str) -> Result<(), DataDirError> {
        let temporary = path.with_extension("tmp");
        let written = File::create(&temporary)
            .and_then(|mut file| writeln!(file, "{line}").and_then(|()| file.sync_all()))
            .and_then(|()| fs::rename(&temporary, path))
            .and_then(|()| File::open(&self.path).and_then(|dir| dir.sync_all()));
        written.map_err(|source| DataDirError::Binding { path: path.to_owned(), source })
    }

    /// Content-addressed sample bytes, `<dir>/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.path.join("blobs")
    }

    /// Model versions, `<dir>/models` (see [`ModelsDir`]).
    pub fn models_dir(&self) -> ModelsDir {
        ModelsDir::new(self.path.join("models"))
    }

    /// The default model root (`--model-root`): `<dir>/imports`, where uploaded model files go.
    pub fn default_model_root(&self) -> PathBuf {
        self.path.join("imports")
    }

    /// Published pretrained weights fetched by the server, `<dir>/weights-cache` (see
    /// [`crate::models::pretrained`]).
    pub fn weights_cache_dir(&self) -> PathBuf {
        self.path.join("weights-cache")
    }

    /// The SQLite index, `<dir>/alps.db`.
    pub fn database_path(&self) -> PathBuf {
        self.path.join("alps.db")
    }

    /// Where the plugin host keeps the copies of plugin files it loads (`<dir>/plugin-copies`).
    pub fn plugin_copies_dir(&self) -> PathBuf {
        self.path.join("plugin-copies")
    }

    /// Where the plugins published in the object store are copied (`<dir>/published-plugins`,
    /// see [`plugins`]).
    pub fn published_plugins_dir(&self) -> PathBuf {
        self.path.join("published-plugins")
    }
}

/// `<data-dir>/models`: the model-version files of every project.
///
/// No directory is named by a client string: a project's directory is the hex SHA-256 of its id
/// (`models/<64 hex>/`), and a version's directory is its server-made name (`v<n>`), checked
/// against the identifier grammar ([`crate::ids`]) and hashed too if it ever fails it. Removals
/// go through [`remove_dir_inside`].
///
/// With an object store ([`with_objects`](Self::with_objects)) the directory is a cache: weights
/// are published to the store and fetched from it on first use ([`weights`]).
#[derive(Clone, Debug)]
pub struct ModelsDir {
    root: PathBuf,
    remote: Option<weights::Remote>,
}

impl ModelsDir {
    /// The models directory at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root, remote: None }
    }

    /// The models directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `project`'s directory: `<models>/<sha256(project) in hex>`.
    pub fn project_dir(&self, project: &str) -> PathBuf {
        self.root.join(crate::digest::sha256_hex(project.as_bytes()))
    }

    /// The directory of `project`'s model `version`, with `weights.safetensors` and
    /// `manifest.json`.
    pub fn version_dir(&self, project: &str, version: &str) -> PathBuf {
        self.project_dir(project).join(safe_component(version))
    }

    /// The pre-0.2 directory of `project` (`<models>/<project id>`), if the id is one plain path
    /// component; used once at start to move old data to [`project_dir`](Self::project_dir).
    pub fn legacy_project_dir(&self, project: &str) -> Option<PathBuf> {
        crate::ids::project("project_id", project).is_ok().then(|| self.root.join(project))
    }

    /// Removes the directories of projects not in `projects` (ids) that were last changed before
    /// `cutoff`: left by a crash between a project's deletion and the removal of its versions.
    /// Only directories named as [`project_dir`](Self::project_dir) names them are touched; a
    /// project made meanwhile has a newer directory and stays. Returns how many were removed;
    /// one that cannot be removed is logged and left.
    ///
    /// # Errors
    /// The I/O error if the models directory exists but cannot be listed.
    pub fn remove_orphans(&self, projects: &[String], cutoff: std::time::SystemTime) -> io::Result<u64> {
        let known: std::collections::HashSet<String> =
            projects.iter().map(|id| crate::digest::sha256_hex(id.as_bytes())).collect();
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hashed = name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|modified| modified < cutoff);
            if !hashed || known.contains(&name) || !old {
                continue;
            }
            match remove_dir_inside(&self.root, &entry.path()) {
                Ok(_) => removed += 1,
                Err(error) => tracing::warn!(%error, "cannot remove the model versions of a deleted project"),
            }
        }
        Ok(removed)
    }

    /// Removes `project`'s model versions; a missing directory is not an error.
    ///
    /// # Errors
    /// [`RemoveError`] if the directory resolves outside the models directory or cannot be removed.
    pub fn remove_project(&self, project: &str) -> Result<bool, RemoveError> {
        remove_dir_inside(&self.root, &self.project_dir(project))
    }
}

/// `name` if it is one plain path component by the identifier grammar, else its hex SHA-256.
fn safe_component(name: &str) -> String {
    if crate::ids::other("name", name).is_ok() { name.to_owned() } else { crate::digest::sha256_hex(name.as_bytes()) }
}

/// Why [`remove_dir_inside`] removed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The target is not a real directory strictly inside the parent (a symlink, the parent
    /// itself, or a path leading elsewhere).
    #[error("refusing to remove {target}: it does not lie inside {parent}")]
    Outside {
        /// The directory that must contain the target.
        parent: PathBuf,
        /// The refused target.
        target: PathBuf,
    },
    /// The file system refused.
    #[error("cannot remove {target}: {source}")]
    Io {
        /// The directory being removed.
        target: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Removes the directory `target` and everything in it, only if it is a real directory (not a
/// symlink) strictly inside `parent` once both are resolved. Returns whether it existed.
///
/// Defence in depth: callers derive `target` from hashes, never from client strings, but a
/// removal that would reach outside `parent` is refused whatever the reason.
///
/// # Errors
/// [`RemoveError::Outside`] for a target outside `parent` or a symlink; [`RemoveError::Io`].
pub fn remove_dir_inside(parent: &Path, target: &Path) -> Result<bool, RemoveError> {
    let outside = || RemoveError::Outside { parent: parent.to_owned(), target: target.to_owned() };
    let io = |source| RemoveError::Io { target: target.to_owned(), source };
    let metadata = match fs::symlink_metadata(target) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(io(error)),
    };
    if !metadata.is_dir() {
        return Err(outside());
    }
    let parent_real = fs::canonicalize(parent).map_err(io)?;
    let target_real = fs::canonicalize(target).map_err(io)?;
    if target_real == parent_real || !target_real.starts_with(&parent_real) {
        return Err(outside());
    }
    fs::remove_dir_all(&target_real).map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn creates_missing_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        let data = DataDir::open(&dir).unwrap();
        assert_eq!(data.path(), dir);
        assert!(dir.join("LOCK").is_file());
    }

    #[test]
    fn a_data_dir_serves_the_catalogue_it_is_bound_to_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.bound_catalogue().unwrap(), None);
        data.bind_catalogue("aaa").unwrap();
        data.bind_catalogue("aaa").unwrap();
        assert_eq!(data.bound_catalogue().unwrap().as_deref(), Some("aaa"));
        let other = data.bind_catalogue("bbb").unwrap_err();
        assert!(
            matches!(&other, DataDirError::OtherCatalogue { bound, given, .. } if bound == "aaa" && given == "bbb")
        );
        assert!(other.to_string().contains("belongs to catalogue aaa, not to this one (bbb)"), "{other}");
        data.rebind_catalogue("bbb").unwrap();
        data.bind_catalogue("bbb").unwrap();
        assert!(!dir.path().join("CATALOGUE.tmp").exists());
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
    fn model_versions_of_deleted_projects_are_removed_after_the_grace_period() {
        let root = tempfile::tempdir().unwrap();
        let models = ModelsDir::new(root.path().join("models"));
        assert_eq!(models.remove_orphans(&[], SystemTime::now()).unwrap(), 0, "no models directory yet");
        let hour = Duration::from_secs(3600);
        let make = |project: &str, age: Duration| {
            let dir = models.version_dir(project, "v1");
            fs::create_dir_all(&dir).unwrap();
            let project_dir = models.project_dir(project);
            File::open(&project_dir).unwrap().set_modified(SystemTime::now() - age).unwrap();
            project_dir
        };
        let (kept, deleted, fresh) = (make("kept", 2 * hour), make("deleted", 2 * hour), make("fresh", Duration::ZERO));
        let other = models.root().join("not-a-project-dir");
        fs::create_dir_all(&other).unwrap();
        let removed = models.remove_orphans(&["kept".to_owned()], SystemTime::now() - hour).unwrap();
        assert_eq!(removed, 1);
        assert!(!deleted.exists(), "a deleted project's old directory goes");
        assert!(kept.join("v1").exists() && fresh.exists() && other.exists(), "known, fresh and foreign ones stay");
    }

    /// The source files under `core/src/<dir>`, with their text.
    fn sources(dir: &str) -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        files.sort();
        files.into_iter().map(|path| (path.display().to_string(), fs::read_to_string(&path).unwrap())).collect()
    }

    #[test]
    fn the_storage_seam_runs_one_way() {
        // The store knows the domains' data types only, never their services. (Paths are
        // put together here so that this test does not match itself.)
        let path = |module: &str| format!("{module}::");
        for (file, text) in sources("store") {
            for (domain, types) in [("projects", "spec"), ("training", "record"), ("engine", "-"), ("api", "-")] {
                for (at, _) in text.match_indices(&path(domain)) {
                    let rest = &text[at + domain.len() + 2..];
                    assert!(rest.starts_with(types), "{file}: {}", &text[at..(at + 40).min(text.len())]);
                }
            }
        }
        // ...those types, and the models they name, know nothing of storage...
        let file = |name: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(name);
            (name.to_owned(), fs::read_to_string(path).unwrap())
        };
        let below = [file("projects/spec.rs"), file("training/record.rs"), file("clock.rs"), file("digest.rs")];
        for (file, text) in below.into_iter().chain(sources("models")) {
            assert!(!text.contains(&path("store")), "{file} depends on the store");
        }
        // ...and the API sees storage failures as StorageFailure, never a backend's error.
        for (file, text) in sources("api") {
            for backend_error in ["StoreError", "BlobError", "ObjectError", "rusqlite", "tokio_postgres"] {
                assert!(!text.contains(backend_error), "{file} names {backend_error}");
            }
        }
    }

    #[test]
    fn a_storage_failure_keeps_what_it_means_and_the_message_but_not_the_backend() {
        let timed_out: StorageFailure = StoreError::TimedOut(Duration::from_secs(15)).into();
        assert_eq!(timed_out.failure, Failure::Transient);
        assert_eq!(timed_out.to_string(), "the database did not answer within 15s; retry");
        let unreadable =
            StoreError::Corrupt { id: "cars".into(), source: serde_json::from_str::<u8>("{").unwrap_err() };
        assert_eq!(StorageFailure::from(unreadable).failure, Failure::Permanent);
        let full = blobs::BlobError::Io { path: "blobs/x".into(), source: io::ErrorKind::StorageFull.into() };
        assert_eq!(StorageFailure::from(full).failure, Failure::Full);
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

    #[test]
    fn project_directories_are_hashes_whatever_the_id() {
        let models = ModelsDir::new(PathBuf::from("/data/models"));
        for id in ["..", ".", "a/../../b", "/abs", "digits"] {
            let dir = models.project_dir(id);
            assert_eq!(dir.parent(), Some(Path::new("/data/models")), "{id:?}");
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?} -> {name}");
        }
        assert_eq!(models.version_dir("p", "v3").file_name().unwrap(), "v3");
        assert_eq!(models.version_dir("p", "..").parent(), Some(models.project_dir("p").as_path()));
        assert!(models.legacy_project_dir("..").is_none());
    }

    #[test]
    fn removal_outside_the_parent_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("models");
        let inside = parent.join("p");
        let outside = root.path().join("other");
        fs::create_dir_all(&inside).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        for target in [root.path().to_path_buf(), parent.clone(), parent.join(".."), parent.join("p/../../other")] {
            assert!(matches!(remove_dir_inside(&parent, &target), Err(RemoveError::Outside { .. })), "{target:?}");
        }
        std::os::unix::fs::symlink(&outside, parent.join("link")).unwrap();
        assert!(matches!(remove_dir_inside(&parent, &parent.join("link")), Err(RemoveError::Outside { .. })));
        assert!(outside.join("keep").is_file());
        assert!(remove_dir_inside(&parent, &inside).unwrap());
        assert!(!inside.exists());
        assert!(!remove_dir_inside(&parent, &inside).unwrap());
    }
}
