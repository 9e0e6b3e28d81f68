//! The leader's scheduler: one timer per job's next fire time, in a heap driven by
//! tokio time, and `Fire` proposals that turn due times into instances.
//!
//! Only the leader schedules, and only once it has applied an entry of its own term
//! (so it sees every committed fire). The fire cursor in the state machine, not this
//! module's memory, is what keeps a time from firing twice: apply ignores times at
//! or before a job's cursor. A new leader therefore rebuilds every timer from the
//! state, applies each job's misfire policy to what fell due while nobody led, and
//! carries on.
//!
//! [`Planner`] is the pure part (what to fire, given the state and a time) and is
//! tested with made-up clocks; [`run`] is the loop around it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::mpsc;

use super::Node;
use crate::config::SchedulerTuning;
use crate::schedule::Timeline;
use crate::state::command::FireItem;
use crate::state::{
    Command, Job, JobId, Millis, MisfirePolicy, Outcome, Schedule, SkipKind, State, Trigger,
};

/// Where the scheduler's time comes from, so tests can drive the planner with any
/// time they like. The state machine never reads it: time enters the log only in
/// the proposals the leader makes.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        super::now_ms()
    }
}

/// Most jobs in one `Fire` entry; a larger simultaneous batch takes several entries.
pub const MAX_ITEMS_PER_ENTRY: usize = 2_000;
/// Most missed fire times enumerated per job in a catch-up; beyond it the rest of
/// the missed range is recorded as one skip record.
pub const MAX_ENUMERATED_MISSES: usize = 1_000;

/// What a catch-up decided for the log: totals over all jobs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    pub jobs: usize,
    pub run: usize,
    pub skipped: usize,
    /// Skip ranges recorded as one record (too many misses to enumerate).
    pub ranges: usize,
}

/// The pure scheduling core: timers and what is due.
pub struct Planner {
    tuning: SchedulerTuning,
    /// Compiled timelines, by job, for the job version they were compiled from.
    timelines: HashMap<JobId, (u64, Arc<Timeline>)>,
    /// Each job's armed fire time (the heap may hold stale entries; this is the truth).
    armed: HashMap<JobId, Millis>,
    heap: BinaryHeap<Reverse<(Millis, JobId)>>,
    /// Catch-up items to propose at once.
    pending: Vec<FireItem>,
    /// Jobs whose `Fire` is in flight: not re-planned until it is applied.
    inflight: HashSet<JobId>,
}

impl Planner {
    pub fn new(tuning: SchedulerTuning) -> Self {
        Self {
            tuning,
            timelines: HashMap::new(),
            armed: HashMap::new(),
            heap: BinaryHeap::new(),
            pending: Vec::new(),
            inflight: HashSet::new(),
        }
    }

    /// Forgets everything (on losing leadership).
    pub fn clear(&mut self) {
        self.timelines.clear();
        self.armed.clear();
        self.heap.clear();
        self.pending.clear();
        self.inflight.clear();
    }

    /// Plans every job from scratch (on becoming leader) and says what the misfire
    /// policies caught up.
    pub fn rebuild(&mut self, state: &State, now: Millis) -> CatchUp {
        self.clear();
        let ids: Vec<JobId> = state.jobs.keys().copied().collect();
        self.refresh(state, ids, now)
    }

    /// Re-plans the given jobs after they changed (or were fired).
    pub fn refresh(
        &mut self,
        state: &State,
        ids: impl IntoIterator<Item = JobId>,
        now: Millis,
    ) -> CatchUp {
        let mut caught = CatchUp::default();
        for id in ids {
            if self.inflight.contains(&id) {
                continue;
            }
            self.armed.remove(&id);
            let Some(job) = state.jobs.get(&id) else {
                self.timelines.remove(&id);
                continue;
            };
            if let Some(item) = self.plan_job(state, job, now) {
                caught.jobs += 1;
                caught.run += item.run.len();
                caught.skipped += item.skip.len();
                caught.ranges += usize::from(item.skip_through_ms.is_some());
                self.pending.push(item);
            }
        }
        caught
    }

    /// Arms the job's next fire time, or returns a catch-up item when it is more
    /// than the misfire threshold late.
    fn plan_job(&mut self, state: &State, job: &Job, now: Millis) -> Option<FireItem> {
        if !job.spec.enabled || matches!(job.spec.schedule, Schedule::Api) {
            return None;
        }
        let timeline = self.timeline(job)?;
        let cursor = job.last_fire_time_ms;
        let next = if timeline.is_fixed_delay() {
            if scheduled_instance_unfinished(state, job.id) {
                return None;
            }
            fixed_delay_due(&timeline, job)?
        } else {
            timeline.next_after(cursor)?
        };
        let horizon = now - self.tuning.misfire_threshold_ms as Millis;
        if next > horizon || timeline.is_fixed_delay() {
            // On time, or late by less than the threshold: fire normally (at once
            // when already due). A fixed-delay job has one pending time at most.
            self.arm(job.id, next);
            return None;
        }
        Some(self.catch_up(job, &timeline, cursor, horizon))
    }

    /// Applies the job's misfire policy to the fire times in (cursor, horizon].
    fn catch_up(
        &self,
        job: &Job,
        timeline: &Timeline,
        cursor: Option<Millis>,
        horizon: Millis,
    ) -> FireItem {
        let (missed, more) = timeline.due_between(cursor, horizon, MAX_ENUMERATED_MISSES);
        let latest = if more {
            last_at_or_before(timeline, missed.last().copied(), horizon)
        } else {
            missed.last().copied()
        };
        let mut item = FireItem {
            skip_kind: Some(SkipKind::Misfire),
            ..FireItem::new(job.id, job.version)
        };
        match job.spec.misfire_policy {
            MisfirePolicy::Skip => {
                item.skip = missed;
                if more {
                    item.skip_through_ms = latest;
                }
            }
            MisfirePolicy::FireOnce => {
                item.run = latest.into_iter().collect();
                item.skip = missed.into_iter().filter(|t| Some(*t) != latest).collect();
                if more {
                    // Everything between the enumerated misses and the catch-up run.
                    item.skip_through_ms = latest.map(|t| t - 1);
                }
            }
            MisfirePolicy::FireAll if !more => {
                let limit = self.tuning.catch_up_limit as usize;
                let split = missed.len().saturating_sub(limit);
                item.skip = missed[..split].to_vec();
                item.run = missed[split..].to_vec();
                item.skip_kind = Some(SkipKind::CatchUpLimit);
            }
            MisfirePolicy::FireAll => {
                // Too many to enumerate: run the latest, record the rest as one range.
                item.run = latest.into_iter().collect();
                item.skip = missed;
                item.skip_kind = Some(SkipKind::CatchUpLimit);
                item.skip_through_ms = latest.map(|t| t - 1);
            }
        }
        item
    }

    fn timeline(&mut self, job: &Job) -> Option<Arc<Timeline>> {
        if let Some((v, t)) = self.timelines.get(&job.id) {
            if *v == job.version {
                return Some(t.clone());
            }
        }
        match Timeline::compile(&job.spec, job.created_at_ms) {
            Ok(t) => {
                let t = Arc::new(t);
                self.timelines.insert(job.id, (job.version, t.clone()));
                Some(t)
            }
            Err(e) => {
                // Validated at create time; this only happens if the rules changed.
                tracing::error!(job_id = job.id, error = %e, "Cannot schedule the job: its schedule does not compile.");
                None
            }
        }
    }

    fn arm(&mut self, job: JobId, at: Millis) {
        self.armed.insert(job, at);
        self.heap.push(Reverse((at, job)));
    }

    /// The earliest armed time, if any (catch-up items pending count as now).
    pub fn next_due(&mut self) -> Option<Millis> {
        if !self.pending.is_empty() {
            return Some(Millis::MIN);
        }
        while let Some(Reverse((at, job))) = self.heap.peek().copied() {
            if self.armed.get(&job) == Some(&at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Everything due at `now`: catch-up items and every armed time that has come,
    /// grouped into entries of at most [`MAX_ITEMS_PER_ENTRY`] items. The jobs in
    /// them are in flight until [`Planner::fired`] is called.
    pub fn take_due(&mut self, state: &State, now: Millis) -> Vec<Vec<FireItem>> {
        let mut items = std::mem::take(&mut self.pending);
        while let Some(Reverse((at, job))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.armed.get(&job) != Some(&at) {
                continue;
            }
            self.armed.remove(&job);
            let Some(j) = state.jobs.get(&job) else {
                continue;
            };
            items.push(FireItem {
                run: vec![at],
                ..FireItem::new(job, j.version)
            });
        }
        for item in &items {
            self.inflight.insert(item.job_id);
        }
        let mut entries = Vec::new();
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(MAX_ITEMS_PER_ENTRY));
            entries.push(std::mem::replace(&mut items, rest));
        }
        entries
    }

    /// The `Fire` for these jobs was applied (or failed): they may be planned again.
    pub fn fired(&mut self, jobs: impl IntoIterator<Item = JobId>) -> Vec<JobId> {
        jobs.into_iter()
            .filter(|j| self.inflight.remove(j))
            .collect()
    }

    /// The armed time of a job (for tests and the API's next-fire view).
    pub fn armed(&self, job: JobId) -> Option<Millis> {
        self.armed.get(&job).copied()
    }
}

/// Whether one of the job's scheduled instances is still unfinished: a fixed-delay
/// job has no next time until it ends.
fn scheduled_instance_unfinished(state: &State, job: JobId) -> bool {
    state.active_of_job(job).any(|i| {
        state
            .instances
            .get(&i)
            .is_some_and(|x| x.trigger == Trigger::Schedule)
    })
}

/// A fixed-delay job's next time: `delay` after its previous scheduled instance
/// ended, or, when its last fire time was skipped (no instance ran, so none
/// ended since), `delay` after that skipped time.
fn fixed_delay_due(timeline: &Timeline, job: &Job) -> Option<Millis> {
    let cursor = job.last_fire_time_ms;
    timeline
        .fixed_delay_next(job.last_finished_ms, cursor)
        .or_else(|| timeline.fixed_delay_next(cursor, cursor))
}

/// The latest fire time in (`after`, `until`], found by searching backwards from
/// `until` in doubling windows (a per-second cron needs one step, a yearly one
/// about 35), so a long outage costs no walk over every missed time.
fn last_at_or_before(timeline: &Timeline, after: Option<Millis>, until: Millis) -> Option<Millis> {
    let low = after.unwrap_or(Millis::MIN);
    let mut window: Millis = 1_000;
    loop {
        let from = until.saturating_sub(window).max(low);
        let mut last = None;
        let mut cursor = Some(from);
        while let Some(t) = timeline.next_after(cursor) {
            if t > until {
                break;
            }
            last = Some(t);
            cursor = Some(t);
        }
        if last.is_some() || from == low {
            return last;
        }
        window = window.saturating_mul(2);
    }
}

/// The job's next fire time as the state says (any node can answer): none for
/// disabled, API-only and finished jobs, and for a fixed-delay job whose previous
/// instance still runs. May lie in the past while the cluster has no leader.
pub fn next_fire_time(state: &State, job: &Job) -> Option<Millis> {
    upcoming(state, job, 1).into_iter().next()
}

/// The job's next `count` fire times after its cursor (fixed delay: only the next).
pub fn upcoming(state: &State, job: &Job, count: usize) -> Vec<Millis> {
    if !job.spec.enabled || matches!(job.spec.schedule, Schedule::Api) {
        return Vec::new();
    }
    let Ok(timeline) = Timeline::compile(&job.spec, job.created_at_ms) else {
        return Vec::new();
    };
    if timeline.is_fixed_delay() {
        if scheduled_instance_unfinished(state, job.id) {
            return Vec::new();
        }
        return fixed_delay_due(&timeline, job).into_iter().collect();
    }
    timeline.upcoming(job.last_fire_time_ms, count)
}

/// The scheduler task: runs on every node, schedules only while leading.
pub async fn run(node: Arc<Node>) {
    let clock = SystemClock;
    let tuning = node.config.scheduler.clone();
    let mut planner = Planner::new(tuning.clone());
    let mut server = node.raft.server_metrics();
    let mut data = node.raft.data_metrics();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<JobId>>();
    let mut leading = false;
    let mut built = false;
    let mut next_prune = tokio::time::Instant::now();
    let mut done_jobs: Vec<JobId> = Vec::new();
    loop {
        let is_leader = server.borrow_and_update().state == ServerState::Leader;
        if is_leader != leading {
            leading = is_leader;
            built = false;
            planner.clear();
            done_jobs.clear();
        }
        if leading && !built && super::dispatcher::caught_up(&node) {
            let now = clock.now_ms();
            // Clear before reading: a job changed after this point stays dirty and is
            // re-planned on the next pass instead of being lost between the two locks.
            node.state.write().expect("state lock").dirty_jobs.clear();
            let guard = node.state.read().expect("state lock");
            let caught = if crate::planted::active(crate::planted::Bug::IgnoreFireCursor) {
                planner.rebuild(&planted_rewound(&guard.state, &tuning), now)
            } else {
                planner.rebuild(&guard.state, now)
            };
            drop(guard);
            built = true;
            super::metrics::misfires(caught.run + caught.skipped);
            tracing::info!(
                node_id = node.id,
                armed = planner.armed.len(),
                catch_up_jobs = caught.jobs,
                catch_up_runs = caught.run,
                catch_up_skips = caught.skipped,
                skip_ranges = caught.ranges,
                "Leading: scheduler on; timers rebuilt from the fire cursors."
            );
        }
        if built {
            let now = clock.now_ms();
            // The loop wakes on every apply: take the write lock only when there is
            // something to take, so API reads are not held up for nothing.
            let any_dirty = !node.state.read().expect("state lock").dirty_jobs.is_empty();
            let dirty: BTreeSet<JobId> = if any_dirty {
                std::mem::take(&mut node.state.write().expect("state lock").dirty_jobs)
            } else {
                BTreeSet::new()
            };
            while let Ok(jobs) = done_rx.try_recv() {
                done_jobs.extend(jobs);
            }
            let done = planner.fired(done_jobs.drain(..));
            let entries = {
                let guard = node.state.read().expect("state lock");
                let caught = planner.refresh(&guard.state, dirty.into_iter().chain(done), now);
                if caught.jobs > 0 {
                    super::metrics::misfires(caught.run + caught.skipped);
                    tracing::info!(
                        jobs = caught.jobs,
                        runs = caught.run,
                        skips = caught.skipped,
                        skip_ranges = caught.ranges,
                        "Caught up fire times more than the misfire threshold late."
                    );
                }
                let mut entries = planner.take_due(&guard.state, now);
                choose_workers(&node, &guard.state, &mut entries);
                entries
            };
            for items in entries {
                tokio::spawn(propose_fire(node.clone(), items, done_tx.clone()));
            }
            if tokio::time::Instant::now() >= next_prune {
                next_prune =
                    tokio::time::Instant::now() + Duration::from_millis(tuning.prune_interval_ms);
                let node = node.clone();
                let tuning = tuning.clone();
                tokio::spawn(async move { prune(&node, &tuning).await });
            }
        }
        super::metrics::timers_pending(if built { planner.armed.len() } else { 0 });
        let sleep = match planner.next_due().filter(|_| built) {
            Some(at) => {
                let wait = (at - clock.now_ms()).clamp(0, 1_000) as u64;
                Duration::from_millis(wait)
            }
            None => Duration::from_secs(1),
        };
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = server.changed() => {}
            _ = data.changed() => {}
            Some(jobs) = done_rx.recv() => done_jobs.extend(jobs),
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Picks workers for each single run now, so the `Fire` entry creates the
/// instance already dispatched. Instances without a worker right now are left to
/// the dispatcher, which waits for one and explains why none fits.
fn choose_workers(node: &Node, state: &State, entries: &mut [Vec<FireItem>]) {
    for item in entries.iter_mut().flatten() {
        if item.run.len() != 1 {
            continue;
        }
        let Some(job) = state.jobs.get(&item.job_id) else {
            continue;
        };
        if let Ok(workers) = super::dispatcher::choose(node, state, job) {
            for w in &workers {
                node.workers.reserve(&w.id);
            }
            item.dispatch_to = workers.into_iter().map(|w| w.id).collect();
        }
    }
}

async fn propose_fire(
    node: Arc<Node>,
    items: Vec<FireItem>,
    done: mpsc::UnboundedSender<Vec<JobId>>,
) {
    let jobs: Vec<JobId> = items.iter().map(|i| i.job_id).collect();
    let count = items.len();
    let planned_skips = fire_metrics_before(&items);
    match node.propose_as_leader(Command::Fire { items }).await {
        Ok(resp) => {
            if let Outcome::Fired {
                created,
                skipped,
                dispatched,
            } = resp.outcome
            {
                super::metrics::fired(created.len(), &skips_by_kind(&planned_skips, skipped));
                tracing::debug!(
                    jobs = count,
                    created = created.len(),
                    dispatched = dispatched.len(),
                    skipped,
                    "Fired."
                );
                // Committed: only now may the dispatches leave this node.
                for d in dispatched {
                    super::dispatcher::send_committed(&node, d.instance_id, d.attempts);
                }
            }
        }
        Err(e) => {
            tracing::warn!(jobs = count, error = %e, "A Fire proposal did not go through; the jobs are re-planned from their cursors.");
        }
    }
    // The jobs are re-planned from the state either way; the cursor prevents a refire.
    let _ = done.send(jobs);
}

/// Records how late each on-time fire is as it is proposed (catch-up runs are counted
/// as misfires instead) and returns the skips the items plan, by kind.
fn fire_metrics_before(items: &[FireItem]) -> [(&'static str, usize); 2] {
    let now = super::now_ms();
    let mut planned = [("misfire", 0), ("catch_up_limit", 0)];
    for item in items {
        match item.skip_kind {
            None => {
                for t in &item.run {
                    super::metrics::record_lateness(super::metrics::STAGE_PROPOSED, *t, now);
                }
            }
            Some(kind) => {
                let n = item.skip.len() + usize::from(item.skip_through_ms.is_some());
                let slot = usize::from(kind == SkipKind::CatchUpLimit);
                planned[slot].1 += n;
            }
        }
    }
    planned
}

/// Splits the skips a `Fire` recorded by kind: those the items planned (misfire,
/// catch-up limit), and the rest, which apply decided (the concurrency policies).
pub fn skips_by_kind(
    planned: &[(&'static str, usize); 2],
    recorded: usize,
) -> [(&'static str, usize); 3] {
    let misfire = planned[0].1.min(recorded);
    let limit = planned[1].1.min(recorded - misfire);
    [
        ("misfire", misfire),
        ("catch_up_limit", limit),
        ("concurrency", recorded - misfire - limit),
    ]
}

/// Proposes retention pruning, repeating while a batch came back full.
async fn prune(node: &Node, tuning: &SchedulerTuning) {
    loop {
        let cmd = Command::Prune {
            max_age_ms: tuning.retention_ms as Millis,
            max_per_job: tuning.retention_per_job,
        };
        match node.propose_as_leader(cmd).await {
            Ok(resp) => match resp.outcome {
                Outcome::Pruned { instances } if instances > 0 => {
                    tracing::info!(instances, "Removed finished instances past retention.");
                    if instances < crate::state::PRUNE_BATCH {
                        return;
                    }
                }
                _ => return,
            },
            Err(_) => return,
        }
    }
}

/// PLANTED BUG `ignore-fire-cursor` (only in `planted-bugs` builds): a new leader
/// plans from fire cursors set half a misfire threshold back, so it proposes fire
/// times already fired; the planted apply accepts them (src/state/apply.rs). Without
/// this, a correct leader never proposes an old time and the bug would stay hidden.
fn planted_rewound(state: &State, tuning: &SchedulerTuning) -> State {
    let back = (tuning.misfire_threshold_ms / 2) as Millis;
    let mut copy = state.clone();
    for job in copy.jobs.values_mut() {
        job.last_fire_time_ms = job.last_fire_time_ms.map(|t| t - back);
    }
    copy
}

#[cfg(test)]
mod tests;
