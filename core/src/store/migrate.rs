//! Moving a catalogue (`alps-server migrate`): copies every project, labelled example, model
//! version and training job of one catalogue into another (the data directory's SQLite into
//! PostgreSQL), then reads both back and checks that the target holds the same rows.
//!
//! Idempotent: a second run finds everything in place and changes nothing. It never
//! overwrites: a project the target already holds with another spec, creation time, active
//! version or version manifest is a [`MigrateError::Conflict`], and nothing of that project
//! is changed. Sample bytes and model files are not in the catalogue; they stay where they are.

use super::catalog::{Catalog, StoreError, StoredProject};

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
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Reading the source or writing the target failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target already holds this project, or one of its versions, differently.
    #[error("project {project}: the target already holds it with another {what}; nothing of it was changed")]
    Conflict {
        /// The project.
        project: String,
        /// What differs, e.g. "spec" or "manifest of v2".
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
        copy_project(source, target, &project)?;
        let counts = verify_project(source, target, &project.spec.id)?;
        migrated.projects += 1;
        migrated.examples += counts.examples;
        migrated.versions += counts.versions;
        migrated.jobs += counts.jobs;
    }
    Ok(migrated)
}

fn conflict(project: &str, what: impl Into<String>) -> MigrateError {
    MigrateError::Conflict { project: project.to_owned(), what: what.into() }
}

fn copy_project(source: &dyn Catalog, target: &dyn Catalog, project: &StoredProject) -> Result<(), MigrateError> {
    let id = &project.spec.id;
    match target.project(id)? {
        Some(existing) if existing.spec != project.spec => return Err(conflict(id, "spec")),
        Some(existing) if existing.created_unix_ms != project.created_unix_ms => {
            return Err(conflict(id, "creation time"));
        }
        Some(existing) if existing.active_version != project.active_version => {
            return Err(conflict(id, "active version"));
        }
        Some(_) => {}
        None => {
            target.upsert_project(&project.spec, project.created_unix_ms, &project.active_version, &|_| false)?;
        }
    }
    let present = target.versions(id)?;
    for version in source.versions(id)?.into_iter().rev() {
        match present.iter().find(|v| v.version == version.version) {
            Some(existing) if *existing != version => {
                return Err(conflict(id, format!("manifest of {}", version.version)));
            }
            Some(_) => {}
            None => target.record_version(
                id,
                &version.version,
                version.number,
                &version.manifest,
                version.created_unix_ms,
            )?,
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
        target.save_job(&job.job_id, id, job.finished, &job.record, job.created_unix_ms)?;
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
    if target.jobs(id, usize::MAX)? != jobs {
        return Err(mismatch("jobs"));
    }
    counts.versions = versions.len() as u64;
    counts.jobs = jobs.len() as u64;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        projects::spec::tests::spec,
        store::{conformance::postgres_database, postgres::PostgresCatalog, sqlite::SqliteCatalog},
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
            source.record_version("cars", &format!("v{n}"), n, &format!("manifest {n}"), 10 * i64::from(n)).unwrap();
        }
        source.activate_version("cars", "v2", &|_, _| true).unwrap();
        source.save_job("job-1", "cars", true, "done", 5).unwrap();
        source.save_job("job-2", "cars", false, "running", 6).unwrap();
        source
    }

    #[test]
    fn a_migration_copies_everything_verifies_it_and_a_rerun_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(dir.path());
        let target = PostgresCatalog::open(&postgres_database()).unwrap();
        let expected = Migrated { projects: 2, examples: 2501, versions: 3, jobs: 2 };
        assert_eq!(migrate(&source, &target).unwrap(), expected);
        assert_eq!(target.projects().unwrap(), source.projects().unwrap(), "specs, creation times, active versions");
        assert_eq!(target.project("cars").unwrap().unwrap().active_version, "v2");
        assert_eq!(target.unfinished_jobs().unwrap(), ["running"]);
        assert_eq!(target.next_version_number("cars").unwrap(), 4);
        assert_eq!(migrate(&source, &target).unwrap(), expected, "idempotent");
        // The source grew: a rerun copies what is new.
        source.upsert_examples("boats", &[example(10)]).unwrap();
        assert_eq!(migrate(&source, &target).unwrap().examples, 2502);
    }

    #[test]
    fn a_target_that_holds_a_project_differently_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(dir.path());
        let target = PostgresCatalog::open(&postgres_database()).unwrap();
        let mut other = spec();
        other.classes.push("bus".into());
        target.upsert_project(&other, 111, "untrained", &|_| false).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        let expected = "project cars: the target already holds it with another spec; nothing of it was changed";
        assert_eq!(error.to_string(), expected);
        assert_eq!(target.project("cars").unwrap().unwrap().spec, other);
        assert!(target.examples("cars", "", 10).unwrap().is_empty());
        // The projects before it (ordered by id) were copied whole.
        assert_eq!(target.examples("boats", "", 10).unwrap().len(), 1);
        // A version recorded differently is a conflict too.
        target.delete_project("cars").unwrap();
        target.upsert_project(&spec(), 111, "v2", &|_| false).unwrap();
        target.record_version("cars", "v1", 1, "another manifest", 10).unwrap();
        let error = migrate(&source, &target).unwrap_err();
        assert!(matches!(&error, MigrateError::Conflict { what, .. } if what == "manifest of v1"), "{error}");
    }
}
