//! The Raft layer: openraft's type configuration, the RocksDB log store and state
//! machine store, and the network that carries Raft RPCs over the cluster port.

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod storage;

use std::io::Cursor;

use crate::state::{Proposal, Response};

openraft::declare_raft_types!(
    /// raftjob's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

// Keep the unused-import lint quiet for the default `Cursor` type we replaced.
#[allow(dead_code)]
type _Unused = Cursor<Vec<u8>>;

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;

/// Error aliases used at the boundaries (one place, as openraft's examples do).
pub mod typ {
    use openraft::BasicNode;

    use super::NodeId;

    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    pub type RPCError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, BasicNode, RaftError<E>>;
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, BasicNode>;
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, BasicNode>;
    pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, BasicNode>;
    pub type InitializeError = openraft::error::InitializeError<NodeId, BasicNode>;
    pub type ChangeMembershipError = openraft::error::ChangeMembershipError<NodeId>;
    pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
    pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<super::TypeConfig>;
}

#[cfg(test)]
mod tests;
