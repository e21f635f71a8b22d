//! Published pretrained weights (`pretrained: PRETRAINED_WEIGHTS_IMAGENET`) from a mirror.
//!
//! Nothing here reaches the internet: the test venv's torchvision writes a ResNet-18 state dict
//! with seeded random weights in torchvision's file format, a local HTTP server (or a local
//! directory) serves it under the published file name, and `--weights-pin` pins its sha256 in
//! place of the published one. The built-in ResNet-18 on those weights must agree with
//! torchvision's own model exported to TorchScript from the same file.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
};

use alps_proto::v1::{
    Architecture, CreateProjectRequest, ModelSpec, PredictRequest, Preprocessing, PretrainedWeights, Project, Sample,
    Tensor, UpdateProjectRequest, inference_service_client::InferenceServiceClient, predict_result::Outcome,
    project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{
    Process, ServerDirs, builtin_plugin, eventually, export_torchvision_resnet18, http_client, install_plugin,
    path_str, start_server, venv_python,
};
use axum::{extract::State, http::StatusCode, response::IntoResponse};
use sha2::{Digest, Sha256};
use tonic::{Code, transport::Channel};

/// The published name the server asks the mirror for.
const FILE: &str = "resnet18-f37072fd.pth";
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Files the venv writes once for every test of this binary.
struct Files {
    dir: tempfile::TempDir,
    /// torchvision's zip format (`torch.save`'s default).
    zip: Vec<u8>,
    /// The same state dict in the legacy (pre-1.6) format, as torchvision's older files are.
    legacy: Vec<u8>,
}

impl Files {
    /// torchvision's ResNet-18 with its weights exported to TorchScript (1000 classes, no
    /// dropout, 3×16×16 input).
    fn torchscript(&self) -> PathBuf {
        self.dir.path().join("r18.pt")
    }
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (zip, legacy) = (dir.path().join("r18.pth"), dir.path().join("r18-legacy.pth"));
        let code = format!(
            "import torch, torchvision; torch.manual_seed(0); m = torchvision.models.resnet18(weights=None); \
             [(b.running_mean.uniform_(-0.1, 0.1), b.running_var.uniform_(0.5, 1.5)) for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]; \
             torch.save(m.state_dict(), {zip:?}); \
             torch.save(m.state_dict(), {legacy:?}, _use_new_zipfile_serialization=False)",
            zip = path_str(&zip),
            legacy = path_str(&legacy),
        );
        venv_python(&["-c", &code]);
        export_torchvision_resnet18(&zip, &dir.path().join("r18.pt"));
        Files { zip: std::fs::read(&zip).unwrap(), legacy: std::fs::read(&legacy).unwrap(), dir }
    })
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the mirror does with a request for [`FILE`].
const SERVE: u8 = 0;
const DOWN: u8 = 1;
const OTHER_BYTES: u8 = 2;

/// A local HTTP mirror serving `file` as `/models/resnet18-f37072fd.pth`, switchable between
/// serving it, answering 503, and serving other bytes; it counts the requests for the file.
#[derive(Clone)]
struct Mirror {
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicUsize>,
    file: Arc<Vec<u8>>,
}

impl Mirror {
    async fn start(file: Vec<u8>) -> (Self, SocketAddr) {
        let mirror = Self { mode: Arc::new(AtomicU8::new(SERVE)), requests: Arc::default(), file: Arc::new(file) };
        let app = axum::Router::new().route("/models/{name}", axum::routing::get(serve)).with_state(mirror.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (mirror, addr)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    State(mirror): State<Mirror>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> axum::response::Response {
    if name != FILE {
        return StatusCode::NOT_FOUND.into_response();
    }
    mirror.requests.fetch_add(1, Ordering::SeqCst);
    match mirror.mode.load(Ordering::SeqCst) {
        SERVE => mirror.file.as_ref().clone().into_response(),
        DOWN => (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response(),
        _ => b"<html>not the weights</html>".to_vec().into_response(),
    }
}

struct Server {
    dirs: ServerDirs,
    process: alps_system_tests::Process,
    grpc: String,
    projects: ProjectServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
}

impl Server {
    /// A server fetching from `mirror` with the test file's digest pinned; model files (the
    /// TorchScript export) come from the test files' directory.
    async fn start(dirs: ServerDirs, mirror: &str, pinned: &str) -> Self {
        install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
        let pin = format!("resnet18={pinned}");
        let model_root = path_str(files().dir.path());
        let args = [
            "--weights-mirror",
            mirror,
            "--weights-pin",
            &pin,
            "--model-root",
            model_root,
            "--shutdown-grace-secs",
            "1",
        ];
        let (process, grpc) = start_server(&dirs, &args);
        let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        Self {
            dirs,
            process,
            grpc,
            projects: ProjectServiceClient::new(channel.clone()),
            inference: InferenceServiceClient::new(channel),
        }
    }

    fn cache(&self) -> Vec<String> {
        let dir = self.dirs.data.path().join("weights-cache");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn create(&mut self, project: Project) -> Result<Project, tonic::Status> {
        let response = self.projects.create_project(CreateProjectRequest { project: Some(project) }).await?;
        Ok(response.into_inner().project.unwrap())
    }

    /// Mean probabilities of [`samples`] under project `id`.
    async fn predict(&mut self, id: &str) -> Vec<Vec<f32>> {
        let request = PredictRequest { project_id: id.into(), samples: samples(), ..Default::default() };
        let response = self.inference.predict(request).await.unwrap().into_inner();
        response
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(Outcome::Prediction(p)) => p.mean_probabilities,
                other => panic!("{other:?}"),
            })
            .collect()
    }
}

/// A ResNet-18 project on ImageNet weights: 1000 classes (so the file's classifier is used), no
/// dropout, 16×16 input, mean and std left for the server to fill in.
fn pretrained(id: &str) -> Project {
    Project {
        id: id.into(),
        classes: (0..1000).map(|c| format!("class{c}")).collect(),
        model: Some(ModelSpec {
            architecture: Architecture::Resnet18 as i32,
            pretrained: PretrainedWeights::Imagenet as i32,
            head_dropout: Some(0.0),
            ..Default::default()
        }),
        preprocessing: Some(Preprocessing { width: 16, height: 16, ..Default::default() }),
        mc_iterations: 2,
        ..Default::default()
    }
}

/// torchvision's model with the same weights, as TorchScript.
fn torchvision(id: &str) -> Project {
    let mut project = pretrained(id);
    project.model = Some(ModelSpec {
        architecture: Architecture::Torchscript as i32,
        torchscript_path: path_str(&files().torchscript()).into(),
        head_dropout: Some(0.0),
        ..Default::default()
    });
    project
}

/// Raw model inputs (tensors skip image preprocessing, so mean and std do not enter).
fn samples() -> Vec<Sample> {
    (0..4)
        .map(|i| {
            let data = (0..3 * 16 * 16).map(|j| ((i * 7 + j) % 13) as f32 / 13.0 - 0.5).collect();
            Sample { id: i.to_string(), input: Some(Input::Tensor(Tensor { shape: vec![3, 16, 16], data })) }
        })
        .collect()
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "differ by {worst}");
    }
}

#[tokio::test]
async fn imagenet_weights_from_an_http_mirror_match_torchvision_are_verified_and_fetched_once() {
    let files = files();
    let digest = sha256(&files.zip);
    let (mirror, addr) = Mirror::start(files.zip.clone()).await;
    let base = format!("http://{addr}/models");
    let url = format!("{base}/{FILE}");
    let mut server = Server::start(ServerDirs::new(), &base, &digest).await;

    // A mirror that is down: UNAVAILABLE naming the URL, nothing cached.
    mirror.set(DOWN);
    let error = server.create(pretrained("r18")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains(&url) && error.message().contains("503"), "{}", error.message());
    assert!(server.cache().is_empty(), "{:?}", server.cache());
    let tried = mirror.requests();
    assert!(tried >= 1);

    // A mirror serving other bytes: FAILED_PRECONDITION with both digests, nothing cached.
    mirror.set(OTHER_BYTES);
    let error = server.create(pretrained("r18")).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let served = sha256(b"<html>not the weights</html>");
    for part in [url.as_str(), digest.as_str(), served.as_str()] {
        assert!(error.message().contains(part), "{part} not in {}", error.message());
    }
    assert!(server.cache().is_empty(), "{:?}", server.cache());

    // The mirror is back: the retry succeeds, the file is cached under its digest, the project
    // gets ImageNet's normalisation and answers as torchvision does on the same file.
    mirror.set(SERVE);
    let project = server.create(pretrained("r18")).await.unwrap();
    let model = project.model.unwrap();
    assert_eq!(model.pretrained, PretrainedWeights::Imagenet as i32);
    let preprocessing = project.preprocessing.unwrap();
    assert_eq!((preprocessing.mean, preprocessing.std), (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()));
    assert_eq!(server.cache(), [format!("{digest}.pth")]);
    let builtin = server.predict("r18").await;
    server.create(torchvision("tv")).await.unwrap();
    assert_close(&builtin, &server.predict("tv").await);

    // A second project, and the same server after a restart with the mirror down, use the cache.
    let fetched = mirror.requests();
    server.create(pretrained("r18-again")).await.unwrap();
    assert_close(&builtin, &server.predict("r18-again").await);
    mirror.set(DOWN);
    let Server { dirs, mut process, projects, inference, .. } = server;
    drop((projects, inference));
    process.terminate();
    let mut server = Server::start(dirs, &base, &digest).await;
    assert_close(&builtin, &server.predict("r18").await);
    server.create(pretrained("r18-third")).await.unwrap();
    assert_eq!(mirror.requests(), fetched, "the file was fetched once");
}

#[tokio::test]
async fn a_local_directory_mirror_serves_legacy_files_and_preprocessing_can_change() {
    let files = files();
    let mirror = tempfile::tempdir().unwrap();
    std::fs::write(mirror.path().join(FILE), &files.legacy).unwrap();
    let mut server = Server::start(ServerDirs::new(), path_str(mirror.path()), &sha256(&files.legacy)).await;

    server.create(pretrained("r18")).await.unwrap();
    server.create(torchvision("tv")).await.unwrap();
    let builtin = server.predict("r18").await;
    assert_close(&builtin, &server.predict("tv").await);

    // Pretrained weights fit VGG16 and RESNET18 only, and exclude weights_path.
    let mut small = pretrained("small");
    small.model.as_mut().unwrap().architecture = Architecture::SmallCnn as i32;
    let mut both = pretrained("both");
    both.model.as_mut().unwrap().weights_path = "w.safetensors".into();
    for project in [small, both] {
        let error = server.create(project).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains("project.model.pretrained"), "{}", error.message());
    }

    // UpdateProject changes the preprocessing (unset fields take CreateProject's defaults);
    // pretrained weights cannot take one channel.
    let update = |preprocessing| UpdateProjectRequest {
        project_id: "r18".into(),
        preprocessing: Some(preprocessing),
        ..Default::default()
    };
    let grey = Preprocessing { width: 16, height: 16, channels: 1, ..Default::default() };
    let error = server.projects.update_project(update(grey)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let wider = Preprocessing { width: 32, height: 32, std: vec![0.5; 3], ..Default::default() };
    let project = server.projects.update_project(update(wider)).await.unwrap().into_inner().project.unwrap();
    let p = project.preprocessing.unwrap();
    assert_eq!((p.width, p.height, p.channels), (32, 32, 3));
    assert_eq!((p.mean, p.std), (IMAGENET_MEAN.to_vec(), vec![0.5; 3]));
    assert_eq!(project.active_model_version, "untrained");
    // The new input size is served at once.
    let request = PredictRequest { project_id: "r18".into(), samples: samples(), ..Default::default() };
    if let Ok(response) = server.inference.predict(request).await {
        let results = response.into_inner().results;
        assert!(
            results.iter().all(|r| !matches!(r.outcome, Some(Outcome::Prediction(_)))),
            "16×16 inputs are refused now"
        );
    }
}

/// The Label Studio adapter's side: a preset with `weights=imagenet` whose mirror is down, or
/// serves other bytes than the pinned file, shows the core's error in `GET /status` and
/// `/metrics`, and the next `/setup` once the mirror is back clears both.
#[tokio::test]
async fn the_adapter_shows_a_failing_or_wrong_weights_fetch_and_recovers_when_the_mirror_is_back() {
    const CONFIG: &str = r#"<View><Image name="img" value="$image"/><Choices name="label" toName="img"><Choice value="a"/><Choice value="b"/></Choices></View>"#;
    let files = files();
    let digest = sha256(&files.zip);
    let (mirror, addr) = Mirror::start(files.zip.clone()).await;
    mirror.set(DOWN);
    let base = format!("http://{addr}/models");
    let server = Server::start(ServerDirs::new(), &base, &digest).await;
    let core_url = format!("http://{}", server.grpc);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--core-url",
        &core_url,
        "--core-poll-ms",
        "100",
        "--model",
        "r18=resnet18,weights=imagenet,size=16",
    ];
    let mut adapter = Process::start("alps-label-studio", &args);
    let http = adapter.listening_addr("http");
    let setup = || async {
        let body = serde_json::json!({"project": "7.1", "schema": CONFIG, "extra_params": {"model": "r18"}});
        let response = http_client().post(format!("http://{http}/setup")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    };
    let status = || async {
        let status: serde_json::Value =
            http_client().get(format!("http://{http}/status")).send().await.ok()?.json().await.ok()?;
        Some(status["projects"][0].clone())
    };
    let metrics = || async { http_client().get(format!("http://{http}/metrics")).send().await.ok()?.text().await.ok() };

    setup().await;
    let failing = eventually("/status shows the fetch error", || async {
        status().await.filter(|project| project["setup_error"].is_string())
    })
    .await;
    let error = failing["setup_error"].as_str().unwrap();
    assert!(error.starts_with("Unavailable: ") && error.contains(FILE) && error.contains("503"), "{error}");
    let text = metrics().await.unwrap();
    assert!(text.contains(r#"alps_ls_project_setup_failing{project="7"} 1"#), "{text}");
    assert!(text.contains(r#"alps_ls_project_setup_failures_total{code="Unavailable"}"#), "{text}");

    // A mirror serving other bytes: the digests in /status, nothing cached.
    mirror.set(OTHER_BYTES);
    setup().await;
    let refused = eventually("/status shows the digest mismatch", || async {
        status()
            .await
            .filter(|project| project["setup_error"].as_str().is_some_and(|e| e.starts_with("FailedPrecondition")))
    })
    .await;
    let error = refused["setup_error"].as_str().unwrap();
    assert!(error.contains(&digest) && error.contains("not the pinned file"), "{error}");
    assert!(server.cache().is_empty(), "{:?}", server.cache());

    // The mirror is back: the next /setup (Label Studio sends one on every page load) retries.
    mirror.set(SERVE);
    setup().await;
    eventually("/status clears the error", || async {
        status().await.filter(|project| project["setup_error"].is_null() && project["model"] == "r18")
    })
    .await;
    let text = metrics().await.unwrap();
    assert!(text.contains(r#"alps_ls_project_setup_failing{project="7"} 0"#), "{text}");
    assert_eq!(server.cache(), [format!("{digest}.pth")]);
}
