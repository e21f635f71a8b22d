//! Prometheus metrics of the adapter (`GET /metrics`), in the OpenMetrics text format.
//! One process-wide registry: the counters are recorded from every module.

use std::sync::LazyLock;

use crate::{core_link::CoreStatus, ls_api::LinkState};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
    label_studio_link: Family<Labels, Gauge>,
    label_studio_refusals: Counter,
    core_link: Family<Labels, Gauge>,
    webhook_refusals: Counter,
    work_dropped: Counter,
    pool: Family<Labels, Gauge>,
    pool_eta: Family<Labels, Gauge>,
    pool_written: Counter,
    training_percent: Family<Labels, Gauge>,
    training_epoch: Family<Labels, Gauge>,
    training_eta: Family<Labels, Gauge>,
    setup_failures: Family<Labels, Counter>,
    setup_failing: Family<Labels, Gauge>,
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
        label_studio_link: Family::default(),
        label_studio_refusals: Counter::default(),
        core_link: Family::default(),
        webhook_refusals: Counter::default(),
        work_dropped: Counter::default(),
        pool: Family::default(),
        pool_eta: Family::default(),
        pool_written: Counter::default(),
        training_percent: Family::default(),
        training_epoch: Family::default(),
        training_eta: Family::default(),
        setup_failures: Family::default(),
        setup_failing: Family::default(),
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
    registry.register(
        "label_studio_link",
        "State of the link to Label Studio: 1 for the current state (ok, unauthorized, unreachable, unknown, not_configured), 0 for the others",
        metrics.label_studio_link.clone(),
    );
    registry.register(
        "label_studio_auth_refusals",
        "Label Studio answers refusing LABEL_STUDIO_API_KEY (HTTP 401 or a refused token refresh)",
        metrics.label_studio_refusals.clone(),
    );
    registry.register(
        "core_link",
        "State of the link to alps-server: 1 for the current state (ready, loading, unreachable, unauthorized), 0 for the others",
        metrics.core_link.clone(),
    );
    registry.register(
        "webhook_refusals",
        "POST /webhook requests refused for a missing or wrong webhook secret",
        metrics.webhook_refusals.clone(),
    );
    registry.register(
        "work_dropped",
        "Webhook work items dropped because a project's queue was full",
        metrics.work_dropped.clone(),
    );
    registry.register(
        "pool_tasks",
        "Pool scoring per Label Studio project: unlabelled tasks (state=pool), those holding a prediction of the current scoring version (fresh), written in the current pass (scored), failed in it (failed)",
        metrics.pool.clone(),
    );
    registry.register(
        "pool_eta_seconds",
        "Estimated seconds until the project's pool is fresh",
        metrics.pool_eta.clone(),
    );
    registry.register(
        "pool_predictions_written",
        "Predictions written to Label Studio in bulk",
        metrics.pool_written.clone(),
    );
    registry.register(
        "training_percent",
        "Progress of the project's latest training job, 0 to 100",
        metrics.training_percent.clone(),
    );
    registry.register(
        "training_epoch",
        "Current epoch of the project's latest training job",
        metrics.training_epoch.clone(),
    );
    registry.register(
        "training_eta_seconds",
        "Estimated seconds until the project's training job ends",
        metrics.training_eta.clone(),
    );
    registry.register(
        "project_setup_failures",
        "Failed attempts to create or update a Label Studio project's ALPS project (e.g. pretrained weights that cannot be fetched), by gRPC code",
        metrics.setup_failures.clone(),
    );
    registry.register(
        "project_setup_failing",
        "1 while the last attempt to create or update the project's ALPS project failed (the error is in GET /status), else 0",
        metrics.setup_failing.clone(),
    );
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

/// Sets the `label_studio_link{state}` gauge: 1 for `now`, 0 for the other states.
pub fn label_studio_link(now: LinkState) {
    for state in LinkState::ALL {
        let gauge = METRICS.label_studio_link.get_or_create(&vec![("state", state.as_str().to_owned())]);
        gauge.set(i64::from(state == now));
    }
}

/// Counts an answer of Label Studio that refused the API key.
pub fn label_studio_refusal() {
    METRICS.label_studio_refusals.inc();
}

/// Sets the `core_link{state}` gauge: 1 for `now`, 0 for the other states.
pub fn core_link(now: CoreStatus) {
    for state in CoreStatus::ALL {
        METRICS.core_link.get_or_create(&vec![("state", state.as_str().to_owned())]).set(i64::from(state == now));
    }
}

/// Counts a webhook refused for its secret.
pub fn webhook_refused() {
    METRICS.webhook_refusals.inc();
}

/// Counts a dropped work item.
pub fn work_dropped() {
    METRICS.work_dropped.inc();
}

/// Sets the pool gauges of Label Studio project `project`.
pub fn pool_progress(project: u64, progress: &crate::scoring::PoolProgress) {
    let project = project.to_string();
    for (state, value) in
        [("pool", progress.pool), ("fresh", progress.fresh), ("scored", progress.scored), ("failed", progress.failed)]
    {
        let labels = vec![("project", project.clone()), ("state", state.to_owned())];
        METRICS.pool.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    let eta = progress.eta_secs.map_or(-1, |secs| i64::try_from(secs).unwrap_or(i64::MAX));
    METRICS.pool_eta.get_or_create(&vec![("project", project)]).set(eta);
}

/// Counts predictions written in bulk.
pub fn pool_written(count: u64) {
    METRICS.pool_written.inc_by(count);
}

/// Sets the training gauges of Label Studio project `project`.
pub fn training_progress(project: u64, progress: &crate::training::TrainingProgress) {
    let labels = vec![("project", project.to_string())];
    METRICS.training_percent.get_or_create(&labels).set(progress.percent.round() as i64);
    METRICS.training_epoch.get_or_create(&labels).set(i64::from(progress.epoch));
    let eta = progress.eta_secs.map_or(-1, |secs| i64::try_from(secs).unwrap_or(i64::MAX));
    METRICS.training_eta.get_or_create(&labels).set(eta);
}

/// Records the outcome of creating or updating Label Studio project `project`'s ALPS project:
/// `Err(code)` counts a failure under the gRPC code's name and raises the failing gauge.
pub fn project_setup(project: u64, outcome: Result<(), tonic::Code>) {
    let labels = vec![("project", project.to_string())];
    METRICS.setup_failing.get_or_create(&labels).set(i64::from(outcome.is_err()));
    if let Err(code) = outcome {
        METRICS.setup_failures.get_or_create(&vec![("code", format!("{code:?}"))]).inc();
    }
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

    #[test]
    fn link_gauges_and_refusal_counters_are_registered() {
        // Values are asserted by the cross-process tests: other unit tests set these gauges
        // concurrently in this process.
        label_studio_link(LinkState::Unauthorized);
        core_link(CoreStatus::Unauthorized);
        label_studio_refusal();
        webhook_refused();
        let text = render();
        for state in LinkState::ALL {
            assert!(text.contains(&format!("alps_ls_label_studio_link{{state=\"{}\"}}", state.as_str())), "{text}");
        }
        for state in CoreStatus::ALL {
            assert!(text.contains(&format!("alps_ls_core_link{{state=\"{}\"}}", state.as_str())), "{text}");
        }
        assert!(text.contains("alps_ls_label_studio_auth_refusals_total "), "{text}");
        assert!(text.contains("alps_ls_webhook_refusals_total "), "{text}");
    }
}
