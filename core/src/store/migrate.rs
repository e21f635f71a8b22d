//! Moving a catalogue (`alps-server migrate`): copies every project, labelled example, model
//! version and training job of one catalogue into another (the data directory's SQLite into
//! PostgreSQL), then reads both back and checks that the target holds the same rows.
//!
//! Idempotent: a second run finds everything in place and changes nothing, and a run after the
//! source grew copies what is new. It never overwrites: before writing anything of a project,
//! it checks that everything the target holds of it (the project row, every version, labelled
//! example and job) is in the source, equal; else it stops with [`MigrateError::Conflict`] and
//! nothing of that project is changed (a server that already wrote to the target made it the
//! newer copy). A deletion in the target alone cannot be told from a row not copied yet: that
//! is why `alps-server migrate` copies nothing once the data dir has moved to the target
//! (no server serves the target with that data dir before). Sample bytes and model files are
//! not in the catalogue; they stay where they are. A project's activation time is not copied:
//! it only times how late replicas follow an activation, and the next one sets it. A training
//! job whose record this build cannot read (another build wrote it) cannot be copied as a
//! record: it is left behind and counted ([`Migrated::unreadable_jobs`]), the rest is copied.

use std::collections::{HashMap, VecDeque};

use super::catalog::{Catalog, ExampleRow, StoreError};
use crate::projects::spec::Project;

/// Examples copied and compared per page.
const PAGE: usize = 1000;

/// What a migration copied (totals of the source, verified in the target).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Projects.
    pub projects: u64,
    /// Labelled examples.
    pub examples: u64,
    /// Model versions.
    pub versions: u64,
    /// Training jobs.
    pub jobs: u64,
    /// Training jobs left behind: their records were written by another build, which this one
    /// cannot read (see [`super::catalog::JobRow::record`]).
    pub unreadable_jobs: u64,
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Reading the source or writing the target failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target holds something of this project that the source does not, or holds it
    /// differently (its spec, a version, a labelled example, a job).
    #[error("project {project}: the target holds {what} differently or the source lacks it; nothing of it was changed")]
    Conflict {
        /// The project.
        project: String,
        /// What differs, e.g. "spec" or "labelled example task-7".
        what: String,
    },
    /// After copying, the target's rows differ from the source's (another writer changed them).
    #[error("project {project}: after copying, the target's {what} differ from the source's")]
    Mismatch {
        /// The project.
        project: String,
        /// What differs: "examples", "versions" or "jobs".
        what: &'static str,
    },
}

/// Copies `source` into `target`, then verifies; see the module docs.
///
/// # Errors
/// [`MigrateError`]; projects before the failing one are copied whole (each step is a
/// transaction, and a rerun completes the rest).
pub fn migrate(source: &dyn Catalog, target: &dyn Catalog) -> Result<Migrated, MigrateError> {
    let mut migrated = Migrated::default();
    for project in source.projects()? {
        check_target(source, target, &project)?;
        copy_project(source, target, &project)?;
        let counts = verify_project(source, target, &project.spec.id)?;
        migrated.projects += 1;
        migrated.examples += counts.examples;
        migrated.versions += counts.versions;
        migrated.jobs += counts.jobs;
        migrated.unreadable_jobs += counts.unreadable_jobs;
    }
    Ok(migrated)
}

fn conflict(project: &str, what: impl Into<String>) -> MigrateError {
    MigrateError::Conflict { project: project.to_owned(), what: what.into() }
}

/// A project's examples in id order, a page at a time.
struct Examples<'a> {
    catalog: &'a dyn Catalog,
    project: &'a str,
    after: String,
    page: VecDeque<ExampleRow>,
}

impl<'a> Examples<'a> {
    fn new(catalog: &'a dyn Catalog, project: &'a str) -> Self {
        Self { catalog, project, after: String::new(), page: VecDeque::new() }
    }

    fn next(&mut self) -> Result<Option<ExampleRow>, StoreError> {
        if self.page.is_empty() {
            self.page = self.catalog.examples(self.project, &self.after, PAGE)?.into();
            if let Some(last) = self.page.back() {
                self.after = last.external_id.clone();
            }
        }
        Ok(self.page.pop_front())
    }
}

/// Checks that everything `target` holds of `project` is in `source`, equal.
fn check_target(source: &dyn Catalog, target: &dyn Catalog, project: &Project) -> Result<(), MigrateError> {
    let id = &project.spec.id;
    let jobs: HashMap<_, _> = readable_jobs(source, id)?.into_iter().map(|j| (j.job_id.clone(), j)).collect();
    let Some(existing) = target.project(id)? else { return Ok(()) };
    for (differs, what) in [
        (existing.spec != project.spec, "its spec"),
        (existing.created_unix_ms != project.created_unix_ms, "its creation time"),
        (existing.active_version != project.active_version, "its active version"),
    ] {
        if differs {
            return Err(conflict(id, what));
        }
    }
    let versions: HashMap<_, _> = source.versions(id)?.into_iter().map(|v| (v.version.clone(), v)).collect();
    if let Some(version) = target.versions(id)?.into_iter().find(|v| versions.get(&v.version) != Some(v)) {
        return Err(conflict(id, format!("model version {}", version.version)));
    }
    if let Some(job) = readable_jobs(target, id)?.into_iter().find(|j| jobs.get(&j.job_id) != Some(j)) {
        return Err(conflict(id, format!("training job {}", job.job_id)));
    }
    // Both in the same (bytewise) id order: one pass over each.
    let (mut ours, mut theirs) = (Examples::new(source, id), Examples::new(target, id));
    let mut next_ours = ours.next()?;
    while let Some(held) = theirs.next()? {
        while next_ours.as_ref().is_some_and(|row| row.external_id < held.external_id) {
            next_ours = ours.next()?;
        }
        if next_ours.as_ref() != Some(&held) {
            return Err(conflict(id, format!("labelled example {}", held.external_id)));
        }
    }
    Ok(())
}

/// Writes what `target` lacks of `project` (checked by [`check_target`] first).
fn copy_project(source: &dyn Catalog, target: &dyn Catalog, project: &Project) -> Result<(), MigrateError> {
    let id = &project.spec.id;
    if target.project(id)?.is_none() {
        target.upsert_project(&project.spec, project.created_unix_ms, &project.active_version, &|_| false)?;
    }
    let present = target.versions(id)?;
    for version in source.versions(id)?.into_iter().rev() {
        if !present.iter().any(|v| v.version == version.version) {
            target.record_version(&version.manifest, version.created_unix_ms)?;
        }
    }
    let mut after = String::new();
    loop {
        let page = source.examples(id, &after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.external_id.clone();
        target.upsert_examples(id, &page)?;
    }
    for job in source.jobs(id, usize::MAX)? {
        let Some(record) = &job.record else {
            tracing::warn!(project = %id, job = %job.job_id, "left behind: a training job whose record another build wrote");
            continue;
        };
        // A trigger still queued stays queued: the server that trains the project takes it
        // (a rerun after it did leaves it alone).
        if job.queued {
            if target.job(&job.job_id)?.is_none() {
                target.enqueue_job(record)?;
            }
        } else {
            target.save_job(record)?;
        }
    }
    Ok(())
}

/// Compares project `id`'s rows in both catalogues; returns the source's counts.
fn verify_project(source: &dyn Catalog, target: &dyn Catalog, id: &str) -> Result<Migrated, MigrateError> {
    let mismatch = |what| MigrateError::Mismatch { project: id.to_owned(), what };
    let mut counts = Migrated::default();
    let mut after = String::new();
    loop {
        let page = source.examples(id, &after, PAGE)?;
        if target.examples(id, &after, PAGE)? != page {
            return Err(mismatch("examples"));
        }
        let Some(last) = page.last() else { break };
        after = last.external_id.clone();
        counts.examples += page.len() as u64;
    }
    let versions = source.versions(id)?;
    if target.versions(id)? != versions {
        return Err(mismatch("versions"));
    }
    let jobs = source.jobs(id, usize::MAX)?;
    let unreadable = jobs.iter().filter(|job| job.record.is_none()).count();
    let jobs: Vec<_> = jobs.into_iter().filter(|job| job.record.is_some()).collect();
    if readable_jobs(target, id)? != jobs {
        return Err(mismatch("jobs"));
    }
    counts.versions = versions.len() as u64;
    counts.jobs = jobs.len() as u64;
    counts.unreadable_jobs = unreadable as u64;
    Ok(counts)
}

/// `catalog`'s jobs of project `id` whose records this build reads.
fn readable_jobs(catalog: &dyn Catalog, id: &str) -> Result<Vec<super::catalog::JobRow>, StoreError> {
    Ok(catalog.jobs(id, usize::MAX)?.into_iter().filter(|job| job.record.is_some()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        projects::spec::tests::spec,
        store::conformance::job,
        store::{conformance::postgres_database, postgres::PostgresCatalog, sqlite::SqliteCatalog},
        training::record::{JobState, Manifest},
    };

    fn example(id: usize) -> crate::store::catalog::ExampleRow {
        crate::store::catalog::ExampleRow {
            external_id: format!("task-{id:04}"),
            class_name: if id.is_multiple_of(2) { "sedan" } else { "truck" }.into(),
            sha256: format!("{id:064x}"),
            size_bytes: 100 + id as u64,
            tensor_shape: id.is_multiple_of(3).then(|| vec![3, 4, 4]),
            metadata: [("n".to_owned(), id.to_string())].into(),
            updated_unix_ms: 1_000 + id as i64,
            label_revision: id as u64 * 7,
        }
    }

    /// A catalogue with two projects, 2,500 examples (three pages), versions and jobs.
    fn populated(dir: &std::path::Path) -> SqliteCatalog {
        let source = SqliteCatalog::open(&dir.join("alps.db")).unwrap();
        source.upsert_project(&spec(), 111, "untrained", &|_| false).unwrap();
        let mut boats = spec();
        boats.id = "boats".into();
        source.upsert_project(&boats, 222, "untrained", &|_| false).unwrap();
        source.upsert_examples("cars", &(0..2500).map(example).collect::<Vec<_>>()).unwrap();
        source.upsert_examples("boats", &[example(9)]).unwrap();
        for n in 1..=3 {
            source.record_version(&Manifest::example("cars", n), 10 * i64::from(n)).unwrap();
        }
        source.activate_version("cars", "v2", &|_, _| true, None).unwrap();
        source.save_job(&job("job-1", "cars", JobState::Succeeded, 5, "done")).unwrap();
        source.save_job(&job("job-2", "cars", JobState::Running, 6, "running")).unwrap();
        assert_eq!(source.enqueue_job(&job("job-3", "cars", JobState::Queued, 7, "queued")).unwrap(), None);
        source
    }

    #[test]
    fn a_migration_copies_everything_verifies_it_and_a_rerun_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(dir.path());
        let target = PostgresCatalog::open(&postgres_database(), None).unwrap();
        let expected = Migrated { projects: 2, examples: 2501, versions: 3, jobs: 3, unreadable_jobs: 0 };
        assert_eq!(migrate(&source, &target).unwrap(), expected);
        // Activation times are not copied (see the module docs).
        let copied = |catalog: &dyn Catalog| -> Vec<Project> {
            catalog.projects().unwrap().into_iter().map(|p| Project { activated_unix_ms: 0, ..p }).collect()
        };
        assert_eq!(copied(&target), copied(&source), "specs, creation times, active versions");
        assert_eq!(target.project("cars").unwrap().unwrap().active_version, "v2");
        let mut unfinished: Vec<_> = target
            .unfinished_jobs()
            .unwrap()
            .into_iter()
            .map(|job| (job.record.map(|record| record.error), job.queued))
            .collect();
        unfinished.sort();
        let queued_and_running = [(Some("queued".to_owned()), true), (Some("running".to_owned()), false)];
        assert_eq!(unfinished, queued_and_running, "a trigger stays queued");
        assert_eq!(target.next_version_number("cars").unwrap(), 4);
        assert_eq!(migrate(&source, &target).unwrap(), expected, "idempotent");
        // The source grew: a rerun copies what is new.
        source.upsert_examples("boats", &[example(10)]).unwrap();
        assert_eq!(migrate(&source, &target).unwrap().examples, 2502);
    }

    #[test]
    fn a_job_record_this_build_cannot_read_is_left_behind_counted_and_the_rest_copied() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(dir.path());
        let connection = rusqlite::Connection::open(dir.path().join("alps.db")).unwrap();
        connection
            .execute("UPDATE jobs SET record = '{\"from\": \"a newer build\"}' WHERE job_id = 'job-2'", [])
            .unwrap();
        let target = PostgresCatalog::open(&postgres_database(), None).unwrap();
        let expected = Migrated { projects: 2, examples: 2501, versions: 3, jobs: 2, unreadable_jobs: 1 };
        assert_eq!(migrate(&source, &target).unwrap(), expected);
        let copied: Vec<_> = target.jobs("cars", 10).unwrap().into_iter().map(|job| job.job_id).collect();
        assert_eq!(copied, ["job-3", "job-1"], "newest first, without job-2");
        assert_eq!(migrate(&source, &target).unwrap(), expected, "idempotent");
    }

    #[test]
    fn a_target_that_holds_a_project_differently_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(dir.path());
        let target = PostgresCatalog::open(&postgres_database(), None).unwrap();
        let mut other = spec();
        other.classes.push("bus".into());
        target.upsert_project(&other, 111, "untrained", &|_| false).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        let expected =
            "project cars: the target holds its spec differently or the source lacks it; nothing of it was changed";
        assert_eq!(error.to_string(), expected);
        assert_eq!(target.project("cars").unwrap().unwrap().spec, other);
        assert!(target.examples("cars", "", 10).unwrap().is_empty());
        // The projects before it (ordered by id) were copied whole.
        assert_eq!(target.examples("boats", "", 10).unwrap().len(), 1);
        // A version recorded differently is a conflict too.
        target.delete_project("cars").unwrap();
        target.upsert_project(&spec(), 111, "v2", &|_| false).unwrap();
        target.record_version(&Manifest { job_id: "another job".into(), ..Manifest::example("cars", 1) }, 10).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        assert!(matches!(&error, MigrateError::Conflict { what, .. } if what == "model version v1"), "{error}");
        assert_eq!(target.versions("cars").unwrap().len(), 1, "nothing of it was written");
    }

    #[test]
    fn a_rerun_after_a_server_wrote_to_the_target_changes_nothing_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(dir.path());
        let target = PostgresCatalog::open(&postgres_database(), None).unwrap();
        migrate(&source, &target).unwrap();
        // A server on the target relabels an example: a rerun would have reverted it.
        let mut relabelled = example(4);
        relabelled.class_name = "truck".into();
        relabelled.label_revision = 0;
        target.upsert_examples("cars", &[relabelled.clone()]).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        assert!(
            matches!(&error, MigrateError::Conflict { what, .. } if what == "labelled example task-0004"),
            "{error}"
        );
        assert_eq!(target.examples("cars", "task-0003", 1).unwrap(), [relabelled]);
        // A job the target made is the target's.
        target.upsert_examples("cars", &[example(4)]).unwrap();
        target.save_job(&job("job-3", "cars", JobState::Failed, 7, "on the target")).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        assert!(matches!(&error, MigrateError::Conflict { what, .. } if what == "training job job-3"), "{error}");
    }
}
