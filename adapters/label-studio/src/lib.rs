//! `alps-label-studio`: an HTTP server that speaks Label Studio's ML-backend protocol
//! (what Label Studio 1.23 sends and expects, summarised in the README's "Use with Label Studio")
//! and forwards to alps-server over gRPC. It keeps no
//! state that cannot be rebuilt from Label Studio and the core.
//!
//! Data flows one way: [`http`] (routes) -> [`projects`] / [`predict`] / [`labels`] (the
//! labelling actor; [`translate`] turns Label Studio JSON into its work, [`training`] runs the
//! jobs) / [`scoring`] (background pool scoring) -> [`core_client`] (gRPC) and [`media`] /
//! [`ls_api`] (Label Studio).

pub mod config;
pub mod core_client;
pub mod core_link;
pub mod http;
pub mod label_config;
pub mod labels;
pub mod ls_api;
pub mod media;
pub mod metrics;
pub mod predict;
pub mod projects;
pub mod scoring;
pub mod tls;
pub mod training;
pub mod translate;
pub mod version_sync;

/// The adapter's HTTP client for Label Studio and task media: rustls with the ring provider
/// (reqwest's default aws-lc needs cmake to build), no automatic redirects ([`media`] follows them
/// by hand so credentials never leave Label Studio's origin), 2 s connect timeout.
///
/// # Errors
/// If the TLS backend cannot be initialised.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    http_client_builder().build()
}

/// The settings of [`http_client`], for clients that add their own (the media client's
/// address-checking resolver).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // Fails only if a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(2))
        .user_agent(concat!("alps-label-studio/", env!("CARGO_PKG_VERSION")))
}
