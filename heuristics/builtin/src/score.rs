//! Per-sample heuristics (each function's doc gives its formula and paper). Each maps
//! probabilities `[N, C, K]` to scores `[N]`; samples are independent and scored in parallel.

use std::ffi::CStr;

use alps_heuristic_abi::{Direction, Heuristic, HeuristicError, Probabilities, ScoreHeuristic};
use rayon::prelude::*;

use crate::entropy::{entropy, expected_entropy, mean_over_iterations};

/// Samples per rayon task: large enough that scheduling is negligible next to the math.
const SAMPLES_PER_TASK: usize = 256;

/// Applies `per_sample(sample [C, K], pbar scratch [C]) -> score` to every sample in parallel.
fn score_each(
    input: Probabilities<'_>,
    scores: &mut [f32],
    per_sample: impl Fn(&[f32], &mut [f64]) -> f64 + Sync,
) -> Result<(), HeuristicError> {
    let c = input.c();
    scores.par_chunks_mut(SAMPLES_PER_TASK).enumerate().for_each(|(chunk, out)| {
        let mut pbar = vec![0.0; c];
        for (offset, score) in out.iter_mut().enumerate() {
            let sample = input.sample(chunk * SAMPLES_PER_TASK + offset);
            *score = per_sample(sample, &mut pbar) as f32;
        }
    });
    Ok(())
}

/// BALD (Houlsby et al. 2011, "Bayesian Active Learning for Classification and Preference
/// Learning"; for deep models Gal, Islam & Ghahramani 2017): the mutual information between the
/// label and the model weights, `H(pbar) - (1/K) Σ_k H(P[:, k])`, in nats. Higher = more informative.
pub struct Bald;

impl Heuristic for Bald {
    const NAME: &'static CStr = c"bald";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"BALD: mutual information between label and weights, in nats (Houlsby et al. 2011)";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

/// BALD of one sample `[C, K]`; `pbar` is `[C]` scratch.
#[inline(always)]
fn bald_lanes(sample: &[f32], k: usize, pbar: &mut [f64]) -> f64 {
    mean_over_iterations(sample, k, pbar);
    entropy(pbar) - expected_entropy(sample, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bald_avx2(sample: &[f32], k: usize, pbar: &mut [f64]) -> f64 {
    bald_lanes(sample, k, pbar)
}

/// BALD of one sample `[C, K]` in nats; `pbar` is `[C]` scratch. Compiled for AVX2 as well and
/// dispatched at run time; both paths give bit-identical results (the same operations, and
/// Rust never fuses multiply-adds on its own).
pub fn bald(sample: &[f32], k: usize, pbar: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features `bald_avx2` was compiled for.
        return unsafe { bald_avx2(sample, k, pbar) };
    }
    bald_lanes(sample, k, pbar)
}

impl ScoreHeuristic for Bald {
    fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        let k = input.k();
        score_each(input, scores, |sample, pbar| bald(sample, k, pbar))
    }
}

/// Predictive entropy `H(pbar)` (Shannon 1948; as an acquisition function in Gal, Islam &
/// Ghahramani 2017), in nats. Higher = more informative.
pub struct Entropy;

impl Heuristic for Entropy {
    const NAME: &'static CStr = c"entropy";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"Predictive entropy of the mean probabilities, in nats";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

impl ScoreHeuristic for Entropy {
    fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        let k = input.k();
        score_each(input, scores, |sample, pbar| {
            mean_over_iterations(sample, k, pbar);
            entropy(pbar)
        })
    }
}

/// Variation of the MC samples: the mean over classes of the population variance over the K
/// iterations of `P[c, k]` (Baal's `Variance` with reduction "mean"). Higher = more informative.
pub struct Variance;

impl Heuristic for Variance {
    const NAME: &'static CStr = c"variance";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"Mean over classes of the variance of the probabilities over MC iterations";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

impl ScoreHeuristic for Variance {
    fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        let (c, k) = (input.c(), input.k());
        score_each(input, scores, |sample, _| {
            let total: f64 = sample
                .chunks_exact(k)
                .map(|row| {
                    let mean = row.iter().map(|&p| f64::from(p)).sum::<f64>() / k as f64;
                    row.iter().map(|&p| (f64::from(p) - mean).powi(2)).sum::<f64>() / k as f64
                })
                .sum();
            total / c as f64
        })
    }
}

/// The two largest values of `pbar`, largest first.
fn top_two(pbar: &[f64]) -> (f64, f64) {
    pbar.iter().fold((f64::NEG_INFINITY, f64::NEG_INFINITY), |(first, second), &p| {
        if p > first { (p, first) } else { (first, second.max(p)) }
    })
}

/// Margin sampling (Scheffer et al. 2001): `pbar(1) - pbar(2)`, the gap between the two most
/// probable classes of the mean probabilities. Lower = more informative.
pub struct Margin;

impl Heuristic for Margin {
    const NAME: &'static CStr = c"margin";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"Top-1 minus top-2 mean probability (lower = more informative)";
    const DIRECTION: Direction = Direction::LowerIsMoreInformative;
}

impl ScoreHeuristic for Margin {
    fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        let k = input.k();
        score_each(input, scores, |sample, pbar| {
            mean_over_iterations(sample, k, pbar);
            let (first, second) = top_two(pbar);
            first - second
        })
    }
}

/// Least confidence (Lewis & Gale 1994; Baal's `Certainty`): `max_c pbar[c]`, the mean
/// probability of the predicted class. Lower = more informative.
pub struct LeastConfidence;

impl Heuristic for LeastConfidence {
    const NAME: &'static CStr = c"least_confidence";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"Mean probability of the predicted class (lower = more informative)";
    const DIRECTION: Direction = Direction::LowerIsMoreInformative;
}

impl ScoreHeuristic for LeastConfidence {
    fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        let k = input.k();
        score_each(input, scores, |sample, pbar| {
            mean_over_iterations(sample, k, pbar);
            top_two(pbar).0
        })
    }
}

/// Random acquisition, the baseline every heuristic must beat: uniform scores in `[0, 1)` from
/// a generator seeded by `seed` (the same seed gives the same scores). Higher = picked first.
pub struct Random;

impl Heuristic for Random {
    const NAME: &'static CStr = c"random";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"Uniform random scores in [0, 1) (baseline), seedable";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

impl ScoreHeuristic for Random {
    fn score(_input: Probabilities<'_>, seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        let mut rng = fastrand::Rng::with_seed(seed);
        scores.iter_mut().for_each(|score| *score = rng.f32());
        Ok(())
    }
}
