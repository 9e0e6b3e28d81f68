//! `raftjob healthcheck`: asks a server's api port whether the node is alive
//! (`/healthz`) or ready (`/readyz`: a member that knows a leader), for container
//! HEALTHCHECKs and orchestrator probes. It needs no shell or curl in the image.
//!
//! Exit code 0 when the answer is 200, 1 otherwise, with one line on stdout (success)
//! or stderr (failure).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// The api address checked when neither `--addr` nor `RAFTJOB_API_ADDR` is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7700";

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The server's api address, HOST:PORT. A wildcard listen address such as
    /// 0.0.0.0:7700 (as RAFTJOB_API_ADDR often is in a container) is checked on loopback.
    #[arg(long, env = "RAFTJOB_API_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Check /readyz (a member that knows the leader) instead of /healthz (alive).
    #[arg(long)]
    pub ready: bool,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// PEM CA file for an api port with TLS; HOST:PORT then means https://HOST:PORT
    /// (an https:// address without it trusts the public web PKI roots).
    #[arg(long, env = "RAFTJOB_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The URL to GET: `addr` may be `HOST:PORT` or a URL; wildcard hosts become loopback.
pub fn url_for(addr: &str, ready: bool) -> String {
    let path = if ready { "/readyz" } else { "/healthz" };
    let addr = addr.trim().trim_end_matches('/');
    let (scheme, host_port) = match addr.split_once("://") {
        Some((s, rest)) => (s, rest),
        None => ("http", addr),
    };
    let host_port = match host_port.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => host_port.to_string(),
    };
    format!("{scheme}://{host_port}{path}")
}

/// GETs the URL; `Ok` with a message when the answer is 200, `Err` otherwise.
pub async fn check(url: &str, timeout: Duration) -> Result<String, String> {
    check_with(url, timeout, None).await
}

/// [`check`], trusting the CA of `tls` for https (the public roots when `None`).
pub async fn check_with(
    url: &str,
    timeout: Duration,
    tls: Option<tokio_rustls::rustls::ClientConfig>,
) -> Result<String, String> {
    let builder = match tls {
        Some(c) => crate::tls::http_builder(c),
        None => crate::tls::default_http_builder(),
    };
    let client = builder
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: no answer: {}", error_chain(&e)))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let body: String = body.chars().take(200).collect();
    if status == reqwest::StatusCode::OK {
        Ok(format!("{url}: {status} {body}").trim_end().to_string())
    } else {
        Err(format!("{url}: {status} {body}").trim_end().to_string())
    }
}

/// An error with its causes, `a: b: c`, so "connection refused" is not hidden.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The `raftjob healthcheck` command.
pub fn run(args: HealthcheckArgs) -> ExitCode {
    let tls = match &args.ca_file {
        None => None,
        Some(ca) => match crate::tls::client_config(Some(("ca_file", ca)), None) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("unhealthy: {e} (--ca-file, RAFTJOB_CA_FILE)");
                return ExitCode::from(1);
            }
        },
    };
    let addr = match (&tls, args.addr.contains("://")) {
        (Some(_), false) => format!("https://{}", args.addr.trim()),
        _ => args.addr.clone(),
    };
    let url = url_for(&addr, args.ready);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(check_with(
        &url,
        Duration::from_millis(args.timeout_ms.max(1)),
        tls,
    )) {
        Ok(msg) => {
            println!("healthy: {msg}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("unhealthy: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_use_loopback_for_wildcards_and_pick_the_path() {
        assert_eq!(
            url_for("127.0.0.1:7701", false),
            "http://127.0.0.1:7701/healthz"
        );
        assert_eq!(
            url_for("0.0.0.0:7700", true),
            "http://127.0.0.1:7700/readyz"
        );
        assert_eq!(url_for("[::]:7700", false), "http://[::1]:7700/healthz");
        assert_eq!(
            url_for("http://raftjob-1:7700/", true),
            "http://raftjob-1:7700/readyz"
        );
        assert_eq!(
            url_for("https://0.0.0.0:7700", true),
            "https://127.0.0.1:7700/readyz"
        );
    }
}
