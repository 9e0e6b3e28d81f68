//! Scheduling end to end: real server and worker processes on loopback. Cron,
//! fixed rate and the schedule API; a 1-second cron across a leader kill; 10,000
//! jobs after a restart. The pure rules (misfire, concurrency, retention, DST) are
//! table-tested in `src/schedule` and `src/server/scheduler/tests.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

async fn create_job(c: &TestCluster, spec: Value) -> u64 {
    let v = c.client().post("/api/v1/jobs", &spec).await.unwrap();
    v["id"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

/// Every instance of a job (newest first in the API; returned oldest first).
async fn instances_of(c: &TestCluster, job: u64) -> Vec<Value> {
    let v = c
        .client()
        .get(&format!("/api/v1/instances?job_id={job}&limit=1000"))
        .await
        .unwrap();
    let mut list = v["instances"].as_array().unwrap().clone();
    list.sort_by_key(|i| i["id"].as_u64());
    list
}

fn fire_times(instances: &[Value]) -> Vec<i64> {
    instances
        .iter()
        .filter_map(|i| i["fire_time_ms"].as_i64())
        .collect()
}

/// Checks that a 1-second cron's fire times are unique and that every second from
/// its first to its last fire was either run or recorded as skipped; returns the
/// instances and the skip records.
async fn assert_every_second_accounted(c: &TestCluster, job: u64) -> (Vec<Value>, Vec<Value>) {
    let instances = instances_of(c, job).await;
    let times = fire_times(&instances);
    let unique: BTreeSet<i64> = times.iter().copied().collect();
    assert_eq!(
        unique.len(),
        times.len(),
        "a fire time ran twice: {times:?}"
    );
    let skipped = c
        .client()
        .get(&format!("/api/v1/jobs/{job}/skipped?limit=1000"))
        .await
        .unwrap();
    let skipped = skipped["skipped"].as_array().unwrap().clone();
    let mut covered = unique.clone();
    for s in &skipped {
        let from = s["fire_time_ms"].as_i64().unwrap();
        let through = s["through_ms"].as_i64().unwrap_or(from);
        covered.extend((from..=through).filter(|t| t % 1000 == 0));
    }
    let first = *covered.first().expect("the job fired");
    let last = *covered.last().unwrap();
    let missing: Vec<i64> = (first / 1000..=last / 1000)
        .map(|s| s * 1000)
        .filter(|t| !covered.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "seconds neither run nor recorded as skipped: {missing:?}\n{}",
        c.dump_logs()
    );
    (instances, skipped)
}

#[tokio::test]
async fn cron_and_fixed_rate_jobs_fire_on_time_and_show_their_schedule() {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "s").await;
    let _w = TestWorker::start(&c, "s", &token, "ws", "w", &[]);
    wait_workers_live(&c, "s", 1).await;

    let cron = create_job(
        &c,
        json!({"app": "s", "name": "cron", "schedule": {"type": "cron", "expr": "* * * * * *"},
            "processor": {"type": "shell", "command": "true"}}),
    )
    .await;
    let rate = create_job(
        &c,
        json!({"app": "s", "name": "rate", "schedule": {"type": "fixed_rate", "every_ms": 700},
            "processor": {"type": "shell", "command": "true"}}),
    )
    .await;

    // The job view and the preview show what comes next.
    let job = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}"))
        .await
        .unwrap();
    let next = job["next_fire_time_ms"]
        .as_i64()
        .expect("next fire time shown");
    assert_eq!(next % 1000, 0, "a cron fires on whole seconds: {job}");
    assert!(job["next_fire_time"].as_str().unwrap().ends_with('Z'));
    let preview = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}/schedule?count=5"))
        .await
        .unwrap();
    let times: Vec<i64> = preview["fire_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["at_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(times.len(), 5);
    assert!(times.windows(2).all(|w| w[1] - w[0] == 1000), "{preview}");
    let bad = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}/schedule?count=0"))
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(400), "{bad}");
    assert_eq!(bad.code(), Some("validation_failed"));

    // Both fire, succeed, and record their fire times and timestamps.
    let done = eventually(
        Duration::from_secs(20),
        "4 cron and 4 rate instances succeeded",
        || {
            let c = &c;
            async move {
                let a = instances_of(c, cron).await;
                let b = instances_of(c, rate).await;
                let ok = |l: &[Value]| l.iter().filter(|i| i["status"] == "succeeded").count();
                (ok(&a) >= 4 && ok(&b) >= 4).then_some((a, b))
            }
        },
    )
    .await;
    let (a, b) = done;
    for i in a
        .iter()
        .chain(b.iter())
        .filter(|i| i["status"] == "succeeded")
    {
        let fire = i["fire_time_ms"].as_i64().expect("fire_time_ms");
        let created = i["created_at_ms"].as_i64().unwrap();
        let dispatched = i["dispatched_at_ms"].as_i64().unwrap();
        let started = i["started_at_ms"].as_i64().unwrap();
        let finished = i["finished_at_ms"].as_i64().unwrap();
        assert!(
            created >= fire
                && dispatched >= created
                && started >= dispatched
                && finished >= started,
            "{i}"
        );
        assert!(
            created - fire < 1000,
            "fired within a second of its time: {i}"
        );
        assert_eq!(i["trigger"]["type"], "schedule");
    }
    let ta = fire_times(&a);
    assert!(
        ta.windows(2).all(|w| w[1] - w[0] == 1000),
        "one per second: {ta:?}"
    );
    let tb = fire_times(&b);
    assert!(
        tb.windows(2).all(|w| w[1] - w[0] == 700),
        "no drift: {tb:?}"
    );

    // Disabling stops the timer at once; the job shows no next fire time.
    let job = c
        .client()
        .post(&format!("/api/v1/jobs/{cron}/disable"), &json!({}))
        .await
        .unwrap();
    assert_eq!(job["enabled"], false);
    let view = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}"))
        .await
        .unwrap();
    assert!(view.get("next_fire_time_ms").is_none(), "{view}");
    let count = instances_of(&c, cron).await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await; // nothing may fire while disabled
    assert_eq!(instances_of(&c, cron).await.len(), count);
    let skipped = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}/skipped"))
        .await
        .unwrap();
    assert_eq!(
        skipped["skipped"],
        json!([]),
        "nothing was skipped: {skipped}"
    );
}

/// The 1-second cron across a leader kill -9: every second from the first fire to
/// the last is either run exactly once or recorded as skipped.
#[tokio::test]
async fn a_one_second_cron_runs_each_second_once_across_a_leader_kill() {
    let mut c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "k").await;
    let _w = TestWorker::start(&c, "k", &token, "ws", "w", &[]);
    wait_workers_live(&c, "k", 1).await;
    let job = create_job(
        &c,
        json!({"app": "k", "name": "tick", "schedule": {"type": "cron", "expr": "* * * * * *"},
            "processor": {"type": "shell", "command": "true"}}),
    )
    .await;
    eventually(Duration::from_secs(15), "3 fires before the kill", || {
        let c = &c;
        async move { (instances_of(c, job).await.len() >= 3).then_some(()) }
    })
    .await;
    let leader = c.leader().await;
    // Kill 300 ms after a fire, so the next fire time falls inside the election.
    let phase = chrono::Utc::now().timestamp_millis() % 1000;
    tokio::time::sleep(Duration::from_millis(((1300 - phase) % 1000) as u64)).await;
    let killed_at = chrono::Utc::now().timestamp_millis();
    c.node(leader).kill();
    let started = Instant::now();
    let new_leader = eventually(Duration::from_secs(20), "a new leader", || {
        let c = &c;
        async move {
            let v = c.client().cluster().await.ok()?;
            let id = v["leader_id"].as_u64()?;
            (id != leader).then_some(id)
        }
    })
    .await;
    let elected = started.elapsed();
    eventually(Duration::from_secs(20), "fires 4 s after the kill", || {
        let c = &c;
        async move {
            let t = fire_times(&instances_of(c, job).await);
            (t.last().copied().unwrap_or(0) > killed_at + 4000).then_some(())
        }
    })
    .await;
    c.client()
        .post(&format!("/api/v1/jobs/{job}/disable"), &json!({}))
        .await
        .unwrap();
    let (instances, skipped) = assert_every_second_accounted(&c, job).await;
    // What the kill cost, for the closing note (not asserted: a figure, not a bound).
    let late: Vec<(i64, i64)> = instances
        .iter()
        .filter_map(|i| {
            let fire = i["fire_time_ms"].as_i64()?;
            let created = i["created_at_ms"].as_i64()?;
            (fire >= killed_at - 1000 && fire <= killed_at + 4000)
                .then_some((fire - killed_at, created - fire))
        })
        .collect();
    println!(
        "leader kill: node {new_leader} led {elected:?} after the kill; (fire time - kill, lateness) in ms: {late:?}; skipped: {}",
        skipped.len()
    );
    for i in &instances {
        assert!(
            ["succeeded", "running", "dispatched", "waiting_dispatch"]
                .contains(&i["status"].as_str().unwrap()),
            "{i}"
        );
    }
}

/// 10,000 enabled jobs survive a full restart and are all scheduled again.
#[tokio::test]
async fn ten_thousand_jobs_load_and_schedule_after_a_restart() {
    let mut c = TestCluster::start(3);
    c.wait_ready(&[1, 2, 3], READY).await;
    c.client().create_app("many").await.unwrap();
    let client = c.client();
    let total = 10_000;
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..16 {
        let client = client.clone();
        tasks.spawn(async move {
            for k in (part..total).step_by(16) {
                // A yearly cron: armed but not firing during the test.
                let spec = json!({"app": "many", "name": format!("j{k}"),
                    "schedule": {"type": "cron", "expr": "0 0 3 1 1 *", "timezone": "Europe/Berlin"},
                    "processor": {"type": "shell", "command": "true"}});
                client.post("/api/v1/jobs", &spec).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // One job that fires every second proves the scheduler runs after the restart.
    let rate = create_job(
        &c,
        json!({"app": "many", "name": "rate", "schedule": {"type": "fixed_rate", "every_ms": 1000},
            "processor": {"type": "shell", "command": "true"}}),
    )
    .await;
    for id in 1..=3 {
        c.node(id).stop();
    }
    for id in 1..=3 {
        c.node(id).start();
    }
    let started = Instant::now();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60)).await;
    let jobs = c.client().get("/api/v1/jobs?app=many").await.unwrap();
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), total + 1);
    assert!(
        jobs.iter()
            .all(|j| j["next_fire_time_ms"].as_i64().is_some()),
        "every job has a next fire time"
    );
    let before = instances_of(&c, rate).await.len();
    eventually(
        Duration::from_secs(20),
        "the rate job fires after the restart",
        || {
            let c = &c;
            async move { (instances_of(c, rate).await.len() >= before + 2).then_some(()) }
        },
    )
    .await;
    let leader = c.leader().await;
    let log = c.node(leader).log_text();
    let armed_line = log
        .lines()
        .rev()
        .find(|l| l.contains("scheduler on"))
        .expect("the leader logs its scheduler start");
    assert!(
        armed_line.contains(&format!("armed={}", total + 1)),
        "{armed_line}"
    );
    println!(
        "10,001 jobs: cluster ready and scheduling {:?} after the restart; {armed_line}",
        started.elapsed()
    );
}

/// The whole cluster is down for a few seconds: on restart, the `fire_once` job runs
/// one catch-up instance and records the other missed seconds as skipped; the `skip`
/// job runs none of them. Nothing is dropped silently.
#[tokio::test]
async fn a_cluster_outage_is_caught_up_by_each_jobs_misfire_policy() {
    let mut c = TestCluster::start_with(3, &["--misfire-threshold-ms", "1000"]);
    c.wait_ready(&[1, 2, 3], READY).await;
    c.client().create_app("m").await.unwrap();
    let job = |name: &str, policy: &str| {
        json!({"app": "m", "name": name, "misfire_policy": policy,
            "schedule": {"type": "cron", "expr": "* * * * * *"},
            "processor": {"type": "shell", "command": "true"}})
    };
    let once = create_job(&c, job("once", "fire_once")).await;
    let skip = create_job(&c, job("skip", "skip")).await;
    eventually(Duration::from_secs(15), "both jobs fired twice", || {
        let c = &c;
        async move {
            let a = instances_of(c, once).await.len();
            let b = instances_of(c, skip).await.len();
            (a >= 2 && b >= 2).then_some(())
        }
    })
    .await;
    for id in 1..=3 {
        c.node(id).stop();
    }
    let down_at = chrono::Utc::now().timestamp_millis();
    // The outage itself: the scenario needs the cluster down for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in 1..=3 {
        c.node(id).start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    let up_at = chrono::Utc::now().timestamp_millis();
    eventually(Duration::from_secs(20), "fires after the restart", || {
        let c = &c;
        async move {
            let a = fire_times(&instances_of(c, once).await);
            let b = fire_times(&instances_of(c, skip).await);
            (a.last() > Some(&(up_at + 1000)) && b.last() > Some(&(up_at + 1000))).then_some(())
        }
    })
    .await;
    for id in [once, skip] {
        c.client()
            .post(&format!("/api/v1/jobs/{id}/disable"), &json!({}))
            .await
            .unwrap();
    }
    let lateness =
        |i: &Value| i["created_at_ms"].as_i64().unwrap() - i["fire_time_ms"].as_i64().unwrap();
    let (runs, skips) = assert_every_second_accounted(&c, once).await;
    assert!(
        skips.len() >= 3,
        "the outage's seconds are recorded: {skips:?}"
    );
    assert!(skips.iter().all(|s| s["kind"] == "misfire"), "{skips:?}");
    // The catch-up run is for the latest missed second, right after the skipped ones,
    // and it is late by at least the threshold.
    let last_skip = skips
        .iter()
        .filter_map(|s| s["fire_time_ms"].as_i64())
        .max()
        .unwrap();
    let catch_up = runs
        .iter()
        .find(|i| i["fire_time_ms"].as_i64() == Some(last_skip + 1000))
        .unwrap_or_else(|| panic!("no catch-up run after the skipped {last_skip}: {runs:?}"));
    assert!(lateness(catch_up) >= 950, "{catch_up}");
    assert!(
        last_skip > down_at && last_skip < up_at,
        "{last_skip} {down_at} {up_at}"
    );

    let (runs, skips) = assert_every_second_accounted(&c, skip).await;
    assert!(skips.len() >= 3, "{skips:?}");
    // Under `skip` nothing runs late beyond the threshold (1 s, plus apply time).
    for i in &runs {
        assert!(lateness(i) < 1250, "skip ran a missed time: {i}");
    }
    let log = c.dump_logs();
    assert!(
        log.contains("catch_up_jobs=2"),
        "the new leader logs its catch-up: {log}"
    );
}
