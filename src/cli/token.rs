//! `raftjob token create|list|revoke`: scoped API tokens (admin only; see
//! docs/security.md). A token's secret is shown once, by `create`.

use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{key_values, text, time_field, Table};
use super::policy::send;
use super::{CliError, Common, Ctx};

#[derive(Debug, Args)]
pub struct TokenCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: TokenSub,
}

#[derive(Debug, Subcommand)]
pub enum TokenSub {
    /// Create a token limited to one app and a role; prints its secret, which is shown
    /// only once.
    #[command(group(ArgGroup::new("expiry").args(["expires_at", "expires_in"])))]
    Create {
        /// The one app the token may see and act on (by name).
        #[arg(long)]
        app: String,
        /// read: GET the app's jobs, instances, logs, workers; operate: also run,
        /// stop, cancel, retry, enable, disable; manage: also create, update, delete
        /// jobs.
        #[arg(long, value_parser = ["read", "operate", "manage"])]
        role: String,
        /// What the token is for (letters, digits, `.`, `_`, `-`; 1 to 64 characters).
        #[arg(long)]
        name: String,
        /// When the token stops working, RFC 3339 (2030-01-01T00:00:00Z). Default:
        /// until revoked.
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// When the token stops working, from now: a number and a unit (s, m, h, d,
        /// w), or several (90d, 12h, 1h30m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<chrono::Duration>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: it is refused from then on.
    Revoke { id: u64 },
}

pub fn run(cmd: TokenCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        let ctx = Ctx::new(&cmd.common);
        exec(&ctx, cmd.command).await
    })
}

async fn exec(ctx: &Ctx, cmd: TokenSub) -> Result<(), CliError> {
    match cmd {
        TokenSub::Create {
            app,
            role,
            name,
            expires_at,
            expires_in,
        } => {
            let mut body = json!({ "name": name, "app": app, "role": role });
            let expires_at = match (expires_at, expires_in) {
                (Some(at), _) => Some(at),
                (None, Some(d)) => {
                    Some(chrono::Utc::now().checked_add_signed(d).ok_or_else(|| {
                        CliError::Usage("--expires-in is too far in the future".into())
                    })?)
                }
                (None, None) => None,
            };
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            }
            let v = send(ctx, Method::POST, "/api/v1/tokens", Some(&body)).await?;
            ctx.print(&v, |v| {
                let mut s = token_detail(v);
                s.push_str(&format!(
                    "\nsecret  {}\n\nKeep the secret: it is shown only once (only its hash is stored).\n\
                     Send it as `Authorization: Bearer <secret>`.\n",
                    text(&v["secret"])
                ));
                s
            });
        }
        TokenSub::List => {
            let v = send(ctx, Method::GET, "/api/v1/tokens", None).await?;
            ctx.print(&v, token_table);
        }
        TokenSub::Revoke { id } => {
            let v = send(ctx, Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?;
            ctx.print(&v, |v| {
                format!(
                    "token {id} ({}/{}) is now {}\n",
                    text(&v["app"]),
                    text(&v["name"]),
                    text(&v["status"])
                )
            });
        }
    }
    Ok(())
}

/// One token (`TokenView`) as key/value lines.
pub fn token_detail(v: &Value) -> String {
    key_values(&[
        ("id", text(&v["id"])),
        ("name", text(&v["name"])),
        (
            "app",
            format!("{} (id {})", text(&v["app"]), text(&v["app_id"])),
        ),
        ("role", text(&v["role"])),
        ("status", text(&v["status"])),
        ("created", time_field(&v["created_at_ms"])),
        ("expires", time_field(&v["expires_at_ms"])),
    ])
}

/// `GET /api/v1/tokens` as a table.
pub fn token_table(v: &Value) -> String {
    let mut t = Table::new(&[
        "ID", "NAME", "APP", "ROLE", "STATUS", "CREATED", "EXPIRES", "REVOKED",
    ]);
    for k in v["tokens"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&k["id"]),
            text(&k["name"]),
            text(&k["app"]),
            text(&k["role"]),
            text(&k["status"]),
            time_field(&k["created_at_ms"]),
            time_field(&k["expires_at_ms"]),
            time_field(&k["revoked_at_ms"]),
        ]);
    }
    if t.is_empty() {
        "no tokens\n".into()
    } else {
        t.render()
    }
}

fn parse_rfc3339(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}: write RFC 3339, for example 2030-01-01T00:00:00Z"))
}

/// `90d`, `12h`, `1h30m`, `45s`, `2w`: one or more numbers, each followed by a unit.
fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let bad =
        || format!("{s:?}: write a number and a unit (s, m, h, d, w), for example 90d or 1h30m");
    let s = s.trim();
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    if !digits.is_empty() || s.is_empty() {
        return Err(bad());
    }
    if total == 0 {
        return Err(format!("{s:?}: must be longer than 0 s"));
    }
    chrono::Duration::try_seconds(total).ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(chrono::Duration::days(90)));
        assert_eq!(parse_duration("12h"), Ok(chrono::Duration::hours(12)));
        assert_eq!(parse_duration("1h30m"), Ok(chrono::Duration::minutes(90)));
        assert_eq!(parse_duration("2w"), Ok(chrono::Duration::weeks(2)));
        for bad in [
            "",
            "90",
            "d",
            "1x",
            "0s",
            "1.5h",
            "-1d",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_times() {
        let t = parse_rfc3339("2030-01-01T02:00:00+02:00").unwrap();
        assert_eq!(
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "2030-01-01T00:00:00.000Z"
        );
        assert!(parse_rfc3339("2030-01-01").is_err());
    }

    #[test]
    fn token_rows() {
        let out = token_table(&json!({"tokens": [
            {"id": 3, "name": "ci", "app": "shop", "app_id": 1, "role": "operate",
             "status": "revoked", "created_at_ms": 0, "revoked_at_ms": 1000}]}));
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "3   ci    shop  operate  revoked  1970-01-01T00:00:00.000Z  -        1970-01-01T00:00:01.000Z"
        );
        assert_eq!(token_table(&json!({"tokens": []})), "no tokens\n");
    }
}
