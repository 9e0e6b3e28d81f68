//! raftjob-bench: raftjob and etcd side by side on one machine (issue #7).
//!
//! One run starts a three-node raftjob cluster and a three-member etcd cluster on
//! loopback (durable: both fsync), drives both with one Rust load generator, and writes
//! `DIR/results.json` and `DIR/results.md`: replicated writes at 1/16/64/256 clients,
//! end-to-end dispatch, trigger lateness, failover and footprint, with the disk's fsync
//! latency so each figure can be read against the physical limit. See
//! docs/performance.md.

mod dispatch;
mod etcd;
mod failover;
mod footprint;
mod fsync;
mod lateness;
mod load;
mod report;
mod rj;
mod sys;
mod worker;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "raftjob-bench",
    about = "raftjob and etcd side by side on this machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A short run (about 3 minutes after the build) with smaller counts.
    #[arg(long)]
    quick: bool,
    /// Tiny counts, for the test that keeps the bench working (implies --quick).
    #[arg(long)]
    tiny: bool,
    /// Output directory (default target/bench/<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The raftjob binary (default: `raftjob` next to this binary, target/debug).
    #[arg(long)]
    raftjob_bin: Option<PathBuf>,
    /// Only these sections, comma separated (fsync, writes, dispatch, lateness,
    /// failover, footprint). Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Override the footprint's job count (default 100,000; quick 2,000).
    #[arg(long)]
    footprint_jobs: Option<usize>,
    /// Override the footprint's finished-instance count (default 1,000,000; quick 5,000).
    #[arg(long)]
    footprint_instances: Option<usize>,
    /// Override the time budget of each footprint loading stage, in seconds.
    #[arg(long)]
    footprint_budget_secs: Option<u64>,
    /// Override the failover rounds per system (default 20; quick 3).
    #[arg(long)]
    failover_rounds: Option<usize>,
    /// Keep the nodes' data directories (by default they are removed after each
    /// section; logs stay).
    #[arg(long)]
    keep_data: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// A worker with one custom processor, `noop` (the bench starts these itself).
    #[command(hide = true)]
    NoopWorker {
        #[command(flatten)]
        args: raftjob::worker::WorkerArgs,
    },
}

/// Counts and durations of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub fsync_rounds: usize,
    pub concurrency: Vec<usize>,
    pub write_secs: f64,
    pub write_max_ops: usize,
    pub dispatch_runs: usize,
    pub dispatch_clients: usize,
    /// Total jobs at each rung (each fires once a second); the first two are the
    /// required 100 and 1,000 (smaller in tiny mode).
    pub lateness_ladder: Vec<usize>,
    pub lateness_window_secs: u64,
    pub lateness_budget_secs: u64,
    pub lateness_sample_jobs: usize,
    pub failover_rounds: usize,
    pub footprint_jobs: usize,
    pub footprint_instances: usize,
    pub footprint_budget_secs: u64,
    pub footprint_settle_secs: u64,
}

impl Sizes {
    fn full() -> Self {
        Self {
            fsync_rounds: 1000,
            concurrency: vec![1, 16, 64, 256],
            write_secs: 10.0,
            write_max_ops: 200_000,
            dispatch_runs: 5000,
            dispatch_clients: 32,
            lateness_ladder: vec![100, 1000, 2000, 3000, 4000, 6000, 8000],
            lateness_window_secs: 10,
            lateness_budget_secs: 420,
            lateness_sample_jobs: 200,
            failover_rounds: 20,
            footprint_jobs: 100_000,
            footprint_instances: 1_000_000,
            footprint_budget_secs: 1200,
            footprint_settle_secs: 5,
        }
    }

    fn quick() -> Self {
        Self {
            fsync_rounds: 300,
            concurrency: vec![1, 16, 64, 256],
            write_secs: 3.0,
            write_max_ops: 50_000,
            dispatch_runs: 1000,
            dispatch_clients: 32,
            lateness_ladder: vec![100, 1000, 2000],
            lateness_window_secs: 5,
            lateness_budget_secs: 60,
            lateness_sample_jobs: 100,
            failover_rounds: 3,
            footprint_jobs: 2000,
            footprint_instances: 5000,
            footprint_budget_secs: 30,
            footprint_settle_secs: 2,
        }
    }

    fn tiny() -> Self {
        Self {
            fsync_rounds: 50,
            concurrency: vec![1, 16, 64, 256],
            write_secs: 1.0,
            write_max_ops: 5_000,
            dispatch_runs: 200,
            dispatch_clients: 16,
            lateness_ladder: vec![20, 100],
            lateness_window_secs: 3,
            lateness_budget_secs: 30,
            lateness_sample_jobs: 20,
            failover_rounds: 2,
            footprint_jobs: 200,
            footprint_instances: 500,
            footprint_budget_secs: 20,
            footprint_settle_secs: 1,
        }
    }
}

/// What every section needs.
pub struct Ctx {
    pub raftjob: PathBuf,
    pub etcd: PathBuf,
    pub out: PathBuf,
    pub sizes: Sizes,
}

static START: OnceLock<Instant> = OnceLock::new();

/// A progress line with the time since the bench started.
pub fn say(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[{t:7.1}s] {msg}");
}

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub mode: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_secs: f64,
    pub command: String,
    pub cores: usize,
    pub cpu: String,
    pub mem_total_kib: Option<u64>,
    pub kernel: String,
    pub raftjob_version: String,
    pub etcd_version: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub sizes: Sizes,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub meta: Meta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<fsync::FsyncResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<writes::WritesResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<Vec<dispatch::DispatchPoint>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness: Option<lateness::LatenessResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<failover::FailoverResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<footprint::FootprintResult>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::NoopWorker { args }) = &cli.cmd {
        return worker::main(args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(bench(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftjob-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn raftjob_version(bin: &Path) -> String {
    let crate_version = sys::command_line(bin.to_str().unwrap_or("raftjob"), &["--version"], None)
        .unwrap_or_else(|| "raftjob (unknown)".into());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match sys::command_line(
        "git",
        &["describe", "--always", "--dirty", "--tags"],
        Some(&repo),
    ) {
        Some(g) => format!("{crate_version} (git {g})"),
        None => crate_version,
    }
}

/// Removes the nodes' data directories under `dir` (node1.., m1..), keeping logs.
fn remove_data(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        let digits = name.strip_prefix("node").or_else(|| name.strip_prefix('m'));
        let is_data =
            digits.is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        if is_data {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            remove_data(&p);
        }
    }
}

async fn bench(cli: Cli) -> Result<()> {
    START.get_or_init(Instant::now);
    let started_at = chrono::Local::now();
    let (mode, mut sizes) = if cli.tiny {
        ("tiny", Sizes::tiny())
    } else if cli.quick {
        ("quick", Sizes::quick())
    } else {
        ("full", Sizes::full())
    };
    if let Some(n) = cli.footprint_jobs {
        sizes.footprint_jobs = n.max(64);
    }
    if let Some(n) = cli.footprint_instances {
        sizes.footprint_instances = n;
    }
    if let Some(n) = cli.footprint_budget_secs {
        sizes.footprint_budget_secs = n;
    }
    if let Some(n) = cli.failover_rounds {
        sizes.failover_rounds = n.max(1);
    }
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from("target/bench").join(started_at.format("%Y%m%d-%H%M%S").to_string())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let raftjob = match &cli.raftjob_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's directory")?
            .join("raftjob"),
    };
    if !raftjob.is_file() {
        bail!(
            "{} does not exist: build it first with `cargo build --bin raftjob` (make bench does)",
            raftjob.display()
        );
    }
    let sections = [
        "fsync",
        "writes",
        "dispatch",
        "lateness",
        "failover",
        "footprint",
    ];
    for s in &cli.only {
        if !sections.contains(&s.as_str()) {
            bail!(
                "unknown section {s:?} in --only: use {}",
                sections.join(", ")
            );
        }
    }
    let wanted = |s: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == s);
    let needs_etcd = ["writes", "failover", "footprint"]
        .iter()
        .any(|s| wanted(s));
    let etcd_bin = if needs_etcd {
        etcd::ensure_installed()?
    } else {
        sys::which("etcd").unwrap_or_default()
    };
    let ctx = Ctx {
        raftjob: raftjob.clone(),
        etcd: etcd_bin.clone(),
        out: out.clone(),
        sizes,
    };
    let mut meta = Meta {
        mode: mode.into(),
        started_at: started_at.to_rfc3339(),
        finished_at: String::new(),
        duration_secs: 0.0,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: sys::cpu_model(),
        mem_total_kib: sys::mem_total_kib(),
        kernel: sys::kernel(),
        raftjob_version: raftjob_version(&raftjob),
        etcd_version: if etcd_bin.as_os_str().is_empty() {
            "not installed".into()
        } else {
            etcd::version(&etcd_bin)
        },
        loadavg_start: sys::loadavg(),
        loadavg_end: String::new(),
        sizes: ctx.sizes.clone(),
    };
    say(&format!(
        "raftjob-bench ({mode}): {} cores, kernel {}, {}, etcd {}; output in {}",
        meta.cores,
        meta.kernel,
        meta.raftjob_version,
        meta.etcd_version,
        out.display()
    ));
    let mut res = Results {
        meta: meta.clone(),
        fsync: None,
        writes: None,
        dispatch: None,
        lateness: None,
        failover: None,
        footprint: None,
    };
    if wanted("fsync") {
        let f = fsync::measure(&out.join("fsync"), ctx.sizes.fsync_rounds)?;
        say(&format!(
            "fsync: 4 KiB write+fdatasync p50/p99/max {} (one writer: {:.0} fsyncs/s); three writers at once {} ({:.0}/s each)",
            f.one_writer.brief(),
            f.batches_per_sec_one_writer,
            f.three_writers.brief(),
            f.batches_per_sec_three_writers
        ));
        res.fsync = Some(f);
    }
    // Each section's result is kept even when a later one fails, and both files are
    // written either way.
    let outcome: Result<()> = async {
        if wanted("writes") {
            res.writes = Some(writes::run(&ctx).await.context("writes")?);
            cleanup(&cli, &out.join("writes"));
        }
        if wanted("dispatch") {
            res.dispatch = Some(dispatch::run(&ctx).await.context("dispatch")?);
            cleanup(&cli, &out.join("dispatch"));
        }
        if wanted("lateness") {
            res.lateness = Some(lateness::run(&ctx).await.context("lateness")?);
            cleanup(&cli, &out.join("lateness"));
        }
        if wanted("failover") {
            res.failover = Some(failover::run(&ctx).await.context("failover")?);
            cleanup(&cli, &out.join("failover"));
        }
        if wanted("footprint") {
            res.footprint = Some(footprint::run(&ctx).await.context("footprint")?);
            cleanup(&cli, &out.join("footprint"));
        }
        Ok(())
    }
    .await;
    meta.finished_at = chrono::Local::now().to_rfc3339();
    meta.duration_secs = START.get().map_or(0.0, |s| s.elapsed().as_secs_f64());
    meta.loadavg_end = sys::loadavg();
    res.meta = meta;
    let json = serde_json::to_string_pretty(&res)?;
    std::fs::write(out.join("results.json"), json)?;
    std::fs::write(out.join("results.md"), report::markdown(&res))?;
    say(&format!(
        "wrote {} and {}",
        out.join("results.json").display(),
        out.join("results.md").display()
    ));
    outcome
}

fn cleanup(cli: &Cli, dir: &Path) {
    if !cli.keep_data {
        remove_data(dir);
    }
}
