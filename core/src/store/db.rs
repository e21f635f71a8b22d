//! The SQLite index (`<data-dir>/alps.db`, WAL mode). Calls are synchronous and short; async
//! callers run them on the blocking pool.

use std::{path::Path, sync::Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::Failure;
use crate::projects::ProjectSpec;

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
];

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O error, corruption, disk full).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be decoded (written by an incompatible version).
    #[error("stored project {id} is unreadable: {source}")]
    Corrupt {
        /// The project.
        id: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Whether trying again may help: SQLite busy or locked (another process holds the
    /// database) is transient, a full disk is [`Failure::Full`], the rest (I/O errors,
    /// corruption) permanent, as for blobs ([`Failure::of_io`]).
    pub fn failure(&self) -> Failure {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull};
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => match error.code {
                DatabaseBusy | DatabaseLocked => Failure::Transient,
                DiskFull => Failure::Full,
                _ => Failure::Permanent,
            },
            Self::Sqlite(_) | Self::Corrupt { .. } => Failure::Permanent,
        }
    }
}

/// A labelled example as stored (its sample bytes are in the blob store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleRow {
    /// Client-side identity (e.g. the Label Studio task id).
    pub external_id: String,
    /// Class name.
    pub class_name: String,
    /// SHA-256 of the sample bytes (blob name).
    pub sha256: String,
    /// Size of the sample bytes.
    pub size_bytes: u64,
    /// `Some([C, H, W])` when the sample is a raw little-endian f32 tensor, `None` for an
    /// encoded image.
    pub tensor_shape: Option<Vec<u64>>,
    /// Free-form metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Last insert or change, milliseconds since the Unix epoch.
    pub updated_unix_ms: i64,
    /// The client's version of the label; a lower one never replaces it (0 = unversioned).
    pub label_revision: u64,
}

/// What an example stores, as compared by an upsert: class name, sample sha256, tensor shape
/// and metadata (both as JSON).
type StoredContent = (String, String, Option<String>, String);

/// What an upsert of examples did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpsertCounts {
    /// New external ids.
    pub inserted: u64,
    /// Existing ids whose class, sample or metadata changed.
    pub updated: u64,
    /// Replays identical to what was stored.
    pub unchanged: u64,
    /// Updates older than the stored label (a lower, non-zero label revision): not applied.
    pub stale: u64,
}

/// What [`Database::activate_version`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The version is active now.
    Activated,
    /// The project or the version does not exist.
    NoSuchVersion,
    /// The version does not fit the project's stored spec; nothing changed.
    Unfit,
}

/// A stored project row.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredProject {
    /// The specification.
    pub spec: ProjectSpec,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// The active model version (e.g. `v3`, or `untrained`).
    pub active_version: String,
}

/// How long a statement waits for a lock held by another process before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The database of one data directory: one connection for writes and one, read-only, for
/// reads, so that a read never waits behind a write that waits for a lock (WAL lets readers
/// go on while another connection writes).
#[derive(Debug)]
pub struct Database {
    // Declared first, dropped first: the writer closes last, which checkpoints the WAL into
    // alps.db and removes it.
    reader: Mutex<Connection>,
    connection: Mutex<Connection>,
}

impl Database {
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
        let transaction = connection.transaction()?;
        for migration in &MIGRATIONS[applied.min(MIGRATIONS.len())..] {
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

    /// Inserts or replaces a project, in one transaction; returns whether it was new. A new
    /// project starts at `initial_version`. An existing one keeps its creation time, and its
    /// active version unless `starts_over(stored spec)` says that versions trained for the
    /// stored spec cannot serve the new one (or the stored spec is unreadable): then it starts
    /// over at `initial_version` too, in the same transaction, so that no crash can leave a
    /// new spec with an old version that does not fit it.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn upsert_project(
        &self,
        spec: &ProjectSpec,
        now_unix_ms: i64,
        initial_version: &str,
        starts_over: impl FnOnce(&ProjectSpec) -> bool,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(spec).map_err(|source| StoreError::Corrupt { id: spec.id.clone(), source })?;
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
                let stored = serde_json::from_str::<ProjectSpec>(&stored);
                if stored.as_ref().map_or(true, starts_over) {
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

    /// One project, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    pub fn project(&self, id: &str) -> Result<Option<StoredProject>, StoreError> {
        let row = self
            .reader()
            .query_row("SELECT spec, created_unix_ms, active_version FROM projects WHERE id = ?1", params![id], |row| {
                Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        row.map(|(json, created_unix_ms, active_version)| decode(id, &json, created_unix_ms, active_version))
            .transpose()
    }

    /// Every project, ordered by id.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    pub fn projects(&self) -> Result<Vec<StoredProject>, StoreError> {
        let connection = self.reader();
        let mut statement =
            connection.prepare("SELECT id, spec, created_unix_ms, active_version FROM projects ORDER BY id")?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?)))?;
        let mut projects = Vec::new();
        for row in rows {
            let (id, json, created, active) = row?;
            projects.push(decode(&id, &json, created, active)?);
        }
        Ok(projects)
    }

    /// Deletes a project; returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn delete_project(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.connection().execute("DELETE FROM projects WHERE id = ?1", params![id])? == 1)
    }
}

impl Database {
    /// Inserts or updates `examples` of `project` in one transaction, by external id.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure (nothing is written then).
    pub fn upsert_examples(&self, project: &str, examples: &[ExampleRow]) -> Result<UpsertCounts, StoreError> {
        let mut connection = self.connection();
        let transaction = Self::write_transaction(&mut connection)?;
        let mut counts = UpsertCounts::default();
        for example in examples {
            let shape = example.tensor_shape.as_ref().map(|s| serde_json::json!(s).to_string());
            let metadata = serde_json::json!(example.metadata).to_string();
            let existing: Option<(StoredContent, i64)> = transaction
                .query_row(
                    "SELECT class_name, sha256, tensor_shape, metadata, label_revision FROM examples
                     WHERE project_id = ?1 AND external_id = ?2",
                    params![project, example.external_id],
                    |row| Ok(((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?), row.get(4)?)),
                )
                .optional()?;
            let revision = example.label_revision as i64;
            match existing {
                Some((_, stored)) if example.label_revision != 0 && example.label_revision < stored as u64 => {
                    counts.stale += 1;
                    continue;
                }
                Some((row, stored))
                    if row == (example.class_name.clone(), example.sha256.clone(), shape.clone(), metadata.clone()) =>
                {
                    counts.unchanged += 1;
                    if stored != revision {
                        transaction.execute(
                            "UPDATE examples SET label_revision = ?3 WHERE project_id = ?1 AND external_id = ?2",
                            params![project, example.external_id, revision],
                        )?;
                    }
                    continue;
                }
                Some(_) => counts.updated += 1,
                None => counts.inserted += 1,
            }
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

    /// Deletes examples of `project` by external id; returns (deleted, not found).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn delete_examples(&self, project: &str, external_ids: &[String]) -> Result<(u64, u64), StoreError> {
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

    /// Up to `limit` examples of `project` with external ids after `after`, ordered by id.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    pub fn examples(&self, project: &str, after: &str, limit: usize) -> Result<Vec<ExampleRow>, StoreError> {
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
            let corrupt = |source| StoreError::Corrupt { id: format!("{project}/{external_id}"), source };
            examples.push(ExampleRow {
                tensor_shape: shape.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
                metadata: serde_json::from_str(&metadata).map_err(corrupt)?,
                external_id,
                class_name,
                sha256,
                size_bytes: size as u64,
                updated_unix_ms,
                label_revision: revision as u64,
            });
        }
        Ok(examples)
    }

    /// The sample blobs (sha256) some example of some project references.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare("SELECT DISTINCT sha256 FROM examples")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Examples of `project` per class name.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn count_examples(&self, project: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let connection = self.reader();
        let mut statement = connection
            .prepare("SELECT class_name, COUNT(*) FROM examples WHERE project_id = ?1 GROUP BY class_name")?;
        let rows = statement
            .query_map(params![project], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Database {
    /// The next version number of `project` (1 for the first).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn next_version_number(&self, project: &str) -> Result<u32, StoreError> {
        let max: Option<u32> = self.reader().query_row(
            "SELECT MAX(number) FROM model_versions WHERE project_id = ?1",
            params![project],
            |row| row.get(0),
        )?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Records a version (its files are already in place), inactive.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure; nothing is recorded then.
    pub fn record_version(
        &self,
        project: &str,
        version: &str,
        number: u32,
        manifest: &str,
        created_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.connection().execute(
            "INSERT INTO model_versions (project_id, version, number, manifest, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![project, version, number, manifest, created_unix_ms],
        )?;
        Ok(())
    }

    /// Manifests (JSON) of `project`'s versions, newest first.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn versions(&self, project: &str) -> Result<Vec<String>, StoreError> {
        let connection = self.reader();
        let mut statement =
            connection.prepare("SELECT manifest FROM model_versions WHERE project_id = ?1 ORDER BY number DESC")?;
        let rows = statement.query_map(params![project], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets `project`'s active version without checking that a stored model version has that
    /// name: tests use it to make a project look trained.
    #[cfg(test)]
    pub(crate) fn reset_active_version(&self, project: &str, version: &str) -> Result<(), StoreError> {
        self.connection()
            .execute("UPDATE projects SET active_version = ?2 WHERE id = ?1", params![project, version])?;
        Ok(())
    }

    /// Makes `version` the active version of `project` if `fits(its manifest JSON, the stored
    /// spec)`, in one transaction: a spec changed meanwhile (other classes or inputs) is seen.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable stored spec.
    pub fn activate_version(
        &self,
        project: &str,
        version: &str,
        fits: impl FnOnce(&str, &ProjectSpec) -> bool,
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
        let (Some(manifest), Some(spec)) = (manifest, spec) else { return Ok(Activation::NoSuchVersion) };
        if !fits(&manifest, &decode_spec(project, &spec)?) {
            return Ok(Activation::Unfit);
        }
        transaction.execute("UPDATE projects SET active_version = ?2 WHERE id = ?1", params![project, version])?;
        transaction.commit()?;
        Ok(Activation::Activated)
    }

    /// Inserts or replaces a training job record (JSON).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn save_job(
        &self,
        job_id: &str,
        project: &str,
        finished: bool,
        record: &str,
        created_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.connection().execute(
            "INSERT OR REPLACE INTO jobs (job_id, project_id, finished, record, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job_id, project, finished, record, created_unix_ms],
        )?;
        Ok(())
    }

    /// Job records (JSON) of `project`, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn jobs(&self, project: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare(
            "SELECT record FROM jobs WHERE project_id = ?1 ORDER BY created_unix_ms DESC, job_id DESC LIMIT ?2",
        )?;
        let rows = statement.query_map(params![project, limit as i64], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One job record (JSON).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn job(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .reader()
            .query_row("SELECT record FROM jobs WHERE job_id = ?1", params![job_id], |row| row.get(0))
            .optional()?)
    }

    /// Records (JSON) of jobs that never finished (queued or running when the process died).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn unfinished_jobs(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.reader();
        let mut statement = connection.prepare("SELECT record FROM jobs WHERE finished = 0")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn decode(id: &str, json: &str, created_unix_ms: i64, active_version: String) -> Result<StoredProject, StoreError> {
    Ok(StoredProject { spec: decode_spec(id, json)?, created_unix_ms, active_version })
}

/// Project `id`'s stored spec (JSON).
fn decode_spec(id: &str, json: &str) -> Result<ProjectSpec, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: id.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::spec::tests::spec;
    use std::sync::Arc;

    #[test]
    fn projects_survive_reopening_and_upsert_keeps_creation_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alps.db");
        let db = Database::open(&path).unwrap();
        assert!(db.upsert_project(&spec(), 1000, "untrained", |_| unreachable!("nothing stored")).unwrap());
        let mut changed = spec();
        changed.mc_iterations = 7;
        assert!(!db.upsert_project(&changed, 2000, "untrained", |_| false).unwrap());
        drop(db);
        let db = Database::open(&path).unwrap();
        let stored = db.project("cars").unwrap().unwrap();
        assert_eq!(stored.spec, changed);
        assert_eq!(stored.created_unix_ms, 1000);
        assert_eq!(stored.active_version, "untrained");
        assert_eq!(db.projects().unwrap().len(), 1);
        assert!(db.delete_project("cars").unwrap());
        assert!(!db.delete_project("cars").unwrap());
        assert!(db.project("cars").unwrap().is_none());
    }

    #[test]
    fn a_database_held_by_another_process_is_a_transient_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alps.db");
        let db = Database::open(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        db.connection().busy_timeout(std::time::Duration::from_millis(10)).unwrap();
        let error = db.upsert_project(&spec(), 0, "untrained", |_| false).unwrap_err();
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
        db.upsert_project(&spec(), 0, "untrained", |_| false).unwrap();
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert_eq!(StoreError::from(full).failure(), Failure::Full);
        let corrupt = serde_json::from_str::<ProjectSpec>("{").unwrap_err();
        assert_eq!(StoreError::Corrupt { id: "cars".into(), source: corrupt }.failure(), Failure::Permanent);
        let disk_full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(Failure::of_io(&disk_full), Failure::Full);
        assert_eq!(Failure::of_io(&std::io::Error::from(std::io::ErrorKind::PermissionDenied)), Failure::Permanent);
    }

    #[test]
    fn a_version_is_activated_only_if_it_fits_the_stored_spec() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("alps.db")).unwrap();
        db.upsert_project(&spec(), 0, "untrained", |_| false).unwrap();
        assert_eq!(db.activate_version("cars", "v1", |_, _| true).unwrap(), Activation::NoSuchVersion);
        db.record_version("cars", "v1", 1, r#"{"made": "for cars"}"#, 0).unwrap();
        let refused = db.activate_version("cars", "v1", |manifest, stored| {
            assert_eq!((manifest, stored), (r#"{"made": "for cars"}"#, &spec()), "the check sees both");
            false
        });
        assert_eq!(refused.unwrap(), Activation::Unfit);
        assert_eq!(db.project("cars").unwrap().unwrap().active_version, "untrained", "nothing changed");
        assert_eq!(db.activate_version("cars", "v1", |_, _| true).unwrap(), Activation::Activated);
        assert_eq!(db.project("cars").unwrap().unwrap().active_version, "v1");
        assert_eq!(db.activate_version("boats", "v1", |_, _| true).unwrap(), Activation::NoSuchVersion);
    }

    #[test]
    fn an_upsert_that_starts_over_resets_the_active_version_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("alps.db")).unwrap();
        db.upsert_project(&spec(), 0, "untrained", |_| false).unwrap();
        db.reset_active_version("cars", "v3").unwrap();
        let mut changed = spec();
        changed.mc_iterations = 7;
        db.upsert_project(&changed, 0, "untrained", |stored| {
            assert_eq!(stored, &spec(), "the decision sees the stored spec");
            false
        })
        .unwrap();
        assert_eq!(db.project("cars").unwrap().unwrap().active_version, "v3");
        changed.classes.push("bus".into());
        db.upsert_project(&changed, 0, "untrained", |_| true).unwrap();
        let stored = db.project("cars").unwrap().unwrap();
        assert_eq!((stored.spec, stored.active_version.as_str()), (changed.clone(), "untrained"));
        // An unreadable stored spec is replaced, and the project starts over.
        db.reset_active_version("cars", "v4").unwrap();
        db.connection().execute("UPDATE projects SET spec = '{' WHERE id = 'cars'", []).unwrap();
        db.upsert_project(&changed, 0, "untrained", |_| unreachable!("no spec to compare")).unwrap();
        let stored = db.project("cars").unwrap().unwrap();
        assert_eq!((stored.spec, stored.active_version.as_str()), (changed, "untrained"));
    }

    fn labelled(class: &str, revision: u64) -> ExampleRow {
        ExampleRow {
            external_id: "task-1".into(),
            class_name: class.into(),
            sha256: format!("{class:0>64}"),
            size_bytes: 4,
            tensor_shape: None,
            metadata: Default::default(),
            updated_unix_ms: 0,
            label_revision: revision,
        }
    }

    #[test]
    fn the_newest_label_revision_wins_in_every_arrival_order() {
        let updates = [labelled("a", 10), labelled("b", 20), labelled("c", 30)];
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        for order in orders {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::open(&dir.path().join("alps.db")).unwrap();
            db.upsert_project(&spec(), 0, "untrained", |_| false).unwrap();
            let mut stale = 0;
            for i in order {
                stale += db.upsert_examples("cars", &[updates[i].clone()]).unwrap().stale;
            }
            let stored = db.examples("cars", "", 10).unwrap();
            assert_eq!((stored[0].class_name.as_str(), stored[0].label_revision), ("c", 30), "order {order:?}");
            // Every update that arrived after a newer one was refused.
            let expected = order.iter().enumerate().filter(|&(k, &i)| order[..k].iter().any(|&j| j > i)).count() as u64;
            assert_eq!(stale, expected, "order {order:?}");
        }
    }

    #[test]
    fn unversioned_labels_always_apply_and_replays_refresh_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("alps.db")).unwrap();
        db.upsert_project(&spec(), 0, "untrained", |_| false).unwrap();
        db.upsert_examples("cars", &[labelled("a", 50)]).unwrap();
        let counts = db.upsert_examples("cars", &[labelled("b", 0)]).unwrap();
        assert_eq!((counts.updated, counts.stale), (1, 0), "revision 0 is last-write-wins");
        assert_eq!(db.examples("cars", "", 10).unwrap()[0].label_revision, 0);
        // The same label again with a revision: unchanged, but later updates are ordered by it.
        assert_eq!(db.upsert_examples("cars", &[labelled("b", 40)]).unwrap().unchanged, 1);
        assert_eq!(db.upsert_examples("cars", &[labelled("a", 39)]).unwrap().stale, 1);
        assert_eq!(db.examples("cars", "", 10).unwrap()[0].class_name, "b");
        // u64 revisions above i64::MAX keep their order.
        db.upsert_examples("cars", &[labelled("a", u64::MAX - 1)]).unwrap();
        assert_eq!(db.upsert_examples("cars", &[labelled("c", 1 << 63)]).unwrap().stale, 1);
        assert_eq!(db.examples("cars", "", 10).unwrap()[0].label_revision, u64::MAX - 1);
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
        let db = Database::open(&path).unwrap();
        let old = &db.examples("cars", "", 10).unwrap()[0];
        assert_eq!((old.external_id.as_str(), old.label_revision), ("old", 0));
    }
}
