//! Activation propagation across replicas: three release `alps-server` replicas over one
//! PostgreSQL (a throwaway server on loopback) and one S3 object store (moto on loopback), on
//! the same machine. A project with two trained versions is switched between them with
//! ActivateModelVersion on each replica in turn; the time from the call's start until every
//! replica's Predict answers with the new version is one sample (p50 / p99 over the rounds).
//! Every replica has both versions' weights by then (each followed both when they were trained),
//! so this measures the notification, the re-read and the load-then-swap, not the fetch.
//!
//! Then train to served: a VGG16 project (3×224×224, 10 classes, initial weights, 16 labelled
//! examples, a first head-only version served everywhere); each round adds one more labelled
//! example on one replica and trains head-only on the next, and times the job (Train until
//! the job succeeded, as its replica reports it) and the rest until every replica serves the new
//! version (its active version, as GetProject reads it from the replica's cache, which Predict
//! uses): the fetch of the head (its backbone is the initial weights, which every replica
//! builds), the load and the swap.
//! Optional arguments: activation rounds (default 30), VGG16 rounds (default 3).

use std::time::{Duration, Instant};

use alps_proto::v1::{
    ActivateModelVersionRequest, AddExamplesRequest, Architecture, CreateProjectRequest, GetProjectRequest, JobState,
    LabelledExample, ModelSpec, PredictRequest, Preprocessing, Project, Sample, Tensor, TrainRequest,
    TrainingParameters, WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
    inference_service_client::InferenceServiceClient, model_version_service_client::ModelVersionServiceClient,
    project_service_client::ProjectServiceClient, sample::Input, training_service_client::TrainingServiceClient,
};
use alps_system_tests::{
    Process, ServerDirs, builtin_plugin, channel, install_plugin, postgres_database, s3_bucket, s3_env, s3_server,
    start_server_with_env,
};
use tonic::transport::Channel;

fn sample(value: f32) -> Option<Sample> {
    Some(Sample {
        id: String::new(),
        input: Some(Input::Tensor(Tensor { shape: vec![1, 2, 2], data: vec![value; 4] })),
    })
}

/// Trains project "p" on `channel` to its end; returns the version made.
async fn train(channel: &Channel, seed: u64) -> String {
    let parameters = TrainingParameters { epochs: 20, seed: Some(seed), learning_rate: 0.01, ..Default::default() };
    train_to_end(channel, "p", Some(parameters)).await.0
}

/// Trains `project` with `parameters` (the defaults when `None`) on `channel` to its end;
/// returns the version made and how long the job took from the call until it succeeded.
async fn train_to_end(channel: &Channel, project: &str, parameters: Option<TrainingParameters>) -> (String, Duration) {
    let started = Instant::now();
    let request = TrainRequest { project_id: project.into(), parameters, activate: None };
    let mut training = TrainingServiceClient::new(channel.clone());
    let job = training.train(request).await.unwrap().into_inner().job.unwrap();
    let mut stream = training.watch_training_job(WatchTrainingJobRequest { job_id: job.job_id }).await.unwrap();
    let mut last = None;
    while let Some(record) = stream.get_mut().message().await.unwrap() {
        last = Some(record);
    }
    let last = last.unwrap();
    assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
    (last.model_version, started.elapsed())
}

/// Waits until `inference` answers with `version`.
async fn served(inference: &mut InferenceServiceClient<Channel>, version: &str) {
    let request = PredictRequest { project_id: "p".into(), samples: vec![sample(0.5).unwrap()], ..Default::default() };
    while inference.predict(request.clone()).await.unwrap().into_inner().model_version != version {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A random 3×224×224 image labelled with one of 10 classes.
fn image(i: usize) -> LabelledExample {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let tensor = Tensor { shape: vec![3, 224, 224], data: (0..3 * 224 * 224).map(|_| rng.f32()).collect() };
    LabelledExample {
        external_id: format!("image-{i}"),
        sample: Some(Sample { id: String::new(), input: Some(Input::Tensor(tensor)) }),
        class_name: format!("c{}", i % 10),
        ..Default::default()
    }
}

/// Waits until every replica's cache has `project` at `version`.
async fn active_everywhere(channels: &[Channel], project: &str, version: &str) {
    for channel in channels {
        let mut projects = ProjectServiceClient::new(channel.clone());
        let request = GetProjectRequest { project_id: project.into() };
        while projects.get_project(request.clone()).await.unwrap().into_inner().project.unwrap().active_model_version
            != version
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The VGG16 train-to-served rounds (see the module docs): per round, the job's time and the
/// time from its end until every replica serves its version.
async fn vgg16_rounds(channels: &[Channel], rounds: usize) -> Vec<(Duration, Duration)> {
    let project = Project {
        id: "vgg".into(),
        classes: (0..10).map(|c| format!("c{c}")).collect(),
        model: Some(ModelSpec { architecture: Architecture::Vgg16 as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 224, height: 224, channels: 3, ..Default::default() }),
        ..Default::default()
    };
    ProjectServiceClient::new(channels[0].clone())
        .create_project(CreateProjectRequest { project: Some(project) })
        .await
        .unwrap();
    let add = |channel: &Channel, range: std::ops::Range<usize>| {
        let request = AddExamplesRequest { project_id: "vgg".into(), examples: range.map(image).collect() };
        let mut examples = ExampleServiceClient::new(channel.clone());
        async move { examples.add_examples(tokio_stream::iter([request])).await.unwrap() }
    };
    add(&channels[0], 0..16).await;
    let (first, _) = train_to_end(&channels[1], "vgg", None).await;
    active_everywhere(channels, "vgg", &first).await;
    let mut samples = Vec::new();
    for round in 0..rounds {
        add(&channels[round % 3], 16 + round..17 + round).await;
        let (version, trained) = train_to_end(&channels[(round + 1) % 3], "vgg", None).await;
        let ended = Instant::now();
        active_everywhere(channels, "vgg", &version).await;
        samples.push((trained, ended.elapsed()));
    }
    samples
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = numbers.first().copied().unwrap_or(30);
    let vgg16_rounds_wanted = numbers.get(1).copied().unwrap_or(3);
    let (_, url) = postgres_database("alps_bench_replicas");
    let bucket = s3_bucket("alps-bench-replicas").await;
    let store = format!("s3://{bucket}/alps");
    let env = s3_env(s3_server());
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let dirs: Vec<ServerDirs> = (0..3).map(|_| ServerDirs::new()).collect();
    let mut processes: Vec<Process> = Vec::new();
    let mut channels = Vec::new();
    for dirs in &dirs {
        install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
        let flags = ["--database-url", url.as_str(), "--object-store-url", store.as_str()];
        let (process, grpc) = start_server_with_env(dirs, &flags, &env);
        processes.push(process);
        channels.push(channel(&grpc, None, None).await.unwrap());
    }
    let project = Project {
        id: "p".into(),
        classes: vec!["low".into(), "high".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    };
    ProjectServiceClient::new(channels[0].clone())
        .create_project(CreateProjectRequest { project: Some(project) })
        .await
        .unwrap();
    let examples = (0..20)
        .flat_map(|i| {
            [("low", 0.1), ("high", 0.9)].map(|(class, value)| LabelledExample {
                external_id: format!("{class}-{i}"),
                sample: sample(value + i as f32 * 0.001),
                class_name: class.into(),
                ..Default::default()
            })
        })
        .collect();
    let request = AddExamplesRequest { project_id: "p".into(), examples };
    ExampleServiceClient::new(channels[0].clone()).add_examples(tokio_stream::iter([request])).await.unwrap();
    let versions = [train(&channels[1], 1).await, train(&channels[2], 2).await];
    let mut inference: Vec<_> = channels.iter().map(|c| InferenceServiceClient::new(c.clone())).collect();
    for client in &mut inference {
        served(client, &versions[1]).await;
    }

    let mut samples = Vec::new();
    for round in 0..rounds {
        let version = &versions[round % 2];
        let started = Instant::now();
        let request = ActivateModelVersionRequest { project_id: "p".into(), version: version.clone() };
        ModelVersionServiceClient::new(channels[round % 3].clone()).activate_model_version(request).await.unwrap();
        for client in &mut inference {
            served(client, version).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "3 replicas (release), PostgreSQL and moto S3 on loopback, one 2-core machine; {rounds} activations, \
         alternating two versions of an MLP, each on the next replica"
    );
    println!();
    println!("| ActivateModelVersion to served on all 3 replicas | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {rounds} activations | {:.1} ms | {:.1} ms | {:.1} ms |",
        percentile(&samples, 50),
        percentile(&samples, 99),
        samples.last().unwrap().as_secs_f64() * 1e3
    );
    println!();
    println!(
        "VGG16 3x224x224 (initial weights), 10 classes, head-only retrain after one more labelled example \
         (defaults: 40 epochs, batch 32), {vgg16_rounds_wanted} rounds, each trained on the next replica"
    );
    println!();
    println!("| round | Train until the job succeeded | then until all 3 replicas serve it | train to served |");
    println!("| --- | --- | --- | --- |");
    for (round, (trained, spread)) in vgg16_rounds(&channels, vgg16_rounds_wanted).await.into_iter().enumerate() {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} s |",
            round + 1,
            trained.as_secs_f64(),
            spread.as_secs_f64(),
            (trained + spread).as_secs_f64()
        );
    }
    for mut process in processes {
        process.terminate();
    }
}
