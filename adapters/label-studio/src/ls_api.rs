//! Client of Label Studio's REST API: authentication (spec §4.2), the labelled-task resync (§7) and
//! the project `model_version` update (§3.4).
//!
//! Personal access tokens (PATs) are JWT refresh tokens: they are exchanged at
//! `POST /api/token/refresh/` for an access token valid about 300 s, sent as `Bearer`, refreshed
//! when under 30 s remain and once after a 401. Legacy tokens are sent as `Token <key>`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header::HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

/// An access token is refreshed when fewer than this many seconds of validity remain.
const REFRESH_MARGIN_SECS: u64 = 30;

/// Time one REST call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Detects the key's kind (spec §4.2).
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
        Self { base, key, http, access: Mutex::new(None) }
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
        let access = response.json::<Refreshed>().await?.access;
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

    /// Every task of `project` with at least one annotation, with its annotations (spec §7, paged
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
            let page: TaskPage = response.json().await?;
            if page.tasks.is_empty() {
                break;
            }
            tasks.extend(page.tasks);
        }
        Ok(tasks)
    }

    /// One task with its annotations.
    ///
    /// # Errors
    /// [`LsError`]; a deleted task is `Status { 404 }`.
    pub async fn task(&self, task: u64) -> Result<Task, LsError> {
        Ok(self.call(Method::GET, &format!("api/tasks/{task}"), &[], None).await?.json().await?)
    }

    /// The project's `model_version` (drives Label Studio's score column and uncertainty sampling).
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn project_model_version(&self, project: u64) -> Result<String, LsError> {
        let body: Value = self.call(Method::GET, &format!("api/projects/{project}"), &[], None).await?.json().await?;
        Ok(body["model_version"].as_str().unwrap_or_default().to_owned())
    }

    /// Model versions that have stored predictions in the project, with their counts.
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn prediction_versions(&self, project: u64) -> Result<Vec<String>, LsError> {
        let path = format!("api/projects/{project}/model-versions");
        let body: Value = self.call(Method::GET, &path, &[], None).await?.json().await?;
        Ok(body.as_object().map(|versions| versions.keys().cloned().collect()).unwrap_or_default())
    }

    /// Titles of the ML backends connected to the project.
    ///
    /// # Errors
    /// [`LsError`].
    pub async fn backend_titles(&self, project: u64) -> Result<Vec<String>, LsError> {
        let query = [("project", project.to_string())];
        let body: Value = self.call(Method::GET, "api/ml", &query, None).await?.json().await?;
        let titles = body.as_array().into_iter().flatten().filter_map(|backend| backend["title"].as_str());
        Ok(titles.map(str::to_owned).collect())
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
