//! The real server as an attacker meets it: hostile identifiers in every RPC, model files
//! outside the model root or of unbounded size, internals in error messages, and the
//! authentication, roles and TLS a shared deployment needs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use alps_proto::v1::{
    ActivateModelVersionRequest, AddExamplesRequest, Architecture, CancelTrainingJobRequest, CountExamplesRequest,
    CreateProjectRequest, DeleteExamplesRequest, DeleteProjectRequest, GetModelVersionRequest, GetProjectRequest,
    GetTrainingJobRequest, HeuristicRef, LabelledExample, ListExamplesRequest, ListModelVersionsRequest,
    ListProjectsRequest, ListTrainingJobsRequest, ModelFileKind, ModelSpec, PredictRequest, Preprocessing, Project,
    RankRequest, Sample, ScoreRequest, SelectRequest, Tensor, TrainRequest, TrainingParameters, UpdateProjectRequest,
    UploadModelFileHeader, UploadModelFileRequest, WatchTrainingJobRequest,
    example_service_client::ExampleServiceClient, heuristic_service_client::HeuristicServiceClient,
    inference_service_client::InferenceServiceClient, model_version_service_client::ModelVersionServiceClient,
    project_service_client::ProjectServiceClient, sample::Input, training_service_client::TrainingServiceClient,
    upload_model_file_request::Part,
};
use alps_system_tests::{
    Process, ServerDirs, TestPki, builtin_plugin, channel, create_token, eventually, install_plugin, path_str,
    project_models_dir, run_to_exit, start_server, venv_python, with_token,
};
use sha2::Digest;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Identifiers an attacker would send: path components, encodings, NUL, look-alikes, length.
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> =
        [".", "..", "a/../../b", "/abs", "%2e%2e", "a\0b", "․․", "a／b", "-rf", ".hidden", "a b", "a\\b"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    ids.push("x".repeat(10 * 1024));
    ids
}

struct Clients {
    projects: ProjectServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
    heuristics: HeuristicServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    training: TrainingServiceClient<Channel>,
    versions: ModelVersionServiceClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Self {
            projects: ProjectServiceClient::new(channel.clone()),
            inference: InferenceServiceClient::new(channel.clone()),
            heuristics: HeuristicServiceClient::new(channel.clone()),
            examples: ExampleServiceClient::new(channel.clone()),
            training: TrainingServiceClient::new(channel.clone()),
            versions: ModelVersionServiceClient::new(channel),
        }
    }
}

/// An MLP project over 1×2×2 tensors, optionally with initial weights.
fn mlp(id: &str, weights: &str) -> Project {
    Project {
        id: id.into(),
        classes: vec!["low".into(), "high".into()],
        model: Some(ModelSpec {
            architecture: Architecture::Mlp as i32,
            weights_path: weights.into(),
            ..Default::default()
        }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    }
}

fn tensor_sample(id: &str, value: f32) -> Sample {
    Sample { id: id.into(), input: Some(Input::Tensor(Tensor { shape: vec![1, 2, 2], data: vec![value; 4] })) }
}

fn example(id: &str, class: &str, value: f32) -> LabelledExample {
    LabelledExample {
        external_id: id.into(),
        sample: Some(tensor_sample("", value)),
        class_name: class.into(),
        metadata: Default::default(),
        label_revision: 0,
    }
}

/// Every file under `dir` with its bytes' SHA-256, and every directory. The SQLite database
/// counts by its rows: its write-ahead log and shared-memory index change on reads and
/// checkpoints without any row changing, so their bytes are not compared.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(dir).unwrap().to_path_buf();
            let name = relative.to_string_lossy();
            if path.is_dir() {
                entries.insert(relative, "dir".into());
                stack.push(path);
            } else if name == "alps.db" {
                entries.insert(relative, database_rows(&path));
            } else if !(name == "alps.db-wal" || name == "alps.db-shm") {
                let bytes = std::fs::read(&path).unwrap();
                entries.insert(relative, format!("{:x}", sha2::Sha256::digest(&bytes)));
            }
        }
    }
    entries
}

/// SHA-256 over every row of every table of the SQLite database at `path`, tables by name and
/// rows by rowid (read through a second connection, so the log's rows count too).
fn database_rows(path: &Path) -> String {
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
    let names: Vec<String> = tables.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
    let mut digest = sha2::Sha256::new();
    for table in names {
        digest.update(table.as_bytes());
        let mut rows = db.prepare(&format!("SELECT * FROM \"{table}\" ORDER BY rowid")).unwrap();
        let columns = rows.column_count();
        let mut rows = rows.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for column in 0..columns {
                digest.update(format!("{:?}\u{1f}", row.get_ref(column).unwrap()).as_bytes());
            }
            digest.update(b"\n");
        }
    }
    format!("rows:{:x}", digest.finalize())
}

fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str, id: &str) {
    let status = result.expect_err(&format!("{field}={id:?} was accepted"));
    assert_eq!(status.code(), Code::InvalidArgument, "{field}={id:?}: {status:?}");
    assert!(status.message().starts_with(field), "{field}={id:?}: {:?}", status.message());
    assert!(status.message().len() < 400, "the message echoes the whole id: {}", status.message().len());
}

/// A server with the built-in plugin and a trained project "p" (so `models/` holds a version),
/// fully fine-tuned: its `weights.safetensors` holds every variable, a valid weights file.
async fn server_with_a_trained_project(extra: &[&str]) -> (ServerDirs, Process, Clients) {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (process, grpc) = start_server(&dirs, extra);
    let mut clients = Clients::new(channel(&grpc, None, None).await.unwrap());
    clients.projects.create_project(CreateProjectRequest { project: Some(mlp("p", "")) }).await.unwrap();
    let examples = (0..6).map(|i| example(&format!("e{i}"), ["low", "high"][i % 2], (i % 2) as f32)).collect();
    let add = AddExamplesRequest { project_id: "p".into(), examples };
    clients.examples.add_examples(tokio_stream::iter([add])).await.unwrap();
    let train = TrainRequest {
        project_id: "p".into(),
        parameters: Some(TrainingParameters {
            epochs: 2,
            seed: Some(1),
            mode: alps_proto::v1::TrainingMode::Full as i32,
            ..Default::default()
        }),
        activate: None,
    };
    let job = clients.training.train(train).await.unwrap().into_inner().job.unwrap();
    let mut watch =
        clients.training.watch_training_job(WatchTrainingJobRequest { job_id: job.job_id }).await.unwrap().into_inner();
    while watch.message().await.unwrap().is_some() {}
    let project = clients.projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap();
    assert_eq!(project.into_inner().project.unwrap().active_model_version, "v1");
    (dirs, process, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_are_refused_by_every_rpc_and_the_data_dir_is_untouched() {
    let (dirs, _process, mut c) = server_with_a_trained_project(&[]).await;
    assert!(project_models_dir(dirs.data.path(), "p").join("v1").is_dir(), "versions live under a hashed name");
    // The finished job's last writes may still land: start from a tree that has settled.
    let before = eventually("the data dir to settle", || async {
        let first = tree(dirs.data.path());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        (tree(dirs.data.path()) == first).then_some(first)
    })
    .await;
    let heuristic = |name: &str| Some(HeuristicRef { name: name.into(), version: String::new() });
    let values = || Some(Tensor { shape: vec![1, 2, 1], data: vec![0.5, 0.5] });
    for id in hostile_ids() {
        let id = id.as_str();
        let s = || id.to_owned();
        assert_invalid(
            c.projects.create_project(CreateProjectRequest { project: Some(mlp(id, "")) }).await,
            "project.id",
            id,
        );
        assert_invalid(c.projects.get_project(GetProjectRequest { project_id: s() }).await, "project_id", id);
        let update = UpdateProjectRequest { project_id: s(), ..Default::default() };
        assert_invalid(c.projects.update_project(update).await, "project_id", id);
        let update =
            UpdateProjectRequest { project_id: "p".into(), default_heuristic: heuristic(id), ..Default::default() };
        assert_invalid(c.projects.update_project(update).await, "default_heuristic.name", id);
        assert_invalid(c.projects.delete_project(DeleteProjectRequest { project_id: s() }).await, "project_id", id);
        let predict = PredictRequest { project_id: s(), samples: vec![tensor_sample("a", 0.5)], ..Default::default() };
        assert_invalid(c.inference.predict(predict).await, "project_id", id);
        let predict = PredictRequest {
            project_id: "p".into(),
            samples: vec![tensor_sample("a", 0.5)],
            heuristic: heuristic(id),
            ..Default::default()
        };
        assert_invalid(c.inference.predict(predict).await, "heuristic.name", id);
        let stream = c
            .inference
            .predict_stream(tokio_stream::iter([PredictRequest { project_id: s(), ..Default::default() }]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await;
        assert_invalid(stream, "project_id", id);
        let rank = RankRequest {
            project_id: s(),
            query_size: 1,
            samples: vec![tensor_sample("a", 0.5)],
            ..Default::default()
        };
        assert_invalid(c.inference.rank(tokio_stream::iter([rank])).await, "project_id", id);
        let score = ScoreRequest { heuristic: heuristic(id), values: values(), ..Default::default() };
        assert_invalid(c.heuristics.score(score).await, "heuristic.name", id);
        let select = SelectRequest { heuristic: heuristic(id), values: values(), query_size: 1, ..Default::default() };
        assert_invalid(c.heuristics.select(select).await, "heuristic.name", id);
        let add = AddExamplesRequest { project_id: s(), examples: vec![example("e", "low", 0.0)] };
        assert_invalid(c.examples.add_examples(tokio_stream::iter([add])).await, "project_id", id);
        let add = AddExamplesRequest { project_id: "p".into(), examples: vec![example(id, "low", 0.0)] };
        assert_invalid(c.examples.add_examples(tokio_stream::iter([add])).await, "examples[0].external_id", id);
        let delete = DeleteExamplesRequest { project_id: s(), external_ids: vec!["e0".into()] };
        assert_invalid(c.examples.delete_examples(delete).await, "project_id", id);
        let delete = DeleteExamplesRequest { project_id: "p".into(), external_ids: vec![s()] };
        assert_invalid(c.examples.delete_examples(delete).await, "external_ids[0]", id);
        assert_invalid(
            c.examples.list_examples(ListExamplesRequest { project_id: s(), ..Default::default() }).await,
            "project_id",
            id,
        );
        let list = ListExamplesRequest { project_id: "p".into(), page_token: s(), ..Default::default() };
        assert_invalid(c.examples.list_examples(list).await, "page_token", id);
        assert_invalid(c.examples.count_examples(CountExamplesRequest { project_id: s() }).await, "project_id", id);
        let train = TrainRequest { project_id: s(), ..Default::default() };
        assert_invalid(c.training.train(train).await, "project_id", id);
        assert_invalid(c.training.get_training_job(GetTrainingJobRequest { job_id: s() }).await, "job_id", id);
        assert_invalid(c.training.watch_training_job(WatchTrainingJobRequest { job_id: s() }).await, "job_id", id);
        assert_invalid(c.training.cancel_training_job(CancelTrainingJobRequest { job_id: s() }).await, "job_id", id);
        let list = ListTrainingJobsRequest { project_id: s(), ..Default::default() };
        assert_invalid(c.training.list_training_jobs(list).await, "project_id", id);
        assert_invalid(
            c.versions.list_model_versions(ListModelVersionsRequest { project_id: s() }).await,
            "project_id",
            id,
        );
        let get = GetModelVersionRequest { project_id: "p".into(), version: s() };
        assert_invalid(c.versions.get_model_version(get).await, "version", id);
        let activate = ActivateModelVersionRequest { project_id: s(), version: "v1".into() };
        assert_invalid(c.versions.activate_model_version(activate).await, "project_id", id);
        let activate = ActivateModelVersionRequest { project_id: "p".into(), version: s() };
        assert_invalid(c.versions.activate_model_version(activate).await, "version", id);
    }
    let after = tree(dirs.data.path());
    let changed: Vec<_> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.is_empty(), "the data dir changed: {changed:?}");
    // Still serving, with everything in place.
    let project = c.projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap().into_inner();
    assert_eq!(project.project.unwrap().active_model_version, "v1");
    let predict =
        PredictRequest { project_id: "p".into(), samples: vec![tensor_sample("a", 0.5)], ..Default::default() };
    assert_eq!(c.inference.predict(predict).await.unwrap().into_inner().results.len(), 1);
    // Deleting a project removes its own versions only.
    c.projects.create_project(CreateProjectRequest { project: Some(mlp("q", "")) }).await.unwrap();
    c.projects.delete_project(DeleteProjectRequest { project_id: "q".into() }).await.unwrap();
    assert!(project_models_dir(dirs.data.path(), "p").join("v1/weights.safetensors").is_file());
}

/// Uploads `bytes` in 1 KiB chunks with `header`.
async fn upload(
    projects: &mut ProjectServiceClient<Channel>,
    header: UploadModelFileHeader,
    bytes: &[u8],
) -> Result<String, Status> {
    let mut messages = vec![UploadModelFileRequest { part: Some(Part::Header(header)) }];
    messages.extend(bytes.chunks(1024).map(|c| UploadModelFileRequest { part: Some(Part::Chunk(c.to_vec())) }));
    Ok(projects.upload_model_file(tokio_stream::iter(messages)).await?.into_inner().path)
}

fn header(kind: ModelFileKind, bytes: &[u8]) -> UploadModelFileHeader {
    UploadModelFileHeader {
        kind: kind as i32,
        size_bytes: bytes.len() as u64,
        sha256: format!("{:x}", sha2::Sha256::digest(bytes)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_files_are_confined_to_the_model_root_bounded_and_uploadable() {
    let (dirs, _process, mut c) = server_with_a_trained_project(&["--max-model-file-mib", "1"]).await;
    let root = dirs.data.path().join("imports");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.safetensors"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.safetensors"), root.join("escape.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
    std::fs::create_dir(root.join("a-dir")).unwrap();
    std::fs::write(root.join("big.safetensors"), vec![0u8; 1024 * 1024 + 1]).unwrap();
    std::fs::write(root.join("garbage.pt"), b"PK\x03\x04 not really a TorchScript archive").unwrap();
    let create = |project: Project| CreateProjectRequest { project: Some(project) };

    // Outside the root: one answer whether the path exists, is special or is a directory.
    let mut denied = Vec::new();
    let secret = outside.path().join("secret.safetensors");
    for path in [
        "/dev/zero",
        "/etc/passwd",
        "/nonexistent/w.safetensors",
        "/etc",
        "../x",
        "escape.safetensors",
        "zero",
        secret.to_str().unwrap(),
    ] {
        let status = c.projects.create_project(create(mlp("m", path))).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
        denied.push(status.message().replace(path, "PATH"));
    }
    assert!(denied.windows(2).all(|w| w[0] == w[1]), "messages differ: {denied:?}");
    assert!(denied[0].contains("--model-root") && denied[0].contains("UploadModelFile"), "{}", denied[0]);

    // Inside the root: precise answers.
    let status = c.projects.create_project(create(mlp("m", "missing.safetensors"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = c.projects.create_project(create(mlp("m", "a-dir"))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = c.projects.create_project(create(mlp("m", "big.safetensors"))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1.0 MiB; the limit is 1 MiB (--max-model-file-mib)"), "{}", status.message());

    // libtorch's complaint stays in the server log: the client gets one line with a request id.
    let mut script = mlp("m", "");
    script.model = Some(ModelSpec {
        architecture: Architecture::Torchscript as i32,
        torchscript_path: "garbage.pt".into(),
        ..Default::default()
    });
    let status = c.projects.create_project(create(script)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(message.contains("not a TorchScript archive") && message.contains("request id"), "{message}");
    for internal in ["Exception raised", "frame #", "0x", ".so", ".cpp", "\n", dirs.data.path().to_str().unwrap()] {
        assert!(!message.contains(internal), "{internal:?} leaked: {message}");
    }
    assert!(message.len() < 300, "{message}");

    // Upload: the trained version's weights, then a project that starts from them.
    let weights = std::fs::read(project_models_dir(dirs.data.path(), "p").join("v1/weights.safetensors")).unwrap();
    let path = upload(&mut c.projects, header(ModelFileKind::Safetensors, &weights), &weights).await.unwrap();
    assert!(path.starts_with("uploads/") && path.ends_with(".safetensors"), "{path}");
    assert_eq!(std::fs::read(root.join(&path)).unwrap(), weights);
    c.projects.create_project(create(mlp("from-upload", &path))).await.unwrap();
    let predict = |project: &str| PredictRequest {
        project_id: project.into(),
        samples: vec![tensor_sample("a", 0.9)],
        seed: Some(3),
        ..Default::default()
    };
    let trained = c.inference.predict(predict("p")).await.unwrap().into_inner().results;
    let uploaded = c.inference.predict(predict("from-upload")).await.unwrap().into_inner().results;
    assert_eq!(format!("{trained:?}"), format!("{uploaded:?}"), "the uploaded weights serve the same predictions");

    // Bad uploads leave nothing behind.
    let uploads_before = std::fs::read_dir(root.join("uploads")).unwrap().count();
    let mut wrong_digest = header(ModelFileKind::Safetensors, &weights);
    wrong_digest.sha256 = "0".repeat(64);
    let mut short = header(ModelFileKind::Safetensors, &weights);
    short.size_bytes += 1;
    let mut long = header(ModelFileKind::Safetensors, &weights);
    long.size_bytes -= 1;
    let mut huge = header(ModelFileKind::Safetensors, &weights);
    huge.size_bytes = 3 << 30;
    let mut no_kind = header(ModelFileKind::Safetensors, &weights);
    no_kind.kind = 0;
    for (bad, code) in [
        (wrong_digest, Code::InvalidArgument),
        (short, Code::InvalidArgument),
        (long, Code::InvalidArgument),
        (huge, Code::ResourceExhausted),
        (no_kind, Code::InvalidArgument),
    ] {
        let status = upload(&mut c.projects, bad.clone(), &weights).await.unwrap_err();
        assert_eq!(status.code(), code, "{bad:?}: {status:?}");
    }
    let only_chunks = [UploadModelFileRequest { part: Some(Part::Chunk(weights.clone())) }];
    let status = c.projects.upload_model_file(tokio_stream::iter(only_chunks)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(std::fs::read_dir(root.join("uploads")).unwrap().count(), uploads_before, "a bad upload left a file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_resource_exhausted_naming_the_flag() {
    let dirs = ServerDirs::new();
    let (_process, grpc) = start_server(&dirs, &["--max-message-mib", "1"]);
    let mut c = Clients::new(channel(&grpc, None, None).await.unwrap());
    let image = Sample { id: "big".into(), input: Some(Input::Image(vec![0u8; 2 * 1024 * 1024])) };
    let predict = PredictRequest { project_id: "p".into(), samples: vec![image], ..Default::default() };
    let status = c.inference.predict(predict).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-message-mib"), "{}", status.message());
    // The server lives on.
    c.projects.list_projects(ListProjectsRequest {}).await.unwrap();
}

/// A server with a tokens file holding one token per role; returns the tokens.
fn tokens(dir: &Path) -> (PathBuf, [String; 3]) {
    let file = dir.join("tokens");
    let tokens = ["predict", "label", "admin"].map(|role| create_token(&file, role, &format!("{role}-bot")));
    (file, tokens)
}

async fn metrics(process: &mut Process) -> String {
    let url = format!("http://{}/metrics", process.listening_addr("metrics"));
    alps_system_tests::http_client().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_every_rpc_and_health_stays_open() {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (file, [predict, label, admin]) = tokens(dirs.data.path());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&admin), "the tokens file holds hashes only");
    let (mut process, grpc) = start_server(&dirs, &["--auth-tokens-file", path_str(&file)]);
    let channel = channel(&grpc, None, None).await.unwrap();
    let mut projects = ProjectServiceClient::new(channel.clone());
    let mut examples = ExampleServiceClient::new(channel.clone());

    let health = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
    assert!(health.is_ok(), "health must stay open for probes: {health:?}");
    let status = projects.list_projects(ListProjectsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = projects.list_projects(with_token(ListProjectsRequest {}, "alps_forged")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    projects.list_projects(with_token(ListProjectsRequest {}, &predict)).await.unwrap();

    let create = || CreateProjectRequest { project: Some(mlp("p", "")) };
    for token in [&predict, &label] {
        let status = projects.create_project(with_token(create(), token)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("CreateProject needs role admin"), "{}", status.message());
    }
    projects.create_project(with_token(create(), &admin)).await.unwrap();
    let add = || AddExamplesRequest { project_id: "p".into(), examples: vec![example("e", "low", 0.1)] };
    let status = examples.add_examples(with_token(tokio_stream::iter([add()]), &predict)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("needs role label"), "{}", status.message());
    examples.add_examples(with_token(tokio_stream::iter([add()]), &label)).await.unwrap();
    examples.add_examples(with_token(tokio_stream::iter([add()]), &admin)).await.unwrap();

    // Admin calls are logged with the token's name, the RPC and the project.
    let fields = process.wait_for_log("admin call");
    assert_eq!(
        (fields["caller"].as_str(), fields["rpc"].as_str(), fields["project"].as_str()),
        (Some("admin-bot"), Some("CreateProject"), Some("p"))
    );

    // Every RPC is counted, refusals included.
    let text = metrics(&mut process).await;
    for line in [
        r#"alps_requests_total{service="alps.v1.ProjectService",method="ListProjects",code="UNAUTHENTICATED"} 2"#,
        r#"alps_requests_total{service="alps.v1.ProjectService",method="CreateProject",code="PERMISSION_DENIED"} 2"#,
        r#"alps_requests_total{service="alps.v1.ExampleService",method="AddExamples",code="OK"} 2"#,
        r#"alps_auth_failures_total{reason="UNAUTHENTICATED"} 2"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    // A token added while the server runs works, and one removed stops working.
    let late = create_token(&file, "predict", "late");
    eventually("the new token to be accepted", || {
        let mut projects = projects.clone();
        let late = late.clone();
        async move { projects.list_projects(with_token(ListProjectsRequest {}, &late)).await.ok() }
    })
    .await;
    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with(" late"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    eventually("the removed token to be refused", || {
        let mut projects = projects.clone();
        let late = late.clone();
        async move {
            let result = projects.list_projects(with_token(ListProjectsRequest {}, &late)).await;
            result.err().filter(|s| s.code() == Code::Unauthenticated)
        }
    })
    .await;
    projects.list_projects(with_token(ListProjectsRequest {}, &predict)).await.unwrap();
}

/// Runs alps-server without tokens on `listen` (gRPC) and `http` (REST) until it exits.
fn run_without_tokens(listen: &str, http: &str, data: &str) -> (std::process::ExitStatus, String) {
    let args = ["--listen", listen, "--metrics-listen", "127.0.0.1:0", "--http-listen", http, "--data-dir", data];
    run_to_exit("alps-server", &args)
}

#[test]
fn without_tokens_the_server_refuses_a_non_loopback_address_unless_told() {
    let dirs = ServerDirs::new();
    let data = path_str(dirs.data.path());
    let (status, stderr) = run_without_tokens("0.0.0.0:0", "127.0.0.1:0", data);
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--auth-tokens-file") && stderr.contains("--insecure-no-auth"), "{stderr}");
    // The REST port of the Open Inference Protocol follows the same rule.
    let (status, stderr) = run_without_tokens("127.0.0.1:0", "0.0.0.0:0", data);
    assert!(!status.success());
    assert!(stderr.contains("--http-listen is not a loopback address"), "{stderr}");

    let plugins = path_str(dirs.plugins.path());
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--plugin-dir",
        plugins,
        "--insecure-no-auth",
    ];
    let mut server = Process::start("alps-server", &args);
    server.wait_for_log("listening");
    assert!(server.log().iter().any(|l| l.contains("WITHOUT authentication")), "no warning logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_tokens_serves_verified_clients_and_rotates_its_certificate() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("server");
    let dirs = ServerDirs::new();
    let (file, [predict, _, _]) = tokens(dirs.data.path());
    let args = ["--auth-tokens-file", path_str(&file), "--tls-cert", path_str(&cert), "--tls-key", path_str(&key)];
    let (_process, grpc) = start_server(&dirs, &args);

    let secure = channel(&grpc, Some(&pki.ca_pem()), None).await.unwrap();
    let mut projects = ProjectServiceClient::new(secure.clone());
    projects.list_projects(with_token(ListProjectsRequest {}, &predict)).await.unwrap();
    HealthClient::new(secure).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    // A plaintext client gets nothing.
    if let Ok(plain) = channel(&grpc, None, None).await {
        assert!(
            ProjectServiceClient::new(plain).list_projects(with_token(ListProjectsRequest {}, &predict)).await.is_err()
        );
    }

    // Rotation: a certificate from another CA replaces the files; new connections use it.
    let other = TestPki::new();
    let (new_cert, new_key) = other.issue("server");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    eventually("the rotated certificate to be served", || {
        let (grpc, ca, token) = (grpc.clone(), other.ca_pem(), predict.clone());
        async move {
            let channel = channel(&grpc, Some(&ca), None).await.ok()?;
            ProjectServiceClient::new(channel).list_projects(with_token(ListProjectsRequest {}, &token)).await.ok()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_port_serves_https_with_the_same_certificate_and_tokens() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("server");
    let dirs = ServerDirs::new();
    let (file, [predict, _, _]) = tokens(dirs.data.path());
    let args = ["--auth-tokens-file", path_str(&file), "--tls-cert", path_str(&cert), "--tls-key", path_str(&key)];
    let (mut process, _grpc) = start_server(&dirs, &args);
    let port = process.listening_addr("http").rsplit(':').next().unwrap().to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let ready = https.get(format!("{base}/v2/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(https.get(format!("{base}/v2")).send().await.unwrap().status(), 401);
    assert_eq!(https.get(format!("{base}/v2")).bearer_auth(&predict).send().await.unwrap().status(), 200);
    // Plain HTTP to the TLS port gets no answer.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/v2/health/ready")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("server");
    let (client_cert, client_key) = pki.issue("client");
    let stranger = TestPki::new();
    let (stranger_cert, stranger_key) = stranger.issue("client");
    let dirs = ServerDirs::new();
    let ca = pki.ca_file();
    let args = ["--tls-cert", path_str(&cert), "--tls-key", path_str(&key), "--tls-client-ca", path_str(&ca)];
    let (_process, grpc) = start_server(&dirs, &args);
    let read = |path: &PathBuf| std::fs::read_to_string(path).unwrap();
    let list = |channel: Channel| async move {
        ProjectServiceClient::new(channel).list_projects(ListProjectsRequest {}).await
    };

    let trusted = channel(&grpc, Some(&pki.ca_pem()), Some((&read(&client_cert), &read(&client_key)))).await.unwrap();
    list(trusted).await.unwrap();
    for identity in [None, Some((read(&stranger_cert), read(&stranger_key)))] {
        let identity = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        if let Ok(channel) = channel(&grpc, Some(&pki.ca_pem()), identity).await {
            assert!(list(channel).await.is_err(), "a client without a trusted certificate was served");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_experiment_client_speaks_tls_with_a_token() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("server");
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (file, [predict, _, _]) = tokens(dirs.data.path());
    let args = ["--auth-tokens-file", path_str(&file), "--tls-cert", path_str(&cert), "--tls-key", path_str(&key)];
    let (_process, grpc) = start_server(&dirs, &args);
    let script = "import sys, grpc\n\
        from experiments.client import AlpsClient\n\
        address, ca, token = sys.argv[1:4]\n\
        print(sorted(AlpsClient(address, tls_ca=ca, token=token).heuristic_names()))\n\
        try:\n    AlpsClient(address, tls_ca=ca).heuristic_names()\n\
        except grpc.RpcError as error:\n    print(error.code().name)\n";
    let stdout = venv_python(&["-c", script, &grpc, path_str(&pki.ca_file()), &predict]);
    assert!(stdout.contains("'bald'"), "{stdout}");
    assert!(stdout.trim_end().ends_with("UNAUTHENTICATED"), "{stdout}");
}
