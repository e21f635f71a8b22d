//! Training with replicas: which replica trains a project, and what happens to the work of one
//! that stops.
//!
//! A replica trains a project while it holds the project's lease ([`Lease`], granted by the
//! catalogue for `--training-lease-secs`). A thread renews the leases of this server's running
//! jobs every third of that time; a lease that another replica took over meanwhile (this one
//! was paused, or cut off from the catalogue, for longer than the lease) cancels its job, and
//! the activation of what it trained is refused by the catalogue (the lease's epoch is the
//! fencing token). Every replica's follower ([`crate::replicas`]) looks for projects with
//! unfinished jobs and no live lease: it claims the lease, records the jobs left running under
//! the old one as failed, queues each again (at most [`MAX_ATTEMPTS`] tries, so that a job that
//! kills its replica does not kill them all), and runs the queued job. A job left running that
//! recorded its version first is recorded as succeeded instead; one whose record this build
//! cannot read is ended as it is.

use std::sync::{Arc, atomic::Ordering};

use super::{JobRecord, JobState, Trainer, end_job};
use crate::store::catalog::{Catalog, Lease, StoreError};

/// How often a job is tried in all: a job interrupted this often is not queued again.
pub const MAX_ATTEMPTS: u32 = 3;
/// Why a job that another replica left unfinished failed.
const ABANDONED: &str =
    "interrupted: the replica that ran it stopped, or lost the project's training lease, before it ended";

impl Trainer {
    /// Starts the thread that renews this server's training leases while its jobs run; it ends
    /// with the trainer.
    ///
    /// # Errors
    /// The OS error if the thread cannot be spawned.
    pub fn keep_leases(self: &Arc<Self>) -> std::io::Result<()> {
        let trainer = Arc::downgrade(self);
        let every = self.lease_ttl / 3;
        std::thread::Builder::new().name("alps-leases".into()).spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(trainer) = trainer.upgrade() else { return };
                trainer.renew_leases();
            }
        })?;
        Ok(())
    }

    /// Renews the lease of every project this server trains; a job whose lease another replica
    /// took over is cancelled (it ends failed, and nothing more runs under that lease here).
    fn renew_leases(&self) {
        let held: Vec<(String, super::Running)> = self
            .state()
            .running
            .iter()
            .filter(|(_, running)| !running.lost)
            .map(|(project, running)| (project.clone(), running.clone()))
            .collect();
        for (project, running) in held {
            match self.catalog.renew_training(&project, &self.replica, running.lease, self.lease_ttl) {
                Ok(true) => {}
                Ok(false) => self.lose_lease(&project, running.lease),
                // The lease runs out unless a later round reaches the catalogue in time.
                Err(error) => tracing::warn!(%project, %error, "cannot renew the training lease"),
            }
        }
    }

    /// Marks `lease` on `project` lost, if this server still runs the project under it, and
    /// cancels the job it runs now (the job ends failed, and nothing more runs under it here).
    fn lose_lease(&self, project: &str, lease: Lease) {
        let mut state = self.state();
        let Some(entry) = state.running.get_mut(project).filter(|entry| entry.lease == lease) else { return };
        entry.lost = true;
        tracing::warn!(%project, job = %entry.job_id, "another replica took over this project's training lease; stopping the job");
        if let Some(live) = self.live().get(&entry.job_id) {
            live.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Takes over the training of projects whose jobs no replica runs any more (their lease
    /// expired or was released with a job still queued): claims each one's lease and runs its
    /// queued job, after failing (and queueing again) the jobs left running under the old
    /// lease. The follower calls it every round.
    pub fn take_over_abandoned(self: &Arc<Self>) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let projects = match self.catalog.projects_to_take_over() {
            Ok(projects) => projects,
            Err(error) => return tracing::warn!(%error, "cannot look for training to take over"),
        };
        for project in projects {
            let mut state = self.state();
            if state.running.contains_key(&project) {
                continue;
            }
            match self.catalog.claim_training(&project, &self.replica, self.lease_ttl) {
                Ok(Some(lease)) => {
                    tracing::info!(%project, epoch = lease.epoch, "taking over the project's training");
                    self.run_queued(&mut state, &project, lease, None);
                }
                // Another replica was faster.
                Ok(None) => {}
                Err(error) => tracing::warn!(%project, %error, "cannot claim the training lease"),
            }
        }
    }

    /// Records as failed `project_id`'s jobs that a replica left unfinished (it stopped, or lost
    /// the lease) other than `ended`, each queued again ([`retry`]). Called under a lease just
    /// taken, or held after a job ended, when no job of the project can still run elsewhere.
    pub(super) fn fail_abandoned_jobs(&self, project_id: &str, ended: Option<&str>) -> Result<(), StoreError> {
        for row in self.catalog.unfinished_jobs()? {
            if row.queued || Some(row.job_id.as_str()) == ended {
                continue;
            }
            let Some(record) = row.record else {
                // Written by another build (replicas of different builds must not run
                // together): left unfinished, it would keep its project abandoned, and every
                // replica would claim the project's lease every round. Its record stays.
                if self.catalog.end_unreadable_job(&row.job_id, project_id)? {
                    tracing::warn!(job = %row.job_id, project = %project_id, "ended an abandoned job whose record this build cannot read");
                }
                continue;
            };
            if record.project_id != project_id {
                continue;
            }
            if let Some(done) = recorded_its_version(self.catalog.as_ref(), &record)? {
                tracing::warn!(job = %done.job_id, project = %project_id, version = %done.model_version, "job abandoned by its replica after it recorded its version: recorded as succeeded");
                self.catalog.save_job(&done)?;
                continue;
            }
            let retried = retry(self.catalog.as_ref(), &record)?;
            let record = end_job(record, JobState::Failed, format!("{ABANDONED}; {retried}"));
            tracing::warn!(job = %record.job_id, project = %project_id, replica = %record.replica, "job abandoned by its replica; {retried}");
            self.catalog.save_job(&record)?;
        }
        Ok(())
    }

    /// Queues `record`'s job again after its replica interrupted it ([`retry`]); says what
    /// became of it.
    pub(super) fn retry(&self, record: &JobRecord) -> String {
        retry(self.catalog.as_ref(), record).unwrap_or_else(|error| {
            tracing::warn!(job = %record.job_id, %error, "cannot queue the interrupted job again");
            "not retried: the catalogue failed".into()
        })
    }
}

/// `record`'s job as succeeded, if it recorded its version before its replica stopped: only
/// its end was not saved (the catalogue failed then, or the replica stopped in between), and
/// training it again would make another version of the same work. A job that was to activate
/// its version and whose version is not the active one says so in `not_activated_reason` (its
/// replica stopped before activating it, or another version was activated since): activating
/// it is the user's call.
///
/// # Errors
/// [`StoreError`] if the catalogue fails.
pub(super) fn recorded_its_version(catalog: &dyn Catalog, record: &JobRecord) -> Result<Option<JobRecord>, StoreError> {
    let versions = catalog.versions(&record.project_id)?;
    let Some(version) = versions.into_iter().find(|row| row.manifest.job_id == record.job_id) else {
        return Ok(None);
    };
    let active = catalog.project(&record.project_id)?.map(|project| project.active_version);
    let mut done = end_job(record.clone(), JobState::Succeeded, String::new());
    if done.activate && active.as_deref() != Some(version.version.as_str()) {
        done.not_activated_reason = format!(
            "the replica that ran this job stopped after recording version {} and before recording the job's end; \
             it is not the active version: activate it by hand if it should serve",
            version.version
        );
    }
    done.succeed(version.version);
    Ok(Some(done))
}

/// Queues a new job with `record`'s settings after its replica interrupted it, unless a client
/// asked to cancel it or it was tried [`MAX_ATTEMPTS`] times; a job already queued for the
/// project takes its place (it trains on the same examples). Returns what became of it, for the
/// interrupted job's error.
///
/// # Errors
/// [`StoreError`] if the catalogue fails.
pub(super) fn retry(catalog: &dyn Catalog, record: &JobRecord) -> Result<String, StoreError> {
    if catalog.cancel_requested(&record.job_id)? {
        return Ok("not retried: cancelling it was asked for".into());
    }
    if record.attempt >= MAX_ATTEMPTS {
        return Ok(format!("not retried after {} attempts", record.attempt));
    }
    // Named after the job, so that a second pass over the same interrupted job (its failure
    // was not saved) finds the retry instead of queueing another.
    let base = record.job_id.split("-retry").next().unwrap_or(&record.job_id);
    let job_id = format!("{base}-retry{}", record.attempt + 1);
    match catalog.job(&job_id) {
        // A retry another build recorded is one too.
        Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => return Ok(format!("retried as job {job_id}")),
        Ok(None) => {}
        Err(error) => return Err(error),
    }
    let again = JobRecord::queued(
        job_id,
        &record.project_id,
        record.params.clone(),
        record.activate,
        &record.replica,
        record.attempt + 1,
    );
    Ok(match catalog.enqueue_job(&again)? {
        None => format!("retried as job {} (attempt {} of {MAX_ATTEMPTS})", again.job_id, again.attempt),
        Some(queued) => format!("job {}, queued, trains the project instead", queued.job_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        projects::{UNTRAINED_VERSION, spec::tests::spec},
        store::sqlite::SqliteCatalog,
        training::record::{Manifest, RequestedParams, TrainingParams},
    };

    /// A running job of project "cars", on its `attempt`.
    fn running(job_id: &str, attempt: u32) -> JobRecord {
        let params = TrainingParams::resolve(RequestedParams { epochs: 7, ..RequestedParams::default() }).unwrap();
        JobRecord {
            state: JobState::Running,
            ..JobRecord::queued(job_id.into(), "cars", params, false, "gone", attempt)
        }
    }

    fn catalog() -> (tempfile::TempDir, SqliteCatalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = SqliteCatalog::open(&dir.path().join("alps.db")).unwrap();
        catalog.upsert_project(&spec(), 0, UNTRAINED_VERSION, &|_| false).unwrap();
        (dir, catalog)
    }

    #[test]
    fn an_interrupted_job_is_queued_again_with_its_settings_until_the_last_attempt() {
        let (_dir, catalog) = catalog();
        let first = running("job-1", 1);
        let said = retry(&catalog, &first).unwrap();
        let queued = catalog.take_queued_job("cars").unwrap().expect("queued again");
        assert_eq!(said, format!("retried as job {} (attempt 2 of 3)", queued.job_id));
        assert_eq!(queued.job_id, "job-1-retry2");
        assert_eq!((queued.state, queued.attempt), (JobState::Queued, 2));
        assert_eq!((&queued.params, queued.activate), (&first.params, first.activate), "the same settings");
        // A second pass over the same job (its failure was not saved) finds the retry.
        assert_eq!(retry(&catalog, &first).unwrap(), format!("retried as job {}", queued.job_id));
        assert_eq!(catalog.take_queued_job("cars").unwrap(), None, "not queued twice");
        // The last attempt is not queued again, so a job that kills its replica does not kill them all.
        assert_eq!(retry(&catalog, &running("job-3", 3)).unwrap(), "not retried after 3 attempts");
        assert_eq!(catalog.take_queued_job("cars").unwrap(), None);
    }

    #[test]
    fn a_job_queued_already_takes_the_place_of_the_retry_and_a_cancelled_one_is_not_retried() {
        let (_dir, catalog) = catalog();
        assert_eq!(catalog.enqueue_job(&running("job-q", 1)).unwrap(), None);
        assert_eq!(retry(&catalog, &running("job-1", 1)).unwrap(), "job job-q, queued, trains the project instead");
        assert_eq!(catalog.unfinished_jobs().unwrap().len(), 1, "nothing more queued");
        catalog.save_job(&running("job-2", 1)).unwrap();
        assert!(catalog.request_cancel("job-2").unwrap());
        assert_eq!(retry(&catalog, &running("job-2", 1)).unwrap(), "not retried: cancelling it was asked for");
    }

    #[test]
    fn a_job_that_recorded_its_version_before_its_replica_stopped_is_succeeded_not_retried() {
        let (_dir, catalog) = catalog();
        catalog.record_version(&Manifest::example("cars", 1), 10).unwrap();
        assert_eq!(recorded_its_version(&catalog, &running("job-2", 1)).unwrap(), None, "another job's version");
        // Recorded, not activated: the replica stopped in between.
        let activating = || JobRecord { activate: true, ..running("job-1", 1) };
        let done = recorded_its_version(&catalog, &activating()).unwrap().expect("it made v1");
        assert_eq!(
            (done.state, done.model_version.as_str(), done.progress.percent),
            (JobState::Succeeded, "v1", 100.0)
        );
        assert!(done.not_activated_reason.contains("activate it by hand"), "{}", done.not_activated_reason);
        assert!(done.finished_unix_ms > 0);
        // A job that was not to activate it says nothing of activation.
        assert_eq!(recorded_its_version(&catalog, &running("job-1", 1)).unwrap().unwrap().not_activated_reason, "");
        // Recorded and activated: only the job's end was lost.
        catalog.activate_version("cars", "v1", &|_, _| true, None).unwrap();
        let done = recorded_its_version(&catalog, &activating()).unwrap().expect("it made v1");
        assert_eq!((done.state, done.not_activated_reason.as_str()), (JobState::Succeeded, ""));
    }
}
