//! `alps-label-studio` against a real `alps-server` and a fake Label Studio (an in-process axum
//! server that checks credentials, serves images and records the adapter's calls): every route of
//! the ML-backend protocol, bad input, media
//! failures, webhooks, training and the project `model_version` update.
//!
//! The end-to-end test with a real Label Studio is `tests/e2e/test_label_studio.py`.

use std::{
    collections::HashMap,
    io::Cursor,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use alps_proto::v1::{
    CountExamplesRequest, GetProjectRequest, ListExamplesRequest, example_service_client::ExampleServiceClient,
    project_service_client::ProjectServiceClient,
};
use alps_system_tests::{Process, ServerDirs, builtin_plugin, eventually, http_client, install_plugin, start_server};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"<View><Image name="img" value="$image"/><Choices name="label" toName="img" choice="single"><Choice value="dark"/><Choice value="bright"/></Choices></View>"#;

/// A personal access token: a JWT-shaped refresh token.
const PAT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl";

/// What the fake Label Studio serves and what it saw.
#[derive(Default)]
struct FakeLs {
    /// Path -> PNG bytes under `/data/upload/1/`.
    images: HashMap<String, Vec<u8>>,
    /// The access token handed out by `/api/token/refresh/`.
    access: String,
    /// Tasks returned by the resync (`GET /api/tasks`) and `GET /api/tasks/{id}`.
    tasks: Vec<Value>,
    /// The project's `model_version`.
    model_version: String,
    /// Versions with stored predictions (`GET /api/projects/1/model-versions`).
    stored_versions: Vec<String>,
    /// `model_version` PATCHes received.
    patches: Vec<String>,
    /// Image requests: (path, Authorization header).
    media_requests: Vec<(String, String)>,
    /// Unlabelled tasks listed by the pool query (with `predictions` added from `imported`).
    pool: Vec<Value>,
    /// Predictions received by the bulk import.
    imported: Vec<Value>,
    /// Data Manager tabs created.
    views: Vec<Value>,
}

type Shared = Arc<Mutex<FakeLs>>;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

async fn refresh(State(ls): State<Shared>, Json(body): Json<Value>) -> Response {
    if body["refresh"] != PAT {
        return (StatusCode::UNAUTHORIZED, Json(json!({"detail": "Token is blacklisted"}))).into_response();
    }
    let payload = base64url(json!({"token_type": "access", "exp": unix_now() + 300}).to_string().as_bytes());
    let access = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln");
    ls.lock().unwrap().access = access.clone();
    Json(json!({"access": access})).into_response()
}

fn authorised(ls: &FakeLs, headers: &HeaderMap) -> bool {
    let given = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or_default();
    !ls.access.is_empty() && given == format!("Bearer {}", ls.access)
}

async fn upload(State(ls): State<Shared>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    if file == "slow.png" {
        // Longer than the prediction budget of the deadline test.
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
    let mut ls = ls.lock().unwrap();
    let auth = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    ls.media_requests.push((file.clone(), auth));
    if !authorised(&ls, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match ls.images.get(&file) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn tasks(State(ls): State<Shared>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let ls = ls.lock().unwrap();
    if !authorised(&ls, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let full = reqwest::Url::parse(&format!("http://ls/?{}", uri.query().unwrap_or_default())).unwrap();
    let query: HashMap<String, String> = full.query_pairs().into_owned().collect();
    let filter: Value = serde_json::from_str(query.get("query").map_or("{}", String::as_str)).unwrap_or_default();
    if filter.to_string().contains("\"filter:tasks:id\"") {
        // The pool listing: unlabelled tasks above the cursor, ascending, with their predictions.
        let after = filter["filters"]["items"][1]["value"].as_u64().unwrap();
        let size: usize = query["page_size"].parse().unwrap();
        let mut page: Vec<Value> =
            ls.pool.iter().filter(|task| task["id"].as_u64().unwrap() > after).cloned().collect();
        let total = page.len();
        page.truncate(size);
        for task in &mut page {
            let predictions: Vec<Value> = ls.imported.iter().filter(|p| p["task"] == task["id"]).cloned().collect();
            task["predictions"] = json!(predictions);
        }
        return Json(json!({"tasks": page, "total": total})).into_response();
    }
    // One page; later pages answer 404 like Label Studio.
    if uri.query().unwrap_or_default().contains("page=1&") {
        Json(json!({"tasks": ls.tasks, "total": ls.tasks.len()})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn task(State(ls): State<Shared>, Path(id): Path<u64>) -> Response {
    let ls = ls.lock().unwrap();
    match ls.tasks.iter().find(|task| task["id"] == id) {
        Some(task) => Json(task.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn project(State(ls): State<Shared>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let mut ls = ls.lock().unwrap();
    if !authorised(&ls, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(Json(body)) = body {
        let version = body["model_version"].as_str().unwrap_or_default().to_owned();
        if !ls.stored_versions.contains(&version) {
            return StatusCode::BAD_REQUEST.into_response();
        }
        ls.patches.push(version.clone());
        ls.model_version = version;
    }
    Json(json!({"id": 1, "model_version": ls.model_version})).into_response()
}

async fn model_versions(State(ls): State<Shared>) -> Json<Value> {
    let ls = ls.lock().unwrap();
    Json(Value::Object(ls.stored_versions.iter().map(|version| (version.clone(), json!(1))).collect()))
}

async fn import_predictions(State(ls): State<Shared>, headers: HeaderMap, Json(body): Json<Vec<Value>>) -> Response {
    let mut ls = ls.lock().unwrap();
    if !authorised(&ls, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let created = body.len();
    for prediction in body {
        let version = prediction["model_version"].as_str().unwrap().to_owned();
        if !ls.stored_versions.contains(&version) {
            ls.stored_versions.push(version);
        }
        ls.imported.push(prediction);
    }
    (StatusCode::CREATED, Json(json!({"created": created}))).into_response()
}

/// `GET /api/predictions/?task=N`: the task's imported predictions, each with its position + 1
/// as id.
async fn predictions(State(ls): State<Shared>, uri: axum::http::Uri) -> Json<Value> {
    let ls = ls.lock().unwrap();
    let task: u64 = uri.query().and_then(|q| q.strip_prefix("task=")).and_then(|t| t.parse().ok()).unwrap_or(0);
    let of_task = ls.imported.iter().enumerate().filter(|(_, p)| p["task"] == task);
    Json(of_task.map(|(i, p)| json!({"id": i + 1, "task": task, "model_version": p["model_version"]})).collect())
}

/// `PATCH /api/predictions/{id}/`: a new score for an imported prediction.
async fn patch_prediction(State(ls): State<Shared>, Path(id): Path<usize>, Json(body): Json<Value>) -> StatusCode {
    match ls.lock().unwrap().imported.get_mut(id.wrapping_sub(1)) {
        Some(prediction) => {
            prediction["score"] = body["score"].clone();
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn views(State(ls): State<Shared>) -> Json<Value> {
    Json(json!(ls.lock().unwrap().views))
}

async fn create_view(State(ls): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    ls.lock().unwrap().views.push(body);
    StatusCode::CREATED
}

async fn start_fake_label_studio(ls: Shared) -> SocketAddr {
    let app = Router::new()
        .route("/api/token/refresh/", post(refresh))
        .route("/data/upload/1/{file}", get(upload))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/projects/1", get(project).patch(project))
        .route("/api/projects/1/model-versions", get(model_versions))
        .route("/api/ml", get(|| async { Json(json!([{"id": 1, "title": "alps"}])) }))
        .route("/api/projects/1/import/predictions", post(import_predictions))
        .route("/api/predictions/", get(predictions))
        .route("/api/predictions/{id}/", axum::routing::patch(patch_prediction))
        .route("/api/dm/views/", get(views).post(create_view))
        .with_state(ls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// A 32x32 grey PNG: "dark" images are near black, "bright" ones near white, with noise.
fn png(bright: bool, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let base: u8 = if bright { 200 } else { 30 };
    let image = image::GrayImage::from_fn(32, 32, |_, _| image::Luma([base + rng.u8(0..40)]));
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

/// A task with one accepted annotation as Label Studio lists it.
fn annotated_task(id: u64, label: &str) -> Value {
    json!({"id": id, "data": {"image": format!("/data/upload/1/{id}.png")}, "annotations": [annotation(100 + id, id, label)]})
}

fn annotation(id: u64, task: u64, label: &str) -> Value {
    json!({"id": id, "task": task, "was_cancelled": false, "ground_truth": false, "updated_at": "2026-11-30T10:00:00Z",
           "result": [{"from_name": "label", "to_name": "img", "type": "choices", "value": {"choices": [label]}}]})
}

struct Stack {
    _dirs: ServerDirs,
    core: Process,
    grpc: String,
    adapter: Process,
    http: String,
    ls: Shared,
    ls_url: String,
}

/// An adapter in front of `core_url` and the fake Label Studio at `ls_url`; its HTTP address.
fn start_adapter(core_url: &str, ls_url: &str, extra_args: &[&str], env: &[(&str, &str)]) -> (Process, String) {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--core-url",
        core_url,
        "--core-poll-ms",
        "100",
        "--train-debounce-ms",
        "100",
        "--min-train-labels",
        "2",
        "--media-max-mib",
        "1",
    ];
    args.extend_from_slice(extra_args);
    let mut env = env.to_vec();
    env.extend([("LABEL_STUDIO_URL", ls_url), ("LABEL_STUDIO_API_KEY", PAT)]);
    let mut adapter = Process::start_with_env("alps-label-studio", &args, &env);
    let http = adapter.listening_addr("http");
    (adapter, http)
}

/// alps-server with the built-in heuristics, the fake Label Studio with 12 images (ids 1..=12,
/// even = bright), and the adapter connected to both.
async fn start_stack(extra_adapter_args: &[&str], env: &[(&str, &str)]) -> Stack {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (core, grpc) = start_server(&dirs, &[]);
    let ls = Shared::default();
    for id in 1..=12u64 {
        ls.lock().unwrap().images.insert(format!("{id}.png"), png(id % 2 == 0, id));
    }
    // Larger than the adapter's 1 MiB media limit below.
    ls.lock().unwrap().images.insert("huge.png".into(), vec![0; 3 << 20]);
    let ls_address = start_fake_label_studio(Arc::clone(&ls)).await;
    let ls_url = format!("http://{ls_address}");
    let (adapter, http) = start_adapter(&format!("http://{grpc}"), &ls_url, extra_adapter_args, env);
    let stack = Stack { _dirs: dirs, core, grpc, adapter, http, ls, ls_url };
    eventually("adapter sees the core", || async {
        // Credentials of the Basic-auth test; ignored when the adapter has none configured.
        let request = http_client().get(stack.url("/health")).basic_auth("ls", Some("s3cret"));
        let health: Value = request.send().await.ok()?.json().await.ok()?;
        (health["model_server"] == "ready").then_some(())
    })
    .await;
    stack
}

impl Stack {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = http_client().post(self.url(path)).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn setup(&self) -> String {
        let (status, body) = self.post("/setup", &json!({"project": "1.1764489000", "schema": CONFIG})).await;
        assert_eq!(status, 200, "{body}");
        body["model_version"].as_str().unwrap().to_owned()
    }

    async fn examples(&self) -> u64 {
        let mut client = ExampleServiceClient::connect(format!("http://{}", self.grpc)).await.unwrap();
        let request = CountExamplesRequest { project_id: "ls-1".into() };
        client.count_examples(request).await.map(|response| response.into_inner().total).unwrap_or(0)
    }

    /// Whether a line of the adapter's log contains both `message` and `needle`.
    fn adapter_log_contains(&mut self, message: &str, needle: &str) -> bool {
        self.adapter.log().iter().any(|line| line.contains(message) && line.contains(needle))
    }

    fn stop(mut self) {
        assert!(self.adapter.terminate().success());
        assert!(self.core.terminate().success());
    }
}

impl Drop for Stack {
    /// On a failed assertion, shows what the adapter logged (it explains most failures).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for line in self.adapter.log() {
                eprintln!("alps-label-studio: {line}");
            }
        }
    }
}

/// The status line of a raw HTTP/1.1 request: the only place the reason phrase is visible (reqwest
/// does not expose it), and the only adapter text Label Studio shows for a failed `/setup`.
async fn status_line(http: &str, method: &str, path: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_and_predict_answer_one_entry_per_task() {
    let stack = start_stack(&[], &[("ALPS_LS_MEDIA_ALLOW_PRIVATE", "false")]).await;
    assert_eq!(stack.setup().await, "small-cnn-untrained");

    let tasks = json!([
        {"id": 1, "data": {"image": "/data/upload/1/1.png"}},
        {"id": 2, "data": {"image": "/data/upload/1/2.png"}},
        {"id": 3, "data": {"image": "/data/upload/1/missing.png"}},
        {"id": 4, "data": {"text": "no image key"}},
        {"id": 5, "data": {"image": "/data/upload/1/huge.png"}},
        {"id": 6, "data": {"image": "http://127.0.0.1:9/private.png"}},
        {"id": 7, "data": {"image": "data:image/png;base64,AAAA"}},
    ]);
    let request =
        json!({"project": "1.1764489000", "label_config": CONFIG, "tasks": tasks, "params": {"context": null}});
    let (status, body) = stack.post("/predict", &request).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 7, "{body}");
    assert_eq!(body["model_version"], "small-cnn-untrained");
    for entry in &results[..2] {
        assert_eq!(entry["model_version"], "small-cnn-untrained");
        let region = &entry["result"][0];
        assert_eq!((region["from_name"].as_str(), region["to_name"].as_str()), (Some("label"), Some("img")));
        assert_eq!(region["type"], "choices");
        let label = region["value"]["choices"][0].as_str().unwrap();
        assert!(["dark", "bright"].contains(&label), "{entry}");
        // Confidence mode: the prediction score is the emitted label's probability.
        let score = entry["score"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&score), "{entry}");
        assert_eq!(region["score"], entry["score"]);
    }
    let expected_errors =
        ["HTTP 404", "no \"image\" key", "larger than", "private address", "unsupported image reference"];
    for (entry, expected) in results[2..].iter().zip(expected_errors) {
        assert!(entry.get("result").is_none(), "a failed task has no result: {entry}");
        assert_eq!(entry["model_version"], "small-cnn-untrained");
        assert!(entry["error"].as_str().unwrap().contains(expected), "{entry} should mention {expected}");
    }
    // Images were fetched from Label Studio with a Bearer access token obtained from the PAT.
    {
        let ls = stack.ls.lock().unwrap();
        let (_, auth) = ls.media_requests.iter().find(|(file, _)| file == "1.png").unwrap();
        assert_eq!(*auth, format!("Bearer {}", ls.access));
    }

    // An access token Label Studio no longer accepts (expired early, secret rotated): the adapter
    // refreshes once after the 401 and retries.
    // (The background pool scorer shares the token, so count relative to now.)
    let refreshes = || async {
        let metrics = http_client().get(stack.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line = metrics.lines().find(|line| line.starts_with("alps_ls_token_refreshes_total ")).unwrap_or_default();
        line.rsplit(' ').next().unwrap_or_default().parse::<u64>().unwrap_or(0)
    };
    let before = refreshes().await;
    assert!(before >= 1);
    stack.ls.lock().unwrap().access = "revoked".into();
    // (Task 1 was scored above and would be answered from memory: another task, the same image.)
    let request = json!({"project": "1.1", "tasks": [{"id": 99, "data": {"image": "/data/upload/1/1.png"}}]});
    let (_, body) = stack.post("/predict", &request).await;
    assert!(body["results"][0]["result"].is_array(), "{body}");
    assert!(refreshes().await > before, "refreshed after the 401");

    // `tasks` as one object (an upstream test client does that).
    let single = json!({"project": "1.1764489000", "tasks": {"id": 2, "data": {"image": "/data/upload/1/2.png"}}});
    let (status, body) = stack.post("/predict", &single).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert!(body["results"][0]["result"].is_array(), "{body}");

    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_past_the_prediction_budget_are_deferred_not_lost() {
    let stack = start_stack(&["--predict-budget-secs", "1", "--predict-chunk", "1"], &[]).await;
    let tasks = json!([
        {"id": 1, "data": {"image": "/data/upload/1/1.png"}},
        {"id": 2, "data": {"image": "/data/upload/1/slow.png"}},
        {"id": 3, "data": {"image": "/data/upload/1/3.png"}},
    ]);
    let (status, body) =
        stack.post("/predict", &json!({"project": "1.1", "label_config": CONFIG, "tasks": tasks})).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["result"].is_array() && results[2]["result"].is_array(), "{body}");
    assert!(results[1].get("result").is_none(), "{body}");
    assert!(results[1]["error"].as_str().unwrap().starts_with("deferred"), "{body}");
    assert_eq!(results[1]["model_version"], "small-cnn-untrained");
    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_precise_errors_and_the_adapter_keeps_serving() {
    let stack = start_stack(&[], &[]).await;
    let http = stack.http.clone();

    // The reason phrase is what Label Studio shows: "400 Client Error: <reason> for url: ...".
    let two_choices = CONFIG.replace(
        "</View>",
        r#"<Choices name="q" toName="img"><Choice value="a"/><Choice value="b"/></Choices></View>"#,
    );
    let body = json!({"project": "1.1", "schema": two_choices}).to_string();
    assert_eq!(
        status_line(&http, "POST", "/setup", &body).await,
        "HTTP/1.1 400 Unsupported label config: 2 Choices controls"
    );
    let (status, body) = stack.post("/setup", &json!({"project": "1.1", "schema": "<View></View>"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unsupported_label_config");
    assert!(body["supported"].as_str().unwrap().contains("<Choices"), "{body}");

    let cases = [
        ("/setup", "{not json", "HTTP/1.1 400 Malformed JSON body"),
        ("/setup", "[1, 2]", "HTTP/1.1 400 JSON body must be an object"),
        ("/predict", r#"{"project": "1.1", "label_config": "x"}"#, "HTTP/1.1 400 Missing tasks"),
        ("/predict", r#"{"project": "99.1", "tasks": []}"#, "HTTP/1.1 400 Missing label_config and project 99"),
        ("/setup", r#"{"project": "abc", "schema": ""}"#, "HTTP/1.1 400 project \"abc\" is not a project uid"),
        ("/webhook", "{}", "HTTP/1.1 400 Missing action"),
        ("/webhook", r#"{"action": "ANNOTATION_CREATED"}"#, "HTTP/1.1 400 Missing project id"),
        ("/train", r#"{"annotations": []}"#, "HTTP/1.1 400 Missing project"),
    ];
    for (path, body, expected) in cases {
        let line = status_line(&http, "POST", path, body).await;
        assert!(line.starts_with(expected), "{path} {body}: {line}");
    }
    let unknown_model = json!({"project": "1.1", "schema": CONFIG, "extra_params": {"model": "vit-huge"}}).to_string();
    assert_eq!(
        status_line(&http, "POST", "/setup", &unknown_model).await,
        "HTTP/1.1 400 Unknown model vit-huge; configured: small-cnn"
    );
    for path in ["/job_status", "/validate", "/duplicate_model", "/delete"] {
        let response = http_client().get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "not_found");
    }
    let (status, body) = stack.post("/webhook", &json!({"action": "LABEL_STUDIO_SAYS_HI", "project": {"id": 1}})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")));
    // Webhooks are unauthenticated: they cannot create projects the authenticated /setup never saw.
    let stranger = json!({"action": "PROJECT_UPDATED", "project": {"id": 777, "label_config": CONFIG}});
    let (status, body) = stack.post("/webhook", &stranger).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")));
    let versions: Value = http_client().get(stack.url("/versions")).send().await.unwrap().json().await.unwrap();
    assert_eq!(versions["versions"], json!([]), "no project was created by the webhook");

    // Still serving after all of that.
    assert_eq!(stack.setup().await, "small-cnn-untrained");
    let metrics = http_client().get(stack.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"alps_ls_requests_total{route="/setup",status="400"}"#), "{metrics}");
    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn annotations_train_a_version_that_label_studio_follows() {
    let stack = start_stack(&[], &[]).await;
    assert_eq!(stack.setup().await, "small-cnn-untrained");
    stack.ls.lock().unwrap().model_version = "alps".into();

    // Eight annotations arrive by webhook (the project object carries the label config).
    for id in 1..=8u64 {
        let label = if id % 2 == 0 { "bright" } else { "dark" };
        let task = annotated_task(id, label);
        let event = json!({"action": "ANNOTATION_CREATED", "annotation": task["annotations"][0], "task": task,
                           "project": {"id": 1, "label_config": CONFIG, "token": "secret"}});
        let (status, body) = stack.post("/webhook", &event).await;
        assert_eq!((status, body["status"].as_str()), (201, Some("ok")), "{body}");
    }
    eventually("8 labelled examples stored", || async { (stack.examples().await == 8).then_some(()) }).await;

    // Label Studio knows one more labelled task than the webhooks told: the resync adds it.
    stack.ls.lock().unwrap().tasks =
        (1..=10).map(|id| annotated_task(id, if id % 2 == 0 { "bright" } else { "dark" })).collect();
    let (status, _) = stack.post("/webhook", &json!({"action": "START_TRAINING", "project": {"id": 1}})).await;
    assert_eq!(status, 201);
    eventually("the resync stores 10 examples", || async { (stack.examples().await == 10).then_some(()) }).await;
    let version = eventually("/setup answers the trained version", || async {
        let version = stack.setup().await;
        (version != "small-cnn-untrained").then_some(version)
    })
    .await;
    assert_eq!(version, "small-cnn-v1");

    // Predictions carry it; once Label Studio stores one, the adapter PATCHes the project.
    let request = json!({"project": "1.1", "tasks": [{"id": 11, "data": {"image": "/data/upload/1/11.png"}}]});
    let (_, body) = stack.post("/predict", &request).await;
    assert_eq!(body["results"][0]["model_version"], "small-cnn-v1", "{body}");
    stack.ls.lock().unwrap().stored_versions.push(version.clone());
    eventually("project model_version PATCHed", || async {
        (stack.ls.lock().unwrap().patches == [version.clone()]).then_some(())
    })
    .await;
    let versions: Value = http_client().get(stack.url("/versions")).send().await.unwrap().json().await.unwrap();
    assert_eq!(versions["versions"], json!(["small-cnn-v1"]));

    // Deleting task 10's only annotation in Label Studio removes its example.
    stack.ls.lock().unwrap().tasks[9]["annotations"] = json!([]);
    let deleted = json!({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 110}], "project": {"id": 1}});
    assert_eq!(stack.post("/webhook", &deleted).await.0, 201);
    eventually("task 10 removed", || async { (stack.examples().await == 9).then_some(()) }).await;
    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_nth_new_label_retrains_without_being_asked() {
    let stack = start_stack(&["--train-every", "2"], &[]).await;
    stack.setup().await;
    let event = |id: u64, label: &str| {
        let task = annotated_task(id, label);
        json!({"action": "ANNOTATION_CREATED", "annotation": task["annotations"][0], "task": task,
               "project": {"id": 1, "label_config": CONFIG}})
    };
    // The same event twice (Label Studio has no retries, but proxies may) is one new label.
    assert_eq!(stack.post("/webhook", &event(1, "dark")).await.0, 201);
    assert_eq!(stack.post("/webhook", &event(1, "dark")).await.0, 201);
    eventually("task 1 stored", || async { (stack.examples().await == 1).then_some(()) }).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let metrics = http_client().get(stack.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("alps_ls_trainings_total{"), "a repeated event counted as a new label: {metrics}");
    // The second distinct label starts a run.
    assert_eq!(stack.post("/webhook", &event(2, "bright")).await.0, 201);
    eventually("a version trained after the 2nd label", || async {
        (stack.setup().await == "small-cnn-v1").then_some(())
    })
    .await;
    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_train_replaces_the_labelled_set() {
    let stack = start_stack(&[], &[]).await;
    let annotated: Vec<Value> =
        (1..=6).map(|id| annotated_task(id, if id % 2 == 0 { "bright" } else { "dark" })).collect();
    let body = json!({"annotations": annotated, "project": "1.1764489000", "label_config": CONFIG, "params": {}});
    let (status, reply) = stack.post("/train", &body).await;
    assert_eq!(status, 201);
    assert!(reply.get("job").is_none(), "a job key would make LS record a training job: {reply}");
    eventually("trained from the /train body", || async { (stack.setup().await == "small-cnn-v1").then_some(()) })
        .await;
    assert_eq!(stack.examples().await, 6);
    let status: Value =
        http_client().get(stack.url("/is_training?project=1.1764489000")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["model_version"], "small-cnn-v1");
    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_guards_every_route_but_the_webhook() {
    let stack = start_stack(&[], &[("BASIC_AUTH_USER", "ls"), ("BASIC_AUTH_PASS", "s3cret")]).await;
    let client = http_client();
    let denied = client.get(stack.url("/health")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Basic realm=\"alps-label-studio\"");
    let wrong = client.get(stack.url("/health")).basic_auth("ls", Some("guess")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = client.get(stack.url("/health")).basic_auth("ls", Some("s3cret")).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    let setup = client
        .post(stack.url("/setup"))
        .basic_auth("ls", Some("s3cret"))
        .json(&json!({"project": "1.1", "schema": CONFIG}))
        .send()
        .await
        .unwrap();
    assert_eq!(setup.status(), 200);
    // Label Studio's event webhooks carry no credentials.
    let event = json!({"action": "PROJECT_UPDATED", "project": {"id": 1, "label_config": CONFIG}});
    assert_eq!(client.post(stack.url("/webhook")).json(&event).send().await.unwrap().status(), 201);
    stack.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_core_is_a_503_with_a_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let core_url = format!("http://127.0.0.1:{closed}");
    let mut adapter = Process::start(
        "alps-label-studio",
        &["--listen", "127.0.0.1:0", "--core-url", &core_url, "--core-poll-ms", "100"],
    );
    let http = adapter.listening_addr("http");
    let body = json!({"project": "1.1", "schema": CONFIG}).to_string();
    assert_eq!(status_line(&http, "POST", "/setup", &body).await, "HTTP/1.1 503 Model server unreachable");
    let predict = json!({"project": "1.1", "label_config": CONFIG, "tasks": [{"id": 1, "data": {"image": "/x.png"}}]});
    assert_eq!(
        status_line(&http, "POST", "/predict", &predict.to_string()).await,
        "HTTP/1.1 503 Model server unreachable"
    );
    assert!(adapter.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn connecting_scores_the_whole_pool_in_bulk_once() {
    let stack = start_stack(&["--pool-write-chunk", "4", "--predict-chunk", "3"], &[]).await;
    stack.ls.lock().unwrap().pool =
        (1..=10u64).map(|id| json!({"id": id, "data": {"image": format!("/data/upload/1/{id}.png")}})).collect();
    let params = json!({"score_mode": "uncertainty", "heuristic": "entropy"});
    let (status, body) =
        stack.post("/setup", &json!({"project": "1.1764489000", "schema": CONFIG, "extra_params": params})).await;
    assert_eq!(status, 200, "{body}");
    let version = "small-cnn-untrained-entropy";
    assert_eq!(body["model_version"], version);

    // With no "Retrieve predictions", every task gets one prediction of the version, in bulk.
    eventually("every pool task predicted", || async { (stack.ls.lock().unwrap().imported.len() == 10).then_some(()) })
        .await;
    eventually("the project's model_version follows", || async {
        (stack.ls.lock().unwrap().patches == [version.to_owned()]).then_some(())
    })
    .await;
    {
        let ls = stack.ls.lock().unwrap();
        let mut tasks: Vec<u64> = ls.imported.iter().map(|p| p["task"].as_u64().unwrap()).collect();
        tasks.sort_unstable();
        assert_eq!(tasks, (1..=10).collect::<Vec<_>>(), "one prediction per task");
        for prediction in &ls.imported {
            assert_eq!(prediction["model_version"], version);
            let score = prediction["score"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&score), "entropy as a share of ln C: {score}");
            assert_eq!(prediction["result"][0]["type"], "choices");
        }
        // The Data Manager tab: created once, unlabelled tasks only, most informative first.
        assert_eq!(ls.views.len(), 1, "{:?}", ls.views);
        assert_eq!(ls.views[0]["data"]["title"], "Most informative (ALPS)");
        assert_eq!(ls.views[0]["data"]["ordering"], json!(["-tasks:predictions_score"]));
    }
    let status: Value = http_client().get(stack.url("/status")).send().await.unwrap().json().await.unwrap();
    let pool = &status["projects"][0]["pool"];
    assert_eq!(
        (pool["state"].as_str(), pool["pool"].as_u64(), pool["fresh"].as_u64()),
        (Some("complete"), Some(10), Some(10)),
        "{status}"
    );

    // A prediction deleted in Label Studio since the pass wrote it: "Retrieve predictions" for
    // its task gets no second prediction of the version, and the pass it triggers finds the
    // task without the version and writes it again, once. (First, while no pass runs: a pass
    // that listed the pool after the deletion would rightly answer with a prediction.)
    stack.ls.lock().unwrap().imported.retain(|prediction| prediction["task"] != 4);
    let request = json!({"project": "1.1", "tasks": [{"id": 4, "data": {"image": "/data/upload/1/4.png"}}]});
    let (_, body) = stack.post("/predict", &request).await;
    assert!(body["results"][0].get("result").is_none(), "{body}");
    eventually("the deleted prediction is written again", || async {
        let ls = stack.ls.lock().unwrap();
        (ls.imported.len() == 10 && ls.imported.iter().any(|p| p["task"] == 4)).then_some(())
    })
    .await;
    // "Retrieve predictions" for a task the pass already wrote (Label Studio picked it just
    // before the write) gets no second prediction of the version.
    let request = json!({"project": "1.1", "tasks": [{"id": 3, "data": {"image": "/data/upload/1/3.png"}}]});
    let (_, body) = stack.post("/predict", &request).await;
    let entry = &body["results"][0];
    assert_eq!(entry["model_version"], version, "{body}");
    assert!(entry.get("result").is_none(), "a second prediction of task 3: {body}");
    assert!(entry["error"].as_str().is_some_and(|e| e.contains("already stored")), "{body}");
    // Imported tasks are scored without a click.
    stack.ls.lock().unwrap().pool.push(json!({"id": 11, "data": {"image": "/data/upload/1/11.png"}}));
    let created = json!({"action": "TASKS_CREATED", "tasks": [{"id": 11}], "project": {"id": 1}});
    assert_eq!(stack.post("/webhook", &created).await.0, 201);
    eventually("the imported task is predicted", || async {
        (stack.ls.lock().unwrap().imported.len() == 11).then_some(())
    })
    .await;

    // Another heuristic is another version: every task is scored again under its name.
    let params = json!({"score_mode": "uncertainty", "heuristic": "bald"});
    let (_, body) =
        stack.post("/setup", &json!({"project": "1.1764489000", "schema": CONFIG, "extra_params": params})).await;
    assert_eq!(body["model_version"], "small-cnn-untrained-bald");
    eventually("the pool is scored with BALD", || async {
        let ls = stack.ls.lock().unwrap();
        (ls.imported.iter().filter(|p| p["model_version"] == "small-cnn-untrained-bald").count() == 11).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ls = stack.ls.lock().unwrap();
    assert_eq!(ls.imported.len(), 22, "never twice for one task and version");
    assert_eq!(ls.views.len(), 1, "the tab is created once");
    drop(ls);
    stack.stop();
}

#[tokio::test]
async fn a_new_project_starts_with_the_cold_start_batch_of_its_schedule() {
    let mut stack = start_stack(&[], &[]).await;
    stack.ls.lock().unwrap().pool =
        (1..=10u64).map(|id| json!({"id": id, "data": {"image": format!("/data/upload/1/{id}.png")}})).collect();
    let params = json!({"score_mode": "uncertainty", "query_size": 3});
    let (status, body) =
        stack.post("/setup", &json!({"project": "1.1764489000", "schema": CONFIG, "extra_params": params})).await;
    assert_eq!(status, 200, "{body}");

    // No labels yet: the core's default schedule (typiclust) picks the batch that heads the order.
    let status = eventually("the cold-start batch is selected", || async {
        let status: Value = http_client().get(stack.url("/status")).send().await.ok()?.json().await.ok()?;
        (status["projects"][0]["pool"]["batch"].as_array()?.len() == 3).then_some(status)
    })
    .await;
    let batch: Vec<u64> =
        status["projects"][0]["pool"]["batch"].as_array().unwrap().iter().map(|id| id.as_u64().unwrap()).collect();
    {
        let ls = stack.ls.lock().unwrap();
        assert_eq!(ls.imported.len(), 10, "one prediction per task");
        let score = |task: u64| ls.imported.iter().find(|p| p["task"] == task).unwrap()["score"].as_f64().unwrap();
        let rest_best = (1..=10).filter(|t| !batch.contains(t)).map(score).fold(0.0, f64::max);
        let batch_scores: Vec<f64> = batch.iter().map(|&t| score(t)).collect();
        assert!(batch_scores.iter().all(|&s| s > rest_best), "{batch_scores:?} vs {rest_best}");
        assert!(batch_scores.windows(2).all(|w| w[0] > w[1]), "selection order: {batch_scores:?}");
    }
    let logged = stack.adapter_log_contains("batch selected to head the order", "typiclust");
    assert!(logged, "the adapter logs which heuristic the schedule chose");

    // extra_params set the ALPS project's schedule; "none" removes it.
    let projects = ProjectServiceClient::connect(format!("http://{}", stack.grpc)).await.unwrap();
    for (cold_start, wanted) in [(json!("coreset"), "coreset"), (json!("none"), "")] {
        let params =
            json!({"score_mode": "uncertainty", "query_size": 3, "cold_start": cold_start, "cold_start_labels": 30});
        let (status, body) =
            stack.post("/setup", &json!({"project": "1.1764489000", "schema": CONFIG, "extra_params": params})).await;
        assert_eq!(status, 200, "{body}");
        // /setup answers at once; the schedule reaches the core when the link is next ensured.
        let (_, _) = stack
            .post(
                "/predict",
                &json!({"project": "1.1", "tasks": [{"id": 1, "data": {"image": "/data/upload/1/1.png"}}]}),
            )
            .await;
        eventually("the schedule reaches the core", || {
            let mut projects = projects.clone();
            async move {
                let project = projects.get_project(GetProjectRequest { project_id: "ls-1".into() }).await.ok()?;
                let schedule = project.into_inner().project?.acquisition_schedule?;
                (schedule.cold_start.map(|h| h.name).unwrap_or_default() == wanted).then_some(())
            }
        })
        .await;
    }
    let bad = json!({"project": "1.1764489000", "schema": CONFIG, "extra_params": {"cold_start_labels": "many"}});
    let (status, body) = stack.post("/setup", &bad).await;
    assert_eq!(status, 400, "a bad cold_start_labels is refused: {body}");
    stack.stop();
}

/// One state of annotation `100 + task` as a webhook event: `label` at `updated_at`.
fn annotation_event(task: u64, label: &str, updated_at: &str) -> Value {
    let mut annotation = annotation(100 + task, task, label);
    annotation["updated_at"] = json!(updated_at);
    let task = json!({"id": task, "data": {"image": format!("/data/upload/1/{task}.png")}});
    json!({"action": "ANNOTATION_UPDATED", "annotation": annotation, "task": task,
           "project": {"id": 1, "label_config": CONFIG, "token": "secret"}})
}

/// The core's labelled set of the Label Studio project: external id -> (class, label revision).
async fn labelled_set(grpc: &str) -> HashMap<String, (String, u64)> {
    let mut client = ExampleServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    let request = ListExamplesRequest { project_id: "ls-1".into(), page_size: 100, page_token: String::new() };
    let examples = client.list_examples(request).await.unwrap().into_inner().examples;
    examples.into_iter().map(|e| (e.external_id, (e.class_name, e.label_revision))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn adapter_replicas_fed_webhooks_in_any_order_keep_the_newest_label() {
    // Two replicas behind one Service: each webhook reaches one of them, in any order. Tasks 1
    // and 2 get their newer state through the first replica and the older one late through the
    // second; tasks 3 and 4 the other way round.
    let stack = start_stack(&[], &[]).await;
    stack.setup().await;
    let (mut second, second_http) = start_adapter(&format!("http://{}", stack.grpc), &stack.ls_url, &[], &[]);
    let post = |http: String, event: Value| async move {
        let response = http_client().post(format!("http://{http}/webhook")).json(&event).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{event}");
    };
    let (old, new) = ("2026-11-30T10:00:00.000001Z", "2026-11-30T10:00:00.000002Z");
    // (older, newer) label of each task.
    let labels = |task: u64| if task.is_multiple_of(2) { ("dark", "bright") } else { ("bright", "dark") };
    for task in [1, 2] {
        post(stack.http.clone(), annotation_event(task, labels(task).1, new)).await;
    }
    for task in [3, 4] {
        post(stack.http.clone(), annotation_event(task, labels(task).0, old)).await;
    }
    eventually("the first replica's labels stored", || async {
        (labelled_set(&stack.grpc).await.len() == 4).then_some(())
    })
    .await;
    for task in [1, 2] {
        post(second_http.clone(), annotation_event(task, labels(task).0, old)).await;
    }
    for task in [3, 4] {
        post(second_http.clone(), annotation_event(task, labels(task).1, new)).await;
    }
    // A replica applies its webhooks in order: once task 5 is stored, so are the ones before.
    post(second_http.clone(), annotation_event(5, "dark", old)).await;
    eventually("the second replica's labels applied", || async {
        (labelled_set(&stack.grpc).await.len() == 5).then_some(())
    })
    .await;

    let newest = 1_796_032_800_000_002; // 2026-11-30T10:00:00.000002Z in microseconds
    let stored = labelled_set(&stack.grpc).await;
    for task in 1..=4u64 {
        let expected = (labels(task).1.to_owned(), newest);
        assert_eq!(stored[&task.to_string()], expected, "task {task}: the newest state must win");
    }
    assert!(
        second.log().iter().any(|line| line.contains("labels older than the stored ones were not applied")),
        "the late updates were refused by the core"
    );
    assert!(second.terminate().success());
    stack.stop();
}

/// Metric names in the expressions of the Grafana dashboard (`deploy/grafana/alps.json`), and
/// every `rate`/`increase` argument, which must be a counter-like series.
fn dashboard_queries() -> (std::collections::BTreeSet<String>, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/alps.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut expressions: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().unwrap().to_owned());
        }
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {} has a fixed data source", panel["title"]);
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            expressions.push(query.to_owned());
        }
    }
    assert!(expressions.len() >= 20, "{expressions:?}");
    let mut names = std::collections::BTreeSet::new();
    let mut rated = Vec::new();
    for expression in &expressions {
        let bytes = expression.as_bytes();
        let identifier = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        for (start, _) in expression.match_indices("alps_") {
            if start > 0 && identifier(bytes[start - 1]) {
                continue;
            }
            let end = (start..bytes.len()).find(|&i| !identifier(bytes[i])).unwrap_or(bytes.len());
            let name = &expression[start..end];
            names.insert(name.to_owned());
            let before = expression[..start].trim_end_matches(|c: char| c == '(' || c.is_whitespace());
            if before.ends_with("rate") || before.ends_with("increase") {
                rated.push(name.to_owned());
            }
        }
    }
    (names, rated)
}

/// Sample names the endpoints at `urls` export now (`name{labels} value` lines).
async fn exported_series(urls: &[String]) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for url in urls {
        let Ok(response) = http_client().get(url).send().await else { continue };
        let text = response.text().await.unwrap_or_default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            if let Some(name) = line.split(['{', ' ']).next() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grafana_dashboard_queries_only_metrics_the_processes_export() {
    let (wanted, rated) = dashboard_queries();
    for name in &rated {
        let counter_like = ["_total", "_bucket", "_sum", "_count"].iter().any(|suffix| name.ends_with(suffix));
        assert!(counter_like, "rate/increase over {name}, which is not a counter or histogram series");
    }

    // Exercise both processes so every family has a series: labels by webhook, a training run,
    // pool scoring and predictions.
    let mut stack = start_stack(&[], &[]).await;
    stack.ls.lock().unwrap().pool =
        (9..=12u64).map(|id| json!({"id": id, "data": {"image": format!("/data/upload/1/{id}.png")}})).collect();
    stack.setup().await;
    for id in 1..=8u64 {
        let task = annotated_task(id, if id % 2 == 0 { "bright" } else { "dark" });
        let event = json!({"action": "ANNOTATION_CREATED", "annotation": task["annotations"][0], "task": task,
                           "project": {"id": 1, "label_config": CONFIG, "token": "secret"}});
        assert_eq!(stack.post("/webhook", &event).await.0, 201);
    }
    stack.ls.lock().unwrap().tasks =
        (1..=8).map(|id| annotated_task(id, if id % 2 == 0 { "bright" } else { "dark" })).collect();
    assert_eq!(stack.post("/webhook", &json!({"action": "START_TRAINING", "project": {"id": 1}})).await.0, 201);
    let request = json!({"project": "1.1", "tasks": [{"id": 9, "data": {"image": "/data/upload/1/9.png"}}]});
    assert_eq!(stack.post("/predict", &request).await.0, 200);

    let urls = [format!("http://{}/metrics", stack.core.listening_addr("metrics")), stack.url("/metrics")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let exported = exported_series(&urls).await;
        let missing: Vec<&String> = wanted.iter().filter(|name| !exported.contains(*name)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries series no process exports: {missing:?}\nexported: {exported:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    stack.stop();
}
