//! HTTPS: the gateway's rustls server configuration ([`server_config`]) and
//! [`TlsListener`], a TCP listener whose connections are TLS streams, which
//! `axum::serve` serves like the plain listener (so graceful shutdown is the same).
//!
//! TLS uses rustls with the `ring` crypto provider (as the rest of the workspace), the
//! protocol versions rustls enables by default (TLS 1.3 and 1.2) and ALPN `http/1.1`.
//! Handshakes run as tasks of their own, so a client that opens a connection and sends
//! nothing holds up no one else; one that has not finished its handshake within
//! [`HANDSHAKE_TIMEOUT`] is dropped.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::error::Error;

/// Longest time a client may take to complete its TLS handshake: 10 s.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the certificate chain and private key that `tls` names and builds the
/// server configuration.
///
/// # Errors
/// [`Error::Config`] naming the file when a file cannot be read, holds no PEM
/// certificate (the chain) or no PEM private key (PKCS#8, PKCS#1 or SEC1), or when the
/// key does not belong to the first certificate.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, Error> {
    let chain = read_chain(&tls.cert_chain)?;
    let key = read_key(&tls.private_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| Error::Config(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::Config(format!(
                "the TLS certificate chain {} and private key {} cannot be used together: {e}",
                tls.cert_chain.display(),
                tls.private_key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(path, "TLS certificate chain")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Config(format!(
                "the TLS certificate chain {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::Config(format!(
            "the TLS certificate chain {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks, the server's first)",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read_file(path, "TLS private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::Config(format!(
            "the TLS private key {} holds no usable private key (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {e}",
            path.display()
        ))
    })
}

/// A TCP listener whose accepted connections have completed a TLS handshake; an
/// [`axum::serve::Listener`], so `axum::serve` serves it as it serves a
/// [`TcpListener`]. Failed handshakes are logged at debug level and dropped.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

impl TlsListener {
    /// Serves TLS with `config` on the connections `tcp` accepts.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Some((tls, addr)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%addr, "TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => accept_error(e).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What `axum::serve` does with an accept error: a connection that went away is
/// skipped; anything else (e.g. too many open files) is logged and retried after 1 s.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
