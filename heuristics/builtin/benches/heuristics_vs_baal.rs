//! Benchmark: the built-in BALD, entropy and margin through the plugin ABI vs Baal 2.1.0
//! (numpy) on the same `[N, C, K]` array in the same run, and the machine's memory-read
//! bandwidth on an array of that size as the physical limit (issue "Heuristic plugins").
//!
//! Run with `make bench` (needs `scripts/requirements-bench.txt` in `.venv`). Prints a Markdown
//! table of medians and ratios for BENCHMARKS.md. Optional arguments: `N C K repeats`.

use std::{
    ffi::CStr,
    hint::black_box,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use alps_heuristic_abi::{ErrorBuffer, HeuristicDescriptor, ProbabilitiesRaw, Status};

mod common;
use rayon::prelude::*;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, c, k, repeats) = match args[..] {
        [n, c, k, repeats, ..] => (n, c, k, repeats),
        _ => (100_000, 10, 20, 7),
    };
    let data = common::random_probabilities(n, c, k);
    let bytes = data.len() * 4;
    println!("array [N={n}, C={c}, K={k}] f32 = {:.1} MB; {repeats} repeats, medians", bytes as f64 / 1e6);

    let read = median(repeats, || {
        black_box(data.par_chunks(64 * 1024).map(|chunk| chunk.iter().sum::<f32>()).sum::<f32>());
    });
    let baal = baal_medians(&data, [n, c, k], repeats);

    println!();
    println!("| heuristic | ALPS (plugin ABI) | Baal 2.1.0 | speed-up vs Baal | ALPS / memory read |");
    println!("| --- | --- | --- | --- | --- |");
    for name in ["bald", "entropy", "margin"] {
        let alps = median(repeats, || {
            black_box(score(name, &data, [n, c, k]));
        });
        let baal = baal[name].as_f64().map(Duration::from_secs_f64).expect("Baal timing");
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1}x | {:.1}x |",
            ms(alps),
            ms(baal),
            baal.as_secs_f64() / alps.as_secs_f64(),
            alps.as_secs_f64() / read.as_secs_f64()
        );
    }
    println!();
    println!(
        "memory read of the array ({} threads): {:.1} ms = {:.1} GB/s",
        rayon::current_num_threads(),
        ms(read),
        bytes as f64 / read.as_secs_f64() / 1e9
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(repeats: usize, mut run: impl FnMut()) -> Duration {
    run(); // warm-up
    let mut times: Vec<Duration> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn descriptor(name: &str) -> &'static HeuristicDescriptor {
    // SAFETY: the entry symbol returns the plugin's static descriptor and its static array.
    let plugin = unsafe { &*alps_heuristics_builtin::alps_heuristic_plugin() };
    // SAFETY: as above.
    let all = unsafe { std::slice::from_raw_parts(plugin.heuristics, plugin.heuristic_count) };
    // SAFETY: names are static NUL-terminated strings.
    all.iter().find(|h| unsafe { CStr::from_ptr(h.name) }.to_str() == Ok(name)).expect("built-in heuristic")
}

/// Scores through the extern "C" function of the plugin descriptor, as the host does.
fn score(name: &str, data: &[f32], [n, c, k]: [usize; 3]) -> Vec<f32> {
    let function = descriptor(name).score.expect("score heuristic");
    let mut scores = vec![0.0f32; n];
    let mut message = [0u8; 256];
    let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
    let input = ProbabilitiesRaw::probabilities(data.as_ptr(), n, c, k);
    // SAFETY: valid input, N writable scores, a valid error buffer.
    let status = unsafe { function(&input, 0, scores.as_mut_ptr(), &mut error) };
    assert_eq!(status, Status::Ok as i32);
    scores
}

/// Runs `baal_heuristics.py` in the project venv on the same array.
fn baal_medians(data: &[f32], [n, c, k]: [usize; 3], repeats: usize) -> serde_json::Value {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = manifest.join("../../.venv/bin/python");
    let input = std::env::temp_dir().join(format!("alps-bench-{}.f32", std::process::id()));
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).expect("write the array for Baal");
    let output = Command::new(&python)
        .arg(manifest.join("benches/baal_heuristics.py"))
        .arg("--input")
        .arg(&input)
        .args(["--shape", &n.to_string(), &c.to_string(), &k.to_string(), "--repeats", &repeats.to_string()])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error} (run `make bench`)", python.display()));
    let _ = std::fs::remove_file(&input);
    assert!(output.status.success(), "Baal benchmark failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON medians from Baal")
}
