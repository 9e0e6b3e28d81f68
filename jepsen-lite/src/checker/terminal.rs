//! `terminal_after_heal`: every instance in the final state that was due before
//! the faults healed is terminal, and became terminal within
//! `RunMeta::terminal_bound_ms` of the heal.
//!
//! Due time: `fire_time_ms` for scheduled instances, else `not_before_ms`, else
//! `created_at_ms`. Instance times are the cluster's wall clock (ms since the
//! epoch), the heal is the harness's monotonic clock: they are compared through
//! [`super::WallClock`], with a tolerance of its uncertainty plus the largest
//! clock jump the nemesis applied plus 500 ms (the replicated clock is the
//! leader's wall clock, which a clock-jump fault shifts).
//!
//! A non-terminal instance is invalid only if the final state was read after the
//! bound had elapsed; read earlier, it is unknown.

use super::view::{self, Status};
use super::{ms, Ctx, Findings};

pub(crate) const NAME: &str = "terminal_after_heal";

/// Slack on top of the clock-mapping uncertainty, for timestamps taken on
/// different machines' clocks (here: processes) and rounding to ms.
const SLACK_MS: i64 = 500;

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(fin) = ctx.final_state.as_ref() else {
        f.unknown("final.json is missing", vec![]);
        return f.finish("");
    };
    let meta = &ctx.run.meta;
    let bound = meta.terminal_bound_ms as i64;
    if fin.instances.is_empty() {
        return f.finish("no instances");
    }
    let Some(clock) = ctx.clock else {
        f.unknown(
            "no mapping from the harness clock to the cluster's wall clock (no acknowledged create)",
            vec![],
        );
        return f.finish("");
    };
    let heal_wall = clock.wall_ms(meta.healed_ns);
    let tolerance = clock.uncertainty_ms + ctx.clock_skew_ms + SLACK_MS;
    let read_after_bound = ms(fin.state.read_ns) >= ms(meta.healed_ns) + bound;
    let mut due = 0usize;
    for (id, inst) in &fin.instances {
        let due_ms = view::i64_at(inst, "fire_time_ms")
            .or_else(|| view::i64_at(inst, "not_before_ms"))
            .or_else(|| view::i64_at(inst, "created_at_ms"));
        let Some(due_ms) = due_ms else {
            f.unknown(
                format!("instance {id} has no due time"),
                vec![(*inst).clone()],
            );
            continue;
        };
        if due_ms >= heal_wall {
            continue;
        }
        due += 1;
        let Some(status) = Status::of(inst) else {
            f.unknown(
                format!("instance {id} has no readable status"),
                vec![(*inst).clone()],
            );
            continue;
        };
        if !status.is_terminal() {
            let problem = format!(
                "instance {id} (due {} ms before heal) is still {:?} when the final state was read, {} ms after heal (bound {bound} ms)",
                heal_wall - due_ms,
                status,
                ms(fin.state.read_ns) - ms(meta.healed_ns)
            );
            if read_after_bound {
                f.invalid(problem, vec![(*inst).clone()]);
            } else {
                f.unknown(problem, vec![(*inst).clone()]);
            }
            continue;
        }
        match view::i64_at(inst, "finished_at_ms") {
            Some(done) if done > heal_wall + bound + tolerance => f.invalid(
                format!(
                    "instance {id} became terminal {} ms after heal (bound {bound} ms, tolerance {tolerance} ms)",
                    done - heal_wall
                ),
                vec![(*inst).clone()],
            ),
            Some(_) => {}
            None => f.unknown(
                format!("terminal instance {id} has no finished_at_ms"),
                vec![(*inst).clone()],
            ),
        }
    }
    f.finish(format!(
        "{due} instances due before heal were terminal within {bound} ms of it (clock tolerance {tolerance} ms)"
    ))
}
