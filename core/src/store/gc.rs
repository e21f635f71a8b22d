//! Garbage collection of sample blobs. Blobs are content-addressed and shared between examples
//! and projects, so deleting an example or a project leaves its bytes in place; a periodic
//! pass removes the blobs no example references once their last write is older than a grace
//! period (see [`BlobStore::collect_garbage`] for why that is safe against concurrent writes).

use std::{sync::Arc, time::Duration};

use super::{
    blobs::{BlobError, BlobStore, Collected},
    db::{Database, StoreError},
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
    db: Arc<Database>,
    blobs: Arc<BlobStore>,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl GarbageCollector {
    /// A collector keeping unreferenced blobs for `grace` after their last write.
    pub fn new(db: Arc<Database>, blobs: Arc<BlobStore>, grace: Duration, metrics: Arc<Metrics>) -> Self {
        Self { db, blobs, grace, metrics }
    }

    /// One pass: reads which blobs examples reference, then removes the others past the grace
    /// period. Blocking (file system and SQLite).
    ///
    /// # Errors
    /// [`GcError`]; nothing referenced is ever removed.
    pub fn collect(&self) -> Result<Collected, GcError> {
        // The round starts before the references are read: see `BlobStore::collect_garbage`.
        let round = self.blobs.start_collection(self.grace);
        let referenced = self.db.referenced_blobs()?;
        let collected = self.blobs.collect_garbage(round, &referenced)?;
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
