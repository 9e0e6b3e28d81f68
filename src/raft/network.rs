//! Raft RPC over the cluster port: reqwest on the sending side, the cluster
//! listener ([`crate::server::cluster`]) on the receiving side.
//!
//! Every request carries the cluster secret and the id of the node it is meant for;
//! a node refuses requests for another id, so a wrong address in the membership can
//! never make a leader replicate to itself. A peer that cannot be reached is
//! reported as `Unreachable`, which makes openraft back off instead of flooding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{NodeId, SnapshotMeta, TypeConfig, Vote};

/// Header carrying the shared cluster secret on every cluster-port request.
pub const SECRET_HEADER: &str = "x-raftjob-cluster-secret";
/// Header naming the node a Raft RPC is addressed to.
pub const TARGET_HEADER: &str = "x-raftjob-target-node";

pub const PATH_APPEND: &str = "/cluster/v1/raft/append";
pub const PATH_VOTE: &str = "/cluster/v1/raft/vote";
pub const PATH_SNAPSHOT: &str = "/cluster/v1/raft/snapshot";

/// A snapshot chunk on the wire: the data as base64 rather than a JSON number array.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data_b64: String,
    pub done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> Self {
        Self {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data_b64: base64::engine::general_purpose::STANDARD.encode(&r.data),
            done: r.done,
        }
    }
}

impl SnapshotChunk {
    pub fn into_request(self) -> Result<InstallSnapshotRequest<TypeConfig>, base64::DecodeError> {
        Ok(InstallSnapshotRequest {
            vote: self.vote,
            meta: self.meta,
            offset: self.offset,
            data: base64::engine::general_purpose::STANDARD.decode(self.data_b64)?,
            done: self.done,
        })
    }
}

/// Builds per-peer clients over one shared connection pool.
#[derive(Clone)]
pub struct Network {
    http: crate::tls::HttpClient,
    /// `https` under cluster TLS ([`Network::with_tls`]), else `http`.
    scheme: &'static str,
    secret: Arc<str>,
    /// `peer_dial` overrides: node id -> address dialled instead of the membership's.
    dial: Arc<BTreeMap<NodeId, String>>,
}

impl Network {
    pub fn new(secret: &str) -> Self {
        Self::with_peer_dial(secret, BTreeMap::new())
    }

    /// A network that dials the nodes in `dial` at those addresses instead of the
    /// cluster addresses in the membership (which stays as it is).
    pub fn with_peer_dial(secret: &str, dial: BTreeMap<NodeId, String>) -> Self {
        Self {
            http: Self::client(crate::tls::default_http_builder()),
            scheme: "http",
            secret: secret.into(),
            dial: Arc::new(dial),
        }
    }

    /// Cluster TLS: dial peers over https, trusting the cluster CA and presenting this
    /// node's certificate (`tls` from [`crate::server::tls::load`]); `None` keeps http.
    pub fn with_tls(mut self, tls: Option<tokio_rustls::rustls::ClientConfig>) -> Self {
        if let Some(tls) = tls {
            self.http = Self::client(crate::tls::http_builder(tls));
            self.scheme = "https";
        }
        self
    }

    fn client(builder: reqwest_tls::ClientBuilder) -> crate::tls::HttpClient {
        builder
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client builds")
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            http: self.http.clone(),
            scheme: self.scheme,
            secret: self.secret.clone(),
            target,
            addr: self.dial.get(&target).unwrap_or(&node.addr).clone(),
        }
    }
}

pub struct PeerClient {
    http: crate::tls::HttpClient,
    scheme: &'static str,
    secret: Arc<str>,
    target: NodeId,
    addr: String,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}://{}{}", self.scheme, self.addr, path);
        let resp = self
            .http
            .post(url)
            .header(SECRET_HEADER, &*self.secret)
            .header(TARGET_HEADER, self.target.to_string())
            .timeout(option.hard_ttl())
            .json(req)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            // A refused secret or a node that is not who the membership says it is:
            // nothing to retry quickly, so back off as for an unreachable peer.
            let body = resp.text().await.unwrap_or_default();
            let err = std::io::Error::other(format!(
                "peer {} at {} answered {status}: {body}",
                self.target, self.addr
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&err)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(PATH_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(PATH_SNAPSHOT, &SnapshotChunk::from(rpc), &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(PATH_VOTE, &rpc, &option).await
    }
}
