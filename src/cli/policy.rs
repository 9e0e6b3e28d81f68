//! `raftjob policy get|set`: the operator's processor policy, for the whole cluster
//! (`/api/v1/policy`) or one app (`/api/v1/apps/{name}/policy`), admin only. `set`
//! reads the policy, changes what its flags name and writes the whole policy back.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::job::encode;
use super::output::key_values;
use super::{CliError, Common, Ctx};
use crate::client::ClientError;

#[derive(Debug, Args)]
pub struct PolicyCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: PolicySub,
}

#[derive(Debug, Subcommand)]
pub enum PolicySub {
    /// Show the cluster's policy, or an app's with --app.
    Get {
        /// The app whose own policy to show (it narrows the cluster's).
        #[arg(long)]
        app: Option<String>,
    },
    /// Change the cluster's policy, or an app's with --app. What no flag names keeps
    /// its current value.
    Set {
        /// The app whose own policy to change (it narrows the cluster's).
        #[arg(long)]
        app: Option<String>,
        /// Whether jobs may use the shell processor.
        #[arg(long, value_parser = ["enabled", "disabled"])]
        shell: Option<String>,
        /// Where the HTTP processor may send requests: a host name (api.example.com),
        /// a pattern (*.example.com), an address or a network (10.0.0.0/8). Repeat it
        /// for several; the entries given replace the allow list.
        #[arg(long = "http-allow", value_name = "ENTRY")]
        http_allow: Vec<String>,
        /// Where the HTTP processor may never send requests, in the same forms. Repeat
        /// it for several; the entries given replace the deny list.
        #[arg(long = "http-deny", value_name = "ENTRY")]
        http_deny: Vec<String>,
        /// Empty both lists (before any --http-allow or --http-deny given with it).
        #[arg(long)]
        clear_http: bool,
    },
}

pub fn run(cmd: PolicyCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        let ctx = Ctx::new(&cmd.common);
        exec(&ctx, cmd.command).await
    })
}

fn policy_path(app: Option<&str>) -> String {
    match app {
        Some(a) => format!("/api/v1/apps/{}/policy", encode(a)),
        None => "/api/v1/policy".into(),
    }
}

async fn exec(ctx: &Ctx, cmd: PolicySub) -> Result<(), CliError> {
    match cmd {
        PolicySub::Get { app } => {
            let v = send(ctx, Method::GET, &policy_path(app.as_deref()), None).await?;
            ctx.print(&v, |v| policy_detail(app.as_deref(), v));
        }
        PolicySub::Set {
            app,
            shell,
            http_allow,
            http_deny,
            clear_http,
        } => {
            if shell.is_none() && http_allow.is_empty() && http_deny.is_empty() && !clear_http {
                return Err(CliError::Usage(
                    "nothing to change: give --shell, --http-allow, --http-deny or --clear-http"
                        .into(),
                ));
            }
            let path = policy_path(app.as_deref());
            let current = send(ctx, Method::GET, &path, None).await?;
            let body = changed(
                &current,
                shell.as_deref().map(|s| s == "enabled"),
                &http_allow,
                &http_deny,
                clear_http,
            );
            let v = send(ctx, Method::PUT, &path, Some(&body)).await?;
            ctx.print(&v, |v| policy_detail(app.as_deref(), v));
        }
    }
    Ok(())
}

/// The whole policy to write: `current` (as the API shows it, where an empty list may
/// be left out) with the flags' changes.
fn changed(
    current: &Value,
    shell: Option<bool>,
    http_allow: &[String],
    http_deny: &[String],
    clear_http: bool,
) -> Value {
    let list = |field: &str, given: &[String]| -> Vec<Value> {
        if !given.is_empty() {
            given.iter().map(|e| json!(e)).collect()
        } else if clear_http {
            Vec::new()
        } else {
            current[field].as_array().cloned().unwrap_or_default()
        }
    };
    json!({
        "shell_enabled": shell.unwrap_or_else(|| current["shell_enabled"].as_bool().unwrap_or(true)),
        "http_allow": list("http_allow", http_allow),
        "http_deny": list("http_deny", http_deny),
    })
}

/// A policy as key/value lines, one list entry per line.
pub fn policy_detail(app: Option<&str>, v: &Value) -> String {
    let entries = |field: &str, empty: &str| {
        let list: Vec<String> = v[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(super::output::text)
            .collect();
        if list.is_empty() {
            empty.to_string()
        } else {
            list.join("\n")
        }
    };
    let applies_to = match app {
        Some(a) => format!("app {a} (narrows the cluster's policy: a job must pass both)"),
        None => "the cluster".into(),
    };
    let shell = match v["shell_enabled"].as_bool() {
        Some(false) => "disabled",
        _ => "enabled",
    };
    key_values(&[
        ("policy of", applies_to),
        ("shell", shell.into()),
        (
            "http allow",
            entries("http_allow", "- (any destination not denied)"),
        ),
        ("http deny", entries("http_deny", "-")),
    ])
}

/// A request like [`Ctx::get`] and [`Ctx::write`] (a write gets a fresh idempotency
/// key), whose API error also names the problem's `field` when the detail does not
/// (`error: validation_failed: http_deny[0]: "http://x" is not a host name …`).
/// `token` and `audit` use it too.
pub(super) async fn send(
    ctx: &Ctx,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CliError> {
    if ctx.client.servers().is_empty() {
        return Err(CliError::Usage(
            "no server address: pass --server HOST:PORT or set RAFTJOB_SERVER".into(),
        ));
    }
    let key = (method != Method::GET).then(|| format!("cli-{}", uuid::Uuid::new_v4()));
    ctx.client
        .request(method, path, body, key.as_deref())
        .await
        .map_err(with_field)
}

fn with_field(e: ClientError) -> CliError {
    let field = match &e {
        ClientError::Api { problem, .. } => problem["field"].as_str().map(str::to_string),
        _ => None,
    };
    match CliError::from(e) {
        CliError::Api {
            status,
            code,
            detail,
        } => match field {
            Some(f) if !f.is_empty() && !detail.contains(&f) => CliError::Api {
                status,
                code,
                detail: format!("{f}: {detail}"),
            },
            _ => CliError::Api {
                status,
                code,
                detail,
            },
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_change_only_what_they_name() {
        let current = json!({"shell_enabled": false, "http_deny": ["10.0.0.0/8"]});
        assert_eq!(
            changed(&current, None, &["api.example.com".into()], &[], false),
            json!({"shell_enabled": false, "http_allow": ["api.example.com"],
                   "http_deny": ["10.0.0.0/8"]})
        );
        assert_eq!(
            changed(&current, Some(true), &[], &[], true),
            json!({"shell_enabled": true, "http_allow": [], "http_deny": []})
        );
        assert_eq!(
            changed(&current, None, &[], &["127.0.0.0/8".into()], true),
            json!({"shell_enabled": false, "http_allow": [], "http_deny": ["127.0.0.0/8"]})
        );
        assert_eq!(
            changed(&json!({}), None, &[], &[], false),
            json!({"shell_enabled": true, "http_allow": [], "http_deny": []})
        );
    }

    #[test]
    fn detail_lists_one_entry_per_line() {
        let out = policy_detail(
            Some("shop"),
            &json!({"shell_enabled": false, "http_deny": ["127.0.0.0/8", "*.internal"]}),
        );
        assert_eq!(
            out,
            "policy of   app shop (narrows the cluster's policy: a job must pass both)\n\
             shell       disabled\n\
             http allow  - (any destination not denied)\n\
             http deny   127.0.0.0/8\n\
             \x20           *.internal\n"
        );
    }

    #[test]
    fn api_errors_name_the_field() {
        let e = with_field(ClientError::Api {
            status: 400,
            code: "validation_failed".into(),
            detail: "\"http://x\" is not a host name".into(),
            problem: json!({"field": "http_deny[0]"}),
        });
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.message(),
            "error: validation_failed: http_deny[0]: \"http://x\" is not a host name"
        );
        let e = with_field(ClientError::Api {
            status: 400,
            code: "validation_failed".into(),
            detail: "limit must be between 1 and 1000, got 0".into(),
            problem: json!({"field": "limit"}),
        });
        assert_eq!(
            e.message(),
            "error: validation_failed: limit must be between 1 and 1000, got 0"
        );
    }
}
