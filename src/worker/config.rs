//! Worker settings: flags, `RAFTJOB_WORKER_*` environment variables and an optional
//! TOML file (flags > env > file).

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::WorkerError;

/// Protocols a worker can speak (case-insensitive).
pub const WORKER_PROTOCOLS: &[&str] = &["http", "ws"];

/// `raftjob worker` flags.
#[derive(Debug, Clone, Default, Args)]
pub struct WorkerArgs {
    /// TOML file with the same keys as the flags (snake_case).
    #[arg(long, env = "RAFTJOB_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The app this worker runs jobs for.
    #[arg(long, env = "RAFTJOB_WORKER_APP")]
    pub app: Option<String>,
    /// The app's worker token (from `POST /api/v1/apps`).
    #[arg(long, env = "RAFTJOB_WORKER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Server transport addresses for this protocol, comma separated; any one is enough.
    #[arg(long, env = "RAFTJOB_WORKER_SERVERS", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// `http` (servers call this worker's endpoint) or `ws` (one outbound WebSocket).
    #[arg(long, env = "RAFTJOB_WORKER_PROTOCOL")]
    pub protocol: Option<String>,
    /// Only jobs asking for this tag (or for no tag) run here.
    #[arg(long, env = "RAFTJOB_WORKER_TAG")]
    pub tag: Option<String>,
    /// Unique within the app (default: host name and process id).
    #[arg(long, env = "RAFTJOB_WORKER_NAME")]
    pub name: Option<String>,
    /// Listen address of this worker's dispatch endpoint (http protocol only).
    #[arg(long, env = "RAFTJOB_WORKER_LISTEN")]
    pub listen: Option<String>,
    /// Address servers dial for the dispatch endpoint, when it differs from --listen.
    #[arg(long, env = "RAFTJOB_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Attempts run at once at most.
    #[arg(long, env = "RAFTJOB_WORKER_MAX_CONCURRENCY")]
    pub max_concurrency: Option<u32>,
    /// Heartbeat interval; by default the one the server asks for.
    #[arg(long, env = "RAFTJOB_WORKER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Append one JSON line per dispatch received and per execution start and end to
    /// this file (the event record jepsen-lite checks).
    #[arg(long, env = "RAFTJOB_WORKER_RECORD")]
    pub record: Option<PathBuf>,
    /// Speak HTTPS/WSS to the servers' transport ports (also implied by https:// or
    /// wss:// server addresses, and by --ca-file).
    #[arg(
        long,
        env = "RAFTJOB_WORKER_TLS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub tls: bool,
    /// PEM file of the CA that signed the servers' certificates (default: the public
    /// web PKI roots); implies --tls.
    #[arg(long, env = "RAFTJOB_WORKER_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Claim another version at registration (for testing version checks only).
    #[arg(long, hide = true, env = "RAFTJOB_WORKER_VERSION_OVERRIDE")]
    pub version_override: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    app: Option<String>,
    token: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    protocol: Option<String>,
    tag: Option<String>,
    name: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    max_concurrency: Option<u32>,
    heartbeat_ms: Option<u64>,
    record: Option<PathBuf>,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub app: String,
    pub token: String,
    pub servers: Vec<String>,
    /// Lower case.
    pub protocol: String,
    pub tag: Option<String>,
    pub name: String,
    pub listen: String,
    pub advertise: Option<String>,
    pub max_concurrency: u32,
    pub heartbeat_ms: Option<u64>,
    /// The version announced at registration.
    pub version: String,
    /// Where to append the worker event record ([`super::record`]), if anywhere.
    pub record: Option<PathBuf>,
    /// HTTPS/WSS to the transport ports; addresses without a scheme (configured or
    /// learned from discovery) then use `https://` / `wss://`.
    pub tls: bool,
    /// The CA that signed the servers' certificates (PEM); the public roots when unset.
    pub ca_file: Option<PathBuf>,
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let host = if host.is_empty() {
        "worker".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

impl WorkerConfig {
    /// A configuration for embedding: app, token, server transport addresses, protocol.
    pub fn new(
        app: impl Into<String>,
        token: impl Into<String>,
        servers: impl IntoIterator<Item = impl Into<String>>,
        protocol: &str,
    ) -> Self {
        Self {
            app: app.into(),
            token: token.into(),
            servers: servers.into_iter().map(Into::into).collect(),
            protocol: protocol.to_ascii_lowercase(),
            tag: None,
            name: default_name(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            max_concurrency: 16,
            heartbeat_ms: None,
            version: crate::protocol::PROTOCOL_VERSION.to_string(),
            record: None,
            tls: false,
            ca_file: None,
        }
    }

    pub fn load(args: &WorkerArgs) -> Result<Self, WorkerError> {
        let file: FileConfig = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    WorkerError::Config(format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str(&text)
                    .map_err(|e| WorkerError::Config(format!("{}: {e}", path.display())))?
            }
        };
        let missing = |key: &str, flag: &str, env: &str| {
            WorkerError::Config(format!(
                "`{key}` is missing: pass {flag} or set {env} (or `{key}` in the config file)"
            ))
        };
        let app = args
            .app
            .clone()
            .or(file.app)
            .ok_or_else(|| missing("app", "--app", "RAFTJOB_WORKER_APP"))?;
        let token = args
            .token
            .clone()
            .or(file.token)
            .ok_or_else(|| missing("token", "--token", "RAFTJOB_WORKER_TOKEN"))?;
        let servers = if args.servers.is_empty() {
            file.servers
        } else {
            args.servers.clone()
        };
        let servers: Vec<String> = servers
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(missing("servers", "--servers", "RAFTJOB_WORKER_SERVERS"));
        }
        let protocol = args
            .protocol
            .clone()
            .or(file.protocol)
            .ok_or_else(|| missing("protocol", "--protocol", "RAFTJOB_WORKER_PROTOCOL"))?;
        let mut cfg = Self::new(app, token, servers, &protocol);
        cfg.tag = args.tag.clone().or(file.tag);
        if let Some(name) = args.name.clone().or(file.name) {
            cfg.name = name;
        }
        if let Some(listen) = args.listen.clone().or(file.listen) {
            cfg.listen = listen;
        }
        cfg.advertise = args.advertise.clone().or(file.advertise);
        if let Some(m) = args.max_concurrency.or(file.max_concurrency) {
            cfg.max_concurrency = m;
        }
        cfg.heartbeat_ms = args.heartbeat_ms.or(file.heartbeat_ms);
        cfg.record = args.record.clone().or(file.record);
        cfg.ca_file = args.ca_file.clone().or(file.ca_file);
        cfg.tls = args.tls || file.tls || cfg.ca_file.is_some();
        if let Some(v) = &args.version_override {
            cfg.version = v.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), WorkerError> {
        if !WORKER_PROTOCOLS.contains(&self.protocol.as_str()) {
            return Err(WorkerError::Config(format!(
                "unknown protocol {:?}: use one of {}",
                self.protocol,
                WORKER_PROTOCOLS.join(", ")
            )));
        }
        if let Some(ca) = &self.ca_file {
            crate::tls::load_roots("ca_file", ca).map_err(|e| {
                WorkerError::Config(format!("{e} (--ca-file, RAFTJOB_WORKER_CA_FILE)"))
            })?;
        }
        if self.max_concurrency == 0 {
            return Err(WorkerError::Config(
                "max_concurrency must be at least 1".into(),
            ));
        }
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !ok(&self.name) {
            return Err(WorkerError::Config(format!(
                "name {:?}: 1 to 64 letters, digits, '.', '_' or '-'",
                self.name
            )));
        }
        Ok(())
    }
}
