//! `raftjob-bench noop-worker`: a worker process with one custom processor, `noop`,
//! that succeeds at once, so dispatch figures measure raftjob and not the work.

use raftjob::worker::processor::{ProcessContext, ProcessError, ProcessOutcome, Processor};
use raftjob::worker::{Worker, WorkerArgs, WorkerConfig};

struct Noop;

#[async_trait::async_trait]
impl Processor for Noop {
    async fn process(&self, _ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError> {
        Ok(ProcessOutcome::success("noop"))
    }
}

/// Runs until SIGTERM or SIGINT.
pub fn main(args: &WorkerArgs) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAFTJOB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match WorkerConfig::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut worker = match Worker::new(config) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        };
        worker.register("noop", Noop);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            on_signal.cancel();
        });
        match worker.run(shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
