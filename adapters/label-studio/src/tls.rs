//! HTTPS on the adapter's own listener (`--tls-cert` / `--tls-key`): rustls with the ring
//! provider, served by `axum-server`. The files are PEM: a certificate chain (leaf first) and a
//! PKCS#8, PKCS#1 or SEC1 private key. They are checked every [`RELOAD_CHECK`] and re-read when
//! either changes, so a renewed certificate needs no restart; a broken new pair is logged and the
//! previous one keeps serving.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// How often the certificate and key files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// Why the certificate or key cannot be used (shown to the operator; never contains key bytes).
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// A file is missing, unreadable, or has no PEM block of the expected kind.
    #[error("cannot read {flag} {path}: {reason}", path = path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("--tls-cert and --tls-key are not a usable pair: {0}")]
    Pair(rustls::Error),
}

/// A rustls server configuration from the PEM files, offering HTTP/1.1 by ALPN.
///
/// # Errors
/// [`TlsFileError`] naming the file or the problem.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsFileError> {
    let read_error = |flag, path: &Path, reason: String| TlsFileError::Read { flag, path: path.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|error| read_error("--tls-cert", cert, error.to_string()))?;
    if chain.is_empty() {
        return Err(read_error("--tls-cert", cert, "no CERTIFICATE block".into()));
    }
    // The pem error names the file's problem, never the key material.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|error| read_error("--tls-key", key, error.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsFileError::Pair)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsFileError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads the pair for `axum-server`.
///
/// # Errors
/// As [`server_config`].
pub fn rustls_config(cert: &Path, key: &Path) -> Result<RustlsConfig, TlsFileError> {
    server_config(cert, key).map(RustlsConfig::from_config)
}

/// Re-reads the pair into `config` whenever either file's modification time changes, every
/// [`RELOAD_CHECK`]. Runs until the process ends.
pub async fn reload_on_change(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let mut seen = modified(&cert, &key);
    let mut ticker = tokio::time::interval(RELOAD_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = modified(&cert, &key);
        if now == seen {
            continue;
        }
        seen = now;
        match server_config(&cert, &key) {
            Ok(new) => {
                config.reload_from_config(new);
                tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
            }
            Err(error) => tracing::warn!(%error, "kept the previous TLS certificate"),
        }
    }
}

fn modified(cert: &Path, key: &Path) -> [Option<SystemTime>; 2] {
    [cert, key].map(|path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_matching_pair_loads_with_http1_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn mismatched_missing_and_swapped_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, _) = write_pair(dir.path(), "a");
        let (_, key_b) = write_pair(dir.path(), "b");
        assert!(matches!(server_config(&cert_a, &key_b), Err(TlsFileError::Pair(_))));
        let missing = dir.path().join("missing.pem");
        let error = server_config(&missing, &key_b).unwrap_err();
        assert!(error.to_string().contains("--tls-cert"), "{error}");
        // A key file given as the certificate has no CERTIFICATE block.
        let error = server_config(&key_b, &key_b).unwrap_err();
        assert!(matches!(&error, TlsFileError::Read { flag: "--tls-cert", .. }), "{error}");
        let error = server_config(&cert_a, &cert_a).unwrap_err();
        assert!(matches!(&error, TlsFileError::Read { flag: "--tls-key", .. }), "{error}");
    }
}
