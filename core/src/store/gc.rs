//! Garbage collection of sample blobs. Blobs are content-addressed and shared between examples
//! and projects, so deleting an example or a project leaves its bytes in place; a periodic
//! pass removes the blobs no example references once their last write is older than a grace
//! period (see [`BlobStore::collect_garbage`] for why that is safe against concurrent writes).
//! The same pass removes model-version directories of projects that no longer exist (a crash
//! between a project's deletion and the removal of its versions leaves them behind) and, with
//! an object store, the weights no recorded version names ([`ModelsDir::collect_weights`]).
//! Replicas collect one at a time ([`Catalog::alone`]), and remove a shared object only if no
//! replica declared it in use within the grace period ([`Catalog::remove_unused_object`]).

use std::{sync::Arc, time::Duration};

use super::{
    ModelsDir,
    blobs::{BlobError, BlobStore, Collected},
    catalog::{Alone, Catalog, StoreError},
};
use crate::metrics::Metrics;

/// Why a collection failed; the next one tries again.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The referenced blobs could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob directory could not be listed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Removes unreferenced sample blobs of one data directory.
#[derive(Clone, Debug)]
pub struct GarbageCollector {
    catalog: Arc<dyn Catalog>,
    blobs: Arc<BlobStore>,
    models_dir: ModelsDir,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl GarbageCollector {
    /// A collector keeping unreferenced blobs, and the model versions of deleted projects in
    /// `models_dir`, for `grace` after their last write.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        blobs: Arc<BlobStore>,
        models_dir: ModelsDir,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { catalog, blobs, models_dir, grace, metrics }
    }

    /// One pass: reads which blobs examples reference, then removes the others past the grace
    /// period. Blocking (file system and SQLite).
    ///
    /// # Errors
    /// [`GcError`]; nothing referenced is ever removed.
    pub fn collect(&self) -> Result<Collected, GcError> {
        // Alone on the catalogue, the pins that keep blobs being written are this process's;
        // replicas declare theirs in the catalogue, and collect one at a time.
        let Some(alone) = self.catalog.alone()? else {
            tracing::info!("garbage collection skipped: another replica collects now");
            return Ok(Collected::default());
        };
        // The round starts before the references are read: see `BlobStore::collect_garbage`.
        let round = self.blobs.start_collection(self.grace);
        let referenced = self.catalog.referenced_blobs()?;
        let collected = self.blobs.collect_garbage(round, &referenced, &alone)?;
        self.remove_orphaned_versions(&alone);
        self.metrics.record_garbage_collected(collected.blobs, collected.bytes);
        if collected != Collected::default() {
            tracing::info!(
                blobs = collected.blobs,
                bytes = collected.bytes,
                temporaries = collected.temporaries,
                "removed unreferenced sample blobs"
            );
        }
        Ok(collected)
    }

    /// Removes the model-version directories of deleted projects older than the grace period;
    /// a failure is logged and retried next time.
    fn remove_orphaned_versions(&self, alone: &Alone<'_>) {
        let now = std::time::SystemTime::now();
        let cutoff = now.checked_sub(self.grace).unwrap_or(std::time::UNIX_EPOCH);
        // Read after the cutoff: a project made since has a newer directory.
        let projects = match self.catalog.projects() {
            Ok(projects) => projects.into_iter().map(|p| p.spec.id).collect::<Vec<_>>(),
            Err(error) => return tracing::warn!(%error, "cannot list projects for model-version collection"),
        };
        match self.models_dir.remove_orphans(&projects, cutoff) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed model versions of deleted projects"),
            Err(error) => tracing::warn!(%error, "cannot list the models directory"),
        }
        match self.models_dir.collect_weights(cutoff, alone) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed model weights no version names from the object store"),
            Err(error) => tracing::warn!(%error, "cannot collect model weights in the object store"),
        }
    }

    /// Runs [`collect`](Self::collect) every `interval` on the blocking pool, for as long as
    /// the runtime lives; the first pass comes one interval after the start.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let collector = self.clone();
                match tokio::task::spawn_blocking(move || collector.collect()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "garbage collection failed; retrying next time"),
                    Err(error) => tracing::error!(%error, "garbage collection panicked"),
                }
            }
        })
    }
}
