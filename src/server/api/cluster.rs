//! `/api/v1/cluster`: the Raft group as an operator sees it, and membership changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiJson, IdPath};
use crate::server::cluster::{
    ForwardReply, MemberChange, TransferDone, TransferLeader, PATH_FORWARD_MEMBERS,
    PATH_FORWARD_TRANSFER,
};
use crate::server::Node;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    /// The node that answered.
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    /// Highest log index known committed on the answering node.
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub id: u64,
    /// `leader`, `follower` or `learner`.
    pub role: String,
    pub voter: bool,
    pub cluster_addr: String,
    pub api_addr: Option<String>,
    pub transports: BTreeMap<String, String>,
    /// Highest log index the leader knows this member holds (only when the leader answers).
    pub matched_index: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub id: u64,
    /// The new node's cluster port address, as the other servers reach it.
    pub cluster_addr: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipChanged {
    pub message: String,
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
pub async fn get_cluster(State(node): State<Arc<Node>>) -> Result<Json<ClusterView>, ApiError> {
    let m = node.raft.metrics().borrow().clone();
    let commit_index = node
        .raft
        .with_raft_state(|s| s.committed.map(|c| c.index))
        .await
        .ok()
        .flatten();
    let (cluster_id, addrs) = {
        let s = node.state.read().expect("state lock");
        (s.state.meta.cluster_id.clone(), s.state.nodes.clone())
    };
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, n)| {
            let voter = voters.contains(id);
            let role = if Some(*id) == m.current_leader {
                "leader"
            } else if voter {
                "follower"
            } else {
                "learner"
            };
            let a = addrs.get(id);
            MemberView {
                id: *id,
                role: role.into(),
                voter,
                cluster_addr: n.addr.clone(),
                api_addr: a.map(|a| a.api_addr.clone()),
                transports: a.map(|a| a.transports.clone()).unwrap_or_default(),
                matched_index: crate::server::cluster::matched_index(&m, *id),
            }
        })
        .collect();
    Ok(Json(ClusterView {
        cluster_id,
        node_id: node.id,
        leader_id: if m.state == ServerState::Leader || m.current_leader.is_some() {
            m.current_leader
        } else {
            None
        },
        term: m.current_term,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index),
        last_log_index: m.last_log_index,
        snapshot_index: m.snapshot.map(|l| l.index),
        members,
    }))
}

/// Sends a membership change to the leader (or runs it here when this node leads).
async fn change(node: &Node, change: MemberChange) -> Result<String, ApiError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leader = node.raft.metrics().borrow().current_leader;
        let reply = match leader {
            Some(id) if id == node.id => node.change_members_local(change.clone()).await,
            Some(id) => match node.peer_addr(id) {
                Some(addr) => node
                    .forward_post(
                        &addr,
                        PATH_FORWARD_MEMBERS,
                        &change,
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap_or_else(|e| ForwardReply::Unknown {
                        message: e.to_string(),
                    }),
                None => ForwardReply::NotLeader { leader_id: None },
            },
            None => ForwardReply::NotLeader { leader_id: None },
        };
        match reply {
            ForwardReply::Ok(message) => return Ok(message),
            ForwardReply::Failed { message } => {
                return Err(ApiError::Invalid {
                    field: None,
                    message,
                })
            }
            ForwardReply::Unknown { message } if std::time::Instant::now() >= deadline => {
                return Err(ApiError::OutcomeUnknown(message))
            }
            _ if std::time::Instant::now() >= deadline => {
                return Err(ApiError::Unavailable(
                    "no leader to change the membership; retry later".into(),
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/cluster/members", tag = "cluster", request_body = AddMember,
    responses((status = 200, body = MembershipChanged), (status = 400, body = super::Problem)))]
pub async fn add_member(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<AddMember>,
) -> Result<Json<MembershipChanged>, ApiError> {
    if body.id == 0 {
        return Err(ApiError::invalid("id", "node ids are positive integers"));
    }
    let ok = body
        .cluster_addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(ApiError::invalid(
            "cluster_addr",
            "write HOST:PORT, for example 127.0.0.1:7804",
        ));
    }
    let message = change(
        &node,
        MemberChange::Add {
            id: body.id,
            cluster_addr: body.cluster_addr,
        },
    )
    .await?;
    Ok(Json(MembershipChanged { message }))
}

#[utoipa::path(delete, path = "/api/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path)),
    responses((status = 200, body = MembershipChanged), (status = 400, body = super::Problem)))]
pub async fn remove_member(
    State(node): State<Arc<Node>>,
    IdPath(id): IdPath,
) -> Result<Json<MembershipChanged>, ApiError> {
    let known = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .is_some();
    if !known {
        return Err(ApiError::NotFound(format!("node {id} is not a member")));
    }
    let message = change(&node, MemberChange::Remove { id }).await?;
    let _ = node
        .propose(crate::state::Command::RemoveNode { node_id: id }, None)
        .await;
    Ok(Json(MembershipChanged { message }))
}

/// Hands the leadership to a caught-up voter (before maintenance of the leader). Runs
/// on the leader: here, or forwarded to its cluster port. How it works, and how long
/// it takes, is in `server::cluster` and docs/operations.md.
#[utoipa::path(post, path = "/api/v1/cluster/transfer-leader", tag = "cluster", request_body = TransferLeader,
    responses((status = 200, body = TransferDone), (status = 400, body = super::Problem),
        (status = 409, body = super::Problem), (status = 503, body = super::Problem)))]
pub async fn transfer_leader(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<TransferLeader>,
) -> Result<Json<TransferDone>, ApiError> {
    let to = body.to;
    if to == 0 {
        return Err(ApiError::invalid("to", "node ids are positive integers"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leader = node.raft.metrics().borrow().current_leader;
        let reply = match leader {
            Some(id) if id == node.id => node.transfer_leader_local(to).await,
            Some(id) => match node.peer_addr(id) {
                Some(addr) => node
                    .forward_post(
                        &addr,
                        PATH_FORWARD_TRANSFER,
                        &TransferLeader { to },
                        Duration::from_secs(15),
                    )
                    .await
                    .unwrap_or_else(|e| ForwardReply::Unknown {
                        message: format!("forwarding to leader {id} at {addr}: {e}"),
                    }),
                None => ForwardReply::NotLeader { leader_id: None },
            },
            None => ForwardReply::NotLeader { leader_id: None },
        };
        match reply {
            ForwardReply::Ok(done) => return Ok(Json(done)),
            ForwardReply::Failed { message } => return Err(ApiError::InvalidState(message)),
            ForwardReply::Unknown { message } => return Err(ApiError::Unavailable(message)),
            ForwardReply::NotLeader { .. } if std::time::Instant::now() >= deadline => {
                return Err(ApiError::Unavailable(
                    "no leader to run the transfer; retry later".into(),
                ))
            }
            ForwardReply::NotLeader { .. } => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
