//! Model weights in the object store: a version's `weights.safetensors` is published as
//! `weights/<sha256>` before the version is recorded, and fetched into the local models
//! directory, checked against its sha256, before it is first loaded. The manifest comes from the
//! catalogue, which is where a version exists; the weights object is immutable and shared by
//! every version (of any project) with the same bytes. Weights no recorded version names are
//! removed by [`ModelsDir::collect_weights`]. The local copies are a cache of bounded size:
//! after a fetch, the least recently used versions go until the copies fit the budget, except
//! every project's active version and the version its head builds on ([`ModelsDir::trim`]).

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use crate::training::record::Manifest;

use super::{
    Failure, ModelsDir,
    catalog::{Alone, Catalog, StoreError, VersionRow},
    objects::{Kind, ObjectError, Objects},
};

/// The object store behind a [`ModelsDir`], and the catalogue that says what a version is.
#[derive(Clone, Debug)]
pub(super) struct Remote {
    objects: Arc<Objects>,
    catalog: Arc<dyn Catalog>,
    publications: Arc<Mutex<Publications>>,
    /// The local copies' budget, bytes (see [`ModelsDir::trim`]).
    budget_bytes: u64,
}

/// Weights published and not yet recorded, as the garbage collector must see them.
#[derive(Debug, Default)]
struct Publications {
    /// Publications whose version is not recorded yet (or failed).
    open: usize,
    /// Publications ended so far.
    ended: u64,
}

/// A version's weights, published: while this lives, and for the collection round during which
/// it is dropped, no weights are collected (the version naming them may be recorded after the
/// collector read the versions). Drop it once the version is recorded.
#[derive(Debug)]
#[must_use = "keep it until the version is recorded"]
pub struct Published {
    publications: Option<Arc<Mutex<Publications>>>,
}

impl Drop for Published {
    fn drop(&mut self) {
        if let Some(publications) = &self.publications {
            let mut publications = publications.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            publications.open -= 1;
            publications.ended += 1;
        }
    }
}

/// Why a version's weights could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The catalogue could not record their use (see [`Catalog::declare_object_uses`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object store failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
}

/// Why a version could not be fetched from the object store.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The catalogue could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object store failed, or the weights are missing or corrupt there.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The catalogue has no such version.
    #[error("model version {version} is not in the catalogue")]
    Unknown {
        /// The version.
        version: String,
    },
    /// The recorded manifest does not name its weights.
    #[error("model version {version}: its manifest names no weights_sha256")]
    Manifest {
        /// The version.
        version: String,
    },
    /// A stale local copy could not be removed.
    #[error(transparent)]
    Remove(#[from] super::RemoveError),
    /// The local copy could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl FetchError {
    /// Whether trying again may help.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Store(error) => error.failure(),
            Self::Object(error) => error.failure(),
            Self::Io { source, .. } => Failure::of_io(source),
            Self::Unknown { .. } | Self::Manifest { .. } | Self::Remove(_) => Failure::Permanent,
        }
    }
}

impl ModelsDir {
    /// This directory as a cache of the weights in `objects`, whose versions `catalog` records.
    pub fn with_objects(mut self, objects: Arc<Objects>, catalog: Arc<dyn Catalog>) -> Self {
        self.remote = Some(Remote { objects, catalog, publications: Arc::default(), budget_bytes: u64::MAX });
        self
    }

    /// This cache holding at most about `bytes` of local copies (see [`trim`](Self::trim)).
    pub fn with_cache_budget(mut self, bytes: u64) -> Self {
        if let Some(remote) = &mut self.remote {
            remote.budget_bytes = bytes;
        }
        self
    }

    /// Removes the least recently used local copies of versions until the copies fit the
    /// budget, keeping every project's active version and the version its head builds on (a
    /// job trains from the active version), `also` (a version being loaded, with its backbone),
    /// and every copy used in the last [`RECENTLY_USED`] (another thread may be loading it, an
    /// activation for one). A version is used when it is fetched or found here; directories
    /// being written (hidden names) are never touched. Without an object store the directory
    /// is not a cache and nothing goes. Returns how many versions were removed.
    ///
    /// # Errors
    /// [`StoreError`] if the catalogue cannot say which versions are active (nothing goes).
    pub fn trim(&self, also: &[(&str, &str)]) -> Result<usize, StoreError> {
        let Some(remote) = &self.remote else { return Ok(0) };
        let mut copies = self.local_copies();
        let mut total: u64 = copies.iter().map(|copy| copy.bytes).sum();
        if total <= remote.budget_bytes {
            return Ok(0);
        }
        let mut keep = HashSet::new();
        let active = remote.catalog.projects()?;
        let active = active.iter().map(|p| (p.spec.id.as_str(), p.active_version.as_str()));
        for (project, version) in active.chain(also.iter().copied()) {
            let dir = self.version_dir(project, version);
            if let Some(local) = local_manifest(&dir).filter(|local| !local.backbone_version.is_empty()) {
                keep.insert(self.version_dir(project, &local.backbone_version));
            }
            keep.insert(dir);
        }
        copies.sort_by_key(|copy| copy.used);
        let recent = SystemTime::now().checked_sub(RECENTLY_USED).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for copy in copies {
            if total <= remote.budget_bytes {
                break;
            }
            if keep.contains(&copy.dir) || copy.used >= recent {
                continue;
            }
            match super::remove_dir_inside(self.root(), &copy.dir) {
                Ok(_) => {
                    total -= copy.bytes;
                    removed += 1;
                }
                Err(error) => tracing::warn!(%error, "cannot remove a cached model version"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, bytes = total, "cached model versions removed (--version-cache-mib)");
        }
        Ok(removed)
    }

    /// Every local copy of a version: `<models>/<project hash>/<version>`, complete ones only,
    /// and none being written (`.tmp-…`).
    fn local_copies(&self) -> Vec<LocalCopy> {
        let visible = |path: &PathBuf| path.file_name().is_some_and(|name| !name.to_string_lossy().starts_with('.'));
        let entries = |dir: &Path| {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(visible)
                .collect::<Vec<_>>()
        };
        entries(self.root())
            .into_iter()
            .filter(|project| project.is_dir())
            .flat_map(|project| entries(&project))
            .filter_map(|dir| {
                let manifest = fs::metadata(dir.join("manifest.json")).ok()?;
                let weights = fs::metadata(dir.join("weights.safetensors")).ok()?;
                Some(LocalCopy { bytes: manifest.len() + weights.len(), used: manifest.modified().ok()?, dir })
            })
            .collect()
    }

    /// Publishes a version's weights (`bytes`, whose sha256 is `sha256`) to the object store,
    /// if there is one; bytes already there are not written again. Keep what it returns until
    /// the version is recorded.
    ///
    /// # Errors
    /// [`PublishError`] if the catalogue or the store fails: the version must not be recorded
    /// then.
    pub fn publish_weights(&self, sha256: &str, bytes: &[u8]) -> Result<Published, PublishError> {
        let Some(remote) = &self.remote else { return Ok(Published { publications: None }) };
        remote.publications.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).open += 1;
        let published = Published { publications: Some(remote.publications.clone()) };
        // Declared first, for the collectors of other replicas (see `Catalog::remove_unused_object`).
        remote.catalog.declare_object_uses(Kind::Weights, &[sha256.to_owned()])?;
        remote.objects.put(Kind::Weights, sha256, bytes.to_vec())?;
        Ok(published)
    }

    /// Removes the weights objects no recorded version of any project names, written before
    /// `cutoff`; returns how many. A round during which weights were being published removes
    /// nothing (the next one does). Without an object store, nothing.
    ///
    /// # Errors
    /// [`FetchError::Store`] or [`FetchError::Object`] if the catalogue or the store cannot
    /// be read; objects that cannot be removed are logged and left.
    pub fn collect_weights(&self, cutoff: SystemTime, alone: &Alone<'_>) -> Result<u64, FetchError> {
        let grace = SystemTime::now().duration_since(cutoff).unwrap_or_default();
        let Some(remote) = &self.remote else { return Ok(0) };
        let publications = || remote.publications.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let counts = |publications: &Publications| (publications.open, publications.ended);
        let before = counts(&publications());
        let listed = remote.objects.list(Kind::Weights)?;
        let mut referenced = HashSet::new();
        for project in remote.catalog.projects()? {
            referenced
                .extend(remote.catalog.versions(&project.spec.id)?.into_iter().map(|row| row.manifest.weights_sha256));
        }
        let mut removed = 0;
        for object in listed.iter().filter(|o| !referenced.contains(&o.name) && o.modified < cutoff) {
            // Held through the removal: a publication starting now waits for it, then writes
            // its object again instead of finding it there and losing it.
            let publications = publications();
            if before.0 > 0 || counts(&publications) != before || !alone.still() {
                return Ok(removed);
            }
            let mut delete = || remote.objects.delete_unreferenced(Kind::Weights, &object.name);
            if remote.catalog.remove_unused_object(Kind::Weights, &object.name, grace, &mut delete)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The local directory of `project`'s `version`, fetched from the object store first if it
    /// is not here yet (with the version its head-only weights build on). A local copy that is
    /// not the recorded version (a project deleted and made again under the same id while this
    /// server did not see it) is replaced. While the catalogue cannot be reached, a complete
    /// local copy is used as it is: the model this server evicted from its cache is loaded
    /// again, so predictions go on through a database outage. Without an object store this is
    /// [`version_dir`](Self::version_dir). Loading checks the files' sha256.
    ///
    /// # Errors
    /// [`FetchError`]; nothing is left under the version's name then.
    pub fn fetch(&self, project: &str, version: &str) -> Result<PathBuf, FetchError> {
        let Some(remote) = &self.remote else { return Ok(self.version_dir(project, version)) };
        // Read once, for the version and the backbone it may build on.
        let rows = match remote.catalog.versions(project) {
            Ok(rows) => rows,
            Err(error) if error.failure() == Failure::Transient && self.has_local_copy(project, version) => {
                tracing::warn!(%project, %version, %error, "the catalogue is unreachable; loading the local copy");
                return Ok(self.version_dir(project, version));
            }
            Err(error) => return Err(error.into()),
        };
        let dir = self.fetch_recorded(remote, &rows, project, version)?;
        if let Err(error) = self.trim(&[(project, version)]) {
            tracing::warn!(%error, "cannot trim the cached model versions");
        }
        Ok(dir)
    }

    /// Whether `project`'s `version` is here whole: its manifest and weights, and those of the
    /// version its head-only weights build on.
    fn has_local_copy(&self, project: &str, version: &str) -> bool {
        let dir = self.version_dir(project, version);
        let Some(manifest) = local_manifest(&dir) else { return false };
        let backbone = manifest.backbone_version.as_str();
        dir.join("weights.safetensors").is_file()
            && (backbone.is_empty() || backbone == version || self.has_local_copy(project, backbone))
    }

    /// [`fetch`](Self::fetch) of `version`, one of `rows` (the project's recorded versions).
    fn fetch_recorded(
        &self,
        remote: &Remote,
        rows: &[VersionRow],
        project: &str,
        version: &str,
    ) -> Result<PathBuf, FetchError> {
        let dir = self.version_dir(project, version);
        let row = rows.iter().find(|row| row.version == version);
        let row = row.ok_or_else(|| FetchError::Unknown { version: version.to_owned() })?;
        let manifest = &row.manifest;
        let backbone = manifest.backbone_version.as_str();
        if !backbone.is_empty() && backbone != version {
            self.fetch_recorded(remote, rows, project, backbone)?;
        }
        let sha256 = &manifest.weights_sha256;
        if sha256.len() != 64 {
            return Err(FetchError::Manifest { version: version.to_owned() });
        }
        match local_manifest(&dir) {
            Some(local) if local.weights_sha256 == *sha256 => {
                mark_used(&dir);
                return Ok(dir);
            }
            // Another version's copy (the project was made again), or one whose manifest
            // does not read.
            _ if dir.exists() => {
                tracing::warn!(%project, %version, "the cached copy is not the recorded version; fetching it again");
                super::remove_dir_inside(self.root(), &dir)?;
            }
            _ => {}
        }
        let weights = remote.objects.get(Kind::Weights, sha256)?;
        let manifest = serde_json::to_vec_pretty(manifest)
            .map_err(|error| FetchError::Io { path: dir.join("manifest.json"), source: io::Error::other(error) })?;
        write_version(&self.project_dir(project), &dir, &weights, &manifest)?;
        tracing::info!(%project, %version, bytes = weights.len(), "model version fetched from the object store");
        Ok(dir)
    }
}

/// How long a used local copy is safe from [`ModelsDir::trim`]: longer than a load takes.
const RECENTLY_USED: std::time::Duration = std::time::Duration::from_secs(600);

/// A local copy of a version, as [`ModelsDir::trim`] weighs it.
struct LocalCopy {
    dir: PathBuf,
    bytes: u64,
    /// When it was last used: its manifest's modification time.
    used: SystemTime,
}

/// Records that the local copy in `dir` was used now (see [`ModelsDir::trim`]).
fn mark_used(dir: &Path) {
    let marked =
        File::options().write(true).open(dir.join("manifest.json")).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(error) = marked {
        tracing::debug!(dir = %dir.display(), %error, "cannot mark a cached version as used");
    }
}

/// The manifest of the local copy in `dir`, if there is one and it reads.
fn local_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()
}

/// Writes a fetched version into `dir` (in `project_dir`) crash-safely: aside, fsync'ed, then
/// renamed into place. Another thread that fetched it meanwhile wins; its copy is the same.
fn write_version(project_dir: &Path, dir: &Path, weights: &[u8], manifest: &[u8]) -> Result<(), FetchError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    fs::create_dir_all(project_dir).map_err(io(project_dir))?;
    let temporary = project_dir.join(format!(".tmp-fetch-{:016x}", fastrand::u64(..)));
    fs::create_dir(&temporary).map_err(io(&temporary))?;
    let written = (|| {
        for (name, bytes) in [("weights.safetensors", weights), ("manifest.json", manifest)] {
            let path = temporary.join(name);
            fs::write(&path, bytes).and_then(|()| File::open(&path)?.sync_all()).map_err(io(&path))?;
        }
        File::open(&temporary).and_then(|d| d.sync_all()).map_err(io(&temporary))?;
        match fs::rename(&temporary, dir) {
            Ok(()) => Ok(()),
            Err(_) if dir.join("manifest.json").is_file() => Ok(()),
            Err(source) => Err(FetchError::Io { path: dir.to_owned(), source }),
        }
    })();
    let _ = fs::remove_dir_all(&temporary);
    written?;
    File::open(project_dir).and_then(|d| d.sync_all()).map_err(io(project_dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{projects::spec::tests::spec, store::sqlite::SqliteCatalog};

    /// A models dir on `objects` whose catalogue has project "cars" with v1 (full) and v2 (a
    /// head on v1's backbone), published and recorded as the trainer does.
    fn published(objects: &Arc<Objects>, root: &Path) -> (ModelsDir, Arc<dyn Catalog>) {
        let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open(&root.join("alps.db")).unwrap());
        catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        let models = ModelsDir::new(root.join("models")).with_objects(objects.clone(), catalog.clone());
        for (number, weights, backbone) in [(1, b"full weights".as_slice(), "v1"), (2, b"head".as_slice(), "v1")] {
            let sha256 = crate::digest::sha256_hex(weights);
            let manifest = Manifest {
                weights_sha256: sha256.clone(),
                backbone_version: backbone.into(),
                ..Manifest::example("cars", number)
            };
            let _published = models.publish_weights(&sha256, weights).unwrap();
            catalog.record_version(&manifest, 0).unwrap();
        }
        (models, catalog)
    }

    #[test]
    fn a_version_is_fetched_with_its_backbone_into_a_new_directory() {
        let objects = Arc::new(Objects::in_memory());
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_, catalog) = published(&objects, first.path());
        // Another node: same catalogue and store, an empty models dir.
        let models = ModelsDir::new(second.path().join("models")).with_objects(objects.clone(), catalog);
        let dir = models.fetch("cars", "v2").unwrap();
        assert_eq!(fs::read(dir.join("weights.safetensors")).unwrap(), b"head");
        let backbone = models.version_dir("cars", "v1");
        assert_eq!(fs::read(backbone.join("weights.safetensors")).unwrap(), b"full weights", "fetched first");
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["backbone_version"], "v1");
        crate::models::verify_version(&dir).unwrap();
        // Fetched once: a local copy of the recorded version is used as it is (loading checks
        // its sha256).
        fs::write(dir.join("weights.safetensors"), b"changed").unwrap();
        assert_eq!(fs::read(models.fetch("cars", "v2").unwrap().join("weights.safetensors")).unwrap(), b"changed");
        // A copy of another version under the same name (the project was made again) is not.
        let stale = serde_json::json!({"weights_sha256": crate::digest::sha256_hex(b"old project")});
        fs::write(dir.join("manifest.json"), stale.to_string()).unwrap();
        assert_eq!(fs::read(models.fetch("cars", "v2").unwrap().join("weights.safetensors")).unwrap(), b"head");
        assert!(matches!(models.fetch("cars", "v9"), Err(FetchError::Unknown { .. })));
        assert!(
            fs::read_dir(models.project_dir("cars")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp"))
        );
    }

    #[test]
    fn the_cache_keeps_its_budget_but_never_drops_an_active_version_or_its_backbone() {
        let objects = Arc::new(Objects::in_memory());
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (publisher, catalog) = published(&objects, first.path());
        for (number, weights) in [(3, b"third weights".as_slice()), (4, b"fourth weights".as_slice())] {
            let sha256 = crate::digest::sha256_hex(weights);
            let manifest = Manifest {
                weights_sha256: sha256.clone(),
                backbone_version: format!("v{number}"),
                ..Manifest::example("cars", number)
            };
            let _published = publisher.publish_weights(&sha256, weights).unwrap();
            catalog.record_version(&manifest, 0).unwrap();
        }
        // A budget nothing fits in: only what must stay stays.
        let models = ModelsDir::new(second.path().join("models"))
            .with_objects(objects.clone(), catalog.clone())
            .with_cache_budget(1);
        let here = |version: &str| models.version_dir("cars", version).join("manifest.json").is_file();
        let cached = || ["v1", "v2", "v3", "v4"].into_iter().filter(|v| here(v)).collect::<Vec<_>>();
        // Last used `hours` ago.
        let age = |version: &str, hours: u64| {
            let manifest = File::options().write(true).open(models.version_dir("cars", version).join("manifest.json"));
            let at = SystemTime::now() - std::time::Duration::from_secs(hours * 3600);
            manifest.and_then(|file| file.set_modified(at)).unwrap();
        };
        models.fetch("cars", "v2").unwrap();
        assert_eq!(cached(), ["v1", "v2"], "the version being loaded and its backbone");
        age("v1", 3);
        age("v2", 2);
        // A version being written is never touched.
        let writing = models.project_dir("cars").join(".tmp-v9");
        fs::create_dir(&writing).unwrap();
        fs::write(writing.join("manifest.json"), "{}").unwrap();
        fs::write(writing.join("weights.safetensors"), "partial").unwrap();
        models.fetch("cars", "v3").unwrap();
        assert_eq!(cached(), ["v3"], "the least recently used went");
        assert!(writing.join("weights.safetensors").is_file());
        catalog.reset_active_version("cars", "v2").unwrap();
        models.fetch("cars", "v2").unwrap();
        for version in ["v1", "v2", "v3"] {
            age(version, 2);
        }
        models.fetch("cars", "v4").unwrap();
        assert_eq!(cached(), ["v1", "v2", "v4"], "the active version and its backbone stay");
        // A copy used in the last minutes stays too (another thread may be loading it).
        models.fetch("cars", "v3").unwrap();
        assert_eq!(cached(), ["v1", "v2", "v3", "v4"]);
        // Within the budget, nothing goes.
        for version in ["v1", "v2", "v3", "v4"] {
            age(version, 2);
        }
        let roomy =
            ModelsDir::new(second.path().join("models")).with_objects(objects, catalog).with_cache_budget(1 << 20);
        roomy.fetch("cars", "v3").unwrap();
        assert_eq!(cached(), ["v1", "v2", "v3", "v4"]);
        assert_eq!(ModelsDir::new(second.path().join("models")).trim(&[]).unwrap(), 0, "without a store: not a cache");
    }

    #[test]
    fn corrupt_or_missing_weights_are_not_fetched() {
        let objects = Arc::new(Objects::in_memory());
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_, catalog) = published(&objects, first.path());
        let models = ModelsDir::new(second.path().join("models")).with_objects(objects.clone(), catalog);
        let v1 = crate::digest::sha256_hex(b"full weights");
        objects.delete(Kind::Weights, &v1).unwrap();
        objects.put(Kind::Weights, &v1, b"tampered".to_vec()).unwrap();
        let error = models.fetch("cars", "v2").unwrap_err();
        assert!(matches!(error, FetchError::Object(ObjectError::Corrupt { .. })), "{error}");
        assert_eq!(error.failure(), Failure::Permanent);
        objects.delete(Kind::Weights, &v1).unwrap();
        assert!(matches!(models.fetch("cars", "v1"), Err(FetchError::Object(ObjectError::Missing { .. }))));
        assert!(!models.version_dir("cars", "v1").exists() && !models.version_dir("cars", "v2").exists());
    }

    #[test]
    fn weights_no_version_names_are_collected_but_not_while_one_is_being_published() {
        let objects = Arc::new(Objects::in_memory());
        let root = tempfile::tempdir().unwrap();
        let (models, catalog) = published(&objects, root.path());
        let orphan = crate::digest::sha256_hex(b"orphan");
        objects.put(Kind::Weights, &orphan, b"orphan".to_vec()).unwrap();
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        assert_eq!(models.collect_weights(hour_ago, &Alone::always()).unwrap(), 0, "within the grace period");
        // Being published (its version not recorded yet): nothing is collected.
        let pending = models.publish_weights(&crate::digest::sha256_hex(b"new"), b"new").unwrap();
        assert_eq!(models.collect_weights(SystemTime::now(), &Alone::always()).unwrap(), 0);
        drop(pending);
        assert_eq!(
            models.collect_weights(SystemTime::now(), &Alone::always()).unwrap(),
            2,
            "the orphan and the unrecorded one"
        );
        let left: HashSet<String> = objects.list(Kind::Weights).unwrap().into_iter().map(|o| o.name).collect();
        let recorded = [b"full weights".as_slice(), b"head"].map(crate::digest::sha256_hex);
        assert_eq!(left, HashSet::from(recorded));
        // A deleted project's versions no longer keep their weights.
        catalog.delete_project("cars").unwrap();
        assert_eq!(models.collect_weights(SystemTime::now(), &Alone::always()).unwrap(), 2);
        // Without an object store there is nothing to collect.
        assert_eq!(
            ModelsDir::new(root.path().join("other")).collect_weights(SystemTime::now(), &Alone::always()).unwrap(),
            0
        );
    }
}
