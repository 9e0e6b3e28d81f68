//! Worker transport listeners: one per enabled protocol, over one message model
//! ([`crate::protocol`]). Workers use only these ports: discovery ("who leads, and at
//! which address for my protocol?"), registration, heartbeats and reports. The
//! handling of each message is shared; [`http`] and [`ws`] only carry it.

mod handler;
mod http;
mod ws;

pub use handler::worker_credential;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::server::Node;

pub const PATH_DISCOVERY: &str = "/transport/v1/discovery";

/// The discovery answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub cluster_id: Option<String>,
    pub server_version: String,
    /// The protocol this port speaks.
    pub protocol: String,
    /// Protocols the cluster offers (from this node's config).
    pub protocols: Vec<String>,
    pub leader_id: Option<u64>,
    pub term: u64,
    /// The leader's transport address for each protocol, when known.
    pub leader_transports: BTreeMap<String, String>,
    /// Every server's transport address for this port's protocol, so a worker given
    /// one address can still find the cluster when that server is down.
    #[serde(default)]
    pub servers: Vec<String>,
}

#[derive(Clone)]
pub(crate) struct TransportState {
    node: Arc<Node>,
    protocol: String,
}

pub fn router(node: Arc<Node>, protocol: &str) -> Router {
    let state = TransportState {
        node,
        protocol: protocol.to_string(),
    };
    let router = Router::new().route(PATH_DISCOVERY, get(discovery));
    let router = match protocol {
        "ws" => ws::routes(router),
        _ => http::routes(router),
    };
    router
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(state)
}

async fn discovery(State(t): State<TransportState>) -> Json<Discovery> {
    let m = t.node.raft.metrics().borrow().clone();
    let (cluster_id, leader_transports, servers) = {
        let s = t.node.state.read().expect("state lock");
        let lt = m
            .current_leader
            .and_then(|l| s.state.nodes.get(&l))
            .map(|a| a.transports.clone())
            .unwrap_or_default();
        (
            s.state.meta.cluster_id.clone(),
            lt,
            s.state
                .nodes
                .values()
                .filter_map(|n| n.transports.get(&t.protocol).cloned())
                .collect(),
        )
    };
    Json(Discovery {
        cluster_id,
        server_version: crate::server::VERSION.into(),
        protocol: t.protocol.clone(),
        protocols: t.node.config.transports.keys().cloned().collect(),
        leader_id: m.current_leader,
        term: m.current_term,
        leader_transports,
        servers,
    })
}
