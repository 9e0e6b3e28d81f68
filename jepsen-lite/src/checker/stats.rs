//! The figures of a run for `summary.md` and `results.json`: faults injected,
//! operations by kind and outcome, availability gaps and the longest time
//! without a leader. Times are ms since `RunMeta::started_ns`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Ctx, Outcome, WallClock};
use crate::history::{NemesisPhase, Observation, OpFn};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub duration_ms: i64,
    pub healed_at_ms: i64,
    pub faults: Vec<FaultStat>,
    pub ops: Vec<OpCount>,
    /// The longest stretches with no ok operation at all (up to 3).
    pub longest_gaps: Vec<Gap>,
    /// Per node (by the node the request went to): its longest stretch with no ok.
    pub longest_gap_per_node: BTreeMap<u64, Gap>,
    /// The longest stretch in which no node reported a leader that itself agreed.
    pub longest_leaderless: Option<Gap>,
    pub observations: usize,
    pub worker_events: usize,
    pub jobs_final: usize,
    pub instances_final: usize,
    /// How the harness clock was mapped to the cluster's wall clock.
    pub wall_clock: Option<WallClock>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultStat {
    pub fault: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub failed: bool,
    pub detail: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpCount {
    pub f: OpFn,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub pending: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from_ms: i64,
    pub to_ms: i64,
    pub duration_ms: i64,
}

impl Gap {
    fn new(from_ms: i64, to_ms: i64) -> Gap {
        Gap {
            from_ms,
            to_ms,
            duration_ms: to_ms - from_ms,
        }
    }
}

pub(crate) fn compute(ctx: &Ctx<'_>) -> Stats {
    let meta = &ctx.run.meta;
    let rel = |ns: u64| (ns as i64 - meta.started_ns as i64) / 1_000_000;

    // Faults: pair each Start with the next End of the same fault.
    let mut faults: Vec<FaultStat> = Vec::new();
    let mut open: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for n in &ctx.nemesis {
        match n.phase {
            NemesisPhase::Start => {
                open.entry(n.fault.as_str()).or_default().push(faults.len());
                faults.push(FaultStat {
                    fault: n.fault.clone(),
                    start_ms: Some(rel(n.time_ns)),
                    end_ms: None,
                    duration_ms: None,
                    failed: false,
                    detail: n.detail.clone(),
                });
            }
            NemesisPhase::End => match open
                .get_mut(n.fault.as_str())
                .and_then(|v| (!v.is_empty()).then(|| v.remove(0)))
            {
                Some(i) => {
                    faults[i].end_ms = Some(rel(n.time_ns));
                    faults[i].duration_ms = faults[i].start_ms.map(|s| rel(n.time_ns) - s);
                }
                None => faults.push(FaultStat {
                    fault: n.fault.clone(),
                    start_ms: None,
                    end_ms: Some(rel(n.time_ns)),
                    duration_ms: None,
                    failed: false,
                    detail: n.detail.clone(),
                }),
            },
            NemesisPhase::Failed => faults.push(FaultStat {
                fault: n.fault.clone(),
                start_ms: Some(rel(n.time_ns)),
                end_ms: None,
                duration_ms: None,
                failed: true,
                detail: n.detail.clone(),
            }),
        }
    }

    let mut counts: BTreeMap<OpFn, OpCount> = BTreeMap::new();
    for p in &ctx.ops {
        let c = counts.entry(p.f()).or_insert_with(|| OpCount {
            f: p.f(),
            ok: 0,
            fail: 0,
            info: 0,
            pending: 0,
        });
        match p.outcome() {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
            Outcome::Pending => c.pending += 1,
        }
    }

    // Availability: gaps between consecutive ok completions, within the span of
    // the workload (first invocation to last completion).
    let first = ctx.ops.iter().map(|p| p.invoke_ns()).min();
    let last = ctx
        .ops
        .iter()
        .map(|p| p.done.map_or(p.invoke_ns(), |d| d.time_ns))
        .max();
    let mut longest_gaps = Vec::new();
    let mut longest_gap_per_node = BTreeMap::new();
    if let (Some(first), Some(last)) = (first, last) {
        let oks = |node: Option<u64>| -> Vec<u64> {
            let mut t: Vec<u64> = ctx
                .ops
                .iter()
                .filter(|p| p.outcome() == Outcome::Ok)
                .filter(|p| node.is_none() || p.node() == node)
                .filter_map(|p| p.done.map(|d| d.time_ns))
                .collect();
            t.sort_unstable();
            t
        };
        let gaps = |times: Vec<u64>| -> Vec<Gap> {
            let mut edges = vec![first];
            edges.extend(times);
            edges.push(last);
            let mut g: Vec<Gap> = edges
                .windows(2)
                .map(|w| Gap::new(rel(w[0]), rel(w[1])))
                .collect();
            g.sort_by_key(|g| std::cmp::Reverse(g.duration_ms));
            g
        };
        longest_gaps = gaps(oks(None)).into_iter().take(3).collect();
        let mut nodes: Vec<u64> = ctx.ops.iter().filter_map(|p| p.node()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for n in nodes {
            if let Some(g) = gaps(oks(Some(n))).into_iter().next() {
                longest_gap_per_node.insert(n, g);
            }
        }
    }

    let fin = ctx.final_state.as_ref();
    Stats {
        duration_ms: rel(meta.ended_ns),
        healed_at_ms: rel(meta.healed_ns),
        faults,
        ops: counts.into_values().collect(),
        longest_gaps,
        longest_gap_per_node,
        longest_leaderless: leaderless(&ctx.observations).map(|(a, b)| Gap::new(rel(a), rel(b))),
        observations: ctx.observations.len(),
        worker_events: ctx.run.workers.as_ref().map_or(0, Vec::len),
        jobs_final: fin.map_or(0, |f| f.jobs.len()),
        instances_final: fin.map_or(0, |f| f.instances.len()),
        wall_clock: ctx.clock,
    }
}

/// An observation older than this no longer says anything about now.
const STALE_NS: u64 = 2_000_000_000;

/// The longest interval (ns) in which no node's latest observation named a leader
/// whose own latest observation named itself (in the same term, when both say).
/// The first election (before any leader was seen) does not count, unless no
/// leader was ever seen.
fn leaderless(observations: &[&Observation]) -> Option<(u64, u64)> {
    let mut obs: Vec<&Observation> = observations.to_vec();
    obs.sort_by_key(|o| o.time_ns);
    let (first, last) = (obs.first()?.time_ns, obs.last()?.time_ns);
    let mut latest: BTreeMap<u64, &Observation> = BTreeMap::new();
    let mut since: Option<u64> = Some(first);
    let mut best: Option<(u64, u64)> = None;
    let mut seen_leader = false;
    let record = |from: u64, to: u64, best: &mut Option<(u64, u64)>| {
        if best.is_none_or(|(a, b)| to - from > b - a) {
            *best = Some((from, to));
        }
    };
    for o in obs {
        latest.insert(o.node, o);
        let now = o.time_ns;
        let fresh = |x: &&&Observation| x.error.is_none() && now - x.time_ns <= STALE_NS;
        let confirmed = latest.values().filter(fresh).any(|x| {
            x.leader.is_some_and(|l| {
                latest.get(&l).filter(fresh).is_some_and(|me| {
                    me.leader == Some(l)
                        && (me.term.is_none() || x.term.is_none() || me.term == x.term)
                })
            })
        });
        match (confirmed, since) {
            (true, Some(s)) => {
                if seen_leader {
                    record(s, now, &mut best);
                }
                seen_leader = true;
                since = None;
            }
            (false, None) => since = Some(now),
            _ => {}
        }
    }
    if let Some(s) = since {
        record(s, last, &mut best);
    }
    best
}
