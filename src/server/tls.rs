//! Optional TLS on a server's ports (`[tls]`, see [`crate::config::TlsConfig`]):
//!
//! - the api port and every worker transport port: `cert_file` + `key_file`; those
//!   listeners then speak only HTTPS (and WSS on `transport.ws`);
//! - the cluster port: mutual TLS with `cluster_cert_file` + `cluster_key_file`, peers'
//!   certificates checked against `cluster_ca_file`; this node presents the same
//!   certificate as a client when it dials its peers (Raft RPC, forwarding, probes).
//!
//! The handshake runs in its own task per connection, before the connection reaches
//! axum, so a slow or plain-HTTP client cannot hold up the accept loop; it fails the
//! handshake and is closed. Certificates are read once at start-up: rotate them by
//! restarting one node at a time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, ServerConfig as RustlsServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ServerConfig, TlsConfig};
use crate::tls::{client_config, load_certs, load_key, load_roots, provider, TlsError};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS a server runs with, loaded (and checked) at start-up.
#[derive(Clone, Default)]
pub struct ServerTls {
    /// The api and transport ports.
    pub public: Option<TlsAcceptor>,
    /// The cluster port (client certificates required).
    pub cluster: Option<TlsAcceptor>,
    /// What this node uses to dial peers' cluster ports (the cluster CA, and its own
    /// certificate as the client certificate).
    pub cluster_client: Option<ClientConfig>,
}

fn required<'a>(key: &str, p: &'a Option<std::path::PathBuf>) -> Result<&'a Path, TlsError> {
    p.as_deref().ok_or_else(|| TlsError {
        key: key.into(),
        path: Default::default(),
        message: "is not set".into(),
    })
}

/// Reads every configured certificate, key and CA file.
pub fn load(cfg: &TlsConfig) -> Result<ServerTls, TlsError> {
    let mut out = ServerTls::default();
    if cfg.public_enabled() {
        let cert_path = required("tls.cert_file", &cfg.cert_file)?;
        let key_path = required("tls.key_file", &cfg.key_file)?;
        let certs = load_certs("tls.cert_file", cert_path)?;
        let key = load_key("tls.key_file", key_path)?;
        let config = RustlsServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError {
                key: "tls.key_file".into(),
                path: key_path.to_path_buf(),
                message: format!("does not go with tls.cert_file: {e}"),
            })?;
        out.public = Some(TlsAcceptor::from(Arc::new(config)));
    }
    if cfg.cluster_enabled() {
        let cert_path = required("tls.cluster_cert_file", &cfg.cluster_cert_file)?;
        let key_path = required("tls.cluster_key_file", &cfg.cluster_key_file)?;
        let ca_path = required("tls.cluster_ca_file", &cfg.cluster_ca_file)?;
        let certs = load_certs("tls.cluster_cert_file", cert_path)?;
        let key = load_key("tls.cluster_key_file", key_path)?;
        let roots = load_roots("tls.cluster_ca_file", ca_path)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError {
                key: "tls.cluster_ca_file".into(),
                path: ca_path.to_path_buf(),
                message: format!("cannot verify peers with it: {e}"),
            })?;
        let mismatch = |e: tokio_rustls::rustls::Error| TlsError {
            key: "tls.cluster_key_file".into(),
            path: key_path.to_path_buf(),
            message: format!("does not go with tls.cluster_cert_file: {e}"),
        };
        let config = RustlsServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(mismatch)?;
        out.cluster = Some(TlsAcceptor::from(Arc::new(config)));
        out.cluster_client = Some(client_config(
            Some(("tls.cluster_ca_file", ca_path)),
            Some((certs, key)),
        )?);
    }
    Ok(out)
}

/// The URL of `path` on a peer's cluster port at `addr` (https with cluster TLS).
pub fn cluster_url(cfg: &ServerConfig, addr: &str, path: &str) -> String {
    let scheme = if cfg.tls.cluster_enabled() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}{path}")
}

/// A client for peers' cluster ports: https with the cluster CA and this node's
/// certificate when cluster TLS is on, plain http otherwise.
pub fn cluster_http_builder(tls: &ServerTls) -> reqwest_tls::ClientBuilder {
    match &tls.cluster_client {
        Some(c) => crate::tls::http_builder(c.clone()),
        None => crate::tls::default_http_builder(),
    }
}

/// A listener that hands axum only connections that completed the TLS handshake.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` (Nagle off) and runs each handshake in its own task. `what`
    /// names the port in the log lines of failed handshakes. The accept task ends, and
    /// the port closes, when the listener is dropped (axum's graceful shutdown).
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor, what: String) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = tcp.accept() => a,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(port = %what, error = %e, "Accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (tx, acceptor, what) = (tx.clone(), acceptor.clone(), what.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(port = %what, %peer, error = %e, "TLS handshake failed (a client without TLS, or one that does not trust this certificate?).");
                        }
                        Err(_) => {
                            tracing::info!(port = %what, %peer, "TLS handshake timed out.");
                        }
                    }
                });
            }
        });
        Self { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
