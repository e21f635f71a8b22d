//! `alps.v1.ExampleService` on the real server: idempotent by external id, validated, paged,
//! counted per class, deleted, and durable across a restart.

use std::collections::HashMap;

use alps_proto::v1::{
    AddExamplesRequest, Architecture, CountExamplesRequest, CreateProjectRequest, DeleteExamplesRequest,
    DeleteProjectRequest, LabelledExample, ListExamplesRequest, ModelSpec, PredictRequest, Preprocessing, Project,
    Sample, Tensor, example_service_client::ExampleServiceClient, inference_service_client::InferenceServiceClient,
    project_service_client::ProjectServiceClient, sample::Input,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, eventually, install_plugin, start_server};
use tonic::{Code, transport::Channel};

struct Server {
    dirs: ServerDirs,
    process: Process,
    projects: ProjectServiceClient<Channel>,
    examples: ExampleServiceClient<Channel>,
    inference: InferenceServiceClient<Channel>,
}

async fn start(dirs: ServerDirs) -> Server {
    let (process, grpc) = start_server(&dirs, &[]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    Server {
        dirs,
        process,
        projects: ProjectServiceClient::new(channel.clone()),
        examples: ExampleServiceClient::new(channel.clone()),
        inference: InferenceServiceClient::new(channel),
    }
}

async fn server_with_project() -> Server {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let mut server = start(dirs).await;
    let project = Project {
        id: "p".into(),
        classes: vec!["cat".into(), "dog".into(), "bird".into()],
        model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
        preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
        ..Default::default()
    };
    server.projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
    server
}

fn example(id: &str, class: &str, value: f32) -> LabelledExample {
    let tensor = Tensor { shape: vec![1, 2, 2], data: vec![value; 4] };
    LabelledExample {
        external_id: id.into(),
        sample: Some(Sample { id: String::new(), input: Some(Input::Tensor(tensor)) }),
        class_name: class.into(),
        metadata: HashMap::from([("annotator".to_owned(), "ann".to_owned())]),
        label_revision: 0,
    }
}

fn add(project: &str, batches: Vec<Vec<LabelledExample>>) -> impl tokio_stream::Stream<Item = AddExamplesRequest> {
    let messages: Vec<AddExamplesRequest> = batches
        .into_iter()
        .enumerate()
        .map(|(i, examples)| AddExamplesRequest {
            project_id: if i == 0 { project.into() } else { String::new() },
            examples,
        })
        .collect();
    tokio_stream::iter(messages)
}

async fn counts(server: &mut Server) -> (u64, HashMap<String, u64>) {
    let response =
        server.examples.count_examples(CountExamplesRequest { project_id: "p".into() }).await.unwrap().into_inner();
    (response.total, response.per_class)
}

#[tokio::test]
async fn examples_are_idempotent_by_external_id_and_counted_per_class() {
    let mut server = server_with_project().await;
    let batches = vec![vec![example("1", "cat", 0.1), example("2", "dog", 0.2)], vec![example("3", "cat", 0.3)]];
    let added = server.examples.add_examples(add("p", batches)).await.unwrap().into_inner();
    assert_eq!((added.inserted, added.updated, added.unchanged), (3, 0, 0));
    let replay =
        server.examples.add_examples(add("p", vec![vec![example("1", "cat", 0.1)]])).await.unwrap().into_inner();
    assert_eq!((replay.inserted, replay.updated, replay.unchanged), (0, 0, 1));
    let relabel =
        server.examples.add_examples(add("p", vec![vec![example("1", "bird", 0.1)]])).await.unwrap().into_inner();
    assert_eq!((relabel.inserted, relabel.updated, relabel.unchanged), (0, 1, 0));
    let (total, per_class) = counts(&mut server).await;
    assert_eq!(total, 3);
    assert_eq!(per_class, HashMap::from([("cat".into(), 1), ("dog".into(), 1), ("bird".into(), 1)]));
}

#[tokio::test]
async fn invalid_examples_are_rejected_and_nothing_of_their_batch_is_stored() {
    let mut server = server_with_project().await;
    let mut corrupt = example("c", "cat", 0.0);
    corrupt.sample = Some(Sample { id: String::new(), input: Some(Input::Image(b"not an image".to_vec())) });
    let mut wrong_shape = example("s", "cat", 0.0);
    wrong_shape.sample =
        Some(Sample { id: String::new(), input: Some(Input::Tensor(Tensor { shape: vec![3], data: vec![0.0; 3] })) });
    let cases = [
        (example("x", "horse", 0.0), "horse", "cat, dog, bird"),
        (example("", "cat", 0.0), "external_id", ""),
        (corrupt, "cannot decode image", "(c)"),
        (wrong_shape, "tensor shape", "(s)"),
    ];
    for (bad, needle, also) in cases {
        let batch = vec![example("good", "cat", 0.5), bad];
        let error = server.examples.add_examples(add("p", vec![batch])).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(needle) && error.message().contains(also), "{:?}", error.message());
    }
    assert_eq!(counts(&mut server).await.0, 0, "the valid example of each rejected batch was not stored");
    let missing = server.examples.add_examples(add("nope", vec![vec![example("1", "cat", 0.0)]])).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

// Multi-threaded: the clients must stay responsive while the test thread blocks in `terminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_are_listed_in_pages_deleted_and_survive_a_restart() {
    let mut server = server_with_project().await;
    let batch: Vec<LabelledExample> = (0..25).map(|i| example(&format!("id-{i:02}"), "dog", i as f32)).collect();
    server.examples.add_examples(add("p", vec![batch])).await.unwrap();
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = ListExamplesRequest { project_id: "p".into(), page_size: 10, page_token: token };
        let page = server.examples.list_examples(page).await.unwrap().into_inner();
        assert!(page.examples.len() <= 10);
        seen.extend(page.examples.iter().map(|e| e.external_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("id-{i:02}")).collect();
    assert_eq!(seen, expected);

    let delete = DeleteExamplesRequest { project_id: "p".into(), external_ids: vec!["id-00".into(), "nope".into()] };
    let deleted = server.examples.delete_examples(delete).await.unwrap().into_inner();
    assert_eq!((deleted.deleted, deleted.not_found), (1, 1));

    assert!(server.process.terminate().success());
    let mut restarted = start(server.dirs).await;
    assert_eq!(counts(&mut restarted).await.0, 24, "every acknowledged example is still there");
    restarted.projects.delete_project(DeleteProjectRequest { project_id: "p".into() }).await.unwrap();
    let gone = restarted.examples.count_examples(CountExamplesRequest { project_id: "p".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn a_database_another_process_holds_refuses_writes_with_unavailable_and_predictions_go_on() {
    let mut server = server_with_project().await;
    server.examples.add_examples(add("p", vec![vec![example("1", "cat", 0.1)]])).await.unwrap();
    let path = server.dirs.data.path().join("alps.db");
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = server.examples.add_examples(add("p", vec![vec![example("2", "dog", 0.2)]])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(refused.message().contains("retry with backoff"), "{}", refused.message());
    assert!(!refused.message().contains(server.dirs.data.path().to_str().unwrap()), "{}", refused.message());
    // Predictions need no database: the project and its model are in memory.
    let sample = example("x", "cat", 0.5).sample;
    let predict = PredictRequest { project_id: "p".into(), samples: vec![sample.unwrap()], ..Default::default() };
    assert_eq!(server.inference.predict(predict).await.unwrap().into_inner().results.len(), 1);
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(counts(&mut server).await.0, 1, "nothing of the refused batch is stored");
    // The same request succeeds once the lock is gone.
    server.examples.add_examples(add("p", vec![vec![example("2", "dog", 0.2)]])).await.unwrap();
    assert_eq!(counts(&mut server).await.0, 2);
}

/// Sample blob files under the data dir (`blobs/<2 hex>/<64 hex>`).
fn blob_files(data: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for shard in std::fs::read_dir(data.join("blobs")).unwrap().flatten() {
        if shard.file_name().len() == 2 {
            names.extend(
                std::fs::read_dir(shard.path()).unwrap().flatten().map(|f| f.file_name().into_string().unwrap()),
            );
        }
    }
    names.sort();
    names
}

#[tokio::test]
async fn blobs_no_example_references_are_collected_and_shared_ones_stay() {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (mut process, grpc) = start_server(&dirs, &["--gc-interval-secs", "1", "--gc-grace-secs", "0"]);
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let (mut projects, mut examples) = (ProjectServiceClient::new(channel.clone()), ExampleServiceClient::new(channel));
    for id in ["a", "b"] {
        let project = Project {
            id: id.into(),
            classes: vec!["cat".into(), "dog".into()],
            model: Some(ModelSpec { architecture: Architecture::Mlp as i32, ..Default::default() }),
            preprocessing: Some(Preprocessing { width: 2, height: 2, channels: 1, ..Default::default() }),
            ..Default::default()
        };
        projects.create_project(CreateProjectRequest { project: Some(project) }).await.unwrap();
    }
    // "shared" bytes are in both projects; "only-a" and "deleted" in a alone.
    let batch = vec![example("shared", "cat", 0.5), example("only-a", "dog", 0.7), example("deleted", "cat", 0.9)];
    examples.add_examples(add("a", vec![batch])).await.unwrap();
    examples.add_examples(add("b", vec![vec![example("shared", "cat", 0.5)]])).await.unwrap();
    let data = dirs.data.path();
    assert_eq!(blob_files(data).len(), 3);

    // Deleting an example, then its project, leaves bytes no example references: the next pass
    // removes them; the bytes project b still uses stay.
    let request = DeleteExamplesRequest { project_id: "a".into(), external_ids: vec!["deleted".into()] };
    examples.delete_examples(request).await.unwrap();
    projects.delete_project(DeleteProjectRequest { project_id: "a".into() }).await.unwrap();
    let remaining = eventually("two blobs collected", || async {
        let remaining = blob_files(data);
        (remaining.len() == 1).then_some(remaining)
    })
    .await;
    let metrics = format!("http://{}/metrics", process.listening_addr("metrics"));
    let text = alps_system_tests::http_client().get(metrics).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "alps_gc_removed_blobs_total 2"), "{text}");

    // The survivor is b's example, still readable; removed bytes are stored again when needed.
    let listed = examples.list_examples(ListExamplesRequest { project_id: "b".into(), ..Default::default() }).await;
    assert_eq!(listed.unwrap().into_inner().examples[0].content_sha256, remaining[0]);
    let again = examples.add_examples(add("b", vec![vec![example("back", "dog", 0.7)]])).await.unwrap().into_inner();
    assert_eq!(again.inserted, 1);
    assert_eq!(blob_files(data).len(), 2);
    assert!(process.terminate().success());
}
