//! How a worker reaches the leader: discovery through any server's transport port,
//! then `http` requests or one `ws` connection, following leader changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use super::runtime::Core;
use crate::protocol::{
    ServerMsg, WorkerMsg, WsServerFrame, WsWorkerFrame, PATH_HEARTBEAT, PATH_REGISTER, PATH_REPORT,
    PATH_WS,
};
use crate::server::transport::{Discovery, PATH_DISCOVERY};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the cluster does not offer {wanted}; it offers {offered:?}")]
    NotOffered {
        wanted: String,
        offered: Vec<String>,
    },
    #[error("no server answered at {servers}: {last}")]
    Unreachable { servers: String, last: String },
    #[error("{0}")]
    Io(String),
}

struct WsConn {
    tx: mpsc::UnboundedSender<String>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMsg>>>>,
    closed: CancellationToken,
}

pub(crate) struct Link {
    protocol: String,
    /// The configured servers plus every server learned through discovery.
    servers: Mutex<Vec<String>>,
    http: reqwest::Client,
    leader: Mutex<Option<String>>,
    own_address: Mutex<Option<String>>,
    ws: tokio::sync::Mutex<Option<WsConn>>,
    seq: AtomicU64,
    core: OnceLock<Weak<Core>>,
}

impl Link {
    pub fn new(cfg: &WorkerConfig) -> Self {
        Self {
            protocol: cfg.protocol.clone(),
            servers: Mutex::new(cfg.servers.clone()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client builds"),
            leader: Mutex::new(None),
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

    fn url(addr: &str) -> String {
        if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        }
    }

    /// Finds the leader's transport address for this protocol through any server.
    pub async fn discover(&self, cfg: &WorkerConfig) -> Result<(), TransportError> {
        let mut last = String::from("no servers given");
        let servers = self.servers.lock().expect("servers lock").clone();
        for server in &servers {
            let resp = self
                .http
                .get(format!("{}{PATH_DISCOVERY}", Self::url(server)))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let d: Discovery = match resp {
                Ok(r) => match r.json().await {
                    Ok(d) => d,
                    Err(e) => {
                        last = format!("{server}: not a raftjob transport port ({e})");
                        continue;
                    }
                },
                Err(e) => {
                    last = format!("{server}: {e}");
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
            let target = d
                .leader_transports
                .get(&cfg.protocol)
                .cloned()
                .unwrap_or_else(|| server.clone());
            *self.leader.lock().expect("leader lock") = Some(target);
            return Ok(());
        }
        Err(TransportError::Unreachable {
            servers: servers.join(", "),
            last,
        })
    }

    /// Remembers more servers (from a heartbeat answer).
    pub fn learn_servers(&self, servers: &[String]) {
        let mut known = self.servers.lock().expect("servers lock");
        for peer in servers {
            if !known.contains(peer) {
                known.push(peer.clone());
            }
        }
    }

    fn leader(&self) -> Option<String> {
        self.leader.lock().expect("leader lock").clone()
    }

    /// Sends one message to the leader and returns its answer, following redirects.
    pub async fn call(&self, msg: WorkerMsg) -> Result<ServerMsg, TransportError> {
        let mut last = TransportError::Io("no attempt".into());
        for _ in 0..4 {
            let Some(target) = self.leader() else {
                if let Err(e) = self.rediscover().await {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            };
            let reply = match self.protocol.as_str() {
                "ws" => self.call_ws(&target, msg.clone()).await,
                _ => self.call_http(&target, &msg).await,
            };
            match reply {
                Ok(ServerMsg::NotLeader { leader_addr, .. }) => {
                    tracing::info!(leader = ?leader_addr, "Following the leader.");
                    *self.leader.lock().expect("leader lock") = leader_addr;
                    self.drop_ws().await;
                    if self.leader().is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    // The leader may be gone: ask the servers again.
                    *self.leader.lock().expect("leader lock") = None;
                    self.drop_ws().await;
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn rediscover(&self) -> Result<(), TransportError> {
        let Some(core) = self.core.get().and_then(Weak::upgrade) else {
            return Err(TransportError::Io("worker stopped".into()));
        };
        self.discover(&core.cfg).await
    }

    async fn call_http(&self, target: &str, msg: &WorkerMsg) -> Result<ServerMsg, TransportError> {
        let path = match msg {
            WorkerMsg::Register(_) => PATH_REGISTER,
            WorkerMsg::Heartbeat(_) => PATH_HEARTBEAT,
            WorkerMsg::Report(_) => PATH_REPORT,
        };
        let body = match msg {
            WorkerMsg::Register(r) => serde_json::to_value(r),
            WorkerMsg::Heartbeat(h) => serde_json::to_value(h),
            WorkerMsg::Report(r) => serde_json::to_value(r),
        }
        .expect("messages serialise");
        let resp = self
            .http
            .post(format!("{}{path}", Self::url(target)))
            .json(&body)
            .send()
            .await
            .map_err(|e| TransportError::Io(format!("{target}: {e}")))?;
        resp.json()
            .await
            .map_err(|e| TransportError::Io(format!("{target}: {e}")))
    }

    async fn drop_ws(&self) {
        if let Some(conn) = self.ws.lock().await.take() {
            conn.closed.cancel();
        }
    }

    async fn call_ws(&self, target: &str, msg: WorkerMsg) -> Result<ServerMsg, TransportError> {
        let (tx, pending) = {
            let mut guard = self.ws.lock().await;
            if guard.as_ref().is_none_or(|c| c.closed.is_cancelled()) {
                *guard = Some(self.connect_ws(target).await?);
            }
            let c = guard.as_ref().expect("connected");
            (c.tx.clone(), c.pending.clone())
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        pending.lock().expect("pending lock").insert(seq, otx);
        let frame =
            serde_json::to_string(&WsWorkerFrame::Request { seq, msg }).expect("frames serialise");
        tx.send(frame)
            .map_err(|_| TransportError::Io("WebSocket closed".into()))?;
        match tokio::time::timeout(Duration::from_secs(10), orx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                pending.lock().expect("pending lock").remove(&seq);
                Err(TransportError::Io(format!(
                    "no answer from {target} over the WebSocket"
                )))
            }
        }
    }

    async fn connect_ws(&self, target: &str) -> Result<WsConn, TransportError> {
        let url = format!("{}{PATH_WS}", Self::url(target).replacen("http", "ws", 1));
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .map_err(|_| TransportError::Io(format!("{url}: connect timed out")))?
        .map_err(|e| TransportError::Io(format!("{url}: {e}")))?;
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
                pending.lock().expect("pending lock").clear();
            });
        }
        Ok(WsConn {
            tx,
            pending,
            closed,
        })
    }
}
