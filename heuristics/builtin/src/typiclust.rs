//! TypiClust (Hacohen, Dekel & Weinshall 2022, "Active Learning on a Budget: Opposite Strategies
//! Suit High and Low Budgets"): the most typical sample of each of the least covered clusters.

use std::{cmp::Reverse, collections::BTreeSet, ffi::CStr};

use alps_heuristic_abi::{BatchHeuristic, Direction, Embeddings, Heuristic, HeuristicError, Inputs, Probabilities};
use rayon::prelude::*;

use crate::{
    geometry::{
        distance::{dot_f64, products_transposed},
        kmeans::kmeans,
        projection::{project, sign_matrix},
    },
    stages::Stages,
};

/// Embeddings of at most this many dimensions are clustered exactly; wider ones are first
/// projected to [`PROJECTED_DIMENSION`] dimensions.
pub const MAX_EXACT_DIMENSION: usize = 256;
/// Dimensions of the seeded random projection used above [`MAX_EXACT_DIMENSION`]: squared
/// distances are kept within about `sqrt(2 / 128)` = 12.5 % (one standard deviation), and the
/// k-means cost of every clustering within a small factor (Makarychev, Makarychev & Razenshteyn
/// 2019, "Performance of Johnson–Lindenstrauss Transform for k-Means and k-Medians Clustering":
/// `O(log(k / ε) / ε²)` dimensions suffice, independent of N and D).
pub const PROJECTED_DIMENSION: usize = 128;
/// Lloyd iterations after k-means++ seeding, at most (fewer once no assignment changes).
pub const MAX_LLOYD_ITERATIONS: usize = 10;
/// Neighbours in the typicality estimate (the paper's k = 20).
pub const NEIGHBOURS: usize = 20;
/// Clusters with fewer members (pool and labelled) are outliers by the paper's reasoning and are
/// picked from only once every larger cluster has no pool sample left.
pub const MIN_CLUSTER_SIZE: usize = 5;
/// Typicality is measured against at most this many members of a cluster: a seeded sample of a
/// larger cluster (every pool member is still ranked, against the sample).
pub const MAX_TYPICALITY_REFERENCE: usize = 2048;
/// At most this many k-means clusters, the cap of TypiClust's reference implementation
/// (`MAX_NUM_CLUSTERS = 500` in `deep-al/pycls/al/typiclust.py` of github.com/avihu111/TypiClust,
/// which also clusters into `min(L + B, 500)`): it bounds k-means at `(N + L) · 500 · D'`
/// multiply-adds per Lloyd iteration, whatever L and B.
pub const MAX_CLUSTERS: usize = 500;
/// Pool members ranked per rayon task (one sgemm against the reference members each).
const CANDIDATES_PER_TASK: usize = 64;
/// Embeddings with a larger absolute value are scaled down by a power of two until none is
/// larger (2^32): then no `f32` sum of squares in the projection, k-means or typicality can
/// overflow (a squared distance stays below 2^74 unprojected, D ≤ 256, and below 2^107 projected
/// for D up to 2^20, against `f32::MAX` ≈ 2^128), and scaling by a power of two changes neither
/// the clusters nor the ranking, only the unit of the scores (converted back).
const MAX_UNSCALED_MAGNITUDE: f32 = 4_294_967_296.0;

/// TypiClust (Hacohen et al. 2022, §3): clusters the pool and the labelled set together into
/// `min(L + B, N + L, 500)` clusters (B the query size, 500 = [`MAX_CLUSTERS`]) by k-means
/// (seeded k-means++, then at most [`MAX_LLOYD_ITERATIONS`] Lloyd iterations), then repeatedly
/// takes the cluster with the fewest labelled-or-picked members (ties: the larger cluster, then
/// the lower cluster index) and picks its most typical pool sample not yet picked. When B
/// exceeds the clusters (B > 500, or clusters of several pool samples), picking goes on the same
/// way, so a cluster gives a second pick once every cluster has as many labelled-or-picked
/// members: all B picks are always returned. Typicality is the inverse mean Euclidean distance
/// to the `min(20, size − 1)` nearest other members of the cluster,
/// `1 / ((1 / k) Σ_{y ∈ kNN(x)} ||x − y||)`, in inverse embedding units; the score of a pick is
/// its typicality. Choices where the paper leaves room:
/// * clusters with fewer than [`MIN_CLUSTER_SIZE`] members are skipped while a larger cluster has
///   pool samples left (TypiClust avoids outliers); a singleton's typicality is 0 (no neighbour);
/// * a sample whose `k` neighbours are all duplicates of it (mean distance 0) gets `f32::MAX`,
///   and every score is clamped to `f32::MAX`;
/// * ties in typicality go to the lower index; a cluster with no pool sample left is skipped.
///
/// Approximations, only for large inputs: embeddings wider than [`MAX_EXACT_DIMENSION`] are
/// clustered and ranked in a seeded random projection to [`PROJECTED_DIMENSION`] dimensions; a
/// cluster larger than [`MAX_TYPICALITY_REFERENCE`] is ranked against a seeded sample of that
/// many members. Embeddings above 2^32 in absolute value are first scaled down by a power of two
/// (exact; it changes no pick, and scores are converted back to the embeddings' units), so huge
/// values cannot overflow the `f32` products.
///
/// The result is deterministic for a seed, on every thread count, on a given CPU: k-means,
/// the projection and typicality use sgemm, whose FMA paths differ between CPUs, which can
/// change near ties.
///
/// Input: embeddings `[N, D]` and the labelled set `[L, D]` ([`Inputs::LABELLED`]).
/// Cost (`D'` = D up to 256 dimensions, 128 above): above 256 dimensions the projection,
/// `(N + L) · D · 128` multiply-adds (sgemm), which dominates at D = 4,096 with small batches;
/// otherwise k-means dominates: `(N + L) · min(L + B, 500) · D'` per Lloyd iteration (sgemm), at
/// most [`MAX_LLOYD_ITERATIONS`] + 1 times, after k-means++ seeding (one pass, then lazy D²
/// sampling); typicality costs `size · min(size, 2048) · D'` (sgemm) for each cluster picked
/// from.
pub struct Typiclust;

impl Heuristic for Typiclust {
    const NAME: &'static CStr = c"typiclust";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"TypiClust: most typical sample of the least covered k-means clusters, score = typicality (Hacohen et al. 2022), seedable";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
    const INPUTS: Inputs = Inputs::LABELLED;
}

impl BatchHeuristic for Typiclust {
    fn select(
        input: Probabilities<'_>,
        seed: u64,
        indices: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), HeuristicError> {
        select_with_stages(input, seed, indices, scores).map(|_| ())
    }
}

/// [`Typiclust`]'s selection, also returning the time of its stages ("clustering space", "k-means",
/// "typicality and selection").
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
    let pool = input.require_embeddings()?;
    let labelled = input.require_labelled()?.embeddings();
    let (n, l) = (pool.rows(), labelled.rows());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut stages = Stages::start();
    let space = ClusteringSpace::new(pool, labelled, &mut rng);
    stages.lap("clustering space");
    let k = cluster_count(l, indices.len(), n);
    let assignment = kmeans(&space.rows, space.d, k, MAX_LLOYD_ITERATIONS, &mut rng);
    stages.lap("k-means");
    let mut clusters = Clusters::new(&assignment, n, k);
    for (index, score) in indices.iter_mut().zip(scores.iter_mut()) {
        let (pick, typicality) = clusters
            .pick(&space, &mut rng)
            .ok_or_else(|| HeuristicError::Internal("no cluster has a sample left".into()))?;
        *index = pick;
        *score = typicality;
    }
    stages.lap("typicality and selection");
    Ok(stages)
}

/// Clusters for `l` labelled examples, query size `b` and `n` pool samples:
/// `min(l + b, n + l, MAX_CLUSTERS)`, at least 1 since `b >= 1`.
fn cluster_count(l: usize, b: usize, n: usize) -> usize {
    (l + b).min(n + l).min(MAX_CLUSTERS)
}

/// The power of two (at most 1) that brings every value of `rows` to at most
/// [`MAX_UNSCALED_MAGNITUDE`] in absolute value; 1 when they already are. A maximum is the same
/// in any order, so the parallel fold is deterministic.
fn magnitude_scale(rows: &[f32]) -> f32 {
    let largest = rows.par_iter().map(|x| x.abs()).reduce(|| 0.0, f32::max);
    if largest <= MAX_UNSCALED_MAGNITUDE {
        return 1.0;
    }
    // largest < 2^(e − 126) for its biased exponent e (largest is finite, so e <= 254): scale
    // 2^(158 − e) brings it below 2^32. As a biased exponent 285 − e is in 31..=126, a normal.
    let exponent = (largest.to_bits() >> 23) & 0xff;
    f32::from_bits((285 - exponent) << 23)
}

/// The points clustered: pool rows `0..N`, then labelled rows `N..N + L`, `[N + L, d]`, either
/// the embeddings themselves or their random projection, times `scale`.
struct ClusteringSpace {
    rows: Vec<f32>,
    d: usize,
    /// The power of two the embeddings were multiplied by ([`magnitude_scale`]): distances here
    /// are `scale` times the embeddings' distances.
    scale: f32,
}

impl ClusteringSpace {
    fn new(pool: Embeddings<'_>, labelled: Embeddings<'_>, rng: &mut fastrand::Rng) -> Self {
        let d = pool.d();
        let scale = magnitude_scale(pool.data()).min(magnitude_scale(labelled.data()));
        if d <= MAX_EXACT_DIMENSION {
            let mut rows = [pool.data(), labelled.data()].concat();
            if scale != 1.0 {
                rows.par_iter_mut().for_each(|x| *x *= scale);
            }
            return Self { rows, d, scale };
        }
        let mut matrix = sign_matrix(d, PROJECTED_DIMENSION, rng);
        // Scaling the matrix scales the products without copying the pool.
        matrix.iter_mut().for_each(|x| *x *= scale);
        let mut rows = project(pool.data(), d, &matrix, PROJECTED_DIMENSION);
        rows.extend(project(labelled.data(), d, &matrix, PROJECTED_DIMENSION));
        Self { rows, d: PROJECTED_DIMENSION, scale }
    }

    fn row(&self, i: u32) -> &[f32] {
        &self.rows[i as usize * self.d..][..self.d]
    }

    /// Mean of `rows` (summed in `f64`, in order).
    fn mean(&self, rows: &[u32]) -> Vec<f32> {
        let mut sum = vec![0.0f64; self.d];
        for &row in rows {
            sum.iter_mut().zip(self.row(row)).for_each(|(s, &x)| *s += f64::from(x));
        }
        sum.iter().map(|s| (s / rows.len().max(1) as f64) as f32).collect()
    }
}

/// One k-means cluster during selection.
struct Cluster {
    /// Rows of the clustering space in the cluster (pool and labelled), in index order.
    members: Vec<u32>,
    /// Pool samples among `members`.
    pool_members: usize,
    /// Labelled members plus samples picked from the cluster so far.
    covered: usize,
    /// Pool members by decreasing typicality (ties: lower index), computed on the first pick.
    ranking: Option<Vec<(u32, f32)>>,
    /// Leading entries of `ranking` already picked.
    taken: usize,
}

/// Order of clusters to pick from: fewest covered, then largest, then lowest index.
type Key = (usize, Reverse<usize>, usize);

/// Every cluster and the queues of those with pool samples left.
struct Clusters {
    clusters: Vec<Cluster>,
    /// Clusters with at least [`MIN_CLUSTER_SIZE`] members.
    regular: BTreeSet<Key>,
    /// Smaller clusters, used once `regular` is empty.
    small: BTreeSet<Key>,
}

impl Clusters {
    fn new(assignment: &[u32], n: usize, k: usize) -> Self {
        let mut clusters: Vec<Cluster> = (0..k)
            .map(|_| Cluster { members: Vec::new(), pool_members: 0, covered: 0, ranking: None, taken: 0 })
            .collect();
        for (row, &cluster) in assignment.iter().enumerate() {
            let cluster = &mut clusters[cluster as usize];
            cluster.members.push(row as u32);
            if row < n {
                cluster.pool_members += 1;
            } else {
                cluster.covered += 1;
            }
        }
        let mut queues = Self { clusters, regular: BTreeSet::new(), small: BTreeSet::new() };
        for index in 0..k {
            queues.enqueue(index);
        }
        queues
    }

    fn key(&self, index: usize) -> Key {
        let cluster = &self.clusters[index];
        (cluster.covered, Reverse(cluster.members.len()), index)
    }

    /// Queues cluster `index` if it has pool samples left.
    fn enqueue(&mut self, index: usize) {
        let cluster = &self.clusters[index];
        if cluster.taken < cluster.pool_members {
            let key = self.key(index);
            if cluster.members.len() >= MIN_CLUSTER_SIZE {
                self.regular.insert(key)
            } else {
                self.small.insert(key)
            };
        }
    }

    /// Picks the most typical remaining sample of the least covered cluster: its pool index and
    /// typicality. `None` when no pool sample is left.
    fn pick(&mut self, space: &ClusteringSpace, rng: &mut fastrand::Rng) -> Option<(u32, f32)> {
        let (_, _, index) = self.regular.pop_first().or_else(|| self.small.pop_first())?;
        let cluster = &mut self.clusters[index];
        let ranking = cluster
            .ranking
            .get_or_insert_with(|| rank_by_typicality(space, &cluster.members, cluster.pool_members, rng));
        let picked = ranking[cluster.taken];
        cluster.taken += 1;
        cluster.covered += 1;
        self.enqueue(index);
        Some(picked)
    }
}

/// The cluster's pool members (the first `pool_members` of `members`: rows are added in index
/// order and pool rows come first) by decreasing typicality (ties: lower index), with their
/// typicality. Labelled members count as neighbours but are never ranked. Distances come from
/// blocked sgemm products of rows centered on the cluster's mean (centered, the expansion
/// `||x||² + ||y||² − 2 x·y` works with small norms and keeps its digits).
fn rank_by_typicality(
    space: &ClusteringSpace,
    members: &[u32],
    pool_members: usize,
    rng: &mut fastrand::Rng,
) -> Vec<(u32, f32)> {
    let d = space.d;
    let reference = reference_members(members, rng);
    let mean = space.mean(members);
    let centered = |rows: &[u32]| -> Vec<f32> {
        rows.iter().flat_map(|&row| space.row(row).iter().zip(&mean).map(|(x, m)| x - m)).collect()
    };
    let (reference_rows, candidates) = (centered(&reference), &members[..pool_members]);
    let reference_norms: Vec<f32> = reference_rows.chunks_exact(d).map(|y| dot_f64(y, y) as f32).collect();
    let typicality: Vec<f32> = centered(candidates)
        .par_chunks(CANDIDATES_PER_TASK * d)
        .enumerate()
        .flat_map_iter(|(block, rows)| {
            let mut products = vec![0.0f32; rows.len() / d * reference.len()];
            products_transposed(rows, &reference_rows, d, &mut products);
            let mut distances = Vec::with_capacity(reference.len());
            let scored: Vec<f32> = rows
                .chunks_exact(d)
                .zip(products.chunks_exact(reference.len().max(1)))
                .enumerate()
                .map(|(offset, (x, products))| {
                    let row = candidates[block * CANDIDATES_PER_TASK + offset];
                    let norm = dot_f64(x, x) as f32;
                    distances.clear();
                    // Leave the sample itself out; a duplicate of it is a neighbour at ~0.
                    distances.extend(
                        reference.iter().zip(products).zip(&reference_norms).filter(|((y, _), _)| **y != row).map(
                            |((_, &product), &reference_norm)| (norm + reference_norm - 2.0 * product).max(0.0).sqrt(),
                        ),
                    );
                    inverse_mean_of_nearest(&mut distances, space.scale)
                })
                .collect();
            scored
        })
        .collect();
    let mut ranking: Vec<(u32, f32)> = candidates.iter().copied().zip(typicality).collect();
    ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranking
}

/// The members typicality is measured against: all of them, or a seeded uniform sample of
/// [`MAX_TYPICALITY_REFERENCE`] (partial Fisher–Yates) for a larger cluster, in index order.
fn reference_members(members: &[u32], rng: &mut fastrand::Rng) -> Vec<u32> {
    let mut sample = members.to_vec();
    if sample.len() > MAX_TYPICALITY_REFERENCE {
        for i in 0..MAX_TYPICALITY_REFERENCE {
            let j = rng.usize(i..sample.len());
            sample.swap(i, j);
        }
        sample.truncate(MAX_TYPICALITY_REFERENCE);
        sample.sort_unstable();
    }
    sample
}

/// Typicality from a sample's distances to the other reference members (in the clustering
/// space, `scale` times embedding units): the inverse of the mean of the `min(NEIGHBOURS, len)`
/// smallest (reordering `distances`), in inverse embedding units (times `scale`), at most
/// `f32::MAX`. No neighbour: 0; all at distance 0: `f32::MAX`.
fn inverse_mean_of_nearest(distances: &mut [f32], scale: f32) -> f32 {
    let k = NEIGHBOURS.min(distances.len());
    if k == 0 {
        return 0.0;
    }
    if k < distances.len() {
        distances.select_nth_unstable_by(k - 1, f32::total_cmp);
    }
    let nearest = &mut distances[..k];
    // Sorted, so the sum has one order whatever the selection left.
    nearest.sort_unstable_by(f32::total_cmp);
    let mean = nearest.iter().map(|&v| f64::from(v)).sum::<f64>() / k as f64;
    if mean > 0.0 { (f64::from(scale) / mean).min(f64::from(f32::MAX)) as f32 } else { f32::MAX }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_capped_at_500() {
        assert_eq!(cluster_count(0, 600, 1_000), 500);
        assert_eq!(cluster_count(10_000, 10, 50_000), 500);
        assert_eq!(cluster_count(2, 3, 100), 5);
        assert_eq!(cluster_count(3, 5, 4), 7, "at most N + L");
        assert_eq!(cluster_count(0, 1, 1), 1);
    }

    #[test]
    fn picks_go_on_past_the_clusters_by_fewest_covered_then_larger() {
        // Two regular clusters of 6 and 5 pool samples, and a small one of 1 pool sample and 1
        // labelled example: 12 picks from 3 clusters alternate between the regular ones (equal
        // coverage: the larger first), then the small cluster comes last.
        let rows = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 5.0, 5.1, 5.2, 5.3, 5.4, 9.0, 9.5];
        let space = ClusteringSpace { rows: rows.to_vec(), d: 1, scale: 1.0 };
        let mut clusters = Clusters::new(&[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2], 12, 3);
        let mut rng = fastrand::Rng::with_seed(0);
        let picks: Vec<u32> = (0..12).map(|_| clusters.pick(&space, &mut rng).unwrap().0).collect();
        let cluster_of = |pick: u32| [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2][pick as usize];
        let order: Vec<usize> = picks.iter().map(|&pick| cluster_of(pick)).collect();
        assert_eq!(order, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 2], "{picks:?}");
        let mut sorted = picks.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<u32>>());
        assert!(clusters.pick(&space, &mut rng).is_none());
    }

    #[test]
    fn huge_values_are_scaled_by_a_power_of_two_below_the_limit() {
        assert_eq!(magnitude_scale(&[1.0, -4e9]), 1.0);
        for largest in [4.3e9f32, 1e20, -3e38, f32::MAX] {
            let scale = magnitude_scale(&[1.0, largest]);
            assert_eq!(scale.to_bits() & 0x7f_ffff, 0, "{scale} is a power of two");
            let scaled = (largest * scale).abs();
            assert!(scaled <= MAX_UNSCALED_MAGNITUDE && scaled > MAX_UNSCALED_MAGNITUDE / 2.0, "{largest}: {scaled}");
        }
    }

    #[test]
    fn typicality_is_converted_back_to_embedding_units() {
        assert_eq!(inverse_mean_of_nearest(&mut [2.0, 4.0], 1.0), 1.0 / 3.0);
        assert_eq!(inverse_mean_of_nearest(&mut [2.0, 4.0], 0.5), 1.0 / 6.0);
        assert_eq!(inverse_mean_of_nearest(&mut [0.0, 0.0], 0.5), f32::MAX);
        assert_eq!(inverse_mean_of_nearest(&mut [], 1.0), 0.0);
    }
}
