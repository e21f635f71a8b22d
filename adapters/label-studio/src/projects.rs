//! Per-project state, keyed by the Label Studio project id: the parsed label config, the model
//! preset and score mode chosen at `/setup`, and the active model version as last seen on the core.
//! `/health` and `/setup` answer from here without any network call (spec §1.4).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    config::{ModelPreset, ScoreMode},
    core_client::Core,
    label_config::LabelConfig,
};

/// ALPS project ids of Label Studio projects are `ls-<Label Studio project id>`.
pub const ALPS_ID_PREFIX: &str = "ls-";

/// Project id used for requests without `project` (stateless test clients); kept out of the
/// background resync and version updates, which need a real Label Studio project.
pub const STATELESS_PROJECT: u64 = 0;

/// The ALPS project id serving Label Studio project `ls_project`.
pub fn alps_id(ls_project: u64) -> String {
    format!("{ALPS_ID_PREFIX}{ls_project}")
}

/// The Label Studio project id in a project uid (`"7.1764489000"` -> 7; spec: key by the part
/// before the first `.`). `None` if it is not a number.
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
}

impl ProjectLink {
    /// The ALPS project id.
    pub fn alps_id(&self) -> String {
        alps_id(self.ls_id)
    }

    /// The `model_version` string Label Studio sees: `<model>-<ALPS version>`, e.g.
    /// `small-cnn-v3`, stable across restarts and replicas (spec §3.4).
    pub fn model_version(&self) -> String {
        model_version(&self.model.name, &self.active_version)
    }
}

/// `<model>-<ALPS version>`.
pub fn model_version(model: &str, alps_version: &str) -> String {
    format!("{model}-{alps_version}")
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
}

/// Time [`Projects::served_versions`] waits for the core.
const VERSIONS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Announced when a project's model version string changes: (Label Studio project, new version).
pub type VersionChange = (u64, String);

/// The registry of project links.
#[derive(Debug)]
pub struct Projects {
    links: Mutex<HashMap<u64, ProjectLink>>,
    presets: Vec<ModelPreset>,
    default_model: String,
    default_score_mode: ScoreMode,
    core: Core,
    version_changes: mpsc::UnboundedSender<VersionChange>,
    /// Serialises [`Projects::ensure`], so concurrent requests make one CreateProject call.
    ensuring: tokio::sync::Mutex<()>,
    /// Active ALPS versions of the `ls-*` projects found on the core at start, for projects not
    /// seen since: the first `/setup` after a restart must already answer the right version.
    found_at_start: Mutex<HashMap<u64, String>>,
}

impl Projects {
    /// A registry creating ALPS projects with `presets` (`default_model` when the connection
    /// names none); version changes are sent to `version_changes`.
    pub fn new(
        presets: Vec<ModelPreset>,
        default_model: String,
        default_score_mode: ScoreMode,
        core: Core,
        version_changes: mpsc::UnboundedSender<VersionChange>,
    ) -> Self {
        Self {
            links: Mutex::default(),
            presets,
            default_model,
            default_score_mode,
            core,
            version_changes,
            ensuring: tokio::sync::Mutex::default(),
            found_at_start: Mutex::default(),
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
                self.found_at_start.lock().expect("poisoned").insert(ls_id, project.active_model_version);
            }
        }
        tracing::info!(
            projects = self.found_at_start.lock().expect("poisoned").len(),
            "loaded Label Studio projects from the core"
        );
    }

    /// Whether `version` is a model version string this adapter hands out.
    pub fn is_own_version(&self, version: &str) -> bool {
        self.presets.iter().any(|preset| {
            version.strip_prefix(&preset.name).and_then(|rest| rest.strip_prefix('-')).is_some_and(|alps| {
                alps == "untrained" || alps.strip_prefix('v').is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
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
        let mut links = self.lock();
        let previous = links.get(&ls_id).cloned();
        let model = match (named_model, &previous) {
            (Some(model), _) => model,
            (None, Some(previous)) => previous.model.clone(),
            (None, None) => self.preset(&self.default_model)?,
        };
        let unchanged = previous.as_ref().is_some_and(|link| link.config == config && link.model == model);
        let link = ProjectLink {
            ls_id,
            ensured: unchanged && previous.as_ref().is_some_and(|link| link.ensured),
            active_version: previous
                .as_ref()
                .map_or_else(|| "untrained".to_owned(), |link| link.active_version.clone()),
            score_mode: score_mode.or(previous.as_ref().map(|link| link.score_mode)).unwrap_or(self.default_score_mode),
            config,
            model,
        };
        links.insert(ls_id, link.clone());
        drop(links);
        if previous.is_none() && ls_id != STATELESS_PROJECT {
            let _ = self.version_changes.send((ls_id, link.model_version()));
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
        let project = self.core.ensure_project(&link.alps_id(), &link.config.labels, &link.model).await?;
        let mut links = self.lock();
        let Some(current) = links.get_mut(&ls_id) else { return Ok(link) };
        // Only mark it ensured if nobody changed the link meanwhile.
        if current.config == link.config && current.model == link.model {
            current.ensured = true;
        }
        let current = current.clone();
        drop(links);
        self.set_active_version(ls_id, &project.active_model_version);
        Ok(self.get(ls_id).unwrap_or(current))
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
        let version = link.model_version();
        drop(links);
        crate::metrics::version_changed();
        if ls_id != STATELESS_PROJECT {
            let _ = self.version_changes.send((ls_id, version));
        }
    }

    /// Re-reads the active version of every known project from the core.
    pub async fn refresh_versions(&self) {
        for ls_id in self.ids() {
            match self.core.project(&alps_id(ls_id)).await {
                Ok(Some(project)) => self.set_active_version(ls_id, &project.active_model_version),
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
                        versions.iter().map(|version| model_version(&link.model.name, version)).collect()
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

    fn registry() -> (Arc<Projects>, mpsc::UnboundedReceiver<VersionChange>) {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let (sender, receiver) = mpsc::unbounded_channel();
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
        assert_eq!(changes.recv().await.unwrap(), (7, "small-cnn-untrained".to_owned()));
        let params = json!({"model": "digits", "score_mode": "uncertainty"});
        let link = projects.observe(7, config(), Some(&params)).unwrap();
        assert_eq!((link.model.name.as_str(), link.score_mode), ("digits", ScoreMode::Uncertainty));
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
        assert!(projects.get(1).is_none());
    }

    #[tokio::test]
    async fn version_changes_are_announced_once() {
        let (projects, mut changes) = registry();
        projects.observe(3, config(), None).unwrap();
        changes.recv().await.unwrap();
        projects.set_active_version(3, "v2");
        projects.set_active_version(3, "v2");
        assert_eq!(changes.recv().await.unwrap(), (3, "small-cnn-v2".to_owned()));
        assert!(changes.try_recv().is_err());
        assert_eq!(projects.get(3).unwrap().model_version(), "small-cnn-v2");
    }

    #[tokio::test]
    async fn own_versions_are_recognised() {
        let (projects, _changes) = registry();
        for own in ["small-cnn-untrained", "small-cnn-v12", "digits-v1"] {
            assert!(projects.is_own_version(own), "{own}");
        }
        for other in ["", "alps", "small-cnn", "small-cnn-v1b", "yolo-v3"] {
            assert!(!projects.is_own_version(other), "{other}");
        }
    }
}
