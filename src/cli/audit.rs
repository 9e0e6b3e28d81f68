//! `raftjob audit`: the audit trail of job changes and manual runs, stops, cancels and
//! retries (`GET /api/v1/audit`), newest first.

use std::process::ExitCode;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::output::{text, time_field, Table};
use super::policy::send;
use super::{CliError, Common, Ctx};

#[derive(Debug, Args)]
pub struct AuditCmd {
    #[command(flatten)]
    pub common: Common,
    /// Only the records about this job.
    #[arg(long)]
    pub job_id: Option<u64>,
    /// At most this many, newest first (the server's default is 100, its maximum 1000).
    #[arg(long)]
    pub limit: Option<u32>,
}

pub fn run(cmd: AuditCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        let ctx = Ctx::new(&cmd.common);
        exec(&ctx, &cmd).await
    })
}

async fn exec(ctx: &Ctx, cmd: &AuditCmd) -> Result<(), CliError> {
    let mut q = Vec::new();
    if let Some(j) = cmd.job_id {
        q.push(format!("job_id={j}"));
    }
    if let Some(l) = cmd.limit {
        q.push(format!("limit={l}"));
    }
    let mut path = "/api/v1/audit".to_string();
    if !q.is_empty() {
        path.push('?');
        path.push_str(&q.join("&"));
    }
    let v = send(ctx, Method::GET, &path, None).await?;
    ctx.print(&v, audit_table);
    Ok(())
}

/// `GET /api/v1/audit` as a table. `INSTANCE` is the instance acted on or created (a
/// run's new instance); for a retry, `A → B` is the instance retried and the new one.
pub fn audit_table(v: &Value) -> String {
    let mut t = Table::new(&["TIME", "ACTOR", "ACTION", "APP ID", "JOB ID", "INSTANCE"]);
    for r in v["records"].as_array().into_iter().flatten() {
        let instance = match (r["instance_id"].as_u64(), r["created_instance_id"].as_u64()) {
            (Some(i), Some(c)) => format!("{i} → {c}"),
            (None, Some(c)) => format!("→ {c}"),
            _ => text(&r["instance_id"]),
        };
        t.row(vec![
            time_field(&r["at_ms"]),
            text(&r["actor"]),
            text(&r["action"]),
            text(&r["app_id"]),
            text(&r["job_id"]),
            instance,
        ]);
    }
    if t.is_empty() {
        "no audit records\n".into()
    } else {
        t.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audit_rows() {
        let out = audit_table(&json!({"records": [
            {"seq": 9, "at_ms": 1_767_225_600_123_i64, "actor": "token/4", "token_id": 4,
             "action": "instance.retry", "app_id": 1, "job_id": 2, "instance_id": 7,
             "created_instance_id": 8},
            {"seq": 8, "at_ms": 1_767_225_600_000_i64, "actor": "admin",
             "action": "job.create", "app_id": 1, "job_id": 2}]}));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                      ACTOR    ACTION          APP ID  JOB ID  INSTANCE"
        );
        assert_eq!(
            lines[1],
            "2026-01-01T00:00:00.123Z  token/4  instance.retry  1       2       7 → 8"
        );
        assert_eq!(
            lines[2],
            "2026-01-01T00:00:00.000Z  admin    job.create      1       2       -"
        );
        assert_eq!(audit_table(&json!({"records": []})), "no audit records\n");
    }
}
