//! End-to-end dispatch: run requests → succeeded with a no-op custom processor, for
//! each protocol and worker count: instances per second and run → succeeded latency.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::load::{http_client, Summary};
use crate::rj::{RjCluster, TOKEN};
use crate::sys::{self, now_ms};
use crate::{say, Ctx};

#[derive(Debug, Clone, Serialize)]
pub struct DispatchPoint {
    pub protocol: String,
    pub workers: usize,
    pub clients: usize,
    pub instances: usize,
    pub succeeded: usize,
    /// From the first run request to the last instance's finish.
    pub secs: f64,
    pub instances_per_sec: f64,
    /// Time to submit every run (the client side alone).
    pub submit_secs: f64,
    /// created_at → finished_at of each instance (server clock).
    pub run_to_succeeded: Summary,
    /// created_at → dispatched_at.
    pub run_to_dispatched: Summary,
}

/// Instances per job: below the default retention of 1000 finished per job, so
/// pruning never removes one before it is read.
const PER_JOB: usize = 800;

pub async fn run(ctx: &Ctx) -> Result<Vec<DispatchPoint>> {
    let s = &ctx.sizes;
    say("dispatch: starting a raftjob cluster");
    let c = RjCluster::start(&ctx.raftjob, &ctx.out.join("dispatch"), &[]).await?;
    let leader = c.wait_ready(Duration::from_secs(30)).await?;
    let mut points = Vec::new();
    for proto in ["http", "ws"] {
        for workers in [2usize, 4] {
            let app = format!("d-{proto}-{workers}");
            let token = c.create_app(leader, &app).await?;
            let mut procs = c.start_workers(&app, &token, proto, workers, 256)?;
            c.wait_workers_live(leader, &app, workers).await?;
            let p = one(
                &c,
                leader,
                &app,
                proto,
                workers,
                s.dispatch_runs,
                s.dispatch_clients,
            )
            .await
            .with_context(|| format!("dispatch over {proto} with {workers} workers"))?;
            say(&format!(
                "dispatch: {proto:>4}, {workers} workers: {} instances in {:.1} s = {:.0}/s; run→succeeded p50/p99/max {}",
                p.instances,
                p.secs,
                p.instances_per_sec,
                p.run_to_succeeded.brief()
            ));
            points.push(p);
            for w in &mut procs {
                w.stop(Duration::from_secs(5));
            }
        }
    }
    Ok(points)
}

async fn one(
    c: &RjCluster,
    leader: u64,
    app: &str,
    proto: &str,
    workers: usize,
    total: usize,
    clients: usize,
) -> Result<DispatchPoint> {
    let jobs = total.div_ceil(PER_JOB).max(1);
    let mut job_ids = Vec::new();
    for j in 0..jobs {
        let v = c
            .post(
                leader,
                "/api/v1/jobs",
                &json!({"app": app, "name": format!("noop-{j}"), "schedule": {"type": "api"},
                        "processor": {"type": "custom", "name": "noop"}}),
            )
            .await?;
        job_ids.push(v["id"].as_u64().context("job id")?);
    }
    let http = http_client();
    let base = c.base(leader);
    let t0 = now_ms();
    let started = std::time::Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, base, next, job_ids) =
            (http.clone(), base.clone(), next.clone(), job_ids.clone());
        tasks.spawn(async move {
            let mut errors = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= total {
                    return errors;
                }
                let job = job_ids[k % job_ids.len()];
                let r = http
                    .post(format!("{base}/api/v1/jobs/{job}/run"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {}
                    Ok(r) => errors.push(format!("{}", r.status())),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        errors.extend(r?);
    }
    let submit_secs = started.elapsed().as_secs_f64();
    if !errors.is_empty() {
        bail!("{} run requests failed, first: {}", errors.len(), errors[0]);
    }
    // Wait until no instance of these jobs is unfinished.
    sys::poll(
        Duration::from_secs(300),
        Duration::from_millis(100),
        "every dispatched instance to finish",
        || async {
            for job in &job_ids {
                for status in ["waiting_dispatch", "dispatched", "running"] {
                    let v = c
                        .get(
                            leader,
                            &format!("/api/v1/instances?job_id={job}&status={status}&limit=1"),
                        )
                        .await
                        .ok()?;
                    if !v["instances"].as_array()?.is_empty() {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await?;
    let mut to_done = Vec::new();
    let mut to_dispatch = Vec::new();
    let mut last_finish = t0;
    let mut succeeded = 0;
    for job in &job_ids {
        let v = c
            .get(
                leader,
                &format!("/api/v1/instances?job_id={job}&limit=1000"),
            )
            .await?;
        for i in v["instances"].as_array().context("instances")? {
            let ms = |f: &str| i[f].as_i64();
            if i["status"] == "succeeded" {
                succeeded += 1;
            }
            if let (Some(c), Some(f)) = (ms("created_at_ms"), ms("finished_at_ms")) {
                to_done.push((f - c).max(0) as f64);
                last_finish = last_finish.max(f);
            }
            if let (Some(c), Some(d)) = (ms("created_at_ms"), ms("dispatched_at_ms")) {
                to_dispatch.push((d - c).max(0) as f64);
            }
        }
    }
    let secs = ((last_finish - t0) as f64 / 1000.0).max(1e-3);
    Ok(DispatchPoint {
        protocol: proto.into(),
        workers,
        clients,
        instances: total,
        succeeded,
        secs,
        instances_per_sec: succeeded as f64 / secs,
        submit_secs,
        run_to_succeeded: Summary::of_ms(to_done),
        run_to_dispatched: Summary::of_ms(to_dispatch),
    })
}
