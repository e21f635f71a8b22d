//! Server start-up and lifetime: validate the configuration, bind the listeners, serve until a
//! shutdown signal, then drain.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use alps_runtime::Shutdown;
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api,
    config::ServerConfig,
    engine::Engine,
    metrics::{self, Metrics},
    plugins::{self, HeuristicHost, HostStartError, PluginDirError},
    projects::Projects,
    store::{DataDir, DataDirError},
    store::{
        blobs::{BlobError, BlobStore},
        db::{Database, StoreError},
    },
    training::{Trainer, examples::Examples},
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
    /// See [`BlobError`].
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] BlobError),
    /// The inference worker thread could not start.
    #[error("cannot start the inference worker: {0}")]
    Engine(std::io::Error),
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
}

/// A server whose configuration is validated and whose ports are bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    grpc: TcpListener,
    metrics_listener: TcpListener,
    data_dir: DataDir,
    heuristics: Arc<HeuristicHost>,
    metrics: Arc<Metrics>,
    routes: Routes,
    health_reporter: HealthReporter,
    /// Keeps the plugin directory watched while the server lives.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Server {
    /// Opens the data directory, checks the plugin directory and binds both listeners.
    /// `executable` locates the default plugin directory (see [`ServerConfig::resolved_plugin_dir`]).
    ///
    /// # Errors
    /// [`StartError`] naming the data dir, plugin dir or address at fault.
    pub async fn bind(config: &ServerConfig, executable: &Path) -> Result<Self, StartError> {
        let data_dir = DataDir::open(&config.data_dir)?;
        let metrics = Arc::new(Metrics::default());
        let plugin_dir = config.resolved_plugin_dir(executable);
        tracing::info!(dir = %plugin_dir.display(), "plugin directory");
        let heuristics = Arc::new(HeuristicHost::new(plugin_dir, data_dir.plugin_copies_dir(), metrics.clone())?);
        // Watch before the first load, and before announcing readiness: a plugin dropped in
        // from then on is always picked up. Without a watch, ReloadHeuristics still works.
        let watcher = plugins::watch_plugin_dir(heuristics.clone())
            .inspect_err(|error| tracing::warn!(%error, "cannot watch the plugin directory; use ReloadHeuristics"))
            .ok();
        let report = heuristics.reload().map_err(HostStartError::Dir)?;
        if report.registry.is_empty() {
            tracing::warn!("no heuristic loaded: Score, Select and rankings will answer NOT_FOUND");
        }
        let db = Arc::new(Database::open(&data_dir.database_path())?);
        let projects = Arc::new(Projects::open(db.clone())?);
        let blobs = Arc::new(BlobStore::open(data_dir.blobs_dir())?);
        tracing::info!(projects = projects.list().len(), "projects loaded");
        let engine_config = config.engine(data_dir.models_dir());
        let (device, image_limits) = (engine_config.device, engine_config.image_limits);
        let engine = Engine::start(engine_config, metrics.clone()).map_err(StartError::Engine)?;
        tracing::info!(?device, "inference engine started");
        let trainer = Arc::new(Trainer::start(
            db.clone(),
            blobs.clone(),
            projects.clone(),
            data_dir.models_dir(),
            device,
            config.auto_activate_max_accuracy_drop,
        )?);
        let grpc = listen("--listen", config.listen).await?;
        let metrics_listener = listen("--metrics-listen", config.metrics_listen).await?;
        let state = Arc::new(api::AppState {
            heuristics: heuristics.clone(),
            projects,
            engine,
            examples: Arc::new(Examples::new(db, blobs, image_limits)),
            trainer,
            metrics: metrics.clone(),
            max_rank_pool_values: config.max_rank_pool_values,
        });
        let (health_reporter, routes) = api::routes(state, config.max_message_bytes()).await?;
        Ok(Self { grpc, metrics_listener, data_dir, heuristics, metrics, routes, health_reporter, _watcher: watcher })
    }

    /// Address the gRPC server listens on (with the real port when `--listen` used port 0).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Address the metrics server listens on.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics_listener.local_addr()
    }

    /// Serves until `shutdown` is requested, then marks the health status `NOT_SERVING`, stops
    /// accepting connections and lets in-flight requests finish for at most `grace`.
    ///
    /// # Errors
    /// [`ServeError`] if a transport fails.
    pub async fn run(self, shutdown: Shutdown, grace: Duration) -> Result<(), ServeError> {
        tracing::info!(
            data_dir = %self.data_dir.path().display(),
            plugin_dir = %self.heuristics.dir().display(),
            "serving"
        );
        let requested = shutdown.requested();
        let health_reporter = self.health_reporter;
        let stop_accepting = async move {
            requested.await;
            // Tell load balancers and the adapter first, then stop accepting.
            health_reporter.set_service_status("", ServingStatus::NotServing).await;
        };
        let grpc = tonic::transport::Server::builder()
            .add_routes(self.routes)
            // Our own listener (bound early to report a busy port), so tonic's TCP options must be
            // set here: without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall small
            // responses by ~40 ms.
            .serve_with_incoming_shutdown(TcpIncoming::from(self.grpc).with_nodelay(Some(true)), stop_accepting);
        let metrics = metrics::serve(self.metrics_listener, self.metrics, shutdown.requested());
        let (grpc, metrics) = tokio::join!(shutdown.drain(grpc, grace), shutdown.drain(metrics, grace));
        grpc.transpose()?;
        metrics.transpose().map_err(ServeError::Metrics)?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn listen(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { flag, addr, source })
}
