//! Hot reload: watches the plugin directory and reloads the registry after plugin files change.

use std::{sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{PLUGIN_EXTENSION, host::HeuristicHost};

/// Quiet time after the last file event before reloading, so a file being copied in several
/// writes is loaded once, complete. (Ops should still prefer write-then-rename.)
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Starts watching the host's plugin directories. Changes to `*.so` files trigger a debounced
/// [`HeuristicHost::reload`] on a blocking thread. Watching stops when the returned watcher is
/// dropped. Must be called inside a tokio runtime.
///
/// # Errors
/// The watcher's error if the directory cannot be watched (e.g. inotify limits).
pub fn watch_plugin_dir(host: Arc<HeuristicHost>) -> notify::Result<notify::RecommendedWatcher> {
    // Capacity 1: one pending signal is enough to know a reload is due; further events while
    // one is pending are merged into it.
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if changes_plugins(&event) => {
            let _ = changed.try_send(());
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "plugin directory watch error"),
    })?;
    for dir in host.dirs() {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Wait until the directory has been quiet for DEBOUNCE.
            while tokio::time::timeout(DEBOUNCE, changes.recv()).await.is_ok_and(|event| event.is_some()) {}
            let host = host.clone();
            match tokio::task::spawn_blocking(move || host.reload()).await {
                Ok(Ok(report)) => {
                    tracing::info!(rejected = report.errors.len(), "plugins reloaded after a file change")
                }
                Ok(Err(error)) => tracing::warn!(%error, "plugin reload after a file change failed"),
                Err(error) => tracing::error!(%error, "plugin reload task failed"),
            }
        }
    });
    Ok(watcher)
}

/// Whether `event` creates, rewrites, renames or removes a plugin file. Reads are ignored: the
/// reload itself reads every plugin, and counting that would reload forever.
fn changes_plugins(event: &notify::Event) -> bool {
    use notify::{EventKind, event::ModifyKind};
    let relevant = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
    );
    relevant && event.paths.iter().any(|p| p.extension().is_some_and(|e| e == PLUGIN_EXTENSION))
}

#[cfg(test)]
mod tests {
    use notify::{
        Event, EventKind,
        event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
    };

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(path.into())
    }

    #[test]
    fn writes_renames_and_removals_of_plugins_count_but_reads_do_not() {
        assert!(changes_plugins(&event(EventKind::Create(CreateKind::File), "/p/a.so")));
        assert!(changes_plugins(&event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/p/a.so")));
        assert!(changes_plugins(&event(EventKind::Remove(notify::event::RemoveKind::File), "/p/a.so")));
        assert!(!changes_plugins(&event(EventKind::Access(AccessKind::Open(AccessMode::Read)), "/p/a.so")));
        assert!(!changes_plugins(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/p/a.so")));
        assert!(!changes_plugins(&event(EventKind::Create(CreateKind::File), "/p/notes.txt")));
    }
}
