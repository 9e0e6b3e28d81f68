//! The nemesis: injects one planned fault, records its start and end (or that it
//! could not be injected), and undoes it. Partitions and delays are proxy states;
//! kills and pauses are signals to the child PIDs; the clock jump goes through the
//! server's test-only clock route.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cluster::Processes;
use crate::history::NemesisPhase;
use crate::progress;
use crate::proxy::{Flow, LinkState, Proxy};
use crate::recorder::Recorder;
use crate::scenario::{Fault, Planned};
use crate::workload::{Api, Outcome};

/// `stale-dispatch`: how long the leader keeps leading (dispatching into held
/// links) before it is cut from its peers.
const STALE_LEAD: Duration = Duration::from_millis(1500);

/// Every proxy of a run, by the link it carries.
#[derive(Default)]
pub struct Net {
    /// (from, to): node `from` dialing node `to`'s cluster port.
    pub peer: BTreeMap<(u64, u64), Arc<Proxy>>,
    /// (worker, node): the worker dialing the node's transport port.
    pub worker_to_server: BTreeMap<(String, u64), Arc<Proxy>>,
    /// worker: every server dialing an http worker's dispatch endpoint (one address
    /// per worker; faults act on one server's connections through
    /// [`Proxy::set_source`], which tells the dialing servers apart).
    pub server_to_worker: BTreeMap<String, Arc<Proxy>>,
    /// node: the harness's clients dialing the node's api port.
    pub client: BTreeMap<u64, Arc<Proxy>>,
}

impl Net {
    pub fn all(&self) -> impl Iterator<Item = &Arc<Proxy>> {
        self.peer
            .values()
            .chain(self.worker_to_server.values())
            .chain(self.server_to_worker.values())
            .chain(self.client.values())
    }

    pub async fn heal_all(&self) {
        for p in self.all() {
            p.pass().await;
        }
    }

    pub fn close_all(&self) {
        for p in self.all() {
            p.close();
        }
    }
}

pub struct Nemesis {
    pub rec: Arc<Recorder>,
    pub procs: Arc<Mutex<Processes>>,
    pub net: Arc<Net>,
    /// node -> real api address (the nemesis is not subject to the faults it injects).
    pub api_addrs: BTreeMap<u64, SocketAddr>,
    pub api: Api,
    /// Nodes whose clock was shifted, to reset at heal.
    clocked: Mutex<BTreeSet<u64>>,
}

/// What one node says about leadership.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub leader: Option<u64>,
    pub term: u64,
}

impl Nemesis {
    pub fn new(
        rec: Arc<Recorder>,
        procs: Arc<Mutex<Processes>>,
        net: Arc<Net>,
        api_addrs: BTreeMap<u64, SocketAddr>,
    ) -> Self {
        Self {
            rec,
            procs,
            net,
            api_addrs,
            api: Api::new(),
            clocked: Mutex::default(),
        }
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Processes> {
        self.procs.lock().expect("processes lock")
    }

    /// Every answering node's local view (`GET /api/v1/cluster`, no Raft round).
    pub async fn views(&self) -> BTreeMap<u64, View> {
        let mut out = BTreeMap::new();
        let calls = self.api_addrs.iter().map(|(id, addr)| async move {
            let o = self
                .api
                .call(
                    *addr,
                    Method::GET,
                    "/api/v1/cluster",
                    None,
                    None,
                    true,
                    Duration::from_millis(400),
                )
                .await;
            (*id, o)
        });
        for (id, o) in futures::future::join_all(calls).await {
            if let Outcome::Ok(v) = o {
                out.insert(
                    id,
                    View {
                        leader: v["leader_id"].as_u64(),
                        term: v["term"].as_u64().unwrap_or(0),
                    },
                );
            }
        }
        out
    }

    /// The leader a majority agrees on (the leader itself included), waiting up to
    /// `within` for one.
    pub async fn stable_leader(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let views = self.views().await;
            let mut best: Option<(u64, u64)> = None;
            for (id, v) in &views {
                if v.leader != Some(*id) {
                    continue;
                }
                let backers = views
                    .values()
                    .filter(|o| o.leader == Some(*id) && o.term == v.term)
                    .count();
                if backers >= 2 && best.is_none_or(|(_, t)| v.term > t) {
                    best = Some((*id, v.term));
                }
            }
            if let Some((id, _)) = best {
                return Some(id);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn others(&self, node: u64) -> Vec<u64> {
        self.api_addrs
            .keys()
            .copied()
            .filter(|n| *n != node)
            .collect()
    }

    fn start(&self, fault: Fault, detail: Value) {
        progress(&format!("nemesis: {} start {detail}", fault.name()));
        self.rec.nemesis(fault.name(), NemesisPhase::Start, detail);
    }

    fn end(&self, fault: Fault, detail: Value) {
        progress(&format!("nemesis: {} end {detail}", fault.name()));
        self.rec.nemesis(fault.name(), NemesisPhase::End, detail);
    }

    fn failed(&self, fault: Fault, why: &str) {
        progress(&format!("nemesis: {} FAILED: {why}", fault.name()));
        self.rec
            .nemesis(fault.name(), NemesisPhase::Failed, json!({ "reason": why }));
    }

    async fn set_links(&self, links: &[(&Arc<Proxy>, LinkState)]) -> Vec<String> {
        let mut names = Vec::new();
        for (p, s) in links {
            p.set(*s).await;
            names.push(p.name.clone());
        }
        names
    }

    async fn pass_links(&self, links: &[&Arc<Proxy>]) {
        for p in links {
            p.pass().await;
        }
    }

    /// Injects one fault, waits its duration, undoes it.
    pub async fn execute(&self, p: &Planned) {
        let fault = p.fault;
        let hold = Duration::from_millis(p.duration_ms);
        let pick = p.pick as usize;
        let needs_leader = !matches!(fault, Fault::WorkerKill);
        let leader = if needs_leader {
            match self.stable_leader(Duration::from_secs(15)).await {
                Some(l) => Some(l),
                None => {
                    self.failed(fault, "no stable leader within 15 s");
                    return;
                }
            }
        } else {
            None
        };
        let l = leader.unwrap_or(0);
        let others = self.others(l);
        let follower = others.get(pick % others.len().max(1)).copied().unwrap_or(0);
        let blackhole = LinkState {
            refuse: false,
            forward: Flow::Blackhole,
            backward: Flow::Blackhole,
        };
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let node = if fault == Fault::KillLeader {
                    l
                } else {
                    follower
                };
                let Some(pid) = self.procs().kill_node(node) else {
                    self.failed(fault, &format!("node {node} is not running"));
                    return;
                };
                self.start(fault, json!({"node": node, "pid": pid, "leader": l}));
                tokio::time::sleep(hold).await;
                let restarted = self.procs().start_node(node);
                self.end(
                    fault,
                    json!({"node": node, "restarted_pid": restarted.as_ref().ok(),
                           "error": restarted.err().map(|e| e.to_string())}),
                );
            }
            Fault::KillTwo => {
                let a = self.procs().kill_node(l);
                let b = self.procs().kill_node(follower);
                if a.is_none() || b.is_none() {
                    self.failed(fault, "a node to kill was not running");
                    self.restart_all_nodes();
                    return;
                }
                self.start(fault, json!({"nodes": [l, follower], "leader": l}));
                tokio::time::sleep(hold).await;
                let r1 = self.procs().start_node(follower);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let r2 = self.procs().start_node(l);
                self.end(
                    fault,
                    json!({"nodes": [follower, l], "restarted": r1.is_ok() && r2.is_ok()}),
                );
            }
            Fault::PauseLeader => {
                let Some(pid) = self.procs().pause_node(l, true) else {
                    self.failed(fault, "the leader is not running");
                    return;
                };
                self.start(fault, json!({"node": l, "pid": pid, "ms": p.duration_ms}));
                tokio::time::sleep(hold).await;
                self.procs().pause_node(l, false);
                self.end(fault, json!({"node": l, "pid": pid}));
            }
            Fault::PartitionLeader | Fault::PartitionFollower => {
                let node = if fault == Fault::PartitionLeader {
                    l
                } else {
                    follower
                };
                let links: Vec<&Arc<Proxy>> = self
                    .net
                    .peer
                    .iter()
                    .filter(|((a, b), _)| *a == node || *b == node)
                    .map(|(_, p)| p)
                    .collect();
                let names = self
                    .set_links(&links.iter().map(|p| (*p, blackhole)).collect::<Vec<_>>())
                    .await;
                self.start(
                    fault,
                    json!({"isolated": node, "leader": l, "links": names, "mode": "blackhole"}),
                );
                tokio::time::sleep(hold).await;
                self.pass_links(&links).await;
                self.end(fault, json!({"isolated": node}));
            }
            Fault::PartitionBridge => {
                let bridge = *others.iter().find(|n| **n != follower).unwrap_or(&0);
                let links: Vec<&Arc<Proxy>> = [(l, follower), (follower, l)]
                    .iter()
                    .filter_map(|k| self.net.peer.get(k))
                    .collect();
                let names = self
                    .set_links(&links.iter().map(|p| (*p, blackhole)).collect::<Vec<_>>())
                    .await;
                self.start(
                    fault,
                    json!({"cut": [l, follower], "bridge": bridge, "leader": l, "links": names}),
                );
                tokio::time::sleep(hold).await;
                self.pass_links(&links).await;
                self.end(fault, json!({"cut": [l, follower], "bridge": bridge}));
            }
            Fault::PartitionOneWay => {
                // The leader's requests reach its peers, but their answers and their
                // own requests to the leader are held.
                let mut links: Vec<(&Arc<Proxy>, LinkState)> = Vec::new();
                for ((a, b), p) in &self.net.peer {
                    if *a == l {
                        links.push((
                            p,
                            LinkState {
                                refuse: false,
                                forward: Flow::Pass,
                                backward: Flow::Blackhole,
                            },
                        ));
                    } else if *b == l {
                        links.push((p, blackhole));
                    }
                }
                let names = self.set_links(&links).await;
                self.start(fault, json!({"leader": l, "receives_nothing_on": names}));
                tokio::time::sleep(hold).await;
                self.pass_links(&links.iter().map(|(p, _)| *p).collect::<Vec<_>>())
                    .await;
                self.end(fault, json!({"leader": l}));
            }
            Fault::LeaderWorkersCut => {
                let links: Vec<&Arc<Proxy>> = self
                    .net
                    .worker_to_server
                    .iter()
                    .filter(|((_, n), _)| *n == l)
                    .map(|(_, p)| p)
                    .collect();
                let mut names = self
                    .set_links(&links.iter().map(|p| (*p, blackhole)).collect::<Vec<_>>())
                    .await;
                // The http worker's endpoint: only the connections the leader dials.
                for p in self.net.server_to_worker.values() {
                    p.set_source(l, Some(blackhole));
                    names.push(format!("{} (from n{l} only)", p.name));
                }
                self.start(fault, json!({"leader": l, "links": names}));
                tokio::time::sleep(hold).await;
                self.pass_links(&links).await;
                for p in self.net.server_to_worker.values() {
                    p.set_source(l, None);
                }
                self.end(fault, json!({"leader": l}));
            }
            Fault::ZombieLeader => {
                // The leader loses its peers and one worker; the other worker keeps
                // talking to it, while the new leader gets the first one.
                // The busier worker (most attempts running) stays with the deposed
                // leader: that is where an attempt can outlive its lease.
                let names_w = self.procs().worker_names();
                let running = self.running_by_worker(l).await;
                let keep = names_w
                    .iter()
                    .max_by_key(|w| (running.get(*w).copied().unwrap_or(0), pick % 2 == 0))
                    .cloned()
                    .unwrap_or_default();
                let cut = names_w
                    .iter()
                    .find(|w| **w != keep)
                    .cloned()
                    .unwrap_or_else(|| names_w[pick % names_w.len()].clone());
                let mut links: Vec<&Arc<Proxy>> = self
                    .net
                    .peer
                    .iter()
                    .filter(|((a, b), _)| *a == l || *b == l)
                    .map(|(_, p)| p)
                    .collect();
                links.extend(
                    self.net
                        .worker_to_server
                        .iter()
                        .filter(|((w, n), _)| *n == l && *w == cut)
                        .map(|(_, p)| p),
                );
                let mut names = self
                    .set_links(&links.iter().map(|p| (*p, blackhole)).collect::<Vec<_>>())
                    .await;
                if let Some(p) = self.net.server_to_worker.get(&cut) {
                    p.set_source(l, Some(blackhole));
                    names.push(format!("{} (from n{l} only)", p.name));
                }
                self.start(
                    fault,
                    json!({"leader": l, "worker_cut": cut, "worker_kept": keep,
                           "running": running, "links": names, "mode": "blackhole"}),
                );
                tokio::time::sleep(hold).await;
                self.pass_links(&links).await;
                if let Some(p) = self.net.server_to_worker.get(&cut) {
                    p.set_source(l, None);
                }
                self.end(fault, json!({"leader": l, "worker_cut": cut}));
            }
            Fault::StaleDispatch => {
                // 1. The leader, still leading, dispatches into held links.
                let worker_links: Vec<&Arc<Proxy>> = self
                    .net
                    .worker_to_server
                    .iter()
                    .filter(|((_, n), _)| *n == l)
                    .map(|(_, p)| p)
                    .collect();
                let mut names = self
                    .set_links(
                        &worker_links
                            .iter()
                            .map(|p| (*p, blackhole))
                            .collect::<Vec<_>>(),
                    )
                    .await;
                for p in self.net.server_to_worker.values() {
                    p.set_source(l, Some(blackhole));
                    names.push(format!("{} (from n{l} only)", p.name));
                }
                self.start(
                    fault,
                    json!({"leader": l, "held": names, "raft_cut_after_ms": STALE_LEAD.as_millis() as u64}),
                );
                tokio::time::sleep(STALE_LEAD).await;
                // 2. Then it loses its peers: a new leader takes over the workers.
                let raft: Vec<&Arc<Proxy>> = self
                    .net
                    .peer
                    .iter()
                    .filter(|((a, b), _)| *a == l || *b == l)
                    .map(|(_, p)| p)
                    .collect();
                for p in &raft {
                    p.set(blackhole).await;
                }
                tokio::time::sleep(hold.saturating_sub(STALE_LEAD)).await;
                // 3. Heal: the held dispatches (old term) reach the workers.
                self.pass_links(&raft).await;
                self.pass_links(&worker_links).await;
                for p in self.net.server_to_worker.values() {
                    p.set_source(l, None);
                }
                self.end(fault, json!({"leader": l}));
            }
            Fault::ClientLeaderCut => {
                let Some(proxy) = self.net.client.get(&l) else {
                    self.failed(fault, "no client proxy for the leader");
                    return;
                };
                proxy.refuse().await;
                self.start(
                    fault,
                    json!({"leader": l, "links": [proxy.name], "mode": "refuse"}),
                );
                tokio::time::sleep(hold).await;
                proxy.pass().await;
                self.end(fault, json!({"leader": l}));
            }
            Fault::LinkDelay => {
                let ms = [20u64, 40, 60][pick % 3];
                let links: Vec<&Arc<Proxy>> = self.net.peer.values().collect();
                for p in &links {
                    p.delay(ms).await;
                }
                self.start(fault, json!({"ms_each_way": ms, "links": "all peer links"}));
                tokio::time::sleep(hold).await;
                self.pass_links(&links).await;
                self.end(fault, json!({"ms_each_way": ms}));
            }
            Fault::WorkerKill => {
                let names = self.procs().worker_names();
                let name = names[pick % names.len()].clone();
                let Some(pid) = self.procs().kill_worker(&name) else {
                    self.failed(fault, &format!("worker {name} is not running"));
                    return;
                };
                self.start(fault, json!({"worker": name, "pid": pid}));
                tokio::time::sleep(hold).await;
                let r = self.procs().start_worker(&name);
                self.end(
                    fault,
                    json!({"worker": name, "restarted_pid": r.as_ref().ok(),
                           "error": r.err().map(|e| e.to_string())}),
                );
            }
            Fault::ClockJump => {
                let secs = [5i64, 15, 30][pick % 3];
                let offset_ms = if (pick / 3) % 2 == 0 { secs } else { -secs } * 1000;
                if let Err(e) = self.set_clock(l, offset_ms).await {
                    self.failed(fault, &format!("cannot set node {l}'s clock: {e}"));
                    return;
                }
                self.start(fault, json!({"node": l, "offset_ms": offset_ms}));
                tokio::time::sleep(hold).await;
                let reset = self.set_clock(l, 0).await;
                self.end(
                    fault,
                    json!({"node": l, "offset_ms": 0, "error": reset.err()}),
                );
            }
        }
    }

    /// Attempts running per worker name, as the leader `node` sees them.
    async fn running_by_worker(&self, node: u64) -> BTreeMap<String, u64> {
        let o = self
            .api
            .call(
                self.api_addrs[&node],
                Method::GET,
                "/api/v1/workers",
                None,
                None,
                true,
                Duration::from_secs(1),
            )
            .await;
        let mut out = BTreeMap::new();
        if let Outcome::Ok(v) = o {
            for w in v["workers"].as_array().into_iter().flatten() {
                if let (Some(name), Some(n)) = (w["name"].as_str(), w["running"].as_u64()) {
                    out.insert(name.to_string(), n);
                }
            }
        }
        out
    }

    async fn set_clock(&self, node: u64, offset_ms: i64) -> Result<(), String> {
        self.clocked.lock().expect("clock lock").insert(node);
        let addr = self.api_addrs[&node];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let o = self
                .api
                .call(
                    addr,
                    Method::POST,
                    "/api/v1/debug/clock",
                    Some(&json!({ "offset_ms": offset_ms })),
                    None,
                    false,
                    Duration::from_secs(2),
                )
                .await;
            match o {
                Outcome::Ok(_) => return Ok(()),
                Outcome::Fail(e) | Outcome::Info(e) if Instant::now() > deadline => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn restart_all_nodes(&self) {
        let mut procs = self.procs();
        for id in procs.node_ids() {
            if procs.node_paused(id) {
                procs.pause_node(id, false);
            }
            if !procs.node_running(id) {
                procs.kill_node(id);
                if let Err(e) = procs.start_node(id) {
                    progress(&format!("heal: cannot restart node {id}: {e}"));
                }
            }
        }
    }

    /// Undoes everything: every link passes, every process runs and is not paused,
    /// every shifted clock is back to 0. Faults undo themselves; this is the safety
    /// net before the final phase.
    pub async fn heal_all(&self) {
        self.net.heal_all().await;
        self.restart_all_nodes();
        {
            let mut procs = self.procs();
            for name in procs.worker_names() {
                if let Err(e) = procs.start_worker(&name) {
                    progress(&format!("heal: cannot restart worker {name}: {e}"));
                }
            }
        }
        let clocked: Vec<u64> = self
            .clocked
            .lock()
            .expect("clock lock")
            .iter()
            .copied()
            .collect();
        for node in clocked {
            if let Err(e) = self.set_clock(node, 0).await {
                progress(&format!("heal: cannot reset node {node}'s clock: {e}"));
            }
        }
    }
}
