//! Training job records, parameters and validation metrics: what is stored, streamed and
//! written into model-version manifests.

use serde::{Deserialize, Serialize};

/// What part of the model is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Only the MC-Dropout head's last linear layer, on cached backbone embeddings.
    HeadOnly,
    /// Backbone and head (BatchNorm stays in eval mode).
    Full,
}

/// The optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// Adam (Kingma & Ba 2015) with L2 weight decay.
    Adam,
    /// AdamW (Loshchilov & Hutter 2019), decoupled weight decay.
    AdamW,
    /// SGD with momentum 0.9.
    Sgd,
}

/// Effective training settings (request values with defaults filled in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingParams {
    /// Head-only or full fine-tuning.
    pub mode: Mode,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// Learning rate.
    pub learning_rate: f64,
    /// Passes over the training split.
    pub epochs: u32,
    /// Examples per step.
    pub batch_size: u32,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Weight classes by inverse frequency in the loss.
    pub class_weighting: bool,
    /// Fraction held out for validation, in `[0, 0.5]`.
    pub validation_fraction: f64,
    /// Seed for shuffling and dropout, drawn from a generator the job owns.
    pub seed: u64,
}

/// Training settings as a client asked for them: `0`, `None` or `false` where it left a field
/// unset (any protocol surface decodes into this, [`TrainingParams::resolve`] checks it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestedParams {
    /// Full fine-tuning instead of head-only.
    pub full: bool,
    /// Optimiser; `None` = Adam.
    pub optimizer: Option<Optimizer>,
    /// Learning rate; 0 = the mode's default.
    pub learning_rate: f32,
    /// Epochs, `0..=10000`; 0 = the mode's default.
    pub epochs: u32,
    /// Examples per step; 0 = 32.
    pub batch_size: u32,
    /// L2 weight decay, `>= 0`.
    pub weight_decay: Option<f32>,
    /// Weight classes by inverse frequency.
    pub class_weighting: bool,
    /// Validation share, `[0, 0.5]`.
    pub validation_fraction: Option<f32>,
    /// Seed; `None` = random.
    pub seed: Option<u64>,
}

/// A requested training setting out of range: the field (as named in `alps.v1`'s
/// `TrainingParameters`) and the rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("parameters.{field}: {rule}")]
pub struct ParamsError {
    /// The field.
    pub field: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

impl TrainingParams {
    /// The effective settings of `requested`: its values where set, the mode's
    /// [`defaults`](Self::defaults) elsewhere.
    ///
    /// # Errors
    /// [`ParamsError`] for a non-positive or non-finite learning rate, more than 10,000 epochs,
    /// a negative weight decay or a validation share outside `[0, 0.5]`.
    pub fn resolve(requested: RequestedParams) -> Result<Self, ParamsError> {
        let mode = if requested.full { Mode::Full } else { Mode::HeadOnly };
        let mut params = Self::defaults(mode, requested.seed.unwrap_or_else(|| fastrand::u64(..)));
        params.optimizer = requested.optimizer.unwrap_or(Optimizer::Adam);
        let lr = requested.learning_rate;
        if lr != 0.0 {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(ParamsError { field: "learning_rate", rule: "must be positive" });
            }
            params.learning_rate = f64::from(lr);
        }
        if requested.epochs != 0 {
            if requested.epochs > 10_000 {
                return Err(ParamsError { field: "epochs", rule: "at most 10000" });
            }
            params.epochs = requested.epochs;
        }
        if requested.batch_size != 0 {
            params.batch_size = requested.batch_size;
        }
        if let Some(decay) = requested.weight_decay {
            if !(decay.is_finite() && decay >= 0.0) {
                return Err(ParamsError { field: "weight_decay", rule: "must be >= 0" });
            }
            params.weight_decay = f64::from(decay);
        }
        if let Some(fraction) = requested.validation_fraction {
            if !(0.0..=0.5).contains(&fraction) {
                return Err(ParamsError { field: "validation_fraction", rule: "must be in [0, 0.5]" });
            }
            params.validation_fraction = f64::from(fraction);
        }
        params.class_weighting = requested.class_weighting;
        Ok(params)
    }

    /// Defaults for `mode`: head-only trains fast on small data (Adam, lr 1e-3, 40 epochs, batch
    /// 32); full fine-tuning uses a smaller rate and fewer epochs (lr 1e-4, 5 epochs).
    pub fn defaults(mode: Mode, seed: u64) -> Self {
        let (learning_rate, epochs) = match mode {
            Mode::HeadOnly => (1e-3, 40),
            Mode::Full => (1e-4, 5),
        };
        Self {
            mode,
            optimizer: Optimizer::Adam,
            learning_rate,
            epochs,
            batch_size: 32,
            weight_decay: 1e-4,
            class_weighting: false,
            validation_fraction: 0.2,
            seed,
        }
    }
}

/// Lifecycle of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the project's running job.
    Queued,
    /// Running.
    Running,
    /// Ended with a new model version.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// What a running job is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Reading labelled examples.
    Loading,
    /// Computing backbone embeddings.
    Embedding,
    /// Optimising.
    Training,
    /// Scoring the validation split.
    Validating,
    /// Writing and activating the version.
    Saving,
}

/// Progress of a job.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Phase.
    pub phase: Phase,
    /// Epoch, 1-based (0 before training).
    pub epoch: u32,
    /// Optimisation steps so far.
    pub step: u64,
    /// Mean training loss of the last epoch (cross-entropy, nats).
    pub loss: f32,
    /// Validation accuracy of the last epoch, in `[0, 1]`; `None` without a validation split.
    pub validation_accuracy: Option<f32>,
    /// Progress in `[0, 100]`.
    pub percent: f32,
    /// Estimated time left, milliseconds.
    pub eta_ms: Option<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            phase: Phase::Pending,
            epoch: 0,
            step: 0,
            loss: 0.0,
            validation_accuracy: None,
            percent: 0.0,
            eta_ms: None,
        }
    }
}

/// A training job as stored and streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Unique id.
    pub job_id: String,
    /// Project.
    pub project_id: String,
    /// Lifecycle state.
    pub state: JobState,
    /// Phase, epoch, loss and the rest of the progress.
    #[serde(flatten)]
    pub progress: Progress,
    /// Effective settings.
    pub params: TrainingParams,
    /// Activate the version when done.
    pub activate: bool,
    /// Version produced.
    pub model_version: String,
    /// Why it failed or was cancelled.
    pub error: String,
    /// Why the version it produced was not activated (the auto-activate policy, a version that
    /// does not load, or a project changed meanwhile); empty otherwise.
    #[serde(default)]
    pub not_activated_reason: String,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// Milliseconds since the Unix epoch; 0 until started.
    pub started_unix_ms: i64,
    /// Milliseconds since the Unix epoch; 0 until ended.
    pub finished_unix_ms: i64,
    /// The id of the server (replica) that runs it (or queued it, until a server takes it);
    /// empty in records from before replicas.
    #[serde(default)]
    pub replica: String,
    /// Which try this is: 1, or more for a job queued again after its replica stopped (see
    /// `training::leases`).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

impl JobRecord {
    /// A job of `project_id` just queued with `params`, by server `replica`, on its `attempt`
    /// (1 for a trigger's job, more for a retry), created now.
    pub fn queued(
        job_id: String,
        project_id: &str,
        params: TrainingParams,
        activate: bool,
        replica: &str,
        attempt: u32,
    ) -> Self {
        Self {
            job_id,
            project_id: project_id.to_owned(),
            state: JobState::Queued,
            progress: Progress::default(),
            params,
            activate,
            model_version: String::new(),
            error: String::new(),
            not_activated_reason: String::new(),
            created_unix_ms: crate::clock::now_unix_ms(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            replica: replica.to_owned(),
            attempt,
        }
    }

    /// Marks the job succeeded with model version `version`, its progress complete.
    pub fn succeed(&mut self, version: String) {
        self.state = JobState::Succeeded;
        self.model_version = version;
        self.progress.percent = 100.0;
        self.progress.eta_ms = Some(0);
    }
}

/// Precision, recall and F1 of one class on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub class_name: String,
    /// In `[0, 1]`.
    pub precision: f32,
    /// In `[0, 1]`.
    pub recall: f32,
    /// Harmonic mean of precision and recall.
    pub f1: f32,
    /// Validation examples of the class.
    pub support: u64,
}

/// Validation metrics of a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationMetrics {
    /// Fraction correct.
    pub accuracy: f32,
    /// Per class, in the project's class order.
    pub per_class: Vec<ClassMetrics>,
    /// `[C, C]` row-major: row = true class, column = predicted.
    pub confusion_matrix: Vec<u64>,
    /// Validation examples.
    pub examples: u64,
}

impl ValidationMetrics {
    /// Metrics of `predicted` against `truth` (class indices) over `classes`.
    pub fn from_predictions(classes: &[String], truth: &[usize], predicted: &[usize]) -> Self {
        let c = classes.len();
        let mut confusion = vec![0u64; c * c];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t * c + p] += 1;
        }
        let per_class = classes
            .iter()
            .enumerate()
            .map(|(i, class_name)| {
                let true_positive = confusion[i * c + i] as f32;
                let predicted_i: u64 = (0..c).map(|t| confusion[t * c + i]).sum();
                let support: u64 = confusion[i * c..(i + 1) * c].iter().sum();
                let precision = if predicted_i > 0 { true_positive / predicted_i as f32 } else { 0.0 };
                let recall = if support > 0 { true_positive / support as f32 } else { 0.0 };
                let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
                ClassMetrics { class_name: class_name.clone(), precision, recall, f1, support }
            })
            .collect();
        let correct: u64 = (0..c).map(|i| confusion[i * c + i]).sum();
        let examples = truth.len() as u64;
        let accuracy = if examples > 0 { correct as f32 / examples as f32 } else { 0.0 };
        Self { accuracy, per_class, confusion_matrix: confusion, examples }
    }
}

/// The manifest written beside a version's weights (`manifest.json`) and kept in the database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Project.
    pub project_id: String,
    /// `v<number>`.
    pub version: String,
    /// Version number.
    pub number: u32,
    /// The version it was trained from (empty: the initial weights).
    pub parent_version: String,
    /// The version whose training last changed the backbone (full fine-tuning); empty while
    /// the backbone still has the project's initial weights. Keys the embedding cache.
    #[serde(default)]
    pub backbone_version: String,
    /// What `weights.safetensors` holds: `full` (every variable; also manifests written before
    /// this field), `last_layer` (the head's last linear layer alone, what a head-only job
    /// trains) or `head` (the whole head; older head-only versions): every other variable is
    /// `backbone_version`'s, or the initial weights' when that is empty. See
    /// [`crate::models::LAST_LAYER_WEIGHTS`].
    #[serde(default = "full_weights")]
    pub weights: String,
    /// For a head-only version on a trained backbone: the `weights_sha256` of
    /// `backbone_version`, checked when the version loads; empty otherwise.
    #[serde(default)]
    pub backbone_sha256: String,
    /// Job that produced it.
    pub job_id: String,
    /// The project's classes at training time, in order.
    pub classes: Vec<String>,
    /// [`ProjectSpec::model_fingerprint`](crate::projects::spec::ProjectSpec::model_fingerprint) of
    /// the project at training time (classes, model and preprocessing); empty in manifests
    /// written before it was recorded.
    #[serde(default)]
    pub model_fingerprint: String,
    /// Effective settings.
    pub params: TrainingParams,
    /// Labelled examples used (training + validation).
    pub example_count: u64,
    /// Validation metrics, when there was a validation split.
    pub metrics: Option<ValidationMetrics>,
    /// SHA-256 of `weights.safetensors`, lowercase hex.
    pub weights_sha256: String,
    /// Size of `weights.safetensors`, bytes.
    pub weights_bytes: u64,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

impl Manifest {
    /// Whether this version can serve a project with `spec`: the same classes, and the same
    /// model and preprocessing where the manifest recorded them (older manifests did not).
    pub fn serves(&self, spec: &crate::projects::spec::ProjectSpec) -> bool {
        self.classes == spec.classes
            && (self.model_fingerprint.is_empty() || self.model_fingerprint == spec.model_fingerprint())
    }
}

fn full_weights() -> String {
    crate::models::FULL_WEIGHTS.into()
}

#[cfg(test)]
impl Manifest {
    /// Full version `v{number}` of `project`, made by job `job-{number}` from the initial
    /// weights, naming no weights file: for tests of what records and reads manifests.
    pub(crate) fn example(project: &str, number: u32) -> Self {
        Self {
            project_id: project.into(),
            version: format!("v{number}"),
            number,
            parent_version: String::new(),
            backbone_version: String::new(),
            weights: full_weights(),
            backbone_sha256: String::new(),
            job_id: format!("job-{number}"),
            classes: vec!["a".into(), "b".into()],
            model_fingerprint: String::new(),
            params: TrainingParams::defaults(Mode::HeadOnly, 1),
            example_count: 2,
            metrics: None,
            weights_sha256: String::new(),
            weights_bytes: 0,
            created_unix_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_settings_fill_the_mode_defaults_and_out_of_range_ones_name_their_field() {
        let head = TrainingParams::resolve(RequestedParams { seed: Some(4), ..Default::default() }).unwrap();
        assert_eq!(head, TrainingParams::defaults(Mode::HeadOnly, 4));
        let full = RequestedParams {
            full: true,
            epochs: 3,
            optimizer: Some(Optimizer::Sgd),
            seed: Some(1),
            ..Default::default()
        };
        let full = TrainingParams::resolve(full).unwrap();
        assert_eq!((full.mode, full.epochs, full.optimizer, full.learning_rate), (Mode::Full, 3, Optimizer::Sgd, 1e-4));
        for (requested, field) in [
            (RequestedParams { learning_rate: -1.0, ..Default::default() }, "learning_rate"),
            (RequestedParams { learning_rate: f32::NAN, ..Default::default() }, "learning_rate"),
            (RequestedParams { epochs: 10_001, ..Default::default() }, "epochs"),
            (RequestedParams { weight_decay: Some(-0.1), ..Default::default() }, "weight_decay"),
            (RequestedParams { validation_fraction: Some(0.6), ..Default::default() }, "validation_fraction"),
        ] {
            assert_eq!(TrainingParams::resolve(requested).unwrap_err().field, field);
        }
    }

    #[test]
    fn metrics_follow_the_confusion_matrix() {
        let classes = vec!["a".to_owned(), "b".to_owned()];
        // truth a,a,b,b; predicted a,b,b,b.
        let metrics = ValidationMetrics::from_predictions(&classes, &[0, 0, 1, 1], &[0, 1, 1, 1]);
        assert_eq!(metrics.confusion_matrix, [1, 1, 0, 2]);
        assert_eq!(metrics.accuracy, 0.75);
        assert_eq!(metrics.per_class[0].precision, 1.0);
        assert_eq!(metrics.per_class[0].recall, 0.5);
        assert!((metrics.per_class[1].precision - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(metrics.per_class[1].recall, 1.0);
        assert!((metrics.per_class[1].f1 - 0.8).abs() < 1e-6);
    }
}
