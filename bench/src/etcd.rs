//! A three-member etcd cluster on loopback, driven through its JSON gateway
//! (`/v3/kv/put`, `/v3/maintenance/status`), durable (etcd fsyncs by default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};
use base64::Engine;
use serde_json::Value;

use crate::sys::{self, free_addr, Proc};

/// Exit code when etcd is missing and cannot be installed (the quick test skips on it).
pub const EXIT_NO_ETCD: i32 = 3;

/// Finds `etcd`; installs Debian's `etcd-server etcd-client` when missing and root.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(p) = sys::which("etcd") {
        return Ok(p);
    }
    if !sys::is_root() {
        eprintln!(
            "raftjob-bench: etcd is not installed and this is not root: install Debian's \
             packages with `sudo apt-get install etcd-server etcd-client`, then run again"
        );
        std::process::exit(EXIT_NO_ETCD);
    }
    println!(
        "==> etcd is not installed: installing Debian's etcd-server and etcd-client with apt-get"
    );
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "etcd-server",
                "etcd-client",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let ok = install().is_ok_and(|s| s.success())
        || (Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|s| s.success())
            && install().is_ok_and(|s| s.success()));
    match sys::which("etcd") {
        Some(p) if ok => {
            println!("==> installed {}", p.display());
            Ok(p)
        }
        _ => {
            eprintln!(
                "raftjob-bench: could not install etcd: `apt-get install etcd-server etcd-client` failed"
            );
            std::process::exit(EXIT_NO_ETCD);
        }
    }
}

/// `etcd --version`'s version number.
pub fn version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                l.strip_prefix("etcd Version:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

pub struct EtcdMember {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
    /// The member id etcd gave it (learned from its status).
    pub member_id: Option<u64>,
}

/// A status answer, the fields the bench needs.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub member_id: u64,
    pub leader: u64,
    pub raft_index: u64,
    pub applied_index: u64,
}

pub struct EtcdCluster {
    bin: PathBuf,
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    http: reqwest::Client,
}

/// A uint64 from etcd's JSON gateway, which writes 64-bit numbers as strings.
fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

pub fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The body of a put through the JSON gateway.
pub fn put_body(key: &str, value: &[u8]) -> String {
    format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        b64(key.as_bytes()),
        b64(value)
    )
}

impl EtcdCluster {
    /// Starts three members with data under `dir` and waits for a leader.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let members: Vec<EtcdMember> = (1..=3)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client: free_addr(),
                peer: free_addr(),
                data_dir: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                proc: None,
                member_id: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Self {
            bin: bin.to_path_buf(),
            members,
            initial_cluster,
            token: format!("bench-{}-{}", std::process::id(), sys::now_ms()),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for i in 0..3 {
            c.start_member(i)?;
        }
        c.wait_ready(Duration::from_secs(60)).await?;
        Ok(c)
    }

    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // 8 GiB: a million keys must not hit the 2 GiB default quota's alarm.
            .args(["--quota-backend-bytes", "8589934592"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        let p = Proc::spawn(&format!("etcd {}", m.name), cmd, &m.log)?;
        self.members[i].proc = Some(p);
        Ok(())
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].proc.as_ref().and_then(|p| p.pid())
    }

    pub fn base(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    pub async fn status(&self, i: usize, timeout: Duration) -> Option<Status> {
        let r = self
            .http
            .post(format!("{}/v3/maintenance/status", self.base(i)))
            .body("{}")
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        let raft_index = u64_of(&v["raftIndex"]);
        Some(Status {
            member_id: u64_of(&v["header"]["member_id"]),
            leader: u64_of(&v["leader"]),
            raft_index,
            applied_index: match u64_of(&v["raftAppliedIndex"]) {
                0 => raft_index,
                a => a,
            },
        })
    }

    /// The index of the member whose id is `member_id`.
    pub fn index_of(&self, member_id: u64) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.member_id == Some(member_id))
    }

    /// Waits until every running member reports the same leader; returns its index.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<usize> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].proc.is_some())
            .collect();
        let this = &*self;
        let statuses = sys::poll(
            timeout,
            Duration::from_millis(50),
            "etcd members to agree on a leader",
            || {
                let running = running.clone();
                async move {
                    let mut st = Vec::new();
                    for i in running {
                        let s = this.status(i, Duration::from_secs(1)).await?;
                        st.push((i, s));
                    }
                    let leader = st[0].1.leader;
                    (leader != 0 && st.iter().all(|(_, s)| s.leader == leader)).then_some(st)
                }
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", self.log_tails()))?;
        for (i, s) in &statuses {
            self.members[*i].member_id = Some(s.member_id);
        }
        let leader = statuses[0].1.leader;
        self.index_of(leader)
            .ok_or_else(|| anyhow!("etcd leader {leader:x} is not a member the bench knows"))
    }

    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let t = std::fs::read_to_string(&m.log).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!(
                    "--- etcd {} ({}) ---\n{}\n",
                    m.name,
                    m.log.display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect()
    }

    pub fn shutdown(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill();
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
