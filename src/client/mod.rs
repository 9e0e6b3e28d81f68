//! A Rust client of the raftjob HTTP API. It takes several server addresses and uses
//! any that answers, so callers never need to know the leader.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use tokio_rustls::rustls::ClientConfig;

use crate::tls::{HttpClient, TlsError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no server answered ({servers}): {last}")]
    Unreachable { servers: String, last: String },
    #[error("{status}: {code}: {detail}")]
    Api {
        status: u16,
        code: String,
        detail: String,
        problem: Value,
    },
    #[error("cannot decode the answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// The problem `code` of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The CA every [`Client`] of this process trusts unless told otherwise (the CLI's
/// `--ca-file`); set once, before clients are built.
static DEFAULT_CA: OnceLock<ClientConfig> = OnceLock::new();

/// Makes every client built afterwards in this process trust the CA in `path` (PEM)
/// and use https for addresses given without a scheme. The CLI calls it for
/// `--ca-file` / `RAFTJOB_CA_FILE`; a second call is ignored.
pub fn set_default_ca_file(path: &Path) -> Result<(), TlsError> {
    let config = crate::tls::client_config(Some(("ca_file", path)), None)?;
    let _ = DEFAULT_CA.set(config);
    Ok(())
}

#[derive(Clone)]
pub struct Client {
    http: HttpClient,
    servers: Vec<String>,
    token: String,
    /// The servers as given, kept to rebuild the URLs when the CA changes.
    raw: Vec<String>,
    connect: Duration,
    total: Duration,
}

/// `host:port` → `{scheme}://host:port`; URLs are kept as given.
fn base_url(s: &str, secure: bool) -> String {
    if s.starts_with("http://") || s.starts_with("https://") {
        s.trim_end_matches('/').to_string()
    } else if secure {
        format!("https://{s}")
    } else {
        format!("http://{s}")
    }
}

fn build_http(tls: Option<&ClientConfig>, connect: Duration, total: Duration) -> HttpClient {
    let builder = match tls {
        Some(c) => crate::tls::http_builder(c.clone()),
        None => crate::tls::default_http_builder(),
    };
    builder
        .connect_timeout(connect)
        .timeout(total)
        .build()
        .expect("reqwest client builds")
}

impl Client {
    /// `servers` are api addresses (`host:port` or URLs). `host:port` means http, or
    /// https when a CA was given ([`Client::with_ca_file`], [`set_default_ca_file`]);
    /// `https://` URLs without a CA trust the public web PKI roots.
    pub fn new(
        servers: impl IntoIterator<Item = impl Into<String>>,
        token: impl Into<String>,
    ) -> Self {
        let raw: Vec<String> = servers.into_iter().map(Into::into).collect();
        let tls = DEFAULT_CA.get();
        let (connect, total) = (Duration::from_secs(2), Duration::from_secs(30));
        Self {
            http: build_http(tls, connect, total),
            servers: raw.iter().map(|s| base_url(s, tls.is_some())).collect(),
            token: token.into(),
            raw,
            connect,
            total,
        }
    }

    /// Trusts the CA in `path` (PEM) for https, and uses https for addresses given
    /// without a scheme.
    pub fn with_ca_file(mut self, path: &Path) -> Result<Self, TlsError> {
        let config = crate::tls::client_config(Some(("ca_file", path)), None)?;
        self.http = build_http(Some(&config), self.connect, self.total);
        self.servers = self.raw.iter().map(|s| base_url(s, true)).collect();
        Ok(self)
    }

    /// Sends a request to the first server that accepts the connection.
    pub async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let mut last = String::new();
        for base in &self.servers {
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    last = e.to_string();
                    continue;
                }
                Err(e) => {
                    return Err(ClientError::Unreachable {
                        servers: base.clone(),
                        last: e.to_string(),
                    })
                }
            };
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            if !status.is_success() {
                let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                return Err(ClientError::Api {
                    status: status.as_u16(),
                    code: problem["code"].as_str().unwrap_or("unknown").to_string(),
                    detail: problem["detail"].as_str().unwrap_or_default().to_string(),
                    problem,
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()));
        }
        Err(ClientError::Unreachable {
            servers: self.servers.join(", "),
            last,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send::<(), Value>(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body), None).await
    }

    pub async fn post_idempotent(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body), Some(key)).await
    }

    pub async fn create_app(&self, name: &str) -> Result<Value, ClientError> {
        self.post("/api/v1/apps", &serde_json::json!({ "name": name }))
            .await
    }

    pub async fn create_job(&self, spec: &Value) -> Result<Value, ClientError> {
        self.post("/api/v1/jobs", spec).await
    }

    pub async fn get_job(&self, id: u64) -> Result<Value, ClientError> {
        self.get(&format!("/api/v1/jobs/{id}")).await
    }

    pub async fn cluster(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/cluster").await
    }

    /// Like [`Client::new`], with the connect timeout (per server) and the whole
    /// request's timeout chosen by the caller.
    pub fn with_timeouts(
        servers: impl IntoIterator<Item = impl Into<String>>,
        token: impl Into<String>,
        connect: Duration,
        total: Duration,
    ) -> Self {
        let mut c = Self::new(servers, token);
        c.http = build_http(DEFAULT_CA.get(), connect, total);
        (c.connect, c.total) = (connect, total);
        c
    }

    /// The server base URLs, in the order they are tried.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Like [`Client::send`] with a JSON body, but it moves on to the next server after
    /// *any* transport failure (a timeout, a reset connection) when the request is safe
    /// to repeat: a `GET`, or a write with an idempotency key. When no server answers,
    /// the error names every address tried with its own failure. A write without a key
    /// stops at the first server that took the request without answering, because it
    /// may have been applied.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let repeatable = method == Method::GET || idempotency_key.is_some();
        let mut failures = Vec::new();
        for base in &self.servers {
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() || repeatable => {
                    failures.push(format!("{base}: {}", describe_transport_error(&e)));
                    continue;
                }
                Err(e) => {
                    return Err(ClientError::Unreachable {
                        servers: base.clone(),
                        last: format!(
                            "{base}: {} (the request may or may not have been applied)",
                            describe_transport_error(&e)
                        ),
                    })
                }
            };
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) if repeatable => {
                    failures.push(format!("{base}: {}", describe_transport_error(&e)));
                    continue;
                }
                Err(e) => return Err(ClientError::Decode(describe_transport_error(&e))),
            };
            if !status.is_success() {
                let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let detail = match problem["detail"].as_str() {
                    Some(d) if !d.is_empty() => d.to_string(),
                    _ => format!("HTTP {status} from {base}"),
                };
                return Err(ClientError::Api {
                    status: status.as_u16(),
                    code: problem["code"].as_str().unwrap_or("unknown").to_string(),
                    detail,
                    problem,
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Decode(format!(
                    "{base} answered HTTP {status} with something other than JSON ({e}); is it a raftjob api port?"
                ))
            });
        }
        Err(ClientError::Unreachable {
            servers: self.servers.join(", "),
            last: failures.join("; "),
        })
    }
}

/// A transport error with its innermost cause ("Connection refused (os error 111)"),
/// which reqwest's own message leaves out.
pub fn describe_transport_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        innermost = s.to_string();
        source = s.source();
    }
    let timed_out = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut found = false;
        while let Some(c) = cur {
            if let Some(r) = c.downcast_ref::<reqwest::Error>() {
                found |= r.is_timeout();
            }
            if let Some(r) = c.downcast_ref::<crate::tls::HttpError>() {
                found |= r.is_timeout();
            }
            cur = c.source();
        }
        found
    };
    if timed_out && !innermost.contains("timed out") {
        format!("timed out ({innermost})")
    } else {
        innermost
    }
}
