//! Benchmarks 2 and 3 of the inference engine, against the real release server:
//! * dynamic batching: 32 concurrent gRPC clients predicting one 3×32×32 image each (K = 20) on
//!   `small_cnn`, with batching (default work budget and wait) vs batch size 1
//!   (`--work-budget 0`), side by side: throughput and p50/p99 latency;
//! * memory: the server's resident set size idle, and the growth per loaded VGG16 model
//!   against the size of its weights.
//!
//! Run with `make bench` (builds the release binaries first). Optional argument: requests per
//! client (default 20).

use std::time::{Duration, Instant};

use alps_proto::v1::{
    Architecture, CreateProjectRequest, ModelSpec, PredictRequest, Preprocessing, Project, Sample, Tensor,
    inference_service_client::InferenceServiceClient, project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, install_plugin, start_server};
use tonic::transport::Channel;

const CLIENTS: usize = 32;

fn project(id: &str, architecture: Architecture, size: u32) -> Project {
    Project {
        id: id.into(),
        classes: (0..10).map(|c| format!("c{c}")).collect(),
        model: Some(ModelSpec { architecture: architecture as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: size, height: size, channels: 3, ..Default::default() }),
        mc_iterations: 20,
        ..Default::default()
    }
}

fn request(project: &str, size: u32, value: f32) -> PredictRequest {
    let data = vec![value; (3 * size * size) as usize];
    let tensor = Tensor { shape: vec![3, u64::from(size), u64::from(size)], data };
    PredictRequest {
        project_id: project.into(),
        samples: vec![Sample { id: "x".into(), input: Some(Input::Tensor(tensor)) }],
        ..Default::default()
    }
}

async fn start(extra: &[&str]) -> (ServerDirs, Process, Channel) {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (process, grpc) = start_server(&dirs, extra);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    (dirs, process, channel)
}

struct Load {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(extra: &[&str], per_client: usize) -> Load {
    let (_dirs, process, channel) = start(extra).await;
    let request_project = CreateProjectRequest { project: Some(project("cnn", Architecture::SmallCnn, 32)) };
    ProjectServiceClient::new(channel.clone()).create_project(request_project).await.unwrap();
    let mut warm = InferenceServiceClient::new(channel.clone());
    warm.predict(request("cnn", 32, 0.5)).await.unwrap();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = InferenceServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sent = Instant::now();
                    client.predict(request("cnn", 32, (c * per_client + i) as f32 / 1000.0)).await.unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    process.signal(libc::SIGKILL);
    Load {
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn memory() {
    let (_dirs, mut process, channel) = start(&[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes(process.pid());
    let create = CreateProjectRequest { project: Some(project("vgg", Architecture::Vgg16, 224)) };
    ProjectServiceClient::new(channel.clone()).create_project(create).await.unwrap();
    let after_create = rss_bytes(process.pid());
    let mut one = request("vgg", 224, 0.5);
    one.mc_iterations = 1;
    InferenceServiceClient::new(channel).predict(one).await.unwrap();
    let loaded = process.wait_for_log("model loaded");
    let weights = loaded["bytes"].as_u64().expect("bytes");
    let after_predict = rss_bytes(process.pid());
    process.signal(libc::SIGKILL);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!();
    println!("| memory (RSS) | MiB |");
    println!("| --- | --- |");
    println!("| idle server (built-in plugin loaded) | {:.0} |", mib(idle));
    println!("| after CreateProject(vgg16) (weights checked, then freed) | {:.0} |", mib(after_create));
    println!("| after the first Predict (model cached) | {:.0} |", mib(after_predict));
    println!(
        "| VGG16 model: RSS growth {:.0} MiB for {:.0} MiB of weights = {:.2}x |  |",
        mib(after_predict - idle),
        mib(weights),
        (after_predict - idle) as f64 / weights as f64
    );
}

#[tokio::main]
async fn main() {
    let per_client: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30);
    const ROUNDS: usize = 3;
    println!(
        "small_cnn 3x32x32, K = 20, {CLIENTS} concurrent clients x {per_client} requests of 1 image; \
         {ROUNDS} alternating rounds, medians"
    );
    let (mut batched, mut single) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        batched.push(load(&[], per_client).await);
        single.push(load(&["--work-budget", "0"], per_client).await);
    }
    let (batched, single) = (median_load(batched), median_load(single));
    println!();
    println!("| serving | images / s | p50 latency | p99 latency |");
    println!("| --- | --- | --- | --- |");
    for (name, run) in [("dynamic batching (defaults)", &batched), ("batch size 1 (--work-budget 0)", &single)] {
        println!("| {name} | {:.0} | {:.1} ms | {:.1} ms |", run.throughput, ms(run.p50), ms(run.p99));
    }
    println!("| ratio batched / size 1 | {:.1}x | | |", batched.throughput / single.throughput);
    memory().await;
}

/// Median of each figure over the rounds.
fn median_load(mut runs: Vec<Load>) -> Load {
    let middle = runs.len() / 2;
    runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let throughput = runs[middle].throughput;
    runs.sort_by_key(|run| run.p50);
    let p50 = runs[middle].p50;
    runs.sort_by_key(|run| run.p99);
    Load { throughput, p50, p99: runs[middle].p99 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
