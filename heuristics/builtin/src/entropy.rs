//! Per-sample statistics shared by the heuristics, over one sample's probabilities `[C, K]`
//! (row-major, MC-iteration axis fastest). Accumulated in f64: BALD is a difference of two
//! entropies and loses digits to cancellation in f32.

pub use crate::ln::x_ln_x;

/// Sum of one row in f64 with independent partial sums, so it vectorises; a sum of at most a
/// few thousand f32 values is exact to well below f32 resolution in any order.
#[inline(always)]
fn row_sum(row: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let mut chunks = row.chunks_exact(4);
    for chunk in &mut chunks {
        for (lane, &p) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(p);
        }
    }
    lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&p| f64::from(p)).sum::<f64>()
}

/// Mean probabilities over the K iterations, `pbar[c] = (1/K) Σ_k P[c, k]`; writes `[C]` into `pbar`.
#[inline(always)]
pub fn mean_over_iterations(sample: &[f32], k: usize, pbar: &mut [f64]) {
    for (mean, row) in pbar.iter_mut().zip(sample.chunks_exact(k)) {
        *mean = row_sum(row) / k as f64;
    }
}

/// Entropy `H(p) = -Σ_c p_c ln p_c` of a distribution, in nats.
#[inline(always)]
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().map(|&x| x_ln_x(x)).sum::<f64>()
}

/// Expected entropy of the K per-iteration distributions, `(1/K) Σ_k H(P[:, k])`, in nats.
#[inline(always)]
pub fn expected_entropy(sample: &[f32], k: usize) -> f64 {
    -crate::ln::sum_x_ln_x(sample) / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_probability_contributes_nothing() {
        assert_eq!(x_ln_x(0.0), 0.0);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
    }

    #[test]
    fn uniform_entropy_is_ln_c() {
        let p = [0.25; 4];
        assert!((entropy(&p) - 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn mean_and_expected_entropy_of_a_two_iteration_sample() {
        // [C=2, K=2]: iteration 0 is one-hot on class 0, iteration 1 is uniform.
        let sample = [1.0f32, 0.5, 0.0, 0.5];
        let mut pbar = [0.0; 2];
        mean_over_iterations(&sample, 2, &mut pbar);
        assert_eq!(pbar, [0.75, 0.25]);
        assert!((expected_entropy(&sample, 2) - 2f64.ln() / 2.0).abs() < 1e-12);
    }
}
