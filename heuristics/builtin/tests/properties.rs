//! Property tests of the built-in heuristics through the plugin ABI: every input the host can
//! pass (probabilities `[N, C, K]` in `[0, 1]`, columns summing to 1 within the host's 1e-3
//! tolerance, exact zeros and one-hots) gives finite scores of length N, and selections of
//! distinct in-range indices; shapes and query sizes outside the contract are refused, never a
//! panic.

mod common;

use alps_heuristic_abi::{ErrorBuffer, ProbabilitiesRaw, Status};
use common::{heuristic, score, select};
use proptest::prelude::*;

const SCORE: [&str; 6] = ["bald", "entropy", "variance", "margin", "least_confidence", "random"];
const BATCH: [&str; 2] = ["power_bald", "batch_bald"];

/// The host's tolerance on `|Σ_c P - 1|` (core/src/plugins/input.rs).
const SUM_TOLERANCE: f32 = 1e-3;

/// `[N, C, K]` probabilities as the host accepts them: per `(n, k)` column random weights (a
/// third of them exactly 0), normalised, then scaled by up to the host's tolerance.
fn host_valid() -> impl Strategy<Value = (Vec<f32>, [usize; 3])> {
    (1usize..16, 2usize..6, 1usize..6).prop_flat_map(|(n, c, k)| {
        let weights = proptest::collection::vec(prop_oneof![2 => 0.0f32..1.0, 1 => Just(0.0f32)], n * c * k);
        let scales = proptest::collection::vec(-0.9 * SUM_TOLERANCE..0.9 * SUM_TOLERANCE, n * k);
        (weights, scales).prop_map(move |(mut data, scales)| {
            for (s, sample) in data.chunks_exact_mut(c * k).enumerate() {
                for t in 0..k {
                    let index = |class: usize| class * k + t;
                    let total: f32 = (0..c).map(|class| sample[index(class)]).sum();
                    for class in 0..c {
                        let p = if total > 0.0 { sample[index(class)] / total } else { f32::from(class == 0) };
                        sample[index(class)] = (p * (1.0 + scales[s * k + t])).min(1.0);
                    }
                }
            }
            (data, [n, c, k])
        })
    })
}

/// Calls score heuristic `name` without asserting the status: (status, scores).
fn raw_score(name: &str, data: &[f32], n: usize, c: usize, k: usize) -> (i32, Vec<f32>) {
    let score = heuristic(name).score.unwrap();
    let mut scores = vec![f32::NAN; n.min(1 << 16)];
    let mut message = vec![0u8; 512];
    let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
    let raw = ProbabilitiesRaw::probabilities(data.as_ptr(), n, c, k);
    // SAFETY: `data` holds at least `n·c·k` values whenever that product is nonzero and fits
    // (callers guarantee it; otherwise the trampoline refuses the shape before reading), and
    // `scores` has room for `n` values.
    let status = unsafe { score(&raw, 0, scores.as_mut_ptr(), &mut error) };
    (status, scores)
}

/// Calls batch heuristic `name` without asserting the status.
fn raw_select(name: &str, data: &[f32], shape: [usize; 3], query_size: usize) -> i32 {
    let select = heuristic(name).select.unwrap();
    let slots = query_size.clamp(1, 64);
    let (mut indices, mut scores) = (vec![u32::MAX; slots], vec![f32::NAN; slots]);
    let mut message = vec![0u8; 512];
    let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
    let raw = ProbabilitiesRaw::probabilities(data.as_ptr(), shape[0], shape[1], shape[2]);
    // SAFETY: valid input of `shape`; the trampoline refuses a query size over N (and over the
    // 64 slots, since N <= 16 here) before writing.
    unsafe { select(&raw, query_size, 0, indices.as_mut_ptr(), scores.as_mut_ptr(), &mut error) }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

    #[test]
    fn score_heuristics_give_n_finite_scores((data, shape) in host_valid(), seed in any::<u64>()) {
        for name in SCORE {
            let scores = score(name, &data, shape, seed);
            prop_assert_eq!(scores.len(), shape[0], "{}", name);
            prop_assert!(scores.iter().all(|s| s.is_finite()), "{}: {:?}", name, scores);
        }
    }

    #[test]
    fn batch_heuristics_select_distinct_in_range_indices(
        (data, shape) in host_valid(),
        query in any::<proptest::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let query_size = 1 + query.index(shape[0]);
        for name in BATCH {
            let (indices, scores) = select(name, &data, shape, query_size, seed);
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), query_size, "{}: {:?}", name, indices);
            prop_assert!(indices.iter().all(|&i| (i as usize) < shape[0]), "{}: {:?}", name, indices);
            prop_assert!(scores.iter().all(|s| s.is_finite()), "{}: {:?}", name, scores);
        }
    }

    /// Shapes with a zero dimension or whose `N·C·K` overflows are refused before any value is
    /// read.
    #[test]
    fn empty_or_overflowing_shapes_are_refused(
        (n, c, k) in (0usize..4, 0usize..4, 0usize..4),
        huge in any::<bool>(),
    ) {
        let (n, c, k) = if huge { (usize::MAX / 2 + n, c.max(2), k.max(2)) } else { (n, c, k) };
        prop_assume!(huge || n * c * k == 0);
        let data = [0.5f32; 4];
        for name in SCORE {
            prop_assert_eq!(raw_score(name, &data, n, c, k).0, Status::InvalidInput as i32, "{}", name);
        }
        for name in BATCH {
            prop_assert_eq!(raw_select(name, &data, [n, c, k], 1), Status::InvalidInput as i32, "{}", name);
        }
    }

    /// A query size of 0 or over N is refused (the host clamps before calling).
    #[test]
    fn query_sizes_outside_one_to_n_are_refused(
        (data, shape) in host_valid(),
        over in 1usize..4,
        zero in any::<bool>(),
    ) {
        let query_size = if zero { 0 } else { shape[0] + over };
        for name in BATCH {
            prop_assert_eq!(raw_select(name, &data, shape, query_size), Status::InvalidInput as i32, "{}", name);
        }
    }
}
