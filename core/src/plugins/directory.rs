//! The plugin directory and its plugin files.

use std::{
    io,
    path::{Path, PathBuf},
};

/// File extension of plugin shared libraries on this platform (`so`, `dylib` or `dll`).
pub const PLUGIN_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// Why the plugin directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginDirError {
    /// The directory does not exist.
    #[error("plugin dir {0} does not exist (set --plugin-dir / ALPS_PLUGIN_DIR)")]
    Missing(PathBuf),
    /// The path exists but is not a directory.
    #[error("plugin dir {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The directory cannot be listed.
    #[error("cannot read plugin dir {path}: {source}")]
    Unreadable {
        /// The plugin directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Lists the plugin files (`*.so` on Linux, not hidden) in `dir`, sorted by path.
///
/// # Errors
/// [`PluginDirError`] if `dir` is missing, not a directory or unreadable.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, PluginDirError> {
    if !dir.exists() {
        return Err(PluginDirError::Missing(dir.to_owned()));
    }
    if !dir.is_dir() {
        return Err(PluginDirError::NotADirectory(dir.to_owned()));
    }
    let unreadable = |source| PluginDirError::Unreadable { path: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        // Hidden files are temporary copies in progress (`.name.so` before the `mv`).
        let hidden = path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if !hidden && path.is_file() && path.extension().is_some_and(|ext| ext == PLUGIN_EXTENSION) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_shared_libraries() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.so", "a.so", "notes.txt", "c.so.bak", ".copying.so"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.so")).unwrap();
        let names: Vec<_> = plugin_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.so", "b.so"]);
    }

    #[test]
    fn missing_and_non_directory_paths_are_distinct_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(plugin_files(&missing), Err(PluginDirError::Missing(p)) if p == missing));
        let file = dir.path().join("file.so");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(plugin_files(&file), Err(PluginDirError::NotADirectory(_))));
    }
}
