//! A raftjob server node: the Raft group member and its listeners.
//!
//! ```text
//!  users ──▶ api port ──────┐                 ┌── Raft (openraft) ── RocksDB
//!  servers ◀▶ cluster port ─┼── Node ─────────┤
//!  workers ──▶ transport.* ─┘  (propose, read) └── state machine (in memory + RocksDB)
//! ```
//!
//! Each listener has its own router; nothing of one is served on another.

pub mod api;
pub mod bootstrap;
pub mod cluster;
pub mod dispatcher;
pub mod metrics;
pub mod propose;
pub mod read_index;
pub mod scheduler;
pub mod tls;
pub mod transport;
pub mod worker_registry;
pub mod write_batch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::{SharedState, StateMachineStore};
use crate::raft::{storage, NodeId, Raft};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] storage::OpenError),
    #[error("cannot open the state machine: {0}")]
    StateMachine(#[from] openraft::StorageError<NodeId>),
    #[error("invalid Raft settings: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("cannot start Raft: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {key} {addr}: {source} (is another process using the port?)")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything the listeners and background tasks share.
pub struct Node {
    pub id: NodeId,
    pub config: ServerConfig,
    pub raft: Raft,
    pub state: SharedState,
    /// Client for forwarding to the leader's cluster port (its own pool, apart from Raft
    /// RPC); https with the cluster CA and this node's certificate under cluster TLS.
    pub forward: crate::tls::HttpClient,
    pub reads: read_index::ReadIndexBatcher,
    /// Leader-side write batching in front of Raft.
    pub batcher: write_batch::WriteBatcher,
    /// The leader's memory of live workers and attempt leases.
    pub workers: worker_registry::WorkerRegistry,
    /// Client for dispatching to workers' own endpoints (its own pool).
    pub worker_http: reqwest::Client,
    /// Actual bound addresses (they differ from the config when it says port 0).
    pub bound: BoundAddrs,
    pub shutdown: CancellationToken,
    /// Set when Raft stopped on a fatal error (the process then exits non-zero).
    pub fatal: std::sync::Mutex<Option<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub api: Option<SocketAddr>,
    pub cluster: Option<SocketAddr>,
    pub transports: BTreeMap<String, SocketAddr>,
}

/// A started server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub node: Arc<Node>,
    tasks: tokio::task::JoinSet<()>,
}

impl RunningServer {
    /// Waits until the shutdown token is cancelled, then stops listeners and Raft.
    /// Returns the fatal error that stopped the node, if one did.
    pub async fn wait(mut self) -> Option<String> {
        self.node.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly.");
        }
        tracing::info!(node_id = self.node.id, "Server stopped.");
        self.node.fatal.lock().expect("fatal lock").clone()
    }

    pub async fn shutdown(self) -> Option<String> {
        self.node.shutdown.cancel();
        self.wait().await
    }
}

fn raft_config(cfg: &ServerConfig) -> Result<openraft::Config, openraft::ConfigError> {
    let t = &cfg.raft;
    let config = openraft::Config {
        cluster_name: "raftjob".into(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 1024 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: t.logs_to_keep,
        purge_batch_size: 32,
        max_payload_entries: 256,
        ..Default::default()
    };
    config.validate()
}

async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            key: key.into(),
            addr,
            source,
        })
}

/// Opens storage, starts Raft and every listener, and begins bootstrap.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    // TLS files first: a bad certificate or key stops start-up naming the setting.
    let server_tls = tls::load(&config.tls)?;
    let db = storage::open_db(&config.data_dir)?;
    let log_store = LogStore::new(db.clone());
    let sm = StateMachineStore::open(db, &config.data_dir).await?;
    let state = sm.shared();
    let raft_cfg = Arc::new(raft_config(&config)?);
    let raft = Raft::new(
        config.node_id,
        raft_cfg,
        Network::with_peer_dial(&config.cluster_secret, config.peer_dial.clone())
            .with_tls(server_tls.cluster_client.clone()),
        log_store,
        sm,
    )
    .await?;

    // Bind every listener before serving any, so a port clash stops start-up cleanly.
    let api_listener = bind("api_addr", config.api_addr).await?;
    let cluster_listener = bind("cluster_addr", config.cluster_addr).await?;
    let mut transport_listeners = Vec::new();
    for (proto, addr) in &config.transports {
        transport_listeners.push((
            proto.clone(),
            bind(&format!("transport.{proto}"), *addr).await?,
        ));
    }
    let mut bound = BoundAddrs {
        api: api_listener.local_addr().ok(),
        cluster: cluster_listener.local_addr().ok(),
        ..Default::default()
    };
    for (proto, l) in &transport_listeners {
        if let Ok(a) = l.local_addr() {
            bound.transports.insert(proto.clone(), a);
        }
    }

    let forward = tls::cluster_http_builder(&server_tls)
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .build()
        .expect("reqwest client builds");
    let node = Arc::new(Node {
        id: config.node_id,
        reads: read_index::ReadIndexBatcher::new(),
        batcher: write_batch::WriteBatcher::default(),
        workers: worker_registry::WorkerRegistry::new(
            Duration::from_millis(config.workers.lease_ms),
            Duration::from_millis(config.workers.grace_ms),
        ),
        worker_http: reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client builds"),
        config,
        raft,
        state,
        forward,
        bound,
        shutdown: CancellationToken::new(),
        fatal: std::sync::Mutex::new(None),
    });
    log_port_table(&node);
    if node.config.testing.clock_control {
        tracing::warn!("TEST SETTING ON: [testing] clock_control lets any admin-token holder shift this node's clock (POST /api/v1/debug/clock). Never use it in production.");
    }
    if let Some(bug) = crate::planted::current() {
        tracing::warn!(bug = bug.name(), "PLANTED BUG ACTIVE: this server misbehaves on purpose (jepsen-lite checker test). Never use it in production.");
    }

    metrics::install();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve(
        api_listener,
        server_tls.public.clone(),
        metrics::track_http(api::router(node.clone()), "api"),
        node.shutdown.clone(),
    ));
    tasks.spawn(serve(
        cluster_listener,
        server_tls.cluster.clone(),
        metrics::track_http(cluster::router(node.clone()), "cluster"),
        node.shutdown.clone(),
    ));
    for (proto, listener) in transport_listeners {
        tasks.spawn(serve(
            listener,
            server_tls.public.clone(),
            metrics::track_http(
                transport::router(node.clone(), &proto),
                metrics::transport_listener(&proto),
            ),
            node.shutdown.clone(),
        ));
    }
    tasks.spawn(read_index::run(node.clone()));
    tasks.spawn(write_batch::run(node.clone()));
    tasks.spawn(bootstrap::run(node.clone()));
    tasks.spawn(watch_fatal(node.clone()));
    tasks.spawn(metrics::watch(node.clone()));
    tasks.spawn(dispatcher::run(node.clone()));
    tasks.spawn(scheduler::run(node.clone()));
    Ok(RunningServer { node, tasks })
}

/// Stops the whole node when Raft stops on a fatal error (a storage failure, or a
/// command from a newer version): serving without Raft would only mislead clients.
async fn watch_fatal(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            let message = fatal.to_string();
            tracing::error!(error = %message, "Raft stopped; shutting this node down.");
            *node.fatal.lock().expect("fatal lock") = Some(message);
            node.shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    use axum::serve::ListenerExt;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let stop = async move { shutdown.cancelled().await };
    let result = match tls {
        // HTTPS only: the handshake runs before axum sees the connection (Nagle off too).
        Some(acceptor) => {
            let what = fmt_addr(listener.local_addr().ok());
            let listener = tls::TlsListener::new(listener, acceptor, what).tap_io(|_| {});
            axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            // No Nagle: worker reports and dispatches are small frames that must not wait
            // for delayed ACKs (that cost about 40 ms per report).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "Listener failed.");
    }
}

/// Logs which ports this node opened and who each is for.
fn log_port_table(node: &Node) {
    let b = &node.bound;
    let mut rows = vec![
        format!(
            "  {:<16} {:<22} {}",
            "api",
            fmt_addr(b.api),
            "users, console, /healthz, /readyz, /metrics, /openapi.json"
        ),
        format!(
            "  {:<16} {:<22} {}",
            "cluster",
            fmt_addr(b.cluster),
            "other raftjob servers only (Raft RPC, forwarding; secret required)"
        ),
    ];
    for (proto, addr) in &b.transports {
        let (name, who) = (
            format!("transport.{proto}"),
            format!("workers using the {proto} protocol"),
        );
        rows.push(format!("  {name:<16} {addr:<22} {who}"));
    }
    for proto in crate::config::PROTOCOLS
        .iter()
        .filter(|p| !b.transports.contains_key(**p))
    {
        rows.push(format!(
            "  {:<16} {:<22} {}",
            format!("transport.{proto}"),
            "(closed)",
            "protocol not enabled"
        ));
    }
    let tls = &node.config.tls;
    tracing::info!(
        node_id = node.id,
        api_and_transports = if tls.public_enabled() {
            "https/wss only"
        } else {
            "plain http"
        },
        cluster = if tls.cluster_enabled() {
            "mutual TLS"
        } else {
            "plain http"
        },
        "Listening:\n  {:<16} {:<22} {}\n{}",
        "PORT",
        "ADDRESS",
        "FOR",
        rows.join("\n")
    );
}

fn fmt_addr(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}

impl Node {
    /// The cluster id recorded at bootstrap (none until the first leader records it).
    pub fn cluster_id(&self) -> Option<String> {
        self.state
            .read()
            .expect("state lock")
            .state
            .meta
            .cluster_id
            .clone()
    }
}

/// Wall-clock milliseconds; only ever put into proposals, never read by apply.
/// Includes the test-only clock offset ([`set_clock_offset_ms`]), so every wall-clock
/// reading of the server (proposal stamps, the scheduler, the dispatcher) moves with it.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis() + CLOCK_OFFSET_MS.load(Ordering::Relaxed)
}

/// The test-only shift of this server's wall clock. Process-wide: a server process is
/// one node. Only `POST /api/v1/debug/clock` sets it, and only with `[testing]
/// clock_control`; monotonic timers (tokio `Instant`s, leases) are not shifted.
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Sets the clock offset (absolute, not cumulative).
pub fn set_clock_offset_ms(offset: i64) {
    CLOCK_OFFSET_MS.store(offset, Ordering::Relaxed);
}

pub fn clock_offset_ms() -> i64 {
    CLOCK_OFFSET_MS.load(Ordering::Relaxed)
}
