//! Re-reading files when they change (tokens file, TLS certificate and key), for rotation
//! without a restart.
//!
//! The parent directory of each file is watched, not the file: editors and Kubernetes replace
//! files by renaming (a mounted Secret swaps a `..data` symlink), which a watch on the old inode
//! would miss. Any change in those directories triggers one debounced reload; the reload itself
//! decides whether anything changed and keeps the previous state when the new files are bad.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before reloading, so a file written in several steps (or a
/// certificate and its key replaced one after the other) is read once, complete.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Calls `reload` (on a blocking thread) after changes in the directories holding `files`.
/// Watching stops when the returned watcher is dropped. Must be called inside a tokio runtime.
///
/// # Errors
/// The watcher's error if a directory cannot be watched (e.g. inotify limits).
pub fn on_change(
    what: &'static str,
    files: &[&Path],
    reload: impl Fn() + Send + Sync + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !event.kind.is_access() => {
            let _ = changed.try_send(());
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, what, "file watch error"),
    })?;
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .map(|file| file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned())
        .collect();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let reload = Arc::new(reload);
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            while tokio::time::timeout(DEBOUNCE, changes.recv()).await.is_ok_and(|event| event.is_some()) {}
            let reload = reload.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || reload()).await {
                tracing::error!(%error, what, "reload task failed");
            }
        }
    });
    Ok(watcher)
}
