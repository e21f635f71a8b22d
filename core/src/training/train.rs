//! One training run: labelled examples in, a trained model and its validation metrics out.
//!
//! Head-only (default): the backbone embeds every example once (cached by sample hash), then
//! the MC-Dropout head's last linear layer is optimised on the embeddings (the rest of the head
//! runs, dropout on, but keeps its weights), which is cheap enough to retrain after
//! every annotation. Full fine-tuning optimises backbone and head on the decoded inputs, with
//! BatchNorm kept in eval mode. A stratified validation split, chosen deterministically from
//! the examples' ids, scores each epoch and the final model.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use tch::{Device, Kind, Reduction, Tensor, nn, nn::OptimizerConfig};

use super::record::{Mode, Optimizer, Phase, Progress, TrainingParams, ValidationMetrics};
use crate::{
    digest::sha256_hex,
    engine::SampleInput,
    models::{
        McModel, ModelError, preprocess,
        random::{self, Generator},
    },
    projects::ProjectSpec,
    store::{
        blobs::{BlobError, BlobStore},
        catalog::ExampleRow,
    },
};

/// Examples per backbone pass when embedding.
const EMBED_BATCH: usize = 32;
/// MC iterations when scoring the validation split.
const VALIDATION_PASSES: i64 = 10;
/// Fewest examples in every class for a validation split to be held out.
const MIN_PER_CLASS_FOR_VALIDATION: usize = 5;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Not enough to train on.
    #[error("{0}")]
    Precondition(String),
    /// Cancelled by a request.
    #[error("cancelled")]
    Cancelled,
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A sample's bytes are missing or corrupt.
    #[error("example {external_id}: {source}")]
    Blob {
        /// The example.
        external_id: String,
        /// Why.
        source: BlobError,
    },
    /// A stored sample no longer decodes for this project's preprocessing.
    #[error("example {external_id}: {message}")]
    Sample {
        /// The example.
        external_id: String,
        /// Why.
        message: String,
    },
}

impl TrainError {
    /// The message recorded in the job and shown to clients: libtorch failures are logged under
    /// a request id instead of carrying their backtrace.
    pub fn client_message(&self) -> String {
        match self {
            Self::Model(error) => error.client_message(),
            Self::Torch(error) => crate::errors::logged("training", error),
            // Paths, store names and request URLs stay in the log.
            Self::Blob {
                source: crate::store::blobs::BlobError::Io { .. } | crate::store::blobs::BlobError::Object(_),
                ..
            } => crate::errors::logged("reading a stored example", self),
            other => other.to_string(),
        }
    }
}

/// What a run produced.
pub struct Trained {
    /// The trained model (weights in its variables).
    pub model: McModel,
    /// Validation metrics, when a split was held out.
    pub metrics: Option<ValidationMetrics>,
    /// Examples used.
    pub example_count: u64,
}

/// Examples with their class index.
type Labelled<'a> = Vec<(&'a ExampleRow, usize)>;

/// Backbone embeddings `[D]` of labelled examples, by (backbone identity, sample sha256), kept
/// between head-only jobs, which then embed only the examples added since. One backbone per
/// project: embeddings of a backbone that full fine-tuning replaced are dropped when the new
/// one's are made. Their bytes are held of the models' memory budget (VGG16: 16 KiB per
/// example), so that the inference cache gives them room, and they take at most half of it:
/// beyond, the projects trained least recently lose theirs (recomputed by their next job).
#[derive(Debug)]
pub struct EmbeddingCache {
    entries: HashMap<(String, String), Tensor>,
    /// The backbone each project's entries are of, and when the project last used them (a
    /// count of uses, the highest the latest).
    backbones: HashMap<String, (String, u64)>,
    uses: u64,
    /// The entries' bytes, held of the budget.
    held: crate::memory::Held,
    /// The most bytes the entries may take.
    limit: usize,
}

impl EmbeddingCache {
    /// An empty cache whose bytes count against `memory`.
    pub fn new(memory: &std::sync::Arc<crate::memory::MemoryBudget>) -> Self {
        Self {
            entries: HashMap::new(),
            backbones: HashMap::new(),
            uses: 0,
            held: memory.hold(0),
            limit: memory.total_bytes() / 2,
        }
    }

    /// The embeddings of samples `sha256s` by `backbone` of `project`, each if cached; the
    /// project's embeddings count as used now.
    fn get(&mut self, project: &str, backbone: &str, sha256s: &[&str]) -> Vec<Option<Tensor>> {
        self.uses += 1;
        if let Some((_, used)) = self.backbones.get_mut(project) {
            *used = self.uses;
        }
        sha256s
            .iter()
            .map(|sha256| self.entries.get(&(backbone.to_owned(), (*sha256).to_owned())).map(Tensor::shallow_clone))
            .collect()
    }

    /// Caches `embeddings` (`[D]` each, by sample sha256) made by `backbone` of `project`,
    /// first dropping the project's embeddings by another backbone; then, over the limit, the
    /// embeddings of the projects used least recently.
    fn insert(&mut self, project: &str, backbone: &str, embeddings: impl IntoIterator<Item = (String, Tensor)>) {
        if self.backbones.get(project).is_some_and(|(cached, _)| cached != backbone) {
            self.forget(project);
        }
        self.uses += 1;
        self.backbones.insert(project.to_owned(), (backbone.to_owned(), self.uses));
        let mut bytes = self.held.bytes();
        for (sha256, tensor) in embeddings {
            bytes += crate::models::tensor_bytes(&tensor);
            if let Some(replaced) = self.entries.insert((backbone.to_owned(), sha256), tensor) {
                bytes -= crate::models::tensor_bytes(&replaced);
            }
        }
        self.held.resize(bytes);
        while self.held.bytes() > self.limit {
            let others = self.backbones.iter().filter(|(other, _)| *other != project);
            let Some(oldest) = others.min_by_key(|(_, (_, used))| *used).map(|(other, _)| other.clone()) else { break };
            self.forget(&oldest);
        }
    }

    /// Drops every embedding of `project` (deleted, or its backbone replaced).
    pub fn forget(&mut self, project: &str) {
        let Some((backbone, _)) = self.backbones.remove(project) else { return };
        let mut freed = 0;
        self.entries.retain(|(id, _), tensor| {
            let other = *id != backbone;
            if !other {
                freed += crate::models::tensor_bytes(tensor);
            }
            other
        });
        self.held.resize(self.held.bytes() - freed);
    }

    /// Embeddings cached.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Everything a run needs.
pub struct Run<'a> {
    /// The project's spec.
    pub spec: &'a ProjectSpec,
    /// Examples (only those of the project's classes are used).
    pub examples: &'a [ExampleRow],
    /// Where their bytes are.
    pub blobs: &'a BlobStore,
    /// Settings.
    pub params: &'a TrainingParams,
    /// Starting point: the loaded active model.
    pub model: McModel,
    /// Identity of the model's backbone weights, for the embedding cache.
    pub backbone_id: String,
    /// Shared embedding cache.
    pub cache: &'a std::sync::Mutex<EmbeddingCache>,
    /// The models' memory budget: the run holds its share while it trains.
    pub memory: &'a std::sync::Arc<crate::memory::MemoryBudget>,
    /// Set to stop at the next step.
    pub cancel: &'a AtomicBool,
}

impl Run<'_> {
    /// Trains; `report` receives progress at every phase change and epoch. Every random draw
    /// (shuffles, dropout) comes from a generator seeded with the job's seed and owned by this
    /// run, so the same seed and examples give the same weights whatever else the process runs.
    ///
    /// # Errors
    /// [`TrainError`].
    pub fn execute(self, report: &mut dyn FnMut(Progress)) -> Result<Trained, TrainError> {
        random::with_generator(Generator::new(self.params.seed), || self.train(report))
    }

    fn train(mut self, report: &mut dyn FnMut(Progress)) -> Result<Trained, TrainError> {
        let started = Instant::now();
        let mut progress = Progress { phase: Phase::Loading, ..Progress::default() };
        report(progress);
        let labelled: Vec<(&ExampleRow, usize)> = self
            .examples
            .iter()
            .filter_map(|e| self.spec.classes.iter().position(|c| *c == e.class_name).map(|label| (e, label)))
            .collect();
        check_trainable(&labelled, self.spec)?;
        let (train, validation) = split(&labelled, self.spec.classes.len(), self.params.validation_fraction);
        let device = self.model.device();
        if self.model.variables().is_none() {
            return Err(TrainError::Precondition(
                "TorchScript models cannot be trained by ALPS; export a new version instead".into(),
            ));
        }

        progress.phase = Phase::Embedding;
        report(progress);
        let train_labels =
            Tensor::from_slice(&train.iter().map(|(_, l)| *l as i64).collect::<Vec<_>>()).to_device(device);
        let class_weights = self.params.class_weighting.then(|| class_weights(&train, self.spec.classes.len(), device));
        let (train_x, validation_x) = match self.params.mode {
            Mode::HeadOnly => (self.embed(&train)?, self.embed(&validation)?),
            Mode::Full => (self.inputs(&train)?, self.inputs(&validation)?),
        };

        let mut optimizer = optimizer(self.params, &mut self.model)?;
        // Held of the budget while the job trains (the inference cache keeps less meanwhile):
        // the model, a gradient and the optimiser's two moments (Adam's; SGD keeps fewer) per
        // trained value, and the inputs.
        let inputs = crate::models::tensor_bytes(&train_x) + crate::models::tensor_bytes(&validation_x);
        let _held = self.memory.hold(self.model.bytes() + 3 * self.model.trainable_bytes() + inputs);
        let n = train.len() as i64;
        let batch = i64::from(self.params.batch_size.max(1));
        let epochs = self.params.epochs.max(1);
        progress.phase = Phase::Training;
        for epoch in 1..=epochs {
            let order =
                Tensor::f_from_slice(&random::with_current(|g| g.permutation(n as usize)))?.f_to_device(device)?;
            let (mut total, mut batches) = (0.0, 0);
            for start in (0..n).step_by(batch as usize) {
                self.check_cancelled()?;
                let index = order.narrow(0, start, batch.min(n - start));
                let x = train_x.index_select(0, &index);
                let features = match self.params.mode {
                    Mode::HeadOnly => x,
                    Mode::Full => self.model.features(&x)?,
                };
                let logits = self.model.head_logits(&features)?;
                let loss = logits.cross_entropy_loss::<&Tensor>(
                    &train_labels.index_select(0, &index),
                    class_weights.as_ref(),
                    Reduction::Mean,
                    -100,
                    0.0,
                );
                optimizer.backward_step(&loss);
                total += loss.double_value(&[]);
                batches += 1;
                progress.step += 1;
            }
            progress.epoch = epoch;
            progress.loss = (total / f64::from(batches.max(1))) as f32;
            progress.validation_accuracy =
                self.predict(&validation_x)?.map(|predicted| accuracy(&validation, &predicted));
            progress.percent = 100.0 * epoch as f32 / epochs as f32;
            let per_epoch = started.elapsed() / epoch;
            progress.eta_ms = Some((per_epoch * (epochs - epoch)).as_millis() as u64);
            report(progress);
        }

        progress.phase = Phase::Validating;
        report(progress);
        let metrics = self.predict(&validation_x)?.map(|predicted| {
            let truth: Vec<usize> = validation.iter().map(|(_, l)| *l).collect();
            ValidationMetrics::from_predictions(&self.spec.classes, &truth, &predicted)
        });
        // The job's last word on accuracy is the version's: each MC estimate draws its own
        // dropout masks, so the last epoch's may differ from the final one.
        if let Some(metrics) = &metrics {
            progress.validation_accuracy = Some(metrics.accuracy);
            report(progress);
        }
        Ok(Trained { model: self.model, metrics, example_count: labelled.len() as u64 })
    }

    /// Decoded model inputs `[n, C, H, W]`.
    fn inputs(&self, examples: &[(&ExampleRow, usize)]) -> Result<Tensor, TrainError> {
        let p = &self.spec.preprocessing;
        // Read together: from an object store, many requests are in flight at once.
        let sha256s: Vec<&str> = examples.iter().map(|(example, _)| example.sha256.as_str()).collect();
        let mut values = Vec::new();
        for ((example, _), bytes) in examples.iter().zip(self.blobs.get_all(&sha256s)) {
            self.check_cancelled()?;
            let bytes =
                bytes.map_err(|source| TrainError::Blob { external_id: example.external_id.clone(), source })?;
            values.extend(self.decode(example, bytes)?);
        }
        let shape = [examples.len() as i64, i64::from(p.channels), i64::from(p.height), i64::from(p.width)];
        Ok(Tensor::f_from_slice(&values)?.f_view(shape)?.f_to_device(self.model.device())?)
    }

    /// `example`'s model input from its sample `bytes`.
    fn decode(&self, example: &ExampleRow, bytes: Vec<u8>) -> Result<Vec<f32>, TrainError> {
        let sample_error = |e: preprocess::SampleError| TrainError::Sample {
            external_id: example.external_id.clone(),
            message: e.to_string(),
        };
        match super::examples::stored_sample(example, bytes) {
            SampleInput::Tensor { shape, values } => {
                preprocess::tensor(&shape, values, &self.spec.preprocessing).map_err(sample_error)
            }
            SampleInput::Image(bytes) => {
                preprocess::image(&bytes, &self.spec.preprocessing, preprocess::ImageLimits::default())
                    .map_err(sample_error)
            }
            SampleInput::Missing => Err(sample_error(preprocess::SampleError::Empty)),
        }
    }

    /// Backbone embeddings `[n, D]`, from the cache where possible.
    fn embed(&self, examples: &[(&ExampleRow, usize)]) -> Result<Tensor, TrainError> {
        let _no_grad = tch::no_grad_guard();
        let mut rows: Vec<Option<Tensor>> = {
            let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let sha256s: Vec<&str> = examples.iter().map(|(e, _)| e.sha256.as_str()).collect();
            cache.get(&self.spec.id, &self.backbone_id, &sha256s)
        };
        let missing: Vec<usize> = (0..examples.len()).filter(|&i| rows[i].is_none()).collect();
        for chunk in missing.chunks(EMBED_BATCH) {
            self.check_cancelled()?;
            let batch: Vec<(&ExampleRow, usize)> = chunk.iter().map(|&i| examples[i]).collect();
            let features = self.model.features(&self.inputs(&batch)?)?;
            let mut made = Vec::with_capacity(chunk.len());
            for (row, &i) in chunk.iter().enumerate() {
                let feature = features.get(row as i64);
                made.push((examples[i].0.sha256.clone(), feature.shallow_clone()));
                rows[i] = Some(feature);
            }
            super::versions::fault_pause_briefly(
                "embedding-cache",
                "fault injection: paused before caching embeddings",
            );
            let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Under the lock a deletion takes after cancelling the job: either it forgets
            // these, or this job sees the cancellation and caches none.
            self.check_cancelled()?;
            cache.insert(&self.spec.id, &self.backbone_id, made);
        }
        let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
        if rows.is_empty() {
            return Ok(Tensor::zeros([0], (Kind::Float, self.model.device())));
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }

    /// [`TrainError::Cancelled`] once the job has been asked to stop (also checked between
    /// training batches).
    fn check_cancelled(&self) -> Result<(), TrainError> {
        if self.cancel.load(Ordering::Relaxed) { Err(TrainError::Cancelled) } else { Ok(()) }
    }

    /// Predicted classes (argmax of the MC mean) of `x`, or `None` without a validation split.
    fn predict(&self, x: &Tensor) -> Result<Option<Vec<usize>>, TrainError> {
        if x.size()[0] == 0 {
            return Ok(None);
        }
        let _no_grad = tch::no_grad_guard();
        let features = match self.params.mode {
            Mode::HeadOnly => x.shallow_clone(),
            Mode::Full => self.model.features(x)?,
        };
        let mean =
            self.model.mc_probabilities(&features, VALIDATION_PASSES)?.mean_dim([2].as_slice(), false, Kind::Float);
        let predicted = Vec::<i64>::try_from(mean.argmax(1, false).to_device(Device::Cpu))?;
        Ok(Some(predicted.into_iter().map(|p| p as usize).collect()))
    }
}

fn check_trainable(labelled: &[(&ExampleRow, usize)], spec: &ProjectSpec) -> Result<(), TrainError> {
    if labelled.is_empty() {
        return Err(TrainError::Precondition(format!(
            "project {} has no labelled examples of its classes; add some with AddExamples",
            spec.id
        )));
    }
    let mut present: Vec<usize> = labelled.iter().map(|(_, l)| *l).collect();
    present.sort_unstable();
    present.dedup();
    if present.len() < 2 {
        return Err(TrainError::Precondition(format!(
            "training needs labelled examples of at least 2 classes; project {} has only {:?}",
            spec.id, spec.classes[present[0]]
        )));
    }
    Ok(())
}

/// Stratified split, deterministic by external id: in every class (when all classes have at
/// least [`MIN_PER_CLASS_FOR_VALIDATION`] examples) the examples whose id hashes lowest are held
/// out, `ceil(fraction × n)` of them.
fn split<'a>(labelled: &[(&'a ExampleRow, usize)], classes: usize, fraction: f64) -> (Labelled<'a>, Labelled<'a>) {
    let mut by_class: Vec<Vec<(&ExampleRow, usize)>> = vec![Vec::new(); classes];
    for &(example, label) in labelled {
        by_class[label].push((example, label));
    }
    let enough = by_class.iter().filter(|c| !c.is_empty()).all(|c| c.len() >= MIN_PER_CLASS_FOR_VALIDATION);
    if !enough || fraction <= 0.0 {
        return (labelled.to_vec(), Vec::new());
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for mut members in by_class {
        members.sort_by_cached_key(|(e, _)| sha256_hex(e.external_id.as_bytes()));
        let held = ((members.len() as f64 * fraction).ceil() as usize).min(members.len().saturating_sub(1));
        validation.extend_from_slice(&members[..held]);
        train.extend_from_slice(&members[held..]);
    }
    (train, validation)
}

/// Inverse-frequency class weights, normalised to mean 1 over the classes present.
fn class_weights(train: &[(&ExampleRow, usize)], classes: usize, device: Device) -> Tensor {
    let mut counts = vec![0f64; classes];
    for (_, label) in train {
        counts[*label] += 1.0;
    }
    let present = counts.iter().filter(|&&c| c > 0.0).count() as f64;
    let total: f64 = counts.iter().sum();
    let weights: Vec<f32> =
        counts.iter().map(|&c| if c > 0.0 { (total / (present * c)) as f32 } else { 0.0 }).collect();
    Tensor::from_slice(&weights).to_device(device)
}

/// The job's optimiser over `model`'s variables: all of them for full fine-tuning, the head's
/// last layer alone for head-only ([`McModel::train_last_layer_only`]; the optimisers skip a
/// variable without a gradient, weight decay and momentum included).
fn optimizer(params: &TrainingParams, model: &mut McModel) -> Result<nn::Optimizer, TrainError> {
    model.train_last_layer_only(params.mode == Mode::HeadOnly);
    let variables = model.variables().ok_or_else(|| TrainError::Precondition("a TorchScript model".into()))?;
    let (lr, wd) = (params.learning_rate, params.weight_decay);
    Ok(match params.optimizer {
        Optimizer::Adam => nn::Adam { wd, ..Default::default() }.build(variables, lr),
        Optimizer::AdamW => nn::AdamW { wd, ..Default::default() }.build(variables, lr),
        Optimizer::Sgd => nn::Sgd { momentum: 0.9, wd, ..Default::default() }.build(variables, lr),
    }?)
}

fn accuracy(validation: &[(&ExampleRow, usize)], predicted: &[usize]) -> f32 {
    let correct = validation.iter().zip(predicted).filter(|((_, label), p)| label == *p).count();
    correct as f32 / validation.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        models::files::ModelFiles,
        projects::{Architecture, spec::tests::spec},
    };

    #[test]
    fn the_embedding_cache_keeps_one_backbone_per_project_half_the_budget_and_holds_its_bytes() {
        // A budget of 8 KiB: the embeddings may take 4 KiB, four of 256 f32.
        let memory = crate::memory::MemoryBudget::new(8 * 1024);
        let mut cache = EmbeddingCache::new(&memory);
        let made = |shas: &[&str]| -> Vec<(String, Tensor)> {
            shas.iter().map(|sha| ((*sha).to_owned(), Tensor::ones([256], (Kind::Float, Device::Cpu)))).collect()
        };
        let cached = |cache: &mut EmbeddingCache, project: &str, backbone: &str, sha: &str| {
            cache.get(project, backbone, &[sha])[0].is_some()
        };
        cache.insert("cars", "cars:initial", made(&["a", "b"]));
        cache.insert("cars-2", "cars-2:initial", made(&["a"]));
        assert_eq!((cache.len(), memory.training_bytes()), (3, 3 * 1024), "256 f32 each");
        assert!(cached(&mut cache, "cars", "cars:initial", "a") && !cached(&mut cache, "cars", "cars:initial", "c"));
        // Full fine-tuning made a new backbone: the old one's embeddings go, not another
        // project's.
        cache.insert("cars", "cars:v3", made(&["a"]));
        assert!(!cached(&mut cache, "cars", "cars:initial", "a") && cached(&mut cache, "cars", "cars:v3", "a"));
        assert!(cached(&mut cache, "cars-2", "cars-2:initial", "a"));
        assert_eq!(memory.training_bytes(), 2 * 1024);
        // Over half the budget: the project used least recently ("cars", read before
        // "cars-2" just above) loses its embeddings, not the one caching.
        cache.insert("boats", "boats:initial", made(&["x", "y", "z"]));
        assert!(!cached(&mut cache, "cars", "cars:v3", "a") && cached(&mut cache, "cars-2", "cars-2:initial", "a"));
        assert_eq!((cache.len(), memory.training_bytes()), (4, 4 * 1024));
        // One project larger than the limit keeps what it made (its job needs them).
        cache.insert("boats", "boats:initial", made(&["1", "2", "3", "4", "5"]));
        assert_eq!((cache.len(), memory.training_bytes()), (8, 8 * 1024), "cars-2 went, boats stays whole");
        cache.forget("boats");
        assert_eq!((cache.len(), memory.training_bytes()), (0, 0));
        cache.insert("cars", "cars:v3", made(&["a"]));
        drop(cache);
        assert_eq!(memory.training_bytes(), 0, "released with the cache");
    }

    #[test]
    fn a_head_only_job_changes_the_last_layer_alone_whatever_the_optimiser_and_a_full_job_everything() {
        let mut spec = spec();
        spec.model.architecture = Architecture::Vgg16;
        (spec.preprocessing.width, spec.preprocessing.height) = (32, 32);
        let mut model = McModel::load(&spec, &ModelFiles::none(), Device::Cpu).unwrap();
        let snapshot = |model: &McModel| -> Vec<(String, Tensor)> {
            let mut variables: Vec<(String, Tensor)> =
                model.variables().unwrap().variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
            variables.sort_by(|a, b| a.0.cmp(&b.0));
            variables
        };
        let x = {
            let _generator = crate::models::random::libtorch_generator();
            Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu))
        };
        let labels = Tensor::from_slice(&[0i64, 1]);
        // A full step first: its gradients are left on every variable.
        for (mode, optimizer_kind) in [
            (Mode::Full, Optimizer::Sgd),
            (Mode::HeadOnly, Optimizer::Adam),
            (Mode::HeadOnly, Optimizer::AdamW),
            (Mode::HeadOnly, Optimizer::Sgd),
            (Mode::Full, Optimizer::Adam),
        ] {
            let mut params = TrainingParams::defaults(mode, 1);
            (params.optimizer, params.weight_decay, params.learning_rate) = (optimizer_kind, 0.1, 1e-2);
            let before = snapshot(&model);
            let mut optimizer = optimizer(&params, &mut model).unwrap();
            for _ in 0..2 {
                let logits = model.head_logits(&model.features(&x).unwrap()).unwrap();
                optimizer.backward_step(&logits.cross_entropy_for_logits(&labels));
            }
            for ((name, old), (_, new)) in before.iter().zip(snapshot(&model)) {
                // BatchNorm-free VGG16: every variable is a parameter.
                let expected = mode == Mode::Full || name.starts_with("classifier.6.");
                assert_eq!(!new.equal(old), expected, "{mode:?} {optimizer_kind:?}: {name}");
            }
        }
    }
}
