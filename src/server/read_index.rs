//! Linearizable reads by ReadIndex (never by leader lease).
//!
//! A read on the leader joins the next confirmation round: one task drains every
//! waiting read, runs one `ensure_linearizable` (a heartbeat round to a quorum) and
//! answers them all, so concurrent reads share one round. A round always starts after
//! the reads it answers arrived, which is what makes them linearizable. A follower
//! asks the leader for the read index over the cluster port, then waits until its own
//! state machine has applied that index and reads locally.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::cluster::{ForwardReply, PATH_FORWARD_READ_INDEX};
use super::Node;
use crate::raft::{LogId, NodeId};

pub const READ_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no leader could confirm the read within {0:?}; retry, or ask for a stale read with ?consistency=stale")]
    NoLeader(Duration),
    #[error("this node's Raft stopped: {0}")]
    Fatal(String),
}

type Waiter = oneshot::Sender<ForwardReply<Option<LogId>>>;

pub struct ReadIndexBatcher {
    tx: mpsc::UnboundedSender<Waiter>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Waiter>>>,
}

impl ReadIndexBatcher {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Default for ReadIndexBatcher {
    fn default() -> Self {
        Self::new()
    }
}

/// The batching loop; runs for the node's lifetime.
pub async fn run(node: Arc<Node>) {
    let Some(mut rx) = node.reads.rx.lock().await.take() else {
        return;
    };
    loop {
        let first = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            w = rx.recv() => match w { Some(w) => w, None => return },
        };
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let confirmed = tokio::time::timeout(READ_DEADLINE, node.raft.ensure_linearizable()).await;
        let Ok(confirmed) = confirmed else {
            super::metrics::read_index_round("timeout", waiters.len());
            for w in waiters {
                let _ = w.send(ForwardReply::Unknown {
                    message: "read index round timed out".into(),
                });
            }
            continue;
        };
        let result = match &confirmed {
            Ok(_) => "ok",
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => "not_leader",
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => "no_quorum",
            Err(RaftError::Fatal(_)) => "error",
        };
        super::metrics::read_index_round(result, waiters.len());
        let reply = match confirmed {
            Ok(log_id) => ForwardReply::Ok(log_id),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                ForwardReply::NotLeader {
                    leader_id: f.leader_id,
                }
            }
            // A leader that cannot reach a quorum must not name itself as leader.
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                ForwardReply::NotLeader { leader_id: None }
            }
            Err(RaftError::Fatal(e)) => ForwardReply::Failed {
                message: e.to_string(),
            },
        };
        for w in waiters {
            let _ = w.send(reply.clone());
        }
    }
}

impl Node {
    /// The leader's read index, confirmed by a quorum round shared with other reads.
    pub(crate) async fn leader_read_index(&self) -> ForwardReply<Option<LogId>> {
        let (tx, rx) = oneshot::channel();
        if self.reads.tx.send(tx).is_err() {
            return ForwardReply::Failed {
                message: "node is shutting down".into(),
            };
        }
        match tokio::time::timeout(READ_DEADLINE, rx).await {
            Ok(reply) => reply.unwrap_or(ForwardReply::Failed {
                message: "node is shutting down".into(),
            }),
            Err(_) => ForwardReply::Unknown {
                message: "read index round timed out".into(),
            },
        }
    }

    /// Returns once this node's state machine reflects every write acknowledged before
    /// the call: afterwards a local read is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ReadError> {
        let deadline = Instant::now() + READ_DEADLINE;
        let mut metrics = self.raft.server_metrics();
        let mut backoff = Duration::from_millis(20);
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            let reply = match leader {
                Some(id) if id == self.id => self.leader_read_index().await,
                Some(id) => self.remote_read_index(id).await,
                None => ForwardReply::NotLeader { leader_id: None },
            };
            match reply {
                ForwardReply::Ok(log_id) => {
                    let Some(index) = log_id.map(|l| l.index) else {
                        return Ok(());
                    };
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return match self
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(index), "read index")
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(_) => Err(ReadError::NoLeader(READ_DEADLINE)),
                    };
                }
                ForwardReply::Failed { message } if leader == Some(self.id) => {
                    return Err(ReadError::Fatal(message))
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::NoLeader(READ_DEADLINE));
            }
            let _ = tokio::time::timeout(backoff.min(deadline - now), metrics.changed()).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    async fn remote_read_index(&self, leader: NodeId) -> ForwardReply<Option<LogId>> {
        let Some(addr) = self.peer_addr(leader) else {
            return ForwardReply::NotLeader { leader_id: None };
        };
        match self
            .forward_post(&addr, PATH_FORWARD_READ_INDEX, &(), Duration::from_secs(3))
            .await
        {
            Ok(reply) => reply,
            Err(e) => ForwardReply::Unknown {
                message: e.to_string(),
            },
        }
    }
}
