//! Server start-up and lifetime: validate the configuration, bind the listeners, serve until a
//! shutdown signal, then drain.
//!
//! Every gRPC request passes one tower stack before reaching a service: [`ObserveLayer`]
//! (metrics for every RPC, readable size errors), then [`AuthLayer`] (bearer tokens and roles;
//! health open), over TLS when `--tls-cert` is given.

use std::{future::Future, net::SocketAddr, path::Path, pin::Pin, sync::Arc, time::Duration};

use alps_runtime::Shutdown;
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api,
    auth::{
        layer::AuthLayer,
        tokens::{Tokens, TokensError},
    },
    config::ServerConfig,
    engine::Engine,
    infer::Infer,
    metrics::{self, Metrics},
    models::{files::ModelFiles, pretrained::WeightsCache},
    observe::ObserveLayer,
    oip,
    plugins::{self, HeuristicHost, HostStartError, PluginDirError},
    projects::Projects,
    store::{
        DataDir, DataDirError,
        blobs::{BlobError, BlobStore},
        catalog::{Catalog, StoreError},
        gc::GarbageCollector,
        objects::{ObjectError, Objects},
        plugins::{PublishedPlugins, SYNC_INTERVAL, keep_synced},
        postgres::{OpenError, PostgresCatalog, Sharing},
        sqlite::SqliteCatalog,
    },
    tls::{Tls, TlsError},
    training::{Trainer, TrainerSettings, examples::Examples},
};

/// Why the server could not start. Each message names the offending flag value.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// See [`DataDirError`].
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// See [`PluginDirError`].
    #[error(transparent)]
    PluginDir(#[from] PluginDirError),
    /// A listener could not bind (port in use, address not local, permission denied).
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The flag that set the address, e.g. `--listen`.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// See [`api::ReflectionError`].
    #[error(transparent)]
    Routes(#[from] api::ReflectionError),
    /// See [`HostStartError`].
    #[error(transparent)]
    Plugins(#[from] HostStartError),
    /// See [`StoreError`].
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// See [`OpenError`].
    #[error("cannot open the database (--database-url): {0}")]
    Database(#[from] OpenError),
    /// See [`BlobError`].
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] BlobError),
    /// The object store could not be opened or reached.
    #[error("cannot use the object store: {0}")]
    Objects(#[from] ObjectError),
    /// The object store holds another catalogue's files.
    #[error(
        "object store {store} holds the files of catalogue {bound}, not of this database's ({given}): give each \
         database its own bucket or prefix"
    )]
    ObjectsOfOtherCatalogue {
        /// The store.
        store: String,
        /// The catalogue it belongs to.
        bound: String,
        /// This database's catalogue.
        given: String,
    },
    /// The catalogue's files are in a data dir or another object store.
    #[error(
        "the database's samples and model files are not in object store {store} but elsewhere (id {bound}): \
         serve it with the data dir or object store that holds them"
    )]
    FilesElsewhere {
        /// The store given.
        store: String,
        /// The id of the data dir or store that holds them.
        bound: String,
    },
    /// The inference worker thread could not start.
    #[error("cannot start the inference worker: {0}")]
    Engine(std::io::Error),
    /// The thread that follows other replicas' changes could not start.
    #[error("cannot start following the other replicas: {0}")]
    Follower(std::io::Error),
    /// The model root cannot be created.
    #[error("cannot create the model root {path} (--model-root): {source}")]
    ModelRoot {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The weights cache cannot be created.
    #[error("cannot create the weights cache {path}: {source}")]
    WeightsCache {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// See [`TokensError`].
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// See [`TlsError`].
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No tokens file, and `--listen` or `--http-listen` is not a loopback address.
    #[error(
        "refusing to serve without authentication on {addr} ({flag} is not a loopback address): \
         give --auth-tokens-file (see `alps-server token create`), or --insecure-no-auth on a trusted network"
    )]
    Unauthenticated {
        /// The flag.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
    },
}

/// Why a running server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The metrics HTTP server failed.
    #[error("metrics server failed: {0}")]
    Metrics(std::io::Error),
    /// The REST server of the Open Inference Protocol failed.
    #[error("REST server failed: {0}")]
    Rest(std::io::Error),
}

/// A server whose configuration is validated and whose ports are bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    grpc: TcpListener,
    http: TcpListener,
    rest: axum::Router,
    serving: Arc<std::sync::atomic::AtomicBool>,
    metrics_listener: TcpListener,
    data_dir: DataDir,
    heuristics: Arc<HeuristicHost>,
    metrics: Arc<Metrics>,
    routes: Routes,
    health_reporter: HealthReporter,
    tokens: Option<Arc<Tokens>>,
    tls: Option<Arc<Tls>>,
    max_message_mib: u32,
    max_connection_age: Option<Duration>,
    trainer: Arc<Trainer>,
    /// Keep the plugin directory, tokens file and TLS files watched while the server lives.
    _watchers: Vec<notify::RecommendedWatcher>,
}

impl Server {
    /// Opens the data directory, checks the plugin directory and binds both listeners.
    /// `executable` locates the default plugin directory (see [`ServerConfig::resolved_plugin_dir`]).
    ///
    /// # Errors
    /// [`StartError`] naming the data dir, plugin dir or address at fault.
    pub async fn bind(config: &ServerConfig, executable: &Path) -> Result<Self, StartError> {
        let (tokens, tls, mut watchers) = security(config)?;
        let data_dir = DataDir::open(&config.data_dir)?;
        let model_root = config.model_root.clone().unwrap_or_else(|| data_dir.default_model_root());
        let model_files = ModelFiles::open(model_root.clone(), config.max_model_file_bytes())
            .map_err(|source| StartError::ModelRoot { path: model_root, source })?;
        let cache_dir = data_dir.weights_cache_dir();
        let weights_cache = WeightsCache::open(
            cache_dir.clone(),
            config.weights_mirror.clone(),
            config.weights_pin.iter().cloned().collect(),
            config.max_model_file_bytes(),
        )
        .map_err(|source| StartError::WeightsCache { path: cache_dir, source })?;
        let model_files = model_files.with_weights_cache(weights_cache.clone());
        let metrics = Arc::new(Metrics::default());
        let objects = config.object_store_url.as_deref().map(Objects::open).transpose()?.map(Arc::new);
        let plugin_dir = config.resolved_plugin_dir(executable);
        tracing::info!(dir = %plugin_dir.display(), "plugin directory");
        let mut heuristics = HeuristicHost::new(plugin_dir, data_dir.plugin_copies_dir(), metrics.clone())?;
        // Replicas load the plugins published in the object store too, copied in before the
        // first load and kept in step after it.
        let published = objects
            .as_ref()
            .filter(|_| config.published_plugins)
            .map(|objects| PublishedPlugins::new(objects.clone(), data_dir.published_plugins_dir()));
        if let Some(published) = &published {
            heuristics = heuristics.with_published(published.dir().to_owned())?;
        }
        let heuristics = Arc::new(heuristics);
        // Watch before the first load, and before announcing readiness: a plugin dropped in
        // from then on is always picked up. Without a watch, ReloadHeuristics still works.
        let watcher = plugins::watch_plugin_dir(heuristics.clone())
            .inspect_err(|error| tracing::warn!(%error, "cannot watch the plugin directory; use ReloadHeuristics"))
            .ok();
        watchers.extend(watcher);
        if let Some(mut published) = published {
            tracing::info!(
                dir = %published.dir().display(),
                every_secs = SYNC_INTERVAL.as_secs(),
                "published plugins: copying those under the object store's plugins/ prefix"
            );
            if let Err(error) = published.sync() {
                tracing::warn!(%error, "cannot copy the published plugins; trying again in the background");
            }
            keep_synced(published).map_err(StartError::Follower)?;
        }
        let report = heuristics.reload().map_err(HostStartError::Dir)?;
        if report.registry.is_empty() {
            tracing::warn!("no heuristic loaded: Score, Select and rankings will answer NOT_FOUND");
        }
        let database = config.database_url.as_ref().map(|url| Database {
            url: url.expose(),
            ca_file: config.database_ca_file.as_deref(),
            read_sessions: usize::from(config.database_read_sessions),
        });
        // Unique per process: a restarted replica is a new one (the jobs it left are taken over).
        let replica = format!("{:016x}", fastrand::u64(..));
        let catalog = open_catalog(database, &data_dir, objects.as_deref(), &replica)?;
        let projects = Arc::new(Projects::open(catalog.clone())?.with_replicas(objects.is_some()));
        let (blobs, models_dir) = match &objects {
            Some(objects) => {
                tracing::info!(store = objects.name(), "sample blobs and model weights in the object store");
                let models_dir = data_dir
                    .models_dir()
                    .with_objects(objects.clone(), catalog.clone())
                    .with_cache_budget(config.version_cache_mib.saturating_mul(1024 * 1024));
                (Arc::new(BlobStore::in_objects(objects.clone(), catalog.clone())), models_dir)
            }
            None => (Arc::new(BlobStore::open(data_dir.blobs_dir())?), data_dir.models_dir()),
        };
        if config.gc_interval_secs > 0 {
            let grace = Duration::from_secs(config.gc_grace_secs);
            let collector =
                GarbageCollector::new(catalog.clone(), blobs.clone(), models_dir.clone(), grace, metrics.clone());
            collector.spawn(Duration::from_secs(config.gc_interval_secs));
        }
        tracing::info!(projects = projects.list().len(), "projects loaded");
        // Stored projects on published weights find them cached, or fetched in the background.
        weights_cache.prefetch(
            projects.list().iter().filter_map(|p| Some((p.spec.model.architecture, p.spec.model.pretrained?))),
        );
        let engine_config = config.engine(models_dir.clone(), model_files.clone());
        let (device, image_limits) = (engine_config.device, engine_config.image_limits);
        let memory = engine_config.memory.clone();
        let engine = Engine::start(engine_config, metrics.clone()).map_err(StartError::Engine)?;
        tracing::info!(?device, "inference engine started");
        let inference_threads = crate::engine::device::intra_op_threads();
        let threads_per_job = config.training_threads_per_job(inference_threads);
        let trainer = Arc::new(Trainer::start(
            catalog.clone(),
            blobs.clone(),
            projects.clone(),
            models_dir,
            model_files.clone(),
            Arc::new(engine.clone()),
            TrainerSettings {
                device,
                max_accuracy_drop: config.auto_activate_max_accuracy_drop,
                concurrent_jobs: usize::from(config.training_jobs),
                threads_per_job,
                replica,
                follows_replicas: objects.is_some(),
                lease_ttl: Duration::from_secs(config.training_lease_secs),
                memory,
            },
            metrics.clone(),
        )?);
        let jobs = config.training_jobs;
        tracing::info!(jobs, threads_per_job, inference_threads, "training executor started");
        if objects.is_some() {
            let follower = crate::replicas::Follower {
                catalog: catalog.clone(),
                projects: projects.clone(),
                engine: engine.clone(),
                trainer: trainer.clone(),
                metrics: metrics.clone(),
            };
            crate::replicas::follow(follower).map_err(StartError::Follower)?;
            trainer.keep_leases().map_err(StartError::Follower)?;
        }
        let grpc = listen("--listen", config.listen).await?;
        let http = listen("--http-listen", config.http_listen).await?;
        let metrics_listener = listen("--metrics-listen", config.metrics_listen).await?;
        let examples = Arc::new(Examples::new(catalog, blobs, image_limits));
        let infer = Infer::new(
            projects.clone(),
            examples.clone(),
            trainer.clone(),
            heuristics.clone(),
            engine.clone(),
            config.max_rank_pool_values,
        );
        let stopper = trainer.clone();
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let state = Arc::new(api::AppState {
            heuristics: heuristics.clone(),
            projects,
            engine,
            examples,
            trainer,
            metrics: metrics.clone(),
            infer,
            serving: serving.clone(),
            model_files,
            weights_fetch_wait: config.weights_fetch_wait(),
        });
        let rest = oip::rest::router(&state, tokens.clone(), config.max_message_bytes());
        let (health_reporter, routes) = api::routes(state, config.max_message_bytes()).await?;
        Ok(Self {
            grpc,
            http,
            rest,
            serving,
            metrics_listener,
            data_dir,
            heuristics,
            metrics,
            routes,
            health_reporter,
            tokens,
            tls,
            max_message_mib: config.max_message_mib,
            max_connection_age: (config.max_connection_age_secs > 0)
                .then(|| Duration::from_secs(config.max_connection_age_secs)),
            trainer: stopper,
            _watchers: watchers,
        })
    }

    /// Address the gRPC server listens on (with the real port when `--listen` used port 0).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Address the REST server of the Open Inference Protocol listens on.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Address the metrics server listens on.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Serves until `shutdown` is requested, then marks the health status `NOT_SERVING`, stops
    /// accepting connections and lets in-flight requests finish for at most `grace`; then
    /// cancels training jobs (recorded as interrupted) and waits at most `grace` for them.
    ///
    /// # Errors
    /// [`ServeError`] if a transport fails.
    pub async fn run(self, shutdown: Shutdown, grace: Duration) -> Result<(), ServeError> {
        tracing::info!(
            data_dir = %self.data_dir.path().display(),
            plugin_dir = %self.heuristics.dir().display(),
            tls = self.tls.is_some(),
            auth = self.tokens.is_some(),
            "serving"
        );
        let requested = shutdown.requested();
        let (health_reporter, serving) = (self.health_reporter, self.serving);
        let stop_accepting = async move {
            requested.await;
            // Tell load balancers and the adapter first, then stop accepting.
            serving.store(false, std::sync::atomic::Ordering::Relaxed);
            health_reporter.set_service_status("", ServingStatus::NotServing).await;
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(age) = self.max_connection_age {
            // Graceful only (GOAWAY, then in-flight calls finish): tonic's
            // `max_connection_age_grace` would replace that with a hard close after age + grace.
            builder = builder.max_connection_age(age);
        }
        let router = builder
            .layer(ObserveLayer::new(self.metrics.clone(), self.max_message_mib))
            .layer(AuthLayer::new(self.tokens))
            .add_routes(self.routes);
        let grpc: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &self.tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.clone().incoming(self.grpc), stop_accepting)),
            // Our own listener (bound early to report a busy port), so tonic's TCP options must
            // be set here: without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall small
            // responses by ~40 ms.
            None => {
                Box::pin(router.serve_with_incoming_shutdown(
                    TcpIncoming::from(self.grpc).with_nodelay(Some(true)),
                    stop_accepting,
                ))
            }
        };
        let metrics = metrics::serve(self.metrics_listener, self.metrics, shutdown.requested());
        let rest = oip::rest::serve(self.http, self.tls, self.rest, shutdown.requested());
        // Training stops as soon as shutdown is requested, during the drain: a client watching
        // a job (the Label Studio adapter) then sees it end, so the drain and the stop share
        // the grace period instead of adding up.
        let (trainer, requested) = (self.trainer.clone(), shutdown.requested());
        let stopping = tokio::spawn(async move {
            requested.await;
            tokio::task::spawn_blocking(move || trainer.stop(grace)).await
        });
        let (grpc, metrics, rest) =
            tokio::join!(shutdown.drain(grpc, grace), shutdown.drain(metrics, grace), shutdown.drain(rest, grace));
        // Training threads use libtorch until they see their job cancelled; the process must not
        // exit (and tear libtorch down) under them. (Also when serving failed without a
        // shutdown request: then the stop starts here.)
        stopping.abort();
        let trainer = self.trainer;
        let _ = tokio::task::spawn_blocking(move || trainer.stop(grace)).await;
        grpc.transpose()?;
        metrics.transpose().map_err(ServeError::Metrics)?;
        rest.transpose().map_err(ServeError::Rest)?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The tokens and TLS configuration (watched for changes), after checking that a server
/// without tokens listens on loopback only unless told otherwise.
type Security = (Option<Arc<Tokens>>, Option<Arc<Tls>>, Vec<notify::RecommendedWatcher>);

fn security(config: &ServerConfig) -> Result<Security, StartError> {
    let mut watchers = Vec::new();
    let tokens = match &config.auth_tokens_file {
        Some(path) => {
            let tokens = Tokens::open(path.clone())?;
            let watched = tokens.clone();
            match crate::reload::on_change("tokens file", &[path.as_path()], move || watched.reload()) {
                Ok(watcher) => watchers.push(watcher),
                Err(error) => tracing::warn!(%error, "cannot watch the tokens file; restart to apply changes"),
            }
            Some(tokens)
        }
        None if config.listen.ip().is_loopback() && config.http_listen.ip().is_loopback() => None,
        None if config.insecure_no_auth => {
            tracing::warn!(listen = %config.listen, http_listen = %config.http_listen, "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth)");
            None
        }
        None if !config.listen.ip().is_loopback() => {
            return Err(StartError::Unauthenticated { flag: "--listen", addr: config.listen });
        }
        None => return Err(StartError::Unauthenticated { flag: "--http-listen", addr: config.http_listen }),
    };
    let tls = match config.tls_files() {
        Some(files) => {
            let tls = Tls::open(files)?;
            let watched = tls.clone();
            match crate::reload::on_change("TLS files", &tls.files().paths(), move || watched.reload()) {
                Ok(watcher) => watchers.push(watcher),
                Err(error) => tracing::warn!(%error, "cannot watch the TLS files; restart to apply a new certificate"),
            }
            Some(tls)
        }
        None => None,
    };
    Ok((tokens, tls, watchers))
}

/// Where a PostgreSQL catalogue is and how to reach it (`--database-url`,
/// `--database-ca-file`, `--database-read-sessions`).
struct Database<'a> {
    url: &'a str,
    ca_file: Option<&'a Path>,
    read_sessions: usize,
}

/// The catalogue: in PostgreSQL when `database` is given, else in the data directory. It and
/// the place of its files must belong together (else garbage collection would remove files the
/// catalogue needs, or serve a catalogue without its files): see [`bind`].
fn open_catalog(
    database: Option<Database<'_>>,
    data_dir: &DataDir,
    objects: Option<&Objects>,
    replica: &str,
) -> Result<Arc<dyn Catalog>, StartError> {
    let (catalog, id): (Arc<dyn Catalog>, String) = match database {
        None => {
            let catalog = SqliteCatalog::open(&data_dir.database_path())?;
            let id = catalog.identity()?;
            (Arc::new(catalog), id)
        }
        Some(Database { url, ca_file, read_sessions }) => {
            // With an object store, the files are where every replica finds them.
            let sharing = if objects.is_some() { Sharing::Replicas } else { Sharing::Alone };
            let catalog = PostgresCatalog::open_as(url, ca_file, sharing, replica)?.reading_through(read_sessions);
            tracing::info!(?sharing, %replica, "catalogue in PostgreSQL (--database-url)");
            let id = catalog.identity()?;
            let bound = data_dir.bound_catalogue()?;
            if bound.as_ref() == Some(&id) && data_dir.database_path().exists() {
                tracing::warn!(
                    file = %data_dir.database_path().display(),
                    "the data dir's own catalogue was moved by migrate and is not used"
                );
            } else if data_dir.database_path().exists() {
                // The data dir's own catalogue, not moved here: moved elsewhere, or not yet.
                let own = SqliteCatalog::open(&data_dir.database_path())?.identity()?;
                let path = data_dir.path().to_owned();
                return Err(match bound {
                    Some(bound) if bound != own => DataDirError::OtherCatalogue { path, bound, given: id },
                    _ => DataDirError::Unmigrated { path },
                }
                .into());
            }
            (Arc::new(catalog), id)
        }
    };
    bind(catalog.as_ref(), &id, data_dir, objects)?;
    Ok(catalog)
}

/// Checks that `data_dir` belongs to `catalog` (whose id is `id`) and `catalog` to `data_dir`,
/// binding whichever is still unbound: a data dir serves one catalogue, a catalogue one data dir.
/// With an object store, the catalogue's files are there instead: the store and the catalogue
/// are bound to each other the same way (the data dir, a cache, still belongs to the catalogue).
fn bind(catalog: &dyn Catalog, id: &str, data_dir: &DataDir, objects: Option<&Objects>) -> Result<(), StartError> {
    if let Some(bound) = data_dir.bound_catalogue()?.filter(|bound| bound != id) {
        let (path, given) = (data_dir.path().to_owned(), id.to_owned());
        return Err(DataDirError::OtherCatalogue { path, bound, given }.into());
    }
    if let Some(objects) = objects {
        let (given, store) = (objects.id()?, objects.name().to_owned());
        if let Some(bound) = catalog.data_dir()?.filter(|bound| *bound != given) {
            return Err(StartError::FilesElsewhere { store, bound });
        }
        if let Some(bound) = objects.bind_catalogue(id)? {
            return Err(StartError::ObjectsOfOtherCatalogue { store, bound, given: id.to_owned() });
        }
        if let Some(bound) = catalog.bind_data_dir(&given)? {
            return Err(StartError::FilesElsewhere { store, bound });
        }
        data_dir.bind_catalogue(id)?;
        return Ok(());
    }
    let given = data_dir.id()?;
    if let Some(bound) = catalog.bind_data_dir(&given)? {
        return Err(DataDirError::OtherDataDir { path: data_dir.path().to_owned(), given, bound }.into());
    }
    data_dir.bind_catalogue(id)?;
    Ok(())
}

async fn listen(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { flag, addr, source })
}

/// The engine serves what the trainer activates: it loads a version before the swap.
impl crate::training::Serving for Engine {
    fn load(&self, project: &crate::projects::Project) -> Result<(), String> {
        self.load_blocking(project).map_err(|error| error.to_string())
    }
}
