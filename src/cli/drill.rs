//! `raftjob drill`: disrupt the leader round after round under load and measure how
//! long the cluster takes to recover, and that no acknowledged write was lost
//! (docs/drills.md).
//!
//! Each round: find the leader, start a background load (create jobs, run them, read
//! them, through every server), disrupt the leader (`kill`: the operator's command;
//! `transfer`: `POST /api/v1/cluster/transfer-leader`; `docker`: `docker kill`), then
//! measure the time to a new leader (polling `GET /api/v1/cluster` on the other
//! nodes), to the first committed write sent after the disruption, and to the first
//! dispatch of a run submitted after it; count the requests that failed; read back
//! every acknowledged job and instance. A killed node is restarted and must catch up
//! before the next round.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::output::Table;
use super::{CliError, Common};
use crate::client::{Client, ClientError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Run `--kill-cmd` on the leader, then `--restart-cmd`.
    Kill,
    /// Hand the leadership to a follower (`raftjob cluster transfer-leader`).
    Transfer,
    /// `docker kill` the leader's container, then `docker start` it.
    Docker,
}

#[derive(Debug, Clone, Args)]
pub struct DrillCmd {
    #[command(flatten)]
    pub common: Common,
    /// How many disruptions.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// `kill` mode: shell command that kills a node; `{node_id}`, `{api_addr}` and
    /// `{cluster_addr}` are filled in with the leader's.
    #[arg(long, value_name = "TEMPLATE")]
    pub kill_cmd: Option<String>,
    /// `kill` mode: shell command that starts the killed node again (same fields).
    #[arg(long, value_name = "TEMPLATE")]
    pub restart_cmd: Option<String>,
    /// `docker` mode: the container name of a node.
    #[arg(long, default_value = "raftjob-{node_id}", value_name = "TEMPLATE")]
    pub container_template: String,
    /// The app the load's jobs belong to (created if missing). Start a worker for it
    /// to measure dispatch times.
    #[arg(long, default_value = "drill")]
    pub app: String,
    /// Concurrent load clients.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long the load keeps going after the new leader is found and measured.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub load_after_ms: u64,
    /// How long a round may take to recover (new leader, write, dispatch, catch-up).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub timeout: u64,
}

/// One round's figures (milliseconds; `None` = not measured or did not happen).
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u32,
    pub old_leader: u64,
    pub new_leader: Option<u64>,
    /// The transfer's target, in transfer mode.
    pub target: Option<u64>,
    /// Kill and docker modes: how long the kill command itself took. The other
    /// figures count from the leader's death: in kill mode when the command returned,
    /// in docker mode the container's `State.FinishedAt` (under load `docker kill`
    /// itself returned up to 3 s after the container had died, which is not failover).
    pub kill_cmd_ms: Option<u64>,
    pub new_leader_ms: Option<u64>,
    pub first_write_ms: Option<u64>,
    /// `None` when no worker of the app was live before the round.
    pub first_dispatch_ms: Option<u64>,
    /// Kill and docker modes: from the restart command to the node being caught up.
    pub catch_up_ms: Option<u64>,
    pub requests: u64,
    pub failed_requests: u64,
    pub acked_jobs: usize,
    pub acked_instances: usize,
    pub lost: usize,
    /// Transfer mode: how many transfer requests the round took (a transfer that
    /// ends with another node leading, or with the old one, is retried up to 3 times).
    pub transfer_attempts: Option<u32>,
    /// What happened that is not a failure (a transfer retried, say).
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub rounds: Vec<Round>,
    /// p50, p99 and max of each figure over the rounds.
    pub summary: BTreeMap<String, Summary>,
    /// Acknowledged writes of every round read back once more at the end.
    pub acked_total: usize,
    pub lost_total: usize,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

pub fn run(cmd: DrillCmd) -> ExitCode {
    let common = cmd.common.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match rt.block_on(drill(cmd)) {
        Ok(report) if report.ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{}", e.message());
            if matches!(&e, CliError::Api { code, .. } if code == "unauthorized")
                && common.token.as_deref().unwrap_or("").is_empty()
            {
                eprintln!("hint: pass the admin token with --token or RAFTJOB_ADMIN_TOKEN");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// A node as the drill knows it.
#[derive(Debug, Clone)]
struct Member {
    id: u64,
    /// The address the drill reaches its api port at.
    api: String,
    cluster_addr: String,
}

struct Drill {
    cmd: DrillCmd,
    token: String,
    members: Vec<Member>,
    /// Unique per drill run, so idempotency keys never collide across runs.
    run_id: String,
    probe_job: u64,
}

fn client(servers: &[String], token: &str, total: Duration) -> Client {
    Client::with_timeouts(
        servers.iter().cloned(),
        token,
        Duration::from_millis(500),
        total,
    )
}

/// Nearest-rank percentile.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn summarize(values: impl IntoIterator<Item = Option<u64>>) -> Summary {
    let mut v: Vec<u64> = values.into_iter().flatten().collect();
    v.sort_unstable();
    Summary {
        count: v.len(),
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied(),
    }
}

/// Fills `{node_id}`, `{api_addr}`, `{cluster_addr}` and `{container}`.
fn fill(template: &str, m: &Member, container: &str) -> String {
    template
        .replace("{node_id}", &m.id.to_string())
        .replace("{api_addr}", &m.api)
        .replace("{cluster_addr}", &m.cluster_addr)
        .replace("{container}", container)
}

async fn shell(cmd: String) -> Result<(), String> {
    let shown = cmd.clone();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// When Docker says the container died (`State.FinishedAt`). `docker kill` returns
/// long after that under load (seconds, measured), so the drill counts from this.
async fn docker_died_at(container: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let out = tokio::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.FinishedAt}}", container])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub async fn drill(cmd: DrillCmd) -> Result<Report, CliError> {
    let token = cmd.common.token.clone().unwrap_or_default();
    let servers: Vec<String> = cmd
        .common
        .servers
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(CliError::Usage(
            "no server address: pass --server HOST:PORT or set RAFTJOB_SERVER".into(),
        ));
    }
    match cmd.mode {
        Mode::Kill if cmd.kill_cmd.is_none() || cmd.restart_cmd.is_none() => {
            return Err(CliError::Usage(
                "--mode kill needs --kill-cmd and --restart-cmd (templates with {node_id}, {api_addr}, {cluster_addr})".into(),
            ))
        }
        _ => {}
    }
    for t in [&cmd.kill_cmd, &cmd.restart_cmd].into_iter().flatten() {
        if t.contains("{pid}") {
            return Err(CliError::Usage(
                "{pid} is not available: the API does not report server process ids; use {node_id} (for example with a pid file per node)".into(),
            ));
        }
    }
    if cmd.rounds == 0 || cmd.concurrency == 0 {
        return Err(CliError::Usage(
            "--rounds and --concurrency must be at least 1".into(),
        ));
    }

    // Which given address is which node (falling back to the published api address).
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    let mut any_view: Option<Value> = None;
    let mut last_err: Option<ClientError> = None;
    for s in &servers {
        match client(std::slice::from_ref(s), &token, Duration::from_secs(5))
            .request(Method::GET, "/api/v1/cluster", None, None)
            .await
        {
            Ok(v) => {
                if let Some(id) = v["node_id"].as_u64() {
                    by_id.insert(id, s.clone());
                }
                any_view.get_or_insert(v);
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(view) = any_view else {
        return Err(last_err
            .map(CliError::from)
            .unwrap_or_else(|| CliError::Other("no server answered".into())));
    };
    let members: Vec<Member> = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["voter"].as_bool() == Some(true))
        .filter_map(|m| {
            let id = m["id"].as_u64()?;
            let api = by_id
                .get(&id)
                .cloned()
                .or_else(|| m["api_addr"].as_str().map(str::to_string))?;
            Some(Member {
                id,
                api,
                cluster_addr: m["cluster_addr"].as_str().unwrap_or("").to_string(),
            })
        })
        .collect();
    if members.len() < 3 {
        return Err(CliError::Other(format!(
            "a drill needs at least 3 reachable voters, found {}: {:?}",
            members.len(),
            members.iter().map(|m| m.id).collect::<Vec<_>>()
        )));
    }

    let all: Vec<String> = members.iter().map(|m| m.api.clone()).collect();
    let c = client(&all, &token, Duration::from_secs(30));
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    // The app (kept if it exists) and one job whose runs probe dispatch.
    match c
        .request(
            Method::POST,
            "/api/v1/apps",
            Some(&json!({"name": cmd.app})),
            Some(&format!("drill-app-{}", cmd.app)),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.status() == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    let probe = c
        .request(
            Method::POST,
            "/api/v1/jobs",
            Some(&job_spec(&cmd.app, &format!("drill-{run_id}-probe"))),
            Some(&format!("drill-{run_id}-probe")),
        )
        .await?;
    let probe_job = probe["id"]
        .as_u64()
        .ok_or_else(|| CliError::Other(format!("creating the probe job answered {probe}")))?;

    let d = Drill {
        cmd,
        token,
        members,
        run_id,
        probe_job,
    };
    let loud = !d.cmd.common.json;
    let mut rounds = Vec::new();
    let mut acked_jobs: Vec<u64> = Vec::new();
    let mut acked_instances: Vec<u64> = Vec::new();
    for r in 1..=d.cmd.rounds {
        let (round, jobs, instances) = d.round(r).await?;
        let line = progress_line(&round, d.cmd.rounds);
        if loud {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
        acked_jobs.extend(jobs);
        acked_instances.extend(instances);
        rounds.push(round);
    }

    // Everything acknowledged in any round, once more.
    let lost_total = d.lost(&acked_jobs, &acked_instances).await.len();
    let mut summary = BTreeMap::new();
    summary.insert(
        "new_leader_ms".into(),
        summarize(rounds.iter().map(|r| r.new_leader_ms)),
    );
    summary.insert(
        "first_write_ms".into(),
        summarize(rounds.iter().map(|r| r.first_write_ms)),
    );
    summary.insert(
        "first_dispatch_ms".into(),
        summarize(rounds.iter().map(|r| r.first_dispatch_ms)),
    );
    if d.cmd.mode != Mode::Transfer {
        summary.insert(
            "kill_cmd_ms".into(),
            summarize(rounds.iter().map(|r| r.kill_cmd_ms)),
        );
        summary.insert(
            "catch_up_ms".into(),
            summarize(rounds.iter().map(|r| r.catch_up_ms)),
        );
    }
    summary.insert(
        "failed_requests".into(),
        summarize(rounds.iter().map(|r| Some(r.failed_requests))),
    );
    summary.insert(
        "lost".into(),
        summarize(rounds.iter().map(|r| Some(r.lost as u64))),
    );
    let ok = lost_total == 0
        && rounds
            .iter()
            .all(|r| r.errors.is_empty() && r.lost == 0 && r.new_leader.is_some());
    let report = Report {
        mode: d.cmd.mode,
        rounds,
        summary,
        acked_total: acked_jobs.len() + acked_instances.len(),
        lost_total,
        ok,
    };
    if d.cmd.common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", render_report(&report));
    }
    Ok(report)
}

fn job_spec(app: &str, name: &str) -> Value {
    json!({
        "app": app,
        "name": name,
        "schedule": {"type": "api"},
        "processor": {"type": "shell", "command": "true"},
    })
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "n/a".into())
}

pub fn progress_line(r: &Round, total: u32) -> String {
    let mut s = format!(
        "round {}/{}: leader {} -> {}{}: new leader {}, first write {}, first dispatch {}",
        r.round,
        total,
        r.old_leader,
        r.new_leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into()),
        r.target
            .map(|t| format!(" (target {t})"))
            .unwrap_or_default(),
        fmt_ms(r.new_leader_ms),
        fmt_ms(r.first_write_ms),
        fmt_ms(r.first_dispatch_ms),
    );
    if let Some(k) = r.kill_cmd_ms {
        s.push_str(&format!(" (after the kill command's {k} ms)"));
    }
    if let Some(c) = r.catch_up_ms {
        s.push_str(&format!(", caught up {c} ms"));
    }
    s.push_str(&format!(
        ", failed {}/{} requests, lost {} of {} acked",
        r.failed_requests,
        r.requests,
        r.lost,
        r.acked_jobs + r.acked_instances
    ));
    for n in &r.notes {
        s.push_str(&format!("\n  note: {n}"));
    }
    for e in &r.errors {
        s.push_str(&format!("\n  error: {e}"));
    }
    s
}

pub fn render_report(r: &Report) -> String {
    let mut t = Table::new(&["FIGURE", "ROUNDS", "P50", "P99", "MAX"]);
    for (name, s) in &r.summary {
        let f = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into());
        t.row(vec![
            name.clone(),
            s.count.to_string(),
            f(s.p50),
            f(s.p99),
            f(s.max),
        ]);
    }
    format!(
        "\n{}\n{} acknowledged writes read back at the end, {} lost: {}\n",
        t.render(),
        r.acked_total,
        r.lost_total,
        if r.ok { "PASS" } else { "FAIL" }
    )
}

/// What the load recorded.
#[derive(Default)]
struct Ledger {
    jobs: Mutex<Vec<u64>>,
    instances: Mutex<Vec<u64>>,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Ledger {
    fn record<T>(&self, r: &Result<T, ClientError>) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = self.errors.lock().expect("lock");
                if errs.len() < 5 {
                    errs.push(e.to_string());
                }
            }
        }
    }
}

impl Drill {
    fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Every member's address, starting from the `i`-th (so load spreads over them).
    fn rotated(&self, i: usize, skip: Option<u64>) -> Vec<String> {
        let n = self.members.len();
        (0..n)
            .map(|k| &self.members[(i + k) % n])
            .filter(|m| Some(m.id) != skip)
            .map(|m| m.api.clone())
            .collect()
    }

    async fn view(&self, m: &Member) -> Option<Value> {
        client(
            std::slice::from_ref(&m.api),
            &self.token,
            Duration::from_millis(800),
        )
        .request(Method::GET, "/api/v1/cluster", None, None)
        .await
        .ok()
    }

    /// Every member's own view of the cluster, asked at once (`None` where a member
    /// does not answer).
    async fn views(&self) -> Vec<Option<Value>> {
        futures::future::join_all(self.members.iter().map(|m| self.view(m))).await
    }

    /// The leader among `views`: of the members that call themselves the leader, the
    /// one with the highest term. A restarted ex-leader briefly claims the leadership
    /// of its old term until it hears of the newer one, so the first claimant is not
    /// enough.
    fn leader_of(views: &[Option<Value>]) -> Option<&Value> {
        views
            .iter()
            .flatten()
            .filter(|v| v["leader_id"].is_u64() && v["leader_id"] == v["node_id"])
            .max_by_key(|v| v["term"].as_u64().unwrap_or(0))
    }

    /// The leader's own view of the cluster, polled until there is one.
    async fn leader_view(&self, deadline: Instant) -> Result<Value, CliError> {
        loop {
            if let Some(v) = Self::leader_of(&self.views().await) {
                return Ok(v.clone());
            }
            if Instant::now() >= deadline {
                return Err(CliError::NoLeader(
                    "no node reported itself as the leader".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn round(&self, round: u32) -> Result<(Round, Vec<u64>, Vec<u64>), CliError> {
        let timeout = Duration::from_secs(self.cmd.timeout);
        let lv = self.leader_view(Instant::now() + timeout).await?;
        let old = lv["leader_id"].as_u64().expect("leader id");
        let old_term = lv["term"].as_u64().unwrap_or(0);
        let leader = self
            .member(old)
            .cloned()
            .ok_or_else(|| CliError::Other(format!("leader {old} is not a known voter")))?;
        // The transfer target: the follower with the highest matched index.
        let target = (self.cmd.mode == Mode::Transfer).then(|| {
            lv["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["voter"] == true && m["id"].as_u64() != Some(old))
                .max_by_key(|m| {
                    (
                        m["matched_index"].as_u64().unwrap_or(0),
                        std::cmp::Reverse(m["id"].as_u64().unwrap_or(0)),
                    )
                })
                .and_then(|m| m["id"].as_u64())
                .unwrap_or(old)
        });
        // A worker of the app to measure the first dispatch with. After the previous
        // round's failover the workers may still be finding the new leader (their
        // heartbeats make them live again within a few seconds), so wait for one.
        let workers_live = {
            let c = client(&self.rotated(0, None), &self.token, Duration::from_secs(10));
            let path = format!("/api/v1/workers?app={}", self.cmd.app);
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let live = c
                    .request(Method::GET, &path, None, None)
                    .await
                    .ok()
                    .and_then(|v| {
                        v["workers"]
                            .as_array()
                            .map(|w| w.iter().any(|w| w["state"] == "live"))
                    })
                    .unwrap_or(false);
                if live || Instant::now() >= until {
                    break live;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };

        // The load.
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut loaders = Vec::new();
        for i in 0..self.cmd.concurrency {
            let c = client(&self.rotated(i, None), &self.token, Duration::from_secs(15));
            let (ledger, stop) = (ledger.clone(), stop.clone());
            let app = self.cmd.app.clone();
            let prefix = format!("drill-{}-{round}-{i}", self.run_id);
            loaders.push(tokio::spawn(load(c, app, prefix, ledger, stop)));
        }
        let warm = Instant::now() + timeout;
        while ledger.ok.load(Ordering::Relaxed) < 10 * self.cmd.concurrency as u64 {
            if Instant::now() >= warm {
                stop.store(true, Ordering::Relaxed);
                return Err(CliError::Other(format!(
                    "the load did not get going: {:?}",
                    ledger.errors.lock().expect("lock")
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The disruption.
        let mut errors = Vec::new();
        let transfer_failed = Arc::new(AtomicBool::new(false));
        // Set when the kill command returned, or when a new leader is seen: the
        // first write and the first dispatch are timed from then on, so a write the
        // old leader commits before it dies is not taken for the new leader's.
        let kill_done = Arc::new(AtomicBool::new(self.cmd.mode == Mode::Transfer));
        let t0 = Instant::now();
        let container = self
            .cmd
            .container_template
            .replace("{node_id}", &old.to_string());
        // Kill and docker modes: the kill command runs beside the observers below, so
        // they see the new leader as it comes, even while the command has not returned
        // (under load `docker kill` returned up to 3 s after the container had died).
        // It answers when the leader died, as far as can be known.
        let kill = match self.cmd.mode {
            Mode::Kill | Mode::Docker => {
                let (cmd, docker) = if self.cmd.mode == Mode::Kill {
                    let cmd = fill(
                        self.cmd.kill_cmd.as_deref().unwrap_or(""),
                        &leader,
                        &container,
                    );
                    (cmd, None)
                } else {
                    (format!("docker kill {container}"), Some(container.clone()))
                };
                let done = kill_done.clone();
                Some(tokio::spawn(async move {
                    let r = shell(cmd).await;
                    let (now, wall) = (Instant::now(), chrono::Utc::now());
                    done.store(true, Ordering::Relaxed);
                    let died = match docker {
                        // Docker's record of the container's exit.
                        Some(c) => match docker_died_at(&c).await {
                            Some(died) => {
                                let ago = (wall - died).to_std().unwrap_or_default();
                                now.checked_sub(ago).unwrap_or(now).max(t0)
                            }
                            None => now,
                        },
                        // kill -9 has taken effect when the command returns.
                        None => now,
                    };
                    (r, ms(now - t0), died)
                }))
            }
            Mode::Transfer => None,
        };
        let transfer = match self.cmd.mode {
            Mode::Kill | Mode::Docker => None,
            Mode::Transfer => {
                let c = client(&self.rotated(0, None), &self.token, Duration::from_secs(30));
                let body = json!({"to": target});
                let failed = transfer_failed.clone();
                Some(tokio::spawn(async move {
                    let r = transfer_with_retries(&c, &body, old).await;
                    if r.1.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                }))
            }
        };
        let others: Vec<Member> = self
            .members
            .iter()
            .filter(|m| m.id != old)
            .cloned()
            .collect();
        let deadline = t0 + timeout;
        let new_leader = async {
            loop {
                let views = futures::future::join_all(others.iter().map(|m| self.view(m))).await;
                for v in views.into_iter().flatten() {
                    if let Some(l) = v["leader_id"].as_u64() {
                        if l != old && v["term"].as_u64().unwrap_or(0) > old_term {
                            kill_done.store(true, Ordering::Relaxed);
                            return Some((l, Instant::now()));
                        }
                    }
                }
                // A transfer that failed leaves the old leader in place: stop here.
                if Instant::now() >= deadline || transfer_failed.load(Ordering::Relaxed) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let others_api = self.rotated(0, Some(old));
        let disrupted = || async {
            while !kill_done.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let first_write = async {
            disrupted().await;
            let c = client(&others_api, &self.token, Duration::from_secs(12));
            let mut k = 0;
            loop {
                k += 1;
                let name = format!("drill-{}-{round}-first-{k}", self.run_id);
                let r = c
                    .request(
                        Method::POST,
                        "/api/v1/jobs",
                        Some(&job_spec(&self.cmd.app, &name)),
                        Some(&name),
                    )
                    .await;
                if let Ok(v) = r {
                    return (Some(Instant::now()), v["id"].as_u64());
                }
                if Instant::now() >= deadline {
                    return (None, None);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let first_dispatch = async {
            if !workers_live {
                return (None, Vec::new());
            }
            disrupted().await;
            let c = client(&others_api, &self.token, Duration::from_secs(12));
            let path = format!("/api/v1/jobs/{}/run", self.probe_job);
            let mut attempt = 0;
            let mut submitted = Vec::new();
            loop {
                attempt += 1;
                let key = format!("drill-{}-{round}-dispatch-{attempt}", self.run_id);
                let instance = loop {
                    if let Ok(v) = c
                        .request(Method::POST, &path, Some(&json!({})), Some(&key))
                        .await
                    {
                        if let Some(id) = v["instance_id"].as_u64() {
                            break id;
                        }
                    }
                    if Instant::now() >= deadline {
                        return (None, submitted);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                submitted.push(instance);
                loop {
                    if let Ok(v) = c
                        .request(
                            Method::GET,
                            &format!("/api/v1/instances/{instance}"),
                            None,
                            None,
                        )
                        .await
                    {
                        if v["dispatched_at_ms"].is_i64() || v["dispatched_at_ms"].is_u64() {
                            return (Some(Instant::now()), submitted);
                        }
                        // Failed without a dispatch (say every worker was busy): again.
                        if ["failed", "canceled", "stopped"]
                            .contains(&v["status"].as_str().unwrap_or(""))
                        {
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        return (None, submitted);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let (nl, (fw, fw_job), (fd, fd_instance)) =
            tokio::join!(new_leader, first_write, first_dispatch);
        // Every figure counts from the leader's death (or the transfer request).
        let mut died = t0;
        let mut kill_cmd_ms = None;
        if let Some(k) = kill {
            match k.await {
                Ok((r, took, at)) => {
                    if let Err(e) = r {
                        errors.push(e);
                    }
                    kill_cmd_ms = Some(took);
                    died = at;
                }
                Err(e) => errors.push(format!("the kill task failed: {e}")),
            }
        }
        let since = |at: Instant| ms(at.saturating_duration_since(died));
        let nl = nl.map(|(l, at)| (l, since(at)));
        let fw = fw.map(since);
        let fd = fd.map(since);
        if nl.is_none() {
            errors.push(format!("no new leader within {} s", timeout.as_secs()));
        }
        if fw.is_none() {
            errors.push(format!("no write committed within {} s", timeout.as_secs()));
        }
        if workers_live && fd.is_none() {
            errors.push(format!(
                "the probe run was not dispatched within {} s",
                timeout.as_secs()
            ));
        }
        let mut notes = Vec::new();
        let mut transfer_attempts = None;
        if let Some(t) = transfer {
            match t.await {
                Ok((attempts, outcome)) => {
                    transfer_attempts = Some(attempts);
                    match outcome {
                        Ok(n) => notes.extend(n),
                        Err(e) => errors.push(format!("the transfer failed: {e}")),
                    }
                }
                Err(e) => errors.push(format!("the transfer task failed: {e}")),
            }
        }

        // Keep the load on the new leader a little, then stop it.
        tokio::time::sleep(Duration::from_millis(self.cmd.load_after_ms)).await;
        stop.store(true, Ordering::Relaxed);
        for l in loaders {
            let _ = l.await;
        }
        let mut jobs = ledger.jobs.lock().expect("lock").clone();
        jobs.extend(fw_job);
        let mut instances = ledger.instances.lock().expect("lock").clone();
        instances.extend(fd_instance);

        let lost = self.lost(&jobs, &instances).await;
        for l in lost.iter().take(5) {
            errors.push(format!("lost: {l}"));
        }
        let failed = ledger.failed.load(Ordering::Relaxed);
        // Counted and shown, but not a failure of the drill by themselves.
        let mut failed_samples: Vec<String> = ledger
            .errors
            .lock()
            .expect("lock")
            .iter()
            .map(|e| format!("failed request: {e}"))
            .collect();

        // A killed node comes back and catches up before the next round.
        let catch_up_ms = match self.cmd.mode {
            Mode::Transfer => None,
            Mode::Kill | Mode::Docker => {
                let restart = if self.cmd.mode == Mode::Kill {
                    fill(
                        self.cmd.restart_cmd.as_deref().unwrap_or(""),
                        &leader,
                        &container,
                    )
                } else {
                    format!("docker start {container}")
                };
                let started = Instant::now();
                match shell(restart).await {
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                    Ok(()) => match self.wait_caught_up(&leader, started + timeout).await {
                        Ok(()) => Some(ms(started.elapsed())),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    },
                }
            }
        };
        let round = Round {
            round,
            old_leader: old,
            new_leader: nl.map(|(l, _)| l),
            target,
            kill_cmd_ms,
            new_leader_ms: nl.map(|(_, t)| t),
            first_write_ms: fw,
            first_dispatch_ms: fd,
            catch_up_ms,
            requests: ledger.ok.load(Ordering::Relaxed) + failed,
            failed_requests: failed,
            acked_jobs: jobs.len(),
            acked_instances: instances.len(),
            lost: lost.len(),
            transfer_attempts,
            notes: {
                notes.append(&mut failed_samples);
                notes
            },
            errors,
        };
        Ok((round, jobs, instances))
    }

    /// Waits until `m` answers, follows the current leader (same term), and the
    /// leader sees it holding every entry.
    async fn wait_caught_up(&self, m: &Member, deadline: Instant) -> Result<(), String> {
        loop {
            let views = self.views().await;
            let own = self
                .members
                .iter()
                .zip(&views)
                .find(|(x, _)| x.id == m.id)
                .and_then(|(_, v)| v.as_ref());
            if let (Some(lv), Some(own)) = (Self::leader_of(&views), own) {
                let last = lv["last_log_index"].as_u64();
                let matched = lv["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["id"].as_u64() == Some(m.id))
                    .and_then(|x| x["matched_index"].as_u64());
                let follows = own["term"] == lv["term"] && own["leader_id"] == lv["node_id"];
                if follows && last.is_some() && matched == last {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {} did not come back and catch up in time",
                    m.id
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The acknowledged jobs and instances that cannot be read back (linearizable
    /// reads through any node; a transient error is retried, a 404 is a loss).
    async fn lost(&self, jobs: &[u64], instances: &[u64]) -> Vec<String> {
        let c = client(&self.rotated(0, None), &self.token, Duration::from_secs(15));
        let paths: Vec<String> = jobs
            .iter()
            .map(|id| format!("/api/v1/jobs/{id}"))
            .chain(instances.iter().map(|id| format!("/api/v1/instances/{id}")))
            .collect();
        let checks = futures::stream::iter(paths.into_iter().map(|p| {
            let c = c.clone();
            async move {
                for _ in 0..5 {
                    match c
                        .request(
                            Method::GET,
                            &format!("{p}?consistency=linearizable"),
                            None,
                            None,
                        )
                        .await
                    {
                        Ok(_) => return None,
                        Err(e) if e.status() == Some(404) => return Some(format!("{p} is gone")),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                Some(format!("{p} could not be read"))
            }
        }));
        use futures::StreamExt;
        checks
            .buffer_unordered(16)
            .filter_map(|x| async move { x })
            .collect()
            .await
    }
}

/// Asks for a transfer; when it fails and the old leader still (or again) leads, asks
/// again, up to 3 times. Returns the attempts, and notes about retries or the error.
async fn transfer_with_retries(
    c: &Client,
    body: &Value,
    old: u64,
) -> (u32, Result<Vec<String>, String>) {
    let mut notes = Vec::new();
    for attempt in 1..=3 {
        let r = c
            .request(
                Method::POST,
                "/api/v1/cluster/transfer-leader",
                Some(body),
                None,
            )
            .await;
        let e = match r {
            Ok(_) => return (attempt, Ok(notes)),
            Err(e) => e.to_string(),
        };
        notes.push(format!("transfer attempt {attempt}: {e}"));
        // Who leads now? Another node: the leadership moved, which is what the round
        // disrupts for. The old one: ask again.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(v) = c.request(Method::GET, "/api/v1/cluster", None, None).await {
                match v["leader_id"].as_u64() {
                    Some(l) if l != old => return (attempt, Ok(notes)),
                    Some(_) => break,
                    None => {}
                }
            }
            if Instant::now() >= until {
                return (attempt, Err(format!("no leader 10 s after {e}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (3, Err(notes.join("; ")))
}

/// One load client: create a job, every fifth round run one of its jobs, read one
/// back; each write with its own idempotency key, so a retry on another node is safe.
/// A client has at most one run unfinished: runs are throttled to what the workers
/// finish, so a drill never builds a dispatch backlog that would hide the failover
/// in its `first_dispatch` figure.
async fn load(c: Client, app: String, prefix: String, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut mine: Vec<u64> = Vec::new();
    let mut pending_run: Option<u64> = None;
    let mut k: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        // Paced: a steady load, not a benchmark (a few hundred requests a second).
        tokio::time::sleep(Duration::from_millis(10)).await;
        k += 1;
        let name = format!("{prefix}-{k}");
        let r = c
            .request(
                Method::POST,
                "/api/v1/jobs",
                Some(&job_spec(&app, &name)),
                Some(&name),
            )
            .await;
        ledger.record(&r);
        if let Some(id) = r.ok().and_then(|v| v["id"].as_u64()) {
            mine.push(id);
            ledger.jobs.lock().expect("lock").push(id);
        }
        if k % 5 == 0 {
            if let Some(run) = pending_run {
                let r = c
                    .request(Method::GET, &format!("/api/v1/instances/{run}"), None, None)
                    .await;
                ledger.record(&r);
                let finished = r.ok().is_some_and(|v| {
                    ["succeeded", "failed", "stopped", "canceled"]
                        .contains(&v["status"].as_str().unwrap_or(""))
                });
                if finished {
                    pending_run = None;
                }
            }
        }
        if k % 5 == 0 && pending_run.is_none() {
            if let Some(&job) = mine.last() {
                let key = format!("{name}-run");
                let r = c
                    .request(
                        Method::POST,
                        &format!("/api/v1/jobs/{job}/run"),
                        Some(&json!({})),
                        Some(&key),
                    )
                    .await;
                ledger.record(&r);
                if let Some(id) = r.ok().and_then(|v| v["instance_id"].as_u64()) {
                    ledger.instances.lock().expect("lock").push(id);
                    pending_run = Some(id);
                }
            }
        }
        if let Some(&job) = mine.get((k as usize * 7) % mine.len().max(1)) {
            // `request`, not `get`: a GET moves on to the next server after any failure.
            let r = c
                .request(Method::GET, &format!("/api/v1/jobs/{job}"), None, None)
                .await;
            ledger.record(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        let s = summarize([Some(30), None, Some(10), Some(20)]);
        assert_eq!(
            (s.count, s.p50, s.p99, s.max),
            (3, Some(20), Some(30), Some(30))
        );
    }

    #[test]
    fn templates_are_filled() {
        let m = Member {
            id: 2,
            api: "127.0.0.1:7702".into(),
            cluster_addr: "127.0.0.1:7802".into(),
        };
        assert_eq!(
            fill(
                "kill-node {node_id} {api_addr} {cluster_addr} {container}",
                &m,
                "raftjob-2"
            ),
            "kill-node 2 127.0.0.1:7702 127.0.0.1:7802 raftjob-2"
        );
    }
}
