//! Keeps each Label Studio project's `model_version` on the adapter's scoring version, so the Data Manager's score column, sorting by score and uncertainty sampling use the
//! current predictions. The pool scorer ([`crate::scoring`]) sets the target once every
//! unlabelled task holds a prediction of the version; Label Studio accepts the PATCH only once a
//! prediction of that version is stored, so each change is retried until it is.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use crate::{ls_api::LabelStudio, projects::Projects};

/// The latest target version of each project, waiting to be applied: one entry per project, so
/// it is bounded by the number of projects; a newer target replaces an older one.
#[derive(Debug, Default)]
pub struct VersionTargets {
    latest: Mutex<HashMap<u64, String>>,
    notify: Notify,
}

impl VersionTargets {
    /// Asks for project `project`'s `model_version` to become `version`.
    pub fn set(&self, project: u64, version: String) {
        self.latest.lock().expect("targets poisoned").insert(project, version);
        self.notify.notify_one();
    }

    fn take(&self) -> HashMap<u64, String> {
        std::mem::take(&mut *self.latest.lock().expect("targets poisoned"))
    }
}

/// Pause between checks for a stored prediction of the new version.
const RETRY_EVERY: Duration = Duration::from_secs(3);

/// A version change is given up after this long without a stored prediction of it; the next
/// change (or adapter restart) tries again.
const GIVE_UP_AFTER: Duration = Duration::from_secs(6 * 3600);

/// What happened to one sync attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The project now has the version.
    Done,
    /// The user chose another version (imported predictions): left alone.
    UserChoice,
    /// No prediction of the version is stored yet, or Label Studio failed: try again later.
    Retry,
}

/// Consumes version changes and updates Label Studio; without Label Studio access it only logs
/// the manual step once per change.
pub async fn run(targets: Arc<VersionTargets>, label_studio: Option<Arc<LabelStudio>>, projects: Arc<Projects>) {
    let mut pending: HashMap<u64, (String, tokio::time::Instant)> = HashMap::new();
    let mut announced: HashMap<u64, String> = HashMap::new();
    let mut ticker = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            () = targets.notify.notified() => {
                for (project, version) in targets.take() {
                    match &label_studio {
                        Some(_) => {
                            pending.insert(project, (version, tokio::time::Instant::now()));
                        }
                        None if announced.get(&project) != Some(&version) => {
                            tracing::warn!(
                                project,
                                version,
                                "LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY not set: set the project's model_version by hand \
                                 (PATCH /api/projects/{project} {{\"model_version\": ...}}) to sort by this version's scores"
                            );
                            announced.insert(project, version);
                        }
                        None => {}
                    }
                }
            }
            _ = ticker.tick() => {
                let Some(ls) = &label_studio else { continue };
                let mut finished = Vec::new();
                for (project, (version, since)) in &pending {
                    let outcome = sync(ls, &projects, *project, version).await;
                    if outcome != Outcome::Retry || since.elapsed() > GIVE_UP_AFTER {
                        finished.push(*project);
                    }
                }
                for project in finished {
                    pending.remove(&project);
                }
            }
        }
    }
}

async fn sync(ls: &LabelStudio, projects: &Projects, project: u64, version: &str) -> Outcome {
    let current = match ls.project_model_version(project).await {
        Ok(current) => current,
        Err(error) => {
            tracing::debug!(project, %error, "cannot read the project's model_version");
            return Outcome::Retry;
        }
    };
    if current == version {
        return Outcome::Done;
    }
    if !current.is_empty() && !projects.is_own_version(&current) {
        let titles = match ls.backend_titles(project).await {
            Ok(titles) => titles,
            Err(error) => {
                tracing::debug!(project, %error, "cannot list the project's ML backends");
                return Outcome::Retry;
            }
        };
        if !titles.contains(&current) {
            tracing::info!(project, current, version, "project model_version was chosen by a user; not changing it");
            return Outcome::UserChoice;
        }
    }
    match ls.prediction_versions(project).await {
        Ok(stored) if stored.iter().any(|stored| stored == version) => {}
        Ok(_) => return Outcome::Retry,
        Err(error) => {
            tracing::debug!(project, %error, "cannot list stored prediction versions");
            return Outcome::Retry;
        }
    }
    match ls.set_project_model_version(project, version).await {
        Ok(()) => {
            tracing::info!(project, from = current, to = version, "updated the Label Studio project's model_version");
            crate::metrics::version_patch("ok");
            Outcome::Done
        }
        Err(error) => {
            tracing::warn!(project, version, %error, "cannot update the project's model_version; will retry");
            crate::metrics::version_patch("error");
            Outcome::Retry
        }
    }
}
