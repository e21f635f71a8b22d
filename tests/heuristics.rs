//! `alps.v1.HeuristicService` on the real server with the built-in plugin: listing, scoring,
//! selection, and every kind of bad request answered with a precise status.

use alps_proto::v1::{
    Direction, HeuristicKind, HeuristicRef, ListHeuristicsRequest, ScoreRequest, SelectRequest, Tensor,
    heuristic_service_client::HeuristicServiceClient,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, install_plugin, start_server};
use tonic::{Code, transport::Channel};

const BUILTINS: [&str; 11] = [
    "badge",
    "bald",
    "batch_bald",
    "coreset",
    "entropy",
    "least_confidence",
    "margin",
    "power_bald",
    "random",
    "typiclust",
    "variance",
];

async fn server_with_builtins() -> (ServerDirs, Process, HeuristicServiceClient<Channel>) {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (server, grpc) = start_server(&dirs, &[]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    (dirs, server, HeuristicServiceClient::new(channel))
}

fn heuristic(name: &str) -> Option<HeuristicRef> {
    Some(HeuristicRef { name: name.to_owned(), version: String::new() })
}

/// `[N=3, C=2, K=2]`: sample 0 disagrees completely (BALD ln 2), sample 1 agrees on a coin
/// flip (BALD 0, entropy ln 2), sample 2 is certain (everything 0).
fn three_samples() -> Tensor {
    Tensor { shape: vec![3, 2, 2], data: vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 0.0] }
}

fn score_request(name: &str, values: Tensor) -> ScoreRequest {
    ScoreRequest { heuristic: heuristic(name), values: Some(values), seed: Some(1), ..Default::default() }
}

#[tokio::test]
async fn lists_every_builtin_with_its_file_and_checksum() {
    let (dirs, _server, mut client) = server_with_builtins().await;
    let listed = client.list_heuristics(ListHeuristicsRequest {}).await.unwrap().into_inner().heuristics;
    let names: Vec<&str> = listed.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, BUILTINS);
    let bytes = std::fs::read(dirs.plugins.path().join("builtin.so")).unwrap();
    let expected_sha = sha256_hex(&bytes);
    for info in &listed {
        assert_eq!(info.sha256, expected_sha, "{}", info.name);
        assert!(info.source_file.ends_with("builtin.so"), "{}", info.source_file);
        assert_eq!(info.plugin, "alps-builtin");
        assert!(info.loaded_unix_ms > 0);
        let batch = matches!(info.name.as_str(), "batch_bald" | "power_bald" | "typiclust" | "coreset" | "badge");
        assert_eq!(info.kind, if batch { HeuristicKind::Batch } else { HeuristicKind::Score } as i32, "{}", info.name);
        let (embeddings, labelled) = match info.name.as_str() {
            "typiclust" | "coreset" => (true, true),
            "badge" => (true, false),
            _ => (false, false),
        };
        assert_eq!((info.needs_embeddings, info.needs_labelled_set), (embeddings, labelled), "{}", info.name);
        let lower = matches!(info.name.as_str(), "margin" | "least_confidence");
        let direction = if lower { Direction::LowerIsMoreInformative } else { Direction::HigherIsMoreInformative };
        assert_eq!(info.direction, direction as i32, "{}", info.name);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn score_returns_scores_and_the_most_informative_first_order() {
    let (_dirs, _server, mut client) = server_with_builtins().await;
    let bald = client.score(score_request("bald", three_samples())).await.unwrap().into_inner();
    assert!((bald.scores[0] - std::f32::consts::LN_2).abs() < 1e-6, "{:?}", bald.scores);
    assert_eq!(bald.scores[1], 0.0);
    assert_eq!(bald.order, [0, 1, 2], "ties (samples 1 and 2 at 0) keep index order");
    assert_eq!(bald.direction, Direction::HigherIsMoreInformative as i32);
    assert_eq!(bald.heuristic.unwrap(), HeuristicRef { name: "bald".into(), version: "1.0.0".into() });

    let margin = client.score(score_request("margin", three_samples())).await.unwrap().into_inner();
    // Margins: 0, 0, 1; lower is more informative, ties by index.
    assert_eq!(margin.order, [0, 1, 2]);
    assert_eq!(margin.direction, Direction::LowerIsMoreInformative as i32);
    let entropy = client.score(score_request("entropy", three_samples())).await.unwrap().into_inner();
    assert_eq!(entropy.order, [0, 1, 2]);
}

#[tokio::test]
async fn logits_are_softmaxed_and_one_output_models_are_two_classes() {
    let (_dirs, _server, mut client) = server_with_builtins().await;
    // Logits (0, 0) for both iterations = uniform probabilities: entropy ln 2.
    let logits = Tensor { shape: vec![1, 2, 2], data: vec![0.0, 0.0, 0.0, 0.0] };
    let mut request = score_request("entropy", logits);
    request.logits = true;
    let scores = client.score(request).await.unwrap().into_inner().scores;
    assert!((scores[0] - std::f32::consts::LN_2).abs() < 1e-6);
    // C = 1 sigmoid outputs p = 1 and 0 over K = 2: as {p, 1 - p} that is complete
    // disagreement, BALD ln 2 (Baal 2.1.0 would treat C = 1 as a single certain class: 0).
    let binary = Tensor { shape: vec![1, 1, 2], data: vec![1.0, 0.0] };
    let scores = client.score(score_request("bald", binary)).await.unwrap().into_inner().scores;
    assert!((scores[0] - std::f32::consts::LN_2).abs() < 1e-6, "{scores:?}");
}

#[tokio::test]
async fn select_picks_jointly_for_batch_heuristics_and_top_k_for_score_heuristics() {
    let (_dirs, _server, mut client) = server_with_builtins().await;
    for name in ["batch_bald", "power_bald", "bald"] {
        let request = SelectRequest {
            heuristic: heuristic(name),
            values: Some(three_samples()),
            logits: false,
            query_size: 2,
            seed: Some(3),
            ..Default::default()
        };
        let selected = client.select(request).await.unwrap().into_inner();
        assert_eq!(selected.indices.len(), 2, "{name}");
        assert_eq!(selected.indices[0], 0, "{name}: the disagreeing sample first");
        assert_eq!(selected.scores.len(), 2);
        assert_eq!(selected.heuristic.unwrap().name, name);
    }
}

// Multi-threaded: the client must answer the server's graceful shutdown while this thread
// blocks in `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_codes_and_the_server_keeps_serving() {
    let (_dirs, mut server, mut client) = server_with_builtins().await;
    let unknown = client.score(score_request("bayes_magic", three_samples())).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("bald") && unknown.message().contains("variance"), "{}", unknown.message());

    let mut pinned = score_request("bald", three_samples());
    pinned.heuristic = Some(HeuristicRef { name: "bald".into(), version: "9.9.9".into() });
    let error = client.score(pinned).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains("1.0.0"), "{}", error.message());

    let cases: Vec<(ScoreRequest, &str)> = vec![
        (ScoreRequest { heuristic: None, ..score_request("bald", three_samples()) }, "heuristic.name"),
        (ScoreRequest { values: None, ..score_request("bald", three_samples()) }, "values is required"),
        (score_request("bald", Tensor { shape: vec![3, 4], data: vec![0.25; 12] }), "shape"),
        (score_request("bald", Tensor { shape: vec![2, 2, 2], data: vec![0.5; 7] }), "shape"),
        (score_request("bald", Tensor { shape: vec![1, 2, 1], data: vec![f32::NAN, 0.5] }), "not finite"),
        (score_request("bald", Tensor { shape: vec![1, 2, 1], data: vec![2.0, -1.0] }), "logits=true"),
        (score_request("bald", Tensor { shape: vec![1, 2, 1], data: vec![0.2, 0.2] }), "sum"),
        (score_request("batch_bald", three_samples()), "use Select"),
    ];
    for (request, needle) in cases {
        let error = client.score(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{needle}: {error:?}");
        assert!(error.message().contains(needle), "{needle:?} not in {:?}", error.message());
    }
    // query_size 0 is rejected; one over N selects all N (tests/inference.rs, query_size rule).
    let request = SelectRequest {
        heuristic: heuristic("batch_bald"),
        values: Some(three_samples()),
        logits: false,
        query_size: 0,
        seed: None,
        ..Default::default()
    };
    let error = client.select(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("query_size"), "{}", error.message());
    // Still serving after every rejection.
    client.score(score_request("bald", three_samples())).await.unwrap();
    assert!(server.terminate().success());
}

#[tokio::test]
async fn large_pools_fit_in_one_request() {
    // 20,000 x 10 x 20 f32 = 16 MB, over tonic's 4 MiB default decoding limit.
    let (_dirs, _server, mut client) = server_with_builtins().await;
    let (n, c, k) = (20_000usize, 10usize, 20usize);
    let values = Tensor { shape: vec![n as u64, c as u64, k as u64], data: vec![0.1; n * c * k] };
    let response = client.score(score_request("entropy", values)).await.unwrap().into_inner();
    assert_eq!(response.scores.len(), n);
    assert!(response.scores.iter().all(|&s| (s - 10f32.ln()).abs() < 1e-5));
}
