//! Benchmarks 2 and 3 of the inference engine, against the real release server:
//! * dynamic batching: 32 concurrent gRPC clients predicting one 3×32×32 image each (K = 20) on
//!   `small_cnn`, with batching (default work budget and wait) vs batch size 1
//!   (`--work-budget 0`), side by side: throughput and p50/p99 latency;
//! * security overhead: the same load with a bearer token on every call, over plaintext and over
//!   TLS, vs plaintext without authentication, side by side;
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
use alps_system_tests::{
    Process, ServerDirs, TestPki, builtin_plugin, channel, create_token, install_plugin, latencies_of, path_str,
    start_server,
};
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
    let channel = channel(&grpc, None, None).await.unwrap();
    (dirs, process, channel)
}

/// What guards the server under load.
#[derive(Clone, Copy)]
enum Guard {
    /// Plaintext, no tokens.
    Open,
    /// Plaintext with a bearer token on every call (the auth layer's own cost).
    Token,
    /// TLS (a certificate from a throwaway CA) and a bearer token on every call.
    TlsToken,
}

/// A server with a tokens file and, for [`Guard::TlsToken`], TLS; returns its channel (verified
/// TLS when used) and an admin token.
async fn start_guarded(extra: &[&str], guard: Guard) -> (ServerDirs, TestPki, Process, Channel, String) {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let pki = TestPki::new();
    let (cert, key) = pki.issue("server");
    let tokens = dirs.data.path().join("tokens");
    let token = create_token(&tokens, "admin", "bench");
    let mut args = vec!["--auth-tokens-file", path_str(&tokens)];
    let tls = matches!(guard, Guard::TlsToken);
    if tls {
        args.extend(["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]);
    }
    args.extend_from_slice(extra);
    let (process, grpc) = start_server(&dirs, &args);
    let channel = channel(&grpc, tls.then(|| pki.ca_pem()).as_deref(), None).await.unwrap();
    (dirs, pki, process, channel, token)
}

/// `message` with the token when there is one.
fn call<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(token) => alps_system_tests::with_token(message, token),
        None => tonic::Request::new(message),
    }
}

struct Load {
    throughput: f64,
    p50: Duration,
    p99: Duration,
}

/// 32 clients × `per_client` requests against a server guarded by `guard`.
async fn load(extra: &[&str], per_client: usize, guard: Guard) -> Load {
    let (_keep, process, channel, token) = match guard {
        Guard::Open => {
            let (dirs, process, channel) = start(extra).await;
            ((dirs, None), process, channel, None)
        }
        Guard::Token | Guard::TlsToken => {
            let (dirs, pki, process, channel, token) = start_guarded(extra, guard).await;
            ((dirs, Some(pki)), process, channel, Some(token))
        }
    };
    let request_project = CreateProjectRequest { project: Some(project("cnn", Architecture::SmallCnn, 32)) };
    ProjectServiceClient::new(channel.clone()).create_project(call(request_project, token.as_deref())).await.unwrap();
    let mut warm = InferenceServiceClient::new(channel.clone());
    warm.predict(call(request("cnn", 32, 0.5), token.as_deref())).await.unwrap();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = InferenceServiceClient::new(channel.clone());
            let token = token.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sent = Instant::now();
                    let message = request("cnn", 32, (c * per_client + i) as f32 / 1000.0);
                    client.predict(call(message, token.as_deref())).await.unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = latencies_of(clients).await;
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
    // `cargo bench --bench serving -- security`: only the TLS + token comparison, 5 rounds.
    let only_security = std::env::args().any(|a| a == "security");
    let rounds: usize = if only_security { 5 } else { 3 };
    println!(
        "small_cnn 3x32x32, K = 20, {CLIENTS} concurrent clients x {per_client} requests of 1 image; \
         {rounds} alternating rounds, medians"
    );
    let (mut batched, mut single, mut token, mut secure) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        batched.push(load(&[], per_client, Guard::Open).await);
        token.push(load(&[], per_client, Guard::Token).await);
        secure.push(load(&[], per_client, Guard::TlsToken).await);
        if !only_security {
            single.push(load(&["--work-budget", "0"], per_client, Guard::Open).await);
        }
    }
    let (batched, token, secure) = (median_load(batched), median_load(token), median_load(secure));
    if !only_security {
        let single = median_load(single);
        println!();
        println!("| serving | images / s | p50 latency | p99 latency |");
        println!("| --- | --- | --- | --- |");
        for (name, run) in [("dynamic batching (defaults)", &batched), ("batch size 1 (--work-budget 0)", &single)] {
            println!("| {name} | {:.0} | {:.1} ms | {:.1} ms |", run.throughput, ms(run.p50), ms(run.p99));
        }
        println!("| ratio batched / size 1 | {:.1}x | | |", batched.throughput / single.throughput);
    }
    println!();
    println!("| security (dynamic batching) | images / s | p50 latency | p99 latency |");
    println!("| --- | --- | --- | --- |");
    let guarded =
        [("plaintext, no auth", &batched), ("plaintext + bearer token", &token), ("TLS 1.3 + bearer token", &secure)];
    for (name, run) in guarded {
        println!("| {name} | {:.0} | {:.1} ms | {:.1} ms |", run.throughput, ms(run.p50), ms(run.p99));
    }
    for (name, run) in [("token / plaintext", &token), ("TLS + token / plaintext", &secure)] {
        println!(
            "| {name} | {:.3}x | {:.3}x | {:.3}x |",
            run.throughput / batched.throughput,
            ms(run.p50) / ms(batched.p50),
            ms(run.p99) / ms(batched.p99)
        );
    }
    if !only_security {
        memory().await;
    }
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
