//! Heuristic plugins published in the object store (replicas). Ops put a plugin file under the
//! store's `plugins/` prefix once (`aws s3 cp my_heuristic.so s3://bucket/prefix/plugins/`),
//! and every replica copies it into a directory of its data dir, which its plugin host loads
//! besides `--plugin-dir`, with the same ABI checks, and watches. A plugin published, replaced
//! or withdrawn reaches every replica within [`SYNC_INTERVAL`] plus the host's debounce;
//! `ListHeuristics` shows each heuristic's sha256, so ops can check that replicas agree.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::objects::{ObjectError, Objects};

/// How often a replica looks for published plugins.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// The largest plugin file copied, bytes.
const MAX_PLUGIN_BYTES: u64 = 256 * 1024 * 1024;
/// The longest plugin file name copied, bytes.
const MAX_NAME_BYTES: usize = 128;

/// Why published plugins could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// See [`ObjectError`].
    #[error(transparent)]
    Store(#[from] ObjectError),
    /// A local file could not be written, read or removed.
    #[error("published plugin {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The published plugins of one object store, kept in step in one local directory, which
/// holds nothing else.
pub struct PublishedPlugins {
    objects: Arc<Objects>,
    dir: PathBuf,
    /// Each copied plugin's version in the store (see [`super::objects::Published`]) when it
    /// was copied.
    copied: HashMap<String, String>,
}

impl PublishedPlugins {
    /// Syncs `objects`' published plugins into `dir`.
    pub fn new(objects: Arc<Objects>, dir: PathBuf) -> Self {
        Self { objects, dir, copied: HashMap::new() }
    }

    /// The local directory (for the plugin host).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One pass: copies the plugins published or replaced since the last pass, each written
    /// aside and renamed into place (the host never sees half a file), and removes the copies
    /// of withdrawn ones. A name that is not a plain plugin file name (`*.so`, letters, digits,
    /// `.`, `-`, `_`) or a file over 256 MiB is skipped with a warning. Returns how many files
    /// changed.
    ///
    /// # Errors
    /// [`SyncError`] if the store cannot be listed or read, or a local file written; what was
    /// done stays, and the next pass goes on from there.
    pub fn sync(&mut self) -> Result<usize, SyncError> {
        let listed = self.objects.published_plugins()?;
        let mut published = HashSet::new();
        let mut changed = 0;
        for object in listed {
            if !is_plugin_name(&object.name) || object.size > MAX_PLUGIN_BYTES {
                tracing::warn!(name = %object.name, bytes = object.size, "published plugin skipped: not a plugin file name, or over 256 MiB");
                continue;
            }
            published.insert(object.name.clone());
            if self.copied.get(&object.name) == Some(&object.version) && self.dir.join(&object.name).is_file() {
                continue;
            }
            let bytes = match self.objects.published_plugin(&object.name, MAX_PLUGIN_BYTES) {
                Ok(bytes) => bytes,
                // Withdrawn since the listing.
                Err(ObjectError::Missing { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            if self.replace(&object.name, &bytes)? {
                tracing::info!(name = %object.name, bytes = bytes.len(), "published plugin copied");
                changed += 1;
            }
            self.copied.insert(object.name, object.version);
        }
        changed += self.remove_withdrawn(&published)?;
        Ok(changed)
    }

    /// Puts `bytes` at `name` unless the file there holds them already; returns whether it
    /// wrote.
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<bool, SyncError> {
        let path = self.dir.join(name);
        if fs::read(&path).is_ok_and(|current| current == bytes) {
            return Ok(false);
        }
        // Hidden while written: the plugin host skips names starting with a dot.
        let aside = self.dir.join(format!(".{name}.{:08x}.part", fastrand::u32(..)));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SyncError::Io { path, source }
        };
        let written = (|| {
            let mut file = fs::File::create(&aside)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&aside, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&aside);
        }
        written.map_err(io(&path))?;
        Ok(true)
    }

    /// Removes the files of `dir` not `published` (withdrawn from the store, or left by a
    /// pass that failed); returns how many.
    fn remove_withdrawn(&mut self, published: &HashSet<String>) -> Result<usize, SyncError> {
        let unreadable = |source| SyncError::Io { path: self.dir.clone(), source };
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            // Only files: the host loads no directory, and removing one is not this pass's job.
            if published.contains(&name) || !path.is_file() {
                continue;
            }
            fs::remove_file(&path).map_err(|source| SyncError::Io { path: path.clone(), source })?;
            self.copied.remove(&name);
            if !name.starts_with('.') {
                tracing::info!(%name, "published plugin withdrawn");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Whether `name` is a plain plugin file name: not hidden, letters, digits, `.`, `-` and `_`,
/// at most [`MAX_NAME_BYTES`], with this platform's plugin extension.
fn is_plugin_name(name: &str) -> bool {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let extension = Path::new(name).extension().is_some_and(|ext| ext == std::env::consts::DLL_EXTENSION);
    plain && extension && !name.starts_with('.') && name.len() <= MAX_NAME_BYTES
}

/// Starts the thread that runs [`PublishedPlugins::sync`] every [`SYNC_INTERVAL`], for as long
/// as the process.
///
/// # Errors
/// The OS error if the thread cannot be spawned.
pub fn keep_synced(mut plugins: PublishedPlugins) -> io::Result<()> {
    std::thread::Builder::new().name("alps-plugins".into()).spawn(move || {
        loop {
            std::thread::sleep(SYNC_INTERVAL);
            if let Err(error) = plugins.sync() {
                tracing::warn!(%error, "cannot sync the published plugins; trying again");
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_plugins_are_copied_replaced_and_withdrawn_and_odd_names_skipped() {
        let (store, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let objects = Objects::open(&format!("file://{}/alps", store.path().display())).unwrap();
        let mut plugins = PublishedPlugins::new(Arc::new(objects), dir.path().to_owned());
        let published = store.path().join("alps/plugins");
        fs::create_dir_all(published.join("deeper")).unwrap();
        for (name, bytes) in
            [("mine.so", "first"), (".hidden.so", "x"), ("readme.txt", "x"), ("deeper/other.so", "x"), ("a b.so", "x")]
        {
            fs::write(published.join(name), bytes).unwrap();
        }
        assert_eq!(plugins.sync().unwrap(), 1);
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("mine.so"), "first");
        let files = || fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 1, "only the plugin");
        assert_eq!(plugins.sync().unwrap(), 0, "nothing new");
        fs::write(published.join("mine.so"), "second").unwrap();
        assert_eq!(plugins.sync().unwrap(), 1);
        assert_eq!(read("mine.so"), "second");
        // A file that is not the store's (a leftover) goes, and so does a withdrawn plugin.
        fs::write(dir.path().join("stale.so"), "old").unwrap();
        fs::remove_file(published.join("mine.so")).unwrap();
        assert_eq!(plugins.sync().unwrap(), 2);
        assert_eq!(files(), 0);
    }

    #[test]
    fn plugin_names_are_plain_file_names() {
        let long = format!("{}.so", "a".repeat(130));
        for good in ["a.so", "my_heuristic-2.so", "x.y.so"] {
            assert!(is_plugin_name(good), "{good}");
        }
        for bad in [".a.so", "a.txt", "a", "../a.so", "a b.so", "a\u{e9}.so", long.as_str()] {
            assert!(!is_plugin_name(bad), "{bad}");
        }
    }
}
