//! The worker thread of one device: owns the loaded models (libtorch modules are not `Sync`),
//! takes jobs from a bounded queue, batches compatible jobs dynamically and runs MC-Dropout.
//! It also takes models loaded elsewhere into its cache: an activation loads the new version on
//! its own thread, before the version is swapped in, so that neither the requests of the new
//! version nor the worker wait for that load. Such a load may share the backbone of a model the
//! worker holds (`Command::Shared`): a head-only version then costs its head alone. So may a
//! model the worker loads itself (evicted, and needed again).
//!
//! Dynamic batching: jobs of the same model and K are merged until their work (samples × K)
//! reaches the budget or the first job has waited `max_wait`, as in Triton's dynamic batcher
//! (`max_queue_delay_microseconds`). A seeded job runs alone with a generator of its own
//! (`models::random`), so its dropout masks depend on its seed only, whatever other threads
//! (training) draw meanwhile. Jobs whose caller went away are skipped before they run.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tch::{Device, Tensor};
use tokio::sync::oneshot;

use super::cache::{ModelCache, ModelKey};
use crate::{
    metrics::Metrics,
    models::{
        McModel, ModelError, SharedVariables,
        random::{self, Generator},
    },
    projects::ProjectSpec,
};

/// Probabilities `[n, C, K]` of a job with its queue and compute times, or why the model
/// failed.
pub type JobResult = Result<Computed, ModelFailure>;

/// Why a model could not run a job, as a client may see it.
#[derive(Clone, Debug)]
pub struct ModelFailure {
    /// For the client (see [`ModelError::client_message`]).
    pub message: String,
    /// Whether the same request may succeed later (the object store or the catalogue was
    /// unreachable while the model's version was fetched).
    pub transient: bool,
}

impl From<&ModelError> for ModelFailure {
    fn from(error: &ModelError) -> Self {
        Self { message: error.client_message(), transient: matches!(error, ModelError::Fetch { transient: true, .. }) }
    }
}

/// What the worker computed for one job.
#[derive(Debug)]
pub struct Computed {
    /// Probabilities `[n, C, K]`, flattened.
    pub probabilities: Vec<f32>,
    /// Backbone embeddings `[n, D]`, flattened, when the job asked for them; else empty.
    pub embeddings: Vec<f32>,
    /// Time in the worker queue.
    pub queued: std::time::Duration,
    /// Time of the batched MC-Dropout pass that served the job.
    pub computed: std::time::Duration,
}

/// One request's samples for one model.
pub struct Job {
    /// Which model.
    pub key: ModelKey,
    /// The project spec to load the model from when it is not cached.
    pub spec: Arc<ProjectSpec>,
    /// Whether `key.version` is a trained version (else the initial weights, `untrained`).
    pub trained: bool,
    /// Preprocessed inputs `[n, C, H, W]`, flattened.
    pub inputs: Vec<f32>,
    /// Samples n.
    pub n: usize,
    /// MC iterations K.
    pub k: usize,
    /// Seed for the dropout masks, if the caller wants reproducible results.
    pub seed: Option<u64>,
    /// Return the backbone embeddings `[n, D]` too (heuristics that ask for them, ABI 1.1).
    pub embeddings: bool,
    /// When the job was queued.
    pub enqueued: Instant,
    /// Where the result goes; closed when the caller went away.
    pub reply: oneshot::Sender<JobResult>,
}

/// A model loaded by an activation, to put in the cache before the version is swapped in.
pub struct Loaded {
    /// Which model.
    pub key: ModelKey,
    /// The model, on the worker's device.
    pub model: McModel,
    /// Answered once the model is in the cache.
    pub reply: oneshot::Sender<()>,
}

/// What the worker is asked to do.
pub enum Command {
    /// Predict.
    Run(Job),
    /// Put a loaded model into the cache (replacing what the key held) and answer.
    Insert(Loaded),
    /// Drop the cached models of a project (deleted or changed).
    Forget(String),
    /// Answer whether a model is in the cache.
    Has(ModelKey, oneshot::Sender<bool>),
    /// Answer with the variables of a cached model of the project and spec fingerprint whose
    /// [`McModel::frozen`] is the one given, if there is one.
    Shared(Backbone, oneshot::Sender<Option<SharedVariables>>),
}

/// A backbone wanted by a load: which project and spec, and its [`McModel::frozen`] value.
pub struct Backbone {
    /// Project id.
    pub project: String,
    /// The spec's fingerprint ([`ModelKey::fingerprint`]).
    pub fingerprint: u64,
    /// What the variables outside the last layer hold.
    pub frozen: String,
}

/// Batching and cache settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Work per batch, samples × MC iterations; 0 disables batching.
    pub work_budget: usize,
    /// Longest a job waits for others to batch with.
    pub max_wait: Duration,
    /// The models' memory budget (the cache keeps what training does not hold of it).
    pub memory: Arc<crate::memory::MemoryBudget>,
    /// Where client-named model files are read from.
    pub model_files: crate::models::files::ModelFiles,
    /// Where trained versions are read from (fetched from the object store when there is one).
    pub models_dir: crate::store::ModelsDir,
}

/// Starts the worker thread for `device`; it ends when every sender of `commands` is dropped.
///
/// # Errors
/// The OS error if the thread cannot be spawned.
pub fn spawn(
    commands: Receiver<Command>,
    device: Device,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("alps-worker-{device:?}")).spawn(move || {
        let _no_grad = tch::no_grad_guard();
        // Fixes this thread's intra-op threads at the process's count before a training job
        // briefly changes the count new threads start with.
        super::device::intra_op_threads();
        let mut worker = Worker {
            commands,
            device,
            cache: ModelCache::new(config.memory.clone()),
            config,
            metrics,
            backlog: VecDeque::new(),
        };
        while let Some(first) = worker.next_job() {
            let batch = worker.collect_batch(first);
            worker.execute(batch);
            worker.trim_cache();
        }
    })
}

struct Worker {
    commands: Receiver<Command>,
    device: Device,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    cache: ModelCache,
    /// Jobs received while batching that did not fit the batch; they run next, in order.
    backlog: VecDeque<Job>,
}

impl Worker {
    /// The oldest job: from the backlog, else from the queue; `None` once the queue is closed.
    fn next_job(&mut self) -> Option<Job> {
        if let Some(job) = self.backlog.pop_front() {
            return Some(job);
        }
        loop {
            if let Some(job) = self.handle(self.commands.recv().ok()?) {
                return Some(job);
            }
        }
    }

    /// Carries out every command but a prediction, which it gives back.
    fn handle(&mut self, command: Command) -> Option<Job> {
        match command {
            Command::Run(job) => return Some(job),
            Command::Insert(loaded) => self.insert(loaded),
            Command::Forget(project) => self.cache.forget(&project),
            Command::Has(key, reply) => {
                let _ = reply.send(self.cache.contains(&key));
            }
            Command::Shared(backbone, reply) => {
                let _ = reply.send(self.cache.shared(&backbone));
            }
        }
        None
    }

    fn collect_batch(&mut self, first: Job) -> Vec<Job> {
        let mut work = first.n * first.k;
        let deadline = first.enqueued + self.config.max_wait;
        let mut batch = vec![first];
        if batch[0].seed.is_some() {
            return batch;
        }
        let fits = |batch: &[Job], work: usize, job: &Job, budget: usize| {
            job.seed.is_none() && job.key == batch[0].key && job.k == batch[0].k && work + job.n * job.k <= budget
        };
        // Compatible jobs already waiting in the backlog join first; the rest keep their order.
        let mut waiting = std::mem::take(&mut self.backlog);
        for job in waiting.drain(..) {
            if fits(&batch, work, &job, self.config.work_budget) {
                work += job.n * job.k;
                batch.push(job);
            } else {
                self.backlog.push_back(job);
            }
        }
        while work < self.config.work_budget {
            let wait = deadline.saturating_duration_since(Instant::now());
            let command = match self.commands.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            match self.handle(command) {
                Some(job) if fits(&batch, work, &job, self.config.work_budget) => {
                    work += job.n * job.k;
                    batch.push(job);
                }
                Some(job) => self.backlog.push_back(job),
                None => {}
            }
        }
        batch
    }

    /// Puts an activation's model into the cache, replacing a copy loaded earlier, and answers.
    fn insert(&mut self, loaded: Loaded) {
        self.cache.insert(loaded.key, loaded.model);
        let _ = loaded.reply.send(());
        self.trim_cache();
    }

    /// Gets the cache back within what the memory budget leaves it, and reports it.
    fn trim_cache(&mut self) {
        self.cache.trim();
        self.metrics.set_loaded_models(self.cache.len(), self.cache.bytes(), self.config.memory.training_bytes());
    }

    fn execute(&mut self, batch: Vec<Job>) {
        let (live, cancelled): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| !job.reply.is_closed());
        self.metrics.record_cancelled(cancelled.len());
        let Some(first) = live.first() else { return };
        let started = Instant::now();
        let (key, spec, k, seed) = (first.key.clone(), first.spec.clone(), first.k, first.seed);
        for job in &live {
            self.metrics.observe_queue_time(started - job.enqueued);
        }
        let trained = first.trained;
        let samples: usize = live.iter().map(|job| job.n).sum();
        let (device, files, models_dir) = (self.device, &self.config.model_files, &self.config.models_dir);
        let result = self
            .cache
            .get_or_load(&key, |cache| {
                // Evicted and needed again: a head-only version builds on a cached backbone too.
                let shared = |frozen: &str| {
                    let backbone =
                        Backbone { project: key.project.clone(), fingerprint: key.fingerprint, frozen: frozen.into() };
                    cache.shared(&backbone)
                };
                load_model(&key, &spec, trained, models_dir, device, files, &shared)
            })
            .and_then(|model| run(model, &spec, &live, samples, k, seed, live.iter().any(|job| job.embeddings)));
        let computed = started.elapsed();
        self.metrics.observe_batch(&key.project, &key.version, samples, computed);
        if result.is_ok() {
            self.metrics.record_forward(samples, k);
        }
        match result {
            Ok((probabilities, embeddings)) => {
                let per_sample = probabilities.len() / samples.max(1);
                let d = embeddings.len() / samples.max(1);
                let (mut rest, mut rest_embeddings) = (probabilities.as_slice(), embeddings.as_slice());
                for job in live {
                    let (mine, others) = rest.split_at(job.n * per_sample);
                    let (my_embeddings, other_embeddings) = rest_embeddings.split_at(job.n * d);
                    (rest, rest_embeddings) = (others, other_embeddings);
                    let embeddings = if job.embeddings { my_embeddings.to_vec() } else { Vec::new() };
                    let queued = started - job.enqueued;
                    let computed = Computed { probabilities: mine.to_vec(), embeddings, queued, computed };
                    let _ = job.reply.send(Ok(computed));
                }
            }
            Err(error) => {
                tracing::warn!(project = %key.project, error = %crate::errors::first_line(&error), "model failed");
                let failure = ModelFailure::from(&error);
                for job in live {
                    let _ = job.reply.send(Err(failure.clone()));
                }
            }
        }
    }
}

/// Loads `key`'s model onto `device`: trained version `key.version` from `models_dir`
/// (fetched from the object store first if needed), else the initial weights. A head-only
/// version shares the backbone `shared` gives for its [`McModel::frozen`] value, if it gives one.
///
/// # Errors
/// [`ModelError`] naming the file at fault (missing, corrupt, checksum mismatch), or
/// [`ModelError::Fetch`].
pub fn load_model(
    key: &ModelKey,
    spec: &ProjectSpec,
    trained: bool,
    models_dir: &crate::store::ModelsDir,
    device: Device,
    files: &crate::models::files::ModelFiles,
    shared: &dyn Fn(&str) -> Option<SharedVariables>,
) -> Result<McModel, ModelError> {
    let loading = Instant::now();
    let model = if trained {
        let dir = models_dir.fetch(&key.project, &key.version).map_err(|error| {
            tracing::warn!(project = %key.project, version = %key.version, %error, "cannot fetch a model version");
            let transient = error.failure() != crate::store::Failure::Permanent;
            ModelError::Fetch { version: key.version.clone(), transient }
        })?;
        McModel::load_version(spec, &dir, files, device, shared)?
    } else {
        McModel::load(spec, files, device)?
    };
    tracing::info!(
        project = %key.project,
        version = %key.version,
        bytes = model.bytes(),
        ms = loading.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(model)
}

/// One forward pass for the whole batch: backbone once, head K times on the repeated features.
/// Returns probabilities `[samples, C, K]` and, when `embeddings` is set, the backbone features
/// `[samples, D]` (else empty), both flattened.
fn run(
    model: &McModel,
    spec: &ProjectSpec,
    jobs: &[Job],
    samples: usize,
    k: usize,
    seed: Option<u64>,
    embeddings: bool,
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let generator = seed.map_or_else(Generator::unseeded, Generator::new);
    random::with_generator(generator, || forward(model, spec, jobs, samples, k, embeddings))
}

/// [`run`]'s pass, drawing dropout masks from the generator it installed.
fn forward(
    model: &McModel,
    spec: &ProjectSpec,
    jobs: &[Job],
    samples: usize,
    k: usize,
    embeddings: bool,
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let p = &spec.preprocessing;
    let shape = [samples as i64, i64::from(p.channels), i64::from(p.height), i64::from(p.width)];
    let inputs: Vec<f32> = jobs.iter().flat_map(|job| job.inputs.iter().copied()).collect();
    let inputs = Tensor::f_from_slice(&inputs)?.f_view(shape)?.f_to_device(model.device())?;
    let features = model.features(&inputs)?;
    let probabilities = model.mc_probabilities(&features, k as i64)?.f_to_device(Device::Cpu)?;
    let probabilities = Vec::<f32>::try_from(probabilities.f_view([-1])?)?;
    if !embeddings {
        return Ok((probabilities, Vec::new()));
    }
    // Features may be any float type or shape [B, ...]; heuristics get f32 rows [B, D].
    let features = features.f_to_kind(tch::Kind::Float)?.f_reshape([samples as i64, -1])?.f_to_device(Device::Cpu)?;
    Ok((probabilities, Vec::<f32>::try_from(features.f_contiguous()?.f_view([-1])?)?))
}
