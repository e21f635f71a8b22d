//! Squared Euclidean distances and dot products of `f32` rows, and blocked matrix products
//! (sgemm) for many rows against many centers at once.
//!
//! The row kernels sum in `f64` in a fixed order (`LANES` independent partial sums, then those in
//! index order), so results are the same on every CPU and thread count and finite for any finite
//! input (a squared distance is at most `4 · D · f32::MAX²` ≈ `4.6e77 · D`); they are compiled for
//! AVX2 as well and dispatched at run time (Rust never fuses multiply-adds on its own, so both
//! paths are bit-identical). The blocked products use `matrixmultiply`, single-threaded per
//! block, so their results do not depend on the thread count either (only on the CPU's FMA
//! support); rows whose `f32` expansion could overflow are searched with the exact kernel instead.

use rayon::prelude::*;

/// Independent partial sums per kernel: enough to hide the add latency and fill AVX2 registers.
const LANES: usize = 16;
/// Rows per block of a blocked product: a block's scratch (`ROW_BLOCK × CENTER_BLOCK` values)
/// stays in L2 cache.
const ROW_BLOCK: usize = 128;
/// Centers per block of a blocked product.
const CENTER_BLOCK: usize = 512;

#[inline(always)]
fn squared_distance_lanes(x: &[f32], y: &[f32]) -> f64 {
    let mut partial = [0.0f64; LANES];
    let (x_chunks, x_tail) = x.as_chunks::<LANES>();
    let (y_chunks, y_tail) = y.as_chunks::<LANES>();
    for (a, b) in x_chunks.iter().zip(y_chunks) {
        for lane in 0..LANES {
            let diff = f64::from(a[lane]) - f64::from(b[lane]);
            partial[lane] += diff * diff;
        }
    }
    for (lane, (a, b)) in x_tail.iter().zip(y_tail).enumerate() {
        let diff = f64::from(*a) - f64::from(*b);
        partial[lane] += diff * diff;
    }
    partial.iter().sum()
}

#[inline(always)]
fn dot_f64_lanes(x: &[f32], y: &[f32]) -> f64 {
    let mut partial = [0.0f64; LANES];
    let (x_chunks, x_tail) = x.as_chunks::<LANES>();
    let (y_chunks, y_tail) = y.as_chunks::<LANES>();
    for (a, b) in x_chunks.iter().zip(y_chunks) {
        for lane in 0..LANES {
            partial[lane] += f64::from(a[lane]) * f64::from(b[lane]);
        }
    }
    for (lane, (a, b)) in x_tail.iter().zip(y_tail).enumerate() {
        partial[lane] += f64::from(*a) * f64::from(*b);
    }
    partial.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn squared_distance_avx2(x: &[f32], y: &[f32]) -> f64 {
    squared_distance_lanes(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_f64_avx2(x: &[f32], y: &[f32]) -> f64 {
    dot_f64_lanes(x, y)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `||x − y||²` of two rows of the same length, in squared embedding units: differences, squares
/// and sums in `f64` (no cancellation, so a duplicate is at exactly 0; no overflow, so huge but
/// finite embeddings give finite distances).
pub(crate) fn squared_distance(x: &[f32], y: &[f32]) -> f64 {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the features `squared_distance_avx2` was compiled for.
        return unsafe { squared_distance_avx2(x, y) };
    }
    squared_distance_lanes(x, y)
}

/// `x · y` of two rows of the same length, products and sums in `f64` (exact products, so the
/// `||a||² + ||b||² − 2 a·b` expansions built on it keep their digits).
pub(crate) fn dot_f64(x: &[f32], y: &[f32]) -> f64 {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the features `dot_f64_avx2` was compiled for.
        return unsafe { dot_f64_avx2(x, y) };
    }
    dot_f64_lanes(x, y)
}

/// `out[r, j] = a_r · b_j` for `a` `[rows, d]` and `b` `[cols, d]`, both row-major (`A Bᵀ`,
/// `out` row-major `[rows, cols]`), by sgemm on the calling thread.
pub(crate) fn products_transposed(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    let (rows, cols) = (a.len() / d, b.len() / d);
    assert!(a.len() == rows * d && b.len() == cols * d && out.len() == rows * cols, "shapes of A Bᵀ");
    // SAFETY: the asserted lengths cover every element sgemm reads (A rows × d with strides
    // (d, 1), Bᵀ d × cols with strides (1, d)) and writes (out rows × cols, strides (cols, 1)).
    unsafe {
        matrixmultiply::sgemm(
            rows,
            d,
            cols,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            b.as_ptr(),
            1,
            d as isize,
            0.0,
            out.as_mut_ptr(),
            cols as isize,
            1,
        );
    }
}

/// `out = a b` for `a` `[rows, inner]` and `b` `[inner, cols]`, both row-major, by sgemm on the
/// calling thread.
pub(crate) fn product(a: &[f32], b: &[f32], inner: usize, cols: usize, out: &mut [f32]) {
    let rows = a.len() / inner;
    assert!(a.len() == rows * inner && b.len() == inner * cols && out.len() == rows * cols, "shapes of A B");
    // SAFETY: the asserted lengths cover every element sgemm reads and writes with these
    // row-major strides.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            inner,
            cols,
            1.0,
            a.as_ptr(),
            inner as isize,
            1,
            b.as_ptr(),
            cols as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            cols as isize,
            1,
        );
    }
}

/// Largest `||c||² + 2 ||x|| ||c||` (squared embedding units) for which the `f32` expansion
/// `||c||² − 2 x·c`, its sgemm partial sums and their rounding stay finite: a quarter of
/// `f32::MAX`, far more margin than the relative rounding error (`(D + 4) · ε`) needs.
const EXPANSION_LIMIT: f64 = f32::MAX as f64 / 4.0;

/// Euclidean norm of every row of `rows` `[n, d]`, in `f64` (parallel, order-free per row).
fn row_norms(rows: &[f32], d: usize) -> Vec<f64> {
    rows.par_chunks_exact(d).map(|row| dot_f64(row, row).sqrt()).collect()
}

/// How far the `f32` expansion key `||c||² − 2 x·c` of a row `x` (norm `x_norm`) can be from its
/// exact value, for any center of norm at most `center_norm`; `None` when the expansion may
/// overflow, so the row must be compared exactly. Bound: the sgemm dot product errs by at most
/// `γ_D ||x|| ||c||` in any summation order (γ_D ≈ D u, u = ε / 2), the rounded norm and the
/// subtraction by `u` of their magnitudes each; `(D + 4) ε (||c||² + 2 ||x|| ||c||)` covers
/// their sum with a factor of at least 2 to spare.
fn key_error(d: usize, x_norm: f64, center_norm: f64) -> Option<f64> {
    let magnitude = center_norm * center_norm + 2.0 * x_norm * center_norm;
    let relative = (d as f64 + 4.0) * f64::from(f32::EPSILON);
    (magnitude < EXPANSION_LIMIT && relative < 0.5).then_some(relative * magnitude)
}

/// Blocked sgemm of every row of `points` `[n, d]` against every row of `centers` `[m, d]`:
/// calls `visit(state_i, i, j, key)` with `key = ||c_j||² − 2 x_i·c_j` (`f32`), for each point
/// `i` in center order `j = 0..m`; `states` `[n]` holds one search state per point. Row blocks
/// run in parallel (`n · m · d` multiply-adds at matrix-product speed). Keys of rows whose
/// expansion may overflow ([`key_error`] is `None`) are meaningless: `visit` ignores them.
fn scan_keys<S: Send>(
    points: &[f32],
    centers: &[f32],
    d: usize,
    states: &mut [S],
    visit: impl Fn(&mut S, usize, usize, f32) + Sync,
) {
    let center_norms: Vec<f32> = centers.chunks_exact(d).map(|c| dot_f64(c, c) as f32).collect();
    states.par_chunks_mut(ROW_BLOCK).enumerate().for_each_init(
        || vec![0.0f32; ROW_BLOCK * CENTER_BLOCK],
        |scratch, (block, states)| {
            let rows = states.len();
            let block_points = &points[block * ROW_BLOCK * d..][..rows * d];
            for (first, block_centers) in centers.chunks(CENTER_BLOCK * d).enumerate() {
                let cols = block_centers.len() / d;
                let products = &mut scratch[..rows * cols];
                products_transposed(block_points, block_centers, d, products);
                for (r, (row, state)) in products.chunks_exact(cols).zip(states.iter_mut()).enumerate() {
                    for (j, &product) in row.iter().enumerate() {
                        let center = first * CENTER_BLOCK + j;
                        visit(state, block * ROW_BLOCK + r, center, center_norms[center] - 2.0 * product);
                    }
                }
            }
        },
    );
}

/// The largest norm among the rows of `centers` `[m, d]` (0 when there is none).
fn largest_norm(centers: &[f32], d: usize) -> f64 {
    row_norms(centers, d).into_iter().fold(0.0, f64::max)
}

/// For every row `x` of `points` `[n, d]`, the nearest row `c` of `centers` `[m ≥ 1, d]` (ties:
/// the lower center index) by `||c||² − 2 x·c`, from blocked sgemm products (see
/// [`scan_keys`]). Rows that are nearly equal can swap order through rounding in the expansion
/// (Lloyd's k-means tolerates that; [`nearest_distances`] does not). A row whose expansion may
/// overflow `f32` is searched exactly instead ([`squared_distance`], `m · d` in `f64`).
pub(crate) fn nearest_rows(points: &[f32], centers: &[f32], d: usize) -> Vec<u32> {
    let center_norm = largest_norm(centers, d);
    let mut best: Vec<(f32, u32)> = vec![(f32::INFINITY, 0); points.len() / d];
    scan_keys(points, centers, d, &mut best, |(best_key, nearest), _, center, key| {
        if key < *best_key {
            (*best_key, *nearest) = (key, center as u32);
        }
    });
    let x_norms = row_norms(points, d);
    best.par_iter_mut().zip(points.par_chunks_exact(d)).zip(&x_norms).for_each(|(((_, nearest), x), &x_norm)| {
        if key_error(d, x_norm, center_norm).is_none() {
            *nearest = exact_nearest(x, centers, d);
        }
    });
    best.into_iter().map(|(_, nearest)| nearest).collect()
}

/// The row of `centers` `[m ≥ 1, d]` nearest `x` by [`squared_distance`] (ties: the lower).
fn exact_nearest(x: &[f32], centers: &[f32], d: usize) -> u32 {
    let distances = centers.chunks_exact(d).map(|c| squared_distance(x, c));
    let (nearest, _) = distances.enumerate().fold((0, f64::INFINITY), |b, (j, s)| if s < b.1 { (j, s) } else { b });
    nearest as u32
}

/// Search state of one point in [`nearest_distances`].
struct ExactSearch {
    /// Smallest expansion key seen so far.
    best_key: f64,
    /// Twice the key error bound of this row; `None`: compare every center exactly.
    tolerance: Option<f64>,
    /// Smallest exact squared distance among the centers compared exactly.
    best_sq: f64,
}

/// For every row `x` of `points` `[n, d]`, its exact squared distance to the nearest row of
/// `centers` `[m ≥ 1, d]` (squared embedding units, [`squared_distance`]): a duplicate of a
/// center is at exactly 0. The blocked sgemm keys ([`scan_keys`]) only screen the centers: each
/// key errs by at most `E` ([`key_error`]), so the nearest center's key is within `2E` of the
/// smallest key, and every center whose key is within `2E` of the smallest so far is compared
/// exactly. Cost: `n · m · d` (sgemm) plus `d` (`f64`) per center within the tolerance, about
/// one per point on spread-out data and up to `m` for centers closer to each other than the
/// expansion's rounding (`~ε (D + 4) ||c||²`) or for rows whose expansion may overflow.
pub(crate) fn nearest_distances(points: &[f32], centers: &[f32], d: usize) -> Vec<f64> {
    let center_norm = largest_norm(centers, d);
    let mut states: Vec<ExactSearch> = row_norms(points, d)
        .into_iter()
        .map(|x_norm| ExactSearch {
            best_key: f64::INFINITY,
            tolerance: key_error(d, x_norm, center_norm).map(|error| 2.0 * error),
            best_sq: f64::INFINITY,
        })
        .collect();
    scan_keys(points, centers, d, &mut states, |state, i, center, key| {
        let key = f64::from(key);
        let candidate = state.tolerance.is_none_or(|tolerance| key <= state.best_key + tolerance);
        if candidate {
            state.best_key = state.best_key.min(key);
            state.best_sq = state.best_sq.min(squared_distance(&points[i * d..][..d], &centers[center * d..][..d]));
        }
    });
    states.into_iter().map(|state| state.best_sq).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_plain_sums_for_lengths_around_the_lane_count() {
        for len in [1, 7, 16, 17, 40] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = x.iter().zip(&y).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
            assert!((squared_distance(&x, &y) - plain).abs() < 1e-12);
            let dot: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            assert!((dot_f64(&x, &y) - dot).abs() < 1e-12);
            assert_eq!(squared_distance(&x, &x), 0.0);
        }
    }

    #[test]
    fn nearest_rows_agrees_with_a_direct_search_across_blocks() {
        let d = 3;
        let mut rng = fastrand::Rng::with_seed(1);
        let points: Vec<f32> = (0..(ROW_BLOCK + 5) * d).map(|_| rng.f32() * 10.0).collect();
        let centers: Vec<f32> = (0..(CENTER_BLOCK + 3) * d).map(|_| rng.f32() * 10.0).collect();
        let nearest = nearest_rows(&points, &centers, d);
        for (x, &found) in points.chunks_exact(d).zip(&nearest) {
            let best = centers.chunks_exact(d).map(|c| squared_distance(x, c)).fold(f64::INFINITY, f64::min);
            let got = squared_distance(x, &centers[found as usize * d..][..d]);
            assert!(got - best < 1e-3, "{got} vs {best}");
        }
    }

    /// The exact minimum over every center, by brute force.
    fn brute_force(points: &[f32], centers: &[f32], d: usize) -> Vec<f64> {
        let min = |x: &[f32]| centers.chunks_exact(d).map(|c| squared_distance(x, c)).fold(f64::INFINITY, f64::min);
        points.chunks_exact(d).map(min).collect()
    }

    #[test]
    fn nearest_distances_are_exact_for_centers_closer_than_the_expansion_rounding() {
        // Centers ~1e3 apart by ~1e-3 (the f32 expansion rounds by ~1e-1), more of them than a
        // block; points: a copy of each center, then points nearby.
        let d = 8;
        let mut rng = fastrand::Rng::with_seed(2);
        let centers: Vec<f32> =
            (0..(CENTER_BLOCK + 7) * d).map(|j| 1000.0 + (j % d) as f32 + (rng.f32() - 0.5) * 2e-3).collect();
        let mut points = centers.clone();
        points.extend(centers[..40 * d].iter().map(|x| x + (rng.f32() - 0.5) * 1e-2));
        let distances = nearest_distances(&points, &centers, d);
        assert_eq!(distances, brute_force(&points, &centers, d));
        assert!(distances[..CENTER_BLOCK + 7].iter().all(|&s| s == 0.0), "a copy is at exactly 0");
    }

    #[test]
    fn rows_whose_expansion_overflows_are_searched_exactly() {
        let d = 4;
        let points = [3e38f32, -3e38, 1.0, 0.0, 1e20, 1e20, -1e20, 2.0, 0.5, 0.5, 0.5, 0.5];
        let centers = [-3e38f32, 3e38, 0.0, 0.0, 1e20, 1e20, -1e20, 2.0, 0.0, 0.0, 0.0, 0.0, 3e38, -3e38, 1.0, 0.0];
        let distances = nearest_distances(&points, &centers, d);
        assert_eq!(distances, brute_force(&points, &centers, d));
        assert_eq!((distances[0], distances[1]), (0.0, 0.0));
        assert!(distances.iter().all(|s| s.is_finite()));
        assert_eq!(nearest_rows(&points, &centers, d), [3, 1, 2]);
    }
}
