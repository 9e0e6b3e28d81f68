//! The checkers: one pure function per guarantee in `DESIGN.md`, each judging a
//! recorded run (see [`crate::history`]) as valid, invalid or unknown, with the
//! events that show the problem.
//!
//! The checkers never talk to a cluster, so a recorded run can be re-checked by a
//! later build (`jepsen-lite check DIR`), and each checker can be tested with a
//! hand-written history (`tests.rs`).
//!
//! Verdicts combine as in Jepsen: invalid wins over unknown, which wins over valid.
//! "Unknown" means the history cannot decide (an outcome-unknown write, a final
//! read taken too early, a fault that never happened), never "probably fine".

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{
    read_jsonl, Event, FinalState, NemesisEvent, Observation, Op, OpFn, OpKind, RunMeta,
    WorkerEvent,
};

mod cancels;
mod faults;
mod fencing;
mod fire_time;
mod linearizable;
mod lost_write;
mod replicas;
mod request_id;
mod silent_skip;
pub mod stats;
mod terminal;
pub(crate) mod view;

#[cfg(test)]
mod tests;

pub use stats::Stats;

/// Most offending entries one checker keeps: enough to debug, small enough to read.
pub const MAX_OFFENDING: usize = 50;

/// A checker's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

impl Verdict {
    /// Jepsen's rule: invalid wins over unknown, unknown over valid.
    pub fn combine(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        }
    }
}

/// One checker's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub verdict: Verdict,
    /// One line: what was checked, or the first problem and how many there were.
    pub summary: String,
    /// `{"problem": "...", "events": [...]}` per violation (then per undecidable
    /// case when there is no violation), at most [`MAX_OFFENDING`].
    pub offending: Vec<Value>,
}

/// Everything `check_dir` produces: `results.json` is this, serialised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub verdict: Verdict,
    pub checks: Vec<CheckResult>,
    pub stats: Stats,
}

impl Report {
    /// The process exit code: 0 valid, 1 invalid, 2 unknown (Jepsen's CLI).
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }

    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// A recorded run as read from its directory. `workers` and `final_state` are
/// optional because a run that broke down early may lack them; the checkers that
/// need them then say unknown.
#[derive(Debug, Clone)]
pub struct Run {
    pub meta: RunMeta,
    pub events: Vec<Event>,
    pub workers: Option<Vec<WorkerEvent>>,
    pub final_state: Option<FinalState>,
}

impl Run {
    /// Reads `run.json` and `history.jsonl` (both required), `workers.jsonl` and
    /// `final.json` (each optional).
    pub fn load(dir: &Path) -> anyhow::Result<Run> {
        let meta_path = dir.join("run.json");
        let meta: RunMeta = serde_json::from_slice(
            &std::fs::read(&meta_path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", meta_path.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", meta_path.display()))?;
        let events = read_jsonl(&dir.join("history.jsonl"))?;
        let workers_path = dir.join("workers.jsonl");
        let workers = if workers_path.exists() {
            Some(read_jsonl(&workers_path)?)
        } else {
            None
        };
        let final_path = dir.join("final.json");
        let final_state = if final_path.exists() {
            Some(
                serde_json::from_slice(&std::fs::read(&final_path)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", final_path.display()))?,
            )
        } else {
            None
        };
        Ok(Run {
            meta,
            events,
            workers,
            final_state,
        })
    }
}

/// Loads the run in `dir` and runs every checker.
pub fn check_dir(dir: &Path) -> anyhow::Result<Report> {
    Ok(check_run(&Run::load(dir)?))
}

/// Runs every checker on a loaded run.
pub fn check_run(run: &Run) -> Report {
    let ctx = Ctx::new(run);
    let checks = vec![
        lost_write::check(&ctx),
        request_id::check(&ctx),
        fire_time::check(&ctx),
        silent_skip::check(&ctx),
        fencing::check(&ctx),
        terminal::check(&ctx),
        linearizable::check(&ctx),
        cancels::check(&ctx),
        replicas::check(&ctx),
        faults::check(&ctx),
    ];
    let verdict = checks
        .iter()
        .fold(Verdict::Valid, |v, c| v.combine(c.verdict));
    Report {
        scenario: run.meta.scenario.clone(),
        seed: run.meta.seed,
        verdict,
        checks,
        stats: stats::compute(&ctx),
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
    /// Invoked, never completed in the history: treated like `Info`.
    Pending,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
            Outcome::Pending => "pending",
        }
    }

    /// The write may have taken effect (everything but a definite failure).
    pub fn maybe_applied(self) -> bool {
        self != Outcome::Fail
    }
}

/// An invocation with its completion, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair<'a> {
    pub invoke: &'a Op,
    pub done: Option<&'a Op>,
}

impl<'a> Pair<'a> {
    pub fn f(&self) -> OpFn {
        self.invoke.f
    }

    pub fn outcome(&self) -> Outcome {
        match self.done.map(|d| d.kind) {
            Some(OpKind::Ok) => Outcome::Ok,
            Some(OpKind::Fail) => Outcome::Fail,
            Some(OpKind::Info) => Outcome::Info,
            _ => Outcome::Pending,
        }
    }

    pub fn invoke_ns(&self) -> u64 {
        self.invoke.time_ns
    }

    /// The completion's value on `Ok`.
    pub fn ok_value(&self) -> Option<&'a Value> {
        match self.done {
            Some(d) if d.kind == OpKind::Ok => Some(&d.value),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&'a str> {
        self.invoke
            .request_id
            .as_deref()
            .or_else(|| self.done.and_then(|d| d.request_id.as_deref()))
    }

    pub fn node(&self) -> Option<u64> {
        self.invoke.node.or_else(|| self.done.and_then(|d| d.node))
    }

    /// The invocation and completion as JSON, for `offending`.
    pub fn events(&self) -> Vec<Value> {
        let mut out = vec![op_json(self.invoke)];
        if let Some(d) = self.done {
            out.push(op_json(d));
        }
        out
    }
}

pub(crate) fn op_json(op: &Op) -> Value {
    serde_json::to_value(Event::Op(op.clone())).unwrap_or(Value::Null)
}

pub(crate) fn nemesis_json(n: &NemesisEvent) -> Value {
    serde_json::to_value(Event::Nemesis(n.clone())).unwrap_or(Value::Null)
}

pub(crate) fn worker_json(w: &WorkerEvent) -> Value {
    serde_json::to_value(w).unwrap_or(Value::Null)
}

/// The run with the indexes every checker needs: operations paired, the final
/// state by id, the wall-clock mapping.
pub(crate) struct Ctx<'a> {
    pub run: &'a Run,
    /// In invocation order.
    pub ops: Vec<Pair<'a>>,
    pub nemesis: Vec<&'a NemesisEvent>,
    pub observations: Vec<&'a Observation>,
    pub final_state: Option<view::FinalIndex<'a>>,
    pub clock: Option<WallClock>,
    /// The largest clock offset any clock-jump fault applied (ms), so checkers that
    /// compare replicated-clock times with real time can widen their tolerance.
    pub clock_skew_ms: i64,
}

impl<'a> Ctx<'a> {
    pub fn new(run: &'a Run) -> Ctx<'a> {
        let mut ops = Vec::new();
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        let mut nemesis = Vec::new();
        let mut observations = Vec::new();
        for event in &run.events {
            match event {
                Event::Op(op) if op.kind == OpKind::Invoke => {
                    open.insert(op.process, ops.len());
                    ops.push(Pair {
                        invoke: op,
                        done: None,
                    });
                }
                Event::Op(op) => {
                    if let Some(i) = open.remove(&op.process) {
                        ops[i].done = Some(op);
                    }
                    // A completion with no invocation is ignored: it says nothing
                    // about when the operation began.
                }
                Event::Nemesis(n) => nemesis.push(n),
                Event::Observe(o) => observations.push(o),
            }
        }
        ops.sort_by_key(|p| p.invoke.time_ns);
        let final_state = run.final_state.as_ref().map(view::FinalIndex::new);
        let clock = WallClock::estimate(run, &ops, final_state.as_ref());
        let clock_skew_ms = nemesis
            .iter()
            .filter_map(|n| view::max_abs_number(&n.detail, "offset_ms"))
            .max()
            .unwrap_or(0);
        Ctx {
            run,
            ops,
            nemesis,
            observations,
            final_state,
            clock,
            clock_skew_ms,
        }
    }

    pub fn ops_of(&self, f: OpFn) -> impl Iterator<Item = &Pair<'a>> {
        self.ops.iter().filter(move |p| p.f() == f)
    }

    /// The operations grouped by request id (retries share one); an operation
    /// without one is a group of its own.
    pub fn request_groups(&self, f: OpFn) -> Vec<Vec<Pair<'a>>> {
        let mut by_id: BTreeMap<&str, Vec<Pair<'a>>> = BTreeMap::new();
        let mut out = Vec::new();
        for p in self.ops_of(f) {
            match p.request_id() {
                Some(id) => by_id.entry(id).or_default().push(*p),
                None => out.push(vec![*p]),
            }
        }
        out.extend(by_id.into_values());
        out
    }
}

/// Maps the harness's monotonic clock to the cluster's wall clock (ms since the
/// epoch), which is what instance and job timestamps use.
///
/// Taken from `run.json`'s `extra.started_unix_ms` (the wall clock at
/// `started_ns`) when the harness records it. Otherwise estimated from the
/// history: a job's `created_at_ms` (and a manual instance's) is stamped when its
/// write is applied, which lies between the operation's invocation and its ok, so
/// each acknowledged create bounds `wall - mono`; the estimate is the median of
/// those bounds' midpoints and `uncertainty_ms` their spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WallClock {
    /// wall ms minus monotonic ms.
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
    /// `"run.json"` or `"estimated from N acknowledged creates"`.
    pub samples: usize,
}

impl WallClock {
    fn estimate(run: &Run, ops: &[Pair<'_>], fin: Option<&view::FinalIndex<'_>>) -> Option<Self> {
        let anchor = run
            .meta
            .extra
            .get("started_unix_ms")
            .and_then(Value::as_i64);
        if let Some(wall) = anchor {
            return Some(WallClock {
                offset_ms: wall - ms(run.meta.started_ns),
                uncertainty_ms: 5,
                samples: 0,
            });
        }
        let fin = fin?;
        let mut bounds: Vec<(i64, i64)> = Vec::new();
        for p in ops {
            let (Some(v), Some(done)) = (p.ok_value(), p.done) else {
                continue;
            };
            let created = match p.f() {
                OpFn::CreateJob => view::created_job_id(v)
                    .and_then(|id| fin.jobs.get(&id))
                    .and_then(|j| view::i64_at(j, "created_at_ms")),
                OpFn::RunJob => view::created_instance_id(v)
                    .and_then(|id| fin.instances.get(&id))
                    .and_then(|i| view::i64_at(i, "created_at_ms")),
                _ => None,
            };
            if let Some(c) = created {
                bounds.push((c - ms(done.time_ns), c - ms(p.invoke.time_ns)));
            }
        }
        if bounds.is_empty() {
            return None;
        }
        let mut mids: Vec<i64> = bounds.iter().map(|(lo, hi)| (lo + hi) / 2).collect();
        mids.sort_unstable();
        let median = mids[mids.len() / 2];
        let lo = bounds.iter().map(|b| b.0).max().unwrap_or(median);
        let hi = bounds.iter().map(|b| b.1).min().unwrap_or(median);
        let (offset_ms, uncertainty_ms) = if lo <= hi {
            // Every sample agrees: the true offset is in [lo, hi].
            ((lo + hi) / 2, (hi - lo) / 2 + 1)
        } else {
            // Clock jumps or skew: take the median and its spread.
            let mut dev: Vec<i64> = mids.iter().map(|m| (m - median).abs()).collect();
            dev.sort_unstable();
            let p90 = dev[(dev.len() * 9 / 10).min(dev.len() - 1)];
            let mut widths: Vec<i64> = bounds.iter().map(|(l, h)| (h - l) / 2).collect();
            widths.sort_unstable();
            (median, p90 + widths[widths.len() / 2] + 1)
        };
        Some(WallClock {
            offset_ms,
            uncertainty_ms,
            samples: bounds.len(),
        })
    }

    /// The wall-clock reading (ms) at a monotonic instant.
    pub fn wall_ms(&self, mono_ns: u64) -> i64 {
        ms(mono_ns) + self.offset_ms
    }
}

pub(crate) fn ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

/// Collects one checker's findings and turns them into a [`CheckResult`].
pub(crate) struct Findings {
    name: &'static str,
    violations: usize,
    first_violation: Option<String>,
    unknowns: usize,
    first_unknown: Option<String>,
    offending: Vec<Value>,
    undecided: Vec<Value>,
}

impl Findings {
    pub fn new(name: &'static str) -> Self {
        Findings {
            name,
            violations: 0,
            first_violation: None,
            unknowns: 0,
            first_unknown: None,
            offending: Vec::new(),
            undecided: Vec::new(),
        }
    }

    /// A definite violation, shown by `events`.
    pub fn invalid(&mut self, problem: impl Into<String>, events: Vec<Value>) {
        let problem = problem.into();
        self.violations += 1;
        if self.offending.len() < MAX_OFFENDING {
            self.offending
                .push(serde_json::json!({"problem": problem, "events": events}));
        }
        self.first_violation.get_or_insert(problem);
    }

    /// A case the history cannot decide.
    pub fn unknown(&mut self, problem: impl Into<String>, events: Vec<Value>) {
        let problem = problem.into();
        self.unknowns += 1;
        if self.undecided.len() < MAX_OFFENDING {
            self.undecided
                .push(serde_json::json!({"problem": problem, "events": events}));
        }
        self.first_unknown.get_or_insert(problem);
    }

    /// `checked` says what a valid result covered ("41 acknowledged writes").
    pub fn finish(self, checked: impl Into<String>) -> CheckResult {
        let checked = checked.into();
        let (verdict, summary, offending) = if self.violations > 0 {
            let first = self.first_violation.unwrap_or_default();
            let summary = if self.violations == 1 {
                first
            } else {
                format!("{} violations; first: {first}", self.violations)
            };
            (Verdict::Invalid, summary, self.offending)
        } else if self.unknowns > 0 {
            let first = self.first_unknown.unwrap_or_default();
            let summary = if self.unknowns == 1 {
                format!("cannot decide: {first}")
            } else {
                format!("cannot decide {} cases; first: {first}", self.unknowns)
            };
            (Verdict::Unknown, summary, self.undecided)
        } else {
            (Verdict::Valid, checked, Vec::new())
        };
        CheckResult {
            name: self.name.to_string(),
            verdict,
            summary,
            offending,
        }
    }
}
