//! User TorchScript models exported by `scripts/export_torchscript.py`: a built-in model and the
//! same weights exported to TorchScript give the same output; forward-only modules fall back to
//! replicating the batch; a module with the wrong number of classes is refused at creation.

use std::path::Path;

use alps_proto::v1::{
    Architecture, CreateProjectRequest, ModelSpec, PredictRequest, Preprocessing, Project, Sample, Tensor,
    inference_service_client::InferenceServiceClient, predict_result::Outcome,
    project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{
    ServerDirs, builtin_plugin, export_torchvision_resnet18, install_plugin, start_server, venv_python,
};
use tonic::{Code, transport::Channel};

/// Runs Python from the project venv (created by `scripts/bootstrap.sh`, which `make test` runs).
fn project(id: &str, architecture: Architecture, torchscript: &Path, weights: &Path, classes: usize) -> Project {
    let (torchscript_path, weights_path) = if architecture == Architecture::Torchscript {
        (torchscript.display().to_string(), String::new())
    } else {
        (String::new(), weights.display().to_string())
    };
    Project {
        id: id.into(),
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        model: Some(ModelSpec {
            architecture: architecture as i32,
            weights_path,
            torchscript_path,
            head_dropout: Some(0.0),
            ..Default::default()
        }),
        preprocessing: Some(Preprocessing { width: 16, height: 16, channels: 3, ..Default::default() }),
        mc_iterations: 3,
        ..Default::default()
    }
}

fn samples() -> Vec<Sample> {
    (0..4)
        .map(|i| {
            let data = (0..3 * 16 * 16).map(|j| ((i * 7 + j) % 13) as f32 / 13.0).collect();
            Sample { id: i.to_string(), input: Some(Input::Tensor(Tensor { shape: vec![3, 16, 16], data })) }
        })
        .collect()
}

async fn mean_probabilities(client: &mut InferenceServiceClient<Channel>, project: &str) -> Vec<Vec<f32>> {
    let request = PredictRequest {
        project_id: project.into(),
        samples: samples(),
        return_mc_samples: true,
        ..Default::default()
    };
    let response = client.predict(request).await.unwrap().into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(Outcome::Prediction(p)) => {
                // Without dropout every pass is the same.
                let samples = p.mc_samples.unwrap();
                for class in samples.data.chunks(3) {
                    assert!(class.iter().all(|&v| (v - class[0]).abs() < 1e-6), "{class:?}");
                }
                p.mean_probabilities
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Exports ALPS's `small_cnn` for 3×16×16 inputs and `classes` classes as TorchScript at
/// `script`, with `dropout` in the head; `weights` is loaded, or written with random ones.
fn export_small_cnn(classes: u32, dropout: &str, weights: &Path, script: &Path) {
    let classes = classes.to_string();
    venv_python(&[
        "scripts/export_torchscript.py",
        "--alps",
        "small_cnn",
        "--input",
        "3",
        "16",
        "16",
        "--classes",
        &classes,
        "--dropout",
        dropout,
        "--safetensors",
        weights.to_str().unwrap(),
        "--out",
        script.to_str().unwrap(),
    ]);
}

/// A server with the built-in plugin, and clients for it.
struct Server {
    _dirs: ServerDirs,
    process: alps_system_tests::Process,
    projects: ProjectServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
}

impl Server {
    /// Model files named by projects must lie in `model_root` (`--model-root`).
    async fn start(model_root: &Path) -> Self {
        let dirs = ServerDirs::new();
        install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
        let (process, grpc) = start_server(&dirs, &["--model-root", model_root.to_str().unwrap()]);
        let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        Self {
            _dirs: dirs,
            process,
            projects: ProjectServiceClient::new(channel.clone()),
            inference: InferenceServiceClient::new(channel),
        }
    }

    /// Creates `project` and returns the mean probabilities of [`samples`] under it.
    async fn create_and_predict(&mut self, project: Project) -> Vec<Vec<f32>> {
        let id = project.id.clone();
        self.projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
        mean_probabilities(&mut self.inference, &id).await
    }
}

/// Every probability of `a` within 1e-5 of `b`'s.
fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (x, y) in a.iter().zip(b) {
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "differ by {worst}: {x:?} vs {y:?}");
    }
}

#[tokio::test]
async fn a_builtin_model_and_its_torchscript_export_agree() {
    let files = tempfile::tempdir().unwrap();
    let (weights, script) = (files.path().join("w.safetensors"), files.path().join("small_cnn.pt"));
    export_small_cnn(3, "0", &weights, &script);
    let mut server = Server::start(files.path()).await;
    let builtin = server.create_and_predict(project("builtin", Architecture::SmallCnn, &script, &weights, 3)).await;
    let exported = server.create_and_predict(project("script", Architecture::Torchscript, &script, &weights, 3)).await;
    assert_close(&builtin, &exported);

    // The same export for two classes does not fit a three-class project: refused at creation.
    let two = files.path().join("two.pt");
    export_small_cnn(2, "0.5", &files.path().join("w2.safetensors"), &two);
    let request =
        CreateProjectRequest { project: Some(project("wrong", Architecture::Torchscript, &two, &weights, 3)) };
    let error = server.projects.create_project(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("[1, 3]"), "{}", error.message());
}

#[tokio::test]
async fn a_forward_only_module_is_served_by_replicating_the_batch() {
    let files = tempfile::tempdir().unwrap();
    let script = files.path().join("forward.pt");
    let code = format!(
        "import torch; m = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(768, 2)); torch.jit.script(m).save({:?})",
        script.display().to_string()
    );
    venv_python(&["-c", &code]);
    let mut server = Server::start(files.path()).await;
    let means = server.create_and_predict(project("fwd", Architecture::Torchscript, &script, &script, 2)).await;
    assert_eq!(means.len(), 4);
    assert!(means.iter().all(|m| m.len() == 2 && (m.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    // Its parameters count against the model cache: 768 x 2 weights and 2 biases, f32.
    let loaded = server.process.wait_for_log("model loaded");
    assert_eq!(loaded["bytes"], (768 * 2 + 2) * 4, "{loaded}");
}

#[tokio::test]
async fn builtin_resnet18_matches_torchvision_with_converted_weights() {
    // torchvision's ResNet-18 with seeded random weights (nothing is downloaded), saved as a
    // state_dict, converted for the built-in, and exported to TorchScript from the same file.
    let files = tempfile::tempdir().unwrap();
    let (pth, weights, script) =
        (files.path().join("r18.pth"), files.path().join("r18.safetensors"), files.path().join("r18.pt"));
    let code = format!(
        "import torch, torchvision; torch.manual_seed(0); m = torchvision.models.resnet18(weights=None); \
         [(b.running_mean.uniform_(-0.1, 0.1), b.running_var.uniform_(0.5, 1.5)) for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]; \
         torch.save(m.state_dict(), {:?})",
        pth.display().to_string()
    );
    venv_python(&["-c", &code]);
    venv_python(&["scripts/convert_torchvision.py", pth.to_str().unwrap(), weights.to_str().unwrap()]);
    export_torchvision_resnet18(&pth, &script);
    let mut server = Server::start(files.path()).await;
    let builtin = server.create_and_predict(project("builtin", Architecture::Resnet18, &script, &weights, 1000)).await;
    let torchvision =
        server.create_and_predict(project("tv", Architecture::Torchscript, &script, &weights, 1000)).await;
    assert_close(&builtin, &torchvision);
}
