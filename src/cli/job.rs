//! `raftjob job create|list|get|run|enable|disable|delete|schedule|skipped`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::output::{key_values, processor_summary, schedule_summary, text, time_field, Table};
use super::{parse_json, CliError, Common, Ctx};

#[derive(Debug, Args)]
pub struct JobCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: JobSub,
}

#[derive(Debug, Subcommand)]
pub enum JobSub {
    /// Create a job from a JobSpec (docs/api.md, "Job spec").
    #[command(group(ArgGroup::new("source").required(true).args(["file", "spec"])))]
    Create {
        /// A file holding the spec as JSON (`-` reads standard input).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// The spec as JSON on the command line. (`--json` is the output flag.)
        #[arg(long, value_name = "JSON")]
        spec: Option<String>,
    },
    /// List jobs, with their next fire times.
    List {
        /// Only the jobs of this app (by name).
        #[arg(long)]
        app: Option<String>,
    },
    /// Show one job, with its next fire time.
    Get { id: u64 },
    /// Run a job now (or after a delay); prints the new instance's id.
    Run {
        id: u64,
        /// The run's params, as JSON.
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
        /// Do not dispatch before this many milliseconds from now.
        #[arg(long, value_name = "N")]
        delay_ms: Option<u64>,
    },
    /// Enable a job.
    Enable { id: u64 },
    /// Disable a job (it can still be run by hand).
    Disable { id: u64 },
    /// Delete a job.
    Delete { id: u64 },
    /// Preview the job's next fire times.
    Schedule {
        id: u64,
        /// How many (1-1000).
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Fire times recorded as skipped, with their reasons, newest first.
    Skipped {
        id: u64,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub fn run(cmd: JobCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        let ctx = Ctx::new(&cmd.common);
        exec(&ctx, cmd.command).await
    })
}

async fn exec(ctx: &Ctx, cmd: JobSub) -> Result<(), CliError> {
    match cmd {
        JobSub::Create { file, spec } => {
            let spec = match (file, spec) {
                (_, Some(s)) => parse_json(&s, "--spec")?,
                (Some(path), None) => {
                    let raw = read_file(&path)?;
                    parse_json(&raw, &format!("{}", path.display()))?
                }
                (None, None) => {
                    return Err(CliError::Usage("give --file PATH or --spec JSON".into()))
                }
            };
            let v = ctx.write(Method::POST, "/api/v1/jobs", Some(&spec)).await?;
            if !ctx.json() {
                for w in v["warnings"].as_array().into_iter().flatten() {
                    eprintln!("warning: {}", text(w));
                }
            }
            if ctx.json() {
                ctx.print(&v, |_| String::new());
            } else {
                // The create answer has no next fire time; read the job back for it.
                let shown = match v["id"].as_u64() {
                    Some(id) => ctx.get(&format!("/api/v1/jobs/{id}")).await.unwrap_or(v),
                    None => v,
                };
                print!("created job {}\n{}", text(&shown["id"]), job_detail(&shown));
            }
        }
        JobSub::List { app } => {
            let path = match &app {
                Some(a) => format!("/api/v1/jobs?app={}", encode(a)),
                None => "/api/v1/jobs".into(),
            };
            let v = ctx.get(&path).await?;
            ctx.print(&v, job_list);
        }
        JobSub::Get { id } => {
            let v = ctx.get(&format!("/api/v1/jobs/{id}")).await?;
            ctx.print(&v, job_detail);
        }
        JobSub::Run {
            id,
            params,
            delay_ms,
        } => {
            let mut body = Map::new();
            if let Some(p) = params {
                body.insert("params".into(), parse_json(&p, "--params")?);
            }
            if let Some(d) = delay_ms {
                body.insert("delay_ms".into(), json!(d));
            }
            let body = Value::Object(body);
            let v = ctx
                .write(Method::POST, &format!("/api/v1/jobs/{id}/run"), Some(&body))
                .await?;
            ctx.print(&v, |v| {
                let mut s = format!("job {id}: created instance {}", text(&v["instance_id"]));
                if let Some(d) = delay_ms.filter(|d| *d > 0) {
                    s.push_str(&format!(" (not dispatched before {d} ms from now)"));
                }
                s.push('\n');
                s
            });
        }
        JobSub::Enable { id } | JobSub::Disable { id } => {
            let action = if matches!(cmd, JobSub::Enable { .. }) {
                "enable"
            } else {
                "disable"
            };
            let v = ctx
                .write(Method::POST, &format!("/api/v1/jobs/{id}/{action}"), None)
                .await?;
            ctx.print(&v, |v| {
                format!(
                    "job {id} ({}/{}) {action}d, version {}\n",
                    text(&v["app"]),
                    text(&v["name"]),
                    text(&v["version"])
                )
            });
        }
        JobSub::Delete { id } => {
            let v = ctx
                .write(Method::DELETE, &format!("/api/v1/jobs/{id}"), None)
                .await?;
            ctx.print(&v, |_| format!("job {id} deleted\n"));
        }
        JobSub::Schedule { id, count } => {
            let v = ctx
                .get(&format!("/api/v1/jobs/{id}/schedule?count={count}"))
                .await?;
            ctx.print(&v, |v| {
                let mut t = Table::new(&["#", "FIRE TIME (UTC)"]);
                for (i, f) in v["fire_times"].as_array().into_iter().flatten().enumerate() {
                    t.row(vec![(i + 1).to_string(), time_field(&f["at_ms"])]);
                }
                if t.is_empty() {
                    format!(
                        "job {id} has no upcoming fire times (disabled, api-only, finished, or a fixed-delay job whose instance is running)\n"
                    )
                } else {
                    t.render()
                }
            });
        }
        JobSub::Skipped { id, limit } => {
            let v = ctx
                .get(&format!("/api/v1/jobs/{id}/skipped?limit={limit}"))
                .await?;
            ctx.print(&v, |v| {
                let mut t =
                    Table::new(&["FIRE TIME", "THROUGH", "KIND", "RECORDED", "REASON"]).wide_last();
                for s in v["skipped"].as_array().into_iter().flatten() {
                    t.row(vec![
                        time_field(&s["fire_time_ms"]),
                        time_field(&s["through_ms"]),
                        text(&s["kind"]),
                        time_field(&s["recorded_at_ms"]),
                        text(&s["reason"]),
                    ]);
                }
                if t.is_empty() {
                    format!("job {id} has no skipped fire times\n")
                } else {
                    t.render()
                }
            });
        }
    }
    Ok(())
}

fn read_file(path: &std::path::Path) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Percent-encodes a query value (app names are plain, but be safe).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /api/v1/jobs` as a table.
pub fn job_list(v: &Value) -> String {
    let mut t = Table::new(&[
        "ID",
        "APP",
        "NAME",
        "ENABLED",
        "SCHEDULE",
        "PROCESSOR",
        "NEXT FIRE (UTC)",
    ]);
    for j in v["jobs"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&j["id"]),
            text(&j["app"]),
            text(&j["name"]),
            text(&j["enabled"]),
            schedule_summary(&j["schedule"]),
            processor_summary(&j["processor"]),
            time_field(&j["next_fire_time_ms"]),
        ]);
    }
    if t.is_empty() {
        "no jobs\n".into()
    } else {
        t.render()
    }
}

/// One job as `key  value` lines.
pub fn job_detail(j: &Value) -> String {
    let opt = |k: &str| text(&j[k]);
    let designated = j["designated_workers"]
        .as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    let timeout = j["timeout_ms"]
        .as_u64()
        .map(|t| format!("{t} ms"))
        .unwrap_or_else(|| "none".into());
    let max_conc = match j["max_concurrent_instances"].as_u64() {
        Some(0) | None => "unlimited".to_string(),
        Some(n) => n.to_string(),
    };
    let next_fire = if j.get("next_fire_time_ms").is_some() {
        time_field(&j["next_fire_time_ms"])
    } else if j["enabled"] == false {
        "- (disabled)".into()
    } else {
        "-".into()
    };
    key_values(&[
        ("id", opt("id")),
        ("app", format!("{} (id {})", opt("app"), opt("app_id"))),
        ("name", opt("name")),
        (
            "description",
            j["description"].as_str().unwrap_or("").into(),
        ),
        ("enabled", opt("enabled")),
        ("schedule", schedule_summary(&j["schedule"])),
        ("processor", processor_summary(&j["processor"])),
        ("execution mode", opt("execution_mode")),
        ("dispatch strategy", opt("dispatch_strategy")),
        ("retries", opt("retries")),
        ("timeout", timeout),
        ("max concurrent", max_conc),
        ("misfire policy", opt("misfire_policy")),
        ("concurrency policy", opt("concurrency_policy")),
        ("worker tag", opt("worker_tag")),
        ("designated workers", designated),
        (
            "params",
            if j["params"].is_null() {
                "-".into()
            } else {
                j["params"].to_string()
            },
        ),
        ("start at", opt("start_at")),
        ("end at", opt("end_at")),
        ("version", opt("version")),
        ("created", time_field(&j["created_at_ms"])),
        ("updated", time_field(&j["updated_at_ms"])),
        ("last fire time", time_field(&j["last_fire_time_ms"])),
        ("next fire time", next_fire),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_views() {
        let j = json!({"id": 4, "app_id": 1, "app": "demo", "name": "hello",
            "schedule": {"type": "cron", "expr": "0 * * * * *"},
            "processor": {"type": "shell", "command": "echo hi"},
            "enabled": true, "created_at_ms": 0, "updated_at_ms": 0, "version": 1,
            "next_fire_time_ms": 1_767_225_600_000i64});
        let d = job_detail(&j);
        assert!(
            d.contains("next fire time      2026-01-01T00:00:00.000Z"),
            "{d}"
        );
        assert!(
            d.contains("schedule            cron \"0 * * * * *\" UTC"),
            "{d}"
        );
        let l = job_list(&json!({"jobs": [j]}));
        assert!(l.starts_with("ID  APP   NAME   ENABLED"), "{l}");
        assert!(l.contains("2026-01-01T00:00:00.000Z"), "{l}");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
