//! The leader's dispatcher: hands waiting instances to workers, enforces leases, and
//! fails what cannot run.
//!
//! Order of events for one attempt: choose a worker → propose `Dispatch` (apply stamps
//! the fencing token) → only after it commits, send the dispatch → the worker acks
//! (http answer or ws frame) and renews the lease with every heartbeat.
//!
//! A dispatch that definitely did not reach the worker (it refused it, the connection
//! was refused, or it has no WebSocket to this leader) is `DispatchRefused`: the
//! instance waits again without using up a retry, the worker is no candidate until its
//! next heartbeat, and the instance's refusal clock runs until a worker accepts it, so
//! an instance that no worker accepts still fails at the no-worker timeout. An attempt
//! is declared lost (a try that counts) after lease + grace without a renewal, measured
//! here at receipt; the worker kills its own attempt once its lease runs out, which is
//! before that.
//!
//! The dispatcher also forgets workers: one not heard from for `forget_after_ms` (and
//! at least lease + grace) with no open attempt is deregistered.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use rand::seq::SliceRandom;

use super::Node;
use crate::protocol::{
    AttemptRef, Dispatch, DispatchAck, ServerMsg, StopAttempt, CREDENTIAL_HEADER,
    PATH_WORKER_DISPATCH, PATH_WORKER_STOP,
};
use crate::server::transport::worker_credential;
use crate::state::{
    Attempt, Command, DispatchStrategy, ExecutionMode, Instance, InstanceId, InstanceStatus, Job,
    Outcome, WorkerReg,
};

type Inflight = Arc<Mutex<HashSet<InstanceId>>>;
/// Workers whose deregistration this leader has proposed and not yet seen answered.
type Forgetting = Arc<Mutex<HashSet<String>>>;

pub async fn run(node: Arc<Node>) {
    let mut server = node.raft.server_metrics();
    let mut data = node.raft.data_metrics();
    let inflight: Inflight = Arc::default();
    let forgetting: Forgetting = Arc::default();
    let mut leading = false;
    let mut last_prune = std::time::Instant::now();
    let mut last_forget = std::time::Instant::now();
    loop {
        let is_leader = server.borrow_and_update().state == ServerState::Leader;
        if is_leader != leading {
            leading = is_leader;
            if leading {
                tracing::info!(
                    node_id = node.id,
                    "Leading: dispatcher on; worker clocks restart from now."
                );
                node.workers.become_leader();
            } else {
                node.workers.step_down();
            }
        }
        if leading && caught_up(&node) {
            scan(&node, &inflight);
            if last_forget.elapsed() > Duration::from_secs(1) {
                forget_lost_workers(&node, &forgetting);
                last_forget = std::time::Instant::now();
            }
            if last_prune.elapsed() > Duration::from_secs(10) {
                {
                    let guard = node.state.read().expect("state lock");
                    node.workers
                        .retain(&guard.state.active, &guard.state.workers);
                }
                last_prune = std::time::Instant::now();
            }
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = server.changed() => {}
            _ = data.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        // Coalesce bursts of applies into one scan.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The leader has applied an entry of its own term, so its state includes every
/// entry committed before its election.
pub(crate) fn caught_up(node: &Node) -> bool {
    let m = node.raft.metrics().borrow().clone();
    m.last_applied
        .is_some_and(|l| l.leader_id.term == m.current_term)
}

/// What one scan decided, computed under the state lock and acted on after it.
enum Action {
    Dispatch {
        instance_id: InstanceId,
        workers: Vec<WorkerReg>,
    },
    Fail {
        instance_id: InstanceId,
        reason: String,
    },
    Lost {
        instance_id: InstanceId,
        attempt: u32,
        reason: String,
    },
    Stop {
        worker: WorkerReg,
        attempt: AttemptRef,
    },
}

fn scan(node: &Arc<Node>, inflight: &Inflight) {
    let tuning = &node.config.workers;
    let lease_limit = Duration::from_millis(tuning.lease_ms + tuning.grace_ms);
    let no_worker = Duration::from_millis(tuning.no_worker_timeout_ms);
    let now = super::now_ms();
    let mut actions = Vec::new();
    {
        let guard = node.state.read().expect("state lock");
        let state = &guard.state;
        let busy = inflight.lock().expect("inflight lock").clone();
        // Why a job has no worker, once found in this scan: the answer depends only on
        // the job and the workers, whose free capacity only shrinks as this scan
        // reserves it. Without this, a backlog of N waiting instances cost N full
        // worker searches (with their messages) per scan, and a scan follows every
        // apply: dispatch slowed down as the backlog grew (the bench's dispatch
        // section, 5,000 runs on 2 workers).
        let mut unavailable: HashMap<u64, String> = HashMap::new();
        for id in state.active.iter().filter(|id| !busy.contains(id)) {
            let Some(inst) = state.instances.get(id) else {
                continue;
            };
            match inst.status {
                InstanceStatus::WaitingDispatch => {
                    if inst.not_before_ms.is_some_and(|t| t > now) {
                        continue;
                    }
                    let Some(job) = state.jobs.get(&inst.job_id) else {
                        actions.push(Action::Fail {
                            instance_id: *id,
                            reason: "the job was deleted".into(),
                        });
                        continue;
                    };
                    // Refused dispatches do not stop the no-worker clock: it runs from
                    // the first refusal until a worker accepts one.
                    let refused = node.workers.refused_for(*id);
                    let picked = match unavailable.entry(job.id) {
                        Entry::Occupied(_) => None,
                        Entry::Vacant(slot) => match choose(node, state, job) {
                            Ok(workers) => Some(workers),
                            Err(reason) => {
                                slot.insert(reason);
                                None
                            }
                        },
                    };
                    match picked {
                        Some(_) if refused.as_ref().is_some_and(|(w, _)| *w >= no_worker) => {
                            let (waited, last) = refused.expect("checked");
                            actions.push(Action::Fail {
                                instance_id: *id,
                                reason: format!(
                                    "no worker available: no worker accepted the instance within {:.1}s (last: {last})",
                                    waited.as_secs_f64()
                                ),
                            });
                        }
                        Some(workers) => {
                            node.workers.found_worker(*id);
                            for w in &workers {
                                node.workers.reserve(&w.id);
                            }
                            actions.push(Action::Dispatch {
                                instance_id: *id,
                                workers,
                            });
                        }
                        None => {
                            let reason = unavailable.get(&job.id).map_or("", String::as_str);
                            let waited = node.workers.waiting_without_worker(*id);
                            let waited = waited.max(refused.as_ref().map_or(waited, |r| r.0));
                            if waited >= no_worker {
                                let mut reason = format!("no worker available: {reason}");
                                if let Some((_, last)) = refused {
                                    reason.push_str(&format!(" (last: {last})"));
                                }
                                actions.push(Action::Fail {
                                    instance_id: *id,
                                    reason,
                                });
                            }
                        }
                    }
                }
                _ => {
                    for a in open_attempts(inst) {
                        let key = (inst.id, a.number);
                        // An attempt committed moments ago may not have been sent
                        // (and so renewed) yet: its lease runs from its dispatch.
                        let since_dispatch =
                            Duration::from_millis((now - a.dispatched_at_ms).max(0) as u64);
                        let since = node.workers.since_renewal(key).min(since_dispatch);
                        if since > lease_limit {
                            let reason =
                                format!("no lease renewal for {:.1}s", since.as_secs_f64());
                            actions.push(Action::Lost {
                                instance_id: inst.id,
                                attempt: a.number,
                                reason,
                            });
                        } else if inst.status == InstanceStatus::Stopping
                            && node.workers.mark_stop_sent(key)
                        {
                            if let Some(w) = state.workers.get(&a.worker) {
                                let attempt = AttemptRef {
                                    instance_id: inst.id,
                                    attempt: a.number,
                                    token: a.fencing_token,
                                };
                                actions.push(Action::Stop {
                                    worker: w.clone(),
                                    attempt,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    for action in actions {
        let id = match &action {
            Action::Dispatch { instance_id, .. }
            | Action::Fail { instance_id, .. }
            | Action::Lost { instance_id, .. } => *instance_id,
            Action::Stop { worker, attempt } => {
                tokio::spawn(send_stop(node.clone(), worker.clone(), *attempt));
                continue;
            }
        };
        inflight.lock().expect("inflight lock").insert(id);
        let (node, inflight) = (node.clone(), inflight.clone());
        tokio::spawn(async move {
            act(&node, action).await;
            inflight.lock().expect("inflight lock").remove(&id);
        });
    }
}

fn open_attempts(inst: &Instance) -> impl Iterator<Item = &Attempt> {
    inst.attempts.iter().filter(|a| !a.status.is_terminal())
}

/// The workers that should run the job now, or why there are none.
pub(crate) fn choose(
    node: &Node,
    state: &crate::state::State,
    job: &Job,
) -> Result<Vec<WorkerReg>, String> {
    let app = state
        .apps
        .get(&job.app_id)
        .map(|a| a.name.clone())
        .unwrap_or_default();
    let registered: Vec<&WorkerReg> = state
        .workers
        .values()
        .filter(|w| w.app_id == job.app_id)
        .collect();
    if registered.is_empty() {
        return Err(format!("no worker has ever registered for app {app}"));
    }
    let mut matching: Vec<&WorkerReg> = registered.clone();
    if let Some(tag) = &job.spec.worker_tag {
        matching.retain(|w| w.tag.as_deref() == Some(tag.as_str()));
        if matching.is_empty() {
            return Err(format!(
                "none of the {} registered workers of app {app} has tag {tag}",
                registered.len()
            ));
        }
    }
    if !job.spec.designated_workers.is_empty() {
        matching.retain(|w| job.spec.designated_workers.contains(&w.name));
        if matching.is_empty() {
            return Err(format!(
                "none of the designated workers ({}) is registered for app {app}",
                job.spec.designated_workers.join(", ")
            ));
        }
    }
    // A ws worker can only be reached over its WebSocket to this leader.
    // (Collected first: `candidates` holds the registry lock.)
    let reachable: Vec<&WorkerReg> = matching
        .iter()
        .copied()
        .filter(|w| w.protocol != "ws" || node.workers.ws_sender(&w.id).is_some())
        .collect();
    let mut candidates = node.workers.candidates(reachable.into_iter());
    if candidates.is_empty() {
        let lost = matching
            .iter()
            .filter(|w| node.workers.state_of(&w.id) == super::worker_registry::WorkerState::Lost)
            .count();
        let refusing = matching
            .iter()
            .filter(|w| {
                node.workers.state_of(&w.id) != super::worker_registry::WorkerState::Lost
                    && node.workers.refused_recently(&w.id)
            })
            .count();
        return Err(if lost == matching.len() {
            format!(
                "{} matching workers registered for app {app}, but all are lost (no heartbeat)",
                matching.len()
            )
        } else if refusing > 0 {
            format!(
                "all {} live matching workers of app {app} are at their concurrency limit or refused a dispatch since their last heartbeat ({refusing} refused)",
                matching.len() - lost
            )
        } else {
            format!(
                "all {} live matching workers of app {app} are at their concurrency limit",
                matching.len() - lost
            )
        });
    }
    if job.spec.execution_mode == ExecutionMode::Broadcast {
        return Ok(candidates.into_iter().map(|(w, _)| w).collect());
    }
    candidates.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let pick = match job.spec.dispatch_strategy {
        // Least loaded; on a tie, the one chosen longest ago.
        DispatchStrategy::HealthFirst => candidates
            .iter()
            .min_by_key(|(w, running)| (*running, node.workers.last_chosen(&w.id)))
            .map(|(w, _)| w.clone()),
        DispatchStrategy::Random => candidates
            .choose(&mut rand::thread_rng())
            .map(|(w, _)| w.clone()),
        DispatchStrategy::RoundRobin => {
            let n = node.workers.next_round_robin() as usize;
            Some(candidates[n % candidates.len()].0.clone())
        }
    };
    pick.map(|w| vec![w])
        .ok_or_else(|| "no candidate".to_string())
}

/// Sends committed attempts to their workers (each on its own task). Used by the
/// scheduler for instances its `Fire` entry created already dispatched.
pub(crate) fn send_committed(node: &Arc<Node>, instance_id: InstanceId, attempts: Vec<Attempt>) {
    let workers: Vec<Option<WorkerReg>> = {
        let guard = node.state.read().expect("state lock");
        attempts
            .iter()
            .map(|a| guard.state.workers.get(&a.worker).cloned())
            .collect()
    };
    for (a, w) in attempts.into_iter().zip(workers) {
        match w {
            Some(w) => {
                tokio::spawn(send_dispatch(node.clone(), w, instance_id, a));
            }
            // Deregistered between choice and commit: it was never sent.
            None => {
                let node = node.clone();
                super::metrics::dispatch_refused(super::metrics::REFUSED_DEREGISTERED);
                tokio::spawn(async move {
                    let worker = a.worker.clone();
                    refuse_dispatch(
                        &node,
                        &worker,
                        (instance_id, a.number),
                        "it is no longer registered".into(),
                    )
                    .await
                });
            }
        }
    }
}

/// Records that a dispatch did not reach its worker: the instance waits again without
/// using up a retry, and the worker gets nothing more until its next heartbeat.
pub(crate) async fn refuse_dispatch(
    node: &Node,
    worker_id: &str,
    (instance_id, attempt): (InstanceId, u32),
    reason: String,
) {
    tracing::warn!(instance_id, attempt, worker = %worker_id, %reason, "Dispatch not delivered; the instance waits for a worker again.");
    node.workers.dispatch_refused(
        worker_id,
        instance_id,
        format!("dispatch refused by worker {worker_id}: {reason}"),
    );
    let cmd = Command::DispatchRefused {
        instance_id,
        attempt,
        reason,
    };
    let _ = node.propose(cmd, None).await;
    node.workers.forget_attempt((instance_id, attempt));
}

/// Deregisters workers this leader has not heard from for `forget_after_ms` (at least
/// lease + grace, so only lost ones) that hold no open attempt. The decision is the
/// leader's, on its own clock (restarted at its election); apply only removes.
fn forget_lost_workers(node: &Arc<Node>, forgetting: &Forgetting) {
    let tuning = &node.config.workers;
    let after = Duration::from_millis(tuning.forget_after_ms)
        .max(Duration::from_millis(tuning.lease_ms + tuning.grace_ms));
    let doomed: Vec<(String, Duration)> = {
        let guard = node.state.read().expect("state lock");
        let state = &guard.state;
        let busy = forgetting.lock().expect("forgetting lock").clone();
        state
            .workers
            .keys()
            .filter(|id| !busy.contains(*id))
            .filter(|id| node.workers.state_of(id) == super::worker_registry::WorkerState::Lost)
            .filter_map(|id| {
                let silent = node.workers.silent_for(id);
                (silent >= after).then(|| (id.clone(), silent))
            })
            .filter(|(id, _)| crate::state::open_attempts_of_worker(state, id).is_empty())
            .collect()
    };
    for (id, silent) in doomed {
        forgetting
            .lock()
            .expect("forgetting lock")
            .insert(id.clone());
        let (node, forgetting) = (node.clone(), forgetting.clone());
        tokio::spawn(async move {
            // Only as leader: a deposed leader's clock decides nothing.
            let cmd = Command::DeregisterWorker { id: id.clone() };
            match node.propose_as_leader(cmd).await {
                Ok(resp) => match resp.outcome {
                    Outcome::Worker { .. } => {
                        node.workers.forget_worker(&id);
                        tracing::info!(worker = %id, silent_s = silent.as_secs(), "Forgot a worker lost for longer than workers.forget_after_ms.");
                    }
                    other => {
                        tracing::debug!(worker = %id, outcome = ?other, "A lost worker was not forgotten.")
                    }
                },
                Err(e) => {
                    tracing::debug!(worker = %id, error = %e, "Forgetting a lost worker did not go through.")
                }
            }
            forgetting.lock().expect("forgetting lock").remove(&id);
        });
    }
}

async fn act(node: &Arc<Node>, action: Action) {
    match action {
        Action::Fail {
            instance_id,
            reason,
        } => {
            tracing::warn!(instance_id, %reason, "Failing an instance that cannot be dispatched.");
            if reason.starts_with("no worker available") {
                super::metrics::no_worker_failure();
            }
            let _ = node
                .propose(
                    Command::FailInstance {
                        id: instance_id,
                        reason,
                    },
                    None,
                )
                .await;
        }
        Action::Lost {
            instance_id,
            attempt,
            reason,
        } => {
            tracing::warn!(instance_id, attempt, %reason, "Declaring an attempt lost.");
            super::metrics::attempt_lost();
            let _ = node
                .propose(
                    Command::AttemptLost {
                        instance_id,
                        attempt,
                        reason,
                    },
                    None,
                )
                .await;
            node.workers.attempt_lost((instance_id, attempt));
        }
        Action::Dispatch {
            instance_id,
            workers,
        } => {
            let names = workers.iter().map(|w| w.id.clone()).collect();
            let resp = match node
                .propose(
                    Command::Dispatch {
                        instance_id,
                        workers: names,
                    },
                    None,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(instance_id, error = %e, "Dispatch proposal did not go through.");
                    return;
                }
            };
            let Outcome::Dispatched { attempts } = resp.outcome else {
                return;
            };
            // Committed: only now may the dispatch leave this node.
            let sends = attempts.into_iter().filter_map(|a| {
                let w = workers.iter().find(|w| w.id == a.worker)?.clone();
                Some(send_dispatch(node.clone(), w, instance_id, a))
            });
            futures::future::join_all(sends).await;
        }
        Action::Stop { .. } => {}
    }
}

fn dispatch_message(node: &Node, instance_id: InstanceId, attempt: &Attempt) -> Option<Dispatch> {
    let guard = node.state.read().expect("state lock");
    let state = &guard.state;
    let inst = state.instances.get(&instance_id)?;
    let job = state.jobs.get(&inst.job_id)?;
    if let Some(fire_time) = inst.fire_time_ms.filter(|_| attempt.number == 1) {
        let now = super::now_ms();
        super::metrics::record_lateness(super::metrics::STAGE_DISPATCHED, fire_time, now);
    }
    Some(Dispatch {
        cluster_id: state.meta.cluster_id.clone()?,
        term: attempt.fencing_token.term,
        attempt: AttemptRef {
            instance_id,
            attempt: attempt.number,
            token: attempt.fencing_token,
        },
        job_id: job.id,
        processor: job.spec.processor.clone(),
        job_params: job.spec.params.clone(),
        instance_params: inst.params.clone(),
        timeout_ms: job.spec.timeout_ms,
        lease_ms: node.config.workers.lease_ms,
        policies: std::iter::once(&state.meta.policy)
            .chain(state.apps.get(&job.app_id).and_then(|a| a.policy.as_ref()))
            .filter(|p| !p.is_default())
            .cloned()
            .collect(),
    })
}

async fn send_dispatch(
    node: Arc<Node>,
    worker: WorkerReg,
    instance_id: InstanceId,
    attempt: Attempt,
) {
    let key = (instance_id, attempt.number);
    let Some(msg) = dispatch_message(&node, instance_id, &attempt) else {
        return;
    };
    node.workers.renew_attempt(key);
    if crate::planted::active(crate::planted::Bug::DuplicateDispatch) {
        tokio::spawn(planted_duplicate(node.clone(), worker.clone(), msg.clone()));
    }
    // Definitely not delivered: the instance waits again, without using up a retry.
    let refused = |kind: &'static str, reason: String| {
        super::metrics::dispatch_refused(kind);
        let node = node.clone();
        let worker_id = worker.id.clone();
        async move { refuse_dispatch(&node, &worker_id, key, reason).await }
    };
    use super::metrics::{REFUSED_BY_WORKER, REFUSED_NO_ADDRESS, REFUSED_NO_WEBSOCKET};
    if worker.protocol == "ws" {
        match node.workers.ws_sender(&worker.id) {
            Some(tx) if tx.send(ServerMsg::Dispatch(msg)).is_ok() => {
                super::metrics::dispatch_sent(&worker.protocol)
            }
            _ => {
                let reason = "no open WebSocket to this leader".into();
                refused(REFUSED_NO_WEBSOCKET, reason).await
            }
        }
        return;
    }
    let Some(addr) = worker.address.clone() else {
        refused(REFUSED_NO_ADDRESS, "no address registered".into()).await;
        return;
    };
    super::metrics::dispatch_sent(&worker.protocol);
    let credential = worker_credential(&node.config.cluster_secret, &msg.cluster_id, &worker.id);
    let result = node
        .worker_http
        .post(format!("http://{addr}{PATH_WORKER_DISPATCH}"))
        .header(CREDENTIAL_HEADER, credential)
        // Within the grace: a dispatch arriving later than that after it was sent could
        // outlive the leader's view of its lease.
        .timeout(Duration::from_millis(
            node.config
                .workers
                .dispatch_timeout_ms
                .min(node.config.workers.grace_ms),
        ))
        .json(&msg)
        .send()
        .await;
    match result {
        Ok(resp) => match resp.json::<DispatchAck>().await {
            Ok(ack) if ack.accepted => node.workers.dispatch_accepted(key),
            Ok(ack) => {
                let reason = ack.reason.unwrap_or_else(|| "no reason given".into());
                refused(REFUSED_BY_WORKER, reason).await
            }
            // The worker may or may not hold it: its lease decides.
            Err(e) => {
                tracing::warn!(instance_id, error = %e, "Unreadable dispatch answer; the lease decides.")
            }
        },
        Err(e) if e.is_connect() => {
            let reason = format!("unreachable at {addr}: {e}");
            refused(super::metrics::REFUSED_UNREACHABLE, reason).await
        }
        Err(e) => {
            tracing::warn!(instance_id, error = %e, "Dispatch answer lost; the lease decides.")
        }
    }
}

/// PLANTED BUG `duplicate-dispatch` (only in `planted-bugs` builds): sends the same
/// dispatch to another worker of the app as well, ignoring its answer.
async fn planted_duplicate(node: Arc<Node>, primary: WorkerReg, msg: Dispatch) {
    let other = {
        let guard = node.state.read().expect("state lock");
        guard
            .state
            .workers
            .values()
            .find(|w| w.app_id == primary.app_id && w.id != primary.id)
            .cloned()
    };
    let Some(other) = other else { return };
    tracing::warn!(instance_id = msg.attempt.instance_id, worker = %other.id, "PLANTED BUG duplicate-dispatch: sending the dispatch to a second worker.");
    if other.protocol == "ws" {
        if let Some(tx) = node.workers.ws_sender(&other.id) {
            let _ = tx.send(ServerMsg::Dispatch(msg));
        }
        return;
    }
    let Some(addr) = other.address.clone() else {
        return;
    };
    let credential = worker_credential(&node.config.cluster_secret, &msg.cluster_id, &other.id);
    let _ = node
        .worker_http
        .post(format!("http://{addr}{PATH_WORKER_DISPATCH}"))
        .header(CREDENTIAL_HEADER, credential)
        .timeout(Duration::from_secs(2))
        .json(&msg)
        .send()
        .await;
}

async fn send_stop(node: Arc<Node>, worker: WorkerReg, attempt: AttemptRef) {
    let Some(cluster_id) = node.cluster_id() else {
        return;
    };
    let stop = StopAttempt {
        cluster_id: cluster_id.clone(),
        term: node.raft.metrics().borrow().current_term,
        attempt,
    };
    if worker.protocol == "ws" {
        if let Some(tx) = node.workers.ws_sender(&worker.id) {
            let _ = tx.send(ServerMsg::Stop(stop));
        }
        return;
    }
    let Some(addr) = worker.address else { return };
    let credential = worker_credential(&node.config.cluster_secret, &cluster_id, &worker.id);
    let _ = node
        .worker_http
        .post(format!("http://{addr}{PATH_WORKER_STOP}"))
        .header(CREDENTIAL_HEADER, credential)
        .timeout(Duration::from_secs(5))
        .json(&stop)
        .send()
        .await;
}
