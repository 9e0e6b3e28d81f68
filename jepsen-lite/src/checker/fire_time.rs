//! `one_instance_per_fire_time`: the scheduler fires each (job, fire time) at most
//! once, across leader changes, so the final state holds at most one scheduled
//! instance per (job_id, fire_time_ms). Manual runs and retries are not counted.

use std::collections::BTreeMap;

use super::view;
use super::{Ctx, Findings};

pub(crate) const NAME: &str = "one_instance_per_fire_time";

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(fin) = ctx.final_state.as_ref() else {
        f.unknown("final.json is missing", vec![]);
        return f.finish("");
    };
    let mut seen: BTreeMap<(u64, i64), Vec<u64>> = BTreeMap::new();
    for (id, inst) in &fin.instances {
        if !view::is_scheduled(inst) {
            continue;
        }
        let (Some(job), Some(t)) = (
            view::u64_at(inst, "job_id"),
            view::i64_at(inst, "fire_time_ms"),
        ) else {
            f.unknown(
                format!("scheduled instance {id} has no job_id or fire_time_ms"),
                vec![(*inst).clone()],
            );
            continue;
        };
        seen.entry((job, t)).or_default().push(*id);
    }
    let keys = seen.len();
    for ((job, t), ids) in seen {
        if ids.len() > 1 {
            f.invalid(
                format!(
                    "job {job} has {} scheduled instances for fire time {t}: {ids:?}",
                    ids.len()
                ),
                ids.iter().map(|id| fin.instances[id].clone()).collect(),
            );
        }
    }
    f.finish(format!(
        "{keys} (job, fire time) pairs each have one scheduled instance"
    ))
}
