//! The write path: any node accepts a write, proposes it locally when it leads or
//! forwards it to the leader's cluster port otherwise, and retries (with the same
//! request id, so a retry never has a second effect) until a deadline.

use std::time::{Duration, Instant};

use super::cluster::{ForwardReply, PATH_FORWARD_WRITE};
use super::write_batch::WriteResult;
use super::{now_ms, Node};
use crate::raft::network::SECRET_HEADER;
use crate::raft::NodeId;
use crate::state::{Command, Proposal, RequestMeta, Response, COMMAND_VERSION};

/// How long a write is retried across elections before the caller hears back.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Definitely not applied: no leader could be reached before the deadline.
    #[error("no leader could be reached within {0:?}; the write was not applied, retry later")]
    NoLeader(Duration),
    /// It may or may not have been applied; resending with the same key is safe.
    #[error(
        "the write may or may not have been applied ({0}); resend it with the same Idempotency-Key"
    )]
    OutcomeUnknown(String),
    #[error("this node's Raft stopped: {0}")]
    Fatal(String),
}

/// One try's result (short-lived, so the size of `Done` does not matter).
#[allow(clippy::large_enum_variant)]
enum Try {
    Done(Response),
    /// Definitely not applied; the hint names the leader if known.
    NotLeader(Option<NodeId>),
    /// Sent, but no answer came back.
    Unknown(String),
    Fatal(String),
}

impl Node {
    /// Proposes `cmd` and waits for it to be applied, retrying across leader changes.
    pub async fn propose(
        &self,
        cmd: Command,
        request: Option<RequestMeta>,
    ) -> Result<Response, ProposeError> {
        self.propose_until(cmd, request, Instant::now() + WRITE_DEADLINE)
            .await
    }

    pub async fn propose_until(
        &self,
        cmd: Command,
        request: Option<RequestMeta>,
        deadline: Instant,
    ) -> Result<Response, ProposeError> {
        let mut unknown: Option<String> = None;
        let mut backoff = Duration::from_millis(20);
        let mut metrics = self.raft.server_metrics();
        loop {
            let proposal = Proposal {
                v: COMMAND_VERSION,
                now_ms: now_ms(),
                request: request.clone(),
                cmd: cmd.clone(),
            };
            let leader = metrics.borrow_and_update().current_leader;
            let outcome = match leader {
                Some(id) if id == self.id => self.propose_local(proposal).await,
                Some(id) => self.forward_write(id, &proposal).await,
                None => Try::NotLeader(None),
            };
            match outcome {
                Try::Done(resp) => return Ok(resp),
                Try::Fatal(e) => return Err(ProposeError::Fatal(e)),
                Try::Unknown(e) => {
                    tracing::debug!(error = %e, "Write outcome unknown; retrying with the same request id.");
                    unknown = Some(e);
                }
                Try::NotLeader(hint) => {
                    tracing::debug!(?hint, "No leader for the write yet; retrying.")
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match unknown {
                    Some(e) => ProposeError::OutcomeUnknown(e),
                    None => ProposeError::NoLeader(WRITE_DEADLINE),
                });
            }
            // Wake on a leadership change or after the backoff, whichever is first.
            let wait = backoff.min(deadline - now);
            let _ = tokio::time::timeout(wait, metrics.changed()).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    /// Proposes on this node only if it is the leader; never forwards. For the
    /// leader's own background work (the scheduler), which must not outlive its term.
    pub async fn propose_as_leader(&self, cmd: Command) -> Result<Response, ProposeError> {
        let proposal = Proposal {
            v: COMMAND_VERSION,
            now_ms: now_ms(),
            request: None,
            cmd,
        };
        match self.propose_local(proposal).await {
            Try::Done(resp) => Ok(resp),
            Try::NotLeader(_) => Err(ProposeError::NoLeader(Duration::ZERO)),
            Try::Unknown(e) => Err(ProposeError::OutcomeUnknown(e)),
            Try::Fatal(e) => Err(ProposeError::Fatal(e)),
        }
    }

    /// Proposes on this node (the leader) and waits for apply.
    pub(crate) async fn propose_local_reply(&self, proposal: Proposal) -> ForwardReply<Response> {
        match self.propose_local(proposal).await {
            Try::Done(r) => ForwardReply::Ok(r),
            Try::NotLeader(leader_id) => ForwardReply::NotLeader { leader_id },
            Try::Unknown(message) => ForwardReply::Unknown { message },
            Try::Fatal(message) => ForwardReply::Failed { message },
        }
    }

    async fn propose_local(&self, proposal: Proposal) -> Try {
        // Time enters the log only from the leader's clock: the batcher stamps it.
        match self.batcher.write(proposal).await {
            WriteResult::Done(resp) => Try::Done(resp),
            WriteResult::NotLeader(leader) => Try::NotLeader(leader),
            WriteResult::Fatal(e) => Try::Fatal(e),
        }
    }

    /// The address to dial for `id`'s cluster port: its `peer_dial` override, else
    /// its cluster address in the current membership.
    pub fn peer_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&id)
            .map(|n| self.config.dial_addr(id, &n.addr))
    }

    async fn forward_write(&self, leader: NodeId, proposal: &Proposal) -> Try {
        let Some(addr) = self.peer_addr(leader) else {
            return Try::NotLeader(None);
        };
        match self
            .forward_post::<_, Response>(
                &addr,
                PATH_FORWARD_WRITE,
                proposal,
                Duration::from_secs(5),
            )
            .await
        {
            Ok(ForwardReply::Ok(resp)) => Try::Done(resp),
            Ok(ForwardReply::NotLeader { leader_id }) => Try::NotLeader(leader_id),
            Ok(ForwardReply::Unknown { message }) => Try::Unknown(message),
            Ok(ForwardReply::Failed { message }) => {
                Try::Unknown(format!("leader {leader} failed: {message}"))
            }
            Err(e) if e.is_connect() => Try::NotLeader(None),
            Err(e) => Try::Unknown(format!("forwarding to leader {leader} at {addr}: {e}")),
        }
    }

    /// POSTs a JSON body to a peer's cluster port with the cluster secret.
    pub async fn forward_post<Req: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<ForwardReply<T>, crate::tls::HttpError> {
        self.forward
            .post(super::tls::cluster_url(&self.config, addr, path))
            .header(SECRET_HEADER, &self.config.cluster_secret)
            .timeout(timeout)
            .json(body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}
