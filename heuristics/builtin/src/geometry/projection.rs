//! A seeded random projection to fewer dimensions (Johnson & Lindenstrauss 1984) with the ±1
//! entries of Achlioptas 2003 ("Database-friendly random projections: Johnson–Lindenstrauss with
//! binary coins"): squared distances are preserved in expectation, each within a relative error
//! of about `sqrt(2 / d_out)` (one standard deviation).

use rayon::prelude::*;

use super::distance::product;

/// Rows projected per rayon task (one sgemm each).
const ROWS_PER_TASK: usize = 256;

/// A `[d_in, d_out]` row-major matrix of `±1 / sqrt(d_out)` with equal probability.
pub(crate) fn sign_matrix(d_in: usize, d_out: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    let scale = 1.0 / (d_out as f32).sqrt();
    (0..d_in * d_out).map(|_| if rng.bool() { scale } else { -scale }).collect()
}

/// `rows` `[n, d_in]` times `matrix` `[d_in, d_out]`: `[n, d_out]`, in parallel row blocks
/// (`n · d_in · d_out` multiply-adds by sgemm).
pub(crate) fn project(rows: &[f32], d_in: usize, matrix: &[f32], d_out: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.len() / d_in * d_out];
    out.par_chunks_mut(ROWS_PER_TASK * d_out).zip(rows.par_chunks(ROWS_PER_TASK * d_in)).for_each(|(out, rows)| {
        product(rows, matrix, d_in, d_out, out);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::distance::squared_distance;

    #[test]
    fn projection_roughly_preserves_squared_distances() {
        let (d_in, d_out) = (300, 128);
        let mut rng = fastrand::Rng::with_seed(3);
        let rows: Vec<f32> = (0..2 * d_in).map(|_| rng.f32() - 0.5).collect();
        let projected = project(&rows, d_in, &sign_matrix(d_in, d_out, &mut rng), d_out);
        let before = squared_distance(&rows[..d_in], &rows[d_in..]);
        let after = squared_distance(&projected[..d_out], &projected[d_out..]);
        // Five standard deviations of sqrt(2 / 128) = 0.125.
        assert!((after / before - 1.0).abs() < 0.6, "{before} -> {after}");
    }
}
