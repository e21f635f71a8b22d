//! `/predict`: one entry per task, in request order. Tasks are split into chunks; each
//! chunk fetches its images and makes one gRPC Predict call, with bounded concurrency, until the
//! prediction budget is spent. A task that fails or is not reached gets an entry without `result`
//! and with an `error`, which Label Studio skips and asks for again later. Tasks the background
//! scorer ([`crate::scoring`]) already scored for the current version are answered from memory;
//! tasks it already wrote get a `result`-less entry (so no task holds two predictions of one
//! version), and the tasks answered here are left out of its writes.

use std::{sync::Arc, time::Duration};

use alps_proto::v1::predict_result::Outcome;
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use crate::{
    core_client::Core,
    media::{Media, MediaError},
    projects::ProjectLink,
    scoring::{ScoreSpec, Scoring, prediction_json, scored_of},
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

/// What a `/predict` request works with.
#[derive(Clone, Debug)]
pub struct PredictContext {
    /// alps-server.
    pub core: Core,
    /// Image downloads.
    pub media: Arc<Media>,
    /// The background scorer, whose scores answer at once.
    pub scoring: Arc<Scoring>,
}

/// Predicts every task until `deadline`; tasks not reached by then get a deferred entry.
pub async fn predict_tasks(
    context: &PredictContext,
    link: &ProjectLink,
    spec: &ScoreSpec,
    tasks: Vec<TaskInput>,
    settings: PredictSettings,
    deadline: Instant,
) -> Predictions {
    let mut entries: Vec<Option<Value>> = vec![None; tasks.len()];
    // Scores the background scorer computed for this version answer at once.
    let mut remaining = Vec::new();
    let mut already_written = 0;
    for (index, task) in tasks.iter().enumerate() {
        if task.id != 0 && context.scoring.written(link.ls_id, &spec.version, task.id) {
            // Label Studio picked the task before the pass wrote it (or the prediction was
            // deleted since): no second prediction of this version; a pass re-checks.
            entries[index] = Some(json!({"model_version": spec.version,
                "error": format!("already stored by the background scorer (task {})", task.id)}));
            already_written += 1;
            continue;
        }
        match context.scoring.cached(link.ls_id, &spec.version, task.id).filter(|_| task.id != 0) {
            Some(scored) => {
                crate::metrics::tasks("cached", 1);
                let mut entry = prediction_json(link, task.id, scored);
                entry["model_version"] = json!(spec.version);
                entries[index] = Some(entry);
            }
            None => remaining.push(index),
        }
    }
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let link = Arc::new(link.clone());
    let spec = Arc::new(spec.clone());
    let mut chunks = JoinSet::new();
    for indices in remaining.chunks(settings.chunk) {
        let (context, link, spec, permits) =
            (context.clone(), Arc::clone(&link), Arc::clone(&spec), Arc::clone(&permits));
        let chunk: Vec<TaskInput> = indices.iter().map(|&index| tasks[index].clone()).collect();
        let indices = indices.to_vec();
        chunks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            (indices, predict_chunk(&context, &link, &spec, chunk).await)
        });
    }
    let mut alps_version = None;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, chunks.join_next()).await {
        let (indices, (chunk_entries, served_by)) = match joined {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(project = link.ls_id, %error, "a prediction chunk failed");
                continue;
            }
        };
        alps_version = served_by.or(alps_version);
        for (index, entry) in indices.into_iter().zip(chunk_entries) {
            entries[index] = Some(entry);
        }
    }
    chunks.abort_all();
    let model_version = alps_version.as_ref().map_or_else(|| spec.version.clone(), |v| link.version_of(v));
    let deferred: Vec<u64> =
        tasks.iter().zip(&entries).filter(|(_, entry)| entry.is_none()).map(|(task, _)| task.id).collect();
    if !deferred.is_empty() {
        tracing::warn!(project = link.ls_id, tasks = ?deferred, budget = ?settings.budget, "prediction budget spent");
        crate::metrics::tasks("deferred", deferred.len());
    }
    if already_written > 0 {
        crate::metrics::tasks("already_written", already_written);
        context.scoring.trigger(link.ls_id);
    }
    let budget = settings.budget.as_secs();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|entry| {
            entry.unwrap_or_else(|| {
                json!({"model_version": model_version,
                       "error": format!("deferred: the {budget} s prediction budget was spent; retrieve predictions again")})
            })
        })
        .collect();
    if model_version == spec.version {
        let answered = tasks.iter().zip(&entries).filter(|(task, entry)| task.id != 0 && entry.get("result").is_some());
        context.scoring.served(link.ls_id, &spec.version, answered.map(|(task, _)| task.id).collect::<Vec<_>>());
    }
    Predictions { entries, model_version, alps_version }
}

/// Fetches the chunk's images and predicts them in one call. Returns one entry per task, each with
/// the version that served it, and the ALPS version of the call if it succeeded.
async fn predict_chunk(
    context: &PredictContext,
    link: &ProjectLink,
    spec: &ScoreSpec,
    chunk: Vec<TaskInput>,
) -> (Vec<Value>, Option<String>) {
    let (core, media) = (&context.core, &context.media);
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
        match core.predict(&link.alps_id(), samples, spec.predict_heuristic.as_deref()).await {
            Ok(predicted) => {
                let mut results = predicted.results.into_iter();
                // Scores of the version the link names may be kept for the background scorer.
                let current = predicted.model_version == link.active_version;
                for index in sample_tasks {
                    entries[index] = Some(match results.next().and_then(|result| result.outcome) {
                        Some(Outcome::Prediction(prediction)) => match scored_of(link, spec, &prediction) {
                            Ok(scored) => {
                                crate::metrics::tasks("predicted", 1);
                                if current && chunk[index].id != 0 {
                                    context.scoring.remember(link.ls_id, &spec.version, chunk[index].id, scored);
                                }
                                prediction_json(link, chunk[index].id, scored)
                            }
                            Err(error) => failed(link, &chunk[index], error),
                        },
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
    let version = served_by.as_ref().map_or_else(|| spec.version.clone(), |v| link.version_of(v));
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

/// A `result`-less entry: Label Studio stores nothing for the task and asks again later.
fn failed(link: &ProjectLink, task: &TaskInput, error: String) -> Value {
    tracing::warn!(project = link.ls_id, task = task.id, %error, "task not predicted");
    crate::metrics::tasks("failed", 1);
    json!({"error": format!("{error} (task {})", task.id)})
}
