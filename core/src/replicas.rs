//! Replicas (`--object-store-url`): any number of servers share one catalogue in PostgreSQL and
//! one object store, and each serves every project. Each keeps the projects it serves in
//! memory, so that a prediction never reads the database; this module keeps that cache in step
//! with what the other replicas change. A thread waits for the catalogue's change
//! notifications (PostgreSQL `LISTEN`/`NOTIFY`), at most [`REFRESH_INTERVAL`] at a time, then
//! re-reads the projects and applies what changed as the replica that made the change did: a
//! newly activated version is loaded before it is swapped in (the old one serves meanwhile), a
//! changed spec drops the cached models, a deleted project goes. The interval bounds how late a
//! lost notification (a dropped connection, a reconnect) can make a replica. The same thread
//! records the jobs of replicas that stopped as failed.

use std::{sync::Arc, time::Duration};

use crate::{
    engine::Engine,
    projects::{Project, Projects, Refreshed},
    store::catalog::Catalog,
    training::fail_orphaned_jobs,
};

/// The longest a replica goes without re-reading the projects.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Starts the thread that keeps `projects` (and `engine`'s loaded models) in step with
/// `catalog`; it runs for as long as the process.
///
/// # Errors
/// The OS error if the thread cannot be spawned.
pub fn follow(catalog: Arc<dyn Catalog>, projects: Arc<Projects>, engine: Engine) -> std::io::Result<()> {
    std::thread::Builder::new().name("alps-replica".into()).spawn(move || {
        loop {
            if let Err(error) = catalog.wait_for_change(REFRESH_INTERVAL) {
                tracing::warn!(%error, "cannot listen for catalogue changes; re-reading on the interval");
                std::thread::sleep(REFRESH_INTERVAL);
            }
            refresh(catalog.as_ref(), &projects, &engine);
        }
    })?;
    Ok(())
}

/// One round: projects, then the jobs of stopped replicas. Failures are logged; the next round
/// tries again.
fn refresh(catalog: &dyn Catalog, projects: &Projects, engine: &Engine) {
    let load = |project: &Project| engine.load_blocking(project).map_err(|error| error.to_string());
    match projects.refresh(&load) {
        Ok(changes) => {
            for change in changes {
                match change {
                    Refreshed::Changed(project) | Refreshed::Removed(project) => engine.forget(&project),
                    Refreshed::Activated(project, version) => {
                        tracing::info!(%project, %version, "serving the version another replica activated");
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot re-read the projects"),
    }
    if let Err(error) = fail_orphaned_jobs(catalog) {
        tracing::warn!(%error, "cannot check the jobs of stopped replicas");
    }
}
