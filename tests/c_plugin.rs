//! A heuristic plugin written in C (`heuristics/examples/c/max_probability.c`), compiled at test
//! time with the system C compiler (`$CC`, else `cc`) against `alps_heuristic.h`: it loads beside
//! the built-ins, scores exactly like the built-in `least_confidence`, and a build claiming the
//! next ABI major is refused by name while everything loaded keeps serving, a build with the ABI
//! 1.0 layout still loads, and an ABI 1.1 heuristic gets the embeddings and labelled set it asks for.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CreateProjectRequest, Direction, HeuristicInfo, HeuristicKind, HeuristicRef,
    LabelledExample, ListHeuristicsRequest, ModelSpec, PredictRequest, Preprocessing, Project, RankRequest,
    ReloadHeuristicsRequest, Sample, ScoreRequest, ScoreResponse, SelectRequest, Tensor,
    example_service_client::ExampleServiceClient, heuristic_service_client::HeuristicServiceClient,
    inference_service_client::InferenceServiceClient, project_service_client::ProjectServiceClient, sample,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, install_plugin, start_server};
use tonic::transport::Channel;

/// File name of the C plugin in the server's plugin directory.
const C_PLUGIN_FILE: &str = "c_least_confidence.so";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compiles the example C plugin into `out` with the extra `defines` (e.g.
/// `-DALPS_EXAMPLE_WRONG_ABI`), warnings as errors, and returns the shared library.
fn compile_c_plugin(out: &Path, name: &str, defines: &[&str]) -> PathBuf {
    // `$CC` may carry flags ("gcc -m64"): the first word is the program.
    let cc = std::env::var("CC").ok().filter(|cc| !cc.trim().is_empty()).unwrap_or_else(|| "cc".to_owned());
    let mut words = cc.split_whitespace();
    let program = words.next().expect("non-empty CC");
    let library = out.join(name);
    let output = Command::new(program)
        .args(words)
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(workspace().join("heuristics/abi/include"))
        .args(defines)
        .arg(workspace().join("heuristics/examples/c/max_probability.c"))
        .arg("-o")
        .arg(&library)
        .output()
        .unwrap_or_else(|error| panic!("cannot run the C compiler {cc:?}: {error}"));
    assert!(
        output.status.success(),
        "compiling the C plugin with {cc:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    library
}

/// `ALPS_ABI_MAJOR` and `ALPS_ABI_MINOR` as the C header defines them.
fn header_abi() -> (u32, u32) {
    let header = std::fs::read_to_string(workspace().join("heuristics/abi/include/alps_heuristic.h")).unwrap();
    let define = |name: &str| -> u32 {
        let prefix = format!("#define {name} ");
        let line = header.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name}"));
        line.trim().trim_end_matches('u').parse().unwrap_or_else(|_| panic!("{name} is not a number: {line}"))
    };
    (define("ALPS_ABI_MAJOR"), define("ALPS_ABI_MINOR"))
}

struct Server {
    dirs: ServerDirs,
    process: Process,
    client: HeuristicServiceClient<Channel>,
    /// The connection, for the other services.
    channel: Channel,
    /// Holds the compiled plugins.
    build: tempfile::TempDir,
}

/// A server whose plugin dir holds the built-in plugin and the C plugin (built without defines).
async fn server_with_c_plugin() -> (Server, PathBuf) {
    let build = tempfile::tempdir().unwrap();
    let library = compile_c_plugin(build.path(), "c_least_confidence.so", &[]);
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    install_plugin(&library, dirs.plugins.path(), C_PLUGIN_FILE);
    let (process, grpc) = start_server(&dirs, &[]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    (Server { dirs, process, client: HeuristicServiceClient::new(channel.clone()), channel, build }, library)
}

fn heuristic(name: &str) -> Option<HeuristicRef> {
    Some(HeuristicRef { name: name.to_owned(), version: String::new() })
}

/// `[N=5, C=3, K=2]` probabilities with distinct confidences, out of order, so that the ranking
/// is not the identity: max mean probabilities 0.6, 0.35, 0.95, 1/3 and 0.5.
fn pool() -> Tensor {
    #[rustfmt::skip]
    let data = vec![
        // sample 0: pbar = (0.6, 0.3, 0.1)
        0.7, 0.5,   0.2, 0.4,   0.1, 0.1,
        // sample 1: pbar = (0.35, 0.325, 0.325)
        0.4, 0.3,   0.3, 0.35,  0.3, 0.35,
        // sample 2: pbar = (0.025, 0.95, 0.025)
        0.0, 0.05,  1.0, 0.9,   0.0, 0.05,
        // sample 3: pbar = 1/3 each (not uniform per iteration)
        0.6, 0.0666_6667, 0.2, 0.4666_6667, 0.2, 0.4666_6666,
        // sample 4: pbar = (0.5, 0.5, 0.0)
        1.0, 0.0,   0.0, 1.0,   0.0, 0.0,
    ];
    Tensor { shape: vec![5, 3, 2], data }
}

async fn score(client: &mut HeuristicServiceClient<Channel>, name: &str, values: Tensor) -> ScoreResponse {
    let request =
        ScoreRequest { heuristic: heuristic(name), values: Some(values), seed: Some(7), ..Default::default() };
    client.score(request).await.unwrap_or_else(|status| panic!("Score {name}: {status}")).into_inner()
}

async fn listed(client: &mut HeuristicServiceClient<Channel>) -> Vec<HeuristicInfo> {
    client.list_heuristics(ListHeuristicsRequest {}).await.unwrap().into_inner().heuristics
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6, "{what}: {got:?} vs {want:?}");
    }
}

#[tokio::test]
async fn a_c_plugin_is_listed_and_scores_like_the_builtin_least_confidence() {
    let (mut server, library) = server_with_c_plugin().await;
    let client = &mut server.client;

    let heuristics = listed(client).await;
    let info = heuristics
        .iter()
        .find(|h| h.name == "c_least_confidence")
        .unwrap_or_else(|| panic!("c_least_confidence not listed: {heuristics:?}"));
    assert_eq!(info.version, "1.0.0");
    assert_eq!(info.direction, Direction::LowerIsMoreInformative as i32);
    assert_eq!(info.kind, HeuristicKind::Score as i32);
    assert_eq!(info.plugin, "example-c");
    // The file name only: server paths never reach a client.
    assert_eq!(info.source_file, C_PLUGIN_FILE);
    assert_eq!(info.sha256, sha256_hex(&std::fs::read(&library).unwrap()));
    assert!(!info.description.is_empty());
    // The built-ins load beside it.
    assert!(heuristics.iter().any(|h| h.name == "least_confidence" && h.plugin == "alps-builtin"));

    let from_c = score(client, "c_least_confidence", pool()).await;
    let builtin = score(client, "least_confidence", pool()).await;
    assert_close(&from_c.scores, &builtin.scores, "C plugin vs built-in least_confidence");
    assert_close(&from_c.scores, &[0.6, 0.35, 0.95, 1.0 / 3.0, 0.5], "max mean probability");
    assert_eq!(from_c.direction, Direction::LowerIsMoreInformative as i32);
    assert_eq!(from_c.heuristic, Some(HeuristicRef { name: "c_least_confidence".into(), version: "1.0.0".into() }));
    // Lowest (least confident) first.
    assert_eq!(from_c.order, [3, 1, 4, 0, 2]);
    assert_eq!(from_c.order, builtin.order);

    // A one-output (sigmoid) model reaches the plugin as two classes {p, 1 - p}.
    let binary = Tensor { shape: vec![3, 1, 2], data: vec![0.9, 0.7, 0.5, 0.5, 0.1, 0.2] };
    let from_c = score(client, "c_least_confidence", binary.clone()).await;
    assert_close(&from_c.scores, &score(client, "least_confidence", binary).await.scores, "binary model");
    assert_close(&from_c.scores, &[0.8, 0.5, 0.85], "binary max mean probability");
    assert_eq!(from_c.order, [1, 0, 2]);

    // Select with a score heuristic takes the lowest scores.
    let request = SelectRequest {
        heuristic: heuristic("c_least_confidence"),
        values: Some(pool()),
        logits: false,
        query_size: 2,
        seed: Some(7),
        ..Default::default()
    };
    let selected = client.select(request).await.unwrap().into_inner();
    assert_eq!(selected.indices, [3, 1]);
    assert_close(&selected.scores, &[1.0 / 3.0, 0.35], "selected scores");
}

// Multi-threaded: the client must answer the server's graceful shutdown while this thread
// blocks in `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_plugin_with_the_wrong_abi_major_is_rejected_and_the_rest_keeps_serving() {
    let (mut server, _library) = server_with_c_plugin().await;
    let loaded = listed(&mut server.client).await.len();
    let (major, minor) = header_abi();
    let wrong = compile_c_plugin(server.build.path(), "c_wrong_abi.so", &["-DALPS_EXAMPLE_WRONG_ABI"]);
    // Replace the working C plugin with the wrong-ABI build, and add a second copy under a new name.
    install_plugin(&wrong, server.dirs.plugins.path(), C_PLUGIN_FILE);
    install_plugin(&wrong, server.dirs.plugins.path(), "c_wrong_abi.so");

    let report = server.client.reload_heuristics(ReloadHeuristicsRequest {}).await.unwrap().into_inner();
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    for file in [C_PLUGIN_FILE, "c_wrong_abi.so"] {
        let error = report
            .errors
            .iter()
            .find(|e| e.file == file)
            .unwrap_or_else(|| panic!("no error for {file}: {:?}", report.errors));
        let message = &error.message;
        assert!(message.contains(&format!("<plugin-dir>/{file}")), "names the file: {message}");
        let dir = server.dirs.plugins.path().display().to_string();
        assert!(!message.contains(&dir), "the plugin directory leaked: {message}");
        assert!(message.contains(&format!("plugin ABI {}.{minor}", major + 1)), "{message}");
        assert!(message.contains(&format!("host ABI {major}.{minor}")), "{message}");
    }

    // The new file added nothing; the replaced file keeps its previous (working) version.
    let names: Vec<&str> = report.heuristics.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names.len(), loaded, "{names:?}");
    assert!(names.contains(&"least_confidence") && names.contains(&"c_least_confidence"), "{names:?}");
    let builtin = score(&mut server.client, "least_confidence", pool()).await;
    let from_c = score(&mut server.client, "c_least_confidence", pool()).await;
    assert_close(&from_c.scores, &builtin.scores, "previous C version after a rejected replacement");
    score(&mut server.client, "bald", pool()).await;
    assert!(server.process.terminate().success());
}

/// Embeddings `[5, 2]` for `pool()`: samples 0 and 1 sit on the labelled points, the others
/// 1, 2 and 3 units away from the nearest.
fn pool_embeddings() -> Tensor {
    Tensor { shape: vec![5, 2], data: vec![0.0, 0.0, 4.0, 0.0, 0.0, 1.0, 4.0, 2.0, -3.0, 0.0] }
}

fn score_with_embeddings(name: &str, labelled: Option<(Tensor, Vec<u32>)>) -> ScoreRequest {
    let (labelled_embeddings, labelled_classes) = labelled.map_or((None, Vec::new()), |(t, c)| (Some(t), c));
    ScoreRequest {
        heuristic: heuristic(name),
        values: Some(pool()),
        embeddings: Some(pool_embeddings()),
        labelled_embeddings,
        labelled_classes,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_c_plugin_gets_the_embeddings_and_labelled_set_it_asks_for() {
    let (mut server, _library) = server_with_c_plugin().await;
    let client = &mut server.client;
    let heuristics = listed(client).await;
    let info = heuristics.iter().find(|h| h.name == "c_distance_to_labelled").expect("listed");
    assert!(info.needs_embeddings && info.needs_labelled_set, "{info:?}");
    let plain = heuristics.iter().find(|h| h.name == "c_least_confidence").unwrap();
    assert!(!plain.needs_embeddings && !plain.needs_labelled_set, "{plain:?}");

    // Labelled points at (0, 0) and (4, 0): squared distances to the nearest.
    let labelled = Tensor { shape: vec![2, 2], data: vec![0.0, 0.0, 4.0, 0.0] };
    let request = score_with_embeddings("c_distance_to_labelled", Some((labelled.clone(), vec![0, 2])));
    let scored = client.score(request).await.unwrap().into_inner();
    assert_close(&scored.scores, &[0.0, 0.0, 1.0, 4.0, 9.0], "squared distance to the nearest labelled");
    assert_eq!(scored.order, [4, 3, 2, 0, 1]);
    // A cold start (no labelled set) reaches the plugin as l = 0.
    let cold = client.score(score_with_embeddings("c_distance_to_labelled", None)).await.unwrap().into_inner();
    assert_close(&cold.scores, &[0.0; 5], "nothing labelled");

    // What the call lacks or gets wrong is INVALID_ARGUMENT naming it; the server keeps serving.
    let without = ScoreRequest { embeddings: None, ..score_with_embeddings("c_distance_to_labelled", None) };
    let short = Tensor { shape: vec![4, 2], data: vec![0.0; 8] };
    let cases = [
        (without, "needs the pool's embeddings"),
        (
            ScoreRequest { embeddings: Some(short), ..score_with_embeddings("c_distance_to_labelled", None) },
            "4 embeddings for 5 samples",
        ),
        (
            score_with_embeddings("c_distance_to_labelled", Some((labelled.clone(), vec![0, 3]))),
            "labelled class 3 is not below C = 3",
        ),
        (
            score_with_embeddings("c_distance_to_labelled", Some((labelled.clone(), vec![0]))),
            "2 labelled embeddings but 1 labelled_classes entries",
        ),
        (
            score_with_embeddings(
                "c_distance_to_labelled",
                Some((Tensor { shape: vec![1, 3], data: vec![0.0; 3] }, vec![0])),
            ),
            "dimension 3, the pool's 2",
        ),
        (
            ScoreRequest {
                embeddings: Some(Tensor { shape: vec![1, 70_000], data: vec![0.0; 70_000] }),
                ..score_with_embeddings("c_distance_to_labelled", None)
            },
            "dimension D = 70000: must be between 1 and 65536",
        ),
        (
            ScoreRequest {
                embeddings: Some(Tensor { shape: vec![5, 2], data: [vec![f32::NAN], vec![0.0; 9]].concat() }),
                ..score_with_embeddings("c_distance_to_labelled", None)
            },
            "not finite",
        ),
    ];
    for (request, needle) in cases {
        let error = client.score(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{needle}: {error:?}");
        assert!(error.message().contains(needle), "{needle:?} not in {:?}", error.message());
    }
    score(client, "c_least_confidence", pool()).await;
}

#[tokio::test]
async fn a_plugin_built_against_abi_1_0_still_loads() {
    let (mut server, _library) = server_with_c_plugin().await;
    let old = compile_c_plugin(server.build.path(), "c_abi_1_0.so", &["-DALPS_EXAMPLE_ABI_1_0"]);
    install_plugin(&old, server.dirs.plugins.path(), C_PLUGIN_FILE);
    let report = server.client.reload_heuristics(ReloadHeuristicsRequest {}).await.unwrap().into_inner();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let names: Vec<&str> = report.heuristics.iter().map(|h| h.name.as_str()).collect();
    assert!(names.contains(&"c_least_confidence"), "{names:?}");
    assert!(!names.contains(&"c_distance_to_labelled"), "the 1.0 build has one heuristic: {names:?}");
    let info = report.heuristics.iter().find(|h| h.name == "c_least_confidence").unwrap();
    assert!(!info.needs_embeddings, "1.0 heuristics get probabilities only");
    let from_c = score(&mut server.client, "c_least_confidence", pool()).await;
    assert_close(&from_c.scores, &[0.6, 0.35, 0.95, 1.0 / 3.0, 0.5], "1.0 build scores as before");

    // An input flag this ABI does not define rejects the whole file, by name.
    let unknown = compile_c_plugin(server.build.path(), "c_unknown_input.so", &["-DALPS_EXAMPLE_UNKNOWN_INPUT"]);
    install_plugin(&unknown, server.dirs.plugins.path(), "c_unknown_input.so");
    let report = server.client.reload_heuristics(ReloadHeuristicsRequest {}).await.unwrap().into_inner();
    let error = report.errors.iter().find(|e| e.file == "c_unknown_input.so").expect("rejected");
    assert!(error.message.contains("unknown input flags 0x8"), "{}", error.message);
}

/// A `[1, 4, 4]` tensor sample of constant `value`.
fn flat_sample(id: &str, value: f32) -> Sample {
    Sample { id: id.into(), input: Some(sample::Input::Tensor(Tensor { shape: vec![1, 4, 4], data: vec![value; 16] })) }
}

#[tokio::test]
async fn rank_hands_a_per_sample_heuristic_the_labelled_set_and_predict_refuses_it() {
    let (server, _library) = server_with_c_plugin().await;
    let mut projects = ProjectServiceClient::new(server.channel.clone());
    let mut inference = InferenceServiceClient::new(server.channel.clone());
    let mut examples = ExampleServiceClient::new(server.channel.clone());
    let project = Project {
        id: "p".into(),
        classes: vec!["a".into(), "b".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 4, height: 4, channels: 1, ..Default::default() }),
        mc_iterations: 4,
        ..Default::default()
    };
    projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
    let labelled = [0.0, 1.0].iter().enumerate().map(|(i, &v)| LabelledExample {
        external_id: format!("l{i}"),
        sample: Some(flat_sample("", v)),
        class_name: ["a", "b"][i].into(),
        ..Default::default()
    });
    let request = AddExamplesRequest { project_id: "p".into(), examples: labelled.collect() };
    examples.add_examples(tokio_stream::iter([request])).await.unwrap();

    // Copies of the labelled samples are at distance 0 from the labelled set: ranked last.
    let pool = vec![flat_sample("copy-0", 0.0), flat_sample("new", 5.0), flat_sample("copy-1", 1.0)];
    let rank = RankRequest {
        project_id: "p".into(),
        query_size: 3,
        heuristic: heuristic("c_distance_to_labelled"),
        samples: pool.clone(),
        seed: Some(1),
        ..Default::default()
    };
    let ranked = inference.rank(tokio_stream::iter([rank])).await.unwrap().into_inner();
    let order: Vec<(&str, f32)> = ranked.selected.iter().map(|s| (s.id.as_str(), s.score)).collect();
    assert_eq!(order[0].0, "new", "{order:?}");
    assert!(order[0].1 > 0.0 && order[1].1 == 0.0 && order[2].1 == 0.0, "{order:?}");

    // Predict has no labelled set: refused before the model runs, naming where it works.
    let predict = PredictRequest {
        project_id: "p".into(),
        samples: pool,
        heuristic: heuristic("c_distance_to_labelled"),
        ..Default::default()
    };
    let error = inference.predict(predict).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("use it with Rank"), "{}", error.message());
}
