//! `one_effect_per_request_id`: however often a request is retried, and on
//! whichever node, its request id (`Idempotency-Key`) has one effect.
//!
//! - Creates: every ok of one request id names the same job, and the final state
//!   holds no more jobs with the request's name than requests that used the name
//!   (and may have succeeded).
//! - Runs: every ok of one request id names the same instance.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::view;
use super::{Ctx, Findings, Pair};
use crate::history::OpFn;

pub(crate) const NAME: &str = "one_effect_per_request_id";

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let mut requests = 0usize;
    for (op, id_of) in [
        (
            OpFn::CreateJob,
            view::created_job_id as fn(&Value) -> Option<u64>,
        ),
        (OpFn::RunJob, view::created_instance_id),
    ] {
        for g in ctx.request_groups(op) {
            if g[0].request_id().is_none() {
                continue;
            }
            requests += 1;
            let ids: BTreeSet<u64> = g
                .iter()
                .filter_map(|p| p.ok_value())
                .filter_map(id_of)
                .collect();
            if ids.len() > 1 {
                let what = if op == OpFn::CreateJob {
                    "jobs"
                } else {
                    "instances"
                };
                f.invalid(
                    format!(
                        "request id {} created {} {what}: {ids:?}",
                        g[0].request_id().unwrap_or_default(),
                        ids.len()
                    ),
                    g.iter()
                        .filter(|p| p.ok_value().is_some())
                        .flat_map(Pair::events)
                        .collect(),
                );
            }
        }
    }

    // Jobs per name in the final state against the requests that used the name.
    if let Some(fin) = ctx.final_state.as_ref() {
        let mut by_name: BTreeMap<&str, Vec<Pair<'_>>> = BTreeMap::new();
        // Per name: the request ids that may have succeeded, and the ops without one.
        let mut requests_by_name: BTreeMap<&str, (BTreeSet<&str>, usize)> = BTreeMap::new();
        for p in ctx.ops_of(OpFn::CreateJob) {
            if let Some(name) = view::str_at(&p.invoke.value, "name") {
                by_name.entry(name).or_default().push(*p);
                if p.outcome().maybe_applied() {
                    let entry = requests_by_name.entry(name).or_default();
                    match p.request_id() {
                        Some(key) => {
                            entry.0.insert(key);
                        }
                        None => entry.1 += 1,
                    }
                }
            }
        }
        for (name, ids) in &fin.jobs_by_name {
            let allowed = requests_by_name
                .get(name)
                .map_or(0, |(keys, anonymous)| keys.len() + anonymous);
            let Some(ops) = by_name.get(name) else {
                continue; // Not a job of this workload.
            };
            if ids.len() > allowed.max(1) {
                let mut events: Vec<Value> = ops.iter().flat_map(Pair::events).collect();
                events.extend(ids.iter().map(|id| fin.jobs[id].clone()));
                f.invalid(
                    format!(
                        "{} jobs named {name:?} from {allowed} create request(s)",
                        ids.len()
                    ),
                    events,
                );
            }
        }
    }
    f.finish(format!(
        "{requests} create/run request ids each had at most one effect"
    ))
}
