//! `no_lost_write`: an acknowledged create / run / stop / cancel is in the final
//! state; a write that definitely failed had no effect; an outcome-unknown write
//! may or may not be there.
//!
//! Writes are matched to the final state by the id in the ok value, and, for
//! requests that never got an ok, by the job's name (creates), by counting a
//! job's manual instances (runs), or by the job's enabled flag / existence
//! (cancels). Retries of one request share its request id and are judged as one
//! request: it failed only if every try failed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::view::{self, FinalIndex};
use super::{Ctx, Findings, Outcome, Pair};
use crate::history::OpFn;

pub(crate) const NAME: &str = "no_lost_write";

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(fin) = ctx.final_state.as_ref() else {
        f.unknown("final.json is missing", vec![]);
        return f.finish("");
    };
    let deletable = maybe_deleted_jobs(ctx);
    let mut acked = 0usize;

    // Creates.
    for p in ctx.ops_of(OpFn::CreateJob) {
        let Some(v) = p.ok_value() else { continue };
        acked += 1;
        match view::created_job_id(v) {
            None => f.unknown("CreateJob ok carries no job id", p.events()),
            Some(id) if fin.jobs.contains_key(&id) || deletable.contains(&id) => {}
            Some(id) => f.invalid(
                format!("acknowledged CreateJob (job {id}) is missing from the final state"),
                p.events(),
            ),
        }
    }
    check_failed_creates(ctx, fin, &mut f);

    // Runs.
    for p in ctx.ops_of(OpFn::RunJob) {
        let Some(v) = p.ok_value() else { continue };
        acked += 1;
        match view::created_instance_id(v) {
            None => f.unknown("RunJob ok carries no instance id", p.events()),
            Some(id) if fin.instances.contains_key(&id) => {}
            Some(id) => f.invalid(
                format!("acknowledged RunJob (instance {id}) is missing from the final state"),
                p.events(),
            ),
        }
    }
    check_failed_runs(ctx, fin, &mut f);

    // Stops: the instance must still exist (instances are only pruned after days).
    for p in ctx.ops_of(OpFn::StopInstance) {
        if p.outcome() != Outcome::Ok {
            continue;
        }
        acked += 1;
        match view::u64_at(&p.invoke.value, "instance_id") {
            Some(id) if !fin.instances.contains_key(&id) => f.invalid(
                format!(
                    "acknowledged StopInstance (instance {id}) is missing from the final state"
                ),
                p.events(),
            ),
            _ => {}
        }
    }

    // Cancels (disable / delete).
    for group in ctx.request_groups(OpFn::CancelJob) {
        let first = group[0];
        let Some(job) = view::u64_at(&first.invoke.value, "job_id") else {
            continue;
        };
        let how = view::str_at(&first.invoke.value, "how").unwrap_or("disable");
        let final_job = fin.jobs.get(&job);
        let ok = group.iter().find(|p| p.outcome() == Outcome::Ok);
        if let Some(p) = ok {
            acked += 1;
            let honoured = match how {
                "delete" => final_job.is_none(),
                // A disabled job may also have been deleted by another cancel.
                _ => final_job.is_none_or(|j| !view::job_enabled(j)),
            };
            if !honoured {
                f.invalid(
                    format!("acknowledged CancelJob ({how} job {job}) is not in the final state"),
                    p.events(),
                );
            }
        } else if group.iter().all(|p| p.outcome() == Outcome::Fail) {
            // A failed cancel had no effect; only another cancel of the job may
            // explain a deleted or disabled job.
            let others = ctx.ops_of(OpFn::CancelJob).any(|q| {
                q.request_id() != first.request_id()
                    && q.outcome().maybe_applied()
                    && view::u64_at(&q.invoke.value, "job_id") == Some(job)
                    && (how != "delete" || view::str_at(&q.invoke.value, "how") == Some("delete"))
            });
            let took_effect = match how {
                "delete" => final_job.is_none() && job_ever_existed(ctx, fin, job),
                _ => final_job.is_some_and(|j| !view::job_enabled(j)),
            };
            if took_effect && !others {
                f.invalid(
                    format!("failed CancelJob ({how} job {job}) took effect"),
                    group.iter().flat_map(Pair::events).collect(),
                );
            }
        }
    }
    f.finish(format!(
        "{acked} acknowledged writes are all in the final state; no failed write took effect"
    ))
}

/// Jobs that some delete may have removed (a delete that did not definitely fail).
fn maybe_deleted_jobs(ctx: &Ctx<'_>) -> BTreeSet<u64> {
    ctx.ops_of(OpFn::CancelJob)
        .filter(|p| p.outcome().maybe_applied())
        .filter(|p| view::str_at(&p.invoke.value, "how") == Some("delete"))
        .filter_map(|p| view::u64_at(&p.invoke.value, "job_id"))
        .collect()
}

/// The job was acknowledged by some create (so "absent" means "removed").
fn job_ever_existed(ctx: &Ctx<'_>, fin: &FinalIndex<'_>, job: u64) -> bool {
    fin.jobs.contains_key(&job)
        || ctx
            .ops_of(OpFn::CreateJob)
            .filter_map(|p| p.ok_value())
            .any(|v| view::created_job_id(v) == Some(job))
}

/// A create whose every try failed must have left no job with its name, unless
/// another request that may have succeeded used the same name.
fn check_failed_creates(ctx: &Ctx<'_>, fin: &FinalIndex<'_>, f: &mut Findings) {
    let mut live_names: BTreeMap<&str, usize> = BTreeMap::new();
    let groups = ctx.request_groups(OpFn::CreateJob);
    for g in &groups {
        if g.iter().any(|p| p.outcome().maybe_applied()) {
            if let Some(name) = view::str_at(&g[0].invoke.value, "name") {
                *live_names.entry(name).or_default() += 1;
            }
        }
    }
    for g in &groups {
        if !g.iter().all(|p| p.outcome() == Outcome::Fail) {
            continue;
        }
        let Some(name) = view::str_at(&g[0].invoke.value, "name") else {
            continue;
        };
        let present = fin.jobs_by_name.get(name).map_or(0, Vec::len);
        if present > live_names.get(name).copied().unwrap_or(0) {
            let mut events: Vec<Value> = g.iter().flat_map(Pair::events).collect();
            for id in &fin.jobs_by_name[name] {
                events.push(fin.jobs[id].clone());
            }
            f.invalid(
                format!("failed CreateJob (name {name:?}) took effect"),
                events,
            );
        }
    }
}

/// A job's manual instances that no acknowledged run accounts for must be
/// explained by runs whose outcome is unknown; a run whose every try failed
/// explains none.
fn check_failed_runs(ctx: &Ctx<'_>, fin: &FinalIndex<'_>, f: &mut Findings) {
    let acked: BTreeSet<u64> = ctx
        .ops_of(OpFn::RunJob)
        .filter_map(|p| p.ok_value())
        .filter_map(view::created_instance_id)
        .collect();
    // Per job: (requests with unknown outcome, failed requests).
    let mut per_job: BTreeMap<u64, (usize, Vec<Pair<'_>>)> = BTreeMap::new();
    for g in ctx.request_groups(OpFn::RunJob) {
        let Some(job) = view::u64_at(&g[0].invoke.value, "job_id") else {
            continue;
        };
        let entry = per_job.entry(job).or_default();
        if g.iter().any(|p| p.outcome() == Outcome::Ok) {
            continue;
        }
        if g.iter().any(|p| p.outcome().maybe_applied()) {
            entry.0 += 1;
        } else {
            entry.1.extend(g);
        }
    }
    for (job, (unknown, failed)) in per_job {
        let unexplained: Vec<u64> = fin
            .instances_of_job
            .get(&job)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| view::trigger(fin.instances[id]) == Some("manual"))
            .filter(|id| !acked.contains(id))
            .collect();
        if unexplained.len() > unknown {
            let mut events: Vec<Value> = failed.iter().flat_map(Pair::events).collect();
            events.extend(unexplained.iter().map(|id| fin.instances[id].clone()));
            let problem = if failed.is_empty() {
                format!(
                    "job {job} has {} manual instances no run request accounts for",
                    unexplained.len() - unknown
                )
            } else {
                format!(
                    "failed RunJob on job {job} took effect ({} manual instances unaccounted for)",
                    unexplained.len() - unknown
                )
            };
            f.invalid(problem, events);
        }
    }
}
