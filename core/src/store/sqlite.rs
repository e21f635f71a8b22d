//! The embedded catalogue backend: SQLite in `<data-dir>/alps.db`, WAL mode.

use std::{path::Path, sync::Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{
    Failure,
    catalog::{
        self, Activation, Catalog, ExampleRow, Fence, JobRow, StoreError, StoredExample, Upsert, UpsertCounts,
        VersionRow, encode_spec,
    },
};
use crate::{
    projects::spec::{Project, ProjectSpec},
    training::record::{JobRecord, Manifest},
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE projects (
        id TEXT PRIMARY KEY NOT NULL,
        spec TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        active_version TEXT NOT NULL
    )",
    "CREATE TABLE examples (
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        external_id TEXT NOT NULL,
        class_name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        tensor_shape TEXT,
        metadata TEXT NOT NULL,
        updated_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (project_id, external_id)
    )",
    "CREATE TABLE model_versions (
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        version TEXT NOT NULL,
        number INTEGER NOT NULL,
        manifest TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (project_id, version)
    );
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY NOT NULL,
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        finished INTEGER NOT NULL,
        record TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL
    )",
    // The client's label revision (a u64 stored bit for bit in SQLite's i64), 0 = unversioned.
    "ALTER TABLE examples ADD COLUMN label_revision INTEGER NOT NULL DEFAULT 0",
    // The catalogue's id, which its data dir records (see `DataDir::bind_catalogue`), and the id
    // of the data dir that holds its files (see `Catalog::bind_data_dir`).
    "CREATE TABLE catalogue (id TEXT NOT NULL, data_dir TEXT);
    INSERT INTO catalogue (id) VALUES (lower(hex(randomblob(16))))",
    // A cancellation asked of the replica that runs a job (see `Catalog::request_cancel`).
    "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    // A trigger waiting for the server that trains its project, one per project (see
    // `Catalog::enqueue_job`).
    "ALTER TABLE jobs ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX one_queued_job ON jobs (project_id) WHERE queued = 1",
    // When the active version was last activated (see `Project::activated_unix_ms`).
    "ALTER TABLE projects ADD COLUMN activated_unix_ms INTEGER NOT NULL DEFAULT 0",
];

/// Makes `?2` project `?1`'s active version; the activation time `?3` changes only if it was
/// not active already, so that activating the active version again changes nothing.
const ACTIVATE_SQLITE: &str = "UPDATE projects SET active_version = ?2,
    activated_unix_ms = CASE WHEN active_version = ?2 THEN activated_unix_ms ELSE ?3 END WHERE id = ?1";

/// A row of `SELECT job_id, finished, queued, record, created_unix_ms FROM jobs`.
fn job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let record: String = row.get(3)?;
    Ok(JobRow::decode(row.get(0)?, row.get(1)?, row.get(2)?, &record, row.get(4)?))
}

/// How long a statement waits for a lock held by another process before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a SQLite error means to the caller: busy or locked (another process holds the
/// database) is transient, a full disk [`Failure::Full`], the rest permanent.
pub(super) fn failure(error: &rusqlite::Error) -> Failure {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull};
    match error {
        rusqlite::Error::SqliteFailure(error, _) => match error.code {
            DatabaseBusy | DatabaseLocked => Failure::Transient,
            DiskFull => Failure::Full,
            _ => Failure::Permanent,
        },
        _ => Failure::Permanent,
    }
}

/// The catalogue of one data directory: one connection for writes and one, read-only, for
/// reads, so that a read never waits behind a write that waits for a lock (WAL lets readers
/// go on while another connection writes).
#[derive(Debug)]
pub struct SqliteCatalog {
    // Declared first, dropped first: the writer closes last, which checkpoints the WAL into
    // alps.db and removes it.
    reader: Mutex<Connection>,
    connection: Mutex<Connection>,
}

impl SqliteCatalog {
    /// Opens (creating if needed) the database file `path` and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
        // A write waits this long for a lock another process holds (a backup, an operator's
        // sqlite3 shell), then fails as transient: the client gets UNAVAILABLE and retries.
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // Durable on power loss with WAL while still fast (SQLite docs, "WAL mode").
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        let applied: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::NewerSchema { found: applied, known: MIGRATIONS.len() });
        }
        let transaction = connection.transaction()?;
        for migration in &MIGRATIONS[applied..] {
            transaction.execute_batch(migration)?;
        }
        transaction.pragma_update(None, "user_version", MIGRATIONS.len())?;
        transaction.commit()?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = Connection::open_with_flags(path, flags)?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self { reader: Mutex::new(reader), connection: Mutex::new(connection) })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A write transaction that takes the write lock at once: one that read first and then
    /// wrote could fail without waiting if another process wrote in between (WAL's
    /// "busy snapshot").
    fn write_transaction(connection: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        connection.transaction_with_behavior(TransactionBehavior::Immediate)
    }
}

impl Catalog for SqliteCatalog {
    fn upsert_project(
        &self,
        spec: &ProjectSpec,
        now_unix_ms: i64,
        initial_version: &str,
        starts_over: &(dyn Fn(&ProjectSpec) -> bool + Sync),
    ) -> Result<bool, StoreError> {
        let json = encode_spec(spec)?;
        let mut connection = self.connection();
        let transaction = Self::write_transaction(&mut connection)?;
        let stored: Option<String> = transaction
            .query_row("SELECT spec FROM projects WHERE id = ?1", params![spec.id], |row| row.get(0))
            .optional()?;
        let created = match stored {
            None => {
                transaction.execute(
                    "INSERT INTO projects (id, spec, created_unix_ms, active_version) VALUES (?1, ?2, ?3, ?4)",
                    params![spec.id, json, now_unix_ms, initial_version],
                )?;
                true
            }
            Some(stored) => {
                if catalog::starts_over(&stored, starts_over) {
                    transaction.execute(
                        "UPDATE projects SET spec = ?2, active_version = ?3 WHERE id = ?1",
                        params![spec.id, json, initial_version],
                    )?;
                } else {
                    transaction.execute("UPDATE projects SET spec = ?2 WHERE id = ?1", params![spec.id, json])?;
                }
                false
            }
        };
        transaction.commit()?;
        Ok(created)
    }

    fn identity(&self) -> Result<String, StoreError> {
        Ok(self.reader().query_row("SELECT id FROM catalogue", [], |row| row.get(0))?)
    }

    fn bind_data_dir(&self, data_dir: &str) -> Result<Option<String>, StoreError> {
        let connection = self.connection();
        connection.execute("UPDATE catalogue SET data_dir = ?1 WHERE data_dir IS NULL", params![data_dir])?;
        let bound: String = connection.query_row("SELECT data_dir FROM catalogue", [], |row| row.get(0))?;
        Ok((bound != data_dir).then_some(bound))
    }

    fn data_dir(&self) -> Result<Option<String>, StoreError> {
        Ok(self.reader().query_row("SELECT data_dir FROM catalogue", [], |row| row.get(0))?)
    }

    fn project(&self, id: &str) -> Result<Option<Project>, StoreError> {
        let row = self
            .reader()
            .query_row(
                "SELECT spec, created_unix_ms, active_version, activated_unix_ms FROM projects WHERE id = ?1",
                params![id],
                |row| Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        row.map(|(json, created, active, activated)| catalog::decode_project(id, &json, created, active, activated))
            .transpose()
    }

    fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let connection = self.reader();
        let mut statement = connection
            .prepare("SELECT id, spec, created_unix_ms, active_version, activated_unix_ms FROM projects ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })?;
        let mut projects = Vec::new();
        for row in rows {
            let (id, json, created, active, activated) = row?;
            projects.push(catalog::decode_project(&id, &json, created, active, activated)?);
        }
        Ok(projects)
    }

    fn delete_project(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.connection().execute("DELETE FROM projects WHERE id = ?1", params![id])? == 1)
    }

    fn upsert_examples(&self, project: &str, examples: &[ExampleRow]) -> Result<UpsertCounts, StoreError> {
        let mut connection = self.connection();
        let transaction = Self::write_transaction(&mut connection)?;
        let mut counts = UpsertCounts::default();
        for example in examples {
            let stored = transaction
                .query_row(
                    "SELECT class_name, sha256, tensor_shape, metadata, label_revision FROM examples
                     WHERE project_id = ?1 AND external_id = ?2",
                    params![project, example.external_id],
                    |row| {
                        let content = (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
                        Ok(StoredExample { content, label_revision: row.get::<_, i64>(4)? as u64 })
                    },
                )
                .optional()?;
            let upsert = Upsert::of(example, stored);
            upsert.count(&mut counts);
            let revision = example.label_revision as i64;
            match upsert {
                Upsert::Stale | Upsert::Unchanged(false) => continue,
                Upsert::Unchanged(true) => {
                    transaction.execute(
                        "UPDATE examples SET label_revision = ?3 WHERE project_id = ?1 AND external_id = ?2",
                        params![project, example.external_id, revision],
                    )?;
                    continue;
                }
                Upsert::Insert | Upsert::Update => {}
            }
            let (shape, metadata) = example.encoded();
            transaction.execute(
                "INSERT OR REPLACE INTO examples
                 (project_id, external_id, class_name, sha256, size_bytes, tensor_shape, metadata, updated_unix_ms,
                  label_revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    project,
                    example.external_id,
                    example.class_name,
                    example.sha256,
                    example.size_bytes as i64,
                    shape,
                    metadata,
                    example.updated_unix_ms,
                    revision
                ],
            )?;
        }
        transaction.commit()?;
        Ok(counts)
    }

    fn delete_examples(&self, project: &str, external_ids: &[String]) -> Result<(u64, u64), StoreError> {
        let mut connection = self.connection();
        let transaction = Self::write_transaction(&mut connection)?;
        let mut deleted = 0;
        for id in external_ids {
            deleted += transaction
                .execute("DELETE FROM examples WHERE project_id = ?1 AND external_id = ?2", params![project, id])?
                as u64;
        }
        transaction.commit()?;
        Ok((deleted, external_ids.len() as u64 - deleted))
    }

    fn examples(&self, project: &str, after: &str, limit: usize) -> Result<Vec<ExampleRow>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare(
            "SELECT external_id, class_name, sha256, size_bytes, tensor_shape, metadata, updated_unix_ms, label_revision
             FROM examples WHERE project_id = ?1 AND external_id > ?2 ORDER BY external_id LIMIT ?3",
        )?;
        let rows = statement.query_map(params![project, after, limit as i64], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, i64>(7)?,
            ))
        })?;
        let mut examples = Vec::new();
        for row in rows {
            let (external_id, class_name, sha256, size, shape, metadata, updated_unix_ms, revision) = row?;
            examples.push(ExampleRow::decode(
                project,
                external_id,
                class_name,
                sha256,
                size,
                shape,
                &metadata,
                updated_unix_ms,
                revision,
            )?);
        }
        Ok(examples)
    }

    fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare("SELECT DISTINCT sha256 FROM examples")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count_examples(&self, project: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let connection = self.reader();
        let mut statement = connection
            .prepare("SELECT class_name, COUNT(*) FROM examples WHERE project_id = ?1 GROUP BY class_name")?;
        let rows = statement
            .query_map(params![project], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
    fn next_version_number(&self, project: &str) -> Result<u32, StoreError> {
        let max: Option<u32> = self.reader().query_row(
            "SELECT MAX(number) FROM model_versions WHERE project_id = ?1",
            params![project],
            |row| row.get(0),
        )?;
        Ok(max.unwrap_or(0) + 1)
    }

    fn record_version(&self, manifest: &Manifest, created_unix_ms: i64) -> Result<(), StoreError> {
        let json = catalog::encode_manifest(manifest)?;
        self.connection().execute(
            "INSERT INTO model_versions (project_id, version, number, manifest, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![manifest.project_id, manifest.version, manifest.number, json, created_unix_ms],
        )?;
        Ok(())
    }

    fn versions(&self, project: &str) -> Result<Vec<VersionRow>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare(
            "SELECT version, number, manifest, created_unix_ms FROM model_versions WHERE project_id = ?1
             ORDER BY number DESC",
        )?;
        let rows = statement.query_map(params![project], |row| {
            Ok((row.get::<_, String>(0)?, row.get(1)?, row.get::<_, String>(2)?, row.get(3)?))
        })?;
        rows.map(|row| {
            let (version, number, manifest, created_unix_ms) = row?;
            let manifest = catalog::decode_manifest(project, &version, &manifest)?;
            Ok(VersionRow { version, number, manifest, created_unix_ms })
        })
        .collect()
    }

    #[cfg(test)]
    fn reset_active_version(&self, project: &str, version: &str) -> Result<(), StoreError> {
        self.connection()
            .execute("UPDATE projects SET active_version = ?2 WHERE id = ?1", params![project, version])?;
        Ok(())
    }

    fn activate_version(
        &self,
        project: &str,
        version: &str,
        fits: &(dyn Fn(&Manifest, &ProjectSpec) -> bool + Sync),
        // One server uses a SQLite catalogue: nothing to fence.
        _fence: Option<Fence<'_>>,
    ) -> Result<Activation, StoreError> {
        let mut connection = self.connection();
        let transaction = Self::write_transaction(&mut connection)?;
        let manifest: Option<String> = transaction
            .query_row(
                "SELECT manifest FROM model_versions WHERE project_id = ?1 AND version = ?2",
                params![project, version],
                |row| row.get(0),
            )
            .optional()?;
        let spec: Option<String> = transaction
            .query_row("SELECT spec FROM projects WHERE id = ?1", params![project], |row| row.get(0))
            .optional()?;
        let outcome = catalog::activation(project, version, manifest.as_deref(), spec.as_deref(), fits)?;
        if outcome == Activation::Activated {
            transaction.execute(ACTIVATE_SQLITE, params![project, version, crate::clock::now_unix_ms()])?;
            transaction.commit()?;
        }
        Ok(outcome)
    }

    fn save_job(&self, record: &JobRecord) -> Result<(), StoreError> {
        let json = catalog::encode_job(record)?;
        // An update, not a replacement: a cancellation asked meanwhile stays. An ended job is no
        // longer queued.
        self.connection().execute(
            "INSERT INTO jobs (job_id, project_id, finished, record, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job_id) DO UPDATE SET project_id = excluded.project_id, finished = excluded.finished,
              record = excluded.record, created_unix_ms = excluded.created_unix_ms,
              queued = (jobs.queued AND NOT excluded.finished)
             WHERE jobs.finished = 0",
            params![record.job_id, record.project_id, record.state.is_terminal(), json, record.created_unix_ms],
        )?;
        Ok(())
    }

    fn request_cancel(&self, job_id: &str) -> Result<bool, StoreError> {
        let asked = self
            .connection()
            .execute("UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?1 AND finished = 0", params![job_id])?;
        Ok(asked == 1)
    }

    fn cancel_requested(&self, job_id: &str) -> Result<bool, StoreError> {
        let connection = self.reader();
        let asked = connection
            .query_row("SELECT cancel_requested FROM jobs WHERE job_id = ?1", params![job_id], |row| row.get(0))
            .optional()?;
        Ok(asked.unwrap_or(false))
    }

    fn jobs(&self, project: &str, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare(
            "SELECT job_id, finished, queued, record, created_unix_ms FROM jobs WHERE project_id = ?1
             ORDER BY created_unix_ms DESC, job_id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![project, limit], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let json: Option<String> = self
            .reader()
            .query_row("SELECT record FROM jobs WHERE job_id = ?1", params![job_id], |row| row.get(0))
            .optional()?;
        json.map(|json| catalog::decode_job(job_id, &json)).transpose()
    }

    fn unfinished_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let connection = self.reader();
        let mut statement = connection
            .prepare("SELECT job_id, finished, queued, record, created_unix_ms FROM jobs WHERE finished = 0")?;
        let rows = statement.query_map([], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn enqueue_job(&self, record: &JobRecord) -> Result<Option<JobRecord>, StoreError> {
        let json = catalog::encode_job(record)?;
        let mut connection = self.connection();
        let transaction = Self::write_transaction(&mut connection)?;
        let queued: Option<(String, String)> = transaction
            .query_row(
                "SELECT job_id, record FROM jobs WHERE project_id = ?1 AND queued = 1",
                params![record.project_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((job_id, queued)) = queued else {
            transaction.execute(
                "INSERT INTO jobs (job_id, project_id, finished, queued, record, created_unix_ms)
                 VALUES (?1, ?2, 0, 1, ?3, ?4)",
                params![record.job_id, record.project_id, json, record.created_unix_ms],
            )?;
            transaction.commit()?;
            return Ok(None);
        };
        catalog::decode_job(&job_id, &queued).map(Some)
    }

    fn take_queued_job(&self, project: &str) -> Result<Option<JobRecord>, StoreError> {
        let taken: Option<(String, String)> = self
            .connection()
            .query_row(
                "UPDATE jobs SET queued = 0 WHERE project_id = ?1 AND queued = 1 RETURNING job_id, record",
                params![project],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        taken.map(|(job_id, json)| catalog::decode_job(&job_id, &json)).transpose()
    }

    fn cancel_queued_job(&self, ended: &JobRecord) -> Result<bool, StoreError> {
        let json = catalog::encode_job(ended)?;
        let ended = self.connection().execute(
            "UPDATE jobs SET queued = 0, finished = 1, record = ?2 WHERE job_id = ?1 AND queued = 1",
            params![ended.job_id, json],
        )?;
        Ok(ended == 1)
    }

    fn end_unreadable_job(&self, job_id: &str, project: &str) -> Result<bool, StoreError> {
        let ended = self.connection().execute(
            "UPDATE jobs SET finished = 1 WHERE job_id = ?1 AND project_id = ?2 AND finished = 0 AND queued = 0",
            params![job_id, project],
        )?;
        Ok(ended == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::spec::tests::spec;
    use std::sync::Arc;

    #[test]
    fn a_database_held_by_another_process_is_a_transient_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alps.db");
        let db = SqliteCatalog::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        db.connection().busy_timeout(std::time::Duration::from_millis(10)).unwrap();
        let error = db.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap_err();
        assert_eq!(error.failure(), Failure::Transient, "{error}");
        // Reads go on meanwhile, even while a write holds the writing connection.
        let db = Arc::new(db);
        let writing = db.connection();
        let (done, read) = std::sync::mpsc::channel();
        let reading = db.clone();
        std::thread::spawn(move || done.send(reading.projects().map(|p| p.len())).unwrap());
        let projects = read.recv_timeout(std::time::Duration::from_secs(10)).expect("a read waited for the writer");
        assert_eq!(projects.unwrap(), 0);
        drop(writing);
        other.execute_batch("ROLLBACK").unwrap();
        db.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert_eq!(StoreError::from(full).failure(), Failure::Full);
        let corrupt = serde_json::from_str::<ProjectSpec>("{").unwrap_err();
        assert_eq!(StoreError::Corrupt { id: "cars".into(), source: corrupt }.failure(), Failure::Permanent);
        let disk_full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(Failure::of_io(&disk_full), Failure::Full);
        assert_eq!(Failure::of_io(&std::io::Error::from(std::io::ErrorKind::PermissionDenied)), Failure::Permanent);
    }

    #[test]
    fn a_database_from_before_label_revisions_opens_with_unversioned_examples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alps.db");
        {
            let connection = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..3] {
                connection.execute_batch(migration).unwrap();
            }
            connection.pragma_update(None, "user_version", 3).unwrap();
            connection
                .execute(
                    "INSERT INTO projects VALUES ('cars', ?1, 0, 'untrained')",
                    params![serde_json::to_string(&spec()).unwrap()],
                )
                .unwrap();
            connection
                .execute(
                    "INSERT INTO examples VALUES ('cars', 'old', 'sedan', ?1, 4, NULL, '{}', 0)",
                    params!["0".repeat(64)],
                )
                .unwrap();
        }
        let db = SqliteCatalog::open(&path).unwrap();
        let old = &db.examples("cars", "", 10).unwrap()[0];
        assert_eq!((old.external_id.as_str(), old.label_revision), ("old", 0));
        // An installation from before catalogue ids gets one, and binds its data dir on its
        // first start; the id stays across restarts.
        let id = db.identity().unwrap();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(db.data_dir().unwrap(), None);
        let data_dir = super::super::DataDir::open(dir.path()).unwrap();
        assert_eq!(db.bind_data_dir(&data_dir.id().unwrap()).unwrap(), None);
        data_dir.bind_catalogue(&id).unwrap();
        drop(db);
        let reopened = SqliteCatalog::open(&path).unwrap();
        assert_eq!(reopened.identity().unwrap(), id);
        data_dir.bind_catalogue(&reopened.identity().unwrap()).unwrap();
        assert_eq!(reopened.bind_data_dir(&data_dir.id().unwrap()).unwrap(), None, "the same data dir");
    }
}
