//! The plugin host: loads every plugin file, keeps the current registry, reloads atomically.

use std::{
    collections::HashSet,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

use super::{
    directory::{PluginDirError, plugin_files},
    library::{self, LoadError, LoadedHeuristic},
    registry::Registry,
};
use crate::metrics::Metrics;

/// Outcome of a (re)load.
#[derive(Debug)]
pub struct ReloadReport {
    /// The registry now in use.
    pub registry: Arc<Registry>,
    /// Files that were rejected. Heuristics a rejected file provided before stay loaded.
    pub errors: Vec<LoadError>,
}

/// Owns the plugin directory and the current [`Registry`].
#[derive(Debug)]
pub struct HeuristicHost {
    dir: PathBuf,
    /// Plugins published in the object store, synced here (replicas; see
    /// `crate::store::plugins`).
    published: Option<PathBuf>,
    copies_dir: PathBuf,
    current: ArcSwap<Registry>,
    /// Serialises reloads (watcher and admin RPC) so their snapshots never interleave.
    reloading: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl HeuristicHost {
    /// Clears `copies_dir` (copies of a previous run are unused: the data dir is locked by this
    /// process) and checks that `dir` can be listed. The registry starts empty: start watching
    /// (see [`watch_plugin_dir`](super::watch_plugin_dir)), then [`reload`](Self::reload), so no
    /// change made during the first load is missed.
    ///
    /// # Errors
    /// [`PluginDirError`] if `dir` cannot be listed, or an I/O error preparing `copies_dir`.
    pub fn new(dir: PathBuf, copies_dir: PathBuf, metrics: Arc<Metrics>) -> Result<Self, StartError> {
        plugin_files(&dir)?;
        match fs::remove_dir_all(&copies_dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StartError::Copies { path: copies_dir, source }),
        }
        fs::create_dir_all(&copies_dir).map_err(|source| StartError::Copies { path: copies_dir.clone(), source })?;
        Ok(Self {
            dir,
            published: None,
            copies_dir,
            current: ArcSwap::from_pointee(Registry::default()),
            reloading: Mutex::new(()),
            metrics,
        })
    }

    /// This host loading the plugins in `published` too (a directory the object store's
    /// published plugins are synced into), after those of the plugin directory: a heuristic
    /// version both provide is the plugin directory's.
    ///
    /// # Errors
    /// [`StartError`] if `published` cannot be created.
    pub fn with_published(mut self, published: PathBuf) -> Result<Self, StartError> {
        fs::create_dir_all(&published).map_err(|source| StartError::Published { path: published.clone(), source })?;
        self.published = Some(published);
        Ok(self)
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directories plugins are loaded from, in order: the plugin directory, then the
    /// published plugins' if any.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.dir.as_path()).chain(self.published.as_deref())
    }

    /// `message` with the plugin directory and the copies directory replaced by `<plugin-dir>`
    /// and `<plugin-copies>`, for messages that reach a client (no server paths leave the host).
    pub fn redact(&self, message: &str) -> String {
        let mut message = message.to_owned();
        let published = self.published.iter().map(|dir| (dir, "<published-plugins>"));
        for (dir, name) in
            [(&self.copies_dir, "<plugin-copies>"), (&self.dir, "<plugin-dir>")].into_iter().chain(published)
        {
            let shown = dir.display().to_string();
            if !shown.is_empty() {
                message = message.replace(&shown, name);
            }
            if let Ok(real) = fs::canonicalize(dir) {
                message = message.replace(&real.display().to_string(), name);
            }
        }
        message
    }

    /// The registry now in use. Hold the returned `Arc` for a whole request, so the request
    /// sees one consistent set of heuristics even if a reload happens meanwhile.
    pub fn registry(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    /// Loads every plugin file again and swaps the registry atomically. A file that fails keeps
    /// the heuristics it provided before (so a half-copied replacement does not take them away);
    /// a removed file's heuristics go. Two files declaring the same heuristic version: the file
    /// that sorts first wins and the other is reported.
    ///
    /// # Errors
    /// [`PluginDirError`] if the directory cannot be listed; the registry is then unchanged.
    pub fn reload(&self) -> Result<ReloadReport, PluginDirError> {
        let _serialised = self.reloading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = self.current.load_full();
        let mut files = Vec::new();
        for dir in self.dirs() {
            files.extend(plugin_files(dir)?);
        }
        let mut heuristics: Vec<Arc<LoadedHeuristic>> = Vec::new();
        let mut errors = Vec::new();
        for file in &files {
            let loaded = match library::load(file, &self.copies_dir) {
                Ok(loaded) => {
                    self.metrics.record_plugin_load(true);
                    log_loaded(file, &loaded);
                    loaded
                }
                Err(error) => {
                    self.metrics.record_plugin_load(false);
                    tracing::warn!(file = %file.display(), %error, "plugin rejected");
                    errors.push(error);
                    previous.all().filter(|h| &h.plugin.source_file == file).cloned().collect()
                }
            };
            for heuristic in loaded {
                if let Some(first) =
                    heuristics.iter().find(|h| h.name == heuristic.name && h.version == heuristic.version)
                {
                    let error = LoadError::Invalid {
                        path: file.clone(),
                        reason: format!(
                            "heuristic {} is already provided by {}",
                            heuristic.label(),
                            first.plugin.source_file.display()
                        ),
                    };
                    tracing::warn!(%error, "duplicate heuristic skipped");
                    errors.push(error);
                } else {
                    heuristics.push(heuristic);
                }
            }
        }
        let registry = Arc::new(Registry::new(heuristics));
        self.current.store(registry.clone());
        let names: HashSet<&str> = registry.all().map(|h| h.name.as_str()).collect();
        tracing::info!(
            files = files.len(),
            heuristics = names.len(),
            rejected = errors.len(),
            "heuristic registry loaded"
        );
        Ok(ReloadReport { registry, errors })
    }
}

fn log_loaded(file: &Path, heuristics: &[Arc<LoadedHeuristic>]) {
    let Some(first) = heuristics.first() else { return };
    let names: Vec<String> = heuristics.iter().map(|h| h.label()).collect();
    tracing::info!(
        file = %file.display(),
        sha256 = %first.plugin.sha256,
        plugin = %first.plugin.name,
        version = %first.plugin.version,
        heuristics = %names.join(", "),
        "plugin loaded"
    );
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// See [`PluginDirError`].
    #[error(transparent)]
    Dir(#[from] PluginDirError),
    /// The directory for loaded copies could not be prepared.
    #[error("cannot prepare plugin copies dir {path}: {source}")]
    Copies {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The directory for published plugins could not be created.
    #[error("cannot create the published plugins dir {path}: {source}")]
    Published {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}
