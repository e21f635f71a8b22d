//! The catalogue in PostgreSQL (`--database-url`) against SQLite in the data dir, and samples in
//! an S3 object store (`--object-store-url`, moto on loopback) against the data dir, side by side
//! on the same machine, release server:
//! * Predict: 32 concurrent clients predicting one 3×32×32 image each (K = 20) on `small_cnn`,
//!   as in the serving benchmark. Predict never reads the catalogue, so both must be equal
//!   within noise;
//! * AddExamples: batches of 100 labelled 3×32×32 tensors, one client, labelled examples per
//!   second (blob writes + catalogue transaction).
//!
//! PostgreSQL is a throwaway server on loopback; `make bench` runs it with `PG_FSYNC=on`, as
//! durable as SQLite's `synchronous = FULL`. Optional argument: requests per client (default 30).

use std::time::{Duration, Instant};

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CreateProjectRequest, LabelledExample, ModelSpec, PredictRequest, Preprocessing,
    Project, Sample, Tensor, example_service_client::ExampleServiceClient,
    inference_service_client::InferenceServiceClient, project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{
    ServerDirs, builtin_plugin, channel, install_plugin, latencies_of, median, postgres_database, s3_bucket, s3_env,
    s3_server, start_server_with_env,
};
use tonic::transport::Channel;

const CLIENTS: usize = 32;
const BATCH: usize = 100;
const BATCHES: usize = 20;

fn tensor(value: f32) -> Option<Sample> {
    let tensor = Tensor { shape: vec![3, 32, 32], data: vec![value; 3 * 32 * 32] };
    Some(Sample { id: "x".into(), input: Some(Input::Tensor(tensor)) })
}

struct Run {
    predictions_per_s: f64,
    p50: Duration,
    p99: Duration,
    examples_per_s: f64,
}

/// Where one server keeps its catalogue and files.
enum Storage<'a> {
    /// SQLite and files in the data dir.
    Embedded,
    /// PostgreSQL at this URL, files in the data dir.
    Postgres(&'a str),
    /// PostgreSQL at this URL, files in this S3 bucket.
    Objects(&'a str, &'a str),
}

/// One server on `storage`: the Predict load, then the AddExamples load.
async fn run(storage: &Storage<'_>, per_client: usize, round: usize) -> Run {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (flags, env) = match storage {
        Storage::Embedded => (vec![], vec![]),
        Storage::Postgres(url) => (vec!["--database-url".to_owned(), url.to_string()], vec![]),
        Storage::Objects(url, bucket) => (
            ["--database-url", url, "--object-store-url", &format!("s3://{bucket}/alps")].map(str::to_owned).to_vec(),
            s3_env(s3_server()),
        ),
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let (mut process, grpc) = start_server_with_env(&dirs, &flags, &env);
    let channel: Channel = channel(&grpc, None, None).await.unwrap();
    let project = Project {
        id: "cnn".into(),
        classes: (0..10).map(|c| format!("c{c}")).collect(),
        model: Some(ModelSpec { architecture: Architecture::SmallCnn as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 32, height: 32, channels: 3, ..Default::default() }),
        mc_iterations: 20,
        ..Default::default()
    };
    ProjectServiceClient::new(channel.clone())
        .create_project(CreateProjectRequest { project: Some(project) })
        .await
        .unwrap();
    let predict = |value| PredictRequest {
        project_id: "cnn".into(),
        samples: vec![tensor(value).unwrap()],
        ..Default::default()
    };
    InferenceServiceClient::new(channel.clone()).predict(predict(0.5)).await.unwrap();

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = InferenceServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sent = Instant::now();
                    client.predict(predict((c * per_client + i) as f32 / 1000.0)).await.unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = latencies_of(clients).await;
    let predicting = started.elapsed();
    latencies.sort();

    let mut examples = ExampleServiceClient::new(channel.clone());
    let started = Instant::now();
    for batch in 0..BATCHES {
        let labelled = (0..BATCH)
            .map(|i| {
                let n = (round * BATCHES + batch) * BATCH + i;
                LabelledExample {
                    external_id: format!("task-{n}"),
                    sample: tensor(n as f32 / 1e6),
                    class_name: format!("c{}", n % 10),
                    ..Default::default()
                }
            })
            .collect();
        let request = AddExamplesRequest { project_id: "cnn".into(), examples: labelled };
        examples.add_examples(tokio_stream::iter([request])).await.unwrap();
    }
    let adding = started.elapsed();
    process.signal(libc::SIGKILL);
    let _ = process.wait();
    Run {
        predictions_per_s: latencies.len() as f64 / predicting.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        examples_per_s: (BATCHES * BATCH) as f64 / adding.as_secs_f64(),
    }
}

#[tokio::main]
async fn main() {
    let per_client: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30);
    let fsync = std::env::var("PG_FSYNC").unwrap_or_else(|_| "off".into());
    let rounds = 5;
    println!(
        "small_cnn 3x32x32, K = 20: {CLIENTS} clients x {per_client} Predict of 1 image; then AddExamples, \
         {BATCHES} batches of {BATCH} tensors; {rounds} alternating rounds, medians; PostgreSQL fsync {fsync}"
    );
    // The databases and buckets are made first: CREATE DATABASE writes and syncs a copy of a
    // template, which must not overlap a measured run.
    let mut stores = Vec::new();
    for round in 0..rounds {
        let postgres = postgres_database(&format!("alps_bench_{round}")).1;
        let objects = postgres_database(&format!("alps_bench_objects_{round}")).1;
        stores.push((postgres, objects, s3_bucket(&format!("alps-bench-{round}")).await));
    }
    let mut runs: [Vec<Run>; 3] = Default::default();
    for (round, (postgres, objects, bucket)) in stores.iter().enumerate() {
        let storages = [Storage::Embedded, Storage::Postgres(postgres), Storage::Objects(objects, bucket)];
        // Rotating which goes first, so that none always meets a warmer machine.
        for which in (0..3).map(|i| (i + round) % 3) {
            runs[which].push(run(&storages[which], per_client, round).await);
        }
    }
    let figures = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.predictions_per_s).collect()),
            median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect()),
            median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect()),
            median(runs.iter().map(|r| r.examples_per_s).collect()),
        )
    };
    let [s, p, o] = [&runs[0], &runs[1], &runs[2]].map(|runs| figures(runs));
    println!();
    println!("| storage | Predict images / s | p50 latency | p99 latency | AddExamples examples / s |");
    println!("| --- | --- | --- | --- | --- |");
    println!("| SQLite, files in the data dir | {:.0} | {:.1} ms | {:.1} ms | {:.0} |", s.0, s.1, s.2, s.3);
    println!("| PostgreSQL, files in the data dir | {:.0} | {:.1} ms | {:.1} ms | {:.0} |", p.0, p.1, p.2, p.3);
    println!("| PostgreSQL, files in S3 (moto) | {:.0} | {:.1} ms | {:.1} ms | {:.0} |", o.0, o.1, o.2, o.3);
    for (name, x, base) in [("PostgreSQL / SQLite", p, s), ("S3 / data dir (both PostgreSQL)", o, p)] {
        println!(
            "| ratio {name} | {:.3}x | {:.3}x | {:.3}x | {:.3}x |",
            x.0 / base.0,
            x.1 / base.1,
            x.2 / base.2,
            x.3 / base.3
        );
    }
}
