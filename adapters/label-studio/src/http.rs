//! The HTTP side: Label Studio's ML-backend routes (`/health`, `/setup`, `/predict`, `/webhook`,
//! `/versions`, the legacy `/train` and `/is_training`) and the adapter's own `/status` and
//! `/metrics`.
//!
//! Every response is JSON (`/metrics` excepted), errors included, and errors carry a reason phrase:
//! Label Studio drops error bodies and shows only `"<code> Client Error: <reason> for url: ..."`.
//! `/health` and `/setup` answer from in-memory state; webhooks queue their work and return.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, MatchedPath, Query, Request, State},
    http::{HeaderValue, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::{
    config::ScoreMode,
    core_client::Core,
    core_link::CoreStatus,
    label_config::{ConfigCache, LabelConfig, SUPPORTED_EXAMPLE, UnsupportedConfig},
    labels::{Labelling, WEBHOOK_ACTIONS, Work, labels_of, webhook_work},
    ls_api::{LabelStudio, LinkState, Task},
    media::Media,
    predict::{PredictContext, PredictSettings, TaskInput, predict_tasks},
    projects::{OptionsError, ProjectLink, Projects, STATELESS_PROJECT, parse_uid},
    scoring::Scoring,
    training::TrainingProgress,
};

/// Time `/setup` waits for the core on a project's first contact after a start (Label Studio
/// allows `/setup` 3 s), so that it answers the trained version, never a stale `-untrained`.
const SETUP_CORE_WAIT: std::time::Duration = std::time::Duration::from_millis(2000);

/// Time `/is_training` and `/status` wait for the core's job list.
const JOBS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Largest `/predict` and `/train` body, bytes: "Retrieve predictions" on a whole project and
/// legacy `/train` send every task in one body.
const MAX_TASKS_BODY_BYTES: usize = 256 << 20;

/// Largest body of the other routes (a webhook event, a `/setup` with its label config), bytes.
const MAX_BODY_BYTES: usize = 8 << 20;

/// Header that carries `--webhook-secret` (`Authorization: Bearer <secret>` works too).
pub const WEBHOOK_SECRET_HEADER: &str = "x-alps-webhook-secret";

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Latest core status from [`crate::core_link::watch_core`].
    pub core_status: watch::Receiver<CoreStatus>,
    /// Default score mode, reported by `/health`.
    pub score_mode: ScoreMode,
    /// alps-server.
    pub core: Core,
    /// Per-project state.
    pub projects: Arc<Projects>,
    /// Labelled-set and training workers.
    pub labelling: Arc<Labelling>,
    /// Background pool scoring.
    pub scoring: Arc<Scoring>,
    /// Image downloads.
    pub media: Arc<Media>,
    /// Parsed label configs.
    pub configs: Arc<ConfigCache>,
    /// How `/predict` divides its work.
    pub predict: PredictSettings,
    /// `user:password` of the optional Basic auth.
    pub basic_auth: Option<Secret>,
    /// The Label Studio API client, whose link state `/health` reports.
    pub label_studio: Option<Arc<LabelStudio>>,
    /// `--webhook-secret`, if set.
    pub webhook_secret: Option<Secret>,
}

/// A secret the adapter checks (the webhook secret, the Basic auth `user:password`), kept as its
/// SHA-256 digest so that the comparison takes the same time whatever the length of the guess.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    /// Keeps the digest of `secret`.
    pub fn new(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Compares `given` in constant time.
    fn matches(&self, given: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(given).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// An error response: status, reason phrase and JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self { status, body: json!({"error": reason}), reason }
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }
}

impl From<UnsupportedConfig> for ApiError {
    fn from(error: UnsupportedConfig) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: format!("Unsupported label config: {}", error.cause),
            body: json!({"error": "unsupported_label_config", "detail": error.detail, "supported": SUPPORTED_EXAMPLE}),
        }
    }
}

impl From<OptionsError> for ApiError {
    fn from(error: OptionsError) -> Self {
        Self::bad_request(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason_phrase(&self.reason).into_bytes()) {
            response.extensions_mut().insert(reason);
        }
        response
    }
}

/// A reason phrase: printable ASCII, no CR/LF, at most 120 characters.
fn reason_phrase(text: &str) -> String {
    let printable: String = text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    printable.chars().take(120).collect()
}

/// Body of `GET /health`. Label Studio reads only `status`; the rest is for humans.
#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    model_class: &'static str,
    version: &'static str,
    model_server: CoreStatus,
    label_studio: LinkState,
    score_mode: ScoreMode,
}

/// The adapter's routes, under `base_path` ("" or "/prefix").
pub fn router(state: AppState, base_path: &str) -> Router {
    let authenticated = Router::new()
        .route("/", get(health))
        .route("/health", get(health))
        .route("/setup", post(setup))
        .route("/predict", post(predict).layer(DefaultBodyLimit::max(MAX_TASKS_BODY_BYTES)))
        .route("/versions", get(versions).post(versions_of_project))
        .route("/train", post(train).layer(DefaultBodyLimit::max(MAX_TASKS_BODY_BYTES)))
        .route("/is_training", get(is_training))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), basic_auth));
    // Label Studio's event webhooks carry no Basic auth; they may carry a secret header.
    let webhook_route = post(webhook).route_layer(middleware::from_fn_with_state(state.clone(), webhook_auth));
    let routes = authenticated
        .route("/webhook", webhook_route)
        .route_layer(middleware::from_fn(count_requests))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    if base_path.is_empty() { routes } else { Router::new().nest(base_path, routes).fallback(not_found) }
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned()).unwrap_or_default();
    let response = next.run(request).await;
    crate::metrics::request(&route, response.status().as_u16());
    response
}

/// Whether the request carries the configured Basic auth (false when none is configured).
fn has_basic_auth(state: &AppState, headers: &header::HeaderMap) -> bool {
    let Some(expected) = &state.basic_auth else { return false };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .unwrap_or_default();
    expected.matches(&given)
}

/// Checks Basic auth when configured; 401 with `WWW-Authenticate` otherwise.
async fn basic_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.basic_auth.is_none() || has_basic_auth(&state, request.headers()) {
        return next.run(request).await;
    }
    tracing::info!(uri = %request.uri(), "rejected request without valid Basic auth");
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "Basic auth required").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"alps-label-studio\""));
    response
}

/// With `--webhook-secret`, `POST /webhook` needs the secret in [`WEBHOOK_SECRET_HEADER`] or as
/// `Authorization: Bearer <secret>`, or the configured Basic auth (Label Studio's Start training
/// button posts START_TRAINING with the ML backend's Basic auth, not with the webhook's headers).
/// Anything else is answered 401 before the body is read.
async fn webhook_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(secret) = &state.webhook_secret else { return next.run(request).await };
    let headers = request.headers();
    let header_secret = headers.get(WEBHOOK_SECRET_HEADER).map(HeaderValue::as_bytes);
    let bearer = headers.get(header::AUTHORIZATION).and_then(|value| {
        let (scheme, credentials) = value.as_bytes().split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(credentials)
    });
    let secret_given = header_secret.or(bearer);
    if secret_given.is_some_and(|given| secret.matches(given)) || has_basic_auth(&state, headers) {
        return next.run(request).await;
    }
    crate::metrics::webhook_refused();
    tracing::warn!(secret_given = secret_given.is_some(), "refused a webhook without the right secret");
    let reason = "Webhook secret missing or wrong";
    let detail = format!("set the webhook's header {WEBHOOK_SECRET_HEADER}: <ALPS_LS_WEBHOOK_SECRET> in Label Studio");
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        reason: reason.to_owned(),
        body: json!({"error": reason, "detail": detail}),
    }
    .into_response()
}

/// `GET /` and `GET /health`: 200 while the process runs, whatever the core's state.
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "UP",
        model_class: "alps-label-studio",
        version: env!("CARGO_PKG_VERSION"),
        model_server: match *state.core_status.borrow() {
            // A token that may read but not create projects passes the link's own checks.
            CoreStatus::Ready if state.projects.setup_refused() => CoreStatus::Unauthorized,
            status => status,
        },
        label_studio: state.label_studio.as_ref().map_or(LinkState::NotConfigured, |ls| ls.link()),
        score_mode: state.score_mode,
    })
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("Malformed JSON body: {error}")))?;
    if value.is_object() { Ok(value) } else { Err(ApiError::bad_request("JSON body must be an object")) }
}

/// `extra_params` as an object: Label Studio stores what the user typed, which may be a JSON string.
fn extra_params(body: &Value) -> Option<Value> {
    match &body["extra_params"] {
        Value::Object(_) => Some(body["extra_params"].clone()),
        Value::String(text) => serde_json::from_str::<Value>(text).ok().filter(Value::is_object),
        _ => None,
    }
}

/// The Label Studio project id of a request's `project` uid; [`STATELESS_PROJECT`] without one.
///
/// # Errors
/// 400 for a `project` that is present but not a project uid.
fn project_id(uid: &Value) -> Result<u64, ApiError> {
    match uid {
        Value::Null => Ok(STATELESS_PROJECT),
        uid => parse_uid(uid).ok_or_else(|| ApiError::bad_request(format!("project {uid} is not a project uid"))),
    }
}

fn require_core(state: &AppState) -> Result<(), ApiError> {
    match *state.core_status.borrow() {
        CoreStatus::Unreachable => Err(ApiError::unavailable("Model server unreachable")),
        CoreStatus::Unauthorized => Err(ApiError::unavailable("Model server refused the adapter's token")),
        CoreStatus::Ready | CoreStatus::Loading => Ok(()),
    }
}

/// `POST /setup`: validates the config, records the project's options and answers the
/// model version from cache.
async fn setup(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = parse_json(&body)?;
    let ls_id = project_id(&body["project"])?;
    let schema = body["schema"].as_str().or(body["label_config"].as_str()).unwrap_or_default();
    let config = state.configs.get(schema).inspect_err(|error| {
        tracing::info!(project = ls_id, cause = %error.cause, "unsupported label config at /setup");
    })?;
    let first_contact = state.projects.get(ls_id).is_none();
    let mut link = state.projects.observe(ls_id, config, extra_params(&body).as_ref())?;
    if first_contact && ls_id != STATELESS_PROJECT {
        // Annotations made while the adapter was down reached no webhook.
        state.labelling.submit(ls_id, Work::Resync { done: None });
    }
    require_core(&state)?;
    if first_contact && ls_id != STATELESS_PROJECT {
        // Right after a start the core's active version and heuristic are not known yet: ask.
        match tokio::time::timeout(SETUP_CORE_WAIT, state.projects.ensure(ls_id)).await {
            Ok(Ok(ensured)) => link = ensured,
            Ok(Err(status)) => tracing::warn!(project = ls_id, %status, "cannot read the ALPS project at /setup"),
            Err(_elapsed) => tracing::warn!(project = ls_id, "the core did not answer within /setup's budget"),
        }
    }
    Ok(Json(json!({"model_version": link.model_version()})))
}

/// `POST /predict`: one entry per task, in order.
async fn predict(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let deadline = tokio::time::Instant::now() + state.predict.budget;
    let mut body = parse_json(&body)?;
    let tasks = match body["tasks"].take() {
        Value::Array(tasks) => tasks,
        task @ Value::Object(_) => vec![task],
        _ => return Err(ApiError::bad_request("Missing tasks: expected a list of task objects")),
    };
    let ls_id = match (&body["project"], tasks.first().map(|task| &task["project"])) {
        (Value::Null, Some(Value::Number(number))) => number.as_u64().unwrap_or(STATELESS_PROJECT),
        (uid, _) => project_id(uid)?,
    };
    project_for(&state, ls_id, body["label_config"].as_str())?;
    require_core(&state)?;
    let ensured = tokio::time::timeout_at(deadline, state.projects.ensure(ls_id)).await.unwrap_or_else(|_elapsed| {
        Err(tonic::Status::unavailable("the model was not ready within the prediction budget"))
    });
    let link = ensured.map_err(|status| {
        tracing::warn!(project = ls_id, %status, "cannot prepare the model");
        match status.code() {
            tonic::Code::Unavailable => ApiError::unavailable("Model server unreachable"),
            _ => ApiError::unavailable(format!("No usable model for project {ls_id}: {}", status.message())),
        }
    })?;
    let inputs = tasks.iter().map(|task| task_input(task, &link.config)).collect();
    let spec = state.scoring.spec(&link).await;
    let context = PredictContext {
        core: state.core.clone(),
        media: Arc::clone(&state.media),
        scoring: Arc::clone(&state.scoring),
    };
    let predicted = predict_tasks(&context, &link, &spec, inputs, state.predict, deadline).await;
    if let Some(alps_version) = &predicted.alps_version {
        state.projects.set_active_version(ls_id, alps_version);
    }
    Ok(Json(json!({"results": predicted.entries, "model_version": predicted.model_version})))
}

/// The project's link, updated with `label_config` when the request carries one.
fn project_for(state: &AppState, ls_id: u64, label_config: Option<&str>) -> Result<ProjectLink, ApiError> {
    match label_config {
        Some(xml) => Ok(state.projects.observe(ls_id, state.configs.get(xml)?, None)?),
        None => state
            .projects
            .get(ls_id)
            .ok_or_else(|| ApiError::bad_request(format!("Missing label_config and project {ls_id} was never set up"))),
    }
}

fn task_input(task: &Value, config: &LabelConfig) -> TaskInput {
    TaskInput {
        id: task["id"].as_u64().unwrap_or(0),
        reference: task["data"][&config.image_key].as_str().map(str::to_owned),
    }
}

/// `POST /webhook`: queues the event's work and answers at once.
async fn webhook(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_json(&body)?;
    let action = body["action"].as_str().ok_or_else(|| ApiError::bad_request("Missing action"))?;
    let ignored = || Ok((StatusCode::OK, Json(json!({"status": "ignored"}))).into_response());
    let Some(action) = WEBHOOK_ACTIONS.into_iter().find(|handled| *handled == action) else {
        crate::metrics::webhook("other");
        return ignored();
    };
    crate::metrics::webhook(action);
    let project = &body["project"];
    let ls_id = project["id"]
        .as_u64()
        .or_else(|| parse_uid(project))
        .ok_or_else(|| ApiError::bad_request(format!("Missing project id in {action} event")))?;
    // Webhooks carry no credentials: they may only act on projects Label Studio set up through
    // the authenticated routes (a missed event is caught by the resync of the first /setup).
    if !state.projects.is_known(ls_id) {
        tracing::info!(project = ls_id, action, "webhook for a project never set up; ignored");
        return ignored();
    }
    let link = project_for(&state, ls_id, project["label_config"].as_str()).inspect_err(|error| {
        tracing::warn!(project = ls_id, action, reason = error.reason, "webhook for a project that cannot be served");
    })?;
    for work in webhook_work(action, &body, &link.config) {
        state.labelling.submit(ls_id, work);
    }
    tracing::info!(project = ls_id, action, "webhook queued");
    Ok((StatusCode::CREATED, Json(json!({"status": "ok"}))).into_response())
}

/// `GET /versions`: every version served, newest first, over all projects.
async fn versions(State(state): State<AppState>) -> Json<Value> {
    let ids = state.projects.ids();
    Json(json!({"versions": state.projects.served_versions(&ids).await}))
}

/// `POST /versions {"project": uid}` (LS 1.0.8-era clients): one project's versions.
async fn versions_of_project(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = parse_json(&body)?;
    let ls_id = parse_uid(&body["project"]).ok_or_else(|| ApiError::bad_request("Missing project"))?;
    Ok(Json(json!({"versions": state.projects.served_versions(&[ls_id]).await})))
}

/// Legacy `POST /train`: the body is the complete labelled set; it replaces the stored
/// set and training is queued.
async fn train(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_json(&body)?;
    let ls_id = parse_uid(&body["project"]).ok_or_else(|| ApiError::bad_request("Missing project"))?;
    let link = project_for(&state, ls_id, body["label_config"].as_str())?;
    let annotated = body.get("annotations").or_else(|| body.get("completions")).cloned().unwrap_or(Value::Null);
    let tasks: Vec<Task> = serde_json::from_value(annotated)
        .map_err(|error| ApiError::bad_request(format!("annotations must be a list of tasks: {error}")))?;
    let labels = labels_of(&tasks, &link.config);
    tracing::info!(project = ls_id, tasks = tasks.len(), labelled = labels.len(), "legacy /train");
    state.labelling.submit(ls_id, Work::Replace(labels));
    state.labelling.submit(ls_id, Work::Train { resync: false });
    Ok((StatusCode::CREATED, Json(json!({"status": "ok"}))).into_response())
}

/// Legacy `GET /is_training?project=<uid>`.
async fn is_training(
    State(state): State<AppState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let uid = query.get("project").map(|project| Value::String(project.clone())).unwrap_or_default();
    let ls_id = parse_uid(&uid).ok_or_else(|| ApiError::bad_request("Missing project"))?;
    let version = state.projects.get(ls_id).map(|link| link.model_version()).unwrap_or_default();
    let training = latest_job(&state, ls_id).await.is_some_and(|job| job.is_active());
    Ok(Json(json!({"is_training": training, "model_version": version, "backend": "none"})))
}

/// The project's newest training job, however it was started: the core's job list, or this
/// adapter's own record when the core does not answer in time.
async fn latest_job(state: &AppState, ls_id: u64) -> Option<TrainingProgress> {
    let alps_id = crate::projects::alps_id(ls_id);
    match tokio::time::timeout(JOBS_TIMEOUT, state.core.training_jobs(&alps_id, 1)).await {
        Ok(Ok(jobs)) => jobs.first().map(TrainingProgress::of).or_else(|| state.labelling.board().get(ls_id)),
        _ => state.labelling.board().get(ls_id),
    }
}

/// `GET /status`: per Label Studio project, the scoring version, why its ALPS project could not
/// be created or updated (`setup_error`, null when it could), pool scoring progress (tasks
/// scored / total, ETA) and the latest training job (epoch, ETA).
async fn status(State(state): State<AppState>) -> Json<Value> {
    let pools: std::collections::HashMap<u64, crate::scoring::PoolProgress> =
        state.scoring.status().into_iter().collect();
    let mut ids = state.projects.ids();
    ids.sort_unstable();
    let mut projects = Vec::new();
    for ls_id in ids {
        let Some(link) = state.projects.get(ls_id) else { continue };
        projects.push(json!({
            "project": ls_id,
            "model": link.model.name,
            "score_mode": link.score_mode,
            "heuristic": link.heuristic(),
            "model_version": link.model_version(),
            "setup_error": state.projects.setup_error(ls_id),
            "pool": pools.get(&ls_id),
            "training": latest_job(&state, ls_id).await,
        }));
    }
    Json(json!({"projects": projects}))
}

/// `GET /metrics`: Prometheus text.
async fn metrics() -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], crate::metrics::render()).into_response()
}

/// 404 JSON for routes the adapter does not serve (including `/job_status`, `/validate`,
/// `/duplicate_model` and `/delete`, which only exist in Label Studio's client code).
async fn not_found(method: Method, uri: Uri) -> Response {
    tracing::info!(%method, %uri, "unknown route");
    let body = json!({"error": "not_found", "detail": format!("no route {method} {}", uri.path())});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrases_are_printable_and_short() {
        assert_eq!(reason_phrase("a\r\nb"), "a??b");
        assert_eq!(reason_phrase(&"x".repeat(300)).len(), 120);
        assert_eq!(
            reason_phrase("Unsupported label config: 2 Choices controls"),
            "Unsupported label config: 2 Choices controls"
        );
    }

    #[test]
    fn webhook_secrets_match_only_exactly() {
        let secret = Secret::new("0123456789abcdef");
        assert!(secret.matches(b"0123456789abcdef"));
        for wrong in [&b""[..], b"0123456789abcde", b"0123456789abcdef ", b"0123456789ABCDEF"] {
            assert!(!secret.matches(wrong), "{wrong:?}");
        }
        assert!(!format!("{secret:?}").contains("0123"));
    }

    #[test]
    fn extra_params_may_be_json_text() {
        assert_eq!(extra_params(&json!({"extra_params": {"model": "a"}})), Some(json!({"model": "a"})));
        assert_eq!(extra_params(&json!({"extra_params": "{\"model\": \"a\"}"})), Some(json!({"model": "a"})));
        assert_eq!(extra_params(&json!({"extra_params": null})), None);
        assert_eq!(extra_params(&json!({"extra_params": "not json"})), None);
    }
}
