//! The one load generator: a closed loop of N concurrent clients over one reqwest
//! client with the same settings for raftjob and etcd, so a ratio between the two
//! compares the servers, not the clients. Also the latency summary every section uses.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles of `ms` (any order).
    pub fn of_ms(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let pick = |p: f64| {
            let rank = (p * ms.len() as f64).ceil() as usize;
            ms[rank.clamp(1, ms.len()) - 1]
        };
        Self {
            n: ms.len(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: *ms.last().expect("non-empty"),
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }

    pub fn of(d: &[Duration]) -> Self {
        Self::of_ms(d.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
    }

    /// `p50 / p99 / max` for the tables.
    pub fn brief(&self) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        format!(
            "{} / {} / {}",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.max_ms)
        )
    }
}

pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The HTTP client both systems are driven with: HTTP/1.1 (reqwest without http2),
/// keep-alive with enough idle connections for 256 clients, Nagle off, 30 s timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client builds")
}

/// One closed-loop run: throughput, latency of the successful operations, errors.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub ops: usize,
    pub errors: usize,
    /// Unmeasured warm-up operations (one per client) that succeeded.
    pub warmup_ok: usize,
    pub secs: f64,
    pub ops_per_sec: f64,
    pub latency: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// CPU the servers and the load generator used during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
}

/// CPU used during a run: what shows whether the cores, not the disk, are the limit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// The three server processes together, in cores (CPU seconds / wall seconds).
    pub servers_cores: f64,
    /// Server CPU per successful operation, in microseconds (all three nodes).
    pub servers_us_per_op: f64,
    /// The load generator (this process), in cores.
    pub client_cores: f64,
}

/// Runs `f` and records the CPU the `pids` and this process used meanwhile.
pub async fn with_cpu<Fut>(pids: &[u32], f: Fut) -> LoadResult
where
    Fut: Future<Output = LoadResult>,
{
    let sum = |pids: &[u32]| {
        pids.iter()
            .filter_map(|p| crate::sys::cpu_secs(*p))
            .sum::<f64>()
    };
    let me = std::process::id();
    let (s0, c0) = (sum(pids), crate::sys::cpu_secs(me).unwrap_or(0.0));
    let t0 = Instant::now();
    let mut r = f.await;
    let wall = t0.elapsed().as_secs_f64().max(1e-6);
    let (s1, c1) = (sum(pids), crate::sys::cpu_secs(me).unwrap_or(0.0));
    r.cpu = Some(CpuUse {
        servers_cores: (s1 - s0) / wall,
        servers_us_per_op: if r.ops > 0 {
            (s1 - s0) * 1e6 / (r.ops + r.warmup_ok) as f64
        } else {
            0.0
        },
        client_cores: (c1 - c0) / wall,
    });
    r
}

/// Runs `clients` concurrent loops of `op(seq)` until `duration` has passed or `max_ops`
/// were started. Each client first runs one unmeasured operation (so its connection
/// is open), then all start together. `seq` is unique across the run.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    duration: Duration,
    max_ops: usize,
    op: F,
) -> LoadResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    // Two barriers: every client has warmed up; then the deadline is set and all go.
    let warmed = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let go = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let deadline = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (op, seq, started, warmed, go, deadline) = (
            op.clone(),
            seq.clone(),
            started.clone(),
            warmed.clone(),
            go.clone(),
            deadline.clone(),
        );
        tasks.spawn(async move {
            let warm = op(seq.fetch_add(1, Ordering::Relaxed)).await;
            warmed.wait().await;
            go.wait().await;
            let deadline = *deadline.get().expect("set before the go barrier opens");
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let warm_ok = warm.is_ok();
            let mut first_error = warm.err();
            while Instant::now() < deadline
                && (started.fetch_add(1, Ordering::Relaxed) as usize) < max_ops
            {
                let s = Instant::now();
                match op(seq.fetch_add(1, Ordering::Relaxed)).await {
                    Ok(()) => lat.push(s.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error, warm_ok)
        });
    }
    warmed.wait().await;
    let t0 = Instant::now();
    let _ = deadline.set(t0 + duration);
    go.wait().await;
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut warmup_ok = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, e, f, w)) = r {
            lat.extend(l);
            errors += e;
            warmup_ok += usize::from(w);
            if first_error.is_none() {
                first_error = f;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    LoadResult {
        clients,
        ops: lat.len(),
        errors,
        warmup_ok,
        secs,
        ops_per_sec: lat.len() as f64 / secs,
        latency: Summary::of(&lat),
        first_error,
        cpu: None,
    }
}
