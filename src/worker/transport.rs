//! How a worker reaches the leader: discovery through any server's transport port,
//! then `http` requests or one `ws` connection, following leader changes.
//!
//! Finding the leader again after it died is the delicate part. The worker keeps every
//! server it knows (the configured ones plus every server's transport address learned
//! from discovery and heartbeat answers). When the leader stops answering, it asks all
//! of them at once (`GET /transport/v1/discovery`), except those that refused a
//! connection or did not answer within [`DOWN_FOR`], and takes the leader named with the
//! highest term. A leader that does not answer is never taken from a hint: right after
//! a leader dies, its followers still name it until the election ends. Between rounds
//! the worker waits a short, growing pause ([`RETRY_MIN`] to [`RETRY_MAX`]), so it
//! reaches the new leader within one pause of the end of the election. One search runs
//! at a time; the heartbeat and every report waiting for the leader share it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use super::runtime::Core;
use crate::protocol::{
    ServerMsg, WorkerMsg, WsServerFrame, WsWorkerFrame, PATH_DEREGISTER, PATH_HEARTBEAT,
    PATH_REGISTER, PATH_REPORT, PATH_WS,
};
use crate::server::transport::{Discovery, PATH_DISCOVERY};

/// How long a server that refused a connection (or did not answer) is left out of the
/// search for the leader, and distrusted when another server names it as the leader.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// The first pause between rounds of looking for the leader; it doubles up to
/// [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(25);
const RETRY_MAX: Duration = Duration::from_millis(200);
/// Redirects ("not leader; the leader is X") followed at once, before a pause.
const MAX_HOPS: u32 = 3;
/// Connecting to a server; a live server on a reachable host accepts at once.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// One discovery request.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// After a search for the leader failed, callers reuse its outcome for this long
/// instead of asking every server again.
const SEARCH_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the cluster does not offer {wanted}; it offers {offered:?}")]
    NotOffered {
        wanted: String,
        offered: Vec<String>,
    },
    #[error("no server answered at {servers}: {last}")]
    Unreachable { servers: String, last: String },
    /// The server could not be reached at all (refused, or no connection in time).
    #[error("{0}")]
    Connect(String),
    /// No server named a reachable leader (an election is running, or every server is down).
    #[error("no leader found: {0}")]
    NoLeader(String),
    #[error("{0}")]
    Io(String),
}

struct WsConn {
    /// The server this WebSocket goes to.
    target: String,
    tx: mpsc::UnboundedSender<String>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>>,
    closed: CancellationToken,
}

pub(crate) struct Link {
    protocol: String,
    /// The configured servers plus every server learned through discovery and heartbeats.
    servers: Mutex<Vec<String>>,
    http: crate::tls::HttpClient,
    /// The scheme of addresses given without one: `https` with TLS, else `http`.
    scheme: &'static str,
    /// TLS for `wss://` (the CA file, or the public roots).
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Where requests go: the leader as far as the worker knows, or `None` to look for it.
    leader: Mutex<Option<String>>,
    /// Servers that refused a connection (or did not answer), with when that happened.
    down: Mutex<HashMap<String, Instant>>,
    /// One search for the leader at a time, whoever needs it (heartbeats, reports); and
    /// when the last one failed, with why.
    search: tokio::sync::Mutex<Option<(Instant, String)>>,
    own_address: Mutex<Option<String>>,
    ws: tokio::sync::Mutex<Option<WsConn>>,
    seq: AtomicU64,
    core: OnceLock<Weak<Core>>,
}

/// How long to wait for the answer to one message, by kind. A heartbeat is answered
/// without a Raft write; a report is committed first (the server gives up after 5 s); a
/// registration may wait up to 10 s for a leader on the server side.
fn request_timeout(msg: &WorkerMsg) -> Duration {
    match msg {
        WorkerMsg::Register(_) => Duration::from_secs(15),
        WorkerMsg::Heartbeat(_) => Duration::from_secs(2),
        WorkerMsg::Report(_) => Duration::from_secs(10),
        WorkerMsg::Deregister(_) => Duration::from_secs(6),
    }
}

fn kind(msg: &WorkerMsg) -> &'static str {
    match msg {
        WorkerMsg::Register(_) => "registration",
        WorkerMsg::Heartbeat(_) => "heartbeat",
        WorkerMsg::Report(_) => "report",
        WorkerMsg::Deregister(_) => "deregistration",
    }
}

impl Link {
    pub fn new(cfg: &WorkerConfig) -> Self {
        // The CA file was checked by `WorkerConfig::validate`.
        let tls = crate::tls::client_config(
            cfg.ca_file.as_deref().map(|p| ("ca_file", p)),
            None,
        )
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "Cannot use the CA file; trusting the public roots only.");
            crate::tls::client_config(None, None).expect("built-in roots load")
        });
        let secure = cfg.tls
            || cfg
                .servers
                .iter()
                .any(|s| s.starts_with("https://") || s.starts_with("wss://"));
        Self {
            protocol: cfg.protocol.clone(),
            servers: Mutex::new(cfg.servers.clone()),
            scheme: if secure { "https" } else { "http" },
            tls: Some(Arc::new(tls.clone())),
            http: crate::tls::http_builder(tls)
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client builds"),
            leader: Mutex::new(None),
            down: Mutex::default(),
            search: tokio::sync::Mutex::new(None),
            own_address: Mutex::new(None),
            ws: tokio::sync::Mutex::new(None),
            seq: AtomicU64::new(1),
            core: OnceLock::new(),
        }
    }

    pub fn bind(&self, core: &Arc<Core>) {
        let _ = self.core.set(Arc::downgrade(core));
    }

    pub fn set_own_address(&self, addr: String) {
        *self.own_address.lock().expect("addr lock") = Some(addr);
    }

    pub fn own_address(&self) -> Option<String> {
        self.own_address.lock().expect("addr lock").clone()
    }

    fn url(&self, addr: &str) -> String {
        let addr = addr.trim_end_matches('/');
        if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else if let Some(rest) = addr.strip_prefix("wss://") {
            format!("https://{rest}")
        } else if let Some(rest) = addr.strip_prefix("ws://") {
            format!("http://{rest}")
        } else {
            format!("{}://{addr}", self.scheme)
        }
    }

    /// Startup discovery: asks the configured servers in turn and uses the first answer.
    /// Fails when the cluster does not offer this worker's protocol, or no server answers.
    pub async fn discover(&self, cfg: &WorkerConfig) -> Result<(), TransportError> {
        let mut last = String::from("no servers given");
        let servers = self.servers();
        for server in &servers {
            let d = match self.ask_discovery(server, Duration::from_secs(2)).await {
                Ok(d) => d,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if !d.protocols.iter().any(|p| p == &cfg.protocol) {
                return Err(TransportError::NotOffered {
                    wanted: cfg.protocol.clone(),
                    offered: d.protocols,
                });
            }
            if d.protocol != cfg.protocol {
                last = format!(
                    "{server} is the {} transport port, not {}",
                    d.protocol, cfg.protocol
                );
                continue;
            }
            self.learn_servers(&d.servers);
            let target = d
                .leader_transports
                .get(&cfg.protocol)
                .cloned()
                .unwrap_or_else(|| server.clone());
            tracing::info!(%target, via = %server, known = ?self.servers(), "Discovered the cluster.");
            *self.leader.lock().expect("leader lock") = Some(target);
            return Ok(());
        }
        Err(TransportError::Unreachable {
            servers: servers.join(", "),
            last,
        })
    }

    /// `GET /transport/v1/discovery` on one server.
    async fn ask_discovery(
        &self,
        server: &str,
        timeout: Duration,
    ) -> Result<Discovery, TransportError> {
        let resp = self
            .http
            .get(format!("{}{PATH_DISCOVERY}", self.url(server)))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| http_error(server, e))?;
        resp.json().await.map_err(|e| {
            TransportError::Io(format!("{server}: not a raftjob transport port ({e})"))
        })
    }

    /// Remembers more servers (from a discovery or heartbeat answer).
    pub fn learn_servers(&self, servers: &[String]) {
        let mut known = self.servers.lock().expect("servers lock");
        for peer in servers {
            if !known.contains(peer) {
                known.push(peer.clone());
                tracing::info!(server = %peer, known = known.len(), "Learned a server's transport address.");
            }
        }
    }

    fn servers(&self) -> Vec<String> {
        self.servers.lock().expect("servers lock").clone()
    }

    fn leader(&self) -> Option<String> {
        self.leader.lock().expect("leader lock").clone()
    }

    fn set_leader(&self, target: &str) {
        *self.leader.lock().expect("leader lock") = Some(target.to_string());
    }

    /// Forgets the leader, unless another caller already moved on from `failed`.
    fn forget_leader(&self, failed: &str) {
        let mut leader = self.leader.lock().expect("leader lock");
        if leader.as_deref() == Some(failed) {
            *leader = None;
        }
    }

    fn mark_down(&self, server: &str) {
        self.down
            .lock()
            .expect("down lock")
            .insert(server.to_string(), Instant::now());
    }

    fn mark_up(&self, server: &str) {
        self.down.lock().expect("down lock").remove(server);
    }

    /// Whether `server` refused a connection (or did not answer) within [`DOWN_FOR`].
    fn is_down(&self, server: &str) -> bool {
        self.down
            .lock()
            .expect("down lock")
            .get(server)
            .is_some_and(|at| at.elapsed() < DOWN_FOR)
    }

    /// The leader, searched for once for all the callers that need it at the same time.
    async fn search(&self) -> Result<String, TransportError> {
        let mut last = self.search.lock().await;
        // Found by the search this caller waited for?
        if let Some(leader) = self.leader() {
            return Ok(leader);
        }
        if let Some((at, why)) = last.as_ref() {
            if at.elapsed() < SEARCH_EVERY {
                return Err(TransportError::NoLeader(why.clone()));
            }
        }
        match self.find_leader().await {
            Ok(leader) => {
                *last = None;
                self.set_leader(&leader);
                Ok(leader)
            }
            Err(e) => {
                let why = match &e {
                    TransportError::NoLeader(why) => why.clone(),
                    other => other.to_string(),
                };
                *last = Some((Instant::now(), why));
                Err(e)
            }
        }
    }

    /// Asks every known server that has not refused a connection lately (all of them,
    /// if they all have) who leads, at once, and returns the leader's address for this
    /// protocol named with the highest term. A leader that is itself down is skipped: a
    /// follower keeps naming a dead leader until the election ends.
    async fn find_leader(&self) -> Result<String, TransportError> {
        let known = self.servers();
        let mut ask: Vec<String> = known.iter().filter(|s| !self.is_down(s)).cloned().collect();
        if ask.is_empty() {
            ask = known;
        }
        let mut answers: FuturesUnordered<_> =
            ask.iter()
                .map(|server| async move {
                    (server, self.ask_discovery(server, DISCOVERY_TIMEOUT).await)
                })
                .collect();
        let mut answered = Vec::new();
        let mut notes = Vec::new();
        while let Some((server, answer)) = answers.next().await {
            match answer {
                Ok(d) => {
                    self.mark_up(server);
                    answered.push((server, d));
                }
                Err(e) => {
                    // Refused, no connection in time, or no answer: leave it out for a while.
                    self.mark_down(server);
                    notes.push(e.to_string());
                }
            }
        }
        // Judged once every answer is in, so a hint naming a server that just refused
        // is recognised as stale whatever the order of the answers.
        let mut best: Option<(u64, String, String)> = None;
        for (server, d) in answered {
            if d.protocol != self.protocol {
                notes.push(format!(
                    "{server} is the {} transport port, not {}",
                    d.protocol, self.protocol
                ));
                continue;
            }
            self.learn_servers(&d.servers);
            let Some(leader) = d.leader_transports.get(&self.protocol) else {
                notes.push(format!("{server} knows no leader (term {})", d.term));
                continue;
            };
            if leader != server && self.is_down(leader) {
                notes.push(format!(
                    "{server} names {leader} (term {}), which does not answer",
                    d.term
                ));
                continue;
            }
            if best.as_ref().is_none_or(|(term, ..)| d.term > *term) {
                best = Some((d.term, leader.clone(), server.clone()));
            }
        }
        match best {
            Some((term, leader, via)) => {
                tracing::info!(%leader, term, %via, "Found the leader.");
                Ok(leader)
            }
            None => Err(TransportError::NoLeader(if notes.is_empty() {
                "no servers known".into()
            } else {
                notes.join("; ")
            })),
        }
    }

    /// Sends one message to the leader and returns its answer. Follows "not leader"
    /// hints, and looks for the leader again (over every known server) whenever the
    /// target fails, with short pauses, until the answer comes or `within` has passed.
    /// Answers other than "not leader" (refusals included) are the caller's to judge.
    pub async fn call(
        &self,
        msg: &WorkerMsg,
        within: Duration,
    ) -> Result<ServerMsg, TransportError> {
        let deadline = Instant::now() + within;
        let timeout = request_timeout(msg);
        let mut pause = RETRY_MIN;
        let mut hops = 0;
        loop {
            let failure = match self.leader() {
                None => match self.search().await {
                    Ok(_) => continue,
                    Err(e) => e,
                },
                Some(target) => {
                    let reply = match self.protocol.as_str() {
                        "ws" => self.call_ws(&target, msg, timeout).await,
                        _ => self.call_http(&target, msg, timeout).await,
                    };
                    match reply {
                        Ok(ServerMsg::NotLeader { leader_addr, .. }) => {
                            self.drop_ws_to(&target).await;
                            match leader_addr {
                                Some(hint)
                                    if hint != target
                                        && !self.is_down(&hint)
                                        && hops < MAX_HOPS =>
                                {
                                    tracing::info!(from = %target, to = %hint, "Following the leader.");
                                    hops += 1;
                                    let mut leader = self.leader.lock().expect("leader lock");
                                    if leader.as_deref() == Some(target.as_str()) {
                                        *leader = Some(hint);
                                    }
                                    continue;
                                }
                                hint => {
                                    // No leader yet (an election), a leader that does not
                                    // answer, or redirects in circles: ask every server.
                                    self.forget_leader(&target);
                                    TransportError::NoLeader(match hint {
                                        Some(h) if self.is_down(&h) => format!(
                                            "{target} is not the leader; it names {h}, which does not answer"
                                        ),
                                        Some(h) => format!(
                                            "{target} is not the leader; it names {h} after {hops} redirects"
                                        ),
                                        None => format!(
                                            "{target} is not the leader and knows none yet"
                                        ),
                                    })
                                }
                            }
                        }
                        Ok(reply) => return Ok(reply),
                        Err(e) => {
                            tracing::info!(%target, error = %e, request = kind(msg), "The leader did not answer; looking for it.");
                            self.forget_leader(&target);
                            self.drop_ws_to(&target).await;
                            if let TransportError::Connect(_) = e {
                                // Gone: look elsewhere at once, leaving it out.
                                self.mark_down(&target);
                                if Instant::now() < deadline {
                                    continue;
                                }
                            }
                            e
                        }
                    }
                }
            };
            let now = Instant::now();
            if now + pause >= deadline {
                return Err(failure);
            }
            tracing::debug!(error = %failure, ?pause, "No leader yet; retrying.");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
            hops = 0;
        }
    }

    async fn call_http(
        &self,
        target: &str,
        msg: &WorkerMsg,
        timeout: Duration,
    ) -> Result<ServerMsg, TransportError> {
        let path = match msg {
            WorkerMsg::Register(_) => PATH_REGISTER,
            WorkerMsg::Heartbeat(_) => PATH_HEARTBEAT,
            WorkerMsg::Report(_) => PATH_REPORT,
            WorkerMsg::Deregister(_) => PATH_DEREGISTER,
        };
        let body = match msg {
            WorkerMsg::Register(r) => serde_json::to_value(r),
            WorkerMsg::Heartbeat(h) => serde_json::to_value(h),
            WorkerMsg::Report(r) => serde_json::to_value(r),
            WorkerMsg::Deregister(d) => serde_json::to_value(d),
        }
        .expect("messages serialise");
        let resp = self
            .http
            .post(format!("{}{path}", self.url(target)))
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| http_error(target, e))?;
        resp.json()
            .await
            .map_err(|e| TransportError::Io(format!("{target}: {e}")))
    }

    /// Closes the WebSocket if it goes to `target`.
    async fn drop_ws_to(&self, target: &str) {
        let mut guard = self.ws.lock().await;
        if guard.as_ref().is_some_and(|c| c.target == target) {
            if let Some(conn) = guard.take() {
                conn.closed.cancel();
            }
        }
    }

    async fn call_ws(
        &self,
        target: &str,
        msg: &WorkerMsg,
        timeout: Duration,
    ) -> Result<ServerMsg, TransportError> {
        let (tx, pending, closed) = {
            let mut guard = self.ws.lock().await;
            let usable = guard
                .as_ref()
                .is_some_and(|c| c.target == target && !c.closed.is_cancelled());
            if !usable {
                if let Some(old) = guard.take() {
                    old.closed.cancel();
                }
                *guard = Some(self.connect_ws(target).await?);
            }
            let c = guard.as_ref().expect("connected");
            (c.tx.clone(), c.pending.clone(), c.closed.clone())
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        pending.lock().expect("pending lock").insert(seq, otx);
        let frame = serde_json::to_string(&WsWorkerFrame::Request {
            seq,
            msg: msg.clone(),
        })
        .expect("frames serialise");
        if tx.send(frame).is_err() {
            pending.lock().expect("pending lock").remove(&seq);
            return Err(TransportError::Io(format!(
                "{target}: the WebSocket is closed"
            )));
        }
        match tokio::time::timeout(timeout, orx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(TransportError::Io(format!(
                "{target}: the WebSocket closed before the answer"
            ))),
            Err(_) => {
                pending.lock().expect("pending lock").remove(&seq);
                // A connection that does not answer is of no use any more.
                closed.cancel();
                Err(TransportError::Io(format!(
                    "{target}: no answer over the WebSocket within {timeout:?}"
                )))
            }
        }
    }

    async fn connect_ws(&self, target: &str) -> Result<WsConn, TransportError> {
        let url = format!("{}{PATH_WS}", self.url(target).replacen("http", "ws", 1));
        let socket =
            // Nagle off: reports are small frames that must not wait for delayed ACKs.
            tokio::time::timeout(
                CONNECT_TIMEOUT * 4,
                crate::tls::ws_connect(&url, self.tls.clone()),
            )
                .await
                .map_err(|_| TransportError::Connect(format!("{url}: connect timed out")))?
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Io(io) => {
                        TransportError::Connect(format!("{url}: {io}"))
                    }
                    other => TransportError::Io(format!("{url}: {other}")),
                })?;
        tracing::info!(%url, "WebSocket connected.");
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>> = Arc::default();
        let closed = CancellationToken::new();
        let core = self.core.get().cloned();
        {
            let closed = closed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = closed.cancelled() => { let _ = sink.close().await; return; }
                        m = rx.recv() => match m {
                            Some(text) => if sink.send(Message::Text(text.into())).await.is_err() { closed.cancel(); return; },
                            None => return,
                        },
                    }
                }
            });
        }
        {
            let (closed, pending, tx) = (closed.clone(), pending.clone(), tx.clone());
            let url = url.clone();
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = closed.cancelled() => break,
                        m = stream.next() => m,
                    };
                    let Some(Ok(Message::Text(text))) = msg else {
                        if matches!(msg, Some(Ok(_))) {
                            continue;
                        }
                        tracing::info!(%url, "WebSocket closed.");
                        break;
                    };
                    let Ok(frame) = serde_json::from_str::<WsServerFrame>(&text) else {
                        continue;
                    };
                    if frame.seq != 0 {
                        if let Some(waiter) =
                            pending.lock().expect("pending lock").remove(&frame.seq)
                        {
                            let _ = waiter.send(frame.msg);
                        }
                        continue;
                    }
                    let Some(core) = core.as_ref().and_then(Weak::upgrade) else {
                        break;
                    };
                    let answer = match frame.msg {
                        ServerMsg::Dispatch(d) => WsWorkerFrame::DispatchAck {
                            attempt: d.attempt,
                            ack: core.accept(d),
                        },
                        ServerMsg::Stop(s) => WsWorkerFrame::StopAck {
                            attempt: s.attempt,
                            ack: core.stop(&s),
                        },
                        _ => continue,
                    };
                    let reply = serde_json::to_string(&answer).expect("frames serialise");
                    let _ = tx.send(reply);
                }
                closed.cancel();
                // Dropping the waiters fails every pending request at once.
                pending.lock().expect("pending lock").clear();
            });
        }
        Ok(WsConn {
            target: target.to_string(),
            tx,
            pending,
            closed,
        })
    }
}

/// A reqwest error, as a [`TransportError::Connect`] when no connection was made.
fn http_error(server: &str, e: crate::tls::HttpError) -> TransportError {
    let mut text = format!("{server}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if e.is_connect() {
        TransportError::Connect(text)
    } else {
        TransportError::Io(text)
    }
}
