//! Ranking an unlabelled pool that arrives in chunks: keep the `query_size` most informative
//! items. Per-sample heuristics stream, holding only the current best (memory bounded by the
//! chunk and the query size, not the pool). Batch heuristics (BatchBALD, PowerBALD) need the
//! whole pool's probabilities at once; they accept pools up to a configured number of values.

use std::sync::Arc;

use alps_heuristic_abi::Kind;

use crate::plugins::{CallError, LoadedHeuristic, ProbabilityTensor, most_informative_first};

/// Why a ranking failed.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    /// The heuristic failed.
    #[error(transparent)]
    Heuristic(#[from] CallError),
    /// The model produced values the heuristic host rejects (a model defect).
    #[error("model produced invalid probabilities: {0}")]
    Probabilities(String),
    /// A batch heuristic's pool outgrew its bound.
    #[error(
        "pool too large for batch heuristic {heuristic}: over {limit} probability values (N·C·K) are held at once; use a per-sample heuristic or a smaller pool"
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
    max_pool_values: usize,
}

impl Ranking {
    /// Starts a ranking of `query_size` items with `heuristic` on `[·, classes, k]` outputs.
    /// A pool smaller than `query_size` is returned whole (the API's rule for Rank and Select).
    pub fn new(
        heuristic: Arc<LoadedHeuristic>,
        query_size: usize,
        classes: usize,
        k: usize,
        seed: u64,
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
            max_pool_values,
        }
    }

    /// Adds a scored chunk: `ids` with their probabilities `[ids.len(), C, K]`.
    ///
    /// # Errors
    /// [`RankingError`] if the heuristic fails or a batch heuristic's pool is too large.
    pub fn add(&mut self, ids: Vec<String>, probabilities: Vec<f32>) -> Result<(), RankingError> {
        if ids.is_empty() {
            return Ok(());
        }
        if self.heuristic.kind == Kind::Batch {
            if self.pool.len() + probabilities.len() > self.max_pool_values {
                return Err(RankingError::PoolTooLarge {
                    heuristic: self.heuristic.label(),
                    limit: self.max_pool_values,
                });
            }
            self.pool_ids.extend(ids);
            self.pool.extend(probabilities);
            return Ok(());
        }
        let tensor = self.tensor(probabilities, ids.len())?;
        let scores = self.heuristic.score(&tensor, self.seed)?;
        // Earlier items come first among equals, so ties keep pool order.
        let mut merged: Vec<(String, f32)> = std::mem::take(&mut self.best);
        merged.extend(ids.into_iter().zip(scores));
        let keys: Vec<f32> = merged.iter().map(|(_, score)| *score).collect();
        let order = most_informative_first(&keys, self.heuristic.direction);
        let mut slots: Vec<Option<(String, f32)>> = merged.into_iter().map(Some).collect();
        self.best = order.into_iter().take(self.query_size).filter_map(|i| slots[i as usize].take()).collect();
        Ok(())
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
        let (indices, scores) = self.heuristic.select(&tensor, self.query_size.min(n), self.seed)?;
        Ok(indices.into_iter().zip(scores).map(|(i, score)| (self.pool_ids[i as usize].clone(), score)).collect())
    }
}
