//! The leader's view of live workers: heartbeats, load, open WebSockets and the
//! lease clock of every attempt. All of it is leader memory, never replicated: a new
//! leader starts every clock from its own election, so an election never makes a
//! worker look lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::protocol::{AttemptRef, ServerMsg};
use crate::state::{InstanceId, State, WorkerReg};

/// Liveness of a registered worker as the leader sees it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Heard from within lease + grace.
    Live,
    /// Not heard from since this leader's election, still within grace of it.
    Unknown,
    /// Not heard from for longer than lease + grace.
    Lost,
}

#[derive(Debug, Clone)]
struct Live {
    last_heartbeat: Instant,
    running: u32,
    max_concurrency: u32,
}

#[derive(Default)]
struct Inner {
    /// When this node last became leader (None while it does not lead).
    leader_since: Option<Instant>,
    live: HashMap<String, Live>,
    ws: HashMap<String, mpsc::UnboundedSender<ServerMsg>>,
    /// Last lease renewal received for an attempt (leader clock, at receipt).
    renewals: HashMap<(InstanceId, u32), Instant>,
    /// Instances first seen without any matching worker.
    waiting_since: HashMap<InstanceId, Instant>,
    /// Instances whose dispatch a worker refused (or could not be reached for), with
    /// when that first happened since a worker last accepted one, and the last reason.
    /// Only an accepted dispatch (or a lost lease) clears it, so an instance no worker
    /// accepts still ends at the no-worker timeout.
    refused_since: HashMap<InstanceId, (Instant, String)>,
    /// Workers that refused a dispatch (or were unreachable) since their last
    /// heartbeat: not candidates until a heartbeat tells their load again.
    refused_by: HashSet<String>,
    /// Stops already sent by this leader.
    stops_sent: BTreeSet<(InstanceId, u32)>,
    /// Dispatches chosen for a worker since its last heartbeat: counted as load at once,
    /// so one scan spreads a burst instead of handing it all to the least loaded worker.
    reserved: HashMap<String, u32>,
    /// Attempts of each worker whose end this leader committed since the worker's last
    /// heartbeat. Each was counted once, in the heartbeat's `running` or in `reserved`,
    /// so it is taken off the load at once: a worker's freed capacity is used without
    /// waiting for its next heartbeat (which capped a worker at `max_concurrency`
    /// dispatches per heartbeat interval).
    finished: HashMap<String, HashSet<(InstanceId, u32)>>,
    /// When each worker was last chosen (a sequence number), so health-first breaks a
    /// tie in load by the worker chosen longest ago and spreads sequential work.
    last_chosen: HashMap<String, u64>,
    chosen_seq: u64,
    round_robin: u64,
}

pub struct WorkerRegistry {
    inner: Mutex<Inner>,
    pub lease: Duration,
    pub grace: Duration,
}

/// A snapshot of one worker for the API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    #[serde(flatten)]
    pub reg: WorkerReg,
    pub app: String,
    pub state: WorkerState,
    /// Milliseconds since the last heartbeat the leader received.
    pub last_heartbeat_ms_ago: Option<u64>,
    pub running: u32,
    pub connected_ws: bool,
}

impl WorkerRegistry {
    pub fn new(lease: Duration, grace: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            lease,
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock")
    }

    /// Forgets everything and starts the clocks from now (on becoming leader).
    pub fn become_leader(&self) {
        let mut g = self.lock();
        let ws = std::mem::take(&mut g.ws);
        *g = Inner {
            leader_since: Some(Instant::now()),
            ws,
            ..Default::default()
        };
    }

    pub fn step_down(&self) {
        let mut g = self.lock();
        let ws = std::mem::take(&mut g.ws);
        *g = Inner {
            ws,
            ..Default::default()
        };
    }

    pub fn heartbeat(&self, worker_id: &str, running: u32, max_concurrency: u32) {
        let live = Live {
            last_heartbeat: Instant::now(),
            running,
            max_concurrency,
        };
        let mut g = self.lock();
        g.live.insert(worker_id.to_string(), live);
        g.reserved.remove(worker_id);
        g.finished.remove(worker_id);
        g.refused_by.remove(worker_id);
    }

    /// The leader committed the end of one of the worker's attempts (see `finished`).
    pub fn attempt_finished(&self, worker_id: &str, attempt: (InstanceId, u32)) {
        self.lock()
            .finished
            .entry(worker_id.to_string())
            .or_default()
            .insert(attempt);
    }

    pub fn renew(&self, attempts: &[AttemptRef]) {
        let now = Instant::now();
        let mut g = self.lock();
        for a in attempts {
            g.renewals.insert((a.instance_id, a.attempt), now);
        }
    }

    pub fn attach_ws(&self, worker_id: &str, tx: mpsc::UnboundedSender<ServerMsg>) {
        self.lock().ws.insert(worker_id.to_string(), tx);
    }

    pub fn detach_ws(&self, worker_id: &str, tx: &mpsc::UnboundedSender<ServerMsg>) {
        let mut g = self.lock();
        if g.ws.get(worker_id).is_some_and(|cur| cur.same_channel(tx)) {
            g.ws.remove(worker_id);
        }
    }

    pub fn ws_sender(&self, worker_id: &str) -> Option<mpsc::UnboundedSender<ServerMsg>> {
        self.lock()
            .ws
            .get(worker_id)
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    pub fn state_of(&self, worker_id: &str) -> WorkerState {
        let g = self.lock();
        Self::state_in(&g, worker_id, self.lease + self.grace)
    }

    fn state_in(g: &Inner, worker_id: &str, timeout: Duration) -> WorkerState {
        match g.live.get(worker_id) {
            Some(l) if l.last_heartbeat.elapsed() <= timeout => WorkerState::Live,
            Some(_) => WorkerState::Lost,
            None => match g.leader_since {
                Some(since) if since.elapsed() <= timeout => WorkerState::Unknown,
                _ => WorkerState::Lost,
            },
        }
    }

    /// How long this leader has not heard from the worker: since its last heartbeat,
    /// or since this leader's election if none came since.
    pub fn silent_for(&self, worker_id: &str) -> Duration {
        let g = self.lock();
        g.live
            .get(worker_id)
            .map(|l| l.last_heartbeat)
            .or(g.leader_since)
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Workers that may take a dispatch now: live, or not yet heard from since this
    /// leader's election (the grace an election gives), below their concurrency, and
    /// not refusing dispatches since their last heartbeat.
    pub fn candidates<'a>(
        &self,
        workers: impl Iterator<Item = &'a WorkerReg>,
    ) -> Vec<(WorkerReg, u32)> {
        let g = self.lock();
        let timeout = self.lease + self.grace;
        workers
            .filter(|w| Self::state_in(&g, &w.id, timeout) != WorkerState::Lost)
            .filter(|w| !g.refused_by.contains(&w.id))
            .filter_map(|w| {
                let finished = g.finished.get(&w.id).map_or(0, |f| f.len() as u32);
                let running = (g.live.get(&w.id).map(|l| l.running).unwrap_or(0)
                    + g.reserved.get(&w.id).copied().unwrap_or(0))
                .saturating_sub(finished);
                let max = g
                    .live
                    .get(&w.id)
                    .map(|l| l.max_concurrency)
                    .unwrap_or(w.max_concurrency);
                (max == 0 || running < max).then(|| (w.clone(), running))
            })
            .collect()
    }

    pub fn next_round_robin(&self) -> u64 {
        let mut g = self.lock();
        g.round_robin += 1;
        g.round_robin
    }

    /// Counts a chosen dispatch toward the worker's load until its next heartbeat.
    pub fn reserve(&self, worker_id: &str) {
        let mut g = self.lock();
        *g.reserved.entry(worker_id.to_string()).or_insert(0) += 1;
        g.chosen_seq += 1;
        let seq = g.chosen_seq;
        g.last_chosen.insert(worker_id.to_string(), seq);
    }

    /// When the worker was last chosen by this leader (0: never).
    pub fn last_chosen(&self, worker_id: &str) -> u64 {
        self.lock().last_chosen.get(worker_id).copied().unwrap_or(0)
    }

    /// Restarts one attempt's lease clock: when its dispatch is sent, and when the
    /// worker acknowledges it.
    pub fn renew_attempt(&self, attempt: (InstanceId, u32)) {
        self.lock().renewals.insert(attempt, Instant::now());
    }

    /// Time since the attempt's last renewal (or since this leader's election).
    pub fn since_renewal(&self, attempt: (InstanceId, u32)) -> Duration {
        let g = self.lock();
        g.renewals
            .get(&attempt)
            .copied()
            .or(g.leader_since)
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Drops the clocks of attempts whose instance finished, and what it remembers of
    /// workers that are no longer registered (keeps leader memory bounded).
    pub fn retain(&self, active: &BTreeSet<InstanceId>, workers: &BTreeMap<String, WorkerReg>) {
        let mut g = self.lock();
        g.renewals.retain(|(i, _), _| active.contains(i));
        g.stops_sent.retain(|(i, _)| active.contains(i));
        g.waiting_since.retain(|i, _| active.contains(i));
        g.refused_since.retain(|i, _| active.contains(i));
        g.live.retain(|w, _| workers.contains_key(w));
        g.reserved.retain(|w, _| workers.contains_key(w));
        g.finished.retain(|w, _| workers.contains_key(w));
        g.last_chosen.retain(|w, _| workers.contains_key(w));
        g.refused_by.retain(|w| workers.contains_key(w));
    }

    /// Forgets a deregistered worker, including its WebSocket: nothing more is pushed
    /// to it.
    pub fn forget_worker(&self, worker_id: &str) {
        let mut g = self.lock();
        g.live.remove(worker_id);
        g.reserved.remove(worker_id);
        g.finished.remove(worker_id);
        g.refused_by.remove(worker_id);
        g.ws.remove(worker_id);
    }

    /// A dispatch of `instance` did not reach `worker_id` (refused, unreachable, no
    /// WebSocket): the worker is no candidate until its next heartbeat, and the
    /// instance's refusal clock starts (if it is not running already).
    pub fn dispatch_refused(&self, worker_id: &str, instance: InstanceId, why: String) {
        let mut g = self.lock();
        g.refused_by.insert(worker_id.to_string());
        g.refused_since
            .entry(instance)
            .and_modify(|(_, last)| *last = why.clone())
            .or_insert_with(|| (Instant::now(), why));
    }

    /// A worker accepted (or started) an attempt: its lease clock restarts, and the
    /// instance's refusal clock stops.
    pub fn dispatch_accepted(&self, attempt: (InstanceId, u32)) {
        let mut g = self.lock();
        g.renewals.insert(attempt, Instant::now());
        g.refused_since.remove(&attempt.0);
    }

    /// Since when dispatches of the instance have been refused, and the last refusal.
    pub fn refused_for(&self, id: InstanceId) -> Option<(Duration, String)> {
        self.lock()
            .refused_since
            .get(&id)
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// Whether the worker refused a dispatch since its last heartbeat.
    pub fn refused_recently(&self, worker_id: &str) -> bool {
        self.lock().refused_by.contains(worker_id)
    }

    pub fn forget_attempt(&self, attempt: (InstanceId, u32)) {
        let mut g = self.lock();
        g.renewals.remove(&attempt);
        g.stops_sent.remove(&attempt);
    }

    /// An attempt of the instance was lost by its lease (a try that counts): the
    /// instance's clocks start afresh.
    pub fn attempt_lost(&self, attempt: (InstanceId, u32)) {
        let mut g = self.lock();
        g.renewals.remove(&attempt);
        g.stops_sent.remove(&attempt);
        g.refused_since.remove(&attempt.0);
    }

    /// How long an instance has waited without a matching worker (starts the clock).
    pub fn waiting_without_worker(&self, id: InstanceId) -> Duration {
        self.lock()
            .waiting_since
            .entry(id)
            .or_insert_with(Instant::now)
            .elapsed()
    }

    pub fn found_worker(&self, id: InstanceId) {
        self.lock().waiting_since.remove(&id);
    }

    /// True the first time a stop for this attempt is to be sent by this leader.
    pub fn mark_stop_sent(&self, attempt: (InstanceId, u32)) -> bool {
        self.lock().stops_sent.insert(attempt)
    }

    pub fn views(&self, state: &State, app: Option<u64>) -> Vec<WorkerView> {
        let g = self.lock();
        let timeout = self.lease + self.grace;
        state
            .workers
            .values()
            .filter(|w| app.is_none_or(|a| a == w.app_id))
            .map(|w| {
                let live = g.live.get(&w.id);
                WorkerView {
                    reg: w.clone(),
                    app: state
                        .apps
                        .get(&w.app_id)
                        .map(|a| a.name.clone())
                        .unwrap_or_default(),
                    state: Self::state_in(&g, &w.id, timeout),
                    last_heartbeat_ms_ago: live
                        .map(|l| l.last_heartbeat.elapsed().as_millis() as u64),
                    running: live.map(|l| l.running).unwrap_or(0),
                    connected_ws: g.ws.get(&w.id).is_some_and(|tx| !tx.is_closed()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(max: u32) -> WorkerReg {
        WorkerReg {
            id: "app/w1".into(),
            app_id: 1,
            name: "w1".into(),
            protocol: "ws".into(),
            address: None,
            tag: None,
            version: "test".into(),
            max_concurrency: max,
            registered_at_ms: 0,
        }
    }

    /// A worker's capacity comes back when the leader commits an attempt's end, not
    /// only at the worker's next heartbeat.
    #[test]
    fn finished_attempts_free_capacity_before_the_next_heartbeat() {
        let r = WorkerRegistry::new(Duration::from_secs(10), Duration::from_secs(5));
        r.become_leader();
        let w = worker(2);
        r.heartbeat(&w.id, 1, 2);
        r.reserve(&w.id);
        assert!(
            r.candidates([&w].into_iter()).is_empty(),
            "1 running + 1 reserved = full"
        );
        r.attempt_finished(&w.id, (7, 1));
        r.attempt_finished(&w.id, (7, 1)); // a resent report counts once
        assert_eq!(r.candidates([&w].into_iter())[0].1, 1);
        r.attempt_finished(&w.id, (8, 1));
        assert_eq!(r.candidates([&w].into_iter())[0].1, 0);
        // The next heartbeat tells the load again and starts counting afresh.
        r.heartbeat(&w.id, 2, 2);
        assert!(r.candidates([&w].into_iter()).is_empty());
    }
}
