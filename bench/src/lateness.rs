//! Trigger lateness: N jobs on a one-second cron (all firing at each second boundary,
//! N fires/s), with two `ws` no-op workers: fire time → dispatched and → started. The
//! ladder adds jobs on the same cluster (100, 1000, then more) until fire →
//! dispatched p99 reaches 100 ms, to find the highest fire rate that keeps it under.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::load::{http_client, Summary};
use crate::rj::{RjCluster, TOKEN};
use crate::sys::now_ms;
use crate::{say, Ctx};

/// The p99 bound of the search.
pub const P99_LIMIT_MS: f64 = 100.0;

#[derive(Debug, Clone, Serialize)]
pub struct LatenessPoint {
    pub jobs: usize,
    pub fires_per_sec: usize,
    pub window_secs: u64,
    /// Jobs whose instances were read (evenly spread over all jobs).
    pub sampled_jobs: usize,
    pub instances: usize,
    pub not_started: usize,
    pub fire_to_dispatched: Summary,
    pub fire_to_started: Summary,
    pub p99_under_limit: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatenessResult {
    pub workers: usize,
    pub points: Vec<LatenessPoint>,
    /// The highest measured rate with fire → dispatched p99 under 100 ms (every lower
    /// rung passing too), if any.
    pub max_fires_per_sec_p99_under_100ms: Option<usize>,
    /// The first rung that did not keep p99 under 100 ms, if one was reached.
    pub first_failing_fires_per_sec: Option<usize>,
    pub stopped_because: String,
}

pub async fn run(ctx: &Ctx) -> Result<LatenessResult> {
    let s = &ctx.sizes;
    say("lateness: starting a raftjob cluster and two ws no-op workers");
    let c = RjCluster::start(&ctx.raftjob, &ctx.out.join("lateness"), &[]).await?;
    let leader = c.wait_ready(Duration::from_secs(30)).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("three nodes");
    let token = c.create_app(leader, "late").await?;
    let workers = 2;
    let _procs = c.start_workers("late", &token, "ws", workers, 4096)?;
    c.wait_workers_live(leader, "late", workers).await?;

    let started = Instant::now();
    let http = http_client();
    let mut job_ids: Vec<u64> = Vec::new();
    let mut points = Vec::new();
    let mut max_ok = None;
    let mut all_ok = true;
    let mut first_fail = None;
    let mut stopped = "the ladder ended".to_string();
    for (rung, &jobs) in s.lateness_ladder.iter().enumerate() {
        if rung >= 2 && started.elapsed() > Duration::from_secs(s.lateness_budget_secs) {
            stopped = format!("the time budget ({} s) ran out", s.lateness_budget_secs);
            break;
        }
        // Past the required rungs, a cluster too loaded to take the creations (or the
        // reads below) is where the ladder ends, not a failed run.
        let more = match create_jobs(&http, &c.base(leader), job_ids.len(), jobs).await {
            Ok(more) => more,
            Err(e) if rung >= 2 => {
                say(&format!(
                    "lateness: {jobs:>5} jobs: the cluster did not take the job creations ({e:#}); the ladder stops"
                ));
                first_fail.get_or_insert(jobs);
                stopped = format!("creating the jobs for {jobs} fires/s failed: {e:#}");
                break;
            }
            Err(e) => return Err(e),
        };
        job_ids.extend(more);
        let window = s.lateness_window_secs;
        let from = now_ms() + 2000;
        tokio::time::sleep(Duration::from_secs(window + 2)).await;
        let until = now_ms() - 1000;
        // Let the last fires of the window start.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let step = (job_ids.len() / s.lateness_sample_jobs).max(1);
        let sample: Vec<u64> = job_ids.iter().step_by(step).copied().collect();
        let mut to_dispatch = Vec::new();
        let mut to_start = Vec::new();
        let mut not_started = 0;
        let mut unreadable = None;
        for id in &sample {
            let read = c
                .get(
                    follower,
                    &format!(
                        "/api/v1/instances?job_id={id}&limit={}&consistency=stale",
                        window + 10
                    ),
                )
                .await;
            let v = match read {
                Ok(v) => v,
                Err(e) if rung >= 2 => {
                    unreadable = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            };
            for i in v["instances"].as_array().context("instances")? {
                let Some(fire) = i["fire_time_ms"].as_i64() else {
                    continue;
                };
                if fire < from || fire > until {
                    continue;
                }
                match (i["dispatched_at_ms"].as_i64(), i["started_at_ms"].as_i64()) {
                    (Some(d), Some(st)) => {
                        to_dispatch.push((d - fire).max(0) as f64);
                        to_start.push((st - fire).max(0) as f64);
                    }
                    _ => not_started += 1,
                }
            }
        }
        if let Some(e) = unreadable {
            say(&format!(
                "lateness: {jobs:>5} jobs: reading the instances failed ({e:#}); the ladder stops"
            ));
            first_fail.get_or_insert(jobs);
            stopped = format!("reading the instances at {jobs} fires/s failed: {e:#}");
            break;
        }
        let d = Summary::of_ms(to_dispatch);
        let st = Summary::of_ms(to_start);
        if d.n == 0 {
            bail!(
                "lateness: no instance fired in the window with {jobs} jobs\n{}",
                c.log_tails()
            );
        }
        let ok = d.p99_ms < P99_LIMIT_MS && not_started == 0;
        say(&format!(
            "lateness: {jobs:>5} jobs ({jobs} fires/s), {} instances sampled: fire→dispatched {}; fire→started {}; not started {not_started}{}",
            d.n,
            d.brief(),
            st.brief(),
            if ok { "" } else { "  (p99 ≥ 100 ms or some not started)" }
        ));
        points.push(LatenessPoint {
            jobs,
            fires_per_sec: jobs,
            window_secs: window,
            sampled_jobs: sample.len(),
            instances: d.n,
            not_started,
            fire_to_dispatched: d,
            fire_to_started: st,
            p99_under_limit: ok,
        });
        if ok && all_ok {
            max_ok = Some(jobs);
        }
        if !ok {
            all_ok = false;
            first_fail.get_or_insert(jobs);
            // The first two rungs (100 and 1000 jobs) are always measured.
            if rung >= 1 {
                stopped = format!("p99 reached {P99_LIMIT_MS} ms at {jobs} fires/s");
                break;
            }
        }
    }
    Ok(LatenessResult {
        workers,
        points,
        max_fires_per_sec_p99_under_100ms: max_ok,
        first_failing_fires_per_sec: first_fail,
        stopped_because: stopped,
    })
}

/// Creates jobs number `have..want` (one-second cron, no-op processor) with 16
/// concurrent clients; returns their ids.
async fn create_jobs(
    http: &reqwest::Client,
    base: &str,
    have: usize,
    want: usize,
) -> Result<Vec<u64>> {
    let next = Arc::new(AtomicUsize::new(have));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (http, base, next) = (http.clone(), base.to_string(), next.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= want {
                    return Ok::<_, anyhow::Error>(ids);
                }
                let body = format!(
                    r#"{{"app":"late","name":"j{k}","schedule":{{"type":"cron","expr":"* * * * * *"}},"processor":{{"type":"custom","name":"noop"}}}}"#
                );
                let r = http
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = r.status();
                let v: serde_json::Value = r.json().await?;
                if status.as_u16() != 201 {
                    bail!("creating job j{k}: {status}: {v}");
                }
                ids.push(v["id"].as_u64().context("job id")?);
            }
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r??);
    }
    ids.sort_unstable();
    Ok(ids)
}
