//! The adapter's link to alps-server: the gRPC transport (optional TLS, optional bearer token) and
//! a background task that checks the core's gRPC health (`grpc.health.v1`) and publishes the
//! result, so HTTP handlers read it without waiting.
//!
//! Every call to the core goes through one [`CoreTransport`]: it adds `authorization: Bearer
//! <token>` when a token is configured and notes whether the core refused the credentials
//! (gRPC status UNAUTHENTICATED or PERMISSION_DENIED), which `/health` then reports as
//! `model_server: "unauthorized"`.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use alps_proto::v1::{ListProjectsRequest, project_service_client::ProjectServiceClient};
use http::HeaderValue;
use serde::Serialize;
use tokio::sync::watch;
use tonic::{
    Code,
    body::Body,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// How long one health check may take before the core counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// The core's state as last seen, reported as `model_server` by `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreStatus {
    /// The core answered SERVING.
    Ready,
    /// The core answered but is not serving yet (starting) or any more (draining).
    Loading,
    /// No answer within [`CHECK_TIMEOUT`], connection refused (or TLS handshake failed), or not
    /// checked yet.
    Unreachable,
    /// The core answered UNAUTHENTICATED or PERMISSION_DENIED: `--core-token` is missing, wrong
    /// or revoked.
    Unauthorized,
}

impl CoreStatus {
    /// The word `/health` and the `alps_ls_core_link{state}` metric use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Loading => "loading",
            Self::Unreachable => "unreachable",
            Self::Unauthorized => "unauthorized",
        }
    }

    /// Every state, for the metric.
    pub const ALL: [Self; 4] = [Self::Ready, Self::Loading, Self::Unreachable, Self::Unauthorized];
}

/// Why the core link cannot be set up (startup errors, shown to the operator).
#[derive(Debug, thiserror::Error)]
pub enum CoreLinkError {
    /// `--core-url` is not a valid URI.
    #[error("invalid --core-url {url:?}: {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// The parser's complaint.
        source: tonic::transport::Error,
    },
    /// A certificate, key or CA file cannot be read.
    #[error("cannot read {flag} {path}: {source}", path = path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `https://` without a CA bundle: the adapter ships no root certificates.
    #[error(
        "--core-url is https:// but --core-tls-ca (ALPS_CORE_TLS_CA) is not set: give the PEM CA bundle that signed alps-server's certificate (for a publicly trusted one, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt)"
    )]
    NoCa,
    /// The TLS settings were refused (e.g. a malformed certificate).
    #[error("invalid TLS settings for the core link: {0}")]
    Tls(tonic::transport::Error),
    /// The token cannot be sent as an HTTP/2 header value. The token itself is never printed.
    #[error("--core-token (ALPS_CORE_TOKEN) must be 1 to 4096 visible ASCII characters")]
    Token,
}

/// How the adapter reaches alps-server (the `--core-*` flags).
#[derive(Clone, Default)]
pub struct CoreLinkOptions {
    /// PEM CA bundle that verifies the core's certificate; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain and private key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Bearer token sent on every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for CoreLinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreLinkOptions")
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Last credential outcome seen on any call, as a number in an atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum AuthOutcome {
    /// No answer yet.
    Unknown = 0,
    /// The core processed a call (whatever its result).
    Accepted = 1,
    /// UNAUTHENTICATED or PERMISSION_DENIED.
    Refused = 2,
}

/// The gRPC transport to the core: a lazily connected [`Channel`] that adds the bearer token and
/// watches for refused credentials. Cheap to clone; clones share the observation.
#[derive(Clone)]
pub struct CoreTransport {
    channel: Channel,
    token: Option<HeaderValue>,
    auth: Arc<AtomicU8>,
    /// Whether answers update `auth` (not for health checks, which may be open to all).
    observe: bool,
}

impl std::fmt::Debug for CoreTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("CoreTransport").field("token", &self.token.as_ref().map(|_| "..")).finish_non_exhaustive()
    }
}

impl CoreTransport {
    /// Wraps `channel`, sending `token` (if any) as `authorization: Bearer <token>`.
    ///
    /// # Errors
    /// [`CoreLinkError::Token`] if the token is empty, longer than 4096 bytes or not visible ASCII.
    pub fn new(channel: Channel, token: Option<&str>) -> Result<Self, CoreLinkError> {
        let token = token.map(bearer_header).transpose()?;
        Ok(Self { channel, token, auth: Arc::new(AtomicU8::new(AuthOutcome::Unknown as u8)), observe: true })
    }

    /// The same transport, but its answers leave the observation alone: a core's health service
    /// is often open to all, so its answers say nothing about the token.
    fn unobserved(&self) -> Self {
        Self { observe: false, ..self.clone() }
    }

    /// Whether the last answered call was refused for its credentials.
    fn refused(&self) -> bool {
        self.auth.load(Ordering::Relaxed) == AuthOutcome::Refused as u8
    }

    fn observe(auth: &AtomicU8, response: &http::Response<Body>) {
        let outcome = if refusal(response) { AuthOutcome::Refused } else { AuthOutcome::Accepted };
        auth.store(outcome as u8, Ordering::Relaxed);
    }
}

/// Whether a response says the credentials were refused: a trailers-only gRPC answer with
/// `grpc-status` 16 (UNAUTHENTICATED) or 7 (PERMISSION_DENIED) in its headers (how servers answer
/// calls their auth layer rejects), or HTTP 401/403 from a proxy in front of the core (which
/// tonic maps to the same codes).
fn refusal(response: &http::Response<Body>) -> bool {
    let refused_code = [Code::Unauthenticated, Code::PermissionDenied];
    let grpc_status = response.headers().get("grpc-status").and_then(|value| value.to_str().ok());
    let grpc_refused =
        grpc_status.and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| refused_code.contains(&code.into()));
    grpc_refused || matches!(response.status().as_u16(), 401 | 403)
}

fn bearer_header(token: &str) -> Result<HeaderValue, CoreLinkError> {
    let valid = !token.is_empty() && token.len() <= 4096 && token.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(CoreLinkError::Token);
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| CoreLinkError::Token)?;
    value.set_sensitive(true);
    Ok(value)
}

impl tower::Service<http::Request<Body>> for CoreTransport {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(token) = &self.token {
            request.headers_mut().insert(http::header::AUTHORIZATION, token.clone());
        }
        let answer = self.channel.call(request);
        let auth = self.observe.then(|| Arc::clone(&self.auth));
        Box::pin(async move {
            let response = answer.await?;
            if let Some(auth) = auth {
                Self::observe(&auth, &response);
            }
            Ok(response)
        })
    }
}

/// A lazily connected gRPC transport to the core at `url`; reconnects by itself after failures.
/// With a CA bundle the link uses TLS (an `http://` URL is taken as `https://`); an `https://`
/// URL needs one.
///
/// # Errors
/// [`CoreLinkError`] for a malformed URL, unreadable files, `https://` without a CA, bad TLS
/// material or an unusable token.
pub fn core_transport(url: &str, options: &CoreLinkOptions) -> Result<CoreTransport, CoreLinkError> {
    let url_error = |source| CoreLinkError::Url { url: url.to_owned(), source };
    let tls = options.tls_ca.is_some() || url.starts_with("https://");
    let url = match url.strip_prefix("http://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => url.to_owned(),
    };
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(url_error)?.connect_timeout(CHECK_TIMEOUT);
    if tls {
        let ca = options.tls_ca.as_deref().ok_or(CoreLinkError::NoCa)?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--core-tls-ca", ca)?));
        if let Some((cert, key)) = &options.tls_client {
            let identity =
                Identity::from_pem(read("--core-tls-client-cert", cert)?, read("--core-tls-client-key", key)?);
            config = config.identity(identity);
        }
        // tonic's rustls setup uses the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        endpoint = endpoint.tls_config(config).map_err(CoreLinkError::Tls)?;
    }
    CoreTransport::new(endpoint.connect_lazy(), options.token.as_deref())
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, CoreLinkError> {
    std::fs::read(path).map_err(|source| CoreLinkError::Read { flag, path: path.to_owned(), source })
}

/// Starts checking the core every `interval` and returns a receiver of the latest status.
/// Changes are logged once each (a refused token as a warning) and published in the
/// `alps_ls_core_link{state}` metric. The task ends when every receiver is dropped.
pub fn watch_core(transport: CoreTransport, interval: Duration) -> watch::Receiver<CoreStatus> {
    let (publish, status) = watch::channel(CoreStatus::Unreachable);
    crate::metrics::core_link(CoreStatus::Unreachable);
    tokio::spawn(async move {
        let mut client = HealthClient::new(transport.unobserved());
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut told_unreachable = false;
        loop {
            ticker.tick().await;
            let (checked, why) = check(&mut client).await;
            let now = match checked {
                // The health service may be open to all while the API needs the token: confirm
                // a refusal seen on another call with a cheap authenticated one.
                CoreStatus::Ready if transport.refused() => confirm_authorized(&transport).await,
                other => other,
            };
            let before = *publish.borrow();
            // The link starts as unreachable, so say why once (wrong CA, plaintext to TLS, ...).
            if now == CoreStatus::Unreachable && !told_unreachable {
                tracing::warn!(reason = why.as_deref().unwrap_or("no answer in time"), "alps-server is unreachable");
            }
            told_unreachable = now == CoreStatus::Unreachable;
            if now != before {
                crate::metrics::core_link(now);
                if now == CoreStatus::Unauthorized {
                    tracing::warn!(
                        from = before.as_str(),
                        "alps-server refused the adapter's credentials: check --core-token (ALPS_CORE_TOKEN)"
                    );
                } else {
                    tracing::info!(from = before.as_str(), to = now.as_str(), "core status changed");
                }
            }
            if publish.send(now).is_err() {
                return;
            }
        }
    });
    status
}

/// The core's health, with why it is unreachable when it is.
async fn check(client: &mut HealthClient<CoreTransport>) -> (CoreStatus, Option<String>) {
    let request = HealthCheckRequest { service: String::new() };
    match tokio::time::timeout(CHECK_TIMEOUT, client.check(request)).await {
        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => (CoreStatus::Ready, None),
        Ok(Ok(_)) => (CoreStatus::Loading, None),
        Ok(Err(status)) if is_refusal(&status) => (CoreStatus::Unauthorized, None),
        Ok(Err(status)) => {
            tracing::debug!(%status, "core health check failed");
            (CoreStatus::Unreachable, Some(failure_chain(&status)))
        }
        Err(_elapsed) => (CoreStatus::Unreachable, None),
    }
}

/// A failed call's message with its sources (the transport error says "connection error"; the
/// cause, e.g. an unknown CA, is further down).
fn failure_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

/// `Ready` unless an authenticated call (ListProjects) is refused.
async fn confirm_authorized(transport: &CoreTransport) -> CoreStatus {
    let mut client = ProjectServiceClient::new(transport.clone());
    let request = ListProjectsRequest::default();
    match tokio::time::timeout(CHECK_TIMEOUT, client.list_projects(request)).await {
        Ok(Err(status)) if is_refusal(&status) => CoreStatus::Unauthorized,
        Ok(_) => CoreStatus::Ready,
        Err(_elapsed) => CoreStatus::Unreachable,
    }
}

/// Whether a gRPC status says the credentials were refused.
pub fn is_refusal(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(url: &str) -> Result<CoreTransport, CoreLinkError> {
        core_transport(url, &CoreLinkOptions::default())
    }

    #[test]
    fn status_serialises_as_the_spec_words() {
        for status in CoreStatus::ALL {
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{}\"", status.as_str()));
        }
        assert_eq!(serde_json::to_string(&CoreStatus::Unauthorized).unwrap(), "\"unauthorized\"");
    }

    #[test]
    fn malformed_core_url_is_rejected_with_the_url() {
        let error = plain("not a url").unwrap_err();
        assert!(error.to_string().contains("not a url"), "{error}");
    }

    #[test]
    fn https_needs_a_ca_bundle() {
        assert!(matches!(plain("https://core:50051"), Err(CoreLinkError::NoCa)));
    }

    #[test]
    fn unreadable_tls_files_name_the_flag() {
        let options = CoreLinkOptions { tls_ca: Some("/nonexistent/ca.pem".into()), ..CoreLinkOptions::default() };
        let error = core_transport("http://core:50051", &options).unwrap_err();
        assert!(error.to_string().contains("--core-tls-ca /nonexistent/ca.pem"), "{error}");
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_without_echoing_them() {
        for bad in ["", "has space", "new\nline", "ümlaut"] {
            let options = CoreLinkOptions { token: Some(bad.into()), ..CoreLinkOptions::default() };
            let error = core_transport("http://core:50051", &options).unwrap_err();
            assert!(matches!(error, CoreLinkError::Token), "{bad:?}");
            if !bad.is_empty() {
                assert!(!error.to_string().contains(bad), "{error}");
            }
        }
        let options = CoreLinkOptions { token: Some("s3cret-token".into()), ..CoreLinkOptions::default() };
        let transport = core_transport("http://core:50051", &options).unwrap();
        assert!(!format!("{transport:?} {options:?}").contains("s3cret"));
    }

    #[test]
    fn refusals_are_recognised_from_headers_and_http_status() {
        let response = |status: u16, grpc: Option<&str>| {
            let mut builder = http::Response::builder().status(status);
            if let Some(code) = grpc {
                builder = builder.header("grpc-status", code);
            }
            builder.body(Body::empty()).unwrap()
        };
        assert!(refusal(&response(200, Some("16"))));
        assert!(refusal(&response(200, Some("7"))));
        assert!(refusal(&response(401, None)));
        assert!(refusal(&response(403, None)));
        for accepted in
            [response(200, None), response(200, Some("0")), response(200, Some("5")), response(200, Some("x"))]
        {
            assert!(!refusal(&accepted));
        }
    }

    /// A CA certificate (PEM) and the issuer that signs with it.
    fn test_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, rcgen::Issuer::new(params, key))
    }

    /// A TLS gRPC health server (SERVING) for 127.0.0.1 signed by `issuer`; returns its port.
    async fn tls_health_server(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> u16 {
        use tonic::transport::{Server, ServerTlsConfig};
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert.pem(), key.serialize_pem()));
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serving = Server::builder().tls_config(tls).unwrap().add_service(health);
        tokio::spawn(serving.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
        port
    }

    #[tokio::test]
    async fn tls_verifies_the_core_against_the_given_ca_only() {
        let (ca, issuer) = test_ca();
        let (other_ca, _) = test_ca();
        let port = tls_health_server(&issuer).await;
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, other_ca_file) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
        std::fs::write(&ca_file, ca).unwrap();
        std::fs::write(&other_ca_file, other_ca).unwrap();
        let check_with = |ca: Option<&Path>, scheme: &str| {
            let tls_ca = ca.map(Path::to_owned);
            let options = CoreLinkOptions { tls_ca, ..CoreLinkOptions::default() };
            let transport = core_transport(&format!("{scheme}://127.0.0.1:{port}"), &options).unwrap();
            async move { check(&mut HealthClient::new(transport)).await }
        };
        assert_eq!(check_with(Some(&ca_file), "https").await, (CoreStatus::Ready, None));
        assert_eq!(check_with(Some(&ca_file), "http").await.0, CoreStatus::Ready, "http:// with a CA is upgraded");
        let (unverified, why) = check_with(Some(&other_ca_file), "https").await;
        assert_eq!(unverified, CoreStatus::Unreachable, "a server the CA did not sign was accepted");
        // The log says why, not only "transport error".
        assert!(why.as_deref().is_some_and(|why| why.contains("certificate")), "{why:?}");
        assert_eq!(check_with(None, "http").await.0, CoreStatus::Unreachable, "plaintext to a TLS server");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_unreachable() {
        // Bind then drop to get a port with (almost certainly) nobody listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let transport = plain(&format!("http://127.0.0.1:{port}")).unwrap();
        let mut status = watch_core(transport, Duration::from_millis(50));
        // The first published value is the initial Unreachable; wait for a real check result.
        status.changed().await.unwrap_or(());
        assert_eq!(*status.borrow(), CoreStatus::Unreachable);
    }
}
