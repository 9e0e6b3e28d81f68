//! The operator CLI: `raftjob cluster|job|instance|app|token|audit|policy ...` and
//! `raftjob worker list`, over the HTTP API of any server (see `docs/cli.md`).
//!
//! Every command group takes the common flags ([`Common`]), builds a [`Ctx`] and
//! prints either a readable table or, with `--json`, the API's JSON answer. Errors are
//! printed as `error: <code>: <detail>`; the exit codes are in [`CliError::exit_code`].

pub mod app;
pub mod audit;
pub mod cluster;
pub mod drill;
pub mod instance;
pub mod job;
pub mod output;
pub mod policy;
pub mod token;
pub mod worker;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, ClientError};

/// The api address used when neither `--server` nor `RAFTJOB_SERVER` is given.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7701";

/// Flags every CLI command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server api addresses (HOST:PORT or URLs), comma separated or repeated; the
    /// first one that answers is used.
    #[arg(
        long = "server",
        env = "RAFTJOB_SERVER",
        value_delimiter = ',',
        default_value = DEFAULT_SERVER,
        global = true,
        value_name = "ADDR[,ADDR...]"
    )]
    pub servers: Vec<String>,
    /// The admin token.
    #[arg(
        long,
        env = "RAFTJOB_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM file of the CA that signed the servers' api certificates (TLS); addresses
    /// without a scheme then mean https://.
    #[arg(long, env = "RAFTJOB_CA_FILE", global = true, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The API answered with a problem (`application/problem+json`).
    Api {
        status: u16,
        code: String,
        detail: String,
    },
    /// No server answered.
    Unreachable { tried: Vec<String>, detail: String },
    /// Bad input on the command line (a file that cannot be read, JSON that does not
    /// parse).
    Usage(String),
    /// `cluster status`: the servers answered, but none knows a leader.
    NoLeader(String),
    /// Anything else (an answer that could not be understood).
    Other(String),
}

impl CliError {
    /// 1: the API refused the request, or its answer could not be understood.
    /// 2: bad input, no server answered, or (`cluster status`) there is no leader.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Api { .. } | Self::Other(_) => 1,
            Self::Unreachable { .. } | Self::Usage(_) | Self::NoLeader(_) => 2,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Api { code, detail, .. } => format!("error: {code}: {detail}"),
            Self::Unreachable { tried, detail } => format!(
                "error: unreachable: no raftjob server answered (tried {}): {detail}",
                tried.join(", ")
            ),
            Self::Usage(m) => format!("error: usage: {m}"),
            Self::NoLeader(m) => format!("error: no_leader: {m}"),
            Self::Other(m) => format!("error: {m}"),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api {
                status,
                code,
                detail,
                ..
            } => Self::Api {
                status,
                code,
                detail,
            },
            ClientError::Unreachable { servers, last } => Self::Unreachable {
                tried: servers
                    .split(", ")
                    .map(|s| display_addr(s).to_string())
                    .collect(),
                detail: strip_schemes(&last),
            },
            ClientError::Decode(m) => Self::Other(format!("bad answer: {m}")),
        }
    }
}

/// `http://127.0.0.1:7701` → `127.0.0.1:7701` (URLs with `https` are kept as given).
pub fn display_addr(s: &str) -> &str {
    s.strip_prefix("http://").unwrap_or(s)
}

fn strip_schemes(s: &str) -> String {
    s.replace("http://", "")
}

/// What a command needs: a client for the servers given, and the output mode.
pub struct Ctx {
    pub client: Client,
    pub common: Common,
}

/// Per-server connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole-request timeout: above the servers' own 10 s write and read deadlines.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Ctx {
    pub fn new(common: &Common) -> Self {
        Self::with_timeout(common, REQUEST_TIMEOUT)
    }

    pub fn with_timeout(common: &Common, total: Duration) -> Self {
        let servers: Vec<String> = common
            .servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            client: Client::with_timeouts(
                servers,
                common.token.clone().unwrap_or_default(),
                CONNECT_TIMEOUT,
                total,
            ),
            common: common.clone(),
        }
    }

    pub fn json(&self) -> bool {
        self.common.json
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.check_servers()?;
        Ok(self.client.request(Method::GET, path, None, None).await?)
    }

    /// A write with a fresh idempotency key, so it may safely go on to the next server
    /// when one takes the request and then fails.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.check_servers()?;
        let key = format!("cli-{}", uuid::Uuid::new_v4());
        Ok(self.client.request(method, path, body, Some(&key)).await?)
    }

    /// A write sent without an idempotency key (membership changes ignore it).
    pub async fn write_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.check_servers()?;
        Ok(self.client.request(method, path, body, None).await?)
    }

    fn check_servers(&self) -> Result<(), CliError> {
        if self.client.servers().is_empty() {
            return Err(CliError::Usage(
                "no server address: pass --server HOST:PORT or set RAFTJOB_SERVER".into(),
            ));
        }
        Ok(())
    }

    /// Prints the value as JSON with `--json`, or else the readable form.
    pub fn print(&self, v: &Value, readable: impl FnOnce(&Value) -> String) {
        if self.json() {
            print!("{}", output::pretty(v));
        } else {
            print!("{}", readable(v));
        }
    }
}

/// Parses JSON given on the command line; `what` names the flag in the error.
pub fn parse_json(s: &str, what: &str) -> Result<Value, CliError> {
    serde_json::from_str(s).map_err(|e| CliError::Usage(format!("{what} is not valid JSON: {e}")))
}

/// Runs one command on a small runtime and turns its outcome into the exit code,
/// printing the error (and a hint for a missing token) on stderr.
pub fn run<F>(common: &Common, f: F) -> ExitCode
where
    F: Future<Output = Result<(), CliError>>,
{
    if let Some(ca) = &common.ca_file {
        if let Err(e) = crate::client::set_default_ca_file(ca) {
            eprintln!(
                "{}",
                CliError::Usage(format!("{e} (--ca-file, RAFTJOB_CA_FILE)")).message()
            );
            return ExitCode::from(2);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.message());
            if matches!(&e, CliError::Api { code, .. } if code == "unauthorized")
                && common.token.as_deref().unwrap_or("").is_empty()
            {
                eprintln!("hint: pass the admin token with --token or RAFTJOB_ADMIN_TOKEN");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_become_cli_errors() {
        let e: CliError = ClientError::Unreachable {
            servers: "http://127.0.0.1:1, http://127.0.0.1:2".into(),
            last: "http://127.0.0.1:1: refused; http://127.0.0.1:2: refused".into(),
        }
        .into();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.message(),
            "error: unreachable: no raftjob server answered (tried 127.0.0.1:1, 127.0.0.1:2): \
             127.0.0.1:1: refused; 127.0.0.1:2: refused"
        );
        let e: CliError = ClientError::Api {
            status: 404,
            code: "not_found".into(),
            detail: "job 9 does not exist".into(),
            problem: Value::Null,
        }
        .into();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.message(), "error: not_found: job 9 does not exist");
    }
}
