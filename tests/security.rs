//! Security: every port refuses a missing or wrong credential; scoped API tokens stay
//! inside their app and role; revoked and expired tokens are refused; failed token
//! checks are rate limited; the audit trail shows who did what; and the admin token,
//! the cluster secret and app worker tokens rotate with no failed request.
//! Run one at a time (`--test-threads=1`): each test starts its own cluster.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftjob::client::Client;
use reqwest::Method;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

struct Reply {
    status: u16,
    body: Value,
    content_type: String,
    retry_after: Option<String>,
}

/// One plain HTTP request to `addr` (no retries, no failover).
async fn call(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let http = reqwest::Client::new();
    let mut req = http
        .request(method, format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request sent");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        content_type,
        retry_after,
    }
}

fn api_only_job(app: &str, name: &str) -> Value {
    json!({
        "app": app,
        "name": name,
        "schedule": {"type": "api"},
        "processor": {"type": "shell", "command": "echo hi"},
    })
}

async fn create_token(
    addr: &str,
    name: &str,
    app: &str,
    role: &str,
    expires: Option<String>,
) -> (u64, String) {
    let mut body = json!({"name": name, "app": app, "role": role});
    if let Some(e) = expires {
        body["expires_at"] = json!(e);
    }
    let r = call(
        addr,
        Method::POST,
        "/api/v1/tokens",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("rjt_"));
    (r.body["id"].as_u64().unwrap(), secret)
}

#[tokio::test]
async fn every_port_refuses_a_missing_or_wrong_credential() {
    let c = TestCluster::start(3);
    c.wait_ready(&[1, 2, 3], READY).await;
    let api = c.nodes[0].api.to_string();

    // api port: 401 problem+json, with and without a token, on every /api/v1 route kind.
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        for (m, path) in [
            (Method::GET, "/api/v1/jobs"),
            (Method::POST, "/api/v1/apps"),
            (Method::GET, "/api/v1/tokens"),
            (Method::GET, "/api/v1/audit"),
            (Method::GET, "/api/v1/cluster"),
        ] {
            let r = call(&api, m.clone(), path, token, None).await;
            assert_eq!(r.status, 401, "{m} {path} with {token:?}");
            assert_eq!(r.content_type, "application/problem+json");
            assert_eq!(r.body["code"], "unauthorized");
        }
    }

    // cluster port: refused without the secret and with a wrong one.
    let cluster = c.nodes[0].cluster.to_string();
    let http = reqwest::Client::new();
    for secret in [None, Some("wrong-secret-0123456789")] {
        let mut req = http.get(format!("http://{cluster}/cluster/v1/probe"));
        if let Some(s) = secret {
            req = req.header("x-raftjob-cluster-secret", s);
        }
        let status = req.send().await.unwrap().status().as_u16();
        assert_eq!(status, 401, "cluster port with {secret:?}");
    }

    // transport: a worker with a wrong token is refused (and exits).
    c.client().create_app("a").await.unwrap();
    let mut w = TestWorker::start(&c, "a", "rjw_wrong", "http", "bad", &[]);
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        Some(1),
        "{}",
        w.log_text()
    );
    assert!(
        w.log_text().contains("wrong worker token"),
        "{}",
        w.log_text()
    );
}

#[tokio::test]
async fn scoped_tokens_stay_in_their_app_and_role_and_are_audited() {
    let c = TestCluster::start(3);
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    let follower = c
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .unwrap()
        .api
        .to_string();
    let api = c
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .unwrap()
        .api
        .to_string();
    let admin = c.client();
    admin.create_app("a").await.unwrap();
    admin.create_app("b").await.unwrap();
    let ja = admin.create_job(&api_only_job("a", "ja")).await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let jb = admin.create_job(&api_only_job("b", "jb")).await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let ib = run_job(&c, jb, json!({})).await;

    let (read_id, read) = create_token(&api, "ci-read", "a", "read", None).await;
    let (op_id, operate) = create_token(&follower, "ci-operate", "a", "operate", None).await;
    let (_, manage) = create_token(&api, "ci-manage", "a", "manage", None).await;

    // Nobody scoped may reach admin routes: tokens, apps, cluster, debug.
    for t in [&read, &operate, &manage] {
        for (m, path, body) in [
            (
                Method::POST,
                "/api/v1/tokens",
                Some(json!({"name": "x", "app": "a", "role": "manage"})),
            ),
            (Method::GET, "/api/v1/tokens", None),
            (Method::POST, "/api/v1/apps", Some(json!({"name": "c"}))),
            (Method::GET, "/api/v1/apps", None),
            (Method::GET, "/api/v1/cluster", None),
            (Method::POST, "/api/v1/apps/a/rotate-token", None),
        ] {
            let r = call(&follower, m.clone(), path, Some(t), body).await;
            assert_eq!(r.status, 403, "{m} {path}: {}", r.body);
            assert_eq!(r.body["code"], "forbidden");
        }
    }

    // read: sees only its app; another app's ids are "not found"; cannot run.
    for addr in [&api, &follower] {
        let r = call(addr, Method::GET, "/api/v1/jobs", Some(&read), None).await;
        assert_eq!(r.status, 200);
        let ids: Vec<u64> = r.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![ja], "filtered list");
        let r = call(
            addr,
            Method::GET,
            &format!("/api/v1/jobs/{ja}"),
            Some(&read),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        for path in [
            format!("/api/v1/jobs/{jb}"),
            format!("/api/v1/jobs/{jb}/schedule"),
            format!("/api/v1/jobs/{jb}/skipped"),
            format!("/api/v1/instances/{ib}"),
            format!("/api/v1/instances/{ib}/logs"),
            "/api/v1/jobs?app=b".to_string(),
        ] {
            let r = call(addr, Method::GET, &path, Some(&read), None).await;
            assert_eq!(r.status, 404, "{path}: {}", r.body);
        }
        let r = call(addr, Method::GET, "/api/v1/instances", Some(&read), None).await;
        assert_eq!(
            r.body["instances"].as_array().unwrap().len(),
            0,
            "{}",
            r.body
        );
        let r = call(
            addr,
            Method::GET,
            &format!("/api/v1/instances?job_id={jb}"),
            Some(&read),
            None,
        )
        .await;
        assert_eq!(r.body["instances"].as_array().unwrap().len(), 0);
    }
    let run_a = format!("/api/v1/jobs/{ja}/run");
    let r = call(&follower, Method::POST, &run_a, Some(&read), None).await;
    assert_eq!(r.status, 403, "read cannot run: {}", r.body);

    // operate: runs its own app's jobs; another app's job is 404; cannot create.
    let r = call(&follower, Method::POST, &run_a, Some(&operate), None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ia = r.body["instance_id"].as_u64().unwrap();
    let r = call(
        &follower,
        Method::POST,
        &format!("/api/v1/jobs/{jb}/run"),
        Some(&operate),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = call(
        &follower,
        Method::POST,
        &format!("/api/v1/instances/{ib}/stop"),
        Some(&operate),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = call(
        &follower,
        Method::POST,
        &format!("/api/v1/instances/{ia}/cancel"),
        Some(&operate),
        None,
    )
    .await;
    assert!(r.status == 200 || r.status == 409, "{}", r.body);
    let r = call(
        &follower,
        Method::POST,
        &format!("/api/v1/jobs/{ja}/disable"),
        Some(&operate),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        &follower,
        Method::POST,
        "/api/v1/jobs",
        Some(&operate),
        Some(api_only_job("a", "new")),
    )
    .await;
    assert_eq!(r.status, 403, "operate cannot create: {}", r.body);

    // manage: creates and changes its app's jobs, never another app's.
    let r = call(
        &follower,
        Method::POST,
        "/api/v1/jobs",
        Some(&manage),
        Some(api_only_job("a", "new")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new_job = r.body["id"].as_u64().unwrap();
    let r = call(
        &follower,
        Method::POST,
        "/api/v1/jobs",
        Some(&manage),
        Some(api_only_job("b", "sneaky")),
    )
    .await;
    assert_eq!(r.status, 403, "a write naming another app: {}", r.body);
    assert_eq!(r.body["code"], "forbidden");
    let r = call(
        &follower,
        Method::PUT,
        &format!("/api/v1/jobs/{new_job}"),
        Some(&manage),
        Some(api_only_job("b", "moved")),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "cannot move a job to another app: {}",
        r.body
    );
    let r = call(
        &follower,
        Method::PUT,
        &format!("/api/v1/jobs/{jb}"),
        Some(&manage),
        Some(api_only_job("a", "stolen")),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = call(
        &follower,
        Method::DELETE,
        &format!("/api/v1/jobs/{jb}"),
        Some(&manage),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = call(
        &follower,
        Method::DELETE,
        &format!("/api/v1/jobs/{new_job}"),
        Some(&manage),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The token list never shows secrets or hashes.
    let r = call(&follower, Method::GET, "/api/v1/tokens", Some(TOKEN), None).await;
    let text = r.body.to_string();
    assert_eq!(r.body["tokens"].as_array().unwrap().len(), 3, "{text}");
    assert!(!text.contains("rjt_") && !text.contains("hash"), "{text}");

    // The audit trail: who did what, newest first.
    let r = call(
        &api,
        Method::GET,
        "/api/v1/audit?limit=100",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let trail: Vec<(String, String)> = r.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["action"].as_str().unwrap().into(),
                x["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    let op = format!("token/{op_id}");
    let expected_tail = [
        ("job.run".to_string(), op.clone()),
        ("job.run".to_string(), "admin".to_string()),
        ("job.create".to_string(), "admin".to_string()),
        ("job.create".to_string(), "admin".to_string()),
    ];
    assert!(trail.ends_with(&expected_tail), "{trail:?}");
    assert!(
        trail.contains(&("job.disable".into(), op.clone())),
        "{trail:?}"
    );
    assert_eq!(trail[0].0, "job.delete", "{trail:?}");
    let first = &r.body["records"][0];
    assert!(first["at_ms"].as_i64().unwrap() > 0 && first["token_id"].is_u64());
    // A read token sees its own app's records only.
    let r = call(&follower, Method::GET, "/api/v1/audit", Some(&read), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let recs = r.body["records"].as_array().unwrap();
    assert!(
        !recs.is_empty() && recs.iter().all(|x| x["job_id"] != json!(jb)),
        "{recs:?}"
    );
    let r = call(
        &follower,
        Method::GET,
        &format!("/api/v1/audit?job_id={jb}"),
        Some(&read),
        None,
    )
    .await;
    assert_eq!(r.body["records"].as_array().unwrap().len(), 0);
    let _ = read_id;

    // Revoked: refused on every node (followers once they applied the revocation).
    let r = call(
        &api,
        Method::DELETE,
        &format!("/api/v1/tokens/{op_id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
    for n in &c.nodes {
        let addr = n.api.to_string();
        eventually(Duration::from_secs(10), "revoked everywhere", || {
            let (addr, operate) = (addr.clone(), operate.clone());
            async move {
                let r = call(&addr, Method::GET, "/api/v1/jobs", Some(&operate), None).await;
                (r.status == 401).then_some(())
            }
        })
        .await;
    }

    // Expired: works until its expiry, then refused.
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (_, short) = create_token(&api, "short", "a", "read", Some(at.to_rfc3339())).await;
    eventually(Duration::from_secs(5), "new token usable", || {
        let (f, s) = (follower.clone(), short.clone());
        async move {
            (call(&f, Method::GET, "/api/v1/jobs", Some(&s), None)
                .await
                .status
                == 200)
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for n in &c.nodes {
        let r = call(
            &n.api.to_string(),
            Method::GET,
            "/api/v1/jobs",
            Some(&short),
            None,
        )
        .await;
        assert_eq!(r.status, 401, "expired token on node {}", n.id);
    }
    let r = call(&api, Method::GET, "/api/v1/tokens", Some(TOKEN), None).await;
    assert!(r.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "short" && t["status"] == "expired"));
    let past = call(&api, Method::POST, "/api/v1/tokens", Some(TOKEN),
        Some(json!({"name": "old", "app": "a", "role": "read", "expires_at": "2001-01-01T00:00:00Z"}))).await;
    assert_eq!(past.status, 400);
    assert_eq!(past.body["field"], "expires_at");

    // Failed checks are rate limited per client IP: 429 with Retry-After, even for
    // a right token, until the window passes; other nodes are unaffected.
    let victim = c
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .unwrap()
        .api
        .to_string();
    // (Earlier refusals in this test count too, so the limit may come sooner.)
    let mut refused = 0;
    loop {
        let guess = Some("guess-0123456789abcdef");
        let r = call(&victim, Method::GET, "/api/v1/jobs", guess, None).await;
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 401);
        refused += 1;
        assert!(refused <= 20, "blocked after 20 failures in 10 s");
    }
    let r = call(&victim, Method::GET, "/api/v1/jobs", Some(TOKEN), None).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["code"], "too_many_failures");
    let wait: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=10).contains(&wait));
    let r = call(&api, Method::GET, "/api/v1/jobs", Some(TOKEN), None).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    let r = call(&victim, Method::GET, "/api/v1/jobs", Some(TOKEN), None).await;
    assert_eq!(r.status, 200, "unblocked after Retry-After: {}", r.body);
}

#[tokio::test]
async fn worker_token_rotation_keeps_workers_running() {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    let old = app_token(&c, "rot").await;
    let admin = c.client();
    // Retries cover an attempt whose worker is stopped while the workers switch
    // tokens (a stopped worker's attempt is lost, then retried on another).
    let mut spec = api_job("rot", "j", json!({"type": "shell", "command": "echo ok"}));
    spec["retries"] = json!(3);
    let job = admin.create_job(&spec).await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut w1 = TestWorker::start(&c, "rot", &old, "http", "w1", &[]);
    wait_workers_live(&c, "rot", 1).await;

    // Keep runs going the whole time; every one must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let looper = {
        let (stop, runs, failures) = (stop.clone(), runs.clone(), failures.clone());
        let servers: Vec<String> = c.nodes.iter().map(|n| n.api.to_string()).collect();
        tokio::spawn(async move {
            let client = Client::new(servers, TOKEN);
            while !stop.load(Ordering::Relaxed) {
                let id = match client
                    .post(&format!("/api/v1/jobs/{job}/run"), &json!({}))
                    .await
                {
                    Ok(v) => v["instance_id"].as_u64().unwrap(),
                    Err(e) => {
                        failures.lock().unwrap().push(format!("run: {e}"));
                        continue;
                    }
                };
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let v = client
                        .get(&format!("/api/v1/instances/{id}"))
                        .await
                        .unwrap_or_default();
                    match v["status"].as_str() {
                        Some("succeeded") => break,
                        Some("failed" | "stopped" | "canceled") => {
                            failures.lock().unwrap().push(format!("instance {id}: {v}"));
                            break;
                        }
                        _ if Instant::now() > deadline => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("instance {id} never finished: {v}"));
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                runs.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Rotate: a new token, the old one still valid.
    let rotated = admin
        .post("/api/v1/apps/rot/rotate-token", &json!(null))
        .await
        .unwrap();
    let new = rotated["worker_token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let mut w2 = TestWorker::start(&c, "rot", &new, "http", "w2", &[]);
    let mut w3 = TestWorker::start(&c, "rot", &old, "http", "w3", &[]);
    wait_workers_live(&c, "rot", 3).await;
    // Switch the old workers to the new token, then retire the old one.
    w1.stop(Duration::from_secs(10));
    w3.stop(Duration::from_secs(10));
    let old_log = w1.log_text() + &w3.log_text();
    let mut w1 = TestWorker::start(&c, "rot", &new, "http", "w1", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin
        .post("/api/v1/apps/rot/retire-token", &json!(null))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut refused = TestWorker::start(&c, "rot", &old, "http", "w4", &[]);
    assert_eq!(
        refused.wait_exit(Duration::from_secs(20)),
        Some(1),
        "{}",
        refused.log_text()
    );
    assert!(refused.log_text().contains("wrong worker token"));
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(runs.load(Ordering::Relaxed) >= 3, "runs kept going");
    assert!(
        failures.is_empty(),
        "no failed run during the rotation: {failures:?}\n{old_log}\n{}\n{}",
        w2.log_text(),
        c.dump_logs()
    );
    w1.stop(Duration::from_secs(10));
    w2.stop(Duration::from_secs(10));
}

/// A server process started by this test with its own credentials (the common
/// harness always passes the default ones).
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(
    n: &TestNode,
    secret: &str,
    secret_next: Option<&str>,
    token: &str,
    token_next: Option<&str>,
) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftjob"));
    cmd.arg("server")
        .args(["--node-id", &n.id.to_string()])
        .arg("--data-dir")
        .arg(&n.data_dir)
        .args(["--api-addr", &n.api.to_string()])
        .args(["--cluster-addr", &n.cluster.to_string()])
        .args(["--initial-members", &n.members])
        .args(["--cluster-secret", secret])
        .args(["--admin-token", token])
        .env("RAFTJOB_LOG", "info,openraft=warn")
        .env_remove("RAFTJOB_CONFIG")
        .env_remove("RAFTJOB_ADMIN_TOKEN_NEXT")
        .env_remove("RAFTJOB_CLUSTER_SECRET_NEXT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(s) = secret_next {
        cmd.args(["--cluster-secret-next", s]);
    }
    if let Some(t) = token_next {
        cmd.args(["--admin-token-next", t]);
    }
    Proc(Some(cmd.spawn().expect("raftjob starts")))
}

/// Rotates the admin token and the cluster secret of a running three-node cluster by
/// two rolling restarts, while a client keeps reading and writing through every node:
/// no request may fail on a credential (transient `no_leader` while a restarted
/// leader's successor is elected is retried, as any client does).
#[tokio::test]
async fn admin_token_and_cluster_secret_rotate_without_a_failed_request() {
    const NEW_TOKEN: &str = "rotated-admin-token-9876543210";
    const NEW_SECRET: &str = "rotated-cluster-secret-9876543210";
    let c = TestCluster::new(3, &[]);
    let mut procs: Vec<Proc> = c
        .nodes
        .iter()
        .map(|n| spawn(n, SECRET, None, TOKEN, None))
        .collect();
    c.wait_ready(&[1, 2, 3], READY).await;
    let servers: Vec<String> = c.nodes.iter().map(|n| n.api.to_string()).collect();
    c.client().create_app("a").await.unwrap();
    let job = c
        .client()
        .create_job(&api_only_job("a", "j"))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();

    let token = Arc::new(Mutex::new(TOKEN.to_string()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::<String>::new())),
    );
    let looper = {
        let (token, stop, ok, failures) =
            (token.clone(), stop.clone(), ok.clone(), failures.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = token.lock().unwrap().clone();
                // Every node in turn first, so followers forward over the cluster port.
                let mut order = servers.clone();
                order.rotate_left((i % 3) as usize);
                let client = Client::new(order, t);
                let (method, path) = if i % 2 == 0 {
                    (Method::GET, format!("/api/v1/jobs/{job}"))
                } else {
                    (Method::POST, format!("/api/v1/jobs/{job}/enable"))
                };
                let key = format!("loop-{i}");
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    match client
                        .request(method.clone(), &path, None, Some(&key))
                        .await
                    {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e)
                            if e.status().is_none_or(|s| s == 503) && Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{method} {path}: {e}"));
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // One rolling restart: each node in turn is stopped, started with the given
    // credentials, and the cluster is ready again before the next.
    async fn roll(c: &TestCluster, procs: &mut [Proc], creds: [Option<&str>; 4]) {
        let [secret, secret_next, token, token_next] = creds;
        for (i, n) in c.nodes.iter().enumerate() {
            procs[i].stop();
            procs[i] = spawn(n, secret.unwrap(), secret_next, token.unwrap(), token_next);
            c.wait_ready(&[1, 2, 3], READY).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // 1. Every node also accepts the new token and secret (still sends the old secret).
    let creds = [Some(SECRET), Some(NEW_SECRET), Some(TOKEN), Some(NEW_TOKEN)];
    roll(&c, &mut procs, creds).await;
    // Clients switch to the new admin token.
    *token.lock().unwrap() = NEW_TOKEN.to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 2. The new ones become current; the old secret is still accepted from nodes not
    //    yet restarted; the old admin token is retired.
    let creds = [Some(NEW_SECRET), Some(SECRET), Some(NEW_TOKEN), None];
    roll(&c, &mut procs, creds).await;
    // 3. The old secret is retired.
    let creds = [Some(NEW_SECRET), None, Some(NEW_TOKEN), None];
    roll(&c, &mut procs, creds).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(ok.load(Ordering::Relaxed) >= 20, "the loop kept going");
    assert!(
        failures.is_empty(),
        "no failed request during the rotation: {failures:?}\n{}",
        c.dump_logs()
    );

    // Afterwards only the new credentials work.
    let api = c.nodes[0].api.to_string();
    assert_eq!(
        call(&api, Method::GET, "/api/v1/jobs", Some(TOKEN), None)
            .await
            .status,
        401
    );
    assert_eq!(
        call(&api, Method::GET, "/api/v1/jobs", Some(NEW_TOKEN), None)
            .await
            .status,
        200
    );
    let cluster = c.nodes[0].cluster.to_string();
    let http = reqwest::Client::new();
    for (secret, want) in [(SECRET, 401), (NEW_SECRET, 200)] {
        let status = http
            .get(format!("http://{cluster}/cluster/v1/probe"))
            .header("x-raftjob-cluster-secret", secret)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(
            status == 401,
            want == 401,
            "cluster port with {secret}: {status}"
        );
    }
}
