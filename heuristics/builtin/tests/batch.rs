//! Batch heuristics: BatchBALD's diversity, PowerBALD's sampling and their determinism.

mod common;

use common::{sample_from_iterations, score, select, stack};

/// Pool: items 0, 1, 2 are identical copies of a maximally disagreeing sample; item 3 disagrees
/// along the other axis of the K = 4 iterations, so its label is independent of theirs; item 4
/// is certain.
fn near_duplicate_pool() -> (Vec<f32>, [usize; 3]) {
    let copy = sample_from_iterations(&[&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0], &[0.0, 1.0]]);
    // Slightly less uncertain than the copies so plain BALD ranks it after all three of them.
    let independent = sample_from_iterations(&[&[0.95, 0.05], &[0.05, 0.95], &[0.95, 0.05], &[0.05, 0.95]]);
    let certain = sample_from_iterations(&[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]]);
    (stack(&[copy.clone(), copy.clone(), copy, independent, certain]), [5, 2, 4])
}

#[test]
fn batch_bald_avoids_the_near_duplicates_that_top_k_bald_picks_together() {
    let (pool, shape) = near_duplicate_pool();
    let bald = score("bald", &pool, shape, 0);
    let mut by_bald: Vec<usize> = (0..5).collect();
    by_bald.sort_by(|&a, &b| bald[b].total_cmp(&bald[a]).then(a.cmp(&b)));
    assert_eq!(&by_bald[..2], [0, 1], "top-2 BALD takes two copies: {bald:?}");

    let (indices, scores) = select("batch_bald", &pool, shape, 2, 7);
    assert_eq!(indices[0], 0, "first pick is the top BALD item");
    assert_eq!(indices[1], 3, "second pick is the independent item, not a copy: {indices:?}");
    // The first gain is BALD of the first item; the independent item adds nearly its own BALD,
    // a copy would add nothing.
    assert!((scores[0] - bald[0]).abs() < 1e-5, "{scores:?} vs {bald:?}");
    assert!(scores[1] > 0.5 * bald[3], "{scores:?}");
}

#[test]
fn batch_bald_first_pick_is_bald_argmax_and_order_is_a_permutation() {
    let samples: Vec<Vec<f32>> = (0..12)
        .map(|i| {
            let a = 0.05 + 0.9 * ((i * 7 % 12) as f32 / 11.0);
            let b = 0.05 + 0.9 * ((i * 5 % 12) as f32 / 11.0);
            sample_from_iterations(&[&[a, 1.0 - a], &[b, 1.0 - b], &[1.0 - a, a]])
        })
        .collect();
    let pool = stack(&samples);
    let shape = [12, 2, 3];
    let bald = score("bald", &pool, shape, 0);
    let best = (0..12).fold(0, |best, i| if bald[i] > bald[best] { i } else { best });
    let (indices, _) = select("batch_bald", &pool, shape, 12, 1);
    assert_eq!(indices[0] as usize, best);
    let mut sorted = indices.clone();
    sorted.sort();
    assert_eq!(sorted, (0..12).collect::<Vec<u32>>());
}

#[test]
fn batch_bald_switches_to_sampled_configurations_for_large_batches() {
    // C = 10: after 4 picks, 10^4 configurations exceed the exhaustive limit (4096), so later
    // picks use the sampled estimate. The selection must stay a valid, seed-determined order.
    let (n, c, k) = (20, 10, 6);
    let mut rng = fastrand::Rng::with_seed(3);
    let data: Vec<f32> = (0..n * k)
        .flat_map(|_| {
            let raw: Vec<f32> = (0..c).map(|_| rng.f32() + 0.01).collect();
            let total: f32 = raw.iter().sum();
            raw.into_iter().map(move |v| v / total)
        })
        .collect();
    // `data` is [N, K, C]; transpose to [N, C, K].
    let pool: Vec<f32> = (0..n)
        .flat_map(|i| (0..c).flat_map(move |j| (0..k).map(move |t| (i, j, t))))
        .map(|(i, j, t)| data[(i * k + t) * c + j])
        .collect();
    let (first, _) = select("batch_bald", &pool, [n, c, k], 8, 11);
    let (again, _) = select("batch_bald", &pool, [n, c, k], 8, 11);
    assert_eq!(first, again, "same seed, same selection");
    let mut unique = first.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8);
}

#[test]
fn power_bald_is_seeded_and_never_picks_a_zero_bald_item_before_an_informative_one() {
    // Items 0..4 are certain (BALD exactly 0; K = 1 style agreement), 4..8 disagree.
    let certain = sample_from_iterations(&[&[0.7, 0.3], &[0.7, 0.3]]);
    let mut samples = vec![certain; 4];
    samples.extend((0..4).map(|i| {
        let a = 0.6 + 0.1 * i as f32;
        sample_from_iterations(&[&[a, 1.0 - a], &[1.0 - a, a]])
    }));
    let pool = stack(&samples);
    let shape = [8, 2, 2];
    for seed in 0..20 {
        let (indices, scores) = select("power_bald", &pool, shape, 4, seed);
        assert!(indices.iter().all(|&i| i >= 4), "seed {seed}: {indices:?}");
        assert!(scores.iter().all(|s| s.is_finite() && *s > 0.0), "seed {seed}: {scores:?}");
        assert_eq!(select("power_bald", &pool, shape, 4, seed), (indices, scores));
    }
    // Selecting all 8 puts the four zero-BALD items last, in index order (ties: lower first),
    // with score 0 rather than NaN (Baal 2.1.0 returns NaN for ln of a non-positive BALD).
    let (all, scores) = select("power_bald", &pool, shape, 8, 5);
    assert_eq!(&all[4..], [0, 1, 2, 3]);
    assert!(scores[4..].iter().all(|&s| s == 0.0), "{scores:?}");
}

#[test]
fn power_bald_samples_proportionally_to_bald() {
    // Two items with BALD ratio r: the first pick is item 0 with probability b0 / (b0 + b1).
    let strong = sample_from_iterations(&[&[1.0, 0.0], &[0.0, 1.0]]);
    let weak = sample_from_iterations(&[&[0.8, 0.2], &[0.6, 0.4]]);
    let pool = stack(&[strong, weak]);
    let bald = score("bald", &pool, [2, 2, 2], 0);
    let expected = f64::from(bald[0] / (bald[0] + bald[1]));
    let trials = 4000;
    let first_is_strong = (0..trials).filter(|&seed| select("power_bald", &pool, [2, 2, 2], 1, seed).0[0] == 0).count();
    let observed = first_is_strong as f64 / trials as f64;
    // Binomial standard deviation at 4000 trials is below 0.008; allow 5 of them.
    assert!((observed - expected).abs() < 0.04, "observed {observed}, expected {expected}");
}
