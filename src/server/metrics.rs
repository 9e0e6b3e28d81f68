//! Prometheus metrics for `GET /metrics`.
//!
//! Two sources make up one scrape:
//! - **Events** (fires, dispatches, refusals, HTTP requests, proposals) are recorded
//!   where they happen through the `metrics` facade into one process-wide
//!   `metrics-exporter-prometheus` recorder ([`install`]).
//! - **State** (Raft positions, instances by status, workers) is read at scrape time
//!   from openraft's metrics, the state machine and the worker registry, and written
//!   by [`render`] itself. Read fresh, such series are always this node's and vanish
//!   when they stop being true (a follower's lag once this node no longer leads, the
//!   workers of a deleted app), which gauges kept in a recorder would not do.
//!
//! Names follow Prometheus conventions: a `raftjob_` prefix, base units in the name
//! (`_seconds`, `_entries`), `_total` on counters. Label values are `&'static str`
//! on every hot path, so recording allocates no label strings.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::Node;
use crate::state::{InstanceStatus, SkipKind};

// --- Raft (scrape time) ---------------------------------------------------------------
pub const NODE_INFO: &str = "raftjob_node_info";
pub const RAFT_TERM: &str = "raftjob_raft_term";
pub const RAFT_IS_LEADER: &str = "raftjob_raft_is_leader";
pub const RAFT_HAS_LEADER: &str = "raftjob_raft_has_leader";
pub const RAFT_LEADER_ID: &str = "raftjob_raft_leader_id";
pub const RAFT_VOTERS: &str = "raftjob_raft_voters";
pub const RAFT_LAST_LOG_INDEX: &str = "raftjob_raft_last_log_index";
pub const RAFT_COMMITTED_INDEX: &str = "raftjob_raft_committed_index";
pub const RAFT_APPLIED_INDEX: &str = "raftjob_raft_applied_index";
pub const RAFT_SNAPSHOT_INDEX: &str = "raftjob_raft_snapshot_index";
pub const RAFT_REPLICATION_LAG: &str = "raftjob_raft_replication_lag_entries";
pub const RAFT_SINCE_QUORUM_ACK: &str = "raftjob_raft_seconds_since_quorum_ack";
// --- Raft (events) --------------------------------------------------------------------
pub const RAFT_ELECTIONS: &str = "raftjob_raft_elections_total";
pub const RAFT_LEADER_CHANGES: &str = "raftjob_raft_leader_changes_total";
// --- State (scrape time) --------------------------------------------------------------
pub const JOBS: &str = "raftjob_jobs";
pub const APPS: &str = "raftjob_apps";
pub const INSTANCES: &str = "raftjob_instances";
pub const WORKERS_REGISTERED: &str = "raftjob_workers_registered";
pub const WORKERS_LIVE: &str = "raftjob_workers_live";
// --- Scheduling -----------------------------------------------------------------------
pub const FIRES: &str = "raftjob_scheduler_fires_total";
pub const LATENESS: &str = "raftjob_scheduler_lateness_seconds";
pub const MISFIRES: &str = "raftjob_scheduler_misfires_total";
pub const SKIPS: &str = "raftjob_scheduler_skips_total";
pub const TIMERS_PENDING: &str = "raftjob_scheduler_timers_pending";
// --- Dispatch -------------------------------------------------------------------------
pub const DISPATCHES: &str = "raftjob_dispatches_total";
pub const DISPATCH_REFUSALS: &str = "raftjob_dispatch_refusals_total";
pub const NO_WORKER_FAILURES: &str = "raftjob_dispatch_no_worker_failures_total";
pub const ATTEMPTS_LOST: &str = "raftjob_attempts_lost_total";
pub const TRANSPORT_REFUSALS: &str = "raftjob_transport_refusals_total";
// --- HTTP -----------------------------------------------------------------------------
pub const HTTP_REQUESTS: &str = "raftjob_http_requests_total";
pub const HTTP_DURATION: &str = "raftjob_http_request_duration_seconds";
// --- Write and read path --------------------------------------------------------------
pub const WRITE_PROPOSALS: &str = "raftjob_write_proposals_total";
pub const WRITE_ENTRIES: &str = "raftjob_write_entries_total";
pub const WRITE_BATCH_SIZE: &str = "raftjob_write_batch_size";
pub const WRITE_COMMIT_DURATION: &str = "raftjob_write_commit_duration_seconds";
pub const READ_INDEX_ROUNDS: &str = "raftjob_read_index_rounds_total";
pub const READ_INDEX_READS: &str = "raftjob_read_index_reads_total";

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Seconds: 1 ms to 1 min (lateness, request and commit latency).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Proposals per log entry, up to the batcher's limit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Dispatch refusal reasons (the `reason` label).
pub const REFUSED_BY_WORKER: &str = "worker_refused";
pub const REFUSED_UNREACHABLE: &str = "unreachable";
pub const REFUSED_NO_WEBSOCKET: &str = "no_websocket";
pub const REFUSED_NO_ADDRESS: &str = "no_address";
pub const REFUSED_DEREGISTERED: &str = "deregistered";
const REFUSAL_REASONS: &[&str] = &[
    REFUSED_BY_WORKER,
    REFUSED_UNREACHABLE,
    REFUSED_NO_WEBSOCKET,
    REFUSED_NO_ADDRESS,
    REFUSED_DEREGISTERED,
];

/// Scheduling lateness stages (the `stage` label).
pub const STAGE_PROPOSED: &str = "proposed";
pub const STAGE_DISPATCHED: &str = "dispatched";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls (more
/// nodes in one test process) return the same handle. If another recorder was
/// installed first, events go to it and `/metrics` shows only scrape-time series.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("Another metrics recorder is installed; /metrics shows only the series read at scrape time.");
        }
        describe();
        handle
    })
}

fn builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for name in [LATENESS, HTTP_DURATION, WRITE_COMMIT_DURATION] {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.into()), SECONDS_BUCKETS)
            .expect("buckets are not empty");
    }
    b.set_buckets_for_metric(Matcher::Full(WRITE_BATCH_SIZE.into()), BATCH_BUCKETS)
        .expect("buckets are not empty")
}

/// Help texts, and counters with known labels started at zero, so `rate()` and alerts
/// have a series before the first event.
fn describe() {
    describe_counter!(
        RAFT_ELECTIONS,
        "Term changes this node has seen since it started (each is an election)."
    );
    describe_counter!(
        RAFT_LEADER_CHANGES,
        "Changes of the leader this node knows of, including to none, since it started."
    );
    describe_counter!(
        FIRES,
        "Scheduled instances created by this node's Fire entries while it led."
    );
    describe_histogram!(
        LATENESS,
        Unit::Seconds,
        "Delay from a fire time to its Fire proposal (stage=proposed, on-time fires only) and to the first dispatch to a worker (stage=dispatched)."
    );
    describe_counter!(
        MISFIRES,
        "Fire times found more than scheduler.misfire_threshold_ms late, handed to the job's misfire policy."
    );
    describe_counter!(
        SKIPS,
        "Fire times recorded as skipped, by kind (misfire, catch_up_limit, concurrency)."
    );
    describe_gauge!(
        TIMERS_PENDING,
        "Jobs with an armed timer in this node's scheduler (0 unless it leads)."
    );
    describe_counter!(
        DISPATCHES,
        "Dispatches this node sent to workers, by protocol."
    );
    describe_counter!(
        DISPATCH_REFUSALS,
        "Dispatches that did not reach their worker, by reason; the instance waits for a worker again."
    );
    describe_counter!(
        NO_WORKER_FAILURES,
        "Instances failed because no worker accepted them within workers.no_worker_timeout_ms."
    );
    describe_counter!(
        ATTEMPTS_LOST,
        "Attempts declared lost after lease plus grace without a renewal."
    );
    describe_counter!(
        TRANSPORT_REFUSALS,
        "Worker messages refused on a transport port, by code (bad_token, bad_credential, unknown_worker, ...)."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by listener, method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (until the response head), by listener, method, route template and status."
    );
    describe_counter!(
        WRITE_PROPOSALS,
        "Writes queued to this node's batcher while it led."
    );
    describe_counter!(
        WRITE_ENTRIES,
        "Log entries the batcher proposed to Raft, by result (ok, not_leader, error)."
    );
    describe_histogram!(
        WRITE_BATCH_SIZE,
        "Writes carried by one proposed log entry."
    );
    describe_histogram!(
        WRITE_COMMIT_DURATION,
        Unit::Seconds,
        "Time from proposing a log entry to its commit and apply on this leader."
    );
    describe_counter!(
        READ_INDEX_ROUNDS,
        "ReadIndex confirmation rounds this node ran as leader, by result."
    );
    describe_counter!(
        READ_INDEX_READS,
        "Linearizable reads that joined a ReadIndex round on this node, whatever its result."
    );
    for kind in ["misfire", "catch_up_limit", "concurrency"] {
        counter!(SKIPS, "kind" => kind).absolute(0);
    }
    for reason in REFUSAL_REASONS {
        counter!(DISPATCH_REFUSALS, "reason" => *reason).absolute(0);
    }
    for protocol in crate::config::PROTOCOLS {
        counter!(DISPATCHES, "protocol" => *protocol).absolute(0);
    }
    for name in [
        RAFT_ELECTIONS,
        RAFT_LEADER_CHANGES,
        FIRES,
        MISFIRES,
        NO_WORKER_FAILURES,
        ATTEMPTS_LOST,
    ] {
        counter!(name).absolute(0);
    }
}

// --- Recording helpers (cheap: static labels, one registry lookup) ---------------------

/// Lateness of a fire time at `stage`, from wall-clock milliseconds.
pub fn record_lateness(stage: &'static str, fire_time_ms: i64, now_ms: i64) {
    let late = (now_ms - fire_time_ms).max(0) as f64 / 1000.0;
    histogram!(LATENESS, "stage" => stage).record(late);
}

pub fn skip_kind_label(kind: SkipKind) -> &'static str {
    match kind {
        SkipKind::Misfire => "misfire",
        SkipKind::CatchUpLimit => "catch_up_limit",
        SkipKind::ConcurrencyForbid | SkipKind::MaxConcurrentInstances => "concurrency",
    }
}

/// The `protocol` label of a worker's protocol name.
pub fn protocol_label(protocol: &str) -> &'static str {
    match protocol {
        "ws" => "ws",
        "http" => "http",
        _ => "other",
    }
}

pub fn dispatch_sent(protocol: &str) {
    counter!(DISPATCHES, "protocol" => protocol_label(protocol)).increment(1);
}

pub fn dispatch_refused(reason: &'static str) {
    counter!(DISPATCH_REFUSALS, "reason" => reason).increment(1);
}

pub fn no_worker_failure() {
    counter!(NO_WORKER_FAILURES).increment(1);
}

pub fn attempt_lost() {
    counter!(ATTEMPTS_LOST).increment(1);
}

/// A worker message refused on a transport port; `code` is the refusal's code.
pub fn transport_refused(code: &'static str) {
    counter!(TRANSPORT_REFUSALS, "code" => code).increment(1);
}

/// What a `Fire` entry did once committed: instances created, and skips by kind.
pub fn fired(created: usize, skips: &[(&'static str, usize)]) {
    counter!(FIRES).increment(created as u64);
    for (kind, n) in skips.iter().filter(|(_, n)| *n > 0) {
        counter!(SKIPS, "kind" => *kind).increment(*n as u64);
    }
}

pub fn misfires(n: usize) {
    counter!(MISFIRES).increment(n as u64);
}

pub fn timers_pending(n: usize) {
    gauge!(TIMERS_PENDING).set(n as f64);
}

pub fn write_proposal() {
    counter!(WRITE_PROPOSALS).increment(1);
}

/// One log entry proposed by the batcher: its result, the writes it carried and how
/// long it took to commit.
pub fn write_entry(result: &'static str, writes: usize, took: Duration) {
    counter!(WRITE_ENTRIES, "result" => result).increment(1);
    histogram!(WRITE_BATCH_SIZE).record(writes as f64);
    if result == "ok" {
        histogram!(WRITE_COMMIT_DURATION).record(took.as_secs_f64());
    }
}

/// One ReadIndex round and the reads it answered.
pub fn read_index_round(result: &'static str, reads: usize) {
    counter!(READ_INDEX_ROUNDS, "result" => result).increment(1);
    counter!(READ_INDEX_READS).increment(reads as u64);
}

// --- HTTP -------------------------------------------------------------------------------

/// Counts every request of `router` under `listener` (a fixed name such as `"api"`),
/// labelled by the route template that matched, never the raw path.
pub fn track_http(router: Router, listener: &'static str) -> Router {
    router.layer(middleware::from_fn_with_state(listener, http_middleware))
}

/// The `listener` label of a transport port.
pub fn transport_listener(protocol: &str) -> &'static str {
    match protocol {
        "http" => "transport.http",
        "ws" => "transport.ws",
        _ => "transport.other",
    }
}

async fn http_middleware(
    State(listener): State<&'static str>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| ROUTES.intern(p.as_str()));
    let resp = next.run(req).await;
    let status = status_label(resp.status());
    let labels = [
        ("listener", listener),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(start.elapsed().as_secs_f64());
    resp
}

pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn status_label(s: StatusCode) -> &'static str {
    STATUSES.intern(s.as_str())
}

/// A bounded set of leaked strings: route templates and status codes are few and fixed,
/// so each is allocated once for the life of the process and labels stay `&'static`.
struct Interner {
    set: RwLock<Option<HashSet<&'static str>>>,
    cap: usize,
}

static ROUTES: Interner = Interner::new(512);
static STATUSES: Interner = Interner::new(1000);

impl Interner {
    const fn new(cap: usize) -> Self {
        Self {
            set: RwLock::new(None),
            cap,
        }
    }

    fn intern(&self, s: &str) -> &'static str {
        if let Some(found) = self
            .set
            .read()
            .expect("interner lock")
            .as_ref()
            .and_then(|set| set.get(s).copied())
        {
            return found;
        }
        let mut guard = self.set.write().expect("interner lock");
        let set = guard.get_or_insert_with(HashSet::new);
        if let Some(found) = set.get(s) {
            return found;
        }
        if set.len() >= self.cap {
            return "other";
        }
        let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
        set.insert(leaked);
        leaked
    }
}

// --- Background ---------------------------------------------------------------------------

/// Counts elections and leader changes from openraft's metrics as they change, and
/// runs the recorder's upkeep (it bounds histogram memory when nobody scrapes).
pub async fn watch(node: Arc<Node>) {
    let handle = install();
    let mut rx = node.raft.metrics();
    let (mut term, mut leader) = {
        let m = rx.borrow_and_update();
        (m.current_term, m.current_leader)
    };
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = upkeep.tick() => handle.run_upkeep(),
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
                let m = rx.borrow_and_update();
                if m.current_term > term {
                    counter!(RAFT_ELECTIONS).increment(m.current_term - term);
                    term = m.current_term;
                }
                if m.current_leader != leader {
                    counter!(RAFT_LEADER_CHANGES).increment(1);
                    leader = m.current_leader;
                }
            }
        }
    }
}

// --- Scrape -------------------------------------------------------------------------------

/// The whole `/metrics` body for this node.
pub fn render(node: &Node) -> String {
    let handle = install();
    handle.run_upkeep();
    let mut out = Exposition::default();
    write_raft(&mut out, node);
    write_state(&mut out, node);
    let mut text = handle.render();
    text.push_str(&out.text);
    text
}

fn write_raft(out: &mut Exposition, node: &Node) {
    let m = node.raft.metrics().borrow().clone();
    let id = node.id.to_string();
    out.family(
        NODE_INFO,
        "gauge",
        "Always 1; labels name this node and its version.",
    );
    out.sample(
        NODE_INFO,
        &[("node_id", &id), ("version", super::VERSION)],
        1.0,
    );
    let leading = m.current_leader == Some(node.id);
    out.gauge(RAFT_TERM, "Current Raft term.", m.current_term as f64);
    out.gauge(
        RAFT_IS_LEADER,
        "1 when this node is the leader, else 0.",
        bool_value(leading),
    );
    out.gauge(
        RAFT_HAS_LEADER,
        "1 when this node knows a leader, else 0 (an election is in progress or no quorum).",
        bool_value(m.current_leader.is_some()),
    );
    out.gauge(
        RAFT_LEADER_ID,
        "Id of the leader this node knows, 0 when none.",
        m.current_leader.unwrap_or(0) as f64,
    );
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    out.gauge(
        RAFT_VOTERS,
        "Voters in the membership this node knows.",
        voters.len() as f64,
    );
    let last = m.last_log_index.unwrap_or(0);
    out.gauge(
        RAFT_LAST_LOG_INDEX,
        "Index of the last entry in this node's log.",
        last as f64,
    );
    out.gauge(
        RAFT_APPLIED_INDEX,
        "Index of the last entry applied to this node's state machine.",
        m.last_applied.map_or(0, |l| l.index) as f64,
    );
    out.gauge(
        RAFT_SNAPSHOT_INDEX,
        "Last log index included in this node's latest snapshot.",
        m.snapshot.map_or(0, |l| l.index) as f64,
    );
    let matched: BTreeMap<u64, u64> = m
        .replication
        .iter()
        .flatten()
        .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
        .collect();
    if leading {
        if let Some(committed) = quorum_index(&voters, node.id, last, &matched) {
            out.gauge(
                RAFT_COMMITTED_INDEX,
                "Highest index replicated to a majority of voters (reported by the leader only).",
                committed as f64,
            );
        }
        out.family(
            RAFT_REPLICATION_LAG,
            "gauge",
            "Entries the leader has that a follower has not acknowledged, by follower id (leader only).",
        );
        for (follower, index) in matched.iter().filter(|(f, _)| **f != node.id) {
            out.sample(
                RAFT_REPLICATION_LAG,
                &[("follower", &follower.to_string())],
                last.saturating_sub(*index) as f64,
            );
        }
        if let Some(ms) = m.millis_since_quorum_ack {
            out.gauge(
                RAFT_SINCE_QUORUM_ACK,
                "Seconds since a quorum last acknowledged this leader, as of openraft's last report (leader only).",
                ms as f64 / 1000.0,
            );
        }
    }
}

/// The highest index a majority of `voters` holds: the leader counts with its own last
/// log index. `None` when there are no voters.
pub fn quorum_index(
    voters: &[u64],
    leader: u64,
    leader_last: u64,
    matched: &BTreeMap<u64, u64>,
) -> Option<u64> {
    if voters.is_empty() {
        return None;
    }
    let mut held: Vec<u64> = voters
        .iter()
        .map(|v| {
            if *v == leader {
                leader_last
            } else {
                matched.get(v).copied().unwrap_or(0)
            }
        })
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(voters.len() / 2).copied()
}

fn write_state(out: &mut Exposition, node: &Node) {
    let leading = node.raft.metrics().borrow().current_leader == Some(node.id);
    let mut by_status: BTreeMap<&'static str, u64> =
        ALL_STATUSES.iter().map(|s| (status_name(*s), 0)).collect();
    let (jobs, apps, registered, live) = {
        let guard = node.state.read().expect("state lock");
        let s = &guard.state;
        for inst in s.instances.values() {
            *by_status.entry(status_name(inst.status)).or_default() += 1;
        }
        let mut registered: BTreeMap<(String, String), u64> = BTreeMap::new();
        for w in s.workers.values() {
            let app = s
                .apps
                .get(&w.app_id)
                .map_or_else(|| w.app_id.to_string(), |a| a.name.clone());
            *registered.entry((app, w.protocol.clone())).or_default() += 1;
        }
        // Liveness is the leader's memory: a follower has no view of it.
        let mut live: BTreeMap<(String, String), u64> = BTreeMap::new();
        if leading {
            for v in node.workers.views(s, None) {
                if v.state == super::worker_registry::WorkerState::Live {
                    *live
                        .entry((v.app.clone(), v.reg.protocol.clone()))
                        .or_default() += 1;
                }
            }
            for key in registered.keys() {
                live.entry(key.clone()).or_default();
            }
        }
        (s.jobs.len(), s.apps.len(), registered, live)
    };
    out.gauge(JOBS, "Jobs in the replicated state.", jobs as f64);
    out.gauge(APPS, "Apps in the replicated state.", apps as f64);
    out.family(
        INSTANCES,
        "gauge",
        "Instances in the replicated state, by status (finished ones until retention removes them).",
    );
    for (status, n) in by_status {
        out.sample(INSTANCES, &[("status", status)], n as f64);
    }
    out.family(
        WORKERS_REGISTERED,
        "gauge",
        "Registered workers in the replicated state, by app and protocol.",
    );
    for ((app, protocol), n) in &registered {
        out.sample(
            WORKERS_REGISTERED,
            &[("app", app), ("protocol", protocol)],
            *n as f64,
        );
    }
    if leading {
        out.family(
            WORKERS_LIVE,
            "gauge",
            "Workers the leader heard from within lease plus grace, by app and protocol (leader only).",
        );
        for ((app, protocol), n) in &live {
            out.sample(
                WORKERS_LIVE,
                &[("app", app), ("protocol", protocol)],
                *n as f64,
            );
        }
    }
}

const ALL_STATUSES: &[InstanceStatus] = &[
    InstanceStatus::WaitingDispatch,
    InstanceStatus::Dispatched,
    InstanceStatus::Running,
    InstanceStatus::Stopping,
    InstanceStatus::Succeeded,
    InstanceStatus::Failed,
    InstanceStatus::Stopped,
    InstanceStatus::Canceled,
];

/// The API's spelling of a status.
pub fn status_name(s: InstanceStatus) -> &'static str {
    match s {
        InstanceStatus::WaitingDispatch => "waiting_dispatch",
        InstanceStatus::Dispatched => "dispatched",
        InstanceStatus::Running => "running",
        InstanceStatus::Stopping => "stopping",
        InstanceStatus::Succeeded => "succeeded",
        InstanceStatus::Failed => "failed",
        InstanceStatus::Stopped => "stopped",
        InstanceStatus::Canceled => "canceled",
    }
}

fn bool_value(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// A small writer of the text exposition format for the scrape-time series.
#[derive(Default)]
pub struct Exposition {
    pub text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` lines; write them once per name, before its samples.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// A gauge with no labels: family lines and its one sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value as the text format requires (`\`, `"` and newlines).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value as the text format spells it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_is_the_majority_position() {
        let matched = BTreeMap::from([(2, 7), (3, 4)]);
        // Leader 1 at 10, followers at 7 and 4: a majority (1 and 2) holds 7.
        assert_eq!(quorum_index(&[1, 2, 3], 1, 10, &matched), Some(7));
        // Five voters, two unknown: the third highest of 10, 7, 4, 0, 0.
        assert_eq!(quorum_index(&[1, 2, 3, 4, 5], 1, 10, &matched), Some(4));
        assert_eq!(quorum_index(&[1], 1, 3, &BTreeMap::new()), Some(3));
        assert_eq!(quorum_index(&[], 1, 3, &matched), None);
    }

    #[test]
    fn exposition_escapes_labels_and_spells_values() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Help with a \\ and\na newline.");
        e.sample("x_total", &[("app", "a\"b\\c\nd"), ("p", "ws")], 3.0);
        e.sample("x_total", &[], f64::INFINITY);
        e.sample("x_total", &[], 0.25);
        assert_eq!(
            e.text,
            "# HELP x_total Help with a \\\\ and\\na newline.\n# TYPE x_total counter\n\
             x_total{app=\"a\\\"b\\\\c\\nd\",p=\"ws\"} 3\nx_total +Inf\nx_total 0.25\n"
        );
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn labels_are_static_and_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::CONNECT), "other");
        assert_eq!(status_label(StatusCode::NOT_FOUND), "404");
        let a = status_label(StatusCode::OK);
        let b = status_label(StatusCode::OK);
        assert!(std::ptr::eq(a, b), "interned once");
        let small = Interner::new(2);
        assert_eq!(small.intern("/a"), "/a");
        assert_eq!(small.intern("/b"), "/b");
        assert_eq!(small.intern("/c"), "other");
        assert_eq!(small.intern("/a"), "/a");
        assert_eq!(transport_listener("ws"), "transport.ws");
        assert_eq!(protocol_label("carrier-pigeon"), "other");
        assert_eq!(
            skip_kind_label(SkipKind::MaxConcurrentInstances),
            "concurrency"
        );
    }

    #[test]
    fn install_is_idempotent_and_renders_described_series() {
        let a = install() as *const PrometheusHandle;
        let b = install() as *const PrometheusHandle;
        assert_eq!(a, b);
        dispatch_refused(REFUSED_UNREACHABLE);
        let text = install().render();
        assert!(
            text.contains(&format!("# TYPE {DISPATCH_REFUSALS} counter")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{DISPATCH_REFUSALS}{{reason=\"unreachable\"}}")),
            "{text}"
        );
    }
}
