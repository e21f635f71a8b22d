//! Batch-selection heuristics (each function's doc gives its formula and paper): they pick
//! `query_size` samples jointly and return them in selection order.

use std::ffi::CStr;

use alps_heuristic_abi::{BatchHeuristic, Direction, Heuristic, HeuristicError, Probabilities, ScoreHeuristic};
use rayon::prelude::*;

use crate::{
    entropy::{expected_entropy, x_ln_x},
    score::Bald,
};

/// BALD scores of every sample, `[N]`, in nats.
fn bald_scores(input: Probabilities<'_>) -> Result<Vec<f32>, HeuristicError> {
    let mut scores = vec![0.0; input.n()];
    Bald::score(input, 0, &mut scores)?;
    Ok(scores)
}

/// Indices of `keys` sorted by decreasing key, ties (and equal keys such as -inf) broken by the
/// lower index first.
fn argsort_descending(keys: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
    order
}

/// PowerBALD (Kirsch et al. 2022, "Stochastic Batch Acquisition: A Simple Baseline for Deep
/// Active Learning"): samples `query_size` items without replacement with probability
/// proportional to `bald^(1/T)`, T = 1, via the Gumbel-top-k trick (top-k of
/// `ln bald + Gumbel(0, 1)`). Tiny negative BALD values (float error) are clamped to 0 first, so
/// they get `ln 0 = -inf` and come last instead of NaN (Baal 2.1.0 produces NaN there).
/// Reported scores are the items' BALD values in nats.
pub struct PowerBald;

impl Heuristic for PowerBald {
    const NAME: &'static CStr = c"power_bald";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"PowerBALD: stochastic batch sampling proportional to BALD (Kirsch et al. 2022), seedable";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

impl BatchHeuristic for PowerBald {
    fn select(
        input: Probabilities<'_>,
        seed: u64,
        indices: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), HeuristicError> {
        let bald = bald_scores(input)?;
        let mut rng = fastrand::Rng::with_seed(seed);
        let keys: Vec<f64> = bald
            .iter()
            .map(|&b| {
                // Gumbel(0, 1) = -ln(-ln U), U uniform in (0, 1).
                let u = rng.f64().max(f64::MIN_POSITIVE);
                f64::from(b.max(0.0)).ln() - (-u.ln()).ln()
            })
            .collect();
        for ((index, score), picked) in indices.iter_mut().zip(scores.iter_mut()).zip(argsort_descending(&keys)) {
            *index = picked as u32;
            *score = bald[picked];
        }
        Ok(())
    }
}

/// Joint label configurations of the already selected items, for BatchBALD.
/// `weights[s * K + k] = Π_{i in batch} P[i, y_i^s, k]` for configuration `s`.
struct Configurations {
    weights: Vec<f64>,
    count: usize,
    /// True when configurations are samples from the joint predictive (importance estimate)
    /// rather than the exhaustive set.
    sampled: bool,
}

/// Exhaustive enumeration while `configurations × C` stays below this; sampling beyond.
const MAX_EXACT_CONFIGURATIONS: usize = 4096;
/// Configurations drawn once exhaustive enumeration is too large (Baal's `num_draw`).
const SAMPLED_CONFIGURATIONS: usize = 500;

impl Configurations {
    /// The empty batch: one configuration with weight 1 for every iteration.
    fn empty(k: usize) -> Self {
        Self { weights: vec![1.0; k], count: 1, sampled: false }
    }

    /// Adds `sample` (`[C, K]`) to the batch.
    fn extend(&mut self, sample: &[f32], c: usize, k: usize, rng: &mut fastrand::Rng) {
        if !self.sampled && self.count * c <= MAX_EXACT_CONFIGURATIONS {
            let mut weights = Vec::with_capacity(self.count * c * k);
            for s in 0..self.count {
                for class in 0..c {
                    for t in 0..k {
                        weights.push(self.weights[s * k + t] * f64::from(sample[class * k + t]));
                    }
                }
            }
            self.weights = weights;
            self.count *= c;
        } else {
            self.resample_with(sample, c, k, rng);
        }
    }

    /// Draws [`SAMPLED_CONFIGURATIONS`] configurations of (batch, `sample`) from the joint
    /// predictive: a batch configuration `y_b ~ p(y_b)` (by probability when the current set is
    /// exhaustive, uniformly when it is already a sample of `p(y_b)`), then the new label from
    /// `p(y | y_b)`: an iteration `t` drawn by the configuration's weights, then `y ~ P[sample, :, t]`.
    fn resample_with(&mut self, sample: &[f32], c: usize, k: usize, rng: &mut fastrand::Rng) {
        let totals: Vec<f64> = self.weights.chunks_exact(k).map(|w| w.iter().sum()).collect();
        let mut weights = Vec::with_capacity(SAMPLED_CONFIGURATIONS * k);
        for _ in 0..SAMPLED_CONFIGURATIONS {
            let s = if self.sampled { rng.usize(..self.count) } else { draw(&totals, rng) };
            let row = &self.weights[s * k..(s + 1) * k];
            let t = draw(row, rng);
            let label_probabilities: Vec<f64> = (0..c).map(|class| f64::from(sample[class * k + t])).collect();
            let label = draw(&label_probabilities, rng);
            weights.extend(row.iter().enumerate().map(|(t, w)| w * f64::from(sample[label * k + t])));
        }
        self.weights = weights;
        self.count = SAMPLED_CONFIGURATIONS;
        self.sampled = true;
    }

    /// Joint entropy `H(y_batch, y_candidate)` in nats. Exact when the configurations are
    /// exhaustive; otherwise the importance-sampling estimate of Kirsch et al. 2019 (§3.3).
    fn joint_entropy_with(&self, candidate: &[f32], c: usize, k: usize) -> f64 {
        let mut total = 0.0;
        for row in self.weights.chunks_exact(k) {
            let batch_probability: f64 = row.iter().sum::<f64>() / k as f64;
            if batch_probability <= 0.0 {
                continue;
            }
            for class in 0..c {
                let joint: f64 =
                    row.iter().zip(&candidate[class * k..(class + 1) * k]).map(|(w, &p)| w * f64::from(p)).sum::<f64>()
                        / k as f64;
                total -= if self.sampled { joint / batch_probability * ln_or_zero(joint) } else { x_ln_x(joint) };
            }
        }
        if self.sampled { total / self.count as f64 } else { total }
    }
}

/// `ln x`, or 0 for `x = 0` (its weight in the importance sum is then 0 too).
fn ln_or_zero(x: f64) -> f64 {
    if x > 0.0 { x.ln() } else { 0.0 }
}

/// Index drawn with probability proportional to `weights` (all zero: index 0).
fn draw(weights: &[f64], rng: &mut fastrand::Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = rng.f64() * total;
    for (i, &w) in weights.iter().enumerate() {
        if target < w {
            return i;
        }
        target -= w;
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// BatchBALD (Kirsch, van Amersfoort & Gal 2019, "BatchBALD: Efficient and Diverse Batch
/// Acquisition for Deep Bayesian Active Learning"): greedily adds the sample that maximises the
/// mutual information between the batch's joint labels and the weights,
/// `H(y_1..y_b) - Σ_i E_w[H(y_i | w)]`. Exact while the joint configurations number at most
/// 4096, then estimated from 500 sampled configurations (seeded). Returns the selection order;
/// each score is the batch's joint mutual information gain when the item was added, in nats.
/// Cost per pick: O(N · configurations · C · K).
pub struct BatchBald;

impl Heuristic for BatchBald {
    const NAME: &'static CStr = c"batch_bald";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"BatchBALD: greedy joint mutual information of the batch (Kirsch et al. 2019), seedable";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

impl BatchHeuristic for BatchBald {
    fn select(
        input: Probabilities<'_>,
        seed: u64,
        indices: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), HeuristicError> {
        let (n, c, k) = (input.n(), input.c(), input.k());
        let conditional: Vec<f64> = (0..n).into_par_iter().map(|i| expected_entropy(input.sample(i), k)).collect();
        let mut chosen = vec![false; n];
        let mut batch = Configurations::empty(k);
        let mut batch_conditional = 0.0;
        let mut previous_information = 0.0;
        let mut rng = fastrand::Rng::with_seed(seed);
        for (index_out, score_out) in indices.iter_mut().zip(scores.iter_mut()) {
            let candidates: Vec<(usize, f64)> = (0..n)
                .into_par_iter()
                .filter(|&i| !chosen[i])
                .map(|i| {
                    let joint = batch.joint_entropy_with(input.sample(i), c, k);
                    (i, joint - batch_conditional - conditional[i])
                })
                .collect();
            // Highest information first; ties to the lower index.
            let (best, information) = candidates
                .into_iter()
                .reduce(|a, b| if b.1 > a.1 { b } else { a })
                .ok_or_else(|| HeuristicError::Internal("no candidate left".into()))?;
            chosen[best] = true;
            *index_out = best as u32;
            *score_out = (information - previous_information) as f32;
            previous_information = information;
            batch_conditional += conditional[best];
            batch.extend(input.sample(best), c, k, &mut rng);
        }
        Ok(())
    }
}
