//! The hooks jepsen-lite drives (issue #6): peer dial overrides, the test-only clock
//! control, the state digest and the worker event record, with real processes on
//! loopback. Run one at a time (`--test-threads=1`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

/// A tiny TCP forwarder: every connection to `addr` is piped to `target`, and
/// counted, so a test can show that traffic took this path.
struct Forwarder {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn digest_of(node: &TestNode) -> Option<Value> {
    node.client().get("/api/v1/debug/state-digest").await.ok()
}

/// Polls all nodes until they report the same applied index, then returns their
/// digests at that index (they must be equal; the caller asserts it).
async fn digests_at_one_index(c: &TestCluster) -> Vec<Value> {
    eventually(
        Duration::from_secs(20),
        "all nodes at one applied index",
        || async {
            let mut all = Vec::new();
            for n in &c.nodes {
                all.push(digest_of(n).await?);
            }
            let first = all[0]["applied_index"].as_u64()?;
            all.iter()
                .all(|d| d["applied_index"].as_u64() == Some(first))
                .then_some(all)
        },
    )
    .await
}

/// The cluster addresses in the membership lead nowhere: the nodes can reach each
/// other only through the `--peer-dial` forwarders, for bootstrap, Raft and the
/// forwarding of writes from followers. Also: the clock offset moves the time the
/// leader stamps into commands, and replicas at one applied index agree on the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_dial_clock_control_and_state_digest() {
    let mut c = TestCluster::new(3, FAST_WORKERS);
    // Member addresses nobody listens on (free ports, never bound).
    let bogus: Vec<String> = (0..3).map(|_| free_addr().to_string()).collect();
    let members = bogus
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut forwarders = Vec::new();
    for n in &c.nodes {
        forwarders.push(Forwarder::start(n.cluster).await);
    }
    let dial = forwarders
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{}={}", i + 1, f.addr))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut c.nodes {
        n.members = members.clone();
        n.extra_args.extend([
            "--peer-dial".into(),
            dial.clone(),
            "--test-clock-control".into(),
        ]);
        n.start();
    }
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    assert!(
        c.node(leader).log_text().contains("TEST SETTING ON"),
        "clock control is announced loudly"
    );

    // A write through a follower is forwarded to the leader, also via its override.
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap();
    let app = follower.client().create_app("dial").await.unwrap();
    assert_eq!(app["name"], "dial", "{app}");
    for (i, f) in forwarders.iter().enumerate() {
        let id = i as u64 + 1;
        if id != leader {
            assert!(
                f.connections() > 0,
                "node {id} was dialled through its forwarder"
            );
        }
    }
    let cluster = c.client().cluster().await.unwrap();
    assert!(
        cluster.to_string().contains(&bogus[0]),
        "the membership keeps the configured addresses: {cluster}"
    );

    // Clock control: every node's clock one hour ahead; the leader stamps new
    // commands with it, so a new instance is created an hour in the future.
    let hour = 3_600_000i64;
    for n in &c.nodes {
        let v = n
            .client()
            .post("/api/v1/debug/clock", &json!({"offset_ms": hour}))
            .await
            .unwrap();
        assert_eq!(v["offset_ms"], hour, "{v}");
    }
    let job = c
        .client()
        .create_job(&api_job(
            "dial",
            "clocked",
            json!({"type": "shell", "command": "true"}),
        ))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let real_now = chrono::Utc::now().timestamp_millis();
    let inst = run_job(&c, job, json!(null)).await;
    let created = c
        .client()
        .get(&format!("/api/v1/instances/{inst}"))
        .await
        .unwrap()["created_at_ms"]
        .as_i64()
        .unwrap();
    assert!(
        created - real_now > hour - 60_000,
        "created_at_ms {created} is about an hour after {real_now}"
    );
    let e = c
        .client()
        .post("/api/v1/debug/clock", &json!({"offset_ms": i64::MAX}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");

    // Digests: equal at equal applied index, and they follow the state.
    let before = digests_at_one_index(&c).await;
    for d in &before {
        assert_eq!(
            d["digest"], before[0]["digest"],
            "replicas differ: {before:?}"
        );
        assert!(d["applied_term"].as_u64().unwrap() >= 1, "{d}");
    }
    c.client().create_app("another").await.unwrap();
    let after = digests_at_one_index(&c).await;
    for d in &after {
        assert_eq!(
            d["digest"], after[0]["digest"],
            "replicas differ: {after:?}"
        );
    }
    assert!(after[0]["applied_index"].as_u64() > before[0]["applied_index"].as_u64());
    assert_ne!(after[0]["digest"], before[0]["digest"]);
}

/// One node without clock control: the clock route is a 404 problem; a worker with
/// `--record` writes accepted, start and end lines carrying the dispatch's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_record_and_clock_control_off() {
    let c = TestCluster::start_with(1, FAST_WORKERS);
    c.wait_ready(&[1], READY).await;
    let e = c
        .client()
        .post("/api/v1/debug/clock", &json!({"offset_ms": 1000}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(e.code(), Some("not_found"), "{e}");
    let doc = c.client().get("/openapi.json").await.unwrap();
    assert!(doc["paths"]["/api/v1/debug/state-digest"].is_object());
    assert!(doc["paths"]["/api/v1/debug/clock"].is_object());

    let token = app_token(&c, "rec").await;
    let record = c.dir.path().join("worker-rec.jsonl");
    let record_arg = record.to_str().unwrap().to_string();
    let _w = TestWorker::start(
        &c,
        "rec",
        &token,
        "http",
        "rec-1",
        &["--record", &record_arg],
    );
    wait_workers_live(&c, "rec", 1).await;
    let job = c
        .client()
        .create_job(&api_job(
            "rec",
            "recorded",
            json!({"type": "shell", "command": "sleep 0.1"}),
        ))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let inst = run_job(&c, job, json!(null)).await;
    let done = wait_terminal(&c, inst, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let token = &done["attempts"][0]["fencing_token"];

    let lines = eventually(Duration::from_secs(10), "start and end recorded", || {
        let record = record.clone();
        async move {
            let text = std::fs::read_to_string(&record).ok()?;
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|v: &Value| v["instance_id"] == inst)
                .collect();
            (lines.len() >= 3).then_some(lines)
        }
    })
    .await;
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["dispatch_accepted", "start", "end"], "{lines:?}");
    for l in &lines {
        assert_eq!(l["worker"], "rec-1");
        assert_eq!(l["attempt"], 1);
        assert_eq!(l["term"], token["term"], "{l}");
        assert_eq!(l["index"], token["index"], "{l}");
    }
    let times: Vec<u64> = lines
        .iter()
        .map(|l| l["time_ns"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[2] - times[1] >= 100_000_000,
        "start to end covers the 0.1 s run: {times:?}"
    );
    assert_eq!(lines[2]["detail"], "succeeded");
}
