//! An immutable snapshot of the loaded heuristics, resolved by name and optional version.

use std::{collections::BTreeMap, sync::Arc};

use alps_heuristic_abi::Direction;

use super::library::LoadedHeuristic;

/// "available: a, b" or, with nothing loaded, a hint at the plugin directory.
fn loaded(available: &[String]) -> String {
    match available {
        [] => "no heuristics are loaded (the plugin directory holds no loadable plugin; see ListHeuristics and the server log)"
            .into(),
        names => format!("available: {}", names.join(", ")),
    }
}

/// Why a heuristic reference could not be resolved. Messages list what is available.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// No heuristic has this name.
    #[error("unknown heuristic {name:?}; {}", loaded(available))]
    UnknownName {
        /// The name asked for.
        name: String,
        /// Names that are loaded.
        available: Vec<String>,
    },
    /// The name exists but not in this version.
    #[error("heuristic {name:?} has no version {version:?}; loaded versions: {}", available.join(", "))]
    UnknownVersion {
        /// The name asked for.
        name: String,
        /// The version asked for.
        version: String,
        /// Versions that are loaded.
        available: Vec<String>,
    },
}

/// The heuristics of every loaded plugin. Cheap to share; replaced as a whole on reload.
#[derive(Debug, Default)]
pub struct Registry {
    /// By name; versions newest first.
    by_name: BTreeMap<String, Vec<Arc<LoadedHeuristic>>>,
}

impl Registry {
    /// Builds a registry. The caller guarantees that `(name, version)` pairs are unique.
    pub fn new(heuristics: impl IntoIterator<Item = Arc<LoadedHeuristic>>) -> Self {
        let mut by_name: BTreeMap<String, Vec<Arc<LoadedHeuristic>>> = BTreeMap::new();
        for heuristic in heuristics {
            by_name.entry(heuristic.name.clone()).or_default().push(heuristic);
        }
        by_name.values_mut().for_each(|versions| versions.sort_by(|a, b| b.version.cmp(&a.version)));
        Self { by_name }
    }

    /// The heuristic `name` at `version`, or its newest version when `version` is empty.
    ///
    /// # Errors
    /// [`ResolveError`] listing what is loaded.
    pub fn resolve(&self, name: &str, version: &str) -> Result<Arc<LoadedHeuristic>, ResolveError> {
        let versions = self.by_name.get(name).ok_or_else(|| ResolveError::UnknownName {
            name: name.to_owned(),
            available: self.by_name.keys().cloned().collect(),
        })?;
        if version.is_empty() {
            return Ok(versions[0].clone());
        }
        versions.iter().find(|h| h.version.to_string() == version).cloned().ok_or_else(|| {
            ResolveError::UnknownVersion {
                name: name.to_owned(),
                version: version.to_owned(),
                available: versions.iter().map(|h| h.version.to_string()).collect(),
            }
        })
    }

    /// Every heuristic, ordered by name, then version newest first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<LoadedHeuristic>> {
        self.by_name.values().flatten()
    }

    /// Whether no heuristic is loaded.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Sample indices ordered most informative first under `direction`; ties keep the lower index
/// first (stable), so the order is deterministic.
pub fn most_informative_first(scores: &[f32], direction: Direction) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (a_score, b_score) = (scores[a as usize], scores[b as usize]);
        match direction {
            Direction::HigherIsMoreInformative => b_score.total_cmp(&a_score),
            Direction::LowerIsMoreInformative => a_score.total_cmp(&b_score),
        }
    });
    order
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_registry_says_so_instead_of_an_empty_list() {
        let error = ResolveError::UnknownName { name: "bald".into(), available: Vec::new() };
        assert!(error.to_string().contains("no heuristics are loaded"), "{error}");
        let error = ResolveError::UnknownName { name: "x".into(), available: vec!["bald".into(), "entropy".into()] };
        assert_eq!(error.to_string(), "unknown heuristic \"x\"; available: bald, entropy");
    }

    use super::*;

    #[test]
    fn ordering_follows_the_direction_and_breaks_ties_by_index() {
        let scores = [0.5, 0.9, 0.5, 0.1];
        assert_eq!(most_informative_first(&scores, Direction::HigherIsMoreInformative), [1, 0, 2, 3]);
        assert_eq!(most_informative_first(&scores, Direction::LowerIsMoreInformative), [3, 0, 2, 1]);
    }

    #[test]
    fn unknown_names_list_the_available_ones() {
        let error = Registry::default().resolve("bald", "").unwrap_err();
        assert_eq!(error, ResolveError::UnknownName { name: "bald".into(), available: vec![] });
    }
}
