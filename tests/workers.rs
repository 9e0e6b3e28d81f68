//! Workers and fenced dispatch, with real server and worker processes on loopback.
//! Run one at a time (`--test-threads=1`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(30);

async fn cluster() -> TestCluster {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    c
}

async fn create_job(c: &TestCluster, spec: Value) -> (u64, Value) {
    let v = c.client().create_job(&spec).await.unwrap();
    (v["id"].as_u64().unwrap(), v)
}

#[tokio::test]
async fn shell_jobs_run_over_both_protocols_with_mixed_case_names() {
    let c = cluster().await;
    let token = app_token(&c, "shop").await;
    let (job, created) = create_job(
        &c,
        api_job(
            "shop",
            "hello",
            json!({"type": "shell", "command": "echo hello $RAFTJOB_INSTANCE_ID; echo oops >&2"}),
        ),
    )
    .await;
    let warning = created["warnings"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        warning.contains("no live worker"),
        "a job with no worker gets a warning: {created}"
    );

    let _ws = TestWorker::start(&c, "shop", &token, "WS", "w-ws", &[]);
    wait_workers_live(&c, "shop", 1).await;
    let (_, created) = create_job(
        &c,
        api_job(
            "shop",
            "hello2",
            json!({"type": "shell", "command": "true"}),
        ),
    )
    .await;
    assert!(
        created["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("only one live worker"),
        "{created}"
    );
    let _http = TestWorker::start(&c, "shop", &token, "Http", "w-http", &[]);
    wait_workers_live(&c, "shop", 2).await;

    let mut seen_workers = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let id = run_job(&c, job, json!(null)).await;
        let inst = wait_terminal(&c, id, RUN).await;
        assert_eq!(inst["status"], "succeeded", "{inst}");
        assert!(
            inst["result"]
                .as_str()
                .unwrap()
                .contains(&format!("hello {id}")),
            "{inst}"
        );
        let attempt = &inst["attempts"][0];
        assert!(attempt["fencing_token"]["term"].as_u64().unwrap() >= 1);
        assert!(
            inst["dispatched_at_ms"].is_i64()
                && inst["started_at_ms"].is_i64()
                && inst["finished_at_ms"].is_i64()
        );
        seen_workers.insert(attempt["worker"].as_str().unwrap().to_string());
        let logs = eventually(RUN, "log lines", || {
            let client = c.client();
            async move {
                let v = client
                    .get(&format!("/api/v1/instances/{id}/logs"))
                    .await
                    .ok()?;
                (v["lines"].as_array()?.len() >= 2).then_some(v)
            }
        })
        .await;
        let text = logs["lines"].to_string();
        assert!(
            text.contains("hello") && text.contains("[stderr] oops"),
            "{logs}"
        );
    }
    assert_eq!(
        seen_workers.len(),
        2,
        "health-first spreads work over both protocols: {seen_workers:?}"
    );

    let workers = c.client().get("/api/v1/workers?app=shop").await.unwrap();
    let protocols: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["protocol"].as_str().unwrap())
        .collect();
    assert!(
        protocols.contains(&"ws") && protocols.contains(&"http"),
        "{workers}"
    );
}

#[tokio::test]
async fn http_and_custom_processors_run_end_to_end() {
    use axum::routing::get;
    let c = cluster().await;
    let token = app_token(&c, "web").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/made",
            get(|| async { (axum::http::StatusCode::CREATED, "made it") }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    let _w = TestWorker::start_example(&c, "web", &token, "ws", "embedded", &[]);
    wait_workers_live(&c, "web", 1).await;

    let (http_job, _) = create_job(
        &c,
        api_job("web", "call", json!({"type": "http", "method": "GET", "url": format!("http://{target}/made"), "expect_status": [201]})),
    )
    .await;
    let inst = wait_terminal(&c, run_job(&c, http_job, json!(null)).await, RUN).await;
    assert_eq!(inst["status"], "succeeded", "{inst}");
    assert!(
        inst["result"].as_str().unwrap().contains("status 201")
            && inst["result"].as_str().unwrap().contains("made it"),
        "{inst}"
    );

    let (wrong, _) = create_job(
        &c,
        api_job("web", "call-wrong", json!({"type": "http", "method": "GET", "url": format!("http://{target}/made"), "expect_status": [200]})),
    )
    .await;
    let inst = wait_terminal(&c, run_job(&c, wrong, json!(null)).await, RUN).await;
    assert_eq!(
        inst["status"], "failed",
        "an unexpected status fails: {inst}"
    );

    let (greet, _) = create_job(
        &c,
        api_job("web", "greet", json!({"type": "custom", "name": "greet"})),
    )
    .await;
    let inst = wait_terminal(
        &c,
        run_job(&c, greet, json!({"params": {"name": "Ada"}})).await,
        RUN,
    )
    .await;
    assert_eq!(
        (inst["status"].as_str(), inst["result"].as_str()),
        (Some("succeeded"), Some("hello, Ada")),
        "{inst}"
    );

    let (missing, _) = create_job(
        &c,
        api_job("web", "missing", json!({"type": "custom", "name": "nope"})),
    )
    .await;
    let inst = wait_terminal(&c, run_job(&c, missing, json!(null)).await, RUN).await;
    assert_eq!(inst["status"], "failed");
    assert!(
        inst["result"].as_str().unwrap().contains("greet"),
        "names the registered processors: {inst}"
    );
}

#[tokio::test]
async fn protocol_version_and_token_mismatches_are_refused_at_startup() {
    let mut c = TestCluster::new(3, FAST_WORKERS);
    for n in &mut c.nodes {
        n.transports.remove("ws");
        n.start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "a").await;
    let http_port = c.nodes[0].transports["http"].to_string();

    let mut w = TestWorker::start(&c, "a", &token, "ws", "x", &["--servers", &http_port]);
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        Some(1),
        "{}",
        w.log_text()
    );
    assert!(
        w.log_text().contains("they offer: http"),
        "names what is offered:\n{}",
        w.log_text()
    );

    let mut w = TestWorker::start(&c, "a", "rjw_wrong", "http", "y", &[]);
    assert_eq!(w.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(
        w.log_text().contains("wrong worker token"),
        "{}",
        w.log_text()
    );

    let mut w = TestWorker::start(
        &c,
        "a",
        &token,
        "HTTP",
        "z",
        &["--version-override", "9.0.0"],
    );
    assert_eq!(w.wait_exit(Duration::from_secs(20)), Some(1));
    let log = w.log_text();
    assert!(
        log.contains("9.0.0") && log.contains(env!("CARGO_PKG_VERSION")),
        "names both versions:\n{log}"
    );
}

#[tokio::test]
async fn no_worker_available_fails_with_the_reason() {
    let c = cluster().await;
    let token = app_token(&c, "lonely").await;
    let (job, _) = create_job(
        &c,
        api_job("lonely", "j", json!({"type": "shell", "command": "true"})),
    )
    .await;
    let inst = wait_terminal(&c, run_job(&c, job, json!(null)).await, RUN).await;
    assert_eq!(inst["status"], "failed");
    assert!(
        inst["result"]
            .as_str()
            .unwrap()
            .contains("no worker has ever registered for app lonely"),
        "{inst}"
    );

    let mut w = TestWorker::start(&c, "lonely", &token, "http", "untagged", &[]);
    wait_workers_live(&c, "lonely", 1).await;
    let mut tagged = api_job(
        "lonely",
        "tagged",
        json!({"type": "shell", "command": "true"}),
    );
    tagged["worker_tag"] = json!("gpu");
    let (tagged, _) = create_job(&c, tagged).await;
    let inst = wait_terminal(&c, run_job(&c, tagged, json!(null)).await, RUN).await;
    assert!(
        inst["result"].as_str().unwrap().contains("has tag gpu"),
        "{inst}"
    );

    w.kill();
    eventually(RUN, "the worker is lost", || {
        let client = c.client();
        async move {
            let v = client.get("/api/v1/workers?app=lonely").await.ok()?;
            (v["workers"][0]["state"] == "lost").then_some(())
        }
    })
    .await;
    let inst = wait_terminal(&c, run_job(&c, job, json!(null)).await, RUN).await;
    assert!(
        inst["result"].as_str().unwrap().contains("all are lost"),
        "{inst}"
    );
}

#[tokio::test]
async fn a_killed_worker_s_attempt_is_retried_on_another_worker() {
    let c = cluster().await;
    let token = app_token(&c, "r").await;
    let mut first = TestWorker::start(&c, "r", &token, "ws", "first", &[]);
    wait_workers_live(&c, "r", 1).await;
    let mut spec = api_job(
        "r",
        "long",
        json!({"type": "shell", "command": "sleep 3; echo done"}),
    );
    spec["retries"] = json!(1);
    let (job, _) = create_job(&c, spec).await;
    let id = run_job(&c, job, json!(null)).await;
    wait_status(&c, id, "running", RUN).await;
    let _second = TestWorker::start(&c, "r", &token, "http", "second", &[]);
    wait_workers_live(&c, "r", 2).await;

    first.kill();
    let killed = Instant::now();
    let retried = eventually(RUN, "a second attempt", || {
        let client = c.client();
        async move {
            let v = client.get(&format!("/api/v1/instances/{id}")).await.ok()?;
            (v["attempts"].as_array()?.len() == 2).then_some(v)
        }
    })
    .await;
    println!(
        "worker kill -9 to retry dispatched elsewhere: {:?}",
        killed.elapsed()
    );
    assert!(
        retried["attempts"][0]["result"]
            .as_str()
            .unwrap()
            .contains("worker r/first lost"),
        "{retried}"
    );
    assert_eq!(retried["attempts"][1]["worker"], "r/second");
    let done = wait_terminal(&c, id, RUN).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test]
async fn stop_cancel_and_retry() {
    let c = cluster().await;
    let token = app_token(&c, "s").await;
    let _w = TestWorker::start(&c, "s", &token, "http", "w", &[]);
    wait_workers_live(&c, "s", 1).await;
    let pid_file = c.dir.path().join("pid");
    let cmd = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let (job, _) = create_job(
        &c,
        api_job("s", "long", json!({"type": "shell", "command": cmd})),
    )
    .await;
    let id = run_job(&c, job, json!(null)).await;
    wait_status(&c, id, "running", RUN).await;
    let pid = eventually(RUN, "the pid file", || {
        let p = pid_file.clone();
        async move { std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok() }
    })
    .await;
    let stopping = c
        .client()
        .post(&format!("/api/v1/instances/{id}/stop"), &json!(null))
        .await
        .unwrap();
    assert!(
        ["stopping", "stopped"].contains(&stopping["status"].as_str().unwrap()),
        "{stopping}"
    );
    let done = wait_terminal(&c, id, RUN).await;
    assert_eq!(done["status"], "stopped", "{done}");
    eventually(RUN, "the job's child process killed", || async move {
        process_dead(pid).then_some(())
    })
    .await;

    let delayed = run_job(&c, job, json!({"delay_ms": 60000})).await;
    let conflict = c
        .client()
        .post(&format!("/api/v1/instances/{id}/cancel"), &json!(null))
        .await
        .unwrap_err();
    assert_eq!(
        conflict.status(),
        Some(409),
        "a finished instance cannot be canceled"
    );
    let canceled = c
        .client()
        .post(&format!("/api/v1/instances/{delayed}/cancel"), &json!(null))
        .await
        .unwrap();
    assert_eq!(canceled["status"], "canceled");

    let retry = c
        .client()
        .post(&format!("/api/v1/instances/{id}/retry"), &json!(null))
        .await
        .unwrap();
    let new_id = retry["instance_id"].as_u64().unwrap();
    let v = c
        .client()
        .get(&format!("/api/v1/instances/{new_id}"))
        .await
        .unwrap();
    assert_eq!(v["trigger"], json!({"type": "retry", "of": id}));
    let listed = c
        .client()
        .get(&format!("/api/v1/instances?job_id={job}&status=canceled"))
        .await
        .unwrap();
    assert_eq!(listed["instances"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn broadcast_runs_on_every_live_worker() {
    let c = cluster().await;
    let token = app_token(&c, "b").await;
    let _w1 = TestWorker::start(&c, "b", &token, "ws", "one", &[]);
    let _w2 = TestWorker::start(&c, "b", &token, "http", "two", &[]);
    wait_workers_live(&c, "b", 2).await;
    let mut spec = api_job(
        "b",
        "everywhere",
        json!({"type": "shell", "command": "echo on $RAFTJOB_ATTEMPT"}),
    );
    spec["execution_mode"] = json!("broadcast");
    let (job, _) = create_job(&c, spec).await;
    let inst = wait_terminal(&c, run_job(&c, job, json!(null)).await, RUN).await;
    assert_eq!(inst["status"], "succeeded", "{inst}");
    let workers: std::collections::BTreeSet<&str> = inst["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "{inst}");
    let result = inst["result"].as_str().unwrap();
    assert!(
        result.contains("b/one") && result.contains("b/two"),
        "{inst}"
    );
}

/// Kills the leader while four instances run on two workers (one per protocol), each
/// told about every server; each instance must finish once.
#[tokio::test]
async fn leader_kill_while_instances_run_loses_and_duplicates_nothing() {
    // A lease must outlast a leader failover (about 1 s) plus finding the new leader,
    // so this test uses 4 s rather than the 1.5 s of FAST_WORKERS.
    let mut c = TestCluster::start_with(
        3,
        &[
            "--worker-heartbeat-ms",
            "200",
            "--worker-lease-ms",
            "4000",
            "--worker-grace-ms",
            "700",
            "--no-worker-timeout-ms",
            "1500",
        ],
    );
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "f").await;
    let _w1 = TestWorker::start(&c, "f", &token, "ws", "one", &[]);
    let _w2 = TestWorker::start(&c, "f", &token, "http", "two", &[]);
    wait_workers_live(&c, "f", 2).await;
    let (job, _) = create_job(
        &c,
        api_job(
            "f",
            "slow",
            json!({"type": "shell", "command": "sleep 2; echo ok"}),
        ),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(run_job(&c, job, json!(null)).await);
    }
    for id in &ids {
        wait_status(&c, *id, "running", RUN).await;
    }
    let leader = c.leader().await;
    c.node(leader).kill();
    for id in &ids {
        let inst = wait_terminal(&c, *id, RUN).await;
        assert_eq!(inst["status"], "succeeded", "{inst}");
        assert_eq!(
            inst["attempts"].as_array().unwrap().len(),
            1,
            "ran once: {inst}"
        );
    }
    let workers = c.client().get("/api/v1/workers?app=f").await.unwrap();
    for w in workers["workers"].as_array().unwrap() {
        assert_ne!(
            w["state"], "lost",
            "no worker is declared lost because of the election: {workers}"
        );
    }
}

/// A worker configured with one server, the leader, must follow the cluster to the new
/// leader when that server is killed (`kill -9`): its heartbeats and reports reach the
/// new leader well within the lease, so no attempt is lost or run twice.
#[tokio::test]
async fn leader_kill_with_workers_told_about_one_server() {
    // The lease must outlast a failover (about 1 s) plus finding the new leader.
    let mut c = TestCluster::start_with(
        3,
        &[
            "--worker-heartbeat-ms",
            "200",
            "--worker-lease-ms",
            "4000",
            "--worker-grace-ms",
            "700",
            "--no-worker-timeout-ms",
            "1500",
        ],
    );
    c.wait_ready(&[1, 2, 3], READY).await;
    // Each worker is told about the leader only: the server that is killed below.
    let leader = c.leader().await;
    let (only_ws, only_http) = {
        let n = c.node(leader);
        (
            n.transports["ws"].to_string(),
            n.transports["http"].to_string(),
        )
    };
    let token = app_token(&c, "f").await;
    let w1 = TestWorker::start(&c, "f", &token, "ws", "one", &["--servers", &only_ws]);
    let w2 = TestWorker::start(&c, "f", &token, "http", "two", &["--servers", &only_http]);
    wait_workers_live(&c, "f", 2).await;
    // The workers can only follow the cluster to servers they know of. A server publishes
    // its transport addresses through Raft shortly after it starts, and heartbeat answers
    // pass them on; so wait until every server has, and both workers learned all three.
    {
        let http = reqwest::Client::new();
        let url = format!("http://{only_http}/transport/v1/discovery");
        eventually(RUN, "every server's transport address", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let d: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                (d["servers"].as_array()?.len() == 3).then_some(())
            }
        })
        .await;
        for w in [&w1, &w2] {
            eventually(RUN, &format!("worker {} to know 3 servers", w.name), || {
                let known = w.log_text().contains("known=3");
                async move { known.then_some(()) }
            })
            .await;
        }
    }
    let (job, _) = create_job(
        &c,
        api_job(
            "f",
            "slow",
            json!({"type": "shell", "command": "sleep 2; echo ok"}),
        ),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(run_job(&c, job, json!(null)).await);
    }
    for id in &ids {
        wait_status(&c, *id, "running", RUN).await;
    }
    assert_eq!(
        c.leader().await,
        leader,
        "the leader changed before the kill"
    );
    c.node(leader).kill();
    let context = |c: &TestCluster| {
        format!(
            "\n--- worker one (ws) ---\n{}\n--- worker two (http) ---\n{}\n{}",
            tail(&w1.log_text(), 80),
            tail(&w2.log_text(), 80),
            c.dump_logs()
        )
    };
    for id in &ids {
        let inst = wait_terminal(&c, *id, RUN).await;
        assert_eq!(inst["status"], "succeeded", "{inst}{}", context(&c));
        assert_eq!(
            inst["attempts"].as_array().unwrap().len(),
            1,
            "ran once: {inst}{}",
            context(&c)
        );
    }
    let workers = c.client().get("/api/v1/workers?app=f").await.unwrap();
    let list = workers["workers"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{workers}");
    for w in list {
        assert_ne!(
            w["state"],
            "lost",
            "no worker is declared lost because of the election: {workers}{}",
            context(&c)
        );
    }
}

#[tokio::test]
async fn a_worker_refuses_stale_terms_and_duplicate_attempts() {
    let c = cluster().await;
    let token = app_token(&c, "t").await;
    let _w = TestWorker::start(&c, "t", &token, "http", "w", &[]);
    wait_workers_live(&c, "t", 1).await;
    let (job, _) = create_job(
        &c,
        api_job("t", "j", json!({"type": "shell", "command": "true"})),
    )
    .await;
    let id = run_job(&c, job, json!(null)).await;
    let inst = wait_terminal(&c, id, RUN).await;
    let token_seen = inst["attempts"][0]["fencing_token"].clone();
    let term = token_seen["term"].as_u64().unwrap();

    let view = c.client().get("/api/v1/workers?app=t").await.unwrap();
    let addr = view["workers"][0]["address"].as_str().unwrap().to_string();
    let cluster_id = c.client().cluster().await.unwrap()["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let credential = raftjob::server::transport::worker_credential(SECRET, &cluster_id, "t/w");
    let http = reqwest::Client::new();
    let send = |term: u64, attempt: u32, cred: String| {
        let body = json!({"cluster_id": cluster_id, "term": term,
            "attempt": {"instance_id": id, "attempt": attempt, "token": {"term": term, "index": 1}},
            "job_id": job, "processor": {"type": "shell", "command": "true"}, "lease_ms": 1000});
        http.post(format!("http://{addr}/worker/v1/dispatch"))
            .header("x-raftjob-worker-credential", cred)
            .json(&body)
            .send()
    };
    let stale: Value = send(term - 1, 7, credential.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stale["accepted"], false);
    assert!(
        stale["reason"].as_str().unwrap().contains("stale term"),
        "{stale}"
    );
    let dup: Value = send(term, 1, credential.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dup["accepted"], false);
    assert!(
        dup["reason"]
            .as_str()
            .unwrap()
            .contains("already dispatched"),
        "{dup}"
    );
    let forged = send(term, 9, "rjc_forged".into()).await.unwrap();
    assert_eq!(
        forged.status(),
        401,
        "only the cluster's credential is accepted"
    );
}

#[tokio::test]
async fn a_cut_off_worker_kills_its_attempt_before_the_retry_starts_elsewhere() {
    // Workers reach the servers' ws ports only through proxies the test controls.
    let mut c = TestCluster::new(3, FAST_WORKERS);
    let mut proxies = Vec::new();
    for n in &mut c.nodes {
        let p = Proxy::start(n.transports["ws"]).await;
        n.extra_args.extend([
            "--advertise-transport".to_string(),
            format!("ws={}", p.addr),
        ]);
        proxies.push(p);
    }
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "cut").await;
    let via: Vec<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    let a = TestWorker::start(
        &c,
        "cut",
        &token,
        "ws",
        "behind-proxy",
        &["--servers", &via.join(",")],
    );
    wait_workers_live(&c, "cut", 1).await;
    let pid_file = c.dir.path().join("cut-pid");
    let mut spec = api_job(
        "cut",
        "long",
        json!({"type": "shell", "command": format!("sleep 60 & echo $! > {}; wait", pid_file.display())}),
    );
    spec["retries"] = json!(1);
    let (job, _) = create_job(&c, spec).await;
    let id = run_job(&c, job, json!(null)).await;
    wait_status(&c, id, "running", RUN).await;
    let pid = eventually(RUN, "the pid file", || {
        let p = pid_file.clone();
        async move { std::fs::read_to_string(p).ok()?.trim().parse::<u32>().ok() }
    })
    .await;
    let _b = TestWorker::start(&c, "cut", &token, "http", "direct", &[]);
    wait_workers_live(&c, "cut", 2).await;

    // Watch the attempt's process from a plain thread, so the time of death is exact
    // whatever the test's runtime is doing.
    let death = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if process_dead(pid) {
                return Some((Instant::now(), chrono::Utc::now().timestamp_millis()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    });
    let cut_at = Instant::now();
    for p in &proxies {
        p.cut();
    }
    let (killed_at, killed_ms) = tokio::task::spawn_blocking(move || death.join().unwrap())
        .await
        .unwrap()
        .expect("the cut-off worker kills its attempt");
    let killed_after = killed_at - cut_at;
    let retried = eventually(RUN, "the retry on the other worker", || {
        let client = c.client();
        async move {
            let v = client.get(&format!("/api/v1/instances/{id}")).await.ok()?;
            v["attempts"][1]["dispatched_at_ms"]
                .as_i64()
                .map(|t| (t, v))
        }
    })
    .await;
    let (retry_ms, inst) = retried;
    println!(
        "cut-off worker killed its attempt {killed_after:?} after the cut; retry dispatched {} ms after the kill",
        retry_ms - killed_ms
    );
    if killed_ms > retry_ms {
        println!("{}", tail(&a.log_text(), 30));
    }
    assert!(
        killed_ms <= retry_ms,
        "the attempt was killed ({killed_ms}) before the retry was dispatched ({retry_ms}): {inst}"
    );
    assert_eq!(inst["attempts"][1]["worker"], "cut/direct");
    assert!(
        inst["attempts"][0]["result"]
            .as_str()
            .unwrap()
            .contains("lost"),
        "{inst}"
    );
    c.client()
        .post(&format!("/api/v1/instances/{id}/stop"), &json!(null))
        .await
        .unwrap();
    let done = wait_terminal(&c, id, RUN).await;
    assert_eq!(
        (
            done["status"].as_str(),
            done["attempts"].as_array().unwrap().len()
        ),
        (Some("stopped"), 2),
        "{done}"
    );
}

#[tokio::test]
async fn round_robin_alternates_between_workers() {
    let c = cluster().await;
    let token = app_token(&c, "rr").await;
    let _w1 = TestWorker::start(&c, "rr", &token, "ws", "one", &[]);
    let _w2 = TestWorker::start(&c, "rr", &token, "http", "two", &[]);
    wait_workers_live(&c, "rr", 2).await;
    let mut spec = api_job("rr", "j", json!({"type": "shell", "command": "true"}));
    spec["dispatch_strategy"] = json!("round_robin");
    let (job, _) = create_job(&c, spec).await;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let inst = wait_terminal(&c, run_job(&c, job, json!(null)).await, RUN).await;
        assert_eq!(inst["status"], "succeeded", "{inst}");
        workers.push(inst["attempts"][0]["worker"].as_str().unwrap().to_string());
    }
    for pair in workers.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {workers:?}");
    }
}

/// The attempts of an instance (JSON), and whether each was a refused dispatch.
fn refused_flags(inst: &Value) -> Vec<bool> {
    inst["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["dispatch_refused"] == true)
        .collect()
}

/// A worker with `--max-concurrency 1` gets two runs at once of a `retries: 0` job.
/// The leader's own accounting (reservations, heartbeat load) keeps it from sending a
/// second attempt to a full worker, so the test makes its view stale on purpose to
/// provoke a real refusal: the worker reaches the servers only through proxies, which
/// are cut, and a dispatch forged with the cluster's credential fills its one slot
/// (cut off, it cannot report that attempt, and its heartbeats do not get through). The
/// leader still sees a live, idle worker and sends the first run there; the worker
/// refuses it ("at the concurrency limit (1)"). That refusal must not use up the run's
/// only try: once the link heals, both runs succeed on that worker, one after the other.
#[tokio::test]
async fn a_dispatch_refused_at_the_concurrency_limit_does_not_use_up_a_retry() {
    let mut c = TestCluster::new(
        3,
        &[
            "--worker-heartbeat-ms",
            "200",
            "--worker-lease-ms",
            "1500",
            "--worker-grace-ms",
            "700",
            // The second run waits for the first (2 s) on the only worker.
            "--no-worker-timeout-ms",
            "20000",
        ],
    );
    let mut proxies = Vec::new();
    for n in &mut c.nodes {
        let p = Proxy::start(n.transports["http"]).await;
        n.extra_args.extend([
            "--advertise-transport".to_string(),
            format!("http={}", p.addr),
        ]);
        proxies.push(p);
    }
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "lim").await;
    let via: Vec<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    let w = TestWorker::start(
        &c,
        "lim",
        &token,
        "http",
        "solo",
        &["--servers", &via.join(","), "--max-concurrency", "1"],
    );
    wait_workers_live(&c, "lim", 1).await;
    let mut spec = api_job(
        "lim",
        "one-at-a-time",
        json!({"type": "shell", "command": "sleep 2; echo done"}),
    );
    spec["retries"] = json!(0);
    let (job, _) = create_job(&c, spec).await;

    let addr = list_workers(&c, "lim").await.unwrap()[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster_id = c.client().cluster().await.unwrap()["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!(
            "http://{}/transport/v1/discovery",
            c.nodes[0].transports["http"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let term = discovery["term"].as_u64().unwrap();
    let credential = raftjob::server::transport::worker_credential(SECRET, &cluster_id, "lim/solo");

    for p in &proxies {
        p.cut();
    }
    let forged = json!({"cluster_id": cluster_id, "term": term,
        "attempt": {"instance_id": 999_999_999u64, "attempt": 1, "token": {"term": term, "index": 1}},
        "job_id": job, "processor": {"type": "shell", "command": "sleep 30"}, "lease_ms": 10_000});
    let ack: Value = http
        .post(format!("http://{addr}/worker/v1/dispatch"))
        .header("x-raftjob-worker-credential", credential)
        .json(&forged)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ack["accepted"], true,
        "the forged attempt fills the slot: {ack}"
    );
    let first = run_job(&c, job, json!(null)).await;
    let second = run_job(&c, job, json!(null)).await;
    let refused = eventually(RUN, "a refused dispatch", || {
        let client = c.client();
        async move {
            for id in [first, second] {
                let v = client.get(&format!("/api/v1/instances/{id}")).await.ok()?;
                if v["attempts"][0]["dispatch_refused"] == true {
                    return Some(v);
                }
            }
            None
        }
    })
    .await;
    for p in &proxies {
        p.heal();
    }
    let context = |c: &TestCluster| {
        format!(
            "\n--- worker ---\n{}\n{}",
            tail(&w.log_text(), 40),
            c.dump_logs()
        )
    };
    let result = refused["attempts"][0]["result"].as_str().unwrap();
    assert!(
        result.starts_with("dispatch refused by worker lim/solo: at the concurrency limit (1)"),
        "{refused}"
    );
    assert_ne!(
        refused["status"], "failed",
        "a refusal is not a try: {refused}"
    );

    let a = wait_terminal(&c, first, RUN).await;
    let b = wait_terminal(&c, second, RUN).await;
    let mut ran = Vec::new();
    for inst in [&a, &b] {
        assert_eq!(inst["status"], "succeeded", "{inst}{}", context(&c));
        let attempts = inst["attempts"].as_array().unwrap();
        let (last, before) = attempts.split_last().unwrap();
        assert_eq!(last["worker"], "lim/solo");
        assert!(
            before.iter().all(|x| x["dispatch_refused"] == true
                && x["status"] == "failed"
                && x["result"]
                    .as_str()
                    .unwrap()
                    .contains("at the concurrency limit (1)")),
            "every attempt before the one that ran was a refusal: {inst}"
        );
        ran.push((
            last["started_at_ms"].as_i64().unwrap(),
            last["finished_at_ms"].as_i64().unwrap(),
        ));
    }
    assert!(
        refused_flags(&a).contains(&true) || refused_flags(&b).contains(&true),
        "a refusal happened: {a}\n{b}"
    );
    ran.sort();
    assert!(
        ran[1].0 >= ran[0].1,
        "one worker slot: the second run started after the first ended: {ran:?}"
    );
}

/// A dispatch to a worker that died moments ago (its port refuses connections) is
/// refused, not a try: the run waits, and runs once the worker is back. An instance no
/// worker accepts still fails at the no-worker timeout, with no refuse loop.
#[tokio::test]
async fn a_dispatch_to_a_dead_worker_waits_without_using_up_a_retry() {
    let c = TestCluster::start_with(
        3,
        &[
            "--worker-heartbeat-ms",
            "200",
            "--worker-lease-ms",
            "1500",
            "--worker-grace-ms",
            "700",
            "--no-worker-timeout-ms",
            "5000",
        ],
    );
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "dead").await;
    let mut w = TestWorker::start(&c, "dead", &token, "http", "phoenix", &[]);
    wait_workers_live(&c, "dead", 1).await;
    let (job, _) = create_job(
        &c,
        api_job("dead", "j", json!({"type": "shell", "command": "echo ok"})),
    )
    .await;

    // The leader still counts the worker live (for lease + grace) when the run comes.
    w.kill();
    let id = run_job(&c, job, json!(null)).await;
    let waiting = eventually(RUN, "the refused dispatch", || {
        let client = c.client();
        async move {
            let v = client.get(&format!("/api/v1/instances/{id}")).await.ok()?;
            (v["attempts"][0]["dispatch_refused"] == true).then_some(v)
        }
    })
    .await;
    assert!(
        waiting["attempts"][0]["result"]
            .as_str()
            .unwrap()
            .starts_with("dispatch refused by worker dead/phoenix: unreachable at"),
        "{waiting}"
    );
    assert_ne!(waiting["status"], "failed", "{waiting}");
    let _w = TestWorker::start(&c, "dead", &token, "http", "phoenix", &[]);
    let done = wait_terminal(&c, id, RUN).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(refused_flags(&done), vec![true, false], "{done}");

    // No worker comes back this time: the no-worker timeout ends the run, after one
    // refused dispatch (the dead worker gets no more until it sends a heartbeat).
    drop(_w);
    let id = run_job(&c, job, json!(null)).await;
    let failed = wait_terminal(&c, id, RUN).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let result = failed["result"].as_str().unwrap();
    assert!(
        result.starts_with("no worker available: ")
            && result.contains("(last: dispatch refused by worker dead/phoenix: unreachable at"),
        "{failed}"
    );
    assert_eq!(refused_flags(&failed), vec![true], "{failed}");
    let waited =
        failed["finished_at_ms"].as_i64().unwrap() - failed["created_at_ms"].as_i64().unwrap();
    assert!(
        waited >= 4900,
        "it waited the no-worker timeout (5 s), not {waited} ms: {failed}"
    );
}

/// `raftjob worker` stopped with SIGTERM deregisters: it disappears from the list at
/// once. One that still holds an attempt is refused and stays listed.
#[tokio::test]
async fn a_worker_stopped_cleanly_deregisters() {
    let c = cluster().await;
    let token = app_token(&c, "bye").await;
    let mut quiet_ws = TestWorker::start(&c, "bye", &token, "ws", "quiet-ws", &[]);
    let mut quiet_http = TestWorker::start(&c, "bye", &token, "http", "quiet-http", &[]);
    let mut busy = TestWorker::start(&c, "bye", &token, "http", "busy", &[]);
    wait_workers_live(&c, "bye", 3).await;
    let mut spec = api_job(
        "bye",
        "long",
        json!({"type": "shell", "command": "sleep 30"}),
    );
    spec["designated_workers"] = json!(["busy"]);
    let (job, _) = create_job(&c, spec).await;
    let id = run_job(&c, job, json!(null)).await;
    wait_status(&c, id, "running", RUN).await;

    for w in [&mut quiet_ws, &mut quiet_http] {
        let stopped = Instant::now();
        assert_eq!(w.stop(Duration::from_secs(10)), Some(0), "{}", w.log_text());
        assert!(w.log_text().contains("Deregistered."), "{}", w.log_text());
        let name = w.name.clone();
        eventually(
            Duration::from_secs(5),
            &format!("{name} gone from the list"),
            || {
                let name = name.clone();
                let c = &c;
                async move { (!worker_names(c, "bye").await?.contains(&name)).then_some(()) }
            },
        )
        .await;
        println!(
            "{name}: SIGTERM to gone from the list: {:?}",
            stopped.elapsed()
        );
    }

    // The leader refuses to deregister a worker with an open attempt, whoever asks
    // (here the bare protocol message, as a worker in another language sends it).
    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!(
            "http://{}/transport/v1/discovery",
            c.nodes[0].transports["http"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let leader_http = discovery["leader_transports"]["http"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster_id = discovery["cluster_id"].as_str().unwrap().to_string();
    let deregister = |credential: String| {
        http.post(format!("http://{leader_http}/transport/v1/deregister"))
            .json(&json!({"worker_id": "bye/busy", "credential": credential}))
            .send()
    };
    let answer: Value = deregister("rjc_forged".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("refused"), Some("bad_credential")),
        "{answer}"
    );
    let credential = raftjob::server::transport::worker_credential(SECRET, &cluster_id, "bye/busy");
    let answer: Value = deregister(credential).await.unwrap().json().await.unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("refused"), Some("has_open_attempts")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains(&format!("instance {id} attempt 1")),
        "{answer}"
    );

    // Stopped while it runs the attempt, the worker does not deregister: the lease
    // settles the attempt, and the registration stays (until forget_after_ms).
    assert_eq!(
        busy.stop(Duration::from_secs(10)),
        Some(0),
        "{}",
        busy.log_text()
    );
    assert!(
        busy.log_text().contains("Not deregistering"),
        "{}",
        busy.log_text()
    );
    let lost = wait_terminal(&c, id, RUN).await;
    assert!(
        lost["result"]
            .as_str()
            .unwrap()
            .contains("worker bye/busy lost"),
        "the attempt is settled by its lease: {lost}"
    );
    let names = worker_names(&c, "bye").await.unwrap();
    assert_eq!(names, vec!["busy".to_string()], "still registered");

    // With nothing open any more, the same worker deregisters on its next clean stop.
    let mut again = TestWorker::start(&c, "bye", &token, "http", "busy", &[]);
    wait_workers_live(&c, "bye", 1).await;
    assert_eq!(again.stop(Duration::from_secs(10)), Some(0));
    eventually(
        Duration::from_secs(5),
        "busy gone from the list",
        || async { worker_names(&c, "bye").await?.is_empty().then_some(()) },
    )
    .await;
}

/// A worker killed with SIGKILL cannot deregister: the leader forgets it once it has not
/// heard from it for `--worker-forget-after-ms`.
#[tokio::test]
async fn a_lost_worker_is_forgotten_after_forget_after_ms() {
    let mut flags = FAST_WORKERS.to_vec();
    flags.extend(["--worker-forget-after-ms", "4000"]);
    let c = TestCluster::start_with(3, &flags);
    c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, "gone").await;
    let mut w = TestWorker::start(&c, "gone", &token, "ws", "w", &[]);
    let _stays = TestWorker::start(&c, "gone", &token, "http", "stays", &[]);
    wait_workers_live(&c, "gone", 2).await;
    w.kill();
    let killed = Instant::now();
    let seen_lost = std::sync::atomic::AtomicBool::new(false);
    eventually(RUN, "the killed worker forgotten", || {
        let (c, seen_lost) = (&c, &seen_lost);
        async move {
            let list = list_workers(c, "gone").await?;
            match list.iter().find(|x| x["name"] == "w") {
                Some(x) => {
                    if x["state"] == "lost" {
                        seen_lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    None
                }
                None => Some(()),
            }
        }
    })
    .await;
    let after = killed.elapsed();
    println!("kill -9 to forgotten: {after:?}");
    assert!(
        seen_lost.load(std::sync::atomic::Ordering::Relaxed),
        "it was listed as lost before it was forgotten"
    );
    assert!(
        after >= Duration::from_millis(3500),
        "not forgotten before forget_after (4 s): {after:?}"
    );
    assert_eq!(
        worker_names(&c, "gone").await.unwrap(),
        vec!["stays".to_string()],
        "a live worker is never forgotten"
    );
    assert!(
        c.nodes
            .iter()
            .any(|n| n.log_text().contains("Forgot a worker")),
        "{}",
        c.dump_logs()
    );
    // It may come back under the same name.
    let _back = TestWorker::start(&c, "gone", &token, "ws", "w", &[]);
    wait_workers_live(&c, "gone", 2).await;
}

#[tokio::test]
async fn random_strategy_uses_both_workers_and_runs_each_instance_once() {
    let c = cluster().await;
    let token = app_token(&c, "rnd").await;
    let _w1 = TestWorker::start(&c, "rnd", &token, "ws", "one", &[]);
    let _w2 = TestWorker::start(&c, "rnd", &token, "http", "two", &[]);
    wait_workers_live(&c, "rnd", 2).await;
    let mut spec = api_job("rnd", "j", json!({"type": "shell", "command": "true"}));
    spec["dispatch_strategy"] = json!("random");
    let (job, _) = create_job(&c, spec).await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    // One at a time, so every pick is between two idle workers.
    for _ in 0..30 {
        let inst = wait_terminal(&c, run_job(&c, job, json!(null)).await, RUN).await;
        assert_eq!(inst["status"], "succeeded", "{inst}");
        let attempts = inst["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "ran once: {inst}");
        *counts
            .entry(attempts[0]["worker"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    println!("random picks: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 30);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["rnd/one", "rnd/two"],
        "both workers ran some (all 30 on one has probability 2^-29): {counts:?}"
    );
}

/// A TCP proxy that holds each connection for `delay` before it connects to `target`
/// and forwards what the client sent meanwhile: a dispatch delivered late, after the
/// leader's request timed out (the answer goes nowhere).
async fn late_delivery_proxy(target: std::net::SocketAddr, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = free_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(mut out) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), inbound.read(&mut buf)).await
                {
                    if n == 0 || out.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Keep the worker's side open until it has answered.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(n) = out.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
    addr.to_string()
}

/// Regression (found by jepsen-lite, `leader-workers-cut` seed 2): a dispatch that
/// reaches an http worker only after the leader gave up on it (lease + grace) and
/// dispatched a new attempt elsewhere must never start. Before, the worker started it
/// and the next heartbeat killed it, so one instance ran on two workers at once.
#[tokio::test]
async fn a_dispatch_delivered_late_is_never_started() {
    let c = TestCluster::start_with(1, FAST_WORKERS);
    c.wait_ready(&[1], READY).await;
    let token = app_token(&c, "late").await;
    let listen = free_addr();
    // Lease 1.5 s + grace 0.7 s: the dispatch arrives after the leader declared it lost.
    let advertised = late_delivery_proxy(listen, Duration::from_millis(3500)).await;
    let record = c.dir.path().join("late-a.jsonl");
    let record_arg = record.to_str().unwrap().to_string();
    let listen_arg = listen.to_string();
    let _a = TestWorker::start(
        &c,
        "late",
        &token,
        "http",
        "slow-link",
        &[
            "--listen",
            &listen_arg,
            "--advertise",
            &advertised,
            "--record",
            &record_arg,
        ],
    );
    wait_workers_live(&c, "late", 1).await;
    let mut spec = api_job(
        "late",
        "once",
        json!({"type": "shell", "command": "sleep 1"}),
    );
    spec["retries"] = json!(1);
    let (job, _) = create_job(&c, spec).await;
    let id = run_job(&c, job, json!(null)).await;
    wait_status(&c, id, "dispatched", RUN).await;
    // The retry goes to a worker with a direct link.
    let _b = TestWorker::start(&c, "late", &token, "ws", "direct", &[]);
    let done = wait_terminal(&c, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", c.dump_logs());
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[1]["worker"], "late/direct", "{done}");
    // The late dispatch did reach the slow worker, and it never started it.
    let events = eventually(
        Duration::from_secs(15),
        "the late dispatch to arrive",
        || {
            let record = record.clone();
            async move {
                let text = std::fs::read_to_string(&record).ok()?;
                let events: Vec<Value> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                events
                    .iter()
                    .any(|e| e["instance_id"] == id && e["attempt"] == 1 && e["kind"] != "start")
                    .then_some(events)
            }
        },
    )
    .await;
    let started: Vec<&Value> = events
        .iter()
        .filter(|e| e["instance_id"] == id && e["kind"] == "start")
        .collect();
    assert!(started.is_empty(), "the late attempt started: {events:?}");
}
