//! A project's specification: its classes, model, preprocessing and defaults, validated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default MC-Dropout iterations K per sample.
pub const DEFAULT_MC_ITERATIONS: u32 = 20;
/// Largest accepted K.
pub const MAX_MC_ITERATIONS: u32 = 1000;
/// Default heuristic for scores and rankings.
pub const DEFAULT_HEURISTIC: &str = "bald";
/// Default dropout probability of the MC-Dropout head.
pub const DEFAULT_HEAD_DROPOUT: f32 = 0.5;
/// Model version reported before any training.
pub const UNTRAINED_VERSION: &str = "untrained";

/// Built-in architectures (deterministic backbone + MC-Dropout head) and user TorchScript.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Multi-layer perceptron over the flattened input.
    Mlp,
    /// Two conv blocks for small images (default 32×32).
    SmallCnn,
    /// VGG16 (Simonyan & Zisserman 2015), 224×224 by default.
    Vgg16,
    /// ResNet-18 (He et al. 2016), 224×224 by default.
    Resnet18,
    /// A user TorchScript module with `features` and `head` methods (or only `forward`).
    TorchScript,
}

impl Architecture {
    /// Input `(channels, height, width)` used when the project leaves them 0.
    pub fn default_input(self) -> (u32, u32, u32) {
        match self {
            Self::Mlp => (1, 8, 8),
            Self::SmallCnn => (3, 32, 32),
            Self::Vgg16 | Self::Resnet18 | Self::TorchScript => (3, 224, 224),
        }
    }
}

/// Which model a project serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub architecture: Architecture,
    /// Safetensors file with initial weights (server-side path); `None` = random.
    pub weights_path: Option<PathBuf>,
    /// TorchScript file (server-side path), for [`Architecture::TorchScript`] only.
    pub torchscript_path: Option<PathBuf>,
    /// Dropout probability of the head, in `[0, 1)`.
    pub head_dropout: f32,
}

/// How images become model inputs: resize to `width × height`, `channels` (1 = grayscale,
/// 3 = RGB), scale to `[0, 1]`, subtract `mean`, divide by `std` (per channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 or 3.
    pub channels: u32,
    /// Per-channel mean, length `channels`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, length `channels`, all positive.
    pub std: Vec<f32>,
}

/// A heuristic chosen by name, optionally pinned to a version (empty = newest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeuristicChoice {
    /// Heuristic name, e.g. `bald`.
    pub name: String,
    /// Exact version, or empty for the newest loaded.
    pub version: String,
}

/// Everything a client specifies about a project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectSpec {
    /// Identifier: 1 to 64 characters from `[A-Za-z0-9_.-]`.
    pub id: String,
    /// Free-form name.
    pub display_name: String,
    /// Ordered class names.
    pub classes: Vec<String>,
    /// The model.
    pub model: ModelSpec,
    /// Image preprocessing.
    pub preprocessing: Preprocessing,
    /// Default MC iterations K, `1..=1000`.
    pub mc_iterations: u32,
    /// Default heuristic.
    pub default_heuristic: HeuristicChoice,
}

/// An invalid field, named as in the API (`project.classes`, ...).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field's path in the request.
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError { field, message: message.into() }
}

/// Checks an MC-iteration count K.
///
/// # Errors
/// [`SpecError`] on `field` if `k` is not in `1..=1000`.
pub fn check_mc_iterations(field: &'static str, k: u32) -> Result<(), SpecError> {
    if (1..=MAX_MC_ITERATIONS).contains(&k) {
        Ok(())
    } else {
        Err(invalid(field, format!("{k} MC iterations: must be between 1 and {MAX_MC_ITERATIONS}")))
    }
}

impl ProjectSpec {
    /// Whether `other` has the same classes, model and preprocessing, so that model versions
    /// trained for one can serve the other.
    pub fn same_model(&self, other: &ProjectSpec) -> bool {
        self.classes == other.classes && self.model == other.model && self.preprocessing == other.preprocessing
    }

    /// Checks every field; each error names its field.
    ///
    /// # Errors
    /// The first [`SpecError`] found.
    pub fn validate(&self) -> Result<(), SpecError> {
        let id_ok = (1..=64).contains(&self.id.len())
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !id_ok {
            return Err(invalid("project.id", format!("{:?}: use 1 to 64 characters from [A-Za-z0-9_.-]", self.id)));
        }
        if self.classes.is_empty() {
            return Err(invalid("project.classes", "at least one class is required"));
        }
        if let Some(empty) = self.classes.iter().position(String::is_empty) {
            return Err(invalid("project.classes", format!("class {empty} is empty")));
        }
        for (i, class) in self.classes.iter().enumerate() {
            if self.classes[..i].contains(class) {
                return Err(invalid("project.classes", format!("duplicate class {class:?}")));
            }
        }
        check_mc_iterations("project.mc_iterations", self.mc_iterations)?;
        if !(0.0..1.0).contains(&self.model.head_dropout) {
            return Err(invalid("project.model.head_dropout", format!("{} is not in [0, 1)", self.model.head_dropout)));
        }
        match (self.model.architecture, &self.model.torchscript_path) {
            (Architecture::TorchScript, None) => {
                return Err(invalid("project.model.torchscript_path", "required for ARCHITECTURE_TORCHSCRIPT"));
            }
            (Architecture::TorchScript, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(invalid("project.model.torchscript_path", "only for ARCHITECTURE_TORCHSCRIPT"));
            }
        }
        self.validate_preprocessing()
    }

    fn validate_preprocessing(&self) -> Result<(), SpecError> {
        let p = &self.preprocessing;
        if !matches!(p.channels, 1 | 3) {
            return Err(invalid("project.preprocessing.channels", format!("{}: must be 1 or 3", p.channels)));
        }
        for (field, size) in [("project.preprocessing.width", p.width), ("project.preprocessing.height", p.height)] {
            if !(1..=4096).contains(&size) {
                return Err(invalid(field, format!("{size} pixels: must be between 1 and 4096")));
            }
        }
        if p.mean.len() != p.channels as usize {
            return Err(invalid(
                "project.preprocessing.mean",
                format!("{} values for {} channels", p.mean.len(), p.channels),
            ));
        }
        if p.std.len() != p.channels as usize || p.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(invalid(
                "project.preprocessing.std",
                format!("need {} positive values, got {:?}", p.channels, p.std),
            ));
        }
        if p.mean.iter().any(|m| !m.is_finite()) {
            return Err(invalid("project.preprocessing.mean", "values must be finite"));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid small-CNN project spec for tests.
    pub(crate) fn spec() -> ProjectSpec {
        ProjectSpec {
            id: "cars".into(),
            display_name: String::new(),
            classes: vec!["car".into(), "truck".into()],
            model: ModelSpec {
                architecture: Architecture::SmallCnn,
                weights_path: None,
                torchscript_path: None,
                head_dropout: 0.5,
            },
            preprocessing: Preprocessing { width: 32, height: 32, channels: 3, mean: vec![0.5; 3], std: vec![0.25; 3] },
            mc_iterations: 20,
            default_heuristic: HeuristicChoice { name: "bald".into(), version: String::new() },
        }
    }

    #[test]
    fn a_complete_spec_is_valid() {
        spec().validate().unwrap();
    }

    #[test]
    fn every_invalid_field_is_named() {
        type Breaker = fn(&mut ProjectSpec);
        let cases: Vec<(Breaker, &str)> = vec![
            (|s| s.id = "bad id!".into(), "project.id"),
            (|s| s.classes.clear(), "project.classes"),
            (|s| s.classes.push("car".into()), "project.classes"),
            (|s| s.mc_iterations = 0, "project.mc_iterations"),
            (|s| s.mc_iterations = 1001, "project.mc_iterations"),
            (|s| s.model.head_dropout = 1.0, "project.model.head_dropout"),
            (|s| s.model.architecture = Architecture::TorchScript, "project.model.torchscript_path"),
            (|s| s.preprocessing.channels = 2, "project.preprocessing.channels"),
            (|s| s.preprocessing.std = vec![0.0; 3], "project.preprocessing.std"),
            (|s| s.preprocessing.mean = vec![0.5], "project.preprocessing.mean"),
            (|s| s.preprocessing.width = 0, "project.preprocessing.width"),
        ];
        for (break_it, field) in cases {
            let mut broken = spec();
            break_it(&mut broken);
            assert_eq!(broken.validate().unwrap_err().field, field);
        }
    }
}
