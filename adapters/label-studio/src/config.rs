//! Adapter configuration: `clap` flags, each with an environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use alps_proto::v1::Architecture;
use alps_runtime::LogFormat;
use clap::Parser;
use url::Url;

/// How the prediction-level `score` sent to Label Studio is defined (README, "Use with Label
/// Studio": the score-mode table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMode {
    /// Score = probability of the predicted class: sorting ascending puts the least confident first.
    #[default]
    Confidence,
    /// Score = the acquisition heuristic's informativeness: sorting descending puts the most
    /// informative first.
    Uncertainty,
}

impl ScoreMode {
    /// Parses the spelling used in `extra_params.score_mode` and on the command line.
    pub fn from_name(name: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(name, true).ok()
    }
}

/// A named model the adapter can create ALPS projects with (`--model`).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPreset {
    /// Name used in `extra_params.model`, `--default-model` and model version strings.
    pub name: String,
    /// Built-in architecture.
    pub architecture: Architecture,
    /// Input width and height in pixels; 0 = the architecture's default.
    pub size: u32,
    /// Input channels (1 or 3); 0 = the architecture's default.
    pub channels: u32,
    /// Initial weights; `None` = random initialisation. Presets with weights train head-only.
    pub weights: Option<PresetWeights>,
    /// Per-channel mean (`mean=a:b:c`); empty = alps-server's default (the pretrained weights'
    /// own, else 0).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (`std=a:b:c`); empty = alps-server's default (the
    /// pretrained weights' own, else 1).
    pub std: Vec<f32>,
}

/// Where a preset's initial weights come from (`weights=`).
#[derive(Clone, Debug, PartialEq)]
pub enum PresetWeights {
    /// A safetensors file on the alps-server machine (`weights=PATH`).
    File(PathBuf),
    /// torchvision's published ImageNet weights, fetched and verified by alps-server
    /// (`weights=imagenet`; vgg16 and resnet18).
    Imagenet,
}

/// Name of the model used when neither `--model` nor `extra_params` names one.
pub const BUILTIN_MODEL: &str = "small-cnn";

impl ModelPreset {
    /// The built-in default: small_cnn on 32x32 RGB input, random initialisation.
    pub fn builtin() -> Self {
        Self {
            name: BUILTIN_MODEL.into(),
            architecture: Architecture::SmallCnn,
            size: 32,
            channels: 3,
            weights: None,
            mean: Vec::new(),
            std: Vec::new(),
        }
    }
}

/// Parses `NAME=ARCHITECTURE[,size=PIXELS][,channels=N][,weights=PATH|imagenet][,mean=A:B:C][,std=A:B:C]`,
/// e.g. `cars=resnet18,size=224,weights=/models/resnet18.safetensors` or `vgg=vgg16,weights=imagenet`.
/// `weights=imagenet` (vgg16, resnet18) selects torchvision's published ImageNet weights (a file
/// named `imagenet` is `weights=./imagenet`); `mean` and `std` take one value per channel,
/// separated by `:`.
fn parse_model(raw: &str) -> Result<ModelPreset, String> {
    let (name, rest) = raw
        .split_once('=')
        .ok_or("expected NAME=ARCHITECTURE[,size=N][,channels=N][,weights=PATH|imagenet][,mean=A:B:C][,std=A:B:C]")?;
    let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid_name || name.len() > 48 {
        return Err(format!("model name {name:?} must be 1 to 48 characters from [A-Za-z0-9_.-]"));
    }
    let mut parts = rest.split(',');
    let architecture = match parts.next().unwrap_or_default() {
        "mlp" => Architecture::Mlp,
        "small_cnn" => Architecture::SmallCnn,
        "vgg16" => Architecture::Vgg16,
        "resnet18" => Architecture::Resnet18,
        other => return Err(format!("unknown architecture {other:?}; one of mlp, small_cnn, vgg16, resnet18")),
    };
    let mut preset = ModelPreset {
        name: name.to_owned(),
        architecture,
        size: 0,
        channels: 0,
        weights: None,
        mean: Vec::new(),
        std: Vec::new(),
    };
    // One value per channel, `:`-separated (`,` already separates the options).
    let values = |option: &str, raw: &str, positive: bool| -> Result<Vec<f32>, String> {
        let values: Vec<f32> = raw.split(':').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
        let valid = matches!(values.len(), 1 | 3) && values.iter().all(|v| v.is_finite() && (!positive || *v > 0.0));
        let kind = if positive { "positive numbers" } else { "numbers" };
        valid.then_some(values).ok_or_else(|| format!("{option}={raw:?}: expected 1 or 3 {kind} separated by ':'"))
    };
    for option in parts {
        match option.split_once('=') {
            Some(("size", pixels)) => {
                preset.size = pixels.parse().map_err(|_| format!("size {pixels:?} is not a number"))?
            }
            Some(("channels", "1")) => preset.channels = 1,
            Some(("channels", "3")) => preset.channels = 3,
            Some(("weights", "imagenet")) => {
                if !matches!(architecture, Architecture::Vgg16 | Architecture::Resnet18) {
                    return Err("weights=imagenet exists for vgg16 and resnet18 only".into());
                }
                preset.weights = Some(PresetWeights::Imagenet);
            }
            Some(("weights", path)) if !path.is_empty() => {
                preset.weights = Some(PresetWeights::File(PathBuf::from(path)))
            }
            Some(("mean", raw)) => preset.mean = values("mean", raw, false)?,
            Some(("std", raw)) => preset.std = values("std", raw, true)?,
            _ => {
                return Err(format!(
                    "unknown model option {option:?}; expected size=N, channels=1|3, weights=PATH|imagenet, mean=A:B:C or std=A:B:C"
                ));
            }
        }
    }
    Ok(preset)
}

/// `--webhook-secret` is unusable; the message never repeats it.
#[derive(Debug, thiserror::Error)]
#[error("--webhook-secret (ALPS_LS_WEBHOOK_SECRET) must be 16 to 1024 visible ASCII characters (no spaces)")]
pub struct SecretError;

/// Command line of `alps-label-studio`.
#[derive(Clone, Parser)]
#[command(
    name = "alps-label-studio",
    version,
    about = "Label Studio ML backend for ALPS: Label Studio's HTTP protocol in, alps-server gRPC out"
)]
pub struct Config {
    /// Address of the HTTP server Label Studio connects to (Label Studio's usual backend port is 9090).
    #[arg(long, env = "ALPS_LS_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,

    /// URL of the alps-server gRPC endpoint. `https://` (or `--core-tls-ca`) makes the link use TLS.
    #[arg(long, env = "ALPS_CORE_URL", default_value = "http://127.0.0.1:50051")]
    pub core_url: String,

    /// PEM CA bundle that verifies alps-server's TLS certificate. When set, the core link uses TLS
    /// (an `http://` --core-url is taken as `https://`); an `https://` --core-url needs it.
    #[arg(long, env = "ALPS_CORE_TLS_CA")]
    pub core_tls_ca: Option<PathBuf>,

    /// PEM certificate chain the adapter presents to alps-server (mutual TLS); needs
    /// --core-tls-client-key and --core-tls-ca.
    #[arg(long, env = "ALPS_CORE_TLS_CLIENT_CERT", requires_all = ["core_tls_client_key", "core_tls_ca"])]
    pub core_tls_client_cert: Option<PathBuf>,

    /// PEM private key of --core-tls-client-cert.
    #[arg(long, env = "ALPS_CORE_TLS_CLIENT_KEY", requires = "core_tls_client_cert")]
    pub core_tls_client_key: Option<PathBuf>,

    /// Bearer token sent as `authorization: Bearer <token>` on every call to alps-server (health
    /// checks included). Never logged.
    #[arg(long, env = "ALPS_CORE_TOKEN", hide_env_values = true)]
    pub core_token: Option<String>,

    /// PEM certificate chain for HTTPS on --listen (with --tls-key); unset = plain HTTP. The files
    /// are re-read when they change.
    #[arg(long, env = "ALPS_LS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "ALPS_LS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Secret that `POST /webhook` requires, in an `X-ALPS-Webhook-Secret: <secret>` or
    /// `Authorization: Bearer <secret>` header (add it to the webhook's headers in Label Studio).
    /// Requests with the configured Basic auth are accepted too (Label Studio's Start training
    /// button). Unset = `/webhook` is open.
    #[arg(long, env = "ALPS_LS_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Path prefix under which every route is served, for a backend URL such as
    /// `http://host:9090/alps` (Label Studio keeps the prefix). Empty = served at `/`.
    #[arg(long, env = "ALPS_LS_BASE_PATH", default_value = "", value_parser = parse_base_path)]
    pub base_path: String,

    /// Default meaning of the prediction score sent to Label Studio.
    #[arg(long, env = "ALPS_LS_SCORE_MODE", value_enum, default_value_t = ScoreMode::Confidence)]
    pub score_mode: ScoreMode,

    /// How often the adapter checks the core's gRPC health, in milliseconds. `/health` answers
    /// from the last result and never waits on the core.
    #[arg(long, env = "ALPS_LS_CORE_POLL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub core_poll_ms: u64,

    /// Models the adapter can serve, `NAME=ARCHITECTURE[,size=PIXELS][,channels=1|3][,weights=PATH]`
    /// (repeat the flag, or separate with `;` in the variable). The weights path is read by alps-server.
    #[arg(long = "model", env = "ALPS_LS_MODELS", value_delimiter = ';', value_parser = parse_model)]
    pub models: Vec<ModelPreset>,

    /// Model for Label Studio projects whose connection's `extra_params` names none. The built-in
    /// `small-cnn` (small_cnn, 32x32 RGB) is always available.
    #[arg(long, env = "ALPS_LS_DEFAULT_MODEL", default_value = BUILTIN_MODEL)]
    pub default_model: String,

    /// Label Studio's URL as the adapter reaches it (task media, labelled-task resync, model_version
    /// updates), e.g. `http://label-studio:8080`.
    #[arg(long, env = "LABEL_STUDIO_URL")]
    pub label_studio_url: Option<Url>,

    /// Label Studio API key: a personal access token (JWT) or a legacy token (40 hex digits).
    #[arg(long, env = "LABEL_STUDIO_API_KEY", hide_env_values = true)]
    pub label_studio_api_key: Option<String>,

    /// User name of optional HTTP Basic auth on every route except `/webhook`.
    #[arg(long, env = "BASIC_AUTH_USER", requires = "basic_auth_pass")]
    pub basic_auth_user: Option<String>,

    /// Password of the optional HTTP Basic auth.
    #[arg(long, env = "BASIC_AUTH_PASS", hide_env_values = true, requires = "basic_auth_user")]
    pub basic_auth_pass: Option<String>,

    /// Time `/predict` may take before the remaining tasks are answered as deferred, in seconds;
    /// must stay below Label Studio's `ML_TIMEOUT_PREDICT` (100 s by default).
    #[arg(long, env = "ALPS_LS_PREDICT_BUDGET_SECS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub predict_budget_secs: u64,

    /// Tasks per gRPC Predict call.
    #[arg(long, env = "ALPS_LS_PREDICT_CHUNK", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub predict_chunk: u32,

    /// Predict calls in flight per `/predict` request.
    #[arg(long, env = "ALPS_LS_PREDICT_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub predict_concurrency: u32,

    /// Predictions per bulk import call of the background pool scorer (Label Studio stores them
    /// 500 at a time).
    #[arg(long, env = "ALPS_LS_POOL_WRITE_CHUNK", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub pool_write_chunk: u32,

    /// Tasks per page when the background pool scorer lists a project's unlabelled tasks.
    #[arg(long, env = "ALPS_LS_POOL_PAGE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(10..=5000))]
    pub pool_page_size: u32,

    /// Scores kept in memory per project, so `/predict` answers at once for tasks already scored
    /// (about 40 bytes each).
    #[arg(long, env = "ALPS_LS_POOL_CACHE_TASKS", default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub pool_cache_tasks: u32,

    /// Media downloads in flight, all requests together.
    #[arg(long, env = "ALPS_LS_MEDIA_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub media_concurrency: u32,

    /// Largest image the adapter downloads, in MiB.
    #[arg(long, env = "ALPS_LS_MEDIA_MAX_MIB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub media_max_mib: u64,

    /// Time one image download may take, redirects and retries included, in seconds.
    #[arg(long, env = "ALPS_LS_MEDIA_TIMEOUT_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub media_timeout_secs: u64,

    /// Allow image URLs in task data that point at loopback, private or link-local addresses
    /// (Label Studio's own URL is always allowed).
    #[arg(long, env = "ALPS_LS_MEDIA_ALLOW_PRIVATE", default_value_t = false)]
    pub media_allow_private: bool,

    /// Retrain automatically after this many new or changed annotations of a project; 0 = only
    /// when Label Studio asks (Start training, or its own `min_annotations_to_start_training`).
    #[arg(long, env = "ALPS_LS_TRAIN_EVERY", default_value_t = 0)]
    pub train_every: u32,

    /// Fewest labelled tasks a project needs before a training run starts.
    #[arg(long, env = "ALPS_LS_MIN_TRAIN_LABELS", default_value_t = 10)]
    pub min_train_labels: u64,

    /// Passes over the labelled set per training run. The default suits the small labelled sets
    /// of active learning; 0 = alps-server's default.
    #[arg(long, env = "ALPS_LS_TRAIN_EPOCHS", default_value_t = 50)]
    pub train_epochs: u32,

    /// Adam learning rate of training runs; 0 = alps-server's default.
    #[arg(long, env = "ALPS_LS_TRAIN_LEARNING_RATE", default_value_t = 1e-3)]
    pub train_learning_rate: f32,

    /// Fraction of the labelled tasks held out to validate a training run, in [0, 0.5]; unset =
    /// alps-server's default. 0 trains on every label (then no accuracy guard can refuse to
    /// activate the new version).
    #[arg(long, env = "ALPS_LS_TRAIN_VALIDATION_FRACTION", value_parser = parse_fraction)]
    pub train_validation_fraction: Option<f32>,

    /// Training triggers within this many milliseconds are coalesced into one run.
    #[arg(long, env = "ALPS_LS_TRAIN_DEBOUNCE_MS", default_value_t = 10_000)]
    pub train_debounce_ms: u64,

    /// How often every known project's labelled set is re-read from Label Studio (webhooks are
    /// not retried, so a missed event is only caught this way), in seconds; 0 = never.
    #[arg(long, env = "ALPS_LS_RESYNC_INTERVAL_SECS", default_value_t = 900)]
    pub resync_interval_secs: u64,

    /// Update the Label Studio project's `model_version` when a new model version is active, so
    /// sorting by prediction score and uncertainty sampling follow it.
    #[arg(long, env = "ALPS_LS_SYNC_MODEL_VERSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub sync_model_version: bool,

    /// Log line format.
    #[arg(long, env = "ALPS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish before open
    /// connections are closed, in seconds.
    #[arg(long, env = "ALPS_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// The `--core-*` link settings.
    pub fn core_link(&self) -> crate::core_link::CoreLinkOptions {
        crate::core_link::CoreLinkOptions {
            tls_ca: self.core_tls_ca.clone(),
            tls_client: self.core_tls_client_cert.clone().zip(self.core_tls_client_key.clone()),
            token: self.core_token.clone(),
        }
    }

    /// `--webhook-secret`, checked here rather than by clap, whose errors would repeat the value.
    ///
    /// # Errors
    /// [`SecretError`] unless the secret is 16 to 1024 visible ASCII characters (it travels in an
    /// HTTP header).
    pub fn webhook_secret(&self) -> Result<Option<&str>, SecretError> {
        match self.webhook_secret.as_deref() {
            Some(secret) if !(16..=1024).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(SecretError)
            }
            secret => Ok(secret),
        }
    }

    /// Interval between core health checks.
    pub fn core_poll_interval(&self) -> Duration {
        Duration::from_millis(self.core_poll_ms)
    }

    /// See `--shutdown-grace-secs`.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The `--model` presets plus the built-in one (unless a preset reuses its name).
    pub fn model_presets(&self) -> Vec<ModelPreset> {
        let mut presets = self.models.clone();
        if !presets.iter().any(|preset| preset.name == BUILTIN_MODEL) {
            presets.push(ModelPreset::builtin());
        }
        presets
    }
}

fn parse_fraction(raw: &str) -> Result<f32, String> {
    match raw.parse::<f32>() {
        Ok(fraction) if (0.0..=0.5).contains(&fraction) => Ok(fraction),
        _ => Err(format!("{raw:?} is not a fraction in [0, 0.5]")),
    }
}

/// Accepts "" or "/prefix" (no trailing slash); "prefix/" and "/prefix/" are normalised.
fn parse_base_path(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.contains(['?', '#', ' ']) {
        return Err(format!("base path {raw:?} must be a plain URL path such as /alps"));
    }
    Ok(format!("/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_label_studio_conventions() {
        let config = Config::try_parse_from(["alps-label-studio"]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.core_url, "http://127.0.0.1:50051");
        assert_eq!(config.base_path, "");
        assert_eq!(config.score_mode, ScoreMode::Confidence);
        assert_eq!(config.core_poll_interval(), Duration::from_secs(2));
    }

    #[test]
    fn base_path_is_normalised() {
        assert_eq!(parse_base_path("alps/").unwrap(), "/alps");
        assert_eq!(parse_base_path("/a/b").unwrap(), "/a/b");
        assert_eq!(parse_base_path("/").unwrap(), "");
        assert!(parse_base_path("/a?b").is_err());
    }

    #[test]
    fn model_presets_parse_every_option() {
        let preset = parse_model("cars=resnet18,size=224,channels=3,weights=/m/r.safetensors").unwrap();
        assert_eq!(preset.name, "cars");
        assert_eq!(preset.architecture, Architecture::Resnet18);
        assert_eq!((preset.size, preset.channels), (224, 3));
        assert_eq!(preset.weights, Some(PresetWeights::File(PathBuf::from("/m/r.safetensors"))));
        assert_eq!(parse_model("d=mlp").unwrap().size, 0);
        let vgg = parse_model("vgg=vgg16,weights=imagenet,mean=0.5:0.4:0.3,std=0.2:0.2:0.25").unwrap();
        assert_eq!(vgg.weights, Some(PresetWeights::Imagenet));
        assert_eq!((vgg.mean, vgg.std), (vec![0.5, 0.4, 0.3], vec![0.2, 0.2, 0.25]));
        let local = parse_model("r=resnet18,weights=./imagenet").unwrap();
        assert_eq!(local.weights, Some(PresetWeights::File(PathBuf::from("./imagenet"))));
        assert_eq!(parse_model("g=mlp,channels=1,mean=0.1,std=0.3").unwrap().std, [0.3]);
        for bad in [
            "cars",
            "=mlp",
            "a b=mlp",
            "x=alexnet",
            "x=mlp,size=big",
            "x=mlp,channels=2",
            "x=mlp,colour=1",
            "x=small_cnn,weights=imagenet",
            "x=vgg16,mean=0.5:0.5",
            "x=vgg16,mean=a:b:c",
            "x=vgg16,std=0.2:0:0.2",
            "x=vgg16,std=",
        ] {
            assert!(parse_model(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_builtin_model_is_always_offered() {
        let config = Config::try_parse_from(["alps-label-studio", "--model", "d=mlp,size=8,channels=1"]).unwrap();
        let names: Vec<String> = config.model_presets().into_iter().map(|preset| preset.name).collect();
        assert_eq!(names, ["d", BUILTIN_MODEL]);
    }

    #[test]
    fn validation_fraction_is_checked() {
        let config = Config::try_parse_from(["alps-label-studio", "--train-validation-fraction", "0"]).unwrap();
        assert_eq!(config.train_validation_fraction, Some(0.0));
        for bad in ["0.6", "-0.1", "half"] {
            assert!(
                Config::try_parse_from(["alps-label-studio", "--train-validation-fraction", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn tls_and_secret_flags_are_checked() {
        let parse = |args: &[&str]| Config::try_parse_from([&["alps-label-studio"], args].concat());
        assert!(parse(&["--tls-cert", "c.pem"]).is_err(), "certificate without key");
        assert!(parse(&["--tls-key", "k.pem"]).is_err(), "key without certificate");
        assert!(
            parse(&["--core-tls-client-cert", "c.pem", "--core-tls-client-key", "k.pem"]).is_err(),
            "mTLS without CA"
        );
        let config = parse(&[
            "--core-tls-ca",
            "ca.pem",
            "--core-tls-client-cert",
            "c.pem",
            "--core-tls-client-key",
            "k.pem",
            "--core-token",
            "t0ken",
        ])
        .unwrap();
        let link = config.core_link();
        assert_eq!(link.tls_client, Some(("c.pem".into(), "k.pem".into())));
        assert_eq!(link.token.as_deref(), Some("t0ken"));
        for bad in ["short", "has a space in it somewhere", &"x".repeat(1025)] {
            let error = parse(&["--webhook-secret", bad]).unwrap().webhook_secret().unwrap_err();
            assert!(!error.to_string().contains(bad), "{error}");
        }
        let config = parse(&["--webhook-secret", "0123456789abcdef"]).unwrap();
        assert_eq!(config.webhook_secret().unwrap(), Some("0123456789abcdef"));
        assert_eq!(parse(&[]).unwrap().webhook_secret().unwrap(), None);
    }

    #[test]
    fn basic_auth_needs_both_halves() {
        assert!(Config::try_parse_from(["alps-label-studio", "--basic-auth-user", "u"]).is_err());
    }

    #[test]
    fn poll_interval_out_of_range_is_rejected() {
        let error = Config::try_parse_from(["alps-label-studio", "--core-poll-ms", "0"]).err().expect("rejected");
        assert!(error.to_string().contains("--core-poll-ms"), "{error}");
    }
}
