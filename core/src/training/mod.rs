//! Training and the model lifecycle: labelled examples, background training jobs (at most one
//! running per project; further triggers coalesce into one queued job, kept in the catalogue; at
//! most `--training-jobs` across projects, on the bounded [`executor`]), and model versions
//! written crash-safely and activated only once complete (head-only versions store the head's
//! last layer alone, the only part a head-only job trains, [`versions`]).
//!
//! The server that trains a project holds its lease ([`Catalog::claim_training`]; a server
//! alone on its catalogue always does): it runs the project's jobs one after the other, taking
//! the queued one, whichever server the trigger reached, when a job ends. With replicas the
//! lease expires unless renewed, another replica takes over the work of one that stopped or
//! was cut off (`leases`), and a version is activated only under the lease its job ran under
//! and only over the version the job started from. Progress and cancel requests go through the
//! catalogue too.

pub mod examples;
mod executor;
mod leases;
pub mod record;
mod train;
pub mod versions;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::watch;

use self::{
    executor::Slots,
    record::{JobRecord, JobState, Manifest, Phase, TrainingParams},
    train::{EmbeddingCache, Run, TrainError},
};
use crate::{
    clock::now_unix_ms,
    memory::{Held, MemoryBudget},
    metrics::Metrics,
    models::{McModel, files::ModelFiles},
    projects::{Project, Projects, UNTRAINED_VERSION},
    store::{
        ModelsDir, StorageFailure,
        blobs::BlobStore,
        catalog::{Activation, Catalog, Fence, Lease, StoreError},
    },
};

/// Why a training request failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// Unknown project or job.
    #[error("{0}")]
    NotFound(String),
    /// Nothing to train on (fewer than 2 classes, no examples) or an untrainable model.
    #[error("{0}")]
    Precondition(String),
    /// The catalogue failed.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
}

impl From<StoreError> for TrainingError {
    fn from(error: StoreError) -> Self {
        Self::Storage(error.into())
    }
}

/// Why a job's version was not activated when the project changed while the job trained.
const CHANGED_MEANWHILE: &str =
    "the project's classes, model or preprocessing changed while the job trained; this version does not fit them";

/// Why [`Trainer::load_and_activate`] left a version inactive.
enum Refused {
    /// Made for other classes, model or preprocessing than the project has.
    Unfit,
    /// The project or the version is gone.
    Unknown,
    /// It does not load (client message).
    Load(String),
    /// The job's lease is another replica's now.
    Fenced,
    /// The database failed.
    Store(StoreError),
}

/// Why a job that was queued or running when the server stopped did not finish.
const INTERRUPTED: &str = "interrupted: the server stopped while this job was queued or running";
/// How often a running job's progress is written to the catalogue (for other replicas).
const PROGRESS_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest wait between progress saves while they fail.
const PROGRESS_SAVE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);
/// Why a version is not activated, or a job stopped, when its replica lost the project's lease
/// to another replica (it was paused or cut off from the catalogue for longer than the lease).
const LOST_LEASE: &str = "another replica trains this project now: this one lost the project's training lease while the \
                          job ran (paused or cut off from the catalogue)";

/// The job a project runs on this server (or that waits for a training slot), and the lease
/// it runs under.
#[derive(Clone)]
struct Running {
    job_id: String,
    lease: Lease,
    /// Another replica took the lease over: the job stops, and nothing more runs under it.
    lost: bool,
}

struct LiveJob {
    record: watch::Sender<JobRecord>,
    cancel: Arc<AtomicBool>,
}

/// The jobs this server runs, by project. Taken before [`Trainer::live`] when both are; held
/// across catalogue calls (claims, takes), unlike the live records, which async handlers read.
#[derive(Default)]
struct State {
    running: HashMap<String, Running>,
}

/// What serves model versions, told of an activation before the version is swapped in: it
/// loads the version so that the first request after the swap does not wait for the load, and
/// the old version keeps serving meanwhile ("load first, then swap"). The inference engine in
/// the server; a seam so that training does not depend on the engine.
pub trait Serving: Send + Sync {
    /// Loads the model `project` serves at its `active_version`, blocking until it is ready.
    ///
    /// # Errors
    /// Why it cannot be served (missing or corrupt files), worded for the client.
    fn load(&self, project: &Project) -> Result<(), String>;
}

/// How the trainer runs jobs.
#[derive(Clone, Debug)]
pub struct TrainerSettings {
    /// Device jobs train on.
    pub device: tch::Device,
    /// The auto-activate policy: a new version whose validation accuracy is more than this
    /// below the active version's is not activated; `None` activates every version.
    pub max_accuracy_drop: Option<f32>,
    /// Jobs that train at once across all projects (at least 1); further jobs wait in order.
    pub concurrent_jobs: usize,
    /// Intra-op CPU threads each running job may use (at least 1): its share of the cores.
    pub threads_per_job: usize,
    /// This server's replica id: its jobs are recorded as its own.
    pub replica: String,
    /// Whether other replicas may share the catalogue (then the jobs of stopped replicas are
    /// taken over by [`crate::replicas`], not failed at start).
    pub follows_replicas: bool,
    /// How long a training lease lasts unless renewed (`--training-lease-secs`): how long
    /// another replica waits before it takes over the training of a replica that stopped.
    pub lease_ttl: std::time::Duration,
    /// The models' memory budget, shared with the inference cache: running jobs and the warm
    /// model hold their share of it.
    pub memory: Arc<MemoryBudget>,
}

/// Runs training jobs in the background.
pub struct Trainer {
    /// This server's replica id (see [`TrainerSettings::replica`]).
    replica: String,
    /// See [`TrainerSettings::follows_replicas`].
    follows_replicas: bool,
    /// See [`TrainerSettings::lease_ttl`].
    lease_ttl: std::time::Duration,
    /// See [`TrainerSettings::memory`].
    memory: Arc<MemoryBudget>,
    catalog: Arc<dyn Catalog>,
    blobs: Arc<BlobStore>,
    projects: Arc<Projects>,
    models_dir: ModelsDir,
    model_files: ModelFiles,
    serving: Arc<dyn Serving>,
    metrics: Arc<Metrics>,
    device: tch::Device,
    max_accuracy_drop: Option<f32>,
    slots: Slots,
    /// Set by [`Trainer::stop`]: running jobs are being cancelled and no job starts any more.
    stopping: AtomicBool,
    /// Training threads alive, and their end signalled (for [`Trainer::stop`]).
    threads: Mutex<usize>,
    thread_ended: std::sync::Condvar,
    state: Mutex<State>,
    /// The records of the jobs this server runs or has waiting for a training slot, by id:
    /// held briefly, never across a catalogue call (`watch` reads it on async threads).
    live: Mutex<HashMap<String, LiveJob>>,
    embeddings: Mutex<EmbeddingCache>,
    /// The model the last job trained, kept for the next job of its project, which starts from
    /// it when it is still the active version: reloading (528 MB for VGG16, and for a head-only
    /// version a rebuilt backbone) was most of a head-only retrain. One model at most.
    warm: Mutex<Option<WarmModel>>,
}

/// A trained model still in memory, with what identifies it.
struct WarmModel {
    project: String,
    version: String,
    fingerprint: String,
    model: McModel,
    /// Its bytes, held of the memory budget while it is kept.
    _held: Held,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("models_dir", &self.models_dir).finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer over the data directory's stores whose activated versions `serving` loads
    /// before they are swapped in. Jobs that were queued or running when their server stopped
    /// are recorded as failed (`fail_orphaned_jobs`), and partial
    /// version directories removed.
    ///
    /// # Errors
    /// [`StoreError`] if the job records cannot be read or updated.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        catalog: Arc<dyn Catalog>,
        blobs: Arc<BlobStore>,
        projects: Arc<Projects>,
        models_dir: ModelsDir,
        model_files: ModelFiles,
        serving: Arc<dyn Serving>,
        settings: TrainerSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        // With replicas, another replica takes them over once their lease runs out (`leases`).
        if !settings.follows_replicas {
            fail_orphaned_jobs(catalog.as_ref())?;
        }
        let ids: Vec<String> = projects.list().iter().map(|p| p.spec.id.clone()).collect();
        versions::move_legacy_dirs(&models_dir, &ids);
        match versions::remove_partial_versions(&models_dir) {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(removed, "removed partial model versions left by a crash"),
            Err(error) => tracing::warn!(%error, "cannot clean partial model versions"),
        }
        let embeddings = EmbeddingCache::new(&settings.memory);
        Ok(Self {
            replica: settings.replica,
            follows_replicas: settings.follows_replicas,
            lease_ttl: settings.lease_ttl,
            memory: settings.memory,
            catalog,
            blobs,
            projects,
            models_dir,
            model_files,
            serving,
            device: settings.device,
            max_accuracy_drop: settings.max_accuracy_drop,
            slots: Slots::new(settings.concurrent_jobs, settings.threads_per_job, metrics.clone()),
            metrics,
            stopping: AtomicBool::new(false),
            threads: Mutex::new(0),
            thread_ended: std::sync::Condvar::new(),
            state: Mutex::new(State::default()),
            live: Mutex::new(HashMap::new()),
            embeddings: Mutex::new(embeddings),
            warm: Mutex::new(None),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveJob>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where versions are written.
    pub fn models_dir(&self) -> &ModelsDir {
        &self.models_dir
    }

    /// Triggers a job for `project`. It starts at once, on this server, if no server trains the
    /// project; else it is queued in the catalogue for the server that does, and a trigger while
    /// one is queued returns that job instead (`true`: coalesced), whichever server it reached.
    ///
    /// # Errors
    /// [`TrainingError::NotFound`] for an unknown project; [`TrainingError::Precondition`]
    /// without examples of at least 2 classes; [`TrainingError::Storage`] if the catalogue fails.
    pub fn train(
        self: &Arc<Self>,
        project_id: &str,
        params: TrainingParams,
        activate: bool,
    ) -> Result<(JobRecord, bool), TrainingError> {
        let project = self.projects.get(project_id).map_err(|e| TrainingError::NotFound(e.to_string()))?;
        let classes_with_examples = self
            .catalog
            .count_examples(project_id)?
            .into_iter()
            .filter(|(class, n)| *n > 0 && project.spec.classes.contains(class))
            .count();
        if classes_with_examples < 2 {
            return Err(TrainingError::Precondition(format!(
                "training needs labelled examples of at least 2 classes; project {project_id} has {classes_with_examples}"
            )));
        }
        let job_id = format!("job-{}-{:08x}", now_unix_ms(), fastrand::u32(..));
        let record = JobRecord::queued(job_id, project_id, params, activate, &self.replica, 1);
        // Under the state lock: a job of this server that ends meanwhile takes what is queued.
        let mut state = self.state();
        if !state.running.contains_key(project_id)
            && let Some(lease) = self.catalog.claim_training(project_id, &self.replica, self.lease_ttl)?
        {
            // This server trains the project now. A job queued before the claim (a trigger
            // another server queued, a job of a replica that stopped) runs first: this trigger
            // joins it.
            let started = self.take_queued(project_id, None).and_then(|queued| {
                let coalesced = queued.is_some();
                Ok((self.launch(&mut state, lease, queued.unwrap_or(record))?, coalesced))
            });
            if started.is_err() {
                self.release(project_id, lease);
            }
            return Ok(started?);
        }
        let queued = self.catalog.enqueue_job(&record)?;
        drop(state);
        match queued {
            None => Ok((record, false)),
            Some(queued) => Ok((queued, true)),
        }
    }

    /// The job this server runs next for `project_id`, whose lease it holds: the queued one,
    /// taken from the catalogue, if any. Jobs left unfinished under an earlier lease are failed
    /// first (and tried again, see `leases`), except `ended`, the job this server has just
    /// finished.
    fn take_queued(&self, project_id: &str, ended: Option<&str>) -> Result<Option<JobRecord>, StoreError> {
        self.fail_abandoned_jobs(project_id, ended)?;
        self.catalog.take_queued_job(project_id)
    }

    /// Starts `record` on this server under `lease` on its project: recorded as this server's,
    /// live, and on a training thread (which waits for a training slot).
    fn launch(
        self: &Arc<Self>,
        state: &mut State,
        lease: Lease,
        mut record: JobRecord,
    ) -> Result<JobRecord, StoreError> {
        record.replica.clone_from(&self.replica);
        self.catalog.save_job(&record)?;
        let (project_id, job_id) = (record.project_id.clone(), record.job_id.clone());
        state.running.insert(project_id.clone(), Running { job_id: job_id.clone(), lease, lost: false });
        let (sender, _) = watch::channel(record.clone());
        self.live().insert(job_id.clone(), LiveJob { record: sender, cancel: Arc::new(AtomicBool::new(false)) });
        self.spawn(&project_id, job_id);
        Ok(record)
    }

    /// Runs the job queued for `project_id` under `lease`, or gives the lease up when none is
    /// (or when the catalogue fails: then another replica, or the next trigger, runs it).
    fn run_queued(self: &Arc<Self>, state: &mut State, project_id: &str, lease: Lease, ended: Option<&str>) {
        let next = self
            .take_queued(project_id, ended)
            .and_then(|queued| queued.map(|record| self.launch(state, lease, record)).transpose());
        match next {
            Ok(Some(record)) => tracing::info!(job = %record.job_id, project = %project_id, "queued job taken"),
            Ok(None) => self.release(project_id, lease),
            // A job taken but not started is failed and queued again by the next server that
            // takes the project over (a replica, or this one at the next trigger).
            Err(error) => {
                tracing::warn!(project = %project_id, %error, "cannot start the queued job");
                self.release(project_id, lease);
            }
        }
    }

    /// Gives up this server's `lease` on `project_id`; on a failure it runs out by itself.
    fn release(&self, project_id: &str, lease: Lease) {
        if let Err(error) = self.catalog.release_training(project_id, &self.replica, lease) {
            tracing::warn!(project = %project_id, %error, "cannot release the training lease; it runs out by itself");
        }
    }

    /// Saves a running job's `record` unless the catalogue has it ended or no longer has it: a
    /// replica cut off for long enough finds its job failed by another, and that verdict stands
    /// (the catalogue never changes a finished job's record either); a job whose project was
    /// deleted went with it. Returns false if the save failed (logged).
    fn save_unless_ended(&self, record: &JobRecord) -> bool {
        if self.ended_or_gone(&record.job_id) {
            return true;
        }
        match self.catalog.save_job(record) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(job = %record.job_id, %error, "cannot record the job's progress");
                false
            }
        }
    }

    /// Whether the catalogue has job `job_id` ended (recorded by another replica) or no longer
    /// has it (removed with its project).
    fn ended_or_gone(&self, job_id: &str) -> bool {
        match self.catalog.job(job_id) {
            Ok(Some(recorded)) => recorded.state.is_terminal(),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn spawn(self: &Arc<Self>, project_id: &str, job_id: String) {
        if self.stopping.load(Ordering::Relaxed) {
            // Left queued: the next start records it as interrupted (alone), or another replica
            // takes it over once this one's lease runs out.
            return;
        }
        *self.threads() += 1;
        let (trainer, project_id) = (self.clone(), project_id.to_owned());
        let spawned = std::thread::Builder::new().name("alps-training".into()).spawn(move || {
            /// Counts the thread out however it ends.
            struct Alive(Arc<Trainer>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    *self.0.threads() -= 1;
                    self.0.thread_ended.notify_all();
                }
            }
            let alive = Alive(trainer);
            alive.0.run(&project_id, &job_id);
        });
        if let Err(error) = spawned {
            *self.threads() -= 1;
            tracing::error!(%error, "cannot start a training thread");
        }
    }

    fn threads(&self) -> std::sync::MutexGuard<'_, usize> {
        self.threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops training for a shutdown: running and waiting jobs are cancelled and recorded as
    /// interrupted, no job starts any more, and this waits at most `within` for the training
    /// threads to end (libtorch must not be torn down under a running job). Returns whether
    /// they all ended in time.
    pub fn stop(&self, within: std::time::Duration) -> bool {
        self.stopping.store(true, Ordering::Relaxed);
        for live in self.live().values() {
            live.cancel.store(true, Ordering::Relaxed);
        }
        self.slots.wake();
        let threads = self.threads();
        let (threads, timeout) = self
            .thread_ended
            .wait_timeout_while(threads, within, |alive| *alive > 0)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if timeout.timed_out() {
            tracing::warn!(threads = *threads, "training threads still running at shutdown");
        }
        !timeout.timed_out()
    }

    /// The job's record now.
    ///
    /// # Errors
    /// [`TrainingError::NotFound`] for an unknown job; [`TrainingError::Storage`] if the
    /// catalogue fails, or holds a record this build cannot read (another build's).
    pub fn job(&self, job_id: &str) -> Result<JobRecord, TrainingError> {
        if let Some(live) = self.live().get(job_id) {
            return Ok(live.record.borrow().clone());
        }
        self.catalog.job(job_id)?.ok_or_else(|| TrainingError::NotFound(format!("training job {job_id:?} not found")))
    }

    /// A receiver of the job's record at every change, or `None` if the job has ended (then
    /// [`job`](Self::job) has its final record).
    pub fn watch(&self, job_id: &str) -> Option<watch::Receiver<JobRecord>> {
        self.live().get(job_id).map(|live| live.record.subscribe())
    }

    /// Cancels a queued or running job; a no-op for an ended one. A job another replica runs is
    /// cancelled by that replica within a few seconds (see
    /// [`honour_cancel_requests`](Self::honour_cancel_requests)); the record returned is its state now.
    ///
    /// # Errors
    /// [`TrainingError::NotFound`] for an unknown job; [`TrainingError::Storage`] if the request
    /// cannot be recorded.
    pub fn cancel(&self, job_id: &str) -> Result<JobRecord, TrainingError> {
        if let Some(record) = self.cancel_live(job_id)? {
            return Ok(record);
        }
        let record = self.job(job_id)?;
        if record.state.is_terminal() {
            return Ok(record);
        }
        if record.state == JobState::Queued {
            // Queued in the catalogue: ended there unless a server took it meanwhile.
            let ended = cancelled_before_start(record);
            if self.catalog.cancel_queued_job(&ended)? {
                return Ok(ended);
            }
        }
        // Taken meanwhile by this server (then it is live here now) or run by another one.
        if let Some(record) = self.cancel_live(job_id)? {
            return Ok(record);
        }
        self.catalog.request_cancel(job_id)?;
        self.job(job_id)
    }

    /// Cancels job `job_id` if this server runs it (or it waits here for a training slot), and
    /// returns its record; `None` if it is not live here.
    fn cancel_live(&self, job_id: &str) -> Result<Option<JobRecord>, TrainingError> {
        let record = {
            let live = self.live();
            let Some(live) = live.get(job_id) else { return Ok(None) };
            live.cancel.store(true, Ordering::Relaxed);
            live.record.borrow().clone()
        };
        if record.state != JobState::Queued {
            return Ok(Some(record));
        }
        // Waiting for a training slot, never started (cancelled, it never will): ended here; its
        // thread moves the project on.
        let ended = cancelled_before_start(record);
        self.catalog.save_job(&ended)?;
        self.live().remove(job_id);
        // A job waiting for a training slot gives up its place.
        self.slots.wake();
        Ok(Some(ended))
    }

    /// Cancels this server's jobs that another replica was asked to cancel (see
    /// [`Catalog::request_cancel`]); the replica follower calls it every round.
    pub fn honour_cancel_requests(&self) {
        // Those not being cancelled already.
        let live: Vec<String> = self
            .live()
            .iter()
            .filter(|(_, live)| !live.cancel.load(Ordering::Relaxed))
            .map(|(job_id, _)| job_id.clone())
            .collect();
        for job_id in live {
            match self.catalog.cancel_requested(&job_id) {
                Ok(true) => {
                    tracing::info!(job = %job_id, "cancelled at another replica's request");
                    if let Err(error) = self.cancel(&job_id) {
                        tracing::warn!(job = %job_id, %error, "cannot cancel the job");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(job = %job_id, %error, "cannot read the job's cancel request"),
            }
        }
    }

    /// The project's jobs, newest first.
    ///
    /// # Errors
    /// [`TrainingError::Storage`] on a database failure (records this build cannot read are
    /// left out).
    pub fn jobs(&self, project_id: &str, limit: usize) -> Result<Vec<JobRecord>, TrainingError> {
        let mut records: Vec<JobRecord> =
            self.catalog.jobs(project_id, limit)?.into_iter().filter_map(|row| row.record).collect();
        let live = self.live();
        for record in &mut records {
            if let Some(live) = live.get(&record.job_id) {
                *record = live.record.borrow().clone();
            }
        }
        Ok(records)
    }

    fn update(&self, job_id: &str, change: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let live = self.live();
        let live = live.get(job_id)?;
        live.record.send_modify(change);
        Some(live.record.borrow().clone())
    }

    /// Runs one job to its end on this thread once the executor has a slot for it, then starts
    /// the project's pending job.
    fn run(self: &Arc<Self>, project_id: &str, job_id: &str) {
        let cancel = self.live().get(job_id).map(|l| l.cancel.clone());
        // Without a live record the job was cancelled before this thread started: no slot to
        // wait for.
        let slot = cancel.as_ref().and_then(|cancel| self.slots.acquire(cancel));
        // Without a slot, or without a live record, the job was cancelled while it waited
        // (`cancel` has recorded its end); the project still has to move on.
        let outcome = match (slot.as_ref().and_then(|_| self.start_job(job_id)), &cancel) {
            // A job that failed because it was cancelled meanwhile (its project deleted under
            // it while it saved) ends as cancelled.
            (Some(record), Some(cancel)) => self
                .execute_guarded(&record, cancel)
                .map_err(|error| if cancel.load(Ordering::Relaxed) { TrainError::Cancelled } else { error }),
            _ => Err(TrainError::Cancelled),
        };
        drop(slot);
        self.finish(project_id, job_id, &outcome);
        // Deleted while the job wrote its version (a deletion cancels the project's jobs): the
        // files may have landed after the deletion removed the project's.
        let cancelled = cancel.as_ref().is_some_and(|cancel| cancel.load(Ordering::Relaxed));
        if cancelled && matches!(self.catalog.project(project_id), Ok(None)) {
            self.forget_project(project_id);
        }
    }

    /// Marks a queued job running; `None` if it has ended meanwhile (cancelled).
    fn start_job(&self, job_id: &str) -> Option<JobRecord> {
        let record = self.update(job_id, |r| {
            r.state = JobState::Running;
            r.started_unix_ms = now_unix_ms();
        })?;
        if let Err(error) = save_retrying(self.catalog.as_ref(), &record) {
            tracing::error!(%error, "cannot record the job start");
        }
        tracing::info!(job = %job_id, project = %record.project_id, "training started");
        Some(record)
    }

    /// Records the job's end and starts the project's queued job, if any.
    fn finish(self: &Arc<Self>, project_id: &str, job_id: &str, outcome: &Result<String, TrainError>) {
        // One critical section: the queued job is taken, or the lease given up, before anyone
        // can see the job as ended, so a trigger right after the end starts at once.
        let mut state = self.state();
        let lost = state.running.get(project_id).is_some_and(|running| running.lost);
        let stopping = self.stopping.load(Ordering::Relaxed);
        let live = self.live().remove(job_id);
        if let Some(live) = live {
            let mut record = live.record.borrow().clone();
            record.finished_unix_ms = now_unix_ms();
            match outcome {
                Ok(version) => record.succeed(version.clone()),
                Err(TrainError::Cancelled) if lost => {
                    record.state = JobState::Failed;
                    record.error = LOST_LEASE.into();
                }
                Err(TrainError::Cancelled) if stopping => {
                    record.state = JobState::Failed;
                    record.error = INTERRUPTED.into();
                }
                Err(TrainError::Cancelled) => {
                    record.state = JobState::Cancelled;
                    record.error = "cancelled".into();
                }
                Err(error) => {
                    record.state = JobState::Failed;
                    record.error = error.client_message();
                }
            }
            // Replicas: a job a shutdown interrupts runs again on another one.
            let interrupted = stopping && !lost && matches!(outcome, Err(TrainError::Cancelled));
            if interrupted && self.follows_replicas {
                record.error = format!("{INTERRUPTED}; {}", self.retry(&record));
            }
            // A replica cut off from the catalogue for long enough finds its job recorded as
            // failed by another replica: that record stands. A deleted project's went with it.
            if self.ended_or_gone(job_id) {
                tracing::info!(job = %job_id, "the job's record was ended elsewhere or deleted with its project meanwhile: left as it is");
            } else if let Err(error) = save_retrying(self.catalog.as_ref(), &record) {
                tracing::error!(%error, "cannot record the job end");
            }
            let error = (!record.error.is_empty()).then_some(record.error.as_str());
            tracing::info!(job = %job_id, state = ?record.state, version = %record.model_version, error, "training ended");
            // Watchers see the end only once the catalogue has it: a client that saw it here
            // and asks another replica next finds the job ended there too.
            live.record.send_replace(record);
        }
        match state.running.remove(project_id) {
            // Another replica's now: nothing more runs under it here.
            Some(running) if running.lost => {}
            Some(running) if stopping => self.release(project_id, running.lease),
            // Still ours? A replica paused past its lease may learn it only now: nothing more
            // runs under a lease another replica holds.
            Some(running) => {
                match self.catalog.renew_training(project_id, &self.replica, running.lease, self.lease_ttl) {
                    Ok(true) => self.run_queued(&mut state, project_id, running.lease, Some(job_id)),
                    Ok(false) => {
                        tracing::warn!(project = %project_id, "another replica took over this project's training lease")
                    }
                    // Unconfirmed: the queued job waits for the lease to run out and another
                    // replica (or the next trigger) to take it.
                    Err(error) => tracing::warn!(project = %project_id, %error, "cannot renew the training lease"),
                }
            }
            None => {}
        }
    }

    /// [`execute`](Self::execute), with a panic (libtorch out of memory inside a `tch::nn`
    /// layer) turned into a failed job: the project must not stay busy for good.
    fn execute_guarded(&self, record: &JobRecord, cancel: &AtomicBool) -> Result<String, TrainError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.execute(record, cancel))).unwrap_or_else(|_| {
            tracing::error!(job = %record.job_id, "training panicked");
            Err(TrainError::Precondition(
                "training failed on an internal error (out of memory?); see the server log".into(),
            ))
        })
    }

    fn execute(&self, record: &JobRecord, cancel: &AtomicBool) -> Result<String, TrainError> {
        // From the catalogue, not the cache: another replica's newest version may still be
        // loading here, and the job must start from it (its result is activated only over it).
        let project = self
            .catalog
            .project(&record.project_id)
            .map_err(|e| TrainError::Precondition(crate::errors::logged("reading the project", &e)))?
            .ok_or_else(|| TrainError::Precondition(format!("project {:?} not found", record.project_id)))?;
        let spec = &project.spec;
        let parent = project.active_version.clone();
        // Read once: the parent's manifest and, for a head-only version, its backbone's checksum.
        let manifests = self
            .versions(&spec.id)
            .map_err(|e| TrainError::Precondition(crate::errors::logged("reading the project's versions", &e)))?;
        let manifest_of = |version: &str| manifests.iter().find(|m| m.version == version);
        let (model, parent_manifest) = if parent == UNTRAINED_VERSION {
            // A first version starts from the untrained model, whose weights the spec fixes.
            (McModel::load(spec, &self.model_files, self.device)?, None)
        } else {
            let model = match self.take_warm(&spec.id, &parent, &spec.model_fingerprint()) {
                Some(model) => {
                    tracing::info!(job = %record.job_id, version = %parent, "starting from the model kept in memory");
                    model
                }
                None => {
                    let dir = self.models_dir.fetch(&spec.id, &parent).map_err(|e| {
                        TrainError::Precondition(crate::errors::logged("fetching the active version", &e))
                    })?;
                    McModel::load_version(spec, &dir, &self.model_files, self.device, &|_| None)?
                }
            };
            (model, manifest_of(&parent).cloned())
        };
        // A trained parent's manifest names the backbone the new version builds on; without it
        // a head-only version would claim the initial weights.
        if parent != UNTRAINED_VERSION && parent_manifest.is_none() {
            return Err(TrainError::Precondition(format!("the active version {parent} has no readable record")));
        }
        let parent_backbone = parent_manifest.as_ref().map(|m| m.backbone_version.clone()).unwrap_or_default();
        let examples = self
            .catalog
            .examples(&spec.id, "", usize::MAX >> 1)
            .map_err(|e| TrainError::Precondition(crate::errors::logged("reading the labelled examples", &e)))?;
        // An example deleted while the job runs keeps its bytes until the job ends.
        let mut pins = self.blobs.pins();
        let sha256s: Vec<String> = examples.iter().map(|e| e.sha256.clone()).collect();
        // And, with replicas, the collectors of the others keep them for their grace period.
        if let Err(error) = self.blobs.declare_reads(&sha256s) {
            tracing::warn!(job = %record.job_id, %error, "cannot declare the training set's samples in use");
        }
        pins.hold_all(sha256s);
        let run = Run {
            spec,
            examples: &examples,
            blobs: &self.blobs,
            params: &record.params,
            model,
            backbone_id: backbone_identity(
                spec,
                &parent_backbone,
                manifest_of(&parent_backbone).map(|m| m.weights_sha256.as_str()).unwrap_or_default(),
                &self.model_files,
            ),
            cache: &self.embeddings,
            memory: &self.memory,
            cancel,
        };
        let job_id = record.job_id.clone();
        // With replicas, progress goes through the catalogue too, so that the others can show
        // it; after a failed save (the database away) the next waits longer, and training goes on.
        let (mut saved, mut wait) = (std::time::Instant::now(), PROGRESS_SAVE_INTERVAL);
        let trained = run.execute(&mut |progress| {
            let record = self.update(&job_id, |r| {
                r.progress = progress;
            });
            if let Some(record) = record
                && self.follows_replicas
                && saved.elapsed() >= wait
            {
                let ok = self.save_unless_ended(&record);
                wait = if ok { PROGRESS_SAVE_INTERVAL } else { (wait * 2).min(PROGRESS_SAVE_BACKOFF) };
                saved = std::time::Instant::now();
            }
        })?;
        self.update(&job_id, |r| r.progress.phase = Phase::Saving);
        let number = self
            .catalog
            .next_version_number(&spec.id)
            .map_err(|e| TrainError::Precondition(crate::errors::logged("numbering the model version", &e)))?;
        // A head-only version stores what the job trained, the head's last layer, and names the
        // backbone it was trained on: the last fully fine-tuned version (checked by its
        // checksum), else the initial weights. On a parent that stored more of the head (older
        // VGG16 versions), the version stores that too, since the backbone does not hold it.
        let (backbone_version, weights, backbone_sha256) = match record.params.mode {
            record::Mode::Full => (format!("v{number}"), crate::models::FULL_WEIGHTS, String::new()),
            record::Mode::HeadOnly => {
                // Empty for the initial weights, which no version holds.
                let sha256 = match parent_backbone.as_str() {
                    "" => String::new(),
                    version => manifest_of(version).map(|m| m.weights_sha256.clone()).ok_or_else(|| {
                        TrainError::Precondition(format!("the backbone's version {version} has no record"))
                    })?,
                };
                let scope = versions::head_only_scope(parent_manifest.as_ref(), trained.model.head_is_last_layer());
                (parent_backbone, scope, sha256)
            }
        };
        let manifest = Manifest {
            project_id: spec.id.clone(),
            version: format!("v{number}"),
            number,
            parent_version: if parent == UNTRAINED_VERSION { String::new() } else { parent },
            backbone_version,
            weights: weights.into(),
            backbone_sha256,
            job_id: record.job_id.clone(),
            classes: spec.classes.clone(),
            model_fingerprint: spec.model_fingerprint(),
            params: record.params.clone(),
            example_count: trained.example_count,
            metrics: trained.metrics,
            weights_sha256: String::new(),
            weights_bytes: 0,
            created_unix_ms: now_unix_ms(),
        };
        let refusal = self.refuse_activation(parent_manifest.as_ref(), &manifest);
        if let Some(reason) = &refusal {
            tracing::warn!(job = %job_id, %reason, "new version not activated");
            self.update(&job_id, |r| r.not_activated_reason = reason.clone());
        }
        // A job cancelled by its project's deletion must not record a version in a project made
        // again under the id meanwhile.
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled);
        }
        versions::fault_pause_briefly("version-write", "fault injection: paused before writing the version");
        // Recorded inactive, then loaded for serving, then activated: "load first, then swap".
        let manifest = versions::write(&self.models_dir, self.catalog.as_ref(), &trained.model, manifest)
            .map_err(|e| TrainError::Precondition(crate::errors::logged("saving the model version", &e)))?;
        let written = std::time::Instant::now();
        let mut warm = self.warm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Checked under the lock a deletion takes after cancelling: either it sees this model
        // and drops it, or this job sees the cancellation and keeps none. (The version is
        // recorded: the job succeeded.)
        if !cancel.load(Ordering::Relaxed) {
            *warm = Some(WarmModel {
                project: spec.id.clone(),
                version: manifest.version.clone(),
                fingerprint: manifest.model_fingerprint.clone(),
                _held: self.memory.hold(trained.model.bytes()),
                model: trained.model,
            });
        }
        drop(warm);
        if record.activate && refusal.is_none() {
            // The job succeeded whatever happens here: its version is recorded. Why it is not
            // active, if it is not, goes on the job.
            match self.activate_new(&manifest) {
                Ok(()) => self.metrics.observe_activation(written.elapsed()),
                Err(reason) => {
                    tracing::warn!(job = %job_id, version = %manifest.version, %reason, "new version not activated");
                    self.update(&job_id, |r| r.not_activated_reason = reason);
                }
            }
        }
        Ok(manifest.version)
    }

    /// Activates a job's new version: loaded for serving first, then made active if it still
    /// fits the project (its spec may have changed while the job trained).
    ///
    /// # Errors
    /// Why it was not activated, for the job's `not_activated_reason`.
    fn activate_new(&self, manifest: &Manifest) -> Result<(), String> {
        let (project, version) = (&manifest.project_id, &manifest.version);
        // Fenced: a replica that lost the lease while it trained (cut off from the catalogue,
        // paused) must not replace what the replica that took the project over activates
        // (checked again in the activation's transaction).
        let running = self.state().running.get(project.as_str()).cloned();
        let Some(Running { lease, lost: false, .. }) = running else { return Err(LOST_LEASE.into()) };
        // And only over the version it was trained from: one activated meanwhile (by hand, or by
        // a replica that held the lease while this one was cut off) stays.
        let parent = if manifest.parent_version.is_empty() { UNTRAINED_VERSION } else { &manifest.parent_version };
        match self.catalog.project(project) {
            Ok(Some(stored)) if !manifest.serves(&stored.spec) => return Err(CHANGED_MEANWHILE.into()),
            Ok(Some(stored)) if stored.active_version != parent => {
                return Err(format!(
                    "version {} was activated while this job trained from {parent}; activate this version by hand if \
                     wanted",
                    stored.active_version
                ));
            }
            Ok(_) => {}
            Err(error) => return Err(crate::errors::logged("reading the active version", &error)),
        }
        let current = self.projects.get(project).map_err(|e| e.to_string())?;
        let fence = Fence { replica: &self.replica, lease };
        self.load_and_activate(manifest, &current, Some(fence)).map_err(|refused| match refused {
            Refused::Unfit | Refused::Unknown => CHANGED_MEANWHILE.into(),
            Refused::Fenced => LOST_LEASE.into(),
            Refused::Load(error) => format!("the new version does not load: {error}"),
            Refused::Store(error) => crate::errors::logged("activating the new version", &error),
        })?;
        // Recorded as active: a failed refresh is logged, and the next refresh catches up.
        if let Err(error) = self.projects.reload(project) {
            tracing::error!(%project, %error, "cannot refresh the project after activating a version");
        }
        tracing::info!(%project, %version, "model version activated");
        Ok(())
    }

    /// The kept model if it is `project`'s `version` for the spec with `fingerprint`: the same
    /// weights as loading that version from disk (the model it was written from).
    fn take_warm(&self, project: &str, version: &str, fingerprint: &str) -> Option<McModel> {
        let mut warm = self.warm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let matches =
            warm.as_ref().is_some_and(|w| w.project == project && w.version == version && w.fingerprint == fingerprint);
        matches.then(|| warm.take()).flatten().map(|w| w.model)
    }

    /// Why `candidate` must not replace `active` under the auto-activate policy, if it must not:
    /// its validation accuracy is lower by more than the margin. Without the policy, or without
    /// validation metrics on both sides, every version may be activated.
    fn refuse_activation(&self, active: Option<&Manifest>, candidate: &Manifest) -> Option<String> {
        let margin = self.max_accuracy_drop?;
        let before = active?.metrics.as_ref()?.accuracy;
        let after = candidate.metrics.as_ref()?.accuracy;
        (after < before - margin).then(|| {
            format!(
                "validation accuracy {after:.3} is below the active version's {before:.3} by more than {margin} \
                 (--auto-activate-max-accuracy-drop); activate it with ActivateModelVersion if wanted"
            )
        })
    }

    /// Forgets a deleted project (its records, jobs included, are gone with it): cancels its jobs
    /// created before `created_before_unix_ms` that run or wait for a slot here (a project made
    /// again under the id since keeps its own), then [`forget_project`](Self::forget_project).
    /// A cancelled job checks for it before it caches embeddings, keeps its model or writes a
    /// version, so it adds none of those after the deletion.
    pub fn project_deleted(&self, project: &str, created_before_unix_ms: i64) {
        for live in self.live().values() {
            let record = live.record.borrow();
            if record.project_id == project && record.created_unix_ms < created_before_unix_ms {
                live.cancel.store(true, Ordering::Relaxed);
            }
        }
        self.slots.wake();
        self.forget_project(project);
    }

    /// Drops what this server holds of a project that is gone: its warm model, its cached
    /// embeddings and its version files. Sample blobs stay until the garbage collector
    /// ([`crate::store::gc`]) finds no example of any project referencing them: they are
    /// content-addressed and may be shared.
    fn forget_project(&self, project: &str) {
        // A project made again under this id numbers its versions from v1 again.
        let mut warm = self.warm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if warm.as_ref().is_some_and(|w| w.project == project) {
            *warm = None;
        }
        drop(warm);
        self.embeddings.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).forget(project);
        match self.models_dir.remove_project(project) {
            Ok(true) => tracing::info!(%project, "model versions removed"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%project, %error, "cannot remove model versions"),
        }
    }

    /// Manifests of `project`'s versions, newest first.
    ///
    /// # Errors
    /// [`TrainingError::Storage`] on a database failure or an unreadable manifest.
    pub fn versions(&self, project: &str) -> Result<Vec<Manifest>, TrainingError> {
        Ok(self.catalog.versions(project)?.into_iter().map(|row| row.manifest).collect())
    }

    /// Makes `version` active (also for rollback): the serving engine loads it first, then it
    /// is recorded and swapped in; requests meanwhile get the old version.
    ///
    /// # Errors
    /// [`TrainingError::NotFound`] for an unknown version; [`TrainingError::Precondition`] if it
    /// was trained for other classes, model or preprocessing than the project has now, or its
    /// files are missing or corrupt (nothing changes then).
    pub fn activate(&self, project_id: &str, version: &str) -> Result<Manifest, TrainingError> {
        let started = std::time::Instant::now();
        let project = self.projects.get(project_id).map_err(|e| TrainingError::NotFound(e.to_string()))?;
        let unknown = || TrainingError::NotFound(format!("project {project_id} has no model version {version:?}"));
        let manifest = self.versions(project_id)?.into_iter().find(|m| m.version == version).ok_or_else(unknown)?;
        self.load_and_activate(&manifest, &project, None).map_err(|refused| match refused {
            Refused::Unfit => TrainingError::Precondition(format!(
                "model version {version} was trained for other classes, model or preprocessing than project \
                 {project_id} has now; train a new version"
            )),
            Refused::Unknown | Refused::Fenced => unknown(),
            Refused::Load(error) => TrainingError::Precondition(error),
            Refused::Store(error) => TrainingError::Storage(error.into()),
        })?;
        self.projects.reload(project_id).map_err(|e| TrainingError::NotFound(e.to_string()))?;
        self.metrics.observe_activation(started.elapsed());
        tracing::info!(project = %project_id, %version, "model version activated");
        Ok(manifest)
    }

    /// The steps both activations share, before the cache refresh: `manifest`'s version must
    /// fit `project` as it is, the serving engine loads it, then the database makes it active
    /// if it still fits the stored spec (checked again in that transaction) and, for a job's
    /// version, if its replica still holds the lease (`fence`).
    fn load_and_activate(
        &self,
        manifest: &Manifest,
        project: &Project,
        fence: Option<Fence<'_>>,
    ) -> Result<(), Refused> {
        if !manifest.serves(&project.spec) {
            return Err(Refused::Unfit);
        }
        let version = &manifest.version;
        self.serving.load(&Project { active_version: version.clone(), ..project.clone() }).map_err(Refused::Load)?;
        match self
            .catalog
            .activate_version(&project.spec.id, version, &Manifest::serves, fence)
            .map_err(Refused::Store)?
        {
            Activation::Activated => Ok(()),
            Activation::NoSuchVersion => Err(Refused::Unknown),
            Activation::Unfit => Err(Refused::Unfit),
            Activation::Fenced => Err(Refused::Fenced),
        }
    }
}

/// The identity of the backbone a job of `spec` starts from, which keys the embedding cache.
/// Head-only training never changes the backbone: it is the project's model spec plus the
/// version that last fine-tuned it (`backbone_version`, with its checksum `backbone_sha256`: a
/// project made again under this id has versions of the same names), or, while none has, the
/// initial weights, whose file an operator may replace in place ([`ModelFiles::stamp`]).
fn backbone_identity(
    spec: &crate::projects::ProjectSpec,
    backbone_version: &str,
    backbone_sha256: &str,
    files: &ModelFiles,
) -> String {
    let model = serde_json::to_string(&spec.model).unwrap_or_default();
    let initial = match (&spec.model.weights_path, backbone_version) {
        (Some(path), "") => files.stamp(path).unwrap_or_default(),
        _ => String::new(),
    };
    format!("{}:{model}:{backbone_version}:{backbone_sha256}:{initial}", spec.id)
}

/// Records as failed every unfinished job (queued or running): a server alone on its catalogue
/// calls it when it starts, when no job can still run. Returns how many.
///
/// # Errors
/// [`StoreError`] if the job records cannot be read or updated.
fn fail_orphaned_jobs(catalog: &dyn Catalog) -> Result<usize, StoreError> {
    let mut failed = 0;
    for row in catalog.unfinished_jobs()? {
        let Some(record) = row.record else { continue };
        let record = end_job(record, JobState::Failed, INTERRUPTED.into());
        tracing::warn!(job = %record.job_id, project = %record.project_id, "job interrupted: its server stopped");
        catalog.save_job(&record)?;
        failed += 1;
    }
    Ok(failed)
}

/// `record` ended now in `state`, for the reason `error`, by this server's say (the job did
/// not run to its end here).
fn end_job(mut record: JobRecord, state: JobState, error: String) -> JobRecord {
    record.state = state;
    record.error = error;
    record.finished_unix_ms = now_unix_ms();
    record
}

/// A queued job's record once cancelled before it started.
fn cancelled_before_start(record: JobRecord) -> JobRecord {
    end_job(record, JobState::Cancelled, "cancelled before it started".into())
}

/// [`Catalog::save_job`], tried again a few times within seconds while [`worth_retrying`]: a job's start
/// and end must not be lost to a blip, or other replicas would see it run for ever.
fn save_retrying(catalog: &dyn Catalog, record: &JobRecord) -> Result<(), StoreError> {
    use backon::{BlockingRetryable, ExponentialBuilder};
    let backoff = ExponentialBuilder::default().with_min_delay(std::time::Duration::from_millis(200)).with_max_times(4);
    (|| catalog.save_job(record)).retry(backoff).sleep(std::thread::sleep).when(worth_retrying).call()
}

/// Whether a failed save is tried again: a transient failure is (a database connection that
/// broke is opened again by the next call; a session busy with other calls), except a call
/// that passed its deadline, which already waited longer than all the tries would (a database
/// that stopped answering is no blip, and the caller holds the trainer's state meanwhile).
fn worth_retrying(error: &StoreError) -> bool {
    error.failure() == crate::store::Failure::Transient && !matches!(error, StoreError::TimedOut(_))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_backbone_identity_changes_with_the_initial_weights_file_until_a_version_fine_tunes_it() {
        let root = tempfile::tempdir().unwrap();
        let files = ModelFiles::open(root.path().to_owned(), 1 << 20).unwrap();
        std::fs::write(root.path().join("initial.safetensors"), b"first weights").unwrap();
        let mut spec = crate::projects::spec::tests::spec();
        spec.model.weights_path = Some("initial.safetensors".into());
        let initial = || backbone_identity(&spec, "", "", &files);
        let before = initial();
        assert_eq!(initial(), before, "the same file");
        // Replaced in place by an operator: embeddings of the old weights no longer apply.
        std::fs::write(root.path().join("initial.safetensors"), b"other weights, longer").unwrap();
        assert_ne!(initial(), before);
        // Once a version fine-tuned the backbone, its checksum decides, not the file.
        let tuned = backbone_identity(&spec, "v2", "ab", &files);
        std::fs::write(root.path().join("initial.safetensors"), b"third").unwrap();
        assert_eq!(backbone_identity(&spec, "v2", "ab", &files), tuned);
        assert_ne!(backbone_identity(&spec, "v2", "cd", &files), tuned, "a project made again");
    }

    #[test]
    fn a_save_is_tried_again_after_a_transient_failure_but_not_after_its_deadline_or_a_permanent_one() {
        assert!(worth_retrying(&StoreError::Contended), "transient");
        assert!(worth_retrying(&StoreError::SessionBusy(Duration::from_secs(15))), "a busy session: nothing was sent");
        assert!(!worth_retrying(&StoreError::TimedOut(Duration::from_secs(15))), "past its deadline");
        assert_eq!(StoreError::TimedOut(Duration::from_secs(15)).failure(), crate::store::Failure::Transient);
        assert!(!worth_retrying(&StoreError::Taken), "permanent");
    }
}
