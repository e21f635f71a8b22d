//! Broken and replaced plugins on a running server (each a real shared library built by the
//! test): a clear error for every fault, the server keeps serving, hot reload on file changes,
//! and no request sees a mixed state while a plugin is replaced under load.

use std::time::Duration;

use alps_proto::v1::{
    HeuristicRef, ListHeuristicsRequest, ReloadHeuristicsRequest, ReloadHeuristicsResponse, ScoreRequest, Tensor,
    heuristic_service_client::HeuristicServiceClient,
};
use alps_system_tests::{
    Process, ServerDirs, builtin_plugin, eventually, example_plugin, install_plugin, start_server,
};
use tonic::{Code, transport::Channel};

struct Server {
    dirs: ServerDirs,
    process: Process,
    client: HeuristicServiceClient<Channel>,
}

/// A server whose plugin dir holds the built-in plugin plus `extra` (file name, library).
async fn server_with(extra: &[(&str, std::path::PathBuf)]) -> Server {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    for (name, library) in extra {
        install_plugin(library, dirs.plugins.path(), name);
    }
    let (process, grpc) = start_server(&dirs, &[]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server { dirs, process, client: HeuristicServiceClient::new(channel) }
}

fn score(name: &str) -> ScoreRequest {
    ScoreRequest {
        heuristic: Some(HeuristicRef { name: name.to_owned(), version: String::new() }),
        values: Some(Tensor { shape: vec![2, 2, 2], data: vec![0.9, 0.6, 0.1, 0.4, 0.5, 0.5, 0.5, 0.5] }),
        logits: false,
        seed: Some(0),
        ..Default::default()
    }
}

async fn names(client: &mut HeuristicServiceClient<Channel>) -> Vec<String> {
    let listed = client.list_heuristics(ListHeuristicsRequest {}).await.unwrap().into_inner();
    listed.heuristics.into_iter().map(|h| format!("{}@{}", h.name, h.version)).collect()
}

async fn reload(client: &mut HeuristicServiceClient<Channel>) -> ReloadHeuristicsResponse {
    client.reload_heuristics(ReloadHeuristicsRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn the_example_plugin_loads_beside_the_builtins_and_scores() {
    let mut server = server_with(&[("example.so", example_plugin(&[]))]).await;
    assert!(names(&mut server.client).await.contains(&"ratio@1.0.0".to_owned()));
    let scores = server.client.score(score("ratio")).await.unwrap().into_inner().scores;
    // Sample 0: pbar = (0.75, 0.25) -> 1/3; sample 1: uniform -> 1.
    assert!((scores[0] - 1.0 / 3.0).abs() < 1e-6 && (scores[1] - 1.0).abs() < 1e-6, "{scores:?}");
}

// Multi-threaded: the client must answer the server's graceful shutdown while this thread
// blocks in `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_heuristic_is_an_internal_error_not_a_crash() {
    let mut server = server_with(&[("panic.so", example_plugin(&["fault-panic"]))]).await;
    let error = server.client.score(score("ratio")).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal);
    assert!(error.message().contains("panicked: example plugin built with fault-panic"), "{}", error.message());
    assert!(error.message().contains("panic.so"), "names the plugin file: {}", error.message());
    server.client.score(score("bald")).await.unwrap();
    assert!(server.process.terminate().success());
}

#[tokio::test]
async fn an_error_status_and_nan_scores_are_internal_errors() {
    let mut server = server_with(&[("error.so", example_plugin(&["fault-error"]))]).await;
    let error = server.client.score(score("ratio")).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal);
    assert!(error.message().contains("fault-error"), "{}", error.message());

    let mut server = server_with(&[("nan.so", example_plugin(&["fault-nan"]))]).await;
    let error = server.client.score(score("ratio")).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal);
    assert!(error.message().contains("non-finite score"), "{}", error.message());
    server.client.score(score("bald")).await.unwrap();
}

#[tokio::test]
async fn unloadable_files_are_rejected_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.so");
    std::fs::write(&garbage, b"this is not an ELF file").unwrap();
    let truncated = dir.path().join("truncated.so");
    let builtin = std::fs::read(builtin_plugin()).unwrap();
    // Cut inside the loadable segments (the tail of a debug build is only debug info, which
    // the loader does not need): dlopen of such a file dies of SIGBUS unless the host checks.
    std::fs::write(&truncated, &builtin[..512 * 1024]).unwrap();
    let mut server = server_with(&[
        ("abi2.so", example_plugin(&["fault-abi-major"])),
        ("no_entry.so", example_plugin(&["fault-no-entry"])),
        ("garbage.so", garbage),
        ("truncated.so", truncated),
    ])
    .await;
    // The built-ins (eleven heuristics) still load and serve.
    assert_eq!(names(&mut server.client).await.len(), 11);
    server.client.score(score("bald")).await.unwrap();

    let report = reload(&mut server.client).await;
    let error_of = |file: &str| {
        report
            .errors
            .iter()
            .find(|e| e.file.ends_with(file))
            .unwrap_or_else(|| panic!("no error for {file}"))
            .message
            .clone()
    };
    let abi = error_of("abi2.so");
    // The example plugin claims the next major with the current minor (1.1).
    assert!(abi.contains("plugin ABI 2.1") && abi.contains("host ABI 1.1"), "{abi}");
    assert!(error_of("no_entry.so").contains("no entry symbol"));
    assert!(error_of("garbage.so").contains("not a loadable shared library"));
    let truncated = error_of("truncated.so");
    assert!(truncated.contains("truncated: a segment spans bytes"), "{truncated}");
    assert_eq!(report.errors.len(), 4);

    // The startup log named the file and both ABI versions too.
    let log = server.process.log().join("\n");
    assert!(log.contains("abi2.so") && log.contains("plugin ABI 2.1"), "{log}");
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_previous_version_loaded() {
    let mut server = server_with(&[("example.so", example_plugin(&[]))]).await;
    let broken = server.dirs.plugins.path().join("broken");
    std::fs::write(&broken, b"half-written").unwrap();
    std::fs::rename(&broken, server.dirs.plugins.path().join("example.so")).unwrap();
    let report = reload(&mut server.client).await;
    assert_eq!(report.errors.len(), 1);
    assert!(report.heuristics.iter().any(|h| h.name == "ratio" && h.version == "1.0.0"));
    server.client.score(score("ratio")).await.unwrap();
}

#[tokio::test]
async fn dropping_a_plugin_into_the_directory_loads_it_without_any_call() {
    let mut server = server_with(&[]).await;
    assert!(!names(&mut server.client).await.iter().any(|n| n.starts_with("ratio@")));
    install_plugin(&example_plugin(&[]), server.dirs.plugins.path(), "example.so");
    let client = &mut server.client;
    eventually("ratio to be loaded by the file watcher", || {
        let mut client = client.clone();
        async move { names(&mut client).await.contains(&"ratio@1.0.0".to_owned()).then_some(()) }
    })
    .await;
    // The reload reads the plugin files; reading must not count as a change (it once made the
    // watcher reload forever). Nothing changes for a second: exactly one reload so far.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reloads = server.process.log().iter().filter(|line| line.contains("reloaded after a file change")).count();
    assert_eq!(reloads, 1, "one file change, one reload");
    std::fs::remove_file(server.dirs.plugins.path().join("example.so")).unwrap();
    eventually("ratio to be unloaded after its file was removed", || {
        let mut client = client.clone();
        async move { (!names(&mut client).await.iter().any(|n| n.starts_with("ratio@"))).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_plugin_under_load_never_mixes_versions() {
    let v1 = example_plugin(&[]);
    let v2 = example_plugin(&["v2"]);
    let mut server = server_with(&[("example.so", v1.clone())]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut client = server.client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client.score(score("ratio")).await.expect("no request fails during a swap");
                    let response = response.into_inner();
                    let version = response.heuristic.unwrap().version;
                    // v2 offsets every score by +1: a response must be all-v1 or all-v2.
                    let offset = if version == "2.0.0" { 1.0 } else { 0.0 };
                    assert!(
                        (response.scores[0] - (1.0 / 3.0 + offset)).abs() < 1e-6,
                        "{version}: {:?}",
                        response.scores
                    );
                    assert!((response.scores[1] - (1.0 + offset)).abs() < 1e-6, "{version}: {:?}", response.scores);
                    seen.insert(version);
                }
                seen
            })
        })
        .collect();
    let mut client = server.client.clone();
    for round in 0..4 {
        let (next, version) = if round % 2 == 0 { (&v2, "ratio@2.0.0") } else { (&v1, "ratio@1.0.0") };
        install_plugin(next, server.dirs.plugins.path(), "example.so");
        // The watcher reloads once the directory is quiet; wait for it, under load. (It once
        // missed a swap made right after the server announced readiness: the watch started
        // later. The log says what the server did if this times out.)
        let started = std::time::Instant::now();
        while !names(&mut client).await.contains(&version.to_owned()) {
            let log = server.process.log().join("\n");
            assert!(started.elapsed() < alps_system_tests::PROCESS_TIMEOUT, "no {version}; server log:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    for client in clients {
        versions.extend(client.await.unwrap());
    }
    assert!(versions.contains("1.0.0") && versions.contains("2.0.0"), "both versions served: {versions:?}");
    client.score(score("bald")).await.unwrap();
}
