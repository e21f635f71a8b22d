//! Inputs shared by the built-in heuristics' benchmarks.

use rayon::prelude::*;

/// Random probabilities `[N, C, K]`: every `[n, :, k]` column a normalised vector of uniform
/// draws, seeded per sample, so every run (and every benchmark) scores the same array.
pub fn random_probabilities(n: usize, c: usize, k: usize) -> Vec<f32> {
    let mut data = vec![0.0f32; n * c * k];
    data.par_chunks_mut(c * k).enumerate().for_each(|(i, sample)| {
        let mut rng = fastrand::Rng::with_seed(i as u64);
        for t in 0..k {
            let raw: Vec<f32> = (0..c).map(|_| rng.f32() + 1e-3).collect();
            let total: f32 = raw.iter().sum();
            for (class, value) in raw.into_iter().enumerate() {
                sample[class * k + t] = value / total;
            }
        }
    });
    data
}
