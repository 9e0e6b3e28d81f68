//! What the built-in processors may do: the operator's policy, set for the whole
//! cluster and, narrower, per app (`PUT /api/v1/policy`, `PUT /api/v1/apps/{name}/policy`).
//!
//! Whoever may create jobs may make a worker run a shell command or send an HTTP
//! request from inside the operator's network. The policy narrows that: the shell
//! processor can be switched off, and the HTTP processor's destinations limited by
//! allow and deny lists of host names and networks. An app's policy can only narrow
//! the cluster's: a request passes only if both allow it.
//!
//! Everything here is pure, so the state machine applies it deterministically: apply
//! refuses a job that breaks the policy, and refuses to dispatch an instance whose job
//! breaks it (the policy may have tightened after the job was made). What needs DNS
//! (a host name's addresses) is checked by the worker, which gets the rules with each
//! dispatch and checks every address it connects to ([`HttpRules::check_ip`]).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Processor;

/// Most entries in one allow or deny list.
pub const MAX_RULES: usize = 256;

/// A cluster's or an app's processor policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessorPolicy {
    /// Whether jobs may use the shell processor. `false` refuses new shell jobs and
    /// fails the instances of existing ones instead of dispatching them.
    #[serde(default = "yes")]
    pub shell_enabled: bool,
    /// Where the HTTP processor may send requests: host names (`api.example.com`),
    /// subdomain patterns (`*.example.com`), addresses (`10.1.2.3`) and networks
    /// (`10.0.0.0/8`, `fd00::/8`). Empty: anywhere not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_allow: Vec<String>,
    /// Where the HTTP processor may never send requests, in the same forms. A denied
    /// network also refuses a host name that resolves into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_deny: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for ProcessorPolicy {
    fn default() -> Self {
        Self {
            shell_enabled: true,
            http_allow: Vec::new(),
            http_deny: Vec::new(),
        }
    }
}

impl ProcessorPolicy {
    /// Checks every entry, naming the first bad one (`http_allow[2]`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (field, list) in [
            ("http_allow", &self.http_allow),
            ("http_deny", &self.http_deny),
        ] {
            if list.len() > MAX_RULES {
                return Err(PolicyError {
                    field: field.into(),
                    message: format!("at most {MAX_RULES} entries"),
                });
            }
            for (i, entry) in list.iter().enumerate() {
                Rule::parse(entry).map_err(|message| PolicyError {
                    field: format!("{field}[{i}]"),
                    message,
                })?;
            }
        }
        Ok(())
    }

    /// The HTTP rules of this policy (entries that do not parse are skipped: they were
    /// validated before they were stored).
    pub fn http_rules(&self) -> HttpRules {
        let parse = |list: &[String]| list.iter().filter_map(|e| Rule::parse(e).ok()).collect();
        HttpRules {
            allow: parse(&self.http_allow),
            deny: parse(&self.http_deny),
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A refused policy entry or processor: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

/// One allow or deny entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Rule {
    /// An exact host name, lowercase, without a trailing dot.
    Host(String),
    /// `*.example.com`: any name under `example.com` (not `example.com` itself).
    Suffix(String),
    /// An address (as a /32 or /128) or a network.
    Net(IpNet),
}

impl Rule {
    fn parse(entry: &str) -> Result<Self, String> {
        let e = entry.trim();
        if e.is_empty() || e.len() > 253 {
            return Err(format!("{entry:?}: 1 to 253 characters"));
        }
        if let Ok(net) = IpNet::from_str(e) {
            return Ok(Rule::Net(net.trunc()));
        }
        if let Ok(ip) = IpAddr::from_str(e.trim_start_matches('[').trim_end_matches(']')) {
            return Ok(Rule::Net(IpNet::from(ip)));
        }
        let (suffix, name) = match e.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, e),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!(
                "{entry:?} is not a host name (api.example.com), a pattern (*.example.com), an address or a network (10.0.0.0/8)"
            ));
        }
        Ok(if suffix {
            Rule::Suffix(name)
        } else {
            Rule::Host(name)
        })
    }

    fn matches_host(&self, host: &str) -> bool {
        match self {
            Rule::Host(h) => h == host,
            Rule::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            Rule::Net(_) => false,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Rule::Net(net) => {
                net.contains(&ip) || canonical(ip).is_some_and(|v4| net.contains(&v4))
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it is, so a
/// deny of `10.0.0.0/8` cannot be walked around in IPv6 notation.
fn canonical(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}

/// One policy's HTTP allow and deny rules, in the form a worker checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HttpRules {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// What a URL's host is, for the checks.
enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

fn host_of(url: &url::Url) -> Option<Host<'_>> {
    match url.host()? {
        url::Host::Domain(d) => Some(Host::Name(d)),
        url::Host::Ipv4(ip) => Some(Host::Ip(ip.into())),
        url::Host::Ipv6(ip) => Some(Host::Ip(ip.into())),
    }
}

impl HttpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// What can be decided from the URL alone (no DNS): a denied host name or
    /// address, or a host that no allow entry can admit whatever it resolves to.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let Some(host) = host_of(url) else {
            return Err(format!("{url} has no host"));
        };
        match host {
            Host::Ip(ip) => self.check_ip(ip),
            Host::Name(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if self.deny.iter().any(|r| r.matches_host(&name)) {
                    return Err(format!("host {name} is denied by the http_deny list"));
                }
                let nets_allowed = self.allow.iter().any(|r| matches!(r, Rule::Net(_)));
                if !self.allow.is_empty()
                    && !nets_allowed
                    && !self.allow.iter().any(|r| r.matches_host(&name))
                {
                    return Err(format!("host {name} is not in the http_allow list"));
                }
                Ok(())
            }
        }
    }

    /// Whether the URL's host name is admitted by name (so its addresses need only
    /// pass the deny list).
    pub fn allows_name(&self, url: &url::Url) -> bool {
        match host_of(url) {
            Some(Host::Name(name)) => self.allows_host(name),
            _ => self.allow.is_empty(),
        }
    }

    fn allows_host(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.allow.is_empty() || self.allow.iter().any(|r| r.matches_host(&name))
    }

    /// An address that `host` resolved to, as the worker connects: it must pass the
    /// deny list and, unless the name itself is allowed, the allow list.
    pub fn check_resolved(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if self.allows_host(host) {
            self.check_ip_of_allowed_name(ip)
        } else {
            self.check_ip(ip)
        }
    }

    /// An address a request would connect to: never in a denied network, and, when
    /// the host was not admitted by name, in an allowed network.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        self.check_ip_of_allowed_name(ip)?;
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.contains(ip)) {
            return Err(format!("address {ip} is not in the http_allow list"));
        }
        Ok(())
    }

    /// Like [`check_ip`](Self::check_ip) for an address of a host admitted by name:
    /// only the deny list applies.
    pub fn check_ip_of_allowed_name(&self, ip: IpAddr) -> Result<(), String> {
        if self.deny.iter().any(|r| r.contains(ip)) {
            return Err(format!(
                "address {ip} is in a network of the http_deny list"
            ));
        }
        Ok(())
    }
}

/// Whether a processor may be used under the cluster's and its app's policies; the
/// error names the field and the policy that refused it.
pub fn check_processor(
    cluster: &ProcessorPolicy,
    app_name: &str,
    app: Option<&ProcessorPolicy>,
    processor: &Processor,
) -> Result<(), PolicyError> {
    // Each policy with the words that name it: whose it is, and whose rule refused.
    let app_words = app.map(|p| (p, format!("app {app_name}"), format!("app {app_name}'s")));
    let policies = std::iter::once((
        cluster,
        "the cluster".to_string(),
        "the cluster's".to_string(),
    ))
    .chain(app_words);
    match processor {
        Processor::Shell { .. } => {
            for (p, whom, _) in policies {
                if !p.shell_enabled {
                    return Err(PolicyError {
                        field: "processor.type".into(),
                        message: format!(
                            "the shell processor is disabled for {whom} by the operator's policy"
                        ),
                    });
                }
            }
        }
        Processor::Http { url, .. } => {
            let Ok(url) = url::Url::parse(url) else {
                return Ok(()); // input validation reports a bad URL
            };
            for (p, _, whose) in policies {
                p.http_rules().check_url(&url).map_err(|why| PolicyError {
                    field: "processor.url".into(),
                    message: format!("{why} ({whose} policy)"),
                })?;
            }
        }
        Processor::Custom { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> HttpRules {
        ProcessorPolicy {
            shell_enabled: true,
            http_allow: allow.iter().map(|s| s.to_string()).collect(),
            http_deny: deny.iter().map(|s| s.to_string()).collect(),
        }
        .http_rules()
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn entries_parse_or_name_the_bad_one() {
        let ok = ProcessorPolicy {
            shell_enabled: false,
            http_allow: vec![
                "api.example.com".into(),
                "*.corp.example".into(),
                "10.0.0.0/8".into(),
            ],
            http_deny: vec!["169.254.169.254".into(), "fd00::/8".into(), "[::1]".into()],
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = ProcessorPolicy {
            http_deny: vec!["10.0.0.0/8".into(), "http://x".into()],
            ..ProcessorPolicy::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "http_deny[1]");
        let bad = ProcessorPolicy {
            http_allow: vec!["".into()],
            ..ProcessorPolicy::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "http_allow[0]");
    }

    #[test]
    fn deny_lists_refuse_names_addresses_and_networks() {
        let r = rules(
            &[],
            &[
                "169.254.0.0/16",
                "*.internal",
                "db.example.com",
                "10.0.0.0/8",
            ],
        );
        assert!(r
            .check_url(&url("http://169.254.169.254/latest/meta-data"))
            .is_err());
        assert!(r.check_url(&url("http://a.b.internal/")).is_err());
        assert!(
            r.check_url(&url("http://internal/")).is_ok(),
            "the apex is not under *."
        );
        assert!(r.check_url(&url("https://DB.example.com./x")).is_err());
        assert!(r.check_url(&url("https://example.com/")).is_ok());
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert!(r.check_url(&url("http://[::ffff:10.1.2.3]/")).is_err());
        assert!(r.check_ip("10.9.9.9".parse().unwrap()).is_err());
        assert!(r.check_ip("192.0.2.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn allow_lists_admit_only_what_they_name() {
        let r = rules(&["*.example.com", "192.0.2.0/24"], &["bad.example.com"]);
        assert!(r.check_url(&url("https://api.example.com/")).is_ok());
        assert!(r.check_url(&url("https://bad.example.com/")).is_err());
        assert!(r.check_url(&url("http://192.0.2.7/")).is_ok());
        assert!(r.check_url(&url("http://198.51.100.1/")).is_err());
        // A name not admitted by name may still resolve into an allowed network: that is
        // the worker's call, after DNS.
        assert!(r.check_url(&url("http://other.test/")).is_ok());
        assert!(!r.allows_name(&url("http://other.test/")));
        assert!(r.check_ip("198.51.100.1".parse().unwrap()).is_err());
        assert!(r.check_ip("192.0.2.9".parse().unwrap()).is_ok());

        let names_only = rules(&["api.example.com"], &[]);
        assert!(names_only.check_url(&url("http://other.test/")).is_err());
        assert!(names_only.allows_name(&url("http://API.example.com/")));
    }

    #[test]
    fn an_app_policy_narrows_the_cluster_policy() {
        let cluster = ProcessorPolicy::default();
        let app = ProcessorPolicy {
            shell_enabled: false,
            ..ProcessorPolicy::default()
        };
        let shell = Processor::Shell {
            command: "true".into(),
        };
        assert!(check_processor(&cluster, "a", None, &shell).is_ok());
        let e = check_processor(&cluster, "a", Some(&app), &shell).unwrap_err();
        assert_eq!(e.field, "processor.type");
        assert!(e.message.contains("app a"), "{e}");
        // The app cannot re-enable what the cluster disabled.
        let off = ProcessorPolicy {
            shell_enabled: false,
            ..ProcessorPolicy::default()
        };
        let on = ProcessorPolicy::default();
        assert!(check_processor(&off, "a", Some(&on), &shell).is_err());

        let http = |u: &str| Processor::Http {
            method: "GET".into(),
            url: u.into(),
            headers: Default::default(),
            body: None,
            expect_status: vec![200],
        };
        let app = ProcessorPolicy {
            http_deny: vec!["127.0.0.0/8".into()],
            ..ProcessorPolicy::default()
        };
        let e =
            check_processor(&cluster, "a", Some(&app), &http("http://127.0.0.1:9/")).unwrap_err();
        assert_eq!(e.field, "processor.url");
        assert!(check_processor(&cluster, "a", Some(&app), &http("http://192.0.2.1/")).is_ok());
    }
}
