//! `raftjob app create|list`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{key_values, text, time_field, Table};
use super::{CliError, Common, Ctx};

#[derive(Debug, Args)]
pub struct AppCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: AppSub,
}

#[derive(Debug, Subcommand)]
pub enum AppSub {
    /// Create an app; prints its worker token, which is shown only once.
    Create { name: String },
    /// List apps.
    List,
}

pub fn run(cmd: AppCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        let ctx = Ctx::new(&cmd.common);
        exec(&ctx, cmd.command).await
    })
}

async fn exec(ctx: &Ctx, cmd: AppSub) -> Result<(), CliError> {
    match cmd {
        AppSub::Create { name } => {
            let v = ctx
                .write(Method::POST, "/api/v1/apps", Some(&json!({ "name": name })))
                .await?;
            ctx.print(&v, |v| {
                let mut s = key_values(&[
                    ("id", text(&v["id"])),
                    ("name", text(&v["name"])),
                    ("created", time_field(&v["created_at_ms"])),
                    ("worker token", text(&v["worker_token"])),
                ]);
                s.push_str("\nKeep the worker token: it is not shown again.\n");
                s
            });
        }
        AppSub::List => {
            let v = ctx.get("/api/v1/apps").await?;
            ctx.print(&v, app_table);
        }
    }
    Ok(())
}

pub fn app_table(v: &Value) -> String {
    let mut t = Table::new(&["ID", "NAME", "CREATED"]);
    for a in v["apps"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&a["id"]),
            text(&a["name"]),
            time_field(&a["created_at_ms"]),
        ]);
    }
    if t.is_empty() {
        "no apps\n".into()
    } else {
        t.render()
    }
}
