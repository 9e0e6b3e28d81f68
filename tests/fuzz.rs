//! Property-based fuzzing (proptest, stable Rust) of the pure input parsers: the cron
//! dialect and schedule validation with [`Timeline`], the server configuration (TOML
//! file and flag/env values), and every worker-transport message decoder.
//!
//! Quick by default (256 cases per target); `RAFTJOB_FUZZ_CASES=100000` runs longer
//! (see docs/testing.md, "Fuzzing"). The API's request bodies are in tests/fuzz_api.rs.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;
use raftjob::config::{ConfigError, ServerArgs, ServerConfig};
use raftjob::protocol::{
    AttemptRef, Deregister, Dispatch, DispatchAck, Heartbeat, Register, Registered, Report,
    ReportAck, ServerMsg, StopAttempt, WorkerMsg, WsServerFrame, WsWorkerFrame,
};
use raftjob::schedule::{CronSchedule, ScheduleError, Timeline};
use raftjob::server::api::validate;
use raftjob::server::api::ApiError;
use raftjob::server::transport::Discovery;
use raftjob::state::{
    AttemptEvent, DstGapPolicy, FencingToken, JobSpec, LogLine, Millis, Processor, Schedule,
};
use serde_json::{json, Value};

/// Cases per property: `RAFTJOB_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("RAFTJOB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn config() -> Config {
    Config {
        cases: cases(256),
        // No proptest-regressions files in the tree: found cases become named tests.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------
// Shared strategies.

/// Any JSON value (floats included), a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    arb_json_with(true)
}

/// JSON without floats (serde_json's float parsing is not exact without its
/// `float_roundtrip` feature, so round-trip checks use integers only).
fn arb_json_exact() -> impl Strategy<Value = Value> {
    arb_json_with(false)
}

fn arb_json_with(floats: bool) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..100).prop_map(Value::from),
        if floats {
            any::<f64>().prop_map(Value::from).boxed()
        } else {
            (-5i64..5).prop_map(Value::from).boxed()
        },
        any::<String>().prop_map(Value::String),
        "[a-z_]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}|\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Replaces (or adds) one field, at any depth, of `v` with an arbitrary value, or
/// removes it: near-valid documents.
fn mutate(v: Value, path_seed: usize, replacement: Value, remove: bool) -> Value {
    fn go(v: &mut Value, seed: usize, replacement: Value, remove: bool) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                let key = &keys[seed % keys.len()];
                let child = m.get_mut(key).expect("key exists");
                let descend = (seed / keys.len()) % 3 == 0
                    && matches!(child, Value::Object(c) if !c.is_empty());
                if descend {
                    go(child, seed / 7 + 1, replacement, remove);
                } else if remove {
                    m.remove(key);
                } else {
                    *child = replacement;
                }
            }
            other => *other = replacement,
        }
    }
    let mut v = v;
    go(&mut v, path_seed, replacement, remove);
    v
}

// ---------------------------------------------------------------------------------
// 1. Cron expressions, schedule validation and Timeline.

const NAMES: &[&str] = &[
    "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN", "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
    "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "mon", "jan", "L", "W", "LW", "?", "*", "#",
];

/// One near-valid cron field.
fn cron_field() -> impl Strategy<Value = String> {
    let num = prop_oneof![0u32..62, 0u32..3000, Just(u32::MAX)];
    prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        num.clone().prop_map(|n| n.to_string()),
        (num.clone(), num.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (num.clone()).prop_map(|n| format!("*/{n}")),
        (num.clone(), num.clone(), num.clone()).prop_map(|(a, b, c)| format!("{a}-{b}/{c}")),
        (num.clone(), num.clone()).prop_map(|(a, b)| format!("{a}/{b}")),
        prop::collection::vec(num.clone(), 1..5).prop_map(|v| v
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")),
        prop::sample::select(NAMES).prop_map(str::to_string),
        (prop::sample::select(NAMES), prop::sample::select(NAMES))
            .prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..9, 0u32..7).prop_map(|(d, n)| format!("{d}#{n}")),
        (prop::sample::select(NAMES), 0u32..7).prop_map(|(d, n)| format!("{d}#{n}")),
        (0u32..40).prop_map(|d| format!("{d}W")),
        (0u32..9).prop_map(|d| format!("{d}L")),
        (0u32..40).prop_map(|d| format!("L-{d}")),
        "[0-9LW#?*/,\\-]{1,6}",
        "\\PC{1,4}",
    ]
}

/// Near-valid cron expressions: 4 to 8 fields, sometimes with odd whitespace.
fn cron_expr() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::collection::vec(cron_field(), 4..=8), prop::sample::select(&[" ", "  ", "\t", " \n "][..]))
            .prop_map(|(f, sep)| f.join(sep)),
        // Mostly-valid 6/7-field expressions with one odd field.
        3 => (prop::collection::vec(prop::sample::select(&["0", "*", "*/5", "1-5", "?", "L", "MON#2", "15W", "2030", "2001-2099"][..]), 6..=7), 0usize..7, cron_field())
            .prop_map(|(mut f, i, odd)| { let i = i % f.len(); f[i] = odd.as_str(); f.join(" ") }),
        1 => any::<String>(),
        1 => "\\PC{0,40}",
    ]
}

fn timezone() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(chrono_tz::TZ_VARIANTS.to_vec()).prop_map(|tz| Some(tz.name().into())),
        prop::sample::select(
            &[
                "UTC",
                "Europe/Berlin",
                "America/New_York",
                "Australia/Lord_Howe",
                "Pacific/Chatham",
                "Asia/Kolkata",
                "utc",
                "",
                "Mars/Olympus",
                "Etc/GMT+14",
                "../../etc/passwd",
            ][..]
        )
        .prop_map(|s| Some(s.to_string())),
        "\\PC{0,20}".prop_map(Some),
    ]
}

fn dst_gap() -> impl Strategy<Value = DstGapPolicy> {
    prop_oneof![
        Just(DstGapPolicy::FireAtTransition),
        Just(DstGapPolicy::Skip)
    ]
}

/// Instants from the year 1 to 9999 plus the i64 extremes.
fn instant_ms() -> impl Strategy<Value = Millis> {
    prop_oneof![
        4 => 1_600_000_000_000i64..2_100_000_000_000,
        2 => -62_135_596_800_000i64..253_402_300_799_999,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, 0, -1]),
    ]
}

fn datetime() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_135_596_800_000i64..253_402_300_799_999)
        .prop_map(|ms| DateTime::from_timestamp_millis(ms).expect("in range"))
}

fn arb_schedule() -> impl Strategy<Value = Schedule> {
    prop_oneof![
        6 => (cron_expr(), timezone(), dst_gap())
            .prop_map(|(expr, timezone, dst_gap)| Schedule::Cron { expr, timezone, dst_gap }),
        1 => prop_oneof![any::<u64>(), 0u64..1000].prop_map(|every_ms| Schedule::FixedRate { every_ms }),
        1 => prop_oneof![any::<u64>(), 0u64..1000].prop_map(|delay_ms| Schedule::FixedDelay { delay_ms }),
        1 => datetime().prop_map(|at| Schedule::Once { at }),
        1 => Just(Schedule::Api),
    ]
}

fn spec_with(
    schedule: Schedule,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
) -> JobSpec {
    let mut spec: JobSpec = serde_json::from_value(json!({
        "app": "demo", "name": "fuzz",
        "schedule": {"type": "api"},
        "processor": {"type": "shell", "command": "true"},
    }))
    .expect("base spec");
    spec.schedule = schedule;
    spec.start_at = start_at;
    spec.end_at = end_at;
    spec
}

/// A schedule error's message says what is wrong (and, for cron, repeats the expression).
fn check_schedule_error(e: &ScheduleError, expr: &str) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(!text.trim().is_empty());
    if let ScheduleError::Cron {
        expr: named,
        reason,
    } = e
    {
        prop_assert_eq!(named.as_str(), expr);
        prop_assert!(!reason.trim().is_empty(), "empty reason for {:?}", expr);
    }
    Ok(())
}

/// The timeline's fire times from `after` are strictly increasing, after `after`,
/// within start and end, and never panic.
fn check_timeline(
    t: &Timeline,
    after: Option<Millis>,
    count: usize,
) -> Result<Vec<Millis>, TestCaseError> {
    let times = t.upcoming(after, count);
    let mut prev = after;
    for &x in &times {
        if let Some(p) = prev {
            prop_assert!(
                x > p,
                "fire times not increasing: {} after {} ({:?})",
                x,
                p,
                times
            );
        }
        if let Some(s) = t.start_ms() {
            prop_assert!(x >= s, "fire {} before start {}", x, s);
        }
        if let Some(e) = t.end_ms() {
            prop_assert!(x <= e, "fire {} after end {}", x, e);
        }
        prev = Some(x);
    }
    // next_after agrees with upcoming.
    prop_assert_eq!(t.next_after(after), times.first().copied());
    Ok(times)
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary and near-valid cron expressions with time zones: parsing and
    /// validation answer Ok or a clear error, never panic.
    #[test]
    fn cron_validation_never_panics(expr in cron_expr(), tz in timezone(), now in datetime()) {
        match CronSchedule::validate(&expr, tz.as_deref(), now) {
            Ok(s) => {
                let next = s.next_after(now);
                prop_assert!(next.is_some_and(|n| n > now), "validated {:?} but next {:?}", expr, next);
            }
            Err(e) => check_schedule_error(&e, &expr)?,
        }
    }

    /// Job-spec validation (the API's) with arbitrary schedules: Ok, or a 400 naming
    /// the schedule field; an accepted schedule compiles to a Timeline whose fire
    /// times are strictly increasing from arbitrary instants.
    #[test]
    fn accepted_schedules_fire_in_strictly_increasing_order(
        schedule in arb_schedule(),
        start_at in proptest::option::weighted(0.3, datetime()),
        end_at in proptest::option::weighted(0.3, datetime()),
        created in instant_ms(),
        afters in prop::collection::vec(proptest::option::weighted(0.9, instant_ms()), 1..4),
    ) {
        let spec = spec_with(schedule, start_at, end_at);
        match validate::job_spec(&spec) {
            Err(ApiError::Invalid { field, message }) => {
                let field = field.unwrap_or_default();
                prop_assert!(
                    field.starts_with("schedule.") || field == "end_at",
                    "unexpected field {:?}: {}", field, message
                );
                prop_assert!(!message.trim().is_empty());
            }
            Err(other) => prop_assert!(false, "not a validation error: {other:?}"),
            Ok(()) => {
                let t = Timeline::compile(&spec, created);
                prop_assert!(t.is_ok(), "validated but does not compile: {:?}", t.err());
                let t = t.unwrap();
                for after in afters {
                    let times = check_timeline(&t, after, 12)?;
                    if matches!(spec.schedule, Schedule::Cron { .. }) {
                        for x in times {
                            prop_assert_eq!(x.rem_euclid(1000), 0, "cron fire not a whole second");
                        }
                    }
                    let _ = t.fixed_delay_next(after, after.map(|a| a.saturating_sub(1)));
                    let _ = t.due_between(after, after.unwrap_or(0).saturating_add(3_600_000), 50);
                }
            }
        }
    }

    /// Timeline compiled without the API's validation (as the scheduler does for a
    /// stored job): never panics, and its times are strictly increasing.
    #[test]
    fn timeline_never_panics(
        schedule in arb_schedule(),
        start_at in proptest::option::weighted(0.3, datetime()),
        end_at in proptest::option::weighted(0.3, datetime()),
        created in instant_ms(),
        after in proptest::option::weighted(0.9, instant_ms()),
    ) {
        let spec = spec_with(schedule, start_at, end_at);
        if let Ok(t) = Timeline::compile(&spec, created) {
            check_timeline(&t, after, 8)?;
        }
    }
}

// ---------------------------------------------------------------------------------
// 2. Configuration: TOML files with the real keys, and flag/env values.

const TOP_KEYS: &[&str] = &[
    "node_id",
    "data_dir",
    "api_addr",
    "cluster_addr",
    "advertise_cluster_addr",
    "advertise_api_addr",
    "advertise_transport",
    "transport",
    "initial_members",
    "cluster_secret",
    "admin_token",
    "log_format",
    "raft",
    "workers",
    "scheduler",
    "metrics",
    "bootstrap_apps",
    "peer_dial",
    "testing",
    "cluster_secret_next",
    "admin_token_next",
    "tls",
];

const SECTION_KEYS: &[(&str, &[&str])] = &[
    (
        "raft",
        &[
            "heartbeat_interval_ms",
            "election_timeout_min_ms",
            "election_timeout_max_ms",
            "snapshot_logs_since_last",
            "logs_to_keep",
        ],
    ),
    (
        "workers",
        &[
            "heartbeat_ms",
            "lease_ms",
            "grace_ms",
            "dispatch_timeout_ms",
            "no_worker_timeout_ms",
            "forget_after_ms",
        ],
    ),
    (
        "scheduler",
        &[
            "misfire_threshold_ms",
            "catch_up_limit",
            "retention_ms",
            "retention_per_job",
            "prune_interval_ms",
        ],
    ),
    ("metrics", &["require_token"]),
    ("testing", &["clock_control"]),
    (
        "tls",
        &[
            "cert_file",
            "key_file",
            "cluster_cert_file",
            "cluster_key_file",
            "cluster_ca_file",
        ],
    ),
    ("transport", &["http", "ws", "HTTP", "grpc"]),
    ("advertise_transport", &["http", "ws", "Ws"]),
    ("initial_members", &["1", "2", "3", "0", "x", "01"]),
    ("peer_dial", &["1", "2", "0", "-1", "x"]),
];

fn toml_leaf() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (0i64..20_000).prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        any::<String>().prop_map(toml::Value::String),
        prop::sample::select(
            &[
                "127.0.0.1:7801",
                "0.0.0.0:0",
                "[::1]:7700",
                "raftjob-1:7800",
                "host:0",
                ":7800",
                "127.0.0.1:99999",
                "/tmp/x",
                "text",
                "JSON",
                "0123456789abcdef0123",
                "",
            ][..]
        )
        .prop_map(|s| toml::Value::String(s.into())),
        Just(toml::Value::Datetime(
            "2026-01-01T00:00:00Z".parse().expect("datetime")
        )),
    ]
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    toml_leaf().prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A valid base config, then some real keys set to arbitrary values (section keys
/// inside their section), some removed, some unknown keys added.
fn config_doc() -> impl Strategy<Value = toml::Table> {
    let top = (prop::sample::select(TOP_KEYS), toml_value());
    let section = (
        prop::sample::select(SECTION_KEYS),
        any::<prop::sample::Index>(),
        toml_value(),
    );
    (
        prop::collection::vec(top, 0..3),
        prop::collection::vec(section, 0..4),
        prop::collection::vec(prop::sample::select(TOP_KEYS), 0..2),
        proptest::option::weighted(0.1, ("[a-z_]{1,10}", toml_value())),
        proptest::option::weighted(
            0.2,
            prop::collection::vec(("\\PC{0,12}", "\\PC{0,24}"), 0..3),
        ),
    )
        .prop_map(|(tops, sections, removed, unknown, apps)| {
            let mut doc: toml::Table = toml::from_str(
                r#"
                node_id = 1
                data_dir = "/tmp/raftjob-fuzz"
                api_addr = "127.0.0.1:7701"
                cluster_addr = "127.0.0.1:7801"
                cluster_secret = "0123456789abcdef0123"
                admin_token = "0123456789abcdef0123"
                [transport]
                http = "127.0.0.1:10011"
                [initial_members]
                1 = "127.0.0.1:7801"
                "#,
            )
            .expect("base config");
            for (k, v) in tops {
                doc.insert(k.to_string(), v);
            }
            for ((section, keys), idx, v) in sections {
                let entry = doc
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let toml::Value::Table(t) = entry {
                    t.insert(idx.get(keys).to_string(), v);
                }
            }
            for k in removed {
                doc.remove(k);
            }
            if let Some((k, v)) = unknown {
                doc.insert(k, v);
            }
            if let Some(apps) = apps {
                let arr = apps
                    .into_iter()
                    .map(|(name, token)| {
                        let mut t = toml::Table::new();
                        t.insert("name".into(), toml::Value::String(name));
                        t.insert("worker_token".into(), toml::Value::String(token));
                        toml::Value::Table(t)
                    })
                    .collect();
                doc.insert("bootstrap_apps".into(), toml::Value::Array(arr));
            }
            doc
        })
}

/// Every key (and section name) of a TOML table, at any depth.
fn keys_of(t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        out.push(k.clone());
        match v {
            toml::Value::Table(inner) => keys_of(inner, out),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        keys_of(inner, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A configuration error names the key at fault.
fn check_config_error(e: &ConfigError, doc_keys: &[String]) -> Result<(), TestCaseError> {
    let text = e.to_string();
    match e {
        ConfigError::Missing { key, fix } => {
            prop_assert!(!key.is_empty() && !fix.is_empty());
            prop_assert!(text.contains(key));
        }
        ConfigError::Invalid { key, fix, .. } => {
            prop_assert!(!key.is_empty() && !fix.is_empty(), "{}", text);
            prop_assert!(text.contains(key.as_str()));
        }
        ConfigError::Parse { message, .. } => {
            // A well-formed TOML document the schema refuses: the message names the
            // key (toml quotes the offending line or names the field).
            prop_assert!(
                doc_keys.iter().any(|k| message.contains(k.as_str()))
                    || message.contains("missing field"),
                "parse error names no key: {}",
                message
            );
        }
        ConfigError::Read { .. } => prop_assert!(false, "unexpected read error: {}", text),
    }
    Ok(())
}

#[derive(clap::Parser, Debug)]
struct ArgsCli {
    #[command(flatten)]
    args: ServerArgs,
}

/// `raftjob server` flags (each one also read from its `RAFTJOB_*` variable, through
/// the same parser) with a valid base and some set to arbitrary values.
const FLAGS: &[&str] = &[
    "--node-id",
    "--data-dir",
    "--api-addr",
    "--cluster-addr",
    "--advertise-cluster-addr",
    "--advertise-api-addr",
    "--advertise-transport",
    "--transport",
    "--initial-members",
    "--cluster-secret",
    "--admin-token",
    "--log-format",
    "--heartbeat-interval-ms",
    "--election-timeout-min-ms",
    "--election-timeout-max-ms",
    "--snapshot-logs-since-last",
    "--logs-to-keep",
    "--worker-heartbeat-ms",
    "--worker-lease-ms",
    "--worker-grace-ms",
    "--dispatch-timeout-ms",
    "--no-worker-timeout-ms",
    "--worker-forget-after-ms",
    "--misfire-threshold-ms",
    "--catch-up-limit",
    "--retention-ms",
    "--retention-per-job",
    "--prune-interval-ms",
    "--metrics-require-token",
    "--bootstrap-app",
    "--peer-dial",
    "--test-clock-control",
    "--admin-token-next",
    "--cluster-secret-next",
    "--tls-cert",
    "--tls-key",
    "--tls-cluster-cert",
    "--tls-cluster-key",
    "--tls-cluster-ca",
];

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,30}",
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..1000).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(
            &[
                "",
                " ",
                ",",
                "=",
                ":",
                "true",
                "false",
                "yes",
                "0",
                "1",
                "http=127.0.0.1:1",
                "ws=127.0.0.1:10011,http=127.0.0.1:10011",
                "1=127.0.0.1:7801,1=127.0.0.1:7802",
                "HTTP=x:1",
                "1=",
                "=1",
                "demo:0123456789abcdef",
                "demo:short",
                ":",
                "a:b:c",
                "demo:0123456789abcdef,demo:0123456789abcdef",
                "1=h:0",
                "2=h:1,2=h:2",
                "0=127.0.0.1:7801",
                "grpc=127.0.0.1:1",
                "127.0.0.1:7801",
                "json",
                "TEXT",
            ][..]
        )
        .prop_map(str::to_string),
        prop::collection::vec("[a-zA-Z0-9=:.,_ -]{0,12}", 1..4).prop_map(|v| v.join(",")),
    ]
}

fn check_resolve(result: Result<ServerConfig, ConfigError>) -> Result<(), TestCaseError> {
    match result {
        Ok(cfg) => {
            prop_assert!(cfg.initial_members.contains_key(&cfg.node_id));
            prop_assert!(cfg.admin_token.len() >= 16 && cfg.cluster_secret.len() >= 16);
            prop_assert!(cfg.workers.lease_ms >= cfg.workers.heartbeat_ms.saturating_mul(2));
            prop_assert!(cfg.raft.election_timeout_min_ms > cfg.raft.heartbeat_interval_ms);
            prop_assert!(cfg.raft.election_timeout_max_ms > cfg.raft.election_timeout_min_ms);
        }
        Err(e) => check_config_error(&e, &[])?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// TOML documents built from the real keys with arbitrary values: loading never
    /// panics, and an error names the key.
    #[test]
    fn config_file_loading_never_panics(doc in config_doc(), garble in proptest::option::weighted(0.15, (any::<prop::sample::Index>(), "\\PC{1,3}"))) {
        let Ok(mut text) = toml::to_string(&doc) else {
            return Ok(());
        };
        let mut keys = Vec::new();
        keys_of(&doc, &mut keys);
        if let Some((at, junk)) = garble {
            // Syntax errors too: the message points at the line and column.
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, &junk);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftjob.toml");
        std::fs::write(&path, &text).unwrap();
        let args = ServerArgs { config: Some(path), ..Default::default() };
        let result = ServerConfig::load(&args);
        let well_formed = toml::from_str::<toml::Table>(&text).is_ok();
        match result {
            Err(ConfigError::Parse { message, .. }) if !well_formed => {
                prop_assert!(message.contains("line"), "syntax error without a position: {}", message);
            }
            Err(e) => check_config_error(&e, &keys)?,
            Ok(_) => check_resolve(ServerConfig::load(&args))?,
        }
    }

    /// Flag / env-style values: parsing either refuses the value (clap names the
    /// flag) or resolving gives a valid config or an error naming the key.
    #[test]
    fn config_flag_values_never_panic(overrides in prop::collection::vec((prop::sample::select(FLAGS), env_value()), 1..4)) {
        use clap::Parser;
        let mut argv: Vec<String> = [
            "raftjob", "--node-id", "1", "--data-dir", "/tmp/raftjob-fuzz",
            "--api-addr", "127.0.0.1:7701", "--cluster-addr", "127.0.0.1:7801",
            "--initial-members", "1=127.0.0.1:7801",
            "--cluster-secret", "0123456789abcdef0123", "--admin-token", "0123456789abcdef0123",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, value) in overrides {
            // `--flag=value`, so values starting with '-' stay values.
            argv.push(format!("{flag}={value}"));
        }
        match ArgsCli::try_parse_from(&argv) {
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.trim().is_empty());
            }
            Ok(cli) => check_resolve(ServerConfig::resolve(Default::default(), &cli.args))?,
        }
    }
}

// ---------------------------------------------------------------------------------
// 3. Worker transport messages (http bodies and ws frames, both directions).

/// Decodes `bytes` as every transport message type: each is a value or an error.
fn decode_all(bytes: &[u8]) {
    macro_rules! each {
        ($($t:ty),*) => {$(
            let _ = serde_json::from_slice::<$t>(bytes);
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = serde_json::from_str::<$t>(text);
            }
        )*};
    }
    each!(
        WorkerMsg,
        ServerMsg,
        Register,
        Heartbeat,
        Report,
        Deregister,
        Registered,
        ReportAck,
        Dispatch,
        StopAttempt,
        DispatchAck,
        WsWorkerFrame,
        WsServerFrame,
        AttemptRef,
        AttemptEvent,
        Discovery,
        Processor
    );
}

fn decode_all_values(v: &Value) {
    macro_rules! each {
        ($($t:ty),*) => {$(
            let _ = serde_json::from_value::<$t>(v.clone());
        )*};
    }
    each!(
        WorkerMsg,
        ServerMsg,
        Register,
        Heartbeat,
        Report,
        Deregister,
        Registered,
        ReportAck,
        Dispatch,
        StopAttempt,
        DispatchAck,
        WsWorkerFrame,
        WsServerFrame,
        AttemptRef,
        AttemptEvent,
        Discovery,
        Processor
    );
}

fn arb_attempt() -> impl Strategy<Value = AttemptRef> {
    (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(i, a, t, x)| AttemptRef {
        instance_id: i,
        attempt: a,
        token: FencingToken { term: t, index: x },
    })
}

fn arb_processor() -> impl Strategy<Value = Processor> {
    prop_oneof![
        any::<String>().prop_map(|command| Processor::Shell { command }),
        (
            any::<String>(),
            any::<String>(),
            prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
            proptest::option::of(any::<String>()),
            prop::collection::vec(any::<u16>(), 0..3),
        )
            .prop_map(
                |(method, url, headers, body, expect_status)| Processor::Http {
                    method,
                    url,
                    headers,
                    body,
                    expect_status
                }
            ),
        (any::<String>(), arb_json_exact())
            .prop_map(|(name, params)| Processor::Custom { name, params }),
    ]
}

fn arb_event() -> impl Strategy<Value = AttemptEvent> {
    prop_oneof![
        Just(AttemptEvent::Running),
        prop::collection::vec((any::<i64>(), any::<String>()), 0..4).prop_map(|l| {
            AttemptEvent::Log {
                lines: l
                    .into_iter()
                    .map(|(at_ms, line)| LogLine { at_ms, line })
                    .collect(),
            }
        }),
        (any::<bool>(), any::<String>(), any::<bool>()).prop_map(|(success, result, stopped)| {
            AttemptEvent::Finished {
                success,
                result,
                stopped,
            }
        }),
    ]
}

fn arb_worker_msg() -> impl Strategy<Value = WorkerMsg> {
    let s = || any::<String>();
    prop_oneof![
        (
            s(),
            s(),
            s(),
            s(),
            s(),
            proptest::option::of(s()),
            proptest::option::of(s()),
            any::<u32>()
        )
            .prop_map(
                |(app, token, name, protocol, version, tag, address, max_concurrency)| {
                    WorkerMsg::Register(Register {
                        app,
                        token,
                        name,
                        protocol,
                        version,
                        tag,
                        address,
                        max_concurrency,
                    })
                }
            ),
        (
            s(),
            s(),
            prop::collection::vec(arb_attempt(), 0..3),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(worker_id, credential, held, running, max_concurrency)| {
                WorkerMsg::Heartbeat(Heartbeat {
                    worker_id,
                    credential,
                    held,
                    running,
                    max_concurrency,
                })
            }),
        (s(), s(), arb_attempt(), arb_event()).prop_map(
            |(worker_id, credential, attempt, event)| WorkerMsg::Report(Report {
                worker_id,
                credential,
                attempt,
                event
            })
        ),
        (s(), s()).prop_map(|(worker_id, credential)| WorkerMsg::Deregister(Deregister {
            worker_id,
            credential
        })),
    ]
}

fn arb_dispatch() -> impl Strategy<Value = Dispatch> {
    (
        any::<String>(),
        any::<u64>(),
        arb_attempt(),
        any::<u64>(),
        arb_processor(),
        arb_json_exact(),
        arb_json_exact(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        proptest::collection::vec(arb_policy(), 0..3),
    )
        .prop_map(
            |(
                cluster_id,
                term,
                attempt,
                job_id,
                processor,
                job_params,
                instance_params,
                timeout_ms,
                lease_ms,
                policies,
            )| Dispatch {
                cluster_id,
                term,
                attempt,
                job_id,
                processor,
                job_params,
                instance_params,
                timeout_ms,
                lease_ms,
                policies,
            },
        )
}

fn arb_policy() -> impl Strategy<Value = raftjob::state::ProcessorPolicy> {
    let list = || proptest::collection::vec(any::<String>(), 0..4);
    (any::<bool>(), list(), list()).prop_map(|(shell_enabled, http_allow, http_deny)| {
        raftjob::state::ProcessorPolicy {
            shell_enabled,
            http_allow,
            http_deny,
        }
    })
}

fn arb_ack() -> impl Strategy<Value = DispatchAck> {
    (
        any::<bool>(),
        proptest::option::of(any::<String>()),
        any::<u64>(),
    )
        .prop_map(|(accepted, reason, term_seen)| DispatchAck {
            accepted,
            reason,
            term_seen,
        })
}

fn arb_server_msg() -> impl Strategy<Value = ServerMsg> {
    let s = || any::<String>();
    prop_oneof![
        (s(), s(), any::<u64>(), s(), any::<u64>(), any::<u64>(), s()).prop_map(
            |(worker_id, cluster_id, term, credential, heartbeat_ms, lease_ms, server_version)| {
                ServerMsg::Registered(Registered {
                    worker_id,
                    cluster_id,
                    term,
                    credential,
                    heartbeat_ms,
                    lease_ms,
                    server_version,
                })
            }
        ),
        (
            any::<u64>(),
            s(),
            any::<bool>(),
            any::<u64>(),
            prop::collection::vec(arb_attempt(), 0..3),
            prop::collection::vec(s(), 0..3)
        )
            .prop_map(|(term, cluster_id, renewed, lease_ms, revoke, servers)| {
                ServerMsg::HeartbeatAck(raftjob::protocol::HeartbeatAck {
                    term,
                    cluster_id,
                    renewed,
                    lease_ms,
                    revoke,
                    servers,
                })
            }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(term, accepted)| ServerMsg::ReportAck(ReportAck { term, accepted })),
        (s(), any::<bool>())
            .prop_map(|(worker_id, removed)| ServerMsg::Deregistered { worker_id, removed }),
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(s())
        )
            .prop_map(|(leader_id, leader_addr)| ServerMsg::NotLeader {
                leader_id,
                leader_addr
            }),
        (s(), s()).prop_map(|(code, message)| ServerMsg::Refused { code, message }),
        arb_dispatch().prop_map(ServerMsg::Dispatch),
        (s(), any::<u64>(), arb_attempt()).prop_map(|(cluster_id, term, attempt)| ServerMsg::Stop(
            StopAttempt {
                cluster_id,
                term,
                attempt
            }
        )),
    ]
}

fn arb_ws_worker_frame() -> impl Strategy<Value = WsWorkerFrame> {
    prop_oneof![
        (any::<u64>(), arb_worker_msg()).prop_map(|(seq, msg)| WsWorkerFrame::Request { seq, msg }),
        (arb_attempt(), arb_ack())
            .prop_map(|(attempt, ack)| WsWorkerFrame::DispatchAck { attempt, ack }),
        (arb_attempt(), arb_ack())
            .prop_map(|(attempt, ack)| WsWorkerFrame::StopAck { attempt, ack }),
    ]
}

fn arb_discovery() -> impl Strategy<Value = Discovery> {
    let s = || any::<String>();
    (
        proptest::option::of(s()),
        s(),
        s(),
        prop::collection::vec(s(), 0..3),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        prop::collection::btree_map(s(), s(), 0..3),
        prop::collection::vec(s(), 0..3),
    )
        .prop_map(
            |(
                cluster_id,
                server_version,
                protocol,
                protocols,
                leader_id,
                term,
                leader_transports,
                servers,
            )| Discovery {
                cluster_id,
                server_version,
                protocol,
                protocols,
                leader_id,
                term,
                leader_transports,
                servers,
            },
        )
}

/// serialise → parse → serialise gives the same JSON.
fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(
    msg: &T,
) -> Result<(), TestCaseError> {
    let text = serde_json::to_string(msg).expect("messages serialise");
    let back: T =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    let again = serde_json::to_string(&back).expect("messages serialise");
    prop_assert_eq!(&text, &again);
    // And through a Value, as the http transport's Json extractor does.
    let value: Value = serde_json::from_str(&text).expect("valid JSON");
    let from_value: T =
        serde_json::from_value(value).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    prop_assert_eq!(&text, &serde_json::to_string(&from_value).unwrap());
    Ok(())
}

/// Valid frames of every kind, as JSON values to mutate.
fn valid_messages() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_worker_msg().prop_map(|m| serde_json::to_value(m).unwrap()),
        arb_server_msg().prop_map(|m| serde_json::to_value(m).unwrap()),
        arb_ws_worker_frame().prop_map(|m| serde_json::to_value(m).unwrap()),
        (any::<u64>(), arb_server_msg())
            .prop_map(|(seq, msg)| serde_json::to_value(WsServerFrame { seq, msg }).unwrap()),
        arb_discovery().prop_map(|m| serde_json::to_value(m).unwrap()),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes decode to a value or an error.
    #[test]
    fn transport_decoders_take_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    /// Arbitrary JSON documents (as text and as values) decode to a value or an error.
    #[test]
    fn transport_decoders_take_arbitrary_json(v in arb_json()) {
        decode_all(v.to_string().as_bytes());
        decode_all_values(&v);
    }

    /// Near-valid messages (one field replaced or removed, or the text cut short).
    #[test]
    fn transport_decoders_take_near_valid_messages(
        msg in valid_messages(),
        seed in any::<usize>(),
        replacement in arb_json(),
        remove in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mutated = mutate(msg.clone(), seed, replacement, remove);
        decode_all(mutated.to_string().as_bytes());
        decode_all_values(&mutated);
        let text = msg.to_string();
        decode_all(&text.as_bytes()[..cut.index(text.len() + 1)]);
    }

    /// Valid messages round-trip through serde.
    #[test]
    fn transport_messages_round_trip(
        w in arb_worker_msg(),
        s in arb_server_msg(),
        f in arb_ws_worker_frame(),
        seq in any::<u64>(),
        d in arb_discovery(),
    ) {
        round_trips(&w)?;
        round_trips(&s)?;
        round_trips(&f)?;
        round_trips(&WsServerFrame { seq, msg: s })?;
        round_trips(&d)?;
    }
}

/// Policy entries: host-ish text, networks, addresses and arbitrary strings.
fn policy_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9.*_-]{0,40}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,2})?",
        "[0-9a-fA-F:]{0,20}(/[0-9]{1,3})?",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The operator's policy: any entries validate or name the bad one, and checking
    /// any URL or address against the rules never panics.
    #[test]
    fn processor_policies_take_arbitrary_entries(
        allow in prop::collection::vec(policy_entry(), 0..5),
        deny in prop::collection::vec(policy_entry(), 0..5),
        host in prop_oneof!["[a-zA-Z0-9.-]{1,30}", "\\[[0-9a-f:.]{2,30}\\]", any::<String>()],
        ip in any::<std::net::IpAddr>(),
    ) {
        let policy = raftjob::state::ProcessorPolicy { shell_enabled: true, http_allow: allow, http_deny: deny };
        if let Err(e) = policy.validate() {
            prop_assert!(e.field.starts_with("http_allow[") || e.field.starts_with("http_deny["), "{e}");
        }
        let rules = policy.http_rules();
        if let Ok(url) = url::Url::parse(&format!("http://{host}/x")) {
            let _ = rules.check_url(&url);
            let _ = rules.allows_name(&url);
        }
        let _ = rules.check_ip(ip);
        let _ = rules.check_resolved(&host, ip);
    }
}

// ---------------------------------------------------------------------------------
// Regressions: inputs the fuzzers found.

/// `config_flag_values_never_panic` found: a worker heartbeat above `u64::MAX / 2`
/// overflowed `2 * heartbeat_ms` in the lease check (a panic in debug builds, a
/// wrapped comparison that accepted the value in release builds).
#[test]
fn regression_huge_worker_heartbeat_is_refused_not_overflowed() {
    let args = ServerArgs {
        node_id: Some(1),
        data_dir: Some("/tmp/raftjob-fuzz".into()),
        api_addr: Some("127.0.0.1:7701".into()),
        cluster_addr: Some("127.0.0.1:7801".into()),
        initial_members: vec!["1=127.0.0.1:7801".into()],
        cluster_secret: Some("0123456789abcdef0123".into()),
        admin_token: Some("0123456789abcdef0123".into()),
        worker_heartbeat_ms: Some(9_223_372_036_854_775_808),
        ..Default::default()
    };
    // Refused by the one-day bound on worker timings, naming the key.
    let e = ServerConfig::resolve(Default::default(), &args).unwrap_err();
    assert!(e.to_string().contains("workers.heartbeat_ms"), "{e}");
}
