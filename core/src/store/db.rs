//! The SQLite index (`<data-dir>/alps.db`, WAL mode). Calls are synchronous and short; async
//! callers run them on the blocking pool.

use std::{path::Path, sync::Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::projects::ProjectSpec;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE projects (
        id TEXT PRIMARY KEY NOT NULL,
        spec TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        active_version TEXT NOT NULL
    )"];

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
