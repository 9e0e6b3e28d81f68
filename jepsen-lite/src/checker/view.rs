//! Reading raftjob's API views (jobs, instances, skip records) out of JSON.
//!
//! The checkers read the JSON rather than raftjob's types so that a run recorded
//! by an older build can still be checked, and so an unexpected shape is a
//! finding ("cannot decide"), not a crash.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::FinalState;

pub(crate) fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

pub(crate) fn i64_at(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

pub(crate) fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The job id in a `CreateJob` ok value: `{"job_id"}`, or a job view (`{"id"}`
/// or `{"job": {"id"}}`).
pub(crate) fn created_job_id(v: &Value) -> Option<u64> {
    u64_at(v, "job_id")
        .or_else(|| u64_at(v, "id"))
        .or_else(|| v.get("job").and_then(|j| u64_at(j, "id")))
}

/// The instance id in a `RunJob` ok value (`{"instance_id"}`).
pub(crate) fn created_instance_id(v: &Value) -> Option<u64> {
    u64_at(v, "instance_id").or_else(|| u64_at(v, "id"))
}

/// What a read returned: `None` for `{"absent": true}`, else the view (unwrapped
/// from `{"job": ...}` / `{"instance": ...}` when the harness wrapped it).
pub(crate) fn read_result<'a>(v: &'a Value, wrapper: &str) -> Option<&'a Value> {
    if v.get("absent").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    Some(v.get(wrapper).unwrap_or(v))
}

/// A job's `enabled` flag (default true, as in `JobSpec`).
pub(crate) fn job_enabled(job: &Value) -> bool {
    job.get("enabled").and_then(Value::as_bool).unwrap_or(true)
}

/// An instance's trigger type: `schedule`, `manual` or `retry`.
pub(crate) fn trigger(inst: &Value) -> Option<&str> {
    match inst.get("trigger") {
        Some(Value::String(s)) => Some(s),
        Some(t) => str_at(t, "type"),
        None => None,
    }
}

pub(crate) fn is_scheduled(inst: &Value) -> bool {
    matches!(trigger(inst), Some("schedule" | "cron"))
}

/// `InstanceStatus` as the API spells it, with where it sits in an instance's
/// life. Terminal states are final (`InstanceStatus::is_terminal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    WaitingDispatch,
    Dispatched,
    Running,
    Stopping,
    Succeeded,
    Failed,
    Stopped,
    Canceled,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "waiting_dispatch" => Status::WaitingDispatch,
            "dispatched" => Status::Dispatched,
            "running" => Status::Running,
            "stopping" => Status::Stopping,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "stopped" => Status::Stopped,
            "canceled" | "cancelled" => Status::Canceled,
            _ => return None,
        })
    }

    pub fn of(inst: &Value) -> Option<Status> {
        str_at(inst, "status").and_then(Status::parse)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Stopped | Status::Canceled
        )
    }
}

/// How far an instance has progressed, ordered so that it never decreases over
/// the instance's life (from `state/apply.rs`): an instance goes waiting ->
/// dispatched -> running, back to waiting only when an attempt closes (a retry or
/// a refused dispatch, which adds a closed attempt), may enter `stopping` (which
/// only ends in `stopped`), and a terminal state is final. So the key is (class,
/// attempts, closed attempts, status within the class).
pub(crate) fn progress(inst: &Value) -> Option<(u8, usize, usize, u8)> {
    let status = Status::of(inst)?;
    let attempts = inst
        .get("attempts")
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    let closed = attempts
        .iter()
        .filter(|a| {
            str_at(a, "status")
                .and_then(Status::parse)
                .is_some_and(Status::is_terminal)
        })
        .count();
    Some(match status {
        Status::WaitingDispatch => (0, attempts.len(), closed, 0),
        Status::Dispatched => (0, attempts.len(), closed, 1),
        Status::Running => (0, attempts.len(), closed, 2),
        Status::Stopping => (1, attempts.len(), closed, 0),
        // Terminal: the attempt counts no longer matter (the state is final).
        _ => (2, 0, 0, 0),
    })
}

/// The final state by id.
pub(crate) struct FinalIndex<'a> {
    pub jobs: BTreeMap<u64, &'a Value>,
    pub jobs_by_name: BTreeMap<&'a str, Vec<u64>>,
    pub instances: BTreeMap<u64, &'a Value>,
    /// Instance ids per job, in id order.
    pub instances_of_job: BTreeMap<u64, Vec<u64>>,
    pub state: &'a FinalState,
}

impl<'a> FinalIndex<'a> {
    pub fn new(state: &'a FinalState) -> Self {
        let mut jobs = BTreeMap::new();
        let mut jobs_by_name: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for j in &state.jobs {
            let j = j.get("job").unwrap_or(j);
            if let Some(id) = u64_at(j, "id") {
                jobs.insert(id, j);
                if let Some(name) = str_at(j, "name") {
                    jobs_by_name.entry(name).or_default().push(id);
                }
            }
        }
        let mut instances = BTreeMap::new();
        let mut instances_of_job: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for i in &state.instances {
            let i = i.get("instance").unwrap_or(i);
            if let Some(id) = u64_at(i, "id") {
                instances.insert(id, i);
                if let Some(job) = u64_at(i, "job_id") {
                    instances_of_job.entry(job).or_default().push(id);
                }
            }
        }
        FinalIndex {
            jobs,
            jobs_by_name,
            instances,
            instances_of_job,
            state,
        }
    }

    /// The job's execution mode is `broadcast` (every worker runs each instance,
    /// so "one worker per attempt" does not apply).
    pub fn is_broadcast_instance(&self, instance_id: u64) -> bool {
        self.instances
            .get(&instance_id)
            .and_then(|i| u64_at(i, "job_id"))
            .and_then(|j| self.jobs.get(&j))
            .and_then(|j| str_at(j, "execution_mode"))
            == Some("broadcast")
    }
}

/// The largest absolute value of any number under `key`, anywhere in `v`
/// (nemesis details name clock offsets this way).
pub(crate) fn max_abs_number(v: &Value, key: &str) -> Option<i64> {
    match v {
        Value::Object(m) => {
            let here = m.get(key).and_then(Value::as_i64).map(i64::abs);
            m.values()
                .filter_map(|x| max_abs_number(x, key))
                .chain(here)
                .max()
        }
        Value::Array(a) => a.iter().filter_map(|x| max_abs_number(x, key)).max(),
        _ => None,
    }
}

/// Whether any string in `v` equals `needle` (nemesis details name the worker
/// or node they hit).
pub(crate) fn mentions(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s == needle,
        Value::Object(m) => m.values().any(|x| mentions(x, needle)),
        Value::Array(a) => a.iter().any(|x| mentions(x, needle)),
        _ => false,
    }
}
