//! TLS plumbing shared by servers, workers and the CLI: rustls with the `ring` provider,
//! always passed explicitly (`*_builder_with_provider`), so no code path needs a
//! process-wide default `CryptoProvider` and nothing can panic for the lack of one.
//!
//! Loading: PEM files only. Every error names the configuration key and the file, so a
//! missing, unreadable or invalid certificate or key stops start-up with a message that
//! says which setting to fix. Server-side acceptors and listeners are in
//! [`crate::server::tls`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The HTTP client type of every raftjob client that may speak https (cluster links,
/// forwarding, workers, the CLI): reqwest 0.12 with rustls on `ring` (see Cargo.toml).
pub type HttpClient = reqwest_tls::Client;
pub type HttpError = reqwest_tls::Error;

/// A TLS file that cannot be used, with the setting that named it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{key}` = {path}: {message}")]
pub struct TlsError {
    pub key: String,
    pub path: PathBuf,
    pub message: String,
}

impl TlsError {
    fn new(key: &str, path: &Path, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The `ring` crypto provider, built on each call (cheap; it is a table of functions).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(key, path, format!("cannot read it: {e}")))
}

/// Every certificate of a PEM file (a chain: the leaf first); at least one.
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, format!("not a valid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            key,
            path,
            "no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError::new(
            key,
            path,
            format!("no valid PEM private key in it (PKCS#8, RSA or EC): {e}"),
        )
    })
}

/// A root store with every certificate of a PEM CA file.
pub fn load_roots(key: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(key, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A client config trusting the CA file `ca` (key, path), or the public web PKI roots
/// (Mozilla's, from `webpki-roots`) when there is none; with a client certificate
/// (`identity`: certificate and key, already loaded) for mutual TLS.
pub fn client_config(
    ca: Option<(&str, &Path)>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some((key, path)) => load_roots(key, path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            TlsError::new(
                "tls.cluster_key_file",
                Path::new("-"),
                format!("the key does not match the certificate: {e}"),
            )
        })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest client builder that uses `tls` for https (and plain TCP for http).
pub fn http_builder(tls: ClientConfig) -> reqwest_tls::ClientBuilder {
    reqwest_tls::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
}

/// A client for https with the public web PKI roots, or plain http.
pub fn default_http_builder() -> reqwest_tls::ClientBuilder {
    http_builder(client_config(None, None).expect("built-in roots load"))
}

/// Any stream a WebSocket client can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type WsStream = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Opens a WebSocket to `url` (`ws://` or `wss://`), with Nagle off; `wss://` uses
/// `tls` (or the public roots when `None`). Connection and TLS handshake failures are
/// returned as `Error::Io`, like a refused connection.
pub async fn ws_connect(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
) -> Result<WsStream, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::Error;
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|e| {
        Error::Url(
            tokio_tungstenite::tungstenite::error::UrlError::UnableToConnect(format!("{url}: {e}")),
        )
    })?;
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let config = match tls {
            Some(c) => c,
            None => Arc::new(client_config(None, None).expect("built-in roots load")),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, None).await?;
    Ok(socket)
}
