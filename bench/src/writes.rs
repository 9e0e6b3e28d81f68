//! Replicated writes: raftjob job creations and run requests against etcd puts of the
//! same payload size, at each concurrency, through each system's leader, interleaved
//! per concurrency so background noise hits both alike.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::etcd::{self, EtcdCluster};
use crate::load::{closed_loop, http_client, with_cpu, LoadResult};
use crate::rj::{self, RjCluster, TOKEN};
use crate::{say, Ctx};

#[derive(Debug, Clone, Serialize)]
pub struct WritePoint {
    pub clients: usize,
    pub raftjob_create: LoadResult,
    pub raftjob_run: LoadResult,
    pub etcd_put: LoadResult,
    /// raftjob creations/s ÷ etcd puts/s.
    pub ratio_create: f64,
    /// raftjob runs/s ÷ etcd puts/s.
    pub ratio_run: f64,
    /// raftjob creation p99 ÷ etcd put p99 (below 1 is better for raftjob).
    pub p99_ratio_create: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WritesResult {
    /// Bytes of a job-creation body; etcd values have this many bytes.
    pub payload_bytes: usize,
    /// Bytes of a run-request body.
    pub run_body_bytes: usize,
    pub secs_per_point: f64,
    pub max_ops_per_point: usize,
    pub points: Vec<WritePoint>,
}

/// A run delayed by a year: the instance is replicated and then waits, so a run
/// request measures the write alone, with no dispatch behind it.
const RUN_BODY: &str = r#"{"delay_ms":31536000000}"#;

pub async fn run(ctx: &Ctx) -> Result<WritesResult> {
    let dir = ctx.out.join("writes");
    let http = http_client();
    let s = &ctx.sizes;
    let duration = Duration::from_secs_f64(s.write_secs);
    let payload_bytes = rj::job_body("bench", "c0000000-00000").len();
    let value = Arc::new(vec![b'x'; payload_bytes]);

    let mut points = Vec::new();
    for (level, &clients) in s.concurrency.iter().enumerate() {
        // Each point on fresh clusters, so no point inherits the previous one's data.
        say(&format!(
            "writes: {clients} clients: fresh raftjob and etcd clusters"
        ));
        let creates = RjCluster::start(
            &ctx.raftjob,
            &dir.join(format!("raftjob-create-{clients}")),
            &[],
        )
        .await?;
        let c_leader = creates.wait_ready(Duration::from_secs(30)).await?;
        let c_pids: Vec<u32> = (1..=3).filter_map(|i| creates.pid(i)).collect();
        creates.create_app(c_leader, "bench").await?;
        let mut etcd = EtcdCluster::start(&ctx.etcd, &dir.join(format!("etcd-{clients}"))).await?;
        let e_leader = etcd.wait_ready(Duration::from_secs(30)).await?;
        let e_pids: Vec<u32> = (0..3).filter_map(|i| etcd.pid(i)).collect();

        // Job creations, through the leader.
        let url = format!("{}/api/v1/jobs", creates.base(c_leader));
        let (h, u) = (http.clone(), url.clone());
        let create = with_cpu(
            &c_pids,
            closed_loop(clients, duration, s.write_max_ops, move |seq| {
                let (h, u) = (h.clone(), u.clone());
                async move {
                    let body = rj::job_body("bench", &format!("c{level:07}-{seq:05}"));
                    let r = h
                        .post(u)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.status().as_u16() != 201 {
                        return Err(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ));
                    }
                    Ok(())
                }
            }),
        )
        .await;
        say(&format!(
            "writes: raftjob job creations, {clients:>3} clients: {:>7.0}/s, p50/p99/max {} ({} errors){}",
            create.ops_per_sec,
            create.latency.brief(),
            create.errors,
            cpu_note(&create)
        ));

        drop(creates);

        // Run requests, on their own cluster: run instances stay active (delayed).
        let runs = RjCluster::start(
            &ctx.raftjob,
            &dir.join(format!("raftjob-run-{clients}")),
            &[],
        )
        .await?;
        let r_leader = runs.wait_ready(Duration::from_secs(30)).await?;
        let r_pids: Vec<u32> = (1..=3).filter_map(|i| runs.pid(i)).collect();
        runs.create_app(r_leader, "bench").await?;
        let job: serde_json::Value = serde_json::from_str(&rj::job_body("bench", "run-target"))?;
        let job_id = runs.post(r_leader, "/api/v1/jobs", &job).await?["id"]
            .as_u64()
            .context("job id")?;
        let url = format!("{}/api/v1/jobs/{job_id}/run", runs.base(r_leader));
        let (h, u) = (http.clone(), url.clone());
        let run = with_cpu(
            &r_pids,
            closed_loop(clients, duration, s.write_max_ops, move |_| {
                let (h, u) = (h.clone(), u.clone());
                async move {
                    let r = h
                        .post(u)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(RUN_BODY)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.status().as_u16() != 201 {
                        return Err(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ));
                    }
                    Ok(())
                }
            }),
        )
        .await;
        drop(runs);
        say(&format!(
            "writes: raftjob run requests,  {clients:>3} clients: {:>7.0}/s, p50/p99/max {} ({} errors){}",
            run.ops_per_sec,
            run.latency.brief(),
            run.errors,
            cpu_note(&run)
        ));

        // etcd puts of the same value size, through the leader's gateway.
        let url = format!("{}/v3/kv/put", etcd.base(e_leader));
        let (h, u, v) = (http.clone(), url.clone(), value.clone());
        let put = with_cpu(
            &e_pids,
            closed_loop(clients, duration, s.write_max_ops, move |seq| {
                let (h, u, v) = (h.clone(), u.clone(), v.clone());
                async move {
                    let body = etcd::put_body(&format!("bench/c{level:07}-{seq:05}"), &v);
                    let r = h
                        .post(u)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if !r.status().is_success() {
                        return Err(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ));
                    }
                    Ok(())
                }
            }),
        )
        .await;
        say(&format!(
            "writes: etcd puts ({payload_bytes} B),    {clients:>3} clients: {:>7.0}/s, p50/p99/max {} ({} errors){}",
            put.ops_per_sec,
            put.latency.brief(),
            put.errors,
            cpu_note(&put)
        ));
        etcd.shutdown();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        points.push(WritePoint {
            clients,
            ratio_create: ratio(create.ops_per_sec, put.ops_per_sec),
            ratio_run: ratio(run.ops_per_sec, put.ops_per_sec),
            p99_ratio_create: ratio(create.latency.p99_ms, put.latency.p99_ms),
            raftjob_create: create,
            raftjob_run: run,
            etcd_put: put,
        });
    }
    Ok(WritesResult {
        payload_bytes,
        run_body_bytes: RUN_BODY.len(),
        secs_per_point: s.write_secs,
        max_ops_per_point: s.write_max_ops,
        points,
    })
}

/// `; servers 1.6 cores (410 µs/op), client 0.3` for the progress lines.
fn cpu_note(r: &LoadResult) -> String {
    r.cpu.as_ref().map_or(String::new(), |c| {
        format!(
            "; servers {:.2} cores ({:.0} µs CPU/op), load generator {:.2} cores",
            c.servers_cores, c.servers_us_per_op, c.client_cores
        )
    })
}
