//! Models: built-in architectures and user TorchScript modules, loaded with their weights, and
//! the MC-Dropout forward pass. Also image preprocessing.
//!
//! A model is a deterministic backbone and a stochastic head. MC-Dropout runs the backbone once
//! per sample and the head K times on the repeated features, `[K·B, D]` in one call; the head's
//! dropout masks come from the running job's own generator ([`random`]). A trained version loads
//! whole, or as a head on the backbone of the version it names ([`McModel::load_version`]); a
//! head-only version whose backbone another loaded model already holds shares that model's
//! tensors instead of reading them again.

mod architectures;
pub mod files;
pub mod preprocess;
pub mod pretrained;
pub mod pth;
pub mod random;
mod weights;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor, nn, nn::ModuleT};

use self::{
    architectures::{Fill, Shape},
    files::{ModelFileError, ModelFiles},
};
use crate::projects::ProjectSpec;

/// Why a model could not be built or loaded. Messages name the file (as the client gave it) or
/// tensor at fault; see [`ModelError::client_message`] for what a client may see.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file named by the project cannot be used (outside the model root, missing, too
    /// large, not a regular file).
    #[error(transparent)]
    File(#[from] ModelFileError),
    /// The weights file does not fit the architecture.
    #[error("weights {path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Which tensor and why.
        message: String,
    },
    /// The TorchScript file cannot be loaded or lacks what is needed.
    #[error("TorchScript {path}: {message}")]
    TorchScript {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A trained version's files are missing or fail their checksum.
    #[error(
        "model version {} is unusable: {message}; activate another version to roll back",
        .dir.file_name().unwrap_or_default().to_string_lossy()
    )]
    Version {
        /// The version directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A trained version's weights could not be fetched from the object store (the cause is
    /// logged where it happened).
    #[error(
        "model version {version} cannot be fetched from the object store{}",
        if *.transient { " now; retry with backoff" } else { ": its weights are missing or corrupt there; activate another version to roll back" }
    )]
    Fetch {
        /// The version.
        version: String,
        /// Whether trying again may help (the store was unreachable or failing).
        transient: bool,
    },
    /// Published pretrained weights are not available (not fetched, unusable).
    #[error(transparent)]
    Pretrained(#[from] pretrained::PretrainedError),
    /// A libtorch failure while running the model (e.g. out of memory, shape error).
    #[error("model failed: {0}")]
    Torch(#[from] tch::TchError),
}

enum Net {
    Builtin(architectures::Network),
    /// A TorchScript module with `features` and `head` methods.
    ScriptSplit(tch::CModule),
    /// A TorchScript module with only `forward`, run on the batch replicated K times.
    ScriptForward(tch::CModule),
}

/// A loaded model on one device. Not `Sync` (libtorch modules): owned by one engine worker.
pub struct McModel {
    /// The variables of built-in networks (empty for TorchScript).
    vs: nn::VarStore,
    net: Net,
    device: Device,
    classes: i64,
    /// Bytes of parameters and buffers.
    bytes: usize,
    /// What every variable outside the head's last layer holds (see [`McModel::frozen`]).
    frozen: Option<String>,
}

/// Bytes of `tensor`'s elements.
pub fn tensor_bytes(tensor: &Tensor) -> usize {
    tensor.numel() * tensor.kind().elt_size_in_bytes()
}

/// Variables of a loaded model by name, sharing its storage: what a head-only version on the
/// same backbone is built from ([`McModel::load_version`]).
pub type SharedVariables = std::collections::HashMap<String, Tensor>;

/// [`McModel::frozen`] of a model whose variables outside the last layer are the spec's
/// initial weights.
const INITIAL_WEIGHTS: &str = "initial";

impl std::fmt::Debug for McModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McModel").field("device", &self.device).field("classes", &self.classes).finish_non_exhaustive()
    }
}

impl ModelError {
    /// The message a client may see: libtorch failures (backtraces, install paths, addresses)
    /// are logged under a request id and replaced by one line carrying that id; every other
    /// variant is already written for people.
    pub fn client_message(&self) -> String {
        match self {
            Self::Torch(error) => crate::errors::logged("running the model", error),
            other => other.to_string(),
        }
    }
}

/// Manifest `weights` of a version whose file holds every variable (also manifests without it).
pub const FULL_WEIGHTS: &str = "full";
/// Manifest `weights` of a head-only version written before `last_layer` (or on a parent of
/// that kind): its file holds every variable of the head.
pub const HEAD_WEIGHTS: &str = "head";
/// Manifest `weights` of a head-only version: its file holds the head's last linear layer alone
/// (for VGG16 `classifier.6`, 160 KiB at 10 classes); every other variable is its backbone's.
pub const LAST_LAYER_WEIGHTS: &str = "last_layer";

/// A version's manifest and its verified `weights.safetensors` bytes.
fn read_version(dir: &Path) -> Result<(serde_json::Value, Vec<u8>), ModelError> {
    let error = |message: String| ModelError::Version { dir: dir.to_owned(), message };
    let manifest =
        std::fs::read_to_string(dir.join("manifest.json")).map_err(|e| error(format!("manifest.json: {e}")))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest).map_err(|e| error(format!("manifest.json: {e}")))?;
    let expected = manifest["weights_sha256"].as_str().unwrap_or_default().to_owned();
    let bytes =
        std::fs::read(dir.join("weights.safetensors")).map_err(|e| error(format!("weights.safetensors: {e}")))?;
    let actual = crate::digest::sha256_hex(&bytes);
    if actual != expected {
        return Err(error(format!("weights.safetensors is corrupt: sha256 {actual}, manifest says {expected}")));
    }
    Ok((manifest, bytes))
}

/// Checks that the version in `dir` is whole: its manifest reads and its weights hash to the
/// manifest's `weights_sha256`.
///
/// # Errors
/// [`ModelError::Version`] naming the file at fault.
pub fn verify_version(dir: &Path) -> Result<(), ModelError> {
    read_version(dir).map(drop)
}

/// The directory of `backbone`, the version the head-only version in `dir` (with `manifest`)
/// builds on, once its manifest says it is the one the head was trained on: a full version
/// whose `weights_sha256` is the head's `backbone_sha256` and whose weights file has the size
/// it records. Its checksum is left to whoever reads the file.
fn check_backbone(dir: &Path, manifest: &serde_json::Value, backbone: &str) -> Result<PathBuf, ModelError> {
    let error = |message: String| ModelError::Version { dir: dir.to_owned(), message };
    let backbone_dir = sibling_version(dir, backbone)
        .ok_or_else(|| error(format!("backbone_version {backbone:?} is not a version name")))?;
    let backbone_manifest = std::fs::read(backbone_dir.join("manifest.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .ok_or_else(|| error(format!("its backbone, version {backbone}, has no readable manifest.json")))?;
    let (expected, actual) = (&manifest["backbone_sha256"], &backbone_manifest["weights_sha256"]);
    if backbone_manifest["weights"].as_str().unwrap_or(FULL_WEIGHTS) != FULL_WEIGHTS || expected != actual {
        return Err(error(format!(
            "its backbone, version {backbone}, is not the one it was trained on (sha256 {actual}, manifest says {expected})"
        )));
    }
    let size = std::fs::metadata(backbone_dir.join("weights.safetensors")).map(|m| m.len()).ok();
    let recorded = backbone_manifest["weights_bytes"].as_u64();
    if size.is_none() || recorded.is_some_and(|bytes| Some(bytes) != size) {
        return Err(error(format!("its backbone, version {backbone}: weights.safetensors is missing or truncated")));
    }
    Ok(backbone_dir)
}

/// The directory of version `name` (`v<number>`) next to the version directory `dir`; `None`
/// for anything else (a manifest never names a path).
fn sibling_version(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    name.strip_prefix('v')?.parse::<u32>().ok()?;
    Some(dir.parent()?.join(name))
}

fn shape(spec: &ProjectSpec) -> Shape {
    let p = &spec.preprocessing;
    Shape {
        input: (i64::from(p.channels), i64::from(p.height), i64::from(p.width)),
        classes: spec.classes.len() as i64,
        head_dropout: f64::from(spec.model.head_dropout),
    }
}

/// [`McModel::frozen`] of the weights of a full version whose file has checksum `sha256`.
fn weights_identity(sha256: &serde_json::Value) -> String {
    format!("sha256:{}", sha256.as_str().unwrap_or_default())
}

fn starts_with_any(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| name.starts_with(prefix))
}

/// The seed of a spec's initial random parameters: the first 8 bytes of its model fingerprint.
fn initial_seed(spec: &ProjectSpec) -> i64 {
    let fingerprint = spec.model_fingerprint();
    i64::from_str_radix(&fingerprint[..15], 16).unwrap_or_default()
}

impl McModel {
    /// Builds the project's model on `device` and loads its initial weights, reading model files
    /// through `files` (confined to the model root, bounded). Parameters no file provides (a
    /// new head, a model without weights) are drawn from libtorch's generator seeded with the
    /// spec's fingerprint, so the untrained version is the same model after a cache eviction
    /// or a restart, and a seeded cold-start ranking is reproducible. The generator is
    /// process-wide: its lock ([`random::libtorch_generator`]) is held from the seeding to the
    /// end of the build, so no other thread's draw lands in between.
    ///
    /// # Errors
    /// [`ModelError`] if the weights or TorchScript file is unusable.
    pub fn load(spec: &ProjectSpec, files: &ModelFiles, device: Device) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        let _generator = random::libtorch_generator();
        tch::manual_seed(initial_seed(spec));
        let shape = shape(spec);
        let mut vs = nn::VarStore::new(device);
        let net = match architectures::build(&vs.root(), spec.model.architecture, shape, Fill::Random) {
            Some(network) => {
                if let Some(path) = &spec.model.weights_path {
                    let bytes = files.read(path)?;
                    weights::load(&mut vs, path, &bytes, network.head_prefixes)?;
                }
                if let Some(published) = spec.model.pretrained {
                    let architecture = spec.model.architecture;
                    let cache = files.weights_cache().ok_or_else(|| pretrained::PretrainedError::NotCached {
                        file: pretrained::published(architecture, published)
                            .map_or_else(|| format!("{published:?}"), |f| f.file_name.to_owned()),
                    })?;
                    let (file, tensors) = cache.load(architecture, published)?;
                    weights::load_tensors(&mut vs, Path::new(file), &tensors, network.head_prefixes)?;
                }
                Net::Builtin(network)
            }
            None => load_torchscript(spec, files, device, shape.input)?,
        };
        // Back to an unpredictable state: later unseeded requests must not replay the draws
        // that follow this spec's seed.
        tch::manual_seed(fastrand::i64(..));
        let frozen = matches!(net, Net::Builtin(_)).then(|| INITIAL_WEIGHTS.to_owned());
        Ok(Self::from_parts(vs, net, device, shape.classes, frozen))
    }

    fn from_parts(vs: nn::VarStore, net: Net, device: Device, classes: i64, frozen: Option<String>) -> Self {
        let mut model = Self { vs, net, device, classes, bytes: 0, frozen };
        model.bytes = model.storages().iter().map(|(_, bytes)| bytes).sum();
        model
    }

    /// `spec`'s built-in network with every parameter zero, for a caller that replaces them all
    /// next (no random draws: for VGG16 they would cost about half a second).
    fn zeros(spec: &ProjectSpec, device: Device) -> Result<Self, ModelError> {
        let shape = shape(spec);
        let vs = nn::VarStore::new(device);
        let network =
            architectures::build(&vs.root(), spec.model.architecture, shape, Fill::Zeros).ok_or_else(|| {
                ModelError::TorchScript {
                    path: spec.model.torchscript_path.clone().unwrap_or_default(),
                    message: "weights live in the TorchScript file".into(),
                }
            })?;
        Ok(Self::from_parts(vs, Net::Builtin(network), device, shape.classes, None))
    }

    /// What every variable outside the head's last linear layer holds: `initial` (the spec's
    /// initial weights) or `sha256:<hex>` (those of the fully fine-tuned version whose weights
    /// file has that checksum); `None` when no such statement holds (TorchScript, a version
    /// whose head file changed more than the last layer). Two models of one spec with the
    /// same `Some` value differ in the last layer at most.
    pub fn frozen(&self) -> Option<&str> {
        self.frozen.as_deref()
    }

    /// The variables, sharing their storage (no copy), for [`load_version`](Self::load_version)
    /// of a head-only version on the same backbone. Only read by whoever receives them.
    pub fn shared_variables(&self) -> SharedVariables {
        self.vs.variables()
    }

    /// Whether the head is its last linear layer alone (every architecture but VGG16).
    pub fn head_is_last_layer(&self) -> bool {
        match &self.net {
            Net::Builtin(network) => self.vs.variables().keys().all(|name| {
                !starts_with_any(name, network.head_prefixes) || starts_with_any(name, network.last_layer_prefixes)
            }),
            _ => false,
        }
    }

    /// Device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of [`storages`](Self::storages). A model sharing another's backbone counts it
    /// too: the cache counts shared tensors once.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of the variables training changes (see [`train_last_layer_only`](Self::train_last_layer_only));
    /// 0 for TorchScript, which ALPS does not train.
    pub fn trainable_bytes(&self) -> usize {
        self.vs.variables().values().filter(|t| t.requires_grad()).map(tensor_bytes).sum()
    }

    /// Each tensor's data as `(data pointer, bytes)`: the parameters and buffers of a built-in
    /// network, the parameters of a TorchScript module (its buffers, such as BatchNorm
    /// statistics, are not exposed through tch and are left out). A model built on another's
    /// backbone ([`load_version`](Self::load_version) with shared variables) reports the
    /// backbone's pointers, so a sum over distinct pointers counts shared tensors once.
    pub fn storages(&self) -> Vec<(usize, usize)> {
        let tensors: Vec<Tensor> = match &self.net {
            Net::Builtin(_) => self.vs.variables().into_values().collect(),
            Net::ScriptSplit(module) | Net::ScriptForward(module) => {
                // Listing fails only for a broken module; it then counts 0 bytes.
                module.named_parameters().map(|named| named.into_iter().map(|(_, t)| t).collect()).unwrap_or_default()
            }
        };
        tensors.iter().map(|t| (t.data_ptr() as usize, tensor_bytes(t))).collect()
    }

    /// Backbone features `[B, D]` of inputs `[B, C, H, W]` (no dropout, BatchNorm on running
    /// statistics). For forward-only TorchScript, the input itself.
    ///
    /// # Errors
    /// [`ModelError::Torch`] on a libtorch failure.
    pub fn features(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        Ok(match &self.net {
            Net::Builtin(network) => network.backbone.forward_t(input, false),
            Net::ScriptSplit(module) => module.method_ts("features", &[input])?,
            Net::ScriptForward(_) => input.shallow_clone(),
        })
    }

    /// MC-Dropout probabilities `[B, C, K]` from backbone features `[B, D]`: the head runs once
    /// on the features repeated K times (`[K·B, D]`), softmax per pass.
    ///
    /// # Errors
    /// [`ModelError::Torch`] on a libtorch failure.
    pub fn mc_probabilities(&self, features: &Tensor, k: i64) -> Result<Tensor, ModelError> {
        let batch = features.size()[0];
        // [B, ...] -> [B·K, ...], sample-major, so row b·K + t is pass t of sample b.
        let repeated = features.f_repeat_interleave_self_int(k, 0, None)?;
        let logits = self.head_logits(&repeated)?;
        let probabilities = logits.f_softmax(-1, Kind::Float)?;
        // [B·K, C] -> [B, K, C] -> [B, C, K] (iteration axis last, as in Baal).
        Ok(probabilities.f_view([batch, k, self.classes])?.f_permute([0, 2, 1])?.f_contiguous()?)
    }
}

impl McModel {
    /// Loads a trained model version from `dir` (`manifest.json` + `weights.safetensors`): the
    /// weights must hash to the manifest's `weights_sha256` and fit the architecture exactly.
    /// A head-only version (manifest `weights: "last_layer"`, or `"head"` for the whole head)
    /// holds those variables alone; every other one is its backbone's: that of the version
    /// named by `backbone_version`, a sibling directory whose checksum must match the
    /// manifest's `backbone_sha256` too, or, when that is empty, the project's initial weights,
    /// read through `files`. For a `last_layer` version, `shared` is asked first for a loaded
    /// model's variables with that backbone (its [`frozen`](Self::frozen) value): given them,
    /// the new model shares their storage and reads nothing but its own file.
    ///
    /// # Errors
    /// [`ModelError::Version`] for missing files or a checksum mismatch (corruption);
    /// [`ModelError::Weights`] for weights that do not fit.
    pub fn load_version(
        spec: &ProjectSpec,
        dir: &Path,
        files: &ModelFiles,
        device: Device,
        shared: &dyn Fn(&str) -> Option<SharedVariables>,
    ) -> Result<Self, ModelError> {
        let error = |message: String| ModelError::Version { dir: dir.to_owned(), message };
        let (manifest, bytes) = read_version(dir)?;
        let weights_file = Path::new("weights.safetensors");
        let scope = manifest["weights"].as_str().unwrap_or(FULL_WEIGHTS);
        if scope == FULL_WEIGHTS {
            let mut model = Self::with_weights(spec, &bytes, device)?;
            model.frozen = Some(weights_identity(&manifest["weights_sha256"]));
            return Ok(model);
        }
        if scope != HEAD_WEIGHTS && scope != LAST_LAYER_WEIGHTS {
            return Err(error(format!("unknown weights scope {scope:?} in manifest.json")));
        }
        let backbone = manifest["backbone_version"].as_str().unwrap_or_default();
        let frozen = match backbone {
            "" => INITIAL_WEIGHTS.to_owned(),
            _ => weights_identity(&manifest["backbone_sha256"]),
        };
        // The backbone version is checked either way: by its manifest and size when its weights
        // are shared (hashed when they loaded), by its checksum when they are read.
        let backbone_dir = match backbone {
            "" => None,
            _ => Some(check_backbone(dir, &manifest, backbone)?),
        };
        let sharing = if scope == LAST_LAYER_WEIGHTS { shared(&frozen) } else { None };
        let built = sharing.and_then(|variables| {
            Self::sharing(spec, device, &variables)
                .inspect_err(
                    |e| tracing::warn!(dir = %dir.display(), error = %e, "cannot share a loaded backbone; reading it"),
                )
                .ok()
        });
        let mut model = match (built, backbone_dir) {
            (Some(model), _) => model,
            (None, None) => Self::load(spec, files, device)?,
            (None, Some(backbone_dir)) => {
                let (backbone_manifest, backbone_bytes) = read_version(&backbone_dir)?;
                if backbone_manifest["weights_sha256"] != manifest["backbone_sha256"] {
                    return Err(error(format!("its backbone, version {backbone}, changed while it loaded")));
                }
                Self::with_weights(spec, &backbone_bytes, device)?
            }
        };
        let Net::Builtin(network) = &model.net else {
            return Err(error("a head-only version of a TorchScript model".into()));
        };
        let prefixes = if scope == LAST_LAYER_WEIGHTS { network.last_layer_prefixes } else { network.head_prefixes };
        weights::load_head(&mut model.vs, weights_file, &bytes, prefixes)?;
        model.frozen = (scope == LAST_LAYER_WEIGHTS || model.head_is_last_layer()).then_some(frozen);
        Ok(model)
    }

    /// The built-in model of `spec` with all its weights from safetensors `bytes` (verified by
    /// the caller): a trained version needs no client file.
    fn with_weights(spec: &ProjectSpec, bytes: &[u8], device: Device) -> Result<Self, ModelError> {
        let mut model = Self::zeros(spec, device)?;
        weights::load(&mut model.vs, Path::new("weights.safetensors"), bytes, &[])?;
        Ok(model)
    }

    /// The built-in model of `spec` whose variables outside the head's last layer are those of
    /// `shared`, storage and all (no copy); the last layer is zeros until it is loaded.
    pub(crate) fn sharing(spec: &ProjectSpec, device: Device, shared: &SharedVariables) -> Result<Self, ModelError> {
        let model = Self::zeros(spec, device)?;
        let Net::Builtin(network) = &model.net else { unreachable!("zeros builds built-in networks") };
        let error = |message: String| ModelError::Weights { path: "shared backbone".into(), message };
        for (name, mut variable) in model.vs.variables() {
            if starts_with_any(&name, network.last_layer_prefixes) {
                continue;
            }
            let source = shared.get(&name).ok_or_else(|| error(format!("tensor {name} is missing")))?;
            if source.size() != variable.size() {
                return Err(error(weights::shape_mismatch(&name, source, &variable)));
            }
            // The variable's own zeros are dropped; the layers holding it see the shared data.
            variable.f_set_data(source)?;
        }
        Ok(model)
    }

    /// One stochastic pass of the head: logits `[B, classes]` from features `[B, D]`, with
    /// gradients when the caller trains.
    ///
    /// # Errors
    /// [`ModelError::Torch`] on a libtorch failure.
    pub fn head_logits(&self, features: &Tensor) -> Result<Tensor, ModelError> {
        Ok(match &self.net {
            Net::Builtin(network) => network.head.forward_t(features, true),
            Net::ScriptSplit(module) => script_draws(|| module.method_ts("head", &[features]))?,
            Net::ScriptForward(module) => script_draws(|| module.forward_ts(&[features]))?,
        })
    }

    /// The variables of a built-in model, for an optimiser; `None` for TorchScript models.
    pub fn variables(&self) -> Option<&nn::VarStore> {
        matches!(self.net, Net::Builtin(_)).then_some(&self.vs)
    }

    /// Makes every trainable variable take gradients (`false`: full fine-tuning, after which
    /// [`frozen`](Self::frozen) no longer holds), or only those of the head's last linear layer
    /// (`true`: a head-only retrain, which changes nothing else).
    pub fn train_last_layer_only(&mut self, only: bool) {
        let Net::Builtin(network) = &self.net else { return };
        self.vs.unfreeze();
        if !only {
            // Fine-tuning changes every variable: no longer those of the backbone it loaded.
            self.frozen = None;
            return;
        }
        for (name, variable) in self.vs.variables() {
            if !starts_with_any(&name, network.last_layer_prefixes) {
                let _ = variable.set_requires_grad(false);
            }
        }
    }

    /// MC-Dropout by replicating the batch K times and running the whole network on `[K·B, ...]`
    /// (Baal's `replicate_in_memory`): the strategy for models that cannot be split, kept for
    /// comparison in benchmarks. Probabilities `[B, C, K]`, as [`mc_probabilities`](Self::mc_probabilities).
    ///
    /// # Errors
    /// [`ModelError::Torch`] on a libtorch failure.
    pub fn mc_probabilities_replicated(&self, input: &Tensor, k: i64) -> Result<Tensor, ModelError> {
        let repeated = input.f_repeat_interleave_self_int(k, 0, None)?;
        let features = self.features(&repeated)?;
        // Each replica is one pass: K = 1 on the replicated batch, then regroup per sample.
        let batch = input.size()[0];
        let probabilities = self.mc_probabilities(&features, 1)?;
        Ok(probabilities.f_view([batch, k, self.classes])?.f_permute([0, 2, 1])?.f_contiguous()?)
    }

    /// Writes the parameters and buffers as safetensors, the format `weights_path` loads.
    ///
    /// # Errors
    /// [`ModelError::Torch`] if the file cannot be written; [`ModelError::TorchScript`] for
    /// TorchScript models, whose weights live in their own file.
    pub fn save(&self, path: &std::path::Path) -> Result<(), ModelError> {
        self.builtin_network(path)?;
        Ok(self.vs.save(path)?)
    }

    /// The built-in network, or for a TorchScript model the error saving it to `path` gives.
    fn builtin_network(&self, path: &std::path::Path) -> Result<&architectures::Network, ModelError> {
        match &self.net {
            Net::Builtin(network) => Ok(network),
            _ => Err(ModelError::TorchScript {
                path: path.to_owned(),
                message: "weights live in the TorchScript file".into(),
            }),
        }
    }

    /// Writes the variables of a head-only version's `scope` as safetensors: the head's last
    /// linear layer ([`LAST_LAYER_WEIGHTS`]; for VGG16 160 KiB at 10 classes instead of 528 MB)
    /// or the whole head ([`HEAD_WEIGHTS`]).
    ///
    /// # Errors
    /// As [`save`](Self::save).
    pub fn save_head(&self, path: &std::path::Path, scope: &str) -> Result<(), ModelError> {
        let network = self.builtin_network(path)?;
        let prefixes = if scope == LAST_LAYER_WEIGHTS { network.last_layer_prefixes } else { network.head_prefixes };
        let mut head: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(name, _)| starts_with_any(name, prefixes)).collect();
        head.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Tensor::write_safetensors(&head, path)?)
    }
}

/// Runs a TorchScript call whose dropout draws from libtorch's generator: under that
/// generator's lock, seeded from the job's generator, so the call is reproducible with a
/// seeded job and no other thread's draws can interleave.
fn script_draws(call: impl FnOnce() -> Result<Tensor, tch::TchError>) -> Result<Tensor, tch::TchError> {
    let seed = random::with_current(random::Generator::libtorch_seed);
    let _generator = random::libtorch_generator();
    tch::manual_seed(seed);
    call()
}

/// Loads a TorchScript model: `features` + `head` if it has them, else `forward` alone.
/// libtorch's own messages (multi-kilobyte C++ backtraces) go to the log under a request id.
fn load_torchscript(
    spec: &ProjectSpec,
    files: &ModelFiles,
    device: Device,
    input: (i64, i64, i64),
) -> Result<Net, ModelError> {
    let path = spec.model.torchscript_path.clone().unwrap_or_default();
    let error = |message: String| ModelError::TorchScript { path: path.clone(), message };
    let logged = |what: &str, e: tch::TchError| error(crate::errors::logged(what, &e));
    let bytes = files.read(&path)?;
    let mut module = tch::CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device).map_err(|e| {
        error(format!("not a TorchScript archive ({})", crate::errors::log_detail("loading TorchScript", &e)))
    })?;
    module.set_eval();
    // Probe with one zero input: a missing method is an error, not a crash.
    let probe = Tensor::zeros([1, input.0, input.1, input.2], (Kind::Float, device));
    let net = match module.method_ts("features", &[&probe]) {
        Ok(features) => {
            let logits = module.method_ts("head", &[&features]).map_err(|e| logged("`head` on a probe input", e))?;
            check_classes(&logits, spec.classes.len()).map_err(error)?;
            Net::ScriptSplit(module)
        }
        Err(_) => {
            let logits = module
                .forward_ts(&[&probe])
                .map_err(|e| logged("no `features`/`head` methods, and `forward` on a probe input", e))?;
            check_classes(&logits, spec.classes.len()).map_err(error)?;
            tracing::warn!(path = %path.display(), "TorchScript model has no features/head methods: replicating the batch K times");
            Net::ScriptForward(module)
        }
    };
    Ok(net)
}

fn check_classes(logits: &Tensor, classes: usize) -> Result<(), String> {
    match logits.size()[..] {
        [1, c] if c == classes as i64 => Ok(()),
        ref shape => {
            Err(format!("outputs shape {shape:?} for one input; expected [1, {classes}] (one logit per class)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::projects::{Architecture, spec::tests::spec};

    fn project(architecture: Architecture, size: u32, dropout: f32) -> ProjectSpec {
        let mut spec = spec();
        spec.model.architecture = architecture;
        spec.model.head_dropout = dropout;
        spec.preprocessing.width = size;
        spec.preprocessing.height = size;
        spec
    }

    fn input(batch: i64, size: i64) -> Tensor {
        // Under the generator's lock, so that no model built meanwhile draws other weights.
        let _generator = random::libtorch_generator();
        tch::manual_seed(0);
        Tensor::rand([batch, 3, size, size], (Kind::Float, Device::Cpu))
    }

    /// Writes a version directory `dir` with `weights` and a manifest pointing at it.
    fn write_version(dir: &Path, weights: &Path, manifest: serde_json::Value) {
        std::fs::create_dir_all(dir).unwrap();
        let bytes = std::fs::read(weights).unwrap();
        let mut manifest = manifest;
        manifest["weights_sha256"] = crate::digest::sha256_hex(&bytes).into();
        std::fs::write(dir.join("weights.safetensors"), bytes).unwrap();
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }

    #[test]
    fn a_head_only_version_loads_its_head_onto_the_named_backbone_and_nothing_else() {
        let spec = project(Architecture::SmallCnn, 16, 0.0);
        let root = tempfile::tempdir().unwrap();
        let trained = McModel::load(&spec, &ModelFiles::none(), Device::Cpu).unwrap();
        // Version v1 holds everything; v2 holds a different head only, on v1's backbone.
        let full = root.path().join("full.safetensors");
        trained.save(&full).unwrap();
        write_version(&root.path().join("v1"), &full, serde_json::json!({"weights": "full"}));
        let other_head = {
            let mut spec = spec.clone();
            spec.classes.reverse(); // another fingerprint: other random head weights
            McModel::load(&spec, &ModelFiles::none(), Device::Cpu).unwrap()
        };
        let head = root.path().join("head.safetensors");
        other_head.save_head(&head, HEAD_WEIGHTS).unwrap();
        let v1_sha = crate::digest::sha256_hex(&std::fs::read(&full).unwrap());
        let manifest = serde_json::json!({"weights": "head", "backbone_version": "v1", "backbone_sha256": v1_sha});
        write_version(&root.path().join("v2"), &head, manifest);

        let loaded =
            McModel::load_version(&spec, &root.path().join("v2"), &ModelFiles::none(), Device::Cpu, &|_| None).unwrap();
        let x = input(2, 16);
        let features = loaded.features(&x).unwrap();
        assert!(features.equal(&trained.features(&x).unwrap()), "the backbone is v1's");
        let logits = loaded.head_logits(&features).unwrap();
        assert!(logits.equal(&other_head.head_logits(&features).unwrap()), "the head is v2's");

        // Names that are not versions, a backbone other than the one trained on, a head file
        // with backbone tensors: refused.
        // Also when a loaded model offers its backbone: the backbone version is checked anyway.
        let offered = |_: &str| Some(trained.shared_variables());
        for (backbone, sha) in [("../v1", v1_sha.as_str()), ("v1/..", v1_sha.as_str()), ("v1", "0")] {
            for (scope, share) in [("head", false), ("last_layer", false), ("last_layer", true)] {
                let manifest =
                    serde_json::json!({"weights": scope, "backbone_version": backbone, "backbone_sha256": sha});
                write_version(&root.path().join("v3"), &head, manifest);
                let shared = |frozen: &str| if share { offered(frozen) } else { None };
                let refused =
                    McModel::load_version(&spec, &root.path().join("v3"), &ModelFiles::none(), Device::Cpu, &shared);
                assert!(matches!(refused, Err(ModelError::Version { .. })), "{backbone} {sha}: {:?}", refused.err());
            }
        }
        // A backbone whose weights file is gone or truncated is refused before anything shares it.
        let manifest =
            serde_json::json!({"weights": "last_layer", "backbone_version": "v1", "backbone_sha256": v1_sha});
        write_version(&root.path().join("v3"), &head, manifest);
        let mut v1_manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.path().join("v1/manifest.json")).unwrap()).unwrap();
        v1_manifest["weights_bytes"] = std::fs::metadata(&full).unwrap().len().into();
        std::fs::write(root.path().join("v1/manifest.json"), v1_manifest.to_string()).unwrap();
        let load_v3 =
            || McModel::load_version(&spec, &root.path().join("v3"), &ModelFiles::none(), Device::Cpu, &offered);
        assert!(load_v3().is_ok());
        let weights = std::fs::read(&full).unwrap();
        std::fs::write(root.path().join("v1/weights.safetensors"), &weights[..weights.len() - 1]).unwrap();
        let message = load_v3().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("missing or truncated"), "{message}");
        std::fs::write(root.path().join("v1/weights.safetensors"), &weights).unwrap();
        let manifest = serde_json::json!({"weights": "head", "backbone_version": "v1", "backbone_sha256": v1_sha});
        write_version(&root.path().join("v4"), &full, manifest);
        let refused =
            McModel::load_version(&spec, &root.path().join("v4"), &ModelFiles::none(), Device::Cpu, &|_| None);
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("is not part of the head"), "{message}");
    }

    /// The names of the tensors in the safetensors file `path`, sorted.
    fn tensor_names(path: &Path) -> Vec<String> {
        let bytes = std::fs::read(path).unwrap();
        let mut names: Vec<String> =
            safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn a_vgg16_head_only_version_is_its_last_layer_and_shares_a_loaded_backbone() {
        let _guard = tch::no_grad_guard();
        let spec = project(Architecture::Vgg16, 32, 0.0);
        let root = tempfile::tempdir().unwrap();
        let version = |name: &str| root.path().join(name);
        let initial = McModel::load(&spec, &ModelFiles::none(), Device::Cpu).unwrap();
        assert_eq!(initial.frozen(), Some("initial"));
        assert!(!initial.head_is_last_layer(), "VGG16's head is classifier.3 and classifier.6");
        // v1: a full version (no random draws below this point, which other tests could shift).
        let full = root.path().join("full.safetensors");
        initial.save(&full).unwrap();
        write_version(&version("v1"), &full, serde_json::json!({"weights": "full"}));
        let v1_sha = crate::digest::sha256_hex(&std::fs::read(&full).unwrap());
        let no_sharing = |_: &str| None;
        let base = McModel::load_version(&spec, &version("v1"), &ModelFiles::none(), Device::Cpu, &no_sharing).unwrap();
        let frozen = format!("sha256:{v1_sha}");
        assert_eq!(base.frozen(), Some(frozen.as_str()), "a full version is its own backbone");

        // v2: a retrain changed the last layer alone, and stores it alone.
        let retrained =
            McModel::load_version(&spec, &version("v1"), &ModelFiles::none(), Device::Cpu, &no_sharing).unwrap();
        let _ = retrained.vs.variables().get_mut("classifier.6.weight").unwrap().fill_(0.01);
        let file = root.path().join("last_layer.safetensors");
        retrained.save_head(&file, LAST_LAYER_WEIGHTS).unwrap();
        assert_eq!(tensor_names(&file), ["classifier.6.bias", "classifier.6.weight"]);
        let bytes = std::fs::metadata(&file).unwrap().len();
        assert!(bytes < 200_000, "2 classes x 4096 floats and a header: {bytes} B");
        let on_v1 =
            |scope: &str| serde_json::json!({"weights": scope, "backbone_version": "v1", "backbone_sha256": v1_sha});
        write_version(&version("v2"), &file, on_v1("last_layer"));

        let asked = std::cell::RefCell::new(Vec::new());
        let load = |name: &str, share: bool| {
            let shared = |f: &str| {
                asked.borrow_mut().push(f.to_owned());
                share.then(|| base.shared_variables())
            };
            McModel::load_version(&spec, &version(name), &ModelFiles::none(), Device::Cpu, &shared).unwrap()
        };
        let from_files = load("v2", false);
        let shared = load("v2", true);
        assert_eq!(*asked.borrow(), [frozen.as_str(), frozen.as_str()], "asked for v1's backbone");
        let x = input(2, 32);
        let outputs = |m: &McModel| m.mc_probabilities(&m.features(&x).unwrap(), 2).unwrap();
        let expected = outputs(&retrained);
        assert!(outputs(&from_files).equal(&expected), "read from files: the retrained model");
        assert!(outputs(&shared).equal(&expected), "built on the loaded backbone: the same model");
        assert!(!outputs(&base).equal(&expected), "the shared model's last layer is not written into the base");
        let pointer = |m: &McModel, name: &str| m.vs.variables()[name].data_ptr();
        for name in ["features.0.weight", "classifier.0.weight", "classifier.3.weight"] {
            assert_eq!(pointer(&shared, name), pointer(&base, name), "{name} is shared, not copied");
            assert_ne!(pointer(&from_files, name), pointer(&base, name), "{name}");
        }
        assert_ne!(pointer(&shared, "classifier.6.weight"), pointer(&base, "classifier.6.weight"));
        assert_eq!((shared.frozen(), from_files.frozen()), (Some(frozen.as_str()), Some(frozen.as_str())));

        // v3, an older kind of version holding the whole head: read from files, never shared,
        // and not a base for others (its classifier.3 is not the backbone's).
        let _ = retrained.vs.variables().get_mut("classifier.3.weight").unwrap().fill_(0.001);
        let whole = root.path().join("head.safetensors");
        retrained.save_head(&whole, HEAD_WEIGHTS).unwrap();
        assert_eq!(tensor_names(&whole).len(), 4);
        write_version(&version("v3"), &whole, on_v1("head"));
        asked.borrow_mut().clear();
        let older = load("v3", true);
        assert!(asked.borrow().is_empty());
        assert!(outputs(&older).equal(&outputs(&retrained)));
        assert_eq!(older.frozen(), None);
    }

    #[test]
    fn a_head_only_retrain_changes_the_last_layer_alone() {
        let spec = project(Architecture::Vgg16, 32, 0.5);
        let mut model = McModel::load(&spec, &ModelFiles::none(), Device::Cpu).unwrap();
        let before: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().map(|(name, t)| (name, t.detach().copy())).collect();
        let step = |model: &McModel| {
            let mut optimizer =
                nn::OptimizerConfig::build(nn::Adam::default(), model.variables().unwrap(), 1e-2).unwrap();
            let features = model.features(&input(2, 32)).unwrap();
            let loss = model.head_logits(&features).unwrap().cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1]));
            optimizer.backward_step(&loss);
        };
        model.train_last_layer_only(true);
        step(&model);
        let variables = model.vs.variables();
        for (name, old) in &before {
            let changed = !variables[name].equal(old);
            assert_eq!(changed, name.starts_with("classifier.6."), "{name}");
        }
        // What the job holds memory for: the last layer, 2 x 4096 weights and 2 biases (f32).
        assert_eq!(model.trainable_bytes(), (2 * 4096 + 2) * 4);
        // Full fine-tuning trains everything again.
        model.train_last_layer_only(false);
        assert_eq!(model.trainable_bytes(), model.bytes());
        step(&model);
        let changed = |name: &str| {
            let old = &before.iter().find(|(n, _)| n == name).unwrap().1;
            !model.vs.variables()[name].equal(old)
        };
        assert!(changed("classifier.3.weight") && changed("features.0.weight"));
    }

    #[test]
    fn a_zero_filled_network_draws_nothing_from_libtorchs_generator() {
        let _generator = random::libtorch_generator();
        let draw = || Tensor::rand([8], (Kind::Float, Device::Cpu));
        tch::manual_seed(7);
        let expected = draw();
        tch::manual_seed(7);
        for architecture in [Architecture::Mlp, Architecture::SmallCnn, Architecture::Resnet18, Architecture::Vgg16] {
            let model = McModel::zeros(&project(architecture, 32, 0.5), Device::Cpu).unwrap();
            // Parameters are zero (BatchNorm's running variance, a buffer, starts at one).
            let parameters = model.vs.trainable_variables();
            assert!(parameters.iter().all(|t| t.abs().max().double_value(&[]) == 0.0), "{architecture:?}");
        }
        assert!(draw().equal(&expected), "building drew from the generator");
    }

    #[test]
    fn head_dropout_varies_across_passes_while_the_backbone_is_deterministic() {
        let model = McModel::load(&project(Architecture::SmallCnn, 16, 0.5), &ModelFiles::none(), Device::Cpu).unwrap();
        let x = input(2, 16);
        let features = model.features(&x).unwrap();
        assert!(features.equal(&model.features(&x).unwrap()), "backbone must be deterministic");
        let probabilities = model.mc_probabilities(&features, 8).unwrap();
        assert_eq!(probabilities.size(), [2, 2, 8]);
        // Columns sum to 1 over classes.
        let sums = probabilities.sum_dim_intlist([1].as_slice(), false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones([2, 8], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
        // Passes differ: the spread over K is not zero.
        let spread = probabilities.std_dim([2].as_slice(), false, false).max().double_value(&[]);
        assert!(spread > 1e-4, "MC passes are identical (spread {spread})");
    }

    #[test]
    fn without_dropout_every_pass_equals_the_plain_eval_forward() {
        let model = McModel::load(&project(Architecture::SmallCnn, 16, 0.0), &ModelFiles::none(), Device::Cpu).unwrap();
        let x = input(3, 16);
        let probabilities = model.mc_probabilities(&model.features(&x).unwrap(), 5).unwrap();
        let Net::Builtin(network) = &model.net else { panic!("built-in") };
        let plain = network.head.forward_t(&network.backbone.forward_t(&x, false), false).softmax(-1, Kind::Float);
        for pass in 0..5 {
            assert!(probabilities.select(2, pass).allclose(&plain, 1e-6, 1e-7, false), "pass {pass}");
        }
    }

    #[test]
    fn replicating_the_batch_gives_the_same_probabilities_without_dropout() {
        let model = McModel::load(&project(Architecture::SmallCnn, 16, 0.0), &ModelFiles::none(), Device::Cpu).unwrap();
        let x = input(3, 16);
        let once = model.mc_probabilities(&model.features(&x).unwrap(), 4).unwrap();
        let replicated = model.mc_probabilities_replicated(&x, 4).unwrap();
        assert_eq!(replicated.size(), [3, 2, 4]);
        assert!(once.allclose(&replicated, 1e-5, 1e-6, false));
    }

    #[test]
    fn batch_norm_statistics_never_change_with_predictions() {
        let model = McModel::load(&project(Architecture::Resnet18, 32, 0.5), &ModelFiles::none(), Device::Cpu).unwrap();
        let running = |name: &str| model.vs.variables()[name].copy();
        let (mean, var) = (running("bn1.running_mean"), running("bn1.running_var"));
        for _ in 0..3 {
            let features = model.features(&input(4, 32)).unwrap();
            let _probabilities = model.mc_probabilities(&features, 4).unwrap();
        }
        assert!(mean.equal(&running("bn1.running_mean")) && var.equal(&running("bn1.running_var")));
    }

    #[test]
    fn every_architecture_outputs_one_probability_per_class_and_pass() {
        for (architecture, size) in [(Architecture::Mlp, 8), (Architecture::SmallCnn, 32), (Architecture::Resnet18, 32)]
        {
            let mut spec = project(architecture, size, 0.5);
            if architecture == Architecture::Mlp {
                spec.preprocessing.channels = 1;
                spec.preprocessing.mean = vec![0.0];
                spec.preprocessing.std = vec![1.0];
            }
            let model = McModel::load(&spec, &ModelFiles::none(), Device::Cpu).unwrap();
            let c = i64::from(spec.preprocessing.channels);
            let x = {
                let _generator = random::libtorch_generator();
                Tensor::rand([2, c, i64::from(size), i64::from(size)], (Kind::Float, Device::Cpu))
            };
            let out = model.mc_probabilities(&model.features(&x).unwrap(), 3).unwrap();
            assert_eq!(out.size(), [2, 2, 3], "{architecture:?}");
        }
    }

    #[test]
    fn vgg16_has_torchvisions_variable_names_and_a_head_after_the_first_classifier_layer() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let shape = Shape { input: (3, 224, 224), classes: 10, head_dropout: 0.5 };
        let network = architectures::build(&vs.root(), Architecture::Vgg16, shape, Fill::Random).unwrap();
        let variables = vs.variables();
        for name in ["features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.6.weight"] {
            assert!(variables.contains_key(name), "{name}");
        }
        assert_eq!(variables["classifier.6.weight"].size(), [10, 4096]);
        assert_eq!(network.head_prefixes, ["classifier.3.", "classifier.6."]);
        assert_eq!(network.last_layer_prefixes, ["classifier.6."]);
        vs.freeze();
    }

    #[test]
    fn weights_round_trip_and_a_new_head_may_differ_but_the_backbone_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = ModelFiles::open(dir.path().to_owned(), 1 << 30).unwrap();
        let file = dir.path().join("weights.safetensors");
        let original =
            McModel::load(&project(Architecture::SmallCnn, 16, 0.0), &ModelFiles::none(), Device::Cpu).unwrap();
        original.vs.save(&file).unwrap();
        let mut spec = project(Architecture::SmallCnn, 16, 0.0);
        spec.model.weights_path = Some(file.clone());
        let loaded = McModel::load(&spec, &files, Device::Cpu).unwrap();
        let x = input(2, 16);
        let outputs = |m: &McModel| m.mc_probabilities(&m.features(&x).unwrap(), 1).unwrap();
        assert!(outputs(&original).allclose(&outputs(&loaded), 1e-6, 1e-7, false));

        // Three classes: the head is resized and stays random, the backbone loads.
        spec.classes.push("bus".into());
        let three = McModel::load(&spec, &files, Device::Cpu).unwrap();
        assert!(original.features(&x).unwrap().equal(&three.features(&x).unwrap()));

        // One input channel: the first conv cannot take the file's weights.
        spec.preprocessing.channels = 1;
        spec.preprocessing.mean = vec![0.0];
        spec.preprocessing.std = vec![1.0];
        let error = McModel::load(&spec, &files, Device::Cpu).unwrap_err().to_string();
        assert!(error.contains("backbone.conv1.weight") && error.contains("shape"), "{error}");
    }
}
