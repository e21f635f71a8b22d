//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on `--metrics-listen`.

use std::{future::Future, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, info::Info},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::engine::device::LIBTORCH_VERSION;

/// OpenMetrics text exposition content type (OpenMetrics 1.0, section "Overall Structure").
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels `outcome="ok"|"error"`.
type OutcomeLabels = [(&'static str, &'static str); 1];

/// The server's metric registry. Metric names are prefixed `alps_`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    plugin_loads: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("alps");
        registry.register(
            "build",
            "Version of alps-server and of the libtorch it links",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION")), ("libtorch", LIBTORCH_VERSION)]),
        );
        let plugin_loads = Family::default();
        registry.register("plugin_loads", "Heuristic plugin file loads by outcome", plugin_loads.clone());
        Self { registry, plugin_loads }
    }
}

impl Metrics {
    /// Counts one plugin file load attempt.
    pub fn record_plugin_load(&self, ok: bool) {
        self.plugin_loads.get_or_create(&[("outcome", if ok { "ok" } else { "error" })]).inc();
    }

    /// Encodes every metric in the OpenMetrics text format.
    ///
    /// # Errors
    /// Only if a metric's own encoding fails (formatting error).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The I/O error that stopped the HTTP server.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_both_versions() {
        let text = Metrics::default().encode().unwrap();
        let line = text.lines().find(|l| l.starts_with("alps_build_info{")).unwrap();
        assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
        assert!(line.contains(&format!("libtorch=\"{LIBTORCH_VERSION}\"")), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text must end with # EOF");
    }

    #[test]
    fn plugin_loads_are_counted_by_outcome() {
        let metrics = Metrics::default();
        metrics.record_plugin_load(true);
        metrics.record_plugin_load(true);
        metrics.record_plugin_load(false);
        let text = metrics.encode().unwrap();
        assert!(text.contains("alps_plugin_loads_total{outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("alps_plugin_loads_total{outcome=\"error\"} 1"), "{text}");
    }
}
