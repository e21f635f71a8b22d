//! Benchmark of training's share of the CPU: Predict latency while a training job runs, with
//! each job on as many intra-op threads as inference (the default of `--training-threads`) vs
//! on half of them, each with libgomp's default wait policy (spin, then sleep) and with
//! `OMP_WAIT_POLICY=PASSIVE`, side by side in one run through the real release server.
//!
//! Per setting and round: a fresh server, a `small_cnn` 3×32×32 project with 2,000 labelled
//! examples; a full fine-tuning job (10 epochs) alone; sequential Predicts (32 samples,
//! K = 20) while idle, then while the same job runs again; and how long each job took.
//! Settings alternate across rounds; the table gives medians over rounds.
//!
//! Run with `make bench`. Optional argument: rounds (default 3).

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CreateProjectRequest, JobState, LabelledExample, ModelSpec, PredictRequest,
    Preprocessing, Project, Sample, Tensor, TrainRequest, TrainingMode, TrainingParameters, WatchTrainingJobRequest,
    example_service_client::ExampleServiceClient, inference_service_client::InferenceServiceClient,
    project_service_client::ProjectServiceClient, sample::Input, training_service_client::TrainingServiceClient,
};
use alps_system_tests::{ServerDirs, builtin_plugin, install_plugin, median, start_server_with_env};
use tonic::transport::Channel;

const EXAMPLES: usize = 2000;
const SIZE: u64 = 32;

fn sample(i: usize) -> Sample {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let data = (0..3 * SIZE * SIZE).map(|_| rng.f32()).collect();
    Sample { id: String::new(), input: Some(Input::Tensor(Tensor { shape: vec![3, SIZE, SIZE], data })) }
}

/// The figures of one round of one setting, in seconds.
struct Round {
    idle: Vec<f64>,
    during_training: Vec<f64>,
    training_alone: f64,
    training: f64,
}

/// Runs a full fine-tuning job on project "p" while `meanwhile` runs, which is given a flag set
/// once the job has ended; returns the job's time (Train to its end) and what `meanwhile`
/// returned.
async fn train_while<F, T>(channel: &Channel, meanwhile: impl FnOnce(Arc<OnceLock<Duration>>) -> F) -> (f64, T)
where
    F: std::future::Future<Output = T>,
{
    let mut training = TrainingServiceClient::new(channel.clone());
    let parameters =
        TrainingParameters { mode: TrainingMode::Full as i32, epochs: 10, seed: Some(1), ..Default::default() };
    let started = Instant::now();
    let request = TrainRequest { project_id: "p".into(), parameters: Some(parameters), activate: Some(false) };
    let job = training.train(request).await.unwrap().into_inner().job.unwrap();
    let finished = Arc::new(OnceLock::new());
    /// Sets the flag however the watcher ends, so that `meanwhile` stops even if it panics.
    struct Ended(Arc<OnceLock<Duration>>, Instant);
    impl Drop for Ended {
        fn drop(&mut self) {
            let _ = self.0.set(self.1.elapsed());
        }
    }
    let watcher = tokio::spawn({
        let ended = Ended(finished.clone(), started);
        async move {
            let request = WatchTrainingJobRequest { job_id: job.job_id };
            let mut stream = training.watch_training_job(request).await.unwrap().into_inner();
            let mut last = None;
            while let Some(record) = stream.message().await.unwrap() {
                last = Some(record.state);
            }
            drop(ended);
            assert_eq!(last, Some(JobState::Succeeded as i32));
        }
    });
    let result = meanwhile(finished.clone()).await;
    watcher.await.unwrap();
    (finished.get().unwrap().as_secs_f64(), result)
}

async fn predicts_until(inference: &mut InferenceServiceClient<Channel>, done: impl Fn() -> bool) -> Vec<f64> {
    let request = PredictRequest {
        project_id: "p".into(),
        samples: (0..32).map(sample).collect(),
        mc_iterations: 20,
        ..Default::default()
    };
    let mut latencies = Vec::new();
    while !done() {
        let started = Instant::now();
        inference.predict(request.clone()).await.unwrap();
        latencies.push(started.elapsed().as_secs_f64());
    }
    latencies
}

/// One way to run the server: its training threads and libgomp's wait policy.
struct Setting {
    name: &'static str,
    training_threads: String,
    wait_policy: Option<&'static str>,
}

async fn round(setting: &Setting, cores: &str) -> Round {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    // Inference on every core in every setting (libtorch's default is the physical cores).
    let mut env = vec![("OMP_NUM_THREADS", cores)];
    env.extend(setting.wait_policy.map(|policy| ("OMP_WAIT_POLICY", policy)));
    let flags = ["--training-threads", setting.training_threads.as_str()];
    let (_server, grpc) = start_server_with_env(&dirs, &flags, &env);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let project = Project {
        id: "p".into(),
        classes: (0..10).map(|c| format!("c{c}")).collect(),
        model: Some(ModelSpec { architecture: Architecture::SmallCnn as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 32, height: 32, channels: 3, ..Default::default() }),
        ..Default::default()
    };
    ProjectServiceClient::new(channel.clone())
        .create_project(CreateProjectRequest { project: Some(project) })
        .await
        .unwrap();
    let mut examples = ExampleServiceClient::new(channel.clone());
    let labelled: Vec<LabelledExample> = (0..EXAMPLES)
        .map(|i| LabelledExample {
            external_id: format!("e{i}"),
            sample: Some(sample(i)),
            class_name: format!("c{}", i % 10),
            ..Default::default()
        })
        .collect();
    for chunk in labelled.chunks(200) {
        let request = AddExamplesRequest { project_id: "p".into(), examples: chunk.to_vec() };
        examples.add_examples(tokio_stream::iter([request])).await.unwrap();
    }
    let mut inference = InferenceServiceClient::new(channel.clone());
    let warm_until = Instant::now() + Duration::from_secs(1);
    predicts_until(&mut inference, || Instant::now() > warm_until).await;
    let idle_until = Instant::now() + Duration::from_secs(3);
    let idle = predicts_until(&mut inference, || Instant::now() > idle_until).await;
    let (training_alone, ()) = train_while(&channel, |_| std::future::ready(())).await;
    let (training, during_training) =
        train_while(
            &channel,
            |finished| async move { predicts_until(&mut inference, || finished.get().is_some()).await },
        )
        .await;
    Round { idle, during_training, training_alone, training }
}

/// The value at quantile `q` of `values` (nearest rank).
fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (all, half) = (cores.to_string(), (cores / 2).max(1).to_string());
    let setting = |name, training_threads: &String, wait_policy| Setting {
        name,
        training_threads: training_threads.clone(),
        wait_policy,
    };
    let settings = [
        setting("all (the default)", &all, None),
        setting("half", &half, None),
        setting("all, OMP_WAIT_POLICY=PASSIVE", &all, Some("PASSIVE")),
        setting("half, OMP_WAIT_POLICY=PASSIVE", &half, Some("PASSIVE")),
    ];
    let mut results: Vec<Vec<Round>> = settings.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for s in 0..settings.len() {
            // Rotate which setting runs first, so none always runs on a cooler machine.
            let s = (s + r) % settings.len();
            results[s].push(round(&settings[s], &all).await);
        }
    }
    let cores = all;
    println!(
        "Predict (32 samples, K = 20) on small_cnn while a full fine-tuning job runs ({EXAMPLES} examples, 10 epochs); {cores} cores; medians of {rounds} rounds"
    );
    println!();
    println!(
        "| training threads | Predict p50 idle | p50 during training | p90 during training | p99 during training | training alone | training under Predicts |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (Setting { name, .. }, rounds) in settings.iter().zip(&results) {
        let of = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let idle = of(&|r| quantile(r.idle.clone(), 0.5));
        let during = of(&|r| quantile(r.during_training.clone(), 0.5));
        let p90 = of(&|r| quantile(r.during_training.clone(), 0.9));
        let p99 = of(&|r| quantile(r.during_training.clone(), 0.99));
        let (alone, training) = (of(&|r| r.training_alone), of(&|r| r.training));
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {alone:.2} s | {training:.2} s |",
            idle * 1e3,
            during * 1e3,
            p90 * 1e3,
            p99 * 1e3,
        );
    }
}
