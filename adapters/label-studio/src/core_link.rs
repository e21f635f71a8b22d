//! The adapter's view of alps-server: a background task checks the core's gRPC health
//! (`grpc.health.v1`) and publishes the result, so HTTP handlers read it without waiting.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// How long one health check may take before the core counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// The core's state as last seen, reported as `model_server` by `/health` (spec §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreStatus {
    /// The core answered SERVING.
    Ready,
    /// The core answered but is not serving yet (starting) or any more (draining).
    Loading,
    /// No answer within [`CHECK_TIMEOUT`], connection refused, or not checked yet.
    Unreachable,
}

/// Why the core URL is unusable.
#[derive(Debug, thiserror::Error)]
#[error("invalid --core-url {url:?}: {source}")]
pub struct CoreUrlError {
    url: String,
    source: tonic::transport::Error,
}

/// A lazily connected gRPC channel to the core; reconnects by itself after failures.
///
/// # Errors
/// [`CoreUrlError`] if `url` is not a valid `http://host:port` URI.
pub fn core_channel(url: &str) -> Result<Channel, CoreUrlError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| CoreUrlError { url: url.to_owned(), source })?
        .connect_timeout(CHECK_TIMEOUT);
    Ok(endpoint.connect_lazy())
}

/// Starts checking the core every `interval` and returns a receiver of the latest status.
/// The task ends when every receiver is dropped.
pub fn watch_core(channel: Channel, interval: Duration) -> watch::Receiver<CoreStatus> {
    let (publish, status) = watch::channel(CoreStatus::Unreachable);
    tokio::spawn(async move {
        let mut client = HealthClient::new(channel);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = check(&mut client).await;
            let before = *publish.borrow();
            if now != before {
                tracing::info!(from = ?before, to = ?now, "core status changed");
            }
            if publish.send(now).is_err() {
                return;
            }
        }
    });
    status
}

async fn check(client: &mut HealthClient<Channel>) -> CoreStatus {
    let request = HealthCheckRequest { service: String::new() };
    match tokio::time::timeout(CHECK_TIMEOUT, client.check(request)).await {
        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => CoreStatus::Ready,
        Ok(Ok(_)) => CoreStatus::Loading,
        Ok(Err(status)) => {
            tracing::debug!(%status, "core health check failed");
            CoreStatus::Unreachable
        }
        Err(_elapsed) => CoreStatus::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serialises_as_the_spec_words() {
        for (status, word) in [
            (CoreStatus::Ready, "\"ready\""),
            (CoreStatus::Loading, "\"loading\""),
            (CoreStatus::Unreachable, "\"unreachable\""),
        ] {
            assert_eq!(serde_json::to_string(&status).unwrap(), word);
        }
    }

    #[test]
    fn malformed_core_url_is_rejected_with_the_url() {
        let error = core_channel("not a url").unwrap_err();
        assert!(error.to_string().contains("not a url"), "{error}");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_unreachable() {
        // Bind then drop to get a port with (almost certainly) nobody listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let channel = core_channel(&format!("http://127.0.0.1:{port}")).unwrap();
        let mut status = watch_core(channel, Duration::from_millis(50));
        // The first published value is the initial Unreachable; wait for a real check result.
        status.changed().await.unwrap_or(());
        assert_eq!(*status.borrow(), CoreStatus::Unreachable);
    }
}
