//! The operator CLI (`raftjob cluster|job|instance|app|worker list`), run as a
//! subprocess against real server processes on loopback.
//! Run one at a time (`--test-threads=1`): each starts its own cluster.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const READY: Duration = Duration::from_secs(30);

/// Runs `raftjob <args> --server <every node> --token <admin token>`.
fn cli_on(c: &TestCluster, args: &[&str]) -> Out {
    let servers = servers(c);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", &servers, "--token", TOKEN]);
    cli(&all, &[])
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout`.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rows under the table header that starts with `first_header`, split on blanks.
fn table_rows(stdout: &str, first_header: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(first_header))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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

#[tokio::test]
async fn cluster_status_membership_changes_and_errors() {
    let mut c = TestCluster::new(4, &[]);
    // Node 4 is a spare, added and removed through the CLI.
    let three = c.nodes[..3]
        .iter()
        .map(|n| format!("{}={}", n.id, n.cluster))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut c.nodes[..3] {
        n.members = three.clone();
        n.start();
    }
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    wait_published(&c, 3).await;
    let three_servers: String = c.nodes[..3]
        .iter()
        .map(|n| n.api.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let on3 = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &three_servers, "--token", TOKEN]);
        cli(&all, &[])
    };

    // The table: the leader, and three members with one leader among them.
    let out = on3(&["cluster", "status"]).ok();
    let leader_api = c.node(leader).api.to_string();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("leader") && l.contains(&format!("{leader} ({leader_api})"))),
        "{out:?}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("quorum") && l.contains(" confirmed (")),
        "{out:?}"
    );
    let rows = table_rows(&out.stdout, "ID ");
    assert_eq!(rows.len(), 3, "three members: {out:?}");
    let leaders: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{out:?}");
    assert_eq!(leaders[0][0], leader.to_string(), "{out:?}");
    for r in &rows {
        // ID ROLE API CLUSTER TERM COMMIT APPLIED MATCHED LAG: every member answered,
        // and the leader reported how far each one has replicated.
        assert_eq!(r.len(), 9, "{out:?}");
        assert!(r[4].parse::<u64>().is_ok(), "term of {r:?}: {out:?}");
        assert!(r[8].parse::<u64>().is_ok(), "lag of {r:?}: {out:?}");
    }

    // --json is the API's answer.
    let v = on3(&["cluster", "status", "--json"]).ok().json();
    assert_eq!(v["leader_id"].as_u64(), Some(leader), "{v}");
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");

    // The environment instead of flags, with a dead address first.
    let dead = free_addr().to_string();
    let env_servers = format!("{dead},{three_servers}");
    let out = cli(
        &["cluster", "status"],
        &[
            ("RAFTJOB_SERVER", &env_servers),
            ("RAFTJOB_ADMIN_TOKEN", TOKEN),
        ],
    )
    .ok();
    assert_eq!(table_rows(&out.stdout, "ID ").len(), 3, "{out:?}");

    // API errors: `error: <code>: <detail>` and a non-zero exit.
    let out = on3(&["job", "get", "999999"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: not_found: "), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = cli(
        &[
            "job",
            "list",
            "--server",
            &three_servers,
            "--token",
            "wrong",
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:?}");

    // Add node 4, then remove it.
    c.node(4).start();
    let n4 = c.nodes[3].cluster.to_string();
    let out = on3(&["cluster", "add", "--id", "4", "--addr", &n4]).ok();
    assert!(out.stdout.contains("added as a voter"), "{out:?}");
    c.wait_ready(&[1, 2, 3, 4], READY).await;
    let v = on3(&["cluster", "status", "--json"]).ok().json();
    let voters = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{v}");
    let out = on3(&["cluster", "remove", "--id", "4"]).ok();
    assert!(out.stdout.contains("node 4 removed"), "{out:?}");
    let v = on3(&["cluster", "status", "--json"]).ok().json();
    let ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "{v}");
    let out = on3(&["cluster", "remove", "--id", "4"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: not_found: "), "{out:?}");
    c.node(4).stop();

    // Without a majority there is no usable leader: exit 2. The leader left alone still
    // names itself (openraft keeps the role); the quorum read through it fails.
    let survivor = leader;
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        c.node(id).kill();
    }
    let survivor_api = c.node(survivor).api.to_string();
    let out = poll(READY, "status to report no leader", || {
        let out = cli(
            &[
                "cluster",
                "status",
                "--server",
                &survivor_api,
                "--token",
                TOKEN,
            ],
            &[],
        );
        (out.code == 2).then_some(out)
    });
    assert!(out.stderr.contains("error: no_leader: "), "{out:?}");
}

#[tokio::test]
async fn jobs_instances_and_workers_through_the_cli() {
    let c = TestCluster::start_with(3, FAST_WORKERS);
    c.wait_ready(&[1, 2, 3], READY).await;
    let client = c.client();

    // An app, through the CLI (its worker token is shown once).
    let app = cli_on(&c, &["app", "create", "shop", "--json"]).ok().json();
    let worker_token = app["worker_token"].as_str().unwrap().to_string();

    // job create --file: a cron job; the readable answer shows its next fire time.
    let spec_path = c.dir.path().join("spec.json");
    std::fs::write(
        &spec_path,
        json!({"app": "shop", "name": "yearly",
               "schedule": {"type": "cron", "expr": "0 0 0 1 1 *", "timezone": "UTC"},
               "processor": {"type": "shell", "command": "echo yearly"}})
        .to_string(),
    )
    .unwrap();
    let out = cli_on(
        &c,
        &["job", "create", "--file", spec_path.to_str().unwrap()],
    )
    .ok();
    let cron_id: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("created job "))
        .unwrap_or_else(|| panic!("{out:?}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        out.stderr.contains("warning: no live worker"),
        "the API's warning is shown: {out:?}"
    );
    let job = client.get_job(cron_id).await.unwrap();
    assert_eq!(job["name"], "yearly");
    let next = rfc3339_ms(job["next_fire_time_ms"].as_i64().unwrap());

    // job create --spec: an API-only shell job; --json is the API's answer.
    let spec = json!({"app": "shop", "name": "greet", "schedule": {"type": "api"},
        "processor": {"type": "shell", "command": "echo hello-$RAFTJOB_INSTANCE_PARAMS"}})
    .to_string();
    let created = cli_on(&c, &["job", "create", "--spec", &spec, "--json"])
        .ok()
        .json();
    let api_id = created["id"].as_u64().unwrap();
    assert_eq!(created["name"], "greet");

    // job list / get.
    let out = cli_on(&c, &["job", "list"]).ok();
    let rows = table_rows(&out.stdout, "ID ");
    assert_eq!(rows.len(), 2, "{out:?}");
    assert!(
        rows.iter()
            .any(|r| r[0] == cron_id.to_string() && r[2] == "yearly" && r.contains(&next)),
        "the list shows the cron job's next fire time {next}: {out:?}"
    );
    let listed = cli_on(&c, &["job", "list", "--app", "shop", "--json"])
        .ok()
        .json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");
    let out = cli_on(&c, &["job", "list", "--app", "nope"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: not_found: "), "{out:?}");
    let out = cli_on(&c, &["job", "get", &cron_id.to_string()]).ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("next fire time") && l.ends_with(&next)),
        "{next}: {out:?}"
    );

    // disable / enable, and the schedule preview.
    let out = cli_on(&c, &["job", "disable", &cron_id.to_string()]).ok();
    assert!(out.stdout.contains("disabled"), "{out:?}");
    assert_eq!(client.get_job(cron_id).await.unwrap()["enabled"], false);
    let out = cli_on(&c, &["job", "get", &cron_id.to_string()]).ok();
    assert!(out.stdout.contains("- (disabled)"), "{out:?}");
    let out = cli_on(&c, &["job", "schedule", &cron_id.to_string()]).ok();
    assert!(out.stdout.contains("no upcoming fire times"), "{out:?}");
    cli_on(&c, &["job", "enable", &cron_id.to_string()]).ok();
    assert_eq!(client.get_job(cron_id).await.unwrap()["enabled"], true);
    let out = cli_on(
        &c,
        &["job", "schedule", &cron_id.to_string(), "--count", "3"],
    )
    .ok();
    let rows = table_rows(&out.stdout, "#");
    assert_eq!(rows.len(), 3, "{out:?}");
    assert_eq!(rows[0][1], next, "{out:?}");
    assert!(
        rows[0][1] < rows[1][1] && rows[1][1] < rows[2][1],
        "{out:?}"
    );
    let out = cli_on(&c, &["job", "skipped", &cron_id.to_string()]).ok();
    assert!(out.stdout.contains("no skipped fire times"), "{out:?}");

    // A worker started with the run flags; `worker list` sees it.
    let _w = TestWorker::start(&c, "shop", &worker_token, "ws", "w1", &[]);
    poll(READY, "worker list to show shop/w1 live", || {
        let v = cli_on(&c, &["worker", "list", "--app", "shop", "--json"]);
        (v.code == 0).then_some(())?;
        let live = v.json()["workers"]
            .as_array()?
            .iter()
            .any(|w| w["id"] == "shop/w1" && w["state"] == "live");
        live.then_some(())
    });
    let out = cli_on(&c, &["worker", "list"]).ok();
    let rows = table_rows(&out.stdout, "ID ");
    assert_eq!(rows.len(), 1, "{out:?}");
    assert_eq!(&rows[0][..3], ["shop/w1", "shop", "live"], "{out:?}");

    // job run → instance get / list / logs.
    let run = cli_on(
        &c,
        &[
            "job",
            "run",
            &api_id.to_string(),
            "--params",
            r#"{"n":7}"#,
            "--json",
        ],
    )
    .ok()
    .json();
    let inst = run["instance_id"].as_u64().unwrap();
    let inst_s = inst.to_string();
    poll(READY, "the instance to succeed", || {
        let out = cli_on(&c, &["instance", "get", &inst_s, "--json"]);
        (out.code == 0 && out.json()["status"] == "succeeded").then_some(())
    });
    let out = cli_on(&c, &["instance", "get", &inst_s]).ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with("succeeded")),
        "{out:?}"
    );
    let attempts = table_rows(&out.stdout, "#  WORKER");
    assert_eq!(attempts.len(), 1, "{out:?}");
    assert_eq!(&attempts[0][..3], ["1", "shop/w1", "succeeded"], "{out:?}");
    let out = cli_on(&c, &["instance", "logs", &inst_s]).ok();
    assert!(out.stdout.contains(r#"hello-{"n":7}"#), "{out:?}");
    let out = cli_on(&c, &["instance", "list", "--job-id", &api_id.to_string()]).ok();
    let rows = table_rows(&out.stdout, "ID ");
    assert_eq!(rows.len(), 1, "{out:?}");
    assert_eq!(
        &rows[0][..4],
        [inst_s.as_str(), &api_id.to_string(), "succeeded", "manual"]
    );
    let listed = cli_on(
        &c,
        &[
            "instance",
            "list",
            "--status",
            "succeeded",
            "--limit",
            "1",
            "--json",
        ],
    )
    .ok()
    .json();
    let ids: Vec<u64> = listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![inst], "{listed}");

    // instance stop: refused for a finished instance, done for a delayed one.
    let out = cli_on(&c, &["instance", "stop", &inst_s]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: invalid_state: "), "{out:?}");
    let out = cli_on(
        &c,
        &["job", "run", &api_id.to_string(), "--delay-ms", "600000"],
    )
    .ok();
    let delayed: u64 = out
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "instance")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    let out = cli_on(&c, &["instance", "stop", &delayed.to_string()]).ok();
    assert!(out.stdout.contains("is now stopped"), "{out:?}");
    let v = client
        .get(&format!("/api/v1/instances/{delayed}"))
        .await
        .unwrap();
    assert_eq!(v["status"], "stopped", "{v}");
}

#[test]
fn no_server_answering_names_every_address_tried() {
    let a = free_addr().to_string();
    let b = free_addr().to_string();
    let both = format!("{a},{b}");
    let out = cli(
        &["cluster", "status", "--server", &both, "--token", TOKEN],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.starts_with("error: unreachable: "), "{out:?}");
    assert!(
        out.stderr.contains(&a) && out.stderr.contains(&b),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = cli(&["job", "list", "--server", &a, "--token", TOKEN], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(&a), "{out:?}");
}

#[test]
fn worker_run_flags_and_worker_list_do_not_mix() {
    // The run flags are still those of `raftjob worker`, and `list` is a subcommand.
    let help = cli(&["worker", "--help"], &[]).ok().stdout;
    for flag in ["--app", "--token", "--servers", "--protocol", "list"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    // A run flag then `list`: refused, not taken as either.
    let out = cli(&["worker", "--app", "x", "list"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("list"), "{out:?}");
    // A worker with run flags only still starts as a worker: it reports its own
    // configuration error, not a CLI one.
    let out = cli(&["worker", "--app", "x", "--token", "t"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.starts_with("raftjob worker: "), "{out:?}");
    // Bad JSON on the command line is a usage error, found before any request.
    let out = cli(
        &[
            "job",
            "create",
            "--spec",
            "{not json",
            "--server",
            &free_addr().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: usage: --spec is not valid JSON"),
        "{out:?}"
    );
}

/// The value of a `key  value` line of a readable answer.
fn kv<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| {
        l.strip_prefix(key)
            .filter(|rest| rest.starts_with("  "))
            .map(str::trim)
    })
}

#[tokio::test]
async fn tokens_audit_and_policy_through_the_cli() {
    let c = TestCluster::start(3);
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    let client = c.client();
    let all = servers(&c);
    let app = cli_on(&c, &["app", "create", "shop", "--json"]).ok().json();
    let app_id = app["id"].as_u64().unwrap().to_string();
    let job = client
        .create_job(&api_job(
            "shop",
            "greet",
            json!({"type": "shell", "command": "echo hi"}),
        ))
        .await
        .unwrap();
    let job_id = job["id"].as_u64().unwrap().to_string();

    // token create: the view, then the secret, shown once.
    let out = cli_on(
        &c,
        &[
            "token",
            "create",
            "--app",
            "shop",
            "--role",
            "operate",
            "--name",
            "ci-deploy",
            "--expires-in",
            "90d",
        ],
    )
    .ok();
    let secret = kv(&out.stdout, "secret")
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    assert!(secret.starts_with("rjt_"), "{out:?}");
    assert!(out.stdout.contains("shown only once"), "{out:?}");
    assert_eq!(kv(&out.stdout, "role"), Some("operate"), "{out:?}");
    assert_eq!(kv(&out.stdout, "status"), Some("active"), "{out:?}");
    let token_id = kv(&out.stdout, "id")
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    // Bad input is refused before any request (exit 2), the API's refusal names the
    // field (exit 1).
    let out = cli_on(
        &c,
        &[
            "token", "create", "--app", "shop", "--role", "admin", "--name", "x",
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    let out = cli_on(
        &c,
        &[
            "token",
            "create",
            "--app",
            "shop",
            "--role",
            "read",
            "--name",
            "x",
            "--expires-in",
            "90",
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    let out = cli_on(
        &c,
        &[
            "token",
            "create",
            "--app",
            "shop",
            "--role",
            "read",
            "--name",
            "x",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: validation_failed: expires_at: "),
        "{out:?}"
    );

    // The secret works as a bearer token within its app and role (on the leader, which
    // applied it before the create was answered; eventually, in case it moved).
    let leader_api = c.nodes[(leader - 1) as usize].api.to_string();
    let scoped = raftjob::client::Client::new([leader_api], secret.clone());
    eventually(READY, "the new token to read its app's jobs", || {
        let scoped = scoped.clone();
        async move { scoped.get("/api/v1/jobs?app=shop").await.ok() }
    })
    .await;
    let e = scoped.create_app("nope").await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let run = scoped
        .post(&format!("/api/v1/jobs/{job_id}/run"), &json!({}))
        .await
        .unwrap();
    let by_token = run["instance_id"].as_u64().unwrap().to_string();
    // Admin-only commands refuse it.
    let out = cli(
        &["policy", "get", "--server", &all, "--token", &secret],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: forbidden: "), "{out:?}");

    // token list: active, expiring in 90 days.
    let out = cli_on(&c, &["token", "list"]).ok();
    let rows = table_rows(&out.stdout, "ID ");
    assert_eq!(rows.len(), 1, "{out:?}");
    assert_eq!(
        &rows[0][..5],
        [token_id.as_str(), "ci-deploy", "shop", "operate", "active"],
        "{out:?}"
    );
    assert_eq!(rows[0][7], "-", "not revoked: {out:?}");
    let listed = cli_on(&c, &["token", "list", "--json"]).ok().json();
    let t = &listed["tokens"][0];
    let lifetime = t["expires_at_ms"].as_i64().unwrap() - t["created_at_ms"].as_i64().unwrap();
    assert!(
        (lifetime - 90 * 86_400_000).abs() < 60_000,
        "expires 90 days after its creation: {listed}"
    );
    assert!(!listed.to_string().contains("rjt_"), "{listed}");

    // token revoke: refused from then on, on every node.
    let out = cli_on(&c, &["token", "revoke", &token_id]).ok();
    assert!(out.stdout.contains("is now revoked"), "{out:?}");
    let out = cli_on(&c, &["token", "list"]).ok();
    let rows = table_rows(&out.stdout, "ID ");
    assert_eq!(rows[0][4], "revoked", "{out:?}");
    assert_ne!(rows[0][7], "-", "revoked at: {out:?}");
    for n in &c.nodes {
        let revoked = raftjob::client::Client::new([n.api.to_string()], secret.clone());
        eventually(READY, "the revoked token to get 401", || {
            let revoked = revoked.clone();
            async move {
                let e = revoked.get("/api/v1/jobs?app=shop").await.err()?;
                (e.status() == Some(401)).then_some(())
            }
        })
        .await;
    }
    let out = cli_on(&c, &["token", "revoke", "999999"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: not_found: "), "{out:?}");

    // audit: the runs (by the token, then by the admin) and the creation, newest first.
    let out = cli_on(&c, &["job", "run", &job_id, "--json"]).ok().json();
    let by_admin = out["instance_id"].as_u64().unwrap().to_string();
    let out = cli_on(&c, &["audit", "--job-id", &job_id]).ok();
    let rows = table_rows(&out.stdout, "TIME ");
    let token_actor = format!("token/{token_id}");
    let want: [[&str; 5]; 3] = [
        ["admin", "job.run", &app_id, &job_id, &by_admin],
        [&token_actor, "job.run", &app_id, &job_id, &by_token],
        ["admin", "job.create", &app_id, &job_id, "-"],
    ];
    assert_eq!(rows.len(), 3, "{out:?}");
    for (row, want) in rows.iter().zip(want) {
        assert!(
            chrono::DateTime::parse_from_rfc3339(&row[0]).is_ok(),
            "{out:?}"
        );
        assert_eq!(row[1..], want, "{out:?}");
    }
    let out = cli_on(&c, &["audit", "--limit", "1"]).ok();
    assert_eq!(table_rows(&out.stdout, "TIME ").len(), 1, "{out:?}");
    let v = cli_on(&c, &["audit", "--job-id", &job_id, "--json"])
        .ok()
        .json();
    assert_eq!(v["records"][0]["action"], "job.run", "{v}");
    let out = cli_on(&c, &["audit", "--limit", "0"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("limit"), "{out:?}");

    // policy set: changes what its flags name, and keeps the rest.
    let out = cli_on(
        &c,
        &[
            "policy",
            "set",
            "--app",
            "shop",
            "--shell",
            "disabled",
            "--http-deny",
            "127.0.0.0/8",
        ],
    )
    .ok();
    assert_eq!(kv(&out.stdout, "shell"), Some("disabled"), "{out:?}");
    let out = cli_on(&c, &["policy", "get", "--app", "shop"]).ok();
    assert_eq!(kv(&out.stdout, "shell"), Some("disabled"), "{out:?}");
    assert_eq!(kv(&out.stdout, "http deny"), Some("127.0.0.0/8"), "{out:?}");
    cli_on(
        &c,
        &[
            "policy",
            "set",
            "--app",
            "shop",
            "--http-allow",
            "api.example.com",
        ],
    )
    .ok();
    let v = cli_on(&c, &["policy", "get", "--app", "shop", "--json"])
        .ok()
        .json();
    assert_eq!(v["shell_enabled"], false, "{v}");
    assert_eq!(v["http_allow"], json!(["api.example.com"]), "{v}");
    assert_eq!(v["http_deny"], json!(["127.0.0.0/8"]), "{v}");
    // The cluster's policy is another one.
    let out = cli_on(&c, &["policy", "get"]).ok();
    assert_eq!(kv(&out.stdout, "policy of"), Some("the cluster"), "{out:?}");
    assert_eq!(kv(&out.stdout, "shell"), Some("enabled"), "{out:?}");

    // A bad entry: refused, naming the field; nothing changed.
    let out = cli_on(
        &c,
        &["policy", "set", "--app", "shop", "--http-deny", "http://x"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: validation_failed: http_deny[0]"),
        "{out:?}"
    );
    let after = cli_on(&c, &["policy", "get", "--app", "shop", "--json"])
        .ok()
        .json();
    assert_eq!(after, v);
    // --clear-http empties both lists.
    let v = cli_on(
        &c,
        &["policy", "set", "--app", "shop", "--clear-http", "--json"],
    )
    .ok()
    .json();
    assert_eq!(v["shell_enabled"], false, "{v}");
    assert!(
        v["http_allow"].as_array().is_none_or(|a| a.is_empty())
            && v["http_deny"].as_array().is_none_or(|a| a.is_empty()),
        "{v}"
    );
    // Nothing to change, or no such app.
    let out = cli_on(&c, &["policy", "set", "--app", "shop"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = cli_on(&c, &["policy", "get", "--app", "nope"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: not_found: "), "{out:?}");
}
