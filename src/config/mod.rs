//! One validated server configuration: a TOML file, overlaid by `RAFTJOB_*`
//! environment variables, overlaid by command-line flags (see [`ServerArgs`]).
//!
//! Validation happens once, at start-up, and every error names the key and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// Worker protocols a server can offer; names are case-insensitive.
pub const PROTOCOLS: &[&str] = &["http", "ws"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for raftjob: {message}")]
    Parse { path: String, message: String },
    #[error("`{key}` is missing: {fix}")]
    Missing {
        key: &'static str,
        fix: &'static str,
    },
    #[error("`{key}` = {value:?} is invalid: {fix}")]
    Invalid {
        key: String,
        value: String,
        fix: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        fix: fix.into(),
    }
}

/// Raft timing. openraft starts an election after `election_timeout_max` (the
/// leader lease) plus a random `election_timeout_min..max` without hearing from the
/// leader, so the defaults notice a dead leader after 0.75-1.0 s. The heartbeat
/// interval is also the timeout of each AppendEntries, including the follower's fsync.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower catches up
    /// from the log instead of a full snapshot.
    pub logs_to_keep: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_logs_since_last: 10_000,
            logs_to_keep: 5_000,
        }
    }
}

/// Worker liveness and dispatch timing, measured by the leader.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerTuning {
    /// How often workers send heartbeats (told to them at registration).
    pub heartbeat_ms: u64,
    /// A worker kills its attempts when it could not renew their lease for this long.
    pub lease_ms: u64,
    /// Extra time the leader waits after a lease before declaring an attempt lost, so a
    /// worker has always killed its attempt before the leader dispatches it elsewhere.
    pub grace_ms: u64,
    /// Timeout of the leader's dispatch call to an `http` worker (capped at `grace_ms`).
    /// An unanswered dispatch is settled by the lease, never by this timeout.
    pub dispatch_timeout_ms: u64,
    /// An instance waits this long for a matching live worker, then fails.
    pub no_worker_timeout_ms: u64,
    /// The leader removes the registration of a worker it has not heard from for this
    /// long (and at least `lease_ms + grace_ms`), once no attempt of it is open.
    pub forget_after_ms: u64,
}

impl Default for WorkerTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1000,
            lease_ms: 5000,
            grace_ms: 2000,
            dispatch_timeout_ms: 5000,
            no_worker_timeout_ms: 30_000,
            forget_after_ms: 24 * 3600 * 1000,
        }
    }
}

/// The leader's scheduler and history retention.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerTuning {
    /// A fire time at most this late (for example across a leader election) still
    /// fires normally; a later one is a misfire and the job's misfire policy decides.
    pub misfire_threshold_ms: u64,
    /// Most missed fire times one `fire_all` catch-up runs per job; earlier ones are
    /// recorded as skipped.
    pub catch_up_limit: u32,
    /// Finished instances (with their log tails) and skip records are removed after this.
    pub retention_ms: u64,
    /// And beyond this many finished instances per job (oldest first); 0 = no count limit.
    pub retention_per_job: u32,
    /// How often the leader proposes retention pruning.
    pub prune_interval_ms: u64,
}

impl Default for SchedulerTuning {
    fn default() -> Self {
        Self {
            misfire_threshold_ms: 5_000,
            catch_up_limit: 100,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_per_job: 1000,
            prune_interval_ms: 10_000,
        }
    }
}

/// Test-only settings (`[testing]`); every one is off by default and the server logs a
/// loud warning when one is on.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Serve `POST /api/v1/debug/clock`, which shifts this node's wall clock (fault
    /// injection for jepsen-lite; never in production).
    pub clock_control: bool,
}

/// The `/metrics` endpoint (`[metrics]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When true, `/metrics` needs `Authorization: Bearer <admin_token>` like the API;
    /// off by default so a Prometheus on a trusted network scrapes without a secret.
    pub require_token: bool,
}

/// Optional TLS (`[tls]`): certificate and key files in PEM. `cert_file` and
/// `key_file` put the api port and every worker transport port on HTTPS/WSS only; the
/// three `cluster_*` files put the cluster port on mutual TLS (peers present
/// certificates signed by `cluster_ca_file`, and the cluster secret is still required).
/// The files are read at start-up ([`crate::server::tls`]); here only pairs are checked.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub cluster_cert_file: Option<PathBuf>,
    pub cluster_key_file: Option<PathBuf>,
    pub cluster_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// TLS on the api and transport ports.
    pub fn public_enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Mutual TLS on the cluster port (and https on every cluster-port client).
    pub fn cluster_enabled(&self) -> bool {
        self.cluster_cert_file.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let set = |p: &Option<PathBuf>| p.is_some();
        if set(&self.cert_file) != set(&self.key_file) {
            let (key, other) = if set(&self.cert_file) {
                ("tls.key_file", "tls.cert_file")
            } else {
                ("tls.cert_file", "tls.key_file")
            };
            return Err(invalid(key, "<unset>", format!("{other} is set, so set {key} too (--tls-cert and --tls-key, RAFTJOB_TLS_CERT and RAFTJOB_TLS_KEY), or neither for plain HTTP")));
        }
        let cluster = [
            ("tls.cluster_cert_file", set(&self.cluster_cert_file)),
            ("tls.cluster_key_file", set(&self.cluster_key_file)),
            ("tls.cluster_ca_file", set(&self.cluster_ca_file)),
        ];
        if cluster.iter().any(|(_, s)| *s) {
            if let Some((key, _)) = cluster.iter().find(|(_, s)| !*s) {
                return Err(invalid(*key, "<unset>", "cluster TLS needs all three of tls.cluster_cert_file, tls.cluster_key_file and tls.cluster_ca_file (--tls-cluster-cert, --tls-cluster-key, --tls-cluster-ca), or none for plain HTTP"));
            }
        }
        Ok(())
    }
}

/// An app the leader creates at bootstrap, with a worker token chosen by the operator
/// (`[[bootstrap_apps]]`, `--bootstrap-app NAME:TOKEN`, `RAFTJOB_BOOTSTRAP_APPS`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootstrapApp {
    pub name: String,
    pub worker_token: String,
}

/// The file form. Every field is optional here; [`ServerConfig::resolve`] checks
/// that the required ones are present after env and flags are applied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub api_addr: Option<String>,
    pub cluster_addr: Option<String>,
    /// Address other nodes use for this node's cluster port (defaults to this node's
    /// `initial_members` entry).
    pub advertise_cluster_addr: Option<String>,
    pub advertise_api_addr: Option<String>,
    /// Transport addresses workers dial, by protocol, when they differ from the
    /// listen addresses (NAT, containers, proxies).
    #[serde(default)]
    pub advertise_transport: BTreeMap<String, String>,
    #[serde(default)]
    pub transport: BTreeMap<String, String>,
    #[serde(default)]
    pub initial_members: BTreeMap<String, String>,
    pub cluster_secret: Option<String>,
    /// During a cluster-secret rotation: a second secret the cluster port accepts.
    pub cluster_secret_next: Option<String>,
    pub admin_token: Option<String>,
    /// During an admin-token rotation: a second admin token the API accepts.
    pub admin_token_next: Option<String>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub raft: Option<RaftTuning>,
    #[serde(default)]
    pub workers: Option<WorkerTuning>,
    #[serde(default)]
    pub scheduler: Option<SchedulerTuning>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Apps created once the cluster id is recorded, if they do not exist yet.
    #[serde(default)]
    pub bootstrap_apps: Vec<BootstrapApp>,
    /// Addresses this node dials for other nodes' cluster ports, by node id, in place
    /// of the address in the membership (sidecars, NAT, test proxies).
    #[serde(default)]
    pub peer_dial: BTreeMap<String, String>,
    #[serde(default)]
    pub testing: Option<TestingConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `raftjob server` flags; each also reads a `RAFTJOB_*` environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerArgs {
    /// TOML config file; flags and RAFTJOB_* variables override its values.
    #[arg(long, short = 'c', env = "RAFTJOB_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id; must be a key of the initial members.
    #[arg(long, env = "RAFTJOB_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory for the Raft log, state and snapshots.
    #[arg(long, env = "RAFTJOB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the api port (users, console, health, metrics).
    #[arg(long, env = "RAFTJOB_API_ADDR")]
    pub api_addr: Option<String>,
    /// Listen address of the cluster port (Raft RPC and forwarding between servers).
    #[arg(long, env = "RAFTJOB_CLUSTER_ADDR")]
    pub cluster_addr: Option<String>,
    /// Cluster address other nodes dial, when it differs from the listen address.
    #[arg(long, env = "RAFTJOB_ADVERTISE_CLUSTER_ADDR")]
    pub advertise_cluster_addr: Option<String>,
    /// API address shown to users and other nodes, when it differs from the listen address.
    #[arg(long, env = "RAFTJOB_ADVERTISE_API_ADDR")]
    pub advertise_api_addr: Option<String>,
    /// Transport address workers dial, as PROTOCOL=HOST:PORT, when it differs from the
    /// listen address; repeat or separate with commas.
    #[arg(
        long = "advertise-transport",
        env = "RAFTJOB_ADVERTISE_TRANSPORT",
        value_delimiter = ','
    )]
    pub advertise_transport: Vec<String>,
    /// Worker transport listener as PROTOCOL=ADDR (protocols: http, ws); repeat or
    /// separate with commas. An omitted protocol opens no port.
    #[arg(long = "transport", env = "RAFTJOB_TRANSPORT", value_delimiter = ',')]
    pub transport: Vec<String>,
    /// Initial voters as ID=CLUSTER_ADDR, comma separated (identical on every node).
    #[arg(long, env = "RAFTJOB_INITIAL_MEMBERS", value_delimiter = ',')]
    pub initial_members: Vec<String>,
    /// Shared secret required on the cluster port.
    #[arg(long, env = "RAFTJOB_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Bearer token for the API.
    #[arg(long, env = "RAFTJOB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// During an admin-token rotation: a second bearer token the API accepts.
    #[arg(long, env = "RAFTJOB_ADMIN_TOKEN_NEXT", hide_env_values = true)]
    pub admin_token_next: Option<String>,
    /// During a cluster-secret rotation: a second secret the cluster port accepts
    /// (this node still sends `cluster_secret`).
    #[arg(long, env = "RAFTJOB_CLUSTER_SECRET_NEXT", hide_env_values = true)]
    pub cluster_secret_next: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "RAFTJOB_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, env = "RAFTJOB_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long, env = "RAFTJOB_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "RAFTJOB_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    #[arg(long, env = "RAFTJOB_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    #[arg(long, env = "RAFTJOB_LOGS_TO_KEEP")]
    pub logs_to_keep: Option<u64>,
    /// Worker heartbeat interval.
    #[arg(long, env = "RAFTJOB_WORKERS_HEARTBEAT_MS")]
    pub worker_heartbeat_ms: Option<u64>,
    /// Attempt lease: a worker that cannot renew it kills its attempts.
    #[arg(long, env = "RAFTJOB_WORKERS_LEASE_MS")]
    pub worker_lease_ms: Option<u64>,
    /// Grace after a lease before the leader declares an attempt lost.
    #[arg(long, env = "RAFTJOB_WORKERS_GRACE_MS")]
    pub worker_grace_ms: Option<u64>,
    #[arg(long, env = "RAFTJOB_DISPATCH_TIMEOUT_MS")]
    pub dispatch_timeout_ms: Option<u64>,
    /// How long an instance waits for a matching live worker before it fails.
    #[arg(long, env = "RAFTJOB_NO_WORKER_TIMEOUT_MS")]
    pub no_worker_timeout_ms: Option<u64>,
    /// Forget (deregister) a worker that has been lost for this long.
    #[arg(long, env = "RAFTJOB_WORKERS_FORGET_AFTER_MS")]
    pub worker_forget_after_ms: Option<u64>,
    /// How late a fire time may be and still fire normally (beyond: misfire policy).
    #[arg(long, env = "RAFTJOB_SCHEDULER_MISFIRE_THRESHOLD_MS")]
    pub misfire_threshold_ms: Option<u64>,
    /// Most missed times one fire_all catch-up runs per job.
    #[arg(long, env = "RAFTJOB_SCHEDULER_CATCH_UP_LIMIT")]
    pub catch_up_limit: Option<u32>,
    /// How long finished instances and skip records are kept.
    #[arg(long, env = "RAFTJOB_SCHEDULER_RETENTION_MS")]
    pub retention_ms: Option<u64>,
    /// How many finished instances each job keeps (0 = no count limit).
    #[arg(long, env = "RAFTJOB_SCHEDULER_RETENTION_PER_JOB")]
    pub retention_per_job: Option<u32>,
    /// How often the leader prunes history.
    #[arg(long, env = "RAFTJOB_SCHEDULER_PRUNE_INTERVAL_MS")]
    pub prune_interval_ms: Option<u64>,
    /// Require the admin token on /metrics: true or false (alone, the flag means true).
    #[arg(
        long,
        env = "RAFTJOB_METRICS_REQUIRE_TOKEN",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub metrics_require_token: Option<bool>,
    /// An app to create at bootstrap as NAME:WORKER_TOKEN (token at least 16
    /// characters); repeat or separate with commas. Replaces the file's bootstrap_apps.
    #[arg(
        long = "bootstrap-app",
        env = "RAFTJOB_BOOTSTRAP_APPS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "NAME:TOKEN"
    )]
    pub bootstrap_apps: Vec<String>,
    /// Dial node ID at ADDR instead of its cluster address in the membership, as
    /// ID=HOST:PORT; repeat or separate with commas. Replaces the file's [peer_dial].
    #[arg(
        long = "peer-dial",
        env = "RAFTJOB_PEER_DIAL",
        value_delimiter = ',',
        value_name = "ID=ADDR"
    )]
    pub peer_dial: Vec<String>,
    /// TLS certificate (PEM, the chain) of the api and transport ports; with --tls-key
    /// they speak only HTTPS/WSS.
    #[arg(long, env = "RAFTJOB_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the api and transport ports.
    #[arg(long, env = "RAFTJOB_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// This node's certificate on the cluster port (server and client: mutual TLS).
    #[arg(long, env = "RAFTJOB_TLS_CLUSTER_CERT", value_name = "FILE")]
    pub tls_cluster_cert: Option<PathBuf>,
    /// The private key of --tls-cluster-cert.
    #[arg(long, env = "RAFTJOB_TLS_CLUSTER_KEY", value_name = "FILE")]
    pub tls_cluster_key: Option<PathBuf>,
    /// The CA that signed every server's cluster certificate.
    #[arg(long, env = "RAFTJOB_TLS_CLUSTER_CA", value_name = "FILE")]
    pub tls_cluster_ca: Option<PathBuf>,
    /// TEST ONLY: serve POST /api/v1/debug/clock, which shifts this node's wall clock.
    #[arg(
        long,
        env = "RAFTJOB_TEST_CLOCK_CONTROL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub test_clock_control: bool,
}

/// The validated configuration a server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub cluster_addr: SocketAddr,
    pub advertise_api_addr: String,
    pub advertise_cluster_addr: String,
    /// Advertised transport addresses by protocol (lower case), where configured.
    pub advertise_transport: BTreeMap<String, String>,
    /// Enabled worker protocols (lower case) and their listen addresses.
    pub transports: BTreeMap<String, SocketAddr>,
    pub initial_members: BTreeMap<u64, String>,
    pub cluster_secret: String,
    /// A second secret the cluster port accepts during a rotation.
    pub cluster_secret_next: Option<String>,
    pub admin_token: String,
    /// A second admin token the API accepts during a rotation.
    pub admin_token_next: Option<String>,
    pub log_format: LogFormat,
    pub raft: RaftTuning,
    pub workers: WorkerTuning,
    pub scheduler: SchedulerTuning,
    pub metrics: MetricsConfig,
    /// Apps the leader creates (once) after the cluster id is recorded.
    pub bootstrap_apps: Vec<BootstrapApp>,
    /// Dial overrides for peers' cluster ports, by node id (the membership is unchanged).
    pub peer_dial: BTreeMap<u64, String>,
    /// Test-only settings.
    pub testing: TestingConfig,
    /// Optional TLS on the ports (files checked in pairs here, read at start-up).
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServerConfig {
    /// The admin tokens the API accepts: `admin_token`, and `admin_token_next` during
    /// a rotation.
    pub fn admin_tokens(&self) -> Vec<&str> {
        std::iter::once(self.admin_token.as_str())
            .chain(self.admin_token_next.as_deref())
            .collect()
    }

    /// The secrets the cluster port accepts: `cluster_secret`, and
    /// `cluster_secret_next` during a rotation.
    pub fn cluster_secrets(&self) -> Vec<&str> {
        std::iter::once(self.cluster_secret.as_str())
            .chain(self.cluster_secret_next.as_deref())
            .collect()
    }

    /// Reads the file named by `args.config` (if any), applies the flags and env, and
    /// validates the result.
    pub fn load(args: &ServerArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(file, args)
    }

    pub fn resolve(file: FileConfig, args: &ServerArgs) -> Result<Self, ConfigError> {
        let node_id = args.node_id.or(file.node_id).ok_or(ConfigError::Missing {
            key: "node_id",
            fix: "set node_id in the config file, --node-id or RAFTJOB_NODE_ID",
        })?;
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .ok_or(ConfigError::Missing {
                key: "data_dir",
                fix: "set data_dir in the config file, --data-dir or RAFTJOB_DATA_DIR",
            })?;
        let api_raw = args
            .api_addr
            .clone()
            .or(file.api_addr)
            .ok_or(ConfigError::Missing {
                key: "api_addr",
                fix:
                    "set api_addr (for example \"127.0.0.1:7700\"), --api-addr or RAFTJOB_API_ADDR",
            })?;
        let api_addr = parse_addr("api_addr", &api_raw)?;
        let cluster_raw = args.cluster_addr.clone().or(file.cluster_addr).ok_or(ConfigError::Missing {
            key: "cluster_addr",
            fix: "set cluster_addr (for example \"127.0.0.1:7800\"), --cluster-addr or RAFTJOB_CLUSTER_ADDR",
        })?;
        let cluster_addr = parse_addr("cluster_addr", &cluster_raw)?;

        let mut transport_raw = file.transport;
        if !args.transport.is_empty() {
            transport_raw.clear();
            for item in args.transport.iter().filter(|s| !s.trim().is_empty()) {
                let (proto, addr) = item.split_once('=').ok_or_else(|| {
                    invalid(
                        "transport",
                        item,
                        "write PROTOCOL=ADDR, for example http=127.0.0.1:10010",
                    )
                })?;
                transport_raw.insert(proto.trim().to_string(), addr.trim().to_string());
            }
        }
        let mut transports = BTreeMap::new();
        for (proto, addr) in transport_raw {
            let name = proto.to_ascii_lowercase();
            if !PROTOCOLS.contains(&name.as_str()) {
                return Err(invalid(
                    format!("transport.{proto}"),
                    addr,
                    format!(
                        "unknown worker protocol {proto:?}; valid protocols are: {}",
                        PROTOCOLS.join(", ")
                    ),
                ));
            }
            if transports.contains_key(&name) {
                return Err(invalid(
                    format!("transport.{proto}"),
                    addr,
                    "the protocol is listed twice",
                ));
            }
            transports.insert(
                name.clone(),
                parse_addr(&format!("transport.{name}"), &addr)?,
            );
        }

        let mut members_raw = file.initial_members;
        if !args.initial_members.is_empty() {
            members_raw.clear();
            for item in args.initial_members.iter().filter(|s| !s.trim().is_empty()) {
                let (id, addr) = item.split_once('=').ok_or_else(|| {
                    invalid(
                        "initial_members",
                        item,
                        "write ID=CLUSTER_ADDR, for example 1=127.0.0.1:7801",
                    )
                })?;
                members_raw.insert(id.trim().to_string(), addr.trim().to_string());
            }
        }
        if members_raw.is_empty() {
            return Err(ConfigError::Missing {
                key: "initial_members",
                fix: "list every voter as ID=CLUSTER_ADDR (the same list on every node), e.g. --initial-members 1=127.0.0.1:7801,2=127.0.0.1:7802,3=127.0.0.1:7803",
            });
        }
        let mut initial_members = BTreeMap::new();
        for (id, addr) in members_raw {
            let parsed: u64 = id.parse().map_err(|_| {
                invalid(
                    format!("initial_members.{id}"),
                    &addr,
                    "member ids are positive integers",
                )
            })?;
            validate_host_port(&format!("initial_members.{id}"), &addr)?;
            initial_members.insert(parsed, addr);
        }
        if !initial_members.contains_key(&node_id) {
            return Err(invalid(
                "node_id",
                node_id.to_string(),
                format!(
                    "node_id must be one of the initial_members ids ({}); add this node to initial_members or fix node_id",
                    initial_members.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }

        let cluster_secret = args.cluster_secret.clone().or(file.cluster_secret).ok_or(ConfigError::Missing {
            key: "cluster_secret",
            fix: "set cluster_secret (the same on every node, at least 16 characters), --cluster-secret or RAFTJOB_CLUSTER_SECRET",
        })?;
        if cluster_secret.len() < 16 {
            return Err(invalid(
                "cluster_secret",
                "<hidden>",
                "use at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        let admin_token = args.admin_token.clone().or(file.admin_token).ok_or(ConfigError::Missing {
            key: "admin_token",
            fix: "set admin_token (at least 16 characters), --admin-token or RAFTJOB_ADMIN_TOKEN",
        })?;
        if admin_token.len() < 16 {
            return Err(invalid(
                "admin_token",
                "<hidden>",
                "use at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        let admin_token_next = args.admin_token_next.clone().or(file.admin_token_next);
        let cluster_secret_next = args
            .cluster_secret_next
            .clone()
            .or(file.cluster_secret_next);
        for (key, value) in [
            ("admin_token_next", &admin_token_next),
            ("cluster_secret_next", &cluster_secret_next),
        ] {
            if value.as_ref().is_some_and(|v| v.len() < 16) {
                return Err(invalid(
                    key,
                    "<hidden>",
                    "use at least 16 characters (e.g. `openssl rand -hex 32`)",
                ));
            }
        }

        // Ports must not collide: each listener has one purpose.
        let mut seen: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let mut listeners = vec![
            ("api_addr".to_string(), api_addr),
            ("cluster_addr".to_string(), cluster_addr),
        ];
        listeners.extend(
            transports
                .iter()
                .map(|(p, a)| (format!("transport.{p}"), *a)),
        );
        for (key, addr) in listeners {
            if addr.port() != 0 {
                if let Some(other) = seen.get(&addr) {
                    return Err(invalid(&key, addr.to_string(), format!("{key} uses the same address as {other}; give each listener its own port")));
                }
                seen.insert(addr, key);
            }
        }

        let log_format = match args
            .log_format
            .clone()
            .or(file.log_format)
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => LogFormat::Text,
            Some(f) if f == "text" => LogFormat::Text,
            Some(f) if f == "json" => LogFormat::Json,
            Some(f) => return Err(invalid("log_format", f, "use \"text\" or \"json\"")),
        };

        let mut raft = file.raft.unwrap_or_default();
        if let Some(v) = args.heartbeat_interval_ms {
            raft.heartbeat_interval_ms = v;
        }
        if let Some(v) = args.election_timeout_min_ms {
            raft.election_timeout_min_ms = v;
        }
        if let Some(v) = args.election_timeout_max_ms {
            raft.election_timeout_max_ms = v;
        }
        if let Some(v) = args.snapshot_logs_since_last {
            raft.snapshot_logs_since_last = v;
        }
        if let Some(v) = args.logs_to_keep {
            raft.logs_to_keep = v;
        }
        if raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                raft.election_timeout_min_ms.to_string(),
                "must exceed raft.heartbeat_interval_ms (at least 3x is advisable)",
            ));
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                raft.election_timeout_max_ms.to_string(),
                "must exceed raft.election_timeout_min_ms",
            ));
        }

        let mut workers = file.workers.unwrap_or_default();
        for (value, slot) in [
            (args.worker_heartbeat_ms, &mut workers.heartbeat_ms),
            (args.worker_lease_ms, &mut workers.lease_ms),
            (args.worker_grace_ms, &mut workers.grace_ms),
            (args.dispatch_timeout_ms, &mut workers.dispatch_timeout_ms),
            (args.no_worker_timeout_ms, &mut workers.no_worker_timeout_ms),
            (args.worker_forget_after_ms, &mut workers.forget_after_ms),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        // Worker timings are added to clocks (leases, deadlines): bounded to a day, so
        // no sum can overflow and no typo makes a lease last for centuries.
        const DAY_MS: u64 = 24 * 3600 * 1000;
        for (key, value) in [
            ("workers.heartbeat_ms", workers.heartbeat_ms),
            ("workers.lease_ms", workers.lease_ms),
            ("workers.grace_ms", workers.grace_ms),
            ("workers.dispatch_timeout_ms", workers.dispatch_timeout_ms),
            ("workers.no_worker_timeout_ms", workers.no_worker_timeout_ms),
        ] {
            if value > DAY_MS {
                return Err(invalid(
                    key,
                    value.to_string(),
                    "must be at most 86400000 (one day, in milliseconds)",
                ));
            }
        }
        if workers.lease_ms < workers.heartbeat_ms.saturating_mul(2) {
            return Err(invalid(
                "workers.lease_ms",
                workers.lease_ms.to_string(),
                "must be at least twice workers.heartbeat_ms, so one lost heartbeat does not kill running attempts",
            ));
        }

        let mut scheduler = file.scheduler.unwrap_or_default();
        for (value, slot) in [
            (
                args.misfire_threshold_ms,
                &mut scheduler.misfire_threshold_ms,
            ),
            (args.retention_ms, &mut scheduler.retention_ms),
            (args.prune_interval_ms, &mut scheduler.prune_interval_ms),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        if let Some(v) = args.catch_up_limit {
            scheduler.catch_up_limit = v;
        }
        if let Some(v) = args.retention_per_job {
            scheduler.retention_per_job = v;
        }
        if scheduler.catch_up_limit == 0 {
            return Err(invalid(
                "scheduler.catch_up_limit",
                "0",
                "must be at least 1 (use misfire_policy skip on a job to run no catch-up)",
            ));
        }
        if scheduler.prune_interval_ms < 100 {
            return Err(invalid(
                "scheduler.prune_interval_ms",
                scheduler.prune_interval_ms.to_string(),
                "must be at least 100",
            ));
        }

        let advertise_cluster_addr = args
            .advertise_cluster_addr
            .clone()
            .or(file.advertise_cluster_addr)
            .unwrap_or_else(|| initial_members[&node_id].clone());
        let advertise_api_addr = args
            .advertise_api_addr
            .clone()
            .or(file.advertise_api_addr)
            .unwrap_or_else(|| api_addr.to_string());

        let mut advertise_transport = BTreeMap::new();
        let adv_pairs: Vec<(String, String)> = if args.advertise_transport.is_empty() {
            file.advertise_transport.into_iter().collect()
        } else {
            args.advertise_transport
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|item| {
                    item.split_once('=')
                        .map(|(p, a)| (p.trim().to_string(), a.trim().to_string()))
                        .ok_or_else(|| {
                            invalid("advertise_transport", item, "write PROTOCOL=HOST:PORT")
                        })
                })
                .collect::<Result<_, _>>()?
        };
        for (proto, addr) in adv_pairs {
            let name = proto.to_ascii_lowercase();
            if !transports.contains_key(&name) {
                return Err(invalid(
                    format!("advertise_transport.{proto}"),
                    addr,
                    "advertise only protocols that are enabled under transport",
                ));
            }
            validate_host_port(&format!("advertise_transport.{name}"), &addr)?;
            advertise_transport.insert(name, addr);
        }

        let mut metrics = file.metrics.unwrap_or_default();
        if let Some(v) = args.metrics_require_token {
            metrics.require_token = v;
        }

        let bootstrap_apps = resolve_bootstrap_apps(file.bootstrap_apps, &args.bootstrap_apps)?;
        let peer_dial = resolve_peer_dial(file.peer_dial, &args.peer_dial)?;
        let mut testing = file.testing.unwrap_or_default();
        testing.clock_control |= args.test_clock_control;
        let mut tls = file.tls.unwrap_or_default();
        for (value, slot) in [
            (&args.tls_cert, &mut tls.cert_file),
            (&args.tls_key, &mut tls.key_file),
            (&args.tls_cluster_cert, &mut tls.cluster_cert_file),
            (&args.tls_cluster_key, &mut tls.cluster_key_file),
            (&args.tls_cluster_ca, &mut tls.cluster_ca_file),
        ] {
            if let Some(v) = value {
                *slot = Some(v.clone());
            }
        }
        tls.validate()?;

        Ok(Self {
            node_id,
            advertise_transport,
            data_dir,
            api_addr,
            cluster_addr,
            advertise_api_addr,
            advertise_cluster_addr,
            transports,
            initial_members,
            cluster_secret,
            cluster_secret_next,
            admin_token,
            admin_token_next,
            log_format,
            raft,
            workers,
            scheduler,
            metrics,
            bootstrap_apps,
            peer_dial,
            testing,
            tls,
        })
    }

    /// The address to dial for node `id`'s cluster port: its `peer_dial` override, or
    /// `membership_addr` (from the Raft membership or `initial_members`).
    pub fn dial_addr(&self, id: u64, membership_addr: &str) -> String {
        self.peer_dial
            .get(&id)
            .cloned()
            .unwrap_or_else(|| membership_addr.to_string())
    }
}

/// Flags or env (`ID=ADDR` items) replace the file's `[peer_dial]`; ids are node ids
/// and addresses HOST:PORT, each listed once.
fn resolve_peer_dial(
    file: BTreeMap<String, String>,
    args: &[String],
) -> Result<BTreeMap<u64, String>, ConfigError> {
    let pairs: Vec<(String, String)> = if args.iter().all(|s| s.trim().is_empty()) {
        file.into_iter().collect()
    } else {
        args.iter()
            .filter(|s| !s.trim().is_empty())
            .map(|item| {
                item.split_once('=')
                    .map(|(id, a)| (id.trim().to_string(), a.trim().to_string()))
                    .ok_or_else(|| {
                        invalid(
                            "peer_dial",
                            item,
                            "write ID=HOST:PORT, for example 2=127.0.0.1:7802",
                        )
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = BTreeMap::new();
    for (id, addr) in pairs {
        let key = format!("peer_dial.{id}");
        let parsed: u64 = id
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid(&key, &addr, "node ids are positive integers"))?;
        validate_host_port(&key, &addr)?;
        if out.insert(parsed, addr.clone()).is_some() {
            return Err(invalid(&key, addr, "the node is listed twice"));
        }
    }
    Ok(out)
}

/// Flags or env (`NAME:TOKEN` items) replace the file's `[[bootstrap_apps]]`; names
/// follow the API's app-name rule, are unique, and tokens have at least 16 characters.
fn resolve_bootstrap_apps(
    file: Vec<BootstrapApp>,
    args: &[String],
) -> Result<Vec<BootstrapApp>, ConfigError> {
    let apps = if args.iter().all(|s| s.trim().is_empty()) {
        file
    } else {
        args.iter()
            .filter(|s| !s.trim().is_empty())
            .map(|item| {
                let (name, token) = item.split_once(':').ok_or_else(|| {
                    invalid(
                        "bootstrap_apps",
                        item.split(':').next().unwrap_or_default(),
                        "write NAME:WORKER_TOKEN, for example demo:$(openssl rand -hex 16)",
                    )
                })?;
                Ok(BootstrapApp {
                    name: name.trim().to_string(),
                    worker_token: token.trim().to_string(),
                })
            })
            .collect::<Result<_, ConfigError>>()?
    };
    let mut seen = std::collections::BTreeSet::new();
    for app in &apps {
        let name_ok = !app.name.is_empty()
            && app.name.len() <= 64
            && app
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(invalid(
                "bootstrap_apps.name",
                &app.name,
                "app names have 1 to 64 letters, digits, '.', '_' or '-'",
            ));
        }
        if !seen.insert(app.name.clone()) {
            return Err(invalid(
                format!("bootstrap_apps.{}", app.name),
                &app.name,
                "the app is listed twice",
            ));
        }
        if app.worker_token.chars().count() < 16 {
            return Err(invalid(
                format!("bootstrap_apps.{}.worker_token", app.name),
                "<hidden>",
                "use at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
    }
    Ok(apps)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn parse_addr(key: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.trim().parse().map_err(|_| {
        invalid(
            key,
            raw,
            "write IP:PORT, for example 127.0.0.1:7700 or 0.0.0.0:7700",
        )
    })
}

/// Member addresses may be host names (containers, Kubernetes), so only the shape is checked.
fn validate_host_port(key: &str, raw: &str) -> Result<(), ConfigError> {
    let ok = raw.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            raw,
            "write HOST:PORT, for example 127.0.0.1:7801 or raftjob-1:7800",
        ))
    }
}

#[cfg(test)]
mod tests;
