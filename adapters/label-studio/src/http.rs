//! The HTTP side: Label Studio's ML-backend routes (`shared/specs/label-studio-ml-backend.md` §2).
//!
//! Every response is JSON, errors included. Handlers answer from in-memory state; none waits on
//! the core or on Label Studio.

use axum::{
    Json, Router,
    extract::State,
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::{config::ScoreMode, core_link::CoreStatus};

/// Shared, read-only state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Latest core status from [`crate::core_link::watch_core`].
    pub core: watch::Receiver<CoreStatus>,
    /// Default score mode, reported by `/health`.
    pub score_mode: ScoreMode,
}

/// Body of `GET /health` (spec §2.1). Label Studio reads only `status`; the rest is for humans.
#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    model_class: &'static str,
    version: &'static str,
    model_server: CoreStatus,
    score_mode: ScoreMode,
}

/// The adapter's routes, under `base_path` ("" or "/prefix").
pub fn router(state: AppState, base_path: &str) -> Router {
    let routes =
        Router::new().route("/", get(health)).route("/health", get(health)).fallback(not_found).with_state(state);
    if base_path.is_empty() { routes } else { Router::new().nest(base_path, routes).fallback(not_found) }
}

/// `GET /` and `GET /health`: 200 while the process runs, whatever the core's state.
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "UP",
        model_class: "alps-label-studio",
        version: env!("CARGO_PKG_VERSION"),
        model_server: *state.core.borrow(),
        score_mode: state.score_mode,
    })
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
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn app(core: CoreStatus, base_path: &str) -> Router {
        let (_publish, receiver) = watch::channel(core);
        router(AppState { core: receiver, score_mode: ScoreMode::Uncertainty }, base_path)
    }

    async fn get_json(app: Router, path: &str) -> (StatusCode, serde_json::Value) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn health_reports_up_and_the_core_state() {
        for (core, word) in [(CoreStatus::Ready, "ready"), (CoreStatus::Unreachable, "unreachable")] {
            for path in ["/", "/health"] {
                let (status, body) = get_json(app(core, ""), path).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body["status"], "UP");
                assert_eq!(body["model_server"], word);
                assert_eq!(body["score_mode"], "uncertainty");
                assert_eq!(body["model_class"], "alps-label-studio");
            }
        }
    }

    #[tokio::test]
    async fn unknown_routes_answer_404_json() {
        for path in ["/job_status", "/validate", "/delete", "/nope/health"] {
            let (status, body) = get_json(app(CoreStatus::Ready, ""), path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body["error"], "not_found");
            assert!(body["detail"].as_str().unwrap().contains(path), "{body}");
        }
    }

    #[tokio::test]
    async fn base_path_prefixes_every_route() {
        let (status, body) = get_json(app(CoreStatus::Ready, "/alps"), "/alps/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "UP");
        let (status, _) = get_json(app(CoreStatus::Ready, "/alps"), "/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
