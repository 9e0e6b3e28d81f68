//! The worker protocol: one message model shared by both transports and both sides.
//!
//! - `http`: the worker POSTs [`WorkerMsg`]s to
//!   `/transport/v1/{register,heartbeat,report,deregister}`
//!   on a server's http transport port and gets the matching [`ServerMsg`] back; the
//!   leader POSTs [`Dispatch`] and [`StopAttempt`] to the worker's own endpoint
//!   (`/worker/v1/dispatch`, `/worker/v1/stop`).
//! - `ws`: the worker opens one WebSocket to `/transport/v1/ws` on the leader's ws
//!   transport port and sends [`WorkerMsg`]s as JSON text frames; the server answers
//!   each with a [`ServerMsg`] carrying the same `seq`, and pushes dispatches and stops
//!   as [`ServerMsg::Dispatch`] / [`ServerMsg::Stop`] with `seq = 0`.
//!
//! `docs/worker-protocol.md` specifies every message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{FencingToken, InstanceId, Processor};

/// Protocol version; a worker is compatible when its major version equals the server's.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Header carrying the per-worker credential on server → worker calls.
pub const CREDENTIAL_HEADER: &str = "x-raftjob-worker-credential";

pub const PATH_REGISTER: &str = "/transport/v1/register";
pub const PATH_HEARTBEAT: &str = "/transport/v1/heartbeat";
pub const PATH_REPORT: &str = "/transport/v1/report";
pub const PATH_DEREGISTER: &str = "/transport/v1/deregister";
pub const PATH_WS: &str = "/transport/v1/ws";
pub const PATH_WORKER_DISPATCH: &str = "/worker/v1/dispatch";
pub const PATH_WORKER_STOP: &str = "/worker/v1/stop";

/// Identifies one attempt of one instance, fenced by the token of its dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub instance_id: InstanceId,
    pub attempt: u32,
    pub token: FencingToken,
}

/// Worker → server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Register(Register),
    Heartbeat(Heartbeat),
    Report(Report),
    /// The worker is shutting down cleanly: remove its registration.
    Deregister(Deregister),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    pub app: String,
    pub token: String,
    /// Unique within the app; the worker id is `<app>/<name>`.
    pub name: String,
    pub protocol: String,
    pub version: String,
    #[serde(default)]
    pub tag: Option<String>,
    /// The worker's own dispatch endpoint (`http` protocol only), `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    pub max_concurrency: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker_id: String,
    pub credential: String,
    /// Attempts the worker is running now; the leader renews their leases.
    pub held: Vec<AttemptRef>,
    pub running: u32,
    pub max_concurrency: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub worker_id: String,
    pub credential: String,
    pub attempt: AttemptRef,
    pub event: ReportEvent,
}

/// Sent by a worker that shuts down cleanly. The leader removes the registration
/// unless an attempt dispatched to the worker is still open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deregister {
    pub worker_id: String,
    pub credential: String,
}

/// What a worker reports about an attempt (the state machine's own event type).
pub use crate::state::AttemptEvent as ReportEvent;

/// Server → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Registered(Registered),
    HeartbeatAck(HeartbeatAck),
    ReportAck(ReportAck),
    /// The answer to a [`Deregister`]: the registration is gone (`removed: false` when
    /// there was none any more).
    Deregistered {
        worker_id: String,
        removed: bool,
    },
    /// This node does not lead; go to the leader (its address for your protocol, if known).
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The request was refused; the message says why and what to do.
    Refused {
        code: String,
        message: String,
    },
    Dispatch(Dispatch),
    Stop(StopAttempt),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub worker_id: String,
    pub cluster_id: String,
    /// The current Raft term: the worker refuses dispatches from lower terms.
    pub term: u64,
    /// Presented by servers on dispatches to this worker, and by the worker on its calls.
    pub credential: String,
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    pub server_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub term: u64,
    pub cluster_id: String,
    /// Whether the leases of `held` were renewed for another `lease_ms` (measured by
    /// the worker from when it sent the heartbeat).
    pub renewed: bool,
    pub lease_ms: u64,
    /// Held attempts the server no longer recognises (stale, finished or stopped):
    /// the worker kills them.
    pub revoke: Vec<AttemptRef>,
    /// Every server's transport address for the worker's protocol, so the worker can
    /// find the next leader even if the servers it was configured with are down.
    #[serde(default)]
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportAck {
    pub term: u64,
    /// False when the report was for a stale attempt: the worker kills that attempt.
    pub accepted: bool,
}

/// A dispatch, sent only after its `Dispatch` log entry committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatch {
    pub cluster_id: String,
    /// Term of the leader that dispatches; equals `attempt.token.term`.
    pub term: u64,
    pub attempt: AttemptRef,
    pub job_id: u64,
    pub processor: Processor,
    #[serde(default)]
    pub job_params: Value,
    #[serde(default)]
    pub instance_params: Value,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    pub lease_ms: u64,
    /// The operator's processor policies that apply (the cluster's, the app's; only
    /// those that restrict anything). The worker checks what only it can: the
    /// addresses an HTTP job's host name resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::state::ProcessorPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopAttempt {
    pub cluster_id: String,
    pub term: u64,
    pub attempt: AttemptRef,
}

/// A worker's answer to a dispatch or stop (the http protocol's response body; over
/// ws it is sent as a report-like frame, see [`WsWorkerFrame`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchAck {
    pub accepted: bool,
    #[serde(default)]
    pub reason: Option<String>,
    /// The highest term the worker has seen for this cluster.
    pub term_seen: u64,
}

/// A frame from worker to server over ws: a request with a sequence number, or the
/// acknowledgement of a pushed dispatch/stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum WsWorkerFrame {
    Request {
        seq: u64,
        msg: WorkerMsg,
    },
    DispatchAck {
        attempt: AttemptRef,
        ack: DispatchAck,
    },
    /// The answer to a pushed stop (informational: the report that follows settles it).
    StopAck {
        attempt: AttemptRef,
        ack: DispatchAck,
    },
}

/// A frame from server to worker over ws.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WsServerFrame {
    /// The request this answers; 0 for pushes.
    pub seq: u64,
    pub msg: ServerMsg,
}

/// Whether a worker of `worker_version` may join a server of `server_version`.
pub fn compatible(server_version: &str, worker_version: &str) -> bool {
    let major = |v: &str| v.split('.').next().map(str::to_string);
    let minor = |v: &str| v.split('.').nth(1).map(str::to_string);
    // 0.x releases are compatible only within the same minor version.
    if major(server_version).as_deref() == Some("0") {
        return major(server_version) == major(worker_version)
            && minor(server_version) == minor(worker_version);
    }
    major(server_version).is_some() && major(server_version) == major(worker_version)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_compatibility() {
        assert!(super::compatible("0.1.0", "0.1.7"));
        assert!(!super::compatible("0.1.0", "0.2.0"));
        assert!(super::compatible("1.2.0", "1.9.1"));
        assert!(!super::compatible("1.2.0", "2.0.0"));
        assert!(!super::compatible("1.2.0", "garbage"));
    }
}
