//! The replicated data model: apps, jobs, instances with their attempts, worker
//! registrations and the records that make writes idempotent.
//!
//! Everything here is plain data. It is serialised into the Raft log (inside
//! commands), into RocksDB (one record per entity) and into snapshots, so field
//! changes must stay backward compatible (`#[serde(default)]` on new fields).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub type NodeId = u64;
pub type AppId = u64;
pub type JobId = u64;
pub type InstanceId = u64;
/// Milliseconds since the Unix epoch, always UTC.
pub type Millis = i64;

/// An application: the unit that owns jobs and the workers that run them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: AppId,
    pub name: String,
    /// SHA-256 of the worker token; the token itself is shown once and never stored.
    pub worker_token_hash: String,
    pub created_at_ms: Millis,
    /// During a worker-token rotation: the hash of the previous token, still accepted
    /// until the rotation is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_worker_token_hash: Option<String>,
    /// The operator's processor policy for this app, narrowing the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<super::ProcessorPolicy>,
}

/// When a job fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Cron with an optional seconds field (6 fields) and optional year (7 fields),
    /// or the standard 5 fields, evaluated in `timezone` (IANA name, default UTC).
    Cron {
        expr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        /// What a local time that a spring-forward transition skips does.
        #[serde(default)]
        dst_gap: DstGapPolicy,
    },
    /// Every `every_ms` from the job's start time, without drift.
    FixedRate { every_ms: u64 },
    /// `delay_ms` after the previous instance ends.
    FixedDelay { delay_ms: u64 },
    /// Only run through the API.
    Api,
    /// Once, at the given instant (RFC 3339).
    Once { at: chrono::DateTime<chrono::Utc> },
}

/// What happens to a cron fire time whose local time does not exist because a
/// daylight-saving transition skips it (02:30 on a spring-forward night).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DstGapPolicy {
    /// Fire once, at the transition (the first instant after the gap).
    #[default]
    FireAtTransition,
    /// Do not fire for the skipped local time.
    Skip,
}

/// What a worker runs for an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Processor {
    Shell {
        command: String,
    },
    Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default = "default_expect_status")]
        expect_status: Vec<u16>,
    },
    Custom {
        name: String,
        #[serde(default)]
        #[schema(value_type = Object, nullable)]
        params: Value,
    },
}

fn default_method() -> String {
    "GET".into()
}

fn default_expect_status() -> Vec<u16> {
    vec![200]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    /// One worker runs each instance.
    #[default]
    Standalone,
    /// Every live matching worker runs the instance.
    Broadcast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DispatchStrategy {
    /// The least loaded healthy worker.
    #[default]
    HealthFirst,
    Random,
    RoundRobin,
}

/// What happens to fire times missed while the cluster had no leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// One catch-up instance; the other missed times are recorded as skipped.
    #[default]
    FireOnce,
    /// Run every missed time (bounded).
    FireAll,
    /// Record every missed time as skipped.
    Skip,
}

/// What happens when a fire time comes while an earlier instance still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    #[default]
    Allow,
    Forbid,
    Replace,
}

/// Everything a user says about a job; what `POST /api/v1/jobs` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The owning app, by name.
    pub app: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub schedule: Schedule,
    pub processor: Processor,
    #[serde(default)]
    pub execution_mode: ExecutionMode,
    #[serde(default)]
    pub dispatch_strategy: DispatchStrategy,
    /// Extra attempts after a failed one.
    #[serde(default)]
    pub retries: u32,
    /// Per-attempt timeout; none means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// 0 means unlimited.
    #[serde(default)]
    pub max_concurrent_instances: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub designated_workers: Vec<String>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Job parameters handed to every instance.
    #[serde(default)]
    #[schema(value_type = Object, nullable)]
    pub params: Value,
    #[serde(default)]
    pub misfire_policy: MisfirePolicy,
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn default_true() -> bool {
    true
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    pub app_id: AppId,
    #[serde(flatten)]
    pub spec: JobSpec,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    /// Bumped on every change, so the scheduler can tell a stale timer from a current one.
    pub version: u64,
    /// The fire cursor: the scheduler's fires are accepted only after this time, so a
    /// new leader can never fire the same time twice. Manual runs do not move it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_time_ms: Option<Millis>,
    /// When the job's latest scheduled instance finished: fixed-delay jobs fire
    /// `delay_ms` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finished_ms: Option<Millis>,
}

/// Why a fire time did not produce an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// Missed while the cluster had no leader (or was down), and the misfire policy
    /// does not run it.
    Misfire,
    /// Missed, and beyond the `fire_all` catch-up bound.
    CatchUpLimit,
    /// `concurrency_policy: forbid` and an earlier instance was still unfinished.
    ConcurrencyForbid,
    /// The job already had `max_concurrent_instances` unfinished instances.
    MaxConcurrentInstances,
}

/// A fire time that was recorded as skipped instead of run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkipRecord {
    pub fire_time_ms: Millis,
    /// When set, the record stands for every fire time from `fire_time_ms` up to
    /// and including this instant (too many missed times to list one by one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_ms: Option<Millis>,
    pub kind: SkipKind,
    pub reason: String,
    /// Replicated-clock time at which the skip was recorded.
    pub recorded_at_ms: Millis,
}

/// How many skip records a job keeps (the oldest go first).
pub const SKIPS_PER_JOB: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    WaitingDispatch,
    Dispatched,
    Running,
    Stopping,
    Succeeded,
    Failed,
    Stopped,
    Canceled,
}

impl InstanceStatus {
    /// Terminal states are final: no report reopens them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Stopped | Self::Canceled
        )
    }
}

/// The fencing token of a dispatch: the (term, index) of the `Dispatch` log entry.
/// Workers refuse dispatches from a lower term than the highest they have seen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub struct FencingToken {
    pub term: u64,
    pub index: u64,
}

/// Why an instance exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// Created by the scheduler for a fire time.
    Schedule,
    /// Run on request (the run API comes with the workers).
    Manual,
    /// A retry of a finished instance.
    Retry { of: InstanceId },
}

/// One try of an instance on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub number: u32,
    pub worker: String,
    pub fencing_token: FencingToken,
    pub status: InstanceStatus,
    pub dispatched_at_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The dispatch never reached the worker (it refused it, the connection was
    /// refused, or it had no WebSocket to the leader). Such an attempt is `failed`
    /// but did not run, so it does not count against the job's `retries`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dispatch_refused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub at_ms: Millis,
    pub line: String,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub job_id: JobId,
    pub app_id: AppId,
    pub trigger: Trigger,
    /// The scheduled fire time; none for manual runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_time_ms: Option<Millis>,
    #[serde(default)]
    #[schema(value_type = Object, nullable)]
    pub params: Value,
    pub status: InstanceStatus,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    pub created_at_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The capped tail of the instance's log (the full stream is not replicated).
    #[serde(default)]
    pub log_tail: Vec<LogLine>,
    /// Not dispatched before this time (a run with a delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<Millis>,
    /// When the first attempt was dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at_ms: Option<Millis>,
    /// When the first attempt started running on a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<Millis>,
}

/// How many log lines an instance keeps in the replicated state.
pub const LOG_TAIL_LINES: usize = 200;

/// A worker registration: what a new leader needs to dispatch at once. Heartbeat
/// times and load stay in the leader's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerReg {
    /// `<app>/<name>`.
    pub id: String,
    pub app_id: AppId,
    pub name: String,
    /// `http` or `ws`.
    pub protocol: String,
    /// The worker's own endpoint for the `http` protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub version: String,
    pub max_concurrency: u32,
    pub registered_at_ms: Millis,
}

/// Where a server node can be reached, published by the node itself so any node can
/// tell users and workers the leader's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct NodeAddrs {
    pub api_addr: String,
    pub cluster_addr: String,
    /// Worker transport addresses by protocol name (lower case).
    #[serde(default)]
    pub transports: BTreeMap<String, String>,
}

pub type TokenId = u64;

/// What a scoped API token may do within its app. Each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GET the app's jobs, instances, logs, workers, skipped fires and schedules.
    Read,
    /// Read, plus run, stop, cancel, retry, enable and disable.
    Operate,
    /// Operate, plus create, update and delete the app's jobs.
    Manage,
}

/// An API token limited to one app and one role. Only a hash of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub app_id: AppId,
    pub role: Role,
    /// SHA-256 of the secret; the secret itself is shown once and never stored.
    pub token_hash: String,
    pub created_at_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<Millis>,
}

impl ApiToken {
    /// Whether the token is usable at `now_ms` (not revoked, not expired).
    pub fn valid_at(&self, now_ms: Millis) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

/// One entry of the audit trail: who changed a job or ran, stopped, canceled or
/// retried something, and when (replicated-clock time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Increasing sequence number (the order of the log).
    pub seq: u64,
    pub at_ms: Millis,
    /// `admin`, or `token/<id>` for a scoped token.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<TokenId>,
    /// `job.create`, `job.update`, `job.delete`, `job.enable`, `job.disable`, `job.run`,
    /// `instance.stop`, `instance.cancel` or `instance.retry`.
    pub action: String,
    pub app_id: AppId,
    pub job_id: JobId,
    /// The instance acted on (stop, cancel, retry) or created (run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<InstanceId>,
    /// The instance a retry created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_instance_id: Option<InstanceId>,
}

/// How many audit records the state keeps (the oldest go first).
pub const AUDIT_CAP: usize = 10_000;
