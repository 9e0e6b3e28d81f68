//! The `raftjob` command: `raftjob server` runs a server node, `raftjob worker` runs a
//! worker, and `raftjob cluster|job|instance|app|token|audit|policy|worker list` are the operator CLI
//! (`src/cli/`, docs/cli.md). It lives in the library so the `raftjob` binary and the
//! test-only `raftjob-planted` binary (with the `planted-bugs` feature) share it.

use std::process::ExitCode;

use crate::cli;
use crate::config::{LogFormat, ServerArgs, ServerConfig};
use crate::worker::{Worker, WorkerArgs, WorkerConfig};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "raftjob",
    version,
    about = "A highly available distributed job scheduler on Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Cmd {
    /// Run a server node (one of the Raft group).
    Server(ServerArgs),
    /// Run a worker that executes jobs of one app (shell and http processors), or
    /// `raftjob worker list` to list the registered workers.
    Worker(cli::worker::WorkerCmd),
    /// Cluster status and membership changes (over a server's api port).
    Cluster(cli::cluster::ClusterCmd),
    /// Create, list, show, run, enable and disable jobs.
    Job(cli::job::JobCmd),
    /// Show, list, stop instances and read their logs.
    Instance(cli::instance::InstanceCmd),
    /// Create and list apps.
    App(cli::app::AppCmd),
    /// Create, list and revoke scoped API tokens (admin only).
    Token(cli::token::TokenCmd),
    /// The audit trail: job changes and manual runs, stops, cancels and retries.
    Audit(cli::audit::AuditCmd),
    /// Show and change the processor policy of the cluster or of an app (admin only).
    Policy(cli::policy::PolicyCmd),
    /// Failover drills: disrupt the leader under load and measure the recovery
    /// (docs/drills.md).
    Drill(cli::drill::DrillCmd),
    /// Exit 0 if a server's /healthz (or /readyz with --ready) answers 200, else 1.
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

/// Logs go to stderr through a background thread, so a log line never blocks a
/// server thread: stderr is often a pipe to a container runtime's log driver, and
/// when that reader falls behind, direct writes would block the runtime threads that
/// also run Raft's timers. When the buffer is full, lines are dropped, never waited
/// for. Keep the guard until exit: dropping it flushes what is buffered.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_env("RAFTJOB_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

/// The whole `raftjob` command (both the `raftjob` and `raftjob-planted` binaries
/// call it).
pub fn main() -> ExitCode {
    if let Err(e) = crate::planted::init_from_env() {
        eprintln!("raftjob: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Server(args) => run_server(args),
        Cmd::Worker(w) => match w.command {
            Some(sub) => cli::worker::run(sub),
            None => run_worker(w.run),
        },
        Cmd::Cluster(c) => cli::cluster::run(c),
        Cmd::Job(c) => cli::job::run(c),
        Cmd::Instance(c) => cli::instance::run(c),
        Cmd::App(c) => cli::app::run(c),
        Cmd::Token(c) => cli::token::run(c),
        Cmd::Audit(c) => cli::audit::run(c),
        Cmd::Policy(c) => cli::policy::run(c),
        Cmd::Drill(c) => cli::drill::run(c),
        Cmd::Healthcheck(a) => crate::healthcheck::run(a),
    }
}

fn run_worker(args: WorkerArgs) -> ExitCode {
    let config = match WorkerConfig::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftjob worker: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = init_tracing(LogFormat::Text);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Worker shutting down.");
            on_signal.cancel();
        });
        let worker = match Worker::new(config) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("raftjob worker: {e}");
                return ExitCode::from(2);
            }
        };
        match worker.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "Worker stopped.");
                eprintln!("raftjob worker: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn run_server(args: ServerArgs) -> ExitCode {
    let config = match ServerConfig::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("raftjob: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = init_tracing(config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    rt.block_on(async move {
        let server = match crate::server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "Server failed to start.");
                eprintln!("raftjob: cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        let shutdown = server.node.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Shutting down.");
            shutdown.cancel();
        });
        match server.wait().await {
            None => ExitCode::SUCCESS,
            Some(fatal) => {
                eprintln!("raftjob: stopped: {fatal}");
                ExitCode::from(3)
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
