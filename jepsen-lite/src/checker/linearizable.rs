//! `linearizable_reads`, per key (P-compositionality: a history is linearizable
//! iff each key's sub-history is).
//!
//! **Jobs** are a register with the states never-created, present (enabled or
//! not) and deleted. Writes: `CreateJob` (never-created -> present), `CancelJob`
//! disable (present -> present, disabled) and delete (present -> deleted); reads:
//! `ReadJob` (absent, or present with its `enabled`). Retries of one request id
//! are one logical write whose effect lies between the earliest try that did not
//! fail and the first ok. A Wing-Gong search (as in Knossos / porcupine) looks for
//! an order of the operations that respects real time (an operation that
//! completed before another was invoked comes first) and the register's rules.
//! Ok operations must be placed; info (and never-completed) operations may be
//! placed anywhere after their invocation, or not at all; failed ones never are.
//! The search memoises (placed set, state) and gives up as unknown beyond
//! [`BUDGET`] states per key.
//!
//! **Instances**: status only moves forward (see [`view::progress`]: waiting <
//! dispatched < running, back to waiting only by closing an attempt, then
//! stopping, then a terminal state that never changes). A read must not see an
//! instance less advanced than a read that completed before it was invoked saw,
//! nor absent after a read saw it or after the `RunJob` that created it returned
//! ok, nor un-stopped after a `StopInstance` returned ok.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::view::{self, Status};
use super::{Ctx, Findings, Outcome, Pair};
use crate::history::OpFn;

pub(crate) const NAME: &str = "linearizable_reads";

/// Most (placed set, state) pairs explored per key before giving up as unknown.
const BUDGET: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JobState {
    NotYet,
    Present { enabled: bool },
    Deleted,
}

#[derive(Debug, Clone, Copy)]
enum JobOp {
    Create {
        enabled: bool,
    },
    Disable,
    Delete,
    /// `None`: absent.
    Read(Option<bool>),
}

impl JobOp {
    fn apply(self, s: JobState) -> Option<JobState> {
        match (self, s) {
            (JobOp::Create { enabled }, JobState::NotYet) => Some(JobState::Present { enabled }),
            (JobOp::Disable, JobState::Present { .. }) => {
                Some(JobState::Present { enabled: false })
            }
            (JobOp::Delete, JobState::Present { .. }) => Some(JobState::Deleted),
            (JobOp::Read(None), JobState::NotYet | JobState::Deleted) => Some(s),
            (JobOp::Read(Some(e)), JobState::Present { enabled }) if e == enabled => Some(s),
            _ => None,
        }
    }
}

struct LinOp<'a> {
    invoke: u64,
    /// `None`: may take effect at any time after `invoke`, or never.
    complete: Option<u64>,
    op: JobOp,
    pairs: Vec<Pair<'a>>,
}

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let (jobs, job_ops) = check_jobs(ctx, &mut f);
    let (instances, reads) = check_instances(ctx, &mut f);
    f.finish(format!(
        "{job_ops} job operations on {jobs} jobs linearizable; {reads} instance reads on {instances} instances monotonic"
    ))
}

/// Builds each job's sub-history and searches it; returns (keys, operations).
fn check_jobs(ctx: &Ctx<'_>, f: &mut Findings) -> (usize, usize) {
    let mut keys: BTreeMap<u64, Vec<LinOp<'_>>> = BTreeMap::new();
    let fin = ctx.final_state.as_ref();
    for g in ctx.request_groups(OpFn::CreateJob) {
        let live: Vec<Pair<'_>> = g
            .iter()
            .copied()
            .filter(|p| p.outcome().maybe_applied())
            .collect();
        let Some(invoke) = live.iter().map(Pair::invoke_ns).min() else {
            continue;
        };
        let name = view::str_at(&g[0].invoke.value, "name");
        let key = g
            .iter()
            .filter_map(|p| p.ok_value())
            .find_map(view::created_job_id)
            .or_else(|| {
                let ids = fin?.jobs_by_name.get(name?)?;
                (ids.len() == 1).then(|| ids[0])
            });
        let Some(key) = key else { continue };
        let enabled = g[0]
            .invoke
            .value
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        keys.entry(key).or_default().push(LinOp {
            invoke,
            complete: live
                .iter()
                .filter_map(|p| p.ok_value().and(p.done))
                .map(|d| d.time_ns)
                .min(),
            op: JobOp::Create { enabled },
            pairs: live,
        });
    }
    for g in ctx.request_groups(OpFn::CancelJob) {
        let live: Vec<Pair<'_>> = g
            .iter()
            .copied()
            .filter(|p| p.outcome().maybe_applied())
            .collect();
        let Some(invoke) = live.iter().map(Pair::invoke_ns).min() else {
            continue;
        };
        let Some(key) = view::u64_at(&g[0].invoke.value, "job_id") else {
            continue;
        };
        let op = match view::str_at(&g[0].invoke.value, "how") {
            Some("delete") => JobOp::Delete,
            _ => JobOp::Disable,
        };
        keys.entry(key).or_default().push(LinOp {
            invoke,
            complete: live
                .iter()
                .filter_map(|p| p.ok_value().and(p.done))
                .map(|d| d.time_ns)
                .min(),
            op,
            pairs: live,
        });
    }
    for p in ctx.ops_of(OpFn::ReadJob) {
        let (Some(v), Some(done)) = (p.ok_value(), p.done) else {
            continue;
        };
        let Some(key) = view::u64_at(&p.invoke.value, "job_id") else {
            continue;
        };
        let seen = view::read_result(v, "job").map(view::job_enabled);
        keys.entry(key).or_default().push(LinOp {
            invoke: p.invoke_ns(),
            complete: Some(done.time_ns),
            op: JobOp::Read(seen),
            pairs: vec![*p],
        });
    }

    let mut total = 0;
    let n_keys = keys.len();
    for (key, mut ops) in keys {
        if !ops.iter().any(|o| matches!(o.op, JobOp::Create { .. })) {
            // The create is not in the history (or could not be tied to this id):
            // it may have happened at any time.
            ops.push(LinOp {
                invoke: 0,
                complete: None,
                op: JobOp::Create { enabled: true },
                pairs: vec![],
            });
        }
        ops.sort_by_key(|o| o.invoke);
        total += ops.iter().filter(|o| !o.pairs.is_empty()).count();
        match search(&ops) {
            Search::Linearizable => {}
            Search::GaveUp => f.unknown(
                format!(
                    "job {key}: search gave up after {BUDGET} states ({} operations)",
                    ops.len()
                ),
                vec![],
            ),
            Search::Not { stuck, last } => {
                let mut events: Vec<Value> =
                    ops[stuck].pairs.iter().flat_map(Pair::events).collect();
                if let Some(l) = last {
                    events.extend(ops[l].pairs.iter().flat_map(Pair::events));
                }
                f.invalid(
                    format!(
                        "job {key}: no linearization; {} cannot be placed{}",
                        describe(&ops[stuck]),
                        last.map(|l| format!(" after {}", describe(&ops[l])))
                            .unwrap_or_default()
                    ),
                    events,
                );
            }
        }
    }
    (n_keys, total)
}

fn describe(op: &LinOp<'_>) -> String {
    let what = match op.op {
        JobOp::Create { .. } => "create".to_string(),
        JobOp::Disable => "disable".to_string(),
        JobOp::Delete => "delete".to_string(),
        JobOp::Read(None) => "a read seeing the job absent".to_string(),
        JobOp::Read(Some(e)) => format!("a read seeing the job enabled={e}"),
    };
    format!("{what} (invoked at {} ns)", op.invoke)
}

enum Search {
    Linearizable,
    GaveUp,
    /// At the deepest point reached, `stuck` (the required operation that must
    /// come next) could not be placed; `last` was the last operation placed.
    Not {
        stuck: usize,
        last: Option<usize>,
    },
}

/// Wing & Gong's search with memoisation (Lowe; Horn & Kroening).
fn search(ops: &[LinOp<'_>]) -> Search {
    let n = ops.len();
    let required: Vec<usize> = (0..n).filter(|i| ops[*i].complete.is_some()).collect();
    let words = n.div_ceil(64);
    let mut visited: HashSet<(Vec<u64>, JobState)> = HashSet::new();
    // (state, placed, required placed, last placed)
    let mut stack = vec![(JobState::NotYet, vec![0u64; words], 0usize, None::<usize>)];
    let mut deepest = (0usize, required.first().copied(), None::<usize>);
    while let Some((state, placed, done, last)) = stack.pop() {
        if done == required.len() {
            return Search::Linearizable;
        }
        if !visited.insert((placed.clone(), state)) {
            continue;
        }
        if visited.len() > BUDGET {
            return Search::GaveUp;
        }
        let is_placed = |i: usize| placed[i / 64] & (1 << (i % 64)) != 0;
        // The earliest completion among required operations not yet placed:
        // nothing invoked after it may come before it.
        let (horizon, blocking) = required
            .iter()
            .filter(|i| !is_placed(**i))
            .map(|i| (ops[*i].complete.unwrap_or(u64::MAX), *i))
            .min()
            .unwrap_or((u64::MAX, 0));
        if done >= deepest.0 {
            deepest = (done, Some(blocking), last);
        }
        for i in (0..n).rev() {
            if is_placed(i) || ops[i].invoke > horizon {
                continue;
            }
            if let Some(next) = ops[i].op.apply(state) {
                let mut p = placed.clone();
                p[i / 64] |= 1 << (i % 64);
                let d = done + usize::from(ops[i].complete.is_some());
                stack.push((next, p, d, Some(i)));
            }
        }
    }
    Search::Not {
        stuck: deepest.1.unwrap_or(0),
        last: deepest.2,
    }
}

/// A read of an instance: `None` when it saw the instance absent.
struct InstRead<'a> {
    pair: Pair<'a>,
    invoke: u64,
    complete: u64,
    seen: Option<(Status, (u8, usize, usize, u8))>,
}

/// Returns (instances with reads, reads).
fn check_instances(ctx: &Ctx<'_>, f: &mut Findings) -> (usize, usize) {
    let mut reads: BTreeMap<u64, Vec<InstRead<'_>>> = BTreeMap::new();
    for p in ctx.ops_of(OpFn::ReadInstance) {
        let (Some(v), Some(done)) = (p.ok_value(), p.done) else {
            continue;
        };
        let Some(id) = view::u64_at(&p.invoke.value, "instance_id") else {
            continue;
        };
        let seen = match view::read_result(v, "instance") {
            None => None,
            Some(inst) => match (Status::of(inst), view::progress(inst)) {
                (Some(s), Some(k)) => Some((s, k)),
                _ => {
                    f.unknown(
                        format!("read of instance {id} returned no status"),
                        p.events(),
                    );
                    continue;
                }
            },
        };
        reads.entry(id).or_default().push(InstRead {
            pair: *p,
            invoke: p.invoke_ns(),
            complete: done.time_ns,
            seen,
        });
    }
    // Writes that must be visible to reads invoked after their ok.
    let mut created: BTreeMap<u64, Pair<'_>> = BTreeMap::new();
    for p in ctx.ops_of(OpFn::RunJob) {
        if let Some(id) = p.ok_value().and_then(view::created_instance_id) {
            let e = created.entry(id).or_insert(*p);
            if p.done.map(|d| d.time_ns) < e.done.map(|d| d.time_ns) {
                *e = *p;
            }
        }
    }
    let mut stopped: BTreeMap<u64, Pair<'_>> = BTreeMap::new();
    for p in ctx.ops_of(OpFn::StopInstance) {
        if p.outcome() != Outcome::Ok {
            continue;
        }
        if let Some(id) = view::u64_at(&p.invoke.value, "instance_id") {
            let e = stopped.entry(id).or_insert(*p);
            if p.done.map(|d| d.time_ns) < e.done.map(|d| d.time_ns) {
                *e = *p;
            }
        }
    }

    let mut total = 0;
    let n = reads.len();
    for (id, list) in &mut reads {
        total += list.len();
        if let Some(run) = created.get(id) {
            let ok_at = run.done.map_or(u64::MAX, |d| d.time_ns);
            for r in list.iter().filter(|r| r.invoke > ok_at && r.seen.is_none()) {
                let mut events = run.events();
                events.extend(r.pair.events());
                f.invalid(
                    format!(
                        "instance {id}: read invoked after its RunJob returned ok saw it absent"
                    ),
                    events,
                );
            }
        }
        if let Some(stop) = stopped.get(id) {
            let ok_at = stop.done.map_or(u64::MAX, |d| d.time_ns);
            for r in list.iter().filter(|r| r.invoke > ok_at) {
                if let Some((s, k)) = r.seen {
                    if k.0 == 0 {
                        let mut events = stop.events();
                        events.extend(r.pair.events());
                        f.invalid(
                            format!("instance {id}: read invoked after its stop returned ok saw it {s:?}"),
                            events,
                        );
                    }
                }
            }
        }
        // Monotonic reads: sweep reads by invocation, keeping the most advanced
        // read among those completed before it.
        let mut by_complete: Vec<usize> = (0..list.len()).collect();
        by_complete.sort_by_key(|i| list[*i].complete);
        let mut by_invoke: Vec<usize> = (0..list.len()).collect();
        by_invoke.sort_by_key(|i| list[*i].invoke);
        let mut c = 0;
        let mut best_present: Option<usize> = None;
        let mut terminal: Option<usize> = None;
        for &r in &by_invoke {
            while c < by_complete.len() && list[by_complete[c]].complete < list[r].invoke {
                let done = by_complete[c];
                if let Some((s, k)) = list[done].seen {
                    if best_present.is_none_or(|b| list[b].seen.is_some_and(|(_, bk)| k > bk)) {
                        best_present = Some(done);
                    }
                    if s.is_terminal() && terminal.is_none() {
                        terminal = Some(done);
                    }
                }
                c += 1;
            }
            let Some(b) = best_present else { continue };
            let (bs, bk) = list[b].seen.expect("present");
            let problem = match list[r].seen {
                None => Some(format!("instance {id}: read saw it absent after an earlier read saw it {bs:?}")),
                Some((s, k)) if k < bk => Some(format!(
                    "instance {id}: read saw {s:?} after an earlier completed read saw {bs:?} (status went backwards)"
                )),
                Some((s, _)) => terminal
                    .and_then(|t| list[t].seen)
                    .filter(|(ts, _)| *ts != s)
                    .map(|(ts, _)| format!("instance {id}: read saw {s:?} after an earlier read saw the final status {ts:?}")),
            };
            if let Some(problem) = problem {
                let mut events = list[b].pair.events();
                events.extend(list[r].pair.events());
                f.invalid(problem, events);
            }
        }
    }
    (n, total)
}
