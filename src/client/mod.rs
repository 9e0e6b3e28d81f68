//! A Rust client of the raftjob HTTP API. It takes several server addresses and uses
//! any that answers, so callers never need to know the leader.

use std::time::Duration;

use reqwest::Method;
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

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Vec<String>,
    token: String,
}

impl Client {
    /// `servers` are api addresses (`host:port` or URLs).
    pub fn new(
        servers: impl IntoIterator<Item = impl Into<String>>,
        token: impl Into<String>,
    ) -> Self {
        let servers = servers
            .into_iter()
            .map(|s| {
                let s: String = s.into();
                if s.starts_with("http://") || s.starts_with("https://") {
                    s.trim_end_matches('/').to_string()
                } else {
                    format!("http://{s}")
                }
            })
            .collect();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client builds");
        Self {
            http,
            servers,
            token: token.into(),
        }
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
}
