//! Commands: the only way replicated state changes. The leader (or the node that
//! received a user's write) builds a [`Proposal`]; Raft replicates it; every node's
//! state machine applies it with [`crate::state::apply`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{
    ApiToken, App, Attempt, FencingToken, Instance, InstanceId, Job, JobId, JobSpec, LogLine,
    Millis, NodeId, Role, SkipKind, TokenId, WorkerReg,
};

/// The version of the command set this build writes and understands. A node that
/// meets a higher version stops instead of applying it wrongly.
///
/// 2: scoped API tokens (`CreateToken`, `RevokeToken`), app worker-token rotation
/// (`RotateAppToken`, `RetireAppToken`) and the acting token in [`RequestMeta`].
///
/// 3: the operator's processor policy (`SetPolicy`).
pub const COMMAND_VERSION: u32 = 3;

/// One Raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Command-set version ([`COMMAND_VERSION`] of the proposing build).
    pub v: u32,
    /// The proposer's wall clock. Apply keeps `now = max(now, state.now)`, so time
    /// never runs backwards across leaders; it is the only time apply ever sees.
    pub now_ms: Millis,
    /// Present for user writes: the request id and a hash of the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestMeta>,
    /// Decoded leniently: a command this build cannot decode (a newer variant or
    /// field) becomes [`Command::Unknown`], which stops the node with an upgrade
    /// message instead of failing to read the log.
    #[serde(deserialize_with = "lenient_command")]
    pub cmd: Command,
}

impl Proposal {
    /// Whether this build can apply the proposal (and, for a batch, every part).
    pub fn supported(&self) -> bool {
        self.v <= COMMAND_VERSION
            && match &self.cmd {
                Command::Unknown => false,
                Command::Batch { proposals } => proposals.iter().all(Proposal::supported),
                _ => true,
            }
    }
}

fn lenient_command<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Command, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or(Command::Unknown))
}

/// Identifies a write for deduplication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// `<scope>/<Idempotency-Key>` for a caller's key, or `node/<uuid>` when the
    /// receiving node generated it.
    pub id: String,
    /// SHA-256 of method, path and body: the same key with another body is refused.
    pub body_hash: String,
    /// The scoped API token that made the request; none for the admin token. Apply
    /// limits the command to the token's app and records it in the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<TokenId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Sets the cluster id once; later ones are no-ops. Proposed by the first leader.
    Bootstrap {
        cluster_id: String,
    },
    /// A node publishes its own addresses.
    SetNodeAddrs {
        node_id: NodeId,
        api_addr: String,
        cluster_addr: String,
        transports: BTreeMap<String, String>,
    },
    /// Forget a removed node's addresses.
    RemoveNode {
        node_id: NodeId,
    },
    CreateApp {
        name: String,
        worker_token_hash: String,
    },
    CreateJob {
        spec: JobSpec,
    },
    UpdateJob {
        id: JobId,
        spec: JobSpec,
    },
    DeleteJob {
        id: JobId,
    },
    SetJobEnabled {
        id: JobId,
        enabled: bool,
    },
    /// Advances the replicated clock (and expires request ids).
    Tick,
    /// The leader's scheduler fires every job due at one instant, in one entry.
    /// Apply accepts a fire time only if it is after the job's fire cursor, so a
    /// time can never fire twice, whichever leader proposes it.
    Fire {
        items: Vec<FireItem>,
    },
    /// Removes finished instances (with their log tails) and skip records older
    /// than `max_age_ms`, and finished instances beyond the newest `max_per_job`
    /// of each job. Proposed periodically by the leader with its configuration.
    Prune {
        max_age_ms: Millis,
        max_per_job: u32,
    },
    /// A worker registered (or re-registered) with the cluster.
    RegisterWorker {
        worker: WorkerReg,
    },
    /// Removes a worker's registration: the worker shut down cleanly and said so, or
    /// the leader found it lost for longer than `workers.forget_after_ms`. Refused
    /// while an attempt dispatched to the worker is still open (its lease settles it).
    DeregisterWorker {
        id: String,
    },
    /// Run a job now (or after `delay_ms`): a manual instance outside the fire cursor.
    RunJob {
        job_id: JobId,
        #[serde(default)]
        params: serde_json::Value,
        #[serde(default)]
        delay_ms: u64,
    },
    /// The leader hands an instance to workers (one for standalone, each for broadcast).
    /// Apply stamps every new attempt with the fencing token (term, index) of this entry.
    Dispatch {
        instance_id: InstanceId,
        workers: Vec<String>,
    },
    /// A worker's report about an attempt it holds.
    Report {
        instance_id: InstanceId,
        attempt: u32,
        token: FencingToken,
        event: AttemptEvent,
    },
    /// The leader declares an attempt lost: its lease expired (the worker died or was
    /// cut off mid-run). Counts as a failed attempt.
    AttemptLost {
        instance_id: InstanceId,
        attempt: u32,
        reason: String,
    },
    /// The dispatch of an attempt definitely did not reach its worker: the worker
    /// refused it (at its concurrency limit, …), the connection was refused, or the
    /// worker had no WebSocket to the leader. The attempt ends `failed` (marked
    /// `dispatch_refused`), does not count against `retries`, and the instance goes
    /// back to `waiting_dispatch`.
    DispatchRefused {
        instance_id: InstanceId,
        attempt: u32,
        reason: String,
    },
    StopInstance {
        id: InstanceId,
    },
    CancelInstance {
        id: InstanceId,
    },
    /// A new instance linked to a finished one.
    RetryInstance {
        id: InstanceId,
    },
    /// Fail an instance that could not be dispatched (no worker available, job deleted).
    FailInstance {
        id: InstanceId,
        reason: String,
    },
    /// Several proposals committed as one entry (the leader's write batching). Each
    /// is applied as if it were an entry of its own, with its own request id and
    /// response; a batch never nests.
    Batch {
        proposals: Vec<Proposal>,
    },
    /// A scoped API token (admin only). Only the hash of its secret is replicated.
    CreateToken {
        name: String,
        /// The app, by name.
        app: String,
        role: Role,
        token_hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<Millis>,
    },
    /// Revokes a scoped API token (admin only); revoking twice is a no-op.
    RevokeToken {
        id: TokenId,
    },
    /// Starts a worker-token rotation: `worker_token_hash` becomes the app's token and
    /// the current one stays valid (as the previous token) until `RetireAppToken`.
    RotateAppToken {
        app: String,
        worker_token_hash: String,
    },
    /// Ends a rotation: the previous worker token is no longer accepted.
    RetireAppToken {
        app: String,
    },
    /// Sets the processor policy of the cluster, or of one app (admin only).
    SetPolicy {
        /// The app, by name; none for the cluster's policy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<String>,
        policy: super::ProcessorPolicy,
    },
    /// A command this build does not know (from a newer version).
    #[serde(other)]
    Unknown,
}

/// One job's share of a [`Command::Fire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireItem {
    pub job_id: JobId,
    /// The job version the scheduler computed from; an item for an older version
    /// (the job changed meanwhile) is ignored and the scheduler recomputes.
    pub job_version: u64,
    /// Fire times to run, oldest first (several only for a `fire_all` catch-up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<Millis>,
    /// Fire times to record as skipped (misfires).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<Millis>,
    /// Why `skip` (and `skip_through_ms`) are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_kind: Option<SkipKind>,
    /// Also skip every fire time after those listed, up to and including this
    /// instant: set when more times were missed than the scheduler enumerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_through_ms: Option<Millis>,
    /// Workers the leader chose for the (single) run: the instance is created
    /// already dispatched, stamped with this entry's fencing token, which saves a
    /// Raft round per fire. Empty: the dispatcher picks workers afterwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispatch_to: Vec<String>,
}

impl FireItem {
    /// An item for one job version that runs and skips nothing yet.
    pub fn new(job_id: JobId, job_version: u64) -> Self {
        Self {
            job_id,
            job_version,
            run: Vec::new(),
            skip: Vec::new(),
            skip_kind: None,
            skip_through_ms: None,
            dispatch_to: Vec::new(),
        }
    }
}

/// An instance a `Fire` created already dispatched, with its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredDispatch {
    pub instance_id: InstanceId,
    pub attempts: Vec<Attempt>,
}

/// What apply answers; returned to the proposer and recorded for request ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// True when this is the recorded answer to an earlier request with the same id.
    #[serde(default)]
    pub replayed: bool,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // built once per apply and moved, never stored in bulk
pub enum Outcome {
    /// Nothing to report (blank and membership entries, housekeeping).
    None,
    App {
        app: App,
    },
    Job {
        job: Job,
    },
    Deleted {
        id: u64,
    },
    InstanceCreated {
        id: InstanceId,
    },
    Instance {
        instance: Instance,
    },
    Worker {
        worker: WorkerReg,
    },
    /// The attempts a `Dispatch` created.
    Dispatched {
        attempts: Vec<Attempt>,
    },
    /// What a `Fire` did: the instances it created and how many times it skipped.
    Fired {
        created: Vec<InstanceId>,
        skipped: usize,
        /// The created instances that were dispatched in the same entry.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dispatched: Vec<FiredDispatch>,
    },
    /// One response per proposal of a `Batch`, in order.
    Batch {
        responses: Vec<Response>,
    },
    /// What a `Prune` removed.
    Pruned {
        instances: usize,
    },
    Token {
        token: ApiToken,
    },
    /// A policy as set.
    Policy {
        policy: super::ProcessorPolicy,
    },
    /// Whether a report was for a current attempt.
    ReportAccepted {
        accepted: bool,
    },
    Rejected {
        error: StateError,
    },
}

/// What a worker reports about an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptEvent {
    /// The dispatch was accepted and the processor started.
    Running,
    /// New log lines.
    Log { lines: Vec<LogLine> },
    /// The attempt ended; `stopped` when it ended because of a stop request.
    Finished {
        success: bool,
        result: String,
        #[serde(default)]
        stopped: bool,
    },
}

impl Response {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            replayed: false,
            outcome,
        }
    }
}

/// Business rejections: deterministic, returned inside the response (never a storage
/// error, which would stop the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateError {
    #[error("{entity} {key} not found")]
    NotFound { entity: String, key: String },
    #[error("{entity} {key} already exists")]
    AlreadyExists { entity: String, key: String },
    #[error("the Idempotency-Key was already used for a different request")]
    IdempotencyConflict,
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The request conflicts with the entity's current state (e.g. cancel a running instance).
    #[error("{message}")]
    Conflict { message: String },
    /// The caller's token may not do this (revoked or expired meanwhile, or out of scope).
    #[error("{message}")]
    Forbidden { message: String },
    /// The operator's processor policy refuses this (shell disabled, HTTP destination
    /// denied).
    #[error("{field}: {message}")]
    PolicyDenied { field: String, message: String },
}

impl StateError {
    pub fn not_found(entity: &str, key: impl ToString) -> Self {
        Self::NotFound {
            entity: entity.into(),
            key: key.to_string(),
        }
    }
}

impl Outcome {
    pub fn rejected(error: StateError) -> Self {
        Self::Rejected { error }
    }
}

impl From<Job> for Outcome {
    fn from(job: Job) -> Self {
        Outcome::Job { job }
    }
}

/// Raised when a log entry carries a command version this build cannot apply.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "log entry {index} carries a command this raftjob cannot apply (command version {found}, this build \
     understands up to {supported}); upgrade this node to the release that wrote it (upgrade every node \
     before any node proposes newer commands)"
)]
pub struct UnsupportedVersion {
    pub index: u64,
    pub found: u32,
    pub supported: u32,
}
