//! The per-project labelling actor. Webhook events and `/train` bodies become work
//! items ([`crate::translate`]) for one worker per project, which applies them in order: it
//! downloads the image, stores the labelled example on the core, and hands training requests to
//! the project's trainer ([`crate::training`]). Webhooks are hints; the resync from Label Studio's
//! API before each requested training is the source of truth.
//!
//! Queues are bounded: [`WORK_QUEUE`] items per project (a full queue drops the event with a
//! warning; the resync before training catches what was dropped) and [`TRAIN_QUEUE`] training
//! requests (more are already coalesced into the pending run).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use tokio::sync::{mpsc, oneshot};

// The translation functions keep their historical paths (`labels::webhook_work`, ...).
pub use crate::training::TrainingPolicy;
pub use crate::translate::{TaskLabel, WEBHOOK_ACTIONS, Work, annotation_label, labels_of, task_label, webhook_work};
use crate::{
    core_client::Core,
    ls_api::{LabelStudio, LsError},
    media::Media,
    projects::{ProjectLink, Projects},
    scoring::Scoring,
    training::{TrainingBoard, train},
    translate::example,
};

/// Work items a project's queue holds before new events are dropped.
pub const WORK_QUEUE: usize = 4096;

/// Training requests a project's trainer holds; more are coalesced into the pending run anyway.
pub const TRAIN_QUEUE: usize = 8;

/// Runs the per-project workers.
#[derive(Debug)]
pub struct Labelling {
    core: Core,
    media: Arc<Media>,
    label_studio: Option<Arc<LabelStudio>>,
    projects: Arc<Projects>,
    policy: TrainingPolicy,
    workers: Mutex<HashMap<u64, mpsc::Sender<Work>>>,
    /// Training progress per project (this adapter's runs).
    board: Arc<TrainingBoard>,
    /// Pool scoring, told about imported tasks.
    scoring: Arc<Scoring>,
}

impl Labelling {
    /// A dispatcher; workers start on a project's first work item.
    pub fn new(
        core: Core,
        media: Arc<Media>,
        label_studio: Option<Arc<LabelStudio>>,
        projects: Arc<Projects>,
        policy: TrainingPolicy,
        scoring: Arc<Scoring>,
    ) -> Arc<Self> {
        Arc::new(Self {
            core,
            media,
            label_studio,
            projects,
            policy,
            workers: Mutex::default(),
            board: Arc::default(),
            scoring,
        })
    }

    /// Training progress of this adapter's runs.
    pub fn board(&self) -> &Arc<TrainingBoard> {
        &self.board
    }

    /// Queues `work` for project `ls_id` and returns at once; a full queue drops it (logged).
    pub fn submit(self: &Arc<Self>, ls_id: u64, work: Work) {
        if matches!(work, Work::TasksCreated) {
            self.scoring.trigger(ls_id);
            return;
        }
        let mut workers = self.workers.lock().expect("workers poisoned");
        let sender = workers.entry(ls_id).or_insert_with(|| self.start_worker(ls_id));
        match sender.try_send(work) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(work)) => {
                crate::metrics::work_dropped();
                tracing::warn!(
                    project = ls_id,
                    ?work,
                    queue = WORK_QUEUE,
                    "work queue full; event dropped (the next resync settles it)"
                );
            }
            Err(mpsc::error::TrySendError::Closed(work)) => {
                // The worker ended (it never does on its own); start a new one.
                let sender = self.start_worker(ls_id);
                let _ = sender.try_send(work);
                workers.insert(ls_id, sender);
            }
        }
    }

    fn start_worker(self: &Arc<Self>, ls_id: u64) -> mpsc::Sender<Work> {
        let (sender, receiver) = mpsc::channel(WORK_QUEUE);
        let (trainer, train_receiver) = mpsc::channel(TRAIN_QUEUE);
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
        mut requests: mpsc::Receiver<TrainRequest>,
        worker: mpsc::Sender<Work>,
    ) {
        while let Some(first) = requests.recv().await {
            tokio::time::sleep(self.policy.debounce).await;
            let mut resync = first.resync;
            while let Ok(more) = requests.try_recv() {
                resync |= more.resync;
            }
            if resync {
                let (done, finished) = oneshot::channel();
                if worker.send(Work::Resync { done: Some(done) }).await.is_err() {
                    return;
                }
                let _ = finished.await;
            }
            train(&self.core, &self.projects, &self.policy, &self.board, ls_id).await;
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
    trainer: mpsc::Sender<TrainRequest>,
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
    async fn run(mut self, mut items: mpsc::Receiver<Work>) {
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
                // A full queue already holds a pending run.
                let _ = self.trainer.try_send(TrainRequest { resync });
            }
            Work::TasksCreated => self.labelling.scoring.trigger(self.ls_id),
        }
    }

    /// The automatic policy: every `--train-every` new labels start a training run.
    fn count_new_label(&mut self) {
        self.since_training += 1;
        let every = self.labelling.policy.every;
        if every > 0 && self.since_training >= every {
            self.since_training = 0;
            let _ = self.trainer.try_send(TrainRequest { resync: false });
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
                        // Label Studio's state is the truth, even when the annotation it came
                        // from is older than a deleted one whose label the core holds (the core
                        // would refuse it as stale): remove first, then store.
                        self.remove(vec![task]).await;
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

    /// Replaces the stored set with Label Studio's labelled tasks.
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
        // A stored revision above Label Studio's current one came from an annotation deleted
        // since: the core would refuse the current label as stale, so its example goes first.
        let revisions: HashMap<&str, u64> =
            stored.iter().map(|example| (example.external_id.as_str(), example.label_revision)).collect();
        let outranked: Vec<u64> = changed
            .iter()
            .filter(|label| {
                revisions.get(label.task.to_string().as_str()).is_some_and(|&stored| stored > label.revision)
            })
            .map(|label| label.task)
            .collect();
        self.remove(outranked).await;
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
        let stale = match self.labelling.core.add_examples(&link.alps_id(), examples).await {
            Ok(stale) => stale as usize,
            Err(status) => {
                let tasks: Vec<u64> = fetched.iter().map(|label| label.task).collect();
                tracing::warn!(project = self.ls_id, ?tasks, %status, "cannot store labelled examples");
                if status.code() != tonic::Code::InvalidArgument {
                    self.retry.extend(fetched);
                }
                return 0;
            }
        };
        if stale > 0 {
            // Another replica (or a retry) stored a newer state of these tasks first.
            tracing::info!(project = self.ls_id, stale, "labels older than the stored ones were not applied");
        }
        let count = fetched.len().saturating_sub(stale);
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
