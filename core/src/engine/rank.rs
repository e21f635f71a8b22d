//! Ranking an unlabelled pool that arrives in chunks: keep the `query_size` most informative
//! items. Per-sample heuristics stream, holding only the current best (memory bounded by the
//! chunk and the query size, not the pool). Batch heuristics (BatchBALD, PowerBALD, TypiClust,
//! Core-Set, BADGE) need the whole pool at once: its probabilities `[N, C, K]` and, for those
//! that ask, its embeddings `[N, D]` and the labelled set's `[L, D]`; they accept pools up to a
//! configured number of values (N·C·K + N·D + L·D). A heuristic the acquisition schedule chose
//! falls back to the project's default instead of failing when the pool outgrows that bound.

use std::sync::Arc;

use alps_heuristic_abi::Kind;

use crate::plugins::{
    CallError, EmbeddingMatrix, LabelledSet, LoadedHeuristic, PoolEmbeddings, ProbabilityTensor, most_informative_first,
};

/// Why a ranking failed.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    /// The heuristic failed.
    #[error(transparent)]
    Heuristic(#[from] CallError),
    /// The model produced values the heuristic host rejects (a model defect).
    #[error("model produced invalid probabilities: {0}")]
    Probabilities(String),
    /// The model produced embeddings the heuristic host rejects (a model defect).
    #[error("model produced invalid embeddings: {0}")]
    Embeddings(String),
    /// The labelled set a heuristic asked for outgrew the bound.
    #[error(
        "the project's labelled set is too large for heuristic {heuristic}: its embeddings (L·D) exceed {limit} values; use another heuristic or raise --max-rank-pool-values"
    )]
    LabelledSetTooLarge {
        /// `name@version`.
        heuristic: String,
        /// The bound.
        limit: usize,
    },
    /// A batch heuristic's pool outgrew its bound.
    #[error(
        "pool too large for batch heuristic {heuristic}: over {limit} values (probabilities N·C·K plus embeddings N·D) are held at once; use a per-sample heuristic or a smaller pool"
    )]
    PoolTooLarge {
        /// `name@version`.
        heuristic: String,
        /// The bound.
        limit: usize,
    },
}

/// A ranking in progress.
#[derive(Debug)]
pub struct Ranking {
    heuristic: Arc<LoadedHeuristic>,
    query_size: usize,
    classes: usize,
    k: usize,
    seed: u64,
    /// Per-sample heuristics: the best `query_size` so far, most informative first.
    best: Vec<(String, f32)>,
    /// Batch heuristics: every item's id and probabilities `[n, C, K]`.
    pool_ids: Vec<String>,
    pool: Vec<f32>,
    /// Batch heuristics that ask for embeddings: every item's `[n, D]`.
    pool_embeddings: Vec<f32>,
    /// D of the embeddings seen so far (0 before the first chunk).
    d: usize,
    /// The labelled set, for heuristics that ask for it.
    labelled: Option<Arc<LabelledSet>>,
    max_pool_values: usize,
    /// The heuristic to switch to when the pool outgrows `max_pool_values` (see
    /// [`Ranking::with_fallback`]).
    fallback: Option<Arc<LoadedHeuristic>>,
}

impl Ranking {
    /// Starts a ranking of `query_size` items with `heuristic` on `[·, classes, k]` outputs;
    /// `labelled` is the labelled set for heuristics that ask for it. A pool smaller than
    /// `query_size` is returned whole (the API's rule for Rank and Select).
    pub fn new(
        heuristic: Arc<LoadedHeuristic>,
        query_size: usize,
        (classes, k): (usize, usize),
        seed: u64,
        labelled: Option<Arc<LabelledSet>>,
        max_pool_values: usize,
    ) -> Self {
        Self {
            heuristic,
            query_size,
            classes,
            k,
            seed,
            best: Vec::new(),
            pool_ids: Vec::new(),
            pool: Vec::new(),
            pool_embeddings: Vec::new(),
            d: 0,
            labelled,
            max_pool_values,
            fallback: None,
        }
    }

    /// Ranks with `fallback` instead of failing when the pool outgrows the bound (for a
    /// heuristic chosen by the acquisition schedule rather than by the request).
    pub fn with_fallback(mut self, fallback: Arc<LoadedHeuristic>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Whether chunks must come with embeddings (the heuristic asks for them).
    pub fn needs_embeddings(&self) -> bool {
        self.heuristic.needs_embeddings()
    }

    /// Adds a scored chunk: `ids` with their probabilities `[ids.len(), C, K]` and, when
    /// [`needs_embeddings`](Self::needs_embeddings), embeddings `[ids.len(), D]` (else empty).
    ///
    /// # Errors
    /// [`RankingError`] if the heuristic fails, the embeddings do not fit, or a batch
    /// heuristic's pool is too large.
    pub fn add(&mut self, ids: Vec<String>, probabilities: Vec<f32>, embeddings: Vec<f32>) -> Result<(), RankingError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.check_embeddings(&embeddings, ids.len())?;
        if self.heuristic.kind == Kind::Batch {
            let held = self.pool.len() + self.pool_embeddings.len();
            if held + probabilities.len() + embeddings.len() > self.max_pool_values {
                if self.fall_back()? {
                    let embeddings = if self.needs_embeddings() { embeddings } else { Vec::new() };
                    return self.add(ids, probabilities, embeddings);
                }
                return Err(RankingError::PoolTooLarge {
                    heuristic: self.heuristic.label(),
                    limit: self.max_pool_values,
                });
            }
            self.pool_ids.extend(ids);
            self.pool.extend(probabilities);
            self.pool_embeddings.extend(embeddings);
            return Ok(());
        }
        self.score_chunk(ids, probabilities, embeddings)
    }

    /// Per-sample heuristics: scores a chunk and keeps the best `query_size` so far.
    fn score_chunk(
        &mut self,
        ids: Vec<String>,
        probabilities: Vec<f32>,
        embeddings: Vec<f32>,
    ) -> Result<(), RankingError> {
        let tensor = self.tensor(probabilities, ids.len())?;
        let embeddings = self.embeddings(embeddings)?;
        let scores = self.heuristic.score(&tensor, &embeddings, self.seed)?;
        // Earlier items come first among equals, so ties keep pool order.
        let mut merged: Vec<(String, f32)> = std::mem::take(&mut self.best);
        merged.extend(ids.into_iter().zip(scores));
        let keys: Vec<f32> = merged.iter().map(|(_, score)| *score).collect();
        let order = most_informative_first(&keys, self.heuristic.direction);
        let mut slots: Vec<Option<(String, f32)>> = merged.into_iter().map(Some).collect();
        self.best = order.into_iter().take(self.query_size).filter_map(|i| slots[i as usize].take()).collect();
        Ok(())
    }

    /// Switches to the fallback heuristic, if there is one, when the pool outgrows the bound of
    /// a heuristic the acquisition schedule chose (a cold start on a pool too large for it
    /// degrades to the project's default instead of failing). What was held is handed over:
    /// probabilities stay (a per-sample fallback scores them now), embeddings it does not need
    /// are dropped.
    fn fall_back(&mut self) -> Result<bool, RankingError> {
        let Some(fallback) = self.fallback.take() else { return Ok(false) };
        tracing::warn!(
            from = %self.heuristic.label(),
            to = %fallback.label(),
            limit = self.max_pool_values,
            "pool too large for the schedule's heuristic; ranking with the project's default"
        );
        self.heuristic = fallback;
        let (ids, pool, embeddings) = (
            std::mem::take(&mut self.pool_ids),
            std::mem::take(&mut self.pool),
            std::mem::take(&mut self.pool_embeddings),
        );
        let embeddings = if self.needs_embeddings() { embeddings } else { Vec::new() };
        if !self.needs_embeddings() {
            self.d = 0;
        }
        self.add(ids, pool, embeddings)?;
        Ok(true)
    }

    /// The heuristic ranking now (the fallback once the pool outgrew the first one's bound).
    pub fn heuristic(&self) -> &Arc<LoadedHeuristic> {
        &self.heuristic
    }

    /// Every chunk of one ranking has embeddings of one dimension D (one model).
    fn check_embeddings(&mut self, embeddings: &[f32], n: usize) -> Result<(), RankingError> {
        if !self.needs_embeddings() {
            return Ok(());
        }
        let d = embeddings.len() / n;
        if d == 0 || d * n != embeddings.len() || (self.d != 0 && d != self.d) {
            let seen = self.d;
            return Err(RankingError::Embeddings(format!(
                "{} values for {n} samples (D so far {seen})",
                embeddings.len()
            )));
        }
        self.d = d;
        Ok(())
    }

    /// What the heuristic gets besides probabilities: `embeddings` `[n, D]` and the labelled set.
    fn embeddings(&self, embeddings: Vec<f32>) -> Result<PoolEmbeddings, RankingError> {
        if !self.needs_embeddings() {
            return Ok(PoolEmbeddings::none());
        }
        let pool =
            EmbeddingMatrix::new(embeddings, self.d).map_err(|error| RankingError::Embeddings(error.to_string()))?;
        Ok(PoolEmbeddings { pool: Some(pool), labelled: self.labelled.clone() })
    }

    fn tensor(&self, probabilities: Vec<f32>, n: usize) -> Result<ProbabilityTensor, RankingError> {
        ProbabilityTensor::from_probabilities(probabilities, &[n as u64, self.classes as u64, self.k as u64])
            .map_err(|error| RankingError::Probabilities(error.to_string()))
    }

    /// The selected items with their scores, most informative first.
    ///
    /// # Errors
    /// [`RankingError`] if a batch heuristic fails.
    pub fn finish(mut self) -> Result<Vec<(String, f32)>, RankingError> {
        if self.heuristic.kind != Kind::Batch {
            return Ok(self.best);
        }
        let n = self.pool_ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let pool = std::mem::take(&mut self.pool);
        let tensor = self.tensor(pool, n)?;
        let pool_embeddings = std::mem::take(&mut self.pool_embeddings);
        let embeddings = self.embeddings(pool_embeddings)?;
        let (indices, scores) = self.heuristic.select(&tensor, &embeddings, self.query_size.min(n), self.seed)?;
        Ok(indices.into_iter().zip(scores).map(|(i, score)| (self.pool_ids[i as usize].clone(), score)).collect())
    }
}
