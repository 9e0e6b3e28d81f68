//! The recorded workload: logical client processes that create jobs (one-shot,
//! API-run and 1-second crons), run them, read jobs and instances, stop instances and
//! disable or delete jobs, over every node's api port through the client proxies.
//!
//! Every operation is recorded Jepsen style: `invoke`, then `ok`, `fail` (definitely
//! not applied: a 4xx, 503 `no_leader`, or a connection refused before anything was
//! sent) or `info` (unknown: a timeout, a cut connection, 503 `outcome_unknown`, a
//! 5xx). A process that got `info` is retired and its thread continues under a fresh
//! process id; it may then retry the same write with the same `Idempotency-Key`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ADMIN_TOKEN, APP};
use crate::history::{OpFn, OpKind};
use crate::recorder::{OpRecord, Recorder};

/// Logical client threads; with the pause between operations this gives about
/// 20–30 operations per second when the cluster answers promptly.
pub const CLIENTS: u64 = 4;
/// 1-second crons alive at once at most (each fires every second).
const MAX_LIVE_CRONS: usize = 5;
/// Client-side bound of one request: above the server's 10 s write deadline, so a
/// server that is merely slow still answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);

/// How one request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Value),
    Fail(String),
    Info(String),
}

/// The HTTP side: one request to one node, classified.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    pub fn new() -> Self {
        Self {
            // A fresh connection per request: a refused connection then reliably
            // means "not sent", and a proxy cut never hits a pooled connection.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .pool_max_idle_per_host(0)
                .build()
                .expect("reqwest client builds"),
        }
    }

    /// Sends one request and classifies the answer. `read`: the request has no
    /// effect, so any failure is `Fail`, and 404 is an `ok` reading of absence.
    #[allow(clippy::too_many_arguments)] // one HTTP request's parts, all different
    pub async fn call(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        read: bool,
        timeout: Duration,
    ) -> Outcome {
        let mut req = self
            .http
            .request(method, format!("http://{addr}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let unknown = |msg: String| {
            if read {
                Outcome::Fail(msg)
            } else {
                Outcome::Info(msg)
            }
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Outcome::Fail(format!(
                    "connect: {}",
                    raftjob::client::describe_transport_error(&e)
                ))
            }
            Err(e) => return unknown(raftjob::client::describe_transport_error(&e)),
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return unknown(raftjob::client::describe_transport_error(&e)),
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Outcome::Ok(v);
        }
        let code = v["code"].as_str().unwrap_or("unknown").to_string();
        let msg = format!(
            "HTTP {} {code}: {}",
            status.as_u16(),
            v["detail"].as_str().unwrap_or_default()
        );
        if read && status.as_u16() == 404 {
            return Outcome::Ok(json!({"absent": true}));
        }
        if status.is_client_error() || (status.as_u16() == 503 && code == "no_leader") {
            return Outcome::Fail(msg);
        }
        unknown(msg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Cron,
    Once,
    ApiRun,
}

#[derive(Debug, Clone)]
struct KnownJob {
    id: u64,
    kind: JobKind,
    /// Not disabled or deleted as far as this harness knows.
    live: bool,
}

#[derive(Default)]
struct Known {
    jobs: Vec<KnownJob>,
    /// Recent instance ids (runs and discovered cron fires), newest last.
    instances: VecDeque<u64>,
}

/// One request of the workload, kept whole so that a retry can resend it exactly.
#[derive(Debug, Clone)]
struct Req {
    f: OpFn,
    method: Method,
    path: String,
    body: Option<Value>,
    key: Option<String>,
    /// The invoke's value.
    value: Value,
    kind: Option<JobKind>,
}

impl Req {
    fn read(&self) -> bool {
        matches!(self.f, OpFn::ReadJob | OpFn::ReadInstance)
    }
}

/// Counts of completions, for the progress line.
#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub info: AtomicU64,
}

pub struct Workload {
    rec: Arc<Recorder>,
    api: Api,
    /// node -> the client proxy in front of its api port.
    client_addrs: BTreeMap<u64, SocketAddr>,
    /// node -> its real api port (only for unrecorded discovery of cron instances).
    direct_addrs: BTreeMap<u64, SocketAddr>,
    known: Mutex<Known>,
    next_process: AtomicU64,
    seed: u64,
    pub counts: Counts,
}

impl Workload {
    pub fn new(
        rec: Arc<Recorder>,
        client_addrs: BTreeMap<u64, SocketAddr>,
        direct_addrs: BTreeMap<u64, SocketAddr>,
        seed: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            rec,
            api: Api::new(),
            client_addrs,
            direct_addrs,
            known: Mutex::default(),
            next_process: AtomicU64::new(0),
            seed,
            counts: Counts::default(),
        })
    }

    pub fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs the client threads and the cron-instance discovery until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks = Vec::new();
        for t in 0..CLIENTS {
            tasks.push(tokio::spawn(self.clone().client(t, stop.clone())));
        }
        tasks.push(tokio::spawn(self.clone().discover(stop.clone())));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Every second, learns the newest instances (cron fires included) from one node,
    /// with a stale read that is not part of the history, so stops and reads also
    /// target instances the scheduler created.
    async fn discover(self: Arc<Self>, stop: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0xd15c);
        let nodes: Vec<SocketAddr> = self.direct_addrs.values().copied().collect();
        while !stop.is_cancelled() {
            let addr = *nodes.choose(&mut rng).expect("nodes");
            if let Outcome::Ok(v) = self
                .api
                .call(
                    addr,
                    Method::GET,
                    "/api/v1/instances?limit=20&consistency=stale",
                    None,
                    None,
                    true,
                    Duration::from_millis(500),
                )
                .await
            {
                let mut k = self.known.lock().expect("known lock");
                for i in v["instances"].as_array().into_iter().flatten().rev() {
                    if let Some(id) = i["id"].as_u64() {
                        if !k.instances.contains(&id) {
                            remember_instance(&mut k, id);
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn client(self: Arc<Self>, thread: u64, stop: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(31).wrapping_add(thread));
        let mut process = self.new_process();
        let mut seq = 0u64;
        let mut retry: Option<Req> = None;
        let nodes: Vec<u64> = self.client_addrs.keys().copied().collect();
        while !stop.is_cancelled() {
            let req = match retry.take() {
                Some(r) if rng.gen_bool(0.7) => r,
                _ => {
                    seq += 1;
                    self.choose(&mut rng, thread, seq)
                }
            };
            let node = *nodes.choose(&mut rng).expect("nodes");
            let outcome = self.perform(process, node, &req).await;
            if let Outcome::Info(_) = outcome {
                process = self.new_process();
                if !req.read() {
                    retry = Some(req);
                }
            }
            let pause = Duration::from_millis(rng.gen_range(80..240));
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Sends `req` to `node` through its client proxy and records invoke and completion.
    async fn perform(&self, process: u64, node: u64, req: &Req) -> Outcome {
        let addr = self.client_addrs[&node];
        self.rec.op(OpRecord {
            process,
            kind: OpKind::Invoke,
            f: req.f,
            value: req.value.clone(),
            node: Some(node),
            request_id: req.key.as_deref(),
            error: None,
        });
        let outcome = self
            .api
            .call(
                addr,
                req.method.clone(),
                &req.path,
                req.body.as_ref(),
                req.key.as_deref(),
                req.read(),
                REQUEST_TIMEOUT,
            )
            .await;
        let (kind, value, error) = match &outcome {
            Outcome::Ok(v) => {
                self.counts.ok.fetch_add(1, Ordering::Relaxed);
                (OpKind::Ok, self.completed(req, v), None)
            }
            Outcome::Fail(e) => {
                self.counts.fail.fetch_add(1, Ordering::Relaxed);
                (OpKind::Fail, req.value.clone(), Some(e.clone()))
            }
            Outcome::Info(e) => {
                self.counts.info.fetch_add(1, Ordering::Relaxed);
                (OpKind::Info, req.value.clone(), Some(e.clone()))
            }
        };
        self.rec.op(OpRecord {
            process,
            kind,
            f: req.f,
            value,
            node: Some(node),
            request_id: req.key.as_deref(),
            error,
        });
        outcome
    }

    /// The `ok` record's value, and what the workload learns from it.
    fn completed(&self, req: &Req, v: &Value) -> Value {
        let mut k = self.known.lock().expect("known lock");
        match req.f {
            OpFn::CreateJob => {
                let id = v["id"].as_u64();
                if let (Some(id), Some(kind)) = (id, req.kind) {
                    if !k.jobs.iter().any(|j| j.id == id) {
                        k.jobs.push(KnownJob {
                            id,
                            kind,
                            live: true,
                        });
                    }
                }
                json!({"job_id": id})
            }
            OpFn::RunJob => {
                let id = v["instance_id"].as_u64();
                if let Some(id) = id {
                    remember_instance(&mut k, id);
                }
                json!({"instance_id": id})
            }
            OpFn::ReadJob => {
                if v.get("absent").is_some() {
                    v.clone()
                } else {
                    json!({"job": v})
                }
            }
            OpFn::ReadInstance => {
                if v.get("absent").is_some() {
                    v.clone()
                } else {
                    json!({"instance": v})
                }
            }
            OpFn::StopInstance => v.clone(),
            OpFn::CancelJob => {
                if let Some(id) = req.value["job_id"].as_u64() {
                    for j in k.jobs.iter_mut().filter(|j| j.id == id) {
                        j.live = false;
                    }
                }
                v.clone()
            }
        }
    }

    fn choose(&self, rng: &mut StdRng, thread: u64, seq: u64) -> Req {
        let key = format!("jl-{}-{thread}-{seq}", self.seed);
        let k = self.known.lock().expect("known lock");
        let live_crons = k
            .jobs
            .iter()
            .filter(|j| j.live && j.kind == JobKind::Cron)
            .count();
        let roll = if k.jobs.is_empty() {
            0
        } else {
            rng.gen_range(0..90)
        };
        if roll < 14 {
            drop(k);
            return create_job(rng, key, thread, seq, live_crons < MAX_LIVE_CRONS);
        }
        if roll < 34 {
            let api_jobs: Vec<&KnownJob> = k
                .jobs
                .iter()
                .filter(|j| j.kind == JobKind::ApiRun)
                .collect();
            let job = if !api_jobs.is_empty() && rng.gen_bool(0.7) {
                api_jobs.choose(rng).expect("non-empty").id
            } else {
                k.jobs.choose(rng).expect("non-empty").id
            };
            return Req {
                f: OpFn::RunJob,
                method: Method::POST,
                path: format!("/api/v1/jobs/{job}/run"),
                body: Some(json!({})),
                key: Some(key),
                value: json!({"job_id": job}),
                kind: None,
            };
        }
        if roll < 50 || k.instances.is_empty() {
            let job = k.jobs.choose(rng).expect("non-empty").id;
            return Req {
                f: OpFn::ReadJob,
                method: Method::GET,
                path: format!("/api/v1/jobs/{job}"),
                body: None,
                key: None,
                value: json!({"job_id": job}),
                kind: None,
            };
        }
        if roll < 72 {
            let id = k.instances[rng.gen_range(0..k.instances.len())];
            return Req {
                f: OpFn::ReadInstance,
                method: Method::GET,
                path: format!("/api/v1/instances/{id}"),
                body: None,
                key: None,
                value: json!({"instance_id": id}),
                kind: None,
            };
        }
        if roll < 84 {
            // Mostly recent instances: those are the ones still running.
            let n = k.instances.len();
            let from = n.saturating_sub(12);
            let id = k.instances[rng.gen_range(from..n)];
            return Req {
                f: OpFn::StopInstance,
                method: Method::POST,
                path: format!("/api/v1/instances/{id}/stop"),
                body: None,
                key: Some(key),
                value: json!({"instance_id": id}),
                kind: None,
            };
        }
        let crons: Vec<u64> = k
            .jobs
            .iter()
            .filter(|j| j.live && j.kind == JobKind::Cron)
            .map(|j| j.id)
            .collect();
        let job = if crons.len() >= 3 && rng.gen_bool(0.7) {
            *crons.choose(rng).expect("non-empty")
        } else {
            k.jobs.choose(rng).expect("non-empty").id
        };
        let delete = rng.gen_bool(0.5);
        Req {
            f: OpFn::CancelJob,
            method: if delete { Method::DELETE } else { Method::POST },
            path: if delete {
                format!("/api/v1/jobs/{job}")
            } else {
                format!("/api/v1/jobs/{job}/disable")
            },
            body: None,
            key: Some(key),
            value: json!({"job_id": job, "how": if delete { "delete" } else { "disable" }}),
            kind: None,
        }
    }

    /// The final phase: disables every job that may still fire, so that the cluster
    /// goes quiet before the final reads. Each disable is a recorded operation, retried
    /// with its key until it is acknowledged or `deadline` passes.
    pub async fn disable_all(&self, job_ids: &[u64], deadline: tokio::time::Instant) {
        let nodes: Vec<u64> = self.client_addrs.keys().copied().collect();
        let mut process = self.new_process();
        for (i, job) in job_ids.iter().enumerate() {
            let req = Req {
                f: OpFn::CancelJob,
                method: Method::POST,
                path: format!("/api/v1/jobs/{job}/disable"),
                body: None,
                key: Some(format!("jl-{}-final-{job}", self.seed)),
                value: json!({"job_id": job, "how": "disable"}),
                kind: None,
            };
            let mut attempt = 0;
            loop {
                let node = nodes[(i + attempt) % nodes.len()];
                attempt += 1;
                match self.perform(process, node, &req).await {
                    Outcome::Ok(_) | Outcome::Fail(_) if tokio::time::Instant::now() > deadline => {
                        break
                    }
                    Outcome::Ok(_) => break,
                    // 404: deleted meanwhile, nothing to disable.
                    Outcome::Fail(e) if e.starts_with("HTTP 404") => break,
                    Outcome::Info(_) => process = self.new_process(),
                    Outcome::Fail(_) => {}
                }
                if tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn remember_instance(k: &mut Known, id: u64) {
    k.instances.push_back(id);
    while k.instances.len() > 200 {
        k.instances.pop_front();
    }
}

/// A job creation: a 1-second cron (when fewer than the limit are live) with a random
/// misfire policy, a one-shot 1–5 s ahead, or an API-run job. Shell processors sleep,
/// so executions overlap the faults.
fn create_job(rng: &mut StdRng, key: String, thread: u64, seq: u64, cron_ok: bool) -> Req {
    let name = format!("c{thread}-{seq}");
    let roll = rng.gen_range(0..100);
    let (kind, schedule, command) = if roll < 35 && cron_ok {
        (
            JobKind::Cron,
            json!({"type": "cron", "expr": "* * * * * *", "timezone": "UTC"}),
            "sleep 0.2",
        )
    } else if roll < 65 {
        let at = chrono::Utc::now() + chrono::Duration::milliseconds(rng.gen_range(1000..5000));
        (
            JobKind::Once,
            json!({"type": "once", "at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
            "sleep 0.2",
        )
    } else {
        (
            JobKind::ApiRun,
            json!({"type": "api"}),
            // Some attempts outlive lease + grace (2.2 s), so a fault in the middle
            // of one shows whether it could run twice.
            ["sleep 0.2", "sleep 2", "sleep 6", "sleep 6"][rng.gen_range(0..4)],
        )
    };
    let mut spec = json!({
        "app": APP,
        "name": name,
        "schedule": schedule,
        "processor": {"type": "shell", "command": command},
    });
    if kind == JobKind::Cron {
        spec["misfire_policy"] = json!(["fire_once", "fire_all", "skip"][rng.gen_range(0..3)]);
    }
    // Retries let a lost attempt run again, elsewhere: what fencing must keep apart.
    if kind == JobKind::ApiRun && (command == "sleep 6" || rng.gen_bool(0.5)) {
        spec["retries"] = json!(1);
    }
    Req {
        f: OpFn::CreateJob,
        method: Method::POST,
        path: "/api/v1/jobs".into(),
        body: Some(spec.clone()),
        key: Some(key),
        value: spec,
        kind: Some(kind),
    }
}
