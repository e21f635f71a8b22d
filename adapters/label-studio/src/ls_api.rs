//! Client of Label Studio's REST API: authentication, the labelled-task resync (§7) and
//! the project `model_version` update (§3.4).
//!
//! Personal access tokens (PATs) are JWT refresh tokens: they are exchanged at
//! `POST /api/token/refresh/` for an access token valid about 300 s, sent as `Bearer`, refreshed
//! when under 30 s remain and once after a 401. Legacy tokens are sent as `Token <key>`.
//!
//! Every answer updates the [`LinkState`] that `/health` reports as `label_studio` and the
//! `alps_ls_label_studio_link{state}` gauge: a refused token shows there, not only in the log.

use std::{
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header::HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

/// An access token is refreshed when fewer than this many seconds of validity remain.
const REFRESH_MARGIN_SECS: u64 = 30;

/// Time one REST call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`LabelStudio::watch`] checks that Label Studio accepts the API key.
pub const LINK_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The adapter's link to Label Studio as last seen, reported as `label_studio` by `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// `LABEL_STUDIO_URL` is not set.
    NotConfigured,
    /// No call has been answered yet.
    Unknown,
    /// The last call was answered and the credentials accepted (whatever the answer's status).
    Ok,
    /// Label Studio refused the API key: HTTP 401, or the PAT refresh refused.
    Unauthorized,
    /// The last call got no answer (connection refused, timeout, TLS failure).
    Unreachable,
}

impl LinkState {
    /// Every state, for the metric.
    pub const ALL: [Self; 5] = [Self::NotConfigured, Self::Unknown, Self::Ok, Self::Unauthorized, Self::Unreachable];

    /// The word `/health` and the metric use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::Unknown => "unknown",
            Self::Ok => "ok",
            Self::Unauthorized => "unauthorized",
            Self::Unreachable => "unreachable",
        }
    }

    fn from_u8(raw: u8) -> Self {
        Self::ALL.into_iter().find(|state| *state as u8 == raw).unwrap_or(Self::Unknown)
    }
}

/// The kind of `LABEL_STUDIO_API_KEY`.
#[derive(Clone, PartialEq, Eq)]
pub enum ApiKey {
    /// Personal access token: a JWT refresh token (three base64url segments).
    Pat(String),
    /// Legacy token: 40 hex digits, sent as `Authorization: Token <key>`.
    Legacy(String),
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(match self {
            Self::Pat(_) => "ApiKey::Pat(..)",
            Self::Legacy(_) => "ApiKey::Legacy(..)",
        })
    }
}

/// `LABEL_STUDIO_API_KEY` is neither a PAT nor a legacy token.
#[derive(Debug, thiserror::Error)]
#[error(
    "LABEL_STUDIO_API_KEY is neither a personal access token (JWT, three dot-separated segments) nor a legacy token (40 hex digits)"
)]
pub struct ApiKeyError;

impl ApiKey {
    /// Detects the key's kind.
    ///
    /// # Errors
    /// [`ApiKeyError`] for any other shape.
    pub fn parse(raw: &str) -> Result<Self, ApiKeyError> {
        let raw = raw.trim();
        let segments: Vec<&str> = raw.split('.').collect();
        let base64url =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if segments.len() == 3 && segments.iter().all(|segment| base64url(segment)) {
            Ok(Self::Pat(raw.to_owned()))
        } else if raw.len() == 40 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self::Legacy(raw.to_owned()))
        } else {
            Err(ApiKeyError)
        }
    }
}

/// A failed call to Label Studio.
#[derive(Debug, thiserror::Error)]
pub enum LsError {
    /// Label Studio answered with an error status.
    #[error("Label Studio answered HTTP {status} to {what}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Which call, without secrets.
        what: String,
    },
    /// The token refresh was refused (PAT revoked, rotated or from another Label Studio).
    #[error(
        "Label Studio refused the token refresh (HTTP {0}): is LABEL_STUDIO_API_KEY revoked, rotated, or from another Label Studio instance?"
    )]
    Refresh(StatusCode),
    /// Network error or unreadable answer.
    #[error("cannot reach Label Studio: {0}")]
    Transport(String),
}

impl From<reqwest::Error> for LsError {
    fn from(error: reqwest::Error) -> Self {
        // `without_url`: URLs may carry presign parameters; keep log lines short and secret-free.
        Self::Transport(error.without_url().to_string())
    }
}

/// An authenticated Label Studio REST client.
#[derive(Debug)]
pub struct LabelStudio {
    base: Url,
    key: ApiKey,
    http: reqwest::Client,
    access: Mutex<Option<AccessToken>>,
    link: AtomicU8,
}

#[derive(Debug)]
struct AccessToken {
    header: HeaderValue,
    expires_unix: u64,
}

/// One task as listed by `GET /api/tasks` with `fields=all`.
#[derive(Clone, Debug, Deserialize)]
pub struct Task {
    /// Task id.
    pub id: u64,
    /// Task data (unresolved media references).
    #[serde(default)]
    pub data: Value,
    /// The task's annotations.
    #[serde(default)]
    pub annotations: Vec<Value>,
}

/// One task of the unlabelled pool ([`LabelStudio::pool_page`]).
#[derive(Clone, Debug, Default)]
pub struct PoolTask {
    /// Task id.
    pub id: u64,
    /// Task data (unresolved media references).
    pub data: Value,
    /// Whether it carries a completed annotation after all (labelled since the filter ran).
    pub annotated: bool,
    /// The `model_version` and score of each stored prediction.
    pub versions: Vec<(String, Option<f32>)>,
}

/// A page of [`LabelStudio::pool_page`].
#[derive(Clone, Debug, Default)]
pub struct PoolPage {
    /// The tasks, ascending by id.
    pub tasks: Vec<PoolTask>,
    /// Unlabelled tasks above the page's cursor, this page included.
    pub total: u64,
}

/// Most labelled tasks a resync reads (each page is capped too; this bounds the pages).
pub const MAX_LABELLED_TASKS: usize = 1_000_000;

/// Largest Label Studio answer the adapter reads into memory, bytes.
pub const MAX_PAGE_BYTES: usize = 64 << 20;

/// Reads a JSON answer of at most [`MAX_PAGE_BYTES`] (every answer of Label Studio is read
/// this way: a huge or endless body must not exhaust the adapter's memory).
async fn capped_json<T: serde::de::DeserializeOwned>(mut response: Response) -> Result<T, LsError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(LsError::Transport(format!("answer larger than {MAX_PAGE_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|error| LsError::Transport(format!("unreadable JSON answer: {error}")))
}

#[derive(Deserialize)]
struct TaskPage {
    #[serde(default)]
    tasks: Vec<Task>,
}

impl LabelStudio {
    /// A client for Label Studio at `base` (its origin plus any path prefix). `http` must not
    /// follow redirects (media fetching handles them, see [`crate::media`]).
    pub fn new(base: Url, key: ApiKey, http: reqwest::Client) -> Self {
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Self { base, key, http, access: Mutex::new(None), link: AtomicU8::new(LinkState::Unknown as u8) }
    }

    /// The link's state as last seen.
    pub fn link(&self) -> LinkState {
        LinkState::from_u8(self.link.load(Ordering::Relaxed))
    }

    /// Records the outcome of a call: the state, the metrics, and one log line per change.
    fn record(&self, now: LinkState) {
        if now == LinkState::Unauthorized {
            crate::metrics::label_studio_refusal();
        }
        let before = LinkState::from_u8(self.link.swap(now as u8, Ordering::Relaxed));
        if before == now {
            return;
        }
        crate::metrics::label_studio_link(now);
        match now {
            LinkState::Unauthorized => tracing::warn!(
                from = before.as_str(),
                "Label Studio refused LABEL_STUDIO_API_KEY: is it revoked, rotated, or from another Label Studio instance?"
            ),
            LinkState::Unreachable => tracing::warn!(from = before.as_str(), "Label Studio is unreachable"),
            _ => tracing::info!(from = before.as_str(), to = now.as_str(), "Label Studio link changed"),
        }
    }

    /// Checks now and then every `interval` that Label Studio answers and accepts the API key
    /// (`GET /api/projects/?page_size=1`), so `/health` shows a refused key before any task needs
    /// it. Runs until the process ends.
    pub async fn watch(self: std::sync::Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let url = self.api_url("api/projects/");
            // The outcome is recorded by `send`; the answer itself is not needed.
            if let Err(error) =
                self.send(|http| http.get(url.clone()).query(&[("page_size", "1")]).timeout(API_TIMEOUT)).await
            {
                tracing::debug!(%error, "Label Studio link check failed");
            }
        }
    }

    /// Whether `url` is on Label Studio's exact origin (scheme, host, port): only such URLs get
    /// the credentials.
    pub fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// Resolves `path` (e.g. `api/tasks`, `/data/upload/1/a.png`) against the base URL. `None`
    /// unless the result is on Label Studio's origin: task data such as `/\\evil.com/a.png`
    /// must never turn into a URL that would receive the credentials.
    pub fn url(&self, path: &str) -> Option<Url> {
        let url = self.base.join(path.trim_start_matches('/')).ok()?;
        self.same_origin(&url).then_some(url)
    }

    /// [`url`](Self::url) for the adapter's own API paths, which are constants.
    fn api_url(&self, path: &str) -> Url {
        self.url(path).expect("API paths are plain relative paths")
    }

    /// Sends a request built by `build` with the credentials; after a 401 the access token is
    /// refreshed and the request sent once more.
    ///
    /// # Errors
    /// [`LsError::Transport`] on network errors, [`LsError::Refresh`] if the PAT is refused.
    pub async fn send(&self, build: impl Fn(&reqwest::Client) -> RequestBuilder) -> Result<Response, LsError> {
        let result = self.send_once_refreshed(build).await;
        self.record(match &result {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => LinkState::Unauthorized,
            Ok(_) => LinkState::Ok,
            Err(LsError::Refresh(status)) if status.is_client_error() => LinkState::Unauthorized,
            Err(LsError::Refresh(_)) => LinkState::Unreachable,
            Err(LsError::Transport(_) | LsError::Status { .. }) => LinkState::Unreachable,
        });
        result
    }

    async fn send_once_refreshed(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, LsError> {
        let response = build(&self.http).header("Authorization", self.authorization(false).await?).send().await?;
        if response.status() != StatusCode::UNAUTHORIZED || matches!(self.key, ApiKey::Legacy(_)) {
            return Ok(response);
        }
        tracing::info!("Label Studio answered 401; refreshing the access token once");
        Ok(build(&self.http).header("Authorization", self.authorization(true).await?).send().await?)
    }

    /// The `Authorization` header value, refreshing the access token when needed (one refresh in
    /// flight at a time: the lock is held across it).
    async fn authorization(&self, force_refresh: bool) -> Result<HeaderValue, LsError> {
        let pat = match &self.key {
            ApiKey::Legacy(key) => return Ok(secret_header(&format!("Token {key}"))),
            ApiKey::Pat(pat) => pat,
        };
        let mut access = self.access.lock().await;
        let fresh = access.as_ref().is_some_and(|token| token.expires_unix > unix_now() + REFRESH_MARGIN_SECS);
        if force_refresh || !fresh {
            *access = Some(self.refresh(pat).await?);
        }
        Ok(access.as_ref().expect("just set").header.clone())
    }

    async fn refresh(&self, pat: &str) -> Result<AccessToken, LsError> {
        #[derive(Deserialize)]
        struct Refreshed {
            access: String,
        }
        let response = self
            .http
            .post(self.api_url("api/token/refresh/"))
            .json(&json!({"refresh": pat}))
            .timeout(API_TIMEOUT)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(LsError::Refresh(response.status()));
        }
        let access = capped_json::<Refreshed>(response).await?.access;
        crate::metrics::token_refreshed();
        // No signature check: the token is only ever sent back to the Label Studio that issued it.
        let expires_unix = jwt_expiry(&access).unwrap_or_else(|| unix_now() + 60);
        Ok(AccessToken { header: secret_header(&format!("Bearer {access}")), expires_unix })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Response, LsError> {
        let url = self.api_url(path);
        let response = self
            .send(|http| {
                let request = http.request(method.clone(), url.clone()).query(query).timeout(API_TIMEOUT);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(LsError::Status { status: response.status(), what: format!("{method} /{path}") })
        }
    }

    /// Every task of `project` with at least one annotation, with its annotations (paged
    /// task list with a `total_annotations > 0` filter).
    ///
    /// # Errors
    /// [`LsError`] if a page cannot be read.
    pub async fn annotated_tasks(&self, project: u64) -> Result<Vec<Task>, LsError> {
        let filter = json!({"filters": {"conjunction": "and", "items": [{
            "filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}});
        let mut tasks = Vec::new();
        for page in 1.. {
            let query = [
                ("project", project.to_string()),
                ("fields", "all".to_owned()),
                ("page", page.to_string()),
                ("page_size", "100".to_owned()),
                ("query", filter.to_string()),
            ];
            let response = match self.call(Method::GET, "api/tasks", &query, None).await {
                // A page past the end answers 404.
                Err(LsError::Status { status: StatusCode::NOT_FOUND, .. }) => break,
                other => other?,
            };
            let page: TaskPage = capped_json(response).await?;
            if page.tasks.is_empty() {
                break;
            }
            tasks.extend(page.tasks);
            if tasks.len() > MAX_LABELLED_TASKS {
                return Err(LsError::Transport(format!("more than {MAX_LABELLED_TASKS} labelled tasks")));
            }
        }
        Ok(tasks)
    }

    /// One task with its annotations.
    ///
    /// # Errors
    /// [`LsError`]; a deleted task is `Status { 404 }`.
    pub async fn task(&self, task: u64) -> Result<Task, LsError> {
        capped_json(self.call(Method::GET, &format!("api/tasks/{task}"), &[], None).await?).await
    }

    /// The project's `model_version` (drives Label Studio's score column and uncertainty sampling).
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn project_model_version(&self, project: u64) -> Result<String, LsError> {
        let body: Value =
            capped_json(self.call(Method::GET, &format!("api/projects/{project}"), &[], None).await?).await?;
        Ok(body["model_version"].as_str().unwrap_or_default().to_owned())
    }

    /// Model versions that have stored predictions in the project, with their counts.
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn prediction_versions(&self, project: u64) -> Result<Vec<String>, LsError> {
        let path = format!("api/projects/{project}/model-versions");
        let body: Value = capped_json(self.call(Method::GET, &path, &[], None).await?).await?;
        Ok(body.as_object().map(|versions| versions.keys().cloned().collect()).unwrap_or_default())
    }

    /// Titles of the ML backends connected to the project.
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn backend_titles(&self, project: u64) -> Result<Vec<String>, LsError> {
        let query = [("project", project.to_string())];
        let body: Value = capped_json(self.call(Method::GET, "api/ml", &query, None).await?).await?;
        let titles = body.as_array().into_iter().flatten().filter_map(|backend| backend["title"].as_str());
        Ok(titles.map(str::to_owned).collect())
    }

    /// One page of the project's unlabelled pool (tasks without a completed annotation), with the
    /// model versions of their stored predictions: tasks with ids above `after`, ascending by id,
    /// at most `page_size` (keyset paging, so tasks labelled or imported meanwhile shift nothing).
    /// `total` is the number of unlabelled tasks above `after`.
    ///
    /// # Errors
    /// [`LsError`]; an answer over [`MAX_PAGE_BYTES`] is a [`LsError::Transport`].
    pub async fn pool_page(&self, project: u64, after: u64, page_size: u32) -> Result<PoolPage, LsError> {
        let query = json!({
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
                {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after},
            ]},
            "ordering": ["tasks:id"],
        });
        let query = [
            ("project", project.to_string()),
            ("fields", "all".to_owned()),
            ("resolve_uri", "false".to_owned()),
            ("page", "1".to_owned()),
            ("page_size", page_size.to_string()),
            ("query", query.to_string()),
        ];
        let response = match self.call(Method::GET, "api/tasks", &query, None).await {
            Err(LsError::Status { status: StatusCode::NOT_FOUND, .. }) => return Ok(PoolPage::default()),
            other => other?,
        };
        let body: Value = capped_json(response).await?;
        let tasks = body["tasks"].as_array().map(Vec::as_slice).unwrap_or_default();
        let tasks = tasks
            .iter()
            .filter_map(|task| {
                let annotated = task["annotations"].as_array().is_some_and(|list| {
                    list.iter().any(|annotation| annotation["was_cancelled"].as_bool() != Some(true))
                });
                Some(PoolTask {
                    id: task["id"].as_u64()?,
                    data: task["data"].clone(),
                    annotated,
                    versions: task["predictions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|prediction| {
                            let version = prediction["model_version"].as_str()?.to_owned();
                            Some((version, prediction["score"].as_f64().map(|score| score as f32)))
                        })
                        .collect(),
                })
            })
            .collect();
        Ok(PoolPage { tasks, total: body["total"].as_u64().unwrap_or(0) })
    }

    /// Stores predictions in bulk (`POST /api/projects/{id}/import/predictions`, a list of
    /// `{"task", "result", "score", "model_version"}`); returns how many Label Studio created.
    ///
    /// # Errors
    /// [`LsError`]; Label Studio answers 400 for the whole list if one task is not in the project.
    pub async fn import_predictions(&self, project: u64, predictions: &[Value]) -> Result<u64, LsError> {
        let path = format!("api/projects/{project}/import/predictions");
        let body = Value::Array(predictions.to_vec());
        let answer: Value = capped_json(self.call(Method::POST, &path, &[], Some(&body)).await?).await?;
        Ok(answer["created"].as_u64().unwrap_or(0))
    }

    /// The titles of the project's Data Manager tabs (`GET /api/dm/views`).
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn view_titles(&self, project: u64) -> Result<Vec<String>, LsError> {
        let query = [("project", project.to_string())];
        let body: Value = capped_json(self.call(Method::GET, "api/dm/views/", &query, None).await?).await?;
        let titles = body.as_array().into_iter().flatten().filter_map(|view| view["data"]["title"].as_str());
        Ok(titles.map(str::to_owned).collect())
    }

    /// Creates a Data Manager tab with `data` (`title`, `filters`, `ordering`).
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn create_view(&self, project: u64, data: &Value) -> Result<(), LsError> {
        let body = json!({"project": project, "data": data});
        self.call(Method::POST, "api/dm/views/", &[], Some(&body)).await.map(drop)
    }

    /// The ids of the task's predictions of `model_version`.
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn prediction_ids(&self, task: u64, model_version: &str) -> Result<Vec<u64>, LsError> {
        let query = [("task", task.to_string())];
        let body: Value = capped_json(self.call(Method::GET, "api/predictions/", &query, None).await?).await?;
        let of_version = body.as_array().into_iter().flatten().filter(|p| p["model_version"] == model_version);
        Ok(of_version.filter_map(|prediction| prediction["id"].as_u64()).collect())
    }

    /// Sets the score of a stored prediction.
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn set_prediction_score(&self, prediction: u64, score: f32) -> Result<(), LsError> {
        let body = json!({"score": score});
        self.call(Method::PATCH, &format!("api/predictions/{prediction}/"), &[], Some(&body)).await.map(drop)
    }

    /// Sets the project's `model_version`.
    ///
    /// # Errors
    /// [`LsError`]; Label Studio answers 400 unless a prediction of `version` is stored.
    pub async fn set_project_model_version(&self, project: u64, version: &str) -> Result<(), LsError> {
        let body = json!({"model_version": version});
        self.call(Method::PATCH, &format!("api/projects/{project}"), &[], Some(&body)).await.map(drop)
    }
}

fn secret_header(value: &str) -> HeaderValue {
    let mut header = HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    header.set_sensitive(true);
    header
}

/// `exp` (Unix seconds) of a JWT's payload, unverified.
fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["exp"].as_u64()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_kinds_are_detected() {
        assert!(matches!(ApiKey::parse("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln").unwrap(), ApiKey::Pat(_)));
        assert!(matches!(ApiKey::parse(&"ab12".repeat(10)).unwrap(), ApiKey::Legacy(_)));
        for bad in ["", "abc", "a.b", "a..b", &"g".repeat(40), "a.b.c d"] {
            assert!(ApiKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = ApiKey::parse(&"ab12".repeat(10)).unwrap();
        assert!(!format!("{key:?}").contains("ab12"));
    }

    #[test]
    fn jwt_expiry_reads_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"token_type":"access","exp":1764489300}"#);
        assert_eq!(jwt_expiry(&format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig")), Some(1_764_489_300));
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }

    /// A Label Studio stand-in that answers every request with `status`.
    async fn answering(status: u16) -> Url {
        let app =
            axum::Router::new().fallback(move || async move { axum::http::StatusCode::from_u16(status).unwrap() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    async fn link_after_one_call(base: Url, key: &str) -> LinkState {
        let ls = LabelStudio::new(base, ApiKey::parse(key).unwrap(), crate::http_client().unwrap());
        assert_eq!(ls.link(), LinkState::Unknown);
        let url = ls.api_url("api/projects/");
        let _ = ls.send(|http| http.get(url.clone())).await;
        ls.link()
    }

    #[tokio::test]
    async fn refused_keys_show_in_the_link_state() {
        let pat = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln";
        let legacy = "ab12".repeat(10);
        // PAT: the refresh is refused; legacy: the call itself.
        assert_eq!(link_after_one_call(answering(401).await, pat).await, LinkState::Unauthorized);
        assert_eq!(link_after_one_call(answering(401).await, &legacy).await, LinkState::Unauthorized);
        // Answers other than 401 mean the key was accepted (a 404 is about the path).
        assert_eq!(link_after_one_call(answering(404).await, &legacy).await, LinkState::Ok);
        // A refresh failing with a server error is not a refused key.
        assert_eq!(link_after_one_call(answering(502).await, pat).await, LinkState::Unreachable);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let closed = format!("http://{closed}/").parse().unwrap();
        assert_eq!(link_after_one_call(closed, &legacy).await, LinkState::Unreachable);
    }

    #[test]
    fn link_states_serialise_as_their_words() {
        for state in LinkState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(LinkState::from_u8(state as u8), state);
        }
    }

    #[test]
    fn origin_and_paths_keep_the_prefix() {
        let ls = LabelStudio::new(
            "http://ls:8080/prefix".parse().unwrap(),
            ApiKey::parse(&"ab12".repeat(10)).unwrap(),
            crate::http_client().unwrap(),
        );
        assert_eq!(ls.url("/data/upload/1/a.png").unwrap().as_str(), "http://ls:8080/prefix/data/upload/1/a.png");
        for escape in ["/\\/evil.com/a.png", "/\t//evil.com/a.png", "/\\/a b"] {
            assert_eq!(ls.url(escape), None, "{escape:?}");
        }
        assert!(ls.same_origin(&"http://ls:8080/other".parse().unwrap()));
        assert!(!ls.same_origin(&"http://ls:8081/prefix".parse().unwrap()));
        assert!(!ls.same_origin(&"https://ls:8080/prefix".parse().unwrap()));
    }
}
