//! `raftjob worker list`. `raftjob worker [flags]` without a subcommand still runs a
//! worker: the run flags and the `list` subcommand share the `worker` command, and
//! clap's `args_conflicts_with_subcommands` keeps them apart (once a run flag is
//! given, `list` is not taken as a subcommand, and `list` takes only its own flags).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::job::encode;
use super::output::{text, time_field, Table};
use super::{CliError, Common, Ctx};
use crate::worker::WorkerArgs;

/// `raftjob worker`: run a worker (the flags), or `raftjob worker list`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WorkerCmd {
    #[command(subcommand)]
    pub command: Option<WorkerSub>,
    #[command(flatten)]
    pub run: WorkerArgs,
}

#[derive(Debug, Subcommand)]
pub enum WorkerSub {
    /// List registered workers with their liveness and load (over a server's api
    /// port, with the admin token; this does not run a worker).
    List(WorkerList),
}

#[derive(Debug, Args)]
pub struct WorkerList {
    #[command(flatten)]
    pub common: Common,
    /// Only the workers of this app (by name).
    #[arg(long)]
    pub app: Option<String>,
}

pub fn run(cmd: WorkerSub) -> ExitCode {
    match cmd {
        WorkerSub::List(args) => {
            let common = args.common.clone();
            super::run(&common, async move { list(&args).await })
        }
    }
}

async fn list(args: &WorkerList) -> Result<(), CliError> {
    let ctx = Ctx::new(&args.common);
    let path = match &args.app {
        Some(a) => format!("/api/v1/workers?app={}", encode(a)),
        None => "/api/v1/workers".into(),
    };
    let v = ctx.get(&path).await?;
    ctx.print(&v, worker_table);
    Ok(())
}

/// `GET /api/v1/workers` as a table.
pub fn worker_table(v: &Value) -> String {
    let mut t = Table::new(&[
        "ID",
        "APP",
        "STATE",
        "PROTOCOL",
        "ADDRESS",
        "TAG",
        "RUNNING",
        "MAX",
        "LAST HEARTBEAT",
        "VERSION",
        "REGISTERED",
    ]);
    for w in v["workers"].as_array().into_iter().flatten() {
        let hb = match w["last_heartbeat_ms_ago"].as_u64() {
            Some(ms) => format!("{} ago", super::output::duration_ms(ms)),
            None => "never".into(),
        };
        t.row(vec![
            text(&w["id"]),
            text(&w["app"]),
            text(&w["state"]),
            text(&w["protocol"]),
            text(&w["address"]),
            text(&w["tag"]),
            text(&w["running"]),
            text(&w["max_concurrency"]),
            hb,
            text(&w["version"]),
            time_field(&w["registered_at_ms"]),
        ]);
    }
    if t.is_empty() {
        "no workers\n".into()
    } else {
        t.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn worker_rows() {
        let out = worker_table(&json!({"workers": [
            {"id": "shop/w1", "app_id": 1, "name": "w1", "protocol": "ws", "version": "0.1.0",
             "max_concurrency": 16, "registered_at_ms": 0, "app": "shop", "state": "live",
             "last_heartbeat_ms_ago": 230, "running": 1, "connected_ws": true}]}));
        let row = out.lines().nth(1).unwrap();
        assert!(
            row.starts_with("shop/w1  shop  live   ws        -"),
            "{out}"
        );
        assert!(row.contains("230ms ago"), "{out}");
    }
}
