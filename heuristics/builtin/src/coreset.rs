//! Core-Set (Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks: A
//! Core-Set Approach"): greedy k-center over the backbone embeddings.

use std::ffi::CStr;

use alps_heuristic_abi::{BatchHeuristic, Direction, Embeddings, Heuristic, HeuristicError, Inputs, Probabilities};
use rayon::prelude::*;

use crate::{
    geometry::{
        distance::{nearest_distances, squared_distance},
        lazy::{Candidates, LazyNearest},
        sampling::argmax_unselected,
    },
    stages::Stages,
};

/// Rows per rayon task when summing the pool's mean.
const ROWS_PER_TASK: usize = 1024;

/// Core-Set by greedy k-center (Sener & Savarese 2018, Algorithm 1): the centers are the labelled
/// examples and the picks so far; each pick is the pool sample farthest (Euclidean, in embedding
/// units) from its nearest center, and its score is that distance. The seed is ignored: the
/// first pick of a cold start (no labelled example) is the sample farthest from the pool's mean,
/// scored by that distance. Ties go to the lower index; every distance is exact (`f64` from the
/// `f32` embeddings), so a duplicate of a center is at exactly 0 and is picked only once every
/// other sample is covered too. Scores are clamped to `f32::MAX` (distances between huge
/// embeddings can exceed it). The result is the same on every run and thread count; it is
/// computed from exact distances, so it does not depend on the CPU either.
///
/// Input: embeddings `[N, D]` and the labelled set `[L, D]` ([`Inputs::LABELLED`]).
/// Cost: `N · L · D` multiply-adds for the distances to the labelled set (blocked sgemm to
/// screen, then an exact `D`-long check of each labelled example within the sgemm's rounding
/// bound of the nearest: about one per sample, up to L when labelled examples are closer to each
/// other than that bound; with L = 0 one pass to the first pick instead), which dominates; then
/// the greedy picks compare lazily: only the samples whose bound reaches the top of the queue
/// are compared with the centers added since they were last compared (`D` each), at most
/// `N · B · D` in all but usually a small part of it.
pub struct Coreset;

impl Heuristic for Coreset {
    const NAME: &'static CStr = c"coreset";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"Core-Set: greedy k-center over embeddings, score = distance to the nearest labelled or picked sample (Sener & Savarese 2018)";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
    const INPUTS: Inputs = Inputs::LABELLED;
}

impl BatchHeuristic for Coreset {
    fn select(
        input: Probabilities<'_>,
        _seed: u64,
        indices: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), HeuristicError> {
        select_with_stages(input, indices, scores).map(|_| ())
    }
}

/// [`Coreset`]'s selection, also returning the time of its stages ("initial distances",
/// "greedy k-center").
///
/// # Errors
/// [`HeuristicError::InvalidInput`] when the host supplied no embeddings.
// Bench-only: `benches/diversity.rs` reports the stage times; not part of the plugin's API.
#[doc(hidden)]
pub fn select_with_stages(
    input: Probabilities<'_>,
    indices: &mut [u32],
    scores: &mut [f32],
) -> Result<Stages, HeuristicError> {
    let pool = input.require_embeddings()?;
    let labelled = input.require_labelled()?.embeddings();
    let query_size = indices.len();
    let mut stages = Stages::start();
    // Centers: the labelled examples, then the picks.
    let mut centers: Vec<&[f32]> = (0..labelled.rows()).map(|j| labelled.row(j)).collect();
    let mut picks: Vec<(usize, f64)> = Vec::with_capacity(query_size);
    let mut nearest = if labelled.rows() == 0 {
        let (first, distance_sq) = farthest_from_mean(pool);
        picks.push((first, distance_sq));
        centers.push(pool.row(first));
        LazyNearest::first_center(pool.rows(), |i| squared_distance(pool.row(i), pool.row(first)))
    } else {
        LazyNearest::known(labelled_distances(pool, labelled), labelled.rows())
    };
    let first: Vec<usize> = picks.iter().map(|(pick, _)| *pick).collect();
    let mut candidates = Candidates::new(nearest.bounds(), &first);
    stages.lap("initial distances");
    while picks.len() < query_size {
        let pick = nearest
            .farthest(&mut candidates, |i, j| squared_distance(pool.row(i), centers[j]))
            .ok_or_else(|| HeuristicError::Internal("no sample left to pick".into()))?;
        picks.push(pick);
        centers.push(pool.row(pick.0));
        nearest.add_center();
    }
    for ((index, score), (pick, distance_sq)) in indices.iter_mut().zip(scores.iter_mut()).zip(picks) {
        *index = pick as u32;
        *score = (distance_sq.sqrt() as f32).min(f32::MAX);
    }
    stages.lap("greedy k-center");
    Ok(stages)
}

/// Every pool sample's exact squared distance to its nearest labelled example, `[N]` in squared
/// embedding units (see [`nearest_distances`]: sgemm screens the labelled set, every center
/// within the expansion's rounding bound of the best is compared exactly, so a copy of a
/// labelled example is at exactly 0 and near ties are resolved in `f64`).
fn labelled_distances(pool: Embeddings<'_>, labelled: Embeddings<'_>) -> Vec<f64> {
    nearest_distances(pool.data(), labelled.data(), pool.d())
}

/// The sample farthest from the pool's mean (ties: the lower index) and its squared distance:
/// the cold-start first center, chosen without randomness so the score stays a distance.
fn farthest_from_mean(pool: Embeddings<'_>) -> (usize, f64) {
    let d = pool.d();
    // Partial sums over fixed row blocks, added in block order: the same for any thread count.
    let partial: Vec<Vec<f64>> = pool
        .data()
        .par_chunks(ROWS_PER_TASK * d)
        .map(|block| {
            let mut sum = vec![0.0f64; d];
            for row in block.chunks_exact(d) {
                sum.iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x));
            }
            sum
        })
        .collect();
    let mut mean = vec![0.0f64; d];
    for sum in &partial {
        mean.iter_mut().zip(sum).for_each(|(m, s)| *m += s);
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / pool.rows() as f64) as f32).collect();
    let distances: Vec<f64> = (0..pool.rows()).into_par_iter().map(|i| squared_distance(pool.row(i), &mean)).collect();
    let first = argmax_unselected(&distances, &vec![false; pool.rows()]).expect("a non-empty pool");
    (first, distances[first])
}
