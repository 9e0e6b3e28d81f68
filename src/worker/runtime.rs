//! The worker's core: session, fencing, held attempts, leases, execution, reports.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use super::processor::{
    InstanceLogger, ProcessContext, ProcessError, ProcessOutcome, Processor, Registry,
};
use super::record::{Recorder, WorkerEventKind};
use super::transport::{Link, TransportError};
use crate::planted::{self, Bug};
use crate::protocol::{
    AttemptRef, Deregister, Dispatch, DispatchAck, Heartbeat, Register, Registered, Report,
    ServerMsg, StopAttempt, WorkerMsg,
};
use crate::state::{AttemptEvent, InstanceId, LogLine};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker configuration: {0}")]
    Config(String),
    /// The cluster does not offer this worker's protocol.
    #[error("the servers do not offer the {wanted} protocol; they offer: {offered}. Start the worker with --protocol {offered_first}, or enable {wanted} on the servers")]
    ProtocolNotOffered {
        wanted: String,
        offered: String,
        offered_first: String,
    },
    #[error("registration refused ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("no server answered at {servers}: {last}")]
    Unreachable { servers: String, last: String },
}

/// How long one registration request keeps looking for a server before the
/// registration loop pauses and tries again.
const REGISTER_WINDOW: Duration = Duration::from_secs(10);
/// How long one heartbeat keeps looking for the leader before a fresh one is sent (at
/// least one heartbeat interval, at most half a lease).
const HEARTBEAT_WINDOW: Duration = Duration::from_secs(1);
/// How long one report request keeps looking for the leader before the report loop
/// pauses and sends it again (a report is never given up while the worker runs).
const REPORT_WINDOW: Duration = Duration::from_secs(10);

/// How long a worker that shuts down keeps trying to deregister.
const DEREGISTER_WINDOW: Duration = Duration::from_secs(3);

/// What the server told us at registration.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub worker_id: String,
    pub cluster_id: String,
    pub credential: String,
    pub heartbeat: Duration,
    pub lease: Duration,
}

struct Held {
    token: crate::state::FencingToken,
    cancel: CancellationToken,
    lease_deadline: Instant,
    stop_requested: bool,
}

pub(crate) struct Core {
    pub cfg: WorkerConfig,
    registry: Registry,
    pub link: Link,
    pub session: Mutex<Option<Session>>,
    /// Highest term seen per cluster id: dispatches from lower terms are refused.
    term_seen: Mutex<HashMap<String, u64>>,
    held: Mutex<HashMap<(InstanceId, u32), Held>>,
    /// Why the worker stopped, when it was not asked to.
    fatal: Mutex<Option<WorkerError>>,
    /// Attempts accepted recently, so a second dispatch of one is refused.
    seen: Mutex<Seen>,
    /// The event record (`--record`), when asked for.
    recorder: Option<Recorder>,
    pub shutdown: CancellationToken,
}

/// The attempts a worker accepted, bounded: the oldest are forgotten past [`SEEN_LIMIT`].
/// A duplicate dispatch arrives within moments of the first (a retried send), never
/// after a hundred thousand newer attempts.
#[derive(Default)]
struct Seen {
    set: HashSet<(InstanceId, u32)>,
    order: std::collections::VecDeque<(InstanceId, u32)>,
}

const SEEN_LIMIT: usize = 100_000;

impl Seen {
    fn contains(&self, key: &(InstanceId, u32)) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: (InstanceId, u32)) {
        if self.set.insert(key) {
            self.order.push_back(key);
            while self.order.len() > SEEN_LIMIT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A worker: configure, register processors, run.
pub struct Worker {
    cfg: WorkerConfig,
    registry: Registry,
}

impl Worker {
    pub fn new(cfg: WorkerConfig) -> Result<Self, WorkerError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            registry: Registry::new(),
        })
    }

    /// Registers a custom processor under `name` (jobs name it in `{"type":"custom","name":...}`).
    pub fn register(&mut self, name: impl Into<String>, processor: impl Processor) -> &mut Self {
        self.registry.register(name, processor);
        self
    }

    /// Runs until `shutdown` is cancelled. Fails at once on a configuration the
    /// cluster refuses (protocol not offered, wrong token, incompatible version).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let recorder = match &self.cfg.record {
            None => None,
            Some(path) => Some(Recorder::open(path, &self.cfg.name).map_err(|e| {
                WorkerError::Config(format!("cannot open the record {}: {e}", path.display()))
            })?),
        };
        if let Some(bug) = planted::current() {
            tracing::warn!(
                bug = bug.name(),
                "PLANTED BUG ACTIVE: this worker misbehaves on purpose (jepsen-lite checker test)."
            );
        }
        let link = Link::new(&self.cfg);
        let core = Arc::new(Core {
            cfg: self.cfg,
            registry: self.registry,
            link,
            session: Mutex::new(None),
            term_seen: Mutex::default(),
            held: Mutex::default(),
            fatal: Mutex::default(),
            seen: Mutex::default(),
            recorder,
            shutdown: shutdown.clone(),
        });
        core.link.bind(&core);
        core.link.discover(&core.cfg).await?;
        if core.cfg.protocol == "http" {
            let addr = super::endpoint::start(core.clone()).await?;
            core.link.set_own_address(addr);
        }
        core.clone().register().await?;
        let watchdog = tokio::spawn(core.clone().lease_watchdog());
        core.clone().heartbeat_loop().await;
        watchdog.abort();
        // Stopping: kill what still runs.
        let held = {
            let held = core.held.lock().expect("held lock");
            for h in held.values() {
                h.cancel.cancel();
            }
            held.len()
        };
        let fatal = core.fatal.lock().expect("fatal lock").take();
        match fatal {
            Some(e) => Err(e),
            // The leader would refuse while attempts are open, and their final reports
            // race with the exit: leave them, and the registration, to the leader.
            None if held > 0 => {
                tracing::info!(held, "Not deregistering: attempts were still held. The leader settles them by their leases, and forgets this worker after workers.forget_after_ms.");
                Ok(())
            }
            None => {
                core.deregister().await;
                Ok(())
            }
        }
    }
}

impl Core {
    pub fn session(&self) -> Option<Session> {
        self.session.lock().expect("session lock").clone()
    }

    fn observe_term(&self, cluster_id: &str, term: u64) {
        let mut seen = self.term_seen.lock().expect("term lock");
        let t = seen.entry(cluster_id.to_string()).or_insert(0);
        *t = (*t).max(term);
    }

    pub fn highest_term(&self, cluster_id: &str) -> u64 {
        self.term_seen
            .lock()
            .expect("term lock")
            .get(cluster_id)
            .copied()
            .unwrap_or(0)
    }

    /// Registers (again); refusals that a retry cannot fix end the worker.
    async fn register(self: Arc<Self>) -> Result<(), WorkerError> {
        let msg = WorkerMsg::Register(Register {
            app: self.cfg.app.clone(),
            token: self.cfg.token.clone(),
            name: self.cfg.name.clone(),
            protocol: self.cfg.protocol.clone(),
            version: self.cfg.version.clone(),
            tag: self.cfg.tag.clone(),
            address: self.link.own_address(),
            max_concurrency: self.cfg.max_concurrency,
        });
        let mut delay = Duration::from_millis(100);
        loop {
            match self.link.call(&msg, REGISTER_WINDOW).await {
                Ok(ServerMsg::Registered(r)) => {
                    self.on_registered(r);
                    return Ok(());
                }
                Ok(ServerMsg::Refused { code, message })
                    if code != "unavailable" && code != "not_ready" =>
                {
                    return Err(WorkerError::Refused { code, message });
                }
                Ok(other) => {
                    tracing::info!(answer = ?other, "Registration not accepted yet; retrying.")
                }
                Err(e) => tracing::info!(error = %e, "Registration failed; retrying."),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// On a clean shutdown with nothing held, asks the leader to remove this worker's
    /// registration. The leader refuses while an attempt dispatched here is still open
    /// in its state; it then forgets this worker once it has been lost for
    /// `workers.forget_after_ms`.
    async fn deregister(&self) {
        let Some(session) = self.session() else {
            return;
        };
        let msg = WorkerMsg::Deregister(Deregister {
            worker_id: session.worker_id.clone(),
            credential: session.credential.clone(),
        });
        let deadline = Instant::now() + DEREGISTER_WINDOW;
        let mut delay = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match self.link.call(&msg, left).await {
                Ok(ServerMsg::Deregistered { removed, .. }) => {
                    tracing::info!(worker = %session.worker_id, removed, "Deregistered.");
                    return;
                }
                Ok(ServerMsg::Refused { code, message })
                    if code != "unavailable" && code != "not_ready" =>
                {
                    tracing::warn!(worker = %session.worker_id, %code, %message, "Deregistration refused; the registration stays until the leader forgets it.");
                    return;
                }
                Ok(other) => format!("{other:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() + delay >= deadline {
                tracing::warn!(worker = %session.worker_id, error = %why, "Could not deregister; the registration stays until the leader forgets it.");
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    fn on_registered(&self, r: Registered) {
        self.observe_term(&r.cluster_id, r.term);
        let heartbeat =
            Duration::from_millis(self.cfg.heartbeat_ms.unwrap_or(r.heartbeat_ms).max(10));
        tracing::info!(worker = %r.worker_id, cluster = %r.cluster_id, term = r.term, protocol = %self.cfg.protocol, "Registered.");
        *self.session.lock().expect("session lock") = Some(Session {
            worker_id: r.worker_id,
            cluster_id: r.cluster_id,
            credential: r.credential,
            heartbeat,
            lease: Duration::from_millis(r.lease_ms),
        });
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let Some(session) = self.session() else {
                return;
            };
            let held: Vec<AttemptRef> = self
                .held
                .lock()
                .expect("held lock")
                .iter()
                .map(|((i, a), h)| AttemptRef {
                    instance_id: *i,
                    attempt: *a,
                    token: h.token,
                })
                .collect();
            let sent_at = Instant::now();
            let msg = WorkerMsg::Heartbeat(Heartbeat {
                worker_id: session.worker_id.clone(),
                credential: session.credential.clone(),
                held: held.clone(),
                running: held.len() as u32,
                max_concurrency: self.cfg.max_concurrency,
            });
            // Keep trying (following the leader) for a while, then send a fresh heartbeat:
            // a renewal counts from when its heartbeat left, so an old one renews less.
            let window = session
                .heartbeat
                .max(HEARTBEAT_WINDOW)
                .min(session.lease / 2);
            match self.link.call(&msg, window).await {
                Ok(ServerMsg::HeartbeatAck(ack)) => {
                    self.observe_term(&ack.cluster_id, ack.term);
                    self.link.learn_servers(&ack.servers);
                    let revoked: HashSet<(InstanceId, u32)> = ack
                        .revoke
                        .iter()
                        .map(|a| (a.instance_id, a.attempt))
                        .collect();
                    let mut map = self.held.lock().expect("held lock");
                    for a in &held {
                        let Some(h) = map.get_mut(&(a.instance_id, a.attempt)) else {
                            continue;
                        };
                        if revoked.contains(&(a.instance_id, a.attempt)) {
                            tracing::info!(
                                instance_id = a.instance_id,
                                attempt = a.attempt,
                                "Attempt revoked by the leader; stopping it."
                            );
                            h.stop_requested = true;
                            h.cancel.cancel();
                        } else if ack.renewed {
                            // Measured from when the heartbeat left: never longer than the leader's view.
                            h.lease_deadline = sent_at + lease(ack.lease_ms);
                        }
                    }
                }
                Ok(ServerMsg::Refused { code, message }) => {
                    tracing::warn!(%code, %message, "Heartbeat refused; registering again.");
                    if let Err(e) = self.clone().register().await {
                        tracing::error!(error = %e, "Registration refused; stopping the worker.");
                        *self.fatal.lock().expect("fatal lock") = Some(e);
                        self.shutdown.cancel();
                    }
                }
                Ok(other) => tracing::debug!(answer = ?other, "Unexpected heartbeat answer."),
                Err(e) => tracing::warn!(error = %e, "Heartbeat failed; looking for the leader."),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(session.heartbeat.saturating_sub(sent_at.elapsed())) => {}
            }
        }
    }

    /// Kills attempts whose lease ran out: the leader may soon dispatch them elsewhere.
    async fn lease_watchdog(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            for ((i, a), h) in self.held.lock().expect("held lock").iter() {
                if h.lease_deadline <= now && !h.cancel.is_cancelled() {
                    tracing::warn!(
                        instance_id = i,
                        attempt = a,
                        "Lease lost (no renewal from the leader); killing the attempt."
                    );
                    h.cancel.cancel();
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Writes one line of the event record, if one is kept.
    fn record(&self, kind: WorkerEventKind, a: &AttemptRef, detail: Option<String>) {
        if let Some(r) = &self.recorder {
            r.record(kind, a.instance_id, a.attempt, a.token, detail);
        }
    }

    /// Fences and accepts (or refuses) a dispatch, then runs it in the background.
    pub fn accept(self: &Arc<Self>, d: Dispatch) -> DispatchAck {
        let refuse = |reason: String, term_seen: u64| {
            tracing::warn!(instance_id = d.attempt.instance_id, attempt = d.attempt.attempt, term = d.term, %reason, "Refused a dispatch.");
            self.record(
                WorkerEventKind::DispatchRefused,
                &d.attempt,
                Some(reason.clone()),
            );
            DispatchAck {
                accepted: false,
                reason: Some(reason),
                term_seen,
            }
        };
        let Some(session) = self.session() else {
            return refuse("not registered".into(), 0);
        };
        if self.shutdown.is_cancelled() {
            return refuse(
                "shutting down".into(),
                self.highest_term(&session.cluster_id),
            );
        }
        if d.cluster_id != session.cluster_id {
            return refuse(
                format!(
                    "dispatch from cluster {} but this worker belongs to {}",
                    d.cluster_id, session.cluster_id
                ),
                0,
            );
        }
        let highest = self.highest_term(&d.cluster_id);
        let stale = d.term < highest && !planted::active(Bug::SkipTermCheck);
        if stale || d.attempt.token.term != d.term {
            return refuse(
                format!("stale term {} (highest seen {highest})", d.term),
                highest,
            );
        }
        self.observe_term(&d.cluster_id, d.term);
        let key = (d.attempt.instance_id, d.attempt.attempt);
        let cancel = CancellationToken::new();
        {
            // Checked and recorded under the locks together, so concurrent dispatches
            // can neither both pass the limit nor both take one attempt.
            let mut seen = self.seen.lock().expect("seen lock");
            if seen.contains(&key) {
                return refuse("this attempt was already dispatched here".into(), d.term);
            }
            let mut held = self.held.lock().expect("held lock");
            if held.len() as u32 >= self.cfg.max_concurrency {
                return refuse(
                    format!("at the concurrency limit ({})", self.cfg.max_concurrency),
                    d.term,
                );
            }
            seen.insert(key);
            let lease_deadline = Instant::now() + lease(d.lease_ms);
            held.insert(
                key,
                Held {
                    token: d.attempt.token,
                    cancel: cancel.clone(),
                    lease_deadline,
                    stop_requested: false,
                },
            );
        }
        self.record(WorkerEventKind::DispatchAccepted, &d.attempt, None);
        tokio::spawn(self.clone().execute(d, cancel));
        DispatchAck {
            accepted: true,
            reason: None,
            term_seen: self.highest_term(&session.cluster_id),
        }
    }

    pub fn stop(&self, s: &StopAttempt) -> DispatchAck {
        let key = (s.attempt.instance_id, s.attempt.attempt);
        let term_seen = self.highest_term(&s.cluster_id);
        let mut held = self.held.lock().expect("held lock");
        match held.get_mut(&key) {
            Some(h) if h.token == s.attempt.token => {
                h.stop_requested = true;
                h.cancel.cancel();
                DispatchAck {
                    accepted: true,
                    reason: None,
                    term_seen,
                }
            }
            _ => DispatchAck {
                accepted: false,
                reason: Some("not running here".into()),
                term_seen,
            },
        }
    }

    async fn execute(self: Arc<Self>, d: Dispatch, cancel: CancellationToken) {
        let attempt = d.attempt;
        let key = (attempt.instance_id, attempt.attempt);
        // Start only once the leader has confirmed the attempt: it accepts the
        // `running` report only for an attempt that is still open, and renews its lease
        // on receipt. A dispatch the network delivered late (after the leader gave up on
        // it and dispatched a new attempt elsewhere) is then never started, where
        // before it ran beside the new attempt until the next heartbeat revoked it
        // (jepsen-lite `leader-workers-cut`, seed 2: 25-35 ms on two workers at once).
        let confirmed = tokio::select! {
            r = self.report(attempt, AttemptEvent::Running) => r,
            _ = cancel.cancelled() => None,
        };
        match confirmed {
            Some((true, sent_at)) if !cancel.is_cancelled() => {
                // The lease runs from when the confirmed report left, never longer
                // than the leader's view (it renewed the attempt on receipt).
                if let Some(h) = self.held.lock().expect("held lock").get_mut(&key) {
                    h.lease_deadline = sent_at + lease(d.lease_ms);
                }
            }
            _ => {
                tracing::warn!(
                    instance_id = attempt.instance_id,
                    attempt = attempt.attempt,
                    "Not starting an attempt the leader did not confirm (revoked, stale or lease expired)."
                );
                self.held.lock().expect("held lock").remove(&key);
                return;
            }
        }
        let (log_tx, log_rx) = mpsc::unbounded_channel();
        let shipper = tokio::spawn(self.clone().ship_logs(attempt, log_rx));
        let timeout = d.timeout_ms.map(Duration::from_millis);
        let ctx = ProcessContext {
            instance_id: attempt.instance_id,
            attempt: attempt.attempt,
            job_id: d.job_id,
            job_params: d.job_params.clone(),
            instance_params: d.instance_params.clone(),
            timeout,
            logger: InstanceLogger::new(log_tx),
            cancel: cancel.clone(),
            processor_params: match &d.processor {
                crate::state::Processor::Custom { params, .. } => params.clone(),
                _ => serde_json::Value::Null,
            },
        };
        self.record(WorkerEventKind::Start, &attempt, None);
        let outcome = match self.registry.resolve(&d.processor, &d.policies) {
            Err(e) => {
                drop(ctx); // closes the log channel, so the shipper ends
                Err(e)
            }
            Ok(processor) => {
                let run = processor.process(ctx);
                match timeout {
                    Some(t) => tokio::select! {
                        r = run => r,
                        _ = tokio::time::sleep(t) => { cancel.cancel(); Err(ProcessError::Timeout(t)) }
                    },
                    None => run.await,
                }
            }
        };
        // Recorded as soon as the processor returned (it has stopped running), before
        // the log shipper drains.
        self.record(
            WorkerEventKind::End,
            &attempt,
            Some(match &outcome {
                Ok(o) if o.success => "succeeded".to_string(),
                Ok(_) => "failed".to_string(),
                Err(e) if cancel.is_cancelled() => format!("killed: {e}"),
                Err(e) => format!("error: {e}"),
            }),
        );
        let _ = shipper.await;
        let stopped = self
            .held
            .lock()
            .expect("held lock")
            .get(&key)
            .is_some_and(|h| h.stop_requested);
        let event = match outcome {
            Ok(ProcessOutcome { success, result }) => AttemptEvent::Finished {
                success: success && !stopped,
                result,
                stopped,
            },
            Err(e) => {
                let lease_lost = cancel.is_cancelled() && !stopped;
                let result = if lease_lost && !matches!(e, ProcessError::Timeout(_)) {
                    format!("killed: the worker lost its lease ({e})")
                } else {
                    e.to_string()
                };
                AttemptEvent::Finished {
                    success: false,
                    result,
                    stopped,
                }
            }
        };
        self.report(attempt, event).await;
        self.held.lock().expect("held lock").remove(&key);
    }

    /// Ships log lines in small batches.
    async fn ship_logs(
        self: Arc<Self>,
        attempt: AttemptRef,
        mut rx: mpsc::UnboundedReceiver<String>,
    ) {
        while let Some(first) = rx.recv().await {
            let at_ms = chrono::Utc::now().timestamp_millis();
            let mut lines = vec![LogLine { at_ms, line: first }];
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(l) = rx.try_recv() {
                lines.push(LogLine {
                    at_ms: chrono::Utc::now().timestamp_millis(),
                    line: l,
                });
                if lines.len() >= 100 {
                    break;
                }
            }
            self.report(attempt, AttemptEvent::Log { lines }).await;
        }
    }

    /// Sends a report to the leader, following leader changes, until it is acknowledged.
    /// A report is never dropped while the worker runs: the leader's answer settles it
    /// (`accepted: false` when the attempt's fate was already decided without it), so
    /// it is resent until an answer comes, or the worker stops.
    ///
    /// Returns whether the leader accepted it and when the acknowledged try left, or
    /// `None` when it was not delivered (no session, or the worker is stopping).
    async fn report(&self, attempt: AttemptRef, event: AttemptEvent) -> Option<(bool, Instant)> {
        let mut delay = Duration::from_millis(25);
        let mut tries = 0u32;
        loop {
            let session = self.session()?;
            let msg = WorkerMsg::Report(Report {
                worker_id: session.worker_id.clone(),
                credential: session.credential.clone(),
                attempt,
                event: event.clone(),
            });
            tries += 1;
            let sent_at = Instant::now();
            match self.link.call(&msg, REPORT_WINDOW).await {
                Ok(ServerMsg::ReportAck(ack)) => {
                    self.observe_term(&session.cluster_id, ack.term);
                    if tries > 1 {
                        tracing::info!(
                            instance_id = attempt.instance_id,
                            attempt = attempt.attempt,
                            tries,
                            accepted = ack.accepted,
                            "Report delivered."
                        );
                    }
                    if !ack.accepted {
                        // A stale attempt: make sure it does not keep running.
                        if let Some(h) = self
                            .held
                            .lock()
                            .expect("held lock")
                            .get(&(attempt.instance_id, attempt.attempt))
                        {
                            h.cancel.cancel();
                        }
                    }
                    return Some((ack.accepted, sent_at));
                }
                // `unknown_worker`/`bad_credential`: the heartbeat loop registers again;
                // `unavailable`/`not_ready`: the cluster could not commit it yet.
                Ok(other) => {
                    let why = format!("{other:?}");
                    log_retry(tries, attempt, &why);
                }
                Err(e) => log_retry(tries, attempt, &e.to_string()),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    tracing::warn!(instance_id = attempt.instance_id, "Stopping: a report was not delivered.");
                    return None;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

/// A lease length from the server, capped at a day (the servers refuse longer ones),
/// so a wrong value can never overflow the clock arithmetic.
fn lease(ms: u64) -> Duration {
    Duration::from_millis(ms.min(24 * 3600 * 1000))
}

/// The first failure of a report at info, the next ones at debug (a report is resent
/// every half second at most, for as long as the leader cannot be reached).
fn log_retry(tries: u32, attempt: AttemptRef, why: &str) {
    if tries == 1 {
        tracing::info!(
            instance_id = attempt.instance_id,
            attempt = attempt.attempt,
            %why,
            "Report not delivered yet; resending it until the leader answers."
        );
    } else {
        tracing::debug!(instance_id = attempt.instance_id, tries, %why, "Report not delivered yet.");
    }
}

impl From<TransportError> for WorkerError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::NotOffered { wanted, offered } => WorkerError::ProtocolNotOffered {
                offered_first: offered.first().cloned().unwrap_or_default(),
                offered: offered.join(", "),
                wanted,
            },
            TransportError::Unreachable { servers, last } => {
                WorkerError::Unreachable { servers, last }
            }
            other => WorkerError::Unreachable {
                servers: String::new(),
                last: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Seen, SEEN_LIMIT};

    #[test]
    fn seen_refuses_duplicates_and_forgets_the_oldest_past_the_limit() {
        let mut seen = Seen::default();
        seen.insert((1, 1));
        seen.insert((1, 1));
        assert!(seen.contains(&(1, 1)));
        assert_eq!(seen.order.len(), 1, "a duplicate is not recorded twice");
        for i in 0..SEEN_LIMIT as u64 {
            seen.insert((i + 10, 1));
        }
        assert!(!seen.contains(&(1, 1)), "the oldest is forgotten");
        assert!(seen.contains(&(SEEN_LIMIT as u64 + 9, 1)));
        assert_eq!(seen.set.len(), SEEN_LIMIT);
    }
}
