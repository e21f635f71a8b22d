//! `/predict` (spec §2.3): one entry per task, in request order. Tasks are split into chunks; each
//! chunk fetches its images and makes one gRPC Predict call, with bounded concurrency, until the
//! prediction budget is spent. A task that fails or is not reached gets an entry without `result`
//! and with an `error`, which Label Studio skips and asks for again later.

use std::{sync::Arc, time::Duration};

use alps_proto::v1::{Prediction, predict_result::Outcome};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use crate::{
    config::ScoreMode,
    core_client::Core,
    media::{Media, MediaError},
    projects::{ProjectLink, model_version},
};

/// How `/predict` divides its work.
#[derive(Clone, Copy, Debug)]
pub struct PredictSettings {
    /// Time for the whole request, after which unfinished tasks are answered as deferred.
    pub budget: Duration,
    /// Tasks per gRPC Predict call.
    pub chunk: usize,
    /// Predict calls in flight per request.
    pub concurrency: usize,
}

/// One task of a `/predict` request: its id and its image reference (task data value).
#[derive(Clone, Debug)]
pub struct TaskInput {
    /// Label Studio task id (0 if absent).
    pub id: u64,
    /// The value under the config's image key; `None` if missing.
    pub reference: Option<String>,
}

/// The answer to a `/predict` request.
#[derive(Debug)]
pub struct Predictions {
    /// One `results` entry per task, in task order.
    pub entries: Vec<Value>,
    /// The version string of the request (the last one that served a chunk, else the cached one).
    pub model_version: String,
    /// The ALPS version that served the last chunk (`v3`), if any chunk was served.
    pub alps_version: Option<String>,
}

/// Predicts every task until `deadline`; tasks not reached by then get a deferred entry.
pub async fn predict_tasks(
    core: &Core,
    media: &Arc<Media>,
    link: &ProjectLink,
    tasks: Vec<TaskInput>,
    settings: PredictSettings,
    deadline: Instant,
) -> Predictions {
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let link = Arc::new(link.clone());
    let mut chunks = JoinSet::new();
    for (chunk_index, chunk) in tasks.chunks(settings.chunk).enumerate() {
        let (core, media, link, permits) = (core.clone(), Arc::clone(media), Arc::clone(&link), Arc::clone(&permits));
        let chunk = chunk.to_vec();
        let first = chunk_index * settings.chunk;
        chunks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            (first, predict_chunk(&core, &media, &link, chunk).await)
        });
    }
    let mut entries: Vec<Option<Value>> = vec![None; tasks.len()];
    let mut alps_version = None;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, chunks.join_next()).await {
        let (first, (chunk_entries, served_by)) = match joined {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(project = link.ls_id, %error, "a prediction chunk failed");
                continue;
            }
        };
        alps_version = served_by.or(alps_version);
        for (offset, entry) in chunk_entries.into_iter().enumerate() {
            entries[first + offset] = Some(entry);
        }
    }
    chunks.abort_all();
    let model_version =
        alps_version.as_ref().map_or_else(|| link.model_version(), |v| model_version(&link.model.name, v));
    let deferred: Vec<u64> =
        tasks.iter().zip(&entries).filter(|(_, entry)| entry.is_none()).map(|(task, _)| task.id).collect();
    if !deferred.is_empty() {
        tracing::warn!(project = link.ls_id, tasks = ?deferred, budget = ?settings.budget, "prediction budget spent");
        crate::metrics::tasks("deferred", deferred.len());
    }
    let budget = settings.budget.as_secs();
    let entries = entries
        .into_iter()
        .map(|entry| {
            entry.unwrap_or_else(|| {
                json!({"model_version": model_version,
                       "error": format!("deferred: the {budget} s prediction budget was spent; retrieve predictions again")})
            })
        })
        .collect();
    Predictions { entries, model_version, alps_version }
}

/// Fetches the chunk's images and predicts them in one call. Returns one entry per task, each with
/// the version that served it, and the ALPS version of the call if it succeeded.
async fn predict_chunk(
    core: &Core,
    media: &Arc<Media>,
    link: &ProjectLink,
    chunk: Vec<TaskInput>,
) -> (Vec<Value>, Option<String>) {
    let mut entries: Vec<Option<Value>> = vec![None; chunk.len()];
    let mut images: Vec<Option<Vec<u8>>> = vec![None; chunk.len()];
    // Dropping the set (when the request's deadline aborts this chunk) cancels the downloads.
    let mut fetches = JoinSet::new();
    for (index, task) in chunk.iter().cloned().enumerate() {
        let (media, key) = (Arc::clone(media), link.config.image_key.clone());
        fetches.spawn(async move { (index, fetch_image(&media, task, key).await) });
    }
    while let Some(joined) = fetches.join_next().await {
        let Ok((index, fetched)) = joined else { continue };
        match fetched {
            Ok(bytes) => images[index] = Some(bytes),
            Err(error) => entries[index] = Some(failed(link, &chunk[index], format!("media: {error}"))),
        }
    }
    let (sample_tasks, samples): (Vec<usize>, Vec<(String, Vec<u8>)>) = images
        .into_iter()
        .enumerate()
        .filter_map(|(index, bytes)| bytes.map(|bytes| (index, (chunk[index].id.to_string(), bytes))))
        .unzip();
    let mut served_by = None;
    if !samples.is_empty() {
        match core.predict(&link.alps_id(), samples).await {
            Ok(predicted) => {
                let mut results = predicted.results.into_iter();
                for index in sample_tasks {
                    entries[index] = Some(match results.next().and_then(|result| result.outcome) {
                        Some(Outcome::Prediction(prediction)) => prediction_entry(link, &chunk[index], &prediction),
                        Some(Outcome::Error(error)) => failed(link, &chunk[index], format!("model: {}", error.message)),
                        None => failed(link, &chunk[index], "model: no result".into()),
                    });
                }
                served_by = Some(predicted.model_version);
            }
            Err(status) => {
                for index in sample_tasks {
                    entries[index] = Some(failed(link, &chunk[index], format!("model server: {}", status.message())));
                }
            }
        }
    }
    let version = served_by.as_ref().map_or_else(|| link.model_version(), |v| model_version(&link.model.name, v));
    let entries = entries
        .into_iter()
        .map(|entry| {
            let mut entry = entry.unwrap_or_else(|| json!({"error": "not predicted"}));
            entry["model_version"] = json!(version);
            entry
        })
        .collect();
    (entries, served_by)
}

async fn fetch_image(media: &Media, task: TaskInput, key: String) -> Result<Vec<u8>, MediaError> {
    let reference = task.reference.ok_or(MediaError::MissingKey(key))?;
    let result = media.fetch(task.id, &reference).await;
    if let Err(error) = &result {
        crate::metrics::media_failure(error.cause());
    }
    result
}

/// The prediction entry of one task: a Choices region with the label's probability, and the
/// prediction-level score of the project's score mode (spec §3.4).
fn prediction_entry(link: &ProjectLink, task: &TaskInput, prediction: &Prediction) -> Value {
    let Some(label) = link.config.labels.iter().find(|label| **label == prediction.class_name) else {
        return failed(
            link,
            task,
            format!("model class {:?} is not in the label config; retrain", prediction.class_name),
        );
    };
    let score = match link.score_mode {
        ScoreMode::Confidence => prediction.probability,
        ScoreMode::Uncertainty => prediction.score,
    };
    if !score.is_finite() || !prediction.probability.is_finite() {
        return failed(link, task, format!("model: non-finite score {score}"));
    }
    crate::metrics::tasks("predicted", 1);
    json!({
        "score": score,
        "result": [{
            "id": format!("alps-{}", task.id),
            "from_name": link.config.choices_name,
            "to_name": link.config.image_name,
            "type": "choices",
            "value": {"choices": [label]},
            "score": prediction.probability,
        }],
    })
}

/// A `result`-less entry: Label Studio stores nothing for the task and asks again later.
fn failed(link: &ProjectLink, task: &TaskInput, error: String) -> Value {
    tracing::warn!(project = link.ls_id, task = task.id, %error, "task not predicted");
    crate::metrics::tasks("failed", 1);
    json!({"error": format!("{error} (task {})", task.id)})
}
