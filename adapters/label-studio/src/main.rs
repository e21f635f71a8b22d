//! `alps-label-studio`: the binary edge of the Label Studio adapter.

use std::{process::ExitCode, sync::Arc, time::Duration};

use alps_label_studio::{
    config::Config,
    core_client::Core,
    core_link::{CoreTransport, core_transport, watch_core},
    http::{AppState, Secret, router},
    label_config::ConfigCache,
    labels::{Labelling, TrainingPolicy, Work},
    ls_api::{ApiKey, LINK_CHECK_INTERVAL, LabelStudio, LinkState},
    media::{Media, MediaLimits},
    predict::PredictSettings,
    projects::Projects,
    scoring::{Scoring, ScoringSettings, Triggers},
    tls, version_sync,
    version_sync::VersionTargets,
};
use alps_runtime::Shutdown;
use anyhow::Context;
use axum::serve::ListenerExt;
use axum_server::{accept::NoDelayAcceptor, tls_rustls::RustlsAcceptor};
use clap::Parser;

/// How often the active model version of each known project is re-read from the core (catches
/// versions activated by other clients, e.g. through the gRPC API).
const VERSION_REFRESH: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let config = Config::parse();
    alps_runtime::init_logging(config.log_format);
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => alps_runtime::fatal("alps-label-studio", error.as_ref()),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;
    let transport = core_transport(&config.core_url, &config.core_link())?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some((tls::rustls_config(cert, key)?, cert.clone(), key.clone())),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let state = app_state(&config, transport)?;
    let app = router(state, &config.base_path);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        http = %listener.local_addr()?,
        scheme = if tls.is_some() { "https" } else { "http" },
        core_url = %config.core_url,
        core_tls = config.core_tls_ca.is_some() || config.core_url.starts_with("https://"),
        core_token = config.core_token.is_some(),
        webhook_secret = config.webhook_secret.is_some(),
        base_path = %config.base_path,
        label_studio = config.label_studio_url.as_ref().map(|url| url.origin().ascii_serialization()),
        default_model = %config.default_model,
        "listening"
    );
    let open = config.basic_auth_user.is_none() && config.webhook_secret.is_none();
    if open && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "no Basic auth and no webhook secret: anyone who reaches this port can change a project's labels \
             and trigger training; set BASIC_AUTH_USER/BASIC_AUTH_PASS and ALPS_LS_WEBHOOK_SECRET (README, Security)"
        );
    }
    if let Some((rustls, cert, key)) = tls {
        tokio::spawn(tls::reload_on_change(rustls.clone(), cert, key));
        let acceptor = RustlsAcceptor::new(rustls).acceptor(NoDelayAcceptor::new());
        let handle = axum_server::Handle::<std::net::SocketAddr>::new();
        let server = axum_server::Server::from_listener(listener).acceptor(acceptor).handle(handle.clone());
        let requested = shutdown.requested();
        tokio::spawn(async move {
            requested.await;
            handle.graceful_shutdown(None);
        });
        let serving = server.serve(app.into_make_service());
        shutdown.drain(serving, config.shutdown_grace()).await.transpose()?;
        tracing::info!("stopped");
        return Ok(());
    }
    // Small JSON answers must not wait for Nagle's algorithm (Label Studio's timeouts are 1 s).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
    });
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown.requested()).into_future();
    shutdown.drain(serving, config.shutdown_grace()).await.transpose()?;
    tracing::info!("stopped");
    Ok(())
}

/// Builds every component and starts the background tasks.
fn app_state(config: &Config, transport: CoreTransport) -> anyhow::Result<AppState> {
    let presets = config.model_presets();
    if !presets.iter().any(|preset| preset.name == config.default_model) {
        let known: Vec<&str> = presets.iter().map(|preset| preset.name.as_str()).collect();
        anyhow::bail!("--default-model {} is not a configured model ({})", config.default_model, known.join(", "));
    }
    let http = alps_label_studio::http_client().context("cannot build the HTTP client")?;
    let label_studio = label_studio(config, http.clone())?;
    let webhook_secret = config.webhook_secret()?.map(Secret::new);
    let core = Core::new(transport.clone());
    let (triggers, new_projects) = Triggers::new();
    let projects = Arc::new(Projects::new(
        presets,
        config.default_model.clone(),
        config.score_mode,
        core.clone(),
        Arc::clone(&triggers),
    ));
    let limits = MediaLimits {
        max_bytes: config.media_max_mib << 20,
        timeout: Duration::from_secs(config.media_timeout_secs),
        concurrency: config.media_concurrency as usize,
        allow_private: config.media_allow_private,
    };
    let media = Arc::new(Media::new(label_studio.clone(), limits).context("cannot build the media HTTP client")?);
    alps_label_studio::metrics::label_studio_link(
        label_studio.as_ref().map_or(LinkState::NotConfigured, |ls| ls.link()),
    );
    if let Some(ls) = &label_studio {
        tokio::spawn(Arc::clone(ls).watch(LINK_CHECK_INTERVAL));
    }
    let policy = TrainingPolicy {
        every: config.train_every,
        min_labels: config.min_train_labels,
        debounce: Duration::from_millis(config.train_debounce_ms),
        epochs: config.train_epochs,
        learning_rate: config.train_learning_rate,
        validation_fraction: config.train_validation_fraction,
    };
    let targets = Arc::new(VersionTargets::default());
    let scoring = Scoring::new(
        core.clone(),
        Arc::clone(&media),
        label_studio.clone(),
        Arc::clone(&projects),
        ScoringSettings {
            chunk: config.predict_chunk as usize,
            concurrency: config.predict_concurrency as usize,
            write_chunk: config.pool_write_chunk as usize,
            page_size: config.pool_page_size,
            cache_capacity: config.pool_cache_tasks as usize,
        },
        triggers,
        Arc::clone(&targets),
    );
    tokio::spawn(Arc::clone(&scoring).run(new_projects));
    let labelling = Labelling::new(
        core.clone(),
        Arc::clone(&media),
        label_studio.clone(),
        Arc::clone(&projects),
        policy,
        Arc::clone(&scoring),
    );
    let sync_target = if config.sync_model_version { label_studio.clone() } else { None };
    tokio::spawn(version_sync::run(targets, sync_target, Arc::clone(&projects)));
    let loading = Arc::clone(&projects);
    tokio::spawn(async move { loading.load_from_core().await });
    tokio::spawn(refresh_versions(Arc::clone(&projects)));
    if config.resync_interval_secs > 0 {
        let interval = Duration::from_secs(config.resync_interval_secs);
        tokio::spawn(resync_periodically(Arc::clone(&labelling), Arc::clone(&projects), interval));
    }
    Ok(AppState {
        core_status: watch_core(transport, config.core_poll_interval()),
        score_mode: config.score_mode,
        core,
        projects,
        labelling,
        scoring,
        media,
        configs: Arc::new(ConfigCache::default()),
        predict: PredictSettings {
            budget: Duration::from_secs(config.predict_budget_secs),
            chunk: config.predict_chunk as usize,
            concurrency: config.predict_concurrency as usize,
        },
        basic_auth: match (&config.basic_auth_user, &config.basic_auth_pass) {
            (Some(user), Some(pass)) => Some(Secret::new(&format!("{user}:{pass}"))),
            _ => None,
        },
        label_studio,
        webhook_secret,
    })
}

/// The Label Studio API client, if `LABEL_STUDIO_URL` is set.
fn label_studio(config: &Config, http: reqwest::Client) -> anyhow::Result<Option<Arc<LabelStudio>>> {
    let Some(url) = config.label_studio_url.clone() else {
        tracing::warn!("LABEL_STUDIO_URL is not set: images stored in Label Studio cannot be fetched");
        return Ok(None);
    };
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("LABEL_STUDIO_URL {url} must be an http:// or https:// URL");
    }
    let key =
        config.label_studio_api_key.as_deref().context("LABEL_STUDIO_URL is set but LABEL_STUDIO_API_KEY is not")?;
    Ok(Some(Arc::new(LabelStudio::new(url, ApiKey::parse(key)?, http))))
}

async fn resync_periodically(labelling: Arc<Labelling>, projects: Arc<Projects>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticker.tick().await;
        for ls_id in projects.ids() {
            labelling.submit(ls_id, Work::Resync { done: None });
        }
    }
}

async fn refresh_versions(projects: Arc<Projects>) {
    let mut ticker = tokio::time::interval(VERSION_REFRESH);
    loop {
        ticker.tick().await;
        projects.refresh_versions().await;
    }
}
