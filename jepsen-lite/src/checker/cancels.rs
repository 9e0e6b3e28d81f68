//! `cancels_honoured`:
//!
//! - after a `StopInstance` ok, the instance ends `stopped` (or `canceled`): the
//!   stop was applied to a non-terminal instance (a stop of a terminal instance
//!   is refused with 409, a `Fail`), and a `stopping` instance only ends stopped.
//!   Still `stopping` in the final state is invalid if the final read came after
//!   the terminal bound, else unknown.
//! - after a `CancelJob` (disable or delete) ok, the scheduler creates no more
//!   instances of the job. A scheduled instance violates this if it was created
//!   (`created_at_ms`, the replicated clock at the `Fire`) after the cancel was
//!   applied: the applied time is the ok value's `updated_at_ms` when there is one
//!   (a disable returns the job); otherwise the cancel's ok time on the harness
//!   clock, mapped to the wall clock, plus a tolerance (mapping uncertainty, the
//!   largest clock jump, and 1 s).

use super::view::{self, Status};
use super::{ms, Ctx, Findings, Outcome};
use crate::history::OpFn;

pub(crate) const NAME: &str = "cancels_honoured";

const WALL_TOLERANCE_MS: i64 = 1000;

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(fin) = ctx.final_state.as_ref() else {
        f.unknown("final.json is missing", vec![]);
        return f.finish("");
    };
    let meta = &ctx.run.meta;
    let read_after_bound =
        ms(fin.state.read_ns) >= ms(meta.healed_ns) + meta.terminal_bound_ms as i64;
    let mut stops = 0usize;
    let mut cancels = 0usize;

    for p in ctx.ops_of(OpFn::StopInstance) {
        if p.outcome() != Outcome::Ok {
            continue;
        }
        let Some(id) = view::u64_at(&p.invoke.value, "instance_id") else {
            continue;
        };
        let Some(inst) = fin.instances.get(&id) else {
            continue; // no_lost_write reports it.
        };
        stops += 1;
        let mut events = p.events();
        events.push((*inst).clone());
        match Status::of(inst) {
            Some(Status::Stopped | Status::Canceled) => {}
            Some(Status::Stopping)
            | Some(Status::Running | Status::Dispatched)
            | Some(Status::WaitingDispatch) => {
                let problem = format!(
                    "instance {id} was stopped (ok) but is still {} in the final state",
                    view::str_at(inst, "status").unwrap_or("?")
                );
                if read_after_bound {
                    f.invalid(problem, events);
                } else {
                    f.unknown(problem, events);
                }
            }
            Some(s) => f.invalid(
                format!("instance {id} was stopped (ok) but ended {s:?}"),
                events,
            ),
            None => f.unknown(format!("instance {id} has no readable status"), events),
        }
    }

    for p in ctx.ops_of(OpFn::CancelJob) {
        let Some(v) = p.ok_value() else { continue };
        let Some(job) = view::u64_at(&p.invoke.value, "job_id") else {
            continue;
        };
        cancels += 1;
        let applied = view::i64_at(v, "updated_at_ms")
            .or_else(|| v.get("job").and_then(|j| view::i64_at(j, "updated_at_ms")));
        let (limit, how) = match (applied, ctx.clock, p.done) {
            (Some(t), _, _) => (t, "its applied time"),
            (None, Some(clock), Some(done)) => (
                clock.wall_ms(done.time_ns)
                    + clock.uncertainty_ms
                    + ctx.clock_skew_ms
                    + WALL_TOLERANCE_MS,
                "its acknowledgement (wall clock, with tolerance)",
            ),
            _ => {
                f.unknown(
                    format!("cancel of job {job}: no applied time and no clock mapping"),
                    p.events(),
                );
                continue;
            }
        };
        for id in fin.instances_of_job.get(&job).into_iter().flatten() {
            let inst = fin.instances[id];
            if !view::is_scheduled(inst) {
                continue;
            }
            if let Some(created) = view::i64_at(inst, "created_at_ms") {
                if created > limit {
                    let mut events = p.events();
                    events.push(inst.clone());
                    f.invalid(
                        format!(
                            "job {job} was cancelled (ok) but instance {id} was scheduled {} ms after {how}",
                            created - limit
                        ),
                        events,
                    );
                }
            }
        }
    }
    f.finish(format!(
        "{stops} acknowledged stops ended stopped; no instance was scheduled after any of {cancels} acknowledged cancels"
    ))
}
