//! `alps-label-studio`: the binary edge of the Label Studio adapter.

use std::process::ExitCode;

use alps_label_studio::{
    config::Config,
    core_link::{core_channel, watch_core},
    http::{AppState, router},
};
use alps_runtime::Shutdown;
use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;

fn main() -> ExitCode {
    let config = Config::parse();
    alps_runtime::init_logging(config.log_format);
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => alps_runtime::fatal("alps-label-studio", format!("{error:#}")),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;
    let channel = core_channel(&config.core_url)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let state = AppState { core: watch_core(channel, config.core_poll_interval()), score_mode: config.score_mode };
    let app = router(state, &config.base_path);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        http = %listener.local_addr()?,
        core_url = %config.core_url,
        base_path = %config.base_path,
        "listening"
    );
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
