//! Per-sample heuristics: hand-computed values, edge cases of the spec, and `random`.

mod common;

use common::{sample_from_iterations, score, stack};

const LN2: f32 = std::f32::consts::LN_2;

#[test]
fn bald_of_complete_disagreement_is_ln2_and_of_agreement_is_zero() {
    let disagree = sample_from_iterations(&[&[1.0, 0.0], &[0.0, 1.0]]);
    let agree = sample_from_iterations(&[&[0.5, 0.5], &[0.5, 0.5]]);
    let bald = score("bald", &stack(&[disagree, agree]), [2, 2, 2], 0);
    assert!((bald[0] - LN2).abs() < 1e-6, "{bald:?}");
    assert!(bald[1].abs() < 1e-7, "{bald:?}");
    // Same mean prediction, so the same predictive entropy: entropy cannot tell them apart.
    let entropy = score("entropy", &stack(&[sample_from_iterations(&[&[1.0, 0.0], &[0.0, 1.0]])]), [1, 2, 2], 0);
    assert!((entropy[0] - LN2).abs() < 1e-6);
}

#[test]
fn k_equals_one_gives_zero_bald_and_variance_but_working_entropy_margin_confidence() {
    let data = [0.7f32, 0.2, 0.1];
    let shape = [1, 3, 1];
    assert_eq!(score("bald", &data, shape, 0), [0.0]);
    assert_eq!(score("variance", &data, shape, 0), [0.0]);
    let expected_entropy = -(0.7f32 * 0.7f32.ln() + 0.2 * 0.2f32.ln() + 0.1 * 0.1f32.ln());
    assert!((score("entropy", &data, shape, 0)[0] - expected_entropy).abs() < 1e-6);
    assert!((score("margin", &data, shape, 0)[0] - 0.5).abs() < 1e-6);
    assert!((score("least_confidence", &data, shape, 0)[0] - 0.7).abs() < 1e-6);
}

#[test]
fn exact_zeros_follow_zero_ln_zero_equals_zero() {
    let data = sample_from_iterations(&[&[1.0, 0.0, 0.0], &[1.0, 0.0, 0.0]]);
    for name in ["bald", "entropy", "variance"] {
        let value = score(name, &data, [1, 3, 2], 0)[0];
        assert_eq!(value, 0.0, "{name}");
    }
}

#[test]
fn variance_is_the_mean_over_classes_of_the_population_variance() {
    // Class 0 over K = 2: {0.2, 0.6} -> variance 0.04; class 1: {0.8, 0.4} -> 0.04.
    let data = sample_from_iterations(&[&[0.2, 0.8], &[0.6, 0.4]]);
    assert!((score("variance", &data, [1, 2, 2], 0)[0] - 0.04).abs() < 1e-7);
}

#[test]
fn scores_of_one_sample_do_not_depend_on_the_others() {
    let a = sample_from_iterations(&[&[0.9, 0.1], &[0.3, 0.7]]);
    let b = sample_from_iterations(&[&[0.5, 0.5], &[0.2, 0.8]]);
    for name in ["bald", "entropy", "variance", "margin", "least_confidence"] {
        let alone = score(name, &a, [1, 2, 2], 0)[0];
        let together = score(name, &stack(&[b.clone(), a.clone(), b.clone()]), [3, 2, 2], 0)[1];
        assert_eq!(alone, together, "{name}");
    }
}

#[test]
fn large_pools_are_scored_across_parallel_chunks_consistently() {
    // 1000 samples span several rayon chunks; each must get its own score, in order.
    let samples: Vec<Vec<f32>> = (0..1000)
        .map(|i| {
            let a = (i % 97) as f32 / 96.0;
            sample_from_iterations(&[&[a, 1.0 - a], &[1.0 - a, a]])
        })
        .collect();
    let all = score("bald", &stack(&samples), [1000, 2, 2], 0);
    for i in [0, 255, 256, 511, 999] {
        assert_eq!(all[i], score("bald", &samples[i], [1, 2, 2], 0)[0], "sample {i}");
    }
}

#[test]
fn random_is_uniform_in_unit_interval_and_reproducible_by_seed() {
    let data = vec![0.5f32; 2000 * 2];
    let shape = [2000, 2, 1];
    let first = score("random", &data, shape, 42);
    assert_eq!(first, score("random", &data, shape, 42));
    assert_ne!(first, score("random", &data, shape, 43));
    assert!(first.iter().all(|&s| (0.0..1.0).contains(&s)));
    let mean: f32 = first.iter().sum::<f32>() / first.len() as f32;
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
}
