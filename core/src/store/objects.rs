//! The object store (`--object-store-url`): where a catalogue in PostgreSQL keeps its sample
//! blobs and model weights when they live outside the data dir, in S3 or an S3-compatible
//! server (`s3://bucket/prefix`), Google Cloud Storage (`gs://`), Azure Blob Storage (`az://`)
//! or a shared file system (`file:///path`), through the `object_store` crate. Credentials come
//! the standard way for each service (for S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, web identity via `AWS_WEB_IDENTITY_TOKEN_FILE`).
//!
//! Layout under the URL's prefix:
//!
//! * `ID`: this store's id (32 hex digits), made once;
//! * `CATALOGUE`: the id of the catalogue whose files it holds, written once;
//! * `blobs/<first two hex digits>/<sha256>`: sample bytes;
//! * `weights/<sha256>`: the `weights.safetensors` of model versions.
//!
//! Every object is content-addressed or written once, with a conditional put (`If-None-Match: *`
//! on S3, RFC 9110 §13.1.2), so concurrent writers of the same bytes store one object and all
//! succeed, and no object ever changes. Nothing relies on the store for coordination: the
//! catalogue says which objects are used. Reads check the sha256 an object is named by.
//!
//! The crate is async; the server's storage code is blocking. Each call runs on a small runtime
//! of the object stores' own and the calling thread waits for it, which works from blocking
//! threads and from tokio workers alike.

use std::{
    fmt,
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use futures_util::{StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload, RetryConfig, aws::AmazonS3Builder,
    azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder, local::LocalFileSystem, path::Path,
};

use super::Failure;
use crate::digest::sha256_hex;

/// How long one request may take, and how long a call retries before it reports the store
/// unreachable: a write to a store that refuses connections fails with `UNAVAILABLE` in
/// seconds (one that hangs, within the request timeout plus the retries), not after the
/// crate's default three minutes.
const REQUEST_TIMEOUT: &str = "30s";
const CONNECT_TIMEOUT: &str = "5s";
const RETRY_FOR: Duration = Duration::from_secs(10);
const RETRIES: usize = 3;
/// Requests in flight at once for a batch (the samples of one AddExamples, a training set).
const CONCURRENCY: usize = 16;

/// Why the object store could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The URL names no supported store or cannot be opened.
    #[error("--object-store-url: {0}")]
    Url(String),
    /// The store failed or could not be reached (after retries).
    #[error("object store {store}: {operation} of {key} failed: {message}")]
    Store {
        /// The store (scheme, bucket and prefix; never credentials).
        store: String,
        /// What was being done (`put`, `get`, `list`, `delete`).
        operation: &'static str,
        /// The object's key under the prefix.
        key: String,
        /// The crate's message.
        message: String,
        /// Whether trying again may help.
        failure: Failure,
    },
    /// An object's bytes do not hash to its name (corruption or tampering).
    #[error("object store: {key} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// What its content hashes to.
        actual: String,
    },
    /// An object is missing.
    #[error("object store {store}: {key} does not exist")]
    Missing {
        /// The store.
        store: String,
        /// The object's key.
        key: String,
    },
}

impl ObjectError {
    /// Whether trying again may help.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Store { failure, .. } => *failure,
            Self::Url(_) | Self::Corrupt { .. } | Self::Missing { .. } => Failure::Permanent,
        }
    }
}

/// What an `object_store` error means: unreachable, timed out or a server error after the
/// retries (`Generic`) may pass; a full local disk is [`Failure::Full`]; refusals (permission,
/// precondition) stay.
fn failure_of(error: &object_store::Error) -> Failure {
    match error {
        object_store::Error::Generic { source, .. } => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(error) = cause {
                if let Some(io) = error.downcast_ref::<std::io::Error>() {
                    return match (Failure::of_io(io), io.kind()) {
                        (Failure::Full, _) => Failure::Full,
                        (_, std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem) => {
                            Failure::Permanent
                        }
                        _ => Failure::Transient,
                    };
                }
                cause = error.source();
            }
            Failure::Transient
        }
        _ => Failure::Permanent,
    }
}

/// Where ops publish heuristic plugins, under the store's prefix.
const PLUGINS: &str = "plugins";

/// A published (mutable) object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its name, the last path segment.
    pub name: String,
    /// Size, bytes.
    pub size: u64,
    /// Changes whenever the object does: its ETag, else its size and last change.
    pub version: String,
}

/// An object as listed: its name (the last path segment), size in bytes and last change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The object's name under its kind's prefix, e.g. a sha256.
    pub name: String,
    /// Size, bytes.
    pub size: u64,
    /// When it was written.
    pub modified: SystemTime,
}

/// The kinds of content-addressed objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sample bytes, `blobs/<2 hex>/<sha256>`.
    Blob,
    /// Model weights, `weights/<sha256>`.
    Weights,
}

impl Kind {
    /// Its name: the prefix its objects are under, and its name in the catalogue's records of
    /// object uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blob => "blobs",
            Self::Weights => "weights",
        }
    }
}

/// An opened object store: a bucket (or directory) and a prefix in it.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The store for messages: scheme, bucket and prefix.
    name: String,
}

/// The runtime every object-store call runs on: the process's own, never dropped (a runtime
/// dropped on an async thread panics, and stores are dropped wherever their last user is).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("alps-objects")
            .enable_all()
            .build()
            .expect("a tokio runtime for the object store")
    })
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects").field("store", &self.name).finish_non_exhaustive()
    }
}

impl Objects {
    /// Opens the store at `url` (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///path`),
    /// with credentials from the environment. Nothing is read yet: [`id`](Self::id) is the
    /// first request.
    ///
    /// # Errors
    /// [`ObjectError::Url`] for an unsupported or malformed URL or configuration.
    pub fn open(url: &str) -> Result<Self, ObjectError> {
        install_tls_provider();
        let parsed = url::Url::parse(url).map_err(|e| ObjectError::Url(format!("{e}; {SCHEMES}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
            // Secrets go in the environment, where the standard variables are read.
            return Err(ObjectError::Url("credentials and query parameters are not read from the URL".into()));
        }
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|_| ObjectError::Url(unsupported(parsed.scheme())))?;
        let retry = RetryConfig { max_retries: RETRIES, retry_timeout: RETRY_FOR, ..RetryConfig::default() };
        let fail = |e: object_store::Error| ObjectError::Url(e.to_string());
        use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed.to_file_path().map_err(|()| ObjectError::Url("not a local path".into()))?;
                std::fs::create_dir_all(&dir).map_err(|e| ObjectError::Url(format!("{}: {e}", dir.display())))?;
                return Ok(Self::with(
                    Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(fail)?),
                    Path::default(),
                    url,
                ));
            }
            ObjectStoreScheme::AmazonS3 => {
                use object_store::aws::AmazonS3ConfigKey::Client;
                plain_http_allowed()?;
                let builder = AmazonS3Builder::from_env().with_url(url).with_retry(retry);
                let builder = builder.with_config(Client(Timeout), REQUEST_TIMEOUT);
                Arc::new(builder.with_config(Client(ConnectTimeout), CONNECT_TIMEOUT).build().map_err(fail)?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                use object_store::gcp::GoogleConfigKey::Client;
                let builder = GoogleCloudStorageBuilder::from_env().with_url(url).with_retry(retry);
                let builder = builder.with_config(Client(Timeout), REQUEST_TIMEOUT);
                Arc::new(builder.with_config(Client(ConnectTimeout), CONNECT_TIMEOUT).build().map_err(fail)?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                use object_store::azure::AzureConfigKey::Client;
                let builder = MicrosoftAzureBuilder::from_env().with_url(url).with_retry(retry);
                let builder = builder.with_config(Client(Timeout), REQUEST_TIMEOUT);
                Arc::new(builder.with_config(Client(ConnectTimeout), CONNECT_TIMEOUT).build().map_err(fail)?)
            }
            _ => return Err(ObjectError::Url(unsupported(parsed.scheme()))),
        };
        Ok(Self::with(store, prefix, url))
    }

    fn with(store: Arc<dyn ObjectStore>, prefix: Path, url: &str) -> Self {
        Self { store, prefix, name: url.to_owned() }
    }

    /// An in-memory store, for tests.
    #[cfg(test)]
    pub fn in_memory() -> Self {
        Self::with(Arc::new(object_store::memory::InMemory::new()), Path::default(), "memory:///")
    }

    /// A new bucket `name` on the tests' S3 server (moto, started on first use), as a store.
    #[cfg(test)]
    pub fn on_test_s3(name: &str) -> Objects {
        let bucket = tokio::runtime::Runtime::new().unwrap().block_on(alps_system_tests::s3_bucket(name));
        install_tls_provider();
        let store = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_endpoint(alps_system_tests::s3_server())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test-secret")
            .build()
            .unwrap();
        Objects::with(Arc::new(store), Path::default(), &format!("s3://{bucket}"))
    }

    /// The store as named in messages (its URL, which holds no credentials).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` on the object stores' runtime and waits for it.
    fn wait<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        let (sender, receiver) = mpsc::sync_channel(1);
        runtime().spawn(async move {
            let _ = sender.send(work.await);
        });
        receiver.recv().expect("the object stores' runtime lives as long as the process")
    }

    fn path(&self, key: &str) -> Path {
        key.split('/').fold(self.prefix.clone(), |path, part| path.clone().join(part))
    }

    fn error(&self, operation: &'static str, key: &str, error: &object_store::Error) -> ObjectError {
        let not_found = matches!(error, object_store::Error::NotFound { .. });
        if not_found && matches!(operation, "get" | "delete") {
            return ObjectError::Missing { store: self.name.clone(), key: key.to_owned() };
        }
        // Writing or listing finds nothing only where there is no bucket (or container).
        let message = if not_found {
            "not found: does the bucket exist, and is the endpoint right?".to_owned()
        } else if error.to_string().contains("169.254.169.254") {
            // With no credentials in the environment the crate asks the instance metadata
            // service, which says nothing useful off a cloud instance.
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a web identity \
             (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN) or an instance role"
                .to_owned()
        } else {
            crate::errors::first_line(error)
        };
        ObjectError::Store {
            store: self.name.clone(),
            operation,
            key: key.to_owned(),
            message,
            failure: failure_of(error),
        }
    }

    /// Writes `bytes` at `key` unless an object is there already. Returns whether this call
    /// wrote it.
    fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, ObjectError> {
        let (store, path) = (self.store.clone(), self.path(key));
        let result = self.wait(async move { store.put_opts(&path, PutPayload::from(bytes), write_once()).await });
        match result {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(error) => Err(self.error("put", key, &error)),
        }
    }

    fn get_bytes(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let (store, path) = (self.store.clone(), self.path(key));
        let result = self.wait(async move { store.get(&path).await?.bytes().await });
        result.map(|bytes| bytes.to_vec()).map_err(|error| self.error("get", key, &error))
    }

    fn key(kind: Kind, sha256: &str) -> String {
        match kind {
            Kind::Blob => format!("blobs/{}/{sha256}", &sha256[..2]),
            Kind::Weights => format!("weights/{sha256}"),
        }
    }

    /// Stores `bytes`, whose sha256 is `sha256`, as an object of `kind`; bytes already stored
    /// are not written again. Returns whether this call wrote them.
    ///
    /// # Errors
    /// [`ObjectError::Store`] if the store fails or cannot be reached.
    pub fn put(&self, kind: Kind, sha256: &str, bytes: Vec<u8>) -> Result<bool, ObjectError> {
        self.put_once(&Self::key(kind, sha256), bytes)
    }

    /// [`put`](Self::put) of several objects, [`CONCURRENCY`] requests at a time.
    ///
    /// # Errors
    /// The first failure; the others may have been stored (they are content-addressed, so a
    /// retry stores nothing twice).
    pub fn put_all(&self, kind: Kind, objects: Vec<(String, Vec<u8>)>) -> Result<(), ObjectError> {
        let store = self.store.clone();
        let requests: Vec<_> = objects.into_iter().map(|(sha256, bytes)| (Self::key(kind, &sha256), bytes)).collect();
        let requests: Vec<_> = requests.into_iter().map(|(key, bytes)| (self.path(&key), key, bytes)).collect();
        let results = self.wait(async move {
            let puts = requests.into_iter().map(|(path, key, bytes)| {
                let store = store.clone();
                async move { (key, store.put_opts(&path, PutPayload::from(bytes), write_once()).await) }
            });
            futures_util::stream::iter(puts).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await
        });
        for (key, result) in results {
            match result {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(error) => return Err(self.error("put", &key, &error)),
            }
        }
        Ok(())
    }

    /// [`get`](Self::get) of several objects, [`CONCURRENCY`] requests at a time; the results in
    /// the order of `sha256s`.
    pub fn get_all(&self, kind: Kind, sha256s: &[&str]) -> Vec<Result<Vec<u8>, ObjectError>> {
        let store = self.store.clone();
        let paths: Vec<Path> = sha256s.iter().map(|sha256| self.path(&Self::key(kind, sha256))).collect();
        let results = self.wait(async move {
            let gets = paths.into_iter().map(|path| {
                let store = store.clone();
                async move { store.get(&path).await?.bytes().await }
            });
            futures_util::stream::iter(gets).buffered(CONCURRENCY).collect::<Vec<_>>().await
        });
        results
            .into_iter()
            .zip(sha256s)
            .map(|(result, sha256)| {
                let key = Self::key(kind, sha256);
                let bytes = result.map_err(|error| self.error("get", &key, &error))?.to_vec();
                let actual = sha256_hex(&bytes);
                if actual != *sha256 {
                    return Err(ObjectError::Corrupt { key, actual });
                }
                Ok(bytes)
            })
            .collect()
    }

    /// The bytes of the `kind` object `sha256`, checked against their hash.
    ///
    /// # Errors
    /// [`ObjectError::Missing`], [`ObjectError::Corrupt`] or [`ObjectError::Store`].
    pub fn get(&self, kind: Kind, sha256: &str) -> Result<Vec<u8>, ObjectError> {
        self.get_all(kind, &[sha256]).remove(0)
    }

    /// Every object of `kind`, named by its sha256 (other names under the prefix are left out).
    ///
    /// # Errors
    /// [`ObjectError::Store`] if the listing fails.
    pub fn list(&self, kind: Kind) -> Result<Vec<Listed>, ObjectError> {
        let (store, path) = (self.store.clone(), self.path(kind.name()));
        let result = self.wait(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await });
        let objects = result.map_err(|error| self.error("list", kind.name(), &error))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                let hashed = name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                hashed.then(|| Listed { name, size: meta.size, modified: meta.last_modified.into() })
            })
            .collect())
    }

    /// The heuristic plugins ops published under `plugins/` (mutable objects, unlike the
    /// content-addressed ones). Objects in deeper folders are left out.
    ///
    /// # Errors
    /// [`ObjectError::Store`] if the listing fails (also when a key under the prefix is not a
    /// valid path, such as one with an empty or `..` segment: the store's client refuses the
    /// whole listing).
    pub fn published_plugins(&self) -> Result<Vec<Published>, ObjectError> {
        let (store, path) = (self.store.clone(), self.path(PLUGINS));
        let result = self.wait(async move { store.list_with_delimiter(Some(&path)).await });
        let listed = result.map_err(|error| self.error("list", PLUGINS, &error))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                let modified = meta.last_modified.timestamp_nanos_opt().unwrap_or_default();
                let version = meta.e_tag.clone().unwrap_or_else(|| format!("{}:{modified}", meta.size));
                Some(Published { name, size: meta.size, version })
            })
            .collect())
    }

    /// The bytes of published plugin `name` (see [`published_plugins`](Self::published_plugins)),
    /// if it holds at most `limit` bytes: a larger one is not read.
    ///
    /// # Errors
    /// [`ObjectError::Missing`] if it was removed meanwhile; [`ObjectError::Store`] if the store
    /// fails or the object is over `limit`.
    pub fn published_plugin(&self, name: &str, limit: u64) -> Result<Vec<u8>, ObjectError> {
        let key = format!("{PLUGINS}/{name}");
        let (store, path) = (self.store.clone(), self.path(&key));
        let result = self.wait(async move {
            let found = store.get(&path).await?;
            // Checked before the body is read: the object may have grown since the listing.
            if found.meta.size > limit {
                return Ok(None);
            }
            found.bytes().await.map(Some)
        });
        match result.map_err(|error| self.error("get", &key, &error))? {
            Some(bytes) if bytes.len() as u64 <= limit => Ok(bytes.to_vec()),
            _ => Err(ObjectError::Store {
                store: self.name.clone(),
                operation: "get",
                key,
                message: format!("larger than {limit} bytes"),
                failure: Failure::Permanent,
            }),
        }
    }

    /// [`delete`](Self::delete) for a garbage collector: a failure is logged (the next round
    /// tries again). Returns whether the object is gone.
    pub fn delete_unreferenced(&self, kind: Kind, sha256: &str) -> bool {
        match self.delete(kind, sha256) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(kind = kind.name(), %error, "cannot remove an unreferenced object");
                false
            }
        }
    }

    /// Removes the `kind` object `sha256`; a missing one is not an error.
    ///
    /// # Errors
    /// [`ObjectError::Store`] if the store fails.
    pub fn delete(&self, kind: Kind, sha256: &str) -> Result<(), ObjectError> {
        let key = Self::key(kind, sha256);
        let (store, path) = (self.store.clone(), self.path(&key));
        match self.wait(async move { store.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.error("delete", &key, &error)),
        }
    }

    /// The line stored at `key`, written as `line` first if there is none: whoever writes first
    /// decides, and every caller reads the same value.
    fn marker(&self, key: &str, line: &str) -> Result<String, ObjectError> {
        self.put_once(key, format!("{line}\n").into_bytes())?;
        let bytes = self.get_bytes(key)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
    }

    /// This store's id (`ID`, 32 hex digits, made on first use): the catalogue whose files it
    /// holds records it, so that no other store serves that catalogue.
    ///
    /// # Errors
    /// [`ObjectError::Store`] if the store cannot be reached (this is the first request a
    /// server makes, so a wrong endpoint or credentials show here).
    pub fn id(&self) -> Result<String, ObjectError> {
        self.marker("ID", &format!("{:032x}", fastrand::u128(..)))
    }

    /// Records that this store holds the files of catalogue `catalogue` if it holds none's yet;
    /// returns the catalogue it belongs to when that is another one.
    ///
    /// # Errors
    /// [`ObjectError::Store`] if the store fails.
    pub fn bind_catalogue(&self, catalogue: &str) -> Result<Option<String>, ObjectError> {
        let bound = self.marker("CATALOGUE", catalogue)?;
        Ok((bound != catalogue).then_some(bound))
    }
}

/// reqwest's rustls needs a process-wide crypto provider; an already installed one is kept.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A conditional put: written only where nothing is (`If-None-Match: *` on S3).
fn write_once() -> PutOptions {
    PutOptions { mode: PutMode::Create, ..PutOptions::default() }
}

/// The URLs this server takes, for error messages.
const SCHEMES: &str = "use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///path";

fn unsupported(scheme: &str) -> String {
    format!("unsupported scheme {scheme:?}: {SCHEMES}")
}

/// Refuses a plain-HTTP S3 endpoint without `AWS_ALLOW_HTTP=true` up front: the crate would
/// refuse every request with no more than "builder error".
fn plain_http_allowed() -> Result<(), ObjectError> {
    let endpoint =
        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"].iter().find_map(|name| std::env::var(name).ok());
    let allowed = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
    match endpoint {
        Some(endpoint) if endpoint.starts_with("http://") && !allowed => Err(ObjectError::Url(format!(
            "the S3 endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to use it (or give an https:// one)"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_written_once_and_checked_on_read() {
        let objects = Objects::in_memory();
        let sha = sha256_hex(b"sample");
        assert!(objects.put(Kind::Blob, &sha, b"sample".to_vec()).unwrap(), "first write");
        assert!(!objects.put(Kind::Blob, &sha, b"sample".to_vec()).unwrap(), "already there");
        assert_eq!(objects.get(Kind::Blob, &sha).unwrap(), b"sample");
        assert!(matches!(objects.get(Kind::Weights, &sha), Err(ObjectError::Missing { .. })), "kinds are apart");
        // A wrong object under a name: found on read.
        let wrong = sha256_hex(b"other");
        objects.put(Kind::Weights, &wrong, b"not other".to_vec()).unwrap();
        assert!(matches!(objects.get(Kind::Weights, &wrong), Err(ObjectError::Corrupt { .. })));
        let listed = objects.list(Kind::Blob).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size), (sha.as_str(), 6));
        objects.delete(Kind::Blob, &sha).unwrap();
        objects.delete(Kind::Blob, &sha).unwrap();
        assert!(objects.list(Kind::Blob).unwrap().is_empty());
    }

    #[test]
    fn batches_are_stored_once_and_read_back_in_order() {
        let objects = Objects::in_memory();
        let samples: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 3]).collect();
        let named: Vec<(String, Vec<u8>)> = samples.iter().map(|s| (sha256_hex(s), s.clone())).collect();
        objects.put_all(Kind::Blob, named.clone()).unwrap();
        objects.put_all(Kind::Blob, named.clone()).unwrap();
        assert_eq!(objects.list(Kind::Blob).unwrap().len(), 40);
        let mut sha256s: Vec<&str> = named.iter().map(|(sha, _)| sha.as_str()).rev().collect();
        let read: Vec<Vec<u8>> = objects.get_all(Kind::Blob, &sha256s).into_iter().map(Result::unwrap).collect();
        assert_eq!(read, samples.iter().rev().cloned().collect::<Vec<_>>());
        let absent = sha256_hex(b"absent");
        sha256s.insert(1, &absent);
        let results = objects.get_all(Kind::Blob, &sha256s);
        assert!(matches!(results[1], Err(ObjectError::Missing { .. })));
        assert!(results[0].is_ok() && results[2].is_ok());
    }

    #[test]
    fn the_first_binding_wins_and_the_id_is_stable() {
        let objects = Objects::in_memory();
        let id = objects.id().unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(objects.id().unwrap(), id);
        assert_eq!(objects.bind_catalogue("a").unwrap(), None);
        assert_eq!(objects.bind_catalogue("a").unwrap(), None);
        assert_eq!(objects.bind_catalogue("b").unwrap(), Some("a".to_owned()));
    }

    #[test]
    fn urls_without_a_store_or_with_secrets_are_refused() {
        for url in ["ftp://host/x", "not a url", "s3://key:secret@bucket/prefix", "s3://bucket/p?secret=1"] {
            let error = Objects::open(url).unwrap_err();
            assert!(matches!(error, ObjectError::Url(_)), "{url}: {error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn a_shared_directory_is_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path().join("shared")).unwrap();
        let objects = Objects::open(url.as_str()).unwrap();
        let sha = sha256_hex(b"w");
        // Concurrent writers of the same bytes all succeed; one wrote them.
        let wrote: Vec<bool> = std::thread::scope(|scope| {
            let writers: Vec<_> =
                (0..8).map(|_| scope.spawn(|| objects.put(Kind::Weights, &sha, b"w".to_vec()).unwrap())).collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(wrote.iter().filter(|w| **w).count(), 1, "{wrote:?}");
        assert!(dir.path().join("shared/weights").join(&sha).is_file());
        assert_eq!(objects.get(Kind::Weights, &sha).unwrap(), b"w");
    }

    #[test]
    fn the_test_s3_server_honours_conditional_writes_so_an_object_is_never_replaced() {
        // The tests' S3 server (moto): a server that ignored `If-None-Match: *` would let the
        // second put replace the object, and "stored once" would hold by luck only.
        let objects = Objects::on_test_s3("alps-write-once");
        let sha = sha256_hex(b"first");
        assert!(objects.put(Kind::Blob, &sha, b"first".to_vec()).unwrap(), "written");
        // Other bytes under the name (never so for content-addressed names, but what shows
        // whether the server checked): refused, and the first bytes stay.
        assert!(!objects.put(Kind::Blob, &sha, b"second".to_vec()).unwrap(), "the conditional put was ignored");
        assert_eq!(objects.get(Kind::Blob, &sha).unwrap(), b"first");
    }

    #[test]
    fn an_unreachable_store_is_transient_and_named_without_secrets() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        install_tls_provider();
        let store = AmazonS3Builder::new()
            .with_bucket_name("b")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("AKID")
            .with_secret_access_key("very-secret")
            .with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() })
            .build()
            .unwrap();
        let objects = Objects::with(Arc::new(store), Path::default(), "s3://b");
        let error = objects.put(Kind::Blob, &sha256_hex(b"x"), b"x".to_vec()).unwrap_err();
        assert_eq!(error.failure(), Failure::Transient, "{error}");
        assert!(!error.to_string().contains("very-secret"), "{error}");
    }
}
