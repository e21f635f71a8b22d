//! Training policy and progress: when a project trains (enough labels, two classes at least), in
//! which mode, and what `/status`, `/metrics` and the log show while a job runs.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use alps_proto::v1::{JobState, TrainingJob, TrainingMode, TrainingParameters, TrainingPhase};
use serde::Serialize;

use crate::{core_client::Core, projects::Projects};

/// Training policy (see the `--train-*` and `--min-train-labels` flags).
#[derive(Clone, Copy, Debug)]
pub struct TrainingPolicy {
    /// Retrain after this many new labels; 0 = only on request.
    pub every: u32,
    /// Fewest labelled tasks to train on.
    pub min_labels: u64,
    /// Triggers within this time are coalesced.
    pub debounce: Duration,
    /// Passes over the labelled set; 0 = the server's default.
    pub epochs: u32,
    /// Learning rate; 0 = the server's default.
    pub learning_rate: f32,
    /// Share of labels held out for validation; `None` = the server's default.
    pub validation_fraction: Option<f32>,
}

/// One training job as `/status` shows it (from the core's `TrainingJob`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrainingProgress {
    /// The core's job id.
    pub job_id: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: &'static str,
    /// `loading`, `embedding`, `training`, `validating`, `saving` (empty before it starts).
    pub phase: &'static str,
    /// `head_only` or `full`.
    pub mode: &'static str,
    /// Current epoch, 1-based; 0 before training starts.
    pub epoch: u32,
    /// Epochs of the run.
    pub epochs: u32,
    /// Progress in [0, 100].
    pub percent: f32,
    /// Estimated seconds to completion, when the core knows.
    pub eta_secs: Option<u64>,
    /// The version the job produced (`v3`), once it succeeded.
    pub model_version: String,
}

impl TrainingProgress {
    /// The progress of `job` as the core reports it.
    pub fn of(job: &TrainingJob) -> Self {
        let parameters = job.parameters.unwrap_or_default();
        Self {
            job_id: job.job_id.clone(),
            state: state_name(job.state),
            phase: match TrainingPhase::try_from(job.phase).unwrap_or(TrainingPhase::Unspecified) {
                TrainingPhase::Unspecified => "",
                TrainingPhase::Loading => "loading",
                TrainingPhase::Embedding => "embedding",
                TrainingPhase::Training => "training",
                TrainingPhase::Validating => "validating",
                TrainingPhase::Saving => "saving",
            },
            mode: mode_name(parameters.mode),
            epoch: job.epoch,
            epochs: parameters.epochs,
            percent: if job.percent.is_finite() { job.percent.clamp(0.0, 100.0) } else { 0.0 },
            eta_secs: job.eta_ms.map(|ms| ms.div_ceil(1000)),
            model_version: job.model_version.clone(),
        }
    }

    /// Whether the job is queued or running.
    pub fn is_active(&self) -> bool {
        matches!(self.state, "queued" | "running")
    }
}

fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Unspecified => "unknown",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn mode_name(mode: i32) -> &'static str {
    match TrainingMode::try_from(mode).unwrap_or(TrainingMode::Unspecified) {
        TrainingMode::Full => "full",
        TrainingMode::HeadOnly | TrainingMode::Unspecified => "head_only",
    }
}

/// The latest training job of each project this adapter started (jobs started over gRPC are read
/// from the core by `/status` and `/is_training`).
#[derive(Debug, Default)]
pub struct TrainingBoard {
    jobs: Mutex<HashMap<u64, TrainingProgress>>,
}

impl TrainingBoard {
    /// The latest job of `ls_id` started by this adapter.
    pub fn get(&self, ls_id: u64) -> Option<TrainingProgress> {
        self.jobs.lock().expect("training board poisoned").get(&ls_id).cloned()
    }

    fn set(&self, ls_id: u64, progress: TrainingProgress) {
        crate::metrics::training_progress(ls_id, &progress);
        self.jobs.lock().expect("training board poisoned").insert(ls_id, progress);
    }
}

/// The training mode of a project: a pretrained model (preset with weights) trains its head
/// only; a randomly initialised one must learn its backbone too.
pub fn mode_for(pretrained: bool) -> TrainingMode {
    if pretrained { TrainingMode::HeadOnly } else { TrainingMode::Full }
}

/// Trains `ls_id` if the policy allows, following the job until it ends: its progress goes to
/// `board` (and so to `/status` and `/metrics`) and to the log every 10 %; a new active version
/// goes to `projects`.
pub async fn train(core: &Core, projects: &Projects, policy: &TrainingPolicy, board: &TrainingBoard, ls_id: u64) {
    let Some(link) = projects.get(ls_id) else { return };
    let (labelled, classes) = match core.count_examples(&link.alps_id()).await {
        Ok(counts) => counts,
        Err(status) => {
            tracing::warn!(project = ls_id, %status, "cannot count labelled examples; not training");
            crate::metrics::training("error");
            return;
        }
    };
    if labelled < policy.min_labels || classes < 2 {
        tracing::info!(
            project = ls_id,
            labelled,
            classes,
            min_labels = policy.min_labels,
            "not training yet: too few labelled tasks or classes"
        );
        crate::metrics::training("skipped");
        return;
    }
    let mode = mode_for(link.model.weights.is_some());
    let parameters = TrainingParameters {
        mode: mode as i32,
        epochs: policy.epochs,
        learning_rate: policy.learning_rate,
        validation_fraction: policy.validation_fraction,
        ..TrainingParameters::default()
    };
    tracing::info!(
        project = ls_id,
        labelled,
        classes,
        model = %link.model.name,
        mode = mode_name(mode as i32),
        epochs = policy.epochs,
        "training (a randomly initialised model trains backbone and head; a pretrained one its head only)"
    );
    let mut logged_decile = None;
    let mut eta_logged = false;
    let outcome = core
        .train(&link.alps_id(), parameters, |job| {
            let progress = TrainingProgress::of(job);
            let decile = (progress.percent / 10.0).floor() as u32;
            if progress.state == "running"
                && (logged_decile != Some(decile) || (!eta_logged && progress.eta_secs.is_some()))
            {
                logged_decile = Some(decile);
                eta_logged |= progress.eta_secs.is_some();
                tracing::info!(
                    project = ls_id,
                    job = %progress.job_id,
                    phase = progress.phase,
                    epoch = progress.epoch,
                    epochs = progress.epochs,
                    percent = format!("{:.0}", progress.percent),
                    eta_secs = progress.eta_secs,
                    "training progress"
                );
            }
            board.set(ls_id, progress);
        })
        .await;
    match outcome {
        Ok(job) if job.state == JobState::Succeeded as i32 && job.not_activated_reason.is_empty() => {
            tracing::info!(project = ls_id, version = %job.model_version, "training finished");
            crate::metrics::training("succeeded");
            projects.set_active_version(ls_id, &job.model_version);
        }
        Ok(job) => {
            let reason = if job.error.is_empty() { job.not_activated_reason } else { job.error };
            tracing::warn!(project = ls_id, state = job.state, %reason, "training ended without a new active version");
            crate::metrics::training("failed");
        }
        Err(status) => {
            tracing::warn!(project = ls_id, %status, "training failed");
            crate::metrics::training("error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_the_job() {
        let job = TrainingJob {
            job_id: "j1".into(),
            state: JobState::Running as i32,
            phase: TrainingPhase::Training as i32,
            epoch: 3,
            percent: 37.5,
            eta_ms: Some(12_001),
            parameters: Some(TrainingParameters { mode: TrainingMode::Full as i32, epochs: 8, ..Default::default() }),
            ..Default::default()
        };
        let progress = TrainingProgress::of(&job);
        assert_eq!((progress.state, progress.phase, progress.mode), ("running", "training", "full"));
        assert_eq!((progress.epoch, progress.epochs, progress.eta_secs), (3, 8, Some(13)));
        assert!(progress.is_active());
        let nan = TrainingJob { percent: f32::NAN, state: JobState::Succeeded as i32, ..Default::default() };
        assert_eq!(TrainingProgress::of(&nan).percent, 0.0);
        assert!(!TrainingProgress::of(&nan).is_active());
    }

    #[test]
    fn pretrained_models_train_their_head_only() {
        assert_eq!(mode_for(true), TrainingMode::HeadOnly);
        assert_eq!(mode_for(false), TrainingMode::Full);
    }
}
