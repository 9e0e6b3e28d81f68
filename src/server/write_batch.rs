//! Write batching on the leader: proposals that arrive while earlier ones are
//! being committed share one log entry ([`Command::Batch`]), so a burst of
//! dispatches and worker reports costs a few Raft rounds instead of one each.
//!
//! A lone write goes out alone, at once: batching only forms under load, while up
//! to [`MAX_IN_FLIGHT`] entries are already on their way. Each proposal in a batch
//! keeps its own request id and gets its own response, exactly as if it had been
//! an entry of its own.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::Node;
use crate::raft::NodeId;
use crate::state::{Command, Outcome, Proposal, Response, COMMAND_VERSION};

/// Most proposals in one entry.
pub const MAX_BATCH: usize = 512;
/// Entries proposed concurrently by the batcher; further writes queue and batch.
pub const MAX_IN_FLIGHT: usize = 4;

/// What one proposal's write came to (short-lived, so the size of `Done` does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum WriteResult {
    Done(Response),
    NotLeader(Option<NodeId>),
    Fatal(String),
}

type Queued = (Proposal, oneshot::Sender<WriteResult>);

/// The queue in front of `raft.client_write`.
pub struct WriteBatcher {
    tx: mpsc::UnboundedSender<Queued>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
}

impl Default for WriteBatcher {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl WriteBatcher {
    /// Queues a proposal (its `now_ms` is stamped when its entry is proposed).
    pub async fn write(&self, proposal: Proposal) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        super::metrics::write_proposal();
        if self.tx.send((proposal, tx)).is_err() {
            return WriteResult::Fatal("the node is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| WriteResult::Fatal("the node is shutting down".into()))
    }
}

/// The batcher task.
pub async fn run(node: Arc<Node>) {
    let Some(mut rx) = node.batcher.rx.lock().expect("batcher lock").take() else {
        return;
    };
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let first = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            q = rx.recv() => match q { Some(q) => q, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            write_batch(&node, batch).await;
            drop(permit);
        });
    }
}

async fn write_batch(node: &Node, batch: Vec<Queued>) {
    let now_ms = super::now_ms();
    if batch.len() == 1 {
        let (mut proposal, reply) = batch.into_iter().next().expect("one");
        proposal.now_ms = now_ms;
        let _ = reply.send(client_write(node, proposal, 1).await);
        return;
    }
    let (proposals, replies): (Vec<Proposal>, Vec<_>) = batch
        .into_iter()
        .map(|(mut p, r)| {
            p.now_ms = now_ms;
            (p, r)
        })
        .unzip();
    let outer = Proposal {
        v: COMMAND_VERSION,
        now_ms,
        request: None,
        cmd: Command::Batch { proposals },
    };
    match client_write(node, outer, replies.len()).await {
        WriteResult::Done(resp) => {
            let Outcome::Batch { responses } = resp.outcome else {
                let e = format!("a batch was answered with {:?}", resp.outcome);
                for r in replies {
                    let _ = r.send(WriteResult::Fatal(e.clone()));
                }
                return;
            };
            for (r, resp) in replies.into_iter().zip(responses) {
                let _ = r.send(WriteResult::Done(resp));
            }
        }
        other => {
            for r in replies {
                let _ = r.send(other.clone());
            }
        }
    }
}

/// Proposes one entry carrying `writes` writes, and records it in the metrics.
async fn client_write(node: &Node, proposal: Proposal, writes: usize) -> WriteResult {
    let started = std::time::Instant::now();
    let result = raft_write(node, proposal).await;
    let label = match &result {
        WriteResult::Done(_) => "ok",
        WriteResult::NotLeader(_) => "not_leader",
        WriteResult::Fatal(_) => "error",
    };
    super::metrics::write_entry(label, writes, started.elapsed());
    result
}

async fn raft_write(node: &Node, proposal: Proposal) -> WriteResult {
    match node.raft.client_write(proposal).await {
        Ok(resp) => WriteResult::Done(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            WriteResult::NotLeader(f.leader_id)
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            WriteResult::Fatal(e.to_string())
        }
        Err(RaftError::Fatal(e)) => WriteResult::Fatal(e.to_string()),
    }
}
