//! A project as stored and served ([`Project`]) and its specification ([`ProjectSpec`]): its
//! classes, model, preprocessing and defaults, validated. Plain data: the store keeps these types,
//! and this module depends on no storage.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A project as served and stored: its spec plus server-owned state.
#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    /// The specification.
    pub spec: ProjectSpec,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// The active model version (e.g. `v3`, or `untrained`).
    pub active_version: String,
    /// When a version was last activated (ActivateModelVersion, or a training job's new
    /// version), milliseconds since the Unix epoch on the activating server's clock; 0 if none
    /// was, or before the catalogue recorded it. Replicas measure how late they follow from it.
    pub activated_unix_ms: i64,
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Published weights the backbone starts from (fetched and verified by the server), instead
    /// of `weights_path`; `None` = `weights_path` or random. Absent in specs stored before it
    /// existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PretrainedWeights>,
}

/// Published pretrained weights (see [`crate::models::pretrained`] for the files and pins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretrainedWeights {
    /// torchvision's ImageNet-1k weights (`IMAGENET1K_V1`) of VGG16 or ResNet-18.
    Imagenet,
}

impl PretrainedWeights {
    /// The per-channel mean and standard deviation (RGB, pixels scaled to `[0, 1]`) the weights
    /// were trained with: ImageNet's, as torchvision documents for these weights.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Self::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        }
    }
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
    /// Identifier: 1 to 64 characters from `[A-Za-z0-9_.-]`, starting with a letter or digit
    /// (see [`crate::ids`]).
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
    /// Which heuristic Rank uses while the project has few labels; `None` = always
    /// `default_heuristic`. Projects stored before schedules existed have none.
    #[serde(default)]
    pub acquisition_schedule: Option<AcquisitionSchedule>,
}

/// An acquisition schedule: Rank requests that name no heuristic use `cold_start` until the
/// project has [`switch_at`](Self::switch_at) labelled examples, then the default heuristic.
/// Uncertainty from a model trained on a handful of labels is close to noise, while a
/// diversity heuristic needs no trained model (TypiClust: Hacohen, Dekel & Weinshall 2022).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquisitionSchedule {
    /// The cold-start heuristic, e.g. `typiclust`.
    pub cold_start: HeuristicChoice,
    /// Labelled examples at which Rank switches; 0 = `max(2 × classes, 20)`.
    pub min_labels: u32,
}

impl AcquisitionSchedule {
    /// The schedule of new projects that do not choose one: typiclust until
    /// `max(2 × classes, 20)` labels (chosen by the cold-start experiment, EXPERIMENTS.md).
    pub fn server_default() -> Self {
        Self { cold_start: HeuristicChoice { name: "typiclust".into(), version: String::new() }, min_labels: 0 }
    }

    /// Labelled examples at which Rank switches to the default heuristic, for `classes` classes.
    pub fn switch_at(&self, classes: usize) -> u64 {
        match self.min_labels {
            0 => (2 * classes as u64).max(20),
            labels => u64::from(labels),
        }
    }
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

/// Checks an MC-iteration count K, of any integer type a request carries it in (the error
/// shows the number as sent).
///
/// # Errors
/// [`SpecError`] on `field` if `k` is not in `1..=1000`.
pub fn check_mc_iterations(field: &'static str, k: impl Into<i128>) -> Result<(), SpecError> {
    let k = k.into();
    if (1..=i128::from(MAX_MC_ITERATIONS)).contains(&k) {
        Ok(())
    } else {
        Err(invalid(field, format!("{k} MC iterations: must be between 1 and {MAX_MC_ITERATIONS}")))
    }
}

impl Preprocessing {
    /// `requested` with defaults where it left a field unset (0 or empty): the architecture's
    /// input size and channels; the pretrained weights' mean and std for 3 channels, else mean
    /// 0 and std 1 per channel.
    pub fn with_defaults(requested: Self, architecture: Architecture, weights: Option<PretrainedWeights>) -> Self {
        let (default_channels, default_height, default_width) = architecture.default_input();
        let channels = if requested.channels == 0 { default_channels } else { requested.channels };
        let (default_mean, default_std) = match weights.map(PretrainedWeights::normalisation) {
            Some((mean, std)) if channels == 3 => (mean.to_vec(), std.to_vec()),
            _ => (vec![0.0; channels as usize], vec![1.0; channels as usize]),
        };
        Self {
            width: if requested.width == 0 { default_width } else { requested.width },
            height: if requested.height == 0 { default_height } else { requested.height },
            channels,
            mean: if requested.mean.is_empty() { default_mean } else { requested.mean },
            std: if requested.std.is_empty() { default_std } else { requested.std },
        }
    }
}

impl ProjectSpec {
    /// Fills what a request left unset: MC iterations 0 become [`DEFAULT_MC_ITERATIONS`], an
    /// empty default heuristic [`DEFAULT_HEURISTIC`] (newest version).
    pub fn with_defaults(mut self) -> Self {
        if self.mc_iterations == 0 {
            self.mc_iterations = DEFAULT_MC_ITERATIONS;
        }
        if self.default_heuristic.name.is_empty() {
            self.default_heuristic.name = DEFAULT_HEURISTIC.to_owned();
        }
        self
    }

    /// SHA-256 (hex) of what a trained version depends on: classes, model and preprocessing.
    /// Versions whose manifest records another fingerprint cannot serve this spec.
    pub fn model_fingerprint(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(&(&self.classes, &self.model, &self.preprocessing)).unwrap_or_default();
        sha2::Sha256::digest(json).iter().map(|b| format!("{b:02x}")).collect()
    }

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
        if let Err(error) = crate::ids::project("project.id", &self.id) {
            return Err(invalid(
                "project.id",
                format!(
                    "{}; use 1 to 64 characters from [A-Za-z0-9_.-], starting with a letter or digit",
                    error.reason
                ),
            ));
        }
        if self.classes.is_empty() {
            return Err(invalid("project.classes", "at least one class is required"));
        }
        if let Some(empty) = self.classes.iter().position(String::is_empty) {
            return Err(invalid("project.classes", format!("class {empty} is empty")));
        }
        // Class names are stored as text columns (PostgreSQL refuses NUL) and shown to people.
        if let Some(control) = self.classes.iter().position(|c| c.chars().any(char::is_control)) {
            return Err(invalid("project.classes", format!("class {control} contains a control character")));
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
        if let Some(pretrained) = self.model.pretrained {
            if !matches!(self.model.architecture, Architecture::Vgg16 | Architecture::Resnet18) {
                return Err(invalid(
                    "project.model.pretrained",
                    format!("{pretrained:?} weights exist for VGG16 and RESNET18 only"),
                ));
            }
            if self.model.weights_path.is_some() {
                return Err(invalid("project.model.pretrained", "set either pretrained or weights_path, not both"));
            }
            if self.preprocessing.channels != 3 {
                return Err(invalid("project.model.pretrained", "pretrained weights need 3 input channels (RGB)"));
            }
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
                pretrained: None,
            },
            preprocessing: Preprocessing { width: 32, height: 32, channels: 3, mean: vec![0.5; 3], std: vec![0.25; 3] },
            mc_iterations: 20,
            default_heuristic: HeuristicChoice { name: "bald".into(), version: String::new() },
            acquisition_schedule: None,
        }
    }

    #[test]
    fn a_complete_spec_is_valid() {
        spec().validate().unwrap();
        let mut pretrained = spec();
        pretrained.model.architecture = Architecture::Resnet18;
        pretrained.model.pretrained = Some(PretrainedWeights::Imagenet);
        pretrained.validate().unwrap();
    }

    #[test]
    fn specs_stored_before_pretrained_weights_existed_still_load() {
        let mut json = serde_json::to_value(spec()).unwrap();
        assert!(json["model"].get("pretrained").is_none(), "unset is not written");
        json["model"].as_object_mut().unwrap().remove("pretrained");
        let loaded: ProjectSpec = serde_json::from_value(json).unwrap();
        assert_eq!(loaded, spec());
    }

    #[test]
    fn every_invalid_field_is_named() {
        type Breaker = fn(&mut ProjectSpec);
        let cases: Vec<(Breaker, &str)> = vec![
            (|s| s.id = "bad id!".into(), "project.id"),
            (|s| s.classes.clear(), "project.classes"),
            (|s| s.classes.push("car".into()), "project.classes"),
            (|s| s.classes.push("a\u{0}b".into()), "project.classes"),
            (|s| s.classes.push("two\nlines".into()), "project.classes"),
            (|s| s.mc_iterations = 0, "project.mc_iterations"),
            (|s| s.mc_iterations = 1001, "project.mc_iterations"),
            (|s| s.model.head_dropout = 1.0, "project.model.head_dropout"),
            (|s| s.model.architecture = Architecture::TorchScript, "project.model.torchscript_path"),
            (|s| s.preprocessing.channels = 2, "project.preprocessing.channels"),
            (|s| s.preprocessing.std = vec![0.0; 3], "project.preprocessing.std"),
            (|s| s.preprocessing.mean = vec![0.5], "project.preprocessing.mean"),
            (|s| s.preprocessing.width = 0, "project.preprocessing.width"),
            (|s| s.model.pretrained = Some(PretrainedWeights::Imagenet), "project.model.pretrained"),
            (
                |s| {
                    s.model.architecture = Architecture::Resnet18;
                    s.model.pretrained = Some(PretrainedWeights::Imagenet);
                    s.model.weights_path = Some("/w.safetensors".into());
                },
                "project.model.pretrained",
            ),
            (
                |s| {
                    s.model.architecture = Architecture::Vgg16;
                    s.model.pretrained = Some(PretrainedWeights::Imagenet);
                    s.preprocessing.channels = 1;
                },
                "project.model.pretrained",
            ),
        ];
        for (break_it, field) in cases {
            let mut broken = spec();
            break_it(&mut broken);
            assert_eq!(broken.validate().unwrap_err().field, field);
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn architecture() -> impl Strategy<Value = Architecture> {
        prop_oneof![
            Just(Architecture::Mlp),
            Just(Architecture::SmallCnn),
            Just(Architecture::Vgg16),
            Just(Architecture::Resnet18),
            Just(Architecture::TorchScript),
        ]
    }

    /// Any f32, non-finite and boundary values common.
    fn float() -> impl Strategy<Value = f32> {
        prop_oneof![
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(0.0f32),
            Just(-0.0f32),
            Just(1.0f32),
            any::<f32>(),
            -2.0f32..2.0
        ]
    }

    /// A spec with arbitrary values in every field.
    fn arbitrary_spec() -> impl Strategy<Value = ProjectSpec> {
        let strings = || proptest::collection::vec(any::<String>(), 0..4);
        (
            any::<String>(),
            strings(),
            (architecture(), proptest::option::of(any::<String>()), float()),
            (any::<u32>(), any::<u32>(), any::<u32>()),
            (proptest::collection::vec(float(), 0..5), proptest::collection::vec(float(), 0..5)),
            any::<u32>(),
        )
            .prop_map(
                |(id, classes, (architecture, path, head_dropout), (width, height, channels), (mean, std), k)| {
                    ProjectSpec {
                        id,
                        display_name: String::new(),
                        classes,
                        model: ModelSpec {
                            architecture,
                            weights_path: None,
                            torchscript_path: path.map(PathBuf::from),
                            head_dropout,
                            pretrained: None,
                        },
                        preprocessing: Preprocessing { width, height, channels, mean, std },
                        mc_iterations: k,
                        default_heuristic: HeuristicChoice { name: "bald".into(), version: String::new() },
                        acquisition_schedule: None,
                    }
                },
            )
    }

    /// A valid spec: conservative ids and class names, any valid numbers.
    fn valid_spec() -> impl Strategy<Value = ProjectSpec> {
        (
            "[a-z][a-z0-9_-]{0,20}",
            proptest::collection::hash_set("[a-z][a-z0-9 ]{0,11}", 1..8),
            architecture(),
            (0.0f32..0.999, 1u32..=MAX_MC_ITERATIONS),
            (1u32..=4096, 1u32..=4096, prop_oneof![Just(1u32), Just(3u32)]),
            (-10.0f32..10.0, 1e-3f32..10.0),
        )
            .prop_map(
                |(id, classes, architecture, (head_dropout, k), (width, height, channels), (mean, std))| {
                    let torchscript_path = (architecture == Architecture::TorchScript).then(|| PathBuf::from("/m.pt"));
                    ProjectSpec {
                        id,
                        display_name: "A project".into(),
                        classes: classes.into_iter().collect(),
                        model: ModelSpec {
                            architecture,
                            weights_path: None,
                            torchscript_path,
                            head_dropout,
                            pretrained: None,
                        },
                        preprocessing: Preprocessing {
                            width,
                            height,
                            channels,
                            mean: vec![mean; channels as usize],
                            std: vec![std; channels as usize],
                        },
                        mc_iterations: k,
                        default_heuristic: HeuristicChoice { name: "bald".into(), version: String::new() },
                        acquisition_schedule: None,
                    }
                },
            )
    }

    /// One field broken in one of several ways: (the field the error must name, the breakage).
    fn breakage() -> impl Strategy<Value = (&'static str, u32, f32, usize)> {
        let fields = prop_oneof![
            Just("project.id"),
            Just("project.classes"),
            Just("project.mc_iterations"),
            Just("project.model.head_dropout"),
            Just("project.model.torchscript_path"),
            Just("project.preprocessing.channels"),
            Just("project.preprocessing.width"),
            Just("project.preprocessing.height"),
            Just("project.preprocessing.mean"),
            Just("project.preprocessing.std"),
        ];
        (fields, any::<u32>(), float(), any::<usize>())
    }

    /// Breaks `field` of a valid spec, using `number`, `value` and `pick` to choose how.
    fn break_field(spec: &mut ProjectSpec, field: &str, number: u32, value: f32, pick: usize) {
        let p = &mut spec.preprocessing;
        match field {
            "project.id" => spec.id = ["", "has space", "a/b", "semi;colon", "x\u{0}"][pick % 5].into(),
            "project.classes" => match pick % 3 {
                0 => spec.classes.clear(),
                1 => spec.classes.push(spec.classes[number as usize % spec.classes.len()].clone()),
                _ => spec.classes.insert(number as usize % (spec.classes.len() + 1), String::new()),
            },
            "project.mc_iterations" => {
                spec.mc_iterations =
                    if pick.is_multiple_of(2) { 0 } else { MAX_MC_ITERATIONS.saturating_add(1).max(number) }
            }
            "project.model.head_dropout" => {
                spec.model.head_dropout = if (0.0..1.0).contains(&value) { value + 1.0 } else { value }
            }
            "project.model.torchscript_path" => {
                spec.model.torchscript_path = match spec.model.torchscript_path {
                    Some(_) => None,
                    None => Some(PathBuf::from("/m.pt")),
                }
            }
            "project.preprocessing.channels" => p.channels = if matches!(number, 1 | 3) { 2 } else { number },
            "project.preprocessing.width" => p.width = if pick.is_multiple_of(2) { 0 } else { 4097u32.max(number) },
            "project.preprocessing.height" => p.height = if pick.is_multiple_of(2) { 0 } else { 4097u32.max(number) },
            "project.preprocessing.mean" => {
                if value.is_finite() {
                    p.mean.push(value);
                } else {
                    let at = pick % p.mean.len();
                    p.mean[at] = value;
                }
            }
            "project.preprocessing.std" => {
                if value.is_finite() && value > 0.0 {
                    p.std.truncate(pick % p.std.len());
                } else {
                    let at = pick % p.std.len();
                    p.std[at] = value;
                }
            }
            other => unreachable!("{other}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

        /// Whatever the fields hold: no panic, and an error names a field of the project.
        #[test]
        fn arbitrary_specs_never_panic(spec in arbitrary_spec()) {
            if let Err(error) = spec.validate() {
                prop_assert!(error.field.starts_with("project."), "{}", error);
                prop_assert!(!error.message.is_empty());
            }
        }

        #[test]
        fn valid_specs_pass(spec in valid_spec()) {
            prop_assert_eq!(spec.validate(), Ok(()));
        }

        #[test]
        fn one_broken_field_is_named((spec, (field, number, value, pick)) in (valid_spec(), breakage())) {
            let mut broken = spec;
            break_field(&mut broken, field, number, value, pick);
            let error = broken.validate().unwrap_err();
            prop_assert_eq!(error.field, field, "{}", error);
        }
    }
}
