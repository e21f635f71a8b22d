//! Training and model versions on the real server: background jobs with a progress stream,
//! coalescing, predictions served by the active version during training, rollback, checksum
//! detection of corrupted weights, crash safety (kill -9 during training and during the
//! checkpoint write), and a project deleted (and made again) under a running job.

use alps_proto::v1::{
    ActivateModelVersionRequest, AddExamplesRequest, Architecture, CreateProjectRequest, GetProjectRequest, JobState,
    LabelledExample, ListModelVersionsRequest, ListTrainingJobsRequest, ModelSpec, PredictRequest, Preprocessing,
    Project, Sample, Tensor, TrainRequest, TrainingJob, TrainingMode, TrainingParameters, UpdateProjectRequest,
    WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
    inference_service_client::InferenceServiceClient, model_version_service_client::ModelVersionServiceClient,
    predict_result::Outcome, project_service_client::ProjectServiceClient, sample::Input,
    training_service_client::TrainingServiceClient,
};
use alps_system_tests::{
    Process, ServerDirs, builtin_plugin, http_client, install_plugin, project_models_dir, start_server_with_env,
};
use tonic::{Code, transport::Channel};

struct Server {
    dirs: ServerDirs,
    process: Process,
    projects: ProjectServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    training: TrainingServiceClient<Channel>,
    versions: ModelVersionServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
}

async fn start(dirs: ServerDirs, flags: &[&str], env: &[(&str, &str)]) -> Server {
    let (process, grpc) = start_server_with_env(&dirs, flags, env);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server {
        dirs,
        process,
        projects: ProjectServiceClient::new(channel.clone()),
        examples: ExampleServiceClient::new(channel.clone()),
        training: TrainingServiceClient::new(channel.clone()),
        versions: ModelVersionServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
    }
}

fn tensor(value: f32) -> Option<Sample> {
    Some(Sample {
        id: String::new(),
        input: Some(Input::Tensor(Tensor { shape: vec![1, 2, 2], data: vec![value; 4] })),
    })
}

/// An MLP project: classes low/high over 1×2×2 inputs.
fn mlp_project(id: &str) -> Project {
    Project {
        id: id.into(),
        classes: vec!["low".into(), "high".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    }
}

/// Creates the MLP project "p" (see [`mlp_project`]).
async fn create_project(server: &mut Server) {
    let project = mlp_project("p");
    server.projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
}

/// A fresh server with an MLP project "p" (classes low/high over 1×2×2 inputs) and `per_class`
/// labelled examples of each class (low ≈ 0.1, high ≈ 0.9).
async fn server_with_examples(per_class: usize, flags: &[&str]) -> Server {
    server_with_examples_and_env(per_class, flags, &[]).await
}

/// As [`server_with_examples`], the server started with the environment variables `env` (fault
/// injection).
async fn server_with_examples_and_env(per_class: usize, flags: &[&str], env: &[(&str, &str)]) -> Server {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start(dirs, flags, env).await;
    create_project(&mut server).await;
    add_low_and_high(&mut server, per_class).await;
    server
}

/// Adds `per_class` labelled examples of each class to project "p" (low ≈ 0.1, high ≈ 0.9).
async fn add_low_and_high(server: &mut Server, per_class: usize) {
    let examples: Vec<LabelledExample> = (0..per_class)
        .flat_map(|i| {
            let jitter = i as f32 * 0.005;
            [("low", 0.1 + jitter), ("high", 0.9 - jitter)].map(|(class, value)| LabelledExample {
                external_id: format!("{class}-{i}"),
                sample: tensor(value),
                class_name: class.into(),
                metadata: Default::default(),
                label_revision: 0,
            })
        })
        .collect();
    let request = AddExamplesRequest { project_id: "p".into(), examples };
    server.examples.add_examples(tokio_stream::iter([request])).await.unwrap();
}

fn train_request(epochs: u32) -> TrainRequest {
    TrainRequest {
        project_id: "p".into(),
        parameters: Some(TrainingParameters { epochs, seed: Some(1), learning_rate: 0.01, ..Default::default() }),
        activate: None,
    }
}

/// Watches `job` until it ends; returns every record streamed.
async fn watch(server: &mut Server, job: &str) -> Vec<TrainingJob> {
    let mut stream =
        server.training.watch_training_job(WatchTrainingJobRequest { job_id: job.into() }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(record) = stream.message().await.unwrap() {
        seen.push(record);
    }
    seen
}

/// Waits until `job` has finished its first epoch.
async fn wait_for_first_epoch(server: &mut Server, job: &str) {
    let mut stream =
        server.training.watch_training_job(WatchTrainingJobRequest { job_id: job.into() }).await.unwrap().into_inner();
    while let Some(record) = stream.message().await.unwrap() {
        if record.epoch > 0 {
            return;
        }
    }
    panic!("job {job} ended before its first epoch");
}

async fn train_to_end(server: &mut Server, epochs: u32) -> TrainingJob {
    let job = server.training.train(train_request(epochs)).await.unwrap().into_inner().job.unwrap();
    let records = watch(server, &job.job_id).await;
    records.last().unwrap().clone()
}

async fn active_version(server: &mut Server) -> String {
    let project = server.projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap();
    project.into_inner().project.unwrap().active_model_version
}

/// Predicts one low and one high sample: (model version, predicted class names).
async fn predict(server: &mut Server) -> Result<(String, Vec<String>), tonic::Status> {
    let (version, predictions) = predict_low_and_high(server, None).await?;
    Ok((version, predictions.into_iter().map(|p| p.class_name).collect()))
}

/// Predicts one low and one high sample with `seed`: the model version and each prediction.
async fn predict_low_and_high(
    server: &mut Server,
    seed: Option<u64>,
) -> Result<(String, Vec<alps_proto::v1::Prediction>), tonic::Status> {
    let samples =
        vec![Sample { id: "l".into(), ..tensor(0.12).unwrap() }, Sample { id: "h".into(), ..tensor(0.88).unwrap() }];
    let request = PredictRequest { project_id: "p".into(), samples, seed, ..Default::default() };
    let response = server.inference.predict(request).await?.into_inner();
    let predictions = response
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(Outcome::Prediction(p)) => p,
            other => panic!("{other:?}"),
        })
        .collect();
    Ok((response.model_version, predictions))
}

#[tokio::test]
async fn a_job_trains_reports_progress_and_activates_a_new_version() {
    let mut server = server_with_examples(20, &[]).await;
    assert_eq!(predict(&mut server).await.unwrap().0, "untrained");
    let job = server.training.train(train_request(40)).await.unwrap().into_inner().job.unwrap();
    let records = watch(&mut server, &job.job_id).await;
    let last = records.last().unwrap();
    assert_eq!(last.state, JobState::Succeeded as i32, "{last:?}");
    assert_eq!(last.model_version, "v1");
    assert!(records.iter().any(|r| r.state == JobState::Running as i32 && r.epoch > 0), "progress was streamed");
    assert!(last.validation_accuracy.unwrap() >= 0.9, "{last:?}");
    assert_eq!(active_version(&mut server).await, "v1");
    let (version, classes) = predict(&mut server).await.unwrap();
    assert_eq!(version, "v1");
    assert_eq!(classes, ["low", "high"]);

    let versions =
        server.versions.list_model_versions(ListModelVersionsRequest { project_id: "p".into() }).await.unwrap();
    let versions = versions.into_inner().versions;
    assert_eq!(versions.len(), 1);
    let v1 = &versions[0];
    assert!(v1.active && !v1.for_other_spec && v1.example_count == 40 && v1.weights_sha256.len() == 64);
    let metrics = v1.metrics.as_ref().expect("a validation split of 20 %");
    assert_eq!(metrics.examples, 8);
    assert_eq!(metrics.confusion_matrix.iter().sum::<u64>(), 8);
    assert_eq!(metrics.per_class.len(), 2);
    assert_eq!(last.validation_accuracy, Some(metrics.accuracy), "the job reports the version's accuracy");

    // Deleting the project removes its versions' files too.
    assert!(project_models_dir(server.dirs.data.path(), "p").join("v1/weights.safetensors").is_file());
    server.projects.delete_project(alps_proto::v1::DeleteProjectRequest { project_id: "p".into() }).await.unwrap();
    assert!(!project_models_dir(server.dirs.data.path(), "p").exists());
}

/// The `weights_sha256` of the project's only version after one seeded training run on a fresh server.
async fn first_version_weights(seed: u64) -> String {
    let mut server = server_with_examples(10, &[]).await;
    let mut request = train_request(2);
    request.parameters.as_mut().unwrap().seed = Some(seed);
    let job = server.training.train(request).await.unwrap().into_inner().job.unwrap();
    assert_eq!(watch(&mut server, &job.job_id).await.last().unwrap().state, JobState::Succeeded as i32);
    let versions = server.versions.list_model_versions(ListModelVersionsRequest { project_id: "p".into() }).await;
    let sha = versions.unwrap().into_inner().versions[0].weights_sha256.clone();
    assert!(server.process.terminate().success());
    sha
}

#[tokio::test]
async fn the_seed_fixes_the_trained_weights_of_a_first_version() {
    let first = first_version_weights(7).await;
    assert_eq!(first_version_weights(7).await, first, "same seed, same examples: same weights");
    assert_ne!(first_version_weights(8).await, first, "another seed: other weights");
}

#[tokio::test]
async fn training_without_two_classes_is_a_failed_precondition() {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start(dirs, &[], &[]).await;
    create_project(&mut server).await;
    let error = server.training.train(train_request(1)).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("at least 2 classes"), "{}", error.message());
    let one_class = LabelledExample {
        external_id: "a".into(),
        sample: tensor(0.1),
        class_name: "low".into(),
        metadata: Default::default(),
        label_revision: 0,
    };
    server
        .examples
        .add_examples(tokio_stream::iter([AddExamplesRequest { project_id: "p".into(), examples: vec![one_class] }]))
        .await
        .unwrap();
    assert_eq!(server.training.train(train_request(1)).await.unwrap_err().code(), Code::FailedPrecondition);
    let mut unknown = train_request(1);
    unknown.project_id = "nope".into();
    assert_eq!(server.training.train(unknown).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn triggers_coalesce_and_predictions_keep_the_old_version_while_a_job_runs() {
    let mut server = server_with_examples(20, &[]).await;
    train_to_end(&mut server, 40).await;
    // A long job: predictions must keep answering with v1 while it runs.
    let running = server.training.train(train_request(3000)).await.unwrap().into_inner();
    assert!(!running.coalesced);
    let queued = server.training.train(train_request(5)).await.unwrap().into_inner();
    assert!(!queued.coalesced);
    assert_eq!(queued.job.as_ref().unwrap().state, JobState::Queued as i32);
    // Watched while it is queued (the long job runs), and read to its end below.
    let request = WatchTrainingJobRequest { job_id: queued.job.as_ref().unwrap().job_id.clone() };
    let mut watching = server.training.watch_training_job(request).await.unwrap().into_inner();
    let merged = server.training.train(train_request(5)).await.unwrap().into_inner();
    assert!(merged.coalesced);
    assert_eq!(merged.job.unwrap().job_id, queued.job.as_ref().unwrap().job_id);
    let (version, classes) = predict(&mut server).await.unwrap();
    assert_eq!(version, "v1", "the active version serves while training runs");
    assert_eq!(classes, ["low", "high"]);
    let first = watch(&mut server, &running.job.unwrap().job_id).await;
    assert_eq!(first.last().unwrap().model_version, "v2");
    // Followed from its queued state, which it leaves when the job before it ends.
    let mut second = Vec::new();
    while let Some(record) = watching.message().await.unwrap() {
        second.push(record);
    }
    assert_eq!(second.first().unwrap().state, JobState::Queued as i32);
    assert_eq!(second.last().unwrap().model_version, "v3");
    assert_eq!(active_version(&mut server).await, "v3");

    // A queued job cancelled before it was taken ends at once; the next trigger queues anew.
    let long = server.training.train(train_request(3000)).await.unwrap().into_inner().job.unwrap();
    let queued = server.training.train(train_request(5)).await.unwrap().into_inner().job.unwrap();
    let cancel = |job_id: &str| alps_proto::v1::CancelTrainingJobRequest { job_id: job_id.to_owned() };
    let cancelled = server.training.cancel_training_job(cancel(&queued.job_id)).await.unwrap().into_inner();
    let cancelled = cancelled.job.unwrap();
    assert_eq!(
        (cancelled.state, cancelled.error.as_str()),
        (JobState::Cancelled as i32, "cancelled before it started")
    );
    let again = server.training.train(train_request(5)).await.unwrap().into_inner();
    assert!(!again.coalesced && again.job.as_ref().unwrap().job_id != queued.job_id, "{again:?}");
    for job in [&again.job.unwrap().job_id, &long.job_id] {
        server.training.cancel_training_job(cancel(job)).await.unwrap();
    }
}

#[tokio::test]
async fn a_corrupted_version_is_detected_and_an_older_one_can_be_activated() {
    let mut server = server_with_examples(10, &[]).await;
    train_to_end(&mut server, 5).await;
    train_to_end(&mut server, 5).await;
    assert_eq!(active_version(&mut server).await, "v2");
    let weights = project_models_dir(server.dirs.data.path(), "p").join("v2/weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();
    // The server still holds v2 in memory; a restart makes it load from disk.
    assert!(server.process.terminate().success());
    let mut server = start(server.dirs, &[], &[]).await;
    let error = predict(&mut server).await.unwrap_err();
    assert!(error.message().contains("corrupt") && error.message().contains("v2"), "{}", error.message());
    let again = ActivateModelVersionRequest { project_id: "p".into(), version: "v2".into() };
    assert_eq!(server.versions.activate_model_version(again).await.unwrap_err().code(), Code::FailedPrecondition);
    let rollback = ActivateModelVersionRequest { project_id: "p".into(), version: "v1".into() };
    server.versions.activate_model_version(rollback).await.unwrap();
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");
}

/// The `fields` of the log events read so far, in order.
fn log_events(process: &mut Process) -> Vec<serde_json::Value> {
    let lines = process.log();
    lines.iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("fields").cloned()).collect()
}

/// The value of the metric line `series` (name and labels) on the metrics endpoint.
async fn metric(metrics: &str, series: &str) -> Option<f64> {
    let text = http_client().get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn an_activated_version_is_loaded_before_it_is_swapped_in() {
    let mut server = server_with_examples(10, &[]).await;
    let metrics = server.process.listening_addr("metrics");
    let v1 = train_to_end(&mut server, 5).await;
    assert_eq!((v1.state, v1.model_version.as_str()), (JobState::Succeeded as i32, "v1"));
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");
    let v2 = train_to_end(&mut server, 5).await;
    assert_eq!(predict(&mut server).await.unwrap().0, "v2");
    let rollback = ActivateModelVersionRequest { project_id: "p".into(), version: "v1".into() };
    server.versions.activate_model_version(rollback).await.unwrap();
    server.process.wait_for_log("model version activated");
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");
    // A version whose files do not load is refused; the active one keeps serving.
    std::fs::write(project_models_dir(server.dirs.data.path(), "p").join("v2/weights.safetensors"), b"garbage")
        .unwrap();
    let refused = ActivateModelVersionRequest { project_id: "p".into(), version: "v2".into() };
    assert_eq!(server.versions.activate_model_version(refused).await.unwrap_err().code(), Code::FailedPrecondition);
    server.process.wait_for_log("model failed to load");
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");

    // Every line up to the refusal has been read: the log is complete in order.
    let events = log_events(&mut server.process);
    // Each version was loaded, then swapped in; no Predict loaded one (it would add a load),
    // and the rollback loaded v1 from its files again (they are checked on activation).
    let (loaded, activated) = ("model loaded", "model version activated");
    let lifecycle: Vec<(&str, &str)> = events
        .iter()
        .filter(|f| f["message"] == loaded || f["message"] == activated)
        .map(|f| (f["message"].as_str().unwrap(), f["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lifecycle,
        [(loaded, "v1"), (activated, "v1"), (loaded, "v2"), (activated, "v2"), (loaded, "v1"), (activated, "v1")]
    );
    // And each job's version was serving before the job was reported done.
    let position = |message: &str, field: &str, value: &str| {
        events
            .iter()
            .position(|f| f["message"] == message && f[field] == value)
            .unwrap_or_else(|| panic!("no {message}"))
    };
    assert!(position(activated, "version", "v1") < position("training ended", "job", &v1.job_id));
    assert!(position(activated, "version", "v2") < position("training ended", "job", &v2.job_id));
    assert_eq!(metric(&metrics, "alps_activation_seconds_count").await, Some(3.0));

    // Requests are counted per project, only for projects that exist.
    // A streaming call counts once, attributed from its task.
    let request = PredictRequest { project_id: "p".into(), samples: vec![tensor(0.5).unwrap()], ..Default::default() };
    let mut stream = server.inference.predict_stream(tokio_stream::iter([request])).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    // CreateProject, AddExamples, 2 Train, 2 WatchTrainingJob, 4 Predict, the rollback and
    // the PredictStream.
    let ok = metric(&metrics, r#"alps_project_requests_total{project="p",outcome="ok"}"#).await;
    assert_eq!(ok, Some(12.0));
    let errors = metric(&metrics, r#"alps_project_requests_total{project="p",outcome="error"}"#).await;
    assert_eq!(errors, Some(1.0), "the refused activation");
    // A REST request refused for its parameters counts for its project too.
    let http = server.process.listening_addr("http");
    let body = serde_json::json!({
        "inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0.5, 0.5, 0.5, 0.5]}],
        "parameters": {"mc_iterations": 0}
    });
    let refused = http_client().post(format!("http://{http}/v2/models/p/infer")).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let errors = metric(&metrics, r#"alps_project_requests_total{project="p",outcome="error"}"#).await;
    assert_eq!(errors, Some(2.0), "the refused activation and the refused REST request");
    let unknown =
        PredictRequest { project_id: "nope".into(), samples: vec![tensor(0.1).unwrap()], ..Default::default() };
    assert_eq!(server.inference.predict(unknown).await.unwrap_err().code(), Code::NotFound);
    let text = http_client().get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains(r#"project="nope""#), "an unknown project id became a series");
}

#[tokio::test]
async fn a_version_made_for_other_inputs_is_not_activated() {
    let mut server = server_with_examples(10, &[]).await;
    train_to_end(&mut server, 5).await;
    assert_eq!(active_version(&mut server).await, "v1");
    // New preprocessing: the project is untrained again, and v1 no longer fits it.
    let preprocessing = Preprocessing { width: 2, height: 2, channels: 1, mean: vec![0.5], std: vec![0.5] };
    let update =
        UpdateProjectRequest { project_id: "p".into(), preprocessing: Some(preprocessing), ..Default::default() };
    server.projects.update_project(update).await.unwrap();
    assert_eq!(active_version(&mut server).await, "untrained");
    let rollback = ActivateModelVersionRequest { project_id: "p".into(), version: "v1".into() };
    let refused = server.versions.activate_model_version(rollback).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{}", refused.message());
    assert!(refused.message().contains("trained for other classes, model or preprocessing"), "{}", refused.message());
    assert_eq!(active_version(&mut server).await, "untrained");
    // The listing says so before anyone tries.
    let listed = server.versions.list_model_versions(ListModelVersionsRequest { project_id: "p".into() }).await;
    let v1 = &listed.unwrap().into_inner().versions[0];
    assert_eq!((v1.version.as_str(), v1.active, v1.for_other_spec), ("v1", false, true));
    assert_eq!(predict(&mut server).await.unwrap().0, "untrained");
}

#[tokio::test]
async fn a_job_whose_project_changed_meanwhile_records_its_version_without_activating_it() {
    let mut server = server_with_examples(10, &[]).await;
    let job = server.training.train(train_request(5_000)).await.unwrap().into_inner().job.unwrap();
    wait_for_first_epoch(&mut server, &job.job_id).await;
    let preprocessing = Preprocessing { width: 2, height: 2, channels: 1, mean: vec![0.5], std: vec![0.5] };
    let update =
        UpdateProjectRequest { project_id: "p".into(), preprocessing: Some(preprocessing), ..Default::default() };
    server.projects.update_project(update).await.unwrap();
    let ended = watch(&mut server, &job.job_id).await.pop().unwrap();
    assert_eq!((ended.state, ended.model_version.as_str()), (JobState::Succeeded as i32, "v1"), "{ended:?}");
    assert!(ended.not_activated_reason.contains("changed while the job trained"), "{ended:?}");
    assert_eq!(active_version(&mut server).await, "untrained");
    assert_eq!(predict(&mut server).await.unwrap().0, "untrained");
}

async fn jobs(server: &mut Server) -> Vec<TrainingJob> {
    let request = ListTrainingJobsRequest { project_id: "p".into(), limit: 0 };
    server.training.list_training_jobs(request).await.unwrap().into_inner().jobs
}

#[tokio::test]
async fn kill_9_during_training_keeps_the_active_version_and_every_example() {
    let mut server = server_with_examples(10, &[]).await;
    train_to_end(&mut server, 5).await;
    let job = server.training.train(train_request(10_000)).await.unwrap().into_inner().job.unwrap();
    wait_for_first_epoch(&mut server, &job.job_id).await;
    server.process.signal(libc::SIGKILL);
    server.process.wait();
    let mut server = start(server.dirs, &[], &[]).await;
    assert_eq!(active_version(&mut server).await, "v1");
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");
    let interrupted = jobs(&mut server).await.into_iter().find(|j| j.job_id == job.job_id).unwrap();
    assert_eq!(interrupted.state, JobState::Failed as i32);
    assert!(interrupted.error.contains("interrupted"), "{}", interrupted.error);
    let count =
        server.examples.count_examples(alps_proto::v1::CountExamplesRequest { project_id: "p".into() }).await.unwrap();
    assert_eq!(count.into_inner().total, 20);
    let next = train_to_end(&mut server, 5).await;
    assert_eq!(next.state, JobState::Succeeded as i32);
    assert_eq!(next.model_version, "v2");
}

#[tokio::test]
async fn kill_9_during_the_checkpoint_write_keeps_the_previous_version() {
    let mut server = server_with_examples(10, &[]).await;
    train_to_end(&mut server, 5).await;
    assert!(server.process.terminate().success());
    let mut server = start(server.dirs, &[], &[("ALPS_FAULT_PAUSE_AT", "checkpoint-write")]).await;
    server.training.train(train_request(5)).await.unwrap();
    server.process.wait_for_log("fault injection: paused in the checkpoint write");
    server.process.signal(libc::SIGKILL);
    server.process.wait();
    let partial = project_models_dir(server.dirs.data.path(), "p").join(".tmp-v2");
    assert!(partial.exists(), "the kill happened inside the checkpoint write");
    let mut server = start(server.dirs, &[], &[]).await;
    assert!(!partial.exists(), "partial version cleaned up at start");
    assert_eq!(active_version(&mut server).await, "v1");
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");
    let failed = jobs(&mut server).await;
    assert!(failed.iter().any(|j| j.state == JobState::Failed as i32 && j.error.contains("interrupted")));
    let next = train_to_end(&mut server, 5).await;
    assert_eq!(next.model_version, "v2");
}

/// `alps_training_memory_bytes` once `wanted` holds of it, or after 60 s. The inference worker
/// sets the gauge after each batch, so each try predicts first.
async fn training_memory(server: &mut Server, metrics: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        predict(server).await.unwrap();
        let held = metric(metrics, "alps_training_memory_bytes").await.unwrap();
        if wanted(held) || std::time::Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_running_job_can_be_cancelled_and_the_next_one_runs() {
    let mut server = server_with_examples(10, &[]).await;
    let metrics = server.process.listening_addr("metrics");
    let job = server.training.train(train_request(10_000)).await.unwrap().into_inner().job.unwrap();
    wait_for_first_epoch(&mut server, &job.job_id).await;
    // The running job holds part of the model budget.
    let held = training_memory(&mut server, &metrics, |bytes| bytes > 0.0).await;
    assert!(held > 0.0, "a running job holds memory");
    let request = alps_proto::v1::CancelTrainingJobRequest { job_id: job.job_id.clone() };
    server.training.cancel_training_job(request).await.unwrap();
    let records = watch(&mut server, &job.job_id).await;
    let last = records.last().unwrap();
    assert_eq!(last.state, JobState::Cancelled as i32, "{last:?}");
    assert_eq!(active_version(&mut server).await, "untrained", "a cancelled job writes no version");
    // Released at the end, but for the backbone embeddings of the examples, kept for the next
    // head-only job.
    let released = training_memory(&mut server, &metrics, |bytes| bytes < held).await;
    assert!(released > 0.0 && released < held, "the cached embeddings hold theirs: {released} of {held}");
    let next = train_to_end(&mut server, 5).await;
    assert_eq!(next.model_version, "v1");
    let warm = training_memory(&mut server, &metrics, |bytes| bytes > released).await;
    assert!(warm > released && warm < held, "the model kept for the next job holds its bytes too: {warm} of {held}");
    let unknown = alps_proto::v1::GetTrainingJobRequest { job_id: "nope".into() };
    assert_eq!(server.training.get_training_job(unknown).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_project_deleted_and_made_again_while_its_job_embeds_gets_nothing_of_the_old_job() {
    let mut server = server_with_examples_and_env(10, &[], &[("ALPS_FAULT_PAUSE_AT", "embedding-cache")]).await;
    let metrics = server.process.listening_addr("metrics");
    // Another project's Predicts refresh the gauge once "p" is gone.
    let other = CreateProjectRequest { project: Some(mlp_project("q")) };
    server.projects.create_project(other).await.unwrap();
    let mut head_only = train_request(5);
    head_only.parameters.as_mut().unwrap().mode = TrainingMode::HeadOnly as i32;
    let job = server.training.train(head_only).await.unwrap().into_inner().job.unwrap();
    // The job has made the embeddings and goes on to cache them once the project is deleted
    // and made again: the new project must not get them.
    server.process.wait_for_log("fault injection: paused before caching embeddings");
    let delete = alps_proto::v1::DeleteProjectRequest { project_id: "p".into() };
    server.projects.delete_project(delete).await.unwrap();
    create_project(&mut server).await;
    let ended = watch(&mut server, &job.job_id).await.pop().unwrap();
    assert_eq!(ended.state, JobState::Cancelled as i32, "{ended:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let held = loop {
        let request =
            PredictRequest { project_id: "q".into(), samples: vec![tensor(0.5).unwrap()], ..Default::default() };
        server.inference.predict(request).await.unwrap();
        let held = metric(&metrics, "alps_training_memory_bytes").await.unwrap();
        if held == 0.0 || std::time::Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(held, 0.0, "bytes of the deleted project's embeddings are still held");
    // The new project trains and serves a first version of its own.
    add_low_and_high(&mut server, 10).await;
    let mut full = train_request(5);
    full.parameters.as_mut().unwrap().mode = TrainingMode::Full as i32;
    let again = server.training.train(full).await.unwrap().into_inner().job.unwrap();
    let again = watch(&mut server, &again.job_id).await.pop().unwrap();
    assert_eq!((again.state, again.model_version.as_str()), (JobState::Succeeded as i32, "v1"), "{again:?}");
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");
    let gone = alps_proto::v1::GetTrainingJobRequest { job_id: job.job_id };
    assert_eq!(server.training.get_training_job(gone).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_project_deleted_while_its_job_writes_the_version_keeps_no_version_files() {
    let mut server = server_with_examples_and_env(10, &[], &[("ALPS_FAULT_PAUSE_AT", "version-write")]).await;
    let job = server.training.train(train_request(5)).await.unwrap().into_inner().job.unwrap();
    // The job checked it was not cancelled and writes its version once the project is gone.
    server.process.wait_for_log("fault injection: paused before writing the version");
    let delete = alps_proto::v1::DeleteProjectRequest { project_id: "p".into() };
    server.projects.delete_project(delete).await.unwrap();
    let versions = project_models_dir(server.dirs.data.path(), "p");
    assert!(!versions.exists(), "the deletion removed the version files");
    let ended = watch(&mut server, &job.job_id).await.pop().unwrap();
    assert_eq!(ended.state, JobState::Cancelled as i32, "{ended:?}");
    // The job's thread removes what it wrote once it has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while versions.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!versions.exists(), "files of the deleted project's version are left");
}

#[tokio::test]
async fn the_auto_activate_policy_keeps_a_version_whose_accuracy_drops() {
    // No drop of more than 5 points allowed.
    let mut server = server_with_examples(10, &["--auto-activate-max-accuracy-drop", "0.05"]).await;
    let good = train_to_end(&mut server, 40).await;
    assert_eq!((good.model_version.as_str(), good.not_activated_reason.as_str()), ("v1", ""));
    // Swap every label, then barely train: v2 keeps v1's weights, so on the new labels its
    // validation accuracy collapses and the policy keeps v1 active.
    let flipped: Vec<LabelledExample> = (0..10)
        .flat_map(|i| {
            let jitter = i as f32 * 0.005;
            [("high", 0.1 + jitter, "low"), ("low", 0.9 - jitter, "high")].map(|(class, value, id)| LabelledExample {
                external_id: format!("{id}-{i}"),
                sample: tensor(value),
                class_name: class.into(),
                metadata: Default::default(),
                label_revision: 0,
            })
        })
        .collect();
    server
        .examples
        .add_examples(tokio_stream::iter([AddExamplesRequest { project_id: "p".into(), examples: flipped }]))
        .await
        .unwrap();
    let mut barely = train_request(1);
    barely.parameters.as_mut().unwrap().learning_rate = 1e-9;
    let job = server.training.train(barely).await.unwrap().into_inner().job.unwrap();
    let last = watch(&mut server, &job.job_id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Succeeded as i32);
    assert_eq!(last.model_version, "v2");
    assert!(last.not_activated_reason.contains("--auto-activate-max-accuracy-drop"), "{last:?}");
    assert_eq!(active_version(&mut server).await, "v1");
}

#[tokio::test]
async fn full_fine_tuning_with_class_weights_trains_backbone_and_head() {
    let mut server = server_with_examples(10, &[]).await;
    let mut request = train_request(30);
    let parameters = request.parameters.as_mut().unwrap();
    parameters.mode = alps_proto::v1::TrainingMode::Full as i32;
    parameters.class_weighting = true;
    let job = server.training.train(request).await.unwrap().into_inner().job.unwrap();
    let last = watch(&mut server, &job.job_id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Succeeded as i32, "{last:?}");
    let parameters = last.parameters.unwrap();
    assert_eq!(parameters.mode, alps_proto::v1::TrainingMode::Full as i32, "effective settings are recorded");
    assert!(parameters.class_weighting);
    let (version, classes) = predict(&mut server).await.unwrap();
    assert_eq!(version, "v1");
    assert_eq!(classes, ["low", "high"]);
}

/// Tensor names in a safetensors file (its JSON header: 8 bytes of length, then the header).
fn safetensors_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let mut names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
    names.sort();
    names
}

/// Mean probabilities of the two `predict` samples, seeded: equal on every load of a version.
async fn seeded_probabilities(server: &mut Server) -> (String, Vec<f32>) {
    let (version, predictions) = predict_low_and_high(server, Some(3)).await.unwrap();
    (version, predictions.into_iter().flat_map(|p| p.mean_probabilities).collect())
}

// Multi-threaded so the client answers the server's GOAWAY while the test waits for the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_only_versions_store_the_last_layer_and_name_their_backbone() {
    let mut server = server_with_examples(10, &[]).await;
    train_to_end(&mut server, 5).await; // v1: head-only on the initial weights
    let mut full = train_request(5);
    full.parameters.as_mut().unwrap().mode = alps_proto::v1::TrainingMode::Full as i32;
    let job = server.training.train(full).await.unwrap().into_inner().job.unwrap();
    assert_eq!(watch(&mut server, &job.job_id).await.last().unwrap().state, JobState::Succeeded as i32);
    train_to_end(&mut server, 5).await; // v3: head-only on v2's backbone
    let dir = project_models_dir(server.dirs.data.path(), "p");
    let everything = safetensors_names(&dir.join("v2/weights.safetensors"));
    assert!(everything.iter().any(|n| n.starts_with("backbone.")), "{everything:?}");
    for head_only in ["v1", "v3"] {
        assert_eq!(
            safetensors_names(&dir.join(head_only).join("weights.safetensors")),
            ["head.fc.bias", "head.fc.weight"]
        );
    }
    let manifest = |version: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(version).join("manifest.json")).unwrap()).unwrap()
    };
    let (v1, v2, v3) = (manifest("v1"), manifest("v2"), manifest("v3"));
    assert_eq!((v1["weights"].as_str(), v1["backbone_version"].as_str()), (Some("last_layer"), Some("")));
    assert_eq!((v2["weights"].as_str(), v2["backbone_version"].as_str()), (Some("full"), Some("v2")));
    assert_eq!((v3["weights"].as_str(), v3["backbone_version"].as_str()), (Some("last_layer"), Some("v2")));
    assert_eq!(v3["backbone_sha256"], v2["weights_sha256"]);
    let versions = server.versions.list_model_versions(ListModelVersionsRequest { project_id: "p".into() });
    let versions = versions.await.unwrap().into_inner().versions;
    let bytes = |v: &str| versions.iter().find(|m| m.version == v).unwrap().weights_bytes;
    assert!(bytes("v3") * 10 < bytes("v2"), "head {} B vs full {} B", bytes("v3"), bytes("v2"));

    // A restart loads v3 from disk (v2's backbone + v3's head): the same model as before.
    let before = seeded_probabilities(&mut server).await;
    assert_eq!(before.0, "v3");
    assert!(server.process.terminate().success());
    let mut server = start(server.dirs, &[], &[]).await;
    assert_eq!(seeded_probabilities(&mut server).await, before);
    // v1 serves from the initial weights and its own head.
    let rollback = ActivateModelVersionRequest { project_id: "p".into(), version: "v1".into() };
    server.versions.activate_model_version(rollback).await.unwrap();
    assert_eq!(predict(&mut server).await.unwrap().0, "v1");

    // A corrupted backbone version is caught when a version that references it loads from its
    // files. (Until the restart, the v3 model still in memory holds v2's backbone, checked when
    // it loaded, and v3 would be built on it without reading v2.)
    let weights = dir.join("v2/weights.safetensors");
    let mut corrupted = std::fs::read(&weights).unwrap();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    std::fs::write(&weights, corrupted).unwrap();
    assert!(server.process.terminate().success());
    let mut server = start(server.dirs, &[], &[]).await;
    let refused = ActivateModelVersionRequest { project_id: "p".into(), version: "v3".into() };
    let error = server.versions.activate_model_version(refused).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("corrupt") && error.message().contains("v2"), "{}", error.message());
}
