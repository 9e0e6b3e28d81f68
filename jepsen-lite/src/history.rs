//! The recorded run: the files a run writes into its output directory and that
//! `jepsen-lite check DIR` reads back. The harness (writer) and the checkers
//! (reader) share these types and nothing else, so a recorded run can be
//! re-checked by a later build.
//!
//! Files in DIR:
//! - `history.jsonl`: one [`Event`] per line, in the order the harness saw them.
//! - `workers.jsonl`: one [`WorkerEvent`] per line, from every recording worker.
//! - `run.json`: the [`RunMeta`] (scenario, seed, planned faults, timings).
//! - `final.json`: the [`FinalState`] read after the faults healed and the
//!   cluster went quiet.
//!
//! Times are nanoseconds of `CLOCK_MONOTONIC` (see [`mono_ns`]), which on Linux
//! is one clock for every process on the machine, so the harness's and the
//! workers' records can be ordered against each other.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Nanoseconds of the machine-wide monotonic clock (the same clock the recording
/// workers stamp their events with).
pub fn mono_ns() -> u64 {
    raftjob::worker::record::mono_ns()
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Op(Op),
    Nemesis(NemesisEvent),
    Observe(Observation),
}

/// What one node said about leadership when the harness polled it (about every
/// 100 ms per node, a stale local read of the cluster view): the source of the
/// "longest time without a leader" figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub node: u64,
    /// `None` when the node answered but knows no leader; the node did not answer
    /// at all when `error` is set.
    #[serde(default)]
    pub leader: Option<u64>,
    #[serde(default)]
    pub term: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time_ns: u64,
}

/// Jepsen's four kinds of operation record. Every `Invoke` is followed, on the
/// same `process`, by exactly one of `Ok`, `Fail` (definitely had no effect) or
/// `Info` (outcome unknown: it may take effect at any later time). A process
/// that got `Info` is retired; the client continues under a fresh process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The operations the workload performs. `value` carries the arguments on the
/// invoke and the result on the completion:
/// - `CreateJob`: invoke `{"name", "schedule": <job spec schedule>, ...}`; ok `{"job_id"}`.
/// - `RunJob`: invoke `{"job_id"}`; ok `{"instance_id"}`.
/// - `ReadJob`: invoke `{"job_id"}`; ok the job view (`{"job": ...}`) or
///   `{"absent": true}` on 404.
/// - `ReadInstance`: invoke `{"instance_id"}`; ok the instance view or `{"absent": true}`.
/// - `StopInstance`: invoke `{"instance_id"}`; ok the response body.
/// - `CancelJob` (disable or delete the job): invoke `{"job_id", "how": "disable"|"delete"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpFn {
    CreateJob,
    RunJob,
    ReadJob,
    ReadInstance,
    StopInstance,
    CancelJob,
}

/// One operation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Logical client thread (Jepsen's `:process`).
    pub process: u64,
    pub kind: OpKind,
    pub f: OpFn,
    #[serde(default)]
    pub value: Value,
    pub time_ns: u64,
    /// The node whose api port the request went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// The `Idempotency-Key` sent with a write; the same key on a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// On `Fail` and `Info`: the HTTP status and problem code, or the transport error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Start and end of one injected fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// The fault's name as in the scenario, e.g. `kill-leader`, `partition-bridge`.
    pub fault: String,
    pub phase: NemesisPhase,
    /// What exactly happened: the nodes affected, the links cut, the clock offset...
    #[serde(default)]
    pub detail: Value,
    pub time_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisPhase {
    Start,
    End,
    /// The fault could not be injected (no leader to kill, say): the run cannot
    /// be called valid for it.
    Failed,
}

/// One line of `workers.jsonl`, written by a recording worker
/// (`raftjob worker --record FILE`); the type is the worker's own.
pub use raftjob::worker::record::{WorkerEvent, WorkerEventKind};

/// `run.json`: what was asked for and what the harness planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub scenario: String,
    pub seed: u64,
    pub time_limit_s: u64,
    /// The faults the scenario planned, by name; each must appear in the history
    /// with a `Start` and an `End`, or the run is `unknown`.
    pub planned_faults: Vec<String>,
    pub started_ns: u64,
    /// When the last fault healed.
    pub healed_ns: u64,
    pub ended_ns: u64,
    /// The bound within which every due instance must be terminal after heal.
    pub terminal_bound_ms: u64,
    /// Anything else worth keeping (ports, versions, settings).
    #[serde(default)]
    pub extra: Value,
}

/// `final.json`: the cluster's state after heal and quiescence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// Every job, as `GET /api/v1/jobs/{id}` returns it (linearizable read).
    pub jobs: Vec<Value>,
    /// Every instance, as `GET /api/v1/instances/{id}` returns it.
    pub instances: Vec<Value>,
    /// Each job's skip records (`GET /api/v1/jobs/{id}/skipped`), by job id.
    pub skips: BTreeMap<u64, Vec<Value>>,
    /// Each node's state digest: node id -> `{"applied_index", "digest"}`.
    pub digests: BTreeMap<u64, Value>,
    /// When the final reads were taken.
    pub read_ns: u64,
}

/// Appends JSON lines to a file, flushing each line so a crash keeps what was seen.
pub struct JsonlWriter {
    file: std::io::BufWriter<std::fs::File>,
}

impl JsonlWriter {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: std::io::BufWriter::new(file),
        })
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.file, record)?;
        self.file.write_all(b"\n")?;
        self.file.flush()
    }
}

/// Reads a JSON-lines file; a line that does not parse is an error naming the line.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}
