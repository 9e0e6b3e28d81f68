//! The built-in HTTP processor: one request, judged by its status code.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// reqwest 0.12 with rustls (ring), renamed in Cargo.toml: the crate's own `reqwest`
// (0.13) is built without TLS. See the comment on `reqwest-tls` there.
use reqwest_tls as reqwest;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::{truncate_on_char_boundary, ProcessContext, ProcessError, ProcessOutcome, Processor};
use crate::state::policy::HttpRules;

/// How much of the response body goes into the result; the rest is not even read.
const BODY_CAP: usize = 4096;

/// Sends `method url` with `headers` and `body`. Success iff the status is in
/// `expect_status`.
#[derive(Debug, Clone)]
pub struct HttpProcessor {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub expect_status: Vec<u16>,
    /// The operator's destination rules (the cluster's, the app's); all must pass.
    rules: Vec<HttpRules>,
    client: reqwest::Client,
}

/// One client for every HTTP job on this worker, so connections are pooled.
fn shared_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| client_with_roots(&[]))
}

/// An HTTP(S) client. https servers are verified against Mozilla's root certificates
/// (webpki-roots), the system's (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`),
/// and `extra_roots`. TLS is rustls with the `ring` provider.
fn client_with_roots(extra_roots: &[reqwest::Certificate]) -> reqwest::Client {
    guarded_client(extra_roots, &[])
}

/// A client that checks `rules` (when there are any) at every connection: each
/// address a host name resolves to, and each redirect's destination. It connects
/// directly (no proxy from the environment), since through a proxy it could check
/// only the proxy's address.
fn guarded_client(extra_roots: &[reqwest::Certificate], rules: &[HttpRules]) -> reqwest::Client {
    let builder = || {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("raftjob/", env!("CARGO_PKG_VERSION")));
        for root in extra_roots {
            b = b.add_root_certificate(root.clone());
        }
        if !rules.is_empty() {
            let rules: Arc<[HttpRules]> = rules.into();
            let for_redirects = rules.clone();
            b = b
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver { rules }))
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= 10 {
                        return attempt.error("too many redirects");
                    }
                    let refused = for_redirects
                        .iter()
                        .find_map(|r| r.check_url(attempt.url()).err());
                    match refused {
                        Some(why) => attempt
                            .error(format!("redirect refused by the operator's policy: {why}")),
                        None => attempt.follow(),
                    }
                }));
        }
        b
    };
    builder().build().unwrap_or_else(|e| {
        // Only the system's store can fail to load (no valid certificate in it).
        tracing::warn!(error = %e, "Cannot use the system's root certificates; https jobs trust Mozilla's roots only.");
        builder()
            .tls_built_in_native_certs(false)
            .build()
            .expect("an HTTP client with built-in roots builds")
    })
}

impl HttpProcessor {
    pub fn new(
        method: impl Into<String>,
        url: impl Into<String>,
        headers: BTreeMap<String, String>,
        body: Option<String>,
        expect_status: Vec<u16>,
    ) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers,
            body,
            expect_status,
            rules: Vec::new(),
            client: shared_client().clone(),
        }
    }

    /// Limits where the request may go: the operator's rules from the dispatch.
    pub fn with_rules(mut self, rules: Vec<HttpRules>) -> Self {
        if !rules.is_empty() {
            self.client = cached_guarded_client(&rules);
        }
        self.rules = rules;
        self
    }

    /// Validates the spec into a request. Every problem here is the job's, so the messages
    /// name the offending part.
    fn build(&self, timeout: Option<Duration>) -> Result<reqwest::RequestBuilder, ProcessError> {
        let method = Method::from_bytes(self.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| ProcessError::Http(format!("invalid HTTP method {:?}", self.method)))?;
        let url = Url::parse(&self.url)
            .map_err(|e| ProcessError::Http(format!("invalid URL {:?}: {e}", self.url)))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(ProcessError::Http(format!(
                    "unsupported URL scheme {other:?} in {:?}: use http or https",
                    self.url
                )))
            }
        }
        // An address in the URL never reaches the resolver, so it is checked here;
        // host names are checked by the client's resolver, address by address.
        if let Some(why) = self.rules.iter().find_map(|r| r.check_url(&url).err()) {
            return Err(ProcessError::Policy(why));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProcessError::Http(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                ProcessError::Http(format!("invalid value for header {}", name.as_str()))
            })?;
            headers.append(name, value);
        }
        let mut request = self.client.request(method, url).headers(headers);
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        Ok(request)
    }
}

#[async_trait::async_trait]
impl Processor for HttpProcessor {
    async fn process(&self, ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError> {
        let request = self.build(ctx.timeout)?;
        let method = self.method.trim().to_ascii_uppercase();
        ctx.logger.log(format!("HTTP {method} {}", self.url));

        let started = Instant::now();
        let limit = ctx.timeout;
        let exchange = async {
            let mut response = request.send().await.map_err(|e| request_error(e, limit))?;
            let status = response.status();
            ctx.logger.log(format!("{:?} {status}", response.version()));
            // Read only what the result can hold (plus a little, to finish a character).
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| request_error(e, limit))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > BODY_CAP {
                    truncated = true;
                    body.truncate(BODY_CAP + 4);
                    break;
                }
            }
            Ok::<_, ProcessError>((status, body, truncated))
        };
        let (status, body, truncated) = tokio::select! {
            r = exchange => r?,
            _ = ctx.cancel.cancelled() => {
                ctx.logger.log("[raftjob] canceled");
                return Err(ProcessError::Canceled);
            }
            // reqwest enforces the timeout too; this also bounds what reqwest's does not
            // (e.g. a slow logger) and keeps the error uniform.
            _ = sleep_or_forever(limit) => {
                return Err(ProcessError::Timeout(limit.unwrap_or_default()));
            }
        };
        let elapsed = started.elapsed().as_millis();

        let mut text = String::from_utf8_lossy(&body).into_owned();
        let truncated = truncate_on_char_boundary(&mut text, BODY_CAP) || truncated;
        let mut result = format!("status {} in {elapsed} ms", status.as_u16());
        if !text.is_empty() {
            result.push('\n');
            result.push_str(&text);
        }
        if truncated {
            result.push_str("\n(truncated)");
        }
        Ok(if self.expect_status.contains(&status.as_u16()) {
            ProcessOutcome::success(result)
        } else {
            ProcessOutcome::failure(result)
        })
    }
}

/// One guarded client per distinct rule set (connections are pooled per client), a
/// few at most: rules change only when an operator changes a policy.
fn cached_guarded_client(rules: &[HttpRules]) -> reqwest::Client {
    static CLIENTS: OnceLock<Mutex<HashMap<Vec<HttpRules>, reqwest::Client>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .expect("client cache lock");
    if let Some(c) = clients.get(rules) {
        return c.clone();
    }
    if clients.len() >= 32 {
        clients.clear();
    }
    let client = guarded_client(&[], rules);
    clients.insert(rules.to_vec(), client.clone());
    client
}

/// Resolves host names as usual, then keeps only the addresses every rule set admits
/// (a name that resolves only into denied networks fails with the reason).
struct GuardedResolver {
    rules: Arc<[HttpRules]>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rules = self.rules.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let admitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| {
                    match rules
                        .iter()
                        .find_map(|r| r.check_resolved(&host, a.ip()).err())
                    {
                        None => true,
                        Some(why) => {
                            refused.get_or_insert(why);
                            false
                        }
                    }
                })
                .collect();
            if admitted.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".into());
                return Err(format!("{host}: refused by the operator's policy: {why}").into());
            }
            Ok(Box::new(admitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// reqwest's error with its causes ("error sending request: connection refused"), or a
/// Timeout when reqwest's own timer fired.
fn request_error(e: reqwest::Error, limit: Option<Duration>) -> ProcessError {
    if e.is_timeout() {
        if let Some(limit) = limit {
            return ProcessError::Timeout(limit);
        }
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    ProcessError::Http(message)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{context, drain};
    use super::*;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::routing::{any, get};
    use axum::Router;

    /// A server on 127.0.0.1:0 for this test; returns its base URL.
    async fn server() -> String {
        let app = Router::new()
            .route("/ok", get(|| async { "hello" }))
            .route(
                "/teapot",
                get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
            )
            .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
            .route(
                "/to-localhost",
                get(|axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>| async move {
                    axum::response::Redirect::temporary(&format!("http://localhost:{}/ok", q["port"]))
                }),
            )
            // 6001 bytes: one ASCII byte then two-byte characters, so byte 4096 falls inside
            // a character.
            .route("/big", get(|| async { format!("a{}", "é".repeat(3000)) }))
            .route(
                "/echo",
                any(
                    |method: axum::http::Method, headers: AxumHeaders, body: String| async move {
                        let token = headers
                            .get("x-token")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        format!("{method} {token} {body}")
                    },
                ),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn get_(url: String, expect: Vec<u16>) -> HttpProcessor {
        HttpProcessor::new("GET", url, BTreeMap::new(), None, expect)
    }

    fn rules(allow: &[&str], deny: &[&str]) -> Vec<HttpRules> {
        vec![crate::state::ProcessorPolicy {
            shell_enabled: true,
            http_allow: allow.iter().map(|s| s.to_string()).collect(),
            http_deny: deny.iter().map(|s| s.to_string()).collect(),
        }
        .http_rules()]
    }

    async fn run(p: HttpProcessor) -> Result<ProcessOutcome, ProcessError> {
        let (ctx, _rx) = context(Some(Duration::from_secs(10)));
        p.process(ctx).await
    }

    /// The operator's rules hold where only the worker can check them: after DNS, and
    /// on every redirect.
    #[tokio::test]
    async fn policy_rules_are_checked_at_every_connection() {
        let base = server().await;
        let port = base.rsplit(':').next().unwrap().to_string();
        // An address in the URL: refused before any connection.
        let err =
            run(get_(format!("{base}/ok"), vec![200]).with_rules(rules(&[], &["127.0.0.0/8"])))
                .await
                .expect_err("denied address");
        assert!(matches!(err, ProcessError::Policy(_)), "{err}");
        // A host name that resolves into a denied network.
        let by_name = format!("http://localhost:{port}/ok");
        let err =
            run(get_(by_name.clone(), vec![200])
                .with_rules(rules(&[], &["127.0.0.0/8", "::1/128"])))
            .await
            .expect_err("denied after DNS");
        assert!(err.to_string().contains("http_deny"), "{err}");
        // The name itself allowed, its address not denied: it goes through.
        let ok = run(get_(by_name.clone(), vec![200]).with_rules(rules(&["localhost"], &[])))
            .await
            .expect("allowed by name");
        assert!(ok.success, "{ok:?}");
        // Not allowed by name, but resolving into an allowed network: also fine.
        let ok = run(get_(by_name, vec![200]).with_rules(rules(&["127.0.0.0/8", "::1"], &[])))
            .await
            .expect("allowed by network");
        assert!(ok.success, "{ok:?}");
        // A redirect to a denied host is not followed.
        let err = run(get_(format!("{base}/to-localhost?port={port}"), vec![200])
            .with_rules(rules(&[], &["localhost"])))
        .await
        .expect_err("redirect refused");
        assert!(err.to_string().contains("redirect refused"), "{err}");
        // Without rules the same redirect is followed.
        let ok = run(get_(format!("{base}/to-localhost?port={port}"), vec![200]))
            .await
            .expect("followed");
        assert!(ok.success, "{ok:?}");
    }

    #[tokio::test]
    async fn expected_status_is_success() {
        let base = server().await;
        let (ctx, mut rx) = context(Some(Duration::from_secs(10)));
        let outcome = get_(format!("{base}/ok"), vec![200])
            .process(ctx)
            .await
            .expect("runs");
        assert!(outcome.success, "{outcome:?}");
        let (head, body) = outcome
            .result
            .split_once('\n')
            .expect("status line and body");
        assert!(
            head.starts_with("status 200 in ") && head.ends_with(" ms"),
            "{head}"
        );
        assert_eq!(body, "hello");
        assert_eq!(
            drain(&mut rx),
            vec![format!("HTTP GET {base}/ok"), "HTTP/1.1 200 OK".to_string()]
        );

        let (ctx, _rx) = context(None);
        let outcome = get_(format!("{base}/empty"), vec![200, 204])
            .process(ctx)
            .await
            .expect("runs");
        assert!(outcome.success);
        assert!(outcome.result.starts_with("status 204 in "));
        assert!(!outcome.result.contains('\n'));
    }

    #[tokio::test]
    async fn method_headers_and_body_are_sent() {
        let base = server().await;
        let p = HttpProcessor::new(
            "post",
            format!("{base}/echo"),
            BTreeMap::from([("X-Token".to_string(), "s3cret".to_string())]),
            Some("payload".into()),
            vec![200],
        );
        let (ctx, mut rx) = context(None);
        let outcome = p.process(ctx).await.expect("runs");
        assert!(outcome.success);
        assert!(
            outcome.result.ends_with("\nPOST s3cret payload"),
            "{}",
            outcome.result
        );
        assert_eq!(drain(&mut rx)[0], format!("HTTP POST {base}/echo"));
    }

    #[tokio::test]
    async fn unexpected_status_is_failure() {
        let base = server().await;
        let (ctx, _rx) = context(None);
        let outcome = get_(format!("{base}/teapot"), vec![200])
            .process(ctx)
            .await
            .expect("runs");
        assert!(!outcome.success);
        assert!(
            outcome.result.starts_with("status 418 in "),
            "{}",
            outcome.result
        );
        assert!(outcome.result.ends_with("\nshort and stout"));
    }

    #[tokio::test]
    async fn body_is_truncated_on_a_char_boundary() {
        let base = server().await;
        let (ctx, _rx) = context(None);
        let outcome = get_(format!("{base}/big"), vec![200])
            .process(ctx)
            .await
            .expect("runs");
        assert!(outcome.success);
        let (_, rest) = outcome.result.split_once('\n').unwrap();
        let body = rest
            .strip_suffix("\n(truncated)")
            .expect("marked truncated");
        assert!(
            body.len() <= BODY_CAP && body.len() > BODY_CAP - 4,
            "{}",
            body.len()
        );
        assert!(body.starts_with("aé"));
        assert!(body[1..].chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn timeout_is_enforced() {
        let base = server().await;
        let (ctx, _rx) = context(Some(Duration::from_millis(300)));
        let started = Instant::now();
        let err = get_(format!("{base}/slow"), vec![200])
            .process(ctx)
            .await
            .expect_err("times out");
        assert!(
            matches!(err, ProcessError::Timeout(d) if d == Duration::from_millis(300)),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn cancellation_is_prompt() {
        let base = server().await;
        let (ctx, _rx) = context(None);
        let cancel = ctx.cancel.clone();
        let p = get_(format!("{base}/slow"), vec![200]);
        let task = tokio::spawn(async move { p.process(ctx).await });
        cancel.cancel();
        let err = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("prompt")
            .unwrap()
            .expect_err("canceled");
        assert!(matches!(err, ProcessError::Canceled), "{err}");
    }

    #[tokio::test]
    async fn clear_errors() {
        let (ctx, _rx) = context(None);
        let err = get_("ftp://127.0.0.1/x".into(), vec![200])
            .process(ctx)
            .await
            .expect_err("bad scheme");
        assert!(err.to_string().contains("use http or https"), "{err}");

        // https is supported: nothing listens on port 1, so the connection is refused.
        let (ctx, _rx) = context(Some(Duration::from_secs(10)));
        let err = get_("https://127.0.0.1:1/".into(), vec![200])
            .process(ctx)
            .await
            .expect_err("refused");
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");

        let (ctx, _rx) = context(None);
        let err = get_("not a url".into(), vec![200])
            .process(ctx)
            .await
            .expect_err("bad URL");
        assert!(err.to_string().contains("invalid URL"), "{err}");

        let (ctx, _rx) = context(None);
        let p = HttpProcessor::new(
            "GE T",
            "http://127.0.0.1:1/",
            BTreeMap::new(),
            None,
            vec![200],
        );
        let err = p.process(ctx).await.expect_err("bad method");
        assert!(err.to_string().contains("invalid HTTP method"), "{err}");

        // Nothing listens on port 1.
        let (ctx, _rx) = context(Some(Duration::from_secs(10)));
        let err = get_("http://127.0.0.1:1/".into(), vec![200])
            .process(ctx)
            .await
            .expect_err("refused");
        assert!(matches!(err, ProcessError::Http(_)), "{err}");
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }

    // A test CA and a server certificate it signed, for `localhost` and 127.0.0.1, valid
    // from 2000 to 2999 (made with Python's `cryptography`; test material, not a secret).
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBeTCCASCgAwIBAgIUN+o6s5+d8ytzIkXtRs/q7zNaIdYwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPcmFmdGpvYiB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzI5\n\
OTkxMjMxMDAwMDAwWjAaMRgwFgYDVQQDDA9yYWZ0am9iIHRlc3QgQ0EwWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAAQvqKCgQNYT3BS1yZK6SB4QzTb+n5mjpHxgKeaf\n\
Go++FflevdxYpebLI3bJN2XKAsWx+AjyiQzKgrIgtZUJl/9uo0IwQDAPBgNVHRMB\n\
Af8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQU3RzAjP87c25eNJnd\n\
h59wDiqkidswCgYIKoZIzj0EAwIDRwAwRAIgURkkkrPOWnV9ytbLZ2pvgFr8jMhe\n\
nM7HUZ0VJaBsLqkCIGxMItQaCHXl06g711SAifK+sC1Hh2+MnBDCO6JFuoJ7\n\
-----END CERTIFICATE-----\n\
";
    const TEST_SERVER_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBpDCCAUqgAwIBAgIUPj1EdBOam8oCgz0Ed3CIWmLjqrEwCgYIKoZIzj0EAwIw\n\
GjEYMBYGA1UEAwwPcmFmdGpvYiB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzI5\n\
OTkxMjMxMDAwMDAwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAAT3haGD6Pal+mpoOyu0SitDZZOoayHH2d6PxLB9EzjdzSwB\n\
w/6I2ilqRZnSSI2dQOrFLkSzqePtzkjJlFvR2yoHo3IwcDAMBgNVHRMBAf8EAjAA\n\
MA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAaBgNVHREEEzAR\n\
gglsb2NhbGhvc3SHBH8AAAEwHwYDVR0jBBgwFoAU3RzAjP87c25eNJndh59wDiqk\n\
idswCgYIKoZIzj0EAwIDSAAwRQIhAMoDrkHjbHIIZOmcZvTpZY7UKVJcRREedqdY\n\
AeKyiO2gAiAdxsf78E1HyWHACNmbGNlYTMCNGHib0Fbbj7IZKZEGKQ==\n\
-----END CERTIFICATE-----\n\
";
    const TEST_SERVER_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpcHIREeERQIDPjai\n\
DNr12M6hIPgpN1CTLtf0Xs06plKhRANCAAT3haGD6Pal+mpoOyu0SitDZZOoayHH\n\
2d6PxLB9EzjdzSwBw/6I2ilqRZnSSI2dQOrFLkSzqePtzkjJlFvR2yoH\n\
-----END PRIVATE KEY-----\n\
";

    /// An https server on 127.0.0.1:0 with the test certificate. It answers every request
    /// with `200 OK` and `hello over tls`, then closes the connection. Returns the base URL.
    async fn tls_server() -> String {
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs = vec![CertificateDer::from_pem_slice(TEST_SERVER_CERT.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed handshake (a client that refuses the certificate) just ends.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = "hello over tls";
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        format!("https://127.0.0.1:{}", addr.port())
    }

    #[tokio::test]
    async fn https_works_against_a_server_with_a_trusted_certificate() {
        let base = tls_server().await;
        let ca = reqwest::Certificate::from_pem(TEST_CA.as_bytes()).unwrap();
        let mut p = get_(format!("{base}/hello"), vec![200]);
        p.client = client_with_roots(&[ca]);
        let (ctx, mut rx) = context(Some(Duration::from_secs(10)));
        let outcome = p.process(ctx).await.expect("runs");
        assert!(outcome.success, "{outcome:?}");
        assert!(
            outcome.result.starts_with("status 200 in ")
                && outcome.result.ends_with(" ms\nhello over tls"),
            "{}",
            outcome.result
        );
        assert_eq!(
            drain(&mut rx),
            vec![
                format!("HTTP GET {base}/hello"),
                "HTTP/1.1 200 OK".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn https_refuses_a_certificate_from_an_unknown_issuer() {
        // The shared client trusts Mozilla's and the system's roots, not the test CA.
        let base = tls_server().await;
        let (ctx, _rx) = context(Some(Duration::from_secs(10)));
        let err = get_(format!("{base}/hello"), vec![200])
            .process(ctx)
            .await
            .expect_err("an unknown issuer");
        assert!(matches!(err, ProcessError::Http(_)), "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}
