//! `apply`: the transition function of the replicated state machine.

use super::command::AttemptEvent;
use super::command::{Command, Outcome, Proposal, Response, StateError};
use super::command::{FireItem, FiredDispatch};
use super::model::{ApiToken, AuditRecord, Role, TokenId, AUDIT_CAP};
use super::model::{
    App, Attempt, ConcurrencyPolicy, ExecutionMode, FencingToken, Instance, InstanceId,
    InstanceStatus, Job, JobId, JobSpec, Millis, NodeAddrs, Processor, SkipKind, SkipRecord,
    Trigger, LOG_TAIL_LINES, SKIPS_PER_JOB,
};
use super::{Key, RequestRecord, State, REQUEST_RETENTION_MS};

/// Applies one proposal committed at (`term`, `index`) and returns its response.
///
/// Pure: the result depends only on `state`, `proposal`, `term` and `index`.
/// The caller must have checked [`Proposal::v`] against
/// [`super::COMMAND_VERSION`] (an unknown version stops the node instead).
pub fn apply(state: &mut State, proposal: &Proposal, term: u64, index: u64) -> Response {
    if proposal.now_ms > state.meta.now_ms {
        state.meta.now_ms = proposal.now_ms;
        state.touch(Key::Meta);
    }
    expire_requests(state);

    if let Some(req) = &proposal.request {
        if let Some(rec) = state.requests.get(&req.id) {
            if rec.body_hash == req.body_hash {
                let mut resp = rec.response.clone();
                resp.replayed = true;
                return resp;
            }
            return Response::new(Outcome::rejected(StateError::IdempotencyConflict));
        }
    }

    if let Command::Batch { proposals } = &proposal.cmd {
        let responses = proposals
            .iter()
            .map(|p| match p.cmd {
                Command::Batch { .. } => {
                    Response::new(execute(state, &p.cmd, FencingToken { term, index }))
                }
                _ => apply(state, p, term, index),
            })
            .collect();
        return Response::new(Outcome::Batch { responses });
    }

    let response = Response::new(execute_as_caller(
        state,
        proposal,
        FencingToken { term, index },
    ));

    if let Some(req) = &proposal.request {
        let at_ms = state.meta.now_ms;
        state.requests.insert(
            req.id.clone(),
            RequestRecord {
                body_hash: req.body_hash.clone(),
                response: response.clone(),
                at_ms,
            },
        );
        state.request_expiry.insert((at_ms, req.id.clone()));
        state.touch(Key::Request(req.id.clone()));
    }
    response
}

/// Drops request ids older than the retention window (replicated clock).
fn expire_requests(state: &mut State) {
    let horizon = state.meta.now_ms - REQUEST_RETENTION_MS;
    while let Some((at, id)) = state.request_expiry.first().cloned() {
        if at >= horizon {
            break;
        }
        state.request_expiry.pop_first();
        if state.requests.get(&id).is_some_and(|r| r.at_ms == at) {
            state.requests.remove(&id);
            state.touch(Key::Request(id));
        }
    }
}

/// What a user write acts on, for the audit trail and the scope of a token.
struct Target {
    action: &'static str,
    app_id: u64,
    job_id: JobId,
    instance_id: Option<InstanceId>,
}

/// The job or instance a user command acts on, as the state stands before it runs;
/// `None` for commands that are not audited or whose target does not exist.
fn audit_target(state: &State, cmd: &Command) -> Option<Target> {
    let job = |action, id: &JobId| {
        state.jobs.get(id).map(|j| Target {
            action,
            app_id: j.app_id,
            job_id: j.id,
            instance_id: None,
        })
    };
    let instance = |action, id: &InstanceId| {
        state.instances.get(id).map(|i| Target {
            action,
            app_id: i.app_id,
            job_id: i.job_id,
            instance_id: Some(i.id),
        })
    };
    match cmd {
        Command::CreateJob { spec } => state.app_by_name(&spec.app).map(|a| Target {
            action: "job.create",
            app_id: a.id,
            job_id: 0,
            instance_id: None,
        }),
        Command::UpdateJob { id, .. } => job("job.update", id),
        Command::DeleteJob { id } => job("job.delete", id),
        Command::SetJobEnabled { id, enabled: true } => job("job.enable", id),
        Command::SetJobEnabled { id, enabled: false } => job("job.disable", id),
        Command::RunJob { job_id, .. } => job("job.run", job_id),
        Command::StopInstance { id } => instance("instance.stop", id),
        Command::CancelInstance { id } => instance("instance.cancel", id),
        Command::RetryInstance { id } => instance("instance.retry", id),
        Command::SetPolicy { app, .. } => {
            let app_id = match app {
                Some(name) => state.app_by_name(name)?.id,
                None => 0,
            };
            Some(Target {
                action: "policy.set",
                app_id,
                job_id: 0,
                instance_id: None,
            })
        }
        _ => None,
    }
}

/// The role a scoped token needs for a command; `None`: admin only.
fn required_role(cmd: &Command) -> Option<Role> {
    match cmd {
        Command::CreateJob { .. } | Command::UpdateJob { .. } | Command::DeleteJob { .. } => {
            Some(Role::Manage)
        }
        Command::SetJobEnabled { .. }
        | Command::RunJob { .. }
        | Command::StopInstance { .. }
        | Command::CancelInstance { .. }
        | Command::RetryInstance { .. } => Some(Role::Operate),
        _ => None,
    }
}

/// Checks a scoped token's write against the committed state: the token still
/// exists, is neither revoked nor expired (replicated clock), has the role, and the
/// command stays inside its app. Another app's job or instance is "not found", so its
/// ids do not leak. The API checks the same before proposing; this makes the check
/// hold even when the receiving node's state lagged behind.
fn check_scope(
    state: &State,
    token_id: TokenId,
    cmd: &Command,
    target: Option<&Target>,
) -> Result<(), StateError> {
    let forbidden = |message: String| StateError::Forbidden { message };
    let token = state
        .tokens
        .get(&token_id)
        .ok_or_else(|| forbidden(format!("token {token_id} does not exist")))?;
    if !token.valid_at(state.meta.now_ms) {
        return Err(forbidden(format!("token {token_id} is revoked or expired")));
    }
    let role = required_role(cmd)
        .ok_or_else(|| forbidden("only the admin token may do this".to_string()))?;
    if token.role < role {
        return Err(forbidden(format!(
            "token {token_id} has role {:?}; this needs {:?}",
            token.role, role
        )));
    }
    if let Some(t) = target {
        if t.app_id != token.app_id {
            return Err(match cmd {
                Command::CreateJob { spec } => {
                    forbidden(format!("token {token_id} cannot act on app {}", spec.app))
                }
                _ if t.instance_id.is_some() => {
                    StateError::not_found("instance", t.instance_id.unwrap_or_default())
                }
                _ => StateError::not_found("job", t.job_id),
            });
        }
    }
    let named_app = match cmd {
        Command::CreateJob { spec } | Command::UpdateJob { spec, .. } => Some(&spec.app),
        _ => None,
    };
    if let Some(name) = named_app {
        if state.app_by_name(name).map(|a| a.id) != Some(token.app_id) {
            return Err(forbidden(format!(
                "token {token_id} cannot act on app {name}"
            )));
        }
    }
    Ok(())
}

/// Executes a proposal's command as its caller: a scoped token's write is checked
/// first, and every audited user write that succeeds is added to the audit trail.
fn execute_as_caller(state: &mut State, proposal: &Proposal, pos: FencingToken) -> Outcome {
    let token_id = proposal.request.as_ref().and_then(|r| r.token_id);
    let target = audit_target(state, &proposal.cmd);
    if let Some(token_id) = token_id {
        if let Err(e) = check_scope(state, token_id, &proposal.cmd, target.as_ref()) {
            return Outcome::rejected(e);
        }
    }
    let outcome = execute(state, &proposal.cmd, pos);
    if let (Some(_), Some(target)) = (&proposal.request, target) {
        if !matches!(outcome, Outcome::Rejected { .. }) {
            record_audit(state, target, token_id, &outcome);
        }
    }
    outcome
}

fn record_audit(state: &mut State, t: Target, token_id: Option<TokenId>, outcome: &Outcome) {
    let seq = state.audit.last_key_value().map_or(1, |(k, _)| k + 1);
    let mut rec = AuditRecord {
        seq,
        at_ms: state.meta.now_ms,
        actor: token_id.map_or_else(|| "admin".to_string(), |id| format!("token/{id}")),
        token_id,
        action: t.action.to_string(),
        app_id: t.app_id,
        job_id: t.job_id,
        instance_id: t.instance_id,
        created_instance_id: None,
    };
    match outcome {
        Outcome::Job { job } => rec.job_id = job.id,
        Outcome::InstanceCreated { id } if t.instance_id.is_none() => rec.instance_id = Some(*id),
        Outcome::InstanceCreated { id } => rec.created_instance_id = Some(*id),
        _ => {}
    }
    state.audit.insert(seq, rec);
    state.touch(Key::Audit(seq));
    while state.audit.len() > AUDIT_CAP {
        if let Some((old, _)) = state.audit.pop_first() {
            state.touch(Key::Audit(old));
        }
    }
}

fn next_id(state: &mut State) -> u64 {
    state.meta.next_id += 1;
    state.touch(Key::Meta);
    state.meta.next_id
}

fn execute(state: &mut State, cmd: &Command, pos: FencingToken) -> Outcome {
    let now = state.meta.now_ms;
    match cmd {
        Command::Bootstrap { cluster_id } => {
            if state.meta.cluster_id.is_none() {
                state.meta.cluster_id = Some(cluster_id.clone());
                state.touch(Key::Meta);
            }
            Outcome::None
        }
        Command::SetNodeAddrs {
            node_id,
            api_addr,
            cluster_addr,
            transports,
        } => {
            let addrs = NodeAddrs {
                api_addr: api_addr.clone(),
                cluster_addr: cluster_addr.clone(),
                transports: transports.clone(),
            };
            state.nodes.insert(*node_id, addrs);
            state.touch(Key::Node(*node_id));
            Outcome::None
        }
        Command::RemoveNode { node_id } => {
            state.nodes.remove(node_id);
            state.touch(Key::Node(*node_id));
            Outcome::None
        }
        Command::CreateApp {
            name,
            worker_token_hash,
        } => {
            if state.app_by_name(name).is_some() {
                return Outcome::rejected(StateError::AlreadyExists {
                    entity: "app".into(),
                    key: name.clone(),
                });
            }
            let id = next_id(state);
            let app = App {
                id,
                name: name.clone(),
                worker_token_hash: worker_token_hash.clone(),
                created_at_ms: now,
                previous_worker_token_hash: None,
                policy: None,
            };
            state.apps.insert(id, app.clone());
            state.touch(Key::App(id));
            Outcome::App { app }
        }
        Command::CreateJob { spec } => {
            let app_id = match resolve_app(state, spec) {
                Ok(id) => id,
                Err(e) => return Outcome::rejected(e),
            };
            if state.job_named(app_id, &spec.name).is_some() {
                return Outcome::rejected(StateError::AlreadyExists {
                    entity: "job".into(),
                    key: format!("{}/{}", spec.app, spec.name),
                });
            }
            let id = next_id(state);
            let job = Job {
                id,
                app_id,
                spec: spec.clone(),
                created_at_ms: now,
                updated_at_ms: now,
                version: 1,
                last_fire_time_ms: None,
                last_finished_ms: None,
            };
            state.jobs.insert(id, job.clone());
            state.index_job_name(None, id);
            state.touch(Key::Job(id));
            job.into()
        }
        Command::UpdateJob { id, spec } => {
            let app_id = match resolve_app(state, spec) {
                Ok(id) => id,
                Err(e) => return Outcome::rejected(e),
            };
            if state
                .job_named(app_id, &spec.name)
                .is_some_and(|other| other != *id)
            {
                return Outcome::rejected(StateError::AlreadyExists {
                    entity: "job".into(),
                    key: format!("{}/{}", spec.app, spec.name),
                });
            }
            let old = state.jobs.get(id).map(|j| (j.app_id, j.spec.name.clone()));
            let outcome = update_job(state, *id, now, |job| {
                job.app_id = app_id;
                job.spec = spec.clone();
            });
            state.index_job_name(old, *id);
            outcome
        }
        Command::DeleteJob { id } => {
            let Some(job) = state.jobs.remove(id) else {
                return Outcome::rejected(StateError::not_found("job", id));
            };
            state.index_job_name(Some((job.app_id, job.spec.name)), *id);
            state.touch(Key::Job(*id));
            if state.skips.remove(id).is_some() {
                state.touch(Key::Skips(*id));
            }
            Outcome::Deleted { id: *id }
        }
        Command::SetJobEnabled { id, enabled } => {
            update_job(state, *id, now, |job| job.spec.enabled = *enabled)
        }
        Command::Tick => Outcome::None,
        Command::Fire { items } => fire(state, items, pos, now),
        Command::Prune {
            max_age_ms,
            max_per_job,
        } => Outcome::Pruned {
            instances: prune(state, now, *max_age_ms, *max_per_job),
        },
        Command::RegisterWorker { worker } => {
            let mut worker = worker.clone();
            worker.registered_at_ms = now;
            state.workers.insert(worker.id.clone(), worker.clone());
            state.touch(Key::Worker(worker.id.clone()));
            Outcome::Worker { worker }
        }
        Command::DeregisterWorker { id } => deregister_worker(state, id),
        Command::RunJob {
            job_id,
            params,
            delay_ms,
        } => {
            let Some(job) = state.jobs.get(job_id) else {
                return Outcome::rejected(StateError::not_found("job", job_id));
            };
            let max = job.spec.max_concurrent_instances;
            let app_id = job.app_id;
            if max > 0 {
                let running = state.active_of_job(*job_id).count();
                if running >= max as usize {
                    return Outcome::rejected(StateError::Conflict {
                        message: format!("job {job_id} already has {running} unfinished instances (max_concurrent_instances = {max})"),
                    });
                }
            }
            let id = next_id(state);
            let not_before_ms = (*delay_ms > 0).then(|| now + *delay_ms as Millis);
            let instance = new_instance(
                id,
                *job_id,
                app_id,
                Trigger::Manual,
                params.clone(),
                now,
                not_before_ms,
            );
            insert_instance(state, instance);
            Outcome::InstanceCreated { id }
        }
        Command::Dispatch {
            instance_id,
            workers,
        } => {
            // A worker deregistered after the leader chose it gets nothing.
            if let Some(gone) = workers.iter().find(|w| !state.workers.contains_key(*w)) {
                return Outcome::rejected(StateError::Invalid {
                    field: "workers".into(),
                    message: format!("worker {gone} is not registered"),
                });
            }
            dispatch(state, *instance_id, workers, pos, now)
        }
        Command::Report {
            instance_id,
            attempt,
            token,
            event,
        } => report(state, *instance_id, *attempt, *token, event, now),
        Command::AttemptLost {
            instance_id,
            attempt,
            reason,
        } => {
            let accepted = with_instance(state, *instance_id, |inst, job| {
                let Some(a) = inst.attempts.iter_mut().find(|a| a.number == *attempt) else {
                    return false;
                };
                if a.status.is_terminal() || inst.status.is_terminal() {
                    return false;
                }
                a.status = InstanceStatus::Failed;
                a.finished_at_ms = Some(now);
                a.result = Some(format!("worker {} lost: {reason}", a.worker));
                settle(inst, job, now);
                true
            });
            Outcome::ReportAccepted {
                accepted: accepted.unwrap_or(false),
            }
        }
        Command::DispatchRefused {
            instance_id,
            attempt,
            reason,
        } => {
            let accepted = with_instance(state, *instance_id, |inst, job| {
                let Some(a) = inst.attempts.iter_mut().find(|a| a.number == *attempt) else {
                    return false;
                };
                // Only a dispatch nobody reported on can have gone undelivered: an
                // attempt that reported `running` (or ended) ran, whatever a late
                // refusal says.
                if a.status != InstanceStatus::Dispatched || inst.status.is_terminal() {
                    return false;
                }
                a.status = InstanceStatus::Failed;
                a.finished_at_ms = Some(now);
                a.result = Some(format!("dispatch refused by worker {}: {reason}", a.worker));
                a.dispatch_refused = true;
                settle(inst, job, now);
                true
            });
            Outcome::ReportAccepted {
                accepted: accepted.unwrap_or(false),
            }
        }
        Command::StopInstance { id } => change_instance(state, *id, |inst, _| match inst.status {
            s if s.is_terminal() => Err(conflict(*id, s, "stop")),
            InstanceStatus::WaitingDispatch => {
                finish(
                    inst,
                    InstanceStatus::Stopped,
                    "stopped before it was dispatched".into(),
                    now,
                );
                Ok(())
            }
            _ => {
                inst.status = InstanceStatus::Stopping;
                Ok(())
            }
        }),
        Command::CancelInstance { id } => {
            change_instance(state, *id, |inst, _| match inst.status {
                InstanceStatus::WaitingDispatch => {
                    finish(inst, InstanceStatus::Canceled, "canceled".into(), now);
                    Ok(())
                }
                s => Err(conflict(
                    *id,
                    s,
                    "cancel (only a waiting instance can be canceled; stop a dispatched one)",
                )),
            })
        }
        Command::RetryInstance { id } => {
            let Some(old) = state.instances.get(id) else {
                return Outcome::rejected(StateError::not_found("instance", id));
            };
            if !old.status.is_terminal() {
                return Outcome::rejected(conflict(
                    *id,
                    old.status,
                    "retry (only a finished instance can be retried)",
                ));
            }
            if !state.jobs.contains_key(&old.job_id) {
                return Outcome::rejected(StateError::not_found("job", old.job_id));
            }
            let (job_id, app_id, params) = (old.job_id, old.app_id, old.params.clone());
            let new_id = next_id(state);
            let instance = new_instance(
                new_id,
                job_id,
                app_id,
                Trigger::Retry { of: *id },
                params,
                now,
                None,
            );
            insert_instance(state, instance);
            Outcome::InstanceCreated { id: new_id }
        }
        Command::FailInstance { id, reason } => {
            change_instance(state, *id, |inst, _| match inst.status {
                InstanceStatus::WaitingDispatch => {
                    finish(inst, InstanceStatus::Failed, reason.clone(), now);
                    Ok(())
                }
                s => Err(conflict(*id, s, "fail")),
            })
        }
        // Unpacked in `apply`; only a nested batch gets here.
        Command::Batch { .. } => Outcome::rejected(StateError::Invalid {
            field: "type".into(),
            message: "a batch cannot contain a batch".into(),
        }),
        Command::CreateToken {
            name,
            app,
            role,
            token_hash,
            expires_at_ms,
        } => {
            let Some(app_id) = state.app_by_name(app).map(|a| a.id) else {
                return Outcome::rejected(StateError::not_found("app", app));
            };
            if state.token_by_hash(token_hash).is_some() {
                return Outcome::rejected(StateError::AlreadyExists {
                    entity: "token".into(),
                    key: name.clone(),
                });
            }
            let id = next_id(state);
            let token = ApiToken {
                id,
                name: name.clone(),
                app_id,
                role: *role,
                token_hash: token_hash.clone(),
                created_at_ms: now,
                expires_at_ms: *expires_at_ms,
                revoked_at_ms: None,
            };
            state.insert_token(token.clone());
            Outcome::Token { token }
        }
        Command::RevokeToken { id } => {
            let Some(token) = state.tokens.get_mut(id) else {
                return Outcome::rejected(StateError::not_found("token", id));
            };
            if token.revoked_at_ms.is_none() {
                token.revoked_at_ms = Some(now);
            }
            let token = token.clone();
            state.touch(Key::Token(*id));
            Outcome::Token { token }
        }
        Command::RotateAppToken {
            app,
            worker_token_hash,
        } => {
            let Some(a) = state.apps.values_mut().find(|a| a.name == *app) else {
                return Outcome::rejected(StateError::not_found("app", app));
            };
            if a.worker_token_hash != *worker_token_hash {
                let old = std::mem::replace(&mut a.worker_token_hash, worker_token_hash.clone());
                a.previous_worker_token_hash = Some(old);
            }
            let app = a.clone();
            state.touch(Key::App(app.id));
            Outcome::App { app }
        }
        Command::RetireAppToken { app } => {
            let Some(a) = state.apps.values_mut().find(|a| a.name == *app) else {
                return Outcome::rejected(StateError::not_found("app", app));
            };
            a.previous_worker_token_hash = None;
            let app = a.clone();
            state.touch(Key::App(app.id));
            Outcome::App { app }
        }
        Command::SetPolicy { app, policy } => {
            if let Err(e) = policy.validate() {
                return Outcome::rejected(StateError::Invalid {
                    field: e.field,
                    message: e.message,
                });
            }
            match app {
                None => {
                    state.meta.policy = policy.clone();
                    state.touch(Key::Meta);
                }
                Some(name) => {
                    let Some(a) = state.apps.values_mut().find(|a| a.name == *name) else {
                        return Outcome::rejected(StateError::not_found("app", name));
                    };
                    a.policy = Some(policy.clone());
                    let id = a.id;
                    state.touch(Key::App(id));
                }
            }
            Outcome::Policy {
                policy: policy.clone(),
            }
        }
        Command::Unknown => Outcome::rejected(StateError::Invalid {
            field: "type".into(),
            message: "unknown command".into(),
        }),
    }
}

/// Removes a worker's registration, unless an attempt dispatched to it is still open:
/// that attempt is settled first (by the worker's report or its lease).
fn deregister_worker(state: &mut State, id: &str) -> Outcome {
    if !state.workers.contains_key(id) {
        return Outcome::rejected(StateError::not_found("worker", id));
    }
    let open = open_attempts_of_worker(state, id);
    if !open.is_empty() {
        let list = open
            .iter()
            .take(5)
            .map(|(i, a)| format!("instance {i} attempt {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let more = if open.len() > 5 { ", …" } else { "" };
        return Outcome::rejected(StateError::Conflict {
            message: format!(
                "worker {id} still holds {} open attempt(s) ({list}{more}); they are settled by the worker's reports or their leases first",
                open.len()
            ),
        });
    }
    let worker = state.workers.remove(id).expect("checked above");
    state.touch(Key::Worker(id.to_string()));
    Outcome::Worker { worker }
}

/// The attempts dispatched to a worker that have not ended, as (instance, attempt).
pub fn open_attempts_of_worker(state: &State, worker: &str) -> Vec<(InstanceId, u32)> {
    state
        .active
        .iter()
        .filter_map(|id| state.instances.get(id))
        .flat_map(|inst| {
            inst.attempts
                .iter()
                .filter(|a| a.worker == worker && !a.status.is_terminal())
                .map(move |a| (inst.id, a.number))
        })
        .collect()
}

/// The job's app, once the operator's processor policy admits its processor (the API
/// checked the same; this holds when the policy changed in between).
fn resolve_app(state: &State, spec: &JobSpec) -> Result<u64, StateError> {
    let app = state
        .app_by_name(&spec.app)
        .ok_or_else(|| StateError::not_found("app", &spec.app))?;
    policy_check(state, app, &spec.processor)?;
    Ok(app.id)
}

fn policy_check(state: &State, app: &App, processor: &Processor) -> Result<(), StateError> {
    super::policy::check_processor(
        &state.meta.policy,
        &app.name,
        app.policy.as_ref(),
        processor,
    )
    .map_err(|e| StateError::PolicyDenied {
        field: e.field,
        message: e.message,
    })
}

fn update_job(state: &mut State, id: u64, now: Millis, change: impl FnOnce(&mut Job)) -> Outcome {
    let Some(job) = state.jobs.get_mut(&id) else {
        return Outcome::rejected(StateError::not_found("job", id));
    };
    change(job);
    job.updated_at_ms = now;
    job.version += 1;
    let job = job.clone();
    state.touch(Key::Job(id));
    job.into()
}

fn conflict(id: InstanceId, status: InstanceStatus, what: &str) -> StateError {
    let status = serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    StateError::Conflict {
        message: format!("cannot {what}: instance {id} is {status}"),
    }
}

fn new_instance(
    id: InstanceId,
    job_id: u64,
    app_id: u64,
    trigger: Trigger,
    params: serde_json::Value,
    now: Millis,
    not_before_ms: Option<Millis>,
) -> Instance {
    Instance {
        id,
        job_id,
        app_id,
        trigger,
        fire_time_ms: None,
        params,
        status: InstanceStatus::WaitingDispatch,
        attempts: Vec::new(),
        created_at_ms: now,
        finished_at_ms: None,
        result: None,
        log_tail: Vec::new(),
        not_before_ms,
        dispatched_at_ms: None,
        started_at_ms: None,
    }
}

fn insert_instance(state: &mut State, instance: Instance) {
    let id = instance.id;
    state.instances.insert(id, instance);
    state.index_instance(id);
    state.touch(Key::Instance(id));
}

/// Runs `f` on an instance and its job (if the job still exists), keeping the
/// active index and persistence in step. `None` when the instance does not exist.
fn with_instance<T>(
    state: &mut State,
    id: InstanceId,
    f: impl FnOnce(&mut Instance, Option<&Job>) -> T,
) -> Option<T> {
    let job = state
        .instances
        .get(&id)
        .and_then(|i| state.jobs.get(&i.job_id))
        .cloned();
    let inst = state.instances.get_mut(&id)?;
    let was_terminal = inst.status.is_terminal();
    let out = f(inst, job.as_ref());
    if !was_terminal && inst.status.is_terminal() {
        let (job_id, scheduled, finished) = (
            inst.job_id,
            inst.trigger == Trigger::Schedule,
            inst.finished_at_ms,
        );
        state.index_instance(id);
        // Fixed-delay jobs fire a delay after their previous scheduled instance ends.
        if scheduled {
            if let Some(job) = state.jobs.get_mut(&job_id) {
                job.last_finished_ms = finished;
                state.touch(Key::Job(job_id));
            }
        }
    }
    state.touch(Key::Instance(id));
    Some(out)
}

fn change_instance(
    state: &mut State,
    id: InstanceId,
    f: impl FnOnce(&mut Instance, Option<&Job>) -> Result<(), StateError>,
) -> Outcome {
    match with_instance(state, id, f) {
        None => Outcome::rejected(StateError::not_found("instance", id)),
        Some(Err(e)) => Outcome::rejected(e),
        Some(Ok(())) => Outcome::Instance {
            instance: state.instances[&id].clone(),
        },
    }
}

fn finish(inst: &mut Instance, status: InstanceStatus, result: String, now: Millis) {
    inst.status = status;
    inst.result = Some(result);
    inst.finished_at_ms = Some(now);
}

fn dispatch(
    state: &mut State,
    id: InstanceId,
    workers: &[String],
    pos: FencingToken,
    now: Millis,
) -> Outcome {
    if workers.is_empty() {
        return Outcome::rejected(StateError::Invalid {
            field: "workers".into(),
            message: "no worker named".into(),
        });
    }
    // The policy may have tightened since the job was made: such an instance fails
    // here, deterministically on every replica, and never reaches a worker.
    let refused = state
        .instances
        .get(&id)
        .filter(|i| i.status == InstanceStatus::WaitingDispatch)
        .and_then(|i| Some((state.jobs.get(&i.job_id)?, state.apps.get(&i.app_id)?)))
        .and_then(|(job, app)| policy_check(state, app, &job.spec.processor).err());
    if let Some(e) = refused {
        with_instance(state, id, |inst, _| {
            inst.status = InstanceStatus::Failed;
            inst.finished_at_ms = Some(now);
            inst.result = Some(format!("not dispatched: {e}"));
        });
        return Outcome::rejected(e);
    }
    let out = with_instance(state, id, |inst, job| {
        if inst.status != InstanceStatus::WaitingDispatch {
            return Err(conflict(id, inst.status, "dispatch"));
        }
        let broadcast = job.is_some_and(|j| j.spec.execution_mode == ExecutionMode::Broadcast);
        if !broadcast && workers.len() != 1 {
            return Err(StateError::Invalid {
                field: "workers".into(),
                message: "a standalone instance runs on one worker".into(),
            });
        }
        let mut created = Vec::new();
        for w in workers {
            let attempt = Attempt {
                number: inst.attempts.len() as u32 + 1,
                worker: w.clone(),
                fencing_token: pos,
                status: InstanceStatus::Dispatched,
                dispatched_at_ms: now,
                started_at_ms: None,
                finished_at_ms: None,
                result: None,
                dispatch_refused: false,
            };
            created.push(attempt.clone());
            inst.attempts.push(attempt);
        }
        inst.status = InstanceStatus::Dispatched;
        inst.dispatched_at_ms.get_or_insert(now);
        Ok(created)
    });
    match out {
        None => Outcome::rejected(StateError::not_found("instance", id)),
        Some(Err(e)) => Outcome::rejected(e),
        Some(Ok(attempts)) => Outcome::Dispatched { attempts },
    }
}

fn report(
    state: &mut State,
    id: InstanceId,
    number: u32,
    token: FencingToken,
    event: &AttemptEvent,
    now: Millis,
) -> Outcome {
    let accepted = with_instance(state, id, |inst, job| {
        let Some(a) = inst.attempts.iter_mut().find(|a| a.number == number) else {
            return false;
        };
        if a.fencing_token != token {
            return false;
        }
        match event {
            AttemptEvent::Log { lines } => {
                inst.log_tail.extend(lines.iter().cloned());
                let excess = inst.log_tail.len().saturating_sub(LOG_TAIL_LINES);
                inst.log_tail.drain(..excess);
                true
            }
            // Terminal states are final: a late or stale report never reopens anything.
            _ if a.status.is_terminal() || inst.status.is_terminal() => false,
            AttemptEvent::Running => {
                a.status = InstanceStatus::Running;
                a.started_at_ms.get_or_insert(now);
                inst.started_at_ms.get_or_insert(now);
                if inst.status == InstanceStatus::Dispatched {
                    inst.status = InstanceStatus::Running;
                }
                true
            }
            AttemptEvent::Finished {
                success,
                result,
                stopped,
            } => {
                a.status = if *stopped {
                    InstanceStatus::Stopped
                } else if *success {
                    InstanceStatus::Succeeded
                } else {
                    InstanceStatus::Failed
                };
                a.finished_at_ms = Some(now);
                a.result = Some(result.clone());
                settle(inst, job, now);
                true
            }
        }
    });
    Outcome::ReportAccepted {
        accepted: accepted.unwrap_or(false),
    }
}

/// Decides an instance's state after one of its attempts ended.
fn settle(inst: &mut Instance, job: Option<&Job>, now: Millis) {
    let open = inst.attempts.iter().any(|a| !a.status.is_terminal());
    if inst.status == InstanceStatus::Stopping {
        if !open {
            finish(inst, InstanceStatus::Stopped, "stopped".into(), now);
        }
        return;
    }
    let broadcast = job.is_some_and(|j| j.spec.execution_mode == ExecutionMode::Broadcast);
    if broadcast {
        if open {
            return;
        }
        // The broadcast's last round: every attempt dispatched together.
        let last_token = inst.attempts.last().map(|a| a.fencing_token);
        let round: Vec<&Attempt> = inst
            .attempts
            .iter()
            .filter(|a| Some(a.fencing_token) == last_token)
            .collect();
        // A worker that refused the dispatch is treated like one that was not a
        // candidate (at its concurrency limit): the round is judged by the workers
        // that got it. If none did, nothing ran: the instance waits for a new round.
        if round.iter().all(|a| a.dispatch_refused) {
            inst.status = InstanceStatus::WaitingDispatch;
            return;
        }
        let ok = round
            .iter()
            .filter(|a| !a.dispatch_refused)
            .all(|a| a.status == InstanceStatus::Succeeded);
        let summary = round
            .iter()
            .map(|a| {
                let status = if a.dispatch_refused {
                    "refused".to_string()
                } else {
                    format!("{:?}", a.status).to_lowercase()
                };
                format!(
                    "{}: {status}: {}",
                    a.worker,
                    a.result.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let status = if ok {
            InstanceStatus::Succeeded
        } else {
            InstanceStatus::Failed
        };
        finish(inst, status, summary, now);
        return;
    }
    let Some(last) = inst.attempts.last() else {
        return;
    };
    if last.dispatch_refused {
        // It never ran: wait for a worker again, without using up a retry. (A deleted
        // job is failed by the dispatcher, with that reason.)
        inst.status = InstanceStatus::WaitingDispatch;
        return;
    }
    match last.status {
        InstanceStatus::Succeeded => {
            let result = last.result.clone().unwrap_or_default();
            finish(inst, InstanceStatus::Succeeded, result, now);
        }
        InstanceStatus::Stopped => {
            let result = last.result.clone().unwrap_or_default();
            finish(inst, InstanceStatus::Stopped, result, now);
        }
        _ => {
            let allowed = job.map(|j| j.spec.retries).unwrap_or(0) as usize + 1;
            // Refused dispatches never ran: they are not tries.
            let tries = inst.attempts.iter().filter(|a| !a.dispatch_refused).count();
            if tries < allowed && job.is_some() {
                inst.status = InstanceStatus::WaitingDispatch;
            } else {
                let result = last.result.clone().unwrap_or_default();
                finish(inst, InstanceStatus::Failed, result, now);
            }
        }
    }
}

/// Applies a scheduler's `Fire`: for each job, records its skipped times and runs
/// its fire time under the job's concurrency policy, moving the fire cursor past
/// everything it accepted. Times at or before the cursor were handled already (by
/// this or an earlier leader) and are ignored: that is what makes each fire time
/// happen at most once.
fn fire(state: &mut State, items: &[FireItem], pos: FencingToken, now: Millis) -> Outcome {
    let mut created = Vec::new();
    let mut dispatched = Vec::new();
    let mut skipped = 0;
    for item in items {
        let Some(job) = state.jobs.get(&item.job_id) else {
            continue;
        };
        if job.version != item.job_version || !job.spec.enabled {
            continue;
        }
        let cursor = job.last_fire_time_ms;
        // PLANTED BUG `ignore-fire-cursor` (only in `planted-bugs` builds): accept times
        // at or before the cursor. The flag is a process global read here, which breaks
        // this module's purity on purpose: it exists to prove the checkers catch it.
        let ignore_cursor = cfg!(feature = "planted-bugs")
            && crate::planted::active(crate::planted::Bug::IgnoreFireCursor);
        let fresh = |t: &Millis| ignore_cursor || cursor.is_none_or(|c| *t > c);
        let kind = item.skip_kind.unwrap_or(SkipKind::Misfire);
        let mut skips: Vec<Skip> = item
            .skip
            .iter()
            .copied()
            .filter(fresh)
            .map(|t| Skip::one(t, kind, skip_message(kind, None)))
            .collect();
        let mut max = skips.iter().map(|s| s.at).max();
        if let Some(through) = item.skip_through_ms.filter(fresh) {
            let from = max.or(cursor).map_or(through, |m| m + 1).min(through);
            skips.push(Skip {
                at: from,
                through: Some(through),
                kind,
                message: format!(
                    "{} (every fire time in this range)",
                    skip_message(kind, None)
                ),
            });
            max = max.max(Some(through));
        }
        let mut runs: Vec<Millis> = item.run.iter().copied().filter(fresh).collect();
        runs.sort_unstable();
        runs.dedup();
        for t in runs {
            max = max.max(Some(t));
            match admit(state, item.job_id) {
                Ok(()) => {
                    let app_id = state.jobs[&item.job_id].app_id;
                    let id = next_id(state);
                    let mut instance = new_instance(
                        id,
                        item.job_id,
                        app_id,
                        Trigger::Schedule,
                        serde_json::Value::Null,
                        now,
                        None,
                    );
                    instance.fire_time_ms = Some(t);
                    insert_instance(state, instance);
                    created.push(id);
                    if item.run.len() == 1 && !item.dispatch_to.is_empty() {
                        if let Outcome::Dispatched { attempts } =
                            dispatch(state, id, &item.dispatch_to, pos, now)
                        {
                            dispatched.push(FiredDispatch {
                                instance_id: id,
                                attempts,
                            });
                        }
                    }
                }
                Err((kind, message)) => skips.push(Skip::one(t, kind, message)),
            }
        }
        if let Some(max) = max {
            let job = state.jobs.get_mut(&item.job_id).expect("checked above");
            job.last_fire_time_ms = Some(max);
            state.touch(Key::Job(item.job_id));
        }
        skipped += skips.len();
        record_skips(state, item.job_id, skips, now);
    }
    Outcome::Fired {
        created,
        skipped,
        dispatched,
    }
}

/// A skip about to be recorded.
struct Skip {
    at: Millis,
    through: Option<Millis>,
    kind: SkipKind,
    message: String,
}

impl Skip {
    fn one(at: Millis, kind: SkipKind, message: String) -> Self {
        Self {
            at,
            through: None,
            kind,
            message,
        }
    }
}

/// Whether a job may start another scheduled instance now, applying its
/// concurrency policy (a `replace` stops the unfinished ones first).
fn admit(state: &mut State, job_id: JobId) -> Result<(), (SkipKind, String)> {
    let job = &state.jobs[&job_id];
    let (policy, max) = (
        job.spec.concurrency_policy,
        job.spec.max_concurrent_instances,
    );
    let active: Vec<InstanceId> = state.active_of_job(job_id).collect();
    match policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            let kind = SkipKind::ConcurrencyForbid;
            Err((kind, skip_message(kind, active.first().copied())))
        }
        ConcurrencyPolicy::Replace => {
            let now = state.meta.now_ms;
            for id in active {
                with_instance(state, id, |inst, _| match inst.status {
                    InstanceStatus::WaitingDispatch => finish(
                        inst,
                        InstanceStatus::Stopped,
                        "replaced by a newer scheduled instance".into(),
                        now,
                    ),
                    InstanceStatus::Stopping => {}
                    _ => inst.status = InstanceStatus::Stopping,
                });
            }
            Ok(())
        }
        _ if max > 0 && active.len() >= max as usize => {
            let kind = SkipKind::MaxConcurrentInstances;
            Err((
                kind,
                format!(
                    "the job already had {} unfinished instances (max_concurrent_instances = {max})",
                    active.len()
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn skip_message(kind: SkipKind, previous: Option<InstanceId>) -> String {
    match kind {
        SkipKind::Misfire => {
            "missed while the cluster had no leader; the job's misfire policy does not run it"
                .into()
        }
        SkipKind::CatchUpLimit => "missed, and beyond the fire_all catch-up limit".into(),
        SkipKind::ConcurrencyForbid => format!(
            "instance {} of this job was still unfinished (concurrency_policy = forbid)",
            previous.unwrap_or_default()
        ),
        SkipKind::MaxConcurrentInstances => "max_concurrent_instances reached".into(),
    }
}

fn record_skips(state: &mut State, job_id: JobId, skips: Vec<Skip>, now: Millis) {
    if skips.is_empty() {
        return;
    }
    let list = state.skips.entry(job_id).or_default();
    list.extend(skips.into_iter().map(|s| SkipRecord {
        fire_time_ms: s.at,
        through_ms: s.through,
        kind: s.kind,
        reason: s.message,
        recorded_at_ms: now,
    }));
    list.sort_by_key(|s| s.fire_time_ms);
    let excess = list.len().saturating_sub(SKIPS_PER_JOB);
    list.drain(..excess);
    state.touch(Key::Skips(job_id));
}

/// Most instances one `Prune` removes, so one entry's apply stays short; the
/// leader proposes the next `Prune` soon after.
pub const PRUNE_BATCH: usize = 10_000;

/// Retention: removes finished instances older than `max_age_ms`, then the oldest
/// finished ones of any job beyond `max_per_job`, and old skip records.
fn prune(state: &mut State, now: Millis, max_age_ms: Millis, max_per_job: u32) -> usize {
    let horizon = now.saturating_sub(max_age_ms);
    let mut removed = 0;
    while removed < PRUNE_BATCH {
        let Some(&(at, id)) = state.finished.first() else {
            break;
        };
        if at >= horizon {
            break;
        }
        state.remove_instance(id);
        removed += 1;
    }
    if max_per_job > 0 {
        let over: Vec<(JobId, usize)> = state
            .finished_by_job
            .iter()
            .filter(|(_, ids)| ids.len() > max_per_job as usize)
            .map(|(job, ids)| (*job, ids.len() - max_per_job as usize))
            .collect();
        for (job, excess) in over {
            let oldest: Vec<InstanceId> = state.finished_by_job[&job]
                .iter()
                .take(excess.min(PRUNE_BATCH.saturating_sub(removed)))
                .copied()
                .collect();
            for id in oldest {
                state.remove_instance(id);
                removed += 1;
            }
        }
    }
    let stale: Vec<JobId> = state
        .skips
        .iter()
        .filter(|(_, l)| l.first().is_some_and(|s| s.recorded_at_ms < horizon))
        .map(|(j, _)| *j)
        .collect();
    for job in stale {
        let list = state.skips.get_mut(&job).expect("listed above");
        list.retain(|s| s.recorded_at_ms >= horizon);
        if list.is_empty() {
            state.skips.remove(&job);
        }
        state.touch(Key::Skips(job));
    }
    removed
}
