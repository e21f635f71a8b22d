//! Background pool scoring. When a project is connected, when tasks are imported (the
//! `TASKS_CREATED` webhook) and whenever its scoring version changes, one actor per project scores
//! every unlabelled task that lacks a prediction of the current scoring version and writes the
//! predictions to Label Studio in bulk (`POST /api/projects/{id}/import/predictions`).
//!
//! What is missing is read from Label Studio itself (each task's stored prediction versions), so a
//! restarted adapter continues where it stopped without any local state. Three stages overlap,
//! joined by bounded queues: listing (keyset pages of the unlabelled pool), scoring
//! (`--predict-concurrency` gRPC Predict calls of `--predict-chunk` tasks in flight) and writing
//! (bulk imports of [`ScoringSettings::write_chunk`] predictions). A task is listed once per pass
//! and a pass runs once at a time per project, so no task gets two predictions of one version
//! from the adapter. A new version that becomes active mid-pass stops the pass (nothing served
//! by the new model is written under the old version's name) and a new pass starts.
//!
//! Scores: in confidence mode the probability of the predicted label; in uncertainty mode the
//! heuristic's value as a share of its maximum for C classes ([`normalised_score`]), so it lies in
//! [0, 1] with higher always more informative. For a batch heuristic (`batch_bald`, `power_bald`)
//! the per-sample scores are BALD's and, once a pass is complete, the `query_size` tasks the batch
//! heuristic selects (the core's Rank over the best-scored candidates) get scores above every
//! other, in selection order.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use alps_proto::v1::{Direction, HeuristicKind, Prediction, RankResponse, predict_result::Outcome};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinSet,
    time::Instant,
};

use crate::{
    config::ScoreMode,
    core_client::Core,
    ls_api::{LabelStudio, LsError, PoolTask},
    media::Media,
    projects::{ProjectLink, Projects},
    version_sync::VersionTargets,
};

/// Pause before a pass that failed (Label Studio or the core unreachable) is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(20);

/// Projects whose actor may be waiting to start; more new projects at once are dropped (their
/// next trigger starts them).
const NEW_PROJECTS_QUEUE: usize = 1024;

/// Title of the Data Manager tab the adapter creates on connect.
pub const VIEW_TITLE: &str = "Most informative (ALPS)";

/// Heuristics that select a batch jointly, and the per-sample heuristic that scores for them.
const BATCH_COMPANION: &str = "bald";

/// Tells each project's scoring actor that it has work, starting the actor on first use. Each
/// project holds one pending wake-up at most, so triggers coalesce.
#[derive(Debug)]
pub struct Triggers {
    notifies: Mutex<HashMap<u64, Arc<Notify>>>,
    new: mpsc::Sender<(u64, Arc<Notify>)>,
}

impl Triggers {
    /// The triggers and the queue of projects whose actor must start ([`Scoring::run`]).
    pub fn new() -> (Arc<Self>, mpsc::Receiver<(u64, Arc<Notify>)>) {
        let (new, receiver) = mpsc::channel(NEW_PROJECTS_QUEUE);
        (Arc::new(Self { notifies: Mutex::default(), new }), receiver)
    }

    /// Wakes project `ls_id`'s actor (now, or after its current pass).
    pub fn fire(&self, ls_id: u64) {
        let mut notifies = self.notifies.lock().expect("triggers poisoned");
        if let Some(notify) = notifies.get(&ls_id) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        notify.notify_one();
        match self.new.try_send((ls_id, Arc::clone(&notify))) {
            Ok(()) => {
                notifies.insert(ls_id, notify);
            }
            Err(error) => {
                tracing::warn!(project = ls_id, %error, "cannot start pool scoring now; the next trigger will")
            }
        }
    }
}

/// How the background scorer divides its work.
#[derive(Clone, Copy, Debug)]
pub struct ScoringSettings {
    /// Tasks per gRPC Predict call.
    pub chunk: usize,
    /// Predict calls in flight per project.
    pub concurrency: usize,
    /// Predictions per bulk import call.
    pub write_chunk: usize,
    /// Tasks per page of the pool listing.
    pub page_size: u32,
    /// Scores kept in memory per project for `/predict`.
    pub cache_capacity: usize,
}

/// A computed prediction, kept so `/predict` can answer at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Index of the predicted label in the project's label list.
    pub label: u16,
    /// Mean probability of the predicted label, in [0, 1].
    pub probability: f32,
    /// The score Label Studio gets (see [`ScoreSpec::score`]).
    pub score: f32,
}

/// How the scores of one project are computed.
#[derive(Clone, Debug)]
pub struct ScoreSpec {
    /// The scoring version the scores are written under.
    pub version: String,
    /// The per-sample heuristic passed to Predict (`None` = the project's default).
    pub predict_heuristic: Option<String>,
    /// The batch heuristic that picks the head of the order, if the heuristic is one.
    pub batch: Option<String>,
    /// Direction of the per-sample heuristic.
    pub direction: Direction,
    /// How the score is defined.
    pub mode: ScoreMode,
    /// Number of classes C.
    pub classes: usize,
}

impl ScoreSpec {
    /// The spec of `link` given the loaded heuristics (name -> kind, direction).
    pub fn of(link: &ProjectLink, heuristics: &HashMap<String, (HeuristicKind, Direction)>) -> Self {
        let name = link.heuristic();
        let known = heuristics.get(name).copied();
        let is_batch = match known {
            Some((kind, _)) => kind == HeuristicKind::Batch,
            None => matches!(name, "batch_bald" | "power_bald" | "typiclust" | "coreset" | "badge"),
        };
        let per_sample = if is_batch { BATCH_COMPANION } else { name };
        let direction = heuristics.get(per_sample).map(|(_, direction)| *direction).unwrap_or(match per_sample {
            "margin" | "least_confidence" => Direction::LowerIsMoreInformative,
            _ => Direction::HigherIsMoreInformative,
        });
        Self {
            version: link.model_version(),
            predict_heuristic: Some(per_sample.to_owned()),
            batch: (is_batch && link.score_mode == ScoreMode::Uncertainty).then(|| name.to_owned()),
            direction,
            mode: link.score_mode,
            classes: link.config.labels.len(),
        }
    }

    /// The heuristic asked which batch heads the order once a pass is complete: the batch
    /// heuristic, or in uncertainty mode an empty name, which lets the core choose (the
    /// project's acquisition schedule may pick a diverse cold-start batch while it has few
    /// labels). `None` in confidence mode.
    pub fn head_selection(&self) -> Option<String> {
        self.batch.clone().or_else(|| (self.mode == ScoreMode::Uncertainty).then(String::new))
    }

    /// The score Label Studio gets for `prediction`.
    pub fn score(&self, prediction: &Prediction) -> f32 {
        match self.mode {
            ScoreMode::Confidence => prediction.probability,
            ScoreMode::Uncertainty => normalised_score(
                self.predict_heuristic.as_deref().unwrap_or_default(),
                self.direction,
                prediction.score,
                self.classes,
            ),
        }
    }
}

/// The name of the heuristic the core ranked with.
fn chosen(ranked: &RankResponse) -> Option<&str> {
    ranked.heuristic.as_ref().map(|h| h.name.as_str())
}

/// A heuristic's value as a share of the most uncertain value possible with `classes` classes, in
/// [0, 1], higher = more informative: BALD and entropy (nats) over ln C, variance over its
/// largest value (C-1)/C², margin as 1 - margin, least confidence as (1 - p)/(1 - 1/C); `random`
/// as it is. Other (plugin) heuristics keep their raw value, negated when lower is more
/// informative, so that descending order still puts the most informative first.
pub fn normalised_score(heuristic: &str, direction: Direction, value: f32, classes: usize) -> f32 {
    let c = classes.max(2) as f32;
    let share = match heuristic {
        "bald" | "entropy" => value / c.ln(),
        "variance" => value / ((c - 1.0) / (c * c)),
        "margin" => 1.0 - value,
        "least_confidence" => (1.0 - value) / (1.0 - 1.0 / c),
        "random" => value,
        _ if direction == Direction::LowerIsMoreInformative => return -value,
        _ => return value,
    };
    share.clamp(0.0, 1.0)
}

/// The prediction Label Studio stores for `task`: a Choices region with the label's probability
/// and the prediction-level score.
pub fn prediction_json(link: &ProjectLink, task: u64, scored: Scored) -> Value {
    json!({
        "score": scored.score,
        "result": [{
            "id": format!("alps-{task}"),
            "from_name": link.config.choices_name,
            "to_name": link.config.image_name,
            "type": "choices",
            "value": {"choices": [link.config.labels[usize::from(scored.label)]]},
            "score": scored.probability,
        }],
    })
}

/// What one prediction gives, or why it gives nothing.
///
/// # Errors
/// A message for a class outside the label config or a non-finite number.
pub fn scored_of(link: &ProjectLink, spec: &ScoreSpec, prediction: &Prediction) -> Result<Scored, String> {
    let label = link
        .config
        .labels
        .iter()
        .position(|label| *label == prediction.class_name)
        .ok_or_else(|| format!("model class {:?} is not in the label config; retrain", prediction.class_name))?;
    let score = spec.score(prediction);
    if !score.is_finite() || !prediction.probability.is_finite() {
        return Err(format!("model: non-finite score {score}"));
    }
    Ok(Scored { label: u16::try_from(label).unwrap_or(u16::MAX), probability: prediction.probability, score })
}

/// Progress of a project's pool scoring, as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PoolProgress {
    /// The scoring version being written.
    pub version: String,
    /// `waiting`, `listing`, `scoring`, `complete`, `failed` or `disabled` (no Label Studio API).
    pub state: &'static str,
    /// Unlabelled tasks seen so far in this pass (all of them once listing is done).
    pub pool: u64,
    /// Unlabelled tasks holding a prediction of `version` (already, or written in this pass).
    pub fresh: u64,
    /// Predictions written in this pass.
    pub scored: u64,
    /// Tasks that could not be scored in this pass (image or model errors; retried next pass).
    pub failed: u64,
    /// Estimated seconds until every task holds `version`, from this pass's rate.
    pub eta_secs: Option<u64>,
    /// Seconds since the pass started.
    pub elapsed_secs: u64,
    /// The batch a batch heuristic selected to head the order, in selection order.
    pub batch: Vec<u64>,
    /// Why the last pass failed.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct PoolState {
    progress: PoolProgress,
    /// Scores of `cache_version`'s predictions, for `/predict`.
    cache: HashMap<u64, Scored>,
    cache_version: String,
    /// Tasks `/predict` answered with `cache_version`: Label Studio stores those answers itself,
    /// so the pass does not write them again.
    served: HashSet<u64>,
    /// Tasks the pass wrote with `cache_version`: a `/predict` for one of them raced the pass
    /// (or the prediction was deleted), and is not answered twice.
    written: HashSet<u64>,
    /// Whether the Data Manager tab was checked.
    view_checked: bool,
    /// The version whose batch was written.
    batch_version: String,
}

impl PoolState {
    /// Starts over the per-version memory when `version` is not the one it holds.
    fn at_version(&mut self, version: &str) {
        if self.cache_version != version {
            self.cache.clear();
            self.served.clear();
            self.written.clear();
            self.cache_version = version.to_owned();
        }
    }
}

/// Counters of a running pass, shared by its stages.
#[derive(Debug, Default)]
struct PassCounters {
    pool: AtomicU64,
    fresh: AtomicU64,
    scored: AtomicU64,
    failed: AtomicU64,
    listed_missing: AtomicU64,
    listing_done: AtomicBool,
    stop: AtomicBool,
}

/// How a pass ended.
#[derive(Debug)]
enum PassEnd {
    Complete,
    Superseded,
    Failed(String),
}

/// The background scorer of every project.
#[derive(Debug)]
pub struct Scoring {
    core: Core,
    media: Arc<Media>,
    label_studio: Option<Arc<LabelStudio>>,
    projects: Arc<Projects>,
    settings: ScoringSettings,
    triggers: Arc<Triggers>,
    targets: Arc<VersionTargets>,
    states: Mutex<HashMap<u64, PoolState>>,
}

impl Scoring {
    /// A scorer; call [`Scoring::run`] with the receiver of [`Triggers::new`].
    pub fn new(
        core: Core,
        media: Arc<Media>,
        label_studio: Option<Arc<LabelStudio>>,
        projects: Arc<Projects>,
        settings: ScoringSettings,
        triggers: Arc<Triggers>,
        targets: Arc<VersionTargets>,
    ) -> Arc<Self> {
        Arc::new(Self { core, media, label_studio, projects, settings, triggers, targets, states: Mutex::default() })
    }

    /// Asks for a pass over project `ls_id`'s pool.
    pub fn trigger(&self, ls_id: u64) {
        self.triggers.fire(ls_id);
    }

    /// Starts one actor per project as projects are triggered. Runs until the process ends.
    pub async fn run(self: Arc<Self>, mut new: mpsc::Receiver<(u64, Arc<Notify>)>) {
        while let Some((ls_id, notify)) = new.recv().await {
            tokio::spawn(Arc::clone(&self).actor(ls_id, notify));
        }
    }

    /// Pool progress of every project.
    pub fn status(&self) -> Vec<(u64, PoolProgress)> {
        let states = self.states.lock().expect("scoring poisoned");
        let mut all: Vec<(u64, PoolProgress)> =
            states.iter().map(|(id, state)| (*id, state.progress.clone())).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// The score computed for `task` under `version`, if any.
    pub fn cached(&self, ls_id: u64, version: &str, task: u64) -> Option<Scored> {
        let states = self.states.lock().expect("scoring poisoned");
        let state = states.get(&ls_id)?;
        (state.cache_version == version).then(|| state.cache.get(&task).copied()).flatten()
    }

    /// Remembers `scored` for `task` under `version` (bounded by the cache capacity).
    pub fn remember(&self, ls_id: u64, version: &str, task: u64, scored: Scored) {
        let mut states = self.states.lock().expect("scoring poisoned");
        let state = states.entry(ls_id).or_default();
        state.at_version(version);
        if state.cache.len() < self.settings.cache_capacity || state.cache.contains_key(&task) {
            state.cache.insert(task, scored);
        }
    }

    /// Records that `/predict` answered `tasks` with predictions of `version`, which Label Studio
    /// stores: the pass leaves them out of its writes (at most the cache capacity are kept).
    pub fn served(&self, ls_id: u64, version: &str, tasks: impl IntoIterator<Item = u64>) {
        let mut states = self.states.lock().expect("scoring poisoned");
        let state = states.entry(ls_id).or_default();
        state.at_version(version);
        for task in tasks {
            if state.served.len() < self.settings.cache_capacity {
                state.served.insert(task);
            }
        }
    }

    /// Whether this adapter's pass wrote `task`'s prediction of `version` to Label Studio.
    pub fn written(&self, ls_id: u64, version: &str, task: u64) -> bool {
        let states = self.states.lock().expect("scoring poisoned");
        states.get(&ls_id).is_some_and(|state| state.cache_version == version && state.written.contains(&task))
    }

    /// Drops from `batch` the tasks `/predict` already answered with `version`; returns how many.
    fn drop_served(&self, ls_id: u64, version: &str, batch: &mut Vec<(u64, Value)>) -> u64 {
        let states = self.states.lock().expect("scoring poisoned");
        let Some(state) = states.get(&ls_id).filter(|state| state.cache_version == version) else { return 0 };
        let before = batch.len();
        batch.retain(|(task, _)| !state.served.contains(task));
        (before - batch.len()) as u64
    }

    /// Records the tasks a bulk import wrote with `version`; with `false`, that a listing found
    /// `task` without it (so it was deleted, or never stored).
    fn mark_written(&self, ls_id: u64, version: &str, tasks: impl IntoIterator<Item = u64>, written: bool) {
        let mut states = self.states.lock().expect("scoring poisoned");
        let state = states.entry(ls_id).or_default();
        state.at_version(version);
        for task in tasks {
            if !written {
                state.written.remove(&task);
            } else if state.written.len() < self.settings.cache_capacity {
                state.written.insert(task);
            }
        }
    }

    /// The score spec of `link` (asks the core which heuristics are batch ones).
    pub async fn spec(&self, link: &ProjectLink) -> ScoreSpec {
        let heuristics = match tokio::time::timeout(Duration::from_secs(5), self.core.heuristics()).await {
            Ok(Ok(heuristics)) => heuristics,
            _ => HashMap::new(),
        };
        ScoreSpec::of(link, &heuristics)
    }

    fn update(&self, ls_id: u64, change: impl FnOnce(&mut PoolState)) {
        let mut states = self.states.lock().expect("scoring poisoned");
        let state = states.entry(ls_id).or_default();
        change(state);
        crate::metrics::pool_progress(ls_id, &state.progress);
    }

    async fn actor(self: Arc<Self>, ls_id: u64, notify: Arc<Notify>) {
        loop {
            notify.notified().await;
            loop {
                match self.pass(ls_id).await {
                    PassEnd::Complete => break,
                    PassEnd::Superseded => continue,
                    PassEnd::Failed(error) => {
                        tracing::warn!(project = ls_id, %error, retry_secs = RETRY_AFTER.as_secs(), "pool scoring failed");
                        self.update(ls_id, |state| {
                            state.progress.state = "failed";
                            state.progress.error = Some(error);
                        });
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        }
    }

    /// One pass over the pool of `ls_id` for its current scoring version.
    async fn pass(self: &Arc<Self>, ls_id: u64) -> PassEnd {
        let link = match self.projects.ensure(ls_id).await {
            Ok(link) => link,
            Err(status) => return PassEnd::Failed(format!("model server: {}", status.message())),
        };
        let version = link.model_version();
        let Some(ls) = self.label_studio.clone() else {
            // Without Label Studio's API nothing can be listed or written: "Retrieve predictions" it is.
            self.update(ls_id, |state| {
                state.progress =
                    PoolProgress { version: version.clone(), state: "disabled", ..PoolProgress::default() };
            });
            self.targets.set(ls_id, version);
            return PassEnd::Complete;
        };
        let spec = Arc::new(self.spec(&link).await);
        let started = Instant::now();
        self.update(ls_id, |state| {
            let batch =
                if state.progress.version == version { std::mem::take(&mut state.progress.batch) } else { vec![] };
            state.progress =
                PoolProgress { version: version.clone(), state: "listing", batch, ..PoolProgress::default() };
        });
        tracing::info!(
            project = ls_id,
            version,
            "pool scoring: looking for tasks without a prediction of this version"
        );
        let counters = Arc::new(PassCounters::default());
        let link = Arc::new(link);
        let (chunks_tx, chunks_rx) = mpsc::channel::<Vec<PoolTask>>(self.settings.concurrency * 2);
        let (writes_tx, writes_rx) = mpsc::channel::<Vec<(u64, Value)>>(self.settings.concurrency * 2);
        let candidates = Arc::new(Mutex::new(Vec::<(u64, f32, Value)>::new()));

        let mut stages = JoinSet::new();
        let lister = {
            let (this, ls, counters, candidates) =
                (Arc::clone(self), Arc::clone(&ls), Arc::clone(&counters), Arc::clone(&candidates));
            let version = version.clone();
            tokio::spawn(async move { this.list(ls_id, &ls, &version, chunks_tx, &counters, &candidates).await })
        };
        let chunks_rx = Arc::new(tokio::sync::Mutex::new(chunks_rx));
        for _ in 0..self.settings.concurrency {
            let (this, link, spec, counters, chunks, writes, candidates) = (
                Arc::clone(self),
                Arc::clone(&link),
                Arc::clone(&spec),
                Arc::clone(&counters),
                Arc::clone(&chunks_rx),
                writes_tx.clone(),
                Arc::clone(&candidates),
            );
            stages.spawn(async move {
                loop {
                    let Some(chunk) = chunks.lock().await.recv().await else { return };
                    if counters.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    this.score_chunk(&link, &spec, chunk, &writes, &counters, &candidates).await;
                }
            });
        }
        drop(writes_tx);
        let writer = {
            let (this, ls, counters, version) =
                (Arc::clone(self), Arc::clone(&ls), Arc::clone(&counters), version.clone());
            tokio::spawn(async move { this.write(ls_id, &ls, &version, writes_rx, &counters, started).await })
        };
        let listed = lister.await.unwrap_or_else(|error| Err(format!("listing task ended: {error}")));
        if listed.is_err() {
            counters.stop.store(true, Ordering::Relaxed);
        }
        // Not `join_all`: it panics on a task cancelled by the runtime shutting down.
        while let Some(joined) = stages.join_next().await {
            if let Err(error) = joined {
                tracing::warn!(project = ls_id, %error, "a pool scoring stage ended abnormally");
            }
        }
        let written = writer.await.unwrap_or_else(|error| Err(format!("writing task ended: {error}")));
        let superseded = self.projects.get(ls_id).is_none_or(|now| now.model_version() != version);
        if let Err(error) = listed.and(written) {
            return PassEnd::Failed(error);
        }
        if superseded || counters.stop.load(Ordering::Relaxed) {
            tracing::info!(project = ls_id, version, "pool scoring superseded by a new scoring version");
            return PassEnd::Superseded;
        }
        let scored = counters.scored.load(Ordering::Relaxed);
        if let Some(batch) = &spec.head_selection()
            && self.batch_version(ls_id) != version
        {
            let candidates = std::mem::take(&mut *candidates.lock().expect("candidates poisoned"));
            self.write_batch(ls_id, &ls, &link, &spec, batch, candidates).await;
        }
        self.ensure_view(ls_id, &ls, spec.mode).await;
        let elapsed = started.elapsed();
        self.update(ls_id, |state| {
            state.progress.state = "complete";
            state.progress.eta_secs = Some(0);
            state.progress.elapsed_secs = elapsed.as_secs();
        });
        tracing::info!(
            project = ls_id,
            version,
            pool = counters.pool.load(Ordering::Relaxed),
            scored,
            failed = counters.failed.load(Ordering::Relaxed),
            secs = format!("{:.1}", elapsed.as_secs_f64()),
            "pool scoring complete: every unlabelled task holds a prediction of this version"
        );
        self.targets.set(ls_id, version);
        PassEnd::Complete
    }

    fn batch_version(&self, ls_id: u64) -> String {
        self.states.lock().expect("scoring poisoned").get(&ls_id).map(|s| s.batch_version.clone()).unwrap_or_default()
    }

    /// Lists the unlabelled pool page by page and queues the tasks lacking `version`.
    async fn list(
        &self,
        ls_id: u64,
        ls: &LabelStudio,
        version: &str,
        chunks: mpsc::Sender<Vec<PoolTask>>,
        counters: &PassCounters,
        candidates: &Mutex<Vec<(u64, f32, Value)>>,
    ) -> Result<(), String> {
        let mut after = 0;
        let mut first = true;
        let mut chunk = Vec::new();
        loop {
            if counters.stop.load(Ordering::Relaxed)
                || self.projects.get(ls_id).is_none_or(|link| link.model_version() != version)
            {
                counters.stop.store(true, Ordering::Relaxed);
                return Ok(());
            }
            let page = ls.pool_page(ls_id, after, self.settings.page_size).await.map_err(|e: LsError| e.to_string())?;
            if first {
                counters.pool.store(page.total, Ordering::Relaxed);
                first = false;
            }
            // Keyset paging must move forward; an answer that does not is the end.
            let next = page.tasks.iter().map(|task| task.id).filter(|&id| id > after).max();
            for task in page.tasks.into_iter().filter(|task| task.id > after && !task.annotated) {
                match task.versions.iter().position(|(stored, _)| stored == version) {
                    Some(index) => {
                        counters.fresh.fetch_add(1, Ordering::Relaxed);
                        if let Some(score) = task.versions[index].1 {
                            candidates.lock().expect("candidates poisoned").push((task.id, score, task.data.clone()));
                        }
                    }
                    None => {
                        counters.listed_missing.fetch_add(1, Ordering::Relaxed);
                        self.mark_written(ls_id, version, [task.id], false);
                        chunk.push(task);
                        if chunk.len() >= self.settings.chunk && chunks.send(std::mem::take(&mut chunk)).await.is_err()
                        {
                            return Ok(());
                        }
                    }
                }
            }
            self.update(ls_id, |state| {
                state.progress.state = "scoring";
                state.progress.pool = state.progress.pool.max(counters.pool.load(Ordering::Relaxed));
                state.progress.fresh = counters.fresh.load(Ordering::Relaxed) + counters.scored.load(Ordering::Relaxed);
            });
            match next {
                Some(next) => after = next,
                None => break,
            }
        }
        if !chunk.is_empty() {
            let _ = chunks.send(chunk).await;
        }
        counters.listing_done.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Fetches one chunk's images, predicts them and queues the predictions for writing.
    async fn score_chunk(
        &self,
        link: &ProjectLink,
        spec: &ScoreSpec,
        chunk: Vec<PoolTask>,
        writes: &mpsc::Sender<Vec<(u64, Value)>>,
        counters: &PassCounters,
        candidates: &Mutex<Vec<(u64, f32, Value)>>,
    ) {
        let images = fetch_all(&self.media, link, &chunk).await;
        let mut samples = Vec::new();
        let mut tasks = Vec::new();
        for (task, image) in chunk.iter().zip(images) {
            match image {
                Ok(bytes) => {
                    samples.push((task.id.to_string(), bytes));
                    tasks.push(task);
                }
                Err(error) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(project = link.ls_id, task = task.id, %error, "pool scoring: cannot fetch the image");
                }
            }
        }
        if samples.is_empty() {
            return;
        }
        let predicted = match self.core.predict(&link.alps_id(), samples, spec.predict_heuristic.as_deref()).await {
            Ok(predicted) => predicted,
            Err(status) => {
                counters.failed.fetch_add(tasks.len() as u64, Ordering::Relaxed);
                tracing::warn!(project = link.ls_id, tasks = tasks.len(), %status, "pool scoring: the model server failed a chunk");
                return;
            }
        };
        if predicted.model_version != link.active_version {
            // A new version became active: these scores belong to another scoring version.
            counters.stop.store(true, Ordering::Relaxed);
            return;
        }
        let mut out = Vec::with_capacity(tasks.len());
        for (task, result) in tasks.into_iter().zip(predicted.results) {
            let scored = match result.outcome {
                Some(Outcome::Prediction(prediction)) => scored_of(link, spec, &prediction),
                Some(Outcome::Error(error)) => Err(format!("model: {}", error.message)),
                None => Err("model: no result".to_owned()),
            };
            match scored {
                Ok(scored) => {
                    self.remember(link.ls_id, &spec.version, task.id, scored);
                    if spec.head_selection().is_some() {
                        candidates.lock().expect("candidates poisoned").push((
                            task.id,
                            scored.score,
                            task.data.clone(),
                        ));
                    }
                    out.push((task.id, prediction_json(link, task.id, scored)));
                }
                Err(error) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(project = link.ls_id, task = task.id, %error, "pool scoring: task not scored");
                }
            }
        }
        if !out.is_empty() {
            let _ = writes.send(out).await;
        }
    }

    /// Writes predictions in bulk as they come, logging progress every 10 %.
    async fn write(
        &self,
        ls_id: u64,
        ls: &LabelStudio,
        version: &str,
        mut writes: mpsc::Receiver<Vec<(u64, Value)>>,
        counters: &PassCounters,
        started: Instant,
    ) -> Result<(), String> {
        let mut buffer: Vec<(u64, Value)> = Vec::new();
        let mut logged_decile = 0;
        loop {
            let next = if buffer.is_empty() {
                writes.recv().await
            } else {
                match tokio::time::timeout(Duration::from_millis(500), writes.recv()).await {
                    Ok(next) => next,
                    Err(_idle) => Some(Vec::new()),
                }
            };
            let closed = next.is_none();
            buffer.extend(next.unwrap_or_default());
            while buffer.len() >= self.settings.write_chunk || (!buffer.is_empty() && (closed || writes.is_empty())) {
                if counters.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let take = buffer.len().min(self.settings.write_chunk);
                let mut batch: Vec<(u64, Value)> = buffer.drain(..take).collect();
                // Answered by "Retrieve predictions" meanwhile: Label Studio stores those itself.
                let answered = self.drop_served(ls_id, version, &mut batch);
                counters.fresh.fetch_add(answered, Ordering::Relaxed);
                let tasks: Vec<u64> = batch.iter().map(|(task, _)| *task).collect();
                let written = if batch.is_empty() { 0 } else { self.import(ls_id, ls, version, batch).await? };
                self.mark_written(ls_id, version, tasks, true);
                counters.scored.fetch_add(written, Ordering::Relaxed);
                crate::metrics::pool_written(written);
                let scored = counters.scored.load(Ordering::Relaxed);
                let missing = counters.listed_missing.load(Ordering::Relaxed).max(1);
                let elapsed = started.elapsed().as_secs_f64();
                let rate = scored as f64 / elapsed.max(1e-3);
                let remaining = counters
                    .pool
                    .load(Ordering::Relaxed)
                    .saturating_sub(counters.fresh.load(Ordering::Relaxed) + scored);
                let eta = (rate > 0.0).then(|| (remaining as f64 / rate).ceil() as u64);
                self.update(ls_id, |state| {
                    state.progress.scored = scored;
                    state.progress.failed = counters.failed.load(Ordering::Relaxed);
                    state.progress.fresh = counters.fresh.load(Ordering::Relaxed) + scored;
                    state.progress.eta_secs = eta;
                    state.progress.elapsed_secs = elapsed as u64;
                });
                let total = if counters.listing_done.load(Ordering::Relaxed) {
                    missing
                } else {
                    counters.pool.load(Ordering::Relaxed).saturating_sub(counters.fresh.load(Ordering::Relaxed)).max(1)
                };
                let decile = (scored * 10 / total).min(10);
                if decile > logged_decile {
                    logged_decile = decile;
                    tracing::info!(
                        project = ls_id,
                        version,
                        scored,
                        of = total,
                        percent = decile * 10,
                        per_sec = format!("{rate:.0}"),
                        eta_secs = eta,
                        "pool scoring progress"
                    );
                }
            }
            if closed {
                return Ok(());
            }
        }
    }

    /// One bulk import; a 400 (a task deleted meanwhile) is split until the offending tasks are
    /// isolated and dropped. Returns how many were written.
    async fn import(
        &self,
        ls_id: u64,
        ls: &LabelStudio,
        version: &str,
        batch: Vec<(u64, Value)>,
    ) -> Result<u64, String> {
        let mut pending = vec![batch];
        let mut written = 0;
        while let Some(batch) = pending.pop() {
            let body: Vec<Value> = batch
                .iter()
                .map(|(task, prediction)| {
                    let mut item = prediction.clone();
                    item["task"] = json!(task);
                    item["model_version"] = json!(version);
                    item
                })
                .collect();
            match ls.import_predictions(ls_id, &body).await {
                Ok(_) => written += batch.len() as u64,
                Err(LsError::Status { status, .. }) if status == reqwest::StatusCode::BAD_REQUEST => {
                    if batch.len() == 1 {
                        tracing::warn!(
                            project = ls_id,
                            task = batch[0].0,
                            "Label Studio refused the prediction (task deleted?)"
                        );
                    } else {
                        let mut first = batch;
                        let second = first.split_off(first.len() / 2);
                        pending.push(first);
                        pending.push(second);
                    }
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(written)
    }

    /// Makes the `query_size` tasks the batch heuristic selects head the order: Rank over the
    /// best-scored candidates, then their stored scores are raised above every other score, in
    /// selection order (between the best other score and 1). An empty `heuristic` lets the core
    /// choose (the project's acquisition schedule); when it chooses the project's default
    /// heuristic (the cold start is over) the order is left as it is.
    async fn write_batch(
        &self,
        ls_id: u64,
        ls: &LabelStudio,
        link: &ProjectLink,
        spec: &ScoreSpec,
        heuristic: &str,
        mut candidates: Vec<(u64, f32, Value)>,
    ) {
        let query_size = link.query_size as usize;
        if candidates.is_empty() {
            return;
        }
        let seed = spec
            .version
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        if heuristic.is_empty() {
            // The schedule may pick a cold-start batch, which should represent the whole pool
            // (typicality, coverage): a seeded uniform sample, not the untrained model's top.
            candidates.sort_by_key(|(id, ..)| *id);
            fastrand::Rng::with_seed(seed).shuffle(&mut candidates);
        } else {
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        let pool_size = candidates.len();
        candidates.truncate((query_size * 10).max(200));
        let tasks: Vec<PoolTask> = candidates
            .iter()
            .map(|(id, _, data)| PoolTask { id: *id, data: data.clone(), ..PoolTask::default() })
            .collect();
        let images = fetch_all(&self.media, link, &tasks).await;
        let samples: Vec<(String, Vec<u8>)> =
            tasks.iter().zip(images).filter_map(|(task, image)| Some((task.id.to_string(), image.ok()?))).collect();
        let ranked = match self.core.rank(&link.alps_id(), heuristic, link.query_size, seed, samples).await {
            // The core chose its default heuristic, not a cold-start one: the schedule is over
            // and the order by the per-sample score stands.
            Ok(ranked) if heuristic.is_empty() && chosen(&ranked) == Some(link.project_heuristic.as_str()) => {
                self.update(ls_id, |state| state.batch_version = spec.version.clone());
                return;
            }
            Ok(ranked) if ranked.model_version == link.active_version => ranked,
            Ok(_) => return,
            Err(status) => {
                tracing::warn!(project = ls_id, heuristic, %status, "cannot select the batch; keeping the per-sample order");
                return;
            }
        };
        let batch: Vec<u64> = ranked.selected.iter().filter_map(|sample| sample.id.parse().ok()).collect();
        let rest_best = candidates
            .iter()
            .filter(|(id, ..)| !batch.contains(id))
            .map(|(_, score, _)| *score)
            .fold(0.0_f32, f32::max);
        let count = batch.len();
        for (position, task) in batch.iter().enumerate() {
            let score = batch_score(rest_best, position, count);
            match ls.prediction_ids(*task, &spec.version).await {
                Ok(ids) => {
                    for id in ids {
                        if let Err(error) = ls.set_prediction_score(id, score).await {
                            tracing::warn!(project = ls_id, task, %error, "cannot raise the score of a batch member");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(project = ls_id, task, %error, "cannot find the prediction of a batch member")
                }
            }
        }
        tracing::info!(
            project = ls_id,
            heuristic = chosen(&ranked).unwrap_or(heuristic),
            query_size,
            candidates = candidates.len(),
            pool = pool_size,
            ?batch,
            "batch selected to head the order"
        );
        self.update(ls_id, |state| {
            state.progress.batch = batch;
            state.batch_version = spec.version.clone();
        });
    }

    /// Creates the Data Manager tab once, unless a tab of that title exists (a user's is left alone).
    async fn ensure_view(&self, ls_id: u64, ls: &LabelStudio, mode: ScoreMode) {
        if self.states.lock().expect("scoring poisoned").get(&ls_id).is_some_and(|state| state.view_checked) {
            return;
        }
        let titles = match ls.view_titles(ls_id).await {
            Ok(titles) => titles,
            Err(error) => {
                tracing::warn!(project = ls_id, %error, "cannot list the Data Manager tabs");
                return;
            }
        };
        if !titles.iter().any(|title| title == VIEW_TITLE) {
            match ls.create_view(ls_id, &view_data(mode)).await {
                Ok(()) => tracing::info!(project = ls_id, title = VIEW_TITLE, "created the Data Manager tab"),
                Err(error) => {
                    tracing::warn!(project = ls_id, %error, "cannot create the Data Manager tab");
                    return;
                }
            }
        }
        self.update(ls_id, |state| state.view_checked = true);
    }
}

/// The score of the batch member at `position` (0 = selected first) of `count`, above `rest_best`
/// (the best score outside the batch) and at most 1.
pub fn batch_score(rest_best: f32, position: usize, count: usize) -> f32 {
    let floor = rest_best.clamp(0.0, 1.0);
    let step = (1.0 - floor).max(1e-3) / (count + 1) as f32;
    floor + step * (count - position) as f32
}

/// Data Manager columns the tab hides in both its grid ("explore") and labelling views: Label
/// Studio computes a column for a tab's listing only when the stored tab shows it in one of the
/// two (`get_fields_for_evaluation` in Label Studio 1.23's `data_manager/managers.py`), so a tab
/// without `hiddenColumns` lists "Prediction score" and "Prediction model versions" empty.
const HIDDEN_COLUMNS: [&str; 11] = [
    "inner_id",
    "annotations_results",
    "annotations_ids",
    "predictions_results",
    "file_upload",
    "storage_filename",
    "created_at",
    "updated_at",
    "updated_by",
    "avg_lead_time",
    "draft_exists",
];

/// Columns the labelling view hides on top of [`HIDDEN_COLUMNS`] (its side list stays narrow).
const HIDDEN_WHILE_LABELLING: [&str; 6] =
    ["id", "completed_at", "cancelled_annotations", "total_predictions", "annotators", "predictions_model_versions"];

/// The Data Manager tab: tasks without annotations, most informative first in `mode`, with the
/// "Prediction score" and "Prediction model versions" columns shown (and so computed).
pub fn view_data(mode: ScoreMode) -> Value {
    let ordering = match mode {
        ScoreMode::Confidence => "tasks:predictions_score",
        ScoreMode::Uncertainty => "-tasks:predictions_score",
    };
    let column = |id: &&str| format!("tasks:{id}");
    let explore: Vec<String> = HIDDEN_COLUMNS.iter().map(column).collect();
    let labeling: Vec<String> = HIDDEN_COLUMNS.iter().chain(&HIDDEN_WHILE_LABELLING).map(column).collect();
    json!({
        "title": VIEW_TITLE,
        "type": "list",
        "target": "tasks",
        "filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
        ]},
        "ordering": [ordering],
        "hiddenColumns": {"explore": explore, "labeling": labeling},
    })
}

/// Downloads the images of `tasks` concurrently (the media client bounds the total).
async fn fetch_all(media: &Arc<Media>, link: &ProjectLink, tasks: &[PoolTask]) -> Vec<Result<Vec<u8>, String>> {
    let mut fetches = JoinSet::new();
    for (index, task) in tasks.iter().enumerate() {
        let media = Arc::clone(media);
        let (id, reference) = (task.id, task.data[&link.config.image_key].as_str().map(str::to_owned));
        let key = link.config.image_key.clone();
        fetches.spawn(async move {
            let Some(reference) = reference else { return (index, Err(format!("task data has no {key:?}"))) };
            let fetched = media.fetch(id, &reference).await.map_err(|error| {
                crate::metrics::media_failure(error.cause());
                error.to_string()
            });
            (index, fetched)
        });
    }
    let mut images: Vec<Result<Vec<u8>, String>> = (0..tasks.len()).map(|_| Err("not fetched".to_owned())).collect();
    while let Some(joined) = fetches.join_next().await {
        if let Ok((index, fetched)) = joined {
            images[index] = fetched;
        }
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncertainty_scores_are_shares_of_the_maximum() {
        let higher = Direction::HigherIsMoreInformative;
        let lower = Direction::LowerIsMoreInformative;
        let ln10 = 10f32.ln();
        assert!((normalised_score("bald", higher, ln10 / 2.0, 10) - 0.5).abs() < 1e-6);
        assert_eq!(normalised_score("entropy", higher, ln10, 10), 1.0);
        assert_eq!(normalised_score("entropy", higher, ln10 * 1.0001, 10), 1.0, "rounding is clamped");
        assert!((normalised_score("variance", higher, 0.25, 2) - 1.0).abs() < 1e-6);
        assert_eq!(normalised_score("margin", lower, 0.0, 3), 1.0);
        assert_eq!(normalised_score("least_confidence", lower, 1.0, 4), 0.0);
        assert!((normalised_score("least_confidence", lower, 0.25, 4) - 1.0).abs() < 1e-6);
        assert_eq!(normalised_score("plugin_x", lower, 0.3, 4), -0.3);
        assert_eq!(normalised_score("plugin_y", higher, 7.0, 4), 7.0);
    }

    #[test]
    fn batch_scores_head_the_order_in_selection_order() {
        for rest_best in [0.0, 0.42, 0.9999, 1.0] {
            let scores: Vec<f32> = (0..20).map(|position| batch_score(rest_best, position, 20)).collect();
            assert!(scores.windows(2).all(|pair| pair[0] > pair[1]), "{rest_best}: {scores:?}");
            assert!(scores[19] > rest_best, "{rest_best}");
            assert!(rest_best >= 0.999 || scores[0] <= 1.0, "{scores:?}");
        }
    }

    #[test]
    fn the_view_orders_by_the_mode_and_hides_labelled_tasks() {
        let view = view_data(ScoreMode::Uncertainty);
        assert_eq!(view["ordering"], json!(["-tasks:predictions_score"]));
        assert_eq!(view_data(ScoreMode::Confidence)["ordering"], json!(["tasks:predictions_score"]));
        assert_eq!(view["filters"]["items"][0]["filter"], "filter:tasks:total_annotations");
        assert_eq!(view["title"], VIEW_TITLE);
        // Label Studio computes a column only when the tab does not hide it in both modes.
        let hidden = |mode: &str| view["hiddenColumns"][mode].as_array().cloned().unwrap_or_default();
        let (explore, labeling) = (hidden("explore"), hidden("labeling"));
        for shown in ["tasks:predictions_score", "tasks:predictions_model_versions"] {
            assert!(!(explore.contains(&json!(shown)) && labeling.contains(&json!(shown))), "{shown} is hidden");
        }
        assert!(
            explore.contains(&json!("tasks:predictions_results"))
                && labeling.contains(&json!("tasks:predictions_results"))
        );
    }
}
