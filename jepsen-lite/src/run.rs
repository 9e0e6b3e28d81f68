//! One run: start the cluster behind its proxies, drive the workload, inject the
//! scenario's faults, heal, wait for quiescence, take the final reads, and leave the
//! recorded run in the output directory (see [`crate::history`] for the files).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{dialer_pid, free_addr, Binary, NodeSpec, Processes, WorkerSpec, APP};
use crate::history::{
    mono_ns, read_jsonl, Event, FinalState, JsonlWriter, OpFn, OpKind, RunMeta, WorkerEvent,
};
use crate::nemesis::{Nemesis, Net};
use crate::proxy::Proxy;
use crate::recorder::Recorder;
use crate::scenario::{self, Planned};
use crate::workload::{Api, Outcome, Workload};

/// Every due instance must be terminal within this long after heal.
pub const TERMINAL_BOUND: Duration = Duration::from_secs(20);
/// The workload keeps running this long after heal, to show recovery.
const AFTER_HEAL: Duration = Duration::from_secs(4);
const NODES: u64 = 3;

/// What `jepsen-lite run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: String,
    pub seed: u64,
    pub time_limit: Duration,
    pub out: PathBuf,
    /// The `raftjob` (or `raftjob-planted`) binary.
    pub raftjob_bin: PathBuf,
    pub planted_bug: Option<String>,
}

static START: OnceLock<std::time::Instant> = OnceLock::new();

/// One progress line on stderr, with the time since the run started.
pub fn progress(msg: &str) {
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[{:>6.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// The files of an earlier run in `out`, removed before a new run writes there.
const OUTPUTS: &[&str] = &[
    "history.jsonl",
    "workers.jsonl",
    "run.json",
    "final.json",
    "results.json",
    "summary.md",
];

fn prepare_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for f in OUTPUTS {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    for d in ["nodes", "workers"] {
        let p = out.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove {}", p.display()))?;
        }
        std::fs::create_dir_all(&p)?;
    }
    Ok(())
}

/// The addresses of the run: real listeners and the proxies in front of them.
struct Layout {
    nodes: Vec<NodeSpec>,
    workers: Vec<WorkerSpec>,
    net: Net,
    api_addrs: BTreeMap<u64, SocketAddr>,
    client_addrs: BTreeMap<u64, SocketAddr>,
}

/// The two recording workers: one per protocol.
const WORKERS: &[(&str, &str)] = &[("w-http", "http"), ("w-ws", "ws")];

async fn layout(out: &Path) -> anyhow::Result<Layout> {
    let mut net = Net::default();
    let ids: Vec<u64> = (1..=NODES).collect();
    let real: BTreeMap<u64, [SocketAddr; 4]> = ids
        .iter()
        .map(|id| (*id, [free_addr(), free_addr(), free_addr(), free_addr()]))
        .collect();
    for a in &ids {
        for b in &ids {
            if a != b {
                let p = Proxy::start(format!("n{a}->n{b}"), free_addr(), real[b][1]).await?;
                net.peer.insert((*a, *b), p);
            }
        }
        let p = Proxy::start(format!("client->n{a}"), free_addr(), real[a][0]).await?;
        net.client.insert(*a, p);
    }
    let mut workers = Vec::new();
    for (name, protocol) in WORKERS {
        let mut servers = Vec::new();
        for id in &ids {
            let target = if *protocol == "http" {
                real[id][2]
            } else {
                real[id][3]
            };
            let p = Proxy::start(format!("{name}->n{id}"), free_addr(), target).await?;
            servers.push(p.addr);
            net.worker_to_server.insert((name.to_string(), *id), p);
        }
        let (listen, advertise) = if *protocol == "http" {
            let listen = free_addr();
            let p = Proxy::start(format!("servers->{name}"), free_addr(), listen).await?;
            let adv = p.addr;
            net.server_to_worker.insert(name.to_string(), p);
            (Some(listen), Some(adv))
        } else {
            (None, None)
        };
        workers.push(WorkerSpec {
            name: name.to_string(),
            protocol: protocol.to_string(),
            servers,
            listen,
            advertise,
            log: out.join("workers").join(format!("{name}.log")),
            record_dir: out.join("workers"),
        });
    }
    let mut nodes = Vec::new();
    for id in &ids {
        let mut extra = Vec::new();
        for other in ids.iter().filter(|o| *o != id) {
            extra.push("--peer-dial".to_string());
            extra.push(format!("{other}={}", net.peer[&(*id, *other)].addr));
        }
        let adv: Vec<String> = WORKERS
            .iter()
            .map(|(name, protocol)| {
                format!(
                    "{protocol}={}",
                    net.worker_to_server[&(name.to_string(), *id)].addr
                )
            })
            .collect();
        extra.push("--advertise-transport".into());
        extra.push(adv.join(","));
        let [api, cluster, http, ws] = real[id];
        nodes.push(NodeSpec {
            id: *id,
            api,
            cluster,
            http,
            ws,
            data_dir: out.join("nodes").join(format!("n{id}")),
            log: out.join("nodes").join(format!("n{id}.log")),
            extra,
        });
    }
    let api_addrs = nodes.iter().map(|n| (n.id, n.api)).collect();
    let client_addrs = net.client.iter().map(|(id, p)| (*id, p.addr)).collect();
    Ok(Layout {
        nodes,
        workers,
        net,
        api_addrs,
        client_addrs,
    })
}

/// Polls every node's `/readyz` until all answer 200 and name the same leader.
async fn wait_ready(api: &Api, addrs: &BTreeMap<u64, SocketAddr>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for addr in addrs.values() {
            if let Outcome::Ok(v) = api
                .call(
                    *addr,
                    Method::GET,
                    "/readyz",
                    None,
                    None,
                    true,
                    Duration::from_millis(800),
                )
                .await
            {
                if let Some(l) = v["leader_id"].as_u64() {
                    leaders.push(l);
                }
            }
        }
        if leaders.len() == addrs.len() && leaders.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GET on the first node that answers it, trying them in turn until `within`.
async fn read_any(
    api: &Api,
    addrs: &BTreeMap<u64, SocketAddr>,
    path: &str,
    within: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        for addr in addrs.values() {
            match api
                .call(
                    *addr,
                    Method::GET,
                    path,
                    None,
                    None,
                    true,
                    Duration::from_secs(5),
                )
                .await
            {
                Outcome::Ok(v) => return Some(v),
                Outcome::Fail(e) | Outcome::Info(e) => {
                    if Instant::now() > deadline {
                        progress(&format!("final read {path} failed: {e}"));
                        return None;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_workers_live(api: &Api, addrs: &BTreeMap<u64, SocketAddr>, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(v) = read_any(
            api,
            addrs,
            &format!("/api/v1/workers?app={APP}"),
            Duration::from_secs(2),
        )
        .await
        {
            let live = v["workers"]
                .as_array()
                .map(|ws| ws.iter().filter(|w| w["state"] == "live").count())
                .unwrap_or(0);
            if live >= n {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Polls each node's cluster view about every 100 ms into `Observe` events, and
/// notices nodes that exited by themselves.
async fn observe(
    rec: Arc<Recorder>,
    addrs: BTreeMap<u64, SocketAddr>,
    procs: Arc<Mutex<Processes>>,
    exits: Arc<Mutex<Vec<Value>>>,
    stop: CancellationToken,
) {
    let api = Api::new();
    while !stop.is_cancelled() {
        let polls = addrs.iter().map(|(id, addr)| {
            let api = api.clone();
            let rec = rec.clone();
            async move {
                let o = api
                    .call(
                        *addr,
                        Method::GET,
                        "/api/v1/cluster",
                        None,
                        None,
                        true,
                        Duration::from_millis(300),
                    )
                    .await;
                match o {
                    Outcome::Ok(v) => {
                        rec.observe(*id, v["leader_id"].as_u64(), v["term"].as_u64(), None)
                    }
                    Outcome::Fail(e) | Outcome::Info(e) => rec.observe(*id, None, None, Some(e)),
                };
            }
        });
        futures::future::join_all(polls).await;
        let (nodes, workers) = {
            let mut p = procs.lock().expect("processes lock");
            (p.crashed_nodes(), p.crashed_workers())
        };
        for (node, status) in nodes {
            progress(&format!("node {node} EXITED by itself: {status}"));
            exits
                .lock()
                .expect("exits lock")
                .push(json!({"node": node, "status": status, "time_ns": mono_ns()}));
        }
        // A worker that gave up is restarted at heal; its exit is kept in run.json.
        for (worker, status) in workers {
            progress(&format!("worker {worker} EXITED by itself: {status}"));
            exits
                .lock()
                .expect("exits lock")
                .push(json!({"worker": worker, "status": status, "time_ns": mono_ns()}));
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Runs one scenario and leaves the recorded run in `cfg.out`. Every process it
/// started is killed before it returns, on success or error.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<()> {
    let _ = START.set(std::time::Instant::now());
    let scenario = scenario::find(&cfg.scenario).with_context(|| {
        format!(
            "unknown scenario {:?}; `jepsen-lite list` shows them",
            cfg.scenario
        )
    })?;
    if !cfg.raftjob_bin.exists() {
        bail!(
            "{} does not exist: build it first (`cargo build --bin {}`)",
            cfg.raftjob_bin.display(),
            cfg.raftjob_bin
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
    prepare_dir(&cfg.out)?;
    let plan = scenario::plan(scenario, cfg.seed, cfg.time_limit);
    progress(&format!(
        "run {} seed {} time limit {}s -> {} ({} faults planned)",
        scenario.name,
        cfg.seed,
        cfg.time_limit.as_secs(),
        cfg.out.display(),
        plan.len()
    ));
    let layout = layout(&cfg.out).await?;
    let net = Arc::new(layout.net);
    let result = drive(
        cfg,
        scenario.name,
        &plan,
        &layout.nodes,
        layout.workers,
        net.clone(),
        &layout.api_addrs,
        &layout.client_addrs,
    )
    .await;
    net.close_all();
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    cfg: &RunConfig,
    scenario: &str,
    plan: &[Planned],
    nodes: &[NodeSpec],
    workers: Vec<WorkerSpec>,
    net: Arc<Net>,
    api_addrs: &BTreeMap<u64, SocketAddr>,
    client_addrs: &BTreeMap<u64, SocketAddr>,
) -> anyhow::Result<()> {
    let out = &cfg.out;
    let started_ns = mono_ns();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let procs = Arc::new(Mutex::new(Processes::new(
        Binary {
            path: cfg.raftjob_bin.clone(),
            planted_bug: cfg.planted_bug.clone(),
        },
        nodes.to_vec(),
        workers,
    )));
    // Kill every child however this function ends (the Drop of the last Arc).
    struct KillOnDrop(Arc<Mutex<Processes>>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(mut p) = self.0.lock() {
                p.kill_all();
            }
        }
    }
    let _guard = KillOnDrop(procs.clone());
    // The servers all dial the http worker's one advertised address: tell their
    // connections apart by the dialing process, so a fault can cut one server's.
    for p in net.server_to_worker.values() {
        let procs = procs.clone();
        let port = p.addr.port();
        p.set_resolver(Arc::new(move |peer| {
            let pids = procs.lock().ok()?.node_pids();
            let only: Vec<u32> = pids.iter().map(|(_, pid)| *pid).collect();
            let pid = dialer_pid(peer, port, &only)?;
            pids.iter().find(|(_, p)| *p == pid).map(|(id, _)| *id)
        }));
    }

    let rec = Arc::new(Recorder::create(&out.join("history.jsonl"))?);
    let api = Api::new();
    let mut meta = RunMeta {
        scenario: scenario.to_string(),
        seed: cfg.seed,
        time_limit_s: cfg.time_limit.as_secs(),
        planned_faults: plan.iter().map(|p| p.fault.name().to_string()).collect(),
        started_ns,
        healed_ns: 0,
        ended_ns: 0,
        terminal_bound_ms: TERMINAL_BOUND.as_millis() as u64,
        extra: json!({
            // The wall clock at `started_ns`: maps monotonic times to the cluster's.
            "started_unix_ms": started_unix_ms,
            "plan": plan,
            "planted_bug": cfg.planted_bug,
            "raftjob_bin": cfg.raftjob_bin,
            "nodes": nodes.iter().map(|n| json!({"id": n.id, "api": n.api, "cluster": n.cluster,
                "http": n.http, "ws": n.ws})).collect::<Vec<_>>(),
            "proxies": net.all().map(|p| json!({"name": p.name, "listen": p.addr, "target": p.target}))
                .collect::<Vec<_>>(),
            "server_tuning": crate::cluster::SERVER_TUNING,
        }),
    };
    write_json(&out.join("run.json"), &meta)?;

    progress("phase: starting 3 servers");
    {
        let mut p = procs.lock().expect("processes lock");
        for n in nodes {
            p.start_node(n.id)?;
        }
    }
    if !wait_ready(&api, api_addrs, Duration::from_secs(60)).await {
        bail!(
            "the cluster did not become ready within 60 s (see {}/nodes/*.log)",
            out.display()
        );
    }
    // The leader creates the bootstrap app once the cluster id is recorded, which
    // can take a few seconds; a worker whose app does not exist yet gives up.
    let app_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let apps = read_any(&api, api_addrs, "/api/v1/apps", Duration::from_secs(5)).await;
        let found = apps
            .and_then(|v| v["apps"].as_array().cloned())
            .is_some_and(|a| a.iter().any(|x| x["name"] == APP));
        if found {
            break;
        }
        if Instant::now() > app_deadline {
            bail!("the bootstrap app {APP} did not appear within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress("phase: starting workers");
    {
        let mut p = procs.lock().expect("processes lock");
        for w in p.worker_names() {
            p.start_worker(&w)?;
        }
    }
    if !wait_workers_live(&api, api_addrs, WORKERS.len()).await {
        bail!(
            "the workers did not become live within 30 s (see {}/workers/*.log)",
            out.display()
        );
    }

    let stop_observer = CancellationToken::new();
    let exits = Arc::new(Mutex::new(Vec::new()));
    let observer = tokio::spawn(observe(
        rec.clone(),
        api_addrs.clone(),
        procs.clone(),
        exits.clone(),
        stop_observer.clone(),
    ));

    progress("phase: workload and faults");
    let workload = Workload::new(
        rec.clone(),
        client_addrs.clone(),
        api_addrs.clone(),
        cfg.seed,
    );
    let stop_workload = CancellationToken::new();
    let workload_task = tokio::spawn(workload.clone().run(stop_workload.clone()));
    let t0 = Instant::now();
    let nemesis = Arc::new(Nemesis::new(
        rec.clone(),
        procs.clone(),
        net.clone(),
        api_addrs.clone(),
    ));
    let status = {
        let w = workload.clone();
        let stop = stop_workload.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                use std::sync::atomic::Ordering::Relaxed;
                progress(&format!(
                    "ops so far: {} ok, {} fail, {} info",
                    w.counts.ok.load(Relaxed),
                    w.counts.fail.load(Relaxed),
                    w.counts.info.load(Relaxed)
                ));
            }
        })
    };
    for p in plan {
        tokio::time::sleep_until(t0 + Duration::from_millis(p.at_ms)).await;
        nemesis.execute(p).await;
    }
    tokio::time::sleep_until(t0 + cfg.time_limit).await;

    progress("phase: heal");
    nemesis.heal_all().await;
    meta.healed_ns = mono_ns();
    tokio::time::sleep(AFTER_HEAL).await;
    stop_workload.cancel();
    let _ = workload_task.await;
    let _ = status.await;

    progress("phase: quiesce");
    let heal_deadline = Instant::now() + TERMINAL_BOUND;
    if !wait_ready(&api, api_addrs, Duration::from_secs(30)).await {
        progress("the cluster is not ready 30 s after heal");
    }
    // Stop the crons, so that the cluster goes quiet for the final reads.
    let crons: Vec<u64> = read_any(
        &api,
        api_addrs,
        "/api/v1/jobs?consistency=stale",
        Duration::from_secs(10),
    )
    .await
    .and_then(|v| v["jobs"].as_array().cloned())
    .unwrap_or_default()
    .iter()
    .filter(|j| j["enabled"] == true && j["schedule"]["type"] == "cron")
    .filter_map(|j| j["id"].as_u64())
    .collect();
    progress(&format!("disabling {} cron jobs", crons.len()));
    workload
        .disable_all(&crons, Instant::now() + Duration::from_secs(20))
        .await;
    let quiet = wait_terminal(&api, api_addrs, heal_deadline + Duration::from_secs(5)).await;
    progress(&format!(
        "quiesce: {}",
        if quiet {
            "every instance is terminal".to_string()
        } else {
            "some instances are still not terminal".to_string()
        }
    ));

    progress("phase: final reads");
    let fin = final_reads(&api, api_addrs, &out.join("history.jsonl")).await;
    write_json(&out.join("final.json"), &fin)?;
    stop_observer.cancel();
    let _ = observer.await;

    progress("phase: stopping processes");
    procs.lock().expect("processes lock").kill_all();
    let merged = merge_workers(out)?;
    meta.ended_ns = mono_ns();
    if let Some(extra) = meta.extra.as_object_mut() {
        extra.insert(
            "unexpected_exits".into(),
            Value::Array(exits.lock().expect("exits lock").clone()),
        );
        extra.insert("quiet_at_end".into(), json!(quiet));
        extra.insert("worker_events".into(), json!(merged));
        use std::sync::atomic::Ordering::Relaxed;
        extra.insert(
            "ops".into(),
            json!({"ok": workload.counts.ok.load(Relaxed), "fail": workload.counts.fail.load(Relaxed),
                   "info": workload.counts.info.load(Relaxed)}),
        );
    }
    write_json(&out.join("run.json"), &meta)?;
    progress(&format!("run recorded in {}", out.display()));
    Ok(())
}

const ACTIVE: &[&str] = &["waiting_dispatch", "dispatched", "running", "stopping"];

/// Waits until no instance is in a non-final status, or `deadline`.
async fn wait_terminal(api: &Api, addrs: &BTreeMap<u64, SocketAddr>, deadline: Instant) -> bool {
    loop {
        let mut active = 0usize;
        let mut answered = true;
        for s in ACTIVE {
            match read_any(
                api,
                addrs,
                &format!("/api/v1/instances?status={s}&limit=1000"),
                Duration::from_secs(2),
            )
            .await
            {
                Some(v) => active += v["instances"].as_array().map_or(0, |a| a.len()),
                None => answered = false,
            }
        }
        if answered && active == 0 {
            return true;
        }
        if Instant::now() > deadline {
            progress(&format!("{active} instances not terminal at the bound"));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Job and instance ids the history mentions.
fn history_ids(path: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut jobs = BTreeSet::new();
    let mut instances = BTreeSet::new();
    let events: Vec<Event> = read_jsonl(path).unwrap_or_default();
    for e in events {
        if let Event::Op(op) = e {
            if let Some(j) = op.value["job_id"].as_u64() {
                jobs.insert(j);
            }
            if let Some(i) = op.value["instance_id"].as_u64() {
                instances.insert(i);
            }
            if op.kind == OpKind::Ok && op.f == OpFn::CreateJob {
                if let Some(j) = op.value["job_id"].as_u64() {
                    jobs.insert(j);
                }
            }
        }
    }
    (jobs, instances)
}

/// The final reads: every job, every instance, each job's skips, and each node's
/// state digest once all nodes have applied the same index.
async fn final_reads(api: &Api, addrs: &BTreeMap<u64, SocketAddr>, history: &Path) -> FinalState {
    let within = Duration::from_secs(15);
    let mut fin = FinalState::default();
    let jobs = read_any(api, addrs, "/api/v1/jobs", within)
        .await
        .and_then(|v| v["jobs"].as_array().cloned())
        .unwrap_or_default();
    let (hist_jobs, hist_instances) = history_ids(history);
    let mut job_ids: BTreeSet<u64> = jobs.iter().filter_map(|j| j["id"].as_u64()).collect();
    job_ids.extend(hist_jobs);
    let mut instances: BTreeMap<u64, Value> = BTreeMap::new();
    let add = |list: Option<Value>, instances: &mut BTreeMap<u64, Value>| {
        for i in list
            .and_then(|v| v["instances"].as_array().cloned())
            .unwrap_or_default()
        {
            if let Some(id) = i["id"].as_u64() {
                instances.insert(id, i);
            }
        }
    };
    add(
        read_any(api, addrs, "/api/v1/instances?limit=1000", within).await,
        &mut instances,
    );
    for j in &job_ids {
        add(
            read_any(
                api,
                addrs,
                &format!("/api/v1/instances?job_id={j}&limit=1000"),
                within,
            )
            .await,
            &mut instances,
        );
    }
    for i in hist_instances {
        if instances.contains_key(&i) {
            continue;
        }
        if let Some(v) = read_any(api, addrs, &format!("/api/v1/instances/{i}"), within).await {
            if v.get("absent").is_none() {
                instances.insert(i, v);
            }
        }
    }
    for j in &jobs {
        let Some(id) = j["id"].as_u64() else { continue };
        if let Some(v) = read_any(
            api,
            addrs,
            &format!("/api/v1/jobs/{id}/skipped?limit=1000"),
            within,
        )
        .await
        {
            fin.skips
                .insert(id, v["skipped"].as_array().cloned().unwrap_or_default());
        }
    }
    fin.jobs = jobs;
    fin.instances = instances.into_values().collect();
    fin.digests = digests(api, addrs).await;
    fin.read_ns = mono_ns();
    progress(&format!(
        "final: {} jobs, {} instances, digests of {} nodes",
        fin.jobs.len(),
        fin.instances.len(),
        fin.digests.len()
    ));
    fin
}

/// Each node's state digest, taken when all nodes report the same applied index
/// (retried for up to 20 s; the last answers otherwise).
async fn digests(api: &Api, addrs: &BTreeMap<u64, SocketAddr>) -> BTreeMap<u64, Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = BTreeMap::new();
    loop {
        let calls = addrs.iter().map(|(id, addr)| async move {
            let o = api
                .call(
                    *addr,
                    Method::GET,
                    "/api/v1/debug/state-digest",
                    None,
                    None,
                    true,
                    Duration::from_secs(2),
                )
                .await;
            (*id, o)
        });
        let mut got = BTreeMap::new();
        for (id, o) in futures::future::join_all(calls).await {
            if let Outcome::Ok(v) = o {
                if v.get("absent").is_none() {
                    got.insert(id, v);
                }
            }
        }
        let indexes: BTreeSet<Option<u64>> =
            got.values().map(|v| v["applied_index"].as_u64()).collect();
        if got.len() == addrs.len() && indexes.len() == 1 {
            return got;
        }
        if !got.is_empty() {
            last = got;
        }
        if Instant::now() > deadline {
            progress("digests: the nodes never reported the same applied index");
            return last;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Merges every worker incarnation's record file into `workers.jsonl`, in time order.
fn merge_workers(out: &Path) -> anyhow::Result<usize> {
    let mut events: Vec<WorkerEvent> = Vec::new();
    let dir = out.join("workers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<WorkerEvent>(line) {
                Ok(e) => events.push(e),
                // A worker killed mid-write leaves a torn last line.
                Err(e) => progress(&format!("{}:{}: skipped: {e}", f.display(), n + 1)),
            }
        }
    }
    events.sort_by_key(|e| e.time_ns);
    let mut w = JsonlWriter::create(&out.join("workers.jsonl"))?;
    for e in &events {
        w.write(e)?;
    }
    Ok(events.len())
}
