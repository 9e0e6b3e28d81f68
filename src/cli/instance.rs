//! `raftjob instance get|list|logs|stop|cancel|retry`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::job::encode;
use super::output::{key_values, text, time_field, trigger_summary, Table};
use super::{CliError, Common, Ctx};

#[derive(Debug, Args)]
pub struct InstanceCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: InstanceSub,
}

#[derive(Debug, Subcommand)]
pub enum InstanceSub {
    /// Show one instance with its attempts.
    Get { id: u64 },
    /// List instances, newest first.
    List {
        /// Only the instances of this job.
        #[arg(long)]
        job_id: Option<u64>,
        /// Only instances in this status (waiting_dispatch, dispatched, running,
        /// stopping, succeeded, failed, stopped, canceled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many (the server's default is 100, its maximum 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The instance's log tail (the last 200 lines), oldest first.
    Logs { id: u64 },
    /// Stop a waiting, dispatched or running instance.
    Stop { id: u64 },
    /// Cancel a waiting instance.
    Cancel { id: u64 },
    /// Run a finished instance again, as a new instance.
    Retry { id: u64 },
}

pub fn run(cmd: InstanceCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        let ctx = Ctx::new(&cmd.common);
        exec(&ctx, cmd.command).await
    })
}

async fn exec(ctx: &Ctx, cmd: InstanceSub) -> Result<(), CliError> {
    match cmd {
        InstanceSub::Get { id } => {
            let v = ctx.get(&format!("/api/v1/instances/{id}")).await?;
            ctx.print(&v, instance_detail);
        }
        InstanceSub::List {
            job_id,
            status,
            limit,
        } => {
            let mut q = Vec::new();
            if let Some(j) = job_id {
                q.push(format!("job_id={j}"));
            }
            if let Some(s) = &status {
                q.push(format!("status={}", encode(s)));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let mut path = "/api/v1/instances".to_string();
            if !q.is_empty() {
                path.push('?');
                path.push_str(&q.join("&"));
            }
            let v = ctx.get(&path).await?;
            ctx.print(&v, instance_list);
        }
        InstanceSub::Logs { id } => {
            let v = ctx.get(&format!("/api/v1/instances/{id}/logs")).await?;
            ctx.print(&v, |v| {
                let lines: Vec<String> = v["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| format!("{}  {}\n", time_field(&l["at_ms"]), text(&l["line"])))
                    .collect();
                if lines.is_empty() {
                    format!("instance {id} has no log lines\n")
                } else {
                    lines.concat()
                }
            });
        }
        InstanceSub::Stop { id } | InstanceSub::Cancel { id } => {
            let action = if matches!(cmd, InstanceSub::Stop { .. }) {
                "stop"
            } else {
                "cancel"
            };
            let v = ctx
                .write(
                    Method::POST,
                    &format!("/api/v1/instances/{id}/{action}"),
                    None,
                )
                .await?;
            ctx.print(&v, |v| {
                format!("instance {id} is now {}\n", text(&v["status"]))
            });
        }
        InstanceSub::Retry { id } => {
            let v = ctx
                .write(Method::POST, &format!("/api/v1/instances/{id}/retry"), None)
                .await?;
            ctx.print(&v, |v| {
                format!(
                    "instance {id} retried as instance {}\n",
                    text(&v["instance_id"])
                )
            });
        }
    }
    Ok(())
}

fn attempts_count(i: &Value) -> String {
    i["attempts"]
        .as_array()
        .map(|a| a.len().to_string())
        .unwrap_or_else(|| "0".into())
}

/// `GET /api/v1/instances` as a table.
pub fn instance_list(v: &Value) -> String {
    let mut t = Table::new(&[
        "ID", "JOB", "STATUS", "TRIGGER", "ATTEMPTS", "CREATED", "FINISHED", "RESULT",
    ]);
    for i in v["instances"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&i["id"]),
            text(&i["job_id"]),
            text(&i["status"]),
            trigger_summary(&i["trigger"]),
            attempts_count(i),
            time_field(&i["created_at_ms"]),
            time_field(&i["finished_at_ms"]),
            text(&i["result"]),
        ]);
    }
    if t.is_empty() {
        "no instances\n".into()
    } else {
        t.render()
    }
}

/// One instance: `key  value` lines, then its attempts as a table.
pub fn instance_detail(i: &Value) -> String {
    let mut out = key_values(&[
        ("id", text(&i["id"])),
        ("job", text(&i["job_id"])),
        ("app id", text(&i["app_id"])),
        ("status", text(&i["status"])),
        ("trigger", trigger_summary(&i["trigger"])),
        ("fire time", time_field(&i["fire_time_ms"])),
        (
            "params",
            if i["params"].is_null() {
                "-".into()
            } else {
                i["params"].to_string()
            },
        ),
        ("created", time_field(&i["created_at_ms"])),
        ("not before", time_field(&i["not_before_ms"])),
        ("dispatched", time_field(&i["dispatched_at_ms"])),
        ("started", time_field(&i["started_at_ms"])),
        ("finished", time_field(&i["finished_at_ms"])),
        ("result", text(&i["result"])),
        (
            "log lines",
            i["log_tail"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0)
                .to_string(),
        ),
    ]);
    let mut t = Table::new(&[
        "#",
        "WORKER",
        "STATUS",
        "FENCING",
        "DISPATCHED",
        "STARTED",
        "FINISHED",
        "RESULT",
    ]);
    for a in i["attempts"].as_array().into_iter().flatten() {
        let fencing = format!(
            "{}/{}",
            text(&a["fencing_token"]["term"]),
            text(&a["fencing_token"]["index"])
        );
        t.row(vec![
            text(&a["number"]),
            text(&a["worker"]),
            text(&a["status"]),
            fencing,
            time_field(&a["dispatched_at_ms"]),
            time_field(&a["started_at_ms"]),
            time_field(&a["finished_at_ms"]),
            text(&a["result"]),
        ]);
    }
    out.push('\n');
    if t.is_empty() {
        out.push_str("no attempts yet\n");
    } else {
        out.push_str("attempts:\n");
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instance_views() {
        let i = json!({"id": 17, "job_id": 2, "app_id": 1, "trigger": {"type": "manual"},
            "params": null, "status": "succeeded", "created_at_ms": 1_767_225_600_000i64,
            "finished_at_ms": 1_767_225_600_190i64, "result": "exit code 0\nhello 17",
            "attempts": [{"number": 1, "worker": "shop/w1",
                "fencing_token": {"term": 4, "index": 118}, "status": "succeeded",
                "dispatched_at_ms": 1_767_225_600_100i64}],
            "log_tail": [{"at_ms": 1, "line": "hello 17"}]});
        let d = instance_detail(&i);
        assert!(
            d.contains("result      exit code 0\n            hello 17\n"),
            "{d}"
        );
        assert!(d.contains("1  shop/w1  succeeded  4/118"), "{d}");
        let l = instance_list(&json!({"instances": [i]}));
        assert!(l.contains("17  2    succeeded  manual   1"), "{l}");
        assert!(l.contains("exit code 0 hello 17"), "{l}");
    }
}
