//! Loaded models, least recently used first out when their bytes exceed the budget. An evicted
//! model is loaded again from its spec the next time it is needed (a head-only version on the
//! backbone of a model still cached, if one holds it). A backbone shared by several models
//! counts once against the budget: it is in memory once.

use std::{collections::HashMap, sync::Arc};

use super::worker::Backbone;
use crate::{
    memory::MemoryBudget,
    models::{McModel, SharedVariables},
};

/// Identifies one loadable model: a project, its active version and its spec's fingerprint (a
/// changed spec is a different model).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelKey {
    /// Project id.
    pub project: String,
    /// Model version, e.g. `v3` or `untrained`.
    pub version: String,
    /// Hash of the project's spec.
    pub fingerprint: u64,
}

struct Entry {
    model: McModel,
    last_used: u64,
    /// The model's [`McModel::storages`], read once: a loaded model's tensors do not move.
    storages: Vec<(usize, usize)>,
}

impl Entry {
    fn new(model: McModel, last_used: u64) -> Self {
        let storages = model.storages();
        Self { model, last_used, storages }
    }
}

/// The cache of one worker. Not shared: it lives on the worker thread with its models.
pub struct ModelCache {
    entries: HashMap<ModelKey, Entry>,
    budget: Arc<MemoryBudget>,
    clock: u64,
}

impl ModelCache {
    /// An empty cache holding at most what `budget` leaves to inference
    /// ([`MemoryBudget::for_inference`], bytes of model tensors; always at least one model,
    /// however large).
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self { entries: HashMap::new(), budget, clock: 0 }
    }

    /// The model for `key`, loading it with `load` when absent; `load` sees the cache, so
    /// that a head-only version can build on a cached model's backbone ([`Self::shared`]).
    /// Call [`trim`](Self::trim) afterwards to get back within the budget.
    ///
    /// # Errors
    /// Whatever `load` returns.
    pub fn get_or_load<E>(
        &mut self,
        key: &ModelKey,
        load: impl FnOnce(&Self) -> Result<McModel, E>,
    ) -> Result<&McModel, E> {
        self.clock += 1;
        if !self.entries.contains_key(key) {
            let model = load(self)?;
            self.entries.insert(key.clone(), Entry::new(model, 0));
        }
        let entry = self.entries.get_mut(key).expect("present or inserted above");
        entry.last_used = self.clock;
        Ok(&entry.model)
    }

    /// Whether the model for `key` is loaded (without marking it used).
    pub fn contains(&self, key: &ModelKey) -> bool {
        self.entries.contains_key(key)
    }

    /// The variables of a model of `backbone`'s project and fingerprint whose
    /// [`McModel::frozen`] matches (without marking it used).
    pub fn shared(&self, backbone: &Backbone) -> Option<SharedVariables> {
        self.entries
            .iter()
            .find(|(key, entry)| {
                key.project == backbone.project
                    && key.fingerprint == backbone.fingerprint
                    && entry.model.frozen() == Some(backbone.frozen.as_str())
            })
            .map(|(_, entry)| entry.model.shared_variables())
    }

    /// Puts `model` in for `key`, replacing what was there, as the most recently used model.
    /// Call [`trim`](Self::trim) afterwards to get back within the budget.
    pub fn insert(&mut self, key: ModelKey, model: McModel) {
        self.clock += 1;
        self.entries.insert(key, Entry::new(model, self.clock));
    }

    /// Evicts least recently used models until the loaded bytes fit what the budget leaves to
    /// inference now; the most recently used model always stays.
    pub fn trim(&mut self) {
        while self.entries.len() > 1 && self.bytes() > self.budget.for_inference() {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone());
            if let Some(key) = oldest {
                tracing::info!(project = %key.project, version = %key.version, "evicting model from the cache");
                self.entries.remove(&key);
            }
        }
    }

    /// Drops every model of `project` (deleted or changed).
    pub fn forget(&mut self, project: &str) {
        self.entries.retain(|key, _| key.project != project);
    }

    /// Bytes of the loaded models' tensors ([`McModel::storages`]), each data pointer counted
    /// once however many models share it (a backbone under head-only versions). An evicted
    /// model's shared tensors stay counted while another cached model holds them.
    pub fn bytes(&self) -> usize {
        let mut tensors: HashMap<usize, usize> = HashMap::new();
        for &(pointer, bytes) in self.entries.values().flat_map(|e| &e.storages) {
            // The larger wins: an empty tensor may have a null or reused pointer.
            let counted = tensors.entry(pointer).or_default();
            *counted = (*counted).max(bytes);
        }
        tensors.values().sum()
    }

    /// Number of loaded models.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{models::files::ModelFiles, projects::spec::tests::spec};

    #[test]
    fn a_backbone_is_shared_only_by_a_model_of_the_same_project_spec_and_weights() {
        let model = McModel::load(&spec(), &ModelFiles::none(), tch::Device::Cpu).unwrap();
        let mut cache = ModelCache::new(MemoryBudget::new(usize::MAX));
        cache.insert(ModelKey { project: "cars".into(), version: "v1".into(), fingerprint: 7 }, model);
        let wanted = |project: &str, fingerprint, frozen: &str| Backbone {
            project: project.into(),
            fingerprint,
            frozen: frozen.into(),
        };
        let shared = cache.shared(&wanted("cars", 7, "initial")).expect("the cached model's backbone");
        assert!(shared.contains_key("backbone.conv1.weight") && shared.contains_key("head.fc.weight"));
        for other in [wanted("trucks", 7, "initial"), wanted("cars", 8, "initial"), wanted("cars", 7, "sha256:00")] {
            assert!(cache.shared(&other).is_none(), "{} {} {}", other.project, other.fingerprint, other.frozen);
        }
        // A model loaded on demand (evicted, needed again) sees the cache: it can build on the
        // cached model's backbone; a cached one is not loaded again.
        let v2 = ModelKey { project: "cars".into(), version: "v2".into(), fingerprint: 7 };
        let loaded = cache.get_or_load(&v2, |cache| {
            cache.shared(&wanted("cars", 7, "initial")).ok_or("no backbone to share")?;
            McModel::load(&spec(), &ModelFiles::none(), tch::Device::Cpu).map_err(|_| "load")
        });
        assert!(loaded.is_ok(), "{:?}", loaded.err());
        assert!(cache.get_or_load(&v2, |_| Err("loaded again")).is_ok());
    }

    #[test]
    fn a_shared_backbone_counts_once_against_the_budget() {
        let key = |version: &str| ModelKey { project: "cars".into(), version: version.into(), fingerprint: 7 };
        let base = McModel::load(&spec(), &ModelFiles::none(), tch::Device::Cpu).unwrap();
        let on_base = McModel::sharing(&spec(), tch::Device::Cpu, &base.shared_variables()).unwrap();
        let one = base.bytes();
        let base_storage: Vec<usize> = base.storages().into_iter().map(|(pointer, _)| pointer).collect();
        let own = on_base.storages().into_iter().filter(|(pointer, _)| !base_storage.contains(pointer));
        let last_layer: usize = own.map(|(_, bytes)| bytes).sum();
        assert!(last_layer > 0 && last_layer < one / 2, "only the last layer is its own: {last_layer} of {one} bytes");

        // A head-only model on v1's backbone fits a budget that two separate copies would not.
        let mut cache = ModelCache::new(MemoryBudget::new(one + last_layer));
        cache.insert(key("v1"), base);
        cache.insert(key("v2"), on_base);
        cache.trim();
        assert_eq!((cache.len(), cache.bytes()), (2, one + last_layer));

        // A separate copy shares nothing. Evicting v1 frees only its last layer (v2 still holds
        // the backbone), so v2 goes too.
        cache.insert(key("v3"), McModel::load(&spec(), &ModelFiles::none(), tch::Device::Cpu).unwrap());
        cache.trim();
        assert_eq!((cache.len(), cache.contains(&key("v3")), cache.bytes()), (1, true, one));
    }

    #[test]
    fn what_training_holds_of_the_budget_the_cache_gives_up_at_its_next_trim() {
        let model = || McModel::load(&spec(), &ModelFiles::none(), tch::Device::Cpu).unwrap();
        let one = model().bytes();
        let budget = MemoryBudget::new(2 * one);
        let mut cache = ModelCache::new(budget.clone());
        let key = |project: &str| ModelKey { project: project.into(), version: "v1".into(), fingerprint: 7 };
        cache.insert(key("a"), model());
        cache.insert(key("b"), model());
        cache.trim();
        assert_eq!(cache.len(), 2, "both fit");
        let job = budget.hold(one);
        cache.trim();
        assert_eq!((cache.len(), cache.contains(&key("b"))), (1, true), "the least recently used went");
        drop(job);
        cache.insert(key("a"), model());
        cache.trim();
        assert_eq!(cache.len(), 2, "room again once the job ended");
    }
}
