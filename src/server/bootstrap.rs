//! Cluster formation and a node's own bookkeeping.
//!
//! Bootstrap happens once per cluster, from `initial_members`: a node that is not
//! initialised asks its peers (over the cluster port) whether any of them already
//! belongs to a cluster. If one does, this node never initialises (a re-run or wiped
//! node waits to be contacted by the leader). Otherwise the lowest-id reachable node
//! initialises, once a majority is reachable, with the identical member map every node
//! has, so even a race between two initialisers forms one cluster. The first leader
//! then records a fresh cluster id; every node publishes its own addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;

use super::cluster::{ForwardReply, Probe, PATH_PROBE};
use super::Node;
use crate::raft::network::SECRET_HEADER;
use crate::state::{Command, RequestMeta};

pub async fn run(node: Arc<Node>) {
    if let Err(e) = form_cluster(&node).await {
        tracing::error!(error = %e, "Cluster formation stopped.");
    }
    maintain(&node).await;
}

async fn probe(node: &Node, addr: &str) -> Option<Probe> {
    let resp = node
        .forward
        .get(super::tls::cluster_url(&node.config, addr, PATH_PROBE))
        .header(SECRET_HEADER, &node.config.cluster_secret)
        .timeout(Duration::from_millis(800))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        tracing::warn!(%addr, status = %resp.status(), "Peer refused the bootstrap probe (is the cluster secret the same on every node?).");
        return None;
    }
    resp.json().await.ok()
}

async fn form_cluster(node: &Node) -> Result<(), openraft::error::Fatal<u64>> {
    if node.raft.is_initialized().await? {
        tracing::info!(
            node_id = node.id,
            "Node already belongs to a cluster; not bootstrapping."
        );
        return Ok(());
    }
    let members = &node.config.initial_members;
    let quorum = members.len() / 2 + 1;
    let mut announced = false;
    loop {
        if node.shutdown.is_cancelled() || node.raft.is_initialized().await? {
            return Ok(());
        }
        let mut reachable: BTreeSet<u64> = BTreeSet::from([node.id]);
        let mut existing = None;
        for (&id, addr) in members.iter().filter(|(id, _)| **id != node.id) {
            if let Some(p) = probe(node, &node.config.dial_addr(id, addr)).await {
                if p.node_id != id {
                    tracing::error!(expected = id, actual = p.node_id, %addr, "initial_members lists the wrong address for a node.");
                    continue;
                }
                if p.initialized {
                    existing = Some(p);
                    break;
                }
                reachable.insert(id);
            }
        }
        if let Some(p) = existing {
            tracing::info!(peer = p.node_id, cluster_id = ?p.cluster_id, "A peer already belongs to a cluster; waiting for its leader to contact this node.");
            return Ok(());
        }
        if reachable.len() >= quorum && reachable.first() == Some(&node.id) {
            let map: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match node.raft.initialize(map).await {
                Ok(()) => {
                    tracing::info!(node_id = node.id, members = ?members, "Bootstrapped a new cluster from initial_members.")
                }
                Err(e) => tracing::info!(error = %e, "Initialisation not needed."),
            }
            return Ok(());
        }
        if !announced {
            tracing::info!(reachable = ?reachable, needed = quorum, "Waiting for peers before bootstrapping.");
            announced = true;
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// Keeps the node's published addresses current and makes the first leader record the
/// cluster id. Wakes on every Raft metrics change.
async fn maintain(node: &Node) {
    let mut metrics = node.raft.server_metrics();
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        // Until this node's addresses are published, workers that know only another
        // server cannot fail over to it: retry soon, not at the next 5 s round.
        let mut retry = Duration::from_secs(5);
        if leader.is_some() {
            if let Err(e) = publish_once(node).await {
                tracing::debug!(error = %e, "Bookkeeping write did not go through yet.");
                retry = Duration::from_millis(200);
            }
        } else {
            retry = Duration::from_millis(200);
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

async fn publish_once(node: &Node) -> Result<(), super::propose::ProposeError> {
    let (mine, cluster_id) = {
        let s = node.state.read().expect("state lock");
        (
            s.state.nodes.get(&node.id).cloned(),
            s.state.meta.cluster_id.clone(),
        )
    };
    let leader = node.raft.metrics().borrow().current_leader;
    if cluster_id.is_none() && leader == Some(node.id) {
        let cluster_id = uuid::Uuid::new_v4().to_string();
        node.propose(
            Command::Bootstrap {
                cluster_id: cluster_id.clone(),
            },
            None,
        )
        .await?;
        tracing::info!(%cluster_id, "Recorded the cluster id.");
    }
    if leader == Some(node.id) {
        provision_apps(node).await?;
    }
    let transports: BTreeMap<String, String> = node
        .bound
        .transports
        .iter()
        .map(|(p, a)| {
            let addr = node.config.advertise_transport.get(p).cloned();
            (
                p.clone(),
                addr.unwrap_or_else(|| advertise(&node.config.advertise_api_addr, *a)),
            )
        })
        .collect();
    let wanted = crate::state::NodeAddrs {
        api_addr: node.config.advertise_api_addr.clone(),
        cluster_addr: node.config.advertise_cluster_addr.clone(),
        transports,
    };
    if mine.as_ref() != Some(&wanted) {
        let cmd = Command::SetNodeAddrs {
            node_id: node.id,
            api_addr: wanted.api_addr.clone(),
            cluster_addr: wanted.cluster_addr.clone(),
            transports: wanted.transports.clone(),
        };
        let body_hash = crate::server::api::hash_body("node-addrs", &cmd);
        let request = RequestMeta {
            id: format!("node/{}/addrs/{}", node.id, body_hash),
            body_hash,
            token_id: None,
        };
        node.propose(cmd, Some(request)).await?;
        tracing::info!(node_id = node.id, "Published this node's addresses.");
    }
    Ok(())
}

/// Creates the configured `bootstrap_apps` that do not exist yet, with the operator's
/// worker tokens (only their hashes enter the log). Leader only, after the cluster id is
/// recorded. The request id is derived from the app name, so a retried or repeated
/// proposal (from this or a later leader) creates the app at most once.
async fn provision_apps(node: &Node) -> Result<(), super::propose::ProposeError> {
    let missing: Vec<_> = {
        let s = node.state.read().expect("state lock");
        if s.state.meta.cluster_id.is_none() {
            return Ok(());
        }
        node.config
            .bootstrap_apps
            .iter()
            .filter(|a| s.state.app_by_name(&a.name).is_none())
            .cloned()
            .collect()
    };
    for app in missing {
        let cmd = Command::CreateApp {
            name: app.name.clone(),
            worker_token_hash: crate::server::api::hash_token(&app.worker_token),
        };
        let body_hash = crate::server::api::hash_body("bootstrap-app", &app.name);
        let request = RequestMeta {
            id: format!("bootstrap-app/{}", app.name),
            body_hash,
            token_id: None,
        };
        let resp = node.propose(cmd, Some(request)).await?;
        match resp.outcome {
            crate::state::Outcome::App { app: created } if !resp.replayed => {
                tracing::info!(app = %created.name, id = created.id, "Created a bootstrap app with its configured worker token.")
            }
            crate::state::Outcome::App { .. } => {}
            other => {
                tracing::warn!(app = %app.name, outcome = ?other, "Bootstrap app not created.")
            }
        }
    }
    Ok(())
}

/// A transport address as others should dial it: the bound port on the advertised
/// API host when the listener is bound to a wildcard address.
fn advertise(api_advertise: &str, bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        let host = api_advertise
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(api_advertise);
        format!("{host}:{}", bound.port())
    } else {
        bound.to_string()
    }
}

impl Node {
    /// Adds (as learner, then voter) or removes a member; only on the leader.
    pub(crate) async fn change_members_local(
        &self,
        change: super::cluster::MemberChange,
    ) -> ForwardReply<String> {
        use openraft::error::{ClientWriteError, RaftError};
        use openraft::ChangeMembers;

        use super::cluster::MemberChange;
        let result = match change {
            MemberChange::Add { id, cluster_addr } => {
                match self
                    .raft
                    .add_learner(id, BasicNode { addr: cluster_addr }, true)
                    .await
                {
                    Ok(_) => {
                        self.raft
                            .change_membership(
                                ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                                false,
                            )
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            MemberChange::Remove { id } => {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
            }
        };
        match result {
            Ok(r) => ForwardReply::Ok(format!(
                "membership changed at log index {}",
                r.log_id.index
            )),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                ForwardReply::NotLeader {
                    leader_id: f.leader_id,
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                ForwardReply::Failed {
                    message: e.to_string(),
                }
            }
            Err(RaftError::Fatal(e)) => ForwardReply::Failed {
                message: e.to_string(),
            },
        }
    }
}
