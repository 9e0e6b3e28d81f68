//! Cron fire times in a time zone with daylight saving: the rules, on top of croner.
//!
//! croner finds the next local (wall-clock) time that matches a pattern. Here it is
//! only ever asked about naive local times (a `DateTime<Utc>` standing for a wall
//! clock reading, so croner never sees a transition), and this module maps local
//! times to instants with the tz database and these rules:
//!
//! 1. **Gap** (spring forward: 02:00 → 03:00 in Berlin). A matching local time that
//!    does not exist fires once at the transition, the first instant after the gap
//!    ([`DstGapPolicy::FireAtTransition`], the default), or not at all
//!    ([`DstGapPolicy::Skip`]). However many matching times the gap swallows
//!    (`0 */15 2 * * *`), there is one fire, and a time right after the gap that
//!    matches too (03:00) is the same fire.
//! 2. **Overlap** (fall back: 03:00 → 02:00). A matching local time that occurs
//!    twice fires once, at its first occurrence.
//! 3. **Every hour**. An expression whose hour field matches all 24 hours follows
//!    elapsed time instead: it fires at every instant whose local reading matches.
//!    Through the repeated hour it fires in both passes (`0 */15 * * * *` fires every
//!    15 minutes of real time all night, `* * * * * *` every second), and local
//!    times inside a gap do not exist, so it does not fire for them (its next
//!    matching time comes within the hour anyway).
//!
//! What croner 3.0.1 does by itself (`Cron::find_next_occurrence` on a zoned time;
//! pinned by the `croner_by_itself_*` tests below):
//! - gap: a "fixed-time" pattern (single second, minute and hour values) moves to the
//!   first time after the gap, like rule 1; any other pattern (`0 */15 2 * * *`)
//!   silently drops the skipped times, and there is no skip policy;
//! - overlap: fixed-time patterns fire at the first occurrence, but asked from an
//!   instant in the second pass they return the first occurrence, which lies
//!   *before* the instant asked about; other patterns fire in the first pass only
//!   when chained through `find_next_occurrence` (its iterator yields both passes),
//!   so `0 */15 * * * *` and `* * * * * *` pause for an hour;
//! - a start time with a fraction of a second gives fire times with that same
//!   fraction;
//! - a pattern whose dates never occur (`0 0 0 30 2 *`) is searched day by day up
//!   to the year 5000 before it gives up (a quarter of a second).
//!
//! All searches are bounded: croner stops at the year 5000 and the last year of the
//! year field, impossible dates are caught when parsing, and the loops here stop
//! after [`MAX_STEPS`] skipped gaps.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

pub use crate::state::DstGapPolicy;

/// Most gaps one search steps over (a `Skip` pattern whose every time falls in a
/// gap, for example `0 30 2 * 3 0L` in Berlin); beyond, it reports no fire time.
pub const MAX_STEPS: usize = 400;

/// The longest gap or overlap looked for (Samoa skipped a whole day in 2011).
const MAX_SHIFT_SECS: i64 = 3 * 24 * 3600;

/// A cron pattern in a time zone, borrowed from a [`super::CronSchedule`].
pub(crate) struct ZonedCron<'a> {
    pub cron: &'a Cron,
    pub tz: Tz,
    pub every_hour: bool,
    pub last_year: i32,
}

/// How a local time maps to instants (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Single(i64),
    /// Occurs twice: the first and the second pass.
    Twice(i64, i64),
    /// Skipped by a transition.
    Gap,
}

fn naive(secs: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp(secs, 0).map(|d| d.naive_utc())
}

fn one_second() -> Duration {
    Duration::seconds(1)
}

/// From `from`, where `inside` holds, the first local time in `direction` (+1 or
/// -1 second) where it no longer holds: exponential steps, then bisection.
fn boundary(
    from: NaiveDateTime,
    direction: i64,
    inside: impl Fn(NaiveDateTime) -> bool,
) -> Option<NaiveDateTime> {
    let at = |steps: i64| from.checked_add_signed(Duration::seconds(direction * steps));
    // inside at `lo` steps, outside at `hi` steps.
    let mut lo = 0i64;
    let mut hi = 1i64;
    while inside(at(hi)?) {
        lo = hi;
        hi *= 2;
        if hi > MAX_SHIFT_SECS {
            return None;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if inside(at(mid)?) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    at(hi)
}

impl ZonedCron<'_> {
    /// The first fire time (Unix seconds) strictly after the Unix second `after`.
    pub fn next_after(&self, after: i64, gap: DstGapPolicy) -> Option<i64> {
        if self.every_hour {
            self.next_elapsed(after)
        } else {
            self.next_wall_clock(after, gap)
        }
    }

    fn resolve(&self, local: NaiveDateTime) -> Local {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Local::Single(t.timestamp()),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.timestamp(), b.timestamp());
                Local::Twice(a.min(b), a.max(b))
            }
            LocalResult::None => Local::Gap,
        }
    }

    /// The wall-clock reading at an instant.
    fn local_of(&self, secs: i64) -> Option<NaiveDateTime> {
        let utc = naive(secs)?;
        let offset = self
            .tz
            .offset_from_utc_datetime(&utc)
            .fix()
            .local_minus_utc();
        utc.checked_add_signed(Duration::seconds(offset.into()))
    }

    /// The first matching local time strictly after `local` (croner on naive time).
    fn next_match(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        if local.year() > self.last_year {
            return None;
        }
        let start = Utc.from_utc_datetime(&local);
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.naive_utc())
    }

    /// The first existing local time after `local`, which lies in a gap: the wall
    /// clock reading right after the transition.
    fn gap_end(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        boundary(local, 1, |t| self.resolve(t) == Local::Gap)
    }

    /// The first local time of the overlap that contains `local`.
    fn overlap_start(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let twice = |t| matches!(self.resolve(t), Local::Twice(..));
        boundary(local, -1, twice).map(|outside| outside + one_second())
    }

    /// Rules 1 and 2: each matching local time fires once, at its first occurrence;
    /// matching times in a gap fire once at the transition or not at all.
    fn next_wall_clock(&self, after: i64, gap: DstGapPolicy) -> Option<i64> {
        let mut local = self.local_of(after)?;
        if let Local::Twice(first, second) = self.resolve(local) {
            if after == second && first < second {
                // In the second pass of an overlap: every repeated local time fired
                // in the first pass; continue after the overlap.
                let twice = |t| matches!(self.resolve(t), Local::Twice(..));
                local = boundary(local, 1, twice)? - one_second();
            }
        }
        for _ in 0..MAX_STEPS {
            let candidate = self.next_match(local)?;
            let fire = match self.resolve(candidate) {
                Local::Single(t) | Local::Twice(t, _) => t,
                Local::Gap => {
                    let end = self.gap_end(candidate)?;
                    match gap {
                        DstGapPolicy::FireAtTransition => match self.resolve(end) {
                            Local::Single(t) | Local::Twice(t, _) => t,
                            Local::Gap => return None,
                        },
                        DstGapPolicy::Skip => {
                            local = end - one_second();
                            continue;
                        }
                    }
                }
            };
            if fire > after {
                return Some(fire);
            }
            // Not reached with a consistent tz database; move on rather than loop.
            local = candidate;
        }
        None
    }

    /// Rule 3: every instant whose local reading matches, in real-time order.
    fn next_elapsed(&self, after: i64) -> Option<i64> {
        let local = self.local_of(after)?;
        if let Local::Twice(first, second) = self.resolve(local) {
            if after == first && first < second {
                return self.next_elapsed_in_first_pass(after, local, second - first);
            }
        }
        self.next_elapsed_from(after, local)
    }

    fn next_elapsed_from(&self, after: i64, mut local: NaiveDateTime) -> Option<i64> {
        for _ in 0..MAX_STEPS {
            let candidate = self.next_match(local)?;
            let fire = match self.resolve(candidate) {
                Local::Single(t) => t,
                Local::Twice(first, second) => {
                    if first > after {
                        first
                    } else {
                        second
                    }
                }
                Local::Gap => {
                    local = self.gap_end(candidate)? - one_second();
                    continue;
                }
            };
            if fire > after {
                return Some(fire);
            }
            local = candidate;
        }
        None
    }

    /// `after` is in the first pass of an overlap, reading `local`; the overlap is
    /// `shift` seconds long. Real time goes on through the rest of the first pass,
    /// then the whole second pass, then past the overlap.
    fn next_elapsed_in_first_pass(
        &self,
        after: i64,
        local: NaiveDateTime,
        shift: i64,
    ) -> Option<i64> {
        let start = self.overlap_start(local)?;
        let end = start.checked_add_signed(Duration::seconds(shift))?;
        // The rest of the first pass.
        if let Some(candidate) = self.next_match(local).filter(|c| *c < end) {
            if let Local::Twice(first, _) = self.resolve(candidate) {
                return Some(first);
            }
        }
        // The second pass.
        if let Some(candidate) = self.next_match(start - one_second()).filter(|c| *c < end) {
            if let Local::Twice(_, second) = self.resolve(candidate) {
                return Some(second);
            }
        }
        // Past the overlap: continue from the last second of the second pass.
        let last = end - one_second();
        match self.resolve(last) {
            Local::Twice(_, second) => self.next_elapsed_from(second.max(after), last),
            _ => self.next_elapsed_from(after, last),
        }
    }
}

#[cfg(test)]
mod tests {
    //! What croner does by itself around transitions, pinned so that an upgrade that
    //! changes it is noticed. The corrected behaviour is tested in `timeline`.

    use chrono::{DateTime, Utc};
    use chrono_tz::Tz;
    use croner::parser::{CronParser, Seconds, Year};

    fn croner_chain(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Optional)
            .build()
            .parse(expr)
            .unwrap();
        let tz: Tz = tz.parse().unwrap();
        let mut t = DateTime::parse_from_rfc3339(from)
            .unwrap()
            .with_timezone(&Utc);
        let mut out = Vec::new();
        for _ in 0..n {
            let Ok(next) = cron.find_next_occurrence(&t.with_timezone(&tz), false) else {
                break;
            };
            t = next.with_timezone(&Utc);
            out.push(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        out
    }

    #[test]
    fn croner_by_itself_moves_a_fixed_time_out_of_a_gap() {
        // Berlin 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00Z.
        assert_eq!(
            croner_chain("0 30 2 * * *", "Europe/Berlin", "2026-03-28T23:00:00Z", 2),
            ["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]
        );
        // New York 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z.
        assert_eq!(
            croner_chain(
                "0 30 2 * * *",
                "America/New_York",
                "2026-03-08T05:00:00Z",
                1
            ),
            ["2026-03-08T07:00:00.000Z"]
        );
        // Lord Howe 2026-10-04: 02:00 -> 02:30 (+10:30 -> +11) at 15:30Z.
        assert_eq!(
            croner_chain(
                "0 0 2 * * *",
                "Australia/Lord_Howe",
                "2026-10-03T12:00:00Z",
                1
            ),
            ["2026-10-03T15:30:00.000Z"]
        );
    }

    #[test]
    fn croner_by_itself_drops_skipped_times_of_other_patterns() {
        // Nothing on 2026-03-29: the four times at 02:xx are dropped.
        assert_eq!(
            croner_chain("0 */15 2 * * *", "Europe/Berlin", "2026-03-28T23:00:00Z", 1),
            ["2026-03-30T00:00:00.000Z"]
        );
    }

    #[test]
    fn croner_by_itself_answers_before_the_instant_in_a_second_pass() {
        // Berlin 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z. Asked from 02:10 CET
        // (01:10Z, second pass), croner answers 02:30 CEST = 00:30Z, in the past.
        assert_eq!(
            croner_chain("0 30 2 * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", 1),
            ["2026-10-25T00:30:00.000Z"]
        );
    }

    #[test]
    fn croner_by_itself_pauses_frequent_patterns_for_the_repeated_hour() {
        // After 02:45 CEST (00:45Z) the next is 03:00 CET (02:00Z): 75 minutes.
        assert_eq!(
            croner_chain("0 */15 * * * *", "Europe/Berlin", "2026-10-25T00:40:00Z", 2),
            ["2026-10-25T00:45:00.000Z", "2026-10-25T02:00:00.000Z"]
        );
        assert_eq!(
            croner_chain("* * * * * *", "Europe/Berlin", "2026-10-25T00:59:58Z", 2),
            ["2026-10-25T00:59:59.000Z", "2026-10-25T02:00:00.000Z"]
        );
        // And an hour-restricted interval pattern fires in the first pass only.
        assert_eq!(
            croner_chain("0 */30 2 * * *", "Europe/Berlin", "2026-10-24T23:50:00Z", 3),
            [
                "2026-10-25T00:00:00.000Z",
                "2026-10-25T00:30:00.000Z",
                "2026-10-26T01:00:00.000Z"
            ]
        );
    }

    #[test]
    fn croner_by_itself_keeps_the_fraction_of_a_second() {
        assert_eq!(
            croner_chain("*/5 * * * *", "UTC", "2026-01-01T00:00:00.500Z", 1),
            ["2026-01-01T00:05:00.500Z"]
        );
    }
}
