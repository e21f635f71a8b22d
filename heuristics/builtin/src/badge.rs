//! BADGE (Ash, Zhang, Krishnamurthy, Langford & Agarwal 2020, "Deep Batch Active Learning by
//! Diverse, Uncertain Gradient Lower Bounds"): k-means++ seeding over gradient embeddings.

use std::ffi::CStr;

use alps_heuristic_abi::{BatchHeuristic, Direction, Embeddings, Heuristic, HeuristicError, Inputs, Probabilities};
use rayon::prelude::*;

use crate::{
    geometry::{
        distance::dot_f64,
        lazy::LazyNearest,
        sampling::{SumTree, argmax_unselected, sample_unselected},
    },
    stages::Stages,
};

/// BADGE (Ash et al. 2020, Algorithm 1). The gradient embedding of sample `x` is the gradient of
/// the cross-entropy at its predicted label with respect to the last layer's weights,
/// `g_x = (p_x − onehot(ŷ_x)) ⊗ h_x` (`[C · D]`): `p_x` the mean over the K MC iterations of the
/// class probabilities, `ŷ_x = argmax p_x` (ties: the lower class), `h_x` the backbone embedding.
/// Its norm grows with uncertainty (`p_x − onehot(ŷ_x)` vanishes for a confident prediction) and
/// its direction encodes the embedding and the predicted class. The batch is k-means++ seeding
/// over the `g_x`: the first pick is the largest `||g_x||²` (as the authors' code does, ties: the
/// lower index), each next one is drawn with probability proportional to its squared distance
/// `D²(x)` to the nearest pick so far (seeded). Score: `||g_x||²` for the first pick, `D²(x)` at
/// pick time for the others (squared gradient norm units: probability² × embedding²). If every
/// unpicked sample has `D² = 0` (duplicates, or only exactly confident samples left) the next
/// pick is drawn uniformly among them, scored 0. Scores are clamped to `f32::MAX` (squared
/// distances between huge embeddings exceed it; in `f64` they stay finite, so sampling ends).
/// The result is deterministic for a seed, on every thread count; every distance is computed in
/// `f64` in a fixed order (no sgemm), so it is also the same on every CPU.
///
/// `g` is never materialised (`[N, C · D]` would be 16 GB at N = 100,000, C = 10, D = 4,096):
/// with `a = p − onehot(ŷ)`, `||g_x − g_y||² = ||a_x||² ||h_x||² + ||a_y||² ||h_y||² −
/// 2 (a_x · a_y)(h_x · h_y)`, all in `f64` (exact `f32` products, so near duplicates keep their
/// digits).
///
/// Input: probabilities `[N, C, K]` and embeddings `[N, D]` ([`Inputs::EMBEDDINGS`]).
/// Cost: `N · (C · K + D)` for the factors and one `N · D` pass for the distances to the first
/// pick (memory-bound), which dominate; then D² sampling compares lazily by rejection (see the
/// geometry module): a proposed sample is compared only with the picks added since it was last
/// compared (`D` each), at most `N · B · D` in all but usually a small part of it.
pub struct Badge;

impl Heuristic for Badge {
    const NAME: &'static CStr = c"badge";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"BADGE: k-means++ seeding over gradient embeddings, score = squared distance D2 at pick (Ash et al. 2020), seedable";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
    const INPUTS: Inputs = Inputs::EMBEDDINGS;
}

impl BatchHeuristic for Badge {
    fn select(
        input: Probabilities<'_>,
        seed: u64,
        indices: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), HeuristicError> {
        select_with_stages(input, seed, indices, scores).map(|_| ())
    }
}

/// The factors of the gradient embeddings: `a_x = p_x − onehot(ŷ_x)` `[N, C]`, the squared
/// gradient norms `||g_x||² = ||a_x||² ||h_x||²` `[N]` and the embeddings `h` `[N, D]`.
struct GradientFactors<'a> {
    residuals: Vec<f64>,
    gradient_sq: Vec<f64>,
    embeddings: Embeddings<'a>,
    c: usize,
}

impl<'a> GradientFactors<'a> {
    fn new(input: Probabilities<'_>, embeddings: Embeddings<'a>) -> Self {
        let (n, c, k) = (input.n(), input.c(), input.k());
        let mut residuals = vec![0.0f64; n * c];
        residuals.par_chunks_mut(c).enumerate().for_each(|(i, residual)| {
            for (class, iterations) in input.sample(i).chunks_exact(k).enumerate() {
                residual[class] = iterations.iter().map(|&p| f64::from(p)).sum::<f64>() / k as f64;
            }
            let predicted = (0..c).fold(0, |best, class| if residual[class] > residual[best] { class } else { best });
            residual[predicted] -= 1.0;
        });
        let residual_sq: Vec<f64> = residuals.par_chunks(c).map(|a| a.iter().map(|v| v * v).sum()).collect();
        let gradient_sq: Vec<f64> =
            (0..n).into_par_iter().map(|i| residual_sq[i] * dot_f64(embeddings.row(i), embeddings.row(i))).collect();
        Self { residuals, gradient_sq, embeddings, c }
    }

    /// `||g_x − g_y||²`, clamped at 0 against rounding.
    fn squared_distance(&self, x: usize, y: usize) -> f64 {
        if x == y {
            return 0.0;
        }
        let a_x = &self.residuals[x * self.c..(x + 1) * self.c];
        let a_y = &self.residuals[y * self.c..(y + 1) * self.c];
        let residual_product: f64 = a_x.iter().zip(a_y).map(|(u, v)| u * v).sum();
        // A confident sample (a = 0) has g = 0: skip the embedding product.
        let cross = if residual_product == 0.0 {
            0.0
        } else {
            residual_product * dot_f64(self.embeddings.row(x), self.embeddings.row(y))
        };
        (self.gradient_sq[x] + self.gradient_sq[y] - 2.0 * cross).max(0.0)
    }
}

/// [`Badge`]'s selection, also returning the time of its stages ("gradient factors", "distances
/// to the first pick", "k-means++ seeding").
///
/// # Errors
/// [`HeuristicError::InvalidInput`] when the host supplied no embeddings.
// Bench-only: `benches/diversity.rs` reports the stage times; not part of the plugin's API.
#[doc(hidden)]
pub fn select_with_stages(
    input: Probabilities<'_>,
    seed: u64,
    indices: &mut [u32],
    scores: &mut [f32],
) -> Result<Stages, HeuristicError> {
    let embeddings = input.require_embeddings()?;
    let mut stages = Stages::start();
    let factors = GradientFactors::new(input, embeddings);
    stages.lap("gradient factors");
    let n = input.n();
    let query_size = indices.len();
    let mut rng = fastrand::Rng::with_seed(seed);
    let first = argmax_unselected(&factors.gradient_sq, &vec![false; n]).expect("a non-empty pool");
    let mut picks: Vec<(usize, f64)> = vec![(first, factors.gradient_sq[first])];
    let mut selected = vec![false; n];
    selected[first] = true;
    let mut nearest = LazyNearest::first_center(n, |i| factors.squared_distance(i, first));
    let mut weights = SumTree::new(nearest.bounds());
    weights.set(first, 0.0);
    stages.lap("distances to the first pick");
    while picks.len() < query_size {
        let centers: Vec<usize> = picks.iter().map(|(pick, _)| *pick).collect();
        let drawn = nearest.sample_d2(&mut weights, &mut rng, |i, j| factors.squared_distance(i, centers[j]));
        let (pick, d2) = match drawn {
            Some(drawn) => drawn,
            None => {
                let pick = sample_unselected(&selected, &mut rng)
                    .ok_or_else(|| HeuristicError::Internal("no sample left to pick".into()))?;
                (pick, 0.0)
            }
        };
        selected[pick] = true;
        weights.set(pick, 0.0);
        picks.push((pick, d2));
        nearest.add_center();
    }
    for ((index, score), (pick, weight)) in indices.iter_mut().zip(scores.iter_mut()).zip(picks) {
        *index = pick as u32;
        *score = (weight as f32).min(f32::MAX);
    }
    stages.lap("k-means++ seeding");
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factored_distance_equals_the_materialised_gradient_distance() {
        let (n, c, k, d) = (4, 3, 2, 5);
        let mut rng = fastrand::Rng::with_seed(8);
        // [N, C, K]: each (sample, iteration) column a normalised vector of uniform draws.
        let mut data = vec![0.0f32; n * c * k];
        for i in 0..n {
            for t in 0..k {
                let raw: Vec<f32> = (0..c).map(|_| rng.f32() + 0.05).collect();
                let total: f32 = raw.iter().sum();
                for (class, v) in raw.iter().enumerate() {
                    data[(i * c + class) * k + t] = v / total;
                }
            }
        }
        let h: Vec<f32> = (0..n * d).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let input = Probabilities::new(&data, n, c, k).unwrap().with_embeddings(&h, d).unwrap();
        let factors = GradientFactors::new(input, input.embeddings().unwrap());
        let gradient = |i: usize| -> Vec<f64> {
            let a = &factors.residuals[i * c..(i + 1) * c];
            a.iter().flat_map(|&a| h[i * d..(i + 1) * d].iter().map(move |&x| a * f64::from(x))).collect()
        };
        for x in 0..n {
            for y in 0..n {
                let direct: f64 = gradient(x).iter().zip(gradient(y)).map(|(u, v)| (u - v).powi(2)).sum();
                assert!((factors.squared_distance(x, y) - direct).abs() < 1e-9, "{x} {y}");
            }
        }
    }
}
