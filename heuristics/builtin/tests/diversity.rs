//! The embedding-based batch heuristics (TypiClust, Core-Set, BADGE) called through the plugin's
//! C ABI, checked against small reference computations written here in plain Rust, on data where
//! the right answer is known.

mod common;

use std::collections::BTreeSet;

use alps_heuristic_abi::{Inputs, PluginDescriptor, ProbabilitiesRaw, Status};
use common::select_input;

const DIVERSITY: [&str; 3] = ["typiclust", "coreset", "badge"];

/// What the host passes: probabilities `[N, C, K]`, embeddings `[N, D]`, labelled `[L, D]`.
struct Pool {
    probabilities: Vec<f32>,
    shape: [usize; 3],
    embeddings: Vec<f32>,
    d: usize,
    labelled: Vec<f32>,
    classes: Vec<u32>,
}

impl Pool {
    /// Embeddings `[N, d]` with uniform two-class probabilities (K = 1), which TypiClust and
    /// Core-Set ignore.
    fn new(embeddings: Vec<f32>, d: usize) -> Self {
        let n = embeddings.len() / d;
        Self { probabilities: vec![0.5; n * 2], shape: [n, 2, 1], embeddings, d, labelled: vec![], classes: vec![] }
    }

    fn with_labelled(mut self, labelled: Vec<f32>) -> Self {
        self.classes = vec![0; labelled.len() / self.d];
        self.labelled = labelled;
        self
    }

    fn with_probabilities(mut self, probabilities: Vec<f32>, c: usize, k: usize) -> Self {
        assert_eq!(probabilities.len(), self.n() * c * k);
        self.probabilities = probabilities;
        self.shape = [self.n(), c, k];
        self
    }

    fn n(&self) -> usize {
        self.embeddings.len() / self.d
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.embeddings[i * self.d..(i + 1) * self.d]
    }

    fn raw(&self) -> ProbabilitiesRaw {
        let [n, c, k] = self.shape;
        let labelled = !self.classes.is_empty();
        ProbabilitiesRaw {
            embeddings: self.embeddings.as_ptr(),
            d: self.d,
            labelled_embeddings: if labelled { self.labelled.as_ptr() } else { std::ptr::null() },
            labelled_classes: if labelled { self.classes.as_ptr() } else { std::ptr::null() },
            l: self.classes.len(),
            ..ProbabilitiesRaw::probabilities(self.probabilities.as_ptr(), n, c, k)
        }
    }

    /// Selects through the ABI; panics on a non-OK status.
    fn select(&self, name: &str, query_size: usize, seed: u64) -> (Vec<u32>, Vec<f32>) {
        select_input(name, &self.raw(), query_size, seed)
            .unwrap_or_else(|(status, message)| panic!("{name}: status {status}: {message}"))
    }
}

fn gaussian(rng: &mut fastrand::Rng) -> f32 {
    let (u, v) = (rng.f64().max(1e-300), rng.f64());
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// Gaussian blobs: sample `i` belongs to cluster `i % clusters`, around a center drawn uniformly
/// in `[-100, 100]^d`, with standard deviation `spread`. Returns (embeddings, cluster of each
/// sample, centers).
fn blobs(
    clusters: usize,
    per_cluster: usize,
    d: usize,
    spread: f32,
    seed: u64,
) -> (Vec<f32>, Vec<usize>, Vec<Vec<f32>>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let centers: Vec<Vec<f32>> = (0..clusters).map(|_| (0..d).map(|_| rng.f32() * 200.0 - 100.0).collect()).collect();
    let labels: Vec<usize> = (0..clusters * per_cluster).map(|i| i % clusters).collect();
    let embeddings = labels
        .iter()
        .flat_map(|&c| centers[c].iter().map(|&x| x + spread * gaussian(&mut rng)).collect::<Vec<_>>())
        .collect();
    (embeddings, labels, centers)
}

fn distance(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum::<f64>().sqrt()
}

/// TypiClust's typicality of every member (paper §3.2): the inverse mean distance to its
/// `min(20, size − 1)` nearest other members.
fn reference_typicality(pool: &Pool, members: &[usize]) -> Vec<f64> {
    members
        .iter()
        .map(|&x| {
            let mut distances: Vec<f64> =
                members.iter().filter(|&&y| y != x).map(|&y| distance(pool.row(x), pool.row(y))).collect();
            distances.sort_by(f64::total_cmp);
            let k = distances.len().min(20);
            1.0 / (distances[..k].iter().sum::<f64>() / k as f64)
        })
        .collect()
}

fn assert_permutation(indices: &[u32], n: usize, what: &str) {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>(), "{what}: {indices:?}");
}

#[test]
fn typiclust_picks_the_most_typical_sample_of_each_separated_cluster() {
    for seed in 0..4 {
        let (embeddings, labels, _) = blobs(5, 30, 8, 1.0, 100 + seed);
        let pool = Pool::new(embeddings, 8);
        let (indices, scores) = pool.select("typiclust", 5, seed);
        let covered: BTreeSet<usize> = indices.iter().map(|&i| labels[i as usize]).collect();
        assert_eq!(covered.len(), 5, "seed {seed}: one pick per cluster, got clusters {covered:?}");
        for (&pick, &score) in indices.iter().zip(&scores) {
            let members: Vec<usize> = (0..pool.n()).filter(|&i| labels[i] == labels[pick as usize]).collect();
            let typicality = reference_typicality(&pool, &members);
            let best = (0..members.len()).fold(0, |b, i| if typicality[i] > typicality[b] { i } else { b });
            assert_eq!(pick as usize, members[best], "seed {seed}: the most typical member of its cluster");
            assert!((f64::from(score) / typicality[best] - 1.0).abs() < 1e-4, "{score} vs {}", typicality[best]);
        }
    }
}

#[test]
fn typiclust_picks_the_clusters_the_labelled_set_does_not_cover() {
    for seed in 0..4 {
        let (embeddings, labels, centers) = blobs(5, 30, 8, 1.0, 200 + seed);
        // One labelled example near each of clusters 0 and 1: L + B = 5 clusters.
        let labelled: Vec<f32> = centers[..2].iter().flat_map(|c| c.iter().map(|x| x + 0.5)).collect();
        let pool = Pool::new(embeddings, 8).with_labelled(labelled);
        let (indices, _) = pool.select("typiclust", 3, seed);
        let covered: BTreeSet<usize> = indices.iter().map(|&i| labels[i as usize]).collect();
        assert_eq!(covered, BTreeSet::from([2, 3, 4]), "seed {seed}: {indices:?}");
    }
}

#[test]
fn typiclust_on_wide_embeddings_clusters_in_a_random_projection() {
    // D = 512 is above the exact limit (256): clustering runs in a 128-dimensional projection,
    // which keeps well-separated clusters apart.
    let (embeddings, labels, _) = blobs(5, 30, 512, 1.0, 300);
    let pool = Pool::new(embeddings, 512);
    let (indices, scores) = pool.select("typiclust", 5, 1);
    let covered: BTreeSet<usize> = indices.iter().map(|&i| labels[i as usize]).collect();
    assert_eq!(covered.len(), 5, "{indices:?}");
    assert!(scores.iter().all(|s| s.is_finite() && *s > 0.0), "{scores:?}");
}

/// Greedy k-center written plainly (Sener & Savarese 2018, Algorithm 1), in `f64`: picks and
/// distances. A cold start begins at the sample farthest from the pool's mean.
fn reference_k_center(pool: &Pool, query_size: usize) -> (Vec<usize>, Vec<f64>) {
    let n = pool.n();
    let mut centers: Vec<Vec<f32>> = pool.labelled.chunks_exact(pool.d).map(<[f32]>::to_vec).collect();
    let (mut picks, mut distances) = (Vec::new(), Vec::new());
    if centers.is_empty() {
        let mean: Vec<f32> =
            (0..pool.d).map(|j| ((0..n).map(|i| f64::from(pool.row(i)[j])).sum::<f64>() / n as f64) as f32).collect();
        let first =
            (0..n).fold(0, |b, i| if distance(pool.row(i), &mean) > distance(pool.row(b), &mean) { i } else { b });
        picks.push(first);
        distances.push(distance(pool.row(first), &mean));
        centers.push(pool.row(first).to_vec());
    }
    while picks.len() < query_size {
        let nearest = |i: usize| centers.iter().map(|c| distance(pool.row(i), c)).fold(f64::INFINITY, f64::min);
        let candidates = (0..n).filter(|i| !picks.contains(i));
        let best = candidates.fold(None, |b: Option<usize>, i| match b {
            Some(b) if nearest(b) >= nearest(i) => Some(b),
            _ => Some(i),
        });
        let best = best.unwrap();
        distances.push(nearest(best));
        picks.push(best);
        centers.push(pool.row(best).to_vec());
    }
    (picks, distances)
}

#[test]
fn coreset_equals_a_naive_greedy_k_center_pick_for_pick() {
    let mut rng = fastrand::Rng::with_seed(11);
    let (n, d) = (60, 5);
    let embeddings: Vec<f32> = (0..n * d).map(|_| rng.f32() * 4.0 - 2.0).collect();
    let labelled: Vec<f32> = (0..3 * d).map(|_| rng.f32() * 4.0 - 2.0).collect();
    for pool in [Pool::new(embeddings.clone(), d).with_labelled(labelled), Pool::new(embeddings, d)] {
        let (indices, scores) = pool.select("coreset", 25, 0);
        let (picks, distances) = reference_k_center(&pool, 25);
        assert_eq!(indices.iter().map(|&i| i as usize).collect::<Vec<_>>(), picks, "L = {}", pool.classes.len());
        for (score, expected) in scores.iter().zip(&distances) {
            assert!((f64::from(*score) - expected).abs() < 1e-4, "{scores:?} vs {distances:?}");
        }
        // The coverage radius only shrinks (a cold start's first score is the distance to the mean).
        let radii = if pool.classes.is_empty() { &scores[1..] } else { &scores[..] };
        assert!(radii.windows(2).all(|w| w[1] <= w[0]), "{scores:?}");
    }
}

#[test]
fn coreset_covers_every_distinct_sample_before_a_duplicate() {
    // Ten distinct samples, three copies each, interleaved.
    let mut rng = fastrand::Rng::with_seed(12);
    let (distinct, d) = (10, 4);
    let rows: Vec<Vec<f32>> = (0..distinct).map(|_| (0..d).map(|_| rng.f32()).collect()).collect();
    let embeddings: Vec<f32> = (0..3 * distinct).flat_map(|i| rows[i % distinct].clone()).collect();
    let pool = Pool::new(embeddings, d).with_labelled((0..d).map(|_| rng.f32() + 5.0).collect());
    let (indices, scores) = pool.select("coreset", 3 * distinct, 0);
    let first: BTreeSet<usize> = indices[..distinct].iter().map(|&i| i as usize % distinct).collect();
    assert_eq!(first.len(), distinct, "the first ten picks are ten distinct samples: {indices:?}");
    assert!(scores[..distinct].iter().all(|&s| s > 0.0), "{scores:?}");
    assert!(scores[distinct..].iter().all(|&s| s == 0.0), "copies are at distance 0: {scores:?}");
    assert_permutation(&indices, 3 * distinct, "coreset with duplicates");
}

/// Probabilities `[N, C, K]` where sample `i`, iteration `t` has class distribution `p(i, t)`.
fn probabilities(n: usize, c: usize, k: usize, mut p: impl FnMut(usize, usize) -> Vec<f32>) -> Vec<f32> {
    let mut data = vec![0.0f32; n * c * k];
    for i in 0..n {
        for t in 0..k {
            for (class, value) in p(i, t).into_iter().enumerate() {
                data[(i * c + class) * k + t] = value;
            }
        }
    }
    data
}

/// BADGE's gradient embeddings materialised, `[N][C · D]` in `f64`: `(p̄ − onehot(argmax p̄)) ⊗ h`.
fn reference_gradients(pool: &Pool) -> Vec<Vec<f64>> {
    let [n, c, k] = pool.shape;
    (0..n)
        .map(|i| {
            let mean: Vec<f64> = (0..c)
                .map(|j| (0..k).map(|t| f64::from(pool.probabilities[(i * c + j) * k + t])).sum::<f64>() / k as f64)
                .collect();
            let predicted = (0..c).fold(0, |b, j| if mean[j] > mean[b] { j } else { b });
            let residual: Vec<f64> = (0..c).map(|j| mean[j] - f64::from(u8::from(j == predicted))).collect();
            residual.iter().flat_map(|a| pool.row(i).iter().map(move |&h| a * f64::from(h))).collect()
        })
        .collect()
}

fn squared(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum()
}

#[test]
fn badge_starts_at_the_largest_gradient_and_reports_the_materialised_d2() {
    let (n, c, k, d) = (40, 3, 5, 4);
    let mut rng = fastrand::Rng::with_seed(13);
    let data = probabilities(n, c, k, |_, _| {
        let raw: Vec<f32> = (0..c).map(|_| rng.f32() + 0.05).collect();
        let total: f32 = raw.iter().sum();
        raw.into_iter().map(|v| v / total).collect()
    });
    let embeddings: Vec<f32> = (0..n * d).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let pool = Pool::new(embeddings, d).with_probabilities(data, c, k);
    let gradients = reference_gradients(&pool);
    let norms: Vec<f64> = gradients.iter().map(|g| g.iter().map(|v| v * v).sum()).collect();
    let largest = (0..n).fold(0, |b, i| if norms[i] > norms[b] { i } else { b });
    for seed in 0..5 {
        let (indices, scores) = pool.select("badge", 15, seed);
        assert_eq!(indices[0] as usize, largest, "first pick: the largest ||g||");
        assert!((f64::from(scores[0]) - norms[largest]).abs() < 1e-4, "{} vs {}", scores[0], norms[largest]);
        for (slot, (&pick, &score)) in indices.iter().zip(&scores).enumerate().skip(1) {
            let d2 = indices[..slot]
                .iter()
                .map(|&p| squared(&gradients[pick as usize], &gradients[p as usize]))
                .fold(f64::INFINITY, f64::min);
            assert!((f64::from(score) - d2).abs() < 1e-4 * d2.max(1.0), "pick {slot}: {score} vs {d2}");
        }
        let distinct: BTreeSet<u32> = indices.iter().copied().collect();
        assert_eq!(distinct.len(), 15);
    }
}

#[test]
fn badge_prefers_uncertain_samples_and_spreads_them_across_clusters() {
    // Four clusters in D = 6 along orthogonal axes; cluster j's samples predict class j. Even
    // samples are confident (p ≈ onehot, so g ≈ 0), odd ones uncertain (p = 0.4 on class j).
    let (clusters, per_cluster, c, d) = (4, 20, 4, 6);
    let n = clusters * per_cluster;
    let mut rng = fastrand::Rng::with_seed(14);
    let cluster = |i: usize| i % clusters;
    let uncertain = |i: usize| (i / clusters) % 2 == 1;
    let embeddings: Vec<f32> = (0..n)
        .flat_map(|i| (0..d).map(|j| if j == cluster(i) { 10.0 } else { 0.0 }).collect::<Vec<_>>())
        .map(|x| x + 0.1 * gaussian(&mut rng))
        .collect();
    let data = probabilities(n, c, 3, |i, _| {
        let (top, rest) = if uncertain(i) { (0.4, 0.2) } else { (0.997, 0.001) };
        (0..c).map(|class| if class == cluster(i) { top } else { rest }).collect()
    });
    let pool = Pool::new(embeddings, d).with_probabilities(data, c, 3);
    for seed in 0..10 {
        let (indices, _) = pool.select("badge", 5, seed);
        let picks_uncertain: Vec<usize> = indices.iter().map(|&i| i as usize).filter(|&i| uncertain(i)).collect();
        let clusters_covered: BTreeSet<usize> = picks_uncertain.iter().map(|&i| cluster(i)).collect();
        // The confident samples form one tight group at g ≈ 0: k-means++ takes at most one of them.
        assert!(picks_uncertain.len() >= 4, "seed {seed}: {indices:?}");
        assert_eq!(clusters_covered.len(), 4, "seed {seed}: one uncertain sample per cluster: {indices:?}");
    }
}

#[test]
fn same_seed_same_selection_on_any_thread_count() {
    // Large enough for several parallel blocks; D = 300 also takes TypiClust's projection path.
    for (clusters, per_cluster, d) in [(12, 200, 16), (6, 50, 300)] {
        let (embeddings, _, _) = blobs(clusters, per_cluster, d, 3.0, 400);
        let n = clusters * per_cluster;
        let mut rng = fastrand::Rng::with_seed(15);
        let data = probabilities(n, 3, 2, |_, _| {
            let raw: Vec<f32> = (0..3).map(|_| rng.f32() + 0.05).collect();
            let total: f32 = raw.iter().sum();
            raw.into_iter().map(|v| v / total).collect()
        });
        let labelled = embeddings[..5 * d].iter().map(|x| x + 0.25).collect();
        let pool = Pool::new(embeddings, d).with_probabilities(data, 3, 2).with_labelled(labelled);
        for name in DIVERSITY {
            let first = pool.select(name, 20, 42);
            assert_eq!(first, pool.select(name, 20, 42), "{name}: same seed, same selection");
            for threads in [1, 3] {
                let threads_pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                assert_eq!(first, threads_pool.install(|| pool.select(name, 20, 42)), "{name} on {threads} threads");
            }
        }
        // The seeded ones do depend on the seed.
        for name in ["typiclust", "badge"] {
            assert_ne!(pool.select(name, 20, 42).0, pool.select(name, 20, 7).0, "{name}");
        }
    }
}

#[test]
fn missing_embeddings_are_invalid_input_and_the_inputs_are_declared() {
    let data = [0.5f32; 8];
    let input = ProbabilitiesRaw::probabilities(data.as_ptr(), 4, 2, 1);
    for name in DIVERSITY {
        let (status, message) = select_input(name, &input, 1, 0).expect_err(name);
        assert_eq!(status, Status::InvalidInput as i32, "{name}: {message}");
        assert!(message.contains("embeddings"), "{name}: {message}");
    }
    // SAFETY: the entry symbol returns the plugin's static descriptor; `heuristic_inputs` holds
    // `heuristic_count` flag words parallel to `heuristics`.
    let plugin: &PluginDescriptor = unsafe { &*alps_heuristics_builtin::alps_heuristic_plugin() };
    // SAFETY: as above.
    let (heuristics, inputs) = unsafe {
        (
            std::slice::from_raw_parts(plugin.heuristics, plugin.heuristic_count),
            std::slice::from_raw_parts(plugin.heuristic_inputs, plugin.heuristic_count),
        )
    };
    for (heuristic, inputs) in heuristics.iter().zip(inputs) {
        // SAFETY: names are static NUL-terminated strings.
        let name = unsafe { std::ffi::CStr::from_ptr(heuristic.name) }.to_str().unwrap();
        let expected = match name {
            "typiclust" | "coreset" => Inputs::LABELLED,
            "badge" => Inputs::EMBEDDINGS,
            _ => Inputs::PROBABILITIES,
        };
        assert_eq!(*inputs, expected, "{name}");
    }
}

#[test]
fn query_size_n_is_a_permutation_also_with_duplicates_equal_points_and_tiny_shapes() {
    let mut rng = fastrand::Rng::with_seed(16);
    // 24 samples in D = 3, every fourth a copy of sample 0.
    let mut embeddings: Vec<f32> = (0..24 * 3).map(|_| rng.f32()).collect();
    for i in (4..24).step_by(4) {
        let copy = embeddings[..3].to_vec();
        embeddings[i * 3..i * 3 + 3].copy_from_slice(&copy);
    }
    let data = probabilities(24, 2, 2, |_, _| {
        let p = rng.f32();
        vec![p, 1.0 - p]
    });
    let pools = [
        Pool::new(embeddings.clone(), 3).with_probabilities(data.clone(), 2, 2),
        Pool::new(embeddings, 3).with_probabilities(data, 2, 2).with_labelled(vec![0.5; 6]),
        Pool::new(vec![0.25], 1),
        Pool::new((0..10).map(|i| (i % 3) as f32).collect(), 1),
        // All points equal: every distance is 0 (sampling falls back to uniform draws).
        Pool::new(vec![7.0; 24], 2),
        Pool::new(vec![7.0; 24], 2).with_labelled(vec![7.0; 4]),
    ];
    for (case, pool) in pools.iter().enumerate() {
        for name in DIVERSITY {
            let (indices, scores) = pool.select(name, pool.n(), 3);
            assert_permutation(&indices, pool.n(), &format!("{name}, case {case}"));
            assert!(scores.iter().all(|s| s.is_finite() && *s >= 0.0), "{name}, case {case}: {scores:?}");
        }
    }
}

/// Runs `f` on another thread and returns its result, or panics if it takes longer than
/// `limit`: a heuristic that loops forever fails the test instead of hanging the suite.
fn within<T: Send + 'static>(limit: std::time::Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver.recv_timeout(limit).unwrap_or_else(|error| panic!("{what}: no result within {limit:?} ({error})"))
}

/// Distinct indices below `n`, and finite scores (the ABI requires finite scores).
fn assert_valid_prefix(indices: &[u32], scores: &[f32], n: usize, what: &str) {
    let distinct: BTreeSet<u32> = indices.iter().copied().collect();
    assert_eq!(distinct.len(), indices.len(), "{what}: distinct indices: {indices:?}");
    assert!(indices.iter().all(|&i| (i as usize) < n), "{what}: indices below {n}: {indices:?}");
    assert!(scores.iter().all(|s| s.is_finite()), "{what}: finite scores: {scores:?}");
}

#[test]
fn huge_finite_embeddings_finish_with_distinct_picks_and_finite_scores() {
    // Squared distances between such rows overflow f32 (1e40, 3.6e77): sampling over them must
    // still terminate. D = 300 also takes TypiClust's projection path.
    for huge in [1e20f32, 3e38] {
        for d in [6, 300] {
            let mut rng = fastrand::Rng::with_seed(17);
            let n = 30;
            let embeddings: Vec<f32> = (0..n * d)
                .map(|i| match i % 5 {
                    0 => huge,
                    1 => -huge,
                    _ => rng.f32() * 2.0 - 1.0,
                })
                .collect();
            let labelled: Vec<f32> = (0..3 * d).map(|i| if i % 4 == 0 { -huge } else { rng.f32() }).collect();
            let data = probabilities(n, 2, 2, |_, _| {
                let p = rng.f32();
                vec![p, 1.0 - p]
            });
            let pools = [
                Pool::new(embeddings.clone(), d).with_probabilities(data.clone(), 2, 2),
                Pool::new(embeddings, d).with_probabilities(data, 2, 2).with_labelled(labelled),
            ];
            for pool in pools {
                let pool = std::sync::Arc::new(pool);
                for name in DIVERSITY {
                    for query_size in [5, n] {
                        let what = format!("{name}, ±{huge:e}, D = {d}, L = {}, B = {query_size}", pool.classes.len());
                        let shared = pool.clone();
                        let (indices, scores) = within(std::time::Duration::from_secs(60), &what, move || {
                            shared.select(name, query_size, 5)
                        });
                        assert_valid_prefix(&indices, &scores, n, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn typiclust_returns_a_batch_larger_than_the_cluster_cap() {
    // B = 600 > 500 clusters (the cap): the least covered clusters give more than one pick each.
    let (embeddings, _, _) = blobs(10, 100, 8, 5.0, 500);
    let pool = std::sync::Arc::new(Pool::new(embeddings, 8));
    let shared = pool.clone();
    let (indices, scores) =
        within(std::time::Duration::from_secs(120), "typiclust B = 600", move || shared.select("typiclust", 600, 3));
    assert_eq!(indices.len(), 600);
    assert_valid_prefix(&indices, &scores, pool.n(), "typiclust B = 600");
}

#[test]
fn coreset_scores_copies_of_nearly_equal_labelled_rows_exactly_zero() {
    // Labelled rows around 1e3 that differ by ~1e-3: the f32 expansion ||c||² − 2 x·c cannot
    // tell them apart (its rounding is ~1e-1), so only an exact check finds each copy's own row.
    let (l, d, distinct) = (40, 16, 20);
    let mut rng = fastrand::Rng::with_seed(18);
    let base: Vec<f32> = (0..d).map(|j| 1000.0 + j as f32 * 7.25).collect();
    let labelled: Vec<f32> =
        (0..l).flat_map(|_| base.iter().map(|b| b + (rng.f32() - 0.5) * 2e-3).collect::<Vec<_>>()).collect();
    let far: Vec<f32> =
        (0..distinct).flat_map(|_| base.iter().map(|b| b + (rng.f32() - 0.5) * 0.5).collect::<Vec<_>>()).collect();
    // Pool: the distinct rows interleaved with a copy of every labelled row.
    let mut embeddings = Vec::new();
    let mut is_copy = Vec::new();
    for i in 0..l.max(distinct) {
        if i < l {
            embeddings.extend_from_slice(&labelled[i * d..(i + 1) * d]);
            is_copy.push(true);
        }
        if i < distinct {
            embeddings.extend_from_slice(&far[i * d..(i + 1) * d]);
            is_copy.push(false);
        }
    }
    let pool = Pool::new(embeddings, d).with_labelled(labelled);
    let (indices, scores) = pool.select("coreset", pool.n(), 0);
    assert_permutation(&indices, pool.n(), "coreset near ties");
    for (slot, (&pick, &score)) in indices.iter().zip(&scores).enumerate() {
        if slot < distinct {
            assert!(!is_copy[pick as usize] && score > 0.0, "pick {slot}: {pick} scored {score}: a distinct row first");
        } else {
            assert!(is_copy[pick as usize] && score == 0.0, "pick {slot}: {pick} scored {score}: a copy at exactly 0");
        }
    }
}

#[test]
fn typiclust_picks_the_same_after_scaling_by_a_power_of_two_past_the_rescaling_limit() {
    // ×2^40 takes the values past 2^32, where TypiClust scales them back down by a power of two:
    // the same picks, typicality in the new units (×2^-40), on both the exact and projected paths.
    for d in [8, 300] {
        let (embeddings, _, _) = blobs(6, 40, d, 2.0, 600);
        let labelled: Vec<f32> = embeddings[..2 * d].iter().map(|x| x + 0.5).collect();
        let factor = 2f32.powi(40);
        let scaled = |rows: &[f32]| rows.iter().map(|x| x * factor).collect::<Vec<f32>>();
        let small = Pool::new(embeddings.clone(), d).with_labelled(labelled.clone());
        let large = Pool::new(scaled(&embeddings), d).with_labelled(scaled(&labelled));
        let (indices, scores) = small.select("typiclust", 12, 9);
        let (large_indices, large_scores) = large.select("typiclust", 12, 9);
        assert_eq!(indices, large_indices, "D = {d}");
        let converted: Vec<f32> = scores.iter().map(|s| s / factor).collect();
        assert_eq!(converted, large_scores, "D = {d}");
    }
}
