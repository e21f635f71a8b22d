//! Labelled examples and training (spec §7). Webhook events and `/train` bodies become work items
//! for one worker per project, which applies them in order: it downloads the image, stores the
//! labelled example on the core, and runs training when asked. Webhooks are hints; the resync from
//! Label Studio's API before each requested training is the source of truth.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use alps_proto::v1::{JobState, LabelledExample, TrainingMode, TrainingParameters};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{
    core_client::{Core, image_sample},
    label_config::LabelConfig,
    ls_api::{LabelStudio, LsError, Task},
    media::Media,
    projects::{ProjectLink, Projects},
};

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

/// The label a task carries in Label Studio, chosen among its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLabel {
    /// Label Studio task id.
    pub task: u64,
    /// The image reference (task data value under the config's image key).
    pub reference: String,
    /// The label (a Choice's alias or value).
    pub label: String,
    /// The annotation it comes from.
    pub annotation: u64,
    /// Whether that annotation is marked ground truth.
    pub ground_truth: bool,
    /// The annotation's `updated_at` (ISO 8601 in UTC as Label Studio writes it, compared as text;
    /// only breaks ties between annotations of one task).
    pub updated_at: String,
}

impl TaskLabel {
    /// Whether `self` should replace `other` as the task's label: a new state of the same
    /// annotation always does; otherwise ground truth wins, then the most recently updated.
    fn supersedes(&self, other: &TaskLabel) -> bool {
        self.annotation == other.annotation
            || (self.ground_truth, &self.updated_at) >= (other.ground_truth, &other.updated_at)
    }
}

/// The label of one annotation object, if it is an accepted single choice of the config
/// (cancelled, empty, multi-choice and unknown labels give `None`).
pub fn annotation_label(annotation: &Value, config: &LabelConfig) -> Option<String> {
    if annotation["was_cancelled"].as_bool() == Some(true) {
        return None;
    }
    let results = annotation["result"].as_array()?;
    let item = results.iter().find(|item| {
        item["from_name"].as_str() == Some(&config.choices_name) && item["type"].as_str() == Some("choices")
    })?;
    let [choice] = item["value"]["choices"].as_array()?.as_slice() else { return None };
    let label = choice.as_str()?;
    config.labels.iter().any(|known| known == label).then(|| label.to_owned())
}

/// The label of a task among its annotations (spec §7: ground truth wins, else the most recently
/// updated accepted one).
pub fn task_label(task_id: u64, data: &Value, annotations: &[Value], config: &LabelConfig) -> Option<TaskLabel> {
    let reference = data[&config.image_key].as_str()?.to_owned();
    annotations
        .iter()
        .filter_map(|annotation| {
            Some(TaskLabel {
                task: task_id,
                reference: reference.clone(),
                label: annotation_label(annotation, config)?,
                annotation: annotation["id"].as_u64().unwrap_or(0),
                ground_truth: annotation["ground_truth"].as_bool().unwrap_or(false),
                updated_at: annotation["updated_at"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .reduce(|best, candidate| if candidate.supersedes(&best) { candidate } else { best })
}

/// One unit of work for a project's worker.
#[derive(Debug)]
pub enum Work {
    /// An annotation was created or updated (webhook): its task's label, or `None` if the
    /// annotation no longer gives one (cancelled, emptied).
    Annotation {
        /// Task id.
        task: u64,
        /// Annotation id.
        annotation: u64,
        /// The label it gives, if any.
        label: Option<TaskLabel>,
    },
    /// Annotations were deleted (webhook).
    AnnotationsDeleted(Vec<u64>),
    /// Tasks were deleted (webhook).
    TasksDeleted(Vec<u64>),
    /// The complete labelled set (legacy `/train` body): replaces the stored set.
    Replace(Vec<TaskLabel>),
    /// Replace the stored set with Label Studio's labelled tasks (first contact after a start,
    /// every `--resync-interval-secs`, before a requested training run); `done` is told when
    /// it has finished.
    Resync {
        /// Signalled after the resync (the trainer waits for it).
        done: Option<oneshot::Sender<()>>,
    },
    /// Train (START_TRAINING, `/train`, or the automatic policy); `resync` first if possible.
    Train {
        /// Resync from Label Studio before training.
        resync: bool,
    },
}

/// Runs the per-project workers.
#[derive(Debug)]
pub struct Labelling {
    core: Core,
    media: Arc<Media>,
    label_studio: Option<Arc<LabelStudio>>,
    projects: Arc<Projects>,
    policy: TrainingPolicy,
    workers: Mutex<HashMap<u64, mpsc::UnboundedSender<Work>>>,
    /// Projects whose training run is in progress.
    training: Mutex<HashSet<u64>>,
}

impl Labelling {
    /// A dispatcher; workers start on a project's first work item.
    pub fn new(
        core: Core,
        media: Arc<Media>,
        label_studio: Option<Arc<LabelStudio>>,
        projects: Arc<Projects>,
        policy: TrainingPolicy,
    ) -> Arc<Self> {
        Arc::new(Self {
            core,
            media,
            label_studio,
            projects,
            policy,
            workers: Mutex::default(),
            training: Mutex::default(),
        })
    }

    /// Whether a training run of `ls_id` is in progress.
    pub fn is_training(&self, ls_id: u64) -> bool {
        self.training.lock().expect("training set poisoned").contains(&ls_id)
    }

    /// Queues `work` for project `ls_id` and returns at once.
    pub fn submit(self: &Arc<Self>, ls_id: u64, work: Work) {
        let mut workers = self.workers.lock().expect("workers poisoned");
        let sender = workers.entry(ls_id).or_insert_with(|| self.start_worker(ls_id));
        if let Err(mpsc::error::SendError(work)) = sender.send(work) {
            // The worker ended (it never does on its own); start a new one.
            let sender = self.start_worker(ls_id);
            let _ = sender.send(work);
            workers.insert(ls_id, sender);
        }
    }

    fn start_worker(self: &Arc<Self>, ls_id: u64) -> mpsc::UnboundedSender<Work> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (trainer, train_receiver) = mpsc::unbounded_channel();
        let worker = Worker {
            labelling: Arc::clone(self),
            ls_id,
            trainer,
            labels: HashMap::new(),
            since_training: 0,
            retry: Vec::new(),
        };
        tokio::spawn(worker.run(receiver));
        tokio::spawn(Arc::clone(self).trainer(ls_id, train_receiver, sender.clone()));
        sender
    }

    /// Coalesces training requests: waits for the debounce time, drains what arrived meanwhile,
    /// resyncs (through the worker, so it is ordered with webhook events) and trains.
    async fn trainer(
        self: Arc<Self>,
        ls_id: u64,
        mut requests: mpsc::UnboundedReceiver<TrainRequest>,
        worker: mpsc::UnboundedSender<Work>,
    ) {
        while let Some(first) = requests.recv().await {
            tokio::time::sleep(self.policy.debounce).await;
            let mut resync = first.resync;
            while let Ok(more) = requests.try_recv() {
                resync |= more.resync;
            }
            if resync {
                let (done, finished) = oneshot::channel();
                if worker.send(Work::Resync { done: Some(done) }).is_err() {
                    return;
                }
                let _ = finished.await;
            }
            self.training.lock().expect("training set poisoned").insert(ls_id);
            self.train(ls_id).await;
            self.training.lock().expect("training set poisoned").remove(&ls_id);
        }
    }

    async fn train(&self, ls_id: u64) {
        let Some(link) = self.projects.get(ls_id) else { return };
        let (labelled, classes) = match self.core.count_examples(&link.alps_id()).await {
            Ok(counts) => counts,
            Err(status) => {
                tracing::warn!(project = ls_id, %status, "cannot count labelled examples; not training");
                crate::metrics::training("error");
                return;
            }
        };
        if labelled < self.policy.min_labels || classes < 2 {
            tracing::info!(
                project = ls_id,
                labelled,
                classes,
                min_labels = self.policy.min_labels,
                "not training yet: too few labelled tasks or classes"
            );
            crate::metrics::training("skipped");
            return;
        }
        // A randomly initialised model learns its backbone too; a pretrained one its head only.
        let mode = if link.model.weights.is_some() { TrainingMode::HeadOnly } else { TrainingMode::Full };
        let parameters = TrainingParameters {
            mode: mode as i32,
            epochs: self.policy.epochs,
            learning_rate: self.policy.learning_rate,
            validation_fraction: self.policy.validation_fraction,
            ..TrainingParameters::default()
        };
        tracing::info!(project = ls_id, labelled, classes, ?mode, "training");
        match self.core.train(&link.alps_id(), parameters).await {
            Ok(job) if job.state == JobState::Succeeded as i32 && job.not_activated_reason.is_empty() => {
                tracing::info!(project = ls_id, version = %job.model_version, "training finished");
                crate::metrics::training("succeeded");
                self.projects.set_active_version(ls_id, &job.model_version);
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
}

/// A training request for a project's trainer.
#[derive(Debug)]
struct TrainRequest {
    resync: bool,
}

/// Applies one project's work items in order. Owns the project's view of task labels.
struct Worker {
    labelling: Arc<Labelling>,
    ls_id: u64,
    /// The project's trainer, which coalesces training requests.
    trainer: mpsc::UnboundedSender<TrainRequest>,
    /// Current label per task, as stored on the core.
    labels: HashMap<u64, TaskLabel>,
    /// Labels stored since the last automatic training.
    since_training: u32,
    /// Labels whose storing failed for a reason that may pass (core or Label Studio unreachable),
    /// tried again every [`RETRY_AFTER`].
    retry: Vec<TaskLabel>,
}

/// Pause before labels that failed to store are tried again.
const RETRY_AFTER: Duration = Duration::from_secs(15);

impl Worker {
    async fn run(mut self, mut items: mpsc::UnboundedReceiver<Work>) {
        loop {
            let work = match tokio::time::timeout(RETRY_AFTER, items.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(_idle) => {
                    let retry = std::mem::take(&mut self.retry);
                    if !retry.is_empty() {
                        tracing::info!(project = self.ls_id, labels = retry.len(), "storing labels again");
                        self.store(retry).await;
                    }
                    continue;
                }
            };
            self.apply(work).await;
        }
    }

    async fn apply(&mut self, work: Work) {
        match work {
            Work::Annotation { task, annotation, label } => {
                if self.annotation(task, annotation, label).await {
                    self.count_new_label();
                }
            }
            Work::AnnotationsDeleted(annotations) => {
                let tasks: Vec<u64> = self
                    .labels
                    .values()
                    .filter(|label| annotations.contains(&label.annotation))
                    .map(|l| l.task)
                    .collect();
                self.refresh_tasks(tasks).await;
            }
            Work::TasksDeleted(tasks) => self.remove(tasks).await,
            Work::Replace(labels) => self.replace(labels).await,
            Work::Resync { done } => {
                self.resync().await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Work::Train { resync } => {
                let _ = self.trainer.send(TrainRequest { resync });
            }
        }
    }

    /// The automatic policy: every `--train-every` new labels start a training run.
    fn count_new_label(&mut self) {
        self.since_training += 1;
        let every = self.labelling.policy.every;
        if every > 0 && self.since_training >= every {
            self.since_training = 0;
            let _ = self.trainer.send(TrainRequest { resync: false });
        }
    }

    async fn annotation(&mut self, task: u64, annotation: u64, label: Option<TaskLabel>) -> bool {
        let current = self.labels.get(&task);
        if label.is_some() && label.as_ref() == current {
            // The same event again: nothing new.
            return false;
        }
        match label {
            Some(label) if current.is_none_or(|current| label.supersedes(current)) => self.store(vec![label]).await > 0,
            Some(_) => false,
            // The annotation that gave the task its label gives none any more.
            None if current.is_some_and(|current| current.annotation == annotation) => {
                self.refresh_tasks(vec![task]).await;
                false
            }
            None => false,
        }
    }

    /// Re-reads tasks from Label Studio and stores or removes their labels; without Label Studio
    /// access their labels are removed.
    async fn refresh_tasks(&mut self, tasks: Vec<u64>) {
        let Some(ls) = self.labelling.label_studio.clone() else {
            self.remove(tasks).await;
            return;
        };
        let Some(link) = self.link().await else { return };
        for task in tasks {
            match ls.task(task).await {
                Ok(found) => match task_label(found.id, &found.data, &found.annotations, &link.config) {
                    Some(label) => {
                        self.store(vec![label]).await;
                    }
                    None => self.remove(vec![task]).await,
                },
                Err(LsError::Status { status: StatusCode::NOT_FOUND, .. }) => self.remove(vec![task]).await,
                Err(error) => {
                    // Keep the label: the next resync settles it.
                    tracing::warn!(project = self.ls_id, task, %error, "cannot re-read the task; keeping its label");
                }
            }
        }
    }

    /// Replaces the stored set with Label Studio's labelled tasks (spec §7 resync).
    async fn resync(&mut self) {
        let (Some(ls), Some(link)) = (self.labelling.label_studio.clone(), self.link().await) else {
            tracing::info!(
                project = self.ls_id,
                "no LABEL_STUDIO_URL/API key: training on the labels received by webhook"
            );
            return;
        };
        match ls.annotated_tasks(self.ls_id).await {
            Ok(tasks) => {
                let labels = labels_of(&tasks, &link.config);
                tracing::info!(project = self.ls_id, annotated = tasks.len(), labelled = labels.len(), "resynced");
                crate::metrics::resync("ok");
                self.replace(labels).await;
            }
            Err(error) => {
                tracing::warn!(project = self.ls_id, %error, "resync failed; training on the labels received so far");
                crate::metrics::resync("error");
            }
        }
    }

    /// Makes the core's examples equal `labels`: stores new and changed ones, deletes the rest.
    async fn replace(&mut self, labels: Vec<TaskLabel>) {
        let Some(link) = self.link().await else { return };
        let stored = match self.labelling.core.examples(&link.alps_id()).await {
            Ok(stored) => stored,
            Err(status) => {
                tracing::warn!(project = self.ls_id, %status, "cannot list stored examples");
                return;
            }
        };
        let wanted: HashMap<String, &TaskLabel> = labels.iter().map(|label| (label.task.to_string(), label)).collect();
        let unchanged: HashSet<String> = stored
            .iter()
            .filter(|example| {
                wanted.get(&example.external_id).is_some_and(|label| {
                    label.label == example.class_name
                        && example.metadata.get("annotation_id") == Some(&label.annotation.to_string())
                })
            })
            .map(|example| example.external_id.clone())
            .collect();
        let stale: Vec<u64> = stored
            .iter()
            .filter(|example| !wanted.contains_key(&example.external_id))
            .filter_map(|example| example.external_id.parse().ok())
            .collect();
        self.remove(stale).await;
        let changed: Vec<TaskLabel> =
            labels.iter().filter(|label| !unchanged.contains(&label.task.to_string())).cloned().collect();
        for label in labels.iter().filter(|label| unchanged.contains(&label.task.to_string())) {
            self.labels.insert(label.task, label.clone());
        }
        for batch in changed.chunks(32) {
            self.store(batch.to_vec()).await;
        }
    }

    /// Downloads the images and stores the labels; returns how many were stored. Labels that
    /// failed for a passing reason are kept for a later try.
    async fn store(&mut self, labels: Vec<TaskLabel>) -> usize {
        let Some(link) = self.link().await else {
            self.retry.extend(labels);
            return 0;
        };
        let mut examples = Vec::new();
        let mut fetched = Vec::new();
        for label in labels {
            match self.labelling.media.fetch(label.task, &label.reference).await {
                Ok(bytes) => {
                    examples.push(example(&label, bytes));
                    fetched.push(label);
                }
                Err(error) => {
                    crate::metrics::media_failure(error.cause());
                    tracing::warn!(project = self.ls_id, task = label.task, %error, "cannot fetch the labelled image");
                    if error.is_transient() {
                        self.retry.push(label);
                    }
                }
            }
        }
        if examples.is_empty() {
            return 0;
        }
        if let Err(status) = self.labelling.core.add_examples(&link.alps_id(), examples).await {
            let tasks: Vec<u64> = fetched.iter().map(|label| label.task).collect();
            tracing::warn!(project = self.ls_id, ?tasks, %status, "cannot store labelled examples");
            if status.code() != tonic::Code::InvalidArgument {
                self.retry.extend(fetched);
            }
            return 0;
        }
        let count = fetched.len();
        for label in fetched {
            self.labels.insert(label.task, label);
        }
        count
    }

    async fn remove(&mut self, tasks: Vec<u64>) {
        let Some(link) = self.link().await else { return };
        if tasks.is_empty() {
            return;
        }
        let ids = tasks.iter().map(u64::to_string).collect();
        match self.labelling.core.delete_examples(&link.alps_id(), ids).await {
            Ok(()) => {
                for task in tasks {
                    self.labels.remove(&task);
                }
            }
            Err(status) => tracing::warn!(project = self.ls_id, %status, "cannot delete labelled examples"),
        }
    }

    /// The project's link once its ALPS project exists (examples cannot be stored before).
    async fn link(&self) -> Option<ProjectLink> {
        match self.labelling.projects.ensure(self.ls_id).await {
            Ok(link) => Some(link),
            Err(status) => {
                tracing::warn!(project = self.ls_id, %status, "cannot prepare the ALPS project; dropping labelled-set work");
                None
            }
        }
    }
}

/// The labels of annotated tasks (a resync page or a `/train` body).
pub fn labels_of(tasks: &[Task], config: &LabelConfig) -> Vec<TaskLabel> {
    tasks.iter().filter_map(|task| task_label(task.id, &task.data, &task.annotations, config)).collect()
}

/// The work items of one webhook event (spec §2.4, §7).
pub fn webhook_work(action: &str, body: &Value, config: &LabelConfig) -> Vec<Work> {
    let ids = |list: &Value| list.as_array().into_iter().flatten().filter_map(|item| item["id"].as_u64()).collect();
    match action {
        "ANNOTATION_CREATED" | "ANNOTATION_UPDATED" => annotation_work(&body["annotation"], &body["task"], config),
        "ANNOTATIONS_CREATED" => {
            let (annotations, tasks) = (body["annotation"].as_array(), body["task"].as_array());
            let pairs = annotations.into_iter().flatten().zip(tasks.into_iter().flatten());
            pairs.flat_map(|(annotation, task)| annotation_work(annotation, task, config)).collect()
        }
        "ANNOTATIONS_DELETED" => vec![Work::AnnotationsDeleted(ids(&body["annotations"]))],
        "TASKS_DELETED" => vec![Work::TasksDeleted(ids(&body["tasks"]))],
        "START_TRAINING" => vec![Work::Train { resync: true }],
        _ => Vec::new(),
    }
}

fn annotation_work(annotation: &Value, task: &Value, config: &LabelConfig) -> Vec<Work> {
    let task_id = task["id"].as_u64().or_else(|| annotation["task"].as_u64());
    let Some(task_id) = task_id else { return Vec::new() };
    let label = task_label(task_id, &task["data"], std::slice::from_ref(annotation), config);
    vec![Work::Annotation { task: task_id, annotation: annotation["id"].as_u64().unwrap_or(0), label }]
}

fn example(label: &TaskLabel, bytes: Vec<u8>) -> LabelledExample {
    LabelledExample {
        external_id: label.task.to_string(),
        sample: Some(image_sample(String::new(), bytes)),
        class_name: label.label.clone(),
        metadata: [
            ("annotation_id".to_owned(), label.annotation.to_string()),
            ("updated_at".to_owned(), label.updated_at.clone()),
            ("source".to_owned(), "label-studio".to_owned()),
        ]
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::label_config;

    fn config() -> LabelConfig {
        label_config::parse(label_config::SUPPORTED_EXAMPLE).unwrap()
    }

    fn annotation(id: u64, label: &str, updated_at: &str, ground_truth: bool) -> Value {
        json!({"id": id, "was_cancelled": false, "ground_truth": ground_truth, "updated_at": updated_at,
               "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]})
    }

    #[test]
    fn accepted_single_choices_give_labels() {
        let config = config();
        assert_eq!(annotation_label(&annotation(1, "Car", "", false), &config).as_deref(), Some("Car"));
        let mut cancelled = annotation(1, "Car", "", false);
        cancelled["was_cancelled"] = json!(true);
        let mut two = annotation(1, "Car", "", false);
        two["result"][0]["value"]["choices"] = json!(["Car", "Truck"]);
        let mut other_control = annotation(1, "Car", "", false);
        other_control["result"][0]["from_name"] = json!("comment");
        for rejected in [cancelled, two, other_control, annotation(1, "Bus", "", false), json!({"result": []})] {
            assert_eq!(annotation_label(&rejected, &config), None, "{rejected}");
        }
    }

    #[test]
    fn ground_truth_wins_then_the_latest_update() {
        let config = config();
        let data = json!({"image": "/data/upload/1/a.png"});
        let latest = [
            annotation(1, "Car", "2025-01-01T00:00:00Z", false),
            annotation(2, "Truck", "2025-02-01T00:00:00Z", false),
        ];
        let label = task_label(9, &data, &latest, &config).unwrap();
        assert_eq!((label.label.as_str(), label.annotation, label.task), ("Truck", 2, 9));
        assert_eq!(label.reference, "/data/upload/1/a.png");
        let with_truth =
            [annotation(1, "Car", "2025-01-01T00:00:00Z", true), annotation(2, "Truck", "2025-02-01T00:00:00Z", false)];
        assert_eq!(task_label(9, &data, &with_truth, &config).unwrap().label, "Car");
        assert_eq!(task_label(9, &json!({}), &latest, &config), None, "no image reference");
        assert_eq!(task_label(9, &data, &[], &config), None);
    }

    #[test]
    fn bulk_annotation_events_give_one_item_per_annotation() {
        let config = config();
        let annotation = |id: u64, task: u64| json!({"id": id, "task": task, "result": [{"from_name": "label", "type": "choices", "value": {"choices": ["Car"]}}]});
        let body = json!({
            "annotation": [annotation(1, 10), annotation(2, 11)],
            "task": [{"id": 10, "data": {"image": "/a.png"}}, {"id": 11, "data": {"image": "/b.png"}}],
        });
        let work = webhook_work("ANNOTATIONS_CREATED", &body, &config);
        assert_eq!(work.len(), 2);
        let Work::Annotation { task, label: Some(label), .. } = &work[1] else { panic!("{work:?}") };
        assert_eq!((*task, label.label.as_str(), label.reference.as_str()), (11, "Car", "/b.png"));
        let deleted = webhook_work("ANNOTATIONS_DELETED", &json!({"annotations": [{"id": 17}]}), &config);
        assert!(matches!(deleted.as_slice(), [Work::AnnotationsDeleted(ids)] if ids == &[17]));
    }
}
