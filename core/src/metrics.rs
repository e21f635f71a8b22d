//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on `--metrics-listen`.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

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

/// Labels `state="running"|"waiting"`.
type StateLabels = [(&'static str, &'static str); 1];

/// Labels of `alps_requests_total`: `service`, `method` and `code` (gRPC status code name).
type RequestLabels = [(&'static str, &'static str); 3];

/// Labels of `alps_project_requests_total`: `project` (an existing project's id) and
/// `outcome="ok"|"error"`.
type ProjectLabels = [(&'static str, String); 2];

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
    project_requests: Family<ProjectLabels, Counter>,
    request_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<OutcomeLabels, Counter>,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
    batch_samples: Histogram,
    cancelled: Counter,
    loaded_models: Gauge,
    loaded_model_bytes: Gauge,
    training_memory_bytes: Gauge,
    training_jobs: Family<StateLabels, Gauge>,
    activation_seconds: Histogram,
    gc_removed_blobs: Counter,
    gc_removed_bytes: Counter,
    backbone_samples: Counter,
    head_passes: Counter,
    models: Mutex<HashMap<(String, String), ModelStats>>,
}

/// A count of events and their total duration, nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events.
    pub count: u64,
    /// Their summed duration, ns.
    pub ns: u64,
}

impl Tally {
    fn add(&mut self, events: u64, took: std::time::Duration) {
        self.count = self.count.saturating_add(events);
        self.ns = self.ns.saturating_add(events.saturating_mul(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX)));
    }
}

/// What the engine measured of one model version of one project since the server started:
/// the figures of the Open Inference Protocol's statistics extension (perf_analyzer reads
/// them). Requests are Predict-path requests (Predict, ModelInfer); rankings count in the
/// execution and inference counts only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Requests whose every sample was predicted, with their time from admission to the answer.
    pub success: Tally,
    /// Requests that failed as a whole or in one of their samples.
    pub fail: Tally,
    /// Jobs' waits in the worker queue.
    pub queue: Tally,
    /// Preprocessing (image decoding, resizing, normalising) per request.
    pub compute_input: Tally,
    /// Batched MC-Dropout passes, counted once per request they served.
    pub compute_infer: Tally,
    /// Heuristic scoring and summaries per request.
    pub compute_output: Tally,
    /// Samples inferred.
    pub inference_count: u64,
    /// Batched forward passes run.
    pub execution_count: u64,
    /// Unix time of the last forward pass, ms (0: none yet).
    pub last_inference_unix_ms: u64,
}

/// The times the engine measured of one request, recorded together when it ends so that
/// every stage's count moves in step (perf_analyzer checks that they do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTimes {
    /// Preprocessing.
    pub input: std::time::Duration,
    /// Wait in the worker queue.
    pub queue: std::time::Duration,
    /// The batched MC-Dropout pass that served it.
    pub infer: std::time::Duration,
    /// Heuristic scoring and summaries.
    pub output: std::time::Duration,
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
        let project_requests = Family::default();
        registry.register(
            "project_requests",
            "gRPC and REST requests about one existing project (named by id, or by one of its training jobs), by outcome \
             (error: any status but OK); a new project counts from its creation",
            project_requests.clone(),
        );
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
        let loaded_model_bytes = Gauge::default();
        registry.register(
            "loaded_model_bytes",
            "Bytes of the cached models' tensors (a shared backbone once), the measure --model-cache-mib bounds",
            loaded_model_bytes.clone(),
        );
        let training_memory_bytes = Gauge::default();
        registry.register(
            "training_memory_bytes",
            "Bytes of the --model-cache-mib budget training holds (running jobs, the model kept for the next job)",
            training_memory_bytes.clone(),
        );
        let training_jobs = Family::default();
        registry.register(
            "training_jobs",
            "Training jobs holding one of the --training-jobs slots (running) or waiting for one (waiting)",
            training_jobs.clone(),
        );
        // 1 ms to ~2 min.
        let activation_seconds = Histogram::new(exponential_buckets(1e-3, 2.0, 18));
        registry.register(
            "activation_seconds",
            "Time from an activation (ActivateModelVersion, or a training job's new version recorded) to this \
             server serving it, its model loaded first, seconds",
            activation_seconds.clone(),
        );
        let gc_removed_blobs = Counter::default();
        registry.register(
            "gc_removed_blobs",
            "Sample blobs no example referenced, removed by the garbage collector",
            gc_removed_blobs.clone(),
        );
        let gc_removed_bytes = Counter::default();
        registry.register("gc_removed_bytes", "Bytes of the removed sample blobs", gc_removed_bytes.clone());
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
            project_requests,
            request_seconds,
            auth_failures,
            queue_seconds,
            compute_seconds,
            batch_samples,
            cancelled,
            loaded_models,
            loaded_model_bytes,
            training_memory_bytes,
            training_jobs,
            activation_seconds,
            gc_removed_blobs,
            gc_removed_bytes,
            backbone_samples,
            head_passes,
            models: Mutex::default(),
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

    /// Counts one finished request about `project`, an existing project (callers attribute a
    /// request only after finding the project, so made-up ids never become series).
    pub fn record_project_request(&self, project: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.project_requests.get_or_create(&[("project", project.to_owned()), ("outcome", outcome.to_owned())]).inc();
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

    /// Records one batched forward pass of `samples` samples on `project` at `version`.
    pub fn observe_batch(&self, project: &str, version: &str, samples: usize, took: std::time::Duration) {
        self.batch_samples.observe(samples as f64);
        self.compute_seconds.observe(took.as_secs_f64());
        self.with_model(project, version, |stats| {
            stats.execution_count += 1;
            stats.inference_count += samples as u64;
            stats.last_inference_unix_ms = crate::clock::now_unix_ms().max(0) as u64;
        });
    }

    /// Records a finished prediction request on `project` at `version`: `times` of its stages
    /// when every sample was predicted (`None` when it or a sample failed), `took` from
    /// admission to the answer.
    pub fn observe_request(
        &self,
        project: &str,
        version: &str,
        times: Option<RequestTimes>,
        took: std::time::Duration,
    ) {
        self.with_model(project, version, |stats| match times {
            Some(times) => {
                stats.success.add(1, took);
                stats.compute_input.add(1, times.input);
                stats.queue.add(1, times.queue);
                stats.compute_infer.add(1, times.infer);
                stats.compute_output.add(1, times.output);
            }
            None => stats.fail.add(1, took),
        });
    }

    /// The engine's figures for every model version of `project` that has served, by version.
    pub fn model_stats(&self, project: &str) -> Vec<(String, ModelStats)> {
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stats: Vec<_> =
            models.iter().filter(|((p, _), _)| p == project).map(|((_, v), s)| (v.clone(), s.clone())).collect();
        // Newest first by number (`v10` after `v9`), as version lists are ordered.
        stats
            .sort_by_key(|(version, _)| std::cmp::Reverse(version.trim_start_matches('v').parse::<u64>().unwrap_or(0)));
        stats
    }

    /// Forgets the per-model figures and request counts of a deleted project, so a new project
    /// of the same id starts from zero.
    pub fn forget_project(&self, project: &str) {
        for outcome in ["ok", "error"] {
            self.project_requests.remove(&[("project", project.to_owned()), ("outcome", outcome.to_owned())]);
        }
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        models.retain(|(p, _), _| p != project);
    }

    fn with_model(&self, project: &str, version: &str, update: impl FnOnce(&mut ModelStats)) {
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        update(models.entry((project.to_owned(), version.to_owned())).or_default());
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

    /// Sets the number of loaded models, their bytes (a shared backbone counted once) and the
    /// bytes of the budget training holds.
    pub fn set_loaded_models(&self, models: usize, bytes: usize, training_bytes: usize) {
        self.loaded_models.set(models as i64);
        self.loaded_model_bytes.set(bytes as i64);
        self.training_memory_bytes.set(training_bytes as i64);
    }

    /// Records how long an activation took to be served here (the new model loaded, then
    /// swapped in): on the activating server from the request, on the other replicas from the
    /// activation's time in the catalogue.
    pub fn observe_activation(&self, took: std::time::Duration) {
        self.activation_seconds.observe(took.as_secs_f64());
    }

    /// Counts the blobs (and their bytes) one garbage collection removed.
    pub fn record_garbage_collected(&self, blobs: u64, bytes: u64) {
        self.gc_removed_blobs.inc_by(blobs);
        self.gc_removed_bytes.inc_by(bytes);
    }

    /// Sets the training executor's load: jobs running and jobs waiting for a slot.
    pub fn set_training_jobs(&self, running: usize, waiting: usize) {
        self.training_jobs.get_or_create(&[("state", "running")]).set(running as i64);
        self.training_jobs.get_or_create(&[("state", "waiting")]).set(waiting as i64);
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
    fn project_requests_are_counted_until_the_project_is_forgotten() {
        let metrics = Metrics::default();
        metrics.record_project_request("cars", true);
        metrics.record_project_request("cars", true);
        metrics.record_project_request("cars", false);
        metrics.record_project_request("boats", true);
        let text = metrics.encode().unwrap();
        assert!(text.contains("alps_project_requests_total{project=\"cars\",outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("alps_project_requests_total{project=\"cars\",outcome=\"error\"} 1"), "{text}");
        metrics.forget_project("cars");
        let text = metrics.encode().unwrap();
        assert!(!text.contains("project=\"cars\""), "{text}");
        assert!(text.contains("alps_project_requests_total{project=\"boats\",outcome=\"ok\"} 1"), "{text}");
    }

    #[test]
    fn activations_are_observed() {
        let metrics = Metrics::default();
        metrics.observe_activation(std::time::Duration::from_millis(300));
        let text = metrics.encode().unwrap();
        assert!(text.contains("alps_activation_seconds_count 1"), "{text}");
        assert!(text.contains("alps_activation_seconds_sum 0.3"), "{text}");
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
