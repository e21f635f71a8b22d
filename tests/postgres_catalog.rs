//! The server with its catalogue in PostgreSQL (`--database-url`), against a throwaway server
//! on loopback and a login role without superuser rights: projects, examples, versions and
//! jobs survive a restart; a second server on the same database is refused; predictions go on
//! while the database refuses connections or stops answering, other calls get UNAVAILABLE (at
//! their deadline when it stops answering) and succeed once it is back;
//! `alps-server migrate` moves a data dir's catalogue there with the same predictions after.
//! With an object store (moto's S3 on loopback, behind a relay a test can cut): samples and
//! weights live there, a new data dir serves the same predictions, uploads of the same bytes
//! store one object, and while the store is away predictions go on and writes get UNAVAILABLE.
//! Three replicas over both: each serves every project and follows the others' activations
//! (also one whose notification was lost); triggers on all of them run one job at a time; the
//! training of a replica paused, killed or stopped mid-job is taken over after its lease and
//! the paused one, resumed, activates nothing.

use alps_proto::v1::{
    ActivateModelVersionRequest, AddExamplesRequest, Architecture, CancelTrainingJobRequest, CountExamplesRequest,
    CreateProjectRequest, DeleteProjectRequest, GetProjectRequest, GetTrainingJobRequest, JobState, LabelledExample,
    ListHeuristicsRequest, ListTrainingJobsRequest, ModelSpec, PredictRequest, Preprocessing, Project, Sample, Tensor,
    TrainRequest, TrainingParameters, WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
    heuristic_service_client::HeuristicServiceClient, inference_service_client::InferenceServiceClient,
    model_version_service_client::ModelVersionServiceClient, project_service_client::ProjectServiceClient,
    sample::Input, training_service_client::TrainingServiceClient,
};
use alps_system_tests::{
    PROCESS_TIMEOUT, Process, Relay, ServerDirs, binary, builtin_plugin, eventually, example_plugin, http_client,
    install_plugin, path_str, postgres_admin, postgres_database, postgres_value, run_to_exit, run_to_exit_with_env,
    s3_bucket, s3_env, s3_keys, s3_server, start_server, start_server_with_env, venv_python,
};
use tonic::{Code, transport::Channel};

struct Server {
    process: Process,
    projects: ProjectServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    training: TrainingServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
    models: ModelVersionServiceClient<Channel>,
    heuristics: HeuristicServiceClient<Channel>,
}

impl Server {
    /// Closes the client's connection (a graceful shutdown waits for open ones; the tests run
    /// on a multi-threaded runtime so that the channel's task can close it while this thread
    /// waits), then stops the server with SIGTERM; returns whether it exited with success.
    fn stop(self) -> bool {
        let Self { mut process, projects, examples, training, inference, models, heuristics } = self;
        drop((projects, examples, training, inference, models, heuristics));
        process.terminate().success()
    }
}

async fn start(dirs: &ServerDirs, url: &str) -> Server {
    start_with(dirs, &["--database-url", url]).await
}

async fn start_with(dirs: &ServerDirs, flags: &[&str]) -> Server {
    let (process, grpc) = start_server(dirs, flags);
    connect(process, grpc).await
}

/// A server on database `url` with its files in object store `store`, reached at `endpoint`.
async fn start_on_objects(dirs: &ServerDirs, url: &str, store: &str, endpoint: &str) -> Server {
    start_on_objects_with(dirs, url, store, endpoint, &[]).await
}

/// [`start_on_objects`] with more flags.
async fn start_on_objects_with(dirs: &ServerDirs, url: &str, store: &str, endpoint: &str, more: &[&str]) -> Server {
    let env = s3_env(endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    // A short lease: a replica that stops is taken over within seconds.
    let flags = ["--database-url", url, "--object-store-url", store, "--training-lease-secs", "8"];
    let (process, grpc) = start_server_with_env(dirs, &[&flags[..], more].concat(), &env);
    connect(process, grpc).await
}

async fn connect(process: Process, grpc: String) -> Server {
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server {
        process,
        projects: ProjectServiceClient::new(channel.clone()),
        examples: ExampleServiceClient::new(channel.clone()),
        training: TrainingServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel.clone()),
        models: ModelVersionServiceClient::new(channel.clone()),
        heuristics: HeuristicServiceClient::new(channel),
    }
}

fn tensor(value: f32) -> Option<Sample> {
    Some(Sample {
        id: String::new(),
        input: Some(Input::Tensor(Tensor { shape: vec![1, 2, 2], data: vec![value; 4] })),
    })
}

/// `per_class` examples of each class (low ≈ 0.1, high ≈ 0.9), ids prefixed with `prefix`.
fn examples(prefix: &str, per_class: usize) -> AddExamplesRequest {
    let examples = (0..per_class)
        .flat_map(|i| {
            let jitter = i as f32 * 0.005;
            [("low", 0.1 + jitter), ("high", 0.9 - jitter)].map(|(class, value)| LabelledExample {
                external_id: format!("{prefix}{class}-{i}"),
                sample: tensor(value),
                class_name: class.into(),
                metadata: Default::default(),
                label_revision: 0,
            })
        })
        .collect();
    AddExamplesRequest { project_id: "p".into(), examples }
}

/// Creates the MLP project "p" (classes low/high over 1×2×2 inputs) with `per_class` examples
/// of each class.
async fn create_project(server: &mut Server, per_class: usize) {
    server.projects.create_project(CreateProjectRequest { project: Some(mlp_project("p")) }).await.unwrap();
    server.examples.add_examples(tokio_stream::iter([examples("", per_class)])).await.unwrap();
}

/// An MLP project `id` with classes low/high over 1×2×2 inputs.
fn mlp_project(id: &str) -> Project {
    Project {
        id: id.into(),
        classes: vec!["low".into(), "high".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    }
}

/// The model version that served a prediction of one sample, and its class.
async fn predict(server: &mut Server) -> (String, String) {
    let request = PredictRequest { project_id: "p".into(), samples: vec![tensor(0.88).unwrap()], ..Default::default() };
    let response = server.inference.predict(request).await.unwrap().into_inner();
    let Some(alps_proto::v1::predict_result::Outcome::Prediction(prediction)) = &response.results[0].outcome else {
        panic!("{response:?}")
    };
    (response.model_version, prediction.class_name.clone())
}

/// Trains "p" for 40 epochs to its end; returns the job's id.
async fn train_to_end(server: &mut Server) -> String {
    let parameters = TrainingParameters { epochs: 40, seed: Some(1), learning_rate: 0.01, ..Default::default() };
    let request = TrainRequest { project_id: "p".into(), parameters: Some(parameters), activate: None };
    let job = server.training.train(request).await.unwrap().into_inner().job.unwrap();
    let request = WatchTrainingJobRequest { job_id: job.job_id.clone() };
    let mut stream = server.training.watch_training_job(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(record) = stream.message().await.unwrap() {
        last = Some(record);
    }
    let last = last.unwrap();
    assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
    job.job_id
}

/// A seeded Predict of a few samples.
fn seeded_request() -> PredictRequest {
    let samples = [0.1, 0.4, 0.6, 0.9].map(|v| tensor(v).unwrap()).to_vec();
    PredictRequest { project_id: "p".into(), samples, seed: Some(7), ..Default::default() }
}

/// Seeded predictions of a few samples: the model version and each prediction, whole.
async fn seeded_predictions(server: &mut Server) -> (String, Vec<alps_proto::v1::PredictResult>) {
    let response = server.inference.predict(seeded_request()).await.unwrap().into_inner();
    (response.model_version, response.results)
}

/// An embedded server (SQLite, files in `dirs`) with project "p", 40 examples and v1 trained:
/// the server, the job's id and the version's seeded predictions.
async fn trained_embedded(dirs: &ServerDirs) -> (Server, String, (String, Vec<alps_proto::v1::PredictResult>)) {
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start_with(dirs, &[]).await;
    create_project(&mut server, 20).await;
    let job = train_to_end(&mut server).await;
    let predictions = seeded_predictions(&mut server).await;
    (server, job, predictions)
}

/// Runs `alps-server migrate`: (success, stdout, stderr).
fn migrate(data_dir: &std::path::Path, url: &str) -> (bool, String, String) {
    migrate_with(data_dir, url, &[], &[])
}

/// Runs `alps-server migrate` with extra flags and environment: (success, stdout, stderr).
fn migrate_with(
    data_dir: &std::path::Path,
    url: &str,
    flags: &[&str],
    env: &[(&str, String)],
) -> (bool, String, String) {
    let output = std::process::Command::new(binary("alps-server"))
        .args(["migrate", "--from-data-dir", path_str(data_dir), "--database-url", url])
        .args(flags)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

async fn count(server: &mut Server) -> Result<u64, tonic::Status> {
    let request = CountExamplesRequest { project_id: "p".into() };
    Ok(server.examples.count_examples(request).await?.into_inner().total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_examples_versions_and_jobs_live_in_postgresql_across_restarts() {
    let (_, url) = postgres_database("alps_restart");
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start(&dirs, &url).await;
    create_project(&mut server, 20).await;
    let job = train_to_end(&mut server).await;
    assert_eq!(predict(&mut server).await, ("v1".to_owned(), "high".to_owned()));

    // A second server on the same database is refused, without echoing the password.
    let other = ServerDirs::new();
    let (status, stderr) = run_to_exit(
        "alps-server",
        &["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
            .into_iter()
            .chain(["--data-dir", path_str(other.data.path()), "--database-url", &url])
            .collect::<Vec<_>>(),
    );
    assert!(!status.success());
    assert!(stderr.contains("another alps-server uses this database"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");

    // The catalogue is not in the data dir; a restart finds all of it in PostgreSQL.
    assert!(!dirs.data.path().join("alps.db").exists());
    assert!(server.stop());
    let mut server = start(&dirs, &url).await;
    let project = server.projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap();
    assert_eq!(project.into_inner().project.unwrap().active_model_version, "v1");
    assert_eq!(count(&mut server).await.unwrap(), 40);
    let jobs = ListTrainingJobsRequest { project_id: "p".into(), limit: 0 };
    let jobs = server.training.list_training_jobs(jobs).await.unwrap().into_inner().jobs;
    assert_eq!(
        jobs.iter().map(|j| (j.job_id.as_str(), j.state())).collect::<Vec<_>>(),
        [(job.as_str(), JobState::Succeeded)]
    );
    assert_eq!(predict(&mut server).await, ("v1".to_owned(), "high".to_owned()));
    assert!(server.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_go_on_while_the_database_refuses_connections_and_writes_resume_after() {
    let (role, url) = postgres_database("alps_outage");
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start(&dirs, &url).await;
    create_project(&mut server, 5).await;
    assert_eq!(count(&mut server).await.unwrap(), 10);

    // The database goes away for this server: its sessions end and new ones are refused.
    postgres_admin(&format!(
        "ALTER ROLE {role} CONNECTION LIMIT 0;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    assert_eq!(predict(&mut server).await.0, "untrained", "the hot path does not touch the database");
    // The first call of each session finds it ended, the second finds reconnecting refused.
    for _ in 0..2 {
        let refused = server.examples.add_examples(tokio_stream::iter([examples("late-", 1)])).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("retry with backoff"), "{}", refused.message());
        for secret in ["secret", "127.0.0.1", &role] {
            assert!(!refused.message().contains(secret), "{}", refused.message());
        }
        assert_eq!(count(&mut server).await.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(predict(&mut server).await.0, "untrained");

    // Back: the same request succeeds on a new session, and nothing of the refused one was kept.
    postgres_admin(&format!("ALTER ROLE {role} CONNECTION LIMIT -1"));
    writes_resume(server, "too many connections for role").await;
}

/// Once the database is back: the AddExamples refused during the outage (2 examples on top
/// of 10) succeeds, nothing of the refused one was kept, and the log gives `reason`.
async fn writes_resume(mut server: Server, reason: &str) {
    let added = server.examples.add_examples(tokio_stream::iter([examples("late-", 1)])).await.unwrap();
    assert_eq!(added.into_inner().inserted, 2);
    assert_eq!(count(&mut server).await.unwrap(), 12);
    let log = server.process.log().join("\n");
    assert!(log.contains(reason), "the server's reason is logged:\n{log}");
    assert!(server.stop());
}

/// `call`'s answer; panics after 60 s (a bound for a test that must not hang, not a deadline).
async fn within<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), call).await.expect("an answer within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_go_on_while_the_database_stops_answering_and_other_calls_fail_at_their_deadline() {
    let (_, direct) = postgres_database("alps_frozen");
    let host = direct.rsplit_once('@').and_then(|(_, rest)| rest.split('/').next()).unwrap().to_owned();
    let relay = Relay::start(&host);
    let url = direct.replace(&host, &relay.address());
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start(&dirs, &url).await;
    create_project(&mut server, 5).await;
    assert_eq!(count(&mut server).await.unwrap(), 10);

    // PostgreSQL stops answering without closing a connection (a frozen process): a call that
    // needs it fails at its deadline instead of hanging (60 s is a bound for the test, not the
    // deadline), and one that does not goes on.
    relay.freeze();
    assert_eq!(predict(&mut server).await.0, "untrained", "the hot path does not touch the database");
    let add = server.examples.add_examples(tokio_stream::iter([examples("late-", 1)]));
    let refused = within(add).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("retry with backoff"), "{}", refused.message());
    assert_eq!(within(count(&mut server)).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(predict(&mut server).await.0, "untrained");

    // Answering again: the same request succeeds on a new session, and the one that timed out
    // left nothing (its transaction never reached its commit).
    relay.restore();
    writes_resume(server, "the database did not answer within 15s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_published_in_the_object_store_reaches_every_replica_and_so_does_its_withdrawal() {
    let (_, url) = postgres_database("alps_published");
    let bucket = s3_bucket("alps-published").await;
    let store = format!("s3://{bucket}/alps");
    let dirs: Vec<ServerDirs> = (0..3).map(|_| ServerDirs::new()).collect();
    let mut replicas = Vec::new();
    for dirs in &dirs[..2] {
        install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
        replicas.push(start_on_objects_with(dirs, &url, &store, s3_server(), &["--published-plugins"]).await);
    }
    // One without the flag loads nothing published (writing the bucket is not deploying code).
    install_plugin(&builtin_plugin(), dirs[2].plugins.path(), "builtin.so");
    let unflagged = start_on_objects(&dirs[2], &url, &store, s3_server()).await;
    // The example plugin's heuristic, as each replica lists it: its sha256 if loaded.
    let ratio = |replica: &Server| {
        let mut heuristics = replica.heuristics.clone();
        async move {
            let listed = heuristics.list_heuristics(ListHeuristicsRequest {}).await.unwrap().into_inner();
            listed.heuristics.into_iter().find(|h| h.name == "ratio").map(|h| h.sha256)
        }
    };
    assert_eq!(ratio(&replicas[0]).await, None);
    let plugin = std::fs::read(example_plugin(&[])).unwrap();
    let sha256: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&plugin).iter().map(|b| format!("{b:02x}")).collect()
    };
    let object = format!("{}/{bucket}/alps/plugins/example.so", s3_server());
    assert!(http_client().put(&object).body(plugin).send().await.unwrap().status().is_success());
    for replica in &replicas {
        let loaded = eventually("the published plugin on every replica", || async { ratio(replica).await }).await;
        assert_eq!(loaded, sha256, "the same file everywhere");
    }
    // Past a sync interval and the reload's debounce.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(ratio(&unflagged).await, None, "not without --published-plugins");
    assert!(unflagged.stop());
    // moto refuses an unsigned DELETE: boto3 (which moto brings) signs it.
    let delete = format!(
        "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', \
         aws_secret_access_key='test-secret').delete_object(Bucket='{bucket}', Key='alps/plugins/example.so')",
        s3_server()
    );
    venv_python(&["-c", &delete]);
    for replica in &replicas {
        eventually("the withdrawn plugin gone from every replica", || async {
            ratio(replica).await.is_none().then_some(())
        })
        .await;
    }
    for replica in replicas {
        assert!(replica.stop());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_evicted_from_the_cache_loads_again_from_its_local_copy_while_the_database_is_away() {
    let (role, url) = postgres_database("alps_evicted");
    let bucket = s3_bucket("alps-evicted").await;
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    // A cache of one model: predicting another project evicts the first.
    let flags = ["--model-cache-mib", "0"];
    let mut server = start_on_objects_with(&dirs, &url, &format!("s3://{bucket}/alps"), s3_server(), &flags).await;
    create_project(&mut server, 20).await;
    train_to_end(&mut server).await;
    let v1 = seeded_predictions(&mut server).await;
    assert_eq!(v1.0, "v1");
    server.projects.create_project(CreateProjectRequest { project: Some(mlp_project("q")) }).await.unwrap();
    let predict_other =
        PredictRequest { project_id: "q".into(), samples: vec![tensor(0.5).unwrap()], ..Default::default() };

    postgres_admin(&format!(
        "ALTER ROLE {role} CONNECTION LIMIT 0;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    for _ in 0..2 {
        server.inference.predict(predict_other.clone()).await.unwrap();
        assert_eq!(seeded_predictions(&mut server).await, v1, "loaded again from the fetched copy");
    }
    let log = server.process.log().join("\n");
    assert!(log.contains("evicting model from the cache"), "{log}");
    assert!(log.contains("the catalogue is unreachable; loading the local copy"), "{log}");
    postgres_admin(&format!("ALTER ROLE {role} CONNECTION LIMIT -1"));
    assert!(server.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_data_dir_serves_the_same_predictions_from_postgresql() {
    let (_, url) = postgres_database("alps_migrate");
    let dirs = ServerDirs::new();
    let (server, job, before) = trained_embedded(&dirs).await;
    assert_eq!(before.0, "v1");

    // Not while a server uses the data dir.
    let (migrated, _, stderr) = migrate(dirs.data.path(), &url);
    assert!(!migrated && stderr.contains("is in use by another alps-server"), "{stderr}");
    assert!(server.stop());
    // Nor served with the database before it moved there: the database does not know its
    // samples and model files.
    let data = path_str(dirs.data.path());
    let flags = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let (status, stderr) =
        run_to_exit("alps-server", &[&flags[..], &["--data-dir", data, "--database-url", &url]].concat());
    assert!(!status.success() && stderr.contains("move it into the database with `alps-server migrate`"), "{stderr}");

    // Files are checked before anything is copied: a corrupt sample stops the move.
    let blob = std::fs::read_dir(dirs.data.path().join("blobs"))
        .unwrap()
        .map(|shard| shard.unwrap().path())
        .filter(|shard| shard.file_name().unwrap().len() == 2)
        .flat_map(|shard| std::fs::read_dir(shard).unwrap().map(|f| f.unwrap().path()))
        .next()
        .unwrap();
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, b"not the sample").unwrap();
    let (migrated, _, stderr) = migrate(dirs.data.path(), &url);
    let name = blob.file_name().unwrap().to_str().unwrap();
    assert!(!migrated && stderr.contains(&format!("nothing migrated: sample blob {name} is unusable")), "{stderr}");
    std::fs::write(&blob, bytes).unwrap();
    let bound = || postgres_value(&url, "SELECT data_dir FROM alps_catalogue");
    assert_eq!(bound(), None, "a refused move binds nothing");

    let expected = [
        "migrated 1 project, 40 labelled examples, 1 model version, 1 training job into PostgreSQL; verified \
         (40 sample blobs and 1 model version checked against their sha256)",
        "already migrated: data dir",
    ];
    for expected in expected {
        let (migrated, stdout, stderr) = migrate(dirs.data.path(), &url);
        assert!(migrated, "{stderr}");
        assert!(stdout.starts_with(expected), "{stdout}");
        assert!(!stdout.contains("secret") && !stderr.contains("secret"), "{stdout}{stderr}");
    }
    let id = std::fs::read_to_string(dirs.data.path().join("ID")).unwrap();
    assert_eq!(bound().as_deref(), Some(id.trim()), "the database belongs with the moved data dir");
    // The data dir has moved: served without --database-url, it is refused (its samples and
    // model files would be collected against the old catalogue).
    let (status, stderr) = run_to_exit("alps-server", &[&flags[..], &["--data-dir", data]].concat());
    assert!(!status.success() && stderr.contains("served with the same --database-url"), "{stderr}");

    let mut server = start(&dirs, &url).await;
    assert_eq!(seeded_predictions(&mut server).await, before, "same version, same predictions");
    assert_eq!(count(&mut server).await.unwrap(), 40);
    let jobs = ListTrainingJobsRequest { project_id: "p".into(), limit: 0 };
    let jobs = server.training.list_training_jobs(jobs).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(), [job.as_str()]);
    assert!(server.process.log().iter().any(|line| line.contains("own catalogue was moved by migrate")));
    assert!(server.stop());

    // The database is served with its data dir only: a new (or mistyped) one is refused, since
    // it lacks the database's samples and model files.
    let fresh = ServerDirs::new();
    let flags = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let args = [&flags[..], &["--data-dir", path_str(fresh.data.path()), "--database-url", &url]].concat();
    let (status, stderr) = run_to_exit("alps-server", &args);
    assert!(!status.success() && stderr.contains("serve it with that data dir"), "{stderr}");
    // And the moved data dir with another database says which catalogue it belongs to.
    let (_, other) = postgres_database("alps_migrate_other");
    let args = [&flags[..], &["--data-dir", path_str(dirs.data.path()), "--database-url", &other]].concat();
    let (status, stderr) = run_to_exit("alps-server", &args);
    assert!(!status.success() && stderr.contains("belongs to catalogue"), "{stderr}");

    // migrate moves into an empty database only: one that belongs with another data dir, or
    // already holds projects, could bring back what was deleted there.
    install_plugin(&builtin_plugin(), fresh.plugins.path(), "builtin.so");
    let mut other_server = start(&fresh, &other).await;
    create_project(&mut other_server, 1).await;
    assert!(other_server.stop());
    let local = ServerDirs::new();
    install_plugin(&builtin_plugin(), local.plugins.path(), "builtin.so");
    let mut local_server = start_with(&local, &[]).await;
    create_project(&mut local_server, 1).await;
    assert!(local_server.stop());
    let (migrated, _, stderr) = migrate(local.data.path(), &other);
    assert!(!migrated && stderr.contains("the database belongs with another data dir"), "{stderr}");
    postgres_value(&other, "UPDATE alps_catalogue SET data_dir = NULL");
    let (migrated, _, stderr) = migrate(local.data.path(), &other);
    assert!(!migrated && stderr.contains("the database already holds projects"), "{stderr}");

    // A data dir without a catalogue is refused, naming the file.
    let empty = tempfile::tempdir().unwrap();
    let (migrated, _, stderr) = migrate(empty.path(), &url);
    assert!(!migrated && stderr.contains("no catalogue to migrate"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_and_weights_live_in_the_object_store_and_a_new_data_dir_serves_them() {
    let (_, url) = postgres_database("alps_objects");
    let bucket = s3_bucket("alps-objects").await;
    let relay = Relay::start(s3_server().trim_start_matches("http://"));
    let store = format!("s3://{bucket}/alps");
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start_on_objects(&dirs, &url, &store, &relay.url()).await;
    create_project(&mut server, 20).await;
    train_to_end(&mut server).await;
    let before = seeded_predictions(&mut server).await;
    assert_eq!(before.0, "v1");
    assert_eq!(s3_keys(&bucket, "alps/blobs/").await.len(), 40, "one object per sample");
    assert_eq!(s3_keys(&bucket, "alps/weights/").await.len(), 1, "v1's weights");
    assert!(!dirs.data.path().join("blobs").exists(), "no sample in the data dir");

    // Eight concurrent uploads of the same bytes: every one acknowledged, one object stored.
    let uploads: Vec<_> = (0..8)
        .map(|i| {
            let mut client = server.examples.clone();
            let mut request = examples(&format!("same-{i}-"), 1);
            request.examples.truncate(1);
            request.examples[0].sample = tensor(0.5);
            tokio::spawn(async move { client.add_examples(tokio_stream::iter([request])).await })
        })
        .collect();
    for upload in uploads {
        assert_eq!(upload.await.unwrap().unwrap().into_inner().inserted, 1);
    }
    assert_eq!(s3_keys(&bucket, "alps/blobs/").await.len(), 41);
    assert_eq!(count(&mut server).await.unwrap(), 48);

    // The object store goes away: the loaded model keeps predicting; writes are refused as
    // retryable, naming neither the store nor its address, and keep nothing.
    relay.cut();
    assert_eq!(seeded_predictions(&mut server).await, before);
    let refused = server.examples.add_examples(tokio_stream::iter([examples("late-", 1)])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("retry with backoff"), "{}", refused.message());
    for secret in ["127.0.0.1", bucket.as_str(), "test-secret"] {
        assert!(!refused.message().contains(secret), "{}", refused.message());
    }
    assert_eq!(count(&mut server).await.unwrap(), 48);
    // Back: the same request succeeds.
    relay.restore();
    let added = server.examples.add_examples(tokio_stream::iter([examples("late-", 1)])).await.unwrap();
    assert_eq!(added.into_inner().inserted, 2);
    assert!(server.stop());

    // A new data dir (another node's, or an emptied volume) fetches v1 from the store: the same
    // predictions.
    let fresh = ServerDirs::new();
    install_plugin(&builtin_plugin(), fresh.plugins.path(), "builtin.so");
    let mut server = start_on_objects(&fresh, &url, &store, &relay.url()).await;
    assert_eq!(seeded_predictions(&mut server).await, before);
    assert!(server.process.log().iter().any(|line| line.contains("model version fetched from the object store")));
    assert_eq!(count(&mut server).await.unwrap(), 50);
    assert!(server.stop());

    // A bucket and prefix hold one catalogue's files; a catalogue's files are in one place.
    let flags = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let refused_start_without = |database: &str, store: &str, without: &[&str]| {
        let mut command = std::process::Command::new(binary("alps-server"));
        let data = tempfile::tempdir().unwrap();
        command.args(flags).args(["--data-dir", path_str(data.path()), "--database-url", database]);
        command
            .args(["--object-store-url", store])
            .envs(s3_env(&relay.url()).into_iter().filter(|(name, _)| !without.contains(name)));
        let output = command.output().unwrap();
        assert!(!output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };
    let refused_start = |database: &str, store: &str| refused_start_without(database, store, &[]);
    let (_, other) = postgres_database("alps_objects_other");
    let stderr = refused_start(&other, &store);
    assert!(stderr.contains("holds the files of catalogue"), "{stderr}");
    let stderr = refused_start(&url, &format!("s3://{bucket}/elsewhere"));
    assert!(stderr.contains("samples and model files are not in object store"), "{stderr}");
    let stderr = refused_start(&url, "s3://no-such-bucket/alps");
    assert!(stderr.contains("does the bucket exist"), "{stderr}");
    let stderr = refused_start_without(&url, &store, &["AWS_ALLOW_HTTP"]);
    assert!(stderr.contains("is plain HTTP: set AWS_ALLOW_HTTP=true"), "{stderr}");
    let stderr = refused_start(&url, "bucket/alps");
    assert!(stderr.contains("use s3://bucket/prefix"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_migrated_into_postgresql_and_the_object_store_serves_the_same_predictions_anywhere() {
    let (_, url) = postgres_database("alps_migrate_objects");
    let bucket = s3_bucket("alps-migrate-objects").await;
    let store = format!("s3://{bucket}/cluster");
    let env = s3_env(s3_server());
    let dirs = ServerDirs::new();
    let (server, job, before) = trained_embedded(&dirs).await;
    assert!(server.stop());

    let store_flags = ["--object-store-url", store.as_str()];
    let (migrated, stdout, stderr) = migrate_with(dirs.data.path(), &url, &store_flags, &env);
    assert!(migrated, "{stderr}");
    assert!(stdout.contains("copied and read back 40 sample blobs and the weights of 1 model version"), "{stdout}");
    assert_eq!(s3_keys(&bucket, "cluster/blobs/").await.len(), 40);
    assert_eq!(s3_keys(&bucket, "cluster/weights/").await.len(), 1);
    let (migrated, stdout, _) = migrate_with(dirs.data.path(), &url, &store_flags, &env);
    assert!(migrated && stdout.starts_with("already migrated"), "{stdout}");
    // Its files are in the store now: the database is not served with the data dir's.
    let (migrated, _, stderr) = migrate(dirs.data.path(), &url);
    assert!(!migrated && stderr.contains("with its files kept in an object store"), "{stderr}");

    // Any data dir serves it, the moved one or a new one: same projects, examples, versions,
    // jobs and predictions.
    let mut expected = before;
    for (data, jobs_before) in [(dirs, 1), (ServerDirs::new(), 2)] {
        install_plugin(&builtin_plugin(), data.plugins.path(), "builtin.so");
        let mut server = start_on_objects(&data, &url, &store, s3_server()).await;
        assert_eq!(seeded_predictions(&mut server).await, expected);
        assert_eq!(count(&mut server).await.unwrap(), 40);
        let jobs = ListTrainingJobsRequest { project_id: "p".into(), limit: 0 };
        let jobs = server.training.list_training_jobs(jobs).await.unwrap().into_inner().jobs;
        assert_eq!(jobs.len(), jobs_before);
        assert!(jobs.iter().any(|j| j.job_id == job));
        // Training reads the samples from the store and publishes its weights there.
        train_to_end(&mut server).await;
        expected = seeded_predictions(&mut server).await;
        assert!(server.stop());
    }
    assert_eq!(expected.0, "v3");
    assert_eq!(s3_keys(&bucket, "cluster/weights/").await.len(), 3, "v1, and v2 and v3 trained from the store");
}

#[tokio::test]
async fn a_replica_whose_database_or_object_store_does_not_answer_at_start_exits_without_serving() {
    let (_, url) = postgres_database("alps_unreachable");
    let bucket = s3_bucket("alps-unreachable").await;
    let store = format!("s3://{bucket}/alps");
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let flags = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let start = |database: &str, endpoint: &str| {
        let env = s3_env(endpoint);
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let more = ["--data-dir", path_str(dirs.data.path()), "--database-url", database, "--object-store-url", &store];
        run_to_exit_with_env("alps-server", &[&flags[..], &more].concat(), &env)
    };
    // Nothing listens where the database should be: the server exits before it serves, naming
    // the flag and not the password.
    let host = url.rsplit_once('@').and_then(|(_, rest)| rest.split('/').next()).unwrap().to_owned();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (status, stderr) = start(&url.replace(&host, &closed), s3_server());
    assert!(!status.success() && stderr.contains("cannot open the database (--database-url)"), "{stderr}");
    assert!(!stderr.contains("secret"), "neither password: {stderr}");
    // The object store refuses connections: the same.
    let relay = Relay::start(s3_server().trim_start_matches("http://"));
    relay.cut();
    let (status, stderr) = start(&url, &relay.url());
    assert!(!status.success() && stderr.contains("object store"), "{stderr}");
    // Both back: it serves.
    relay.restore();
    let mut server = start_on_objects(&dirs, &url, &store, &relay.url()).await;
    create_project(&mut server, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_postgresql_and_the_object_store_serve_every_project_and_follow_each_other() {
    let (_, url) = postgres_database("alps_replicas");
    let bucket = s3_bucket("alps-replicas").await;
    let store = format!("s3://{bucket}/alps");
    // Three replicas, and a fourth that joins late. The second reaches PostgreSQL through a
    // relay, so that the test can keep it from reconnecting.
    let host = url.rsplit_once('@').and_then(|(_, rest)| rest.split('/').next()).unwrap().to_owned();
    let relay = Relay::start(&host);
    let relayed = url.replace(&host, &relay.address());
    let dirs: Vec<ServerDirs> = (0..4).map(|_| ServerDirs::new()).collect();
    let mut replicas = Vec::new();
    for dirs in &dirs {
        install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    }
    for (index, dirs) in dirs[..3].iter().enumerate() {
        let url = if index == 1 { &relayed } else { &url };
        replicas.push(start_on_objects(dirs, url, &store, s3_server()).await);
    }
    // A server whose files are in its data dir cannot join them.
    let alone = ServerDirs::new();
    let flags = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    let args = [&flags[..], &["--data-dir", path_str(alone.data.path()), "--database-url", &url]].concat();
    let (status, stderr) = run_to_exit("alps-server", &args);
    assert!(!status.success() && stderr.contains("another alps-server uses this database"), "{stderr}");

    // Made on one, served by every one.
    create_project(&mut replicas[0], 20).await;
    for replica in &mut replicas[1..] {
        let inference = replica.inference.clone();
        let request =
            PredictRequest { project_id: "p".into(), samples: vec![tensor(0.5).unwrap()], ..Default::default() };
        eventually("the project on every replica", || {
            let (mut inference, request) = (inference.clone(), request.clone());
            async move { inference.predict(request).await.ok() }
        })
        .await;
    }

    // Trained on another: the new version is served by all three.
    let job = train_to_end(&mut replicas[1]).await;
    let v1 = seeded_predictions(&mut replicas[1]).await;
    assert_eq!(v1.0, "v1");
    follow_within(&mut replicas, &v1, PROPAGATION_BOUND).await;
    // Jobs are read from any replica.
    let request = GetTrainingJobRequest { job_id: job.clone() };
    let found = replicas[2].training.get_training_job(request).await.unwrap().into_inner().job.unwrap();
    assert_eq!(found.state(), JobState::Succeeded);

    // Trained again on the third, rolled back on the first: all follow both.
    train_to_end(&mut replicas[2]).await;
    let v2 = seeded_predictions(&mut replicas[2]).await;
    assert_eq!(v2.0, "v2");
    follow_within(&mut replicas, &v2, PROPAGATION_BOUND).await;
    // The rollback's notification cannot reach the second replica: its database sessions (its
    // listener's too) are ended just before, and it cannot connect again until the rollback is
    // done. Its new listener starts after the notification, so only its periodic reconcile can
    // catch the rollback.
    let second = replica_id(&mut replicas[1]);
    relay.cut();
    postgres_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'alps-server {second}'"
    ));
    let rollback = ActivateModelVersionRequest { project_id: "p".into(), version: "v1".into() };
    replicas[0].models.activate_model_version(rollback).await.unwrap();
    relay.restore();
    follow(&mut replicas, &v1).await;
    // The replicas that followed the rollback found v1 loaded already (once: the one that
    // trained it when it activated it, the third when it followed); the first loaded it when it
    // followed and again for its own ActivateModelVersion, which reads and checks the files.
    let counts: Vec<usize> = replicas.iter_mut().map(|replica| loads(replica, "v1")).collect();
    assert_eq!(counts, [2, 1, 1]);
    // Each replica made one of the three activations (v1, v2, the rollback) and followed the
    // other two: its activation histogram counts all three, the followed ones from their time
    // in the catalogue (a replica racing its own activation may count it twice). A follower
    // records it just after it swaps the version in, so the count may trail a prediction.
    for replica in &mut replicas {
        let metrics = replica.process.listening_addr("metrics");
        eventually("every replica to count the three activations", || {
            let metrics = metrics.clone();
            async move { (activations(&metrics).await >= 3.0).then_some(()) }
        })
        .await;
    }

    // Train asked of all three at once: one job runs, the other triggers coalesce into one
    // queued job, which runs after it; never two at once.
    let trains: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let mut training = replica.training.clone();
            // Long enough that all three triggers arrive while it runs. The second replica's
            // first write after its sessions ended may find its session broken: UNAVAILABLE,
            // and a client tries again.
            tokio::spawn(async move {
                loop {
                    match training.train(train_request(2_000)).await {
                        Err(status) if status.code() == Code::Unavailable => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        answer => break answer,
                    }
                }
            })
        })
        .collect();
    let mut jobs = std::collections::BTreeMap::new();
    for train in trains {
        let response = train.await.unwrap().unwrap().into_inner();
        *jobs.entry(response.job.unwrap().job_id).or_insert(0) += 1;
    }
    // Two when the first starts before the others arrive; one when the others queue their
    // trigger before the replica that claimed the project takes what is queued.
    assert!((1..=2).contains(&jobs.len()), "at most one running and one queued job for three triggers: {jobs:?}");
    let mut ended = Vec::new();
    for job in jobs.keys() {
        let job = job_ended(&replicas[2], job).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        ended.push(job);
    }
    ended.sort_by_key(|job| job.started_unix_ms);
    assert!(
        ended.windows(2).all(|two| two[0].finished_unix_ms <= two[1].started_unix_ms),
        "one after the other: {ended:?}"
    );
    let newest = ended.last().unwrap().model_version.clone();
    served_everywhere(&mut replicas, &newest).await;

    // A job's progress is read on any replica, and a cancel asked of any replica reaches it.
    let running = replicas[0].training.train(long_request()).await.unwrap().into_inner().job.unwrap();
    in_epochs(&replicas[2], &running.job_id, "the job's progress on another replica").await;
    let request = CancelTrainingJobRequest { job_id: running.job_id.clone() };
    replicas[1].training.cancel_training_job(request).await.unwrap();
    let cancelled = job_ended(&replicas[1], &running.job_id).await;
    assert_eq!(cancelled.state(), JobState::Cancelled, "{cancelled:?}");

    // A replica paused and cut off from the database while it trains: once its lease runs out,
    // another replica takes the project over (the paused job fails, the trigger queued meanwhile
    // runs), and the paused one, resumed, activates nothing.
    let paused = replicas[0].training.train(train_request(2_000)).await.unwrap().into_inner().job.unwrap();
    let id = replica_id(&mut replicas[0]);
    // Paused in the middle of its epochs, past the reads that start a job.
    in_epochs(&replicas[0], &paused.job_id, "the job in its epochs").await;
    replicas[0].process.signal(libc::SIGSTOP);
    postgres_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'alps-server {id}'"
    ));
    let long = replicas[1].training.train(long_request()).await.unwrap().into_inner().job.unwrap();
    assert_ne!(long.job_id, paused.job_id);
    assert_eq!(long.state(), JobState::Queued, "the paused replica's lease still holds");
    let failed = job_ended(&replicas[1], &paused.job_id).await;
    assert_eq!(failed.state(), JobState::Failed, "{failed:?}");
    let taken_over = format!("lost the project's training lease, before it ended; job {}, queued, trains", long.job_id);
    assert!(failed.error.starts_with("interrupted: ") && failed.error.contains(&taken_over), "{failed:?}");
    in_epochs(&replicas[2], &long.job_id, "the queued job running elsewhere").await;
    replicas[0].process.signal(libc::SIGCONT);
    let stopped =
        replicas[0].process.wait_for_log("another replica took over this project's training lease; stopping the job");
    assert_eq!(stopped["job"], paused.job_id.as_str(), "{stopped}");
    replicas[0].process.wait_for_log("training ended");
    assert_eq!(read_job(&replicas[1], &paused.job_id).await.unwrap(), failed, "the first verdict stands");
    let project = replicas[1].projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap();
    assert_eq!(
        project.into_inner().project.unwrap().active_model_version,
        newest,
        "the paused replica activated nothing"
    );

    // The replica running the long job is killed with a trigger queued behind it: after the
    // lease another replica records the job as failed and runs the queued one, whose version
    // every replica left serves; a watch of the killed job on a third replica follows it to
    // its end.
    let runner = replicas.iter_mut().position(|replica| runs_job(replica, &long.job_id)).expect("a replica runs it");
    let (queue_on, watch_on) = match runner {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let next = replicas[queue_on].training.train(train_request(50)).await.unwrap().into_inner().job.unwrap();
    assert_eq!(next.state(), JobState::Queued);
    let request = WatchTrainingJobRequest { job_id: long.job_id.clone() };
    let mut watch = replicas[watch_on].training.watch_training_job(request).await.unwrap().into_inner();
    let killed = replicas.remove(runner);
    killed.process.signal(libc::SIGKILL);
    let failed = job_ended(&replicas[0], &long.job_id).await;
    assert_eq!(failed.state(), JobState::Failed);
    assert!(failed.error.contains("interrupted"), "{failed:?}");
    let mut watched = Vec::new();
    while let Some(record) = watch.message().await.unwrap() {
        watched.push(record.state());
    }
    assert_eq!(watched.first(), Some(&JobState::Running));
    assert_eq!(watched.last(), Some(&JobState::Failed), "{watched:?}");
    let finished = job_ended(&replicas[1], &next.job_id).await;
    assert_eq!(finished.state(), JobState::Succeeded, "{finished:?}");
    served_everywhere(&mut replicas, &finished.model_version).await;

    // A replica stopped while it trains (a rolling update): its job fails as interrupted and is
    // queued again, the other replica runs it, and a replica started meanwhile serves the result.
    let interrupted = replicas[0].training.train(train_request(5_000)).await.unwrap().into_inner().job.unwrap();
    in_epochs(&replicas[0], &interrupted.job_id, "the job in its epochs").await;
    assert!(replicas.remove(0).stop(), "a clean exit");
    let failed = job_ended(&replicas[0], &interrupted.job_id).await;
    assert_eq!(failed.state(), JobState::Failed, "{failed:?}");
    let (_, retry) = failed.error.split_once("; retried as job ").unwrap_or_else(|| panic!("{failed:?}"));
    let retry = retry.split_once(' ').unwrap().0;
    replicas.push(start_on_objects(&dirs[3], &url, &store, s3_server()).await);
    let retried = job_ended(&replicas[1], retry).await;
    assert_eq!(retried.state(), JobState::Succeeded, "{retried:?}");
    assert_eq!((failed.attempt, retried.attempt), (1, 2), "the retry says which try it is");
    assert!(retry.starts_with(&format!("{}-retry", interrupted.job_id)), "{retry}");
    served_everywhere(&mut replicas, &retried.model_version).await;

    // Deleted on one while another trains it: gone from the other, which cancels the job.
    let doomed = replicas[0].training.train(long_request()).await.unwrap().into_inner().job.unwrap();
    in_epochs(&replicas[0], &doomed.job_id, "the job before the deletion").await;
    let trainer = (0..replicas.len()).find(|&i| runs_job(&mut replicas[i], &doomed.job_id)).expect("the job's replica");
    let deleter = (trainer + 1) % replicas.len();
    replicas[deleter].projects.delete_project(DeleteProjectRequest { project_id: "p".into() }).await.unwrap();
    let deadline = std::time::Instant::now() + PROPAGATION_BOUND;
    let ended = loop {
        let log = replicas[trainer].process.log();
        if let Some(line) = log.iter().find(|line| line.contains("training ended") && line.contains(&doomed.job_id)) {
            break line.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the job still runs {PROPAGATION_BOUND:?} after the deletion");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ended.contains("Cancelled"), "{ended}");
    let projects = replicas[trainer].projects.clone();
    eventually("the project gone from the other replica", || {
        let mut projects = projects.clone();
        async move {
            let gone = projects.get_project(GetProjectRequest { project_id: "p".into() }).await.err()?;
            (gone.code() == Code::NotFound).then_some(())
        }
    })
    .await;
    for replica in replicas {
        assert!(replica.stop());
    }
}

/// Training for `epochs` epochs, seeded.
fn train_request(epochs: u32) -> TrainRequest {
    let parameters = TrainingParameters { epochs, seed: Some(1), learning_rate: 0.01, ..Default::default() };
    TrainRequest { project_id: "p".into(), parameters: Some(parameters), activate: None }
}

/// A job that runs until it is cancelled, taken over or stopped: 10,000 epochs of one example
/// a step (a few seconds in batches of 32 on one thread).
fn long_request() -> TrainRequest {
    let mut request = train_request(10_000);
    request.parameters.as_mut().unwrap().batch_size = 1;
    request
}

/// Job `job_id` as `replica` reads it from the catalogue.
async fn read_job(replica: &Server, job_id: &str) -> Option<alps_proto::v1::TrainingJob> {
    let request = GetTrainingJobRequest { job_id: job_id.to_owned() };
    replica.training.clone().get_training_job(request).await.ok()?.into_inner().job
}

/// Waits until job `job_id` has ended, as `replica` reads it.
async fn job_ended(replica: &Server, job_id: &str) -> alps_proto::v1::TrainingJob {
    eventually(&format!("job {job_id} ended"), || async {
        read_job(replica, job_id)
            .await
            .filter(|job| matches!(job.state(), JobState::Succeeded | JobState::Failed | JobState::Cancelled))
    })
    .await
}

/// How often `replica` logged loading project "p"'s `version`.
/// The count of the `alps_activation_seconds` histogram of the server whose metrics listen on
/// `metrics`.
async fn activations(metrics: &str) -> f64 {
    let text = http_client().get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    let count = text.lines().find_map(|line| line.strip_prefix("alps_activation_seconds_count "));
    count.and_then(|value| value.trim().parse().ok()).unwrap_or_else(|| panic!("no activation histogram in {text}"))
}

fn loads(replica: &mut Server, version: &str) -> usize {
    let loaded = |line: &&String| {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let fields = &event["fields"];
        fields["message"] == "model loaded" && fields["project"] == "p" && fields["version"] == version
    };
    replica.process.log().iter().filter(loaded).count()
}

/// Whether `replica` logged the start of job `job_id`.
fn runs_job(replica: &mut Server, job_id: &str) -> bool {
    replica.process.log().iter().any(|line| line.contains("training started") && line.contains(job_id))
}

/// The replica id `replica` logged at start.
fn replica_id(replica: &mut Server) -> String {
    let log = replica.process.log();
    let line = log.iter().find(|line| line.contains("catalogue in PostgreSQL")).expect("the catalogue log");
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    event["fields"]["replica"].as_str().unwrap().to_owned()
}

/// Waits until the first replica serves `version`, then until every replica serves it with the
/// same seeded predictions.
async fn served_everywhere(replicas: &mut [Server], version: &str) {
    let inference = replicas[0].inference.clone();
    let latest = eventually(&format!("{version} served"), || {
        let mut inference = inference.clone();
        async move {
            let response = inference.predict(seeded_request()).await.ok()?.into_inner();
            (response.model_version == version).then_some((response.model_version, response.results))
        }
    })
    .await;
    follow(replicas, &latest).await;
}

/// Waits until `replica` reads job `job_id` past its first epoch (`what` says which job).
async fn in_epochs(replica: &Server, job_id: &str, what: &str) {
    eventually(what, || async { read_job(replica, job_id).await.filter(|job| job.epoch >= 1).map(drop) }).await;
}

/// Waits until every replica serves `expected` (a version and its seeded predictions).
async fn follow(replicas: &mut [Server], expected: &(String, Vec<alps_proto::v1::PredictResult>)) {
    follow_within(replicas, expected, PROCESS_TIMEOUT).await;
}

/// How soon every replica serves a version once the replica that trained it does: the change
/// notification (or the re-read every 2 s that catches a lost one), the fetch and the load of
/// a small model, with room for a loaded test machine. A bound, not a timing: a replica that
/// followed only by chance (neither notified nor re-reading) fails it.
const PROPAGATION_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// [`follow`], failing if it takes longer than `bound` from now.
async fn follow_within(
    replicas: &mut [Server],
    expected: &(String, Vec<alps_proto::v1::PredictResult>),
    bound: std::time::Duration,
) {
    let start = std::time::Instant::now();
    for replica in replicas.iter() {
        let inference = replica.inference.clone();
        eventually(&format!("every replica serving {}", expected.0), || {
            let mut inference = inference.clone();
            async move {
                let response = inference.predict(seeded_request()).await.ok()?.into_inner();
                ((response.model_version.as_str(), &response.results) == (expected.0.as_str(), &expected.1))
                    .then_some(())
            }
        })
        .await;
    }
    assert!(start.elapsed() < bound, "every replica served {} only after {:?}", expected.0, start.elapsed());
}
