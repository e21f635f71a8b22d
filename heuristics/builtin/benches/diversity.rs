//! Benchmark: the embedding-based batch heuristics (`typiclust`, `coreset`, `badge`) at
//! N = 100,000 with D = 512 and D = 4,096 and query sizes 20 and 200, next to the per-sample
//! `bald` and `entropy` on the same N (C = 10, K = 20), in one run. Prints a Markdown table of
//! medians, the ratio to `bald` and the median time of each stage (the largest marked), so the
//! dominant cost is visible.
//!
//! Run with `cargo bench -p alps-heuristics-builtin --bench diversity`. Optional arguments:
//! `N L` (labelled examples, default 100). Data are synthetic and seeded: embeddings are
//! Gaussian-like blobs (50 centers with per-dimension spread 2, samples with spread 1 around
//! them), probabilities random normalised vectors.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use alps_heuristic_abi::{Probabilities, ScoreHeuristic};
use alps_heuristics_builtin::{
    badge, coreset,
    score::{Bald, Entropy},
    stages::Stages,
    typiclust,
};
use common::random_probabilities;
use rayon::prelude::*;

mod common;

/// Blobs in the synthetic embeddings.
const CENTERS: usize = 50;
/// Repetitions after the warm-up for a call that took under a second, and over.
const REPEATS_FAST: usize = 5;
const REPEATS_SLOW: usize = 2;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, l) = match args[..] {
        [n, l, ..] => (n, l),
        [n] => (n, 100),
        _ => (100_000, 100),
    };
    let (c, k) = (10, 20);
    let probabilities = random_probabilities(n, c, k);
    let view = Probabilities::new(&probabilities, n, c, k).expect("probabilities shape");
    println!("N = {n}, L = {l}, C = {c}, K = {k}; {} rayon threads; medians", rayon::current_num_threads());
    let mut scores = vec![0.0f32; n];
    let (bald, _) = median(|| {
        Bald::score(view, 0, &mut scores).expect("bald");
        black_box(&scores);
        Stages::start()
    });
    let (entropy, _) = median(|| {
        Entropy::score(view, 0, &mut scores).expect("entropy");
        black_box(&scores);
        Stages::start()
    });

    println!();
    println!("| heuristic | D | query size | median | / bald | stages (median) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("| bald | - | - | {:.1} ms | 1.0x | |", ms(bald));
    println!("| entropy | - | - | {:.1} ms | {:.1}x | |", ms(entropy), ratio(entropy, bald));
    for d in [512, 4096] {
        let rows = blobs(n + l, d);
        let (pool, labelled) = rows.split_at(n * d);
        let classes: Vec<u32> = (0..l as u32).map(|i| i % c as u32).collect();
        let input =
            view.with_embeddings(pool, d).and_then(|v| v.with_labelled(labelled, &classes)).expect("embedding shapes");
        for query_size in [20, 200] {
            let mut indices = vec![0u32; query_size];
            let mut picked = vec![0.0f32; query_size];
            type Select = fn(Probabilities<'_>, &mut [u32], &mut [f32]) -> Stages;
            let heuristics: [(&str, Select); 3] = [
                ("typiclust", |input, i, s| typiclust::select_with_stages(input, 1, i, s).expect("typiclust")),
                ("coreset", |input, i, s| coreset::select_with_stages(input, i, s).expect("coreset")),
                ("badge", |input, i, s| badge::select_with_stages(input, 1, i, s).expect("badge")),
            ];
            for (name, select) in heuristics {
                let (total, stages) = median(|| select(input, &mut indices, &mut picked));
                println!(
                    "| {name} | {d} | {query_size} | {:.0} ms | {:.0}x | {} |",
                    ms(total),
                    ratio(total, bald),
                    describe(&stages)
                );
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Median total time and median time of each stage over the repetitions after a warm-up run
/// (fewer repetitions for a call that takes over a second).
fn median(mut run: impl FnMut() -> Stages) -> (Duration, Vec<(&'static str, Duration)>) {
    let start = Instant::now();
    run();
    let repeats = if start.elapsed() > Duration::from_secs(1) { REPEATS_SLOW } else { REPEATS_FAST };
    let mut totals = Vec::with_capacity(repeats);
    let mut stages: Vec<Vec<(&'static str, Duration)>> = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let run_stages = run();
        totals.push(start.elapsed());
        stages.push(run_stages.entries().to_vec());
    }
    totals.sort();
    let names: Vec<&'static str> = stages[0].iter().map(|(name, _)| *name).collect();
    let stage_medians = names
        .iter()
        .enumerate()
        .map(|(s, name)| {
            let mut times: Vec<Duration> = stages.iter().map(|run| run[s].1).collect();
            times.sort();
            (*name, times[times.len() / 2])
        })
        .collect();
    (totals[totals.len() / 2], stage_medians)
}

/// `stage a ms, **stage b ms**` with the largest in bold.
fn describe(stages: &[(&'static str, Duration)]) -> String {
    let largest = stages.iter().map(|(_, t)| *t).max().unwrap_or_default();
    stages
        .iter()
        .map(
            |(name, t)| {
                if *t == largest { format!("**{name} {:.0} ms**", ms(*t)) } else { format!("{name} {:.0} ms", ms(*t)) }
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` embeddings `[rows, d]` in [`CENTERS`] blobs: centers uniform with per-dimension standard
/// deviation 2, samples uniform noise of standard deviation 1 around a seeded center (uniform
/// rather than Gaussian noise only to generate 400 M values quickly).
fn blobs(rows: usize, d: usize) -> Vec<f32> {
    let spread = 3.0f32.sqrt();
    let mut rng = fastrand::Rng::with_seed(7);
    let centers: Vec<f32> = (0..CENTERS * d).map(|_| 2.0 * spread * (2.0 * rng.f32() - 1.0)).collect();
    let mut data = vec![0.0f32; rows * d];
    data.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        let mut rng = fastrand::Rng::with_seed(1_000 + i as u64);
        let center = &centers[rng.usize(..CENTERS) * d..][..d];
        for (x, &m) in row.iter_mut().zip(center) {
            *x = m + spread * (2.0 * rng.f32() - 1.0);
        }
    });
    data
}
