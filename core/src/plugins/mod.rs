//! The heuristic plugin host: finds plugin files, loads them through the C ABI of
//! `alps-heuristic-abi`, keeps the registry of heuristics, reloads it on file changes or on
//! request, and calls heuristics safely.
//!
//! Loading rules (`heuristics/abi/README.md`, "Versioning"): the ABI major must equal the host's
//! and the host's minor must be at least the plugin's; each file is copied to a unique path
//! (named by its sha256) before `dlopen`, so a replaced file is really loaded anew; libraries
//! are never unloaded, so in-flight calls finish on the version they started with; the registry
//! is swapped atomically.

mod directory;
mod embeddings;
mod host;
mod input;
mod library;
mod registry;
mod watch;

pub use directory::{PLUGIN_EXTENSION, PluginDirError, plugin_files};
pub use embeddings::{EmbeddingError, EmbeddingMatrix, LabelledSet, PoolEmbeddings};
pub use host::{HeuristicHost, ReloadReport, StartError as HostStartError};
pub use input::{InputError, ProbabilityTensor};
pub use library::{CallError, LoadError, LoadedHeuristic, PluginInfo};
pub use registry::{Registry, ResolveError, most_informative_first};
pub use watch::watch_plugin_dir;
