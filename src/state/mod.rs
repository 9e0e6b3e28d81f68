//! The pure, deterministic state machine.
//!
//! [`apply`] takes the state, a [`Proposal`] and the log id it was committed at, and
//! changes the state. It uses no clock, randomness or I/O: the only time it knows is
//! the proposal's `now_ms` folded into a replicated clock, and the only identities it
//! makes are counters in the state. Every node applying the same log therefore
//! reaches the same state, which `tests` and the store's restart tests check.

pub mod command;
pub mod model;
pub mod policy;

mod apply;

use std::collections::{BTreeMap, BTreeSet};

pub use apply::{apply, open_attempts_of_worker, PRUNE_BATCH};
pub use command::{
    AttemptEvent, Command, Outcome, Proposal, RequestMeta, Response, StateError, COMMAND_VERSION,
};
pub use model::*;
pub use policy::ProcessorPolicy;
use serde::{Deserialize, Serialize};

/// How long request ids are remembered, in replicated-clock time.
pub const REQUEST_RETENTION_MS: Millis = 24 * 3600 * 1000;

/// A recorded answer to a request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub body_hash: String,
    pub response: Response,
    pub at_ms: Millis,
}

/// Scalar state that is not an entity of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Made at bootstrap; workers fence per cluster id.
    pub cluster_id: Option<String>,
    /// The replicated clock: the largest `now_ms` of any applied proposal.
    pub now_ms: Millis,
    /// Next id handed out to an app, job or instance (one sequence for all).
    pub next_id: u64,
    /// The cluster's processor policy (see [`policy`]).
    #[serde(default, skip_serializing_if = "ProcessorPolicy::is_default")]
    pub policy: ProcessorPolicy,
}

/// A persistence key: which record an apply touched. The store writes exactly the
/// touched records (or deletes them when they no longer exist) in the same RocksDB
/// batch as the applied log id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Meta,
    Node(NodeId),
    App(AppId),
    Job(JobId),
    Instance(InstanceId),
    Request(String),
    Worker(String),
    /// A job's skip records.
    Skips(JobId),
    /// A scoped API token.
    Token(TokenId),
    /// One audit record, by sequence number.
    Audit(u64),
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub meta: Meta,
    pub nodes: BTreeMap<NodeId, NodeAddrs>,
    pub apps: BTreeMap<AppId, App>,
    pub jobs: BTreeMap<JobId, Job>,
    pub instances: BTreeMap<InstanceId, Instance>,
    pub requests: BTreeMap<String, RequestRecord>,
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerReg>,
    /// Fire times recorded as skipped, per job, oldest first (at most [`SKIPS_PER_JOB`]).
    #[serde(default)]
    pub skips: BTreeMap<JobId, Vec<SkipRecord>>,
    /// Scoped API tokens (revoked ones included).
    #[serde(default)]
    pub tokens: BTreeMap<TokenId, ApiToken>,
    /// The audit trail by sequence number, oldest first (at most [`AUDIT_CAP`]).
    #[serde(default)]
    pub audit: BTreeMap<u64, AuditRecord>,
    /// Token ids by secret hash. Derived; rebuilt on load.
    #[serde(skip)]
    token_hashes: BTreeMap<String, TokenId>,
    /// Instances not yet in a terminal state. Derived; rebuilt on load.
    #[serde(skip)]
    pub active: BTreeSet<InstanceId>,
    /// `active` by job. Derived; rebuilt on load.
    #[serde(skip)]
    pub active_by_job: BTreeMap<JobId, BTreeSet<InstanceId>>,
    /// Finished instances by finish time, for retention. Derived; rebuilt on load.
    #[serde(skip)]
    finished: BTreeSet<(Millis, InstanceId)>,
    /// Finished instances per job, for the per-job count limit. Derived; rebuilt on load.
    #[serde(skip)]
    finished_by_job: BTreeMap<JobId, BTreeSet<InstanceId>>,
    /// Index of `requests` by time, for expiry. Derived; rebuilt on load.
    #[serde(skip)]
    request_expiry: BTreeSet<(Millis, String)>,
    /// Job ids by (app, name), so the name check of a create or update is a lookup,
    /// not a scan of every job (which made creation slow down as jobs grew: about
    /// 188 creations/s averaged over the first 56,000). Derived; rebuilt on load.
    #[serde(skip)]
    job_names: BTreeMap<(AppId, String), JobId>,
    /// Records changed since the store last persisted. Not part of the state proper.
    #[serde(skip)]
    touched: BTreeSet<Key>,
}

impl State {
    /// Rebuilds derived indexes after the state was loaded from storage or a snapshot.
    pub fn rebuild_indexes(&mut self) {
        self.token_hashes = self
            .tokens
            .values()
            .map(|t| (t.token_hash.clone(), t.id))
            .collect();
        self.request_expiry = self
            .requests
            .iter()
            .map(|(k, r)| (r.at_ms, k.clone()))
            .collect();
        self.job_names = self
            .jobs
            .values()
            .map(|j| ((j.app_id, j.spec.name.clone()), j.id))
            .collect();
        self.active.clear();
        self.active_by_job.clear();
        self.finished.clear();
        self.finished_by_job.clear();
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            self.index_instance(id);
        }
    }

    /// Puts an instance into the derived indexes according to its status.
    fn index_instance(&mut self, id: InstanceId) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        let job = inst.job_id;
        if inst.status.is_terminal() {
            self.active.remove(&id);
            if let Some(set) = self.active_by_job.get_mut(&job) {
                set.remove(&id);
                if set.is_empty() {
                    self.active_by_job.remove(&job);
                }
            }
            let at = inst.finished_at_ms.unwrap_or(inst.created_at_ms);
            self.finished.insert((at, id));
            self.finished_by_job.entry(job).or_default().insert(id);
        } else {
            self.active.insert(id);
            self.active_by_job.entry(job).or_default().insert(id);
        }
    }

    /// Removes a finished instance and its index entries.
    fn remove_instance(&mut self, id: InstanceId) {
        let Some(inst) = self.instances.remove(&id) else {
            return;
        };
        let at = inst.finished_at_ms.unwrap_or(inst.created_at_ms);
        self.finished.remove(&(at, id));
        if let Some(set) = self.finished_by_job.get_mut(&inst.job_id) {
            set.remove(&id);
            if set.is_empty() {
                self.finished_by_job.remove(&inst.job_id);
            }
        }
        self.touch(Key::Instance(id));
    }

    /// Every instance of a job, newest (highest id) first, from the per-job indexes
    /// (so listing one job's instances does not scan all of them).
    pub fn instances_of_job(&self, job: JobId) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = self
            .active_by_job
            .get(&job)
            .into_iter()
            .flatten()
            .chain(self.finished_by_job.get(&job).into_iter().flatten())
            .copied()
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids
    }

    /// Unfinished instances of a job.
    pub fn active_of_job(&self, job: JobId) -> impl Iterator<Item = InstanceId> + '_ {
        self.active_by_job.get(&job).into_iter().flatten().copied()
    }

    /// The keys changed since the last call, for the store to persist.
    pub fn take_touched(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.touched)
    }

    pub fn touch(&mut self, key: Key) {
        self.touched.insert(key);
    }

    /// The scoped token whose secret hashes to `hash` (revoked or expired ones too).
    pub fn token_by_hash(&self, hash: &str) -> Option<&ApiToken> {
        self.token_hashes
            .get(hash)
            .and_then(|id| self.tokens.get(id))
    }

    pub(crate) fn insert_token(&mut self, token: ApiToken) {
        self.token_hashes.insert(token.token_hash.clone(), token.id);
        self.touch(Key::Token(token.id));
        self.tokens.insert(token.id, token);
    }

    pub fn app_by_name(&self, name: &str) -> Option<&App> {
        self.apps.values().find(|a| a.name == name)
    }

    /// A worker by its id `<app>/<name>`.
    pub fn worker(&self, id: &str) -> Option<&WorkerReg> {
        self.workers.get(id)
    }

    /// The job of `app_id` named `name`, if any.
    pub fn job_named(&self, app_id: AppId, name: &str) -> Option<JobId> {
        self.job_names.get(&(app_id, name.to_string())).copied()
    }

    /// Keeps the name index in step with a job that was inserted, renamed or moved.
    pub(crate) fn index_job_name(&mut self, old: Option<(AppId, String)>, id: JobId) {
        if let Some(old) = old {
            if self.job_names.get(&old) == Some(&id) {
                self.job_names.remove(&old);
            }
        }
        if let Some(j) = self.jobs.get(&id) {
            self.job_names.insert((j.app_id, j.spec.name.clone()), id);
        }
    }

    pub fn jobs_of_app(&self, app_id: AppId) -> impl Iterator<Item = &Job> {
        self.jobs.values().filter(move |j| j.app_id == app_id)
    }

    /// Serialises the record behind `key`, or `None` when it no longer exists.
    pub fn record(&self, key: &Key) -> Option<Vec<u8>> {
        let bytes = match key {
            Key::Meta => serde_json::to_vec(&self.meta),
            Key::Node(id) => return self.nodes.get(id).map(to_json),
            Key::App(id) => return self.apps.get(id).map(to_json),
            Key::Job(id) => return self.jobs.get(id).map(to_json),
            Key::Instance(id) => return self.instances.get(id).map(to_json),
            Key::Request(id) => return self.requests.get(id).map(to_json),
            Key::Worker(id) => return self.workers.get(id).map(to_json),
            Key::Skips(id) => return self.skips.get(id).map(to_json),
            Key::Token(id) => return self.tokens.get(id).map(to_json),
            Key::Audit(seq) => return self.audit.get(seq).map(to_json),
        };
        Some(bytes.expect("state records always serialise"))
    }

    /// Puts a record read back from storage (the inverse of [`State::record`]).
    pub fn load_record(&mut self, key: Key, bytes: &[u8]) -> Result<(), serde_json::Error> {
        match key {
            Key::Meta => self.meta = serde_json::from_slice(bytes)?,
            Key::Node(id) => {
                self.nodes.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::App(id) => {
                self.apps.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Job(id) => {
                self.jobs.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Instance(id) => {
                self.instances.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Request(id) => {
                self.requests.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Worker(id) => {
                self.workers.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Skips(id) => {
                self.skips.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Token(id) => {
                self.tokens.insert(id, serde_json::from_slice(bytes)?);
            }
            Key::Audit(seq) => {
                self.audit.insert(seq, serde_json::from_slice(bytes)?);
            }
        }
        Ok(())
    }

    /// Every key that currently holds a record (used to rewrite storage wholesale
    /// after a snapshot is installed).
    pub fn all_keys(&self) -> Vec<Key> {
        let mut keys = vec![Key::Meta];
        keys.extend(self.nodes.keys().map(|id| Key::Node(*id)));
        keys.extend(self.apps.keys().map(|id| Key::App(*id)));
        keys.extend(self.jobs.keys().map(|id| Key::Job(*id)));
        keys.extend(self.instances.keys().map(|id| Key::Instance(*id)));
        keys.extend(self.requests.keys().map(|id| Key::Request(id.clone())));
        keys.extend(self.workers.keys().map(|id| Key::Worker(id.clone())));
        keys.extend(self.skips.keys().map(|id| Key::Skips(*id)));
        keys.extend(self.tokens.keys().map(|id| Key::Token(*id)));
        keys.extend(self.audit.keys().map(|seq| Key::Audit(*seq)));
        keys
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state records always serialise")
}

#[cfg(test)]
mod tests;
