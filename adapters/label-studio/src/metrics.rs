//! Prometheus metrics of the adapter (`GET /metrics`, spec §2.5), in the OpenMetrics text format.
//! One process-wide registry: the counters are recorded from every module.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    tasks: Family<Labels, Counter>,
    media_failures: Family<Labels, Counter>,
    webhooks: Family<Labels, Counter>,
    token_refreshes: Counter,
    version_changes: Counter,
    version_patches: Family<Labels, Counter>,
    resyncs: Family<Labels, Counter>,
    trainings: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("alps_ls");
    let metrics = Metrics {
        requests: Family::default(),
        tasks: Family::default(),
        media_failures: Family::default(),
        webhooks: Family::default(),
        token_refreshes: Counter::default(),
        version_changes: Counter::default(),
        version_patches: Family::default(),
        resyncs: Family::default(),
        trainings: Family::default(),
        registry: Registry::default(),
    };
    registry.register("requests", "HTTP requests by route and status", metrics.requests.clone());
    registry.register(
        "tasks",
        "Tasks answered by /predict, by outcome (predicted, failed, deferred)",
        metrics.tasks.clone(),
    );
    registry.register("media_failures", "Image downloads that failed, by cause", metrics.media_failures.clone());
    registry.register("webhook_actions", "Webhook events received, by action", metrics.webhooks.clone());
    registry.register("token_refreshes", "Label Studio access-token refreshes", metrics.token_refreshes.clone());
    registry.register("model_version_changes", "Active model versions newly seen", metrics.version_changes.clone());
    registry.register(
        "model_version_patches",
        "Updates of a Label Studio project's model_version, by outcome",
        metrics.version_patches.clone(),
    );
    registry.register("resyncs", "Labelled-set resyncs from Label Studio, by outcome", metrics.resyncs.clone());
    registry.register("trainings", "Training runs, by outcome", metrics.trainings.clone());
    Metrics { registry, ..metrics }
});

/// Counts an HTTP request.
pub fn request(route: &str, status: u16) {
    METRICS.requests.get_or_create(&vec![("route", route.to_owned()), ("status", status.to_string())]).inc();
}

/// Counts `count` tasks of one `/predict` outcome.
pub fn tasks(outcome: &'static str, count: usize) {
    METRICS.tasks.get_or_create(&vec![("outcome", outcome.to_owned())]).inc_by(count as u64);
}

/// Counts a failed image download.
pub fn media_failure(cause: &'static str) {
    METRICS.media_failures.get_or_create(&vec![("cause", cause.to_owned())]).inc();
}

/// Counts a webhook event.
pub fn webhook(action: &str) {
    METRICS.webhooks.get_or_create(&vec![("action", action.to_owned())]).inc();
}

/// Counts an access-token refresh.
pub fn token_refreshed() {
    METRICS.token_refreshes.inc();
}

/// Counts a newly seen active model version.
pub fn version_changed() {
    METRICS.version_changes.inc();
}

/// Counts a project `model_version` update attempt.
pub fn version_patch(outcome: &'static str) {
    METRICS.version_patches.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
}

/// Counts a resync.
pub fn resync(outcome: &'static str) {
    METRICS.resyncs.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
}

/// Counts a training run.
pub fn training(outcome: &'static str) {
    METRICS.trainings.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
}

/// The metrics in the OpenMetrics text format.
pub fn render() -> String {
    let mut text = String::new();
    encode(&mut text, &METRICS.registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_text() {
        request("/predict", 200);
        media_failure("status");
        let text = render();
        assert!(text.contains(r#"alps_ls_requests_total{route="/predict",status="200"}"#), "{text}");
        assert!(text.contains(r#"alps_ls_media_failures_total{cause="status"}"#), "{text}");
    }
}
