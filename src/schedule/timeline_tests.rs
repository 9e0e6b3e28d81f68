//! Table tests of [`Timeline`]: the cron dialect, time zones, the DST rules, fixed
//! rate, once, api, fixed delay, start and end bounds, `upcoming` and `due_between`.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::json;

use super::*;
use crate::state::JobSpec;

const SKIP: DstGapPolicy = DstGapPolicy::Skip;
const FIRE: DstGapPolicy = DstGapPolicy::FireAtTransition;

fn ms(s: &str) -> Millis {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

fn iso(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn isos(v: &[Millis]) -> Vec<String> {
    v.iter().map(|t| iso(*t)).collect()
}

/// A job spec from JSON (so fields added to `JobSpec` later keep their defaults).
fn spec(schedule: serde_json::Value, start: Option<&str>, end: Option<&str>) -> JobSpec {
    let mut v = json!({
        "app": "app",
        "name": "job",
        "schedule": schedule,
        "processor": { "type": "shell", "command": "true" },
    });
    if let Some(s) = start {
        v["start_at"] = json!(s);
    }
    if let Some(e) = end {
        v["end_at"] = json!(e);
    }
    serde_json::from_value(v).unwrap()
}

fn cron_spec(expr: &str, tz: Option<&str>, gap: DstGapPolicy) -> serde_json::Value {
    let mut v = json!({ "type": "cron", "expr": expr, "dst_gap": gap });
    if let Some(tz) = tz {
        v["timezone"] = json!(tz);
    }
    v
}

/// A cron timeline of a job created in 1970, without start or end.
fn cron(expr: &str, tz: Option<&str>, gap: DstGapPolicy) -> Timeline {
    Timeline::compile(&spec(cron_spec(expr, tz, gap), None, None), 0)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

fn next_n(t: &Timeline, after: &str, n: usize) -> Vec<String> {
    isos(&t.upcoming(Some(ms(after)), n))
}

// ---------------------------------------------------------------- the dialect

#[test]
fn cron_fields_table() {
    // (expression, after, the next fire times in UTC)
    let table: &[(&str, &str, &[&str])] = &[
        // 5 fields: minute granularity.
        (
            "*/5 * * * *",
            "2026-01-01T00:02:00Z",
            &["2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z"],
        ),
        (
            "30 9 * * MON-FRI",
            "2026-01-01T10:00:00Z",
            &["2026-01-02T09:30:00Z", "2026-01-05T09:30:00Z"],
        ),
        (
            "0 0 1 1 *",
            "2026-06-01T00:00:00Z",
            &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"],
        ),
        // 6 fields: leading seconds.
        (
            "*/20 * * * * *",
            "2026-01-01T00:00:50Z",
            &[
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:01:20Z",
                "2026-01-01T00:01:40Z",
            ],
        ),
        (
            "15 30 12 * * *",
            "2026-01-01T12:30:15Z",
            &["2026-01-02T12:30:15Z"],
        ),
        // 7 fields: trailing year; nothing after the last year.
        (
            "0 0 12 1 1 * 2027",
            "2026-03-01T00:00:00Z",
            &["2027-01-01T12:00:00Z"],
        ),
        (
            "0 0 0 1 1 * 2027-2028",
            "2026-03-01T00:00:00Z",
            &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"],
        ),
        // L: the last day of the month (29 February in a leap year).
        (
            "0 0 0 L * ?",
            "2026-01-15T00:00:00Z",
            &[
                "2026-01-31T00:00:00Z",
                "2026-02-28T00:00:00Z",
                "2026-03-31T00:00:00Z",
            ],
        ),
        (
            "0 0 0 L 2 ?",
            "2027-06-01T00:00:00Z",
            &["2028-02-29T00:00:00Z"],
        ),
        // 5L: the last Friday of the month.
        (
            "0 0 18 ? * 5L",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-30T18:00:00Z",
                "2026-02-27T18:00:00Z",
                "2026-03-27T18:00:00Z",
            ],
        ),
        // W: the weekday nearest the 15th (15 Feb 2026 is a Sunday: Monday the 16th).
        (
            "0 0 9 15W * ?",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-15T09:00:00Z",
                "2026-02-16T09:00:00Z",
                "2026-03-16T09:00:00Z",
                "2026-04-15T09:00:00Z",
            ],
        ),
        // 1W never leaves the month: 1 Aug 2026 is a Saturday, so Monday the 3rd.
        (
            "0 0 9 1W 8 ?",
            "2026-01-01T00:00:00Z",
            &["2026-08-03T09:00:00Z"],
        ),
        // #: the second Monday.
        (
            "0 0 9 ? * MON#2",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-12T09:00:00Z",
                "2026-02-09T09:00:00Z",
                "2026-03-09T09:00:00Z",
            ],
        ),
        // ? is * in the day fields.
        (
            "0 0 12 1 * ?",
            "2026-01-01T12:00:00Z",
            &["2026-02-01T12:00:00Z", "2026-03-01T12:00:00Z"],
        ),
        // Names, and Sunday as 0, 7 or SUN.
        (
            "0 8 * JAN SUN",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-04T08:00:00Z",
                "2026-01-11T08:00:00Z",
                "2026-01-18T08:00:00Z",
            ],
        ),
        (
            "0 8 * JAN 0",
            "2026-01-01T00:00:00Z",
            &["2026-01-04T08:00:00Z"],
        ),
        (
            "0 8 * JAN 7",
            "2026-01-01T00:00:00Z",
            &["2026-01-04T08:00:00Z"],
        ),
        (
            "0 8 * jan sun",
            "2026-01-01T00:00:00Z",
            &["2026-01-04T08:00:00Z"],
        ),
        // Day of month and day of week both restricted: either matches (Vixie)...
        (
            "0 0 13 * FRI",
            "2026-02-01T00:00:00Z",
            &[
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
                "2026-02-20T00:00:00Z",
            ],
        ),
        // ... unless the weekday has a + prefix: both must match (Friday the 13th).
        (
            "0 0 13 * +FRI",
            "2026-01-01T00:00:00Z",
            &[
                "2026-02-13T00:00:00Z",
                "2026-03-13T00:00:00Z",
                "2026-11-13T00:00:00Z",
            ],
        ),
    ];
    for (expr, after, want) in table {
        let t = cron(expr, None, FIRE);
        let got = next_n(&t, after, want.len() + 1);
        let want: Vec<String> = want.iter().map(|s| iso(ms(s))).collect();
        let extra_ok = got.len() == want.len() + 1 && got[..want.len()] == want[..];
        let year_limited = expr.split_whitespace().count() == 7;
        if year_limited {
            assert_eq!(got, want, "{expr} after {after}");
        } else {
            assert!(extra_ok, "{expr} after {after}: got {got:?}, want {want:?}");
        }
    }
}

#[test]
fn never_firing_expressions_return_none_quickly() {
    let started = std::time::Instant::now();
    for expr in [
        "0 0 0 30 2 *",
        "0 0 0 31 4 ?",
        "0 0 0 1 1 * 2001",
        "0 0 0 29 2 * 2027",
    ] {
        let t = cron(expr, Some("Europe/Berlin"), FIRE);
        assert_eq!(
            t.next_after(Some(ms("2026-01-01T00:00:00Z"))),
            None,
            "{expr}"
        );
        assert_eq!(
            t.due_between(
                Some(ms("2026-01-01T00:00:00Z")),
                ms("2030-01-01T00:00:00Z"),
                10
            ),
            (vec![], false)
        );
    }
    // Every matching local time falls in a DST gap (the last Sunday of March at
    // 02:30 in Berlin): with `skip` it does not fire until the tz database stops
    // having transitions (2100), 74 skipped gaps later.
    let t = cron("0 30 2 ? 3 0L", Some("Europe/Berlin"), SKIP);
    assert_eq!(
        t.next_after(Some(ms("2026-01-01T00:00:00Z"))).map(iso),
        Some("2100-03-28T01:30:00Z".to_string())
    );
    let t = cron("0 30 2 ? 3 0L", Some("Europe/Berlin"), FIRE);
    assert_eq!(
        next_n(&t, "2026-01-01T00:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2027-03-28T01:00:00Z"]
    );
    // Fires until its last year, then never.
    let t = cron("0 0 0 1 1 * 2027", None, FIRE);
    assert_eq!(
        t.next_after(Some(ms("2026-06-01T00:00:00Z"))),
        Some(ms("2027-01-01T00:00:00Z"))
    );
    assert_eq!(t.next_after(Some(ms("2027-01-01T00:00:00Z"))), None);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn millisecond_inputs_give_whole_seconds_strictly_after() {
    let t = cron("* * * * * *", None, FIRE);
    for (after, want) in [
        ("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01Z"),
        ("2026-01-01T00:00:00.001Z", "2026-01-01T00:00:01Z"),
        ("2026-01-01T00:00:00.999Z", "2026-01-01T00:00:01Z"),
        ("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02Z"),
        ("1969-12-31T23:59:59.500Z", "1970-01-01T00:00:00Z"),
    ] {
        let t = if after.starts_with("1969") {
            Timeline::compile(
                &spec(cron_spec("* * * * * *", None, FIRE), None, None),
                -10_000,
            )
            .unwrap()
        } else {
            t.clone()
        };
        assert_eq!(
            t.next_after(Some(ms(after))),
            Some(ms(want)),
            "after {after}"
        );
    }
    let t = cron("0 */5 * * * *", None, FIRE);
    assert_eq!(
        t.next_after(Some(ms("2026-01-01T00:04:59.999Z"))),
        Some(ms("2026-01-01T00:05:00Z"))
    );
}

// ---------------------------------------------------------------- time zones

#[test]
fn time_zones_table() {
    // 09:00 local every day: (zone, after, next fire times in UTC)
    let table: &[(Option<&str>, &str, &[&str])] = &[
        (None, "2026-01-10T00:00:00Z", &["2026-01-10T09:00:00Z"]),
        (
            Some("UTC"),
            "2026-07-10T00:00:00Z",
            &["2026-07-10T09:00:00Z"],
        ),
        (
            Some("Europe/Berlin"),
            "2026-01-10T00:00:00Z",
            &["2026-01-10T08:00:00Z", "2026-01-11T08:00:00Z"],
        ),
        (
            Some("Europe/Berlin"),
            "2026-07-10T00:00:00Z",
            &["2026-07-10T07:00:00Z"],
        ),
        (
            Some("America/New_York"),
            "2026-01-10T00:00:00Z",
            &["2026-01-10T14:00:00Z"],
        ),
        (
            Some("America/New_York"),
            "2026-07-10T00:00:00Z",
            &["2026-07-10T13:00:00Z"],
        ),
        (
            Some("Asia/Kolkata"),
            "2026-01-10T00:00:00Z",
            &["2026-01-10T03:30:00Z", "2026-01-11T03:30:00Z"],
        ),
        (
            Some("Asia/Kolkata"),
            "2026-07-10T04:00:00Z",
            &["2026-07-11T03:30:00Z"],
        ),
        (
            Some("Australia/Sydney"),
            "2026-01-10T00:00:00Z",
            &["2026-01-10T22:00:00Z"],
        ),
        (
            Some("Australia/Sydney"),
            "2026-07-10T00:00:00Z",
            &["2026-07-10T23:00:00Z"],
        ),
    ];
    for (tz, after, want) in table {
        let t = cron("0 0 9 * * *", *tz, FIRE);
        let want: Vec<String> = want.iter().map(|s| iso(ms(s))).collect();
        assert_eq!(next_n(&t, after, want.len()), want, "{tz:?} after {after}");
    }
    // Kolkata's half hour: every hour on the half hour UTC is on the hour there.
    let t = cron("0 0 * * * *", Some("Asia/Kolkata"), FIRE);
    assert_eq!(
        next_n(&t, "2026-01-10T00:00:00Z", 2),
        ["2026-01-10T00:30:00Z", "2026-01-10T01:30:00Z"]
    );
}

#[test]
fn unknown_time_zones_and_bad_expressions_do_not_compile() {
    let e = Timeline::compile(
        &spec(
            cron_spec("* * * * *", Some("Mars/Olympus"), FIRE),
            None,
            None,
        ),
        0,
    )
    .unwrap_err();
    assert!(matches!(e, ScheduleError::TimeZone(_)), "{e}");
    let e = Timeline::compile(&spec(cron_spec("* * *", None, FIRE), None, None), 0).unwrap_err();
    assert!(matches!(e, ScheduleError::Cron { .. }), "{e}");
    for schedule in [
        json!({"type": "fixed_rate", "every_ms": 0}),
        json!({"type": "fixed_delay", "delay_ms": 0}),
    ] {
        let e = Timeline::compile(&spec(schedule, None, None), 0).unwrap_err();
        assert!(matches!(e, ScheduleError::Invalid { .. }), "{e}");
    }
}

// ---------------------------------------------------------------- DST rules

struct DstCase {
    what: &'static str,
    tz: &'static str,
    expr: &'static str,
    gap: DstGapPolicy,
    after: &'static str,
    want: &'static [&'static str],
}

/// Transitions used (all 2026):
/// - Europe/Berlin: spring 03-29 01:00Z (02:00 CET -> 03:00 CEST); fall 10-25
///   01:00Z (03:00 CEST -> 02:00 CET; 02:xx is 00:xxZ, then 01:xxZ).
/// - America/New_York: spring 03-08 07:00Z (02:00 EST -> 03:00 EDT); fall 11-01
///   06:00Z (02:00 EDT -> 01:00 EST; 01:xx is 05:xxZ, then 06:xxZ).
/// - Australia/Sydney (southern): fall 04-04 16:00Z (03:00 AEDT -> 02:00 AEST;
///   02:xx is 15:xxZ, then 16:xxZ); spring 10-03 16:00Z (02:00 AEST -> 03:00 AEDT).
/// - Australia/Lord_Howe (30 minutes): fall 04-04 15:00Z (02:00 -> 01:30; 01:3x..
///   01:5x is 14:xxZ, then 15:xxZ); spring 10-03 15:30Z (02:00 -> 02:30).
const DST_CASES: &[DstCase] = &[
    // Rule 1: a skipped local time fires once at the transition, or not at all.
    DstCase {
        what: "Berlin spring, fixed time in the gap, fire at transition",
        tz: "Europe/Berlin",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-03-28T00:00:00Z",
        want: &[
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z",
        ],
    },
    DstCase {
        what: "Berlin spring, fixed time in the gap, skip",
        tz: "Europe/Berlin",
        expr: "0 30 2 * * *",
        gap: SKIP,
        after: "2026-03-28T00:00:00Z",
        want: &["2026-03-28T01:30:00Z", "2026-03-30T00:30:00Z"],
    },
    DstCase {
        what: "Berlin spring, four skipped times fire once",
        tz: "Europe/Berlin",
        expr: "0 */15 2 * * *",
        gap: FIRE,
        after: "2026-03-28T12:00:00Z",
        want: &[
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:00:00Z",
            "2026-03-30T00:15:00Z",
        ],
    },
    DstCase {
        what: "Berlin spring, four skipped times, skip",
        tz: "Europe/Berlin",
        expr: "0 */15 2 * * *",
        gap: SKIP,
        after: "2026-03-28T12:00:00Z",
        want: &["2026-03-30T00:00:00Z", "2026-03-30T00:15:00Z"],
    },
    DstCase {
        what: "Berlin spring, skipped times and 03:00 are one fire",
        tz: "Europe/Berlin",
        expr: "0 */15 2-3 * * *",
        gap: FIRE,
        after: "2026-03-28T12:00:00Z",
        want: &[
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-29T01:45:00Z",
            "2026-03-30T00:00:00Z",
        ],
    },
    DstCase {
        what: "Berlin spring, the transition fire is not repeated",
        tz: "Europe/Berlin",
        expr: "0 */15 2-3 * * *",
        gap: FIRE,
        after: "2026-03-29T01:00:00Z",
        want: &["2026-03-29T01:15:00Z"],
    },
    DstCase {
        what: "Berlin spring, only on that date",
        tz: "Europe/Berlin",
        expr: "0 30 2 29 3 *",
        gap: FIRE,
        after: "2026-01-01T00:00:00Z",
        want: &["2026-03-29T01:00:00Z", "2027-03-29T00:30:00Z"],
    },
    DstCase {
        what: "New York spring, fire at transition",
        tz: "America/New_York",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-03-07T00:00:00Z",
        want: &[
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
        ],
    },
    DstCase {
        what: "New York spring, skip",
        tz: "America/New_York",
        expr: "0 30 2 * * *",
        gap: SKIP,
        after: "2026-03-07T00:00:00Z",
        want: &["2026-03-07T07:30:00Z", "2026-03-09T06:30:00Z"],
    },
    DstCase {
        what: "Sydney spring (October), fire at transition",
        tz: "Australia/Sydney",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-10-03T00:00:00Z",
        want: &["2026-10-03T16:00:00Z", "2026-10-04T15:30:00Z"],
    },
    DstCase {
        what: "Sydney spring (October), skip",
        tz: "Australia/Sydney",
        expr: "0 30 2 * * *",
        gap: SKIP,
        after: "2026-10-03T00:00:00Z",
        want: &["2026-10-04T15:30:00Z"],
    },
    DstCase {
        what: "Lord Howe half-hour spring, fire at transition",
        tz: "Australia/Lord_Howe",
        expr: "0 15 2 * * *",
        gap: FIRE,
        after: "2026-10-03T00:00:00Z",
        want: &["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"],
    },
    DstCase {
        what: "Lord Howe half-hour spring, skip",
        tz: "Australia/Lord_Howe",
        expr: "0 15 2 * * *",
        gap: SKIP,
        after: "2026-10-03T00:00:00Z",
        want: &["2026-10-04T15:15:00Z"],
    },
    // Rule 2: a repeated local time fires once, at its first occurrence.
    DstCase {
        what: "Berlin fall, fixed time fires in the first pass only",
        tz: "Europe/Berlin",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-10-24T12:00:00Z",
        want: &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
    },
    DstCase {
        what: "Berlin fall, asked right after the first occurrence",
        tz: "Europe/Berlin",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-10-25T00:30:00Z",
        want: &["2026-10-26T01:30:00Z"],
    },
    DstCase {
        what: "Berlin fall, asked during the second pass (croner answers the past)",
        tz: "Europe/Berlin",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-10-25T01:10:00Z",
        want: &["2026-10-26T01:30:00Z"],
    },
    DstCase {
        what: "Berlin fall, several times in the hour fire in the first pass only",
        tz: "Europe/Berlin",
        expr: "0 */30 2 * * *",
        gap: FIRE,
        after: "2026-10-24T23:50:00Z",
        want: &[
            "2026-10-25T00:00:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:00:00Z",
        ],
    },
    DstCase {
        what: "Berlin fall, an hour range pauses for the repeated hour",
        tz: "Europe/Berlin",
        expr: "0 */15 0-5 * * *",
        gap: FIRE,
        after: "2026-10-25T00:40:00Z",
        want: &[
            "2026-10-25T00:45:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T02:15:00Z",
        ],
    },
    DstCase {
        what: "Berlin fall, hour range asked during the second pass",
        tz: "Europe/Berlin",
        expr: "0 */15 0-5 * * *",
        gap: FIRE,
        after: "2026-10-25T01:20:00Z",
        want: &["2026-10-25T02:00:00Z"],
    },
    DstCase {
        what: "New York fall",
        tz: "America/New_York",
        expr: "0 30 1 * * *",
        gap: FIRE,
        after: "2026-10-31T12:00:00Z",
        want: &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
    },
    DstCase {
        what: "Sydney fall (April)",
        tz: "Australia/Sydney",
        expr: "0 30 2 * * *",
        gap: FIRE,
        after: "2026-04-04T00:00:00Z",
        want: &["2026-04-04T15:30:00Z", "2026-04-05T16:30:00Z"],
    },
    DstCase {
        what: "Lord Howe half-hour fall",
        tz: "Australia/Lord_Howe",
        expr: "0 45 1 * * *",
        gap: FIRE,
        after: "2026-04-04T00:00:00Z",
        want: &["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"],
    },
    // Rule 3: an every-hour expression follows elapsed time.
    DstCase {
        what: "Berlin fall, every 15 minutes through the repeated hour",
        tz: "Europe/Berlin",
        expr: "0 */15 * * * *",
        gap: FIRE,
        after: "2026-10-25T00:40:00Z",
        want: &[
            "2026-10-25T00:45:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:15:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T01:45:00Z",
            "2026-10-25T02:00:00Z",
        ],
    },
    DstCase {
        what: "Berlin fall, every second through the transition",
        tz: "Europe/Berlin",
        expr: "* * * * * *",
        gap: FIRE,
        after: "2026-10-25T00:59:58Z",
        want: &[
            "2026-10-25T00:59:59Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:00:01Z",
        ],
    },
    DstCase {
        what: "Berlin fall, hourly at :30 fires in both passes",
        tz: "Europe/Berlin",
        expr: "0 30 * * * *",
        gap: FIRE,
        after: "2026-10-24T23:45:00Z",
        want: &[
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:30:00Z",
        ],
    },
    DstCase {
        what: "Berlin fall, hourly at :05 asked late in the first pass",
        tz: "Europe/Berlin",
        expr: "0 5 * * * *",
        gap: FIRE,
        after: "2026-10-25T00:10:00Z",
        want: &["2026-10-25T01:05:00Z", "2026-10-25T02:05:00Z"],
    },
    DstCase {
        what: "Berlin fall, every 15 minutes asked during the second pass",
        tz: "Europe/Berlin",
        expr: "0 */15 * * * *",
        gap: FIRE,
        after: "2026-10-25T01:20:00Z",
        want: &[
            "2026-10-25T01:30:00Z",
            "2026-10-25T01:45:00Z",
            "2026-10-25T02:00:00Z",
        ],
    },
    DstCase {
        what: "Berlin fall, every hour on Sundays only",
        tz: "Europe/Berlin",
        expr: "0 0 * * * SUN",
        gap: FIRE,
        after: "2026-10-24T23:30:00Z",
        want: &[
            "2026-10-25T00:00:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T02:00:00Z",
        ],
    },
    DstCase {
        what: "Berlin spring, every 15 minutes runs on by elapsed time",
        tz: "Europe/Berlin",
        expr: "0 */15 * * * *",
        gap: FIRE,
        after: "2026-03-29T00:40:00Z",
        want: &[
            "2026-03-29T00:45:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z",
        ],
    },
    DstCase {
        what: "Berlin spring, hourly at :30 gets no extra fire at the transition",
        tz: "Europe/Berlin",
        expr: "0 30 * * * *",
        gap: FIRE,
        after: "2026-03-28T23:45:00Z",
        want: &[
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-29T02:30:00Z",
        ],
    },
    DstCase {
        what: "Berlin spring, every second",
        tz: "Europe/Berlin",
        expr: "* * * * * *",
        gap: SKIP,
        after: "2026-03-29T00:59:58Z",
        want: &[
            "2026-03-29T00:59:59Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:00:01Z",
        ],
    },
    DstCase {
        what: "New York fall, every 20 minutes through the repeated hour",
        tz: "America/New_York",
        expr: "0 */20 * * * *",
        gap: FIRE,
        after: "2026-11-01T05:30:00Z",
        want: &[
            "2026-11-01T05:40:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:20:00Z",
            "2026-11-01T06:40:00Z",
            "2026-11-01T07:00:00Z",
        ],
    },
    DstCase {
        what: "Sydney fall (April), every 30 minutes through the repeated hour",
        tz: "Australia/Sydney",
        expr: "0 */30 * * * *",
        gap: FIRE,
        after: "2026-04-04T15:10:00Z",
        want: &[
            "2026-04-04T15:30:00Z",
            "2026-04-04T16:00:00Z",
            "2026-04-04T16:30:00Z",
            "2026-04-04T17:00:00Z",
        ],
    },
    DstCase {
        what: "Lord Howe half-hour fall, every 15 minutes",
        tz: "Australia/Lord_Howe",
        expr: "0 */15 * * * *",
        gap: FIRE,
        after: "2026-04-04T14:40:00Z",
        want: &[
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:00:00Z",
            "2026-04-04T15:15:00Z",
            "2026-04-04T15:30:00Z",
        ],
    },
];

#[test]
fn dst_rules_table() {
    for c in DST_CASES {
        let t = cron(c.expr, Some(c.tz), c.gap);
        let want: Vec<String> = c.want.iter().map(|s| iso(ms(s))).collect();
        assert_eq!(
            next_n(&t, c.after, want.len()),
            want,
            "{}: {} in {} ({:?}) after {}",
            c.what,
            c.expr,
            c.tz,
            c.gap,
            c.after
        );
    }
}

/// The rules stated independently, by brute force over every minute: the fire
/// times of a minute-granularity expression around a transition.
fn oracle(expr: &str, tz: Tz, gap: DstGapPolicy, from: Millis, to: Millis) -> Vec<Millis> {
    let schedule = CronSchedule::parse(expr, Some(tz.name())).unwrap();
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Optional)
        .build()
        .parse(expr)
        .unwrap();
    let matches = |local: NaiveDateTime| {
        cron.is_time_matching(&Utc.from_utc_datetime(&local))
            .unwrap()
    };
    let mut out = Vec::new();
    if schedule.every_hour() {
        // Rule 3: every instant whose local reading matches.
        let mut t = from - from.rem_euclid(60_000) + 60_000;
        while t <= to {
            let utc = DateTime::<Utc>::from_timestamp_millis(t).unwrap();
            if matches(utc.with_timezone(&tz).naive_local()) {
                out.push(t);
            }
            t += 60_000;
        }
        return out;
    }
    // Rules 1 and 2: every matching local minute, mapped.
    let local_from = DateTime::<Utc>::from_timestamp_millis(from - 6 * 3_600_000)
        .unwrap()
        .naive_utc();
    let local_to = DateTime::<Utc>::from_timestamp_millis(to + 16 * 3_600_000)
        .unwrap()
        .naive_utc();
    let mut local = local_from;
    while local <= local_to {
        if matches(local) {
            let fire = match tz.from_local_datetime(&local) {
                LocalResult::Single(t) => Some(t.timestamp_millis()),
                LocalResult::Ambiguous(a, b) => {
                    Some(a.timestamp_millis().min(b.timestamp_millis()))
                }
                LocalResult::None if gap == SKIP => None,
                LocalResult::None => {
                    // The first existing minute after the gap.
                    let mut l = local;
                    loop {
                        l += chrono::Duration::minutes(1);
                        if let Some(t) = tz.from_local_datetime(&l).earliest() {
                            break Some(t.timestamp_millis());
                        }
                    }
                }
            };
            if let Some(t) = fire.filter(|t| *t > from && *t <= to) {
                out.push(t);
            }
        }
        local += chrono::Duration::minutes(1);
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn dst_rules_agree_with_brute_force_around_every_transition() {
    let transitions = [
        ("Europe/Berlin", "2026-03-29T01:00:00Z"),
        ("Europe/Berlin", "2026-10-25T01:00:00Z"),
        ("America/New_York", "2026-03-08T07:00:00Z"),
        ("America/New_York", "2026-11-01T06:00:00Z"),
        ("Australia/Sydney", "2026-04-04T16:00:00Z"),
        ("Australia/Sydney", "2026-10-03T16:00:00Z"),
        ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
        ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
        ("Asia/Kolkata", "2026-03-29T01:00:00Z"),
    ];
    let exprs = [
        "0 30 2 * * *",
        "0 0 2 * * *",
        "0 15 2 * * *",
        "0 */15 2 * * *",
        "0 */10 1-3 * * *",
        "0 30 1 * * *",
        "0 45 1 * * *",
        "0 0 3 * * *",
        "0 59 1 * * *",
        "0 */15 * * * *",
        "0 30 * * * *",
        "0 5 * * * *",
        "0 * * * * *",
        "0 0,30 */2 * * *",
    ];
    for (zone, transition) in transitions {
        let tz: Tz = zone.parse().unwrap();
        let around = ms(transition);
        let (from, to) = (around - 4 * 3_600_000, around + 4 * 3_600_000);
        for expr in exprs {
            for gap in [FIRE, SKIP] {
                let t = cron(expr, Some(zone), gap);
                let want = oracle(expr, tz, gap, from, to);
                let (got, more) = t.due_between(Some(from), to, 1000);
                assert!(!more);
                assert_eq!(
                    isos(&got),
                    isos(&want),
                    "{expr} in {zone} ({gap:?}) around {transition}"
                );
                // Asked from any minute in between, the answer is the next of those.
                let mut probe = from;
                while probe < to {
                    let expect = want.iter().copied().find(|w| *w > probe);
                    let got = t.next_after(Some(probe)).filter(|g| *g <= to);
                    assert_eq!(
                        got.map(iso),
                        expect.map(iso),
                        "{expr} in {zone} ({gap:?}) after {}",
                        iso(probe)
                    );
                    probe += 7 * 60_000 + 13_000;
                }
            }
        }
    }
}

#[test]
fn fire_times_increase_strictly_over_a_year_in_every_zone() {
    for zone in [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
    ] {
        for expr in [
            "0 30 2 * * *",
            "0 */20 * * * *",
            "0 0 */3 * * *",
            "0 15 1-3 * * SUN",
        ] {
            for gap in [FIRE, SKIP] {
                let t = cron(expr, Some(zone), gap);
                let mut cursor = ms("2026-01-01T00:00:00Z");
                let end = ms("2027-01-01T00:00:00Z");
                let mut count = 0;
                while let Some(next) = t.next_after(Some(cursor)) {
                    assert!(next > cursor, "{expr} in {zone}");
                    assert_eq!(next % 1000, 0);
                    if next > end {
                        break;
                    }
                    cursor = next;
                    count += 1;
                }
                assert!(count > 40, "{expr} in {zone}: {count}");
            }
        }
    }
}

// ---------------------------------------------------------------- fixed rate

#[test]
fn fixed_rate_does_not_drift_over_100000_periods() {
    for (every, start) in [
        (333u64, "2026-01-01T00:00:00.123Z"),
        (3_600_000, "2026-01-01T00:00:00Z"),
        (86_400_001, "2026-03-29T00:59:59.999Z"),
        (7, "1969-12-31T23:59:59.995Z"),
    ] {
        let anchor = ms(start);
        let t = Timeline::compile(
            &spec(
                json!({"type": "fixed_rate", "every_ms": every}),
                Some(start),
                None,
            ),
            0,
        )
        .unwrap();
        let every = every as Millis;
        let mut fire = t.next_after(None).unwrap();
        assert_eq!(fire, anchor);
        for k in 1..=100_000 {
            fire = t.next_after(Some(fire)).unwrap();
            if k % 25_000 == 0 {
                assert_eq!(fire, anchor + k * every);
            }
        }
        assert_eq!(fire, anchor + 100_000 * every, "every {every}");
        // Asked from anywhere inside a period: the end of that period.
        assert_eq!(
            t.next_after(Some(anchor + 99_999 * every + every / 2)),
            Some(anchor + 100_000 * every)
        );
        assert_eq!(t.next_after(Some(anchor - 1)), Some(anchor));
        assert_eq!(t.next_after(Some(anchor)), Some(anchor + every));
    }
}

#[test]
fn fixed_rate_is_anchored_at_start_or_creation() {
    let created = ms("2026-05-01T10:00:00.250Z");
    let t = Timeline::compile(
        &spec(
            json!({"type": "fixed_rate", "every_ms": 60_000}),
            None,
            None,
        ),
        created,
    )
    .unwrap();
    assert_eq!(t.next_after(None), Some(created));
    assert_eq!(t.next_after(Some(created - 5_000)), Some(created));
    assert_eq!(
        t.next_after(Some(ms("2026-05-01T11:00:00Z"))),
        Some(ms("2026-05-01T11:00:00.250Z"))
    );
    // A start in the future.
    let t = Timeline::compile(
        &spec(
            json!({"type": "fixed_rate", "every_ms": 60_000}),
            Some("2026-06-01T00:00:00Z"),
            Some("2026-06-01T00:03:00Z"),
        ),
        created,
    )
    .unwrap();
    assert_eq!(
        isos(&t.upcoming(Some(created), 10)),
        [
            "2026-06-01T00:00:00Z",
            "2026-06-01T00:01:00Z",
            "2026-06-01T00:02:00Z",
            "2026-06-01T00:03:00Z"
        ]
    );
    // A huge interval: the anchor, then nothing representable.
    let t = Timeline::compile(
        &spec(
            json!({"type": "fixed_rate", "every_ms": u64::MAX}),
            None,
            None,
        ),
        created,
    )
    .unwrap();
    assert_eq!(t.upcoming(None, 3), vec![created]);
}

// ---------------------------------------------------------------- start and end

#[test]
fn start_and_end_bound_cron_times() {
    let sched = cron_spec("0 * * * * *", None, FIRE);
    // start_at inclusive, end_at inclusive.
    let t = Timeline::compile(
        &spec(
            sched.clone(),
            Some("2026-01-01T00:01:00Z"),
            Some("2026-01-01T00:03:00Z"),
        ),
        0,
    )
    .unwrap();
    assert_eq!(t.next_after(None), Some(ms("2026-01-01T00:01:00Z")));
    assert_eq!(
        isos(&t.upcoming(Some(ms("2025-01-01T00:00:00Z")), 10)),
        [
            "2026-01-01T00:01:00Z",
            "2026-01-01T00:02:00Z",
            "2026-01-01T00:03:00Z"
        ]
    );
    assert_eq!(t.next_after(Some(ms("2026-01-01T00:03:00Z"))), None);
    assert_eq!(t.start_ms(), Some(ms("2026-01-01T00:01:00Z")));
    assert_eq!(t.end_ms(), Some(ms("2026-01-01T00:03:00Z")));
    // A start with a fraction of a second: the first whole second at or after it.
    let t = Timeline::compile(
        &spec(
            cron_spec("* * * * * *", None, FIRE),
            Some("2026-01-01T00:00:30.500Z"),
            None,
        ),
        0,
    )
    .unwrap();
    assert_eq!(t.next_after(None), Some(ms("2026-01-01T00:00:31Z")));
    // Without start_at, a cron job starts when it was created.
    let t = Timeline::compile(&spec(sched, None, None), ms("2026-01-01T00:00:30Z")).unwrap();
    assert_eq!(t.next_after(None), Some(ms("2026-01-01T00:01:00Z")));
    assert_eq!(t.next_after(Some(0)), Some(ms("2026-01-01T00:01:00Z")));
    // An end before the start: nothing.
    let t = Timeline::compile(
        &spec(
            cron_spec("* * * * * *", None, FIRE),
            Some("2026-01-02T00:00:00Z"),
            Some("2026-01-01T00:00:00Z"),
        ),
        0,
    )
    .unwrap();
    assert_eq!(t.next_after(None), None);
}

// ---------------------------------------------------------------- once, api, delay

#[test]
fn once_fires_at_its_time_if_after_the_question() {
    let at = "2026-06-01T12:00:00.500Z";
    let created = ms("2026-06-02T00:00:00Z"); // created after its time: still due
    let t = Timeline::compile(
        &spec(json!({"type": "once", "at": at}), None, None),
        created,
    )
    .unwrap();
    let table: &[(Option<&str>, Option<&str>)] = &[
        (None, Some(at)),
        (Some("2026-01-01T00:00:00Z"), Some(at)),
        (Some("2026-06-01T12:00:00.499Z"), Some(at)),
        (Some(at), None),
        (Some("2026-07-01T00:00:00Z"), None),
    ];
    for (after, want) in table {
        assert_eq!(t.next_after(after.map(ms)), want.map(ms), "after {after:?}");
    }
    assert_eq!(t.upcoming(None, 5), vec![ms(at)]);
    assert_eq!(
        t.due_between(None, ms("2026-06-01T12:00:00.500Z"), 5),
        (vec![ms(at)], false)
    );
    assert_eq!(
        t.due_between(None, ms("2026-06-01T12:00:00.499Z"), 5),
        (vec![], false)
    );
    // Outside start and end: never.
    for (start, end) in [
        (Some("2026-06-02T00:00:00Z"), None),
        (None, Some("2026-06-01T12:00:00Z")),
    ] {
        let t = Timeline::compile(&spec(json!({"type": "once", "at": at}), start, end), 0).unwrap();
        assert_eq!(t.next_after(None), None, "{start:?} {end:?}");
    }
    assert!(!t.is_fixed_delay());
}

#[test]
fn api_jobs_never_fire_by_themselves() {
    let t = Timeline::compile(&spec(json!({"type": "api"}), None, None), 0).unwrap();
    assert_eq!(t.next_after(None), None);
    assert_eq!(t.next_after(Some(0)), None);
    assert!(t.upcoming(None, 10).is_empty());
    assert_eq!(t.due_between(None, Millis::MAX, 10), (vec![], false));
    assert_eq!(t.fixed_delay_next(Some(0), None), None);
    assert!(!t.is_fixed_delay());
}

#[test]
fn fixed_delay_counts_from_the_previous_end() {
    let created = ms("2026-01-01T00:00:00Z");
    let delay = json!({"type": "fixed_delay", "delay_ms": 30_000});
    let t = Timeline::compile(&spec(delay.clone(), None, None), created).unwrap();
    assert!(t.is_fixed_delay());
    assert_eq!(t.next_after(None), None);
    assert!(t.upcoming(None, 3).is_empty());
    let table: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
        // (previous finished, after, next)
        (None, None, Some("2026-01-01T00:00:00Z")),
        (
            Some("2026-01-01T00:05:00.100Z"),
            Some("2026-01-01T00:04:00Z"),
            Some("2026-01-01T00:05:30.100Z"),
        ),
        // The previous one finished before the start: the start.
        (
            Some("2025-12-31T00:00:00Z"),
            None,
            Some("2026-01-01T00:00:00Z"),
        ),
        // Not strictly after `after`: the previous instance has not finished since.
        (None, Some("2026-01-01T00:00:00Z"), None),
        (
            Some("2026-01-01T00:05:00Z"),
            Some("2026-01-01T00:05:30Z"),
            None,
        ),
        (
            Some("2026-01-01T00:05:00Z"),
            Some("2026-01-01T00:05:29.999Z"),
            Some("2026-01-01T00:05:30Z"),
        ),
    ];
    for (finished, after, want) in table {
        assert_eq!(
            t.fixed_delay_next(finished.map(ms), after.map(ms)),
            want.map(ms),
            "finished {finished:?} after {after:?}"
        );
    }
    // Start and end bounds.
    let t = Timeline::compile(
        &spec(
            delay,
            Some("2026-02-01T00:00:00Z"),
            Some("2026-02-01T01:00:00Z"),
        ),
        created,
    )
    .unwrap();
    assert_eq!(
        t.fixed_delay_next(None, None),
        Some(ms("2026-02-01T00:00:00Z"))
    );
    assert_eq!(
        t.fixed_delay_next(Some(ms("2026-02-01T00:59:30Z")), None),
        Some(ms("2026-02-01T01:00:00Z"))
    );
    assert_eq!(
        t.fixed_delay_next(Some(ms("2026-02-01T00:59:30.001Z")), None),
        None
    );
    // Other kinds have no fixed-delay time.
    assert_eq!(
        cron("* * * * *", None, FIRE).fixed_delay_next(None, None),
        None
    );
}

// ---------------------------------------------------------------- previews and catch-up

#[test]
fn upcoming_lists_in_order_and_is_capped() {
    let t = cron("0 0 * * * *", None, FIRE);
    assert_eq!(
        next_n(&t, "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
            "2026-01-01T03:00:00Z"
        ]
    );
    assert!(t.upcoming(Some(0), 0).is_empty());
    let all = t.upcoming(Some(ms("2026-01-01T00:00:00Z")), 5000);
    assert_eq!(all.len(), MAX_UPCOMING);
    assert!(all.windows(2).all(|w| w[1] - w[0] == 3_600_000));
    // Ends at end_at.
    let t = Timeline::compile(
        &spec(
            cron_spec("0 0 * * * *", None, FIRE),
            None,
            Some("2026-01-01T02:30:00Z"),
        ),
        0,
    )
    .unwrap();
    assert_eq!(t.upcoming(Some(ms("2026-01-01T00:00:00Z")), 10).len(), 2);
}

#[test]
fn due_between_respects_the_interval_and_the_limit() {
    let t = cron("0 * * * * *", None, FIRE);
    let after = ms("2026-01-01T00:00:00Z");
    let until = ms("2026-01-01T00:10:00Z");
    // (after, until] holds 00:01 ..= 00:10: ten times.
    let table: &[(usize, usize, bool)] = &[
        (0, 0, true),
        (1, 1, true),
        (3, 3, true),
        (9, 9, true),
        (10, 10, false),
        (11, 10, false),
        (1000, 10, false),
    ];
    for (limit, len, more) in table {
        let (got, m) = t.due_between(Some(after), until, *limit);
        assert_eq!((got.len(), m), (*len, *more), "limit {limit}");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, after + (i as Millis + 1) * 60_000);
        }
    }
    // Nothing due in an empty or inverted interval.
    assert_eq!(t.due_between(Some(after), after, 10), (vec![], false));
    assert_eq!(t.due_between(Some(until), after, 10), (vec![], false));
    // Fixed rate: a long outage is bounded by the limit.
    let rate = Timeline::compile(
        &spec(json!({"type": "fixed_rate", "every_ms": 1}), None, None),
        0,
    )
    .unwrap();
    let (got, more) = rate.due_between(Some(0), Millis::MAX / 2, 100);
    assert_eq!((got.len(), more), (100, true));
    assert_eq!(got[99], 100);
}

#[test]
fn ten_thousand_jobs_are_cheap() {
    let exprs = [
        "0 30 2 * * *",
        "*/5 * * * *",
        "0 0 9 ? * MON#2",
        "0 0 0 L * ?",
        "0 */15 * * * *",
        "0 0 12 1 1 * 2027-2030",
    ];
    let zones = [
        "Europe/Berlin",
        "America/New_York",
        "UTC",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
    ];
    let started = std::time::Instant::now();
    let timelines: Vec<Timeline> = (0..10_000)
        .map(|i| cron(exprs[i % exprs.len()], Some(zones[i % zones.len()]), FIRE))
        .collect();
    let now = ms("2026-10-25T00:59:00Z");
    let mut fired = 0;
    for t in &timelines {
        let next = t.next_after(Some(now)).unwrap();
        fired += usize::from(t.next_after(Some(next)).is_some());
    }
    assert_eq!(fired, 10_000);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}
