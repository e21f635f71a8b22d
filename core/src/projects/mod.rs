//! The project registry: create, read, update and delete projects, persisted in the data
//! directory's database and cached in memory for the prediction path.

pub mod spec;

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

pub use spec::{
    AcquisitionSchedule, Architecture, DEFAULT_HEAD_DROPOUT, DEFAULT_HEURISTIC, DEFAULT_MC_ITERATIONS, HeuristicChoice,
    ModelSpec, Preprocessing, PretrainedWeights, Project, ProjectSpec, SpecError, UNTRAINED_VERSION,
    check_mc_iterations,
};

use crate::{
    clock::now_unix_ms,
    store::{
        StorageFailure,
        catalog::{Catalog, StoreError},
    },
};

/// Why a project operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// See [`SpecError`].
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No project with this id.
    #[error("project {0:?} not found")]
    NotFound(String),
    /// The catalogue failed.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
}

impl From<StoreError> for ProjectError {
    fn from(error: StoreError) -> Self {
        Self::Storage(error.into())
    }
}

/// Changes to a project's mutable settings; `None` = unchanged.
#[derive(Clone, Debug, Default)]
pub struct ProjectUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New default MC iterations.
    pub mc_iterations: Option<u32>,
    /// New default heuristic.
    pub default_heuristic: Option<HeuristicChoice>,
    /// New preprocessing, complete (defaults already filled in); a change makes the project
    /// untrained again.
    pub preprocessing: Option<Preprocessing>,
    /// New acquisition schedule (`Some(None)` removes it).
    pub acquisition_schedule: Option<Option<AcquisitionSchedule>>,
}

/// What [`Projects::refresh`] changed in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Created, or its spec changed, by another server.
    Changed(String),
    /// Another server activated a version of it (the project, the version).
    Activated(String, String),
    /// Deleted by another server.
    Removed(String),
    /// Deleted and made again under the same id by other servers: what this server kept of the
    /// old one (trained versions, cached models) is not the new one's.
    Recreated(String),
}

/// All projects, persisted in `db` and cached in memory.
#[derive(Debug)]
pub struct Projects {
    catalog: Arc<dyn Catalog>,
    cache: RwLock<HashMap<String, Arc<Project>>>,
    /// Whether other servers (replicas) change the catalogue too: then the cache may lag it.
    replicas: bool,
    /// Catalogue reads for ids missing from the cache in progress ([`Self::find`]).
    miss_lookups: AtomicUsize,
}

/// How many catalogue reads for ids missing from the cache may run at once.
pub const MISS_LOOKUPS: usize = 4;

/// A turn to read the catalogue for a missing id; the count goes down when it is dropped.
struct MissLookup<'a>(&'a AtomicUsize);

impl<'a> MissLookup<'a> {
    fn start(running: &'a AtomicUsize) -> Option<Self> {
        running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MISS_LOOKUPS).then_some(n + 1)).ok()?;
        Some(Self(running))
    }
}

impl Drop for MissLookup<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Projects {
    /// Loads every stored project.
    ///
    /// # Errors
    /// [`StoreError`] if the database cannot be read.
    pub fn open(catalog: Arc<dyn Catalog>) -> Result<Self, StoreError> {
        let cache = catalog.projects()?.into_iter().map(|p| (p.spec.id.clone(), Arc::new(p))).collect();
        Ok(Self { catalog, cache: RwLock::new(cache), replicas: false, miss_lookups: AtomicUsize::new(0) })
    }

    /// This registry, for a server whose catalogue replicas change too (see [`Self::find`]).
    #[must_use]
    pub fn with_replicas(mut self, replicas: bool) -> Self {
        self.replicas = replicas;
        self
    }

    /// Whether other servers change the catalogue too ([`Self::with_replicas`]).
    pub fn follows_replicas(&self) -> bool {
        self.replicas
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Project>>> {
        // The map is replaced entry by entry, so a panic elsewhere cannot leave it half-written.
        self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Project>>> {
        self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `spec`'s project, or replaces the spec of the existing one (idempotent upsert).
    /// Returns the stored project and whether it is new.
    ///
    /// # Errors
    /// [`ProjectError::Invalid`] naming the field, or a store failure.
    pub fn upsert(&self, spec: ProjectSpec) -> Result<(Arc<Project>, bool), ProjectError> {
        spec.validate()?;
        // Versions trained for other classes, another model or other inputs cannot serve this spec
        // (their head or input shapes differ): the project starts over from its initial weights.
        // Decided against the stored spec, in the store's transaction.
        let created = self.catalog.upsert_project(&spec, now_unix_ms(), UNTRAINED_VERSION, &|stored: &ProjectSpec| {
            let starts_over = !stored.same_model(&spec);
            if starts_over {
                tracing::info!(project = %spec.id, "classes, model or preprocessing changed: the project is untrained again");
            }
            starts_over
        })?;
        let stored = self.catalog.project(&spec.id)?.ok_or_else(|| ProjectError::NotFound(spec.id.clone()))?;
        let project = Arc::new(stored);
        self.cache_write().insert(spec.id, project.clone());
        Ok((project, created))
    }

    /// The project `id`.
    ///
    /// # Errors
    /// [`ProjectError::NotFound`].
    pub fn get(&self, id: &str) -> Result<Arc<Project>, ProjectError> {
        self.cache_read().get(id).cloned().ok_or_else(|| ProjectError::NotFound(id.to_owned()))
    }

    /// The project `id`, as [`get`](Self::get); with replicas, one missing from the cache is
    /// looked for in the catalogue (read-your-writes across replicas: a client that created it
    /// on another replica a moment ago, before this one heard of it, finds it). Reads the
    /// catalogue only on a miss. At most [`MISS_LOOKUPS`] such reads run at once: past that,
    /// a miss is `NotFound` without a read, so that a flood of unknown ids cannot keep the
    /// catalogue's reading session busy.
    ///
    /// # Errors
    /// [`ProjectError::NotFound`], or a store failure.
    pub fn find(&self, id: &str) -> Result<Arc<Project>, ProjectError> {
        match self.get(id) {
            Err(ProjectError::NotFound(_)) if self.replicas => {
                let Some(_turn) = MissLookup::start(&self.miss_lookups) else {
                    return Err(ProjectError::NotFound(id.to_owned()));
                };
                let stored = self.catalog.project(id)?.ok_or_else(|| ProjectError::NotFound(id.to_owned()))?;
                // An entry this server made meanwhile (a refresh, an activation) is newer.
                Ok(self.cache_write().entry(id.to_owned()).or_insert_with(|| Arc::new(stored)).clone())
            }
            found => found,
        }
    }

    /// Every project, ordered by id.
    pub fn list(&self) -> Vec<Arc<Project>> {
        let mut projects: Vec<_> = self.cache_read().values().cloned().collect();
        projects.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        projects
    }

    /// Applies `update` to project `id`.
    ///
    /// # Errors
    /// [`ProjectError::NotFound`], [`ProjectError::Invalid`] naming the field, or a store failure.
    pub fn update(&self, id: &str, update: ProjectUpdate) -> Result<Arc<Project>, ProjectError> {
        self.get(id)?;
        // From the catalogue, not the cache: another replica may have changed it a moment ago,
        // and writing back a stale copy would undo that.
        let stored = self.catalog.project(id)?.ok_or_else(|| ProjectError::NotFound(id.to_owned()))?;
        let mut spec = stored.spec;
        if let Some(k) = update.mc_iterations {
            check_mc_iterations("mc_iterations", k)?;
            spec.mc_iterations = k;
        }
        if let Some(name) = update.display_name {
            spec.display_name = name;
        }
        if let Some(heuristic) = update.default_heuristic {
            spec.default_heuristic = heuristic;
        }
        if let Some(preprocessing) = update.preprocessing {
            spec.preprocessing = preprocessing;
        }
        if let Some(schedule) = update.acquisition_schedule {
            spec.acquisition_schedule = schedule;
        }
        Ok(self.upsert(spec)?.0)
    }

    /// Re-reads project `id` from the database into the cache (after its active version changed).
    ///
    /// # Errors
    /// [`ProjectError::NotFound`], or a store failure.
    pub fn reload(&self, id: &str) -> Result<Arc<Project>, ProjectError> {
        let project = Arc::new(self.catalog.project(id)?.ok_or_else(|| ProjectError::NotFound(id.to_owned()))?);
        self.cache_write().insert(id.to_owned(), project.clone());
        Ok(project)
    }

    /// Brings the cache in line with the catalogue after other servers changed it (replicas,
    /// see [`crate::replicas`]). A project whose active version changed is swapped in only once
    /// `load` has loaded that version for serving (load first, then swap: the old version serves
    /// meanwhile); if `load` fails, the project keeps its cached state and the next refresh tries
    /// again. An entry this server changed while the catalogue was being read is kept: it is the
    /// newer one.
    ///
    /// # Errors
    /// [`StoreError`] if the catalogue cannot be read; the cache is unchanged then.
    pub fn refresh(&self, load: &dyn Fn(&Project) -> Result<(), String>) -> Result<Vec<Refreshed>, StoreError> {
        let before = self.cache_read().clone();
        let stored = self.catalog.projects()?;
        let mut changes = Vec::new();
        let mut updates = Vec::new();
        for project in stored.iter().cloned() {
            let id = project.spec.id.clone();
            let cached = before.get(&id);
            if cached.is_some_and(|cached| **cached == project) {
                continue;
            }
            let activated = project.active_version != UNTRAINED_VERSION
                && cached.is_some_and(|cached| cached.active_version != project.active_version);
            let recreated = cached.is_some_and(|cached| cached.created_unix_ms != project.created_unix_ms);
            let change = if recreated {
                Refreshed::Recreated(id.clone())
            } else if activated {
                if let Err(error) = load(&project) {
                    let version = &project.active_version;
                    tracing::warn!(project = %id, %version, %error, "cannot load a version another server activated");
                    continue;
                }
                Refreshed::Activated(id.clone(), project.active_version.clone())
            } else {
                Refreshed::Changed(id.clone())
            };
            updates.push((cached.cloned(), Arc::new(project), change));
        }
        let kept: std::collections::HashSet<&str> = stored.iter().map(|p| p.spec.id.as_str()).collect();
        let mut cache = self.cache_write();
        let unchanged = |cache: &HashMap<String, Arc<Project>>, id: &str, cached: Option<&Arc<Project>>| {
            cache.get(id).map(Arc::as_ptr) == cached.map(Arc::as_ptr)
        };
        for (cached, project, change) in updates {
            if unchanged(&cache, &project.spec.id, cached.as_ref()) {
                cache.insert(project.spec.id.clone(), project);
                changes.push(change);
            }
        }
        for (id, cached) in &before {
            if !kept.contains(id.as_str()) && unchanged(&cache, id, Some(cached)) {
                cache.remove(id);
                changes.push(Refreshed::Removed(id.clone()));
            }
        }
        Ok(changes)
    }

    /// Deletes project `id`.
    ///
    /// # Errors
    /// [`ProjectError::NotFound`], or a store failure.
    pub fn delete(&self, id: &str) -> Result<(), ProjectError> {
        if !self.catalog.delete_project(id)? {
            return Err(ProjectError::NotFound(id.to_owned()));
        }
        self.cache_write().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::spec::tests::spec;

    fn projects(dir: &std::path::Path) -> Projects {
        Projects::open(Arc::new(crate::store::sqlite::SqliteCatalog::open(&dir.join("alps.db")).unwrap())).unwrap()
    }

    #[test]
    fn with_replicas_a_project_created_elsewhere_is_found_before_this_server_hears_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let (here, elsewhere) = (projects(dir.path()).with_replicas(true), projects(dir.path()));
        elsewhere.upsert(spec()).unwrap();
        assert!(matches!(here.get("cars"), Err(ProjectError::NotFound(_))), "not in this server's cache yet");
        assert_eq!(here.find("cars").unwrap().spec, spec(), "read from the catalogue on the miss");
        assert_eq!(here.get("cars").unwrap().spec, spec(), "and cached");
        assert!(matches!(here.find("trucks"), Err(ProjectError::NotFound(_))));
        // While as many lookups as allowed run, a miss answers without reading.
        elsewhere.upsert(ProjectSpec { id: "vans".into(), ..spec() }).unwrap();
        let turns: Vec<_> = (0..MISS_LOOKUPS).map(|_| MissLookup::start(&here.miss_lookups).unwrap()).collect();
        assert!(matches!(here.find("vans"), Err(ProjectError::NotFound(_))), "no turn left");
        drop(turns);
        assert_eq!(here.find("vans").unwrap().spec.id, "vans");
        // A lone server's cache is the catalogue: a miss is an unknown project.
        let alone = projects(dir.path());
        elsewhere.upsert(ProjectSpec { id: "bikes".into(), ..spec() }).unwrap();
        assert!(matches!(alone.find("bikes"), Err(ProjectError::NotFound(_))));
    }

    #[test]
    fn create_is_an_idempotent_upsert_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let registry = projects(dir.path());
        let (first, created) = registry.upsert(spec()).unwrap();
        assert!(created);
        let (again, created) = registry.upsert(spec()).unwrap();
        assert!(!created);
        assert_eq!(first.created_unix_ms, again.created_unix_ms);
        drop(registry);
        let reopened = projects(dir.path());
        assert_eq!(reopened.get("cars").unwrap().spec, spec());
        assert_eq!(reopened.list().len(), 1);
    }

    #[test]
    fn changing_classes_makes_a_trained_project_untrained_again() {
        let dir = tempfile::tempdir().unwrap();
        let registry = projects(dir.path());
        registry.upsert(spec()).unwrap();
        registry.catalog.reset_active_version("cars", "v3").unwrap();
        assert_eq!(registry.reload("cars").unwrap().active_version, "v3");
        let renamed = ProjectSpec { display_name: "Cars".into(), ..spec() };
        assert_eq!(registry.upsert(renamed).unwrap().0.active_version, "v3", "a display name is no model change");
        let mut more_classes = spec();
        more_classes.classes.push("bus".into());
        assert_eq!(registry.upsert(more_classes).unwrap().0.active_version, UNTRAINED_VERSION);
    }

    #[test]
    fn new_preprocessing_makes_a_trained_project_untrained_again() {
        let dir = tempfile::tempdir().unwrap();
        let registry = projects(dir.path());
        registry.upsert(spec()).unwrap();
        registry.catalog.reset_active_version("cars", "v2").unwrap();
        registry.reload("cars").unwrap();
        let same = ProjectUpdate { preprocessing: Some(spec().preprocessing), ..Default::default() };
        assert_eq!(registry.update("cars", same).unwrap().active_version, "v2", "unchanged inputs keep the version");
        let imagenet =
            Preprocessing { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], ..spec().preprocessing };
        let update = ProjectUpdate { preprocessing: Some(imagenet.clone()), ..Default::default() };
        let project = registry.update("cars", update).unwrap();
        assert_eq!((project.active_version.as_str(), &project.spec.preprocessing), (UNTRAINED_VERSION, &imagenet));
    }

    #[test]
    fn update_validates_and_delete_removes() {
        let dir = tempfile::tempdir().unwrap();
        let registry = projects(dir.path());
        registry.upsert(spec()).unwrap();
        let update = ProjectUpdate { mc_iterations: Some(0), ..Default::default() };
        assert!(matches!(registry.update("cars", update), Err(ProjectError::Invalid(_))));
        let update = ProjectUpdate { mc_iterations: Some(5), ..Default::default() };
        assert_eq!(registry.update("cars", update).unwrap().spec.mc_iterations, 5);
        assert!(matches!(registry.update("nope", ProjectUpdate::default()), Err(ProjectError::NotFound(_))));
        let bad = Preprocessing { channels: 2, ..spec().preprocessing };
        let update = ProjectUpdate { preprocessing: Some(bad), ..Default::default() };
        assert!(matches!(registry.update("cars", update), Err(ProjectError::Invalid(_))));
        registry.delete("cars").unwrap();
        assert!(matches!(registry.get("cars"), Err(ProjectError::NotFound(_))));
        assert!(matches!(registry.delete("cars"), Err(ProjectError::NotFound(_))));
    }

    #[test]
    fn refresh_follows_changes_made_by_another_server_loading_new_versions_first() {
        let dir = tempfile::tempdir().unwrap();
        let (here, there) = (projects(dir.path()), projects(dir.path()));
        let never = |_: &Project| -> Result<(), String> { panic!("nothing to load") };
        there.upsert(spec()).unwrap();
        assert_eq!(here.refresh(&never).unwrap(), [Refreshed::Changed("cars".into())]);
        assert_eq!(here.get("cars").unwrap().spec, spec());
        assert!(here.refresh(&never).unwrap().is_empty(), "nothing changed since");

        // Another server activates v1: swapped in only once loaded.
        there.catalog.reset_active_version("cars", "v1").unwrap();
        let failing = |_: &Project| -> Result<(), String> { Err("weights unreachable".into()) };
        assert!(here.refresh(&failing).unwrap().is_empty());
        assert_eq!(here.get("cars").unwrap().active_version, UNTRAINED_VERSION, "the old version serves");
        let loaded = std::sync::Mutex::new(Vec::new());
        let load = |project: &Project| {
            loaded.lock().unwrap().push(project.active_version.clone());
            Ok(())
        };
        assert_eq!(here.refresh(&load).unwrap(), [Refreshed::Activated("cars".into(), "v1".into())]);
        assert_eq!(*loaded.lock().unwrap(), ["v1"]);
        assert_eq!(here.get("cars").unwrap().active_version, "v1");

        // An update here starts from the catalogue, not from a cache a moment behind: it does
        // not undo the other server's change.
        let mut changed = spec();
        changed.mc_iterations = 7;
        there.upsert(changed).unwrap();
        let renamed = ProjectUpdate { display_name: Some("renamed".into()), ..Default::default() };
        let updated = here.update("cars", renamed).unwrap();
        assert_eq!((updated.spec.mc_iterations, updated.spec.display_name.as_str()), (7, "renamed"));

        there.delete("cars").unwrap();
        assert_eq!(here.refresh(&never).unwrap(), [Refreshed::Removed("cars".into())]);
        // Made again under the same id while this server was not looking.
        there.upsert(spec()).unwrap();
        assert_eq!(here.refresh(&never).unwrap(), [Refreshed::Changed("cars".into())]);
        there.delete("cars").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        there.upsert(spec()).unwrap();
        assert_eq!(here.refresh(&never).unwrap(), [Refreshed::Recreated("cars".into())]);
        there.delete("cars").unwrap();
        assert_eq!(here.refresh(&never).unwrap(), [Refreshed::Removed("cars".into())]);
        assert!(matches!(here.get("cars"), Err(ProjectError::NotFound(_))));
    }
}
