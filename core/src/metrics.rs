//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on `--metrics-listen`.

use std::{future::Future, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get, serve::ListenerExt};
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::engine::device::LIBTORCH_VERSION;

/// OpenMetrics text exposition content type (OpenMetrics 1.0, section "Overall Structure").
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels `outcome="ok"|"error"`.
type OutcomeLabels = [(&'static str, &'static str); 1];

/// Labels of `alps_requests_total`: `service`, `method` and `code` (gRPC status code name).
type RequestLabels = [(&'static str, &'static str); 3];

/// Labels of `alps_request_seconds`: `service` and `method`.
type MethodLabels = [(&'static str, &'static str); 2];

/// Builds one request-latency histogram: 100 µs to ~100 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 20))
}

/// The server's metric registry. Metric names are prefixed `alps_`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    plugin_loads: Family<OutcomeLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<OutcomeLabels, Counter>,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
    batch_samples: Histogram,
    cancelled: Counter,
    loaded_models: Gauge,
    backbone_samples: Counter,
    head_passes: Counter,
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
        let requests = Family::default();
        registry.register("requests", "gRPC requests by service, method and status code", requests.clone());
        let request_seconds = Family::new_with_constructor(request_histogram as fn() -> Histogram);
        registry.register(
            "request_seconds",
            "gRPC request time from arrival to the end of the response, seconds",
            request_seconds.clone(),
        );
        let auth_failures = Family::default();
        registry.register(
            "auth_failures",
            "Calls refused by the auth layer, by gRPC code (UNAUTHENTICATED, PERMISSION_DENIED)",
            auth_failures.clone(),
        );
        // 100 µs to ~100 s.
        let queue_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 20));
        registry.register("queue_seconds", "Time a job waited in the worker queue, seconds", queue_seconds.clone());
        let compute_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 20));
        registry.register("compute_seconds", "Time of one batched MC-Dropout pass, seconds", compute_seconds.clone());
        let batch_samples = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("batch_samples", "Samples per batched forward pass", batch_samples.clone());
        let cancelled = Counter::default();
        registry.register("cancelled_jobs", "Jobs skipped because their caller went away", cancelled.clone());
        let loaded_models = Gauge::default();
        registry.register("loaded_models", "Models in the worker's cache", loaded_models.clone());
        let backbone_samples = Counter::default();
        registry.register(
            "backbone_samples",
            "Samples through a model backbone (once per sample)",
            backbone_samples.clone(),
        );
        let head_passes = Counter::default();
        registry.register("head_passes", "Stochastic head passes (samples x MC iterations)", head_passes.clone());
        Self {
            registry,
            plugin_loads,
            requests,
            request_seconds,
            auth_failures,
            queue_seconds,
            compute_seconds,
            batch_samples,
            cancelled,
            loaded_models,
            backbone_samples,
            head_passes,
        }
    }
}

impl Metrics {
    /// Counts one plugin file load attempt.
    pub fn record_plugin_load(&self, ok: bool) {
        self.plugin_loads.get_or_create(&[("outcome", if ok { "ok" } else { "error" })]).inc();
    }

    /// Counts one finished gRPC request with its status code name (e.g. `OK`,
    /// `INVALID_ARGUMENT`) and records how long it took.
    pub fn record_request(
        &self,
        service: &'static str,
        method: &'static str,
        code: &'static str,
        took: std::time::Duration,
    ) {
        self.requests.get_or_create(&[("service", service), ("method", method), ("code", code)]).inc();
        self.request_seconds.get_or_create(&[("service", service), ("method", method)]).observe(took.as_secs_f64());
    }

    /// Counts one call refused by the auth layer; `reason` is the gRPC code name,
    /// `UNAUTHENTICATED` or `PERMISSION_DENIED`.
    pub fn record_auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&[("reason", reason)]).inc();
    }

    /// Records a job's wait in the worker queue.
    pub fn observe_queue_time(&self, waited: std::time::Duration) {
        self.queue_seconds.observe(waited.as_secs_f64());
    }

    /// Records one batched forward pass.
    pub fn observe_batch(&self, samples: usize, took: std::time::Duration) {
        self.batch_samples.observe(samples as f64);
        self.compute_seconds.observe(took.as_secs_f64());
    }

    /// Counts one MC-Dropout pass: `samples` through the backbone, `samples × k` head passes.
    pub fn record_forward(&self, samples: usize, k: usize) {
        self.backbone_samples.inc_by(samples as u64);
        self.head_passes.inc_by((samples * k) as u64);
    }

    /// Counts jobs skipped because their caller went away.
    pub fn record_cancelled(&self, jobs: usize) {
        self.cancelled.inc_by(jobs as u64);
    }

    /// Sets the number of loaded models.
    pub fn set_loaded_models(&self, models: usize) {
        self.loaded_models.set(models as i64);
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
    let listener = listener.tap_io(|tcp| {
        // Scrapes are small responses; never hold them back for Nagle's algorithm.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
    });
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
