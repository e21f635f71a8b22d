//! The squared distance of every point to its nearest center while centers are added one at a
//! time (greedy k-center, k-means++ and BADGE seeding all need it), kept lazily: each point holds
//! the exact minimum over the centers it has been compared with so far, an upper bound on its
//! distance to the nearest center, and is compared with the newer centers only when a pick needs
//! it. A pick needs few points (the farthest one's bound, or a rejection-sampling proposal), so
//! most points are never compared with most centers: a full pass over the pool per pick (`N · D`,
//! memory-bound) becomes a handful of `D`-long comparisons, while every (point, center) pair is
//! still compared at most once, so the worst case is the full passes' work.
//!
//! Both pick rules stay exact (the same distribution or argmax as updating every point):
//! * farthest point ([`LazyNearest::farthest`]): the point with the largest bound is brought up
//!   to date; if its bound did not drop it is the farthest point (every other bound is at most
//!   it, and bounds are at least the true distances), else it goes back and the next is tried;
//! * D² sampling ([`LazyNearest::sample_d2`]): rejection sampling, proposing a point with
//!   probability proportional to its bound and accepting it with probability (true D²) / bound.

use std::{cmp::Ordering, collections::BinaryHeap};

use rayon::prelude::*;

use super::sampling::SumTree;

/// Nearest-center bounds of `n` points.
#[derive(Clone, Debug)]
pub(crate) struct LazyNearest {
    /// `[n]` squared distance to the nearest of the first `seen[i]` centers.
    bound: Vec<f64>,
    /// `[n]` centers point `i` has been compared with (the first `seen[i]`).
    seen: Vec<u32>,
    /// Centers so far.
    centers: usize,
}

impl LazyNearest {
    /// Points whose squared distances `min_sq` to their nearest of `centers` centers are known.
    /// A NaN distance counts as `+inf` (unknown is farthest), so every bound is ordered.
    pub(crate) fn known(mut min_sq: Vec<f64>, centers: usize) -> Self {
        min_sq.iter_mut().filter(|bound| bound.is_nan()).for_each(|bound| *bound = f64::INFINITY);
        Self { seen: vec![centers as u32; min_sq.len()], bound: min_sq, centers }
    }

    /// `n` points and their first center, compared with every point in one parallel pass
    /// (`point_sq(i)` is point `i`'s squared distance to it).
    pub(crate) fn first_center(n: usize, point_sq: impl Fn(usize) -> f64 + Sync) -> Self {
        Self::known((0..n).into_par_iter().map(&point_sq).collect(), 1)
    }

    /// Registers one more center (compared with points only when needed).
    pub(crate) fn add_center(&mut self) {
        self.centers += 1;
    }

    /// `[n]` current bounds.
    pub(crate) fn bounds(&self) -> &[f64] {
        &self.bound
    }

    /// Compares point `i` with the centers it has not seen (`center_sq(i, j)`: its squared
    /// distance to center `j`) and returns its exact squared distance to the nearest center (a
    /// NaN distance is ignored: `f64::min` keeps the other operand).
    pub(crate) fn refresh(&mut self, i: usize, center_sq: impl Fn(usize, usize) -> f64) -> f64 {
        let mut bound = self.bound[i];
        for j in self.seen[i] as usize..self.centers {
            bound = bound.min(center_sq(i, j));
        }
        self.bound[i] = bound;
        self.seen[i] = self.centers as u32;
        bound
    }

    /// The point of `candidates` farthest from its nearest center (ties: the lower index), with
    /// its squared distance; it is removed from `candidates`. `None` when `candidates` is empty.
    /// Ends after at most one refresh per candidate: a point goes back only if its bound
    /// strictly dropped, and a refreshed point's bound no longer drops.
    pub(crate) fn farthest(
        &mut self,
        candidates: &mut Candidates,
        center_sq: impl Fn(usize, usize) -> f64,
    ) -> Option<(usize, f64)> {
        while let Some(Candidate { bound, index }) = candidates.heap.pop() {
            let exact = self.refresh(index, &center_sq);
            // Not strictly lower (also when a NaN makes them unordered): up to date, done.
            if exact.partial_cmp(&bound) != Some(Ordering::Less) {
                return Some((index, exact));
            }
            candidates.heap.push(Candidate { bound: exact, index });
        }
        None
    }

    /// A point drawn with probability proportional to its squared distance to the nearest
    /// center (D² sampling) among those with positive weight in `weights` (the caller zeroes
    /// picked points), with that squared distance; `weights` holds the bounds. `None` once every
    /// such distance is 0. Ends after at most one rejection per point with a stale bound: a
    /// rejected point's weight becomes its exact distance, and a point proposed at its exact
    /// distance is accepted. If the weights sum to `+inf` (stale bounds, or a distance that
    /// overflows `f64`, which finite embeddings never give) every bound is refreshed first
    /// ([`Self::refresh_all`]); if the exact distances still sum to `+inf`, no draw is possible
    /// and the first infinite (else the largest) distance is picked.
    pub(crate) fn sample_d2(
        &mut self,
        weights: &mut SumTree,
        rng: &mut fastrand::Rng,
        center_sq: impl Fn(usize, usize) -> f64,
    ) -> Option<(usize, f64)> {
        loop {
            let total = weights.total();
            if !total.is_finite() {
                let farthest = self.refresh_all(weights, &center_sq);
                if !weights.total().is_finite() {
                    return farthest;
                }
                // Exact bounds sum to a finite total: draw (the first proposal is accepted).
                continue;
            }
            if total <= 0.0 {
                return None;
            }
            // `find` lands on a positive weight whenever the total is positive.
            let index = weights.find(rng.f64() * total);
            let proposed = weights.weight(index);
            let exact = self.refresh(index, &center_sq);
            weights.set(index, exact);
            // Accept with probability exact / proposed; certainly when the bound was exact
            // (the product can round up to `exact`).
            if rng.f64() * proposed < exact || exact >= proposed {
                return Some((index, exact));
            }
        }
    }

    /// Brings every point with positive weight up to date (its weight becomes its exact
    /// distance) and returns the first at an infinite distance, else the farthest (ties: the
    /// lower index), the limit of D² sampling as one distance dominates; `None` if every
    /// distance is 0. `O(n)` refreshes: only for weights summing to `+inf`.
    fn refresh_all(&mut self, weights: &mut SumTree, center_sq: &impl Fn(usize, usize) -> f64) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for index in 0..self.bound.len() {
            if weights.weight(index) > 0.0 {
                let exact = self.refresh(index, center_sq);
                weights.set(index, exact);
                if exact > 0.0 && best.is_none_or(|(_, b)| exact > b) {
                    best = Some((index, exact));
                }
            }
        }
        best
    }
}

/// The unpicked points of a farthest-point traversal, by decreasing bound (ties: lower index).
pub(crate) struct Candidates {
    heap: BinaryHeap<Candidate>,
}

impl Candidates {
    /// Every point `i` with `bounds[i]`, except those `excluded`.
    pub(crate) fn new(bounds: &[f64], excluded: &[usize]) -> Self {
        let heap = bounds
            .iter()
            .enumerate()
            .filter(|(i, _)| !excluded.contains(i))
            .map(|(index, &bound)| Candidate { bound, index })
            .collect();
        Self { heap }
    }
}

/// A heap entry: the larger bound first, then the lower index.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    bound: f64,
    index: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bound.total_cmp(&other.bound).then(other.index.cmp(&self.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line, centers added in turn: the farthest point and the refreshed bounds
    /// equal a brute-force search.
    #[test]
    fn farthest_point_equals_brute_force() {
        let mut rng = fastrand::Rng::with_seed(4);
        let points: Vec<f64> = (0..300).map(|i| f64::from(i % 5) * 100.0 + rng.f64()).collect();
        let mut centers = vec![points[0]];
        let sq = |i: usize, c: f64| (points[i] - c).powi(2);
        let mut nearest = LazyNearest::first_center(points.len(), |i| sq(i, centers[0]));
        let mut candidates = Candidates::new(nearest.bounds(), &[0]);
        let mut picked = vec![0];
        for _ in 0..20 {
            let centers_now = centers.clone();
            let (pick, distance_sq) = nearest.farthest(&mut candidates, |i, j| sq(i, centers_now[j])).unwrap();
            let brute = |i: usize| centers.iter().map(|&c| sq(i, c)).fold(f64::INFINITY, f64::min);
            let best = (0..points.len()).filter(|i| !picked.contains(i)).fold(None, |b: Option<usize>, i| match b {
                Some(b) if brute(b) >= brute(i) => Some(b),
                _ => Some(i),
            });
            assert_eq!(Some(pick), best);
            assert_eq!(distance_sq, brute(pick));
            picked.push(pick);
            centers.push(points[pick]);
            nearest.add_center();
        }
    }

    #[test]
    fn d2_sampling_draws_proportionally_to_the_true_distance() {
        // Points 0..4 at 0, 1, 2, 3; centers at 0 then 3: true D² = 0, 1, 1, 0.
        let points = [0.0f64, 1.0, 2.0, 3.0];
        let centers = [0.0f64, 3.0];
        let mut counts = [0usize; 4];
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..2000 {
            let mut nearest = LazyNearest::first_center(4, |i| (points[i] - centers[0]).powi(2));
            nearest.add_center();
            let mut weights = SumTree::new(nearest.bounds());
            let (pick, d2) =
                nearest.sample_d2(&mut weights, &mut rng, |i, j| (points[i] - centers[j]).powi(2)).unwrap();
            assert_eq!(d2, 1.0);
            counts[pick] += 1;
        }
        assert_eq!((counts[0], counts[3]), (0, 0));
        assert!((counts[1] as f64 / 2000.0 - 0.5).abs() < 0.05, "{counts:?}");
    }

    #[test]
    fn sampling_and_farthest_end_on_infinite_and_nan_distances() {
        // Point 2 is infinitely far from center 0, point 3 at NaN (unknown: counted as +inf).
        let first = [0.0, 1.0, f64::INFINITY, f64::NAN, 4.0];
        let mut nearest = LazyNearest::first_center(first.len(), |i| first[i]);
        let mut weights = SumTree::new(nearest.bounds());
        let pick = nearest.sample_d2(&mut weights, &mut fastrand::Rng::with_seed(0), |i, _| first[i]);
        assert_eq!(pick, Some((2, f64::INFINITY)), "the first infinite distance");
        let mut candidates = Candidates::new(nearest.bounds(), &[]);
        assert_eq!(nearest.farthest(&mut candidates, |i, _| first[i]).map(|(i, _)| i), Some(2));
        // A second center that is NaN away from everything: bounds stay, loops still end.
        nearest.add_center();
        let (pick, _) = nearest.farthest(&mut candidates, |_, _| f64::NAN).unwrap();
        assert_eq!(pick, 3);
        // Bounds of +inf that refresh to finite distances: sampling draws among those.
        let mut nearest = LazyNearest::first_center(3, |_| f64::INFINITY);
        nearest.add_center();
        let mut weights = SumTree::new(nearest.bounds());
        let (pick, d2) = nearest
            .sample_d2(&mut weights, &mut fastrand::Rng::with_seed(1), |i, j| [0.0, 2.0, 0.0][i] + j as f64 - 1.0)
            .unwrap();
        assert_eq!((pick, d2), (1, 2.0));
    }
}
