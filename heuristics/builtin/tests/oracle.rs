//! The built-in per-sample heuristics against Baal 2.1.0 (`baal.active.heuristics`), the
//! reference implementation: `oracle/make_fixture.py` ran Baal on fixed inputs (Dirichlet
//! probabilities of several shapes, near-ties, near-one-hot with exact zeros, K = 1, C = 2) and
//! wrote `oracle/baal_2_1_0.json`. Scores must agree within 1e-5 relative.

mod common;

use common::score;
use serde_json::Value;

/// Relative tolerance against Baal (issue: "within 1e-5 relative").
const RELATIVE: f64 = 1e-5;
/// Absolute floor for values that are exactly 0 in Baal (e.g. BALD at K = 1): our f64 sums in a
/// different order can leave ~1e-16, which no relative tolerance accepts.
const ABSOLUTE: f64 = 1e-9;

fn fixture() -> Value {
    let text = include_str!("../oracle/baal_2_1_0.json");
    serde_json::from_str(text).expect("valid fixture")
}

fn as_f64s(value: &Value) -> Vec<f64> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect()
}

fn assert_close(case: &str, heuristic: &str, got: &[f32], want: &[f64], relative: f64) {
    assert_eq!(got.len(), want.len(), "{case}/{heuristic}: length");
    for (i, (&got, &want)) in got.iter().zip(want).enumerate() {
        let error = (f64::from(got) - want).abs();
        assert!(
            error <= relative * want.abs() + ABSOLUTE,
            "{case}/{heuristic}[{i}]: got {got}, Baal {want} (error {error:e})"
        );
    }
}

#[test]
fn fixture_was_generated_by_baal_2_1_0_and_covers_the_edge_cases() {
    let fixture = fixture();
    assert_eq!(fixture["baal_version"], "2.1.0");
    let names: Vec<&str> = fixture["cases"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for required in ["near_ties", "near_one_hot", "k_equals_1", "c_equals_2"] {
        assert!(names.contains(&required), "{required} missing from {names:?}");
    }
}

#[test]
fn per_sample_scores_match_baal() {
    for case in fixture()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let shape = [shape[0], shape[1], shape[2]];
        let probabilities: Vec<f32> = as_f64s(&case["probabilities"]).into_iter().map(|p| p as f32).collect();
        for heuristic in ["bald", "entropy", "variance", "margin", "least_confidence"] {
            let got = score(heuristic, &probabilities, shape, 0);
            assert_close(name, heuristic, &got, &as_f64s(&case["expected"][heuristic]), RELATIVE);
        }
    }
}

/// Baal's `Entropy` renormalises the mean probabilities (`scipy.stats.entropy` divides by their
/// sum) while the spec's `H(pbar)` does not; on f32 inputs whose columns sum to 1 ± 1e-7 the two
/// differ by up to 7e-6 relative (near-one-hot case). We implement the spec, so against the
/// spec's own value (computed in f64 by the fixture script) we hold a 10x tighter tolerance.
#[test]
fn entropy_matches_the_spec_formula_tightly() {
    for case in fixture()["cases"].as_array().unwrap() {
        let Some(spec) = case.get("spec").and_then(|s| s.get("entropy")) else { continue };
        let name = case["name"].as_str().unwrap();
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let probabilities: Vec<f32> = as_f64s(&case["probabilities"]).into_iter().map(|p| p as f32).collect();
        let got = score("entropy", &probabilities, [shape[0], shape[1], shape[2]], 0);
        assert_close(name, "entropy (spec)", &got, &as_f64s(spec), RELATIVE / 10.0);
    }
}
