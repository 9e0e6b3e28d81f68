//! The cluster listener: Raft RPC and leader forwarding between servers, nothing else.
//! Every request must carry the cluster secret; Raft RPCs must also name this node.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
pub const PATH_FORWARD_TRANSFER: &str = "/cluster/v1/forward/transfer-leader";
pub const PATH_ELECT: &str = "/cluster/v1/elect";

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
        .route(PATH_FORWARD_TRANSFER, post(forward_transfer))
        .route(PATH_ELECT, post(elect))
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
    // Both the current secret and, during a rotation, `cluster_secret_next`.
    let accepted = node.config.cluster_secrets();
    if !accepted.iter().any(|s| secrets_equal(given, s.as_bytes())) {
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

// ---------------------------------------------------------------------------------
// Leadership transfer. openraft 0.9 has no transfer call, so it is built from what it
// has: the leader checks that the target is a caught-up voter, turns its own elections
// off (so it cannot win the leadership back), and asks the target over the cluster port
// to start an election at once (`raft.trigger().elect()`). The old leader's lease has
// expired (it is only renewed when it is elected) and the target's log is as long as
// its own, so it grants its vote; with the target's own vote that is a majority of
// three. The old leader turns its elections back on two election timeouts later.
//
// Limitation: writes are not paused during the hand-over. Under a steady write load the
// leader may append an entry between its check and the target's vote request; it then
// refuses the vote (the target's log is shorter) and, seeing the target's higher term,
// steps down, and an ordinary election picks the leader (possibly not the target,
// within about one election timeout). The answer then says so (503), and a retry
// usually succeeds. Pausing the write batcher on the leader for the hand-over would
// close that window.
// ---------------------------------------------------------------------------------

/// A transfer request, on the api port and forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    /// The voter that should become the leader.
    pub to: NodeId,
}

/// The answer to a successful transfer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferDone {
    pub previous_leader_id: NodeId,
    pub new_leader_id: NodeId,
    /// From the leader taking the request to it seeing the target lead.
    pub took_ms: u64,
    /// Of which waiting for the target to catch up.
    pub catch_up_ms: u64,
    /// How many times the target was asked to start an election.
    pub attempts: u32,
}

/// What the leader tells the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElectRequest {
    pub from_leader: NodeId,
    pub term: u64,
    /// The leader's last log index when it sent this: the target waits (briefly) to
    /// hold it before it stands, so the leader's log-up-to-date check grants the vote.
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// Refuse to stand without that entry (instead of standing anyway after a wait).
    #[serde(default)]
    pub strict: bool,
}

/// How long the leader waits for the target to catch up before refusing.
pub const TRANSFER_CATCH_UP: Duration = Duration::from_secs(3);
/// How long one election attempt may take before the target is asked again.
const TRANSFER_ATTEMPT: Duration = Duration::from_millis(500);
const TRANSFER_ATTEMPTS: u32 = 3;

/// One transfer at a time per process.
static TRANSFER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Node {
    /// Runs a transfer on this node, which must lead. `Failed` means refused (the
    /// target is not a caught-up voter, or already leads); `Unknown` means it was tried
    /// and the target did not end up leading.
    pub async fn transfer_leader_local(&self, to: NodeId) -> ForwardReply<TransferDone> {
        let start = Instant::now();
        let _guard = TRANSFER_LOCK.lock().await;
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) || m.state != openraft::ServerState::Leader {
            return ForwardReply::NotLeader {
                leader_id: m.current_leader,
            };
        }
        if to == self.id {
            return ForwardReply::Failed {
                message: format!("node {to} is already the leader"),
            };
        }
        let membership = m.membership_config.membership();
        if membership.get_node(&to).is_none() {
            return ForwardReply::Failed {
                message: format!("node {to} is not a member of the cluster"),
            };
        }
        if !membership.voter_ids().any(|v| v == to) {
            return ForwardReply::Failed {
                message: format!(
                    "node {to} is a learner, not a voter: only a voter can become the leader"
                ),
            };
        }
        let Some(addr) = self.peer_addr(to) else {
            return ForwardReply::Failed {
                message: format!("node {to} has no cluster address in the membership"),
            };
        };

        // Wait for the target to hold every entry the leader has.
        let caught_up_by = start + TRANSFER_CATCH_UP;
        let mut metrics = self.raft.metrics();
        loop {
            let m = metrics.borrow_and_update().clone();
            if m.current_leader != Some(self.id) {
                return ForwardReply::NotLeader {
                    leader_id: m.current_leader,
                };
            }
            let matched = matched_index(&m, to);
            if matched.is_some() && matched == m.last_log_index {
                break;
            }
            if Instant::now() >= caught_up_by {
                return ForwardReply::Failed {
                    message: format!(
                        "node {to} is not caught up: it holds up to index {} of the leader's {} after {} s; retry when `raftjob cluster status` shows its LAG at 0",
                        matched.map(|i| i.to_string()).unwrap_or_else(|| "none".into()),
                        m.last_log_index.map(|i| i.to_string()).unwrap_or_else(|| "none".into()),
                        TRANSFER_CATCH_UP.as_secs()
                    ),
                };
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), metrics.changed()).await;
        }
        let catch_up_ms = start.elapsed().as_millis() as u64;

        let outcome = self.hand_over(to, &addr, start, catch_up_ms).await;
        match &outcome {
            ForwardReply::Ok(d) => tracing::info!(
                from = self.id,
                to,
                took_ms = d.took_ms,
                attempts = d.attempts,
                "Leadership transferred."
            ),
            other => {
                tracing::warn!(from = self.id, to, outcome = ?other, "Leadership transfer failed.")
            }
        }
        outcome
    }

    async fn hand_over(
        &self,
        to: NodeId,
        addr: &str,
        start: Instant,
        catch_up_ms: u64,
    ) -> ForwardReply<TransferDone> {
        let mut metrics = self.raft.metrics();
        let mut last_error = String::new();
        let lease = Duration::from_millis(self.config.raft.election_timeout_max_ms);
        for attempt in 1..=TRANSFER_ATTEMPTS {
            if attempt > 1 {
                // This node's fresh leader lease would refuse the vote below.
                tokio::time::sleep(lease + Duration::from_millis(50)).await;
            }
            // Still leading, with the target holding every entry right now?
            let until = Instant::now() + Duration::from_secs(1);
            let term = loop {
                let m = metrics.borrow_and_update().clone();
                if m.current_leader != Some(self.id) {
                    return ForwardReply::NotLeader {
                        leader_id: m.current_leader,
                    };
                }
                let matched = matched_index(&m, to);
                if matched.is_some() && matched == m.last_log_index {
                    break (m.current_term, matched);
                }
                let now = Instant::now();
                if now >= until {
                    last_error = format!("node {to} fell behind the leader's log");
                    break (0, None);
                }
                let _ = tokio::time::timeout(until - now, metrics.changed()).await;
            };
            let (term, matched) = term;
            if term == 0 {
                continue;
            }

            // Step down by voting for the target in the next term, here, at once: this
            // node stops appending (its log is frozen) and cannot win that term. The
            // request's last log id is the highest possible, so only the lease can
            // refuse it. Elections stay off here for two election timeouts.
            self.raft.runtime_config().elect(false);
            let raft = self.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(2 * lease).await;
                raft.runtime_config().elect(true);
            });
            let vote = VoteRequest::new(
                openraft::Vote::new(term + 1, to),
                Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(u64::MAX, NodeId::MAX),
                    u64::MAX,
                )),
            );
            // The log as it stood when the vote was cast (the metrics may lag).
            let frozen = match self.raft.vote(vote).await {
                Ok(r) if r.vote_granted => r.last_log_id.map(|l| l.index),
                Ok(_) => {
                    last_error = "this node's leader lease has not expired yet".into();
                    self.raft.runtime_config().elect(true);
                    continue;
                }
                Err(e) => {
                    self.raft.runtime_config().elect(true);
                    return ForwardReply::Unknown {
                        message: format!("this node's Raft refused the hand-over vote: {e}"),
                    };
                }
            };
            // Entries appended between the check and the vote: the target most likely
            // lacks them and will not get them (this node no longer leads), so it cannot
            // win. It still stands at once (its candidacy lifts its leader lease, so
            // this node can be re-elected at once below), and is given only a short
            // while (the metrics may lag, and it may hold them after all).
            let doomed = frozen > matched;
            let window = if doomed {
                Duration::from_millis(100)
            } else {
                TRANSFER_ATTEMPT
            };

            // The target stands in that term; this node's vote is already its own.
            let req = ElectRequest {
                from_leader: self.id,
                term: term + 1,
                last_log_index: if doomed { None } else { frozen },
                strict: false,
            };
            let asked = match self
                .forward_post::<_, ()>(addr, PATH_ELECT, &req, Duration::from_secs(2))
                .await
            {
                Ok(ForwardReply::Ok(())) => Ok(()),
                Ok(other) => Err(format!("node {to} did not stand: {other:?}")),
                Err(e) => Err(format!("node {to} at {addr} did not answer: {e}")),
            };
            if let Err(e) = asked {
                last_error = e;
            } else {
                let until = Instant::now() + window;
                loop {
                    let leader = metrics.borrow_and_update().current_leader;
                    match leader {
                        Some(l) if l == to => {
                            return ForwardReply::Ok(TransferDone {
                                previous_leader_id: self.id,
                                new_leader_id: to,
                                took_ms: start.elapsed().as_millis() as u64,
                                catch_up_ms,
                                attempts: attempt,
                            })
                        }
                        Some(l) if l != self.id => {
                            return ForwardReply::Unknown {
                                message: format!(
                                    "leadership moved to node {l} instead of node {to}; retry the transfer"
                                ),
                            }
                        }
                        _ => {}
                    }
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    let _ = tokio::time::timeout(until - now, metrics.changed()).await;
                }
                last_error = if doomed {
                    format!(
                        "the leader appended entries {}..={} after node {to} had caught up",
                        matched.map_or(0, |m| m + 1),
                        frozen.unwrap_or(0)
                    )
                } else {
                    format!(
                        "node {to} did not win its election within {} ms",
                        window.as_millis()
                    )
                };
            }
            // The target could not take over: this node, with the longest log, stands
            // again at once rather than leaving the cluster without a leader.
            tracing::warn!(to, error = %last_error, "Leadership hand-over failed; standing again.");
            self.raft.runtime_config().elect(true);
            let _ = self.raft.trigger().elect().await;
            let until = Instant::now() + Duration::from_secs(3);
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                match leader {
                    Some(l) if l == self.id => break,
                    Some(l) if l == to => {
                        return ForwardReply::Ok(TransferDone {
                            previous_leader_id: self.id,
                            new_leader_id: to,
                            took_ms: start.elapsed().as_millis() as u64,
                            catch_up_ms,
                            attempts: attempt,
                        })
                    }
                    Some(l) => {
                        return ForwardReply::Unknown {
                            message: format!(
                                "{last_error}; node {l} leads now; retry the transfer"
                            ),
                        }
                    }
                    None => {}
                }
                let now = Instant::now();
                if now >= until {
                    return ForwardReply::Unknown {
                        message: format!("{last_error}; an election is choosing the leader"),
                    };
                }
                let _ = tokio::time::timeout(until - now, metrics.changed()).await;
            }
        }
        ForwardReply::Unknown {
            message: format!(
                "the transfer did not complete after {TRANSFER_ATTEMPTS} attempts: {last_error}"
            ),
        }
    }
}

/// The last log index the leader knows `to` holds (from its replication metrics).
pub(crate) fn matched_index(
    m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    to: NodeId,
) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&to).cloned().flatten())
        .map(|l| l.index)
}

async fn forward_transfer(
    State(node): State<Arc<Node>>,
    Json(req): Json<TransferLeader>,
) -> Response {
    Json(node.transfer_leader_local(req.to).await).into_response()
}

/// The leader asks this node to start an election now.
async fn elect(State(node): State<Arc<Node>>, Json(req): Json<ElectRequest>) -> Response {
    let m = node.raft.metrics().borrow().clone();
    let reply: ForwardReply<()> = if !m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == node.id)
    {
        ForwardReply::Failed {
            message: format!("node {} is not a voter", node.id),
        }
    } else {
        tracing::info!(
            from_leader = req.from_leader,
            term = req.term,
            "Starting an election: the leader is handing over."
        );
        // Stand only with every entry the leader had when it asked (its vote checks
        // that): wait briefly for the last ones to arrive.
        let mut short = None;
        if let Some(want) = req.last_log_index {
            let mut metrics = node.raft.metrics();
            let until = Instant::now() + Duration::from_millis(200);
            loop {
                let have = metrics.borrow_and_update().last_log_index;
                if have >= Some(want) {
                    break;
                }
                let now = Instant::now();
                if now >= until {
                    short = Some(have);
                    break;
                }
                let _ = tokio::time::timeout(until - now, metrics.changed()).await;
            }
        }
        if let (Some(have), true) = (short, req.strict) {
            let reply: ForwardReply<()> = ForwardReply::Failed {
                message: format!(
                    "node {} holds entries up to {:?}, not the leader's {:?}",
                    node.id, have, req.last_log_index
                ),
            };
            return Json(reply).into_response();
        }
        match node.raft.trigger().elect().await {
            Ok(()) => ForwardReply::Ok(()),
            Err(e) => ForwardReply::Failed {
                message: e.to_string(),
            },
        }
    };
    Json(reply).into_response()
}
