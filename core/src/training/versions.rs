//! Model versions on disk: `<data-dir>/models/<sha256 of project id>/v<n>/` (see
//! [`ModelsDir`]) holds `weights.safetensors` and
//! `manifest.json`. A version is written into a temporary directory, every file and the
//! directory fsync'ed, then renamed into place and only then recorded in the database; the
//! trainer activates it once it is loaded for serving. A crash at any moment leaves the
//! previous active version intact and active. With an object store, the weights are published
//! there before the rename ([`ModelsDir::publish_weights`]).

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use super::record::Manifest;
use crate::{
    digest::sha256_hex,
    models::{McModel, ModelError},
    store::{
        ModelsDir,
        catalog::{Catalog, StoreError},
    },
};

/// Test-only fault injection: with `ALPS_FAULT_PAUSE_AT=checkpoint-write`, the server stops
/// (sleeps) after writing a version's files and before renaming them into place, so a test can
/// `kill -9` it in the middle of the checkpoint write. With `embedding-cache` a job waits 5 s
/// before caching each chunk of embeddings it made, and with `version-write` before it writes
/// its version, so that a test can delete its project meanwhile.
pub const FAULT_PAUSE_VARIABLE: &str = "ALPS_FAULT_PAUSE_AT";

/// Whether fault injection pauses at `point` ([`FAULT_PAUSE_VARIABLE`]).
pub fn fault_pause_at(point: &str) -> bool {
    std::env::var(FAULT_PAUSE_VARIABLE).is_ok_and(|at| at == point)
}

/// Waits 5 s if fault injection pauses at `point`, first logging `message` (which a test waits
/// for).
pub fn fault_pause_briefly(point: &str, message: &str) {
    if fault_pause_at(point) {
        tracing::warn!("{message}");
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// Why a version could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// File system failure.
    #[error("writing model version to {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The weights could not be saved.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// See [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The weights could not be published to the object store.
    #[error(transparent)]
    Publish(#[from] crate::store::weights::PublishError),
    /// The manifest could not be encoded.
    #[error("encoding the manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// Removes temporary version directories left by a crash (`.tmp-*`); they were never recorded.
///
/// # Errors
/// The I/O error if the models directory cannot be read.
pub fn remove_partial_versions(models_dir: &ModelsDir) -> io::Result<usize> {
    let mut removed = 0;
    let Ok(projects) = fs::read_dir(models_dir.root()) else { return Ok(0) };
    for project in projects {
        let project = project?.path();
        if !project.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&project)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp-")) {
                fs::remove_dir_all(&path)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Moves the version directories of data dirs written before directories were hashed
/// (`models/<project id>/`) to their hashed place ([`ModelsDir::project_dir`]). Ids outside the
/// identifier grammar never had their directory trusted and are left where they are, logged; so
/// is a legacy directory that is some project's hashed directory (an id of 64 hex digits could
/// otherwise claim another project's versions).
pub fn move_legacy_dirs(models_dir: &ModelsDir, project_ids: &[String]) {
    let hashed: std::collections::HashSet<PathBuf> = project_ids.iter().map(|id| models_dir.project_dir(id)).collect();
    for id in project_ids {
        let Some(legacy) = models_dir.legacy_project_dir(id) else {
            tracing::warn!(project = ?id, "project id outside the identifier grammar: it can no longer be addressed");
            continue;
        };
        if hashed.contains(&legacy) {
            tracing::warn!(project = %id, "legacy directory is another project's hashed directory: left in place");
            continue;
        }
        let target = models_dir.project_dir(id);
        if !fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_dir()) || target.exists() {
            continue;
        }
        match fs::rename(&legacy, &target) {
            Ok(()) => tracing::info!(project = %id, "moved model versions to the hashed directory layout"),
            Err(error) => tracing::warn!(project = %id, %error, "cannot move model versions to the hashed layout"),
        }
    }
}

/// What a head-only version on `parent` stores: the head's last layer, which is all a head-only
/// job trains, unless the parent stored more of a head that is more than its last layer (older
/// VGG16 versions): the backbone does not hold that part, so the new version stores it too.
pub fn head_only_scope(parent: Option<&Manifest>, head_is_last_layer: bool) -> &'static str {
    match parent {
        Some(parent) if parent.weights == crate::models::HEAD_WEIGHTS && !head_is_last_layer => {
            crate::models::HEAD_WEIGHTS
        }
        _ => crate::models::LAST_LAYER_WEIGHTS,
    }
}

fn sync(path: &Path) -> Result<(), VersionError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|source| VersionError::Io { path: path.to_owned(), source })
}

/// Writes `model` as version `manifest.version` of its project, crash-safely, then records it
/// (inactive: activating is the caller's, once the version is loaded for serving): all its
/// variables, or only the head's when `manifest.weights` says `head`. Fills `weights_sha256`
/// and `weights_bytes` in the manifest.
///
/// # Errors
/// [`VersionError`]; nothing is recorded then.
pub fn write(
    models_dir: &ModelsDir,
    catalog: &dyn Catalog,
    model: &McModel,
    mut manifest: Manifest,
) -> Result<Manifest, VersionError> {
    let project_dir = models_dir.project_dir(&manifest.project_id);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| VersionError::Io { path, source }
    };
    fs::create_dir_all(&project_dir).map_err(io(&project_dir))?;
    let temporary = project_dir.join(format!(".tmp-{}", manifest.version));
    if temporary.exists() {
        fs::remove_dir_all(&temporary).map_err(io(&temporary))?;
    }
    fs::create_dir(&temporary).map_err(io(&temporary))?;
    let weights = temporary.join("weights.safetensors");
    if manifest.weights == crate::models::FULL_WEIGHTS {
        model.save(&weights)?;
    } else {
        model.save_head(&weights, &manifest.weights)?;
    }
    sync(&weights)?;
    let bytes = fs::read(&weights).map_err(io(&weights))?;
    manifest.weights_sha256 = sha256_hex(&bytes);
    manifest.weights_bytes = bytes.len() as u64;
    // Published before the version exists anywhere else: a recorded version's weights are
    // always in the object store.
    let _published = models_dir.publish_weights(&manifest.weights_sha256, &bytes)?;
    let manifest_path = temporary.join("manifest.json");
    fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?).map_err(io(&manifest_path))?;
    sync(&manifest_path)?;
    sync(&temporary)?;
    if fault_pause_at("checkpoint-write") {
        tracing::warn!(dir = %temporary.display(), "fault injection: paused in the checkpoint write");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let final_dir = models_dir.version_dir(&manifest.project_id, &manifest.version);
    // The number is new in the catalogue, so a directory of that name is a leftover: of a
    // project deleted and made again while this server did not see it, or of a crash before
    // the recording. It never holds a recorded version.
    if final_dir.exists() {
        crate::store::remove_dir_inside(models_dir.root(), &final_dir)
            .map_err(|e| VersionError::Io { path: final_dir.clone(), source: io::Error::other(e.to_string()) })?;
    }
    fs::rename(&temporary, &final_dir).map_err(io(&final_dir))?;
    sync(&project_dir)?;
    catalog.record_version(&manifest, manifest.created_unix_ms)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_only_version_stores_the_last_layer_unless_its_parent_stored_a_larger_head() {
        use crate::models::{FULL_WEIGHTS, HEAD_WEIGHTS, LAST_LAYER_WEIGHTS};
        let parent = |weights: &str| -> Manifest {
            let mut manifest: Manifest = serde_json::from_value(serde_json::json!({
                "project_id": "p", "version": "v1", "number": 1, "parent_version": "", "job_id": "j",
                "classes": ["a", "b"], "params": crate::training::record::TrainingParams::defaults(
                    crate::training::record::Mode::HeadOnly, 1),
                "example_count": 2, "metrics": null, "weights_sha256": "", "weights_bytes": 0, "created_unix_ms": 0
            }))
            .unwrap();
            manifest.weights = weights.into();
            manifest
        };
        assert_eq!(head_only_scope(None, false), LAST_LAYER_WEIGHTS, "on the initial weights");
        for (weights, head_is_last_layer, expected) in [
            (FULL_WEIGHTS, false, LAST_LAYER_WEIGHTS),
            (LAST_LAYER_WEIGHTS, false, LAST_LAYER_WEIGHTS),
            (HEAD_WEIGHTS, true, LAST_LAYER_WEIGHTS),
            (HEAD_WEIGHTS, false, HEAD_WEIGHTS),
        ] {
            let scope = head_only_scope(Some(&parent(weights)), head_is_last_layer);
            assert_eq!(scope, expected, "{weights} {head_is_last_layer}");
        }
    }

    #[test]
    fn legacy_directories_move_to_their_hashed_place_and_odd_ids_stay_put() {
        let root = tempfile::tempdir().unwrap();
        let models = ModelsDir::new(root.path().join("models"));
        fs::create_dir_all(models.root().join("digits/v1")).unwrap();
        fs::write(models.root().join("digits/v1/weights.safetensors"), b"w").unwrap();
        fs::create_dir_all(models.root().join("keep")).unwrap();
        move_legacy_dirs(&models, &["digits".into(), "..".into(), "absent".into()]);
        assert_eq!(fs::read(models.version_dir("digits", "v1").join("weights.safetensors")).unwrap(), b"w");
        assert!(!models.root().join("digits").exists());
        assert!(models.root().join("keep").is_dir(), "directories of no project are not touched");
        assert!(root.path().exists());

        // A project named like another's hashed directory does not take that project's versions.
        let hashed_name = models.project_dir("digits").file_name().unwrap().to_string_lossy().into_owned();
        move_legacy_dirs(&models, &["digits".into(), hashed_name.clone()]);
        assert_eq!(fs::read(models.version_dir("digits", "v1").join("weights.safetensors")).unwrap(), b"w");
        assert!(!models.project_dir(&hashed_name).exists());
    }
}
