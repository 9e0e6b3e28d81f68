//! `raftjob cluster status|add|remove`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::output::{key_values, text, Table};
use super::{display_addr, CliError, Common, Ctx};
use crate::client::{Client, ClientError};

#[derive(Debug, Args)]
pub struct ClusterCmd {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: ClusterSub,
}

#[derive(Debug, Subcommand)]
pub enum ClusterSub {
    /// Members, roles, term, commit and applied indexes, replication lag, leader.
    /// Exits with 2 when no server answers or there is no leader.
    Status,
    /// Add a voter (start the new node first).
    Add {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's cluster port address, HOST:PORT, as the other servers reach it.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Remove a voter (it may be the leader).
    Remove {
        /// The node id to remove.
        #[arg(long)]
        id: u64,
    },
    /// Hand the leadership over to a caught-up voter (for maintenance on the leader).
    /// Exits with 1 if the target is not a caught-up voter or already leads.
    TransferLeader {
        /// The voter that should become the leader.
        #[arg(long)]
        to: u64,
    },
}

/// Membership changes wait on the server for up to 60 s (a learner catching up).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);
/// Status asks several nodes; a node that hangs should not hold it up for long.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(cmd: ClusterCmd) -> ExitCode {
    let common = cmd.common.clone();
    super::run(&common, async move {
        match cmd.command {
            ClusterSub::Status => status(&cmd.common).await,
            ClusterSub::Add { id, addr } => {
                let ctx = Ctx::with_timeout(&cmd.common, MEMBERSHIP_TIMEOUT);
                let body = json!({"id": id, "cluster_addr": addr});
                let v = ctx
                    .write_once(Method::POST, "/api/v1/cluster/members", Some(&body))
                    .await?;
                ctx.print(&v, |v| {
                    format!(
                        "node {id} ({addr}) added as a voter: {}\n",
                        text(&v["message"])
                    )
                });
                Ok(())
            }
            ClusterSub::TransferLeader { to } => transfer_leader(&cmd.common, to).await,
            ClusterSub::Remove { id } => {
                let ctx = Ctx::with_timeout(&cmd.common, MEMBERSHIP_TIMEOUT);
                let v = ctx
                    .write_once(
                        Method::DELETE,
                        &format!("/api/v1/cluster/members/{id}"),
                        None,
                    )
                    .await?;
                ctx.print(&v, |v| {
                    format!("node {id} removed: {}\n", text(&v["message"]))
                });
                Ok(())
            }
        }
    })
}

/// A transfer waits on the server for the target to catch up (3 s) and for up to
/// three election attempts.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

async fn transfer_leader(common: &Common, to: u64) -> Result<(), CliError> {
    let ctx = Ctx::with_timeout(common, TRANSFER_TIMEOUT);
    let started = std::time::Instant::now();
    let body = json!({ "to": to });
    let v = ctx
        .write_once(Method::POST, "/api/v1/cluster/transfer-leader", Some(&body))
        .await?;
    let seen_ms = started.elapsed().as_millis();
    ctx.print(&v, |v| render_transfer(v, seen_ms));
    Ok(())
}

/// `leadership moved from node 1 to node 2 in 312 ms (...)`.
pub fn render_transfer(v: &Value, seen_ms: u128) -> String {
    format!(
        "leadership moved from node {} to node {} in {} ms (catch-up {} ms, {} election attempt(s); {} ms as seen by this command)\n",
        text(&v["previous_leader_id"]),
        text(&v["new_leader_id"]),
        text(&v["took_ms"]),
        text(&v["catch_up_ms"]),
        text(&v["attempts"]),
        seen_ms
    )
}

/// One node's answer to `GET /api/v1/cluster`.
async fn view_of(addr: &str, token: &str) -> Result<Value, ClientError> {
    Client::with_timeouts([addr], token, super::CONNECT_TIMEOUT, STATUS_TIMEOUT)
        .request(Method::GET, "/api/v1/cluster", None, None)
        .await
}

fn is_leader_view(v: &Value) -> bool {
    v["leader_id"].is_u64() && v["leader_id"] == v["node_id"]
}

async fn status(common: &Common) -> Result<(), CliError> {
    let ctx = Ctx::new(common);
    let token = common.token.clone().unwrap_or_default();
    let servers: Vec<String> = ctx.client.servers().to_vec();
    if servers.is_empty() {
        return Err(CliError::Usage(
            "no server address: pass --server HOST:PORT or set RAFTJOB_SERVER".into(),
        ));
    }

    // Every server given, at once.
    let answers = futures::future::join_all(servers.iter().map(|s| view_of(s, &token))).await;
    let mut views: Vec<Value> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut api_error: Option<ClientError> = None;
    for (s, a) in servers.iter().zip(answers) {
        match a {
            Ok(v) => views.push(v),
            Err(ClientError::Unreachable { last, .. }) => failures.push(last),
            Err(e) => {
                failures.push(format!("{s}: {e}"));
                api_error.get_or_insert(e);
            }
        }
    }
    if views.is_empty() {
        if let Some(e) = api_error {
            return Err(e.into());
        }
        return Err(ClientError::Unreachable {
            servers: servers.join(", "),
            last: failures.join("; "),
        }
        .into());
    }

    // Prefer the leader's own view: only it knows how far each member has replicated.
    let mut chosen = views.iter().find(|v| is_leader_view(v)).cloned();
    if chosen.is_none() {
        let leader_addr = views.iter().find_map(|v| {
            let leader = v["leader_id"].as_u64()?;
            v["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"].as_u64() == Some(leader))?["api_addr"]
                .as_str()
                .map(str::to_string)
        });
        if let Some(addr) = leader_addr {
            if let Ok(v) = view_of(&addr, &token).await {
                if is_leader_view(&v) {
                    views.push(v.clone());
                    chosen = Some(v);
                }
            }
        }
    }
    let main = chosen.unwrap_or_else(|| views[0].clone());

    // Each member's own view (term, commit and applied indexes as that node sees them).
    let mut own: BTreeMap<u64, Result<Value, String>> = BTreeMap::new();
    for v in &views {
        if let Some(id) = v["node_id"].as_u64() {
            own.insert(id, Ok(v.clone()));
        }
    }
    let missing: Vec<(u64, String)> = main["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let id = m["id"].as_u64()?;
            let addr = m["api_addr"].as_str()?.to_string();
            (!own.contains_key(&id)).then_some((id, addr))
        })
        .collect();
    let fetched =
        futures::future::join_all(missing.iter().map(|(_, addr)| view_of(addr, &token))).await;
    for ((id, _), r) in missing.into_iter().zip(fetched) {
        own.insert(id, r.map_err(|_| "unreachable".to_string()));
    }

    // A leader in the metrics may have lost its quorum (openraft 0.9 keeps the role
    // until it hears of a higher term): confirm it with one linearizable read.
    let quorum = if main["leader_id"].is_u64() {
        Some(confirm_quorum(&servers, &token).await)
    } else {
        None
    };

    ctx.print(&main, |v| render_status(v, &own, quorum.as_ref()));
    match (main["leader_id"].as_u64(), quorum) {
        (Some(_), Some(Ok(_))) => Ok(()),
        (Some(l), Some(Err(e))) => Err(CliError::NoLeader(format!(
            "node {l} is named leader, but a linearizable read through it did not complete ({e}); a majority of the voters may be down or cut off"
        ))),
        _ => Err(CliError::NoLeader(format!(
            "no leader is known to node {} (an election may be in progress, or a majority is down)",
            text(&main["node_id"])
        ))),
    }
}

/// How long the quorum check may take before the leader counts as unconfirmed.
const QUORUM_TIMEOUT: Duration = Duration::from_secs(4);

/// One linearizable read (a ReadIndex round: the leader hears from a quorum). Returns
/// how long it took.
async fn confirm_quorum(servers: &[String], token: &str) -> Result<Duration, String> {
    let start = std::time::Instant::now();
    let client = Client::with_timeouts(
        servers.iter().cloned(),
        token,
        super::CONNECT_TIMEOUT,
        QUORUM_TIMEOUT,
    );
    let read = client.request(
        Method::GET,
        "/api/v1/instances?limit=1&consistency=linearizable",
        None,
        None,
    );
    // Each server gets QUORUM_TIMEOUT; all of them together get a little more.
    let Ok(answer) = tokio::time::timeout(QUORUM_TIMEOUT + Duration::from_secs(2), read).await
    else {
        return Err(format!(
            "no answer within {} s",
            (QUORUM_TIMEOUT + Duration::from_secs(2)).as_secs()
        ));
    };
    match answer {
        Ok(_) => Ok(start.elapsed()),
        Err(ClientError::Unreachable { last, .. }) if last.contains("timed out") => {
            Err(format!("no answer within {} s", QUORUM_TIMEOUT.as_secs()))
        }
        Err(e) => Err(CliError::from(e)
            .message()
            .trim_start_matches("error: ")
            .to_string()),
    }
}

/// The readable status: a summary, then one row per member.
pub fn render_status(
    v: &Value,
    own: &BTreeMap<u64, Result<Value, String>>,
    quorum: Option<&Result<Duration, String>>,
) -> String {
    let leader_id = v["leader_id"].as_u64();
    let from_leader = is_leader_view(v);
    let members: Vec<&Value> = v["members"].as_array().into_iter().flatten().collect();
    let leader_api = leader_id.and_then(|l| {
        members
            .iter()
            .find(|m| m["id"].as_u64() == Some(l))
            .and_then(|m| m["api_addr"].as_str())
    });
    let leader = match (leader_id, leader_api) {
        (Some(l), Some(a)) => format!("{l} ({a})"),
        (Some(l), None) => l.to_string(),
        (None, _) => "none".into(),
    };
    let answered = format!(
        "node {}{}",
        text(&v["node_id"]),
        if from_leader { " (the leader)" } else { "" }
    );
    let quorum = match quorum {
        Some(Ok(took)) => format!("confirmed (linearizable read in {} ms)", took.as_millis()),
        Some(Err(e)) => format!("NOT confirmed: {e}"),
        None => "-".into(),
    };
    let mut out = key_values(&[
        ("cluster", text(&v["cluster_id"])),
        ("leader", leader),
        ("quorum", quorum),
        ("term", text(&v["term"])),
        ("commit index", text(&v["commit_index"])),
        ("applied index", text(&v["applied_index"])),
        ("last log index", text(&v["last_log_index"])),
        ("snapshot index", text(&v["snapshot_index"])),
        ("answered by", answered),
    ]);
    out.push('\n');

    let leader_last = v["last_log_index"].as_u64();
    let mut t = Table::new(&[
        "ID",
        "ROLE",
        "API ADDR",
        "CLUSTER ADDR",
        "TERM",
        "COMMIT",
        "APPLIED",
        "MATCHED",
        "LAG",
    ]);
    for m in &members {
        let id = m["id"].as_u64();
        let (term, commit, applied) = match id.and_then(|id| own.get(&id)) {
            Some(Ok(o)) => (
                text(&o["term"]),
                text(&o["commit_index"]),
                text(&o["applied_index"]),
            ),
            Some(Err(e)) => (e.clone(), "-".into(), "-".into()),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let matched = m["matched_index"].as_u64();
        let lag = match (from_leader, leader_last, matched) {
            (true, Some(last), Some(mi)) => last.saturating_sub(mi).to_string(),
            (true, Some(last), None) => format!("{last} (nothing matched)"),
            _ => "-".into(),
        };
        t.row(vec![
            text(&m["id"]),
            text(&m["role"]),
            m["api_addr"]
                .as_str()
                .map(display_addr)
                .unwrap_or("-")
                .into(),
            text(&m["cluster_addr"]),
            term,
            commit,
            applied,
            matched.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            lag,
        ]);
    }
    out.push_str(&t.render());
    if !from_leader {
        out.push_str(
            "\nMATCHED and LAG are unknown: the leader's api port did not answer (only the leader tracks replication).\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_shows_roles_and_lag_from_the_leader() {
        let v = json!({
            "cluster_id": "c1", "node_id": 2, "leader_id": 2, "term": 4,
            "commit_index": 120, "applied_index": 120, "last_log_index": 120,
            "snapshot_index": null,
            "members": [
                {"id": 1, "role": "follower", "voter": true, "cluster_addr": "127.0.0.1:7801",
                 "api_addr": "127.0.0.1:7701", "transports": {}, "matched_index": 118},
                {"id": 2, "role": "leader", "voter": true, "cluster_addr": "127.0.0.1:7802",
                 "api_addr": "127.0.0.1:7702", "transports": {}, "matched_index": 120},
                {"id": 3, "role": "learner", "voter": false, "cluster_addr": "127.0.0.1:7803",
                 "api_addr": null, "transports": {}, "matched_index": null}
            ]
        });
        let mut own = BTreeMap::new();
        own.insert(2, Ok(v.clone()));
        own.insert(1, Err("unreachable".to_string()));
        let out = render_status(&v, &own, Some(&Ok(Duration::from_millis(3))));
        assert!(out.contains("leader          2 (127.0.0.1:7702)"), "{out}");
        assert!(out.contains("answered by     node 2 (the leader)"), "{out}");
        assert!(
            out.contains("quorum          confirmed (linearizable read in 3 ms)"),
            "{out}"
        );
        let rows: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("ID")).collect();
        assert_eq!(rows.len(), 4, "{out}");
        assert!(rows[1].starts_with("1   follower  127.0.0.1:7701"), "{out}");
        assert!(rows[1].contains("unreachable"), "{out}");
        assert!(rows[1].trim_end().ends_with("118      2"), "{out}");
        assert!(rows[2].trim_end().ends_with("120      0"), "{out}");
        assert!(rows[3].contains("learner"), "{out}");
        assert!(rows[3].contains("120 (nothing matched)"), "{out}");
    }
}
