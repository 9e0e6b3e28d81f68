//! The processes of a run: three `raftjob server` nodes and the recording workers,
//! each reachable only through the harness's proxies ([`crate::proxy`]).
//!
//! Every child is started with `PR_SET_PDEATHSIG = SIGKILL` and killed by PID when
//! the [`Processes`] guard drops, so no run leaves a server behind, even on error,
//! Ctrl-C or a harness crash.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The admin token of every run's cluster.
pub const ADMIN_TOKEN: &str = "jepsen-lite-admin-token-0123456789";
pub const CLUSTER_SECRET: &str = "jepsen-lite-cluster-secret-0123456789";
/// The app the workload's jobs belong to, provisioned at bootstrap.
pub const APP: &str = "jl";
pub const WORKER_TOKEN: &str = "jepsen-lite-worker-token-0123456789";

/// Server flags: Raft and worker timings suitable for a short test on one machine
/// (the values the integration tests use), and small snapshot thresholds so that
/// snapshot build, purge and install happen inside a short run.
pub const SERVER_TUNING: &[&str] = &[
    "--heartbeat-interval-ms",
    "100",
    "--election-timeout-min-ms",
    "250",
    "--election-timeout-max-ms",
    "500",
    "--snapshot-logs-since-last",
    "500",
    "--logs-to-keep",
    "100",
    "--worker-heartbeat-ms",
    "200",
    "--worker-lease-ms",
    "1500",
    "--worker-grace-ms",
    "700",
    "--no-worker-timeout-ms",
    "3000",
];

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {what} ({bin}): {source}")]
    Spawn {
        what: String,
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Hands out free loopback ports below the kernel's ephemeral range (an ephemeral
/// port can be taken by an outgoing connection before a server binds it), each once
/// per harness process, checked free by binding.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let start = 15000 + (std::process::id() % 1700) as u16 * 10;
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = if port >= 32000 {
            15000 + port % 17000
        } else {
            port
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("bound address");
        }
    }
}

/// One server's real listen addresses and files.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub api: SocketAddr,
    pub cluster: SocketAddr,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Flags beyond the common ones: `--peer-dial`, `--advertise-transport`.
    pub extra: Vec<String>,
}

/// One recording worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub protocol: String,
    /// The proxies this worker dials for the servers' transport ports.
    pub servers: Vec<SocketAddr>,
    /// http protocol: where the worker listens, and the proxy servers dial instead.
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub log: PathBuf,
    /// `DIR/workers/`; each incarnation records into `NAME.N.jsonl`.
    pub record_dir: PathBuf,
}

/// The binary and environment every child runs with.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    /// `RAFTJOB_PLANTED_BUG`, for the planted-bug build.
    pub planted_bug: Option<String>,
}

struct Running {
    child: Child,
    paused: bool,
}

/// Owns every child process; dropping it kills them all by PID.
pub struct Processes {
    bin: Binary,
    members: String,
    nodes: BTreeMap<u64, (NodeSpec, Option<Running>)>,
    workers: BTreeMap<String, (WorkerSpec, Option<Running>, u32)>,
}

fn open_log(path: &Path) -> Result<std::fs::File, ClusterError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ClusterError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn spawn(mut cmd: Command, what: &str, bin: &Binary, log: &Path) -> Result<Child, ClusterError> {
    let out = open_log(log)?;
    let err = out.try_clone().map_err(|source| ClusterError::Io {
        path: log.to_path_buf(),
        source,
    })?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_remove("RAFTJOB_CONFIG")
        .env_remove("RAFTJOB_WORKER_CONFIG")
        .env("RAFTJOB_LOG", "info,openraft=warn");
    match &bin.planted_bug {
        Some(b) => cmd.env("RAFTJOB_PLANTED_BUG", b),
        None => cmd.env_remove("RAFTJOB_PLANTED_BUG"),
    };
    // SAFETY: prctl is async-signal-safe; it only marks the child to be killed when
    // the harness thread that spawned it dies, so a crashed harness leaves nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| ClusterError::Spawn {
        what: what.to_string(),
        bin: bin.path.clone(),
        source,
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sending a signal to a child we own (and have not reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl Processes {
    pub fn new(bin: Binary, nodes: Vec<NodeSpec>, workers: Vec<WorkerSpec>) -> Self {
        let members = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.cluster))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            bin,
            members,
            nodes: nodes.into_iter().map(|n| (n.id, (n, None))).collect(),
            workers: workers
                .into_iter()
                .map(|w| (w.name.clone(), (w, None, 0)))
                .collect(),
        }
    }

    /// The PIDs of the running nodes.
    pub fn node_pids(&self) -> Vec<(u64, u32)> {
        self.nodes
            .iter()
            .filter_map(|(id, (_, r))| r.as_ref().map(|r| (*id, r.child.id())))
            .collect()
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn worker_names(&self) -> Vec<String> {
        self.workers.keys().cloned().collect()
    }

    pub fn start_node(&mut self, id: u64) -> Result<u32, ClusterError> {
        let bin = self.bin.clone();
        let members = self.members.clone();
        let (spec, running) = self.nodes.get_mut(&id).expect("known node");
        if let Some(r) = running {
            return Ok(r.child.id());
        }
        let mut cmd = Command::new(&bin.path);
        cmd.arg("server")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--api-addr", &spec.api.to_string()])
            .args(["--cluster-addr", &spec.cluster.to_string()])
            .args(["--transport", &format!("http={},ws={}", spec.http, spec.ws)])
            .args(["--initial-members", &members])
            .args(["--cluster-secret", CLUSTER_SECRET])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--bootstrap-app", &format!("{APP}:{WORKER_TOKEN}")])
            .arg("--test-clock-control")
            .args(SERVER_TUNING)
            .args(&spec.extra);
        let child = spawn(cmd, &format!("node {id}"), &bin, &spec.log)?;
        let pid = child.id();
        *running = Some(Running {
            child,
            paused: false,
        });
        Ok(pid)
    }

    /// SIGKILL and reap; returns the PID it had.
    pub fn kill_node(&mut self, id: u64) -> Option<u32> {
        let (_, running) = self.nodes.get_mut(&id)?;
        let mut r = running.take()?;
        let pid = r.child.id();
        let _ = r.child.kill();
        let _ = r.child.wait();
        Some(pid)
    }

    pub fn node_running(&mut self, id: u64) -> bool {
        match self.nodes.get_mut(&id) {
            Some((_, Some(r))) => r.child.try_wait().ok().flatten().is_none(),
            _ => false,
        }
    }

    /// Nodes that exited by themselves (a crash), with their exit status.
    pub fn crashed_nodes(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (id, (_, running)) in self.nodes.iter_mut() {
            if let Some(r) = running {
                if let Ok(Some(status)) = r.child.try_wait() {
                    out.push((*id, status.to_string()));
                    *running = None;
                }
            }
        }
        out
    }

    /// Workers that exited by themselves, with their exit status.
    pub fn crashed_workers(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, (_, running, _)) in self.workers.iter_mut() {
            if let Some(r) = running {
                if let Ok(Some(status)) = r.child.try_wait() {
                    out.push((name.clone(), status.to_string()));
                    *running = None;
                }
            }
        }
        out
    }

    pub fn node_paused(&self, id: u64) -> bool {
        matches!(self.nodes.get(&id), Some((_, Some(r))) if r.paused)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`); returns the PID, if running.
    pub fn pause_node(&mut self, id: u64, pause: bool) -> Option<u32> {
        let (_, Some(r)) = self.nodes.get_mut(&id)? else {
            return None;
        };
        let pid = r.child.id();
        signal(pid, if pause { libc::SIGSTOP } else { libc::SIGCONT });
        r.paused = pause;
        Some(pid)
    }

    pub fn start_worker(&mut self, name: &str) -> Result<u32, ClusterError> {
        let bin = self.bin.clone();
        let (spec, running, incarnation) = self.workers.get_mut(name).expect("known worker");
        if let Some(r) = running {
            return Ok(r.child.id());
        }
        *incarnation += 1;
        let servers = spec
            .servers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(&bin.path);
        cmd.arg("worker")
            .args(["--app", APP])
            .args(["--token", WORKER_TOKEN])
            .args(["--protocol", &spec.protocol])
            .args(["--name", &spec.name])
            .args(["--servers", &servers])
            .arg("--record")
            .arg(
                spec.record_dir
                    .join(format!("{}.{}.jsonl", spec.name, incarnation)),
            );
        if let Some(l) = spec.listen {
            cmd.args(["--listen", &l.to_string()]);
        }
        if let Some(a) = spec.advertise {
            cmd.args(["--advertise", &a.to_string()]);
        }
        let child = spawn(cmd, &format!("worker {name}"), &bin, &spec.log)?;
        let pid = child.id();
        *running = Some(Running {
            child,
            paused: false,
        });
        Ok(pid)
    }

    pub fn kill_worker(&mut self, name: &str) -> Option<u32> {
        let (_, running, _) = self.workers.get_mut(name)?;
        let mut r = running.take()?;
        let pid = r.child.id();
        let _ = r.child.kill();
        let _ = r.child.wait();
        Some(pid)
    }

    /// Kills everything (SIGKILL by PID, then reap). Idempotent.
    pub fn kill_all(&mut self) {
        let names = self.worker_names();
        for name in names {
            self.kill_worker(&name);
        }
        for id in self.node_ids() {
            self.kill_node(id);
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The inode of the TCP socket whose local address is `local` and whose remote port
/// is `remote_port`, from `/proc/net/tcp` (loopback IPv4).
fn socket_inode(local: SocketAddr, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        if port_of(f[1]) == Some(local.port()) && port_of(f[2]) == Some(remote_port) {
            return f[9].parse().ok().filter(|i| *i != 0);
        }
    }
    None
}

/// Which of `pids` owns the dialing end of a connection that `listen_port`
/// accepted from `peer`: how a proxy that several servers dial tells them apart
/// (all of them come from 127.0.0.1).
pub fn dialer_pid(peer: SocketAddr, listen_port: u16, pids: &[u32]) -> Option<u32> {
    let inode = socket_inode(peer, listen_port)?;
    let needle = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_that_dialed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let me = std::process::id();
        assert_eq!(dialer_pid(peer, port, &[1, me]), Some(me));
        assert_eq!(dialer_pid(peer, port, &[1]), None);
    }
}
