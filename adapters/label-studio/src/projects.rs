//! Per-project state, keyed by the Label Studio project id: the parsed label config, the model
//! preset and score mode chosen at `/setup`, and the active model version as last seen on the core.
//! `/health` and `/setup` answer from here without any network call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::Value;

use crate::{
    config::{ModelPreset, ScoreMode},
    core_client::Core,
    label_config::LabelConfig,
    scoring::Triggers,
};

/// The heuristic of an ALPS project whose default names none (the core's own default).
pub const DEFAULT_HEURISTIC: &str = "bald";

/// `extra_params.query_size` when absent: the size of the batch a batch heuristic selects.
pub const DEFAULT_QUERY_SIZE: u32 = 20;

/// Largest `extra_params.query_size` accepted.
pub const MAX_QUERY_SIZE: u32 = 1000;

/// ALPS project ids of Label Studio projects are `ls-<Label Studio project id>`.
pub const ALPS_ID_PREFIX: &str = "ls-";

/// Project id used for requests without `project` (stateless test clients); kept out of the
/// background resync and version updates, which need a real Label Studio project.
pub const STATELESS_PROJECT: u64 = 0;

/// The ALPS project id serving Label Studio project `ls_project`.
pub fn alps_id(ls_project: u64) -> String {
    format!("{ALPS_ID_PREFIX}{ls_project}")
}

/// The Label Studio project id in a project uid (`"7.1764489000"` -> 7: Label Studio appends a
/// timestamp, so the key is the part before the first `.`). `None` if it is not a number.
pub fn parse_uid(uid: &Value) -> Option<u64> {
    match uid {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.split('.').next()?.trim().parse().ok(),
        _ => None,
    }
}

/// What the adapter knows of one Label Studio project.
#[derive(Clone, Debug)]
pub struct ProjectLink {
    /// Label Studio project id.
    pub ls_id: u64,
    /// The supported part of its label config.
    pub config: LabelConfig,
    /// The model serving it.
    pub model: ModelPreset,
    /// How prediction scores are defined for it.
    pub score_mode: ScoreMode,
    /// ALPS version of the active model (`untrained`, `v3`), as last seen.
    pub active_version: String,
    /// Whether the ALPS project is known to match `config` and `model`.
    pub ensured: bool,
    /// `extra_params.heuristic`: the heuristic of this Label Studio project; `None` = the ALPS
    /// project's default.
    pub heuristic: Option<String>,
    /// The ALPS project's default heuristic, as last seen on the core.
    pub project_heuristic: String,
    /// `extra_params.query_size`: how many tasks a batch heuristic selects to head the order.
    pub query_size: u32,
    /// `extra_params.cold_start` / `cold_start_labels`: the ALPS project's acquisition schedule;
    /// `None` = leave the core's as it is (new projects get the server's default).
    pub cold_start: Option<ColdStart>,
}

/// An acquisition schedule asked for in `extra_params`: `cold_start` names the heuristic that
/// picks the first batches (`"none"` = no schedule), `cold_start_labels` the labelled examples at
/// which the project's heuristic takes over (absent = the core's default, max(2 × classes, 20)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColdStart {
    /// Heuristic name; empty = no schedule.
    pub heuristic: String,
    /// Switch point; 0 = the core's default.
    pub min_labels: u32,
}

/// Largest `extra_params.cold_start_labels` accepted.
const MAX_COLD_START_LABELS: u64 = 1_000_000;

/// The schedule `extra_params` asks for, if any.
fn cold_start(params: &Value) -> Result<Option<ColdStart>, OptionsError> {
    let min_labels = match &params["cold_start_labels"] {
        Value::Null => None,
        value => match value.as_u64() {
            Some(labels) if labels <= MAX_COLD_START_LABELS => Some(labels as u32),
            _ => return Err(OptionsError::BadColdStartLabels(value.to_string())),
        },
    };
    let heuristic = match &params["cold_start"] {
        Value::Null if min_labels.is_none() => return Ok(None),
        // Only a switch point: the server's default cold-start heuristic.
        Value::Null => "typiclust".to_owned(),
        // No schedule: a switch point would mean nothing (and the core refuses one).
        Value::String(name) if name == "none" => {
            return Ok(Some(ColdStart { heuristic: String::new(), min_labels: 0 }));
        }
        Value::String(name) if valid_heuristic(name) => name.clone(),
        other => return Err(OptionsError::BadHeuristic(other.to_string())),
    };
    Ok(Some(ColdStart { heuristic, min_labels: min_labels.unwrap_or(0) }))
}

impl ProjectLink {
    /// The ALPS project id.
    pub fn alps_id(&self) -> String {
        alps_id(self.ls_id)
    }

    /// The heuristic that scores this project's tasks.
    pub fn heuristic(&self) -> &str {
        self.heuristic.as_deref().unwrap_or(&self.project_heuristic)
    }

    /// The *scoring version*, the `model_version` string Label Studio sees: everything a score
    /// depends on. `<model>-<ALPS version>` in confidence mode (e.g. `small-cnn-v3`),
    /// `<model>-<ALPS version>-<heuristic>` in uncertainty mode (e.g. `vgg16-v3-entropy`). Stable
    /// across restarts and replicas; two heuristics never share one.
    pub fn model_version(&self) -> String {
        self.version_of(&self.active_version)
    }

    /// The scoring version of ALPS version `alps_version` with this project's options.
    pub fn version_of(&self, alps_version: &str) -> String {
        match self.score_mode {
            ScoreMode::Confidence => model_version(&self.model.name, alps_version),
            ScoreMode::Uncertainty => format!("{}-{}", model_version(&self.model.name, alps_version), self.heuristic()),
        }
    }
}

/// The schedule of an ALPS project as [`ColdStart`] (empty heuristic = none).
fn schedule_of(project: &alps_proto::v1::Project) -> ColdStart {
    let schedule = project.acquisition_schedule.clone().unwrap_or_default();
    ColdStart { heuristic: schedule.cold_start.map(|h| h.name).unwrap_or_default(), min_labels: schedule.min_labels }
}

/// `<model>-<ALPS version>`.
pub fn model_version(model: &str, alps_version: &str) -> String {
    format!("{model}-{alps_version}")
}

/// Whether `name` is a heuristic name the core accepts (its identifier grammar).
fn valid_heuristic(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// Bad per-project options in `extra_params`.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// `extra_params.model` names no configured model.
    #[error("Unknown model {name}; configured: {known}")]
    UnknownModel {
        /// The name given.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// `extra_params.score_mode` is not a score mode.
    #[error("Unknown score_mode {0}; use confidence or uncertainty")]
    UnknownScoreMode(String),
    /// `extra_params.heuristic` is not a heuristic name.
    #[error("Bad heuristic {0}: 1 to 128 characters from [A-Za-z0-9_.-], e.g. bald, entropy, batch_bald")]
    BadHeuristic(String),
    /// `extra_params.query_size` is not a number in range.
    #[error("Bad query_size {0}; a whole number from 1 to 1000")]
    BadQuerySize(String),
    /// `extra_params.cold_start_labels` is not a number in range.
    #[error("Bad cold_start_labels {0}; a whole number from 0 (the default switch point) to 1000000")]
    BadColdStartLabels(String),
}

/// Time [`Projects::served_versions`] waits for the core.
const VERSIONS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// The registry of project links.
#[derive(Debug)]
pub struct Projects {
    links: Mutex<HashMap<u64, ProjectLink>>,
    presets: Vec<ModelPreset>,
    default_model: String,
    default_score_mode: ScoreMode,
    core: Core,
    /// Told whenever a project's scoring version may have changed.
    triggers: Arc<Triggers>,
    /// Serialises [`Projects::ensure`], so concurrent requests make one CreateProject call.
    ensuring: tokio::sync::Mutex<()>,
    /// Active ALPS versions and default heuristics of the `ls-*` projects found on the core at
    /// start, for projects not seen since: the first `/setup` after a restart must already
    /// answer the right version.
    found_at_start: Mutex<HashMap<u64, (String, String)>>,
    /// The core's answer to the last failed [`Projects::ensure`] of a project, until one succeeds.
    setup_errors: Mutex<HashMap<u64, tonic::Status>>,
}

impl Projects {
    /// A registry creating ALPS projects with `presets` (`default_model` when the connection
    /// names none); `triggers` is told when a project's scoring version may have changed.
    pub fn new(
        presets: Vec<ModelPreset>,
        default_model: String,
        default_score_mode: ScoreMode,
        core: Core,
        triggers: Arc<Triggers>,
    ) -> Self {
        Self {
            links: Mutex::default(),
            presets,
            default_model,
            default_score_mode,
            core,
            triggers,
            ensuring: tokio::sync::Mutex::default(),
            found_at_start: Mutex::default(),
            setup_errors: Mutex::default(),
        }
    }

    /// The link of `ls_id`, if the project was seen.
    pub fn get(&self, ls_id: u64) -> Option<ProjectLink> {
        self.lock().get(&ls_id).cloned()
    }

    /// Every Label Studio project id seen since the start (the stateless one excluded).
    pub fn ids(&self) -> Vec<u64> {
        self.lock().keys().copied().filter(|&id| id != STATELESS_PROJECT).collect()
    }

    /// Whether the project was set up: seen since the start, or found on the core at start.
    pub fn is_known(&self, ls_id: u64) -> bool {
        self.lock().contains_key(&ls_id) || self.found_at_start.lock().expect("poisoned").contains_key(&ls_id)
    }

    /// Reads the `ls-*` projects and their active versions from the core (retried until the core
    /// answers), so versions survive an adapter restart.
    pub async fn load_from_core(&self) {
        let ids = loop {
            match self.core.project_ids().await {
                Ok(ids) => break ids,
                Err(status) => {
                    tracing::debug!(%status, "cannot list the core's projects yet");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        };
        for ls_id in ids.iter().filter_map(|id| id.strip_prefix(ALPS_ID_PREFIX)?.parse::<u64>().ok()) {
            if let Ok(Some(project)) = self.core.project(&alps_id(ls_id)).await {
                let heuristic = project.default_heuristic.map(|h| h.name).unwrap_or_default();
                self.found_at_start.lock().expect("poisoned").insert(ls_id, (project.active_model_version, heuristic));
            }
        }
        tracing::info!(
            projects = self.found_at_start.lock().expect("poisoned").len(),
            "loaded Label Studio projects from the core"
        );
    }

    /// Whether `version` is a model version string this adapter hands out
    /// (`<model>-<untrained|vN>[-<heuristic>]`).
    pub fn is_own_version(&self, version: &str) -> bool {
        self.presets.iter().any(|preset| {
            version.strip_prefix(&preset.name).and_then(|rest| rest.strip_prefix('-')).is_some_and(|rest| {
                let (alps, heuristic) = rest.split_once('-').map_or((rest, None), |(a, h)| (a, Some(h)));
                let alps_ok = alps == "untrained"
                    || alps.strip_prefix('v').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                alps_ok && heuristic.is_none_or(valid_heuristic)
            })
        })
    }

    /// Records the project's config and options (from `/setup`, `/predict` or a webhook) and returns
    /// its link. `extra_params` (only `/setup` carries it) may name a model and a score mode;
    /// without it, earlier choices stay. A changed config or model makes the ALPS project be
    /// brought in line in the background.
    ///
    /// # Errors
    /// [`OptionsError`] for an unknown model or score mode.
    pub fn observe(
        self: &Arc<Self>,
        ls_id: u64,
        config: LabelConfig,
        extra_params: Option<&Value>,
    ) -> Result<ProjectLink, OptionsError> {
        let model_name = extra_params.and_then(|params| params["model"].as_str());
        let score_mode = match extra_params.and_then(|params| params["score_mode"].as_str()) {
            Some(name) => Some(ScoreMode::from_name(name).ok_or_else(|| OptionsError::UnknownScoreMode(name.into()))?),
            None => None,
        };
        let named_model = model_name.map(|name| self.preset(name)).transpose()?;
        let heuristic = match extra_params.map(|params| &params["heuristic"]) {
            Some(Value::String(name)) if valid_heuristic(name) => Some(name.clone()),
            Some(Value::Null) | None => None,
            Some(other) => return Err(OptionsError::BadHeuristic(other.to_string())),
        };
        let query_size = match extra_params.map(|params| &params["query_size"]) {
            Some(Value::Null) | None => None,
            Some(value) => match value.as_u64() {
                Some(size) if (1..=u64::from(MAX_QUERY_SIZE)).contains(&size) => Some(size as u32),
                _ => return Err(OptionsError::BadQuerySize(value.to_string())),
            },
        };
        let cold_start = extra_params.map(cold_start).transpose()?.flatten();
        let found = self.found_at_start.lock().expect("poisoned").get(&ls_id).cloned();
        let mut links = self.lock();
        let previous = links.get(&ls_id).cloned();
        let model = match (named_model, &previous) {
            (Some(model), _) => model,
            (None, Some(previous)) => previous.model.clone(),
            (None, None) => self.preset(&self.default_model)?,
        };
        let cold_start =
            if extra_params.is_some() { cold_start } else { previous.as_ref().and_then(|l| l.cold_start.clone()) };
        let unchanged = previous
            .as_ref()
            .is_some_and(|link| link.config == config && link.model == model && link.cold_start == cold_start);
        // Right after a restart the core's answer from `load_from_core` stands in for the link.
        let (found_version, found_heuristic) = found.unwrap_or_default();
        let active_version = match &previous {
            Some(link) => link.active_version.clone(),
            None if !found_version.is_empty() => found_version,
            None => "untrained".to_owned(),
        };
        let project_heuristic = match &previous {
            Some(link) => link.project_heuristic.clone(),
            None if !found_heuristic.is_empty() => found_heuristic,
            None => DEFAULT_HEURISTIC.to_owned(),
        };
        let link = ProjectLink {
            ls_id,
            ensured: unchanged && previous.as_ref().is_some_and(|link| link.ensured),
            active_version,
            score_mode: score_mode.or(previous.as_ref().map(|link| link.score_mode)).unwrap_or(self.default_score_mode),
            heuristic: if extra_params.is_some() {
                heuristic
            } else {
                previous.as_ref().and_then(|l| l.heuristic.clone())
            },
            project_heuristic,
            query_size: query_size
                .or(if extra_params.is_some() { None } else { previous.as_ref().map(|l| l.query_size) })
                .unwrap_or(DEFAULT_QUERY_SIZE),
            cold_start,
            config,
            model,
        };
        links.insert(ls_id, link.clone());
        drop(links);
        let version_changed = previous.as_ref().is_none_or(|previous| previous.model_version() != link.model_version());
        if version_changed && ls_id != STATELESS_PROJECT {
            if let Some(previous) = &previous {
                tracing::info!(project = ls_id, from = %previous.model_version(), to = %link.model_version(), "scoring version changed by the project's options");
            }
            self.triggers.fire(ls_id);
        }
        if !link.ensured {
            let projects = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(status) = projects.ensure(ls_id).await {
                    tracing::warn!(project = ls_id, %status, "cannot create or update the ALPS project");
                }
            });
        }
        Ok(link)
    }

    /// Makes sure the ALPS project matches the link (creating it if needed) and returns the link
    /// with the core's active version.
    ///
    /// # Errors
    /// The gRPC status of the core call; [`tonic::Code::NotFound`] if the project was never seen.
    pub async fn ensure(&self, ls_id: u64) -> Result<ProjectLink, tonic::Status> {
        if let Some(link) = self.get(ls_id).filter(|link| link.ensured) {
            return Ok(link);
        }
        let _one_at_a_time = self.ensuring.lock().await;
        let link = self.get(ls_id).ok_or_else(|| tonic::Status::not_found(format!("project {ls_id} not set up")))?;
        if link.ensured {
            return Ok(link);
        }
        let project = match self.core.ensure_project(&link.alps_id(), &link.config.labels, &link.model).await {
            Ok(project) => {
                self.record_setup(ls_id, None);
                project
            }
            Err(status) => {
                self.record_setup(ls_id, Some(&status));
                return Err(status);
            }
        };
        let project = match &link.cold_start {
            Some(wanted) if schedule_of(&project) != *wanted => {
                match self.core.set_schedule(&link.alps_id(), &wanted.heuristic, wanted.min_labels).await {
                    Ok(updated) => updated,
                    // A schedule the core refuses (e.g. a heuristic it has not loaded) must not
                    // stop the project: it keeps the core's schedule, and /status says why.
                    Err(status) => {
                        tracing::warn!(project = ls_id, %status, "cannot set the acquisition schedule");
                        self.record_setup(ls_id, Some(&status));
                        project
                    }
                }
            }
            _ => project,
        };
        let mut links = self.lock();
        let Some(current) = links.get_mut(&ls_id) else { return Ok(link) };
        // Only mark it ensured if nobody changed the link meanwhile.
        if current.config == link.config && current.model == link.model && current.cold_start == link.cold_start {
            current.ensured = true;
        }
        let current = current.clone();
        drop(links);
        self.set_active_version(ls_id, &project.active_model_version);
        self.set_project_heuristic(ls_id, project.default_heuristic.as_ref().map_or("", |h| h.name.as_str()));
        Ok(self.get(ls_id).unwrap_or(current))
    }

    /// Why the project's ALPS project could not be created or updated last time (the core's
    /// message, e.g. pretrained weights that cannot be fetched); `None` once an attempt succeeds.
    pub fn setup_error(&self, ls_id: u64) -> Option<String> {
        let errors = self.setup_errors.lock().expect("poisoned");
        errors.get(&ls_id).map(|status| format!("{:?}: {}", status.code(), status.message()))
    }

    /// Whether the core refused the adapter's credentials for the last setup of some project
    /// (UNAUTHENTICATED, or PERMISSION_DENIED for a token below the `admin` role).
    pub fn setup_refused(&self) -> bool {
        self.setup_errors.lock().expect("poisoned").values().any(crate::core_link::is_refusal)
    }

    fn record_setup(&self, ls_id: u64, failure: Option<&tonic::Status>) {
        let mut errors = self.setup_errors.lock().expect("poisoned");
        match failure {
            Some(status) => {
                errors.insert(ls_id, status.clone());
            }
            None => {
                errors.remove(&ls_id);
            }
        }
        drop(errors);
        crate::metrics::project_setup(ls_id, failure.map_or(Ok(()), |status| Err(status.code())));
    }

    /// Records the ALPS project's default heuristic as seen on the core (empty = the core's
    /// default, [`DEFAULT_HEURISTIC`]); a changed scoring version starts re-scoring.
    pub fn set_project_heuristic(&self, ls_id: u64, name: &str) {
        let name = if name.is_empty() { DEFAULT_HEURISTIC } else { name };
        let mut links = self.lock();
        let Some(link) = links.get_mut(&ls_id) else { return };
        if link.project_heuristic == name {
            return;
        }
        let before = link.model_version();
        link.project_heuristic = name.to_owned();
        let after = link.model_version();
        drop(links);
        if before != after && ls_id != STATELESS_PROJECT {
            tracing::info!(project = ls_id, from = %before, to = %after, "the ALPS project's heuristic changed");
            self.triggers.fire(ls_id);
        }
    }

    /// Records the ALPS version active on the core; announces the change if it is new.
    pub fn set_active_version(&self, ls_id: u64, alps_version: &str) {
        if alps_version.is_empty() {
            return;
        }
        let mut links = self.lock();
        let Some(link) = links.get_mut(&ls_id) else { return };
        if link.active_version == alps_version {
            return;
        }
        tracing::info!(project = ls_id, from = %link.active_version, to = alps_version, "model version changed");
        link.active_version = alps_version.to_owned();
        drop(links);
        crate::metrics::version_changed();
        if ls_id != STATELESS_PROJECT {
            self.triggers.fire(ls_id);
        }
    }

    /// Re-reads the active version of every known project from the core.
    pub async fn refresh_versions(&self) {
        for ls_id in self.ids() {
            match self.core.project(&alps_id(ls_id)).await {
                Ok(Some(project)) => {
                    self.set_active_version(ls_id, &project.active_model_version);
                    let heuristic = project.default_heuristic.as_ref().map_or("", |h| h.name.as_str());
                    self.set_project_heuristic(ls_id, heuristic);
                }
                Ok(None) => {}
                Err(status) => tracing::debug!(project = ls_id, %status, "cannot read the active version"),
            }
        }
    }

    /// Every version served for the projects `ids`, newest first per project, as Label Studio
    /// sees them; a project's cached version if the core does not answer within
    /// [`VERSIONS_TIMEOUT`] (Label Studio allows `/versions` 3 s).
    pub async fn served_versions(&self, ids: &[u64]) -> Vec<String> {
        let mut listings = tokio::task::JoinSet::new();
        for link in ids.iter().filter_map(|&ls_id| self.get(ls_id)) {
            let core = self.core.clone();
            listings.spawn(async move {
                match tokio::time::timeout(VERSIONS_TIMEOUT, core.versions(&link.alps_id())).await {
                    Ok(Ok(versions)) if !versions.is_empty() => {
                        versions.iter().map(|version| link.version_of(version)).collect()
                    }
                    _ => vec![link.model_version()],
                }
            });
        }
        listings.join_all().await.into_iter().flatten().collect()
    }

    fn preset(&self, name: &str) -> Result<ModelPreset, OptionsError> {
        self.presets.iter().find(|preset| preset.name == name).cloned().ok_or_else(|| OptionsError::UnknownModel {
            name: name.to_owned(),
            known: self.presets.iter().map(|preset| preset.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProjectLink>> {
        self.links.lock().expect("project links poisoned")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{config::BUILTIN_MODEL, label_config};

    fn registry() -> (Arc<Projects>, tokio::sync::mpsc::Receiver<(u64, Arc<tokio::sync::Notify>)>) {
        let channel = crate::core_link::core_transport("http://127.0.0.1:9", &Default::default()).unwrap();
        let (sender, receiver) = Triggers::new();
        let mut digits = ModelPreset::builtin();
        digits.name = "digits".into();
        let presets = vec![ModelPreset::builtin(), digits];
        (
            Arc::new(Projects::new(presets, BUILTIN_MODEL.into(), ScoreMode::Confidence, Core::new(channel), sender)),
            receiver,
        )
    }

    fn config() -> LabelConfig {
        label_config::parse(label_config::SUPPORTED_EXAMPLE).unwrap()
    }

    #[test]
    fn uids_key_by_the_project_id() {
        assert_eq!(parse_uid(&json!("7.1764489000")), Some(7));
        assert_eq!(parse_uid(&json!("12")), Some(12));
        assert_eq!(parse_uid(&json!(8)), Some(8));
        assert_eq!(parse_uid(&json!("x.1")), None);
        assert_eq!(parse_uid(&Value::Null), None);
    }

    #[tokio::test]
    async fn options_come_from_extra_params_and_stick() {
        let (projects, mut changes) = registry();
        let link = projects.observe(7, config(), None).unwrap();
        assert_eq!(link.model.name, BUILTIN_MODEL);
        assert_eq!(link.model_version(), "small-cnn-untrained");
        let (project, notify) = changes.recv().await.unwrap();
        assert_eq!(project, 7);
        notify.notified().await;
        let params = json!({"model": "digits", "score_mode": "uncertainty"});
        let link = projects.observe(7, config(), Some(&params)).unwrap();
        assert_eq!((link.model.name.as_str(), link.score_mode), ("digits", ScoreMode::Uncertainty));
        assert_eq!(link.model_version(), "digits-untrained-bald");
        notify.notified().await;
        let params = json!({"model": "digits", "score_mode": "uncertainty", "heuristic": "entropy", "query_size": 5});
        let link = projects.observe(7, config(), Some(&params)).unwrap();
        assert_eq!((link.model_version().as_str(), link.query_size), ("digits-untrained-entropy", 5));
        notify.notified().await;
        projects.set_project_heuristic(7, "margin");
        assert_eq!(
            projects.get(7).unwrap().model_version(),
            "digits-untrained-entropy",
            "the project's own choice wins"
        );
        // A later call without extra_params (e.g. /predict) keeps them.
        let link = projects.observe(7, config(), None).unwrap();
        assert_eq!((link.model.name.as_str(), link.score_mode), ("digits", ScoreMode::Uncertainty));
        assert_eq!(link.alps_id(), "ls-7");
    }

    #[tokio::test]
    async fn bad_options_are_refused() {
        let (projects, _changes) = registry();
        let error = projects.observe(1, config(), Some(&json!({"model": "vit"}))).unwrap_err();
        assert_eq!(error.to_string(), "Unknown model vit; configured: small-cnn, digits");
        assert!(projects.observe(1, config(), Some(&json!({"score_mode": "loud"}))).is_err());
        assert!(projects.observe(1, config(), Some(&json!({"heuristic": "../x"}))).is_err());
        assert!(projects.observe(1, config(), Some(&json!({"heuristic": 3}))).is_err());
        for size in [json!(0), json!(1001), json!(2.5), json!("20")] {
            assert!(projects.observe(1, config(), Some(&json!({"query_size": size}))).is_err(), "{size}");
        }
        for labels in [json!(-1), json!(1_000_001), json!("20")] {
            let params = json!({"cold_start_labels": labels});
            assert!(projects.observe(1, config(), Some(&params)).is_err(), "{labels}");
        }
        assert!(projects.observe(1, config(), Some(&json!({"cold_start": "../typiclust"}))).is_err());
        assert!(projects.get(1).is_none());
    }

    #[tokio::test]
    async fn a_cold_start_schedule_comes_from_extra_params_and_sticks() {
        let (projects, _changes) = registry();
        assert_eq!(projects.observe(2, config(), None).unwrap().cold_start, None, "the core's schedule stands");
        let cases = [
            (
                json!({"cold_start": "coreset", "cold_start_labels": 40}),
                ColdStart { heuristic: "coreset".into(), min_labels: 40 },
            ),
            (json!({"cold_start": "none"}), ColdStart { heuristic: String::new(), min_labels: 0 }),
            (json!({"cold_start_labels": 30}), ColdStart { heuristic: "typiclust".into(), min_labels: 30 }),
        ];
        for (params, wanted) in cases {
            let link = projects.observe(2, config(), Some(&params)).unwrap();
            assert_eq!(link.cold_start.as_ref(), Some(&wanted), "{params}");
            assert!(!link.ensured, "a new schedule is pushed to the core");
            assert_eq!(
                projects.observe(2, config(), None).unwrap().cold_start,
                Some(wanted),
                "kept without extra_params"
            );
        }
    }

    #[tokio::test]
    async fn version_changes_are_announced_once() {
        let (projects, mut changes) = registry();
        projects.observe(3, config(), None).unwrap();
        let (_, notify) = changes.recv().await.unwrap();
        notify.notified().await;
        projects.set_active_version(3, "v2");
        projects.set_active_version(3, "v2");
        notify.notified().await;
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), notify.notified()).await;
        assert!(again.is_err(), "one change, one trigger");
        assert!(changes.try_recv().is_err());
        assert_eq!(projects.get(3).unwrap().model_version(), "small-cnn-v2");
    }

    #[tokio::test]
    async fn own_versions_are_recognised() {
        let (projects, _changes) = registry();
        for own in ["small-cnn-untrained", "small-cnn-v12", "digits-v1", "digits-v3-entropy", "small-cnn-v1-batch_bald"]
        {
            assert!(projects.is_own_version(own), "{own}");
        }
        for other in ["", "alps", "small-cnn", "small-cnn-v1b", "yolo-v3", "small-cnn-v-bald", "digits-v1-"] {
            assert!(!projects.is_own_version(other), "{other}");
        }
    }
}
