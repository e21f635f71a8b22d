//! The PostgreSQL catalogue backend (`--database-url postgres://…`): the same tables as the
//! SQLite one, so that a catalogue can live outside the machine that serves it.
//!
//! * A server whose files are in its data dir is alone on its database
//!   ([`Sharing::Alone`]): the writing session holds a PostgreSQL advisory lock
//!   (`pg_try_advisory_lock`), and a second server fails to start with [`StoreError::Taken`].
//!   Replicas over an object store ([`Sharing::Replicas`]) hold the same lock shared, so any
//!   number of them run together but never with a server that must be alone; a replica takes
//!   the server lock alone for a garbage collection round ([`Catalog::alone`]). A notification
//!   on every project change ([`Catalog::wait_for_change`]) lets replicas refresh their caches
//!   at once. Training leases ([`Catalog::claim_training`]) are rows whose expiry the
//!   database's clock decides, not locks: a paused replica keeps its session (its kernel still
//!   answers keepalives) but not its lease.
//! * Sessions apart for writing and reading, like the SQLite backend's two connections, so that
//!   a read never waits behind a write that waits for a row lock: one writes, and reads take a
//!   free one of up to `--database-read-sessions` ([`Readers`], 4 by default), so that they run
//!   side by side.
//! * A session that breaks (the server restarted, the connection was terminated) is opened
//!   again by the next call. Connections are driven between calls too, so a break the server
//!   announced is seen before the next call; one that shows only during a call fails that call
//!   as transient (`UNAVAILABLE`).
//! * Text identifiers are stored with the `"C"` collation, so ids sort bytewise, as in SQLite:
//!   paging through examples gives the same pages on both backends.
//!
//! * Every call has a deadline ([`CALL_TIMEOUT`] to get its session, then [`CALL_TIMEOUT`]
//!   to connect if need be and run, longer for the few calls that may legitimately take
//!   longer): a server that stops answering without closing the connection (a frozen host, a
//!   network cut that drops packets) fails the call as transient ([`StoreError::TimedOut`])
//!   instead of hanging it. The session given up on is asked to cancel what it runs and
//!   closed; the next call opens a new one.
//!
//! The catalogue is synchronous ([`Catalog`]); `tokio-postgres` sessions run on a private
//! runtime of one worker thread, which drives every connection between calls too. A call
//! blocks on that runtime from a scoped thread of its own, since tokio refuses to block on a
//! runtime from a thread that drives another.

use std::{collections::HashMap, collections::VecDeque, str::FromStr, sync::Mutex, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_postgres::{
    AsyncMessage, Client, Config, NoTls, Notification, Row, Transaction, error::SqlState, types::ToSql,
};

use super::{
    Failure,
    catalog::{
        self, Activation, Alone, Catalog, ExampleRow, Fence, JobRow, Lease, StoreError, StoredExample, Upsert,
        UpsertCounts, VersionRow, encode_spec,
    },
    objects::Kind,
};
use crate::{
    projects::spec::{Project, ProjectSpec},
    training::record::{JobRecord, Manifest},
};

/// Schema migrations, applied in order, each once; `alps_schema_migrations` records them.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE projects (
        id TEXT COLLATE \"C\" PRIMARY KEY,
        spec TEXT NOT NULL,
        created_unix_ms BIGINT NOT NULL,
        active_version TEXT NOT NULL
    );
    CREATE TABLE examples (
        project_id TEXT COLLATE \"C\" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        external_id TEXT COLLATE \"C\" NOT NULL,
        class_name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        tensor_shape TEXT,
        metadata TEXT NOT NULL,
        updated_unix_ms BIGINT NOT NULL,
        -- The client's label revision, a u64 stored bit for bit; 0 = unversioned.
        label_revision BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, external_id)
    );
    CREATE INDEX examples_by_sha256 ON examples (sha256);
    CREATE TABLE model_versions (
        project_id TEXT COLLATE \"C\" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        version TEXT COLLATE \"C\" NOT NULL,
        number BIGINT NOT NULL,
        manifest TEXT NOT NULL,
        created_unix_ms BIGINT NOT NULL,
        PRIMARY KEY (project_id, version)
    );
    CREATE TABLE jobs (
        job_id TEXT COLLATE \"C\" PRIMARY KEY,
        project_id TEXT COLLATE \"C\" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        finished BOOLEAN NOT NULL,
        record TEXT NOT NULL,
        created_unix_ms BIGINT NOT NULL
    );
    CREATE INDEX jobs_by_project ON jobs (project_id, created_unix_ms DESC, job_id DESC);
    CREATE INDEX unfinished_jobs ON jobs (finished) WHERE NOT finished",
    // The catalogue's id, which its data dir records (see `DataDir::bind_catalogue`), and the id
    // of the data dir that holds its files (see `Catalog::bind_data_dir`).
    "CREATE TABLE alps_catalogue (id TEXT NOT NULL, data_dir TEXT);
    INSERT INTO alps_catalogue (id) VALUES (md5(random()::text || clock_timestamp()::text))",
    // A cancellation asked of the replica that runs a job (see `Catalog::request_cancel`).
    "ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false",
    // Training leases with fencing epochs (see `Catalog::claim_training`), and a trigger waiting
    // for the replica that trains its project, one per project (see `Catalog::enqueue_job`).
    "CREATE TABLE training_leases (
        project_id TEXT COLLATE \"C\" PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN queued BOOLEAN NOT NULL DEFAULT false;
    CREATE UNIQUE INDEX one_queued_job ON jobs (project_id) WHERE queued",
    // When replicas last declared an object of the store in use (see
    // `Catalog::declare_object_uses`).
    "CREATE TABLE object_uses (
        kind TEXT COLLATE \"C\" NOT NULL,
        sha256 TEXT COLLATE \"C\" NOT NULL,
        used_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (kind, sha256)
    )",
    // When the active version was last activated (see `Project::activated_unix_ms`).
    "ALTER TABLE projects ADD COLUMN activated_unix_ms BIGINT NOT NULL DEFAULT 0",
];

/// The advisory lock key the writing session holds: "alps" in ASCII.
const SERVER_LOCK: i64 = 0x616c_7073;
/// The advisory lock key (transaction-level) that serialises migrations: "alpm".
const MIGRATION_LOCK: i64 = 0x616c_706d;
/// The advisory lock key of the replicas' garbage collector's turn: "alpg".
const COLLECTOR_LOCK: i64 = 0x616c_7067;
/// With replicas, an object declared in use this recently is never removed, whatever
/// `--gc-grace-secs` says: longer than a write takes from its declaration to its commit.
const SHARED_GRACE_FLOOR: Duration = Duration::from_secs(600);
/// The notification channel of project changes (see [`Catalog::wait_for_change`]).
const CHANGES: &str = "alps_projects";

/// How a server shares its database with other servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// One server per database (its files are in its data dir): it holds the server lock.
    Alone,
    /// Replicas over one object store, as this one: each holds the server lock shared.
    Replicas,
}

/// A session idle for longer is probed (an empty query) before it runs a call.
const IDLE_PROBE: Duration = Duration::from_secs(1);
/// How long that probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call may wait for its session, and then take (connecting included). A call
/// waits at most [`LOCK_TIMEOUT`] for each row lock; calls that may take longer by design
/// have more ([`Session::run_longer`]).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How much longer a write of examples may take per example: one round trip each.
const PER_EXAMPLE: Duration = Duration::from_millis(10);
/// How much longer a scan of the whole catalogue (garbage collection's) or the migrations
/// at start may take.
const SCAN_ALLOWANCE: Duration = Duration::from_secs(120);
/// How much longer a collector's removal may take: it deletes the object from the object
/// store while it holds the object's row lock, and one delete takes up to a request's timeout
/// after retrying for a while (`store::objects`: 30 s and 10 s).
const REMOVAL_ALLOWANCE: Duration = Duration::from_secs(60);
/// How long a starting server waits for another server's lock to be released.
const TAKEN_WAIT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take before the call fails as transient.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sent data may stay unacknowledged, and an idle session silent, before the
/// connection counts as broken (TCP_USER_TIMEOUT and keepalives).
const UNANSWERED_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a statement waits for a row lock before failing as transient (the SQLite
/// backend's busy timeout).
const LOCK_TIMEOUT: &str = "5s";

/// What a PostgreSQL error means to the caller (SQLSTATE classes from the PostgreSQL manual,
/// appendix A "PostgreSQL Error Codes"): a full disk is [`Failure::Full`]; a lost or refused
/// connection (08), a transaction rollback such as a serialization failure or deadlock (40),
/// insufficient resources (53), an operator intervention such as a shutdown or an idle-session
/// timeout (57), a lock not available (55P03) or a read-only server after a failover (25006)
/// is transient; the rest (constraint violations, bad credentials, type errors) permanent.
pub(super) fn failure(error: &tokio_postgres::Error) -> Failure {
    match error.code().map(SqlState::code) {
        Some("53100") => Failure::Full,
        Some(code) if ["08", "40", "53", "57"].contains(&&code[..2]) => Failure::Transient,
        Some("55P03" | "25006") => Failure::Transient,
        Some(_) => Failure::Permanent,
        // No SQLSTATE: the connection failed, closed or timed out (the client has no public
        // kind for a timeout; its message is fixed: "timeout waiting for server").
        None if error.is_closed()
            || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
            || error.to_string().starts_with("timeout") =>
        {
            Failure::Transient
        }
        None => Failure::Permanent,
    }
}

/// Whether SQLSTATE `code` says the session is over (08: connection exception; 57P: operator
/// intervention, e.g. terminated, shut down, idle-session timeout): the next call reconnects.
fn lost_connection(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

/// Whether `error` is the database refusing a new session for its connection limit, its
/// role's or its own (`too_many_connections`).
fn at_connection_limit(error: &StoreError) -> bool {
    matches!(error, StoreError::Postgres(e) if e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS))
}

/// Why a database URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL does not parse as a PostgreSQL connection string.
    #[error("--database-url is not a PostgreSQL URL (postgres://user:password@host:port/database): {0}")]
    Url(tokio_postgres::Error),
    /// The database cannot be reached (named by host, port and database; never the password).
    #[error("cannot use PostgreSQL at {at}: {source}")]
    Unreachable {
        /// `host:port/database`.
        at: String,
        /// Why.
        source: StoreError,
    },
    /// The database cannot be migrated or locked.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// See [`super::database_tls::DatabaseTlsError`].
    #[error(transparent)]
    Tls(#[from] super::database_tls::DatabaseTlsError),
    /// The runtime that drives the sessions cannot start (out of threads).
    #[error("cannot start the PostgreSQL client's runtime: {0}")]
    Runtime(String),
}

/// A connected session: the client, and the task on the catalogue's runtime that drives its
/// connection and forwards the server's notifications.
struct Live {
    client: Client,
    /// Notifications, then the error that ended the connection (only a listening session is
    /// sent notifications).
    notifications: mpsc::UnboundedReceiver<Result<Notification, tokio_postgres::Error>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Live {
    /// Spawns the task that drives `connection` (on the current runtime).
    fn new<S, T>(client: Client, mut connection: tokio_postgres::Connection<S, T>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, notifications) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(notification)) => {
                        let _ = sender.send(Ok(notification));
                    }
                    Ok(AsyncMessage::Notice(notice)) => tracing::debug!(%notice, "PostgreSQL notice"),
                    Ok(_) => {}
                    Err(error) => {
                        let _ = sender.send(Err(error));
                        break;
                    }
                }
            }
        });
        Self { client, notifications, driver }
    }

    /// Whether the session answers an empty query within [`PROBE_TIMEOUT`].
    async fn answers(&self) -> bool {
        matches!(tokio::time::timeout(PROBE_TIMEOUT, self.client.simple_query("")).await, Ok(Ok(_)))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Closes the socket at once: a session dropped while it was being opened (its call
        // passed its deadline) must not linger, waiting for a server that may never answer.
        self.driver.abort();
    }
}

impl Live {
    /// Gives up on this session (a call past its deadline, a failed probe): asks the server to
    /// cancel what the session runs, so that it releases its locks (bounded: a server that
    /// stopped answering answers that neither), and closes the socket (on drop) instead of
    /// waiting for the server to read the session's end.
    fn abandon(self, tls: Option<tokio_postgres_rustls::MakeRustlsConnect>) {
        let token = self.client.cancel_token();
        tokio::spawn(async move {
            let cancel = async {
                match tls {
                    Some(tls) => token.cancel_query(tls).await,
                    None => token.cancel_query(NoTls).await,
                }
            };
            if let Ok(Err(error)) = tokio::time::timeout(PROBE_TIMEOUT, cancel).await {
                tracing::debug!(%error, "cannot cancel the query of a database session given up on");
            }
        });
    }
}

impl std::ops::Deref for Live {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Live {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// One PostgreSQL session, opened on first use and again after it breaks or a call on it
/// passes its deadline.
struct Session {
    config: Config,
    /// `None`: plaintext (see [`super::database_tls`]).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The server lock this session holds (the writing session), alone or shared.
    lock: Option<Sharing>,
    /// Whether this session listens for project changes.
    listens: bool,
    /// The catalogue's runtime, which drives every session's connection.
    runtime: tokio::runtime::Handle,
    /// How long a call may take, waiting for the session and connecting included.
    call_timeout: Duration,
    live: tokio::sync::Mutex<Option<Live>>,
    /// When this session last ran a call: one idle for longer than [`IDLE_PROBE`] is checked
    /// before use, so that a session the server ended meanwhile (a restart, a terminated
    /// backend) is replaced instead of failing the next call.
    used: Mutex<std::time::Instant>,
    /// The server processes of this session's last connections (`pg_backend_pid()`), the
    /// newest last: a session that broke or was given up on may live on in the server for a
    /// while, holding the lock.
    backend_pids: Mutex<VecDeque<i32>>,
    /// Whether the session held a connection when its last call ended (readable while a call
    /// holds `live`).
    connected: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config's Debug leaves the password out.
        f.debug_struct("Session").field("config", &self.config).field("lock", &self.lock).finish_non_exhaustive()
    }
}

impl Session {
    fn new(settings: &Settings, lock: Option<Sharing>, listens: bool) -> Self {
        Self {
            config: settings.config.clone(),
            tls: settings.tls.clone(),
            lock,
            listens,
            runtime: settings.runtime.clone(),
            call_timeout: settings.call_timeout,
            live: tokio::sync::Mutex::new(None),
            used: Mutex::new(std::time::Instant::now()),
            backend_pids: Mutex::new(VecDeque::new()),
            connected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// What this session was opened with, for opening others like it.
    fn settings(&self) -> Settings {
        Settings {
            config: self.config.clone(),
            tls: self.tls.clone(),
            runtime: self.runtime.clone(),
            call_timeout: self.call_timeout,
        }
    }

    /// Runs `work` on this session, connecting first if it is not connected, within the
    /// call's deadline.
    ///
    /// # Errors
    /// `work`'s; [`StoreError::SessionBusy`] if the session stays busy with other calls for
    /// [`CALL_TIMEOUT`]; [`StoreError::TimedOut`] past the deadline (the session is then
    /// closed; what `work` sent may still be applied if the server answers later);
    /// [`StoreError::Postgres`] if connecting fails.
    fn run<T: Send>(&self, work: impl AsyncFnOnce(&mut Live) -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
        self.run_longer(Duration::ZERO, work)
    }

    /// One statement `sql` with `params` as a call of its own ([`run`](Self::run)); returns
    /// the rows it changed.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.run(async |client| Ok(client.execute(sql, params).await?))
    }

    /// [`run`](Self::run) for a call that may take `longer` than others by design.
    fn run_longer<T: Send>(
        &self,
        longer: Duration,
        work: impl AsyncFnOnce(&mut Live) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let limit = self.call_timeout + longer;
        off_runtime(|| {
            self.runtime.block_on(async {
                // Bounded apart from the call: calls queued behind one that hangs fail at their
                // own deadline, and a call that waited long for a busy session still has its
                // whole time to run (giving up on a session that answers would cost its lock).
                let mut slot = tokio::time::timeout(self.call_timeout, self.live.lock())
                    .await
                    .map_err(|_| StoreError::SessionBusy(self.call_timeout))?;
                let Ok(result) = tokio::time::timeout(limit, self.call(&mut slot, work)).await else {
                    if let Some(live) = slot.take() {
                        live.abandon(self.tls.clone());
                    }
                    self.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                    return Err(StoreError::TimedOut(limit));
                };
                // The server may have said the session is over before the socket closed.
                let over = matches!(&result, Err(StoreError::Postgres(e)) if e.code().is_some_and(|c| lost_connection(c.code())));
                if over || slot.as_ref().is_some_and(|live| live.is_closed()) {
                    *slot = None;
                }
                self.connected.store(slot.is_some(), std::sync::atomic::Ordering::Relaxed);
                result
            })
        })
    }

    async fn call<T>(
        &self,
        slot: &mut Option<Live>,
        work: impl AsyncFnOnce(&mut Live) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = {
            let mut used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *used, std::time::Instant::now()).elapsed() > IDLE_PROBE
        };
        let usable = match slot.as_ref() {
            Some(live) if !live.is_closed() => !idle || live.answers().await,
            _ => false,
        };
        if !usable {
            if let Some(live) = slot.take() {
                live.abandon(self.tls.clone());
            }
            *slot = Some(self.connect().await?);
        }
        work(slot.as_mut().expect("connected above")).await
    }

    async fn connect(&self) -> Result<Live, StoreError> {
        let live = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                Live::new(client, connection)
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                Live::new(client, connection)
            }
        };
        // The server-side keepalives end a session whose client vanished (a node lost, a
        // network cut) within about 35 s, releasing its lock; the default is the kernel's
        // (hours).
        live.batch_execute(&format!(
            "SET lock_timeout = '{LOCK_TIMEOUT}'; SET tcp_keepalives_idle = 20; SET tcp_keepalives_interval = 5;
             SET tcp_keepalives_count = 3; SET client_min_messages = warning"
        ))
        .await?;
        // Recorded before the lock is taken: a call given up on while the server grants it
        // leaves a session that holds the lock, which the next connection must know as ours.
        let pid: i32 = live.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        let ours = self.remember(pid);
        match self.lock {
            Some(Sharing::Alone) => take_lock(&live, SERVER_LOCK, &ours).await?,
            Some(Sharing::Replicas) => {
                let taken: bool =
                    live.query_one("SELECT pg_try_advisory_lock_shared($1)", &[&SERVER_LOCK]).await?.get(0);
                if !taken {
                    return Err(StoreError::Taken);
                }
            }
            None => {}
        }
        if self.listens {
            live.batch_execute(&format!("LISTEN {CHANGES}")).await?;
        }
        Ok(live)
    }

    /// Records `pid` as this session's newest server process; returns the ones recorded
    /// before it.
    fn remember(&self, pid: i32) -> Vec<i32> {
        let mut pids = self.backend_pids.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = pids.iter().copied().collect();
        if pids.len() == REMEMBERED_PIDS {
            pids.pop_front();
        }
        pids.push_back(pid);
        before
    }

    /// The server process of this session's newest connection (0 before the first).
    fn backend_pid(&self) -> i32 {
        self.backend_pids.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).back().copied().unwrap_or(0)
    }
}

/// How many of a session's server processes it remembers as its own.
const REMEMBERED_PIDS: usize = 8;

/// The server processes (pids) holding advisory lock `key` in this database, read without
/// taking it. A bigint key is stored as (classid, objid) = its (high, low) 32 bits as unsigned
/// oids, objsubid 1.
async fn lock_holders(client: &Client, key: i64) -> Result<Vec<i32>, StoreError> {
    let (high, low) = ((key >> 32) & 0xffff_ffff, key & 0xffff_ffff);
    let rows = client
        .query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
             AND classid::bigint = $1 AND objid::bigint = $2
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&high, &low],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Takes the advisory lock `key` for this session. If sessions of ours (server processes
/// `ours`: they broke on our side, or we gave up on them) still hold it, they are ended
/// first; a holder that is not ours (another server, replicas holding it shared) refuses it.
async fn take_lock(client: &Client, key: i64, ours: &[i32]) -> Result<(), StoreError> {
    for _ in 0..40 {
        if client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0) {
            return Ok(());
        }
        // Empty when the holder ended between the two reads: try again.
        let holders = lock_holders(client, key).await?;
        if holders.iter().any(|pid| !ours.contains(pid)) {
            return Err(StoreError::Taken);
        }
        for pid in holders {
            tracing::warn!(pid, "ending this server's own broken database session that still holds its lock");
            client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(StoreError::Taken)
}

/// Runs `work` on a scoped thread, outside any tokio runtime (see the module docs).
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The private runtime that drives a catalogue's sessions: one worker thread, so that
/// connections are driven (notifications read, a closed socket seen) between calls too.
#[derive(Debug)]
struct Driver(Option<tokio::runtime::Runtime>);

impl Drop for Driver {
    fn drop(&mut self) {
        // The last catalogue reference may go on an async thread, where a runtime may not
        // block to shut down.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The reading sessions: a read runs on the first one not busy with another, so that reads run
/// side by side instead of queueing behind one session. Each opens on first use, so a replica
/// with little to read holds one connection; under load it holds all of them
/// ([`PostgresCatalog::reading_through`]; [`READERS`] by default). A pool of our own
/// [`Session`]s, not a pool crate's connections: every session keeps its deadline, its
/// cancel-on-timeout and its idle probe (see the module docs).
#[derive(Debug)]
struct Readers {
    sessions: Vec<Session>,
    /// The session the next call waits for when all are busy (modulo their number).
    next: std::sync::atomic::AtomicUsize,
}

/// How many reading sessions a catalogue opens at most unless told otherwise
/// (`--database-read-sessions`).
pub const READERS: usize = 4;

impl Readers {
    fn new(settings: &Settings, sessions: usize) -> Self {
        let sessions = (0..sessions.max(1)).map(|_| Session::new(settings, None, false)).collect();
        Self { sessions, next: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// [`Session::run`] on a free reading session, a connected one first (a new connection
    /// costs a round trip or more, and counts against the database's limit); when all are busy,
    /// on the connected ones in turn, so that waiting calls spread over them. A session is
    /// opened before the call it is for: if the database refuses it for its connection limit,
    /// the call waits for a connected one instead of failing.
    fn run<T: Send>(&self, work: impl AsyncFnOnce(&mut Live) -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
        let free = |connected: bool| {
            self.sessions.iter().find(|session| session.live.try_lock().is_ok_and(|live| live.is_some() == connected))
        };
        if let Some(session) = free(true) {
            return session.run(work);
        }
        if let Some(session) = free(false) {
            match session.run(async |_| Ok(())) {
                Ok(()) => return session.run(work),
                Err(error) if at_connection_limit(&error) && self.connected().next().is_some() => {
                    tracing::debug!(%error, "no new reading session; the call waits for an open one");
                }
                Err(error) => return Err(error),
            }
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connected: Vec<&Session> = self.connected().collect();
        let waited_on = if connected.is_empty() {
            &self.sessions[turn % self.sessions.len()]
        } else {
            connected[turn % connected.len()]
        };
        waited_on.run(work)
    }

    /// The sessions that held a connection when their last call ended.
    fn connected(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter().filter(|session| session.connected.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What every session of a catalogue is opened with.
struct Settings {
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    runtime: tokio::runtime::Handle,
    call_timeout: Duration,
}

/// The catalogue in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresCatalog {
    readers: Readers,
    writer: Session,
    /// Waits for change notifications ([`Catalog::wait_for_change`]).
    listener: Session,
    /// Garbage collection's: its turn's lock, and each removal's lock on an object's uses.
    collector: Session,
    sharing: Sharing,
    /// Dropped last: it drives the sessions' connections.
    _driver: Driver,
}

impl PostgresCatalog {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or a
    /// libpq key=value string), over verified TLS when it says `sslmode=require`, `verify-ca`
    /// or `verify-full` (trusting `ca_file`'s certificates when given, see
    /// [`super::database_tls`]), takes the server lock and applies pending migrations.
    ///
    /// # Errors
    /// [`OpenError::Url`] for a malformed URL; [`OpenError::Tls`] if TLS cannot be set up;
    /// [`OpenError::Store`] if the database cannot be reached or migrated, or another server
    /// holds it ([`StoreError::Taken`]).
    pub fn open(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, OpenError> {
        Self::open_as(url, ca_file, Sharing::Alone, "")
    }

    /// [`open`](Self::open) for a server that shares the database as `sharing` says;
    /// `replica` is this replica's id (unique per process) with [`Sharing::Replicas`].
    ///
    /// # Errors
    /// As [`open`](Self::open); [`StoreError::Taken`] if a server that must be alone holds
    /// the database (or, alone, if replicas do).
    pub fn open_as(
        url: &str,
        ca_file: Option<&std::path::Path>,
        sharing: Sharing,
        replica: &str,
    ) -> Result<Self, OpenError> {
        Self::open_within(url, ca_file, sharing, replica, CALL_TIMEOUT)
    }

    /// This catalogue, reading through at most `sessions` PostgreSQL sessions at once (at
    /// least 1; [`READERS`] unless told).
    #[must_use]
    pub fn reading_through(mut self, sessions: usize) -> Self {
        let settings = self.readers.sessions[0].settings();
        self.readers = Readers::new(&settings, sessions);
        self
    }

    /// [`open_as`](Self::open_as) with calls that fail after `call_timeout`.
    fn open_within(
        url: &str,
        ca_file: Option<&std::path::Path>,
        sharing: Sharing,
        replica: &str,
        call_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let mut config = Config::from_str(&super::database_tls::normalised_url(url)).map_err(OpenError::Url)?;
        let tls = super::database_tls::connector(&config, ca_file)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that stops answering (a network partition, a frozen host) fails the call
        // as transient within seconds instead of hanging it until the kernel gives up (minutes).
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(UNANSWERED_TIMEOUT);
        }
        if config.get_keepalives_idle() > UNANSWERED_TIMEOUT {
            config.keepalives_idle(UNANSWERED_TIMEOUT).keepalives_interval(Duration::from_secs(5));
        }
        // Replicas name themselves, so that an operator (or a test) can tell their sessions apart.
        config.application_name(&match sharing {
            Sharing::Alone => "alps-server".to_owned(),
            Sharing::Replicas => format!("alps-server {replica}"),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("alps-postgres")
            .enable_all()
            .build()
            .map_err(|error| OpenError::Runtime(error.to_string()))?;
        let settings = Settings { config: config.clone(), tls, runtime: runtime.handle().clone(), call_timeout };
        let catalog = Self {
            readers: Readers::new(&settings, READERS),
            writer: Session::new(&settings, Some(sharing), false),
            listener: Session::new(&settings, None, true),
            collector: Session::new(&settings, None, false),
            sharing,
            _driver: Driver(Some(runtime)),
        };
        // A server that just stopped (a restart, a rescheduled pod) releases the lock when its
        // session ends, which may take a moment.
        let deadline = std::time::Instant::now() + TAKEN_WAIT;
        loop {
            match catalog.writer.run_longer(SCAN_ALLOWANCE, async |client| migrate(client).await) {
                Err(StoreError::Taken) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(error) if error.failure() == Failure::Transient && !matches!(error, StoreError::Taken) => {
                    return Err(OpenError::Unreachable { at: address(&config), source: error });
                }
                result => break result?,
            }
        }
        Ok(catalog)
    }
}

/// Where `config` connects, for people: `host:port/database`.
fn address(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
        })
        .collect();
    format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or("(the user's)"))
}

/// Applies the migrations this database has not seen, in one transaction, holding the
/// migration lock: replicas starting together migrate one after the other.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS alps_schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_unix_ms BIGINT NOT NULL
        )",
        )
        .await?;
    let applied: i32 =
        transaction.query_one("SELECT COALESCE(MAX(version), 0) FROM alps_schema_migrations", &[]).await?.get(0);
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::NewerSchema { found: applied, known: MIGRATIONS.len() });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        transaction.batch_execute(migration).await?;
        let version = index as i32 + 1;
        transaction
            .execute(
                "INSERT INTO alps_schema_migrations (version, applied_unix_ms) VALUES ($1, $2)",
                &[&version, &crate::clock::now_unix_ms()],
            )
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Tells the replicas listening that `project` changed, when `transaction` commits (PostgreSQL
/// delivers notifications at commit, and drops them on a rollback).
async fn notify(transaction: &Transaction<'_>, project: &str) -> Result<(), StoreError> {
    transaction.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &project]).await?;
    Ok(())
}

fn example(project: &str, row: &Row) -> Result<ExampleRow, StoreError> {
    ExampleRow::decode(
        project,
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get::<_, &str>(5),
        row.get(6),
        row.get(7),
    )
}

fn strings(rows: Vec<Row>) -> Vec<String> {
    rows.iter().map(|row| row.get(0)).collect()
}

/// A row of `SELECT job_id, finished, queued, record, created_unix_ms FROM jobs`.
fn job_row(row: &Row) -> JobRow {
    JobRow::decode(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// A write of an example that [`Catalog::upsert_examples`] decided on.
struct Write<'a> {
    example: &'a ExampleRow,
    /// `Some((tensor shape, metadata))` (encoded) for a full write, `None` when only the label
    /// revision changes.
    full: Option<(Option<String>, String)>,
    /// The columns as SQL: the revision and size, a u64 each, stored bit for bit.
    revision: i64,
    size: i64,
}

impl<'a> Write<'a> {
    fn new(example: &'a ExampleRow, full: Option<(Option<String>, String)>) -> Self {
        Self { example, full, revision: example.label_revision as i64, size: example.size_bytes as i64 }
    }

    /// The parameters of the revision's update (`false`) or the full write (`true`) in
    /// `project`.
    fn params<'p>(&'p self, project: &'p &'p str) -> (Vec<&'p (dyn ToSql + Sync)>, bool) {
        let example = self.example;
        match &self.full {
            None => (vec![project, &example.external_id, &self.revision], false),
            Some((shape, metadata)) => (
                vec![
                    project,
                    &example.external_id,
                    &example.class_name,
                    &example.sha256,
                    &self.size,
                    shape,
                    metadata,
                    &example.updated_unix_ms,
                    &self.revision,
                ],
                true,
            ),
        }
    }
}

/// The most objects one statement declares in use.
const DECLARATION_CHUNK: usize = 1000;

/// `duration` in milliseconds, for an interval computed in SQL.
fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl PostgresCatalog {
    /// With replicas, checks in `transaction`, which is about to name the objects `sha256s` of
    /// `kind` (sorted, each once), that each is still declared in use, and keeps each declared
    /// until it commits (a shared lock: a collector waits, then sees the reference). A missing
    /// declaration means a collector removed the object after this server declared and wrote
    /// it (the write took longer than the grace period): nothing is written then.
    ///
    /// # Errors
    /// [`StoreError::Collected`] for an object removed meanwhile; [`StoreError`] on a database
    /// failure.
    async fn check_declared(
        &self,
        transaction: &Transaction<'_>,
        kind: Kind,
        sha256s: &[&str],
    ) -> Result<(), StoreError> {
        if self.sharing == Sharing::Alone || sha256s.is_empty() {
            return Ok(());
        }
        let held = transaction
            .query(
                "SELECT sha256 FROM object_uses WHERE kind = $1 AND sha256 = ANY($2) ORDER BY sha256 FOR SHARE",
                &[&kind.name(), &sha256s],
            )
            .await?;
        if held.len() < sha256s.len() {
            return Err(StoreError::Collected);
        }
        Ok(())
    }
}

impl Catalog for PostgresCatalog {
    fn upsert_project(
        &self,
        spec: &ProjectSpec,
        now_unix_ms: i64,
        initial_version: &str,
        starts_over: &(dyn Fn(&ProjectSpec) -> bool + Sync),
    ) -> Result<bool, StoreError> {
        let json = encode_spec(spec)?;
        self.writer.run(async |client| {
            let transaction = client.transaction().await?;
            let stored =
                transaction.query_opt("SELECT spec FROM projects WHERE id = $1 FOR UPDATE", &[&spec.id]).await?;
            let created = match stored {
                None => {
                    transaction
                        .execute(
                            "INSERT INTO projects (id, spec, created_unix_ms, active_version) VALUES ($1, $2, $3, $4)",
                            &[&spec.id, &json, &now_unix_ms, &initial_version],
                        )
                        .await?;
                    true
                }
                Some(row) => {
                    if catalog::starts_over(row.get(0), starts_over) {
                        transaction
                            .execute(
                                "UPDATE projects SET spec = $2, active_version = $3 WHERE id = $1",
                                &[&spec.id, &json, &initial_version],
                            )
                            .await?;
                    } else {
                        transaction.execute("UPDATE projects SET spec = $2 WHERE id = $1", &[&spec.id, &json]).await?;
                    }
                    false
                }
            };
            notify(&transaction, &spec.id).await?;
            transaction.commit().await?;
            Ok(created)
        })
    }

    fn identity(&self) -> Result<String, StoreError> {
        self.readers.run(async |client| Ok(client.query_one("SELECT id FROM alps_catalogue", &[]).await?.get(0)))
    }

    fn bind_data_dir(&self, data_dir: &str) -> Result<Option<String>, StoreError> {
        self.writer.run(async |client| {
            client.execute("UPDATE alps_catalogue SET data_dir = $1 WHERE data_dir IS NULL", &[&data_dir]).await?;
            let bound: String = client.query_one("SELECT data_dir FROM alps_catalogue", &[]).await?.get(0);
            Ok((bound != data_dir).then_some(bound))
        })
    }

    fn data_dir(&self) -> Result<Option<String>, StoreError> {
        self.readers.run(async |client| Ok(client.query_one("SELECT data_dir FROM alps_catalogue", &[]).await?.get(0)))
    }

    fn project(&self, id: &str) -> Result<Option<Project>, StoreError> {
        let row = self.readers.run(async |client| {
            Ok(client
                .query_opt(
                    "SELECT spec, created_unix_ms, active_version, activated_unix_ms FROM projects WHERE id = $1",
                    &[&id],
                )
                .await?)
        })?;
        row.map(|row| catalog::decode_project(id, row.get(0), row.get(1), row.get(2), row.get(3))).transpose()
    }

    fn projects(&self) -> Result<Vec<Project>, StoreError> {
        let rows = self.readers.run(async |client| {
            let sql = "SELECT id, spec, created_unix_ms, active_version, activated_unix_ms FROM projects ORDER BY id";
            Ok(client.query(sql, &[]).await?)
        })?;
        rows.iter()
            .map(|row| catalog::decode_project(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
            .collect()
    }

    fn delete_project(&self, id: &str) -> Result<bool, StoreError> {
        self.writer.run(async |client| {
            let transaction = client.transaction().await?;
            let deleted = transaction.execute("DELETE FROM projects WHERE id = $1", &[&id]).await? == 1;
            notify(&transaction, id).await?;
            transaction.commit().await?;
            Ok(deleted)
        })
    }

    fn upsert_examples(&self, project: &str, examples: &[ExampleRow]) -> Result<UpsertCounts, StoreError> {
        let longer = PER_EXAMPLE.saturating_mul(u32::try_from(examples.len()).unwrap_or(u32::MAX));
        self.writer.run_longer(longer, async |client| {
            let transaction = client.transaction().await?;
            let mut sha256s: Vec<&str> = examples.iter().map(|e| e.sha256.as_str()).collect();
            sha256s.sort_unstable();
            sha256s.dedup();
            self.check_declared(&transaction, Kind::Blob, &sha256s).await?;
            // One read for the whole batch, then prepared writes sent all at once (pipelined:
            // one round trip for the batch, not one per changed example). Decisions see the
            // batch's own earlier writes, and the writes reach the server in the batch's order.
            let ids: Vec<&str> = examples.iter().map(|e| e.external_id.as_str()).collect();
            let mut stored: HashMap<String, StoredExample> = transaction
                .query(
                    "SELECT external_id, class_name, sha256, tensor_shape, metadata, label_revision FROM examples
                     WHERE project_id = $1 AND external_id = ANY($2) FOR UPDATE",
                    &[&project, &ids],
                )
                .await?
                .iter()
                .map(|row| {
                    let content = (row.get(1), row.get(2), row.get(3), row.get(4));
                    (row.get(0), StoredExample { content, label_revision: row.get::<_, i64>(5) as u64 })
                })
                .collect();
            let refresh = transaction
                .prepare("UPDATE examples SET label_revision = $3 WHERE project_id = $1 AND external_id = $2")
                .await?;
            let write = transaction
                .prepare(
                    "INSERT INTO examples
                 (project_id, external_id, class_name, sha256, size_bytes, tensor_shape, metadata, updated_unix_ms,
                  label_revision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (project_id, external_id) DO UPDATE SET
                  class_name = excluded.class_name, sha256 = excluded.sha256, size_bytes = excluded.size_bytes,
                  tensor_shape = excluded.tensor_shape, metadata = excluded.metadata,
                  updated_unix_ms = excluded.updated_unix_ms, label_revision = excluded.label_revision",
                )
                .await?;
            let mut counts = UpsertCounts::default();
            let mut writes = Vec::new();
            for example in examples {
                let upsert = Upsert::of(example, stored.get(&example.external_id).cloned());
                upsert.count(&mut counts);
                let (shape, metadata) = example.encoded();
                match upsert {
                    Upsert::Stale => continue,
                    Upsert::Unchanged(false) => {}
                    Upsert::Unchanged(true) => writes.push(Write::new(example, None)),
                    Upsert::Insert | Upsert::Update => {
                        writes.push(Write::new(example, Some((shape.clone(), metadata.clone()))));
                    }
                }
                let content = (example.class_name.clone(), example.sha256.clone(), shape, metadata);
                stored.insert(
                    example.external_id.clone(),
                    StoredExample { content, label_revision: example.label_revision },
                );
            }
            let sent = writes.iter().map(|change| match change.params(&project) {
                (params, false) => transaction.execute_raw(&refresh, params),
                (params, true) => transaction.execute_raw(&write, params),
            });
            // Every answer, then the first error by position: a write that fails aborts the
            // transaction, and the writes after it fail for that reason only (25P02), which
            // may arrive first.
            for result in futures_util::future::join_all(sent).await {
                result?;
            }
            transaction.commit().await?;
            Ok(counts)
        })
    }

    fn delete_examples(&self, project: &str, external_ids: &[String]) -> Result<(u64, u64), StoreError> {
        let deleted = self.writer.execute(
            "DELETE FROM examples WHERE project_id = $1 AND external_id = ANY($2)",
            &[&project, &external_ids],
        )?;
        Ok((deleted, external_ids.len() as u64 - deleted))
    }

    fn examples(&self, project: &str, after: &str, limit: usize) -> Result<Vec<ExampleRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.readers.run(async |client| {
            Ok(client
                .query(
                    "SELECT external_id, class_name, sha256, size_bytes, tensor_shape, metadata, updated_unix_ms,
                        label_revision
                 FROM examples WHERE project_id = $1 AND external_id > $2 ORDER BY external_id LIMIT $3",
                    &[&project, &after, &limit],
                )
                .await?)
        })?;
        rows.iter().map(|row| example(project, row)).collect()
    }

    fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        // On the collector's session (garbage collection's scan): a long scan on the reading
        // one would make every other read wait for it.
        let rows = self.collector.run_longer(SCAN_ALLOWANCE, async |client| {
            Ok(client.query("SELECT DISTINCT sha256 FROM examples", &[]).await?)
        })?;
        Ok(strings(rows).into_iter().collect())
    }

    fn count_examples(&self, project: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self.readers.run(async |client| {
            Ok(client
                .query(
                    "SELECT class_name, COUNT(*) FROM examples WHERE project_id = $1 GROUP BY class_name",
                    &[&project],
                )
                .await?)
        })?;
        Ok(rows.iter().map(|row| (row.get(0), row.get::<_, i64>(1) as u64)).collect())
    }

    fn next_version_number(&self, project: &str) -> Result<u32, StoreError> {
        let max: Option<i64> = self.readers.run(async |client| {
            Ok(client
                .query_one("SELECT MAX(number) FROM model_versions WHERE project_id = $1", &[&project])
                .await?
                .get(0))
        })?;
        Ok(max.map_or(0, |max| max as u32) + 1)
    }

    fn record_version(&self, manifest: &Manifest, created_unix_ms: i64) -> Result<(), StoreError> {
        let (project, version, number) = (&manifest.project_id, &manifest.version, i64::from(manifest.number));
        let json = catalog::encode_manifest(manifest)?;
        let weights = &manifest.weights_sha256;
        self.writer.run(async |client| {
            let transaction = client.transaction().await?;
            if !weights.is_empty() {
                self.check_declared(&transaction, Kind::Weights, &[weights.as_str()]).await?;
            }
            transaction
                .execute(
                    "INSERT INTO model_versions (project_id, version, number, manifest, created_unix_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                    &[project, version, &number, &json, &created_unix_ms],
                )
                .await?;
            transaction.commit().await?;
            Ok(())
        })
    }

    fn versions(&self, project: &str) -> Result<Vec<VersionRow>, StoreError> {
        let rows = self.readers.run(async |client| {
            Ok(client
                .query(
                    "SELECT version, number, manifest, created_unix_ms FROM model_versions WHERE project_id = $1
                 ORDER BY number DESC",
                    &[&project],
                )
                .await?)
        })?;
        rows.iter()
            .map(|row| {
                let version: String = row.get(0);
                let manifest = catalog::decode_manifest(project, &version, row.get(2))?;
                Ok(VersionRow { version, number: row.get::<_, i64>(1) as u32, manifest, created_unix_ms: row.get(3) })
            })
            .collect()
    }

    fn alone(&self) -> Result<Option<Alone<'_>>, StoreError> {
        if self.sharing == Sharing::Alone {
            return Ok(Some(Alone::always()));
        }
        // One collector at a time; replicas go on writing meanwhile (their writes are safe
        // through the object uses). The lock lives on the collector's session: if it breaks,
        // another replica may start collecting. Its process is read in the same call, so a
        // reconnect cannot slip between.
        let (taken, pid): (bool, i32) = self.collector.run(async |client| {
            let taken = client.query_one("SELECT pg_try_advisory_lock($1)", &[&COLLECTOR_LOCK]).await?.get(0);
            Ok((taken, self.collector.backend_pid()))
        })?;
        let still = move || {
            let unbroken = self.collector.run(async |client| {
                client.batch_execute("SELECT 1").await?;
                Ok(self.collector.backend_pid() == pid)
            });
            unbroken.unwrap_or(false)
        };
        Ok(taken.then(|| {
            Alone::until(still, move || {
                let released = self.collector.execute("SELECT pg_advisory_unlock($1)", &[&COLLECTOR_LOCK]);
                if let Err(error) = released {
                    // A broken session released it anyway.
                    tracing::warn!(%error, "cannot release the collector's lock after garbage collection");
                }
            })
        }))
    }

    fn declare_object_uses(&self, kind: Kind, sha256s: &[String]) -> Result<(), StoreError> {
        if self.sharing == Sharing::Alone || sha256s.is_empty() {
            return Ok(());
        }
        // Once each (a row is changed once per statement) and in order (two declarations that
        // share objects lock them in the same order: no deadlock), in bounded statements.
        let mut sha256s: Vec<&str> = sha256s.iter().map(String::as_str).collect();
        sha256s.sort_unstable();
        sha256s.dedup();
        for chunk in sha256s.chunks(DECLARATION_CHUNK) {
            self.writer.execute(
                "INSERT INTO object_uses (kind, sha256, used_at) SELECT $1, unnest($2::text[]), clock_timestamp()
                 ON CONFLICT (kind, sha256) DO UPDATE SET used_at = excluded.used_at",
                &[&kind.name(), &chunk],
            )?;
        }
        Ok(())
    }

    fn remove_unused_object(
        &self,
        kind: Kind,
        sha256: &str,
        grace: Duration,
        remove: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<bool, StoreError> {
        if self.sharing == Sharing::Alone {
            return Ok(remove());
        }
        let grace = millis(grace.max(SHARED_GRACE_FLOOR));
        self.collector.run_longer(REMOVAL_ALLOWANCE, async |client| {
            let transaction = client.transaction().await?;
            // A row to lock even for an object never declared: a declaration now waits for it.
            transaction.execute(
                "INSERT INTO object_uses (kind, sha256, used_at) VALUES ($1, $2, '-infinity') ON CONFLICT DO NOTHING",
                &[&kind.name(), &sha256],
            ).await?;
            let recent: bool = transaction
                .query_one(
                    "SELECT used_at > clock_timestamp() - $3::float8 * interval '1 millisecond' FROM object_uses
                     WHERE kind = $1 AND sha256 = $2 FOR UPDATE",
                    &[&kind.name(), &sha256, &grace],
                )
                .await?
                .get(0);
            // Referenced since the round read the references (a long round): it stays.
            let referenced: bool = match kind {
                Kind::Blob => transaction
                    .query_one("SELECT EXISTS (SELECT 1 FROM examples WHERE sha256 = $1)", &[&sha256])
                    .await?
                    .get(0),
                Kind::Weights => transaction
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM model_versions WHERE strpos(manifest, $1) > 0)",
                        &[&sha256],
                    )
                    .await?
                    .get(0),
            };
            // The removal blocks, off this runtime (the object store's client has its own), and
            // that is what keeps the row locked until the object is gone: no declaration can
            // slip in between. The call's deadline cannot fire meanwhile; the object store's
            // own timeouts bound it, and REMOVAL_ALLOWANCE covers them.
            if recent || referenced || !off_runtime(remove) {
                return Ok(false);
            }
            transaction
                .execute("DELETE FROM object_uses WHERE kind = $1 AND sha256 = $2", &[&kind.name(), &sha256])
                .await?;
            transaction.commit().await?;
            Ok(true)
        })
    }

    fn claim_training(&self, project: &str, replica: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        if self.sharing == Sharing::Alone {
            return Ok(Some(Lease::SOLE));
        }
        // The database's clock decides expiry, so replicas' clocks need not agree.
        let granted = self.writer.run(async |client| {
            Ok(client
                .query_opt(
                    "INSERT INTO training_leases (project_id, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + $3::float8 * interval '1 millisecond')
                 ON CONFLICT (project_id) DO UPDATE SET holder = excluded.holder, epoch = training_leases.epoch + 1,
                  expires_at = excluded.expires_at
                 WHERE training_leases.expires_at <= clock_timestamp() OR training_leases.holder = excluded.holder
                 RETURNING epoch",
                    &[&project, &replica, &millis(ttl)],
                )
                .await?)
        })?;
        Ok(granted.map(|row| Lease { epoch: row.get(0) }))
    }

    fn renew_training(&self, project: &str, replica: &str, lease: Lease, ttl: Duration) -> Result<bool, StoreError> {
        if self.sharing == Sharing::Alone {
            return Ok(true);
        }
        // Never a released lease: a renewal racing the release must not hold it again.
        let renewed = self.writer.execute(
            "UPDATE training_leases SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond'
             WHERE project_id = $1 AND holder = $2 AND epoch = $3 AND expires_at <> '-infinity'",
            &[&project, &replica, &lease.epoch, &millis(ttl)],
        )?;
        Ok(renewed == 1)
    }

    fn release_training(&self, project: &str, replica: &str, lease: Lease) -> Result<(), StoreError> {
        if self.sharing == Sharing::Alone {
            return Ok(());
        }
        self.writer.execute(
            "UPDATE training_leases SET expires_at = '-infinity' WHERE project_id = $1 AND holder = $2 AND epoch = $3",
            &[&project, &replica, &lease.epoch],
        )?;
        Ok(())
    }

    fn projects_to_take_over(&self) -> Result<Vec<String>, StoreError> {
        if self.sharing == Sharing::Alone {
            return Ok(Vec::new());
        }
        let rows = self.readers.run(async |client| {
            Ok(client.query(
                "SELECT DISTINCT j.project_id FROM jobs j LEFT JOIN training_leases l ON l.project_id = j.project_id
                 WHERE NOT j.finished AND (l.expires_at IS NULL OR l.expires_at <= clock_timestamp())",
                &[],
            ).await?)
        })?;
        Ok(strings(rows))
    }

    fn request_cancel(&self, job_id: &str) -> Result<bool, StoreError> {
        self.writer.run(async |client| {
            let asked = client
                .execute("UPDATE jobs SET cancel_requested = true WHERE job_id = $1 AND NOT finished", &[&job_id])
                .await?;
            Ok(asked == 1)
        })
    }

    fn cancel_requested(&self, job_id: &str) -> Result<bool, StoreError> {
        self.readers.run(async |client| {
            let row = client.query_opt("SELECT cancel_requested FROM jobs WHERE job_id = $1", &[&job_id]).await?;
            Ok(row.is_some_and(|row| row.get(0)))
        })
    }

    fn keep_locks(&self) -> Result<(), StoreError> {
        // A call on the writing session reconnects it if it broke, taking its lock again.
        self.writer.run(async |client| {
            client.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<(), StoreError> {
        self.listener.run_longer(timeout, async |live| {
            // A closed channel: the connection ended, and the next call reconnects.
            if let Ok(Some(notification)) = tokio::time::timeout(timeout, live.notifications.recv()).await {
                notification?;
                // Several changes at once need one refresh.
                while let Ok(notification) = live.notifications.try_recv() {
                    notification?;
                }
            }
            Ok(())
        })
    }

    #[cfg(test)]
    fn reset_active_version(&self, project: &str, version: &str) -> Result<(), StoreError> {
        self.writer.execute("UPDATE projects SET active_version = $2 WHERE id = $1", &[&project, &version])?;
        Ok(())
    }

    fn activate_version(
        &self,
        project: &str,
        version: &str,
        fits: &(dyn Fn(&Manifest, &ProjectSpec) -> bool + Sync),
        fence: Option<Fence<'_>>,
    ) -> Result<Activation, StoreError> {
        self.writer.run(async |client| {
            let transaction = client.transaction().await?;
            // The lease row stays locked until the commit: a takeover waits for this activation
            // to end, and then starts from the version it made active.
            if let Some(fence) = fence.filter(|fence| fence.lease != Lease::SOLE) {
                let held = transaction
                    .query_opt(
                        "SELECT 1 FROM training_leases WHERE project_id = $1 AND holder = $2 AND epoch = $3 FOR SHARE",
                        &[&project, &fence.replica, &fence.lease.epoch],
                    )
                    .await?;
                if held.is_none() {
                    return Ok(Activation::Fenced);
                }
            }
            let spec = transaction.query_opt("SELECT spec FROM projects WHERE id = $1 FOR UPDATE", &[&project]).await?;
            let manifest = transaction
                .query_opt(
                    "SELECT manifest FROM model_versions WHERE project_id = $1 AND version = $2",
                    &[&project, &version],
                )
                .await?;
            let (manifest, spec) = (manifest.as_ref().map(|row| row.get(0)), spec.as_ref().map(|row| row.get(0)));
            let outcome = catalog::activation(project, version, manifest, spec, fits)?;
            if outcome == Activation::Activated {
                // The activation time changes only if the version was not active already.
                transaction
                    .execute(
                        "UPDATE projects SET active_version = $2, activated_unix_ms = CASE WHEN active_version = $2
                          THEN activated_unix_ms ELSE $3 END WHERE id = $1",
                        &[&project, &version, &crate::clock::now_unix_ms()],
                    )
                    .await?;
                notify(&transaction, project).await?;
                transaction.commit().await?;
            }
            Ok(outcome)
        })
    }

    fn save_job(&self, record: &JobRecord) -> Result<(), StoreError> {
        let json = catalog::encode_job(record)?;
        self.writer.execute(
            "INSERT INTO jobs (job_id, project_id, finished, record, created_unix_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (job_id) DO UPDATE SET project_id = excluded.project_id, finished = excluded.finished,
              record = excluded.record, created_unix_ms = excluded.created_unix_ms,
              queued = jobs.queued AND NOT excluded.finished
             WHERE NOT jobs.finished",
            &[&record.job_id, &record.project_id, &record.state.is_terminal(), &json, &record.created_unix_ms],
        )?;
        Ok(())
    }

    fn jobs(&self, project: &str, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.readers.run(async |client| {
            Ok(client
                .query(
                    "SELECT job_id, finished, queued, record, created_unix_ms FROM jobs WHERE project_id = $1
                 ORDER BY created_unix_ms DESC, job_id DESC LIMIT $2",
                    &[&project, &limit],
                )
                .await?)
        })?;
        Ok(rows.iter().map(job_row).collect())
    }

    fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = self.readers.run(async |client| {
            Ok(client.query_opt("SELECT record FROM jobs WHERE job_id = $1", &[&job_id]).await?)
        })?;
        row.map(|row| catalog::decode_job(job_id, row.get(0))).transpose()
    }

    fn unfinished_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = self.readers.run(async |client| {
            Ok(client
                .query("SELECT job_id, finished, queued, record, created_unix_ms FROM jobs WHERE NOT finished", &[])
                .await?)
        })?;
        Ok(rows.iter().map(job_row).collect())
    }

    fn enqueue_job(&self, record: &JobRecord) -> Result<Option<JobRecord>, StoreError> {
        let (job_id, project, created_unix_ms) = (&record.job_id, &record.project_id, &record.created_unix_ms);
        let json = catalog::encode_job(record)?;
        self.writer.run(async |client| {
            // Replicas enqueue concurrently: the unique index decides, and a queued job taken
            // between the insert and the read leaves room for this one (tried again).
            for _ in 0..3 {
                let inserted = client
                    .execute(
                        "INSERT INTO jobs (job_id, project_id, finished, queued, record, created_unix_ms)
                     VALUES ($1, $2, false, true, $3, $4) ON CONFLICT (project_id) WHERE queued DO NOTHING",
                        &[job_id, project, &json, created_unix_ms],
                    )
                    .await?;
                if inserted == 1 {
                    return Ok(None);
                }
                let queued = client
                    .query_opt("SELECT job_id, record FROM jobs WHERE project_id = $1 AND queued", &[project])
                    .await?;
                if let Some(row) = queued {
                    return catalog::decode_job(row.get(0), row.get(1)).map(Some);
                }
            }
            Err(StoreError::Contended)
        })
    }

    fn take_queued_job(&self, project: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = self.writer.run(async |client| {
            Ok(client
                .query_opt(
                    "UPDATE jobs SET queued = false WHERE project_id = $1 AND queued RETURNING job_id, record",
                    &[&project],
                )
                .await?)
        })?;
        row.map(|row| catalog::decode_job(row.get(0), row.get(1))).transpose()
    }

    fn cancel_queued_job(&self, ended: &JobRecord) -> Result<bool, StoreError> {
        let json = catalog::encode_job(ended)?;
        let ended = self.writer.execute(
            "UPDATE jobs SET queued = false, finished = true, record = $2 WHERE job_id = $1 AND queued",
            &[&ended.job_id, &json],
        )?;
        Ok(ended == 1)
    }

    fn end_unreadable_job(&self, job_id: &str, project: &str) -> Result<bool, StoreError> {
        let ended = self.writer.execute(
            "UPDATE jobs SET finished = true WHERE job_id = $1 AND project_id = $2 AND NOT finished AND NOT queued",
            &[&job_id, &project],
        )?;
        Ok(ended == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use alps_system_tests::Relay;

    use super::*;
    use crate::{
        projects::spec::tests::spec,
        store::{
            conformance::{job, postgres_ca, postgres_database},
            database_tls::DatabaseTlsError,
        },
        training::record::JobState,
    };

    #[test]
    fn a_second_server_on_the_same_database_is_refused_until_the_first_closes() {
        let url = postgres_database();
        let first = PostgresCatalog::open(&url, None).unwrap();
        first.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        let second = PostgresCatalog::open(&url, None).unwrap_err();
        assert!(matches!(second, OpenError::Store(StoreError::Taken)), "{second}");
        assert!(
            second.to_string().starts_with("another alps-server uses this database (it holds the catalogue's lock)"),
            "{second}"
        );
        drop(first);
        // Migrations already applied are not applied again; the data is there.
        let reopened = PostgresCatalog::open(&url, None).unwrap();
        assert_eq!(reopened.projects().unwrap().len(), 1);
    }

    #[test]
    fn a_terminated_session_fails_at_most_one_call_as_transient_and_the_next_reconnects() {
        let url = postgres_database();
        let catalog = PostgresCatalog::open(&url, None).unwrap();
        catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        assert_eq!(catalog.projects().unwrap().len(), 1, "the reading session is open");
        let mut admin = postgres::Client::connect(&url, NoTls).unwrap();
        let terminated = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'alps-server' AND datname = current_database()",
                &[],
            )
            .unwrap();
        assert_eq!(terminated, 2, "the reading and the writing session");
        // The session's connection is driven between calls: if the server's word that it ended
        // arrived before the next call, that call reconnects; otherwise it fails as transient.
        if let Err(broken) = catalog.projects() {
            assert_eq!(broken.failure(), Failure::Transient, "{broken}");
        }
        assert_eq!(catalog.projects().unwrap().len(), 1, "reconnected");
        // The writing session breaks, reconnects and takes the server lock again.
        let mut changed = spec();
        changed.mc_iterations = 9;
        let write = catalog.upsert_project(&changed, 0, "untrained", &|_| false);
        let write = write.or_else(|error| {
            assert_eq!(error.failure(), Failure::Transient, "{error}");
            catalog.upsert_project(&changed, 0, "untrained", &|_| false)
        });
        assert!(!write.unwrap());
        assert_eq!(catalog.project("cars").unwrap().unwrap().spec.mc_iterations, 9);
        assert!(matches!(PostgresCatalog::open(&url, None).unwrap_err(), OpenError::Store(StoreError::Taken)));
    }

    /// A runtime, and a `tokio-postgres` client on it for `url`.
    fn async_client(url: &str) -> (tokio::runtime::Runtime, Client) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
            tokio::spawn(connection);
            client
        });
        (runtime, client)
    }

    #[test]
    fn a_lock_held_by_our_own_broken_session_is_taken_back_and_another_holder_is_respected() {
        let url = postgres_database();
        let mut old = postgres::Client::connect(&url, NoTls).unwrap();
        let (runtime, new) = async_client(&url);
        assert!(old.query_one("SELECT pg_try_advisory_lock($1)", &[&SERVER_LOCK]).unwrap().get::<_, bool>(0));
        let old_pid: i32 = old.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let other_pid = old_pid + 1;
        let take = |ours: &[i32]| runtime.block_on(take_lock(&new, SERVER_LOCK, ours));
        assert!(matches!(take(&[other_pid]), Err(StoreError::Taken)), "another holder");
        assert!(matches!(take(&[]), Err(StoreError::Taken)), "no previous session");
        take(&[other_pid, old_pid]).unwrap();
        assert!(old.is_valid(Duration::from_secs(5)).is_err(), "the old session was ended");
    }

    /// `url` reached through a relay to its server that a test can freeze (the system tests'
    /// [`Relay`]: connections stay open and no byte passes, as with a server that froze or a
    /// network that drops its packets), and the relay.
    fn relayed(url: &str) -> (String, Arc<Relay>) {
        let config = Config::from_str(url).unwrap();
        let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else { panic!("{url}") };
        let server = format!("{host}:{}", config.get_ports()[0]);
        let relay = Relay::start(&server);
        let relayed = url.replace(&server, &relay.address());
        assert_ne!(relayed, url);
        (relayed, Arc::new(relay))
    }

    /// The test spec with another number of MC iterations.
    fn changed() -> ProjectSpec {
        let mut changed = spec();
        changed.mc_iterations = 9;
        changed
    }

    #[test]
    fn a_server_that_stops_answering_fails_calls_as_transient_at_their_deadline_and_serves_again_when_it_answers() {
        let url = postgres_database();
        let (relayed, relay) = relayed(&url);
        let deadline = Duration::from_secs(3);
        let catalog = Arc::new(PostgresCatalog::open_within(&relayed, None, Sharing::Alone, "", deadline).unwrap());
        catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        assert_eq!(catalog.projects().unwrap().len(), 1);
        let pids = (catalog.readers.sessions[0].backend_pid(), catalog.writer.backend_pid());
        // Calls run on detached threads, so that a call that never returns fails the test
        // instead of hanging it; each answer's time since they started is checked too.
        type Call = Box<dyn FnOnce(&PostgresCatalog) -> Result<(), StoreError> + Send>;
        let timed_out = |calls: Vec<(&str, Call)>| {
            let start = std::time::Instant::now();
            let answers: Vec<_> = calls
                .into_iter()
                .map(|(name, call)| {
                    let (answer, answered) = std::sync::mpsc::channel();
                    let catalog = Arc::clone(&catalog);
                    std::thread::spawn(move || answer.send(call(&catalog)));
                    (name, answered)
                })
                .collect();
            for (name, answered) in answers {
                let result = answered.recv_timeout(Duration::from_secs(60));
                let error = result.unwrap_or_else(|_| panic!("{name}: no answer after 60 s")).unwrap_err();
                // A call behind one that hangs gives up waiting for the session (nothing sent).
                let message = match &error {
                    StoreError::TimedOut(limit) if *limit >= deadline => "the database did not answer within",
                    StoreError::SessionBusy(limit) if *limit >= deadline => "the database session stayed busy for",
                    _ => panic!("{name}: {error}"),
                };
                assert!(error.to_string().starts_with(message), "{error}");
                assert_eq!(error.failure(), Failure::Transient, "{name}");
                // Calls queued behind one that hangs fail within their own wait for the session
                // and their own run (two deadlines), not one after the other (the third after
                // three). A bound with room for a loaded machine, not a timing.
                assert!(start.elapsed() < deadline * 5 / 2, "{name} answered after {:?}", start.elapsed());
            }
        };
        // The server stops answering in the middle of a write's transaction (after its read).
        let freezer = Arc::clone(&relay);
        let freezing: Call = Box::new(move |catalog| {
            let freeze = |_: &ProjectSpec| {
                freezer.freeze();
                false
            };
            catalog.upsert_project(&changed(), 0, "untrained", &freeze).map(drop)
        });
        timed_out(vec![("a write frozen mid-transaction", freezing)]);
        let read = || -> Call { Box::new(|catalog| catalog.projects().map(drop)) };
        // A connected session (reading), and one that must connect (listening).
        timed_out(vec![("read", read())]);
        timed_out(vec![("listen", Box::new(|catalog| catalog.wait_for_change(Duration::from_millis(100))))]);
        timed_out(vec![("a queued read", read()), ("another", read()), ("a third", read())]);
        relay.restore();
        // The write given up on did not land; the sessions given up on were replaced (the
        // writer took the server lock back from its own old session).
        assert_eq!(catalog.project("cars").unwrap().unwrap().spec.mc_iterations, spec().mc_iterations);
        assert_ne!(catalog.readers.sessions[0].backend_pid(), pids.0, "a new reading session");
        assert!(!catalog.upsert_project(&changed(), 0, "untrained", &|_| false).unwrap());
        assert_ne!(catalog.writer.backend_pid(), pids.1, "a new writing session");
        assert_eq!(catalog.project("cars").unwrap().unwrap().spec.mc_iterations, 9);
        catalog.wait_for_change(Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn a_read_runs_beside_one_that_waits_in_the_server_given_more_than_one_reading_session() {
        let url = postgres_database();
        let deadline = Duration::from_secs(2);
        for sessions in [1, READERS] {
            let catalog = PostgresCatalog::open_within(&url, None, Sharing::Replicas, "r", deadline).unwrap();
            let catalog = Arc::new(catalog.reading_through(sessions));
            catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
            let mut admin = postgres::Client::connect(&url, NoTls).unwrap();
            admin.execute("SELECT pg_advisory_lock(77)", &[]).unwrap();
            // A read that waits for the lock in the server, holding the first reading session
            // meanwhile (allowed longer than the deadline of a read queued behind it).
            let waiting = std::thread::spawn({
                let catalog = Arc::clone(&catalog);
                let lock = async |client: &mut Live| Ok(client.execute("SELECT pg_advisory_lock(77)", &[]).await?);
                move || catalog.readers.sessions[0].run_longer(Duration::from_secs(60), lock)
            });
            let waits = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                         WHERE l.locktype = 'advisory' AND l.objid = 77 AND NOT l.granted AND d.datname = current_database()";
            while admin.query_one(waits, &[]).unwrap().get::<_, i64>(0) == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let read = catalog.projects();
            admin.execute("SELECT pg_advisory_unlock(77)", &[]).unwrap();
            if sessions == 1 {
                assert!(matches!(read, Err(StoreError::SessionBusy(_))), "queued behind the waiting read: {read:?}");
            } else {
                assert_eq!(read.unwrap().len(), 1, "another session answered");
            }
            waiting.join().unwrap().unwrap();
            catalog.delete_project("cars").unwrap();
        }
    }

    #[test]
    fn a_read_refused_a_new_session_for_the_connection_limit_waits_for_an_open_one() {
        // A role allowed 2 connections: the writing session and one reading session.
        let server = super::super::conformance::postgres_server();
        let mut admin = postgres::Client::connect(server, NoTls).unwrap();
        let role = format!("limited_{}", std::process::id());
        admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'secret' CONNECTION LIMIT 2")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {role} OWNER {role}")).unwrap();
        let address = server.rsplit_once('@').and_then(|(_, rest)| rest.rsplit_once('/')).unwrap().0;
        let catalog = PostgresCatalog::open(&format!("postgres://{role}:secret@{address}/{role}"), None).unwrap();
        let catalog = Arc::new(catalog.reading_through(READERS));
        catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        assert_eq!(catalog.projects().unwrap().len(), 1, "the first reading session opened");
        let mut admin =
            postgres::Client::connect(&format!("{}/{role}", server.rsplit_once('/').unwrap().0), NoTls).unwrap();
        admin.execute("SELECT pg_advisory_lock(78)", &[]).unwrap();
        let waiting = std::thread::spawn({
            let catalog = Arc::clone(&catalog);
            let lock = async |client: &mut Live| Ok(client.execute("SELECT pg_advisory_lock(78)", &[]).await?);
            move || catalog.readers.sessions[0].run_longer(Duration::from_secs(60), lock)
        });
        let waits = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 78 AND NOT granted";
        while admin.query_one(waits, &[]).unwrap().get::<_, i64>(0) == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The read finds the open session busy and a second one refused ("too many connections
        // for role"): it waits for the open one, which is freed a moment later.
        let read = std::thread::spawn({
            let catalog = Arc::clone(&catalog);
            move || catalog.projects().map(|projects| projects.len())
        });
        std::thread::sleep(Duration::from_millis(500));
        admin.execute("SELECT pg_advisory_unlock(78)", &[]).unwrap();
        waiting.join().unwrap().unwrap();
        assert_eq!(read.join().unwrap().unwrap(), 1, "answered on the open session, not UNAVAILABLE");
    }

    #[test]
    fn a_session_ended_while_idle_is_replaced_before_the_next_call() {
        let url = postgres_database();
        let catalog = PostgresCatalog::open(&url, None).unwrap();
        catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        assert_eq!(catalog.projects().unwrap().len(), 1);
        let mut admin = postgres::Client::connect(&url, NoTls).unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'alps-server' AND datname = current_database()",
                &[],
            )
            .unwrap();
        std::thread::sleep(IDLE_PROBE + Duration::from_millis(200));
        assert_eq!(catalog.projects().unwrap().len(), 1, "the reader was probed and replaced");
        assert!(!catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap(), "so was the writer");
    }

    #[test]
    fn an_unreachable_server_is_transient_and_a_bad_url_names_the_flag() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = PostgresCatalog::open(&format!("postgres://alps:secret@{closed}/alps"), None).unwrap_err();
        let OpenError::Unreachable { source, .. } = &error else { panic!("{error}") };
        assert_eq!(source.failure(), Failure::Transient, "{error}");
        assert!(error.to_string().starts_with(&format!("cannot use PostgreSQL at {closed}/alps: ")), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
        let url = PostgresCatalog::open("postgres://alps:secret@host:notaport/alps", None).unwrap_err();
        assert!(url.to_string().starts_with("--database-url is not a PostgreSQL URL"), "{url}");
        assert!(!url.to_string().contains("secret"), "{url}");
    }

    /// Sessions of the catalogue at `url` that use TLS, as the server sees them.
    fn tls_sessions(url: &str) -> i64 {
        let mut admin = postgres::Client::connect(url, NoTls).unwrap();
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'alps-server' AND a.datname = current_database() AND s.ssl",
                &[],
            )
            .unwrap();
        row.get(0)
    }

    #[test]
    fn tls_is_used_when_asked_and_the_server_certificate_and_name_are_verified() {
        let url = postgres_database();
        let ca = Some(postgres_ca());
        // libpq's verify-full, with the CA that signed the server's certificate: both sessions
        // are encrypted.
        let catalog = PostgresCatalog::open(&format!("{url}?sslmode=verify-full"), ca).unwrap();
        assert!(catalog.projects().unwrap().is_empty());
        assert_eq!(tls_sessions(&url), 2);
        drop(catalog);
        // Without it: plaintext, as before.
        let catalog = PostgresCatalog::open(&url, None).unwrap();
        assert!(catalog.projects().unwrap().is_empty());
        assert_eq!(tls_sessions(&url), 0);
        drop(catalog);
        // A server whose certificate the system's roots do not vouch for is refused, even with
        // `require`; so is one reached under a name its certificate does not carry.
        let unverified = PostgresCatalog::open(&format!("{url}?sslmode=require"), None).unwrap_err();
        assert!(unverified.to_string().contains("certificate"), "{unverified}");
        let by_name = url.replace("127.0.0.1", "localhost");
        let misnamed = PostgresCatalog::open(&format!("{by_name}?sslmode=verify-ca"), ca).unwrap_err();
        assert!(misnamed.to_string().contains("certificate"), "{misnamed}");
        for error in [&unverified, &misnamed] {
            assert!(!error.to_string().contains(url.split(['@', ':']).nth(2).unwrap()), "no password: {error}");
        }
        // A CA file the URL does not use, and one that is not PEM, are refused.
        let ignored = PostgresCatalog::open(&url, ca).unwrap_err();
        assert!(matches!(ignored, OpenError::Tls(DatabaseTlsError::NotAsked)), "{ignored}");
        let not_pem = tempfile::NamedTempFile::new().unwrap();
        let bad = PostgresCatalog::open(&format!("{url}?sslmode=require"), Some(not_pem.path())).unwrap_err();
        assert!(bad.to_string().contains("no PEM certificate"), "{bad}");
    }

    #[test]
    fn replicas_share_the_database_but_not_with_a_server_that_must_be_alone() {
        let url = postgres_database();
        let replica = |id: &str| PostgresCatalog::open_as(&url, None, Sharing::Replicas, id);
        let (a, b) = (replica("a").unwrap(), replica("b").unwrap());
        a.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        assert_eq!(b.projects().unwrap().len(), 1);
        let alone = PostgresCatalog::open(&url, None).unwrap_err();
        assert!(matches!(alone, OpenError::Store(StoreError::Taken)), "{alone}");
        // Garbage collection: one replica's turn at a time, and replicas start meanwhile.
        let turn = a.alone().unwrap().expect("a's turn");
        assert!(turn.still());
        assert!(b.alone().unwrap().is_none(), "not while a collects");
        let c = replica("c").unwrap();
        drop(turn);
        assert!(c.alone().unwrap().is_some(), "once a is done");
    }

    #[test]
    fn an_object_declared_in_use_is_not_removed_and_a_declaration_waits_for_a_removal() {
        let url = postgres_database();
        let replica = |id: &str| PostgresCatalog::open_as(&url, None, Sharing::Replicas, id).unwrap();
        let (writer, collector) = (replica("writer"), replica("collector"));
        let hour = Duration::from_secs(3600);
        let (declared, undeclared) = ("a".repeat(64), "b".repeat(64));
        writer.declare_object_uses(Kind::Blob, std::slice::from_ref(&declared)).unwrap();
        let mut removals = 0;
        let mut count = || {
            removals += 1;
            true
        };
        assert!(!collector.remove_unused_object(Kind::Blob, &declared, hour, &mut count).unwrap(), "declared just now");
        assert!(
            !collector.remove_unused_object(Kind::Blob, &declared, Duration::ZERO, &mut count).unwrap(),
            "the floor"
        );
        assert!(collector.remove_unused_object(Kind::Weights, &declared, hour, &mut count).unwrap(), "another kind");
        assert_eq!(removals, 1);
        // While the removal of an object runs, a declaration of it waits until it is over (and
        // then writes the object again).
        let done = std::sync::atomic::AtomicBool::new(false);
        let (started, start) = std::sync::mpsc::channel();
        let waited = std::thread::scope(|scope| {
            let (writer, undeclared, done) = (&writer, &undeclared, &done);
            scope.spawn(move || {
                start.recv().unwrap();
                writer.declare_object_uses(Kind::Blob, std::slice::from_ref(undeclared)).unwrap();
                done.store(true, Ordering::SeqCst);
            });
            let mut remove = || {
                started.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(500));
                !done.load(Ordering::SeqCst)
            };
            collector.remove_unused_object(Kind::Blob, undeclared, hour, &mut remove).unwrap()
        });
        assert!(waited, "the declaration waited for the removal");
        assert!(
            !collector.remove_unused_object(Kind::Blob, &undeclared, hour, &mut || true).unwrap(),
            "declared since"
        );
        // A write naming an object that is not declared (removed after a write that took too
        // long) is refused, as retryable; declared, it goes through.
        writer.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        let mut example = crate::store::conformance::labelled("x", "sedan", 0);
        example.sha256 = "e".repeat(64);
        let refused = writer.upsert_examples("cars", std::slice::from_ref(&example)).unwrap_err();
        assert!(matches!(refused, StoreError::Collected) && refused.failure() == Failure::Transient, "{refused}");
        writer.declare_object_uses(Kind::Blob, std::slice::from_ref(&example.sha256)).unwrap();
        writer.upsert_examples("cars", std::slice::from_ref(&example)).unwrap();
        let manifest = Manifest { weights_sha256: "f".repeat(64), ..Manifest::example("cars", 1) };
        assert!(matches!(writer.record_version(&manifest, 0), Err(StoreError::Collected)));
        writer.declare_object_uses(Kind::Weights, &["f".repeat(64)]).unwrap();
        writer.record_version(&manifest, 0).unwrap();
        // Declared long ago but referenced since the round read the references: it stays.
        let mut admin = postgres::Client::connect(&url, NoTls).unwrap();
        admin.execute("UPDATE object_uses SET used_at = '-infinity'", &[]).unwrap();
        for (kind, sha256) in [(Kind::Blob, "e".repeat(64)), (Kind::Weights, "f".repeat(64))] {
            assert!(!collector.remove_unused_object(kind, &sha256, hour, &mut || true).unwrap(), "{kind:?} referenced");
        }
        assert!(
            collector.remove_unused_object(Kind::Blob, &declared, hour, &mut || true).unwrap(),
            "unreferenced, old"
        );
        // A server alone on its database records nothing and removes what it is asked to.
        drop((writer, collector));
        let alone = PostgresCatalog::open(&url, None).unwrap();
        assert!(alone.remove_unused_object(Kind::Blob, &undeclared, hour, &mut || true).unwrap());
    }

    #[test]
    fn a_training_lease_is_held_until_it_expires_then_taken_over_and_the_old_holder_is_fenced() {
        let url = postgres_database();
        let replica = |id: &str| PostgresCatalog::open_as(&url, None, Sharing::Replicas, id).unwrap();
        let (a, b) = (replica("a"), replica("b"));
        a.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        let (long, short) = (Duration::from_secs(60), Duration::from_secs(2));
        let first = a.claim_training("cars", "a", short).unwrap().expect("free");
        assert_eq!(first, Lease { epoch: 1 });
        assert_eq!(b.claim_training("cars", "b", long).unwrap(), None, "held by a");
        assert_eq!(b.claim_training("boats", "b", long).unwrap(), Some(Lease { epoch: 1 }), "one lease per project");
        assert!(a.renew_training("cars", "a", first, short).unwrap());
        // a stops renewing (paused, cut off): once it expires, b takes it over with a new epoch.
        std::thread::sleep(short + Duration::from_millis(300));
        assert_eq!(a.projects_to_take_over().unwrap(), Vec::<String>::new(), "no unfinished job");
        a.save_job(&job("job-1", "cars", JobState::Running, 0, "running on a")).unwrap();
        assert_eq!(b.projects_to_take_over().unwrap(), ["cars"]);
        let second = b.claim_training("cars", "b", long).unwrap().expect("expired");
        assert_eq!(second, Lease { epoch: 2 });
        assert!(b.projects_to_take_over().unwrap().is_empty(), "held again");
        // a learns it lost the lease, and cannot activate what it trained under it.
        assert!(!a.renew_training("cars", "a", first, long).unwrap());
        a.record_version(&Manifest::example("cars", 1), 0).unwrap();
        let fence = |replica, lease| Some(Fence { replica, lease });
        assert_eq!(a.activate_version("cars", "v1", &|_, _| true, fence("a", first)).unwrap(), Activation::Fenced);
        assert_eq!(a.project("cars").unwrap().unwrap().active_version, "untrained");
        assert_eq!(b.activate_version("cars", "v1", &|_, _| true, fence("b", second)).unwrap(), Activation::Activated);
        // Released, it is free at once (a late renewal does not hold it again), and the next
        // grant's epoch is higher still; a replica that still holds one (its release failed)
        // is granted it again.
        b.release_training("cars", "b", second).unwrap();
        assert!(!b.renew_training("cars", "b", second, long).unwrap());
        assert_eq!(a.claim_training("cars", "a", long).unwrap(), Some(Lease { epoch: 3 }));
        assert_eq!(a.claim_training("cars", "a", long).unwrap(), Some(Lease { epoch: 4 }));
        assert_eq!(b.claim_training("cars", "b", long).unwrap(), None);
        // A server alone on its database needs no lease.
        drop((a, b));
        let alone = PostgresCatalog::open(&url, None).unwrap();
        assert_eq!(alone.claim_training("cars", "", long).unwrap(), Some(Lease::SOLE));
    }

    #[test]
    fn a_change_on_one_replica_wakes_the_others() {
        let url = postgres_database();
        let replica = |id: &str| PostgresCatalog::open_as(&url, None, Sharing::Replicas, id).unwrap();
        let (a, b) = (replica("a"), replica("b"));
        // Listening starts with the first wait; a short one opens the session.
        b.wait_for_change(Duration::from_millis(10)).unwrap();
        let (woke, waking) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| woke.send(b.wait_for_change(Duration::from_secs(120))).unwrap());
            std::thread::sleep(Duration::from_millis(300));
            assert!(waking.try_recv().is_err(), "nothing changed yet");
            a.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
            waking.recv_timeout(Duration::from_secs(30)).expect("woken by the change").unwrap();
        });
    }

    #[test]
    fn lock_holders_are_found_for_keys_of_either_sign() {
        let url = postgres_database();
        let mut holder = postgres::Client::connect(&url, NoTls).unwrap();
        let (runtime, reader) = async_client(&url);
        let pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        for key in [SERVER_LOCK, MIGRATION_LOCK, -0x1234_5678_9abc_def0, i64::MIN + 7, i64::MAX] {
            assert!(runtime.block_on(lock_holders(&reader, key)).unwrap().is_empty(), "{key:x}");
            holder.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
            assert_eq!(runtime.block_on(lock_holders(&reader, key)).unwrap(), [pid], "{key:x}");
            holder.execute("SELECT pg_advisory_unlock($1)", &[&key]).unwrap();
        }
    }
}
