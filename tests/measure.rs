//! Measurements, not assertions of speed: run with
//! `cargo test --test measure -- --ignored --nocapture --test-threads=1`
//! (or `make measure`). They print figures for the issue notes and docs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A number from the environment, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::test]
#[ignore = "measurement; run with --ignored"]
async fn measure_leader_failover() {
    let rounds: usize = env_or("ROUNDS", 10);
    let mut c = TestCluster::start(3);
    c.wait_ready(&[1, 2, 3], Duration::from_secs(30)).await;
    c.client().create_app("m").await.unwrap();
    let mut to_write = Vec::new();
    let mut to_leader = Vec::new();
    for round in 0..rounds {
        let leader = c.wait_ready(&[1, 2, 3], Duration::from_secs(30)).await;
        c.node(leader).kill();
        let t0 = Instant::now();
        let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let client = raftjob::client::Client::new(
            c.nodes
                .iter()
                .filter(|n| n.id != leader)
                .map(|n| n.api.to_string()),
            TOKEN,
        );
        let key = format!("round-{round}");
        let spec = json!({"app": "m", "name": key, "schedule": {"type": "api"}, "processor": {"type": "shell", "command": "true"}});
        let mut new_leader_at = None;
        let http = reqwest::Client::new();
        loop {
            if new_leader_at.is_none() {
                for id in &survivors {
                    let api = c.nodes[(*id - 1) as usize].api;
                    if let Ok(r) = http
                        .get(format!("http://{api}/readyz"))
                        .timeout(Duration::from_millis(200))
                        .send()
                        .await
                    {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        if v["leader_id"].as_u64().is_some_and(|l| l != leader) {
                            new_leader_at = Some(t0.elapsed());
                        }
                    }
                }
            }
            if client
                .post_idempotent("/api/v1/jobs", &spec, &key)
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no write within 30 s"
            );
        }
        let write = t0.elapsed();
        let leader_time = new_leader_at.unwrap_or(write);
        println!("round {round}: killed leader {leader}; ready after {leader_time:?}; first write after {write:?}");
        to_write.push(write);
        to_leader.push(leader_time);
        c.node(leader).start();
        // Let the restarted node catch up before the next kill: a drill kills a healthy
        // leader, not one whose peers are still replaying the log.
        let leader_api = client.clone();
        let restarted = c.node(leader).client();
        eventually(
            Duration::from_secs(30),
            "the restarted node caught up",
            || {
                let (l, r) = (leader_api.clone(), restarted.clone());
                async move {
                    let a = l.cluster().await.ok()?["applied_index"].as_u64()?;
                    let b = r.cluster().await.ok()?["applied_index"].as_u64()?;
                    (b >= a).then_some(())
                }
            },
        )
        .await;
    }
    to_write.sort();
    to_leader.sort();
    println!(
        "FAILOVER rounds={rounds} first-write: median={:?} p90={:?} max={:?}; new-leader-seen: median={:?} max={:?}",
        percentile(&to_write, 0.5),
        percentile(&to_write, 0.9),
        to_write.last().unwrap(),
        percentile(&to_leader, 0.5),
        to_leader.last().unwrap()
    );
}

#[tokio::test]
#[ignore = "measurement; run with --ignored"]
async fn measure_job_creation_throughput() {
    let clients: usize = env_or("CLIENTS", 32);
    let total: usize = env_or("TOTAL", 4000);
    let c = TestCluster::start(3);
    let leader = c.wait_ready(&[1, 2, 3], Duration::from_secs(30)).await;
    c.client().create_app("t").await.unwrap();
    for target in [leader, if leader == 1 { 2 } else { 1 }] {
        let api = c.nodes[(target - 1) as usize].api.to_string();
        let per = total / clients;
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..clients {
            let client = raftjob::client::Client::new([api.clone()], TOKEN);
            tasks.spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let spec = json!({"app": "t", "name": format!("n{target}-w{w}-{i}"), "schedule": {"type": "api"},
                        "processor": {"type": "shell", "command": "true"}});
                    let s = Instant::now();
                    client.create_job(&spec).await.expect("create");
                    lat.push(s.elapsed());
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(r) = tasks.join_next().await {
            lat.extend(r.unwrap());
        }
        let elapsed = t0.elapsed();
        lat.sort();
        let role = if target == leader {
            "leader"
        } else {
            "follower"
        };
        println!(
            "THROUGHPUT via {role} (node {target}): {} creations with {clients} clients in {elapsed:?}: {:.0}/s; p50={:?} p99={:?} max={:?}",
            lat.len(),
            lat.len() as f64 / elapsed.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().unwrap()
        );
    }
}

/// Instances per second from `run` to `succeeded` with a no-op custom processor on two
/// embedded workers, for each protocol.
#[tokio::test]
#[ignore = "measurement; run with --ignored"]
async fn measure_dispatch_throughput() {
    let total: usize = env_or("TOTAL", 1000);
    let clients: usize = env_or("CLIENTS", 32);
    for proto in ["ws", "http"] {
        let c = TestCluster::start(3);
        c.wait_ready(&[1, 2, 3], Duration::from_secs(30)).await;
        let token = app_token(&c, "bench").await;
        let mut workers = Vec::new();
        for i in 0..2 {
            let name = format!("{proto}-{i}");
            let extra = ["--max-concurrency", "256"];
            workers.push(TestWorker::start_example(
                &c, "bench", &token, proto, &name, &extra,
            ));
        }
        wait_workers_live(&c, "bench", 2).await;
        let job = c
            .client()
            .create_job(&api_job(
                "bench",
                "noop",
                json!({"type": "custom", "name": "noop"}),
            ))
            .await
            .unwrap();
        let job_id = job["id"].as_u64().unwrap();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..clients {
            let client = c.client();
            let n = total / clients;
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..n {
                    let v = client
                        .post(&format!("/api/v1/jobs/{job_id}/run"), &json!(null))
                        .await
                        .expect("run");
                    ids.push(v["instance_id"].as_u64().unwrap());
                }
                let _ = w;
                ids
            });
        }
        let mut ids = Vec::new();
        while let Some(r) = tasks.join_next().await {
            ids.extend(r.unwrap());
        }
        let submitted = t0.elapsed();
        // Wait until every instance succeeded.
        let client = c.client();
        let logs: Vec<std::path::PathBuf> = workers.iter().map(|w| w.log.clone()).collect();
        let logs = &logs;
        let limit: u64 = env_or("WAIT_SECS", 300);
        eventually(
            Duration::from_secs(limit),
            "every instance succeeded",
            || {
                let client = client.clone();
                let n = ids.len();
                async move {
                    let v = client
                        .get(&format!("/api/v1/instances?job_id={job_id}&limit=1000"))
                        .await
                        .ok()?;
                    let mut counts = std::collections::BTreeMap::new();
                    for i in v["instances"].as_array()? {
                        *counts
                            .entry(i["status"].as_str().unwrap_or("?").to_string())
                            .or_insert(0) += 1;
                    }
                    if std::env::var("VERBOSE").is_ok() {
                        println!("{counts:?}");
                        if counts.contains_key("failed") {
                            for l in logs.iter() {
                                println!(
                                    "LOG {}",
                                    tail(&std::fs::read_to_string(l).unwrap_or_default(), 12)
                                );
                            }
                            let f = v["instances"]
                                .as_array()?
                                .iter()
                                .find(|i| i["status"] == "failed");
                            println!(
                                "FAILED {}",
                                f.map(|f| f["result"].to_string()).unwrap_or_default()
                            );
                        }
                    }
                    (counts.get("succeeded").copied().unwrap_or(0) >= n).then_some(())
                }
            },
        )
        .await;
        let elapsed = t0.elapsed();
        let mut lat = Vec::new();
        for id in ids.iter().step_by((ids.len() / 200).max(1)) {
            let v = client
                .get(&format!("/api/v1/instances/{id}"))
                .await
                .unwrap();
            assert_eq!(v["status"], "succeeded", "{v}");
            let ms = v["finished_at_ms"].as_i64().unwrap() - v["created_at_ms"].as_i64().unwrap();
            lat.push(Duration::from_millis(ms as u64));
        }
        lat.sort();
        println!(
            "DISPATCH {proto}: {} instances, 2 workers, {clients} clients: submitted in {submitted:?}, all succeeded after {elapsed:?}: {:.0} instances/s; run->succeeded p50={:?} p99={:?} max={:?}",
            ids.len(),
            ids.len() as f64 / elapsed.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().unwrap()
        );
        drop(workers);
    }
}

/// Trigger lateness: fire time → dispatched and → started, for N jobs firing every
/// second on a three-node cluster with two embedded no-op workers (ws).
/// `LATENESS_JOBS=100,1000` (default) lists the job counts; `SECS` the run length.
#[tokio::test]
#[ignore = "measurement; run with --ignored"]
async fn measure_trigger_lateness() {
    let counts: Vec<usize> = std::env::var("LATENESS_JOBS")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs: u64 = env_or("SECS", 10);
    for jobs in counts {
        let c = TestCluster::start(3);
        c.wait_ready(&[1, 2, 3], Duration::from_secs(30)).await;
        let token = app_token(&c, "late").await;
        let workers: Vec<TestWorker> = (0..2)
            .map(|i| {
                TestWorker::start_example(
                    &c,
                    "late",
                    &token,
                    "ws",
                    &format!("w{i}"),
                    &["--max-concurrency", "4096"],
                )
            })
            .collect();
        wait_workers_live(&c, "late", 2).await;
        let client = c.client();
        let mut ids = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for part in 0..16 {
            let client = client.clone();
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for k in (part..jobs).step_by(16) {
                    let spec = json!({"app": "late", "name": format!("j{k}"),
                        "schedule": {"type": "cron", "expr": "* * * * * *"},
                        "processor": {"type": "custom", "name": "noop"}});
                    let v = client.create_job(&spec).await.expect("create");
                    ids.push(v["id"].as_u64().unwrap());
                }
                ids
            });
        }
        while let Some(r) = tasks.join_next().await {
            ids.extend(r.unwrap());
        }
        let from = chrono::Utc::now().timestamp_millis() + 2000;
        tokio::time::sleep(Duration::from_secs(secs + 2)).await;
        let until = chrono::Utc::now().timestamp_millis() - 1000;
        // Stop the fires (so reading does not compete with them) and let the
        // last instances finish.
        for part in ids.chunks(64) {
            let calls = part.iter().map(|id| {
                let client = client.clone();
                async move {
                    client
                        .post(&format!("/api/v1/jobs/{id}/disable"), &json!({}))
                        .await
                }
            });
            for r in futures::future::join_all(calls).await {
                r.expect("disable");
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut to_dispatch = Vec::new();
        let mut to_start = Vec::new();
        let mut missing = 0;
        for id in &ids {
            let v = client
                .get(&format!(
                    "/api/v1/instances?job_id={id}&limit=1000&consistency=stale"
                ))
                .await
                .unwrap_or_else(|e| panic!("listing instances of job {id}: {e}"));
            for i in v["instances"].as_array().unwrap() {
                let Some(fire) = i["fire_time_ms"].as_i64() else {
                    continue;
                };
                if fire < from || fire > until {
                    continue;
                }
                match (i["dispatched_at_ms"].as_i64(), i["started_at_ms"].as_i64()) {
                    (Some(d), Some(s)) => {
                        to_dispatch.push(Duration::from_millis((d - fire).max(0) as u64));
                        to_start.push(Duration::from_millis((s - fire).max(0) as u64));
                    }
                    _ => {
                        if missing == 0 {
                            println!("not started: {i}");
                        }
                        missing += 1
                    }
                }
            }
        }
        drop(workers);
        to_dispatch.sort();
        to_start.sort();
        let n = to_dispatch.len();
        assert!(n > 0, "no instances measured");
        println!(
            "LATENESS jobs={jobs} (fires/s={jobs}) instances={n} not-started={missing}: \
             fire→dispatched p50={:?} p99={:?} max={:?}; fire→started p50={:?} p99={:?} max={:?}",
            percentile(&to_dispatch, 0.5),
            percentile(&to_dispatch, 0.99),
            to_dispatch.last().unwrap(),
            percentile(&to_start, 0.5),
            percentile(&to_start, 0.99),
            to_start.last().unwrap(),
        );
    }
}
