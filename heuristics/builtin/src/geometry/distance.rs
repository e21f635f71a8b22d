//! Squared Euclidean distances and dot products of `f32` rows, and blocked matrix products
//! (sgemm) for many rows against many centers at once.
//!
//! The row kernels sum in a fixed order (`LANES` independent partial sums, then those in index
//! order), so results are the same on every CPU and thread count; they are compiled for AVX2 as
//! well and dispatched at run time (Rust never fuses multiply-adds on its own, so both paths are
//! bit-identical). The blocked products use `matrixmultiply`, single-threaded per block, so their
//! results do not depend on the thread count either (only on the CPU's FMA support).

use rayon::prelude::*;

/// Independent partial sums per kernel: enough to hide the add latency and fill AVX2 registers.
const LANES: usize = 16;
/// Rows per block of a blocked product: a block's scratch (`ROW_BLOCK × CENTER_BLOCK` values)
/// stays in L2 cache.
const ROW_BLOCK: usize = 128;
/// Centers per block of a blocked product.
const CENTER_BLOCK: usize = 512;

#[inline(always)]
fn squared_distance_lanes(x: &[f32], y: &[f32]) -> f32 {
    let mut partial = [0.0f32; LANES];
    let (x_chunks, x_tail) = x.as_chunks::<LANES>();
    let (y_chunks, y_tail) = y.as_chunks::<LANES>();
    for (a, b) in x_chunks.iter().zip(y_chunks) {
        for lane in 0..LANES {
            let diff = a[lane] - b[lane];
            partial[lane] += diff * diff;
        }
    }
    for (lane, (a, b)) in x_tail.iter().zip(y_tail).enumerate() {
        let diff = a - b;
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
fn squared_distance_avx2(x: &[f32], y: &[f32]) -> f32 {
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

/// `||x − y||²` of two rows of the same length, summed in `f32` from the differences (no
/// cancellation, so a duplicate is at exactly 0).
pub(crate) fn squared_distance(x: &[f32], y: &[f32]) -> f32 {
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

/// For every row `x` of `points` `[n, d]`, the nearest row `c` of `centers` `[m, d]` (ties: the
/// lower center index) by `||c||² − 2 x·c`, from blocked sgemm products: `n · m · d`
/// multiply-adds at matrix-product speed instead of `m` passes over `points`. Row blocks run in
/// parallel. Rows that are nearly equal can swap order through cancellation in the expansion;
/// callers recompute the exact distance to the center found.
pub(crate) fn nearest_rows(points: &[f32], centers: &[f32], d: usize) -> Vec<u32> {
    let center_norms: Vec<f32> = centers.chunks_exact(d).map(|c| dot_f64(c, c) as f32).collect();
    let mut nearest = vec![0u32; points.len() / d];
    nearest.par_chunks_mut(ROW_BLOCK).enumerate().for_each_init(
        || (vec![0.0f32; ROW_BLOCK * CENTER_BLOCK], vec![f32::INFINITY; ROW_BLOCK]),
        |(scratch, best), (block, nearest)| {
            let rows = nearest.len();
            let block_points = &points[block * ROW_BLOCK * d..][..rows * d];
            best[..rows].fill(f32::INFINITY);
            for (first, block_centers) in centers.chunks(CENTER_BLOCK * d).enumerate() {
                let cols = block_centers.len() / d;
                let products = &mut scratch[..rows * cols];
                products_transposed(block_points, block_centers, d, products);
                for (r, row) in products.chunks_exact(cols).enumerate() {
                    for (j, &product) in row.iter().enumerate() {
                        let center = first * CENTER_BLOCK + j;
                        let key = center_norms[center] - 2.0 * product;
                        if key < best[r] {
                            best[r] = key;
                            nearest[r] = center as u32;
                        }
                    }
                }
            }
        },
    );
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_plain_sums_for_lengths_around_the_lane_count() {
        for len in [1, 7, 16, 17, 40] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
            assert!((f64::from(squared_distance(&x, &y)) - plain).abs() < 1e-5);
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
            let best = centers.chunks_exact(d).map(|c| squared_distance(x, c)).fold(f32::INFINITY, f32::min);
            let got = squared_distance(x, &centers[found as usize * d..][..d]);
            assert!(got - best < 1e-3, "{got} vs {best}");
        }
    }
}
