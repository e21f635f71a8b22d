//! Benchmark 1 of the inference engine: MC-Dropout throughput on VGG16 (3×224×224, K = 20,
//! CPU), side by side in one run: ALPS running the backbone once and the head K times, ALPS
//! replicating the batch K times (Baal's `replicate_in_memory` strategy), and Baal 2.1.0's
//! `ModelWrapper.predict_on_batch(..., iterations=K)` in Python on the same weights and input.
//!
//! Then the cost of the job-owned dropout generator against libtorch's shared one.
//!
//! Run with `make bench`. Optional arguments: `batch K repeats`.

use std::{hint::black_box, path::PathBuf, process::Command, time::Instant};

use alps_core::{
    models::McModel,
    projects::{Architecture, HeuristicChoice, ModelSpec, Preprocessing, ProjectSpec},
};
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (batch, k, repeats) = match args[..] {
        [batch, k, repeats, ..] => (batch, k, repeats),
        _ => (2, 20, 3),
    };
    let classes = 10;
    let spec = ProjectSpec {
        id: "bench".into(),
        display_name: String::new(),
        classes: (0..classes).map(|c| format!("c{c}")).collect(),
        model: ModelSpec {
            architecture: Architecture::Vgg16,
            weights_path: None,
            torchscript_path: None,
            head_dropout: 0.5,
            pretrained: None,
        },
        preprocessing: Preprocessing { width: 224, height: 224, channels: 3, mean: vec![0.0; 3], std: vec![1.0; 3] },
        mc_iterations: k as u32,
        default_heuristic: HeuristicChoice { name: "bald".into(), version: String::new() },
        acquisition_schedule: None,
    };
    let _no_grad = tch::no_grad_guard();
    tch::manual_seed(0);
    let model = McModel::load(&spec, &alps_core::models::files::ModelFiles::none(), Device::Cpu).expect("VGG16");
    let input = Tensor::rand([batch as i64, 3, 224, 224], (Kind::Float, Device::Cpu));
    println!(
        "VGG16, input [{batch}, 3, 224, 224], K = {k}, {classes} classes, CPU ({} libtorch threads), {repeats} repeats, medians",
        tch::get_num_threads()
    );

    let once = median(repeats, || {
        let features = model.features(&input).expect("features");
        let _probabilities = black_box(model.mc_probabilities(&features, k as i64).expect("head"));
    });
    let replicated = median(repeats, || {
        let _probabilities = black_box(model.mc_probabilities_replicated(&input, k as i64).expect("replicated"));
    });
    let baal = baal(&model, &input, batch, classes, k, repeats);

    println!();
    println!("| strategy | s / batch | images / s | vs Baal |");
    println!("| --- | --- | --- | --- |");
    for (name, seconds) in [
        ("ALPS: backbone once, head K times", once),
        ("ALPS: batch replicated K times", replicated),
        ("Baal 2.1.0 predict_on_batch (replicates K times)", baal),
    ] {
        println!("| {name} | {seconds:.2} | {:.2} | {:.1}x |", batch as f64 / seconds, baal / seconds);
    }
    dropout_masks(repeats.max(5));
}

/// The cost of drawing dropout masks from a job's own generator (counter-based, ALPS) against
/// libtorch's shared generator (`Tensor::dropout`), on head inputs `[B·K, D]`: 64 samples × K = 20
/// for the feature sizes of the built-in heads.
fn dropout_masks(repeats: usize) {
    println!();
    println!("Dropout masks on [1280, D] (64 samples x K = 20), CPU, {repeats} repeats, medians:");
    println!();
    println!("| D | libtorch generator, ms | job generator, ms | ratio |");
    println!("| --- | --- | --- | --- |");
    for d in [128, 512, 4096] {
        let x = Tensor::rand([1280, d], (Kind::Float, Device::Cpu));
        let shared = median(repeats, || {
            let _masked = black_box(x.dropout(0.5, true));
        });
        let mut generator = alps_core::models::random::Generator::new(1);
        let own = median(repeats, || {
            let _masked = black_box(generator.dropout(&x, 0.5).expect("dropout"));
        });
        println!("| {d} | {:.2} | {:.2} | {:.2}x |", shared * 1e3, own * 1e3, own / shared);
    }
}

fn median(repeats: usize, mut run: impl FnMut()) -> f64 {
    run(); // warm-up
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Writes the weights and the input, runs `baal_mc_dropout.py` in the project venv.
fn baal(model: &McModel, input: &Tensor, batch: usize, classes: usize, k: usize, repeats: usize) -> f64 {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("alps-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (weights, data) = (dir.join("vgg16.safetensors"), dir.join("input.f32"));
    model.save(&weights).expect("save weights");
    let values = Vec::<f32>::try_from(input.view([-1])).expect("input values");
    std::fs::write(&data, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).expect("write input");
    let output = Command::new(manifest.join("../.venv/bin/python"))
        .arg(manifest.join("benches/baal_mc_dropout.py"))
        .args(["--weights", weights.to_str().expect("utf-8"), "--input", data.to_str().expect("utf-8")])
        .args(["--batch", &batch.to_string(), "--classes", &classes.to_string()])
        .args(["--iterations", &k.to_string(), "--repeats", &repeats.to_string()])
        .output()
        .expect("run the venv's python (make bench installs Baal)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "Baal benchmark failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON from Baal");
    result["median_s"].as_f64().expect("median")
}
