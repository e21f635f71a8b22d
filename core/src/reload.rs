//! Re-reading files when they change (tokens file, TLS certificate and key), for rotation
//! without a restart.
//!
//! The parent directory of each file is watched, not the file: editors and Kubernetes replace
//! files by renaming (a mounted Secret swaps a `..data` symlink), which a watch on the old inode
//! would miss. A change to one of the files, or to a `..`-prefixed entry (Kubernetes' `..data`
//! swap), triggers one debounced reload; other entries of those directories are ignored, so a
//! log file written next to the certificate cannot make the server re-read it in a loop. The
//! reload keeps the previous state when the new files are bad.

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
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
    let names: BTreeSet<OsString> = files.iter().filter_map(|file| file.file_name().map(OsStr::to_owned)).collect();
    let concerns_us = move |path: &PathBuf| {
        path.file_name().is_some_and(|name| names.contains(name) || name.as_encoded_bytes().starts_with(b".."))
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if !event.kind.is_access() && event.paths.iter().any(&concerns_us) => {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn only_the_watched_files_trigger_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (watched, neighbour) = (dir.path().join("tokens"), dir.path().join("server.log"));
        std::fs::write(&watched, "a").unwrap();
        let reloads = Arc::new(AtomicUsize::new(0));
        let counter = reloads.clone();
        let _watcher = on_change("test", &[watched.as_path()], move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // A log file next to the watched one changes often: no reload.
        for line in 0..5 {
            std::fs::write(&neighbour, format!("line {line}")).unwrap();
        }
        tokio::time::sleep(DEBOUNCE * 4).await;
        assert_eq!(reloads.load(Ordering::SeqCst), 0, "a neighbour's change reloaded");
        std::fs::write(&watched, "b").unwrap();
        for _ in 0..200 {
            if reloads.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
    }
}
