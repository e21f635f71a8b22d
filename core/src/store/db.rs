//! The SQLite index (`<data-dir>/alps.db`, WAL mode). Calls are synchronous and short; async
//! callers run them on the blocking pool.

use std::{path::Path, sync::Mutex};

use rusqlite::{Connection, OptionalExtension, params};

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
}

/// What an upsert of examples did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpsertCounts {
    /// New external ids.
    pub inserted: u64,
    /// Existing ids whose class, sample or metadata changed.
    pub updated: u64,
    /// Replays identical to what was stored.
    pub unchanged: u64,
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

/// The database of one data directory.
#[derive(Debug)]
pub struct Database {
    connection: Mutex<Connection>,
}

impl Database {
    /// Opens (creating if needed) `path` and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError`] if the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
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
        Ok(Self { connection: Mutex::new(connection) })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Inserts or replaces a project; returns whether it was new. The creation time and active
    /// version of an existing project are kept.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn upsert_project(
        &self,
        spec: &ProjectSpec,
        now_unix_ms: i64,
        initial_version: &str,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(spec).map_err(|source| StoreError::Corrupt { id: spec.id.clone(), source })?;
        let connection = self.connection();
        let updated = connection.execute("UPDATE projects SET spec = ?2 WHERE id = ?1", params![spec.id, json])?;
        if updated == 1 {
            return Ok(false);
        }
        connection.execute(
            "INSERT INTO projects (id, spec, created_unix_ms, active_version) VALUES (?1, ?2, ?3, ?4)",
            params![spec.id, json, now_unix_ms, initial_version],
        )?;
        Ok(true)
    }

    /// One project, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    pub fn project(&self, id: &str) -> Result<Option<StoredProject>, StoreError> {
        let row = self
            .connection()
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
        let connection = self.connection();
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
        let transaction = connection.transaction()?;
        let mut counts = UpsertCounts::default();
        for example in examples {
            let shape = example.tensor_shape.as_ref().map(|s| serde_json::json!(s).to_string());
            let metadata = serde_json::json!(example.metadata).to_string();
            let existing: Option<(String, String, Option<String>, String)> = transaction
                .query_row(
                    "SELECT class_name, sha256, tensor_shape, metadata FROM examples WHERE project_id = ?1 AND external_id = ?2",
                    params![project, example.external_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            match existing {
                Some(row)
                    if row == (example.class_name.clone(), example.sha256.clone(), shape.clone(), metadata.clone()) =>
                {
                    counts.unchanged += 1;
                    continue;
                }
                Some(_) => counts.updated += 1,
                None => counts.inserted += 1,
            }
            transaction.execute(
                "INSERT OR REPLACE INTO examples
                 (project_id, external_id, class_name, sha256, size_bytes, tensor_shape, metadata, updated_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    project,
                    example.external_id,
                    example.class_name,
                    example.sha256,
                    example.size_bytes as i64,
                    shape,
                    metadata,
                    example.updated_unix_ms
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
        let transaction = connection.transaction()?;
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
        let connection = self.connection();
        let mut statement = connection.prepare(
            "SELECT external_id, class_name, sha256, size_bytes, tensor_shape, metadata, updated_unix_ms
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
            ))
        })?;
        let mut examples = Vec::new();
        for row in rows {
            let (external_id, class_name, sha256, size, shape, metadata, updated_unix_ms) = row?;
            let corrupt = |source| StoreError::Corrupt { id: format!("{project}/{external_id}"), source };
            examples.push(ExampleRow {
                tensor_shape: shape.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
                metadata: serde_json::from_str(&metadata).map_err(corrupt)?,
                external_id,
                class_name,
                sha256,
                size_bytes: size as u64,
                updated_unix_ms,
            });
        }
        Ok(examples)
    }

    /// Examples of `project` per class name.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn count_examples(&self, project: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let connection = self.connection();
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
        let max: Option<u32> = self.connection().query_row(
            "SELECT MAX(number) FROM model_versions WHERE project_id = ?1",
            params![project],
            |row| row.get(0),
        )?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Records a version (its files are already in place) and, if `activate`, makes it the
    /// project's active version, in one transaction.
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
        activate: bool,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT INTO model_versions (project_id, version, number, manifest, created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![project, version, number, manifest, created_unix_ms],
        )?;
        if activate {
            transaction.execute("UPDATE projects SET active_version = ?2 WHERE id = ?1", params![project, version])?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Manifests (JSON) of `project`'s versions, newest first.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn versions(&self, project: &str) -> Result<Vec<String>, StoreError> {
        let connection = self.connection();
        let mut statement =
            connection.prepare("SELECT manifest FROM model_versions WHERE project_id = ?1 ORDER BY number DESC")?;
        let rows = statement.query_map(params![project], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets `project`'s active version without checking that a stored model version has that name
    /// (for "untrained", which has none).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn reset_active_version(&self, project: &str, version: &str) -> Result<(), StoreError> {
        self.connection()
            .execute("UPDATE projects SET active_version = ?2 WHERE id = ?1", params![project, version])?;
        Ok(())
    }

    /// Makes `version` the active version of `project`; returns whether the version exists.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn activate_version(&self, project: &str, version: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        let exists: Option<i64> = transaction
            .query_row(
                "SELECT 1 FROM model_versions WHERE project_id = ?1 AND version = ?2",
                params![project, version],
                |row| row.get(0),
            )
            .optional()?;
        if exists.is_none() {
            return Ok(false);
        }
        transaction.execute("UPDATE projects SET active_version = ?2 WHERE id = ?1", params![project, version])?;
        transaction.commit()?;
        Ok(true)
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
        let connection = self.connection();
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
            .connection()
            .query_row("SELECT record FROM jobs WHERE job_id = ?1", params![job_id], |row| row.get(0))
            .optional()?)
    }

    /// Records (JSON) of jobs that never finished (queued or running when the process died).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    pub fn unfinished_jobs(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare("SELECT record FROM jobs WHERE finished = 0")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn decode(id: &str, json: &str, created_unix_ms: i64, active_version: String) -> Result<StoredProject, StoreError> {
    let spec = serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: id.to_owned(), source })?;
    Ok(StoredProject { spec, created_unix_ms, active_version })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::spec::tests::spec;

    #[test]
    fn projects_survive_reopening_and_upsert_keeps_creation_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alps.db");
        let db = Database::open(&path).unwrap();
        assert!(db.upsert_project(&spec(), 1000, "untrained").unwrap());
        let mut changed = spec();
        changed.mc_iterations = 7;
        assert!(!db.upsert_project(&changed, 2000, "untrained").unwrap());
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
}
