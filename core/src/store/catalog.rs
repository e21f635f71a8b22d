//! The catalogue: projects, the example index, model versions and training jobs, behind one
//! interface ([`Catalog`]) with two backends: SQLite in the data directory
//! ([`super::sqlite`], the default) and PostgreSQL ([`super::postgres`], `--database-url`).
//! Both pass the same conformance suite (`store::conformance`).
//!
//! Calls are synchronous and short; async callers run them on the blocking pool. Sample bytes
//! and model files are not in the catalogue: it holds their sha256 names and manifests.

use std::time::Duration;

use crate::{
    projects::spec::{Project, ProjectSpec},
    training::record::{JobRecord, Manifest},
};

use super::{Failure, objects::Kind};

/// A catalogue failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O error, corruption, disk full, busy).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed or could not be reached.
    #[error("database error: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The database did not answer within a call's deadline: it is frozen, or the network
    /// drops its packets. What the call sent may still be applied once it answers again.
    #[error("the database did not answer within {0:?}; retry")]
    TimedOut(Duration),
    /// The call waited this long for its database session, busy with other calls, and gave
    /// up before sending anything.
    #[error("the database session stayed busy for {0:?}; retry")]
    SessionBusy(Duration),
    /// Another alps-server holds the PostgreSQL database (see [`super::postgres`]).
    #[error(
        "another alps-server uses this database (it holds the catalogue's lock); servers share a database only as \
         replicas, every one started with the same --object-store-url"
    )]
    Taken,
    /// The database was migrated by a newer alps-server.
    #[error(
        "the database's schema is version {found}, newer than this alps-server's ({known}): use a newer alps-server"
    )]
    NewerSchema {
        /// Migrations the database has.
        found: usize,
        /// Migrations this server knows.
        known: usize,
    },
    /// A collector on another replica removed an object this write names after it was
    /// written (the write took longer than the grace period): nothing was written.
    #[error(
        "a sample or model file this request wrote was removed by garbage collection before it was recorded; retry"
    )]
    Collected,
    /// Concurrent writers kept changing what a write depends on (a project's queued training
    /// job, taken and queued again by replicas) for every try.
    #[error("the catalogue changed under this write on every try; retry")]
    Contended,
    /// A stored row could not be decoded (written by an incompatible version).
    #[error("stored record of {id} is unreadable: {source}")]
    Corrupt {
        /// What the record is of: a project's id, `project/example`, a training job.
        id: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Whether trying again may help: busy, locked, unreachable or a serialization conflict
    /// is transient, a full disk is [`Failure::Full`], the rest (I/O errors, corruption,
    /// constraint violations) permanent, as for blobs ([`Failure::of_io`]).
    pub fn failure(&self) -> Failure {
        match self {
            Self::Sqlite(error) => super::sqlite::failure(error),
            Self::Postgres(error) => super::postgres::failure(error),
            Self::Contended | Self::Collected | Self::TimedOut(_) | Self::SessionBusy(_) => Failure::Transient,
            // Taken while serving: our session broke and another server took the lock (our own
            // old session's is taken back), so this server must not write.
            Self::Taken | Self::NewerSchema { .. } | Self::Corrupt { .. } => Failure::Permanent,
        }
    }
}

/// `error` and its causes, one after the other: the PostgreSQL client's own message is only
/// its kind ("db error"), the server's message is its cause.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
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

impl ExampleRow {
    /// The tensor shape and metadata as stored (JSON text).
    pub(super) fn encoded(&self) -> (Option<String>, String) {
        let shape = self.tensor_shape.as_ref().map(|s| serde_json::json!(s).to_string());
        (shape, serde_json::json!(self.metadata).to_string())
    }

    /// The row of example `external_id` of `project` from its stored columns.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
        project: &str,
        external_id: String,
        class_name: String,
        sha256: String,
        size_bytes: i64,
        shape: Option<String>,
        metadata: &str,
        updated_unix_ms: i64,
        label_revision: i64,
    ) -> Result<Self, StoreError> {
        let corrupt = |source| StoreError::Corrupt { id: format!("{project}/{external_id}"), source };
        Ok(Self {
            tensor_shape: shape.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
            metadata: serde_json::from_str(metadata).map_err(corrupt)?,
            external_id,
            class_name,
            sha256,
            size_bytes: size_bytes as u64,
            updated_unix_ms,
            // Stored bit for bit in a signed 64-bit column.
            label_revision: label_revision as u64,
        })
    }
}

/// What an example stores, as compared by an upsert: class name, sample sha256, tensor shape
/// and metadata (both as JSON), and its label revision.
#[derive(Clone)]
pub(super) struct StoredExample {
    pub content: (String, String, Option<String>, String),
    pub label_revision: u64,
}

/// What an upsert does with one example, given what is stored under its id.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Upsert {
    /// A new id: insert it.
    Insert,
    /// Its content changed: replace the row.
    Update,
    /// The same content: keep the row; store the new revision if `true`.
    Unchanged(bool),
    /// Older than the stored label (a lower, non-zero revision): change nothing.
    Stale,
}

impl Upsert {
    /// The decision both backends take, so that they count alike: the highest label revision
    /// wins whatever the arrival order; revision 0 is unversioned (last write wins).
    pub(super) fn of(example: &ExampleRow, stored: Option<StoredExample>) -> Self {
        let Some(stored) = stored else { return Self::Insert };
        if example.label_revision != 0 && example.label_revision < stored.label_revision {
            return Self::Stale;
        }
        let (shape, metadata) = example.encoded();
        if stored.content == (example.class_name.clone(), example.sha256.clone(), shape, metadata) {
            Self::Unchanged(stored.label_revision != example.label_revision)
        } else {
            Self::Update
        }
    }

    /// Adds this decision to `counts`.
    pub(super) fn count(&self, counts: &mut UpsertCounts) {
        match self {
            Self::Insert => counts.inserted += 1,
            Self::Update => counts.updated += 1,
            Self::Unchanged(_) => counts.unchanged += 1,
            Self::Stale => counts.stale += 1,
        }
    }
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
    /// Updates older than the stored label (a lower, non-zero label revision): not applied.
    pub stale: u64,
}

/// Proof that this server may collect garbage now, alone on its catalogue or the only collector
/// of the replicas (see [`Catalog::alone`]); dropping it lets another replica collect.
#[must_use = "the server may collect only while this lives"]
pub struct Alone<'a> {
    still: Option<Box<dyn Fn() -> bool + 'a>>,
    release: Option<Box<dyn FnOnce() + 'a>>,
}

impl<'a> Alone<'a> {
    /// For a server that is always alone.
    pub fn always() -> Self {
        Self { still: None, release: None }
    }

    /// Alone while `still` says so, until this is dropped, which calls `release`.
    pub fn until(still: impl Fn() -> bool + 'a, release: impl FnOnce() + 'a) -> Self {
        Self { still: Some(Box::new(still)), release: Some(Box::new(release)) }
    }

    /// Whether this server still may collect: a replica whose database session broke since may
    /// have let another start. Check before each removal.
    pub fn still(&self) -> bool {
        self.still.as_ref().is_none_or(|still| still())
    }
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A model version as stored (its files are in the models directory).
#[derive(Clone, Debug, PartialEq)]
pub struct VersionRow {
    /// Its name, e.g. `v3`.
    pub version: String,
    /// Its number within the project (1 for the first).
    pub number: u32,
    /// Its manifest (stored as JSON).
    pub manifest: Manifest,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

/// A training job as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRow {
    /// Its id.
    pub job_id: String,
    /// Whether it ended (succeeded, failed or cancelled).
    pub finished: bool,
    /// Whether it waits for a server to take it ([`Catalog::enqueue_job`]): a trigger not yet
    /// taken by the server that trains its project.
    pub queued: bool,
    /// Its record; `None` when this build cannot read it (another build wrote it, see
    /// [`Catalog::end_unreadable_job`]).
    pub record: Option<JobRecord>,
    /// When it was triggered, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

impl JobRow {
    /// Job `job_id`'s row from its stored columns (its record as JSON).
    pub(super) fn decode(job_id: String, finished: bool, queued: bool, record: &str, created_unix_ms: i64) -> Self {
        let record = serde_json::from_str(record).ok();
        Self { job_id, finished, queued, record, created_unix_ms }
    }
}

/// `record` as stored (JSON).
pub(super) fn encode_job(record: &JobRecord) -> Result<String, StoreError> {
    serde_json::to_string(record)
        .map_err(|source| StoreError::Corrupt { id: format!("training job {}", record.job_id), source })
}

/// Job `job_id`'s stored record (JSON).
///
/// # Errors
/// [`StoreError::Corrupt`] if it does not read as a [`JobRecord`] (another build wrote it).
pub(super) fn decode_job(job_id: &str, json: &str) -> Result<JobRecord, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: format!("training job {job_id}"), source })
}

/// What [`Catalog::activate_version`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The version is active now.
    Activated,
    /// The project or the version does not exist.
    NoSuchVersion,
    /// The version does not fit the project's stored spec; nothing changed.
    Unfit,
    /// The fence's lease is no longer the project's (another replica took it over): nothing
    /// changed.
    Fenced,
}

/// The right to train one project, held by one replica at a time cluster-wide: granted by
/// [`Catalog::claim_training`] for a time to live, renewed while its jobs run, and taken over by
/// another replica once it has expired. Each grant has a higher epoch than the one before, so
/// that a replica that was paused or cut off past its lease can be told from the holder (the
/// fencing token of Kleppmann, "How to do distributed locking", 2016).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The grant's number for its project: 1 for the first, 0 for a server alone on its
    /// catalogue, which needs no lease.
    pub epoch: i64,
}

impl Lease {
    /// The lease of a server alone on its catalogue: always granted, never lost.
    pub const SOLE: Self = Self { epoch: 0 };
}

/// What [`Catalog::activate_version`] checks before a trained version replaces the active one:
/// that `replica` still holds `lease` on the project.
#[derive(Clone, Copy, Debug)]
pub struct Fence<'a> {
    /// The replica's id.
    pub replica: &'a str,
    /// The lease its job trained under.
    pub lease: Lease,
}

/// Project `id`'s row from its stored columns.
///
/// # Errors
/// [`StoreError::Corrupt`] if the stored spec is unreadable.
pub(super) fn decode_project(
    id: &str,
    json: &str,
    created_unix_ms: i64,
    active_version: String,
    activated_unix_ms: i64,
) -> Result<Project, StoreError> {
    Ok(Project { spec: decode_spec(id, json)?, created_unix_ms, active_version, activated_unix_ms })
}

/// Project `id`'s stored spec (JSON).
fn decode_spec(id: &str, json: &str) -> Result<ProjectSpec, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: id.to_owned(), source })
}

/// Whether replacing the stored spec (JSON) makes the project start over: when `starts_over`
/// says so, or when the stored spec is unreadable. The rule of [`Catalog::upsert_project`]
/// for both backends.
pub(super) fn starts_over(stored: &str, starts_over: &dyn Fn(&ProjectSpec) -> bool) -> bool {
    serde_json::from_str::<ProjectSpec>(stored).as_ref().map_or(true, starts_over)
}

/// What [`Catalog::activate_version`] does given `version`'s stored manifest and the project's
/// stored spec (JSON), each `None` when absent: [`Activation::Activated`] means that the caller
/// makes it active. The rule for both backends.
///
/// # Errors
/// [`StoreError::Corrupt`] if the stored spec or manifest is unreadable.
pub(super) fn activation(
    project: &str,
    version: &str,
    manifest: Option<&str>,
    spec: Option<&str>,
    fits: &dyn Fn(&Manifest, &ProjectSpec) -> bool,
) -> Result<Activation, StoreError> {
    let (Some(manifest), Some(spec)) = (manifest, spec) else { return Ok(Activation::NoSuchVersion) };
    let manifest = decode_manifest(project, version, manifest)?;
    Ok(if fits(&manifest, &decode_spec(project, spec)?) { Activation::Activated } else { Activation::Unfit })
}

/// `manifest` as stored (JSON).
pub(super) fn encode_manifest(manifest: &Manifest) -> Result<String, StoreError> {
    let id = format!("{} {}", manifest.project_id, manifest.version);
    serde_json::to_string(manifest).map_err(|source| StoreError::Corrupt { id, source })
}

/// The stored manifest (JSON) of `project`'s `version`.
///
/// # Errors
/// [`StoreError::Corrupt`] if it does not read as a [`Manifest`] (written by an incompatible
/// build, or edited by hand).
pub(super) fn decode_manifest(project: &str, version: &str, json: &str) -> Result<Manifest, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: format!("{project} {version}"), source })
}

/// `spec` as stored (JSON).
pub(super) fn encode_spec(spec: &ProjectSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|source| StoreError::Corrupt { id: spec.id.clone(), source })
}

/// The catalogue's operations. Every write is one transaction: it applies whole or not at all.
/// Reads never wait behind a write that waits for a lock.
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// This catalogue's id: random, made when its schema was first created; a data dir records
    /// the id of the catalogue its samples and model files belong to.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn identity(&self) -> Result<String, StoreError>;

    /// Records that the data dir `data_dir` (its id) holds this catalogue's sample bytes and
    /// model files, if no data dir does yet. Returns the id of the data dir that does, when it
    /// is another one: this catalogue must not be served with `data_dir`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn bind_data_dir(&self, data_dir: &str) -> Result<Option<String>, StoreError>;

    /// The id of the data dir that holds this catalogue's files, if one does yet.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn data_dir(&self) -> Result<Option<String>, StoreError>;

    /// Inserts or replaces a project, in one transaction; returns whether it was new. A new
    /// project starts at `initial_version`. An existing one keeps its creation time, and its
    /// active version unless `starts_over(stored spec)` says that versions trained for the
    /// stored spec cannot serve the new one (or the stored spec is unreadable): then it starts
    /// over at `initial_version` too, in the same transaction, so that no crash can leave a
    /// new spec with an old version that does not fit it.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn upsert_project(
        &self,
        spec: &ProjectSpec,
        now_unix_ms: i64,
        initial_version: &str,
        starts_over: &(dyn Fn(&ProjectSpec) -> bool + Sync),
    ) -> Result<bool, StoreError>;

    /// One project, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    fn project(&self, id: &str) -> Result<Option<Project>, StoreError>;

    /// Every project, ordered by id (bytewise).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    fn projects(&self) -> Result<Vec<Project>, StoreError>;

    /// Deletes a project with its examples, versions and jobs; returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn delete_project(&self, id: &str) -> Result<bool, StoreError>;

    /// Inserts or updates `examples` of `project` in one transaction, by external id (see
    /// [`UpsertCounts`] for what each one did).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure (nothing is written then).
    fn upsert_examples(&self, project: &str, examples: &[ExampleRow]) -> Result<UpsertCounts, StoreError>;

    /// Deletes examples of `project` by external id; returns (deleted, not found).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn delete_examples(&self, project: &str, external_ids: &[String]) -> Result<(u64, u64), StoreError>;

    /// Up to `limit` examples of `project` with external ids after `after`, ordered by id
    /// (bytewise).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable row.
    fn examples(&self, project: &str, after: &str, limit: usize) -> Result<Vec<ExampleRow>, StoreError>;

    /// The sample blobs (sha256) some example of some project references.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, StoreError>;

    /// Examples of `project` per class name.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn count_examples(&self, project: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// The next version number of `project` (1 for the first).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn next_version_number(&self, project: &str) -> Result<u32, StoreError>;

    /// Records version `manifest.version` (number `manifest.number`) of `manifest.project_id`,
    /// inactive; its files are already in place.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure (a version of that name exists, the project does
    /// not); nothing is recorded then.
    fn record_version(&self, manifest: &Manifest, created_unix_ms: i64) -> Result<(), StoreError>;

    /// `project`'s versions, newest (highest number) first.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure, or [`StoreError::Corrupt`] for a manifest that
    /// does not read.
    fn versions(&self, project: &str) -> Result<Vec<VersionRow>, StoreError>;

    /// Makes `version` the active version of `project` if `fits(its manifest, the stored
    /// spec)` and, given a `fence`, if its replica still holds its lease, in one transaction: a
    /// spec changed meanwhile (other classes or inputs) is seen, and a replica that lost the
    /// project to another ([`Activation::Fenced`]) changes nothing.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure or an unreadable stored spec or manifest.
    fn activate_version(
        &self,
        project: &str,
        version: &str,
        fits: &(dyn Fn(&Manifest, &ProjectSpec) -> bool + Sync),
        fence: Option<Fence<'_>>,
    ) -> Result<Activation, StoreError>;

    /// Inserts job `record.job_id` of project `record.project_id`, or updates it while the job
    /// has not finished: a finished job's record never changes again (the first verdict stands,
    /// whichever replica wrote it), and nothing is written then. It is finished once its state
    /// is terminal.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn save_job(&self, record: &JobRecord) -> Result<(), StoreError>;

    /// Jobs of `project`, newest first (ties by id, descending), at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn jobs(&self, project: &str, limit: usize) -> Result<Vec<JobRow>, StoreError>;

    /// One job's record, or `None`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure, [`StoreError::Corrupt`] for a record this build
    /// cannot read.
    fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Asks whoever runs job `job_id` to cancel it (a replica other than the one asked runs it;
    /// it checks every few seconds). Saving the job's record keeps the request. Returns whether
    /// the job exists and has not finished.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn request_cancel(&self, job_id: &str) -> Result<bool, StoreError>;

    /// Whether cancelling job `job_id` was asked for ([`request_cancel`](Self::request_cancel)).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn cancel_requested(&self, job_id: &str) -> Result<bool, StoreError>;

    /// Jobs that have not finished (queued, running, or left so by a server that stopped), in
    /// no particular order.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn unfinished_jobs(&self) -> Result<Vec<JobRow>, StoreError>;

    /// Queues job `record` for its project, to be taken by whichever server trains the project
    /// ([`take_queued_job`](Self::take_queued_job)), unless one is queued already: a project
    /// has at most one, so that every trigger on any replica coalesces into it. Returns `None`
    /// when queued, else the record of the job queued before.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure (an unknown project), [`StoreError::Corrupt`] if
    /// the job queued before has a record this build cannot read (nothing is queued then).
    fn enqueue_job(&self, record: &JobRecord) -> Result<Option<JobRecord>, StoreError>;

    /// Takes `project`'s queued job, if any, for the caller to run: it is no longer queued (no
    /// other server takes it, and a trigger queues a new one). Returns its record.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure; [`StoreError::Corrupt`] if its record is one this
    /// build cannot read (it is taken all the same, and left to
    /// [`end_unreadable_job`](Self::end_unreadable_job)).
    fn take_queued_job(&self, project: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Ends queued job `ended.job_id` with record `ended` if no server took it yet. Returns
    /// whether it did.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn cancel_queued_job(&self, ended: &JobRecord) -> Result<bool, StoreError>;

    /// Ends unfinished, unqueued job `job_id` if it is `project`'s, leaving its record as it
    /// is: one this build cannot read (another build wrote it). Returns whether it did.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn end_unreadable_job(&self, job_id: &str, project: &str) -> Result<bool, StoreError>;

    /// While what this returns lives, this server may collect garbage: a server alone on its
    /// catalogue always may (the pins that keep a blob being written are its own, in memory);
    /// of replicas, one at a time, whose removals of shared objects go through
    /// [`remove_unused_object`](Self::remove_unused_object). `None` while another collects.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn alone(&self) -> Result<Option<Alone<'_>>, StoreError> {
        Ok(Some(Alone::always()))
    }

    /// Records that the objects `sha256s` of `kind` are about to be
    /// written, or read by a training job, on this server: a collector on another replica keeps
    /// them for its grace period from now (see
    /// [`remove_unused_object`](Self::remove_unused_object)). Call it before writing them. A
    /// catalogue one server uses alone records nothing: its collector sees this server's pins.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure (then do not write them).
    fn declare_object_uses(&self, _kind: Kind, _sha256s: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs `remove` (removing object `sha256` of `kind`, returning whether it did) unless the
    /// object was declared in use less than `grace` ago (replicas: at least 10 minutes), with
    /// the record of its uses locked meanwhile: a server declaring it then waits for the
    /// removal to end, and writes the object again. Returns whether it was removed. A catalogue
    /// one server uses alone just runs `remove`.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure (`remove` has not run, or its removal stands).
    fn remove_unused_object(
        &self,
        _kind: Kind,
        _sha256: &str,
        _grace: Duration,
        remove: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<bool, StoreError> {
        Ok(remove())
    }

    /// Makes sure this server holds its lock on the catalogue: a database session that broke
    /// is opened again and takes it back. Replicas call it every few seconds.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn keep_locks(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Grants `replica` the [`Lease`] on training `project` for `ttl` if no other replica holds
    /// an unexpired one (the catalogue's clock decides), with the next epoch; `None` if another
    /// holds it. (A replica claims only a project it runs no job of: one it still holds, say
    /// after a failed release, is granted again.) A catalogue one server uses alone grants [`Lease::SOLE`] always.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn claim_training(&self, _project: &str, _replica: &str, _ttl: Duration) -> Result<Option<Lease>, StoreError> {
        Ok(Some(Lease::SOLE))
    }

    /// Extends `replica`'s `lease` on `project` to `ttl` from now. Returns `false` if it is no
    /// longer the project's (another replica took it over after it expired): then the
    /// replica's job must stop, and its version is never activated ([`Fence`]); also `false`
    /// once released. An expired lease that nobody took over is renewed.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn renew_training(
        &self,
        _project: &str,
        _replica: &str,
        _lease: Lease,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives up `replica`'s `lease` on `project` (it expires now; the epoch stays, so the next
    /// grant's is higher).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure: the lease then runs out by itself.
    fn release_training(&self, _project: &str, _replica: &str, _lease: Lease) -> Result<(), StoreError> {
        Ok(())
    }

    /// Projects with unfinished jobs (queued, or left running) and no unexpired lease: work a
    /// replica that claims them takes over. A catalogue one server uses alone has none (its
    /// server recovers its jobs when it starts).
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn projects_to_take_over(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Blocks until a project may have changed in the catalogue (created, updated, deleted, a
    /// version activated), by any server, or `timeout` passed. It may return early for nothing;
    /// a catalogue one server uses alone has nothing to announce and just waits.
    ///
    /// # Errors
    /// [`StoreError`] on a database failure.
    fn wait_for_change(&self, timeout: Duration) -> Result<(), StoreError> {
        std::thread::sleep(timeout);
        Ok(())
    }

    /// Sets `project`'s active version without checking that a stored model version has that
    /// name: tests use it to make a project look trained.
    #[cfg(test)]
    fn reset_active_version(&self, project: &str, version: &str) -> Result<(), StoreError>;
}
