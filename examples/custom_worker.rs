//! Embedding a raftjob worker in your own program, with custom processors.
//!
//! Run with `cargo run --example custom_worker -- --app APP --token TOKEN --servers 127.0.0.1:10086 --protocol ws`
//! (every `raftjob worker` flag works here), then create jobs whose processor is
//! `{"type": "custom", "name": "noop"}` or `{"type": "custom", "name": "greet"}`.

use clap::Parser;
use raftjob::worker::processor::{ProcessContext, ProcessError, ProcessOutcome, Processor};
use raftjob::worker::{Worker, WorkerArgs, WorkerConfig};

/// Does nothing and succeeds: a baseline for dispatch throughput.
struct Noop;

#[async_trait::async_trait]
impl Processor for Noop {
    async fn process(&self, _ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError> {
        Ok(ProcessOutcome::success("noop"))
    }
}

/// Greets whoever the instance parameters name, logging as it goes.
struct Greet;

#[async_trait::async_trait]
impl Processor for Greet {
    async fn process(&self, ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError> {
        let who = ctx
            .instance_params
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("world")
            .to_string();
        ctx.logger
            .log(format!("greeting {who} for instance {}", ctx.instance_id));
        tokio::select! {
            _ = ctx.cancel.cancelled() => Err(ProcessError::Canceled),
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => Ok(ProcessOutcome::success(format!("hello, {who}"))),
        }
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match WorkerConfig::load(&args.worker) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut worker = Worker::new(config).expect("valid config");
    worker.register("noop", Noop).register("greet", Greet);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });
    match worker.run(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
