//! The cluster listener: Raft RPC and leader forwarding between servers, nothing else.
//! Every request must carry the cluster secret; Raft RPCs must also name this node.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::raft::network::{
    SnapshotChunk, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE, SECRET_HEADER, TARGET_HEADER,
};
use crate::raft::{NodeId, TypeConfig};
use crate::state::Proposal;

pub const PATH_FORWARD_WRITE: &str = "/cluster/v1/forward/write";
pub const PATH_FORWARD_READ_INDEX: &str = "/cluster/v1/forward/read-index";
pub const PATH_FORWARD_MEMBERS: &str = "/cluster/v1/forward/members";
pub const PATH_PROBE: &str = "/cluster/v1/probe";
pub const PATH_FORWARD_WORKERS: &str = "/cluster/v1/forward/workers";

/// A leader's answer to a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", content = "value", rename_all = "snake_case")]
pub enum ForwardReply<T> {
    Ok(T),
    /// Not applied: this node does not lead (the hint names who does, if known).
    NotLeader {
        leader_id: Option<NodeId>,
    },
    /// Proposed, but the outcome is unknown.
    Unknown {
        message: String,
    },
    Failed {
        message: String,
    },
}

/// What a node says about itself to a peer deciding whether to bootstrap.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub node_id: NodeId,
    pub initialized: bool,
    pub cluster_id: Option<String>,
}

/// A membership change forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberChange {
    Add { id: NodeId, cluster_addr: String },
    Remove { id: NodeId },
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .route(PATH_FORWARD_WRITE, post(forward_write))
        .route(PATH_FORWARD_READ_INDEX, post(forward_read_index))
        .route(PATH_FORWARD_MEMBERS, post(forward_members))
        .route(PATH_PROBE, get(probe))
        .route(PATH_FORWARD_WORKERS, post(forward_workers))
        .layer(middleware::from_fn_with_state(node.clone(), require_secret))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(node)
}

/// Constant-time comparison, so the secret cannot be guessed byte by byte from timing.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_secret(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !secrets_equal(given, node.config.cluster_secret.as_bytes()) {
        tracing::warn!(path = %req.uri().path(), "Refused a cluster-port request without the right cluster secret.");
        return (
            StatusCode::UNAUTHORIZED,
            "cluster secret missing or wrong: this port is for raftjob servers only",
        )
            .into_response();
    }
    next.run(req).await
}

/// Refuses Raft RPCs meant for another node id (a wrong address in the membership).
fn check_target(node: &Node, headers: &HeaderMap) -> Result<(), Response> {
    let target = headers
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok());
    match target {
        Some(t) if t == node.id => Ok(()),
        other => Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this is node {}, not node {:?}: check the membership addresses",
                node.id, other
            ),
        )
            .into_response()),
    }
}

async fn append(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Err(r) = check_target(&node, &headers) {
        return r;
    }
    Json(node.raft.append_entries(req).await).into_response()
}

async fn vote(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Err(r) = check_target(&node, &headers) {
        return r;
    }
    Json(node.raft.vote(req).await).into_response()
}

async fn snapshot(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(chunk): Json<SnapshotChunk>,
) -> Response {
    if let Err(r) = check_target(&node, &headers) {
        return r;
    }
    match chunk.into_request() {
        Ok(req) => Json(node.raft.install_snapshot(req).await).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("snapshot chunk data is not base64: {e}"),
        )
            .into_response(),
    }
}

async fn forward_write(State(node): State<Arc<Node>>, Json(proposal): Json<Proposal>) -> Response {
    Json(node.propose_local_reply(proposal).await).into_response()
}

async fn forward_read_index(State(node): State<Arc<Node>>) -> Response {
    Json(node.leader_read_index().await).into_response()
}

async fn forward_members(
    State(node): State<Arc<Node>>,
    Json(change): Json<MemberChange>,
) -> Response {
    Json(node.change_members_local(change).await).into_response()
}

/// The leader's view of the workers (liveness lives only in its memory).
async fn forward_workers(State(node): State<Arc<Node>>) -> Response {
    let reply = if node.raft.metrics().borrow().current_leader == Some(node.id) {
        let guard = node.state.read().expect("state lock");
        ForwardReply::Ok(node.workers.views(&guard.state, None))
    } else {
        ForwardReply::NotLeader {
            leader_id: node.raft.metrics().borrow().current_leader,
        }
    };
    Json(reply).into_response()
}

async fn probe(State(node): State<Arc<Node>>) -> Json<Probe> {
    let initialized = node.raft.is_initialized().await.unwrap_or(false);
    let cluster_id = node.cluster_id();
    Json(Probe {
        node_id: node.id,
        initialized,
        cluster_id,
    })
}
