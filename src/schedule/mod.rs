//! Time arithmetic for schedules: the cron dialect, time zones and daylight-saving
//! rules, and [`Timeline`], a job's schedule compiled for computing fire times. The
//! API validates cron expressions with exactly the code the scheduler uses to
//! compute fire times. Everything here is pure: no clock, no I/O.
//!
//! Dialect: 5 fields (minute granularity), 6 fields (leading seconds) or 7 fields
//! (trailing year); `L`, `W`, `#` and `?`; names for months and weekdays; POSIX
//! weekday numbers (0 or 7 = Sunday). Time zones are IANA names; the default is UTC.
//!
//! Daylight saving (see [`dst`] and `docs/scheduling.md`):
//! 1. a local time skipped by a spring-forward transition fires once at the
//!    transition ([`DstGapPolicy::FireAtTransition`]) or not at all
//!    ([`DstGapPolicy::Skip`]), however many skipped times match;
//! 2. a local time that occurs twice (fall back) fires once, at its first occurrence;
//! 3. except that an expression whose hour field matches every hour (`*`) follows
//!    elapsed time: it fires at every instant whose local time matches, so it keeps
//!    firing through the repeated hour and simply has no times inside a gap.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

pub use crate::state::DstGapPolicy;

pub mod dst;
pub mod timeline;

pub use timeline::{Timeline, MAX_UPCOMING};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    TimeZone(String),
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
    /// A schedule field out of range (a zero interval).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A parsed cron schedule in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
    /// The hour field matches all 24 hours: DST rule 3 (elapsed time) applies.
    every_hour: bool,
    /// Some day of some year matches the day-of-month, month and weekday fields.
    dates_possible: bool,
    /// The last year the year field allows.
    last_year: i32,
}

pub fn parse_timezone(tz: Option<&str>) -> Result<Tz, ScheduleError> {
    match tz {
        None => Ok(Tz::UTC),
        Some(name) => name
            .parse::<Tz>()
            .map_err(|_| ScheduleError::TimeZone(name.to_string())),
    }
}

impl CronSchedule {
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let fields = expr.split_whitespace().count();
        if !(5..=7).contains(&fields) {
            return Err(ScheduleError::Cron {
                expr: expr.into(),
                reason: format!("expected 5, 6 (with seconds) or 7 (with seconds and year) fields, found {fields}"),
            });
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Optional)
            .build();
        let cron = parser.parse(expr).map_err(|e| ScheduleError::Cron {
            expr: expr.into(),
            reason: format!("{e:?}"),
        })?;
        let tz = parse_timezone(tz)?;
        let every_hour = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
        let dates_possible = dates_possible(&cron);
        let last_year = (croner::YEAR_LOWER_LIMIT..croner::YEAR_UPPER_LIMIT)
            .rev()
            .find(|y| cron.pattern.year_match(*y).unwrap_or(false))
            .unwrap_or(croner::YEAR_LOWER_LIMIT - 1);
        Ok(Self {
            cron,
            tz,
            every_hour,
            dates_possible,
            last_year,
        })
    }

    /// The job's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Whether the hour field matches every hour, so the elapsed-time rule (DST
    /// rule 3) applies instead of rules 1 and 2.
    pub fn every_hour(&self) -> bool {
        self.every_hour
    }

    /// The first fire time strictly after `after`, with the default DST gap policy
    /// (fire at the transition). Always a whole second.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after_with(after, DstGapPolicy::FireAtTransition)
    }

    /// The first fire time strictly after `after` under the given DST gap policy.
    /// Always a whole second.
    pub fn next_after_with(
        &self,
        after: DateTime<Utc>,
        gap: DstGapPolicy,
    ) -> Option<DateTime<Utc>> {
        let secs = self.next_after_secs(after.timestamp(), gap)?;
        DateTime::from_timestamp(secs, 0)
    }

    /// The first fire time (Unix seconds) strictly after the Unix second `after`.
    pub(crate) fn next_after_secs(&self, after: i64, gap: DstGapPolicy) -> Option<i64> {
        if !self.dates_possible {
            return None;
        }
        let zoned = dst::ZonedCron {
            cron: &self.cron,
            tz: self.tz,
            every_hour: self.every_hour,
            last_year: self.last_year,
        };
        zoned.next_after(after, gap)
    }

    /// Parses and checks the expression fires at least once after `now`.
    pub fn validate(
        expr: &str,
        tz: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, ScheduleError> {
        let s = Self::parse(expr, tz)?;
        if s.next_after(now).is_none() {
            return Err(ScheduleError::NeverFires(expr.into()));
        }
        Ok(s)
    }
}

/// Whether the day-of-month, month and weekday fields match any date at all
/// (`0 0 0 30 2 *` never does). The Gregorian calendar has 14 kinds of year (the
/// weekday of 1 January, leap or not) and 2001..=2028 contains all of them, so
/// checking those years decides it; croner alone would search day by day up to the
/// year 5000 before giving up.
fn dates_possible(cron: &Cron) -> bool {
    (2001..=2028).any(|year| {
        (1..=12u32).any(|month| {
            cron.pattern.month_match(month).unwrap_or(false)
                && (1..=31u32).any(|day| {
                    NaiveDate::from_ymd_opt(year, month, day).is_some_and(|d| {
                        d.month() == month
                            && cron.pattern.day_match(year, month, day).unwrap_or(false)
                    })
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn accepts_the_documented_forms() {
        for expr in [
            "*/5 * * * *",
            "0 */1 * * * *",
            "*/1 * * * * *",
            "0 0 12 * * ?",
            "0 0 0 L * ?",
            "0 0 9 ? * MON#2",
            "0 0 9 15W * ?",
            "0 30 2 * * * 2030",
        ] {
            CronSchedule::parse(expr, None).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }

    #[test]
    fn refuses_bad_expressions() {
        for expr in ["", "* * *", "61 * * * * *", "not a cron", "* * * * * * * *"] {
            assert!(
                CronSchedule::parse(expr, None).is_err(),
                "{expr} should be refused"
            );
        }
    }

    #[test]
    fn refuses_unknown_time_zones() {
        let e = CronSchedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(matches!(e, ScheduleError::TimeZone(_)));
    }

    #[test]
    fn seconds_field_fires_every_second() {
        let s = CronSchedule::parse("* * * * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:00:01Z"))
        );
    }

    #[test]
    fn evaluates_in_the_job_time_zone() {
        let s = CronSchedule::parse("0 0 9 * * *", Some("Europe/Berlin")).unwrap();
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(
            s.next_after(at("2026-01-10T00:00:00Z")),
            Some(Utc.with_ymd_and_hms(2026, 1, 10, 8, 0, 0).unwrap())
        );
    }

    #[test]
    fn a_year_in_the_past_never_fires() {
        let e = CronSchedule::validate("0 0 0 1 1 * 2001", None, at("2026-01-01T00:00:00Z"))
            .unwrap_err();
        assert!(matches!(e, ScheduleError::NeverFires(_)), "{e}");
    }

    #[test]
    fn impossible_dates_never_fire_and_are_refused_quickly() {
        let started = std::time::Instant::now();
        for expr in [
            "0 0 0 30 2 *",
            "0 0 0 31 4 *",
            "0 0 0 31 2,4,6,9,11 *",
            "0 0 0 30 FEB ?",
        ] {
            let e = CronSchedule::validate(expr, None, at("2026-01-01T00:00:00Z")).unwrap_err();
            assert!(matches!(e, ScheduleError::NeverFires(_)), "{expr}: {e}");
        }
        // 29 February fires (in leap years), so does the 31st of some months.
        for expr in ["0 0 0 29 2 *", "0 0 0 31 * *", "0 0 0 29 2 * 2028"] {
            CronSchedule::validate(expr, None, at("2026-01-01T00:00:00Z"))
                .unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
        // A 29 February in a year that is not a leap year never comes.
        let e = CronSchedule::validate("0 0 0 29 2 * 2027", None, at("2026-01-01T00:00:00Z"))
            .unwrap_err();
        assert!(matches!(e, ScheduleError::NeverFires(_)), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn fire_times_are_whole_seconds_after_a_fractional_input() {
        let s = CronSchedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00.500Z")),
            Some(at("2026-01-01T00:05:00Z"))
        );
    }

    #[test]
    fn the_hour_field_decides_the_elapsed_time_rule() {
        for (expr, every) in [
            ("* * * * * *", true),
            ("0 */15 * * * *", true),
            ("*/5 * * * *", true),
            ("0 0 0-23 * * *", true),
            ("0 0 */1 * * *", true),
            ("0 30 2 * * *", false),
            ("0 */15 2 * * *", false),
            ("0 0 */2 * * *", false),
            ("0 0 0-22 * * *", false),
        ] {
            assert_eq!(
                CronSchedule::parse(expr, None).unwrap().every_hour(),
                every,
                "{expr}"
            );
        }
    }
}
