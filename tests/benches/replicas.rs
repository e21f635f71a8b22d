//! Activation propagation across replicas: three release `alps-server` replicas over one
//! PostgreSQL (a throwaway server on loopback) and one S3 object store (moto on loopback), on
//! the same machine. A project with two trained versions is switched between them with
//! ActivateModelVersion on each replica in turn; the time from the call's start until every
//! replica's Predict answers with the new version is one sample (p50 / p99 over the rounds).
//! Every replica has both versions' weights by then (each followed both when they were trained),
//! so this measures the notification, the re-read and the load-then-swap, not the fetch.
//! Optional argument: rounds (default 30).

use std::time::{Duration, Instant};

use alps_proto::v1::{
    ActivateModelVersionRequest, AddExamplesRequest, Architecture, CreateProjectRequest, JobState, LabelledExample,
    ModelSpec, PredictRequest, Preprocessing, Project, Sample, Tensor, TrainRequest, TrainingParameters,
    WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
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
    let request = TrainRequest { project_id: "p".into(), parameters: Some(parameters), activate: None };
    let mut training = TrainingServiceClient::new(channel.clone());
    let job = training.train(request).await.unwrap().into_inner().job.unwrap();
    let mut stream = training.watch_training_job(WatchTrainingJobRequest { job_id: job.job_id }).await.unwrap();
    let mut last = None;
    while let Some(record) = stream.get_mut().message().await.unwrap() {
        last = Some(record);
    }
    let last = last.unwrap();
    assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
    last.model_version
}

/// Waits until `inference` answers with `version`.
async fn served(inference: &mut InferenceServiceClient<Channel>, version: &str) {
    let request = PredictRequest { project_id: "p".into(), samples: vec![sample(0.5).unwrap()], ..Default::default() };
    while inference.predict(request.clone()).await.unwrap().into_inner().model_version != version {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30);
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
    for mut process in processes {
        process.terminate();
    }
}
