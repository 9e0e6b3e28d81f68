//! Failover: SIGKILL the leader, then time until a survivor names a new leader and
//! until the first write through a survivor succeeds. Both are probed the same way
//! for both systems: a new probe every 20 ms (leader) or 50 ms (write), concurrently,
//! so a slow probe never hides an earlier success. The killed node is restarted and
//! caught up before the next round.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::json;

use crate::etcd::EtcdCluster;
use crate::load::Summary;
use crate::rj::{RjCluster, TOKEN};
use crate::sys;
use crate::{say, Ctx};

#[derive(Debug, Clone, Serialize)]
pub struct FailoverSystem {
    pub rounds: usize,
    pub new_leader: Summary,
    pub first_write: Summary,
    pub new_leader_ms: Vec<f64>,
    pub first_write_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverResult {
    pub raftjob: FailoverSystem,
    pub etcd: FailoverSystem,
}

/// Starts `probe(n)` every `every` (at most 64 at once) until one returns true;
/// returns the time from `t0`. Fails after `limit`.
async fn first_success<F, Fut>(
    t0: Instant,
    every: Duration,
    limit: Duration,
    mut probe: F,
) -> Result<Duration>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if t0.elapsed() > limit {
                    return Err(anyhow!("no success within {limit:?}"));
                }
                if set.len() < 64 {
                    set.spawn(probe(n));
                    n += 1;
                }
            }
            Some(r) = set.join_next() => {
                if matches!(r, Ok(true)) {
                    return Ok(t0.elapsed());
                }
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(ctx: &Ctx) -> Result<FailoverResult> {
    let raftjob = raftjob_rounds(ctx).await?;
    let etcd = etcd_rounds(ctx).await?;
    Ok(FailoverResult { raftjob, etcd })
}

async fn raftjob_rounds(ctx: &Ctx) -> Result<FailoverSystem> {
    let rounds = ctx.sizes.failover_rounds;
    say(&format!("failover: raftjob, {rounds} leader kills"));
    let mut c = RjCluster::start(&ctx.raftjob, &ctx.out.join("failover/raftjob"), &[]).await?;
    let leader = c.wait_ready(Duration::from_secs(30)).await?;
    c.create_app(leader, "f").await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(200))
        .build()?;
    let (mut to_leader, mut to_write) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let leader = c.wait_ready(Duration::from_secs(30)).await?;
        let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let apis: Vec<String> = survivors.iter().map(|i| c.base(*i)).collect();
        c.kill(leader);
        let t0 = Instant::now();
        let leader_probe = {
            let (http, apis) = (http.clone(), apis.clone());
            first_success(
                t0,
                Duration::from_millis(20),
                Duration::from_secs(30),
                move |n| {
                    let (http, api) = (http.clone(), apis[n as usize % apis.len()].clone());
                    async move {
                        let Ok(r) = http
                            .get(format!("{api}/readyz"))
                            .timeout(Duration::from_millis(500))
                            .send()
                            .await
                        else {
                            return false;
                        };
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        v["leader_id"].as_u64().is_some_and(|l| l != leader)
                    }
                },
            )
        };
        let write_probe = {
            let (http, apis) = (http.clone(), apis.clone());
            first_success(
                t0,
                Duration::from_millis(50),
                Duration::from_secs(30),
                move |n| {
                    let (http, api) = (http.clone(), apis[n as usize % apis.len()].clone());
                    async move {
                        let body = json!({"app": "f", "name": format!("r{round}-{n}"),
                        "schedule": {"type": "api"}, "processor": {"type": "custom", "name": "noop"}});
                        http.post(format!("{api}/api/v1/jobs"))
                            .bearer_auth(TOKEN)
                            .json(&body)
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().as_u16() == 201)
                    }
                },
            )
        };
        let (l, w) = tokio::join!(leader_probe, write_probe);
        let (l, w) = (l?, w?);
        say(&format!(
            "failover: raftjob round {}: killed node {leader}; new leader after {:.0} ms, first write after {:.0} ms",
            round + 1,
            ms(l),
            ms(w)
        ));
        to_leader.push(ms(l));
        to_write.push(ms(w));
        c.start_node(leader)?;
        let new_leader = c.wait_ready(Duration::from_secs(30)).await?;
        let target = c.applied_index(new_leader).await.unwrap_or(0);
        let c_ref = &c;
        sys::poll(
            Duration::from_secs(60),
            Duration::from_millis(50),
            "the restarted raftjob node to catch up",
            || async move { (c_ref.applied_index(leader).await? >= target).then_some(()) },
        )
        .await?;
    }
    Ok(FailoverSystem {
        rounds,
        new_leader: Summary::of_ms(to_leader.clone()),
        first_write: Summary::of_ms(to_write.clone()),
        new_leader_ms: to_leader,
        first_write_ms: to_write,
    })
}

async fn etcd_rounds(ctx: &Ctx) -> Result<FailoverSystem> {
    let rounds = ctx.sizes.failover_rounds;
    say(&format!("failover: etcd, {rounds} leader kills"));
    let mut e = EtcdCluster::start(&ctx.etcd, &ctx.out.join("failover/etcd")).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(200))
        .build()?;
    let (mut to_leader, mut to_write) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let leader = e.wait_ready(Duration::from_secs(30)).await?;
        let old_id = e.members[leader].member_id.unwrap_or(0);
        let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let apis: Vec<String> = survivors.iter().map(|i| e.base(*i)).collect();
        e.kill(leader);
        let t0 = Instant::now();
        let leader_probe = {
            let (http, apis) = (http.clone(), apis.clone());
            first_success(
                t0,
                Duration::from_millis(20),
                Duration::from_secs(30),
                move |n| {
                    let (http, api) = (http.clone(), apis[n as usize % apis.len()].clone());
                    async move {
                        let Ok(r) = http
                            .post(format!("{api}/v3/maintenance/status"))
                            .body("{}")
                            .timeout(Duration::from_millis(500))
                            .send()
                            .await
                        else {
                            return false;
                        };
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        let l = v["leader"]
                            .as_str()
                            .and_then(|s| s.parse::<u64>().ok())
                            .or_else(|| v["leader"].as_u64())
                            .unwrap_or(0);
                        l != 0 && l != old_id
                    }
                },
            )
        };
        let write_probe = {
            let (http, apis) = (http.clone(), apis.clone());
            first_success(
                t0,
                Duration::from_millis(50),
                Duration::from_secs(30),
                move |n| {
                    let (http, api) = (http.clone(), apis[n as usize % apis.len()].clone());
                    async move {
                        let body = crate::etcd::put_body(&format!("f/r{round}-{n}"), b"x");
                        http.post(format!("{api}/v3/kv/put"))
                            .body(body)
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    }
                },
            )
        };
        let (l, w) = tokio::join!(leader_probe, write_probe);
        let (l, w) = (l?, w?);
        say(&format!(
            "failover: etcd round {}: killed {}; new leader after {:.0} ms, first write after {:.0} ms",
            round + 1,
            e.members[leader].name,
            ms(l),
            ms(w)
        ));
        to_leader.push(ms(l));
        to_write.push(ms(w));
        e.start_member(leader)?;
        let new_leader = e.wait_ready(Duration::from_secs(30)).await?;
        let target = e
            .status(new_leader, Duration::from_secs(2))
            .await
            .map_or(0, |s| s.raft_index);
        let e_ref = &e;
        sys::poll(
            Duration::from_secs(60),
            Duration::from_millis(50),
            "the restarted etcd member to catch up",
            || async move {
                let s = e_ref.status(leader, Duration::from_secs(1)).await?;
                (s.applied_index >= target).then_some(())
            },
        )
        .await?;
    }
    Ok(FailoverSystem {
        rounds,
        new_leader: Summary::of_ms(to_leader.clone()),
        first_write: Summary::of_ms(to_write.clone()),
        new_leader_ms: to_leader,
        first_write_ms: to_write,
    })
}
