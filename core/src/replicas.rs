//! Replicas (`--object-store-url`): any number of servers share one catalogue in PostgreSQL and
//! one object store, and each serves every project. Each keeps the projects it serves in
//! memory, so that a prediction never reads the database; this module keeps that cache in step
//! with what the other replicas change. A thread waits for the catalogue's change
//! notifications (PostgreSQL `LISTEN`/`NOTIFY`), at most [`REFRESH_INTERVAL`] at a time, then
//! re-reads the projects and applies what changed as the replica that made the change did: a
//! newly activated version is loaded before it is swapped in (the old one serves meanwhile), a
//! changed spec drops the cached models, a deleted (or deleted and re-made) project takes its
//! cached models, trained versions and the training jobs this replica runs for it with it. The
//! interval bounds how late a lost notification (a dropped connection, a reconnect) can make a
//! replica. The same thread keeps
//! this replica's lock on the catalogue held, cancels this replica's jobs that a client asked
//! another replica to cancel, and takes over the training of projects whose replica stopped or
//! lost the lease (see `training::leases`).

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    engine::Engine,
    metrics::Metrics,
    projects::{Project, Projects, Refreshed},
    store::catalog::Catalog,
    training::Trainer,
};

/// The longest a replica goes without re-reading the projects.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// How long a version that failed to load (missing or corrupt weights) is not tried again.
const LOAD_BACKOFF: Duration = Duration::from_secs(60);

/// What the following thread works with.
pub struct Follower {
    /// The shared catalogue.
    pub catalog: Arc<dyn Catalog>,
    /// This server's projects.
    pub projects: Arc<Projects>,
    /// This server's models.
    pub engine: Engine,
    /// This server's training (its kept models and versions of deleted projects go; it takes
    /// over the training other replicas left).
    pub trainer: Arc<Trainer>,
    /// Where this replica's activation lag goes (`alps_activation_seconds`).
    pub metrics: Arc<Metrics>,
}

/// Starts the thread that keeps `follower`'s projects and models in step with its catalogue;
/// it runs for as long as the process.
///
/// # Errors
/// The OS error if the thread cannot be spawned.
pub fn follow(follower: Follower) -> std::io::Result<()> {
    std::thread::Builder::new().name("alps-replica".into()).spawn(move || {
        let failed_loads = RefCell::new(HashMap::new());
        loop {
            if let Err(error) = follower.catalog.wait_for_change(REFRESH_INTERVAL) {
                tracing::warn!(%error, "cannot listen for catalogue changes; re-reading on the interval");
                std::thread::sleep(REFRESH_INTERVAL);
            }
            if let Err(error) = follower.catalog.keep_locks() {
                tracing::warn!(%error, "cannot reach the catalogue to hold this replica's lock");
            }
            follower.refresh(&failed_loads);
            follower.trainer.honour_cancel_requests();
            follower.trainer.take_over_abandoned();
        }
    })?;
    Ok(())
}

impl Follower {
    /// Re-reads the projects. A version that failed to load is tried again after
    /// [`LOAD_BACKOFF`], not on every round: each try fetches its weights.
    fn refresh(&self, failed_loads: &RefCell<HashMap<(String, String), Instant>>) {
        failed_loads.borrow_mut().retain(|_, at| at.elapsed() < LOAD_BACKOFF);
        let load = |project: &Project| {
            let key = (project.spec.id.clone(), project.active_version.clone());
            if failed_loads.borrow().get(&key).is_some_and(|at| at.elapsed() < LOAD_BACKOFF) {
                return Err("it failed to load a moment ago; trying again later".to_owned());
            }
            let loaded = self.engine.ensure_loaded(project).map_err(|error| error.to_string());
            if loaded.is_err() {
                failed_loads.borrow_mut().insert(key, Instant::now());
            }
            loaded
        };
        let changes = match self.projects.refresh(&load) {
            Ok(changes) => changes,
            Err(error) => return tracing::warn!(%error, "cannot re-read the projects"),
        };
        for change in changes {
            match change {
                Refreshed::Changed(project) => self.engine.forget(&project),
                Refreshed::Removed(project) => {
                    self.engine.forget(&project);
                    self.trainer.project_deleted(&project, i64::MAX);
                }
                Refreshed::Recreated(project) => {
                    self.engine.forget(&project);
                    // Jobs of the new project (begun here since) are its own.
                    let created = self.projects.get(&project).map_or(i64::MAX, |p| p.created_unix_ms);
                    self.trainer.project_deleted(&project, created);
                }
                Refreshed::Activated(project, version) => self.served_activation(&project, &version),
            }
        }
    }

    /// Records how late this replica serves `version` of `project`, activated by another one:
    /// from the activation's time in the catalogue to now, on the two servers' clocks (so
    /// their skew adds to it).
    fn served_activation(&self, project: &str, version: &str) {
        let activated = self.projects.get(project).map(|p| p.activated_unix_ms).unwrap_or(0);
        let lag_ms = crate::clock::now_unix_ms() - activated;
        // An activation recorded before the catalogue kept its time (0), or a clock far behind
        // the activating server's, measures nothing.
        if activated > 0 && lag_ms >= 0 {
            self.metrics.observe_activation(Duration::from_millis(lag_ms as u64));
        }
        tracing::info!(%project, %version, lag_ms, "serving the version another replica activated");
    }
}
