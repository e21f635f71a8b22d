//! Acquisition beyond per-sample uncertainty on the real server: the project's acquisition
//! schedule (a cold-start heuristic until enough labels), Rank handing diversity heuristics the
//! pool's embeddings and the labelled set, and the memory bound counting embeddings.

use alps_proto::v1::{
    AcquisitionSchedule, AddExamplesRequest, Architecture, CreateProjectRequest, GetProjectRequest, HeuristicRef,
    LabelledExample, ModelSpec, Preprocessing, Project, RankRequest, RankResponse, Sample, Tensor,
    UpdateProjectRequest, example_service_client::ExampleServiceClient,
    inference_service_client::InferenceServiceClient, project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, install_plugin, start_server};
use tonic::{Code, transport::Channel};

struct Server {
    _dirs: ServerDirs,
    _process: Process,
    projects: ProjectServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
}

async fn server(extra: &[&str]) -> Server {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (process, grpc) = start_server(&dirs, extra);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server {
        _dirs: dirs,
        _process: process,
        projects: ProjectServiceClient::new(channel.clone()),
        examples: ExampleServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
    }
}

/// An MLP over 1×4×4 inputs with three classes (embeddings D = 128).
fn project(id: &str, schedule: Option<AcquisitionSchedule>) -> Project {
    Project {
        id: id.into(),
        classes: vec!["cat".into(), "dog".into(), "bird".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 4, height: 4, channels: 1, ..Default::default() }),
        mc_iterations: 10,
        acquisition_schedule: schedule,
        ..Default::default()
    }
}

fn heuristic(name: &str) -> Option<HeuristicRef> {
    Some(HeuristicRef { name: name.into(), version: String::new() })
}

/// A `[1, 4, 4]` tensor whose pixels ramp from `value` with slope `slope`.
fn sample(id: &str, value: f32, slope: f32) -> Sample {
    let data = (0..16).map(|i| value + slope * i as f32 / 16.0).collect();
    Sample { id: id.into(), input: Some(Input::Tensor(Tensor { shape: vec![1, 4, 4], data })) }
}

fn pool(n: usize) -> Vec<Sample> {
    (0..n).map(|i| sample(&format!("item-{i}"), (i % 7) as f32 / 3.0, (i % 5) as f32 - 2.0)).collect()
}

async fn rank(server: &mut Server, id: &str, name: &str, samples: Vec<Sample>) -> Result<RankResponse, tonic::Status> {
    let request = RankRequest {
        project_id: id.into(),
        query_size: 3,
        seed: Some(5),
        heuristic: (!name.is_empty()).then(|| heuristic(name)).flatten(),
        samples,
        ..Default::default()
    };
    server.inference.rank(tokio_stream::iter([request])).await.map(tonic::Response::into_inner)
}

async fn label(server: &mut Server, id: &str, examples: Vec<(Sample, &str)>) {
    let examples = examples
        .into_iter()
        .map(|(sample, class)| LabelledExample {
            external_id: sample.id.clone(),
            sample: Some(sample),
            class_name: class.into(),
            ..Default::default()
        })
        .collect();
    let request = AddExamplesRequest { project_id: id.into(), examples };
    server.examples.add_examples(tokio_stream::iter([request])).await.unwrap();
}

fn ids(response: &RankResponse) -> Vec<String> {
    let mut ids: Vec<String> = response.selected.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn rank_follows_the_schedule_from_the_cold_start_to_the_default_heuristic() {
    let mut server = server(&[]).await;
    let created = server.projects.create_project(CreateProjectRequest { project: Some(project("p", None)) }).await;
    let schedule = created.unwrap().into_inner().project.unwrap().acquisition_schedule.unwrap();
    assert_eq!(schedule.cold_start, heuristic("typiclust"), "the server's default schedule");
    assert_eq!(schedule.min_labels, 0, "0 = max(2 × classes, 20)");

    // No labels: the cold-start heuristic ranks, jointly (three distinct items), reproducibly.
    let first = rank(&mut server, "p", "", pool(30)).await.unwrap();
    assert_eq!(first.heuristic.as_ref().unwrap().name, "typiclust");
    assert_eq!(ids(&first).len(), 3);
    assert_eq!(rank(&mut server, "p", "", pool(30)).await.unwrap().selected, first.selected, "seeded");
    // A heuristic named in the request wins over the schedule.
    let named = rank(&mut server, "p", "entropy", pool(30)).await.unwrap();
    assert_eq!(named.heuristic.unwrap().name, "entropy");

    // 19 labels: still the cold start; the 20th switches to the project's default heuristic.
    let labelled: Vec<(Sample, &str)> =
        (0..20).map(|i| (sample(&format!("l-{i}"), i as f32 / 10.0, 1.0), ["cat", "dog", "bird"][i % 3])).collect();
    label(&mut server, "p", labelled[..19].to_vec()).await;
    assert_eq!(rank(&mut server, "p", "", pool(30)).await.unwrap().heuristic.unwrap().name, "typiclust");
    label(&mut server, "p", labelled[19..].to_vec()).await;
    assert_eq!(rank(&mut server, "p", "", pool(30)).await.unwrap().heuristic.unwrap().name, "bald");

    // The switch point is the project's to set; an empty cold start removes the schedule.
    let update = |schedule| UpdateProjectRequest {
        project_id: "p".into(),
        acquisition_schedule: Some(schedule),
        ..Default::default()
    };
    let later = AcquisitionSchedule { cold_start: heuristic("coreset"), min_labels: 25 };
    let updated = server.projects.update_project(update(later.clone())).await.unwrap().into_inner();
    assert_eq!(updated.project.unwrap().acquisition_schedule, Some(later));
    assert_eq!(rank(&mut server, "p", "", pool(30)).await.unwrap().heuristic.unwrap().name, "coreset");
    server.projects.update_project(update(AcquisitionSchedule::default())).await.unwrap();
    assert_eq!(rank(&mut server, "p", "", pool(30)).await.unwrap().heuristic.unwrap().name, "bald");
    let stored = server.projects.get_project(GetProjectRequest { project_id: "p".into() }).await.unwrap();
    assert_eq!(stored.into_inner().project.unwrap().acquisition_schedule, Some(AcquisitionSchedule::default()));

    // Bad schedules: an unknown heuristic is NOT_FOUND, a malformed name INVALID_ARGUMENT.
    let unknown = AcquisitionSchedule { cold_start: heuristic("oracle"), min_labels: 0 };
    let error = server.projects.update_project(update(unknown.clone())).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    let error =
        server.projects.create_project(CreateProjectRequest { project: Some(project("q", Some(unknown))) }).await;
    assert_eq!(error.unwrap_err().code(), Code::NotFound);
    let no_cold_start = AcquisitionSchedule { cold_start: None, min_labels: 5 };
    let error = server.projects.update_project(update(no_cold_start)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("acquisition_schedule.min_labels: 5 without a cold_start"), "{}", error.message());
    let malformed = AcquisitionSchedule { cold_start: heuristic("../typiclust"), min_labels: 0 };
    let error = server.projects.update_project(update(malformed)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("acquisition_schedule.cold_start"), "{}", error.message());
    // Replacing the project (CreateProject again) without naming a schedule keeps its own.
    server
        .projects
        .update_project(update(AcquisitionSchedule { cold_start: heuristic("coreset"), min_labels: 30 }))
        .await
        .unwrap();
    let replaced = server.projects.create_project(CreateProjectRequest { project: Some(project("p", None)) }).await;
    let kept = replaced.unwrap().into_inner().project.unwrap().acquisition_schedule.unwrap();
    assert_eq!((kept.cold_start, kept.min_labels), (heuristic("coreset"), 30));

    // A batch heuristic cannot be the default: Predict scores every sample with it.
    let batch_default = Project { default_heuristic: heuristic("typiclust"), ..project("b", None) };
    let error =
        server.projects.create_project(CreateProjectRequest { project: Some(batch_default) }).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("selects batches"), "{}", error.message());
    let request =
        UpdateProjectRequest { project_id: "p".into(), default_heuristic: heuristic("badge"), ..Default::default() };
    assert_eq!(server.projects.update_project(request).await.unwrap_err().code(), Code::InvalidArgument);

    // A project created without a schedule ranks with its default heuristic from the start.
    let none = Some(AcquisitionSchedule::default());
    server.projects.create_project(CreateProjectRequest { project: Some(project("r", none)) }).await.unwrap();
    assert_eq!(rank(&mut server, "r", "", pool(30)).await.unwrap().heuristic.unwrap().name, "bald");
}

#[tokio::test]
async fn coreset_in_rank_skips_what_the_labelled_set_already_covers() {
    let mut server = server(&[]).await;
    let none = Some(AcquisitionSchedule::default());
    server.projects.create_project(CreateProjectRequest { project: Some(project("p", none)) }).await.unwrap();
    let known = [0.0, 0.5, 1.0];
    let labelled = known.iter().enumerate().map(|(i, &v)| (sample(&format!("known-{i}"), v, 1.0), "cat")).collect();
    label(&mut server, "p", labelled).await;
    // The pool holds copies of the labelled samples and three new ones: the labelled set's
    // embeddings make the copies distance 0 from a center, so k-center takes the new ones.
    let mut pool: Vec<Sample> = known.iter().enumerate().map(|(i, &v)| sample(&format!("copy-{i}"), v, 1.0)).collect();
    pool.extend([2.0, 3.0, 4.0].iter().enumerate().map(|(i, &v)| sample(&format!("new-{i}"), v, -1.0)));
    let ranked = rank(&mut server, "p", "coreset", pool.clone()).await.unwrap();
    assert_eq!(ids(&ranked), ["new-0", "new-1", "new-2"]);
    assert!(ranked.selected.iter().all(|s| s.score > 0.0), "{:?}", ranked.selected);
    // BADGE needs no labelled set and ranks the same pool too.
    assert_eq!(rank(&mut server, "p", "badge", pool).await.unwrap().selected.len(), 3);
}

#[tokio::test]
async fn the_pool_bound_counts_embeddings_for_the_heuristics_that_need_them() {
    // 12 items: probabilities 12·3·10 = 360 values fit 1,000; embeddings add 12·128 = 1,536.
    let mut server = server(&["--max-rank-pool-values", "1000"]).await;
    let none = Some(AcquisitionSchedule::default());
    server.projects.create_project(CreateProjectRequest { project: Some(project("p", none)) }).await.unwrap();
    assert_eq!(rank(&mut server, "p", "batch_bald", pool(12)).await.unwrap().selected.len(), 3);
    let error = rank(&mut server, "p", "coreset", pool(12)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("embeddings N·D"), "{}", error.message());
    // The server keeps serving.
    assert_eq!(rank(&mut server, "p", "bald", pool(12)).await.unwrap().selected.len(), 3);

    // A heuristic the schedule chose falls back to the project's default instead of failing.
    server.projects.create_project(CreateProjectRequest { project: Some(project("s", None)) }).await.unwrap();
    assert_eq!(rank(&mut server, "s", "", pool(4)).await.unwrap().heuristic.unwrap().name, "typiclust", "fits");
    let ranked = rank(&mut server, "s", "", pool(12)).await.unwrap();
    assert_eq!(ranked.heuristic.unwrap().name, "bald", "over the bound: the default heuristic ranked");
    let bald = rank(&mut server, "s", "bald", pool(12)).await.unwrap();
    assert_eq!(ranked.selected, bald.selected, "the same ranking as bald itself with the same seed");
}
