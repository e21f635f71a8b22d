//! TLS on the gRPC and REST listeners: rustls (ring), certificate and key from PEM files,
//! optional client certificate verification (mutual TLS), re-read when the files change.
//!
//! Each accepted connection is handshaken with the configuration current at that moment, so a
//! rotated certificate applies to new connections at once and open ones finish on the old one.
//! A rotation that leaves bad files (a key that does not match, a half-written PEM) keeps the
//! previous configuration and logs why. The gRPC listener offers ALPN `h2` (gRPC runs on
//! HTTP/2), the REST listener `http/1.1`.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

/// Longest a client may take to complete the TLS handshake before its connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection accepted by [`Tls::incoming`].
pub type TlsConnection = TlsStream<TcpStream>;

/// Where the TLS material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to (`--tls-client-ca`); `None`
    /// = no client certificates asked.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file, for watching.
    pub fn paths(&self) -> Vec<&Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten().collect()
    }
}

/// Why the TLS configuration cannot be built; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{flag} {path}: {message}")]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA set cannot verify anything.
    #[error("--tls-client-ca: {0}")]
    ClientCa(String),
}

/// The live TLS configuration of the gRPC listener.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Reads the files; the server refuses to start on bad ones.
    ///
    /// # Errors
    /// [`TlsError`] naming the file.
    pub fn open(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = build(&files)?;
        Ok(Arc::new(Self { files, config: ArcSwap::from_pointee(config) }))
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; bad files keep the previous configuration (and are logged).
    pub fn reload(&self) {
        match build(&self.files) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate re-read");
            }
            Err(error) => tracing::error!(%error, "TLS files not re-read; the previous certificate stays in use"),
        }
    }

    /// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeds.
    /// Handshakes run concurrently, each bounded by a timeout, so a slow client never holds up
    /// others. Stops accepting when the returned stream is dropped.
    pub fn incoming(self: Arc<Self>, listener: TcpListener) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        self.accepting(listener, None)
    }

    /// As [`Tls::incoming`], offering ALPN `http/1.1` instead of `h2`, for the HTTP/1 REST
    /// listener (a client that offers both must not be steered to HTTP/2 there).
    pub fn incoming_http1(self: Arc<Self>, listener: TcpListener) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        self.accepting(listener, Some(vec![b"http/1.1".to_vec()]))
    }

    fn accepting(
        self: Arc<Self>,
        listener: TcpListener,
        alpn: Option<Vec<Vec<u8>>>,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = sender.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small gRPC responses must not wait for Nagle's algorithm (see server.rs).
                let _ = tcp.set_nodelay(true);
                let mut config = self.config.load_full();
                if let Some(protocols) = &alpn {
                    let mut own = ServerConfig::clone(&config);
                    own.alpn_protocols.clone_from(protocols);
                    config = Arc::new(own);
                }
                let acceptor = TlsAcceptor::from(config);
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}

fn pem_error(flag: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { flag, path: path.to_owned(), message: message.to_string() }
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = certificates("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error("--tls-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("--tls-client-ca", path)? {
                roots.add(cert).map_err(|e| pem_error("--tls-client-ca", path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_matching_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        Tls::open(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: Some(cert.clone()) }).unwrap();
        let missing = Tls::open(TlsFiles { cert: dir.path().join("none"), key: key.clone(), client_ca: None });
        assert!(missing.unwrap_err().to_string().starts_with("--tls-cert "));
        let swapped = Tls::open(TlsFiles { cert: key.clone(), key: key.clone(), client_ca: None });
        assert!(swapped.unwrap_err().to_string().contains("no PEM certificate"));
        let mismatched = Tls::open(TlsFiles { cert: cert.clone(), key: other_key, client_ca: None });
        assert!(mismatched.is_err(), "a key of another certificate must be refused");
    }

    #[test]
    fn a_bad_rotation_keeps_the_previous_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let tls = Tls::open(TlsFiles { cert: cert.clone(), key, client_ca: None }).unwrap();
        let before = Arc::as_ptr(&tls.config.load_full());
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
        tls.reload();
        assert_eq!(Arc::as_ptr(&tls.config.load_full()), before);
    }
}
