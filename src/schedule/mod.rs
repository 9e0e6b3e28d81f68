//! Time arithmetic for schedules: the cron dialect and time zones. The API validates
//! cron expressions with exactly the parser the scheduler uses to compute fire times.
//!
//! Dialect: 5 fields (minute granularity), 6 fields (leading seconds) or 7 fields
//! (trailing year); `L`, `W`, `#` and `?`; names for months and weekdays; POSIX
//! weekday numbers (0 or 7 = Sunday). Time zones are IANA names; the default is UTC.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    TimeZone(String),
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
}

/// A parsed cron schedule in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
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
        Ok(Self {
            cron,
            tz: parse_timezone(tz)?,
        })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
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
}
