//! Projects and MC-Dropout inference on the real server (CPU): create/get/list/update/delete,
//! Predict with per-sample errors, reproducible seeds, Rank over a streamed pool, admission
//! control and persistence across a restart.

use std::io::Cursor;

use alps_proto::v1::{
    AcquisitionSchedule, Architecture, CreateProjectRequest, DeleteProjectRequest, GetProjectRequest, HeuristicRef,
    ListProjectsRequest, ModelSpec, PredictRequest, Preprocessing, Project, RankRequest, Sample, SelectRequest, Tensor,
    UpdateProjectRequest, heuristic_service_client::HeuristicServiceClient,
    inference_service_client::InferenceServiceClient, predict_result::Outcome,
    project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, install_plugin, start_server};
use tonic::{Code, transport::Channel};

struct Server {
    _dirs: ServerDirs,
    process: Process,
    projects: ProjectServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
    metrics: String,
}

async fn connect(dirs: ServerDirs, extra: &[&str]) -> Server {
    let (mut process, grpc) = start_server(&dirs, extra);
    let metrics = process.listening_addr("metrics");
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server {
        _dirs: dirs,
        process,
        projects: ProjectServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
        metrics,
    }
}

async fn server(extra: &[&str]) -> Server {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    connect(dirs, extra).await
}

/// An MLP over 1×4×4 inputs with three classes, without an acquisition schedule (Rank uses
/// the default heuristic; tests/acquisition.rs covers schedules).
fn mlp_project(id: &str) -> Project {
    Project {
        acquisition_schedule: Some(AcquisitionSchedule::default()),
        id: id.into(),
        classes: vec!["cat".into(), "dog".into(), "bird".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 4, height: 4, channels: 1, ..Default::default() }),
        mc_iterations: 10,
        ..Default::default()
    }
}

fn tensor_sample(id: &str, value: f32) -> Sample {
    Sample { id: id.into(), input: Some(Input::Tensor(Tensor { shape: vec![1, 4, 4], data: vec![value; 16] })) }
}

fn image_sample(id: &str, width: u32, height: u32) -> Sample {
    let image = image::GrayImage::from_fn(width, height, |x, y| image::Luma([((x * 31 + y * 17) % 256) as u8]));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    Sample { id: id.into(), input: Some(Input::Image(bytes.into_inner())) }
}

fn predict(project: &str, samples: Vec<Sample>) -> PredictRequest {
    PredictRequest { project_id: project.into(), samples, ..Default::default() }
}

async fn project_ids(server: &mut Server) -> Vec<String> {
    let listed = server.projects.list_projects(ListProjectsRequest {}).await.unwrap().into_inner();
    listed.projects.into_iter().map(|p| p.id).collect()
}

async fn create(server: &mut Server, project: Project) -> Project {
    let request = CreateProjectRequest { project: Some(project) };
    server.projects.create_project(request).await.unwrap().into_inner().project.unwrap()
}

#[tokio::test]
async fn projects_are_created_idempotently_with_defaults_listed_updated_and_deleted() {
    let mut server = server(&[]).await;
    let created = server
        .projects
        .create_project(CreateProjectRequest { project: Some(mlp_project("a")) })
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let project = created.project.unwrap();
    assert_eq!(project.active_model_version, "untrained");
    assert_eq!(project.default_heuristic.unwrap().name, "bald");
    assert_eq!(project.model.unwrap().head_dropout, Some(0.5));
    let again = server
        .projects
        .create_project(CreateProjectRequest { project: Some(mlp_project("a")) })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    create(&mut server, mlp_project("b")).await;
    assert_eq!(project_ids(&mut server).await, ["a", "b"]);

    let update = UpdateProjectRequest {
        project_id: "a".into(),
        mc_iterations: Some(7),
        default_heuristic: Some(HeuristicRef { name: "entropy".into(), version: String::new() }),
        ..Default::default()
    };
    let updated = server.projects.update_project(update).await.unwrap().into_inner().project.unwrap();
    assert_eq!(updated.mc_iterations, 7);
    assert_eq!(updated.default_heuristic.unwrap().name, "entropy");
    let unknown = UpdateProjectRequest {
        project_id: "a".into(),
        default_heuristic: Some(HeuristicRef { name: "oracle".into(), version: String::new() }),
        ..Default::default()
    };
    assert_eq!(server.projects.update_project(unknown).await.unwrap_err().code(), Code::NotFound);

    server.projects.delete_project(DeleteProjectRequest { project_id: "a".into() }).await.unwrap();
    let gone = server.projects.get_project(GetProjectRequest { project_id: "a".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let error = server.inference.predict(predict("a", vec![tensor_sample("x", 0.5)])).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_specs_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(&["--model-root", dir.path().to_str().unwrap()]).await;
    let mut no_classes = mlp_project("p");
    no_classes.classes.clear();
    let mut duplicate = mlp_project("p");
    duplicate.classes.push("cat".into());
    let mut unknown_architecture = mlp_project("p");
    unknown_architecture.model = Some(ModelSpec { architecture: 42, ..Default::default() });
    let mut zero_k = mlp_project("p");
    zero_k.mc_iterations = 1001;
    let mut bad_weights = mlp_project("p");
    let weights = dir.path().join("w.safetensors");
    std::fs::write(&weights, b"not safetensors").unwrap();
    bad_weights.model = Some(ModelSpec {
        architecture: Architecture::Mlp as i32,
        weights_path: weights.display().to_string(),
        ..Default::default()
    });
    for (project, field) in [
        (no_classes, "project.classes"),
        (duplicate, "project.classes"),
        (unknown_architecture, "project.model.architecture"),
        (zero_k, "project.mc_iterations"),
        (bad_weights, "project.model"),
    ] {
        let error = server.projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert!(error.message().contains(field), "{field} not in {:?}", error.message());
    }
    assert!(server.projects.list_projects(ListProjectsRequest {}).await.unwrap().into_inner().projects.is_empty());
}

#[tokio::test]
async fn predict_returns_one_result_per_sample_in_order_with_per_sample_errors() {
    let mut server = server(&["--max-image-pixels", "400"]).await;
    create(&mut server, mlp_project("p")).await;
    let samples = vec![
        tensor_sample("t0", 0.1),
        image_sample("png", 8, 8),
        Sample { id: "corrupt".into(), input: Some(Input::Image(b"\x89PNG garbage".to_vec())) },
        Sample { id: "empty".into(), input: Some(Input::Image(Vec::new())) },
        image_sample("huge", 30, 30),
        Sample { id: "shape".into(), input: Some(Input::Tensor(Tensor { shape: vec![3, 4, 4], data: vec![0.0; 48] })) },
        tensor_sample("t1", 0.9),
    ];
    let response = server.inference.predict(predict("p", samples)).await.unwrap().into_inner();
    assert_eq!(response.model_version, "untrained");
    assert_eq!(response.mc_iterations, 10);
    let ids: Vec<&str> = response.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["t0", "png", "corrupt", "empty", "huge", "shape", "t1"]);
    for result in &response.results {
        match (&result.outcome, result.id.as_str()) {
            (Some(Outcome::Prediction(p)), "t0" | "png" | "t1") => {
                assert_eq!(p.mean_probabilities.len(), 3);
                assert!((p.mean_probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                assert_eq!(p.class_name, ["cat", "dog", "bird"][p.class_index as usize]);
                assert!(p.score.is_finite() && p.score >= 0.0, "BALD is non-negative: {}", p.score);
            }
            (Some(Outcome::Error(e)), "corrupt") => assert!(e.message.contains("cannot decode"), "{}", e.message),
            (Some(Outcome::Error(e)), "empty") => assert!(e.message.contains("empty"), "{}", e.message),
            (Some(Outcome::Error(e)), "huge") => assert!(e.message.contains("--max-image-pixels"), "{}", e.message),
            (Some(Outcome::Error(e)), "shape") => assert!(e.message.contains("[1, 4, 4]"), "{}", e.message),
            (outcome, id) => panic!("{id}: unexpected {outcome:?}"),
        }
    }
}

#[tokio::test]
async fn a_seed_makes_predictions_reproducible_and_mc_samples_are_returned_on_request() {
    let mut server = server(&[]).await;
    create(&mut server, mlp_project("p")).await;
    let request = |seed| PredictRequest {
        seed: Some(seed),
        return_mc_samples: true,
        mc_iterations: 6,
        ..predict("p", vec![tensor_sample("a", 0.3), tensor_sample("b", 0.7)])
    };
    let first = server.inference.predict(request(5)).await.unwrap().into_inner();
    let again = server.inference.predict(request(5)).await.unwrap().into_inner();
    let other = server.inference.predict(request(6)).await.unwrap().into_inner();
    assert_eq!(first.results, again.results, "same seed, same result");
    assert_ne!(first.results, other.results, "another seed, other dropout masks");
    let Some(Outcome::Prediction(p)) = &first.results[0].outcome else { panic!("prediction") };
    let samples = p.mc_samples.as_ref().unwrap();
    assert_eq!(samples.shape, [3, 6]);
    // The mean over K of [C, K] is the reported mean.
    for class in 0..3 {
        let mean: f32 = samples.data[class * 6..(class + 1) * 6].iter().sum::<f32>() / 6.0;
        assert!((mean - p.mean_probabilities[class]).abs() < 1e-6);
    }
}

#[tokio::test]
async fn the_backbone_runs_once_per_sample_and_the_head_k_times() {
    let mut server = server(&[]).await;
    create(&mut server, mlp_project("p")).await;
    let request = PredictRequest {
        mc_iterations: 9,
        ..predict("p", (0..5).map(|i| tensor_sample(&i.to_string(), 0.1 * i as f32)).collect())
    };
    server.inference.predict(request).await.unwrap();
    let text = scrape(&server).await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert_eq!(value("alps_backbone_samples_total"), 5.0);
    assert_eq!(value("alps_head_passes_total"), 45.0);
}

#[tokio::test]
async fn bad_predict_requests_get_precise_codes() {
    let mut server = server(&[]).await;
    create(&mut server, mlp_project("p")).await;
    let cases = [
        (predict("nope", vec![tensor_sample("a", 0.0)]), Code::NotFound, "nope"),
        (predict("p", vec![]), Code::InvalidArgument, "samples"),
        (
            PredictRequest { mc_iterations: 5000, ..predict("p", vec![tensor_sample("a", 0.0)]) },
            Code::InvalidArgument,
            "mc_iterations",
        ),
        (
            PredictRequest {
                heuristic: Some(HeuristicRef { name: "magic".into(), version: String::new() }),
                ..predict("p", vec![tensor_sample("a", 0.0)])
            },
            Code::NotFound,
            "bald",
        ),
        (
            PredictRequest {
                heuristic: Some(HeuristicRef { name: "batch_bald".into(), version: String::new() }),
                ..predict("p", vec![tensor_sample("a", 0.0)])
            },
            Code::InvalidArgument,
            "Rank",
        ),
    ];
    for (request, code, needle) in cases {
        let error = server.inference.predict(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{error:?}");
        assert!(error.message().contains(needle), "{needle:?} not in {:?}", error.message());
        assert!(!error.message().contains(&format!("{needle}: {needle}")), "repeated field: {:?}", error.message());
    }
}

#[tokio::test]
async fn rank_streams_a_pool_and_returns_the_most_informative() {
    let mut server = server(&[]).await;
    create(&mut server, mlp_project("p")).await;
    let chunk = |start: usize, first: bool| RankRequest {
        project_id: if first { "p".into() } else { String::new() },
        query_size: if first { 4 } else { 0 },
        seed: first.then_some(3),
        samples: (start..start + 10).map(|i| tensor_sample(&format!("item-{i}"), i as f32 / 30.0)).collect(),
        ..Default::default()
    };
    let mut pool = vec![chunk(0, true), chunk(10, false), chunk(20, false)];
    pool[1].samples.push(Sample { id: "broken".into(), input: Some(Input::Image(vec![1, 2, 3])) });
    let response = server.inference.rank(tokio_stream::iter(pool.clone())).await.unwrap().into_inner();
    assert_eq!(response.pool_size, 31);
    assert_eq!(response.selected.len(), 4);
    assert_eq!(response.failed.len(), 1);
    assert_eq!(response.failed[0].id, "broken");
    assert_eq!(response.heuristic.unwrap().name, "bald");
    let scores: Vec<f32> = response.selected.iter().map(|s| s.score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "most informative first: {scores:?}");

    // Ranking the 30 good items in one message with a seed uses the same dropout masks as one
    // seeded Predict of them, so the selection is Predict's top 4 by BALD score.
    let all: Vec<Sample> = pool.iter().flat_map(|c| c.samples.clone()).filter(|s| s.id != "broken").collect();
    let whole = RankRequest {
        project_id: "p".into(),
        query_size: 4,
        seed: Some(9),
        samples: all.clone(),
        ..Default::default()
    };
    let ranked = server.inference.rank(tokio_stream::iter([whole.clone()])).await.unwrap().into_inner();
    let predicted =
        server.inference.predict(PredictRequest { seed: Some(9), ..predict("p", all) }).await.unwrap().into_inner();
    let mut by_score: Vec<(String, f32)> = predicted
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(Outcome::Prediction(p)) => (r.id, p.score),
            other => panic!("{other:?}"),
        })
        .collect();
    by_score.sort_by(|a, b| b.1.total_cmp(&a.1));
    let expected: Vec<&str> = by_score.iter().take(4).map(|(id, _)| id.as_str()).collect();
    let got: Vec<&str> = ranked.selected.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(got, expected);

    // A batch heuristic ranks the same pool jointly: four distinct items.
    let batch =
        RankRequest { heuristic: Some(HeuristicRef { name: "batch_bald".into(), version: String::new() }), ..whole };
    let selected = server.inference.rank(tokio_stream::iter([batch])).await.unwrap().into_inner().selected;
    let mut ids: Vec<&str> = selected.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);

    // Ids are unique within the pool, also across chunks.
    let mut twice = vec![chunk(0, true), chunk(10, false)];
    twice[1].samples.push(tensor_sample("item-3", 0.5));
    let error = server.inference.rank(tokio_stream::iter(twice)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("\"item-3\" appears twice in the pool"), "{}", error.message());

    let missing_id = RankRequest {
        project_id: "p".into(),
        query_size: 1,
        samples: vec![tensor_sample("", 0.0)],
        ..Default::default()
    };
    let error = server.inference.rank(tokio_stream::iter([missing_id])).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("id"), "{}", error.message());
}

// Multi-threaded: requests must overlap, and the client must stay responsive while the test
// thread blocks in `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_rejects_beyond_the_bound_and_the_server_keeps_serving() {
    // Two samples in flight at most; each job waits up to 300 ms for company, so concurrent
    // requests overlap for certain.
    let mut server = server(&["--max-in-flight-samples", "2", "--max-batch-wait-ms", "300"]).await;
    create(&mut server, mlp_project("p")).await;
    let too_big = server
        .inference
        .predict(predict("p", (0..3).map(|i| tensor_sample(&i.to_string(), 0.0)).collect()))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(too_big.message().contains("--max-in-flight-samples"), "{}", too_big.message());

    let requests: Vec<_> = (0..8)
        .map(|i| {
            let mut client = server.inference.clone();
            tokio::spawn(async move {
                client.predict(predict("p", vec![tensor_sample("a", i as f32 / 8.0), tensor_sample("b", 0.5)])).await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for request in requests {
        codes.push(match request.await.unwrap() {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        });
    }
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)), "{codes:?}");
    // Still serving afterwards.
    server.inference.predict(predict("p", vec![tensor_sample("a", 0.0)])).await.unwrap();
    assert!(server.process.terminate().success());
}

// Multi-threaded: the client must stay responsive while the test thread blocks in `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_survive_a_restart_and_predict_after_it() {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut first = connect(dirs, &[]).await;
    create(&mut first, mlp_project("kept")).await;
    assert!(first.process.terminate().success());
    let dirs = first._dirs;
    let mut second = connect(dirs, &[]).await;
    assert_eq!(project_ids(&mut second).await, ["kept"]);
    let response = second.inference.predict(predict("kept", vec![tensor_sample("a", 0.2)])).await.unwrap().into_inner();
    assert!(matches!(response.results[0].outcome, Some(Outcome::Prediction(_))));
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or_else(|| panic!("{name} in {text}"))
}

async fn scrape(server: &Server) -> String {
    alps_system_tests::http_client()
        .get(format!("http://{}/metrics", server.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn predict_stream_answers_each_message_in_order() {
    let mut server = server(&[]).await;
    create(&mut server, mlp_project("p")).await;
    let requests: Vec<PredictRequest> = (0..5)
        .map(|i| PredictRequest { mc_iterations: i + 1, ..predict("p", vec![tensor_sample(&format!("s{i}"), 0.1)]) })
        .collect();
    let mut responses = server.inference.predict_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    for i in 0..5u32 {
        let response = responses.message().await.unwrap().expect("one response per request");
        assert_eq!(response.mc_iterations, i + 1);
        assert_eq!(response.results[0].id, format!("s{i}"));
    }
    assert!(responses.message().await.unwrap().is_none());
}

#[tokio::test]
async fn a_request_whose_client_gave_up_is_skipped_and_counted() {
    // Jobs wait up to 1 s for company, far longer than the client's 100 ms deadline.
    let mut server = server(&["--max-batch-wait-ms", "1000"]).await;
    create(&mut server, mlp_project("p")).await;
    let mut request = tonic::Request::new(predict("p", vec![tensor_sample("a", 0.0)]));
    request.set_timeout(std::time::Duration::from_millis(100));
    let error = server.inference.predict(request).await.unwrap_err();
    assert!(matches!(error.code(), Code::DeadlineExceeded | Code::Cancelled), "{error:?}");
    alps_system_tests::eventually("the cancelled job to be counted", || {
        let metrics = server.metrics.clone();
        async move {
            let text = alps_system_tests::http_client()
                .get(format!("http://{metrics}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (metric(&text, "alps_cancelled_jobs_total") >= 1.0).then_some(())
        }
    })
    .await;
    assert_eq!(metric(&scrape(&server).await, "alps_backbone_samples_total"), 0.0, "the model never ran");
}

#[tokio::test]
async fn the_model_cache_evicts_beyond_its_budget_and_reloads_transparently() {
    // A budget of 0 MiB keeps only the most recently used model.
    let mut server = server(&["--model-cache-mib", "0"]).await;
    create(&mut server, mlp_project("a")).await;
    create(&mut server, mlp_project("b")).await;
    for project in ["a", "b", "a"] {
        let response = server.inference.predict(predict(project, vec![tensor_sample("x", 0.5)])).await.unwrap();
        assert!(matches!(response.into_inner().results[0].outcome, Some(Outcome::Prediction(_))));
        // Both projects have one shape: every load logs the same bytes, and the gauge holds one.
        let one_model = server.process.wait_for_log("model loaded")["bytes"].as_f64().unwrap();
        assert!(one_model > 0.0);
        // The worker trims its cache and sets the gauges after it answers.
        let gauges = alps_system_tests::eventually("the cache's gauges after the eviction", || async {
            let metrics = scrape(&server).await;
            let gauges = (metric(&metrics, "alps_loaded_models"), metric(&metrics, "alps_loaded_model_bytes"));
            (gauges == (1.0, one_model)).then_some(gauges)
        });
        assert_eq!(gauges.await, (1.0, one_model));
    }
}

/// `image`'s JPEG encoder output of a `width`×`height` grey gradient with noise.
fn jpeg_bytes(width: u32, height: u32) -> Vec<u8> {
    let image = image::GrayImage::from_fn(width, height, |x, y| image::Luma([((x * 29 + y * 13) ^ (x * y)) as u8]));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    bytes.into_inner()
}

#[tokio::test]
async fn a_truncated_jpeg_gets_its_own_error_and_the_whole_one_a_prediction() {
    let mut server = server(&[]).await;
    create(&mut server, mlp_project("p")).await;
    let jpeg = jpeg_bytes(32, 32);
    let sample = |id: &str, bytes: &[u8]| Sample { id: id.into(), input: Some(Input::Image(bytes.to_vec())) };
    // Cuts in the entropy-coded data (which the lenient decoder padded with grey) and just
    // before the end-of-image marker.
    let cuts = [jpeg.len() / 2, jpeg.len() - 40, jpeg.len() - 2, jpeg.len() - 1];
    let mut samples = vec![sample("whole", &jpeg)];
    samples.extend(cuts.iter().map(|&cut| sample(&format!("cut-{cut}"), &jpeg[..cut])));
    let response = server.inference.predict(predict("p", samples)).await.unwrap().into_inner();
    assert!(matches!(response.results[0].outcome, Some(Outcome::Prediction(_))), "{:?}", response.results[0]);
    for result in &response.results[1..] {
        match &result.outcome {
            Some(Outcome::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.message.contains("truncated or corrupt JPEG"), "{}: {}", result.id, e.message);
            }
            other => panic!("{}: a truncated JPEG was predicted: {other:?}", result.id),
        }
    }

    // In Rank, a truncated image is a failed sample, never selected.
    let pool = RankRequest {
        project_id: "p".into(),
        query_size: 5,
        samples: vec![sample("whole", &jpeg), sample("truncated", &jpeg[..jpeg.len() - 40])],
        ..Default::default()
    };
    let ranked = server.inference.rank(tokio_stream::iter([pool])).await.unwrap().into_inner();
    let selected: Vec<&str> = ranked.selected.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(selected, ["whole"]);
    assert_eq!(ranked.failed.len(), 1);
    assert_eq!(ranked.failed[0].id, "truncated");
}

/// One rule for `query_size` in Rank and Select: 0 is INVALID_ARGUMENT, more than the pool
/// selects the whole pool.
#[tokio::test]
async fn query_size_over_the_pool_selects_all_of_it_in_rank_and_select() {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (_process, grpc) = start_server(&dirs, &[]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut projects = ProjectServiceClient::new(channel.clone());
    let mut inference = InferenceServiceClient::new(channel.clone());
    let mut heuristics = HeuristicServiceClient::new(channel);
    projects.create_project(CreateProjectRequest { project: Some(mlp_project("p")) }).await.unwrap();

    let pool: Vec<Sample> = (0..12).map(|i| tensor_sample(&format!("item-{i}"), i as f32 / 12.0)).collect();
    for name in ["bald", "batch_bald"] {
        let request = |query_size| RankRequest {
            project_id: "p".into(),
            query_size,
            heuristic: Some(HeuristicRef { name: name.into(), version: String::new() }),
            seed: Some(1),
            samples: pool.clone(),
            ..Default::default()
        };
        let ranked = inference.rank(tokio_stream::iter([request(20)])).await.unwrap().into_inner();
        let mut ids: Vec<String> = ranked.selected.into_iter().map(|s| s.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 12, "{name}: the whole pool, each once");
        let error = inference.rank(tokio_stream::iter([request(0)])).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{name}");
        assert!(error.message().contains("query_size"), "{}", error.message());
    }

    // [N = 3, C = 2, K = 2] probabilities.
    let values =
        Tensor { shape: vec![3, 2, 2], data: vec![0.9, 0.1, 0.1, 0.9, 0.5, 0.5, 0.5, 0.5, 0.7, 0.6, 0.3, 0.4] };
    for name in ["bald", "batch_bald", "power_bald"] {
        let request = |query_size| SelectRequest {
            heuristic: Some(HeuristicRef { name: name.into(), version: String::new() }),
            values: Some(values.clone()),
            logits: false,
            query_size,
            seed: Some(2),
            ..Default::default()
        };
        let selected = heuristics.select(request(20)).await.unwrap().into_inner();
        let mut indices = selected.indices.clone();
        indices.sort();
        assert_eq!(indices, [0, 1, 2], "{name}: all three samples, each once");
        assert_eq!(selected.scores.len(), 3, "{name}");
        let error = heuristics.select(request(0)).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{name}");
        assert!(error.message().contains("query_size"), "{}", error.message());
    }
}
