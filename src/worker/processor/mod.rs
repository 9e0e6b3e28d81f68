//! Processors: what a worker runs for one attempt of a job instance.
//!
//! A job's [`crate::state::Processor`] spec is resolved by a [`Registry`] into a
//! [`Processor`]: the built-ins ([`shell::ShellProcessor`], [`http::HttpProcessor`]) or a
//! custom processor that the embedding program registered by name. The runtime hands the
//! processor a [`ProcessContext`] and records its [`ProcessOutcome`] (or [`ProcessError`]).

pub mod http;
pub mod shell;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

pub use self::http::HttpProcessor;
pub use self::shell::ShellProcessor;

/// Longest log line sent to the server; longer lines are cut (on a char boundary) so one
/// runaway line cannot bloat the instance's log.
pub const MAX_LOG_LINE: usize = 4096;

/// What a processor gets for one attempt of an instance.
#[derive(Debug)]
pub struct ProcessContext {
    pub instance_id: u64,
    pub attempt: u32,
    pub job_id: u64,
    pub job_params: serde_json::Value,
    pub instance_params: serde_json::Value,
    /// Per-attempt timeout from the job (None = no limit). Built-in processors enforce it;
    /// the runtime also enforces it.
    pub timeout: Option<Duration>,
    pub logger: InstanceLogger,
    /// Cancelled when the instance is stopped, the lease is lost or the timeout passes: a
    /// processor must stop promptly.
    pub cancel: CancellationToken,
    /// A custom processor's `params` from the job's processor spec (null otherwise).
    pub processor_params: serde_json::Value,
}

/// Lines logged here reach the server as the instance's log.
///
/// Unbounded so that a processor never waits on the log shipper; the shipper on the other
/// end is responsible for batching and bounding what it forwards.
#[derive(Debug, Clone)]
pub struct InstanceLogger {
    tx: UnboundedSender<String>,
}

impl InstanceLogger {
    pub fn new(tx: UnboundedSender<String>) -> Self {
        Self { tx }
    }

    /// Queues one line. Never blocks; a closed channel (the attempt is over as far as the
    /// runtime is concerned) is ignored. Lines longer than [`MAX_LOG_LINE`] bytes are cut.
    pub fn log(&self, line: impl Into<String>) {
        let mut line = line.into();
        truncate_on_char_boundary(&mut line, MAX_LOG_LINE);
        let _ = self.tx.send(line);
    }
}

/// A processor's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    pub success: bool,
    /// A short human-readable summary stored with the instance (exit code and output tail,
    /// HTTP status and body, ...).
    pub result: String,
}

impl ProcessOutcome {
    pub fn success(result: impl Into<String>) -> Self {
        Self {
            success: true,
            result: result.into(),
        }
    }

    pub fn failure(result: impl Into<String>) -> Self {
        Self {
            success: false,
            result: result.into(),
        }
    }
}

/// Why an attempt produced no verdict. The messages are shown to users as the instance's
/// result, so they say what went wrong in the job's terms.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start the process: {0}")]
    Spawn(String),
    #[error("timed out after {}", fmt_duration(*.0))]
    Timeout(Duration),
    #[error("canceled")]
    Canceled,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("unknown custom processor {name:?}; registered on this worker: {}", fmt_names(.registered))]
    UnknownCustom {
        name: String,
        registered: Vec<String>,
    },
    /// The operator's policy, sent with the dispatch, forbids this.
    #[error("refused by the operator's policy: {0}")]
    Policy(String),
    /// For custom processors: any other failure, with its message.
    #[error("{0}")]
    Other(String),
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn fmt_names(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// A user-defined processor: embedding programs implement this and register it by name.
///
/// Implementations must honour `ctx.cancel` (and should honour `ctx.timeout`): the runtime
/// stops waiting when either fires, but only the processor can release what it holds.
#[async_trait::async_trait]
pub trait Processor: Send + Sync + 'static {
    async fn process(&self, ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError>;
}

/// Custom processors by name. Cloning is cheap (the processors are shared).
#[derive(Clone, Default)]
pub struct Registry {
    custom: HashMap<String, Arc<dyn Processor>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("custom", &self.names())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the custom processor called `name`.
    pub fn register(&mut self, name: impl Into<String>, p: impl Processor) -> &mut Self {
        self.custom.insert(name.into(), Arc::new(p));
        self
    }

    /// The registered custom processor names, sorted (for messages and worker registration).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.custom.keys().cloned().collect();
        names.sort();
        names
    }

    /// Resolves a job's processor spec: built-ins become ShellProcessor/HttpProcessor,
    /// Custom looks up the name (error naming the registered names when missing).
    ///
    /// A custom spec's `params` are not passed here: the runtime puts what the processor
    /// needs into the [`ProcessContext`].
    ///
    /// `policies` are the operator's, from the dispatch: the leader already refused what
    /// they forbid by name, and the worker checks again, and checks the addresses an
    /// HTTP job's host resolves to.
    pub fn resolve(
        &self,
        spec: &crate::state::Processor,
        policies: &[crate::state::ProcessorPolicy],
    ) -> Result<Arc<dyn Processor>, ProcessError> {
        use crate::state::Processor as Spec;
        match spec {
            Spec::Shell { .. } if policies.iter().any(|p| !p.shell_enabled) => Err(
                ProcessError::Policy("the shell processor is disabled".into()),
            ),
            Spec::Shell { command } => Ok(Arc::new(ShellProcessor {
                command: command.clone(),
            })),
            Spec::Http {
                method,
                url,
                headers,
                body,
                expect_status,
            } => Ok(Arc::new(
                HttpProcessor::new(
                    method.clone(),
                    url.clone(),
                    headers.clone(),
                    body.clone(),
                    expect_status.clone(),
                )
                .with_rules(
                    policies
                        .iter()
                        .map(|p| p.http_rules())
                        .filter(|r| !r.is_empty())
                        .collect(),
                ),
            )),
            Spec::Custom { name, .. } => {
                self.custom
                    .get(name)
                    .cloned()
                    .ok_or_else(|| ProcessError::UnknownCustom {
                        name: name.clone(),
                        registered: self.names(),
                    })
            }
        }
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character. Returns whether it cut.
pub(crate) fn truncate_on_char_boundary(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// A context for instance 7, attempt 2 of job 3, and the receiving end of its log.
    pub(crate) fn context(
        timeout: Option<Duration>,
    ) -> (ProcessContext, UnboundedReceiver<String>) {
        let (tx, rx) = unbounded_channel();
        let ctx = ProcessContext {
            instance_id: 7,
            attempt: 2,
            job_id: 3,
            job_params: serde_json::json!({"region": "eu"}),
            instance_params: serde_json::json!({"n": 1}),
            timeout,
            logger: InstanceLogger::new(tx),
            cancel: CancellationToken::new(),
            processor_params: serde_json::Value::Null,
        };
        (ctx, rx)
    }

    /// Everything logged so far.
    pub(crate) fn drain(rx: &mut UnboundedReceiver<String>) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{context, drain};
    use super::*;
    use std::collections::BTreeMap;

    struct Echo;

    #[async_trait::async_trait]
    impl Processor for Echo {
        async fn process(&self, ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError> {
            ctx.logger.log("custom ran");
            Ok(ProcessOutcome::success(format!(
                "instance {} params {}",
                ctx.instance_id, ctx.instance_params
            )))
        }
    }

    #[tokio::test]
    async fn resolves_registered_custom_processor() {
        let mut registry = Registry::new();
        registry.register("echo", Echo);
        assert_eq!(registry.names(), vec!["echo".to_string()]);

        let p = registry
            .resolve(
                &crate::state::Processor::Custom {
                    name: "echo".into(),
                    params: serde_json::Value::Null,
                },
                &[],
            )
            .expect("registered");
        let (ctx, mut rx) = context(None);
        let outcome = p.process(ctx).await.expect("runs");
        assert_eq!(
            outcome,
            ProcessOutcome::success(r#"instance 7 params {"n":1}"#)
        );
        assert_eq!(drain(&mut rx), vec!["custom ran".to_string()]);
    }

    #[tokio::test]
    async fn missing_custom_processor_names_the_registered_ones() {
        let mut registry = Registry::new();
        registry.register("b", Echo).register("a", Echo);
        let err = registry
            .resolve(
                &crate::state::Processor::Custom {
                    name: "nope".into(),
                    params: serde_json::Value::Null,
                },
                &[],
            )
            .err()
            .expect("missing");
        assert!(matches!(&err, ProcessError::UnknownCustom { name, .. } if name == "nope"));
        assert_eq!(
            err.to_string(),
            "unknown custom processor \"nope\"; registered on this worker: a, b"
        );

        let empty = Registry::new()
            .resolve(
                &crate::state::Processor::Custom {
                    name: "x".into(),
                    params: serde_json::Value::Null,
                },
                &[],
            )
            .err()
            .expect("missing");
        assert!(empty
            .to_string()
            .ends_with("registered on this worker: none"));
    }

    #[tokio::test]
    async fn resolves_built_ins() {
        let registry = Registry::new();
        let shell = registry.resolve(
            &crate::state::Processor::Shell {
                command: "true".into(),
            },
            &[],
        );
        assert!(shell.is_ok());
        let http = registry.resolve(
            &crate::state::Processor::Http {
                method: "GET".into(),
                url: "http://127.0.0.1:1/".into(),
                headers: BTreeMap::new(),
                body: None,
                expect_status: vec![200],
            },
            &[],
        );
        assert!(http.is_ok());
    }

    #[test]
    fn logger_truncates_long_lines_and_ignores_a_closed_channel() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let logger = InstanceLogger::new(tx);
        // 'é' is two bytes: 4096 is a boundary, 4095 is not.
        logger.log("é".repeat(3000));
        logger.log(format!("a{}", "é".repeat(3000)));
        let lines = drain(&mut rx);
        assert_eq!(lines[0].len(), 4096);
        assert_eq!(lines[1].len(), 4095);
        drop(rx);
        logger.log("nobody listens");
    }

    #[test]
    fn timeout_message() {
        assert_eq!(
            ProcessError::Timeout(Duration::from_secs(5)).to_string(),
            "timed out after 5 s"
        );
        assert_eq!(
            ProcessError::Timeout(Duration::from_millis(1500)).to_string(),
            "timed out after 1500 ms"
        );
    }
}
