//! `fencing`: from the workers' own records (`workers.jsonl`), which are the ground
//! truth of what ran:
//!
//! 1. per worker, the terms of the dispatches it accepted never decrease (in time
//!    order): a worker must refuse a deposed leader's dispatch;
//! 2. no attempt (instance, attempt number) is accepted by two different workers;
//! 3. no instance executes on two workers at overlapping times (Start..End per
//!    worker; a Start with no End counts as running until the run ended).
//!
//! A worker that the nemesis killed loses its memory (its term high-water mark)
//! and its executions: at the kill (a `Start` of a fault whose name contains
//! `worker` and whose detail names the worker, or names no worker at all) the
//! worker's term history restarts and its open executions end. Instances of
//! `broadcast` jobs are exempt from 2 and 3 (every worker runs them by design).

use std::collections::BTreeMap;

use super::{worker_json, Ctx, Findings};
use crate::history::{NemesisPhase, WorkerEvent, WorkerEventKind};

pub(crate) const NAME: &str = "fencing";

struct Interval<'a> {
    worker: &'a str,
    start_ns: u64,
    end_ns: u64,
    start: &'a WorkerEvent,
    end: Option<&'a WorkerEvent>,
}

/// Ends every open execution at `at` (the worker was killed, or the run ended).
fn close_all<'a>(
    open: &mut BTreeMap<(u64, u32), &'a WorkerEvent>,
    at: u64,
    intervals: &mut BTreeMap<u64, Vec<Interval<'a>>>,
) {
    for ((inst, _), s) in std::mem::take(open) {
        intervals.entry(inst).or_default().push(Interval {
            worker: &s.worker,
            start_ns: s.time_ns,
            end_ns: at,
            start: s,
            end: None,
        });
    }
}

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(events) = ctx.run.workers.as_ref() else {
        f.unknown("workers.jsonl is missing", vec![]);
        return f.finish("");
    };
    let broadcast = |instance: u64| {
        ctx.final_state
            .as_ref()
            .is_some_and(|fin| fin.is_broadcast_instance(instance))
    };

    let mut by_worker: BTreeMap<&str, Vec<&WorkerEvent>> = BTreeMap::new();
    for e in events {
        by_worker.entry(e.worker.as_str()).or_default().push(e);
    }
    // Worker kills: (time, the named worker, or None for "any").
    let kills: Vec<(u64, Option<&str>)> = ctx
        .nemesis
        .iter()
        .filter(|n| n.phase == NemesisPhase::Start && n.fault.contains("worker"))
        .flat_map(|n| {
            let named: Vec<(u64, Option<&str>)> = by_worker
                .keys()
                .filter(|w| super::view::mentions(&n.detail, w))
                .map(|w| (n.time_ns, Some(*w)))
                .collect();
            if named.is_empty() {
                vec![(n.time_ns, None)]
            } else {
                named
            }
        })
        .collect();

    let mut accepted = 0usize;
    let mut intervals: BTreeMap<u64, Vec<Interval<'_>>> = BTreeMap::new();
    let mut acceptors: BTreeMap<(u64, u32), BTreeMap<&str, &WorkerEvent>> = BTreeMap::new();
    for (worker, evs) in &mut by_worker {
        evs.sort_by_key(|e| e.time_ns);
        let mut my_kills: Vec<u64> = kills
            .iter()
            .filter(|(_, w)| w.is_none_or(|w| w == *worker))
            .map(|(t, _)| *t)
            .collect();
        my_kills.sort_unstable();
        let mut kill_i = 0;
        let mut high: Option<&WorkerEvent> = None;
        let mut open: BTreeMap<(u64, u32), &WorkerEvent> = BTreeMap::new();
        for e in evs.iter() {
            while kill_i < my_kills.len() && my_kills[kill_i] <= e.time_ns {
                high = None;
                close_all(&mut open, my_kills[kill_i], &mut intervals);
                kill_i += 1;
            }
            match e.kind {
                WorkerEventKind::DispatchAccepted => {
                    accepted += 1;
                    if let Some(h) = high {
                        if e.term < h.term {
                            f.invalid(
                                format!(
                                    "worker {worker} accepted a dispatch of term {} after one of term {} (instance {}, attempt {})",
                                    e.term, h.term, e.instance_id, e.attempt
                                ),
                                vec![worker_json(e), worker_json(h)],
                            );
                        }
                    }
                    if high.is_none_or(|h| e.term >= h.term) {
                        high = Some(e);
                    }
                    acceptors
                        .entry((e.instance_id, e.attempt))
                        .or_default()
                        .entry(worker)
                        .or_insert(e);
                }
                WorkerEventKind::Start => {
                    open.insert((e.instance_id, e.attempt), e);
                }
                WorkerEventKind::End => {
                    if let Some(s) = open.remove(&(e.instance_id, e.attempt)) {
                        intervals.entry(e.instance_id).or_default().push(Interval {
                            worker,
                            start_ns: s.time_ns,
                            end_ns: e.time_ns,
                            start: s,
                            end: Some(e),
                        });
                    }
                }
                WorkerEventKind::DispatchRefused => {}
            }
        }
        close_all(&mut open, ctx.run.meta.ended_ns, &mut intervals);
    }

    for ((instance, attempt), workers) in &acceptors {
        if workers.len() > 1 && !broadcast(*instance) {
            f.invalid(
                format!(
                    "attempt {attempt} of instance {instance} was accepted by {} workers: {:?}",
                    workers.len(),
                    workers.keys().collect::<Vec<_>>()
                ),
                workers.values().map(|e| worker_json(e)).collect(),
            );
        }
    }
    let mut executions = 0usize;
    for (instance, list) in &mut intervals {
        executions += list.len();
        if broadcast(*instance) {
            continue;
        }
        list.sort_by_key(|i| i.start_ns);
        for (n, a) in list.iter().enumerate() {
            for b in &list[n + 1..] {
                if b.start_ns >= a.end_ns {
                    continue;
                }
                if a.worker != b.worker {
                    let mut ev = vec![worker_json(a.start)];
                    ev.extend(a.end.map(worker_json));
                    ev.push(worker_json(b.start));
                    ev.extend(b.end.map(worker_json));
                    f.invalid(
                        format!(
                            "instance {instance} ran on workers {} and {} at once ({:.0} ms overlap)",
                            a.worker,
                            b.worker,
                            (a.end_ns.min(b.end_ns) - b.start_ns) as f64 / 1e6
                        ),
                        ev,
                    );
                }
            }
        }
    }
    f.finish(format!(
        "{accepted} accepted dispatches on {} workers: terms never decreased; {executions} executions, none on two workers at once",
        by_worker.len()
    ))
}
