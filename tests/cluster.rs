//! Three real server processes on loopback: bootstrap, forwarding, idempotency, bad
//! requests, failover, restarts, snapshot catch-up and membership changes.
//! Run one at a time (`--test-threads=1`): each starts its own cluster.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn bootstrap_elects_one_leader_and_forwards_from_followers() {
    let c = TestCluster::start(3);
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    let followers: Vec<&TestNode> = c.nodes.iter().filter(|n| n.id != leader).collect();

    // Wait for the bootstrap bookkeeping (cluster id, every node's addresses).
    let view = eventually(READY, "cluster id and all node addresses", || async {
        let v = c.nodes[0].client().cluster().await.ok()?;
        let all_addrs = v["members"]
            .as_array()?
            .iter()
            .all(|m| m["api_addr"].is_string());
        (v["cluster_id"].is_string() && all_addrs).then_some(v)
    })
    .await;
    assert_eq!(view["members"].as_array().unwrap().len(), 3);
    assert_eq!(view["leader_id"].as_u64(), Some(leader));
    let leaders: Vec<_> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "leader")
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {view}");
    let cluster_id = view["cluster_id"].as_str().unwrap().to_string();
    for n in &c.nodes {
        let v = n.client().cluster().await.unwrap();
        assert_eq!(
            v["cluster_id"].as_str(),
            Some(cluster_id.as_str()),
            "every node agrees on the cluster id"
        );
    }

    // Writes through followers reach the leader; reads anywhere see them.
    let app = followers[0].client().create_app("billing").await.unwrap();
    assert!(app["worker_token"].as_str().unwrap().starts_with("rjw_"));
    assert!(
        app.get("worker_token_hash").is_none(),
        "the hash is never shown"
    );
    let job = followers[1]
        .client()
        .create_job(&shell_job("billing", "nightly"))
        .await
        .unwrap();
    let id = job["id"].as_u64().unwrap();
    for n in &c.nodes {
        let got = n.client().get_job(id).await.unwrap();
        assert_eq!(
            got["name"], "nightly",
            "node {} reads the job linearizably",
            n.id
        );
    }
    let list = followers[0]
        .client()
        .get("/api/v1/jobs?app=billing")
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let apps = c.nodes[0].client().get("/api/v1/apps").await.unwrap();
    assert_eq!(apps["apps"][0]["name"], "billing");

    // Update, disable, enable, delete, each through a follower.
    let f = followers[0].client();
    let mut spec = shell_job("billing", "nightly");
    spec["description"] = json!("runs at night");
    let updated = f
        .send::<Value, Value>(
            reqwest::Method::PUT,
            &format!("/api/v1/jobs/{id}"),
            Some(&spec),
            None,
        )
        .await
        .unwrap();
    assert_eq!(updated["description"], "runs at night");
    assert_eq!(updated["version"], 2);
    let disabled = f
        .post(&format!("/api/v1/jobs/{id}/disable"), &json!(null))
        .await;
    // enable/disable take no body; the client sends JSON null, which is accepted or ignored
    let disabled = match disabled {
        Ok(v) => v,
        Err(e) => panic!("disable failed: {e}"),
    };
    assert_eq!(disabled["enabled"], false);
    let enabled = f
        .post(&format!("/api/v1/jobs/{id}/enable"), &json!(null))
        .await
        .unwrap();
    assert_eq!(enabled["enabled"], true);
    let del = f
        .send::<(), Value>(
            reqwest::Method::DELETE,
            &format!("/api/v1/jobs/{id}"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(del["deleted"], true);
    let gone = c.nodes[2].client().get_job(id).await.unwrap_err();
    assert_eq!(gone.status(), Some(404));
    assert_eq!(gone.code(), Some("not_found"));
}

#[tokio::test]
async fn idempotency_key_gives_one_effect_on_any_node() {
    let c = TestCluster::start(3);
    c.wait_ready(&[1, 2, 3], READY).await;
    c.client().create_app("a").await.unwrap();
    let spec = shell_job("a", "once");

    let first = c.nodes[0]
        .client()
        .post_idempotent("/api/v1/jobs", &spec, "key-1")
        .await
        .unwrap();
    let again = c.nodes[0]
        .client()
        .post_idempotent("/api/v1/jobs", &spec, "key-1")
        .await
        .unwrap();
    let elsewhere = c.nodes[2]
        .client()
        .post_idempotent("/api/v1/jobs", &spec, "key-1")
        .await
        .unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["id"], elsewhere["id"]);
    assert_eq!(first, elsewhere, "a retry returns the recorded response");

    let mut other = spec.clone();
    other["name"] = json!("different");
    let conflict = c.nodes[1]
        .client()
        .post_idempotent("/api/v1/jobs", &other, "key-1")
        .await
        .unwrap_err();
    assert_eq!(conflict.status(), Some(422));
    assert_eq!(conflict.code(), Some("idempotency_key_reused"));

    let jobs = c.client().get("/api/v1/jobs").await.unwrap();
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        1,
        "one effect: {jobs}"
    );

    // An app created with a key shows the same worker token on a retry.
    let a1 = c.nodes[0]
        .client()
        .post_idempotent("/api/v1/apps", &json!({"name": "b"}), "app-key")
        .await
        .unwrap();
    let a2 = c.nodes[1]
        .client()
        .post_idempotent("/api/v1/apps", &json!({"name": "b"}), "app-key")
        .await
        .unwrap();
    assert_eq!(a1["worker_token"], a2["worker_token"]);
    assert_eq!(a1["id"], a2["id"]);
}

async fn raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    if status >= 400 && url.contains("/api/") {
        assert_eq!(
            ct, "application/problem+json",
            "errors are problem+json: {status} {text}"
        );
    }
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn bad_requests_get_4xx_and_change_nothing() {
    let c = TestCluster::start(3);
    c.wait_ready(&[1, 2, 3], READY).await;
    c.client().create_app("a").await.unwrap();
    c.client()
        .create_job(&shell_job("a", "keep"))
        .await
        .unwrap();
    let base = format!("http://{}", c.nodes[1].api);
    let jobs_url = format!("{base}/api/v1/jobs");
    let before = c.client().get("/api/v1/jobs").await.unwrap();
    let json_ct = "application/json";

    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((json_ct, b"{not json".to_vec())),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("malformed_body")),
        "{p}"
    );

    let mut unknown = shell_job("a", "x");
    unknown["colour"] = json!("blue");
    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((json_ct, serde_json::to_vec(&unknown).unwrap())),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("validation_failed")),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");

    let mut bad_cron = shell_job("a", "x");
    bad_cron["schedule"] = json!({"type": "cron", "expr": "61 * * * * *"});
    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((json_ct, serde_json::to_vec(&bad_cron).unwrap())),
    )
    .await;
    assert_eq!(
        (s, p["field"].as_str()),
        (400, Some("schedule.expr")),
        "{p}"
    );

    let mut bad_tz = shell_job("a", "x");
    bad_tz["schedule"] = json!({"type": "cron", "expr": "* * * * *", "timezone": "Nowhere/Land"});
    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((json_ct, serde_json::to_vec(&bad_tz).unwrap())),
    )
    .await;
    assert_eq!(
        (s, p["field"].as_str()),
        (400, Some("schedule.timezone")),
        "{p}"
    );

    let mut bad_name = shell_job("a", "has spaces");
    bad_name["name"] = json!("has spaces");
    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((json_ct, serde_json::to_vec(&bad_name).unwrap())),
    )
    .await;
    assert_eq!((s, p["field"].as_str()), (400, Some("name")), "{p}");

    // A 10 MB body, sent as curl sends large bodies (Expect: 100-continue): the server
    // refuses it from the headers without reading it.
    let (s, p) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(c.nodes[1].api)
            .await
            .unwrap();
        let head = format!(
            "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            10 * 1024 * 1024
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        (
            status,
            serde_json::from_str::<Value>(body).unwrap_or_default(),
        )
    };
    assert_eq!(
        (s, p["code"].as_str()),
        (413, Some("payload_too_large")),
        "{p}"
    );

    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some(("text/plain", b"{}".to_vec())),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{p}"
    );

    let (s, p) = raw("GET", &jobs_url, None, None).await;
    assert_eq!((s, p["code"].as_str()), (401, Some("unauthorized")), "{p}");
    let (s, _) = raw("GET", &jobs_url, Some("wrong-token-wrong-token"), None).await;
    assert_eq!(s, 401);
    let (s, _) = raw(
        "POST",
        &jobs_url,
        None,
        Some((json_ct, serde_json::to_vec(&shell_job("a", "y")).unwrap())),
    )
    .await;
    assert_eq!(s, 401);

    let (s, p) = raw("GET", &format!("{base}/api/v1/jobs/abc"), Some(TOKEN), None).await;
    assert_eq!((s, p["field"].as_str()), (400, Some("id")), "{p}");
    let (s, _) = raw(
        "GET",
        &format!("{base}/api/v1/jobs/999999"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 404);

    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((
            json_ct,
            serde_json::to_vec(&shell_job("nope", "z")).unwrap(),
        )),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (404, Some("not_found")), "{p}");

    let (s, p) = raw(
        "POST",
        &jobs_url,
        Some(TOKEN),
        Some((
            json_ct,
            serde_json::to_vec(&shell_job("a", "keep")).unwrap(),
        )),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (409, Some("already_exists")),
        "{p}"
    );

    // Health stays open.
    assert_eq!(
        raw("GET", &format!("{base}/healthz"), None, None).await.0,
        200
    );
    assert_eq!(
        raw("GET", &format!("{base}/readyz"), None, None).await.0,
        200
    );

    let after = c.client().get("/api/v1/jobs").await.unwrap();
    assert_eq!(before, after, "no bad request changed the jobs");
    for n in &mut c.nodes.iter() {
        assert!(
            !n.log_text().contains("panicked"),
            "node {} panicked:\n{}",
            n.id,
            n.log_text()
        );
    }
}

#[tokio::test]
async fn each_port_serves_only_its_own_traffic() {
    let mut c = TestCluster::new(3, &[]);
    // Node 3 offers only the http protocol: its ws port must stay closed.
    let ws3 = c.node(3).transports.remove("ws").unwrap();
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    let n = &c.nodes[0];
    let http = reqwest::Client::new();
    let secret = ("x-raftjob-cluster-secret", SECRET);

    // Cluster port: nothing without the secret, and no API there even with it.
    let cluster = format!("http://{}", n.cluster);
    for path in [
        "/cluster/v1/probe",
        "/cluster/v1/raft/vote",
        "/api/v1/jobs",
        "/healthz",
    ] {
        let r = http.get(format!("{cluster}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "cluster port without secret: {path}");
    }
    let r = http
        .get(format!("{cluster}/cluster/v1/probe"))
        .header(secret.0, "wrong-secret-wrong-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong secret is refused");
    let r = http
        .get(format!("{cluster}/cluster/v1/probe"))
        .header(secret.0, secret.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "probe with the secret");
    for path in [
        "/api/v1/jobs",
        "/healthz",
        "/openapi.json",
        "/transport/v1/discovery",
    ] {
        let r = http
            .get(format!("{cluster}{path}"))
            .header(secret.0, secret.1)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "cluster port does not serve {path}");
    }
    // A Raft RPC addressed to another node id is refused.
    let r = http
        .post(format!("{cluster}/cluster/v1/raft/vote"))
        .header(secret.0, secret.1)
        .header("x-raftjob-target-node", "2")
        .json(&json!({"vote": {"leader_id": {"term": 99, "node_id": 2}, "committed": false}, "last_log_id": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421, "misdirected Raft RPC");

    // Api port: no Raft RPC or forwarding, even with the secret.
    let api = format!("http://{}", n.api);
    for path in [
        "/cluster/v1/probe",
        "/cluster/v1/raft/append",
        "/cluster/v1/forward/write",
        "/transport/v1/discovery",
    ] {
        let r = http
            .post(format!("{api}{path}"))
            .header(secret.0, secret.1)
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "api port does not serve {path}");
    }

    // Transport ports: discovery only.
    for (proto, addr) in &n.transports {
        let t = format!("http://{addr}");
        let d: Value = http
            .get(format!("{t}/transport/v1/discovery"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["protocol"], proto.as_str());
        assert!(d["leader_id"].is_u64(), "{d}");
        for path in [
            "/api/v1/jobs",
            "/cluster/v1/probe",
            "/cluster/v1/raft/vote",
            "/healthz",
        ] {
            let r = http
                .get(format!("{t}{path}"))
                .header(secret.0, secret.1)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "transport.{proto} does not serve {path}");
        }
    }
    let d: Value = http
        .get(format!(
            "http://{}/transport/v1/discovery",
            c.nodes[2].transports["http"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["protocols"], json!(["http"]));
    assert!(
        std::net::TcpStream::connect(ws3).is_err(),
        "a protocol that is not enabled has no open port"
    );
    assert!(
        c.nodes[2].log_text().contains("transport.ws"),
        "the port table names the closed protocol"
    );
}

/// Creates `n` jobs through random nodes and returns their ids.
async fn create_jobs(c: &TestCluster, app: &str, prefix: &str, n: usize) -> Vec<u64> {
    let client = c.client();
    let mut ids = Vec::new();
    for i in 0..n {
        let job = client
            .create_job(&shell_job(app, &format!("{prefix}-{i}")))
            .await
            .unwrap();
        ids.push(job["id"].as_u64().unwrap());
    }
    ids
}

/// `GET /api/v1/jobs?limit=&after=` pages through the jobs in id order, per app.
#[tokio::test]
async fn job_list_pages_with_limit_and_after() {
    let c = TestCluster::start(1);
    c.wait_ready(&[1], READY).await;
    let client = c.client();
    client.create_app("a").await.unwrap();
    client.create_app("b").await.unwrap();
    let mine = create_jobs(&c, "a", "page", 5).await;
    create_jobs(&c, "b", "other", 2).await;
    let mut seen = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..10 {
        let q = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let v = client
            .get(&format!("/api/v1/jobs?app=a&limit=2{q}"))
            .await
            .unwrap();
        let page: Vec<u64> = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect();
        assert!(page.len() <= 2, "{v}");
        seen.extend(page);
        match v["next_after"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, mine, "every job of app a once, in id order");
    let all = client.get("/api/v1/jobs").await.unwrap();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 7, "{all}");
    assert!(all.get("next_after").is_none(), "{all}");
    let e = client.get("/api/v1/jobs?limit=0").await.unwrap_err();
    assert_eq!(e.code(), Some("validation_failed"), "{e:?}");
}

#[tokio::test]
async fn leader_kill_loses_nothing_and_the_old_leader_catches_up() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    c.client().create_app("a").await.unwrap();
    let acked = create_jobs(&c, "a", "before", 20).await;

    c.node(leader).kill();
    let killed_at = Instant::now();
    let survivors: Vec<u64> = c
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.id)
        .collect();
    let survivor_client = raftjob::client::Client::new(
        c.nodes
            .iter()
            .filter(|n| n.id != leader)
            .map(|n| n.api.to_string()),
        TOKEN,
    );
    let mut attempt = 0;
    let first_write = eventually(
        Duration::from_secs(15),
        "a write after the leader kill",
        || {
            attempt += 1;
            let cl = survivor_client.clone();
            let key = format!("after-kill-{attempt}");
            async move {
                let spec = shell_job("a", &key);
                cl.post_idempotent("/api/v1/jobs", &spec, &key).await.ok()
            }
        },
    )
    .await;
    let failover = killed_at.elapsed();
    println!("failover: leader {leader} killed; first successful write after {failover:?}");
    let new_leader = c.wait_ready(&survivors, READY).await;
    assert_ne!(new_leader, leader);

    for id in &acked {
        survivor_client
            .get_job(*id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged job {id} lost: {e}"));
    }

    // The old leader comes back with its data and catches up.
    c.node(leader).start();
    c.wait_ready(&[1, 2, 3], READY).await;
    let after = create_jobs(&c, "a", "after", 5).await;
    let old = c.node(leader).client();
    let total = acked.len() + after.len() + 1;
    eventually(READY, "the restarted node holds every job", || {
        let old = old.clone();
        async move {
            let v = old.get("/api/v1/jobs?consistency=stale").await.ok()?;
            (v["jobs"].as_array()?.len() == total).then_some(())
        }
    })
    .await;
    assert!(first_write["id"].is_u64());
}

#[tokio::test]
async fn restart_of_every_node_keeps_data_and_never_reinitialises() {
    let mut c = TestCluster::start(3);
    c.wait_ready(&[1, 2, 3], READY).await;
    let cluster_id = eventually(READY, "cluster id", || async {
        c.client().cluster().await.ok()?["cluster_id"]
            .as_str()
            .map(String::from)
    })
    .await;
    c.client().create_app("a").await.unwrap();
    let ids = create_jobs(&c, "a", "j", 10).await;

    for id in 1..=3 {
        c.node(id).stop();
    }
    for id in 1..=3 {
        c.node(id).start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    let v = c.client().cluster().await.unwrap();
    assert_eq!(
        v["cluster_id"].as_str(),
        Some(cluster_id.as_str()),
        "same cluster after restart"
    );
    for id in ids {
        c.client().get_job(id).await.unwrap();
    }
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("already belongs to a cluster"),
            "node {} must not re-initialise:\n{}",
            n.id,
            tail(&log, 30)
        );
    }
    let created = c
        .client()
        .create_job(&shell_job("a", "after-restart"))
        .await
        .unwrap();
    assert!(created["id"].as_u64().unwrap() > 10);
}

#[tokio::test]
async fn a_lagging_node_catches_up_by_snapshot_after_the_log_is_purged() {
    let mut c = TestCluster::start_with(
        3,
        &["--snapshot-logs-since-last", "40", "--logs-to-keep", "5"],
    );
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    let lagger = if leader == 3 { 2 } else { 3 };
    c.client().create_app("a").await.unwrap();
    c.node(lagger).stop();
    let ids = create_jobs(&c, "a", "j", 150).await;

    // The leader has snapshotted and purged past where the lagger stopped.
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != lagger).collect();
    let leader = c.wait_ready(&survivors, READY).await;
    let lc = c.node(leader).client();
    eventually(READY, "a snapshot on the leader", || {
        let lc = lc.clone();
        async move { (lc.cluster().await.ok()?["snapshot_index"].as_u64()? > 100).then_some(()) }
    })
    .await;

    c.node(lagger).start();
    let lag = c.node(lagger).client();
    eventually(
        Duration::from_secs(60),
        "the lagging node holds every job",
        || {
            let lag = lag.clone();
            async move {
                (lag.get("/api/v1/jobs?consistency=stale").await.ok()?["jobs"]
                    .as_array()?
                    .len()
                    == 150)
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        c.node(lagger).log_text().contains("Installed snapshot"),
        "caught up by snapshot"
    );
    assert_eq!(ids.len(), 150);
}

#[tokio::test]
async fn membership_add_and_remove_without_downtime() {
    let mut c = TestCluster::new(4, &[]);
    // Node 4 is a spare: it knows the cluster but is not an initial voter, so it must
    // never bootstrap; it waits to be added.
    let three = c.nodes[..3]
        .iter()
        .map(|n| format!("{}={}", n.id, n.cluster))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut c.nodes[..3] {
        n.members = three.clone();
        n.start();
    }
    c.wait_ready(&[1, 2, 3], READY).await;
    c.client().create_app("a").await.unwrap();
    create_jobs(&c, "a", "before", 5).await;
    c.node(4).start();

    let n4 = c.nodes[3].cluster.to_string();
    let added = c.nodes[1]
        .client()
        .post(
            "/api/v1/cluster/members",
            &json!({"id": 4, "cluster_addr": n4}),
        )
        .await
        .unwrap();
    assert!(
        added["message"]
            .as_str()
            .unwrap()
            .contains("membership changed"),
        "{added}"
    );
    let view = c.client().cluster().await.unwrap();
    let voters = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{view}");
    c.wait_ready(&[1, 2, 3, 4], READY).await;
    let n4c = c.nodes[3].client();
    eventually(READY, "node 4 has the data", || {
        let n4c = n4c.clone();
        async move {
            (n4c.get("/api/v1/jobs?consistency=stale").await.ok()?["jobs"]
                .as_array()?
                .len()
                == 5)
                .then_some(())
        }
    })
    .await;

    // Remove node 1 (possibly the leader) while writes keep working.
    let removed = c.nodes[3]
        .client()
        .send::<(), Value>(
            reqwest::Method::DELETE,
            "/api/v1/cluster/members/1",
            None,
            None,
        )
        .await
        .unwrap();
    assert!(removed["message"].is_string());
    c.node(1).stop();
    let rest = raftjob::client::Client::new(c.nodes[1..].iter().map(|n| n.api.to_string()), TOKEN);
    eventually(READY, "a write after removing node 1", || {
        let rest = rest.clone();
        async move {
            rest.post_idempotent(
                "/api/v1/jobs",
                &shell_job("a", "after-remove"),
                "after-remove",
            )
            .await
            .ok()
        }
    })
    .await;
    let view = rest.cluster().await.unwrap();
    let ids: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3, 4], "{view}");
}
