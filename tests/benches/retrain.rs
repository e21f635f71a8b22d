//! Benchmark of the training issue: time to retrain and activate a new version after one more
//! annotation, through the real release server (Train → WatchTrainingJob until the version is
//! active). Head-only on cached embeddings vs full fine-tuning, side by side in one run:
//! * `small_cnn` 3×32×32, 10 classes, 1,000 labelled examples + 1;
//! * `vgg16` 3×224×224, 10 classes, a reduced set (default 16 + 1; full fine-tuning of VGG16 on
//!   1,000 images takes hours on a 2-core CPU).
//!
//! Then a Predict: the new version was loaded before the swap, so the first Predict after the
//! activation should cost what any other does; the first Predict of a new project of the same
//! model, whose initial weights nothing has loaded yet, shows what loading costs, which the
//! first Predict after an activation used to pay.
//!
//! Run with `make bench`. Optional arguments: `small_cnn_examples vgg16_examples`.

use std::time::{Duration, Instant};

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CreateProjectRequest, JobState, LabelledExample, ModelSpec, PredictRequest,
    Preprocessing, Project, Sample, Tensor, TrainRequest, TrainingMode, TrainingParameters, TrainingPhase,
    WatchTrainingJobRequest, example_service_client::ExampleServiceClient,
    inference_service_client::InferenceServiceClient, project_service_client::ProjectServiceClient, sample::Input,
    training_service_client::TrainingServiceClient,
};
use alps_system_tests::{ServerDirs, builtin_plugin, install_plugin, start_server};
use tonic::transport::Channel;

struct Clients {
    projects: ProjectServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    training: TrainingServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
}

fn example(i: usize, size: u32) -> LabelledExample {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let data = (0..3 * size * size).map(|_| rng.f32()).collect();
    let tensor = Tensor { shape: vec![3, u64::from(size), u64::from(size)], data };
    LabelledExample {
        external_id: format!("e{i}"),
        sample: Some(Sample { id: String::new(), input: Some(Input::Tensor(tensor)) }),
        class_name: format!("c{}", i % 10),
        metadata: Default::default(),
        label_revision: 0,
    }
}

async fn add(clients: &mut Clients, project: &str, range: std::ops::Range<usize>, size: u32) {
    let examples: Vec<LabelledExample> = range.map(|i| example(i, size)).collect();
    for chunk in examples.chunks(100) {
        let request = AddExamplesRequest { project_id: project.into(), examples: chunk.to_vec() };
        clients.examples.add_examples(tokio_stream::iter([request])).await.unwrap();
    }
}

/// Where a retrain's time went, from the job's streamed phases: until the training phase
/// (loading the active version, reading examples, embedding new ones), training and
/// validation, then writing and activating the version.
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    total: Duration,
    before_training: Duration,
    training: Duration,
    saving: Duration,
    /// The first Predict after the job ended, served by the new version.
    first_predict: Duration,
}

/// Predicts one sample on `project`; returns the time and the version that answered.
async fn predict(clients: &mut Clients, project: &str, size: u32) -> (Duration, String) {
    let request = PredictRequest {
        project_id: project.into(),
        samples: vec![example(0, size).sample.unwrap()],
        mc_iterations: 10,
        ..Default::default()
    };
    let started = Instant::now();
    let response = clients.inference.predict(request).await.unwrap().into_inner();
    (started.elapsed(), response.model_version)
}

/// Trains `project` in `mode` and returns the time until its version is active, by phase, and
/// the first Predict after.
async fn retrain(clients: &mut Clients, project: &str, mode: TrainingMode, size: u32) -> Phases {
    let parameters = TrainingParameters { mode: mode as i32, seed: Some(1), ..Default::default() };
    let started = Instant::now();
    let request = TrainRequest { project_id: project.into(), parameters: Some(parameters), activate: Some(true) };
    let job = clients.training.train(request).await.unwrap().into_inner().job.unwrap();
    let mut stream =
        clients.training.watch_training_job(WatchTrainingJobRequest { job_id: job.job_id }).await.unwrap().into_inner();
    let (mut last, mut training, mut saving) = (None, None, None);
    while let Some(record) = stream.message().await.unwrap() {
        if record.phase == TrainingPhase::Training as i32 {
            training.get_or_insert_with(|| started.elapsed());
        }
        if record.phase == TrainingPhase::Saving as i32 {
            saving.get_or_insert_with(|| started.elapsed());
        }
        last = Some(record);
    }
    let last = last.unwrap();
    assert_eq!(last.state, JobState::Succeeded as i32, "{last:?}");
    let total = started.elapsed();
    // A phase the stream skipped (updates coalesce) counts in the next one.
    let training = training.unwrap_or_default();
    let saving = saving.unwrap_or(total).max(training);
    let (first_predict, served_by) = predict(clients, project, size).await;
    assert_eq!(served_by, last.model_version);
    Phases { total, before_training: training, training: saving - training, saving: total - saving, first_predict }
}

async fn case(
    clients: &mut Clients,
    id: &str,
    architecture: Architecture,
    size: u32,
    examples: usize,
) -> (Phases, Phases, Duration) {
    let project = Project {
        id: id.into(),
        classes: (0..10).map(|c| format!("c{c}")).collect(),
        model: Some(ModelSpec { architecture: architecture as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: size, height: size, channels: 3, ..Default::default() }),
        ..Default::default()
    };
    let cold = Project { id: format!("{id}-cold"), ..project.clone() };
    clients.projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
    add(clients, id, 0..examples, size).await;
    // The first head-only job embeds every example (cache fill); what is measured is the
    // retraining after one more annotation.
    retrain(clients, id, TrainingMode::HeadOnly, size).await;
    add(clients, id, examples..examples + 1, size).await;
    let head_only = retrain(clients, id, TrainingMode::HeadOnly, size).await;
    add(clients, id, examples + 1..examples + 2, size).await;
    let full = retrain(clients, id, TrainingMode::Full, size).await;
    // Nothing has served this project yet: its first Predict loads the initial weights.
    clients.projects.create_project(CreateProjectRequest { project: Some(cold.clone()) }).await.unwrap();
    let (cold, _) = predict(clients, &cold.id, size).await;
    (head_only, full, cold)
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (cnn_examples, vgg_examples) = match args[..] {
        [cnn, vgg, ..] => (cnn, vgg),
        _ => (1000, 16),
    };
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (_server, grpc) = start_server(&dirs, &[]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut clients = Clients {
        projects: ProjectServiceClient::new(channel.clone()),
        examples: ExampleServiceClient::new(channel.clone()),
        training: TrainingServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
    };
    println!("retrain + activate after one more annotation (defaults: head-only 40 epochs, full 5 epochs; batch 32)");
    let (cnn_head, cnn_full, cnn_cold) = case(&mut clients, "cnn", Architecture::SmallCnn, 32, cnn_examples).await;
    let (vgg_head, vgg_full, vgg_cold) = case(&mut clients, "vgg", Architecture::Vgg16, 224, vgg_examples).await;
    println!();
    println!("| model | labelled examples | head-only (cached embeddings) | full fine-tuning | full / head-only |");
    println!("| --- | --- | --- | --- | --- |");
    let rows = [
        ("small_cnn 3x32x32", cnn_examples + 1, cnn_head, cnn_full, cnn_cold),
        ("vgg16 3x224x224", vgg_examples + 1, vgg_head, vgg_full, vgg_cold),
    ];
    for (name, examples, head, full, _) in rows {
        let (head, full) = (head.total.as_secs_f64(), full.total.as_secs_f64());
        println!("| {name} | {examples} | {head:.2} s | {full:.2} s | {:.1}x |", full / head);
    }
    println!();
    println!("| head-only retrain | until training (load, embed) | training + validation | writing + activating |");
    println!("| --- | --- | --- | --- |");
    let seconds = |d: Duration| d.as_secs_f64();
    for (name, _, head, _, _) in rows {
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.2} s |",
            seconds(head.before_training),
            seconds(head.training),
            seconds(head.saving)
        );
    }
    println!();
    println!(
        "| head-only retrain | train to active | first Predict after | train to served | first Predict of a new project (loads first) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, _, head, _, cold) in rows {
        println!(
            "| {name} | {:.2} s | {:.3} s | {:.2} s | {:.3} s |",
            seconds(head.total),
            seconds(head.first_predict),
            seconds(head.total + head.first_predict),
            seconds(cold)
        );
    }
}
