//! A project's untrained model is a function of its spec: the same spec builds the same random
//! parameters, whatever libtorch's generator did before. Its own test binary (process), because
//! the generator is process-wide: unit tests drawing from it on other threads would interleave.

use alps_core::{
    models::{McModel, files::ModelFiles},
    projects::{Architecture, HeuristicChoice, ModelSpec, Preprocessing, ProjectSpec},
};
use tch::{Device, Kind, Tensor};

fn spec(classes: usize) -> ProjectSpec {
    ProjectSpec {
        id: "p".into(),
        display_name: String::new(),
        classes: (0..classes).map(|c| format!("c{c}")).collect(),
        model: ModelSpec {
            architecture: Architecture::Mlp,
            weights_path: None,
            torchscript_path: None,
            head_dropout: 0.5,
            pretrained: None,
        },
        preprocessing: Preprocessing { width: 8, height: 8, channels: 1, mean: vec![0.0], std: vec![1.0] },
        mc_iterations: 10,
        default_heuristic: HeuristicChoice { name: "bald".into(), version: String::new() },
        acquisition_schedule: None,
    }
}

/// Every parameter of the model `spec` builds, by name.
fn parameters(spec: &ProjectSpec) -> Vec<(String, Tensor)> {
    // Whatever the generator did before, the same spec must build the same parameters.
    let _ = Tensor::rand([7], (Kind::Float, Device::Cpu));
    let model = McModel::load(spec, &ModelFiles::none(), Device::Cpu).unwrap();
    let mut named: Vec<(String, Tensor)> = model.variables().expect("built-in").variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

#[test]
fn the_initial_weights_are_a_function_of_the_spec() {
    let first = parameters(&spec(2));
    let again = parameters(&spec(2));
    assert!(first.iter().zip(&again).all(|((a, x), (b, y))| a == b && x.equal(y)), "same spec, same weights");
    let other = parameters(&spec(3));
    let differs = other.iter().zip(&first).any(|((_, x), (_, y))| x.size() == y.size() && !x.equal(y));
    assert!(differs, "another spec draws other parameters");
}
