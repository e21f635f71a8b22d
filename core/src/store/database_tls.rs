//! TLS to PostgreSQL. `--database-url` asks for it the libpq way, with `sslmode=require`,
//! `verify-ca` or `verify-full`. Whichever it names, the server's certificate chain is verified
//! (rustls with ring) against `--database-ca-file` when given, else against the system's trusted
//! roots, and the certificate must name the host the URL names: libpq's `require` without a
//! root file checks neither, but ALPS never talks TLS to a server it has not verified. Without
//! one of those modes, sessions are plaintext (libpq's default `prefer` falls back to plaintext
//! here, as it does in libpq against a server without TLS).

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why TLS to PostgreSQL cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseTlsError {
    /// The CA file cannot be read or holds no usable certificate.
    #[error("--database-ca-file {path}: {message}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CA file without a URL that asks for TLS: the file would be silently ignored.
    #[error("--database-ca-file is given but --database-url does not ask for TLS: add sslmode=verify-full to it")]
    NotAsked,
    /// TLS is asked for, no CA file is given, and the system trusts no root certificate.
    #[error("--database-url asks for TLS but this system has no trusted root certificates: give --database-ca-file")]
    NoRoots,
}

/// `url` with libpq's `verify-ca` and `verify-full` modes written as `require`, the strongest
/// mode the `postgres` crate parses; here it verifies as `verify-full` does.
pub fn normalised_url(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require")
}

/// The TLS connector for sessions of `config` (parsed from [`normalised_url`]), or `None` for
/// plaintext.
///
/// # Errors
/// [`DatabaseTlsError`].
pub fn connector(
    config: &tokio_postgres::Config,
    ca_file: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, DatabaseTlsError> {
    if !matches!(config.get_ssl_mode(), SslMode::Require) {
        return match ca_file {
            Some(_) => Err(DatabaseTlsError::NotAsked),
            None => Ok(None),
        };
    }
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let error = |message: String| DatabaseTlsError::CaFile { path: path.to_owned(), message };
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|e| error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error(e.to_string()))?;
            for certificate in certificates {
                roots.add(certificate).map_err(|e| error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(error("no PEM certificate in the file".into()));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(DatabaseTlsError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}
