//! Label Studio JSON -> work: pure functions that read annotations, tasks and webhook events
//! and say what the per-project worker ([`crate::labels`]) must do. No I/O here.

use alps_proto::v1::LabelledExample;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::{core_client::image_sample, label_config::LabelConfig, ls_api::Task};

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
    /// The annotation's `updated_at` (ISO 8601 in UTC as Label Studio writes it, compared as text:
    /// orders states of one annotation and breaks ties between annotations of one task).
    pub updated_at: String,
    /// The label's revision for the core (`LabelledExample.label_revision`): the latest
    /// `updated_at` among the annotations it was chosen from, in microseconds since the Unix
    /// epoch; 0 when none parses. The core never lets a lower revision replace a higher one, so
    /// an update that reaches it late (from this adapter or another replica) loses.
    pub revision: u64,
}

impl TaskLabel {
    /// Whether `self` should replace `other` as the task's label: a state of the same annotation
    /// does unless it is older; otherwise ground truth wins, then the most recently updated.
    pub fn supersedes(&self, other: &TaskLabel) -> bool {
        if self.annotation == other.annotation {
            return later_or_same(&self.updated_at, &other.updated_at);
        }
        match (self.ground_truth, other.ground_truth) {
            (true, false) => true,
            (false, true) => false,
            _ => later_or_same(&self.updated_at, &other.updated_at),
        }
    }
}

/// Whether update time `a` is not before `b`: compared as instants when both are RFC 3339
/// (offsets and fractions of a second differ between writers), else as text.
fn later_or_same(a: &str, b: &str) -> bool {
    match (micros(a), micros(b)) {
        (Some(a), Some(b)) => a >= b,
        _ => a >= b,
    }
}

/// An RFC 3339 time (Label Studio writes e.g. `2026-11-30T10:00:00.123456Z`) in microseconds
/// since the Unix epoch.
fn micros(text: &str) -> Option<u64> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(time.unix_timestamp_nanos() / 1000).ok()
}

/// An annotation's `updated_at` in microseconds since the Unix epoch, if it is RFC 3339.
fn updated_at_micros(annotation: &Value) -> Option<u64> {
    micros(annotation["updated_at"].as_str()?)
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

/// The label of a task among its annotations (ground truth wins, else the most recently
/// updated accepted one). Its revision is the latest update among all of them, cancelled ones
/// included: cancelling the annotation that gave the label is a newer state of the task.
pub fn task_label(task_id: u64, data: &Value, annotations: &[Value], config: &LabelConfig) -> Option<TaskLabel> {
    let reference = data[&config.image_key].as_str()?.to_owned();
    let revision = annotations.iter().filter_map(updated_at_micros).max().unwrap_or(0);
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
                revision,
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
    /// Tasks were imported (webhook): the pool scorer looks for tasks without a prediction.
    TasksCreated,
    /// Train (START_TRAINING, `/train`, or the automatic policy); `resync` first if possible.
    Train {
        /// Resync from Label Studio before training.
        resync: bool,
    },
}

/// The labels of annotated tasks (a resync page or a `/train` body).
pub fn labels_of(tasks: &[Task], config: &LabelConfig) -> Vec<TaskLabel> {
    tasks.iter().filter_map(|task| task_label(task.id, &task.data, &task.annotations, config)).collect()
}

/// Webhook actions [`webhook_work`] acts on; `POST /webhook` answers others
/// `200 {"status": "ignored"}`.
pub const WEBHOOK_ACTIONS: [&str; 8] = [
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED",
    "TASKS_DELETED",
    "START_TRAINING",
    "PROJECT_UPDATED",
    "TASKS_CREATED",
];

/// The work items of one webhook event.
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
        "TASKS_CREATED" => vec![Work::TasksCreated],
        _ => Vec::new(),
    }
}

fn annotation_work(annotation: &Value, task: &Value, config: &LabelConfig) -> Vec<Work> {
    let task_id = task["id"].as_u64().or_else(|| annotation["task"].as_u64());
    let Some(task_id) = task_id else { return Vec::new() };
    let label = task_label(task_id, &task["data"], std::slice::from_ref(annotation), config);
    vec![Work::Annotation { task: task_id, annotation: annotation["id"].as_u64().unwrap_or(0), label }]
}

/// The labelled example the core stores for `label`, with the image `bytes`.
pub fn example(label: &TaskLabel, bytes: Vec<u8>) -> LabelledExample {
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
        label_revision: label.revision,
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
    fn the_revision_is_the_latest_update_of_the_task_in_microseconds() {
        let config = config();
        let data = json!({"image": "/data/upload/1/a.png"});
        // 2025-01-01T00:00:00Z is 1,735,689,600 s after the epoch.
        let one = [annotation(1, "Car", "2025-01-01T00:00:00.000250Z", false)];
        assert_eq!(task_label(9, &data, &one, &config).unwrap().revision, 1_735_689_600_000_250);
        // A ground-truth label chosen from an older annotation still carries the task's latest
        // update, so it is not refused as older than the label it replaces.
        let mut cancelled = annotation(3, "Truck", "2025-03-01T00:00:00+01:00", false);
        cancelled["was_cancelled"] = json!(true);
        let task = [
            annotation(1, "Car", "2025-01-01T00:00:00Z", true),
            annotation(2, "Truck", "2025-02-01T00:00:00Z", false),
            cancelled,
        ];
        let label = task_label(9, &data, &task, &config).unwrap();
        assert_eq!((label.label.as_str(), label.revision), ("Car", 1_740_783_600_000_000));
        assert_eq!(example(&label, Vec::new()).label_revision, label.revision);
        // No parsable time: unversioned.
        for unversioned in ["", "yesterday", "2025-01-01"] {
            let one = [annotation(1, "Car", unversioned, false)];
            assert_eq!(task_label(9, &data, &one, &config).unwrap().revision, 0, "{unversioned:?}");
        }
    }

    #[test]
    fn an_older_state_of_the_same_annotation_does_not_supersede_a_newer_one() {
        let config = config();
        let data = json!({"image": "/a.png"});
        let label = |name: &str, at: &str| task_label(9, &data, &[annotation(1, name, at, false)], &config).unwrap();
        let (older, newer) = (label("Car", "2025-01-01T00:00:00Z"), label("Truck", "2025-01-02T00:00:00Z"));
        assert!(newer.supersedes(&older));
        assert!(!older.supersedes(&newer), "a late webhook must not bring back an older label");
        assert!(older.supersedes(&older.clone()));
        // Instants, not text: 10:30+01:00 is before 10:00Z, and a missing fraction is .000.
        let (earlier, later) = (label("Car", "2025-01-02T10:30:00+01:00"), label("Truck", "2025-01-02T10:00:00.5Z"));
        assert!(later.supersedes(&earlier) && !earlier.supersedes(&later));
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
