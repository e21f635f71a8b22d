//! k-means: k-means++ seeding (Arthur & Vassilvitskii 2007, "k-means++: The Advantages of Careful
//! Seeding") and a bounded number of Lloyd iterations (Lloyd 1982, "Least Squares Quantization in
//! PCM"), on row-major `f32` points `[n, d]`. Deterministic for a seed on a given CPU.

use rayon::prelude::*;

use super::{
    distance::{nearest_rows, squared_distance},
    lazy::LazyNearest,
    sampling::{SumTree, sample_unselected},
};

/// Clusters `points` `[n, d]` into `k` (1 ≤ k ≤ n) clusters: k-means++ seeds, then at most
/// `max_iterations` Lloyd iterations (fewer once no assignment changes). Returns each point's
/// cluster `[n]`; a cluster may end up empty (Lloyd keeps an empty cluster's centroid).
pub(crate) fn kmeans(points: &[f32], d: usize, k: usize, max_iterations: usize, rng: &mut fastrand::Rng) -> Vec<u32> {
    let mut centroids = kmeans_plus_plus(points, d, k, rng);
    lloyd(points, d, &mut centroids, max_iterations)
}

/// k-means++ seeds `[k, d]`: the first a uniformly drawn point, each next one drawn with
/// probability proportional to its squared distance to the nearest seed so far (one draw per
/// seed, as in the paper). Once every point not yet a seed sits on a seed (duplicates), the rest
/// are drawn uniformly among them. Distances are in `f64` ([`squared_distance`]), so huge but
/// finite points keep a finite D² total and every draw ends. Cost: one pass over the points for
/// the first seed, then lazy rejection sampling (see [`LazyNearest`]), at most `k` comparisons
/// per point; the loop adds one seed per turn.
pub(crate) fn kmeans_plus_plus(points: &[f32], d: usize, k: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    let n = points.len() / d;
    assert!((1..=n).contains(&k), "k = {k} seeds for {n} points");
    let row = |i: usize| &points[i * d..(i + 1) * d];
    let first = rng.usize(..n);
    let mut seeds = vec![first];
    let mut chosen = vec![false; n];
    chosen[first] = true;
    let mut nearest = LazyNearest::first_center(n, |i| squared_distance(row(i), row(first)));
    let mut weights = SumTree::new(nearest.bounds());
    weights.set(first, 0.0);
    while seeds.len() < k {
        let drawn = nearest.sample_d2(&mut weights, rng, |i, j| squared_distance(row(i), row(seeds[j])));
        let pick = match drawn {
            Some((pick, _)) => pick,
            None => sample_unselected(&chosen, rng).expect("fewer seeds than points"),
        };
        chosen[pick] = true;
        weights.set(pick, 0.0);
        seeds.push(pick);
        nearest.add_center();
    }
    seeds.iter().flat_map(|&i| row(i).iter().copied()).collect()
}

/// Lloyd iterations from `centroids` `[k, d]` (updated in place): assign each point to its
/// nearest centroid (blocked sgemm, `n · k · d` multiply-adds, which dominates), move each
/// centroid to its points' mean (summed in `f64`, in point order), until no assignment changes
/// or `max_iterations` updates. Returns the assignment `[n]` to the final centroids.
pub(crate) fn lloyd(points: &[f32], d: usize, centroids: &mut [f32], max_iterations: usize) -> Vec<u32> {
    let mut assignment = nearest_rows(points, centroids, d);
    for _ in 0..max_iterations {
        update_centroids(points, d, &assignment, centroids);
        let next = nearest_rows(points, centroids, d);
        if next == assignment {
            break;
        }
        assignment = next;
    }
    assignment
}

/// Moves each centroid to the mean of its points; an empty cluster keeps its centroid. Clusters
/// are summed in parallel over dimension blocks, each in point order, so the result does not
/// depend on the thread count.
fn update_centroids(points: &[f32], d: usize, assignment: &[u32], centroids: &mut [f32]) {
    let k = centroids.len() / d;
    let mut counts = vec![0usize; k];
    for &cluster in assignment {
        counts[cluster as usize] += 1;
    }
    // Columns per task: each task sums all points over its columns, k × DIMENSIONS_PER_TASK sums.
    const DIMENSIONS_PER_TASK: usize = 16;
    let sums: Vec<Vec<f64>> = (0..d.div_ceil(DIMENSIONS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let columns = task * DIMENSIONS_PER_TASK..((task + 1) * DIMENSIONS_PER_TASK).min(d);
            let width = columns.len();
            let mut sums = vec![0.0f64; k * width];
            for (point, &cluster) in points.chunks_exact(d).zip(assignment) {
                let sum = &mut sums[cluster as usize * width..][..width];
                for (s, &x) in sum.iter_mut().zip(&point[columns.clone()]) {
                    *s += f64::from(x);
                }
            }
            sums
        })
        .collect();
    for (task, sums) in sums.iter().enumerate() {
        let first = task * DIMENSIONS_PER_TASK;
        let width = sums.len() / k;
        for (cluster, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            for (offset, &sum) in sums[cluster * width..][..width].iter().enumerate() {
                centroids[cluster * d + first + offset] = (sum / count as f64) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_blobs_are_recovered_and_the_result_is_seeded() {
        let d = 2;
        let mut rng = fastrand::Rng::with_seed(2);
        let points: Vec<f32> =
            (0..90).flat_map(|i| [(i % 3) as f32 * 50.0 + rng.f32(), (i % 3) as f32 * -20.0 + rng.f32()]).collect();
        let first = kmeans(&points, d, 3, 10, &mut fastrand::Rng::with_seed(5));
        for i in 0..90 {
            for j in 0..90 {
                assert_eq!(first[i] == first[j], i % 3 == j % 3, "points {i} and {j}");
            }
        }
        assert_eq!(first, kmeans(&points, d, 3, 10, &mut fastrand::Rng::with_seed(5)));
    }

    #[test]
    fn duplicates_get_as_many_seeds_as_points() {
        let points = [1.0f32, 1.0, 1.0, 2.0];
        let seeds = kmeans_plus_plus(&points, 1, 4, &mut fastrand::Rng::with_seed(0));
        let mut sorted = seeds.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, [1.0, 1.0, 1.0, 2.0]);
    }
}
