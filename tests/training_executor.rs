//! Training jobs own their resources (real server): each job and each seeded request draws
//! from a generator of its own, so results are reproducible whatever else runs; and at most
//! `--training-jobs` jobs train at once, the others waiting their turn.

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CancelTrainingJobRequest, CreateProjectRequest, GetTrainingJobRequest, JobState,
    LabelledExample, ListModelVersionsRequest, ModelSpec, PredictRequest, Preprocessing, Project, Sample, Tensor,
    TrainRequest, TrainingJob, TrainingParameters, WatchTrainingJobRequest,
    example_service_client::ExampleServiceClient, inference_service_client::InferenceServiceClient,
    model_version_service_client::ModelVersionServiceClient, predict_result::Outcome,
    project_service_client::ProjectServiceClient, sample::Input, training_service_client::TrainingServiceClient,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, eventually, http_client, install_plugin, start_server};
use tonic::transport::Channel;

struct Server {
    process: Process,
    projects: ProjectServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    training: TrainingServiceClient<Channel>,
    versions: ModelVersionServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
    _dirs: ServerDirs,
}

async fn start(flags: &[&str]) -> Server {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    start_in(dirs, flags).await
}

/// A server on `dirs` (a fresh one, or the data of one that stopped), with its clients.
async fn start_in(dirs: ServerDirs, flags: &[&str]) -> Server {
    let (process, grpc) = start_server(&dirs, flags);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server {
        process,
        projects: ProjectServiceClient::new(channel.clone()),
        examples: ExampleServiceClient::new(channel.clone()),
        training: TrainingServiceClient::new(channel.clone()),
        versions: ModelVersionServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
        _dirs: dirs,
    }
}

fn tensor(values: Vec<f32>) -> Option<Sample> {
    Some(Sample { id: String::new(), input: Some(Input::Tensor(Tensor { shape: vec![1, 4, 4], data: values })) })
}

/// An MLP project `id` (classes low/high over 1×4×4 inputs, dropout 0.5) with 30 labelled
/// examples per class. Every project made here has the same spec and examples, so the same
/// untrained weights and, trained with the same seed, the same trained weights.
async fn project_with_examples(server: &mut Server, id: &str) {
    let project = Project {
        id: id.into(),
        classes: vec!["low".into(), "high".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 4, height: 4, channels: 1, ..Default::default() }),
        ..Default::default()
    };
    server.projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let examples: Vec<LabelledExample> = (0..30)
        .flat_map(|i| {
            [("low", 0.2f32), ("high", 0.8)].map(|(class, centre)| LabelledExample {
                external_id: format!("{class}-{i}"),
                sample: tensor((0..16).map(|_| centre + (rng.f32() - 0.5) * 0.6).collect()),
                class_name: class.into(),
                metadata: Default::default(),
                label_revision: 0,
            })
        })
        .collect();
    let request = AddExamplesRequest { project_id: id.into(), examples };
    server.examples.add_examples(tokio_stream::iter([request])).await.unwrap();
}

async fn train(server: &mut Server, project: &str, epochs: u32, seed: u64) -> TrainingJob {
    submit(server, project, TrainingParameters { epochs, seed: Some(seed), learning_rate: 0.01, ..Default::default() })
        .await
}

/// Starts a job of `project` with `parameters`; its first record.
async fn submit(server: &mut Server, project: &str, parameters: TrainingParameters) -> TrainingJob {
    let request = TrainRequest { project_id: project.into(), parameters: Some(parameters), activate: None };
    server.training.train(request).await.unwrap().into_inner().job.unwrap()
}

async fn job(server: &mut Server, job: &str) -> TrainingJob {
    server
        .training
        .get_training_job(GetTrainingJobRequest { job_id: job.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

/// Streams `job` until it ends; its last record.
async fn until_ended(server: &mut Server, job: &str) -> TrainingJob {
    let request = WatchTrainingJobRequest { job_id: job.into() };
    let mut stream = server.training.watch_training_job(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(record) = stream.message().await.unwrap() {
        last = Some(record);
    }
    last.expect("at least one record")
}

/// Waits until `job` has trained at least one epoch.
async fn until_training(server: &mut Server, job: &str) {
    let request = WatchTrainingJobRequest { job_id: job.into() };
    let mut stream = server.training.watch_training_job(request).await.unwrap().into_inner();
    while let Some(record) = stream.message().await.unwrap() {
        if record.epoch > 0 {
            return;
        }
    }
    panic!("job {job} ended before its first epoch");
}

async fn weights_sha256(server: &mut Server, project: &str) -> String {
    let request = ListModelVersionsRequest { project_id: project.into() };
    let versions = server.versions.list_model_versions(request).await.unwrap().into_inner().versions;
    assert_eq!(versions.len(), 1, "{versions:?}");
    versions[0].weights_sha256.clone()
}

/// Seeded MC-Dropout probabilities of 8 fixed samples on `project`, K = 50.
async fn seeded_probabilities(server: &mut Server, project: &str) -> Vec<f32> {
    let samples = (0..8).map(|i| Sample { id: format!("s{i}"), ..tensor(vec![i as f32 / 8.0; 16]).unwrap() }).collect();
    let request = PredictRequest {
        project_id: project.into(),
        samples,
        mc_iterations: 50,
        seed: Some(9),
        return_mc_samples: true,
        ..Default::default()
    };
    let response = server.inference.predict(request).await.unwrap().into_inner();
    response
        .results
        .into_iter()
        .flat_map(|result| match result.outcome {
            Some(Outcome::Prediction(prediction)) => prediction.mc_samples.expect("asked for").data,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn seeded_predictions_and_seeded_training_do_not_depend_on_what_else_runs() {
    let mut server = start(&["--training-jobs", "2"]).await;
    for id in ["alone", "left", "right", "served"] {
        project_with_examples(&mut server, id).await;
    }
    // References with nothing else running: a seeded prediction and a seeded training run.
    let quiet = seeded_probabilities(&mut server, "served").await;
    assert_eq!(quiet.len(), 8 * 50 * 2);
    let reference = train(&mut server, "alone", 60, 5).await;
    assert_eq!(until_ended(&mut server, &reference.job_id).await.state, JobState::Succeeded as i32);
    let reference = weights_sha256(&mut server, "alone").await;

    // The same seed on two projects training at once (both draw dropout masks every step), with
    // seeded predictions on a third project meanwhile: each must equal its quiet reference.
    let left = train(&mut server, "left", 60, 5).await;
    let right = train(&mut server, "right", 60, 5).await;
    until_training(&mut server, &left.job_id).await;
    let mut busy = 0;
    let running = [JobState::Queued as i32, JobState::Running as i32];
    while running.contains(&job(&mut server, &right.job_id).await.state) {
        let busy_run = seeded_probabilities(&mut server, "served").await;
        let differ = busy_run.iter().zip(&quiet).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "a seeded Predict changed while training ran: {differ} of {} values", quiet.len());
        busy += 1;
    }
    assert!(busy > 0, "no prediction ran while the jobs trained");
    assert_eq!(job(&mut server, &right.job_id).await.state, JobState::Succeeded as i32);
    assert_eq!(until_ended(&mut server, &left.job_id).await.state, JobState::Succeeded as i32);
    assert_eq!(weights_sha256(&mut server, "left").await, reference, "concurrent training changed the weights");
    assert_eq!(weights_sha256(&mut server, "right").await, reference, "concurrent training changed the weights");

    // A different seed trains other weights: the comparison above can fail.
    project_with_examples(&mut server, "other").await;
    let other = train(&mut server, "other", 60, 6).await;
    assert_eq!(until_ended(&mut server, &other.job_id).await.state, JobState::Succeeded as i32);
    assert_ne!(weights_sha256(&mut server, "other").await, reference);
}

/// The value of `alps_training_jobs{state="<state>"}` on the metrics endpoint.
async fn training_gauge(metrics: &str, state: &str) -> Option<i64> {
    let text = http_client().get(format!("http://{metrics}/metrics")).send().await.ok()?.text().await.ok()?;
    let prefix = format!("alps_training_jobs{{state=\"{state}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[tokio::test]
async fn jobs_beyond_the_limit_wait_in_order_and_a_waiting_job_can_be_cancelled() {
    let mut server = start(&[]).await; // --training-jobs defaults to 1
    let metrics = server.process.listening_addr("metrics");
    for id in ["first", "second", "third"] {
        project_with_examples(&mut server, id).await;
    }
    let first = train(&mut server, "first", 10_000, 1).await;
    until_training(&mut server, &first.job_id).await;
    let second = train(&mut server, "second", 5, 1).await;
    let third = train(&mut server, "third", 5, 1).await;
    eventually("two jobs waiting for the training slot", || async {
        (training_gauge(&metrics, "running").await == Some(1) && training_gauge(&metrics, "waiting").await == Some(2))
            .then_some(())
    })
    .await;
    // Waiting jobs stay queued, whatever the time: the slot is held by the first job.
    for waiting in [&second, &third] {
        assert_eq!(job(&mut server, &waiting.job_id).await.state, JobState::Queued as i32);
    }

    // Cancelling a waiting job ends it at once and frees its project.
    let cancelled = CancelTrainingJobRequest { job_id: second.job_id.clone() };
    let cancelled = server.training.cancel_training_job(cancelled).await.unwrap().into_inner().job.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled as i32, "{cancelled:?}");
    assert_eq!(cancelled.error, "cancelled before it started");
    let again = eventually("the cancelled job's project accepting a new job", || {
        let mut training = server.training.clone();
        async move {
            let parameters = TrainingParameters { epochs: 5, seed: Some(1), learning_rate: 0.01, ..Default::default() };
            let request = TrainRequest { project_id: "second".into(), parameters: Some(parameters), activate: None };
            let response = training.train(request).await.ok()?.into_inner();
            // A job of its own, not one coalesced into a project still marked busy.
            (!response.coalesced).then_some(response.job?)
        }
    })
    .await;
    assert_eq!(again.state, JobState::Queued as i32);

    // Freeing the slot runs the waiting jobs in the order they asked: third, then second.
    let stop = CancelTrainingJobRequest { job_id: first.job_id.clone() };
    server.training.cancel_training_job(stop).await.unwrap();
    let third = until_ended(&mut server, &third.job_id).await;
    let again = until_ended(&mut server, &again.job_id).await;
    assert_eq!((third.state, again.state), (JobState::Succeeded as i32, JobState::Succeeded as i32));
    assert!(third.started_unix_ms <= again.started_unix_ms, "{third:?} {again:?}");
    assert_eq!(training_gauge(&metrics, "running").await, Some(0));
    assert_eq!(training_gauge(&metrics, "waiting").await, Some(0));
}

#[tokio::test]
async fn training_jobs_must_be_at_least_one() {
    let (status, log) = alps_system_tests::run_to_exit("alps-server", &["--training-jobs", "0"]);
    assert!(!status.success());
    assert!(log.contains("--training-jobs"), "{log}");
}

// Multi-threaded so the client's connection answers the server's GOAWAY while the test thread
// blocks waiting for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_jobs_train_and_wait_stops_them_and_exits_cleanly() {
    let mut server = start(&[]).await;
    for id in ["first", "second"] {
        project_with_examples(&mut server, id).await;
    }
    let first = train(&mut server, "first", 10_000, 1).await;
    until_training(&mut server, &first.job_id).await;
    let second = train(&mut server, "second", 10_000, 1).await;
    let status = server.process.terminate();
    assert!(status.success(), "{status:?}");
    let log = server.process.log();
    let stopped = log.iter().position(|line| line.contains("\"stopped\"")).expect("a stopped line");
    let ended = log.iter().position(|line| line.contains("training ended") && line.contains(&first.job_id));
    assert!(ended.is_some_and(|ended| ended < stopped), "the running job must end before the process: {log:#?}");

    // Both jobs are recorded as interrupted, and the next start runs nothing of them.
    let mut restarted = start_in(server._dirs, &[]).await;
    for job in [&first, &second] {
        let request = GetTrainingJobRequest { job_id: job.job_id.clone() };
        let record = restarted.training.get_training_job(request).await.unwrap().into_inner().job.unwrap();
        assert_eq!(record.state, JobState::Failed as i32, "{record:?}");
        assert!(record.error.starts_with("interrupted: the server stopped"), "{record:?}");
    }
}

/// `weights_sha256` of each of `project`'s versions, oldest first.
async fn version_checksums(server: &mut Server, project: &str) -> Vec<String> {
    let request = ListModelVersionsRequest { project_id: project.into() };
    let mut versions = server.versions.list_model_versions(request).await.unwrap().into_inner().versions;
    versions.sort_by_key(|v| v.created_unix_ms);
    versions.into_iter().map(|v| v.weights_sha256).collect()
}

/// Trains `project` with `mode` and `seed` to the end.
async fn train_mode(server: &mut Server, project: &str, mode: alps_proto::v1::TrainingMode, seed: u64) {
    let parameters = TrainingParameters {
        epochs: 20,
        seed: Some(seed),
        learning_rate: 0.01,
        mode: mode as i32,
        ..Default::default()
    };
    let job = submit(server, project, parameters).await;
    assert_eq!(until_ended(server, &job.job_id).await.state, JobState::Succeeded as i32);
}

// Multi-threaded so the client answers the server's GOAWAY while the test waits for the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_from_the_model_kept_in_memory_equals_one_from_the_stored_version() {
    use alps_proto::v1::TrainingMode::{Full, HeadOnly};
    // Kept: v2 and v3 start from the model the previous job left in memory.
    let mut warm = start(&[]).await;
    project_with_examples(&mut warm, "p").await;
    train_mode(&mut warm, "p", Full, 1).await;
    train_mode(&mut warm, "p", HeadOnly, 2).await;
    train_mode(&mut warm, "p", HeadOnly, 3).await;
    let kept = version_checksums(&mut warm, "p").await;
    let from_memory =
        warm.process.log().iter().filter(|l| l.contains("starting from the model kept in memory")).count();
    assert_eq!(from_memory, 2, "the second and third jobs start from the kept model");

    // Cold: a restart before each retrain, so each starts from the files on disk.
    let mut cold = start(&[]).await;
    project_with_examples(&mut cold, "p").await;
    for (mode, seed) in [(Full, 1), (HeadOnly, 2), (HeadOnly, 3)] {
        train_mode(&mut cold, "p", mode, seed).await;
        assert!(cold.process.terminate().success());
        cold = start_in(cold._dirs, &[]).await;
    }
    assert_eq!(kept.len(), 3);
    assert_eq!(version_checksums(&mut cold, "p").await, kept, "the kept model must be the stored version");
}
