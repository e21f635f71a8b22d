//! Concurrent catalogue reads on one server: the same release server with its catalogue in
//! SQLite, and in PostgreSQL reading through one session and through four
//! (`--database-read-sessions`), side by side on the same machine:
//! * 2,000 labelled 3×32×32 tensors are added first;
//! * then 8 clients at once page through all of them with ListExamples (100 per page, 20
//!   pages each, 3 times): pages per second, and the p50 / p99 latency of a page.
//!
//! Predictions never read the catalogue (see `catalogue.rs`); ListExamples, CountExamples,
//! GetTrainingJob and a training job's reads do. PostgreSQL is a throwaway server on loopback.

use std::time::{Duration, Instant};

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CreateProjectRequest, LabelledExample, ListExamplesRequest, ModelSpec,
    Preprocessing, Project, Sample, Tensor, example_service_client::ExampleServiceClient,
    project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{
    ServerDirs, builtin_plugin, channel, install_plugin, latencies_of, median, postgres_database, start_server,
};
use tonic::transport::Channel;

const CLIENTS: usize = 8;
const EXAMPLES: usize = 2_000;
const PAGE: u32 = 100;
const PASSES: usize = 3;

/// Where one server keeps its catalogue.
enum Catalogue<'a> {
    Sqlite,
    /// PostgreSQL at this URL, read through this many sessions.
    Postgres(&'a str, u16),
}

struct Run {
    pages_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn tensor(value: f32) -> Option<Sample> {
    let tensor = Tensor { shape: vec![3, 32, 32], data: vec![value; 3 * 32 * 32] };
    Some(Sample { id: "x".into(), input: Some(Input::Tensor(tensor)) })
}

/// A server on `catalogue` holding [`EXAMPLES`] labelled examples of project "cnn".
async fn populated(catalogue: &Catalogue<'_>) -> (alps_system_tests::Process, Channel, ServerDirs) {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let flags = match catalogue {
        Catalogue::Sqlite => vec![],
        Catalogue::Postgres(url, sessions) => {
            vec![
                "--database-url".to_owned(),
                (*url).to_owned(),
                "--database-read-sessions".into(),
                sessions.to_string(),
            ]
        }
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (process, grpc) = start_server(&dirs, &flags);
    let channel = channel(&grpc, None, None).await.unwrap();
    let project = Project {
        id: "cnn".into(),
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
    for batch in 0..EXAMPLES / 100 {
        let labelled = (batch * 100..(batch + 1) * 100)
            .map(|n| LabelledExample {
                external_id: format!("task-{n:05}"),
                sample: tensor(n as f32 / 1e4),
                class_name: format!("c{}", n % 10),
                ..Default::default()
            })
            .collect();
        let request = AddExamplesRequest { project_id: "cnn".into(), examples: labelled };
        examples.add_examples(tokio_stream::iter([request])).await.unwrap();
    }
    (process, channel, dirs)
}

/// The paging load on a fresh server on `catalogue`.
async fn run(catalogue: &Catalogue<'_>) -> Run {
    let (mut process, channel, _dirs) = populated(catalogue).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut client = ExampleServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for _ in 0..PASSES {
                    let mut page_token = String::new();
                    loop {
                        let request = ListExamplesRequest { project_id: "cnn".into(), page_size: PAGE, page_token };
                        let sent = Instant::now();
                        let page = client.list_examples(request).await.unwrap().into_inner();
                        latencies.push(sent.elapsed());
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        page_token = page.next_page_token;
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = latencies_of(clients).await;
    let elapsed = started.elapsed();
    process.signal(libc::SIGKILL);
    let _ = process.wait();
    assert_eq!(latencies.len(), CLIENTS * PASSES * EXAMPLES / PAGE as usize, "every page listed");
    latencies.sort();
    Run {
        pages_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    }
}

#[tokio::main]
async fn main() {
    let rounds = 5;
    println!(
        "{CLIENTS} clients x {PASSES} passes of ListExamples over {EXAMPLES} examples, {PAGE} per page; \
         {rounds} rotating rounds, medians"
    );
    // Databases first: CREATE DATABASE must not overlap a measured run.
    let urls: Vec<(String, String)> = (0..rounds)
        .map(|round| {
            (
                postgres_database(&format!("alps_reads_one_{round}")).1,
                postgres_database(&format!("alps_reads_{round}")).1,
            )
        })
        .collect();
    let mut runs: [Vec<Run>; 3] = Default::default();
    for (round, (one, four)) in urls.iter().enumerate() {
        let catalogues = [Catalogue::Sqlite, Catalogue::Postgres(one, 1), Catalogue::Postgres(four, 4)];
        for which in (0..3).map(|i| (i + round) % 3) {
            runs[which].push(run(&catalogues[which]).await);
        }
    }
    let figures = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.pages_per_s).collect()),
            median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect()),
            median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect()),
        )
    };
    let [s, one, four] = [&runs[0], &runs[1], &runs[2]].map(|runs| figures(runs));
    println!();
    println!("| catalogue | pages / s | p50 latency | p99 latency |");
    println!("| --- | --- | --- | --- |");
    println!("| SQLite | {:.0} | {:.1} ms | {:.1} ms |", s.0, s.1, s.2);
    println!("| PostgreSQL, 1 read session | {:.0} | {:.1} ms | {:.1} ms |", one.0, one.1, one.2);
    println!("| PostgreSQL, 4 read sessions | {:.0} | {:.1} ms | {:.1} ms |", four.0, four.1, four.2);
    println!("| ratio 4 / 1 sessions | {:.3}x | {:.3}x | {:.3}x |", four.0 / one.0, four.1 / one.1, four.2 / one.2);
}
