//! Published pretrained weights: torchvision's ImageNet files for the built-in VGG16 and
//! ResNet-18, each pinned by its sha256, fetched once into `<data-dir>/weights-cache` and read
//! there (converted from PyTorch's format by [`super::pth`]) whenever a model is built.
//!
//! Files come from torchvision's standard location ([`DEFAULT_BASE_URL`]) or from a mirror
//! (`--weights-mirror`): another base URL, or a local directory holding the same file names (for
//! sites without internet access). A download is written to a `.partial-*` file in the cache,
//! hashed while it is written, and renamed to its final name only when the digest is the pinned
//! one, so the cache never holds a half-written or foreign file; a failed fetch caches nothing
//! and is tried again on the next request. One download runs per file however many requests
//! wait for it, and it goes on when a waiting request gives up.
//!
//! Cache names are `<sha256>.pth`: built from the pinned digest, never from client input.

use std::{
    collections::HashMap,
    fmt,
    fs::File,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use sha2::{Digest, Sha256};
use tch::Tensor;
use tokio::sync::watch;

use crate::projects::{Architecture, PretrainedWeights};

/// torchvision's download location for its published weights.
pub const DEFAULT_BASE_URL: &str = "https://download.pytorch.org/models/";

/// Longest wait for a connection to a mirror.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a download (a stalled mirror).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one download attempt may take (528 MB at 150 kB/s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Attempts per fetch for transient failures (connection refused or reset, timeouts, HTTP 5xx
/// and 429), with exponential backoff from [`FIRST_RETRY_DELAY`].
const ATTEMPTS: usize = 3;
/// Delay before the first retry; it doubles for each one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Prefix of files being written into the cache; removed when the cache is opened.
const PARTIAL_PREFIX: &str = ".partial-";

/// A published weights file: its name at the download location and its full sha256 (hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedFile {
    /// File name, e.g. `resnet18-f37072fd.pth` (torchvision puts the digest's first 8 hex
    /// digits in it).
    pub file_name: &'static str,
    /// The full sha256 of the file, lowercase hex.
    pub sha256: &'static str,
}

/// The published file of `weights` for `architecture`, if there is one: torchvision's
/// `VGG16_Weights.IMAGENET1K_V1` and `ResNet18_Weights.IMAGENET1K_V1`.
pub fn published(architecture: Architecture, weights: PretrainedWeights) -> Option<PublishedFile> {
    match (architecture, weights) {
        (Architecture::Vgg16, PretrainedWeights::Imagenet) => Some(PublishedFile {
            file_name: "vgg16-397923af.pth",
            sha256: "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        }),
        (Architecture::Resnet18, PretrainedWeights::Imagenet) => Some(PublishedFile {
            file_name: "resnet18-f37072fd.pth",
            sha256: "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
        }),
        _ => None,
    }
}

/// Where published files are fetched from: a base URL (`http://` or `https://`, file names are
/// appended) or a local directory holding the files under their published names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A base URL ending in `/`.
    Url(String),
    /// A directory on the server's machine.
    Directory(PathBuf),
}

impl Source {
    /// Parses `--weights-mirror`: a value starting with `http://` or `https://` is a base URL
    /// (a missing final `/` is added), anything else a directory.
    ///
    /// # Errors
    /// A message for an empty value or a URL with a query or fragment.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("empty --weights-mirror".into());
        }
        if raw.starts_with("http://") || raw.starts_with("https://") {
            if raw.contains(['?', '#']) {
                return Err(format!("{raw:?}: a base URL takes no query or fragment"));
            }
            let base = if raw.ends_with('/') { raw.to_owned() } else { format!("{raw}/") };
            Ok(Self::Url(base))
        } else {
            Ok(Self::Directory(PathBuf::from(raw)))
        }
    }

    /// Where `file_name` is, for downloads and the server's log.
    pub fn location(&self, file_name: &str) -> String {
        match self {
            Self::Url(base) => format!("{base}{file_name}"),
            Self::Directory(dir) => dir.join(file_name).display().to_string(),
        }
    }

    /// Where `file_name` is, for messages to clients: a URL without its user and password, or the
    /// file name alone for a directory (the server's paths stay in its log).
    pub fn shown(&self, file_name: &str) -> String {
        match self {
            Self::Url(_) => match reqwest::Url::parse(&self.location(file_name)) {
                Ok(mut url) => {
                    // Both only fail for URLs that cannot carry credentials at all.
                    let _ = url.set_username("");
                    let _ = url.set_password(None);
                    url.to_string()
                }
                Err(_) => file_name.to_owned(),
            },
            Self::Directory(_) => format!("{file_name} in the --weights-mirror directory"),
        }
    }
}

/// Parses one `--weights-pin ARCHITECTURE=SHA256` (`vgg16` or `resnet18`, 64 hex digits).
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_pin(raw: &str) -> Result<(Architecture, String), String> {
    let (name, digest) = raw.split_once('=').ok_or_else(|| format!("{raw:?}: expected ARCHITECTURE=SHA256"))?;
    let architecture = match name {
        "vgg16" => Architecture::Vgg16,
        "resnet18" => Architecture::Resnet18,
        other => return Err(format!("{other:?}: pins exist for vgg16 and resnet18")),
    };
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{digest:?} is not a sha256 (64 hex digits)"));
    }
    Ok((architecture, digest.to_ascii_lowercase()))
}

/// Why published weights are not available. Messages name the file's URL (or mirror path) and
/// digests, never the server's cache path; I/O details go to the log under a request id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PretrainedError {
    /// The architecture has no such published weights.
    #[error("no published {weights:?} weights for {architecture:?}")]
    NotPublished {
        /// The architecture.
        architecture: Architecture,
        /// The weights asked for.
        weights: PretrainedWeights,
    },
    /// The mirror could not be reached, failed (HTTP 5xx) or stalled: worth retrying later.
    #[error("cannot fetch {url}: {reason}; nothing was cached, the next request tries again")]
    Unavailable {
        /// What was fetched.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The download is still running after the request's wait (`--weights-fetch-wait-secs`).
    #[error("still fetching {url}; it goes on in the background, try again in a while")]
    Pending {
        /// What is being fetched.
        url: String,
    },
    /// The mirror refused the file (not found, HTTP 4xx) or it exceeds the size limit.
    #[error("cannot fetch {url}: {reason}")]
    Refused {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The mirror served other bytes than the pinned file.
    #[error("{url} is not the pinned file: sha256 {actual}, expected {expected}; nothing was cached")]
    Mismatch {
        /// What was fetched.
        url: String,
        /// The pinned digest.
        expected: String,
        /// The digest of what was served.
        actual: String,
    },
    /// A model was built before its weights were fetched (CreateProject fetches them).
    #[error("{file} is not in the weights cache yet; CreateProject fetches it")]
    NotCached {
        /// The published file name.
        file: String,
    },
    /// The cached file cannot be used (not a state dict, or its digest changed on disk).
    #[error("{file}: {message}")]
    Unusable {
        /// The published file name.
        file: String,
        /// Why.
        message: String,
    },
    /// The cache could not be written or read; the message carries a request id for the log.
    #[error("{0}")]
    Internal(String),
}

impl PretrainedError {
    /// Whether another attempt may succeed soon (connection failures, HTTP 5xx and 429).
    fn transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

type Outcome = Option<Result<PathBuf, PretrainedError>>;

struct Inner {
    dir: PathBuf,
    source: Source,
    pins: HashMap<Architecture, String>,
    max_bytes: u64,
    client: reqwest::Client,
    in_flight: Mutex<HashMap<&'static str, watch::Receiver<Outcome>>>,
}

/// The weights cache (`<data-dir>/weights-cache`) and the fetcher that fills it. Cheap to clone.
#[derive(Clone)]
pub struct WeightsCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for WeightsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightsCache").field("dir", &self.inner.dir).field("source", &self.inner.source).finish()
    }
}

impl WeightsCache {
    /// The cache in `dir` (created if missing; leftovers of interrupted downloads are removed),
    /// fetching from `source` (default: torchvision's location), files at most `max_bytes`
    /// long, with `pins` replacing the published digests of some architectures.
    ///
    /// # Errors
    /// The I/O error if `dir` cannot be created or listed.
    pub fn open(
        dir: PathBuf,
        source: Option<Source>,
        pins: HashMap<Architecture, String>,
        max_bytes: u64,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        // reqwest's rustls needs a process-wide provider; an already installed one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("alps-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(io::Error::other)?;
        let source = source.unwrap_or_else(|| Source::Url(DEFAULT_BASE_URL.into()));
        for (architecture, digest) in &pins {
            tracing::warn!(?architecture, sha256 = %digest, "--weights-pin replaces the published digest");
        }
        let inner = Inner { dir, source, pins, max_bytes, client, in_flight: Mutex::new(HashMap::new()) };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The published file and the digest it must have (a `--weights-pin`, else the published
    /// one).
    fn file(
        &self,
        architecture: Architecture,
        weights: PretrainedWeights,
    ) -> Result<(PublishedFile, String), PretrainedError> {
        let file = published(architecture, weights).ok_or(PretrainedError::NotPublished { architecture, weights })?;
        let digest = self.inner.pins.get(&architecture).cloned().unwrap_or_else(|| file.sha256.to_owned());
        Ok((file, digest))
    }

    fn cache_path(&self, digest: &str) -> PathBuf {
        self.inner.dir.join(format!("{digest}.pth"))
    }

    /// Makes sure the file is in the cache, fetching it if needed (one download per file,
    /// shared by every caller; it goes on if this caller is dropped). Waits at most `wait`.
    ///
    /// # Errors
    /// [`PretrainedError::Pending`] after `wait`; the fetch's own error otherwise.
    pub async fn ensure(
        &self,
        architecture: Architecture,
        weights: PretrainedWeights,
        wait: Duration,
    ) -> Result<(), PretrainedError> {
        let (file, digest) = self.file(architecture, weights)?;
        if self.cache_path(&digest).is_file() {
            return Ok(());
        }
        let mut outcome = {
            let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match in_flight.get(file.file_name) {
                Some(receiver) => receiver.clone(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    in_flight.insert(file.file_name, receiver.clone());
                    let cache = self.clone();
                    tokio::spawn(async move {
                        let result = cache.fetch(file, &digest).await;
                        match &result {
                            Ok(_) => tracing::info!(file = file.file_name, "pretrained weights cached"),
                            Err(error) => {
                                tracing::warn!(file = file.file_name, %error, "fetching pretrained weights failed")
                            }
                        }
                        cache
                            .inner
                            .in_flight
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(file.file_name);
                        let _ = sender.send(Some(result));
                    });
                    receiver
                }
            }
        };
        let url = self.inner.source.shown(file.file_name);
        match tokio::time::timeout(wait, outcome.wait_for(Option::is_some)).await {
            Err(_) => Err(PretrainedError::Pending { url }),
            Ok(Err(_)) => Err(PretrainedError::Unavailable { url, reason: "the download stopped".into() }),
            Ok(Ok(result)) => result.clone().unwrap_or(Err(PretrainedError::Pending { url })).map(drop),
        }
    }

    /// Fetches `file` into the cache with retries for transient failures.
    async fn fetch(&self, file: PublishedFile, digest: &str) -> Result<PathBuf, PretrainedError> {
        let path = self.cache_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let (location, url) = (self.inner.source.location(file.file_name), self.inner.source.shown(file.file_name));
        tracing::info!(url = %location, "fetching pretrained weights");
        let attempt = || async {
            let mut partial = tempfile::Builder::new()
                .prefix(PARTIAL_PREFIX)
                .tempfile_in(&self.inner.dir)
                .map_err(|e| internal("creating a file in the weights cache", &e))?;
            let actual = match &self.inner.source {
                Source::Url(_) => self.download(&location, &url, partial.as_file_mut()).await?,
                Source::Directory(dir) => {
                    let (source, max) = (dir.join(file.file_name), self.inner.max_bytes);
                    let mut target =
                        partial.reopen().map_err(|e| internal("opening a file in the weights cache", &e))?;
                    let url = url.clone();
                    tokio::task::spawn_blocking(move || copy_local(&source, &url, &mut target, max))
                        .await
                        .map_err(|e| internal("copying from the mirror directory", &e))??
                }
            };
            if actual != digest {
                return Err(PretrainedError::Mismatch { url: url.clone(), expected: digest.to_owned(), actual });
            }
            partial.as_file().sync_all().map_err(|e| internal("writing the weights cache", &e))?;
            partial.persist(&path).map_err(|e| internal("renaming into the weights cache", &e.error))?;
            Ok(path.clone())
        };
        attempt
            .retry(ExponentialBuilder::default().with_min_delay(FIRST_RETRY_DELAY).with_max_times(ATTEMPTS - 1))
            .when(PretrainedError::transient)
            .notify(|error, delay| tracing::info!(%error, ?delay, "retrying the weights download"))
            .await
    }

    /// Downloads `location` into `out`, at most `max_bytes`, returning the sha256 (hex) of the
    /// bytes; errors name it as `url` ([`Source::shown`]).
    async fn download(&self, location: &str, url: &str, out: &mut File) -> Result<String, PretrainedError> {
        let unavailable = |reason: String| PretrainedError::Unavailable { url: url.to_owned(), reason };
        let network = |error: reqwest::Error| {
            unavailable(if error.is_timeout() {
                "the mirror stopped answering (timeout)".into()
            } else if error.is_connect() {
                "cannot connect".into()
            } else {
                "the connection failed".into()
            })
        };
        let mut response = self.inner.client.get(location).send().await.map_err(network)?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(PretrainedError::Refused { url: url.to_owned(), reason: format!("HTTP {status}") });
        }
        let too_large = || PretrainedError::Refused {
            url: url.to_owned(),
            reason: format!("larger than {} MiB (--max-model-file-mib)", self.inner.max_bytes / (1024 * 1024)),
        };
        if response.content_length().is_some_and(|length| length > self.inner.max_bytes) {
            return Err(too_large());
        }
        let (mut hasher, mut total) = (Sha256::new(), 0u64);
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            total += chunk.len() as u64;
            if total > self.inner.max_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(|e| internal("writing the weights cache", &e))?;
        }
        Ok(hex(&hasher.finalize()))
    }

    /// Fetches, in the background, every file `wanted` names that is not cached yet (at start,
    /// for stored projects); failures are logged and retried by the next request.
    pub fn prefetch(&self, wanted: impl IntoIterator<Item = (Architecture, PretrainedWeights)>) {
        for (architecture, weights) in wanted {
            let cache = self.clone();
            tokio::spawn(async move {
                if let Err(error) = cache.ensure(architecture, weights, ATTEMPT_TIMEOUT).await {
                    tracing::warn!(%error, "pretrained weights of a stored project are not available");
                }
            });
        }
    }

    /// Reads the cached file (at most the size limit), checks its digest again and converts it
    /// to named tensors. torchvision's variable names are the built-in architectures' own, so the
    /// conversion keeps every name; BatchNorm's `num_batches_tracked` counters, which ALPS never
    /// uses, are dropped.
    ///
    /// # Errors
    /// [`PretrainedError::NotCached`] before the file was fetched; [`PretrainedError::Unusable`]
    /// for a file that changed on disk (it is removed, so the next request fetches it again) or
    /// is not a state dict.
    pub fn load(
        &self,
        architecture: Architecture,
        weights: PretrainedWeights,
    ) -> Result<(&'static str, HashMap<String, Tensor>), PretrainedError> {
        let (file, digest) = self.file(architecture, weights)?;
        let path = self.cache_path(&digest);
        let unusable = |message: String| PretrainedError::Unusable { file: file.file_name.into(), message };
        let bytes = match read_bounded(&path, self.inner.max_bytes) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(PretrainedError::NotCached { file: file.file_name.into() });
            }
            Err(error) => return Err(internal("reading the weights cache", &error)),
        };
        let actual = hex(&Sha256::digest(&bytes));
        if actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(unusable(format!("the cached copy changed on disk (sha256 {actual}); it is fetched again")));
        }
        let tensors = super::pth::read_state_dict(&bytes).map_err(|e| unusable(e.to_string()))?;
        Ok((file.file_name, tensors.into_iter().filter(|(name, _)| !name.ends_with("num_batches_tracked")).collect()))
    }
}

/// Copies the mirror file `source` into `out` (at most `max` bytes), returning its sha256.
fn copy_local(source: &Path, url: &str, out: &mut File, max: u64) -> Result<String, PretrainedError> {
    let refused = |reason: &str| PretrainedError::Refused { url: url.to_owned(), reason: reason.to_owned() };
    let mut input = match File::open(source) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(refused("no such file in the mirror")),
        Err(error) => return Err(internal("reading the mirror directory", &error)),
    };
    let metadata = input.metadata().map_err(|e| internal("reading the mirror directory", &e))?;
    if !metadata.is_file() {
        return Err(refused("not a regular file"));
    }
    let (mut hasher, mut total, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = input.read(&mut buffer).map_err(|e| internal("reading the mirror directory", &e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return Err(refused(&format!("larger than {} MiB (--max-model-file-mib)", max / (1024 * 1024))));
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(|e| internal("writing the weights cache", &e))?;
    }
    Ok(hex(&hasher.finalize()))
}

/// Reads a regular file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() > max {
        return Err(io::Error::other("not a regular file within the size limit"));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other("grew past the size limit"));
    }
    Ok(bytes)
}

fn internal(what: &str, detail: &dyn fmt::Display) -> PretrainedError {
    PretrainedError::Internal(crate::errors::logged(what, detail))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, mirror: &Path, pins: HashMap<Architecture, String>) -> WeightsCache {
        WeightsCache::open(dir.to_owned(), Some(Source::Directory(mirror.to_owned())), pins, 1 << 20).unwrap()
    }

    #[test]
    fn mirrors_and_pins_parse() {
        assert_eq!(Source::parse("http://m:8000/tv").unwrap(), Source::Url("http://m:8000/tv/".into()));
        assert_eq!(Source::parse("/srv/weights").unwrap(), Source::Directory("/srv/weights".into()));
        assert!(Source::parse("https://m/?x").is_err() && Source::parse("").is_err());
        // Messages never carry a mirror's credentials or the server's directory.
        let secret = Source::parse("https://user:tok3n@m.example/tv").unwrap();
        assert_eq!(secret.location("a.pth"), "https://user:tok3n@m.example/tv/a.pth");
        assert_eq!(secret.shown("a.pth"), "https://m.example/tv/a.pth");
        let shown = Source::parse("/srv/weights").unwrap().shown("a.pth");
        assert!(shown.starts_with("a.pth") && !shown.contains("/srv"), "{shown}");
        let (architecture, digest) = parse_pin(&format!("resnet18={}", "AB".repeat(32))).unwrap();
        assert_eq!((architecture, digest), (Architecture::Resnet18, "ab".repeat(32)));
        for bad in ["resnet18", "mlp=00", "vgg16=xyz", "vgg16=../../etc"] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
        assert!(published(Architecture::SmallCnn, PretrainedWeights::Imagenet).is_none());
    }

    #[tokio::test]
    async fn a_local_mirror_is_verified_and_nothing_foreign_is_cached() {
        let (dir, mirror) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(mirror.path().join("resnet18-f37072fd.pth"), b"other bytes").unwrap();
        let wait = Duration::from_secs(60);
        let error = cache(dir.path(), mirror.path(), HashMap::new())
            .ensure(Architecture::Resnet18, PretrainedWeights::Imagenet, wait)
            .await
            .unwrap_err();
        let PretrainedError::Mismatch { expected, actual, url } = &error else { panic!("{error:?}") };
        assert!(expected.starts_with("f37072fd") && actual == &hex(&Sha256::digest(b"other bytes")), "{error}");
        assert!(url.starts_with("resnet18-f37072fd.pth") && !url.contains(&*mirror.path().to_string_lossy()), "{url}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing cached");

        // Pinned to those bytes, the same file is accepted, cached under its digest, and then
        // found in the cache even when the mirror is gone.
        let pins = HashMap::from([(Architecture::Resnet18, hex(&Sha256::digest(b"other bytes")))]);
        let pinned = cache(dir.path(), mirror.path(), pins);
        pinned.ensure(Architecture::Resnet18, PretrainedWeights::Imagenet, wait).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{}.pth", hex(&Sha256::digest(b"other bytes")))]);
        std::fs::remove_file(mirror.path().join("resnet18-f37072fd.pth")).unwrap();
        pinned.ensure(Architecture::Resnet18, PretrainedWeights::Imagenet, wait).await.unwrap();
        // Not a state dict: refused when the model is built.
        let error = pinned.load(Architecture::Resnet18, PretrainedWeights::Imagenet).unwrap_err();
        assert!(matches!(error, PretrainedError::Unusable { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_missing_file_is_refused_and_leftovers_are_cleaned() {
        let (dir, mirror) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(dir.path().join(".partial-x"), b"half").unwrap();
        let cache = cache(dir.path(), mirror.path(), HashMap::new());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "leftover removed");
        let error = cache.ensure(Architecture::Vgg16, PretrainedWeights::Imagenet, Duration::from_secs(60)).await;
        assert!(matches!(error, Err(PretrainedError::Refused { .. })), "{error:?}");
        let error = cache.load(Architecture::Vgg16, PretrainedWeights::Imagenet).unwrap_err();
        assert_eq!(error, PretrainedError::NotCached { file: "vgg16-397923af.pth".into() });
    }
}
