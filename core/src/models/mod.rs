//! Models: built-in architectures and user TorchScript modules, loaded with their weights, and
//! the MC-Dropout forward pass. Also image preprocessing.
//!
//! A model is a deterministic backbone and a stochastic head (architecture page, "Inference
//! engine"). MC-Dropout runs the backbone once per sample and the head K times on the repeated
//! features, `[K·B, D]` in one call.

mod architectures;
pub mod preprocess;
mod weights;

use std::path::PathBuf;

use tch::{Device, Kind, Tensor, nn, nn::ModuleT};

use crate::projects::ProjectSpec;

/// Why a model could not be built or loaded. Messages name the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
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
    /// Keeps the variables of built-in networks alive.
    _vs: nn::VarStore,
    net: Net,
    device: Device,
    classes: i64,
    /// Bytes of parameters and buffers.
    bytes: usize,
}

impl std::fmt::Debug for McModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McModel").field("device", &self.device).field("classes", &self.classes).finish_non_exhaustive()
    }
}

impl McModel {
    /// Builds the project's model on `device` and loads its initial weights.
    ///
    /// # Errors
    /// [`ModelError`] if the weights or TorchScript file is unusable.
    pub fn load(spec: &ProjectSpec, device: Device) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        let classes = spec.classes.len() as i64;
        let p = &spec.preprocessing;
        let input = (i64::from(p.channels), i64::from(p.height), i64::from(p.width));
        let mut vs = nn::VarStore::new(device);
        let net = match architectures::build(
            &vs.root(),
            spec.model.architecture,
            input,
            classes,
            f64::from(spec.model.head_dropout),
        ) {
            Some(network) => {
                if let Some(path) = &spec.model.weights_path {
                    weights::load(&mut vs, path, network.head_prefixes)?;
                }
                Net::Builtin(network)
            }
            None => load_torchscript(spec, device, input)?,
        };
        let bytes = vs.variables().values().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum();
        Ok(Self { _vs: vs, net, device, classes, bytes })
    }

    /// Device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of parameters and buffers (for the cache's memory bound); 0 for TorchScript,
    /// whose size libtorch does not expose through tch.
    pub fn bytes(&self) -> usize {
        self.bytes
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
        let logits = match &self.net {
            Net::Builtin(network) => network.head.forward_t(&repeated, false),
            Net::ScriptSplit(module) => module.method_ts("head", &[&repeated])?,
            Net::ScriptForward(module) => module.forward_ts(&[&repeated])?,
        };
        let probabilities = logits.f_softmax(-1, Kind::Float)?;
        // [B·K, C] -> [B, K, C] -> [B, C, K] (iteration axis last, as in Baal).
        Ok(probabilities.f_view([batch, k, self.classes])?.f_permute([0, 2, 1])?.f_contiguous()?)
    }
}

/// Loads a TorchScript model: `features` + `head` if it has them, else `forward` alone.
fn load_torchscript(spec: &ProjectSpec, device: Device, input: (i64, i64, i64)) -> Result<Net, ModelError> {
    let path = spec.model.torchscript_path.clone().unwrap_or_default();
    let error = |message: String| ModelError::TorchScript { path: path.clone(), message };
    let mut module = tch::CModule::load_on_device(&path, device).map_err(|e| error(e.to_string()))?;
    module.set_eval();
    // Probe with one zero input: a missing method is an error, not a crash.
    let probe = Tensor::zeros([1, input.0, input.1, input.2], (Kind::Float, device));
    let net = match module.method_ts("features", &[&probe]) {
        Ok(features) => {
            let logits = module.method_ts("head", &[&features]).map_err(|e| error(format!("`head` failed: {e}")))?;
            check_classes(&logits, spec.classes.len()).map_err(error)?;
            Net::ScriptSplit(module)
        }
        Err(_) => {
            let logits = module
                .forward_ts(&[&probe])
                .map_err(|e| error(format!("no `features`/`head`, and `forward` failed: {e}")))?;
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
