//! A three-node raftjob cluster on loopback (`raftjob server` processes), and the no-op
//! worker processes the dispatch, lateness and footprint sections need.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::sys::{self, free_addr, Proc};

pub const TOKEN: &str = "bench-admin-token-0123456789";
const SECRET: &str = "bench-cluster-secret-0123456789";

pub struct RjNode {
    pub id: u64,
    pub api: SocketAddr,
    pub cluster: SocketAddr,
    pub transports: BTreeMap<&'static str, SocketAddr>,
    pub data_dir: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

pub struct RjCluster {
    bin: PathBuf,
    pub dir: PathBuf,
    pub nodes: Vec<RjNode>,
    members: String,
    extra: Vec<String>,
    http: reqwest::Client,
}

impl RjCluster {
    /// Starts three nodes with data under `dir` (one data dir each, same disk) and
    /// waits until they agree on a leader.
    pub async fn start(bin: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let clusters: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let members = clusters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=3u64)
            .map(|id| RjNode {
                id,
                api: free_addr(),
                cluster: clusters[(id - 1) as usize],
                transports: BTreeMap::from([("http", free_addr()), ("ws", free_addr())]),
                data_dir: dir.join(format!("node{id}")),
                log: dir.join(format!("node{id}.log")),
                proc: None,
            })
            .collect();
        let mut c = Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes,
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(15))
                .build()?,
        };
        for id in 1..=3 {
            c.start_node(id)?;
        }
        c.wait_ready(Duration::from_secs(60)).await?;
        Ok(c)
    }

    fn node(&self, id: u64) -> &RjNode {
        &self.nodes[(id - 1) as usize]
    }

    pub fn start_node(&mut self, id: u64) -> Result<()> {
        let n = &self.nodes[(id - 1) as usize];
        let transports: Vec<String> = n
            .transports
            .iter()
            .map(|(p, a)| format!("{p}={a}"))
            .collect();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--api-addr", &n.api.to_string()])
            .args(["--cluster-addr", &n.cluster.to_string()])
            .args(["--initial-members", &self.members])
            .args(["--cluster-secret", SECRET])
            .args(["--admin-token", TOKEN])
            .args(["--transport", &transports.join(",")])
            .args(&self.extra)
            // Warnings only: per-request info logging would be load the bench adds.
            .env("RAFTJOB_LOG", "warn")
            .env_remove("RAFTJOB_CONFIG");
        let p = Proc::spawn(&format!("raftjob node {id}"), cmd, &n.log)?;
        self.nodes[(id - 1) as usize].proc = Some(p);
        Ok(())
    }

    /// SIGKILL a node (no clean shutdown).
    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.nodes[(id - 1) as usize].proc.take() {
            p.kill();
        }
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).proc.as_ref().and_then(|p| p.pid())
    }

    pub fn base(&self, id: u64) -> String {
        format!("http://{}", self.node(id).api)
    }

    pub fn transport_addrs(&self, proto: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.transports.get(proto))
            .map(|a| a.to_string())
            .collect()
    }

    /// The leader as `id`'s `/readyz` reports it (`None` when not ready).
    pub async fn leader_seen_by(&self, id: u64, timeout: Duration) -> Option<u64> {
        let r = self
            .http
            .get(format!("{}/readyz", self.base(id)))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json::<Value>().await.ok()?["leader_id"].as_u64()
    }

    /// Waits until every running node is ready and they agree on a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<u64> {
        let ids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.id)
            .collect();
        sys::poll(
            timeout,
            Duration::from_millis(50),
            "raftjob nodes to agree on a leader",
            || async {
                let mut seen = Vec::new();
                for id in &ids {
                    seen.push(self.leader_seen_by(*id, Duration::from_secs(1)).await?);
                }
                seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0])
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", self.log_tails()))
    }

    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let t = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!(
                    "--- raftjob node {} ({}) ---\n{}\n",
                    n.id,
                    n.log.display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect()
    }

    /// An authenticated request to node `id`; returns the JSON body of a 2xx answer.
    pub async fn call(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base(id)))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, id: u64, path: &str) -> Result<Value> {
        self.call(id, reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, id: u64, path: &str, body: &Value) -> Result<Value> {
        self.call(id, reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates an app and returns its worker token.
    pub async fn create_app(&self, via: u64, name: &str) -> Result<String> {
        let v = self
            .post(via, "/api/v1/apps", &json!({ "name": name }))
            .await?;
        v["worker_token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no worker_token in {v}"))
    }

    /// Waits until `n` workers of `app` are live.
    pub async fn wait_workers_live(&self, via: u64, app: &str, n: usize) -> Result<()> {
        sys::poll(
            Duration::from_secs(30),
            Duration::from_millis(100),
            &format!("{n} live workers of {app}"),
            || async move {
                let v = self
                    .get(via, &format!("/api/v1/workers?app={app}"))
                    .await
                    .ok()?;
                let live = v["workers"]
                    .as_array()?
                    .iter()
                    .filter(|w| w["state"] == "live")
                    .count();
                (live >= n).then_some(())
            },
        )
        .await
    }

    /// The `applied_index` node `id` reports.
    pub async fn applied_index(&self, id: u64) -> Option<u64> {
        self.get(id, "/api/v1/cluster").await.ok()?["applied_index"].as_u64()
    }

    /// Starts `count` no-op worker processes (this binary's `noop-worker`) for `app`.
    pub fn start_workers(
        &self,
        app: &str,
        token: &str,
        proto: &str,
        count: usize,
        max_concurrency: u32,
    ) -> Result<Vec<Proc>> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let servers = self.transport_addrs(proto).join(",");
        (0..count)
            .map(|i| {
                let name = format!("{app}-{proto}-{i}");
                let mut cmd = Command::new(&exe);
                cmd.arg("noop-worker")
                    .args(["--app", app, "--token", token, "--protocol", proto])
                    .args(["--servers", &servers, "--name", &name])
                    .args(["--max-concurrency", &max_concurrency.to_string()])
                    .env("RAFTJOB_LOG", "warn");
                Proc::spawn(
                    &format!("worker {name}"),
                    cmd,
                    &self.dir.join(format!("worker-{name}.log")),
                )
            })
            .collect()
    }

    /// Kills every node (also done on drop).
    pub fn shutdown(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill();
            }
        }
    }
}

impl Drop for RjCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The body of a job creation the write benchmark sends (and whose size the etcd
/// puts match).
pub fn job_body(app: &str, name: &str) -> String {
    format!(
        r#"{{"app":"{app}","name":"{name}","schedule":{{"type":"api"}},"processor":{{"type":"custom","name":"noop"}}}}"#
    )
}
