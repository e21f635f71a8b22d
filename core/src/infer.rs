//! The inference facade: what every protocol surface calls to predict and rank. `alps.v1`
//! ([`crate::api::inference`]) and the Open Inference Protocol ([`crate::oip`]) only decode
//! their messages, call [`Infer`] and encode the answer; the rules live here once: which model
//! version serves, MC iterations and heuristic defaulting, the admission bound, and ranking a
//! pool that arrives in chunks.

use std::{hash::BuildHasher, sync::Arc};

use crate::{
    engine::{Engine, EngineError, PredictOptions, Ranking, RankingError, SampleInput, SamplePrediction},
    ids::{self, IdError},
    models::preprocess::SampleError,
    plugins::{EmbeddingMatrix, HeuristicHost, LabelledSet, LoadedHeuristic, ResolveError},
    projects::{HeuristicChoice, Project, ProjectError, Projects, UNTRAINED_VERSION, check_mc_iterations},
    training::{Trainer, TrainingError, examples::Examples},
};

/// Labelled examples embedded per engine request when a heuristic needs the labelled set.
const LABELLED_CHUNK: usize = 256;

/// Why an inference request failed as a whole. Each protocol maps it to its status code
/// (`alps.v1`: `impl From<InferError> for tonic::Status` in [`crate::api::inference`]).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A request field is malformed or out of range (INVALID_ARGUMENT / HTTP 400).
    #[error("{field}: {message}")]
    Invalid {
        /// The request field at fault, e.g. `mc_iterations`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An identifier does not follow the grammar (INVALID_ARGUMENT).
    #[error(transparent)]
    Id(#[from] IdError),
    /// Unknown project (NOT_FOUND) or a failing project store (INTERNAL).
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The project has no such model version (NOT_FOUND).
    #[error("project {project:?} has no model version {version:?}")]
    UnknownVersion {
        /// Project id.
        project: String,
        /// The version asked for.
        version: String,
    },
    /// The version was trained for other classes, another model or other preprocessing than
    /// the project has now (FAILED_PRECONDITION).
    #[error(
        "model version {version:?} of project {project:?} was trained for other classes, model or preprocessing than the project has now"
    )]
    StaleVersion {
        /// Project id.
        project: String,
        /// The version asked for.
        version: String,
    },
    /// The version list could not be read (INTERNAL).
    #[error(transparent)]
    Versions(#[from] TrainingError),
    /// No loaded heuristic matches (NOT_FOUND).
    #[error(transparent)]
    Heuristic(#[from] ResolveError),
    /// Admission, model or heuristic failure of the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The ranking failed.
    #[error(transparent)]
    Ranking(#[from] RankingError),
    /// The labelled set a heuristic asked for could not be read (UNAVAILABLE while the
    /// catalogue is unreachable, else INTERNAL).
    #[error("cannot read the project's labelled examples: {0}")]
    LabelledSet(#[source] crate::training::examples::ExampleError),
}

impl InferError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.to_owned(), message: message.into() }
    }
}

/// What a prediction request asks for besides its samples; `0`/`None` means the project's
/// default.
#[derive(Clone, Debug, Default)]
pub struct PredictParams {
    /// MC iterations K, `1..=1000`; 0 = the project's default.
    pub mc_iterations: u32,
    /// The acquisition function for the score; `None` = the project's default heuristic.
    pub heuristic: Option<HeuristicChoice>,
    /// Return every sample's `[C, K]` probabilities.
    pub return_mc_samples: bool,
    /// Seed of the dropout masks (and of a stochastic heuristic); `None` = random.
    pub seed: Option<u64>,
}

/// The answer to a prediction request.
#[derive(Debug)]
pub struct Predictions {
    /// The project as served: `active_version` is the model version that answered.
    pub project: Arc<Project>,
    /// MC iterations K used.
    pub mc_iterations: usize,
    /// The heuristic that scored the samples.
    pub heuristic: Arc<LoadedHeuristic>,
    /// Per sample, in request order: its prediction or why it could not be prepared.
    pub samples: Vec<Result<SamplePrediction, SampleError>>,
}

/// The facade over the project registry, the model versions, the heuristics and the engine.
#[derive(Debug, Clone)]
pub struct Infer {
    projects: Arc<Projects>,
    examples: Arc<Examples>,
    trainer: Arc<Trainer>,
    heuristics: Arc<HeuristicHost>,
    engine: Engine,
    max_rank_pool_values: usize,
}

impl Infer {
    /// A facade over the server's parts; `max_rank_pool_values` bounds what a batch heuristic
    /// holds in Rank (f32 values: probabilities N·C·K, embeddings N·D, the labelled set's L·D;
    /// `--max-rank-pool-values`).
    pub fn new(
        projects: Arc<Projects>,
        examples: Arc<Examples>,
        trainer: Arc<Trainer>,
        heuristics: Arc<HeuristicHost>,
        engine: Engine,
        max_rank_pool_values: usize,
    ) -> Self {
        Self { projects, examples, trainer, heuristics, engine, max_rank_pool_values }
    }

    /// The project `id` (request field `field`), checked against the identifier grammar. The
    /// request being served is attributed to it in the per-project metrics.
    ///
    /// # Errors
    /// [`InferError::Id`] for a malformed id, [`InferError::Project`] for an unknown one (or a
    /// store failure while looking for it, with replicas).
    pub fn project(&self, field: &str, id: &str) -> Result<Arc<Project>, InferError> {
        ids::project(field, id)?;
        // With replicas, a miss reads the catalogue (the hot path, for a known project, never).
        let project = match self.projects.get(id) {
            Err(_) if self.projects.follows_replicas() => tokio::task::block_in_place(|| self.projects.find(id))?,
            found => found?,
        };
        crate::observe::attribute_to_project(id);
        Ok(project)
    }

    /// The engine's batching: the most samples one request may carry
    /// (`--max-in-flight-samples`) and how long a batch waits to fill (zero: no batching
    /// across requests).
    pub fn batching(&self) -> (usize, std::time::Duration) {
        (self.engine.max_in_flight_samples(), self.engine.max_batch_wait())
    }

    /// Every project, in id order.
    pub fn projects(&self) -> Vec<Arc<Project>> {
        self.projects.list()
    }

    /// The project `id` served at model `version`: its active version when `version` is empty
    /// or names it, otherwise its initial weights (`untrained`) or any trained version made
    /// for its current classes, model and preprocessing (served read-only: nothing is
    /// activated). The inference path reads the version list only for a named inactive
    /// trained version.
    ///
    /// # Errors
    /// As [`Infer::project`]; [`InferError::UnknownVersion`] for a version the project lacks,
    /// [`InferError::StaleVersion`] for one trained on other classes.
    pub fn project_at(&self, field: &str, id: &str, version: &str) -> Result<Arc<Project>, InferError> {
        let project = self.project(field, id)?;
        if version.is_empty() || version == project.active_version {
            return Ok(project);
        }
        ids::other("version", version)?;
        if version == UNTRAINED_VERSION {
            return Ok(Arc::new(Project { active_version: UNTRAINED_VERSION.to_owned(), ..Project::clone(&project) }));
        }
        let manifests = tokio::task::block_in_place(|| self.trainer.versions(id))?;
        let manifest = manifests.into_iter().find(|m| m.version == version);
        let Some(manifest) = manifest else {
            return Err(InferError::UnknownVersion { project: id.to_owned(), version: version.to_owned() });
        };
        if !manifest.serves(&project.spec) {
            return Err(InferError::StaleVersion { project: id.to_owned(), version: version.to_owned() });
        }
        Ok(Arc::new(Project { active_version: version.to_owned(), ..Project::clone(&project) }))
    }

    /// The model versions `project` can serve now, newest first: its trained versions made for
    /// its current classes, model and preprocessing, then `untrained` (its initial weights).
    ///
    /// # Errors
    /// [`InferError::Versions`] if the version list cannot be read.
    pub fn versions(&self, project: &Project) -> Result<Vec<String>, InferError> {
        let manifests = tokio::task::block_in_place(|| self.trainer.versions(&project.spec.id))?;
        let mut versions: Vec<String> =
            manifests.into_iter().filter(|m| m.serves(&project.spec)).map(|manifest| manifest.version).collect();
        versions.push(UNTRAINED_VERSION.to_owned());
        Ok(versions)
    }

    /// MC iterations K for a request: `requested`, or the project's default when 0.
    ///
    /// # Errors
    /// [`InferError::Invalid`] outside `1..=1000`.
    pub fn mc_iterations(&self, project: &Project, requested: u32) -> Result<usize, InferError> {
        if requested == 0 {
            return Ok(project.spec.mc_iterations as usize);
        }
        check_mc_iterations("mc_iterations", requested).map_err(|e| InferError::invalid(e.field, e.message))?;
        Ok(requested as usize)
    }

    /// The loaded heuristic for a request: `requested` (empty version = newest), or the
    /// project's default heuristic.
    ///
    /// # Errors
    /// [`InferError::Id`] for a malformed name or version, [`InferError::Heuristic`] when none
    /// is loaded under that name and version.
    pub fn heuristic(
        &self,
        project: &Project,
        requested: Option<HeuristicChoice>,
    ) -> Result<Arc<LoadedHeuristic>, InferError> {
        let choice = requested.filter(|h| !h.name.is_empty()).unwrap_or_else(|| project.spec.default_heuristic.clone());
        ids::heuristic("heuristic", &choice.name, &choice.version)?;
        Ok(self.heuristics.registry().resolve(&choice.name, &choice.version)?)
    }

    /// Predicts `samples` on `project` (at the version it carries, see [`Infer::project_at`]):
    /// class, mean probabilities `[C]`, the heuristic's score and optionally `[C, K]` each.
    ///
    /// # Errors
    /// [`InferError::Invalid`] for no samples or bad parameters; [`InferError::Engine`] when
    /// the request is not admitted or the model fails; a sample that cannot be prepared fails
    /// alone, in [`Predictions::samples`].
    pub async fn predict(
        &self,
        project: Arc<Project>,
        samples: Vec<SampleInput>,
        params: PredictParams,
    ) -> Result<Predictions, InferError> {
        if samples.is_empty() {
            return Err(InferError::invalid("samples", "at least one sample is required"));
        }
        let mc_iterations = self.mc_iterations(&project, params.mc_iterations)?;
        let heuristic = self.heuristic(&project, params.heuristic)?;
        let options = PredictOptions {
            mc_iterations,
            heuristic: heuristic.clone(),
            return_mc_samples: params.return_mc_samples,
            seed: params.seed,
        };
        let samples = self.engine.predict(&project, samples, &options).await?;
        Ok(Predictions { project, mc_iterations, heuristic, samples })
    }

    /// The heuristic that ranks for a Rank request: `requested`, else the project's
    /// acquisition schedule's cold-start heuristic while the project has fewer labelled
    /// examples than the schedule's switch point, else the project's default heuristic. The
    /// flag says whether the schedule chose it.
    ///
    /// # Errors
    /// As [`Infer::heuristic`]; [`InferError::LabelledSet`] if the examples cannot be counted.
    pub fn rank_heuristic(
        &self,
        project: &Project,
        requested: Option<HeuristicChoice>,
    ) -> Result<(Arc<LoadedHeuristic>, bool), InferError> {
        let requested = requested.filter(|h| !h.name.is_empty());
        let Some(schedule) = project.spec.acquisition_schedule.as_ref().filter(|_| requested.is_none()) else {
            return Ok((self.heuristic(project, requested)?, false));
        };
        let labels =
            tokio::task::block_in_place(|| self.examples.total(&project.spec.id)).map_err(InferError::LabelledSet)?;
        if labels >= schedule.switch_at(project.spec.classes.len()) {
            return Ok((self.heuristic(project, None)?, false));
        }
        Ok((self.heuristic(project, Some(schedule.cold_start.clone()))?, true))
    }

    /// Starts ranking a pool that arrives in chunks: keep the `query_size` most informative.
    /// The heuristic is [`Infer::rank_heuristic`]'s; one that asks for the labelled set gets
    /// every labelled example embedded by the model version that ranks.
    ///
    /// # Errors
    /// [`InferError::Invalid`] for `query_size` 0 or bad parameters; heuristic errors as in
    /// [`Infer::heuristic`]; engine errors while embedding the labelled set.
    pub async fn rank(
        &self,
        project: Arc<Project>,
        query_size: u32,
        params: PredictParams,
    ) -> Result<PoolRanking, InferError> {
        // The same rule as Select: at least 1; more than the pool selects the whole pool (the
        // pool's size is known only at the end of the stream).
        if query_size == 0 {
            return Err(InferError::invalid("query_size", "at least 1 sample must be selected"));
        }
        let mc_iterations = self.mc_iterations(&project, params.mc_iterations)?;
        let (heuristic, scheduled) = self.rank_heuristic(&project, params.heuristic)?;
        let seed = params.seed.unwrap_or_else(|| fastrand::u64(..));
        let labelled = match heuristic.needs_labelled() {
            true => Some(Arc::new(self.labelled_set(&project, &heuristic, seed).await?)),
            false => None,
        };
        let held = labelled.as_ref().map_or(0, |set| set.embeddings().data().len());
        let mut ranking = Ranking::new(
            heuristic,
            query_size as usize,
            (project.spec.classes.len(), mc_iterations),
            seed,
            labelled,
            self.max_rank_pool_values.saturating_sub(held),
        );
        if scheduled {
            ranking = ranking.with_fallback(self.heuristic(&project, None)?);
        }
        Ok(PoolRanking {
            engine: self.engine.clone(),
            project,
            mc_iterations,
            seed,
            seen: std::collections::HashSet::new(),
            ids: std::collections::hash_map::RandomState::new(),
            ranking,
            pool_size: 0,
        })
    }

    /// Every labelled example of `project` embedded by the model version it carries
    /// (`[L, D]`, with class indices `[L]`), read and embedded in chunks. Examples whose sample
    /// no longer prepares are left out.
    async fn labelled_set(
        &self,
        project: &Arc<Project>,
        heuristic: &LoadedHeuristic,
        seed: u64,
    ) -> Result<LabelledSet, InferError> {
        let chunk = LABELLED_CHUNK.min(self.engine.max_in_flight_samples()).max(1);
        let (mut after, mut embeddings, mut classes) = (String::new(), Vec::new(), Vec::new());
        loop {
            let page = tokio::task::block_in_place(|| self.examples.labelled_inputs(project, &after, chunk))
                .map_err(InferError::LabelledSet)?;
            let Some(last) = page.last else { break };
            after = last;
            let (inputs, page_classes): (Vec<_>, Vec<_>) = page.inputs.into_iter().unzip();
            if inputs.is_empty() {
                continue;
            }
            // One MC iteration: only the deterministic backbone output is kept.
            let computed = self.engine.probabilities(project, inputs, 1, Some(seed), true).await?;
            let prepared = computed.outcomes.iter().zip(page_classes).filter(|(outcome, _)| outcome.is_ok());
            classes.extend(prepared.map(|(_, class)| class));
            embeddings.extend(computed.embeddings);
            // Bounded while reading: a project with many labels fails early, not out of memory.
            if embeddings.len() > self.max_rank_pool_values {
                let limit = self.max_rank_pool_values;
                return Err(RankingError::LabelledSetTooLarge { heuristic: heuristic.label(), limit }.into());
            }
        }
        // D is unknown without examples; an empty set never shows it to a plugin.
        let d = if classes.is_empty() { 1 } else { embeddings.len() / classes.len() };
        let matrix = EmbeddingMatrix::new(embeddings, d).map_err(|e| RankingError::Embeddings(e.to_string()))?;
        Ok(LabelledSet::new(matrix, classes).map_err(|e| RankingError::Embeddings(e.to_string()))?)
    }
}

/// A ranking in progress (see [`Infer::rank`]); feed it chunks, then [`PoolRanking::finish`].
#[derive(Debug)]
pub struct PoolRanking {
    engine: Engine,
    project: Arc<Project>,
    mc_iterations: usize,
    seed: u64,
    /// Hashes of the ids received so far, and their (randomly keyed) hasher.
    seen: std::collections::HashSet<u64>,
    ids: std::collections::hash_map::RandomState,
    ranking: Ranking,
    pool_size: u64,
}

/// The result of a ranking.
#[derive(Debug)]
pub struct RankOutcome {
    /// The selected ids with their scores, most informative first.
    pub selected: Vec<(String, f32)>,
    /// Samples of the pool received.
    pub pool_size: u64,
    /// The project as served (its `active_version` answered).
    pub project: Arc<Project>,
    /// The heuristic that ranked.
    pub heuristic: Arc<LoadedHeuristic>,
}

impl PoolRanking {
    /// Scores one chunk of `(id, input)` pairs; returns the samples that could not be
    /// prepared, with why. Every chunk uses the ranking's seed, so a seeded ranking is
    /// reproducible.
    ///
    /// # Errors
    /// [`InferError::Invalid`] for a sample without an id (`position` counts within the
    /// chunk); engine and heuristic failures.
    pub async fn add(&mut self, chunk: Vec<(String, SampleInput)>) -> Result<Vec<(String, SampleError)>, InferError> {
        self.pool_size += chunk.len() as u64;
        if let Some(position) = chunk.iter().position(|(id, _)| id.is_empty()) {
            return Err(InferError::invalid(&format!("samples[{position}].id"), "Rank needs an id for every sample"));
        }
        // Ids are unique within the pool (the API's rule); a 64-bit hash per item keeps the
        // check's memory at 8 bytes per pool item, whatever the id's length.
        if let Some(position) = chunk.iter().position(|(id, _)| !self.seen.insert(self.ids.hash_one(id))) {
            let id = &chunk[position].0;
            return Err(InferError::invalid(
                &format!("samples[{position}].id"),
                format!("{id:?} appears twice in the pool"),
            ));
        }
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, inputs): (Vec<_>, Vec<_>) = chunk.into_iter().unzip();
        let embeddings = self.ranking.needs_embeddings();
        let computed =
            self.engine.probabilities(&self.project, inputs, self.mc_iterations, Some(self.seed), embeddings).await?;
        let (outcomes, probabilities) = (computed.outcomes, computed.values);
        let (mut scored, mut failed) = (Vec::with_capacity(ids.len()), Vec::new());
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => scored.push(id),
                Err(error) => failed.push((id, error)),
            }
        }
        tokio::task::block_in_place(|| self.ranking.add(scored, probabilities, computed.embeddings))?;
        Ok(failed)
    }

    /// Ends the pool and selects.
    ///
    /// # Errors
    /// [`InferError::Ranking`] if a batch heuristic fails.
    pub fn finish(self) -> Result<RankOutcome, InferError> {
        // The heuristic that ranked in the end (a schedule's may have fallen back).
        let heuristic = self.ranking.heuristic().clone();
        let selected = tokio::task::block_in_place(|| self.ranking.finish())?;
        Ok(RankOutcome { selected, pool_size: self.pool_size, project: self.project, heuristic })
    }
}
