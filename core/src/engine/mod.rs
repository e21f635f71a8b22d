//! The inference engine: admission control, preprocessing, the device worker with dynamic
//! batching and MC-Dropout (`worker`), the model cache (`cache`), heuristic scores, and pool
//! ranking (`rank`). The only layer that touches libtorch (tch); never touches protobuf.

mod cache;
pub mod device;
mod rank;
mod worker;

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{Sender, TrySendError};
pub use rank::{Ranking, RankingError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
pub use worker::ModelFailure;

use crate::{
    metrics::{Metrics, RequestTimes},
    models::{
        McModel, ModelError,
        files::ModelFiles,
        preprocess::{self, ImageLimits, SampleError},
    },
    plugins::{CallError, EmbeddingMatrix, LoadedHeuristic, PoolEmbeddings, ProbabilityTensor},
    projects::{Project, ProjectSpec, UNTRAINED_VERSION},
};
use cache::ModelKey;
use worker::{Backbone, Command, Job, Loaded, WorkerConfig};

/// Heuristic inputs up to this many values (N·C·K) are scored on the async thread: a few
/// microseconds of work, cheaper than a hop to the blocking pool.
const INLINE_SCORE_VALUES: usize = 64 * 1024;

/// Engine settings (server flags).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Work per batch, samples × MC iterations; 0 disables batching.
    pub work_budget: usize,
    /// Longest a job waits for others to batch with.
    pub max_wait: Duration,
    /// Samples admitted at once across all requests; beyond, RESOURCE_EXHAUSTED.
    pub max_in_flight_samples: usize,
    /// The models' memory budget, shared with training: the cache keeps what training does
    /// not hold of it.
    pub memory: Arc<crate::memory::MemoryBudget>,
    /// Limits on encoded images.
    pub image_limits: ImageLimits,
    /// Device of the worker.
    pub device: tch::Device,
    /// Where trained model versions are (`<data-dir>/models`).
    pub models_dir: crate::store::ModelsDir,
    /// Client-named model files (weights, TorchScript): the model root and the read limit.
    pub model_files: ModelFiles,
}

/// One sample of a request, as decoded by the API layer.
#[derive(Clone, Debug)]
pub enum SampleInput {
    /// Encoded image bytes.
    Image(Vec<u8>),
    /// A preprocessed tensor with its shape.
    Tensor {
        /// Shape, `[C, H, W]` or `[C·H·W]`.
        shape: Vec<u64>,
        /// Values.
        values: Vec<f32>,
    },
    /// Neither was set.
    Missing,
}

/// MC-Dropout output of one request (see [`Engine::probabilities`]).
#[derive(Debug)]
pub struct Probabilities {
    /// Per sample, in order: prepared, or why not.
    pub outcomes: Vec<Result<(), SampleError>>,
    /// `[n_ok, C, K]` of the samples that were prepared, flattened.
    pub values: Vec<f32>,
    /// Backbone embeddings `[n_ok, D]`, flattened, when asked for; else empty.
    pub embeddings: Vec<f32>,
    /// How long its stages took (`output` is left zero).
    pub times: RequestTimes,
}

/// The prediction of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplePrediction {
    /// Index of the argmax of the mean probabilities.
    pub class_index: usize,
    /// Mean probability of that class over the K iterations.
    pub probability: f32,
    /// Mean probabilities `[C]`.
    pub mean_probabilities: Vec<f32>,
    /// The heuristic's score.
    pub score: f32,
    /// Full probabilities `[C, K]`, when asked for.
    pub mc_samples: Option<Vec<f32>>,
}

/// What a prediction request asks for besides its samples.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    /// MC iterations K.
    pub mc_iterations: usize,
    /// A per-sample heuristic for the score.
    pub heuristic: Arc<LoadedHeuristic>,
    /// Return `[C, K]` per sample.
    pub return_mc_samples: bool,
    /// Seed for reproducible dropout masks (CPU).
    pub seed: Option<u64>,
}

/// Why a request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Too many samples in flight.
    #[error(
        "server busy: {requested} samples asked, {available} of {limit} in-flight samples free; retry with backoff"
    )]
    Overloaded {
        /// Samples in the request.
        requested: usize,
        /// Free admission slots.
        available: usize,
        /// The bound (--max-in-flight-samples).
        limit: usize,
    },
    /// A request larger than the admission bound can never run.
    #[error("{requested} samples in one request exceed --max-in-flight-samples ({limit}); split the request")]
    TooLarge {
        /// Samples in the request.
        requested: usize,
        /// The bound.
        limit: usize,
    },
    /// The model could not be loaded or run.
    #[error("{0}")]
    Model(String),
    /// The model's version could not be fetched now (the object store or the catalogue was
    /// unreachable): the same request may succeed later.
    #[error("{0}")]
    Fetch(String),
    /// The heuristic failed on the model's output.
    #[error(transparent)]
    Heuristic(#[from] CallError),
    /// A batch heuristic was asked for per-sample scores.
    #[error("heuristic {0} selects batches and has no per-sample scores; use it with Rank")]
    BatchHeuristic(String),
    /// The worker thread is gone (server shutting down).
    #[error("inference worker unavailable")]
    Unavailable,
}

impl From<ModelFailure> for EngineError {
    fn from(failure: ModelFailure) -> Self {
        if failure.transient { Self::Fetch(failure.message) } else { Self::Model(failure.message) }
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    commands: Sender<Command>,
    admission: Arc<Semaphore>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the worker thread.
    ///
    /// # Errors
    /// The OS error if the thread cannot start.
    pub fn start(config: EngineConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        // Every queued job holds at least one admitted sample, so jobs never reach this bound;
        // the rest (forgets, an activation's insert) are rare and may wait for room.
        let (commands, queue) = crossbeam_channel::bounded(config.max_in_flight_samples.max(1) + 16);
        let worker_config = WorkerConfig {
            work_budget: config.work_budget,
            max_wait: config.max_wait,
            memory: config.memory.clone(),
            model_files: config.model_files.clone(),
            models_dir: config.models_dir.clone(),
        };
        worker::spawn(queue, config.device, worker_config, metrics.clone())?;
        Ok(Self { commands, admission: Arc::new(Semaphore::new(config.max_in_flight_samples)), config, metrics })
    }

    /// Builds `spec`'s model once on the CPU, to reject unusable weights or TorchScript files
    /// when a project is created rather than at its first prediction.
    ///
    /// # Errors
    /// [`ModelError`] naming the file and tensor at fault.
    pub fn check_model(&self, spec: &ProjectSpec) -> Result<(), ModelError> {
        McModel::load(spec, &self.config.model_files, tch::Device::Cpu).map(drop)
    }

    /// The most samples admitted at once (`--max-in-flight-samples`): the largest batch one
    /// request may carry.
    pub fn max_in_flight_samples(&self) -> usize {
        self.config.max_in_flight_samples
    }

    /// How long the worker waits to fill a batch (`--max-batch-wait-ms`); zero turns dynamic
    /// batching across requests off.
    pub fn max_batch_wait(&self) -> Duration {
        self.config.max_wait
    }

    /// Loads the model `project` serves at its `active_version` from its files (checksums
    /// checked, even when a copy is cached: the files are what a restart serves) onto the
    /// worker's device, on the calling thread, and puts it in the worker's cache; returns once
    /// it is there. A head-only version whose backbone a cached model already holds (hashed
    /// when that model loaded) shares it: its own file is read and hashed, and of the backbone
    /// version only the manifest and file size are checked. The activating caller swaps the
    /// version in only after this returns ("load first, then swap"): until then requests keep
    /// getting the old version, and neither they nor the worker wait for the load. Blocks: call
    /// it from a blocking thread, never from async code.
    ///
    /// # Errors
    /// [`EngineError::Model`] with the client message of the load's failure (missing or
    /// corrupt files); [`EngineError::Fetch`] if its version cannot be fetched now;
    /// [`EngineError::Unavailable`] if the worker is gone.
    pub fn load_blocking(&self, project: &Project) -> Result<(), EngineError> {
        let (key, spec, trained) = self.model_of(project);
        let (device, files, models_dir) = (self.config.device, &self.config.model_files, &self.config.models_dir);
        let shared = |frozen: &str| {
            let backbone =
                Backbone { project: key.project.clone(), fingerprint: key.fingerprint, frozen: frozen.into() };
            let (reply, answer) = oneshot::channel();
            self.commands.send(Command::Shared(backbone, reply)).ok()?;
            answer.blocking_recv().ok().flatten()
        };
        let model = worker::load_model(&key, &spec, trained, models_dir, device, files, &shared).map_err(|error| {
            let first_line = crate::errors::first_line(&error);
            tracing::warn!(project = %key.project, version = %key.version, error = %first_line, "model failed to load");
            EngineError::from(ModelFailure::from(&error))
        })?;
        let (reply, inserted) = oneshot::channel();
        self.commands.send(Command::Insert(Loaded { key, model, reply })).map_err(|_| EngineError::Unavailable)?;
        inserted.blocking_recv().map_err(|_| EngineError::Unavailable)
    }

    /// The cache key and spec of the model `project` serves, and whether it is a trained version.
    fn model_of(&self, project: &Project) -> (ModelKey, Arc<ProjectSpec>, bool) {
        let spec = Arc::new(project.spec.clone());
        let version = &project.active_version;
        let key = ModelKey { project: spec.id.clone(), version: version.clone(), fingerprint: fingerprint(&spec) };
        (key, spec, version != UNTRAINED_VERSION)
    }

    /// [`load_blocking`](Self::load_blocking), unless the model `project` serves at its
    /// `active_version` is loaded already: a replica following an activation it made itself
    /// (its notification can arrive before its own cache is updated) loads the version once.
    /// Blocks, also behind a batch the worker is computing.
    ///
    /// # Errors
    /// As [`load_blocking`](Self::load_blocking).
    pub fn ensure_loaded(&self, project: &Project) -> Result<(), EngineError> {
        let (key, _, _) = self.model_of(project);
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Has(key, reply)).map_err(|_| EngineError::Unavailable)?;
        if answer.blocking_recv().map_err(|_| EngineError::Unavailable)? {
            return Ok(());
        }
        self.load_blocking(project)
    }

    /// Drops cached models of `project` (after a delete or a spec change).
    pub fn forget(&self, project: &str) {
        let _ = self.commands.try_send(Command::Forget(project.to_owned()));
    }

    fn admit(&self, samples: usize) -> Result<OwnedSemaphorePermit, EngineError> {
        let limit = self.config.max_in_flight_samples;
        if samples > limit {
            return Err(EngineError::TooLarge { requested: samples, limit });
        }
        let permits = u32::try_from(samples).map_err(|_| EngineError::TooLarge { requested: samples, limit })?;
        self.admission.clone().try_acquire_many_owned(permits).map_err(|_| EngineError::Overloaded {
            requested: samples,
            available: self.admission.available_permits(),
            limit,
        })
    }

    /// MC-Dropout probabilities of `samples` on `project`'s active model: per sample its
    /// preprocessing result, and `[n_ok, C, K]` for the samples that succeeded, in order; with
    /// `embeddings`, their backbone embeddings `[n_ok, D]` too.
    ///
    /// # Errors
    /// [`EngineError`] if the request is not admitted or the model fails.
    pub async fn probabilities(
        &self,
        project: &Project,
        samples: Vec<SampleInput>,
        k: usize,
        seed: Option<u64>,
        embeddings: bool,
    ) -> Result<Probabilities, EngineError> {
        let _permit = self.admit(samples.len().max(1))?;
        let has_images = samples.iter().any(|sample| matches!(sample, SampleInput::Image(_)));
        let (key, spec, trained) = self.model_of(project);
        let limits = self.config.image_limits;
        let preprocessing = spec.preprocessing.clone();
        let preparing = Instant::now();
        let prepare_all = move || samples.into_iter().map(|sample| prepare(sample, &preprocessing, limits)).collect();
        // Decoding images is CPU work for the blocking pool; checking tensors is not worth a
        // thread hop (it dominated small requests).
        let prepared: Vec<_> = if has_images {
            tokio::task::spawn_blocking(prepare_all).await.map_err(|_| EngineError::Unavailable)?
        } else {
            prepare_all()
        };
        let mut times = RequestTimes { input: preparing.elapsed(), ..RequestTimes::default() };
        let mut inputs = Vec::new();
        let mut outcomes = Vec::with_capacity(prepared.len());
        for result in prepared {
            outcomes.push(result.map(|values| inputs.extend(values)));
        }
        let n = outcomes.iter().filter(|o| o.is_ok()).count();
        if n == 0 {
            return Ok(Probabilities { outcomes, values: Vec::new(), embeddings: Vec::new(), times });
        }
        let (reply, result) = oneshot::channel();
        let job = Job { trained, key, spec, inputs, n, k, seed, embeddings, enqueued: Instant::now(), reply };
        self.commands.try_send(Command::Run(job)).map_err(|error| match error {
            TrySendError::Full(_) => {
                EngineError::Overloaded { requested: n, available: 0, limit: self.config.max_in_flight_samples }
            }
            TrySendError::Disconnected(_) => EngineError::Unavailable,
        })?;
        // If this future is dropped (client gone), the worker sees the closed reply and skips the job.
        let computed = result.await.map_err(|_| EngineError::Unavailable)?.map_err(EngineError::from)?;
        (times.queue, times.infer) = (computed.queued, computed.computed);
        Ok(Probabilities { outcomes, values: computed.probabilities, embeddings: computed.embeddings, times })
    }

    /// Predicts `samples`: class, probability, mean probabilities and the heuristic's score per
    /// sample, in order; a sample that cannot be prepared gets its own error.
    ///
    /// # Errors
    /// [`EngineError`] for the request as a whole.
    pub async fn predict(
        &self,
        project: &Project,
        samples: Vec<SampleInput>,
        options: &PredictOptions,
    ) -> Result<Vec<Result<SamplePrediction, SampleError>>, EngineError> {
        let started = Instant::now();
        let result = self.predict_timed(project, samples, options).await;
        let (project_id, version) = (&project.spec.id, &project.active_version);
        // A request counts as a success only if every sample was predicted: the Open Inference
        // Protocol fails the whole request for one bad sample.
        let times = result.as_ref().ok().filter(|(samples, _)| samples.iter().all(Result::is_ok)).map(|(_, t)| *t);
        self.metrics.observe_request(project_id, version, times, started.elapsed());
        result.map(|(predictions, _)| predictions)
    }

    async fn predict_timed(
        &self,
        project: &Project,
        samples: Vec<SampleInput>,
        options: &PredictOptions,
    ) -> Result<(Vec<Result<SamplePrediction, SampleError>>, RequestTimes), EngineError> {
        if options.heuristic.kind == alps_heuristic_abi::Kind::Batch {
            return Err(EngineError::BatchHeuristic(options.heuristic.label()));
        }
        // Refused before the model runs: Predict has no labelled set to offer.
        if options.heuristic.needs_labelled() {
            return Err(EngineError::Heuristic(CallError::MissingInput {
                heuristic: options.heuristic.label(),
                what: "the labelled set's embeddings [L, D]",
                hint: "; use it with Rank",
            }));
        }
        let (k, classes) = (options.mc_iterations, project.spec.classes.len());
        // A per-sample heuristic may score on embeddings (ABI 1.1); the labelled set is Rank's.
        let wants_embeddings = options.heuristic.needs_embeddings();
        let Probabilities { outcomes, values: probabilities, embeddings, mut times } =
            self.probabilities(project, samples, k, options.seed, wants_embeddings).await?;
        let scoring = Instant::now();
        let n = probabilities.len() / (classes * k).max(1);
        let scores = if n == 0 {
            Vec::new()
        } else {
            let heuristic = options.heuristic.clone();
            let tensor =
                ProbabilityTensor::from_probabilities(probabilities.clone(), &[n as u64, classes as u64, k as u64])
                    .map_err(|error| EngineError::Model(format!("model produced invalid probabilities: {error}")))?;
            let seed = options.seed.unwrap_or_else(|| fastrand::u64(..));
            let embeddings = pool_embeddings(embeddings, n)?;
            if tensor.data().len() <= INLINE_SCORE_VALUES {
                heuristic.score(&tensor, &embeddings, seed)?
            } else {
                tokio::task::spawn_blocking(move || heuristic.score(&tensor, &embeddings, seed))
                    .await
                    .map_err(|_| EngineError::Unavailable)??
            }
        };
        let mut per_sample = probabilities.chunks_exact(classes * k).zip(scores);
        let predictions = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.map(|()| {
                    let (values, score) = per_sample.next().unwrap_or_default();
                    summarise(values, classes, k, score, options.return_mc_samples)
                })
            })
            .collect();
        times.output = scoring.elapsed();
        Ok((predictions, times))
    }
}

fn prepare(
    sample: SampleInput,
    p: &crate::projects::Preprocessing,
    limits: ImageLimits,
) -> Result<Vec<f32>, SampleError> {
    match sample {
        SampleInput::Image(bytes) => preprocess::image(&bytes, p, limits),
        SampleInput::Tensor { shape, values } => preprocess::tensor(&shape, values, p),
        SampleInput::Missing => Err(SampleError::Empty),
    }
}

/// The pool embeddings `[n, D]` the worker returned (empty when not asked for).
///
/// # Errors
/// [`EngineError::Model`] if the model produced non-finite or misshapen features.
fn pool_embeddings(values: Vec<f32>, n: usize) -> Result<PoolEmbeddings, EngineError> {
    if values.is_empty() {
        return Ok(PoolEmbeddings::none());
    }
    let d = values.len() / n.max(1);
    let pool = EmbeddingMatrix::new(values, d)
        .map_err(|error| EngineError::Model(format!("model produced invalid embeddings: {error}")))?;
    Ok(PoolEmbeddings { pool: Some(pool), labelled: None })
}

/// Mean over K, argmax and (optionally) the full `[C, K]` of one sample.
fn summarise(values: &[f32], classes: usize, k: usize, score: f32, with_samples: bool) -> SamplePrediction {
    let mean_probabilities: Vec<f32> = values.chunks_exact(k).map(|row| row.iter().sum::<f32>() / k as f32).collect();
    let (class_index, probability) = mean_probabilities
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, p)| if p > best.1 { (i, p) } else { best });
    debug_assert_eq!(mean_probabilities.len(), classes);
    SamplePrediction {
        class_index,
        probability,
        mean_probabilities,
        score,
        mc_samples: with_samples.then(|| values.to_vec()),
    }
}

/// A hash of the spec, so a changed spec never reuses a cached model built from the old one.
fn fingerprint(spec: &ProjectSpec) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(spec).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}
