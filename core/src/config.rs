//! Server configuration: `clap` flags, each with an `ALPS_*` environment variable.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use alps_runtime::LogFormat;
use clap::{Args, Parser, Subcommand};

use crate::{engine::EngineConfig, models::preprocess::ImageLimits};

/// Longest period a flag in seconds takes: ten years (a longer one overflows time arithmetic).
const MAX_PERIOD_SECS: u64 = 10 * 365 * 24 * 3600;

/// Command line of `alps-server`.
#[derive(Debug, Parser)]
#[command(name = "alps-server", version, about = "ALPS: the Active-Learning Prediction Server (gRPC)")]
pub struct Cli {
    /// What to do; without a subcommand the server starts.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings (also used by `serve`).
    #[command(flatten)]
    pub server: ServerConfig,
}

/// A database URL (`--database-url`). It may hold a password, so its `Debug` output is
/// redacted: a configuration printed for debugging never shows it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Any text but empty; [`crate::store::postgres::PostgresCatalog::open`] parses it.
    ///
    /// # Errors
    /// An empty URL (an empty `ALPS_DATABASE_URL`), with what to do.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.trim().is_empty() {
            return Err(
                "is empty: unset ALPS_DATABASE_URL for the embedded catalogue, or give a postgres:// URL".into()
            );
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

/// Subcommands of `alps-server`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gRPC server (the default).
    Serve,
    /// Print the libtorch version, the devices libtorch sees and a tiny forward pass, then exit.
    SelfCheck,
    /// Manage bearer tokens (see `--auth-tokens-file`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Copy a data dir's catalogue (projects, labelled examples, model versions, training jobs)
    /// into PostgreSQL, verify it and exit. Idempotent; never overwrites a project the database
    /// holds differently. With `--object-store-url`, sample bytes and model weights are copied
    /// there too and checked; without it they stay in the data dir: serve it with
    /// `--data-dir DIR --database-url URL`. Stop the server that uses DIR first.
    Migrate {
        /// The data dir whose `alps.db` is copied.
        #[arg(long)]
        from_data_dir: PathBuf,
        /// The PostgreSQL database to copy into (see the server's `--database-url`).
        #[arg(long, env = "ALPS_DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrl::parse)]
        database_url: DatabaseUrl,
        /// See the server's `--database-ca-file`.
        #[arg(long, env = "ALPS_DATABASE_CA_FILE")]
        database_ca_file: Option<PathBuf>,
        /// The object store to copy sample bytes and model weights into (see the server's
        /// `--object-store-url`).
        #[arg(long, env = "ALPS_OBJECT_STORE_URL", value_parser = non_empty)]
        object_store_url: Option<String>,
    },
}

/// A flag's value that must not be empty (an empty environment variable is a mistake, not a
/// choice).
fn non_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("is empty: unset the variable or give a URL".into())
    } else {
        Ok(value.to_owned())
    }
}

/// `alps-server token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Draw a new token, append its SHA-256 (never the token) with its role and name to the
    /// tokens file, and print the token once on stdout.
    Create {
        /// What the token may do: predict < label < admin (each includes the ones before).
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// Who holds it, shown in the server's logs (1 to 128 characters from [A-Za-z0-9_.-]).
        #[arg(long)]
        name: String,
        /// The tokens file (created with mode 0600 if missing).
        #[arg(long, env = "ALPS_AUTH_TOKENS_FILE")]
        tokens_file: PathBuf,
    },
}

/// Settings of a running server.
#[derive(Clone, Debug, Args)]
pub struct ServerConfig {
    /// Address of the gRPC server (alps.v1, health, reflection).
    #[arg(long, env = "ALPS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory holding projects, labelled examples and model versions (created if missing).
    #[arg(long, env = "ALPS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// PostgreSQL database for the catalogue (projects, the example index, model versions,
    /// training jobs) instead of `<data-dir>/alps.db`:
    /// `postgres://user:password@host:port/database`. Sample bytes and model files stay in
    /// `--data-dir` unless `--object-store-url` is given. Without it, one server per database:
    /// it holds an advisory lock, and a second server on the same database refuses to start;
    /// with it, every server on the database is a replica of the others. Connections
    /// are plaintext unless the URL says `sslmode=require`, `verify-ca` or `verify-full`:
    /// then TLS, the server's certificate and host name always verified.
    #[arg(long, env = "ALPS_DATABASE_URL", hide_env_values = true, value_parser = DatabaseUrl::parse)]
    pub database_url: Option<DatabaseUrl>,

    /// PEM file of the CA certificates that sign the PostgreSQL server's certificate (e.g. a
    /// cloud provider's bundle), trusted instead of the system's roots; needs `sslmode=require`
    /// or `verify-full` in `--database-url`.
    #[arg(long, env = "ALPS_DATABASE_CA_FILE", requires = "database_url")]
    pub database_ca_file: Option<PathBuf>,

    /// Most PostgreSQL sessions this server reads through at once (1 to 64), opened as
    /// concurrent reads need them; besides them it holds one that writes, one that listens and
    /// one for garbage collection. Lower it where the database limits connections.
    #[arg(
        long,
        env = "ALPS_DATABASE_READ_SESSIONS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=64),
        requires = "database_url"
    )]
    pub database_read_sessions: u16,

    /// Object store for sample bytes and model weights, with `--database-url`:
    /// `s3://bucket/prefix` (credentials, region and endpoint from the standard AWS_*
    /// variables), `gs://bucket/prefix`, `az://container/prefix` or `file:///shared/path`.
    /// `--data-dir` then caches model versions. One catalogue per bucket and prefix.
    #[arg(long, env = "ALPS_OBJECT_STORE_URL", requires = "database_url", value_parser = non_empty)]
    pub object_store_url: Option<String>,

    /// Also load the heuristic plugins published under the object store's `plugins/` prefix,
    /// copied to every replica every 5 s. Whoever may write that prefix then runs code on every
    /// replica: grant it as you would a deployment.
    #[arg(long, env = "ALPS_PUBLISHED_PLUGINS", requires = "object_store_url")]
    pub published_plugins: bool,

    /// Directory of heuristic plugins (`*.so`). Default: the built-in plugins shipped beside the
    /// `alps-server` binary (`<binary dir>/plugins`, or the binary's own directory in a cargo
    /// build, where the built-in cdylib is placed).
    #[arg(long, env = "ALPS_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// Directory that model files named in a project (`weights_path`, `torchscript_path`) must
    /// lie in, symlinks resolved; UploadModelFile stores files here. Default: `<data-dir>/imports`.
    #[arg(long, env = "ALPS_MODEL_ROOT")]
    pub model_root: Option<PathBuf>,

    /// Largest model file read or uploaded, in MiB.
    #[arg(long, env = "ALPS_MAX_MODEL_FILE_MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_model_file_mib: u64,

    /// Where published pretrained weights (`pretrained: IMAGENET`) are fetched from: a base URL
    /// (`http://` or `https://`; the published file names, e.g. `resnet18-f37072fd.pth`, are
    /// appended) or a local directory holding those files, for sites without internet access.
    /// Default: torchvision's `https://download.pytorch.org/models/`. Files are verified against
    /// their pinned sha256 and cached in `<data-dir>/weights-cache`.
    #[arg(long, env = "ALPS_WEIGHTS_MIRROR", value_parser = crate::models::pretrained::Source::parse)]
    pub weights_mirror: Option<crate::models::pretrained::Source>,

    /// Replaces the pinned sha256 of a published file, `ARCHITECTURE=SHA256` (`vgg16`,
    /// `resnet18`; repeat or separate with commas): for a mirror that re-publishes a file you
    /// have checked yourself (e.g. re-saved by a newer PyTorch). Logged as a warning at start.
    #[arg(long, env = "ALPS_WEIGHTS_PIN", value_delimiter = ',', value_parser = crate::models::pretrained::parse_pin)]
    pub weights_pin: Vec<(crate::projects::Architecture, String)>,

    /// Longest CreateProject waits for published weights to be fetched, in seconds; after it the
    /// call answers UNAVAILABLE and the download goes on in the background (VGG16 is 528 MB).
    #[arg(long, env = "ALPS_WEIGHTS_FETCH_WAIT_SECS", default_value_t = 300)]
    pub weights_fetch_wait_secs: u64,

    /// File of bearer tokens (SHA-256 hashes with a role and a name; see `alps-server token
    /// create`), re-read when it changes. Without it, calls are not authenticated, which the
    /// server allows only on a loopback `--listen` address or with `--insecure-no-auth`.
    #[arg(long, env = "ALPS_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Serve without authentication on a non-loopback address (a warning is logged at start).
    /// Only for networks where every client is trusted.
    #[arg(long, env = "ALPS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// PEM certificate chain for TLS on the gRPC listener (with `--tls-key`); re-read when it
    /// changes.
    #[arg(long, env = "ALPS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "ALPS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: with it, clients must present a certificate signed by one of them
    /// (mutual TLS).
    #[arg(long, env = "ALPS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address of the HTTP server of the Open Inference Protocol's REST mirror (`/v2/...`):
    /// same tokens and TLS as the gRPC port.
    #[arg(long, env = "ALPS_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    pub http_listen: SocketAddr,

    /// Address of the HTTP server that exposes Prometheus metrics at `/metrics`.
    #[arg(long, env = "ALPS_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// Log line format.
    #[arg(long, env = "ALPS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Largest accepted gRPC request message and REST request body, in MiB (a `[N, C, K]` f32
    /// tensor takes `4·N·C·K` bytes: 100,000 × 10 × 20 is 76 MiB).
    #[arg(long, env = "ALPS_MAX_MESSAGE_MIB", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=2047))]
    pub max_message_mib: u32,

    /// Device for inference: `auto` (the first CUDA device when present, else the CPU), `cpu`
    /// or `cuda`.
    #[arg(long, env = "ALPS_DEVICE", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,

    /// Work per batched forward pass, in samples × MC iterations (dynamic batching merges
    /// requests of the same project up to this); 0 disables batching.
    #[arg(long, env = "ALPS_WORK_BUDGET", default_value_t = 8192)]
    pub work_budget: usize,

    /// Longest a request waits for others to batch with, in milliseconds.
    #[arg(long, env = "ALPS_MAX_BATCH_WAIT_MS", default_value_t = 2)]
    pub max_batch_wait_ms: u64,

    /// Samples admitted at once across all requests; beyond, requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ALPS_MAX_IN_FLIGHT_SAMPLES", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_samples: u32,

    /// Memory for models (parameters and buffers), in MiB, shared by inference and training:
    /// what training holds (a running job's model, gradients, optimiser state and inputs; the
    /// model kept for the project's next job) is taken off it, and the least recently used
    /// loaded models are evicted beyond the rest and reload on their next request.
    #[arg(long, env = "ALPS_MODEL_CACHE_MIB", default_value_t = 4096)]
    pub model_cache_mib: usize,

    /// Replicas: the most the local copies of model versions (in `<data-dir>/models`, fetched
    /// from the object store) may hold, in MiB; after a fetch, the least recently used copies
    /// go, except every project's active version and the version its head builds on.
    #[arg(long, env = "ALPS_VERSION_CACHE_MIB", default_value_t = 20 * 1024)]
    pub version_cache_mib: u64,

    /// Largest encoded image accepted, in bytes.
    #[arg(long, env = "ALPS_MAX_IMAGE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_image_bytes: usize,

    /// Largest decoded image accepted, in pixels (width × height).
    #[arg(long, env = "ALPS_MAX_IMAGE_PIXELS", default_value_t = 50_000_000)]
    pub max_image_pixels: u64,

    /// Largest pool a batch heuristic (batch_bald, power_bald, typiclust, coreset, badge) ranks
    /// at once, in f32 values (4 bytes each): probabilities N·C·K, plus embeddings N·D and the
    /// labelled set's L·D for heuristics that need them. A 100,000-item VGG16 pool (D = 4,096)
    /// with typiclust needs about 430 million (1.7 GB).
    #[arg(long, env = "ALPS_MAX_RANK_POOL_VALUES", default_value_t = 64 * 1024 * 1024)]
    pub max_rank_pool_values: usize,

    /// Training jobs that run at once, across all projects; further jobs stay queued and take
    /// free slots first come, first served. Each running job holds a model, its optimiser state
    /// and its examples' embeddings, and shares the device's cores with inference.
    #[arg(long, env = "ALPS_TRAINING_JOBS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub training_jobs: u16,

    /// CPU threads each running training job may use for libtorch's intra-op work (matrix
    /// products, convolutions); inference keeps its own count. Unset: as many as inference
    /// (one per physical core unless OMP_NUM_THREADS says otherwise). Fewer leave cores to
    /// Predict while a job trains, but cut its tail latency only with OMP_WAIT_POLICY=PASSIVE
    /// in the server's environment (see BENCHMARKS.md). With `--training-jobs` N, training
    /// uses up to N times this.
    #[arg(long, env = "ALPS_TRAINING_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub training_threads: Option<u16>,

    /// Replicas: how long a replica's lease on training a project lasts unless renewed (it is
    /// renewed every third of it while a job runs), in seconds. Another replica takes the
    /// project's training over (failing the job that was running and queueing it again) this
    /// long after the replica stopped, or was paused or cut off from the database.
    #[arg(long, env = "ALPS_TRAINING_LEASE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub training_lease_secs: u64,

    /// Auto-activate policy: a newly trained version becomes active only if its validation
    /// accuracy is at most this much (in [0, 1]) below the active version's. Unset: always.
    #[arg(long, env = "ALPS_AUTO_ACTIVATE_MAX_ACCURACY_DROP", value_parser = accuracy_drop)]
    pub auto_activate_max_accuracy_drop: Option<f32>,

    /// How often unreferenced sample blobs are removed, in seconds; 0 = never. A blob is
    /// unreferenced once no example of any project (deleted projects included) names it.
    #[arg(long, env = "ALPS_GC_INTERVAL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=MAX_PERIOD_SECS))]
    pub gc_interval_secs: u64,

    /// How long an unreferenced blob is kept after its last write, in seconds (0 = removed at
    /// the next pass): a margin on top of the pins that keep a blob from its write until the
    /// example naming it is committed.
    #[arg(long, env = "ALPS_GC_GRACE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=MAX_PERIOD_SECS))]
    pub gc_grace_secs: u64,

    /// Longest a client's gRPC connection lives, in seconds; 0 = no limit. Then the server sends
    /// HTTP/2 GOAWAY: calls in flight finish, and the client opens a new connection, which a
    /// load balancer (or a client balancing over a headless Service's addresses) may send to
    /// another replica. Without it a long-lived client stays on the replica it first reached.
    #[arg(long, env = "ALPS_MAX_CONNECTION_AGE_SECS", default_value_t = 300)]
    pub max_connection_age_secs: u64,

    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish before open
    /// connections are closed, in seconds (keep it below Kubernetes'
    /// `terminationGracePeriodSeconds`, default 30).
    #[arg(long, env = "ALPS_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
}

fn accuracy_drop(raw: &str) -> Result<f32, String> {
    match raw.parse::<f32>() {
        Ok(drop) if (0.0..=1.0).contains(&drop) => Ok(drop),
        _ => Err(format!("{raw:?} is not an accuracy difference in [0, 1]")),
    }
}

/// `--device` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0.
    Cuda,
}

impl ServerConfig {
    /// The engine settings these flags describe; trained versions are under `models_dir`.
    pub fn engine(
        &self,
        models_dir: crate::store::ModelsDir,
        model_files: crate::models::files::ModelFiles,
    ) -> EngineConfig {
        EngineConfig {
            work_budget: self.work_budget,
            max_wait: Duration::from_millis(self.max_batch_wait_ms),
            max_in_flight_samples: self.max_in_flight_samples as usize,
            memory: crate::memory::MemoryBudget::new(self.model_cache_mib * 1024 * 1024),
            image_limits: ImageLimits { max_encoded_bytes: self.max_image_bytes, max_pixels: self.max_image_pixels },
            device: match self.device {
                DeviceChoice::Auto => crate::engine::device::preferred_device(),
                DeviceChoice::Cpu => tch::Device::Cpu,
                DeviceChoice::Cuda => tch::Device::Cuda(0),
            },
            models_dir,
            model_files,
        }
    }

    /// See `--training-threads`: its value, else `intra_op_threads` (inference's).
    pub fn training_threads_per_job(&self, intra_op_threads: usize) -> usize {
        self.training_threads.map_or(intra_op_threads, usize::from)
    }

    /// See `--max-message-mib`, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_mib as usize * 1024 * 1024
    }

    /// See `--max-model-file-mib`, in bytes.
    pub fn max_model_file_bytes(&self) -> u64 {
        self.max_model_file_mib.saturating_mul(1024 * 1024)
    }

    /// The TLS files, when `--tls-cert` and `--tls-key` are given.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// See `--weights-fetch-wait-secs`.
    pub fn weights_fetch_wait(&self) -> Duration {
        Duration::from_secs(self.weights_fetch_wait_secs)
    }

    /// See `--shutdown-grace-secs`.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The plugin directory to use: `--plugin-dir` if given, else the built-in one next to
    /// `executable` (see the flag's help).
    pub fn resolved_plugin_dir(&self, executable: &Path) -> PathBuf {
        if let Some(dir) = &self.plugin_dir {
            return dir.clone();
        }
        let exe_dir = executable.parent().unwrap_or(Path::new("."));
        let packaged = exe_dir.join("plugins");
        if packaged.is_dir() { packaged } else { exe_dir.to_path_buf() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("alps-server").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        assert_eq!(cli.server.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(cli.server.data_dir, PathBuf::from("./data"));
        assert_eq!(cli.server.log_format, LogFormat::Text);
    }

    #[test]
    fn training_threads_default_to_inference_s() {
        let defaults = parse(&[]).server;
        assert_eq!([16, 2, 1].map(|cores| defaults.training_threads_per_job(cores)), [16, 2, 1]);
        assert_eq!(parse(&["--training-threads", "3"]).server.training_threads_per_job(16), 3);
        for refused in ["0", "1025", "-1"] {
            let args = ["alps-server", "--training-threads", refused];
            assert!(Cli::try_parse_from(args).is_err(), "{refused} was accepted");
        }
    }

    #[test]
    fn a_database_url_is_kept_whole_and_never_printed() {
        let url = "postgres://alps:s3cret@db:5432/alps";
        let cli = parse(&["--database-url", url]);
        assert_eq!(cli.server.database_url.as_ref().map(DatabaseUrl::expose), Some(url));
        let printed = format!("{cli:?}");
        assert!(printed.contains("DatabaseUrl(..)") && !printed.contains("s3cret"), "{printed}");
        let migrate = parse(&["migrate", "--from-data-dir", "d", "--database-url", url]);
        assert!(!format!("{migrate:?}").contains("s3cret"));
        let empty = Cli::try_parse_from(["alps-server", "--database-url", ""]).unwrap_err().to_string();
        assert!(empty.contains("unset ALPS_DATABASE_URL for the embedded catalogue"), "{empty}");
    }

    #[test]
    fn the_object_store_the_database_ca_and_read_sessions_need_a_database() {
        let cli = parse(&["--database-url", "postgres://db/alps", "--object-store-url", "s3://b/p"]);
        assert_eq!(cli.server.object_store_url.as_deref(), Some("s3://b/p"));
        assert_eq!(cli.server.database_read_sessions, 4, "the default");
        let cli = parse(&["--database-url", "postgres://db/alps", "--database-read-sessions", "16"]);
        assert_eq!(cli.server.database_read_sessions, 16);
        for sessions in ["0", "65", "many"] {
            let args = ["alps-server", "--database-url", "postgres://db/alps", "--database-read-sessions", sessions];
            let error = Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(error.contains("--database-read-sessions"), "{sessions}: {error}");
        }
        for alone in
            [["--object-store-url", "s3://b/p"], ["--database-ca-file", "ca.pem"], ["--database-read-sessions", "2"]]
        {
            let error = Cli::try_parse_from(std::iter::once("alps-server").chain(alone)).unwrap_err().to_string();
            assert!(error.contains("--database-url"), "{error}");
        }
        let args = ["alps-server", "--database-url", "postgres://db/alps", "--object-store-url", " "];
        let empty = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
    }

    #[test]
    fn explicit_plugin_dir_wins() {
        let cli = parse(&["--plugin-dir", "/opt/plugins"]);
        let dir = cli.server.resolved_plugin_dir(Path::new("/usr/bin/alps-server"));
        assert_eq!(dir, PathBuf::from("/opt/plugins"));
    }

    #[test]
    fn default_plugin_dir_prefers_a_plugins_folder_beside_the_binary() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("alps-server");
        let cli = parse(&[]);
        assert_eq!(cli.server.resolved_plugin_dir(&exe), root.path());
        std::fs::create_dir(root.path().join("plugins")).unwrap();
        assert_eq!(cli.server.resolved_plugin_dir(&exe), root.path().join("plugins"));
    }

    #[test]
    fn weights_mirror_and_pins_parse() {
        let cli = parse(&[
            "--weights-mirror",
            "http://mirror:8080/tv",
            "--weights-pin",
            &format!("resnet18={}", "0".repeat(64)),
        ]);
        assert_eq!(
            cli.server.weights_mirror,
            Some(crate::models::pretrained::Source::Url("http://mirror:8080/tv/".into()))
        );
        assert_eq!(cli.server.weights_pin, [(crate::projects::Architecture::Resnet18, "0".repeat(64))]);
        assert_eq!(parse(&[]).server.weights_fetch_wait(), Duration::from_secs(300));
        assert!(Cli::try_parse_from(["alps-server", "--weights-pin", "resnet18=12"]).is_err());
    }

    #[test]
    fn malformed_listen_address_is_rejected_by_the_parser() {
        let error = Cli::try_parse_from(["alps-server", "--listen", "localhost"]).unwrap_err();
        assert!(error.to_string().contains("--listen"), "{error}");
    }
}
