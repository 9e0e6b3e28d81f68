//! Leadership transfer (`raftjob cluster transfer-leader`) and failover drills
//! (`raftjob drill`), run as subprocesses against real server processes on loopback.
//! Run one at a time (`--test-threads=1`): each starts its own cluster.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use raftjob::client::Client;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

/// Runs `raftjob <args> --server <every node> --token <admin token>` off the runtime.
async fn cli_on(c: &TestCluster, args: &[&str]) -> Out {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--server".into(),
        servers(c),
        "--token".into(),
        TOKEN.into(),
    ]);
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        cli(&refs, &[])
    })
    .await
    .unwrap()
}

/// Waits until the cluster id and every node's api address are published.
async fn wait_published(c: &TestCluster, n: usize) {
    let client = c.client();
    eventually(READY, "cluster id and every node's api address", || {
        let client = client.clone();
        async move {
            let v = client.cluster().await.ok()?;
            let m = v["members"].as_array()?;
            (v["cluster_id"].is_string()
                && m.len() == n
                && m.iter().all(|m| m["api_addr"].is_string()))
            .then_some(())
        }
    })
    .await;
}

/// Waits until every running node names `leader` as the leader.
async fn wait_all_see_leader(c: &mut TestCluster, leader: u64) {
    let ids = c.running_ids();
    let clients: Vec<_> = c
        .nodes
        .iter()
        .filter(|n| ids.contains(&n.id))
        .map(|n| n.client())
        .collect();
    eventually(
        Duration::from_secs(10),
        &format!("every node to name node {leader} the leader"),
        || {
            let clients = clients.clone();
            async move {
                for cl in &clients {
                    let v = cl.cluster().await.ok()?;
                    if v["leader_id"].as_u64() != Some(leader) {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn transfer_leader_to_each_follower_in_turn() {
    let mut c = TestCluster::start(3);
    let first = c.wait_ready(&[1, 2, 3], READY).await;
    wait_published(&c, 3).await;
    c.client().create_app("drill").await.unwrap();

    // Each follower in turn, then back to the first leader.
    let mut targets: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
    targets.push(first);
    let mut leader = first;
    let mut took = Vec::new();
    for (i, to) in targets.iter().copied().enumerate() {
        let out = cli_on(
            &c,
            &[
                "cluster",
                "transfer-leader",
                "--to",
                &to.to_string(),
                "--json",
            ],
        )
        .await
        .ok();
        let v = out.json();
        assert_eq!(v["new_leader_id"].as_u64(), Some(to), "{out:?}");
        assert_eq!(v["previous_leader_id"].as_u64(), Some(leader), "{out:?}");
        let ms = v["took_ms"].as_u64().expect("took_ms");
        println!(
            "transfer {} -> {}: {} ms on the leader (catch-up {} ms, {} attempt(s))",
            leader, to, ms, v["catch_up_ms"], v["attempts"]
        );
        took.push(ms);
        wait_all_see_leader(&mut c, to).await;
        // The old leader must not take it back once its elections are on again.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        wait_all_see_leader(&mut c, to).await;

        // Writes keep working, through every node, and read back everywhere.
        for n in &c.nodes {
            let job = n
                .client()
                .create_job(&api_job(
                    "drill",
                    &format!("after-transfer-{i}-via-{}", n.id),
                    json!({"type": "shell", "command": "true"}),
                ))
                .await
                .unwrap_or_else(|e| panic!("write via node {} after the transfer: {e}", n.id));
            let id = job["id"].as_u64().unwrap();
            for m in &c.nodes {
                let read = m
                    .client()
                    .get(&format!("/api/v1/jobs/{id}?consistency=linearizable"))
                    .await
                    .unwrap_or_else(|e| panic!("read job {id} via node {}: {e}", m.id));
                assert_eq!(read["id"].as_u64(), Some(id));
            }
        }
        leader = to;
    }
    // The readable form.
    let other = (1..=3).find(|id| *id != leader).unwrap();
    let out = cli_on(
        &c,
        &["cluster", "transfer-leader", "--to", &other.to_string()],
    )
    .await
    .ok();
    assert!(
        out.stdout.starts_with(&format!(
            "leadership moved from node {leader} to node {other} in "
        )),
        "{out:?}"
    );
    leader = other;
    wait_all_see_leader(&mut c, leader).await;
    took.sort();
    println!("transfer times (ms, on the leader): {took:?}");

    // Refusals: 409 with a clear message, exit code 1.
    let out = cli_on(
        &c,
        &["cluster", "transfer-leader", "--to", &leader.to_string()],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "invalid_state: node {leader} is already the leader"
        )),
        "{out:?}"
    );
    let out = cli_on(&c, &["cluster", "transfer-leader", "--to", "9"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("node 9 is not a member"), "{out:?}");
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/cluster/transfer-leader",
            c.nodes[0].api
        ))
        .json(&json!({"to": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // A follower that is down is not caught up once the leader has written more.
    let down = (1..=3).find(|id| *id != leader).unwrap();
    c.node(down).kill();
    let alive: Vec<u64> = c.running_ids();
    let cl = Client::new(
        c.nodes
            .iter()
            .filter(|n| alive.contains(&n.id))
            .map(|n| n.api.to_string()),
        TOKEN,
    );
    cl.create_job(&api_job(
        "drill",
        "while-down",
        json!({"type": "shell", "command": "true"}),
    ))
    .await
    .unwrap();
    let mut args_servers = Vec::new();
    for n in &c.nodes {
        if alive.contains(&n.id) {
            args_servers.push(n.api.to_string());
        }
    }
    let started = Instant::now();
    let s = args_servers.join(",");
    let to = down.to_string();
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &[
                "cluster",
                "transfer-leader",
                "--to",
                &to,
                "--server",
                &s,
                "--token",
                TOKEN,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("invalid_state: node {down} is not caught up")),
        "{out:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3), "{out:?}");
    // The leader kept its role.
    assert_eq!(
        cl.cluster().await.unwrap()["leader_id"].as_u64(),
        Some(leader)
    );

    // Back up and caught up, it can take over.
    c.node(down).start();
    let out = eventually(
        Duration::from_secs(30),
        "the restarted node to take over",
        || {
            let c = &c;
            let to = down.to_string();
            async move {
                let out = cli_on(c, &["cluster", "transfer-leader", "--to", &to, "--json"]).await;
                (out.code == 0).then_some(out)
            }
        },
    )
    .await;
    assert_eq!(out.json()["new_leader_id"].as_u64(), Some(down), "{out:?}");
    wait_all_see_leader(&mut c, down).await;
}

/// Checks a `raftjob drill --json` report: every round found a new leader, committed a
/// write, dispatched a run, and nothing acknowledged was lost.
fn check_report(v: &Value, rounds: usize, out: &Out) {
    assert_eq!(v["ok"], true, "{out:?}");
    assert_eq!(v["lost_total"].as_u64(), Some(0), "{out:?}");
    assert!(v["acked_total"].as_u64().unwrap() > 0, "{out:?}");
    let rs = v["rounds"].as_array().unwrap();
    assert_eq!(rs.len(), rounds, "{out:?}");
    for r in rs {
        let old = r["old_leader"].as_u64().unwrap();
        let new = r["new_leader"].as_u64().expect("a new leader");
        assert_ne!(old, new, "{r}");
        assert!(r["new_leader_ms"].is_u64(), "{r}");
        assert!(r["first_write_ms"].is_u64(), "{r}");
        assert!(r["first_dispatch_ms"].is_u64(), "dispatch measured: {r}");
        assert_eq!(r["lost"].as_u64(), Some(0), "{r}");
        assert!(r["acked_jobs"].as_u64().unwrap() > 0, "{r}");
        assert!(r["acked_instances"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    }
    println!("{}", out.stderr);
    println!("summary: {}", v["summary"]);
}

#[tokio::test]
async fn drill_transfer_mode_three_rounds() {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    wait_published(&c, 3).await;
    let token = app_token(&c, "drill").await;
    let _w = TestWorker::start(&c, "drill", &token, "http", "drill-w1", &[]);
    wait_workers_live(&c, "drill", 1).await;

    let out = cli_on(
        &c,
        &[
            "drill",
            "--mode",
            "transfer",
            "--rounds",
            "3",
            "--app",
            "drill",
            "--load-after-ms",
            "500",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}\n{}", c.dump_logs());
    let v = out.json();
    check_report(&v, 3, &out);
    let mut to_target = 0;
    for r in v["rounds"].as_array().unwrap() {
        // Failed requests are counted; a transfer should cost none.
        assert_eq!(r["failed_requests"].as_u64(), Some(0), "{r}");
        assert!(r["transfer_attempts"].as_u64().unwrap() >= 1, "{r}");
        if r["new_leader"] == r["target"] {
            to_target += 1;
        }
    }
    // Under load a hand-over can miss its target (docs/drills.md); most must not.
    println!("{to_target} of 3 transfers went to their target");
    assert!(to_target >= 2, "{out:?}");

    // The readable form: a progress line per round, then the summary table.
    let out = cli_on(
        &c,
        &[
            "drill",
            "--mode",
            "transfer",
            "--rounds",
            "1",
            "--app",
            "drill",
            "--load-after-ms",
            "200",
        ],
    )
    .await
    .ok();
    println!("{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("round 1/1: leader "), "{out:?}");
    assert!(lines[0].contains(", lost 0 of "), "{out:?}");
    let header = lines
        .iter()
        .position(|l| l.starts_with("FIGURE"))
        .expect("a table");
    let figures: Vec<&str> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        figures,
        [
            "failed_requests",
            "first_dispatch_ms",
            "first_write_ms",
            "lost",
            "new_leader_ms"
        ],
        "{out:?}"
    );
    assert!(out.stdout.trim_end().ends_with("0 lost: PASS"), "{out:?}");
}

/// Writes `start-N.sh` and `kill-N.sh` for each node of an unstarted cluster: the
/// drill starts and kills the servers through them (pid files in the test's dir).
fn node_scripts(c: &TestCluster) -> std::path::PathBuf {
    let dir = c.dir.path().to_path_buf();
    for n in &c.nodes {
        let transports: Vec<String> = n
            .transports
            .iter()
            .map(|(p, a)| format!("{p}={a}"))
            .collect();
        let pid = dir.join(format!("node{}.pid", n.id));
        let start = format!(
            "#!/bin/sh\nRAFTJOB_LOG='info,openraft=warn' nohup '{bin}' server --node-id {id} --data-dir '{data}' --api-addr {api} --cluster-addr {cluster} --initial-members '{members}' --cluster-secret '{secret}' --admin-token '{token}' --transport '{transports}' {extra} </dev/null >>'{log}' 2>&1 &\necho $! > '{pid}'\n",
            bin = env!("CARGO_BIN_EXE_raftjob"),
            id = n.id,
            data = n.data_dir.display(),
            api = n.api,
            cluster = n.cluster,
            members = n.members,
            secret = SECRET,
            token = TOKEN,
            transports = transports.join(","),
            extra = FAST_WORKERS.join(" "),
            log = n.log.display(),
            pid = pid.display(),
        );
        std::fs::write(dir.join(format!("start-{}.sh", n.id)), start).unwrap();
        let kill = format!("#!/bin/sh\nkill -9 \"$(cat '{}')\"\n", pid.display());
        std::fs::write(dir.join(format!("kill-{}.sh", n.id)), kill).unwrap();
        let stop = format!("#!/bin/sh\nkill -TERM \"$(cat '{}')\"\n", pid.display());
        std::fs::write(dir.join(format!("stop-{}.sh", n.id)), stop).unwrap();
    }
    dir
}

/// Kills, on drop, every server the scripts started (by the pids they recorded).
struct ScriptNodes(std::path::PathBuf, Vec<u64>);

impl Drop for ScriptNodes {
    fn drop(&mut self) {
        for id in &self.1 {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("node{id}.pid"))) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

#[tokio::test]
async fn drill_kill_mode_two_rounds() {
    let c = TestCluster::new(3, FAST_WORKERS);
    let (dir, _nodes) = start_script_nodes(&c).await;
    let token = app_token(&c, "drill").await;
    let _w = TestWorker::start(&c, "drill", &token, "http", "drill-w1", &[]);
    wait_workers_live(&c, "drill", 1).await;

    let kill = format!("sh {}/kill-{{node_id}}.sh", dir.display());
    let restart = format!("sh {}/start-{{node_id}}.sh", dir.display());
    let out = cli_on(
        &c,
        &[
            "drill",
            "--mode",
            "kill",
            "--rounds",
            "2",
            "--app",
            "drill",
            "--kill-cmd",
            &kill,
            "--restart-cmd",
            &restart,
            "--load-after-ms",
            "500",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}\n{}", c.dump_logs());
    let v = out.json();
    check_report(&v, 2, &out);
    for r in v["rounds"].as_array().unwrap() {
        assert!(r["catch_up_ms"].is_u64(), "the killed node caught up: {r}");
        // Requests in flight to the killed node go on to the next server.
        assert_eq!(r["failed_requests"].as_u64(), Some(0), "{r}");
    }
    // All three are back and agree on a leader.
    c.wait_ready(&[1, 2, 3], READY).await;
}

/// Starts the three nodes of `c` through their scripts and waits until they are ready.
async fn start_script_nodes(c: &TestCluster) -> (std::path::PathBuf, ScriptNodes) {
    let dir = node_scripts(c);
    let guard = ScriptNodes(dir.clone(), vec![1, 2, 3]);
    for id in 1..=3 {
        let ok = Command::new("sh")
            .arg(dir.join(format!("start-{id}.sh")))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    wait_published(c, 3).await;
    (dir, guard)
}

fn pid_of(dir: &std::path::Path, id: u64) -> String {
    std::fs::read_to_string(dir.join(format!("node{id}.pid")))
        .unwrap()
        .trim()
        .to_string()
}

/// Rolling restart under load: a worker, a 1-second cron and a stream of runs go on
/// while the script restarts all three servers. Afterwards every instance succeeded,
/// every acknowledged run exists, and every second of the cron ran exactly once.
#[tokio::test]
async fn rolling_restart_script_restarts_every_node_leader_last() {
    let c = TestCluster::new(3, FAST_WORKERS);
    let (dir, _nodes) = start_script_nodes(&c).await;
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "roll").await;
    let _w = TestWorker::start(&c, "roll", &token, "http", "roll-w1", &[]);
    wait_workers_live(&c, "roll", 1).await;
    let job = c
        .client()
        .create_job(&api_job(
            "roll",
            "before",
            json!({"type": "shell", "command": "true"}),
        ))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let cron = c
        .client()
        .create_job(&json!({"app": "roll", "name": "every-second",
            "schedule": {"type": "cron", "expr": "* * * * * *"},
            "processor": {"type": "shell", "command": "true"}}))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    // Runs submitted through the restarts, each with its own idempotency key so a
    // retried request cannot make a second instance.
    let stop_runs = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs = {
        let (client, stop) = (c.client(), stop_runs.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let key = format!("roll-run-{k}");
                if let Ok(v) = client
                    .post_idempotent(&format!("/api/v1/jobs/{job}/run"), &json!({}), &key)
                    .await
                {
                    acked.push(v["instance_id"].as_u64().unwrap());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };
    let before: Vec<String> = (1..=3).map(|id| pid_of(&dir, id)).collect();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/rolling-restart.sh");
    let stop = format!("sh {}/stop-{{node_id}}.sh", dir.display());
    let start = format!("sh {}/start-{{node_id}}.sh", dir.display());
    let servers = servers(&c);
    let wall_ms = || chrono::Utc::now().timestamp_millis();
    let restart_from = wall_ms();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .args([
                "--stop-cmd",
                &stop,
                "--start-cmd",
                &start,
                "--timeout",
                "60",
            ])
            .env("RAFTJOB_SERVER", servers)
            .env("RAFTJOB_ADMIN_TOKEN", TOKEN)
            .env("RAFTJOB_BIN", env!("CARGO_BIN_EXE_raftjob"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{stderr}\n{}",
        out.status,
        c.dump_logs()
    );
    // Followers first, the leader last, after handing over.
    let order: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("rolling-restart: stopping node "))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(order.len(), 3, "{stdout}");
    assert_eq!(order[2], leader, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "node {leader} leads: handing the leadership to node "
        )),
        "{stdout}"
    );
    // Every node is a new process, the cluster is whole, and the data is there.
    for id in 1..=3u64 {
        assert_ne!(
            pid_of(&dir, id),
            before[(id - 1) as usize],
            "node {id} restarted"
        );
    }
    let now = c.wait_ready(&[1, 2, 3], READY).await;
    assert_ne!(
        now, leader,
        "the leadership was handed over before its restart"
    );
    for n in &c.nodes {
        let v = n
            .client()
            .get(&format!("/api/v1/jobs/{job}?consistency=linearizable"))
            .await
            .unwrap();
        assert_eq!(v["id"].as_u64(), Some(job));
    }

    // No failed job, no lost instance.
    // The cron keeps firing past the end of the restarts before it is disabled.
    let restart_to = wall_ms();
    let client = c.client();
    eventually(
        Duration::from_secs(30),
        "the cron to fire after the restarts",
        || {
            let client = client.clone();
            async move {
                let v = client.get(&format!("/api/v1/jobs/{cron}")).await.ok()?;
                (v["last_fire_time_ms"].as_i64()? >= restart_to + 1000).then_some(())
            }
        },
    )
    .await;
    stop_runs.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = runs.await.unwrap();
    assert!(acked.len() >= 10, "runs kept being accepted: {acked:?}");
    c.client()
        .post(&format!("/api/v1/jobs/{cron}/disable"), &json!({}))
        .await
        .unwrap();
    for id in &acked {
        let v = wait_terminal(&c, *id, Duration::from_secs(60)).await;
        assert_eq!(v["status"], "succeeded", "run instance {id}: {v}");
    }
    let fired = c
        .client()
        .get(&format!("/api/v1/instances?job_id={cron}&limit=1000"))
        .await
        .unwrap()["instances"]
        .as_array()
        .unwrap()
        .clone();
    let mut times: Vec<i64> = Vec::new();
    for i in &fired {
        let v = wait_terminal(&c, i["id"].as_u64().unwrap(), Duration::from_secs(60)).await;
        assert_eq!(v["status"], "succeeded", "cron instance: {v}");
        times.push(v["fire_time_ms"].as_i64().unwrap());
    }
    times.sort_unstable();
    let view = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}"))
        .await
        .unwrap();
    assert!(
        times.first().is_some_and(|&t| t <= restart_from + 1000),
        "the cron fired from before the restarts ({restart_from}): {times:?}\n{view}\n{}",
        c.dump_logs()
    );
    let gaps: Vec<(i64, i64)> = times
        .windows(2)
        .filter(|w| w[1] - w[0] != 1000)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "seconds missed or run twice: {gaps:?}");
    let skipped = c
        .client()
        .get(&format!("/api/v1/jobs/{cron}/skipped"))
        .await
        .unwrap();
    assert_eq!(
        skipped["skipped"].as_array().map(Vec::len),
        Some(0),
        "{skipped}"
    );
}
