//! Property-based fuzzing of the API's request bodies against one real `raftjob
//! server` process (a one-node cluster): arbitrary bytes, arbitrary JSON and
//! near-valid bodies to every write route. The answer is never 5xx, every 4xx is
//! `application/problem+json` with a `code`, the node stays up, and every job that
//! was accepted is valid.
//!
//! Cases: `RAFTJOB_FUZZ_API_CASES`, else a tenth of `RAFTJOB_FUZZ_CASES`, else 200
//! (well under 60 s). See docs/testing.md, "Fuzzing".

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, TOKEN};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use raftjob::schedule::Timeline;
use raftjob::server::api::validate;
use raftjob::state::JobSpec;
use serde_json::{json, Value};

fn api_cases() -> u32 {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    var("RAFTJOB_FUZZ_API_CASES")
        .or_else(|| var("RAFTJOB_FUZZ_CASES").map(|n| (n / 10).max(1)))
        .unwrap_or(200)
}

fn arb_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z_]{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}|\\PC{0,5}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Replaces (or removes) one field at any depth.
fn mutate(mut v: Value, seed: usize, replacement: Value, remove: bool) -> Value {
    fn go(v: &mut Value, seed: usize, replacement: Value, remove: bool) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                let key = &keys[seed % keys.len()];
                let child = m.get_mut(key).expect("key exists");
                if (seed / keys.len()) % 3 == 0
                    && matches!(child, Value::Object(c) if !c.is_empty())
                {
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
    go(&mut v, seed, replacement, remove);
    v
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-zA-Z0-9._-]{1,16}",
        1 => "[a-zA-Z0-9._-]{60,70}",
        1 => "\\PC{0,12}",
        1 => Just(String::new()),
    ]
}

fn cron() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
        (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..70).prop_map(|n| format!("*/{n}")),
        prop::sample::select(
            &["L", "W", "15W", "MON#2", "FRI#6", "L-3", "5L", "JAN-MAR", "2030", "1999"][..]
        )
        .prop_map(str::to_string),
        "[0-9LW#?*/,\\-]{1,5}",
    ];
    prop_oneof![
        4 => prop::collection::vec(field, 4..=8).prop_map(|f| f.join(" ")),
        4 => prop::sample::select(&["0 0 * * * *", "*/5 * * * *", "0 0 12 * * ?", "0 0 0 L * ?",
            "0 0 9 ? * MON#2", "0 0 9 15W * ?", "0 30 2 * * * 2030", "0 30 2 * * *"][..]).prop_map(str::to_string),
        1 => "\\PC{0,30}",
    ]
}

fn schedule() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (cron(), prop::option::of(prop_oneof![
                3 => Just("UTC".to_string()), 3 => Just("Europe/Berlin".to_string()),
                3 => Just("America/New_York".to_string()), 1 => "\\PC{0,16}"]),
              prop::sample::select(&["fire_at_transition", "skip", "fire_at_transition", "skip", "fire_at_transition", "skip", "SKIP", ""][..]))
            .prop_map(|(expr, tz, gap)| {
                let mut s = json!({"type": "cron", "expr": expr, "dst_gap": gap});
                if let Some(tz) = tz { s["timezone"] = json!(tz); }
                s
            }),
        1 => prop_oneof![any::<u64>(), 0u64..1000].prop_map(|n| json!({"type": "fixed_rate", "every_ms": n})),
        1 => prop_oneof![any::<u64>(), 0u64..1000].prop_map(|n| json!({"type": "fixed_delay", "delay_ms": n})),
        1 => prop_oneof![Just("2099-01-01T00:00:00Z".to_string()), Just("1970-01-01T00:00:00Z".to_string()),
                         Just("+262142-12-31T23:59:59Z".to_string()), "\\PC{0,24}"]
            .prop_map(|at| json!({"type": "once", "at": at})),
        1 => Just(json!({"type": "api"})),
    ]
}

fn processor() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![4 => Just("echo hi".to_string()), 1 => "\\PC{0,20}", 1 => Just(" ".to_string())]
            .prop_map(|c| json!({"type": "shell", "command": c})),
        (
            prop_oneof![Just("GET".to_string()), Just("POST".to_string()), "\\PC{0,8}"],
            prop_oneof![
                Just("http://127.0.0.1:1/x".to_string()),
                Just("https://example.com".to_string()),
                Just("file:///etc/passwd".to_string()),
                "\\PC{0,20}"
            ],
            prop::collection::vec(any::<u16>(), 0..3),
        )
            .prop_map(|(m, u, s)| json!({"type": "http", "method": m, "url": u, "expect_status": s})),
        (name(), arb_json()).prop_map(|(n, p)| json!({"type": "custom", "name": n, "params": p})),
    ]
}

/// Near-valid job specs. Always disabled, so accepted ones never fire and load the node.
fn job_spec() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => Just("fuzz".to_string()), 1 => name()],
        name(),
        schedule(),
        processor(),
        prop_oneof![4 => 0u32..5, 1 => any::<u32>()],
        prop::option::weighted(0.3, prop_oneof![Just(0u64), any::<u64>()]),
        prop::option::weighted(
            0.3,
            prop::sample::select(&["2026-01-01T00:00:00Z", "2100-01-01T00:00:00Z", "x"][..]),
        ),
        prop::option::weighted(
            0.3,
            prop::sample::select(&["2025-01-01T00:00:00Z", "2101-01-01T00:00:00Z"][..]),
        ),
    )
        .prop_map(
            |(app, name, schedule, processor, retries, timeout, start, end)| {
                let mut spec = json!({
                    "app": app, "name": name, "schedule": schedule, "processor": processor,
                    "retries": retries, "enabled": false,
                });
                if let Some(t) = timeout {
                    spec["timeout_ms"] = json!(t);
                }
                if let Some(s) = start {
                    spec["start_at"] = json!(s);
                }
                if let Some(e) = end {
                    spec["end_at"] = json!(e);
                }
                spec
            },
        )
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Json(Value),
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    route: &'static str,
    path: String,
    body: Body,
    content_type: Option<&'static str>,
    idempotency_key: Option<String>,
}

/// What the fixture created: ids the routes can point at.
#[derive(Clone)]
struct Fixture {
    job: u64,
    instance: u64,
}

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/apps"),
    ("POST", "/api/v1/jobs"),
    ("PUT", "/api/v1/jobs/{job}"),
    ("POST", "/api/v1/jobs/{job}/run"),
    ("POST", "/api/v1/jobs/{job}/enable"),
    ("POST", "/api/v1/jobs/{job}/disable"),
    ("POST", "/api/v1/instances/{instance}/stop"),
    ("POST", "/api/v1/instances/{instance}/cancel"),
    ("POST", "/api/v1/instances/{instance}/retry"),
    ("POST", "/api/v1/cluster/members"),
    ("POST", "/api/v1/cluster/transfer-leader"),
];

/// A near-valid body for a route, as JSON.
fn valid_body(route: &str) -> BoxedStrategy<Value> {
    match route {
        "/api/v1/apps" => name().prop_map(|n| json!({"name": n})).boxed(),
        "/api/v1/jobs" | "/api/v1/jobs/{job}" => job_spec().boxed(),
        "/api/v1/jobs/{job}/run" => (arb_json(), prop_oneof![3 => 0u64..1000, 1 => any::<u64>()])
            .prop_map(|(p, d)| json!({"params": p, "delay_ms": d}))
            .boxed(),
        "/api/v1/cluster/members" => (any::<u64>(), "\\PC{0,16}")
            .prop_map(|(id, a)| json!({"id": id, "cluster_addr": a}))
            .boxed(),
        "/api/v1/cluster/transfer-leader" => prop_oneof![0u64..4, any::<u64>()]
            .prop_map(|to| json!({"to": to}))
            .boxed(),
        _ => Just(json!({})).boxed(),
    }
}

fn case() -> impl Strategy<Value = (usize, Body, Option<&'static str>, Option<String>, String)> {
    (
        0..ROUTES.len(),
        any::<usize>(),
        any::<bool>(),
        arb_json(),
        prop::collection::vec(any::<u8>(), 0..300),
        0u8..5,
        prop::sample::select(
            &[
                Some("application/json"),
                Some("application/json"),
                Some("application/json"),
                Some("application/json; charset=utf-8"),
                Some("text/plain"),
                Some("application/problem+json"),
                None,
            ][..],
        ),
        prop::option::weighted(0.2, prop_oneof!["[ -~]{0,40}", "[a-z0-9-]{300,320}"]),
        prop::sample::select(
            &[
                "{id}",
                "{id}",
                "{id}",
                "{id}",
                "{id}",
                "{id}",
                "{id}",
                "0",
                "999999",
                "18446744073709551615",
                "abc",
                "-1",
                "1.5",
                "%20",
            ][..],
        ),
    )
        .prop_flat_map(|(r, seed, remove, replacement, bytes, kind, ct, key, id)| {
            let route = ROUTES[r].1;
            valid_body(route).prop_map(move |valid| {
                let body = match kind {
                    0 => Body::Bytes(bytes.clone()),
                    1 => Body::Json(replacement.clone()),
                    2 => Body::Json(mutate(valid, seed, replacement.clone(), remove)),
                    _ => Body::Json(valid),
                };
                (r, body, ct, key.clone(), id.to_string())
            })
        })
}

fn build(
    f: &Fixture,
    (r, body, ct, key, id): (usize, Body, Option<&'static str>, Option<String>, String),
) -> Case {
    let (method, template) = ROUTES[r];
    let pick = |fixture_id: u64| {
        if id == "{id}" {
            fixture_id.to_string()
        } else {
            id.clone()
        }
    };
    let path = template
        .replace("{job}", &pick(f.job))
        .replace("{instance}", &pick(f.instance));
    Case {
        method,
        route: template,
        path,
        body,
        content_type: ct,
        idempotency_key: key,
    }
}

/// A valid add-member body: a real membership change (adding an unreachable voter),
/// not input fuzzing; such bodies are skipped.
fn adds_a_member(c: &Case) -> bool {
    let Body::Json(v) = &c.body else {
        return false;
    };
    c.path == "/api/v1/cluster/members"
        && v.as_object().is_some_and(|o| o.len() == 2)
        && v["id"].as_u64().is_some_and(|id| id > 0)
        && v["cluster_addr"].as_str().is_some_and(|a| {
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        })
}

/// An accepted job is valid: its spec passes validation again and compiles.
fn check_job(job: &Value) -> Result<(), TestCaseError> {
    let spec: JobSpec = serde_json::from_value(strip_job(job))
        .map_err(|e| TestCaseError::fail(format!("stored job is not a job spec: {e}: {job}")))?;
    validate::job_spec(&spec)
        .map_err(|e| TestCaseError::fail(format!("invalid job accepted: {e}: {job}")))?;
    Timeline::compile(&spec, 0)
        .map_err(|e| TestCaseError::fail(format!("accepted job does not compile: {e}: {job}")))?;
    Ok(())
}

/// A job view without its server-side fields: the spec.
fn strip_job(job: &Value) -> Value {
    let keys = [
        "app",
        "name",
        "description",
        "schedule",
        "processor",
        "execution_mode",
        "dispatch_strategy",
        "retries",
        "timeout_ms",
        "max_concurrent_instances",
        "worker_tag",
        "designated_workers",
        "enabled",
        "params",
        "misfire_policy",
        "concurrency_policy",
        "start_at",
        "end_at",
    ];
    let o = job.as_object().cloned().unwrap_or_default();
    Value::Object(
        o.into_iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .collect(),
    )
}

async fn send(http: &reqwest::Client, base: &str, c: &Case) -> Result<u16, TestCaseError> {
    let url = format!("{base}{}", c.path);
    let mut req = match c.method {
        "PUT" => http.put(&url),
        _ => http.post(&url),
    }
    .bearer_auth(TOKEN)
    .timeout(Duration::from_secs(30));
    if let Some(ct) = c.content_type {
        req = req.header("content-type", ct);
    }
    if let Some(k) = &c.idempotency_key {
        req = req.header("idempotency-key", k.as_str());
    }
    req = match &c.body {
        Body::Bytes(b) => req.body(b.clone()),
        Body::Json(v) => req.body(serde_json::to_vec(v).unwrap()),
    };
    let resp = req
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("request failed (node down?): {e}")))?;
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    prop_assert!(
        !status.is_server_error(),
        "{} {} answered {}: {}",
        c.method,
        c.path,
        status,
        text
    );
    if status.is_client_error() {
        prop_assert!(
            ct.starts_with("application/problem+json"),
            "{} answered {} with content-type {:?}: {}",
            c.path,
            status,
            ct,
            text
        );
        let problem: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("problem is not JSON: {e}: {text}")))?;
        prop_assert!(
            problem["code"].as_str().is_some_and(|s| !s.is_empty()),
            "problem without a code: {}",
            text
        );
    }
    if status.is_success() && (c.path == "/api/v1/jobs" || c.method == "PUT") {
        let job: Value = serde_json::from_str(&text).unwrap_or_default();
        // POST answers {"id", "job"}, PUT the job itself.
        let job = if job.get("job").is_some() {
            job["job"].clone()
        } else {
            job
        };
        check_job(&job)?;
    }
    Ok(status.as_u16())
}

#[test]
fn api_write_routes_never_answer_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = TestCluster::start(1);
    rt.block_on(c.wait_ready(&[1], Duration::from_secs(60)));
    let base = format!("http://{}", c.nodes[0].api);
    let http = reqwest::Client::new();

    // The fixture: an app, an api-only job and one instance of it.
    let fixture = rt.block_on(async {
        let post = |path: &str, body: Value| {
            http.post(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
        };
        let r = post("/api/v1/apps", json!({"name": "fuzz"})).await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let r = post(
            "/api/v1/jobs",
            json!({"app": "fuzz", "name": "fixture", "schedule": {"type": "api"},
                   "processor": {"type": "shell", "command": "true"}}),
        )
        .await
        .unwrap();
        let v: Value = r.json().await.unwrap();
        let job = v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("job created: {v}"));
        let r = post(&format!("/api/v1/jobs/{job}/run"), json!({}))
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let instance = v["instance_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("instance created: {v}"));
        Fixture { job, instance }
    });

    let cases = api_cases();
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let result = runner.run(&case(), |raw| {
        let case = build(&fixture, raw);
        if adds_a_member(&case) {
            return Ok(());
        }
        let status = rt.block_on(send(&http, &base, &case))?;
        *counts
            .borrow_mut()
            .entry(format!("{} {} {status}", case.method, case.route))
            .or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{}", c.dump_logs());
    }
    eprintln!(
        "{cases} cases in {:?}; answers by route:",
        started.elapsed()
    );
    for (route, n) in counts.borrow().iter() {
        eprintln!("  {route}: {n}");
    }

    // The node is still up, and every job it holds is valid.
    assert!(
        c.node(1).is_running(),
        "the server exited\n{}",
        c.dump_logs()
    );
    rt.block_on(async {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert!(r.status().is_success(), "not ready after fuzzing");
        let r = http
            .get(format!("{base}/api/v1/jobs?app=fuzz"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
        assert!(!jobs.is_empty(), "no jobs listed: {v}");
        for job in &jobs {
            check_job(job).unwrap_or_else(|e| panic!("{e}"));
        }
        eprintln!("{} jobs in app fuzz, all valid", jobs.len());
    });
}

/// Found by `make schemathesis`: serde reads a struct, or a tagged enum, from an array
/// by position, so `PUT /api/v1/policy` with `[]` reset the policy and
/// `"schedule": ["cron", "..."]` made a job. Bodies must name their fields.
#[test]
fn array_bodies_are_refused_and_change_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = TestCluster::start(1);
    rt.block_on(async {
        c.wait_ready(&[1], Duration::from_secs(60)).await;
        let base = format!("http://{}", c.nodes[0].api);
        let http = reqwest::Client::new();
        let send = |method: reqwest::Method, path: String, body: Value| {
            http.request(method, format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
        };
        let ok = |r: reqwest::Response| async move {
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{status} {v}");
            v
        };
        use reqwest::Method as M;
        ok(send(M::POST, "/api/v1/apps".into(), json!({"name": "a"}))
            .await
            .unwrap())
        .await;
        let policy = json!({"shell_enabled": false, "http_deny": ["169.254.0.0/16"]});
        ok(send(M::PUT, "/api/v1/policy".into(), policy.clone())
            .await
            .unwrap())
        .await;
        let job = ok(send(
            M::POST,
            "/api/v1/jobs".into(),
            json!({"app": "a", "name": "j", "schedule": {"type": "api"},
                   "processor": {"type": "custom", "name": "noop"}}),
        )
        .await
        .unwrap())
        .await["id"]
            .as_u64()
            .unwrap();

        let nested = json!({"app": "a", "name": "k", "schedule": ["cron", "0 0 * * * *"],
                            "processor": {"type": "custom", "name": "noop"}});
        let cases = [
            (M::PUT, "/api/v1/policy".to_string(), json!([]), None),
            (
                M::PUT,
                "/api/v1/policy".to_string(),
                json!([true, [], []]),
                None,
            ),
            (M::PUT, "/api/v1/apps/a/policy".to_string(), json!([]), None),
            (M::POST, "/api/v1/apps".to_string(), json!(["b"]), None),
            (
                M::POST,
                "/api/v1/tokens".to_string(),
                json!(["t", "a", "read"]),
                None,
            ),
            (
                M::POST,
                format!("/api/v1/jobs/{job}/run"),
                json!([{"x": 1}, 5]),
                None,
            ),
            (
                M::POST,
                "/api/v1/jobs".to_string(),
                nested.clone(),
                Some("schedule"),
            ),
            (
                M::PUT,
                format!("/api/v1/jobs/{job}"),
                nested,
                Some("schedule"),
            ),
        ];
        for (method, path, body, field) in cases {
            let r = send(method.clone(), path.clone(), body.clone())
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!(status, 400, "{method} {path} {body}: {v}");
            assert_eq!(v["code"], "validation_failed", "{v}");
            if let Some(f) = field {
                assert_eq!(v["field"], f, "{v}");
            }
        }

        // Nothing changed.
        let get = |path: &str| send(M::GET, path.to_string(), Value::Null);
        assert_eq!(ok(get("/api/v1/policy").await.unwrap()).await, policy);
        let apps = ok(get("/api/v1/apps").await.unwrap()).await;
        assert_eq!(apps["apps"].as_array().unwrap().len(), 1, "{apps}");
        let tokens = ok(get("/api/v1/tokens").await.unwrap()).await;
        assert_eq!(tokens["tokens"].as_array().unwrap().len(), 0, "{tokens}");
        let jobs = ok(get("/api/v1/jobs").await.unwrap()).await;
        assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
        assert_eq!(jobs["jobs"][0]["schedule"], json!({"type": "api"}));
        let instances = ok(get(&format!("/api/v1/instances?job_id={job}"))
            .await
            .unwrap())
        .await;
        assert_eq!(
            instances["instances"].as_array().unwrap().len(),
            0,
            "{instances}"
        );
    });
}
