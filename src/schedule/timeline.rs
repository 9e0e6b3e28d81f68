//! [`Timeline`]: a job's schedule compiled for computing fire times.
//!
//! Pure: no clock. Every question names the instant it is asked about (`after_ms`);
//! `None` there means "from the beginning", the job's start time. Times are
//! milliseconds since the Unix epoch (UTC).

use super::{CronSchedule, DstGapPolicy, ScheduleError};
use crate::state::{JobSpec, Millis, Schedule};

/// Most fire times [`Timeline::upcoming`] returns.
pub const MAX_UPCOMING: usize = 1000;

/// The earliest instant a cron search starts from (the year 3). Cron fire times
/// before it are not computed; croner's calendar starts at the year 1.
const CRON_FLOOR_MS: Millis = -62_072_524_800_000;

/// A job's schedule compiled for computing fire times. Pure: no clock.
#[derive(Debug, Clone)]
pub struct Timeline {
    kind: Kind,
    /// No fire before this (inclusive): `start_at`, else the creation time (not
    /// for `once`, whose time is explicit).
    start_ms: Option<Millis>,
    /// No fire after this (inclusive): `end_at`.
    end_ms: Option<Millis>,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron {
        schedule: Box<CronSchedule>,
        gap: DstGapPolicy,
    },
    FixedRate {
        anchor: Millis,
        every: Millis,
    },
    FixedDelay {
        delay: Millis,
    },
    Once {
        at: Millis,
    },
    Api,
}

fn positive(field: &'static str, value: u64) -> Result<Millis, ScheduleError> {
    if value == 0 {
        return Err(ScheduleError::Invalid {
            field,
            reason: "must be at least 1".into(),
        });
    }
    Ok(Millis::try_from(value).unwrap_or(Millis::MAX))
}

impl Timeline {
    /// `created_at_ms` is the job's creation time: the anchor of fixed-rate jobs
    /// without `start_at`, and the start of cron and fixed-delay jobs without one.
    pub fn compile(spec: &JobSpec, created_at_ms: Millis) -> Result<Timeline, ScheduleError> {
        let start_at = spec.start_at.map(|t| t.timestamp_millis());
        let end_ms = spec.end_at.map(|t| t.timestamp_millis());
        let start = start_at.unwrap_or(created_at_ms);
        let (kind, start_ms) = match &spec.schedule {
            Schedule::Cron {
                expr,
                timezone,
                dst_gap,
            } => (
                Kind::Cron {
                    schedule: Box::new(CronSchedule::parse(expr, timezone.as_deref())?),
                    gap: *dst_gap,
                },
                Some(start),
            ),
            Schedule::FixedRate { every_ms } => (
                Kind::FixedRate {
                    anchor: start,
                    every: positive("schedule.every_ms", *every_ms)?,
                },
                Some(start),
            ),
            Schedule::FixedDelay { delay_ms } => (
                Kind::FixedDelay {
                    delay: positive("schedule.delay_ms", *delay_ms)?,
                },
                Some(start),
            ),
            Schedule::Once { at } => (
                Kind::Once {
                    at: at.timestamp_millis(),
                },
                start_at,
            ),
            Schedule::Api => (Kind::Api, start_at),
        };
        Ok(Timeline {
            kind,
            start_ms,
            end_ms,
        })
    }

    /// The first fire time strictly after `after_ms` (None = the first fire time
    /// ever, i.e. >= start), respecting start_at (no fire before it) and end_at (no
    /// fire after it).
    ///
    /// - Cron: cron times in the job's time zone under the DST rules of
    ///   [`super::dst`]; always whole seconds.
    /// - Fixed rate: `anchor + k * every_ms`, k >= 0, where the anchor is `start_at`
    ///   or the creation time; computed, never accumulated, so it never drifts.
    /// - Once: `at`, if it is after `after_ms` (and within start and end).
    /// - Api and fixed delay: None (see [`Timeline::fixed_delay_next`]).
    pub fn next_after(&self, after_ms: Option<Millis>) -> Option<Millis> {
        let floor = self.floor(after_ms);
        let next = match &self.kind {
            Kind::Cron { schedule, gap } => {
                let from = floor.unwrap_or(CRON_FLOOR_MS).max(CRON_FLOOR_MS);
                let secs = schedule.next_after_secs(from.div_euclid(1000), *gap)?;
                secs.checked_mul(1000)?
            }
            Kind::FixedRate { anchor, every } => fixed_rate_next(*anchor, *every, floor)?,
            Kind::Once { at } => {
                if floor.is_some_and(|f| *at <= f) {
                    return None;
                }
                *at
            }
            Kind::FixedDelay { .. } | Kind::Api => return None,
        };
        self.within_end(next)
    }

    /// The next fire time of a fixed-delay job: `previous_finished_ms + delay_ms`
    /// (but not before the start), or the start when there was no previous
    /// instance; None if that is not strictly after `after_ms` (the previous
    /// instance has not finished since) or is after `end_at`. None for other kinds.
    pub fn fixed_delay_next(
        &self,
        previous_finished_ms: Option<Millis>,
        after_ms: Option<Millis>,
    ) -> Option<Millis> {
        let Kind::FixedDelay { delay } = self.kind else {
            return None;
        };
        let start = self.start_ms.unwrap_or(Millis::MIN);
        let next = match previous_finished_ms {
            Some(finished) => finished.saturating_add(delay).max(start),
            None => start,
        };
        if after_ms.is_some_and(|a| next <= a) {
            return None;
        }
        self.within_end(next)
    }

    /// Up to `count` (at most [`MAX_UPCOMING`]) fire times strictly after
    /// `after_ms`, in order: the schedule preview. Empty for api and fixed-delay
    /// jobs, whose times are not known in advance.
    pub fn upcoming(&self, after_ms: Option<Millis>, count: usize) -> Vec<Millis> {
        let count = count.min(MAX_UPCOMING);
        let mut out = Vec::with_capacity(count.min(64));
        let mut cursor = after_ms;
        while out.len() < count {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            out.push(next);
            cursor = Some(next);
        }
        out
    }

    /// All fire times in (`after_ms`, `until_ms`], at most `limit` of them (the
    /// oldest), plus whether more existed in that interval: misfire catch-up.
    pub fn due_between(
        &self,
        after_ms: Option<Millis>,
        until_ms: Millis,
        limit: usize,
    ) -> (Vec<Millis>, bool) {
        let mut out = Vec::new();
        let mut cursor = after_ms;
        while let Some(next) = self.next_after(cursor) {
            if next > until_ms {
                break;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(next);
            cursor = Some(next);
        }
        (out, false)
    }

    pub fn is_fixed_delay(&self) -> bool {
        matches!(self.kind, Kind::FixedDelay { .. })
    }

    /// No fire before this instant (inclusive).
    pub fn start_ms(&self) -> Option<Millis> {
        self.start_ms
    }

    /// No fire after this instant (inclusive).
    pub fn end_ms(&self) -> Option<Millis> {
        self.end_ms
    }

    /// The exclusive lower bound of the next fire: after `after_ms` and not
    /// before the start.
    fn floor(&self, after_ms: Option<Millis>) -> Option<Millis> {
        let before_start = self.start_ms.map(|s| s.saturating_sub(1));
        match (after_ms, before_start) {
            (Some(a), Some(s)) => Some(a.max(s)),
            (a, s) => a.or(s),
        }
    }

    fn within_end(&self, t: Millis) -> Option<Millis> {
        match self.end_ms {
            Some(end) if t > end => None,
            _ => Some(t),
        }
    }
}

/// The first `anchor + k * every` (k >= 0) strictly after `floor`.
fn fixed_rate_next(anchor: Millis, every: Millis, floor: Option<Millis>) -> Option<Millis> {
    let floor = match floor {
        Some(f) if f >= anchor => f,
        _ => return Some(anchor),
    };
    let k = (i128::from(floor) - i128::from(anchor)) / i128::from(every) + 1;
    Millis::try_from(i128::from(anchor) + k * i128::from(every)).ok()
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
