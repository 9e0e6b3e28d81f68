//! Footprint: resident memory (VmRSS) and disk use (du of the data dir) of each node,
//! idle, with N jobs, and with M finished instances on top; etcd holding as many keys
//! with values of the same sizes. Created as fast as the public API allows (many
//! concurrent clients), bounded by a time budget: when it runs out, the count reached
//! is what is measured and reported, never extrapolated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::etcd::{self, EtcdCluster};
use crate::load::{closed_loop, http_client};
use crate::rj::{self, RjCluster, TOKEN};
use crate::sys::{self, du_bytes, rss_kib};
use crate::{say, Ctx};

#[derive(Debug, Clone, Serialize)]
pub struct FootprintRow {
    pub system: String,
    pub stage: String,
    /// Jobs (raftjob) or keys with a job's size (etcd) held.
    pub jobs_or_keys: usize,
    /// Finished instances (raftjob) or keys with an instance's size (etcd) held.
    pub instances: usize,
    pub target: usize,
    /// The rate the API took them at (jobs, runs to finished instances, or puts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_per_sec: Option<f64>,
    pub leader_rss_kib: u64,
    pub follower_rss_kib: Vec<u64>,
    pub leader_disk_bytes: u64,
    pub disk_bytes_per_node: Vec<u64>,
    /// Set when the count asked for was not reached within the time budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FootprintResult {
    pub job_json_bytes: usize,
    pub instance_json_bytes: usize,
    pub rows: Vec<FootprintRow>,
}

/// Per-node memory and disk, leader first.
fn sample(pids: &[(bool, Option<u32>, std::path::PathBuf)]) -> (u64, Vec<u64>, u64, Vec<u64>) {
    let mut leader_rss = 0;
    let mut leader_disk = 0;
    let mut followers = Vec::new();
    let mut disks = Vec::new();
    for (is_leader, pid, dir) in pids {
        let rss = pid.and_then(rss_kib).unwrap_or(0);
        let disk = du_bytes(dir);
        disks.push(disk);
        if *is_leader {
            leader_rss = rss;
            leader_disk = disk;
        } else {
            followers.push(rss);
        }
    }
    (leader_rss, followers, leader_disk, disks)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(ctx: &Ctx) -> Result<FootprintResult> {
    let s = &ctx.sizes;
    let settle = Duration::from_secs(s.footprint_settle_secs);
    let budget = Duration::from_secs(s.footprint_budget_secs);
    let mut rows = Vec::new();

    // --- raftjob ---
    say("footprint: starting a raftjob cluster");
    let c = RjCluster::start(&ctx.raftjob, &ctx.out.join("footprint/raftjob"), &[]).await?;
    let leader = c.wait_ready(Duration::from_secs(30)).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("three nodes");
    let nodes = |c: &RjCluster| -> Vec<(bool, Option<u32>, std::path::PathBuf)> {
        c.nodes
            .iter()
            .map(|n| (n.id == leader, c.pid(n.id), n.data_dir.clone()))
            .collect()
    };
    #[allow(clippy::too_many_arguments)]
    let mut row = |system: &str,
                   stage: &str,
                   jobs: usize,
                   inst: usize,
                   target: usize,
                   rate: Option<f64>,
                   sampled: (u64, Vec<u64>, u64, Vec<u64>),
                   note: Option<String>| {
        say(&format!(
            "footprint: {system} {stage}: {jobs} jobs/keys, {inst} instances: leader RSS {:.0} MiB, disk {:.1} MiB{}",
            mib(sampled.0),
            sampled.2 as f64 / 1048576.0,
            note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
        ));
        rows.push(FootprintRow {
            system: system.into(),
            stage: stage.into(),
            jobs_or_keys: jobs,
            instances: inst,
            target,
            created_per_sec: rate,
            leader_rss_kib: sampled.0,
            follower_rss_kib: sampled.1,
            leader_disk_bytes: sampled.2,
            disk_bytes_per_node: sampled.3,
            note,
        });
    };
    let token = c.create_app(leader, "fp").await?;
    tokio::time::sleep(settle).await;
    row("raftjob", "idle", 0, 0, 0, None, sample(&nodes(&c)), None);

    // Jobs, with 64 clients through the leader.
    let http = http_client();
    let url = format!("{}/api/v1/jobs", c.base(leader));
    let (h, u) = (http.clone(), url.clone());
    let r = closed_loop(
        64,
        budget,
        s.footprint_jobs.saturating_sub(64),
        move |seq| {
            let (h, u) = (h.clone(), u.clone());
            async move {
                let r = h
                    .post(u)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(rj::job_body("fp", &format!("j{seq:07}")))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().as_u16() != 201 {
                    return Err(format!("{}", r.status()));
                }
                Ok(())
            }
        },
    )
    .await;
    let jobs = r.ops + r.warmup_ok;
    if jobs == 0 {
        bail!("footprint: no job created: {:?}", r.first_error);
    }
    tokio::time::sleep(settle).await;
    let note = (jobs < s.footprint_jobs).then(|| {
        format!(
            "{jobs} of {} jobs within the {} s budget",
            s.footprint_jobs, s.footprint_budget_secs
        )
    });
    row(
        "raftjob",
        "jobs",
        jobs,
        0,
        s.footprint_jobs,
        Some(jobs as f64 / r.secs),
        sample(&nodes(&c)),
        note,
    );

    // Every job's id (after the sample: a follower builds this large answer).
    let job_list = c
        .get(follower, "/api/v1/jobs?app=fp&consistency=stale")
        .await
        .ok();
    let job_ids: Vec<u64> = job_list
        .as_ref()
        .and_then(|v| v["jobs"].as_array())
        .map(|a| a.iter().filter_map(|j| j["id"].as_u64()).collect())
        .unwrap_or_default();
    if job_ids.is_empty() {
        bail!("footprint: cannot list the jobs created");
    }
    let job_json_bytes = c
        .get(leader, &format!("/api/v1/jobs/{}", job_ids[0]))
        .await
        .map(|v| v.to_string().len())
        .unwrap_or(0);

    // Finished instances: runs spread over the jobs, dispatched to two ws no-op
    // workers, paced so the dispatch backlog stays under ~2000.
    let mut workers = c.start_workers("fp", &token, "ws", 2, 256)?;
    c.wait_workers_live(leader, "fp", 2).await?;
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut last_say = Instant::now();
    let chunk = 2000usize;
    let job_ids = Arc::new(job_ids);
    while done < s.footprint_instances && t0.elapsed() < budget {
        // Wait while the backlog is large (stale read on a follower: no load on the leader).
        let _ = sys::poll(
            Duration::from_secs(60),
            Duration::from_millis(200),
            "the dispatch backlog to shrink",
            || async {
                let v = c
                    .get(
                        follower,
                        "/api/v1/instances?status=waiting_dispatch&limit=1000&consistency=stale",
                    )
                    .await
                    .ok()?;
                (v["instances"].as_array()?.len() < 1000).then_some(())
            },
        )
        .await;
        let n = chunk.min(s.footprint_instances - done);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (http, base, next, ids) =
                (http.clone(), c.base(leader), next.clone(), job_ids.clone());
            let offset = done;
            tasks.spawn(async move {
                let mut ok = 0usize;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        return ok;
                    }
                    let job = ids[(offset + k) % ids.len()];
                    if let Ok(r) = http
                        .post(format!("{base}/api/v1/jobs/{job}/run"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                    {
                        ok += usize::from(r.status().as_u16() == 201);
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            done += r.unwrap_or(0);
        }
        if last_say.elapsed() > Duration::from_secs(15) {
            say(&format!(
                "footprint: {done} of {} runs submitted ({:.0}/s)",
                s.footprint_instances,
                done as f64 / t0.elapsed().as_secs_f64()
            ));
            last_say = Instant::now();
        }
    }
    // Every run finished.
    sys::poll(
        Duration::from_secs(300),
        Duration::from_millis(500),
        "every footprint instance to finish",
        || async {
            for status in ["waiting_dispatch", "dispatched", "running"] {
                let v = c
                    .get(
                        follower,
                        &format!("/api/v1/instances?status={status}&limit=1&consistency=stale"),
                    )
                    .await
                    .ok()?;
                if !v["instances"].as_array()?.is_empty() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    let run_secs = t0.elapsed().as_secs_f64();
    let last: Value = c
        .get(leader, "/api/v1/instances?limit=1")
        .await
        .context("reading an instance")?;
    let instance_json_bytes = last["instances"][0].to_string().len();
    for w in &mut workers {
        w.stop(Duration::from_secs(5));
    }
    tokio::time::sleep(settle).await;
    let note = (done < s.footprint_instances).then(|| {
        format!(
            "{done} of {} instances within the {} s budget",
            s.footprint_instances, s.footprint_budget_secs
        )
    });
    row(
        "raftjob",
        "jobs + finished instances",
        jobs,
        done,
        s.footprint_instances,
        Some(done as f64 / run_secs),
        sample(&nodes(&c)),
        note,
    );
    drop(c);

    // --- etcd: as many keys, values of the same sizes ---
    say("footprint: starting an etcd cluster");
    let mut e = EtcdCluster::start(&ctx.etcd, &ctx.out.join("footprint/etcd")).await?;
    let el = e.wait_ready(Duration::from_secs(30)).await?;
    let enodes = |e: &EtcdCluster| -> Vec<(bool, Option<u32>, std::path::PathBuf)> {
        (0..3)
            .map(|i| (i == el, e.pid(i), e.members[i].data_dir.clone()))
            .collect()
    };
    tokio::time::sleep(settle).await;
    row("etcd", "idle", 0, 0, 0, None, sample(&enodes(&e)), None);
    let put_url = format!("{}/v3/kv/put", e.base(el));
    let puts = |prefix: &'static str, count: usize, size: usize| {
        let (h, u) = (http.clone(), put_url.clone());
        let v = Arc::new(vec![b'x'; size.max(1)]);
        closed_loop(64, budget, count.saturating_sub(64), move |seq| {
            let (h, u, v) = (h.clone(), u.clone(), v.clone());
            async move {
                let r = h
                    .post(u)
                    .body(etcd::put_body(&format!("{prefix}{seq:07}"), &v))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("{}", r.status()));
                }
                Ok(())
            }
        })
    };
    let r = puts("fp/job/", jobs, job_json_bytes).await;
    let keys = r.ops + r.warmup_ok;
    tokio::time::sleep(settle).await;
    let note = (keys < jobs).then(|| format!("{keys} of {jobs} keys within the budget"));
    row(
        "etcd",
        "jobs",
        keys,
        0,
        jobs,
        Some(keys as f64 / r.secs),
        sample(&enodes(&e)),
        note,
    );
    let r = puts("fp/inst/", done, instance_json_bytes).await;
    let ikeys = r.ops + r.warmup_ok;
    tokio::time::sleep(settle).await;
    let note = (ikeys < done).then(|| format!("{ikeys} of {done} instance keys within the budget"));
    row(
        "etcd",
        "jobs + finished instances",
        keys,
        ikeys,
        done,
        Some(ikeys as f64 / r.secs),
        sample(&enodes(&e)),
        note,
    );
    e.shutdown();
    Ok(FootprintResult {
        job_json_bytes,
        instance_json_bytes,
        rows,
    })
}
