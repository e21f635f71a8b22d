//! Content-addressed sample bytes, in the data dir (`<data-dir>/blobs/<first two hex
//! digits>/<sha256>`) or in the object store ([`super::objects`], `--object-store-url`). In the
//! data dir a blob is written to a temporary file, fsync'ed and renamed into place, so a crash
//! never leaves a partial blob under its final name; in the object store a conditional put does
//! the same. Writing the same bytes twice stores them once. Blobs no example references any
//! more are removed by [`BlobStore::collect_garbage`] once their last write is older than a
//! grace period.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use super::{
    Failure,
    catalog::{Alone, Catalog, StoreError},
    objects::{Kind, ObjectError, Objects},
};
use crate::digest::sha256_hex;

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
    /// The object store failed, or its object is missing or corrupt.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The catalogue could not record the blobs' use (replicas, see
    /// [`Catalog::declare_object_uses`]): nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored bytes no longer hash to their name (disk corruption or tampering).
    #[error("blob {sha256} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The blob's name.
        sha256: String,
        /// What the content hashes to now.
        actual: String,
    },
}

impl BlobError {
    /// Whether trying again may help (see [`Failure::of_io`]); a corrupt blob stays corrupt.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Io { source, .. } => Failure::of_io(source),
            Self::Object(error) => error.failure(),
            Self::Store(error) => error.failure(),
            Self::Corrupt { .. } => Failure::Permanent,
        }
    }
}

/// Where the blobs are.
#[derive(Debug)]
enum Place {
    /// A directory of the data dir, with `tmp/` for writes in progress.
    Dir(PathBuf),
    /// The object store, and the catalogue where writers declare the blobs they use, for
    /// the collectors of other replicas.
    Objects { objects: std::sync::Arc<Objects>, uses: std::sync::Arc<dyn Catalog> },
}

/// The sample blobs of one catalogue.
#[derive(Debug)]
pub struct BlobStore {
    place: Place,
    /// Writers share it; the garbage collector takes it alone for each removal, so a blob
    /// being written again (and so refreshed) is never removed under its writer.
    removal: RwLock<()>,
    /// Blobs in use that no committed example may reference yet (written, not yet committed)
    /// or any more (read by a running training job), with their number of holders.
    pins: Mutex<HashMap<String, usize>>,
    /// Blobs unpinned since the current collection round started: their examples may have
    /// been committed after the round read which blobs are referenced.
    released: Mutex<HashSet<String>>,
}

/// One garbage-collection round, started before the referenced blobs are read (see
/// [`BlobStore::start_collection`]).
#[derive(Debug)]
pub struct CollectionRound {
    cutoff: SystemTime,
    grace: Duration,
}

/// Blobs kept from the garbage collector while this lives (see [`BlobStore::pins`]).
#[derive(Debug)]
pub struct Pins<'a> {
    store: &'a BlobStore,
    held: Vec<String>,
}

impl Pins<'_> {
    /// Pins the blobs of `samples`, then stores them durably (in the object store, several at a
    /// time): pinned first, so that no blob can be collected between its write and the commit
    /// of the example naming it. Bytes already stored are not written again; in the data dir
    /// their blob's modification time is set to now, so the garbage collector's grace period
    /// counts from the last write (in the object store, where objects never change, the pin
    /// alone keeps a blob about to be referenced again). Returns their SHA-256s in order.
    ///
    /// # Errors
    /// The first failure: [`BlobError::Io`] on a file system one, [`BlobError::Object`] on an
    /// object-store one.
    pub fn put_all(&mut self, samples: &[&[u8]]) -> Result<Vec<String>, BlobError> {
        let sha256s: Vec<String> = samples.iter().map(|bytes| sha256_hex(bytes)).collect();
        self.hold_all(sha256s.iter().cloned());
        let _writing = self.store.removal.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &self.store.place {
            Place::Dir(dir) => {
                for (sha256, bytes) in sha256s.iter().zip(samples) {
                    put_in_dir(dir, sha256, bytes)?;
                }
            }
            Place::Objects { objects, uses } => {
                // Declared first: a collector elsewhere then keeps, or waits to remove, what
                // this write may find there already.
                uses.declare_object_uses(Kind::Blob, &sha256s)?;
                let objects_to_put = sha256s.iter().cloned().zip(samples.iter().map(|bytes| bytes.to_vec())).collect();
                objects.put_all(Kind::Blob, objects_to_put)?;
            }
        }
        Ok(sha256s)
    }

    /// Pins the blobs named `sha256s`.
    pub fn hold_all(&mut self, sha256s: impl IntoIterator<Item = String>) {
        for sha256 in sha256s {
            self.hold(sha256);
        }
    }

    fn hold(&mut self, sha256: String) {
        *self.store.pin_counts().entry(sha256.clone()).or_default() += 1;
        self.held.push(sha256);
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        self.store.released_set().extend(self.held.iter().cloned());
        let mut counts = self.store.pin_counts();
        for sha256 in &self.held {
            if let Some(count) = counts.get_mut(sha256) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(sha256);
                }
            }
        }
    }
}

/// What one garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs no example referenced.
    pub blobs: u64,
    /// Their size, bytes.
    pub bytes: u64,
    /// Temporary files left by interrupted writes.
    pub temporaries: u64,
}

impl BlobStore {
    /// Opens (creating) `dir`.
    ///
    /// # Errors
    /// [`BlobError::Io`] if it cannot be created.
    pub fn open(dir: PathBuf) -> Result<Self, BlobError> {
        let temporary = dir.join("tmp");
        fs::create_dir_all(&temporary).map_err(|source| BlobError::Io { path: temporary, source })?;
        Ok(Self::at(Place::Dir(dir)))
    }

    /// The blobs in the object store `objects`, their uses declared in `uses` (see
    /// [`Catalog::declare_object_uses`]).
    pub fn in_objects(objects: std::sync::Arc<Objects>, uses: std::sync::Arc<dyn Catalog>) -> Self {
        Self::at(Place::Objects { objects, uses })
    }

    /// Declares that a training job reads blobs `sha256s` (pinned here with
    /// [`Pins::hold_all`]), so that a collector on another replica keeps them for its grace
    /// period even if their examples are deleted meanwhile. Only in the object store.
    ///
    /// # Errors
    /// [`BlobError::Store`] if the catalogue cannot record it.
    pub fn declare_reads(&self, sha256s: &[String]) -> Result<(), BlobError> {
        match &self.place {
            Place::Dir(_) => Ok(()),
            Place::Objects { uses, .. } => Ok(uses.declare_object_uses(Kind::Blob, sha256s)?),
        }
    }

    fn at(place: Place) -> Self {
        Self { place, removal: RwLock::new(()), pins: Mutex::default(), released: Mutex::default() }
    }

    fn released_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.released.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a garbage-collection round; read which blobs are referenced after this, then call
    /// [`collect_garbage`](Self::collect_garbage). Blobs written or unpinned from now on are
    /// kept by this round: their examples may be committed after that read.
    pub fn start_collection(&self, grace: Duration) -> CollectionRound {
        let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        self.released_set().clear();
        CollectionRound { cutoff, grace }
    }

    /// An empty set of pins: blobs added to it are not collected until it is dropped.
    pub fn pins(&self) -> Pins<'_> {
        Pins { store: self, held: Vec::new() }
    }

    fn pin_counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.pins.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn path(&self, sha256: &str) -> PathBuf {
        let Place::Dir(dir) = &self.place else { panic!("blobs in the object store have no path") };
        blob_path(dir, sha256)
    }

    /// Stores `bytes` without pinning them and returns their SHA-256 (tests).
    #[cfg(test)]
    fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        self.pins().put_all(&[bytes]).map(|mut sha256s| sha256s.remove(0))
    }

    /// The bytes of blob `sha256`, checked against their hash.
    ///
    /// # Errors
    /// [`BlobError`] if missing, unreadable or corrupt.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>, BlobError> {
        let dir = match &self.place {
            Place::Dir(dir) => dir,
            Place::Objects { objects, .. } => return Ok(objects.get(Kind::Blob, sha256)?),
        };
        let path = blob_path(dir, sha256);
        let bytes = fs::read(&path).map_err(|source| BlobError::Io { path, source })?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(BlobError::Corrupt { sha256: sha256.to_owned(), actual });
        }
        Ok(bytes)
    }
}

impl BlobStore {
    /// [`get`](Self::get) of several blobs; in the object store, several at a time. The results
    /// are in the order of `sha256s`.
    pub fn get_all(&self, sha256s: &[&str]) -> Vec<Result<Vec<u8>, BlobError>> {
        match &self.place {
            Place::Dir(_) => sha256s.iter().map(|sha256| self.get(sha256)).collect(),
            Place::Objects { objects, .. } => {
                objects.get_all(Kind::Blob, sha256s).into_iter().map(|result| result.map_err(BlobError::from)).collect()
            }
        }
    }
}

fn blob_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(&sha256[..2]).join(sha256)
}

/// Writes blob `sha256` into `dir` (see the module docs), or refreshes its modification time.
fn put_in_dir(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<(), BlobError> {
    let path = blob_path(dir, sha256);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BlobError::Io { path, source }
    };
    if path.exists() {
        File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now())).map_err(io(&path))?;
        return Ok(());
    }
    let parent = path.parent().unwrap_or(dir);
    fs::create_dir_all(parent).map_err(io(parent))?;
    // Unique per writer: two requests storing the same bytes at once must not share (and
    // rename away) each other's temporary file.
    static WRITERS: AtomicU64 = AtomicU64::new(0);
    let writer = WRITERS.fetch_add(1, Ordering::Relaxed);
    let temporary = dir.join("tmp").join(format!("{sha256}.{}.{writer}", std::process::id()));
    let mut file = File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&temporary))?;
    fs::rename(&temporary, &path).map_err(io(&path))?;
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(io(parent))?;
    Ok(())
}

impl BlobStore {
    /// Removes every blob whose name is not in `referenced` (read after `round` started), not
    /// pinned ([`pins`](Self::pins)) nor unpinned since the round started, and last written
    /// before the round's start minus its grace period; and temporary files older than that
    /// (left by a crash mid-write). A blob's writer pins it until the example naming it is
    /// committed: either that commit came before `referenced` was read, or the unpinning came
    /// after the round started, so no committed example loses its bytes whatever the grace.
    ///
    /// # Errors
    /// [`BlobError::Io`] if the blob directory cannot be listed; files that cannot be removed
    /// are logged and left.
    pub fn collect_garbage(
        &self,
        round: CollectionRound,
        referenced: &HashSet<String>,
        alone: &Alone<'_>,
    ) -> Result<Collected, BlobError> {
        let cutoff = round.cutoff;
        let dir = match &self.place {
            Place::Dir(dir) => dir,
            Place::Objects { objects, uses } => {
                return self.collect_objects(objects, uses.as_ref(), &round, referenced, alone);
            }
        };
        let list = |dir: &Path| fs::read_dir(dir).map_err(|source| BlobError::Io { path: dir.to_owned(), source });
        let mut collected = Collected::default();
        for shard in list(dir)? {
            let Ok(shard) = shard else { continue };
            let name = shard.file_name().to_string_lossy().into_owned();
            let temporaries = name == "tmp";
            let blob_shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !temporaries && !blob_shard {
                continue;
            }
            for file in list(&shard.path())? {
                let Ok(file) = file else { continue };
                let name = file.file_name().to_string_lossy().into_owned();
                if !temporaries && (name.len() != 64 || referenced.contains(&name)) {
                    continue;
                }
                if let Some(bytes) = self.remove_file_if_older(&file.path(), &name, cutoff) {
                    if temporaries {
                        collected.temporaries += 1;
                    } else {
                        collected.blobs += 1;
                        collected.bytes += bytes;
                    }
                }
            }
            if blob_shard {
                self.remove_if_empty(&shard.path());
            }
        }
        Ok(collected)
    }

    /// Removes the shard directory `dir` if no blob is left in it (else leaves it).
    fn remove_if_empty(&self, dir: &Path) {
        // Alone against writers, which hold the lock from creating the directory to renaming
        // their blob into it.
        let _removing = self.removal.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // remove_dir refuses a directory that is not empty, which is the check.
        let _ = fs::remove_dir(dir);
    }

    /// [`collect_garbage`](Self::collect_garbage) in the object store: the same rule, with the
    /// objects' write times as listed; with replicas, a blob another one declared in use within
    /// the grace period stays too ([`Catalog::remove_unused_object`]).
    fn collect_objects(
        &self,
        objects: &Objects,
        uses: &dyn Catalog,
        round: &CollectionRound,
        referenced: &HashSet<String>,
        alone: &Alone<'_>,
    ) -> Result<Collected, BlobError> {
        let mut collected = Collected::default();
        for object in objects.list(Kind::Blob)? {
            if referenced.contains(&object.name) || object.modified >= round.cutoff {
                continue;
            }
            // The turn may have passed to another replica's collector (a broken session).
            if !alone.still() {
                tracing::warn!("garbage collection stopped: this replica may no longer collect");
                break;
            }
            let _removing = self.removal.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.in_use(&object.name) {
                continue;
            }
            let mut delete = || objects.delete_unreferenced(Kind::Blob, &object.name);
            if uses.remove_unused_object(Kind::Blob, &object.name, round.grace, &mut delete)? {
                collected.blobs += 1;
                collected.bytes += object.size;
            }
        }
        Ok(collected)
    }

    /// Whether blob `name` is pinned, or was unpinned since the current round started.
    fn in_use(&self, name: &str) -> bool {
        self.pin_counts().contains_key(name) || self.released_set().contains(name)
    }

    /// Removes `path` (blob `name`) if it is not pinned and was last modified before `cutoff`;
    /// its size when removed.
    fn remove_file_if_older(&self, path: &Path, name: &str, cutoff: SystemTime) -> Option<u64> {
        // Alone against writers: a `put` refreshing this blob either happened (then it is new
        // or pinned, and stays) or waits until it is gone (then it writes the blob again).
        let _removing = self.removal.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.in_use(name) {
            return None;
        }
        let metadata = fs::symlink_metadata(path).ok()?;
        if !metadata.is_file() || metadata.modified().ok()? >= cutoff {
            return None;
        }
        match fs::remove_file(path) {
            Ok(()) => Some(metadata.len()),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove an unreferenced blob");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_changed_on_disk_is_refused_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let sha = store.put(b"hello").unwrap();
        std::fs::write(store.path(&sha), b"jello").unwrap();
        assert!(matches!(store.get(&sha), Err(BlobError::Corrupt { .. })));
    }

    /// The blob stores under test, by name: the data dir's, and the object store's in
    /// memory, in a shared directory (`file://`) and on an S3 server (moto), with a catalogue
    /// to declare uses in. Every case of [`conformance`] runs on each.
    fn every_place(dir: &Path) -> Vec<(&'static str, BlobStore)> {
        let catalog = |name: &str| -> std::sync::Arc<dyn Catalog> {
            std::sync::Arc::new(super::super::sqlite::SqliteCatalog::open(&dir.join(name)).unwrap())
        };
        let shared = url::Url::from_directory_path(dir.join("shared")).unwrap();
        let objects = |objects: Objects, name| BlobStore::in_objects(std::sync::Arc::new(objects), catalog(name));
        vec![
            ("data dir", BlobStore::open(dir.join("blobs")).unwrap()),
            ("memory", objects(Objects::in_memory(), "memory.db")),
            ("file://", objects(Objects::open(shared.as_str()).unwrap(), "file.db")),
            ("s3://", objects(Objects::on_test_s3("alps-blob-conformance"), "s3.db")),
        ]
    }

    /// What every blob store does alike, whichever holds the bytes.
    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        for (place, store) in every_place(dir.path()) {
            content_addressed_and_idempotent(&store, place);
            concurrent_writers_of_the_same_bytes_all_succeed(&store, place);
            collected_when_unreferenced_unpinned_and_past_the_grace_period(&store, place);
        }
    }

    fn content_addressed_and_idempotent(store: &BlobStore, place: &str) {
        let sha = store.put(b"hello").unwrap();
        assert_eq!(sha, sha256_hex(b"hello"), "{place}");
        assert_eq!(store.put(b"hello").unwrap(), sha, "{place}: idempotent");
        assert_eq!(store.get(&sha).unwrap(), b"hello", "{place}");
        let absent = store.get(&sha256_hex(b"absent")).unwrap_err();
        assert_eq!(absent.failure(), Failure::Permanent, "{place}: {absent}");
        let other = store.put(b"other").unwrap();
        let all: Vec<_> = store.get_all(&[&other, &sha256_hex(b"absent"), &sha]).into_iter().map(Result::ok).collect();
        assert_eq!(all, [Some(b"other".to_vec()), None, Some(b"hello".to_vec())], "{place}: in order");
    }

    fn concurrent_writers_of_the_same_bytes_all_succeed(store: &BlobStore, place: &str) {
        let bytes = vec![7u8; 1 << 20];
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8).map(|_| scope.spawn(|| store.put(&bytes))).collect();
            for writer in writers {
                assert_eq!(writer.join().unwrap().unwrap(), sha256_hex(&bytes), "{place}");
            }
        });
        assert_eq!(store.get(&sha256_hex(&bytes)).unwrap(), bytes, "{place}");
    }

    fn collected_when_unreferenced_unpinned_and_past_the_grace_period(store: &BlobStore, place: &str) {
        let collect = |grace, referenced: &[&String]| {
            let referenced = referenced.iter().map(|sha| (*sha).clone()).collect();
            store.collect_garbage(store.start_collection(grace), &referenced, &Alone::always()).unwrap()
        };
        let removed = |blobs, bytes| Collected { blobs, bytes, temporaries: 0 };
        let (kept, unused) = (store.put(b"referenced").unwrap(), store.put(b"unused").unwrap());
        let mut writing = store.pins();
        let pinned = writing.put_all(&[b"being committed"]).unwrap().remove(0);
        let everything_else: Vec<String> = [b"hello".as_slice(), b"other", &[7u8; 1 << 20]].map(sha256_hex).into();
        let mut referenced: Vec<&String> = everything_else.iter().collect();
        referenced.push(&kept);
        assert_eq!(collect(Duration::from_secs(3600), &[]), removed(0, 0), "{place}: all within the grace period");
        assert_eq!(collect(Duration::ZERO, &referenced), removed(1, 6), "{place}: the unused blob, 6 bytes");
        assert!(store.get(&unused).is_err(), "{place}");
        assert!(store.get(&kept).is_ok() && store.get(&pinned).is_ok(), "{place}: referenced, pinned");
        drop(writing);
        referenced.push(&pinned);
        assert_eq!(collect(Duration::ZERO, &referenced), removed(0, 0), "{place}: committed, so referenced now");
        assert_eq!(store.put(b"unused").unwrap(), unused, "{place}: written again after its removal");
        assert_eq!(store.get(&unused).unwrap(), b"unused", "{place}");
        assert_eq!(collect(Duration::ZERO, &[]).blobs, 6, "{place}: all six, once unreferenced");
        assert!(store.get(&kept).is_err(), "{place}");
    }

    fn age(store: &BlobStore, sha: &str, by: Duration) {
        let file = File::options().write(true).open(store.path(sha)).unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn garbage_collection_removes_old_unreferenced_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let (kept, old, fresh, again) = (
            store.put(b"kept").unwrap(),
            store.put(b"old").unwrap(),
            store.put(b"fresh").unwrap(),
            store.put(b"again").unwrap(),
        );
        let hour = Duration::from_secs(3600);
        for sha in [&kept, &old, &again] {
            age(&store, sha, 2 * hour);
        }
        // Written again just now: its grace period starts over.
        assert_eq!(store.put(b"again").unwrap(), again);
        let temporary = dir.path().join("blobs/tmp/crashed.1.1");
        std::fs::write(&temporary, b"partial").unwrap();
        File::options().write(true).open(&temporary).unwrap().set_modified(SystemTime::now() - 2 * hour).unwrap();
        std::fs::write(dir.path().join("blobs/tmp/writing.1.2"), b"in progress").unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/not-a-shard")).unwrap();
        std::fs::write(dir.path().join("blobs/not-a-shard/x"), b"x").unwrap();

        let referenced = HashSet::from([kept.clone()]);
        let collected = store.collect_garbage(store.start_collection(hour), &referenced, &Alone::always()).unwrap();
        assert_eq!(collected, Collected { blobs: 1, bytes: 3, temporaries: 1 });
        assert!(store.get(&kept).is_ok(), "referenced");
        assert!(store.get(&old).is_err(), "unreferenced and old");
        assert!(store.get(&fresh).is_ok() && store.get(&again).is_ok(), "within the grace period");
        assert!(!temporary.exists() && dir.path().join("blobs/tmp/writing.1.2").exists());
        assert!(dir.path().join("blobs/not-a-shard/x").exists(), "files of no blob shard are not touched");
        let shard = |sha: &str| dir.path().join("blobs").join(&sha[..2]);
        let shared = [&kept, &fresh, &again].iter().any(|survivor| survivor[..2] == old[..2]);
        assert_eq!(shard(&old).exists(), shared, "a shard directory left empty is removed");
        assert!(shard(&kept).exists() && shard(&fresh).exists() && shard(&again).exists());
        // A removed blob is written again by the next put.
        assert_eq!(store.put(b"old").unwrap(), old);
        assert_eq!(store.get(&old).unwrap(), b"old");
    }

    #[test]
    fn pinned_blobs_are_not_collected_until_their_pins_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let mut writing = store.pins();
        let written = writing.put_all(&[b"being committed"]).unwrap().remove(0);
        let mut training = store.pins();
        let read = store.put(b"read by a job").unwrap();
        training.hold_all([read.clone()]);
        let mut twice = store.pins();
        twice.hold_all([read.clone()]);
        // Grace 0: only the pins keep them.
        assert_eq!(
            store
                .collect_garbage(store.start_collection(Duration::ZERO), &HashSet::new(), &Alone::always())
                .unwrap()
                .blobs,
            0
        );
        drop(writing);
        drop(training);
        let collected =
            store.collect_garbage(store.start_collection(Duration::ZERO), &HashSet::new(), &Alone::always()).unwrap();
        assert_eq!(collected.blobs, 1, "the written blob, now unpinned");
        assert!(store.get(&written).is_err() && store.get(&read).is_ok(), "one holder of the read blob remains");
        drop(twice);
        assert_eq!(
            store
                .collect_garbage(store.start_collection(Duration::ZERO), &HashSet::new(), &Alone::always())
                .unwrap()
                .blobs,
            1
        );
    }

    #[test]
    fn a_blob_committed_after_the_round_read_its_references_is_kept() {
        // The trial's race, at grace 0: the round reads the references (the example is not
        // committed yet), the writer commits and unpins, then the round removes.
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let mut writing = store.pins();
        let sha = writing.put_all(&[b"committed late"]).unwrap().remove(0);
        let round = store.start_collection(Duration::ZERO);
        let referenced = HashSet::new(); // read before the commit
        drop(writing); // committed, unpinned
        assert_eq!(store.collect_garbage(round, &referenced, &Alone::always()).unwrap().blobs, 0);
        assert!(store.get(&sha).is_ok());
        // The next round reads the committed reference; had the example not been committed,
        // that round would remove the blob.
        assert_eq!(
            store
                .collect_garbage(
                    store.start_collection(Duration::ZERO),
                    &HashSet::from([sha.clone()]),
                    &Alone::always()
                )
                .unwrap()
                .blobs,
            0
        );
        assert_eq!(
            store
                .collect_garbage(store.start_collection(Duration::ZERO), &HashSet::new(), &Alone::always())
                .unwrap()
                .blobs,
            1
        );
    }
}
