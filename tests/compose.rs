//! The container deployment (issue #5): `cluster/docker-compose.yml` on the image that
//! `docker/build-image.sh` (`make image`) builds, and the bootstrap app provisioning it
//! relies on.
//!
//! - `bootstrap_apps_are_created_once_with_their_configured_tokens` runs without
//!   Docker: one server process with `RAFTJOB_BOOTSTRAP_APPS`, a worker that registers
//!   with the configured token, and a restart that must not create the app again.
//! - `compose_cluster_runs_jobs_and_survives_a_leader_stop` needs a Docker engine and
//!   Compose (and root); without them it prints `SKIPPED (no Docker engine): <name>` and
//!   passes. It builds the image when it is missing or older than the binary, brings the
//!   compose project up under a unique name with a generated env file, runs a shell job
//!   on the `ws` worker and an http job on the `http` worker, stops the leader's
//!   container and sees a new leader and jobs still running, then starts it again and
//!   sees it rejoin. The project is taken down
//!   (`down -v`) by a guard, also when the test fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_raftjob");
const ADMIN: &str = "compose-test-admin-token-0123456789";
const SECRET: &str = "compose-test-cluster-secret-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A minimal admin client of one api address.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: impl std::fmt::Display) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
        } else {
            Err(format!("{status}: {text}"))
        }
    }

    async fn ready(&self) -> bool {
        match self.http.get(format!("{}/readyz", self.base)).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    async fn app_names(&self) -> Option<Vec<String>> {
        let v = self.get("/api/v1/apps").await?;
        Some(
            v["apps"]
                .as_array()?
                .iter()
                .filter_map(|a| a["name"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Creates an API-only job and returns its id.
    async fn create_job(&self, spec: Value) -> u64 {
        let job = self.post("/api/v1/jobs", &spec).await.expect("job created");
        job["id"].as_u64().expect("job id")
    }

    async fn run(&self, job: u64) -> Result<u64, String> {
        let v = self
            .post(&format!("/api/v1/jobs/{job}/run"), &Value::Null)
            .await?;
        v["instance_id"].as_u64().ok_or_else(|| v.to_string())
    }

    /// Waits until the instance is final and returns it; panics unless it succeeded.
    async fn succeeded(&self, instance: u64, timeout: Duration) -> Value {
        let what = format!("instance {instance} to finish");
        let inst = eventually(timeout, &what, || async {
            let v = self.get(&format!("/api/v1/instances/{instance}")).await?;
            matches!(
                v["status"].as_str(),
                Some("succeeded" | "failed" | "stopped" | "canceled")
            )
            .then_some(v)
        })
        .await;
        assert_eq!(inst["status"], "succeeded", "instance {instance}: {inst}");
        inst
    }
}

/// Kills the child processes of a test when it ends, even on failure.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct ServerProc {
    api: SocketAddr,
    cluster: SocketAddr,
    ws: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl ServerProc {
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .args(["--node-id", "1"])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--api-addr", &self.api.to_string()])
            .args(["--cluster-addr", &self.cluster.to_string()])
            .args(["--initial-members", &format!("1={}", self.cluster)])
            .args(["--transport", &format!("ws={}", self.ws)])
            .args(["--cluster-secret", SECRET])
            .args(["--admin-token", ADMIN])
            .env("RAFTJOB_LOG", "info,openraft=warn")
            .env_remove("RAFTJOB_CONFIG")
            .env_remove("RAFTJOB_BOOTSTRAP_APPS")
            .stdout(Stdio::null());
        cmd
    }

    fn spawn(&self, cmd: &mut Command) -> Child {
        let log = std::fs::File::create(&self.log).unwrap();
        cmd.stderr(log).spawn().expect("raftjob server starts")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_apps_are_created_once_with_their_configured_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let server = ServerProc {
        api: at(free_port()),
        cluster: at(free_port()),
        ws: at(free_port()),
        data: dir.path().join("data"),
        log: dir.path().join("server-1.log"),
    };
    let api = Api::new(server.api);
    let token = format!("demo-token-{}", uuid::Uuid::new_v4().simple());
    let mut procs = Procs(Vec::new());

    // A token shorter than 16 characters is a configuration error naming the key.
    let out = server
        .command()
        .args(["--bootstrap-app", "demo:short"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bootstrap_apps.demo.worker_token") && !stderr.contains("short"),
        "{stderr}"
    );

    // First start: the app comes from the environment.
    let mut cmd = server.command();
    cmd.env("RAFTJOB_BOOTSTRAP_APPS", format!("demo:{token}"));
    procs.0.push(server.spawn(&mut cmd));
    let apps = eventually(Duration::from_secs(30), "the bootstrap app", || async {
        api.app_names()
            .await
            .filter(|a| a.iter().any(|n| n == "demo"))
    })
    .await;
    assert_eq!(apps, vec!["demo".to_string()]);

    // A worker registers with the configured token (only its hash is stored).
    let worker = Command::new(BIN)
        .args([
            "worker",
            "--app",
            "demo",
            "--protocol",
            "ws",
            "--name",
            "w1",
        ])
        .args(["--servers", &server.ws.to_string()])
        .env("RAFTJOB_WORKER_TOKEN", &token)
        .env("RAFTJOB_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("raftjob worker starts");
    procs.0.push(worker);
    eventually(
        Duration::from_secs(30),
        "worker demo/w1 registered",
        || async {
            let v = api.get("/api/v1/workers").await?;
            v.to_string().contains("demo/w1").then_some(())
        },
    )
    .await;
    let job = api
        .create_job(
            json!({"app": "demo", "name": "echo", "schedule": {"type": "api"},
            "processor": {"type": "shell", "command": "echo provisioned"}}),
        )
        .await;
    let inst = api.run(job).await.unwrap();
    api.succeeded(inst, Duration::from_secs(30)).await;

    // Restart with the flag (which replaces the environment's list): `demo` exists and
    // is left alone, even with another token; `second` is created.
    let mut first = procs.0.remove(0);
    stop(&mut first);
    assert!(
        server
            .log_text()
            .contains("Created a bootstrap app with its configured worker token. app=demo"),
        "{}",
        server.log_text()
    );
    let mut cmd = server.command();
    cmd.env("RAFTJOB_BOOTSTRAP_APPS", format!("ignored:{token}"))
        .args([
            "--bootstrap-app",
            &format!("demo:other-{token},second:{token}"),
        ]);
    procs.0.push(server.spawn(&mut cmd));
    let mut apps = eventually(Duration::from_secs(30), "the second app", || async {
        api.app_names()
            .await
            .filter(|a| a.iter().any(|n| n == "second"))
    })
    .await;
    apps.sort();
    assert_eq!(apps, vec!["demo".to_string(), "second".to_string()]);
    let log = server.log_text();
    let created = "Created a bootstrap app with its configured worker token.";
    assert!(
        log.contains(&format!("{created} app=second")),
        "second is created: {log}"
    );
    assert!(
        !log.contains(&format!("{created} app=demo")),
        "demo is not created again: {log}"
    );
    assert!(
        !log.contains("app=ignored"),
        "the flag beats the env: {log}"
    );
}

// ---------------------------------------------------------------------------------------
// Docker Compose

fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_quiet(cmd: &mut Command) -> Option<Output> {
    cmd.stdin(Stdio::null()).output().ok()
}

/// Why the Docker test cannot run here, or the compose command (`docker compose` or
/// the standalone `docker-compose`).
fn docker_compose_command() -> Result<Vec<String>, String> {
    let uid = run_quiet(Command::new("id").arg("-u"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Err(format!("not root (uid {uid:?})"));
    }
    match run_quiet(Command::new("docker").arg("info")) {
        Some(o) if o.status.success() => {}
        Some(o) => {
            return Err(format!(
                "`docker info` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        None => return Err("docker is not installed".into()),
    }
    for cmd in [vec!["docker", "compose"], vec!["docker-compose"]] {
        let ok = run_quiet(Command::new(cmd[0]).args(&cmd[1..]).arg("version"))
            .is_some_and(|o| o.status.success());
        if ok {
            return Ok(cmd.into_iter().map(String::from).collect());
        }
    }
    Err("neither `docker compose` nor `docker-compose` works".into())
}

/// Builds raftjob:dev unless it holds exactly this test's binary.
fn ensure_image(image: &str) {
    let bin = std::fs::read(BIN).expect("read the binary");
    let sha = hex::encode(Sha256::digest(&bin));
    let label = run_quiet(Command::new("docker").args([
        "image",
        "inspect",
        image,
        "--format",
        "{{ index .Config.Labels \"raftjob.binary-sha256\" }}",
    ]))
    .filter(|o| o.status.success())
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if label.as_deref() == Some(sha.as_str()) {
        eprintln!("image {image} is current (binary {sha})");
        return;
    }
    eprintln!("image {image} is missing or stale ({label:?}); running docker/build-image.sh");
    let status = Command::new(root_dir().join("docker/build-image.sh"))
        .env("RAFTJOB_BIN", BIN)
        .env("IMAGE", image)
        .stdin(Stdio::null())
        .status()
        .expect("docker/build-image.sh runs");
    assert!(status.success(), "docker/build-image.sh failed");
}

/// One compose project; `down -v` when dropped, after printing the logs on failure.
struct Project {
    compose: Vec<String>,
    name: String,
    env_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Project {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(root_dir().join("cluster/docker-compose.yml"))
            .arg("--env-file")
            .arg(&self.env_file)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().expect("compose runs");
        assert!(
            out.status.success(),
            "compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(o) = self
                .command()
                .args(["logs", "--no-color", "--tail", "40"])
                .output()
            {
                eprintln!(
                    "--- compose logs ---\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        let _ = self
            .command()
            .args(["down", "-v", "--remove-orphans", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn write_env(path: &Path, vars: &[(String, String)]) {
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_runs_jobs_and_survives_a_leader_stop() {
    const NAME: &str = "compose_cluster_runs_jobs_and_survives_a_leader_stop";
    let compose = match docker_compose_command() {
        Ok(c) => c,
        Err(why) => {
            println!("SKIPPED (no Docker engine): {NAME} ({why})");
            return;
        }
    };
    let started = Instant::now();
    let image = "raftjob:dev";
    ensure_image(image);

    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("compose.env");
    let app_token = format!("app-{}", uuid::Uuid::new_v4().simple());
    let api_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut vars = vec![
        ("RAFTJOB_ADMIN_TOKEN".to_string(), ADMIN.to_string()),
        ("RAFTJOB_CLUSTER_SECRET".to_string(), SECRET.to_string()),
        ("RAFTJOB_APP".to_string(), "demo".to_string()),
        ("RAFTJOB_APP_TOKEN".to_string(), app_token),
        ("RAFTJOB_IMAGE".to_string(), image.to_string()),
        ("RAFTJOB_PUBLISH_IP".to_string(), "127.0.0.1".to_string()),
    ];
    for i in 1..=3 {
        vars.push((
            format!("RAFTJOB_API_PORT_{i}"),
            api_ports[i - 1].to_string(),
        ));
        vars.push((format!("RAFTJOB_HTTP_PORT_{i}"), free_port().to_string()));
        vars.push((format!("RAFTJOB_WS_PORT_{i}"), free_port().to_string()));
    }
    write_env(&env_file, &vars);
    let project = Project {
        compose,
        name: format!(
            "raftjob-test-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        env_file,
        _dir: dir,
    };
    eprintln!("compose project {}", project.name);
    project.run(&["up", "-d"]);
    let apis: Vec<Api> = api_ports
        .iter()
        .map(|p| Api::new(format!("127.0.0.1:{p}")))
        .collect();

    // Ready: every server ready, the cluster id recorded, the app provisioned and both
    // workers registered.
    for (i, api) in apis.iter().enumerate() {
        let what = format!("raftjob-{} ready", i + 1);
        eventually(Duration::from_secs(60), &what, || async {
            api.ready().await.then_some(())
        })
        .await;
    }
    let leader = eventually(Duration::from_secs(30), "cluster id and leader", || async {
        let v = apis[0].get("/api/v1/cluster").await?;
        v["cluster_id"].as_str()?;
        v["leader_id"].as_u64()
    })
    .await;
    eventually(
        Duration::from_secs(60),
        "both workers registered",
        || async {
            let v = apis[0].get("/api/v1/workers").await?.to_string();
            (v.contains("demo/worker-http") && v.contains("demo/worker-ws")).then_some(())
        },
    )
    .await;
    eprintln!(
        "ready after {:?}; leader raftjob-{leader}",
        started.elapsed()
    );

    // A shell job on the ws worker and an http job on the http worker.
    let shell = apis[0]
        .create_job(
            json!({"app": "demo", "name": "shell", "schedule": {"type": "api"},
            "designated_workers": ["worker-ws"],
            "processor": {"type": "shell", "command": "echo hello from $(echo compose)"}}),
        )
        .await;
    let web = apis[1]
        .create_job(
            json!({"app": "demo", "name": "web", "schedule": {"type": "api"},
            "designated_workers": ["worker-http"],
            "processor": {"type": "http", "url": "http://raftjob-1:7700/healthz"}}),
        )
        .await;
    let i1 = apis[2].run(shell).await.unwrap();
    let i2 = apis[2].run(web).await.unwrap();
    let inst = apis[0].succeeded(i1, Duration::from_secs(30)).await;
    assert!(
        inst["result"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from compose"),
        "{inst}"
    );
    assert_eq!(inst["attempts"][0]["worker"], "demo/worker-ws", "{inst}");
    let inst = apis[0].succeeded(i2, Duration::from_secs(30)).await;
    assert!(
        inst["result"].as_str().unwrap_or_default().contains("200"),
        "{inst}"
    );
    assert_eq!(inst["attempts"][0]["worker"], "demo/worker-http", "{inst}");

    // Stop the leader's container: a new leader is elected and jobs still run, on both
    // workers (the http job now targets a surviving server).
    let survivors: Vec<usize> = (1..=3).filter(|&i| i as u64 != leader).collect();
    project.run(&["stop", "-t", "5", &format!("raftjob-{leader}")]);
    let stopped_at = Instant::now();
    let a = &apis[survivors[0] - 1];
    let new_leader = eventually(Duration::from_secs(30), "a new leader", || async {
        let v = a.get("/api/v1/cluster").await?;
        v["leader_id"].as_u64().filter(|&l| l != leader)
    })
    .await;
    eprintln!(
        "new leader raftjob-{new_leader} {:?} after the stop",
        stopped_at.elapsed()
    );
    let web2 = a
        .create_job(
            json!({"app": "demo", "name": "web2", "schedule": {"type": "api"},
            "designated_workers": ["worker-http"],
            "processor": {"type": "http",
                "url": format!("http://raftjob-{}:7700/readyz", survivors[1])}}),
        )
        .await;
    let i3 = eventually(Duration::from_secs(20), "run accepted", || async {
        a.run(shell).await.ok()
    })
    .await;
    let i4 = a.run(web2).await.unwrap();
    a.succeeded(i3, Duration::from_secs(45)).await;
    a.succeeded(i4, Duration::from_secs(45)).await;
    let other = &apis[survivors[1] - 1];
    let v = other.get("/api/v1/cluster").await.expect("cluster view");
    assert_eq!(v["leader_id"].as_u64(), Some(new_leader), "{v}");

    // The stopped server comes back with its volume and rejoins as a follower.
    project.run(&["start", &format!("raftjob-{leader}")]);
    let back = &apis[leader as usize - 1];
    eventually(
        Duration::from_secs(30),
        "the old leader rejoins",
        || async {
            let v = back.get("/api/v1/cluster").await?;
            (v["leader_id"].as_u64()? != leader && back.ready().await).then_some(())
        },
    )
    .await;

    // The drill in docker mode: two rounds of `docker kill` of the leader's container
    // (found from compose's own container name), under load, nothing lost.
    let out = project.run(&["ps", "-q", "raftjob-1"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = run_quiet(Command::new("docker").args(["inspect", "--format", "{{.Name}}", &id]))
        .expect("docker inspect");
    let name = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('/')
        .to_string();
    let at = name
        .rfind("raftjob-1")
        .expect("compose names containers after services");
    let template = format!("{}raftjob-{{node_id}}{}", &name[..at], &name[at + 9..]);
    let servers = api_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let drill = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "drill", "--mode", "docker", "--rounds", "2", "--app", "demo",
            ])
            .args(["--container-template", &template, "--json"])
            .args(["--server", &servers, "--token", ADMIN])
            .stdin(Stdio::null())
            .output()
            .expect("raftjob drill runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&drill.stdout);
    let stderr = String::from_utf8_lossy(&drill.stderr);
    assert!(drill.status.success(), "drill failed: {stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("the drill prints JSON");
    assert_eq!(report["lost_total"].as_u64(), Some(0), "{report}");
    assert!(report["acked_total"].as_u64().unwrap_or(0) > 0, "{report}");
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{report}");
    for r in rounds {
        assert_ne!(r["old_leader"], r["new_leader"], "{r}");
        assert!(r["new_leader_ms"].is_u64(), "{r}");
        assert!(r["first_write_ms"].is_u64(), "{r}");
        assert!(r["first_dispatch_ms"].is_u64(), "{r}");
        assert_eq!(r["lost"].as_u64(), Some(0), "{r}");
    }
    eprintln!("{stderr}");
    eprintln!("drill summary: {}", report["summary"]);
    eprintln!("{NAME}: passed in {:?}", started.elapsed());
}
