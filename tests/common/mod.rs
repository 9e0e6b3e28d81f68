//! A harness that runs real `raftjob server` processes on OS-assigned loopback ports
//! and waits by polling with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftjob::client::Client;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const SECRET: &str = "test-cluster-secret-0123456789";

/// Picks a free loopback port. Ports come from below the kernel's ephemeral range
/// (32768 and up), checked free by binding: a port the kernel hands out for port 0
/// can be taken by an outgoing connection before the server binds it, which made
/// nodes fail with "address in use". Each port is handed out once per test process.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Spread concurrent test processes over the range.
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
            return l.local_addr().unwrap();
        }
    }
}

pub struct TestNode {
    pub id: u64,
    pub api: SocketAddr,
    pub cluster: SocketAddr,
    pub transports: BTreeMap<String, SocketAddr>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    pub members: String,
    child: Option<Child>,
}

impl TestNode {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let transports: Vec<String> = self
            .transports
            .iter()
            .map(|(p, a)| format!("{p}={a}"))
            .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftjob"));
        cmd.arg("server")
            .args(["--node-id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--api-addr", &self.api.to_string()])
            .args(["--cluster-addr", &self.cluster.to_string()])
            .args(["--initial-members", &self.members])
            .args(["--cluster-secret", SECRET])
            .args(["--admin-token", TOKEN])
            .args(&self.extra_args)
            .env("RAFTJOB_LOG", "info,openraft=warn")
            .env_remove("RAFTJOB_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !transports.is_empty() {
            cmd.args(["--transport", &transports.join(",")]);
        }
        self.child = Some(cmd.spawn().expect("raftjob starts"));
    }

    /// SIGKILL: no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_sigterm(c.id());
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

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn client(&self) -> Client {
        Client::new([self.api.to_string()], TOKEN)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes with both worker protocols enabled.
    pub fn start(n: u64) -> Self {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: u64, extra_args: &[&str]) -> Self {
        let mut c = Self::new(n, extra_args);
        for node in &mut c.nodes {
            node.start();
        }
        c
    }

    pub fn new(n: u64, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clusters: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let members = clusters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|id| TestNode {
                id,
                api: free_addr(),
                cluster: clusters[(id - 1) as usize],
                transports: BTreeMap::from([
                    ("http".to_string(), free_addr()),
                    ("ws".to_string(), free_addr()),
                ]),
                data_dir: dir.path().join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                members: members.clone(),
                child: None,
            })
            .collect();
        Self { nodes, dir }
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("node exists")
    }

    /// A client that knows every running node's api address.
    pub fn client(&self) -> Client {
        Client::new(self.nodes.iter().map(|n| n.api.to_string()), TOKEN)
    }

    pub fn dump_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("\n--- node {} ---\n{}\n", n.id, tail(&n.log_text(), 60)))
            .collect()
    }

    /// Waits until every listed node answers /readyz with 200 and they agree on a leader.
    pub async fn wait_ready(&self, ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            let mut leaders = Vec::new();
            for n in self.nodes.iter().filter(|n| ids.contains(&n.id)) {
                if let Ok(r) = http
                    .get(format!("http://{}/readyz", n.api))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                {
                    if r.status().is_success() {
                        let v: Value = r.json().await.unwrap_or_default();
                        leaders.push(v["leader_id"].as_u64());
                    }
                }
            }
            if leaders.len() == ids.len() && leaders.windows(2).all(|w| w[0] == w[1]) {
                if let Some(Some(l)) = leaders.first() {
                    return *l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {timeout:?}\n{}",
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn running_ids(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then_some(n.id))
            .collect()
    }

    pub async fn leader(&mut self) -> u64 {
        let ids = self.running_ids();
        self.wait_ready(&ids, Duration::from_secs(30)).await
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn shell_job(app: &str, name: &str) -> Value {
    json!({
        "app": app,
        "name": name,
        "schedule": {"type": "cron", "expr": "0 0 * * * *", "timezone": "UTC"},
        "processor": {"type": "shell", "command": "echo hi"},
    })
}

/// Server flags that make worker timing fast enough for tests.
pub const FAST_WORKERS: &[&str] = &[
    "--worker-heartbeat-ms",
    "200",
    "--worker-lease-ms",
    "1500",
    "--worker-grace-ms",
    "700",
    "--no-worker-timeout-ms",
    "1500",
];

/// A `raftjob worker` (or example) process.
pub struct TestWorker {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl TestWorker {
    pub fn start_bin(
        bin: &std::path::Path,
        args: &[String],
        name: &str,
        dir: &std::path::Path,
    ) -> Self {
        let log = dir.join(format!("worker-{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("RAFTJOB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("worker starts");
        Self {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    /// Worker flags for `app` over `protocol` (spelled as given), with every server's
    /// transport address for that protocol unless `extra` names `--servers` itself.
    fn args(
        c: &TestCluster,
        app: &str,
        token: &str,
        protocol: &str,
        name: &str,
        extra: &[&str],
    ) -> Vec<String> {
        let proto = protocol.to_ascii_lowercase();
        let servers: Vec<String> = c
            .nodes
            .iter()
            .filter_map(|n| n.transports.get(&proto))
            .map(|a| a.to_string())
            .collect();
        let servers = servers.join(",");
        let mut flags = vec![
            ("--app", app),
            ("--token", token),
            ("--protocol", protocol),
            ("--name", name),
        ];
        if !extra.contains(&"--servers") {
            flags.push(("--servers", &servers));
        }
        let mut args: Vec<String> = flags
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `raftjob worker`.
    pub fn start(
        c: &TestCluster,
        app: &str,
        token: &str,
        protocol: &str,
        name: &str,
        extra: &[&str],
    ) -> Self {
        let mut args = vec!["worker".to_string()];
        args.extend(Self::args(c, app, token, protocol, name, extra));
        Self::start_bin(
            std::path::Path::new(env!("CARGO_BIN_EXE_raftjob")),
            &args,
            name,
            c.dir.path(),
        )
    }

    /// `examples/custom_worker` (custom processors `noop` and `greet`), built by
    /// `cargo test --all-targets` or `cargo build --examples`.
    pub fn start_example(
        c: &TestCluster,
        app: &str,
        token: &str,
        protocol: &str,
        name: &str,
        extra: &[&str],
    ) -> Self {
        let example = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/custom_worker");
        assert!(
            example.exists(),
            "the example worker is not built: run `make test` (it builds it) or `cargo build --examples` first: {}",
            example.display()
        );
        Self::start_bin(
            &example,
            &Self::args(c, app, token, protocol, name, extra),
            name,
            c.dir.path(),
        )
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean shutdown), then waits up to `timeout` for the exit; returns
    /// its exit code, or `None` if it did not exit (it is then killed).
    pub fn stop(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.as_ref()?.id();
        unsafe_sigterm(pid);
        let code = self.wait_exit(timeout);
        if code.is_none() {
            self.kill();
        }
        code
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates an app and returns its worker token.
pub async fn app_token(c: &TestCluster, app: &str) -> String {
    c.client().create_app(app).await.unwrap()["worker_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `n` workers of `app` are live.
pub async fn wait_workers_live(c: &TestCluster, app: &str, n: usize) {
    let client = c.client();
    eventually(
        Duration::from_secs(30),
        &format!("{n} live workers for {app}"),
        || {
            let client = client.clone();
            let path = format!("/api/v1/workers?app={app}");
            async move {
                let v = client.get(&path).await.ok()?;
                let live = v["workers"]
                    .as_array()?
                    .iter()
                    .filter(|w| w["state"] == "live")
                    .count();
                (live >= n).then_some(())
            }
        },
    )
    .await;
}

/// Runs a job now and returns the instance id.
pub async fn run_job(c: &TestCluster, job_id: u64, body: Value) -> u64 {
    let v = c
        .client()
        .post(&format!("/api/v1/jobs/{job_id}/run"), &body)
        .await
        .unwrap();
    v["instance_id"].as_u64().unwrap()
}

/// Waits until the instance reaches a terminal state and returns it.
pub async fn wait_terminal(c: &TestCluster, id: u64, timeout: Duration) -> Value {
    let client = c.client();
    eventually(timeout, &format!("instance {id} to finish"), || {
        let client = client.clone();
        async move {
            let v = client.get(&format!("/api/v1/instances/{id}")).await.ok()?;
            let s = v["status"].as_str()?.to_string();
            ["succeeded", "failed", "stopped", "canceled"]
                .contains(&s.as_str())
                .then_some(v)
        }
    })
    .await
}

/// Waits until the instance is in `status` and returns it.
pub async fn wait_status(c: &TestCluster, id: u64, status: &str, timeout: Duration) -> Value {
    let client = c.client();
    eventually(timeout, &format!("instance {id} to be {status}"), || {
        let client = client.clone();
        async move {
            let v = client.get(&format!("/api/v1/instances/{id}")).await.ok()?;
            (v["status"] == status).then_some(v)
        }
    })
    .await
}

pub fn api_job(app: &str, name: &str, processor: Value) -> Value {
    json!({"app": app, "name": name, "schedule": {"type": "api"}, "processor": processor})
}

/// A TCP proxy the test controls, to cut a link without touching the processes.
pub struct Proxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<(bool, tokio_util::sync::CancellationToken)>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let addr = free_addr();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new((
            false,
            tokio_util::sync::CancellationToken::new(),
        )));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let (cut, token) = st.lock().unwrap().clone();
                if cut {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        let mut g = self.state.lock().unwrap();
        g.0 = true;
        g.1.cancel();
        g.1 = tokio_util::sync::CancellationToken::new();
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

/// Whether a process is gone or a zombie (killed, waiting to be reaped by init).
pub fn process_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("Z")
        }
    }
}

/// The workers of `app` as `GET /api/v1/workers?app=` lists them (`None` if the
/// request failed).
pub async fn list_workers(c: &TestCluster, app: &str) -> Option<Vec<Value>> {
    let v = c
        .client()
        .get(&format!("/api/v1/workers?app={app}"))
        .await
        .ok()?;
    v["workers"].as_array().cloned()
}

/// The names of the workers of `app` that are listed (`None` if the request failed).
pub async fn worker_names(c: &TestCluster, app: &str) -> Option<Vec<String>> {
    Some(
        list_workers(c, app)
            .await?
            .iter()
            .filter_map(|w| w["name"].as_str().map(String::from))
            .collect(),
    )
}

/// What one `raftjob` CLI run printed, and its exit code.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "the command failed: {self:?}");
        self
    }
}

/// Runs `raftjob <args>` with no `RAFTJOB_*` variables from the test's environment.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftjob"));
    cmd.args(args)
        .env_remove("RAFTJOB_SERVER")
        .env_remove("RAFTJOB_ADMIN_TOKEN")
        .env_remove("RAFTJOB_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the raftjob binary runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every node's api address, comma separated.
pub fn servers(c: &TestCluster) -> String {
    c.nodes
        .iter()
        .map(|n| n.api.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl TestNode {
    /// SIGTERM, then waits up to `timeout` for the exit; returns its exit code, or
    /// `None` if it did not exit (it is then killed). Unlike [`TestNode::stop`], the
    /// caller learns whether the shutdown was clean.
    pub fn stop_status(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_sigterm(c.id());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

/// Copies the directory `from` into `to` recursively (files, directories and
/// symlinks), creating `to`; fails if `to` already holds a file of the same name.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            if dst.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} already exists", dst.display()),
                ));
            }
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
