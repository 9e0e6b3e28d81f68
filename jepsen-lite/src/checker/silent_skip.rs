//! `no_silent_skip`: every fire time of a recurring job, from its first due time up
//! to its fire cursor (`last_fire_time_ms`: the scheduler claims to have handled
//! everything up to it), has a scheduled instance or a skip record covering it
//! (`fire_time_ms ..= through_ms`).
//!
//! The fire times are computed here, independently of raftjob's scheduler:
//! `cron` with croner (6 fields with seconds, as raftjob parses them) in the job's
//! time zone (chrono-tz), `fixed_rate` as `anchor + k * every_ms`, `once` as its
//! instant. A cron job whose zone changes its UTC offset inside the range is
//! `unknown` (raftjob's DST rules pick which local times fire; this checker does
//! not re-implement them), as are `fixed_delay` jobs (their times depend on when
//! earlier instances finished) and any other unsupported schedule.

use chrono::{DateTime, Offset, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use serde_json::Value;

use super::view::{self, FinalIndex};
use super::{Ctx, Findings};

pub(crate) const NAME: &str = "no_silent_skip";

/// Most fire times computed per job before the job is `unknown` (a per-second
/// cron over a long run is about 3,600 an hour).
const MAX_FIRE_TIMES: usize = 200_000;

/// `GET /jobs/{id}/skipped` returns at most this many by default; a list this
/// long may have been cut, and raftjob keeps only the newest 1,000 per job.
const SKIP_PAGE: usize = 100;
const SKIPS_KEPT: usize = 1000;
/// raftjob keeps 1,000 finished instances per job (`retention_per_job`), and the
/// harness lists at most 1,000 per job: with that many, any could be missing.
const INSTANCES_KEPT: usize = 1000;

pub(crate) fn check(ctx: &Ctx<'_>) -> super::CheckResult {
    let mut f = Findings::new(NAME);
    let Some(fin) = ctx.final_state.as_ref() else {
        f.unknown("final.json is missing", vec![]);
        return f.finish("");
    };
    let mut jobs = 0usize;
    let mut times = 0usize;
    for (id, job) in &fin.jobs {
        match check_job(*id, job, fin, &mut f) {
            Some(n) if n > 0 => {
                jobs += 1;
                times += n;
            }
            _ => {}
        }
    }
    f.finish(format!(
        "{times} fire times of {jobs} scheduled jobs (cron, fixed-rate, once) each have an instance or a skip record"
    ))
}

/// Checks one job; returns how many fire times were checked (None: not checkable).
fn check_job(id: u64, job: &Value, fin: &FinalIndex<'_>, f: &mut Findings) -> Option<usize> {
    let schedule = job.get("schedule")?;
    let kind = view::str_at(schedule, "type").unwrap_or("");
    if kind == "api" {
        return Some(0);
    }
    let Some(cursor) = view::i64_at(job, "last_fire_time_ms") else {
        return Some(0); // Never fired: nothing claimed handled.
    };
    let start = match job.get("start_at").and_then(Value::as_str) {
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => {
                f.unknown(
                    format!("job {id}: unreadable start_at {s:?}"),
                    vec![job.clone()],
                );
                return None;
            }
        },
        None => None,
    };
    let end_at = job
        .get("end_at")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis());
    let last = end_at.map_or(cursor, |e| e.min(cursor));
    let created = view::i64_at(job, "created_at_ms");
    let times = match kind {
        "cron" => {
            let from = start.or(created)?;
            match cron_times(schedule, from, last) {
                Ok(t) => t,
                Err(why) => {
                    f.unknown(format!("job {id}: {why}"), vec![job.clone()]);
                    return None;
                }
            }
        }
        "fixed_rate" => {
            let anchor = start.or(created)?;
            let every = view::i64_at(schedule, "every_ms").filter(|e| *e > 0)?;
            let n = if last < anchor {
                0
            } else {
                (last - anchor) / every + 1
            };
            if n as usize > MAX_FIRE_TIMES {
                f.unknown(
                    format!("job {id}: more than {MAX_FIRE_TIMES} fire times"),
                    vec![],
                );
                return None;
            }
            (0..n).map(|k| anchor + k * every).collect()
        }
        "once" => {
            let at = schedule
                .get("at")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis())?;
            if at <= last && start.is_none_or(|s| at >= s) {
                vec![at]
            } else {
                vec![]
            }
        }
        other => {
            f.unknown(
                format!("job {id}: schedule type {other:?} is not supported by this checker"),
                vec![job.clone()],
            );
            return None;
        }
    };

    let instances: Vec<i64> = fin
        .instances_of_job
        .get(&id)
        .into_iter()
        .flatten()
        .map(|i| fin.instances[i])
        .filter(|i| view::is_scheduled(i))
        .filter_map(|i| view::i64_at(i, "fire_time_ms"))
        .collect();
    let skips: Vec<(i64, i64)> = fin
        .state
        .skips
        .get(&id)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let from = view::i64_at(s, "fire_time_ms")?;
            Some((from, view::i64_at(s, "through_ms").unwrap_or(from)))
        })
        .collect();
    let skip_count = fin.state.skips.get(&id).map_or(0, Vec::len);
    // Records older than what the final state can show may have been cut.
    let skips_cut = skip_count == SKIP_PAGE || skip_count >= SKIPS_KEPT;
    let oldest_skip = skips.iter().map(|s| s.0).min();
    let instances_cut = fin.instances_of_job.get(&id).map_or(0, Vec::len) >= INSTANCES_KEPT;

    let ran: std::collections::BTreeSet<i64> = instances.iter().copied().collect();
    let mut missing = Vec::new();
    for t in &times {
        if ran.contains(t) || skips.iter().any(|(a, b)| a <= t && t <= b) {
            continue;
        }
        missing.push(*t);
    }
    let (maybe_cut, silent): (Vec<i64>, Vec<i64>) = missing
        .into_iter()
        .partition(|t| (skips_cut && oldest_skip.is_some_and(|o| *t < o)) || instances_cut);
    if !silent.is_empty() {
        let shown: Vec<i64> = silent.iter().take(10).copied().collect();
        let mut events = vec![job.clone()];
        events.push(serde_json::json!({"missing_fire_times_ms": shown}));
        f.invalid(
            format!(
                "job {id}: {} fire time(s) up to its cursor {cursor} have neither an instance nor a skip record (first {})",
                silent.len(),
                silent[0]
            ),
            events,
        );
    } else if !maybe_cut.is_empty() {
        f.unknown(
            format!(
                "job {id}: {} fire time(s) uncovered, but the final state may not list every instance / skip record",
                maybe_cut.len()
            ),
            vec![job.clone()],
        );
    }
    Some(times.len())
}

/// The cron fire times in `[from_ms, to_ms]` (whole seconds), in the job's zone.
fn cron_times(schedule: &Value, from_ms: i64, to_ms: i64) -> Result<Vec<i64>, String> {
    let expr = view::str_at(schedule, "expr").ok_or("cron schedule without expr")?;
    let tz: chrono_tz::Tz = match view::str_at(schedule, "timezone") {
        None => chrono_tz::UTC,
        Some(name) => name
            .parse()
            .map_err(|_| format!("unknown time zone {name:?}"))?,
    };
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron expression {expr:?}: {e:?}"))?;
    if to_ms < from_ms {
        return Ok(vec![]);
    }
    let offset_at = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| tz.offset_from_utc_datetime(&t.naive_utc()).fix())
    };
    // DST: the offset must be the same across the range (checked hourly).
    let first_offset = offset_at(from_ms);
    let mut probe = from_ms;
    while probe < to_ms {
        probe = (probe + 3_600_000).min(to_ms);
        if offset_at(probe) != first_offset {
            return Err(format!(
                "time zone {tz} changes its UTC offset inside the checked range (DST rules not modelled)"
            ));
        }
    }
    // The first whole second at or after `from_ms`.
    let first_ms = from_ms.div_euclid(1000) * 1000 + if from_ms % 1000 == 0 { 0 } else { 1000 };
    let start = Utc
        .timestamp_millis_opt(first_ms)
        .single()
        .ok_or("start out of range")?
        .with_timezone(&tz);
    let mut out = Vec::new();
    let mut next = cron
        .find_next_occurrence(&start, true)
        .map_err(|e| format!("{e:?}"))?;
    while next.timestamp_millis() <= to_ms {
        out.push(next.timestamp_millis());
        if out.len() > MAX_FIRE_TIMES {
            return Err(format!("more than {MAX_FIRE_TIMES} fire times"));
        }
        next = match cron.find_next_occurrence(&next, false) {
            Ok(t) => t,
            Err(_) => break,
        };
    }
    Ok(out)
}
