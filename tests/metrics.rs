//! `/metrics`: real server and worker processes on loopback, scraped and parsed as the
//! Prometheus text format. Run one at a time (`--test-threads=1`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::json;

const READY: Duration = Duration::from_secs(30);

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    /// Values of `name` whose labels include every pair of `with`.
    fn values(&self, name: &str, with: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect()
    }

    /// The one value of `name` with exactly these labels.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == with.len()
                    && with
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.values(name, with).iter().sum()
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (key, r) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (i, '"') => break i,
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the text exposition format strictly: every line is empty, a HELP or TYPE
/// line, or a sample whose family has a TYPE (given once, before its samples) and a
/// HELP line.
fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        macro_rules! fail {
            ($why:expr) => {
                panic!("line {}: {}: {line:?}\n{text}", n + 1, $why)
            };
        }
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest
                .split_once(' ')
                .unwrap_or_else(|| fail!("HELP without text"));
            if !is_name(name) || !helps.insert(name.to_string()) {
                fail!("bad or repeated HELP");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| fail!("TYPE without type"));
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                fail!("unknown type");
            }
            if !is_name(name) || types.insert(name.to_string(), kind.to_string()).is_some() {
                fail!("bad or repeated TYPE");
            }
            continue;
        }
        if line.starts_with('#') {
            fail!("unexpected comment");
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| fail!("no value"));
        let name = &line[..name_end];
        if !is_name(name) {
            fail!("bad metric name");
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| fail!(e))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| fail!("no space before the value"))
            .split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).unwrap_or_else(|e| fail!(e));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| fail!("bad timestamp"));
        }
        if fields.next().is_some() {
            fail!("trailing fields");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            fail!("sample before (or without) its TYPE");
        }
        if !helps.contains(family) {
            fail!("sample without HELP");
        }
        assert!(name.starts_with("raftjob_"), "unprefixed series {name}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Scrape {
        samples,
        types,
        text: text.to_string(),
    }
}

async fn scrape(node: &TestNode) -> Scrape {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/metrics", node.api))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("scrape answers");
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    parse(&resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_describe_a_cluster_running_jobs() {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    let leader_id = c.wait_ready(&[1, 2, 3], READY).await;
    let leader = c.nodes.iter().find(|n| n.id == leader_id).unwrap();
    let follower = c.nodes.iter().find(|n| n.id != leader_id).unwrap();

    let token = app_token(&c, "shop").await;
    let _worker = TestWorker::start(&c, "shop", &token, "http", "w-http", &[]);
    wait_workers_live(&c, "shop", 1).await;
    let job = c
        .client()
        .create_job(&api_job(
            "shop",
            "hello",
            json!({"type": "shell", "command": "true"}),
        ))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    for _ in 0..2 {
        let id = run_job(&c, job, json!(null)).await;
        let inst = wait_terminal(&c, id, Duration::from_secs(30)).await;
        assert_eq!(inst["status"], "succeeded", "{inst}");
    }
    // A job on a per-second schedule, so the scheduler fires too.
    let mut cron = api_job("shop", "tick", json!({"type": "shell", "command": "true"}));
    cron["schedule"] = json!({"type": "cron", "expr": "* * * * * *", "timezone": "UTC"});
    let cron_id = c.client().create_job(&cron).await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let m = eventually(
        Duration::from_secs(20),
        "scheduled fires dispatched, as the leader's metrics say",
        || async {
            let m = scrape(leader).await;
            let fired = m.value("raftjob_scheduler_fires_total", &[])? >= 2.0;
            let dispatched_late = m.sum(
                "raftjob_scheduler_lateness_seconds_count",
                &[("stage", "dispatched")],
            ) >= 2.0;
            (fired && dispatched_late).then_some(m)
        },
    )
    .await;
    c.client()
        .post(&format!("/api/v1/jobs/{cron_id}/disable"), &json!(null))
        .await
        .unwrap();

    // Raft: one leader, and it leads with both followers' lag.
    let mut is_leader = BTreeMap::new();
    for n in &c.nodes {
        let s = scrape(n).await;
        is_leader.insert(n.id, s.value("raftjob_raft_is_leader", &[]).unwrap());
        assert_eq!(
            s.value("raftjob_raft_has_leader", &[]),
            Some(1.0),
            "node {}",
            n.id
        );
        assert_eq!(
            s.value("raftjob_raft_leader_id", &[]),
            Some(leader_id as f64)
        );
        assert_eq!(s.value("raftjob_raft_voters", &[]), Some(3.0));
        let id = n.id.to_string();
        assert_eq!(
            s.value(
                "raftjob_node_info",
                &[("node_id", &id), ("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        is_leader.values().filter(|v| **v == 1.0).count(),
        1,
        "exactly one leader: {is_leader:?}"
    );
    assert_eq!(is_leader[&leader_id], 1.0);
    assert!(m.value("raftjob_raft_term", &[]).unwrap() >= 1.0);
    let last = m.value("raftjob_raft_last_log_index", &[]).unwrap();
    let committed = m.value("raftjob_raft_committed_index", &[]).unwrap();
    let applied = m.value("raftjob_raft_applied_index", &[]).unwrap();
    assert!(
        last > 5.0 && committed <= last && applied > 0.0,
        "{last} {committed} {applied}"
    );
    let followers: BTreeSet<String> = m
        .samples
        .iter()
        .filter(|s| s.name == "raftjob_raft_replication_lag_entries")
        .map(|s| s.labels["follower"].clone())
        .collect();
    let expected: BTreeSet<String> = c
        .nodes
        .iter()
        .filter(|n| n.id != leader_id)
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(followers, expected);
    for lag in m.values("raftjob_raft_replication_lag_entries", &[]) {
        assert!((0.0..1000.0).contains(&lag), "lag {lag}");
    }
    assert!(
        m.value("raftjob_raft_seconds_since_quorum_ack", &[])
            .unwrap()
            < 5.0
    );
    assert!(m.value("raftjob_raft_elections_total", &[]).is_some());

    // Scheduling and dispatch.
    assert_eq!(m.types["raftjob_scheduler_lateness_seconds"], "histogram");
    let late = m.sum(
        "raftjob_scheduler_lateness_seconds_sum",
        &[("stage", "proposed")],
    ) / m.sum(
        "raftjob_scheduler_lateness_seconds_count",
        &[("stage", "proposed")],
    );
    assert!((0.0..2.0).contains(&late), "mean lateness {late} s");
    // The two runs at least (a fire's dispatch may be counted just after the scrape).
    assert!(
        m.value("raftjob_dispatches_total", &[("protocol", "http")])
            .unwrap()
            >= 2.0
    );
    assert!(m
        .value(
            "raftjob_dispatch_refusals_total",
            &[("reason", "unreachable")]
        )
        .is_some());
    assert_eq!(m.value("raftjob_attempts_lost_total", &[]), Some(0.0));
    assert!(m
        .value("raftjob_scheduler_skips_total", &[("kind", "misfire")])
        .is_some());
    assert!(
        m.value("raftjob_instances", &[("status", "succeeded")])
            .unwrap()
            >= 2.0
    );
    assert!(m
        .value("raftjob_instances", &[("status", "canceled")])
        .is_some());
    assert_eq!(
        m.value(
            "raftjob_workers_live",
            &[("app", "shop"), ("protocol", "http")]
        ),
        Some(1.0)
    );

    // Write and read paths, on the leader.
    assert!(
        m.value("raftjob_write_entries_total", &[("result", "ok")])
            .unwrap()
            > 0.0
    );
    assert!(m.value("raftjob_write_batch_size_count", &[]).unwrap() > 0.0);
    assert!(m.sum("raftjob_read_index_rounds_total", &[("result", "ok")]) > 0.0);

    // HTTP, by route template: the transport's heartbeats on the leader, and the API
    // calls on whichever node answered them.
    assert!(
        m.sum(
            "raftjob_http_requests_total",
            &[
                ("listener", "transport.http"),
                ("method", "POST"),
                ("route", "/transport/v1/heartbeat"),
                ("status", "200"),
            ],
        ) > 0.0,
        "{}",
        m.text
    );
    let mut api_gets = 0.0;
    for n in &c.nodes {
        let s = scrape(n).await;
        api_gets += s.sum(
            "raftjob_http_requests_total",
            &[
                ("listener", "api"),
                ("method", "GET"),
                ("route", "/api/v1/instances/{id}"),
            ],
        );
        for sample in s
            .samples
            .iter()
            .filter(|x| x.name.starts_with("raftjob_http_"))
        {
            let route = &sample.labels["route"];
            assert!(
                route == "unmatched"
                    || !route
                        .split('/')
                        .any(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())),
                "a raw path leaked into the route label: {sample:?}"
            );
        }
    }
    assert!(api_gets >= 2.0, "instance reads counted by template");

    // A follower: its own Raft view, the replicated state, no leader-only series.
    let f = scrape(follower).await;
    assert_eq!(f.value("raftjob_raft_is_leader", &[]), Some(0.0));
    assert!(f
        .values("raftjob_raft_replication_lag_entries", &[])
        .is_empty());
    assert!(f.value("raftjob_raft_committed_index", &[]).is_none());
    assert!(f.values("raftjob_workers_live", &[]).is_empty());
    assert_eq!(
        f.value(
            "raftjob_workers_registered",
            &[("app", "shop"), ("protocol", "http")]
        ),
        Some(1.0)
    );
    assert_eq!(f.value("raftjob_jobs", &[]), Some(2.0));
    assert_eq!(f.value("raftjob_scheduler_timers_pending", &[]), Some(0.0));
    assert!(f.value("raftjob_raft_applied_index", &[]).unwrap() > 0.0);
}

#[tokio::test]
async fn require_token_refuses_an_unauthenticated_scrape() {
    let c = TestCluster::start_with(1, &["--metrics-require-token"]);
    c.wait_ready(&[1], READY).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", c.nodes[0].api);
    for auth in [None, Some("Bearer wrong-token-0123456789")] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "auth {auth:?}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "auth {auth:?}"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 401, "{body}");
    }
    let resp = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let m = parse(&resp.text().await.unwrap());
    assert_eq!(m.value("raftjob_raft_is_leader", &[]), Some(1.0));
    // The refusals were counted, under the route template.
    let resp = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    let m = parse(&resp.text().await.unwrap());
    assert!(
        m.sum(
            "raftjob_http_requests_total",
            &[
                ("listener", "api"),
                ("route", "/metrics"),
                ("status", "401")
            ],
        ) >= 2.0,
        "{}",
        m.text
    );
    // Health stays open.
    let resp = http
        .get(format!("http://{}/healthz", c.nodes[0].api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok = "# HELP raftjob_x X.\n# TYPE raftjob_x counter\nraftjob_x{a=\"q\\\"\"} 1\n\n";
    assert_eq!(parse(ok).samples[0].labels["a"], "q\"");
    for bad in [
        "raftjob_x 1\n",
        "# HELP raftjob_x X.\n# TYPE raftjob_x gauge\n# TYPE raftjob_x gauge\nraftjob_x 1\n",
        "# HELP raftjob_x X.\n# TYPE raftjob_x gauge\nraftjob_x{a=\"b} 1\n",
        "# HELP raftjob_x X.\n# TYPE raftjob_x gauge\nraftjob_x one\n",
    ] {
        let result = std::panic::catch_unwind(|| parse(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}
