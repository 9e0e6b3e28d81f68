//! Unit tests of the pure state machine: no RocksDB, no network, no clock.

use serde_json::json;

use super::*;

/// Applies at term 1 (most tests do not care about the term).
fn apply(state: &mut State, p: &Proposal, index: u64) -> Response {
    super::apply(state, p, 1, index)
}

fn spec(app: &str, name: &str) -> JobSpec {
    serde_json::from_value(json!({
        "app": app,
        "name": name,
        "schedule": {"type": "api"},
        "processor": {"type": "shell", "command": "true"},
    }))
    .unwrap()
}

fn prop(now_ms: Millis, cmd: Command) -> Proposal {
    Proposal {
        v: COMMAND_VERSION,
        now_ms,
        request: None,
        cmd,
    }
}

fn with_req(mut p: Proposal, id: &str, hash: &str) -> Proposal {
    p.request = Some(RequestMeta {
        id: id.into(),
        body_hash: hash.into(),
        token_id: None,
    });
    p
}

fn create_app(state: &mut State, name: &str) -> App {
    let cmd = Command::CreateApp {
        name: name.into(),
        worker_token_hash: "h".into(),
    };
    match apply(state, &prop(1, cmd), 1).outcome {
        Outcome::App { app } => app,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn creates_app_and_job_with_sequential_ids() {
    let mut s = State::default();
    let app = create_app(&mut s, "billing");
    assert_eq!(app.id, 1);
    let out = apply(
        &mut s,
        &prop(
            5,
            Command::CreateJob {
                spec: spec("billing", "nightly"),
            },
        ),
        2,
    )
    .outcome;
    let Outcome::Job { job } = out else {
        panic!("{out:?}")
    };
    assert_eq!(job.id, 2);
    assert_eq!(job.app_id, 1);
    assert_eq!(job.created_at_ms, 5);
    assert_eq!(job.version, 1);
    assert!(s.jobs.contains_key(&2));
}

#[test]
fn job_for_unknown_app_is_rejected_and_changes_nothing_but_the_clock() {
    let mut s = State::default();
    let before = s.jobs.clone();
    let out = apply(
        &mut s,
        &prop(
            5,
            Command::CreateJob {
                spec: spec("nope", "x"),
            },
        ),
        1,
    )
    .outcome;
    assert!(
        matches!(
            out,
            Outcome::Rejected {
                error: StateError::NotFound { .. }
            }
        ),
        "{out:?}"
    );
    assert_eq!(s.jobs, before);
    assert_eq!(s.meta.next_id, 0);
}

#[test]
fn duplicate_names_are_rejected() {
    let mut s = State::default();
    create_app(&mut s, "a");
    let again = apply(
        &mut s,
        &prop(
            2,
            Command::CreateApp {
                name: "a".into(),
                worker_token_hash: "x".into(),
            },
        ),
        2,
    );
    assert!(matches!(
        again.outcome,
        Outcome::Rejected {
            error: StateError::AlreadyExists { .. }
        }
    ));
    apply(
        &mut s,
        &prop(
            3,
            Command::CreateJob {
                spec: spec("a", "j"),
            },
        ),
        3,
    );
    let dup = apply(
        &mut s,
        &prop(
            4,
            Command::CreateJob {
                spec: spec("a", "j"),
            },
        ),
        4,
    );
    assert!(matches!(
        dup.outcome,
        Outcome::Rejected {
            error: StateError::AlreadyExists { .. }
        }
    ));
    assert_eq!(s.jobs.len(), 1);
}

/// The name index follows renames and deletes: a freed name can be taken again, a
/// taken one cannot, and a reload rebuilds the same index.
#[test]
fn job_names_follow_renames_and_deletes() {
    let mut s = State::default();
    create_app(&mut s, "a");
    let create = |s: &mut State, name: &str, at: u64| {
        apply(
            s,
            &prop(
                at as Millis,
                Command::CreateJob {
                    spec: spec("a", name),
                },
            ),
            at,
        )
        .outcome
    };
    let rejected = |o: &Outcome| {
        matches!(
            o,
            Outcome::Rejected {
                error: StateError::AlreadyExists { .. }
            }
        )
    };
    assert!(!rejected(&create(&mut s, "x", 3)));
    let id = *s.jobs.keys().next().unwrap();
    let app = s.jobs[&id].app_id;
    // Rename x -> y: x is free again, y is taken.
    let r = apply(
        &mut s,
        &prop(
            4,
            Command::UpdateJob {
                id,
                spec: spec("a", "y"),
            },
        ),
        4,
    );
    assert!(!rejected(&r.outcome), "{:?}", r.outcome);
    assert_eq!(s.job_named(app, "x"), None);
    assert_eq!(s.job_named(app, "y"), Some(id));
    assert!(rejected(&create(&mut s, "y", 5)));
    assert!(!rejected(&create(&mut s, "x", 6)));
    // Renaming onto a taken name is refused and changes nothing.
    let r = apply(
        &mut s,
        &prop(
            7,
            Command::UpdateJob {
                id,
                spec: spec("a", "x"),
            },
        ),
        7,
    );
    assert!(rejected(&r.outcome));
    assert_eq!(s.job_named(app, "y"), Some(id));
    // Delete frees the name.
    apply(&mut s, &prop(8, Command::DeleteJob { id }), 8);
    assert_eq!(s.job_named(app, "y"), None);
    assert!(!rejected(&create(&mut s, "y", 9)));
    let mut reloaded = s.clone();
    reloaded.rebuild_indexes();
    assert_eq!(reloaded, s);
}

#[test]
fn replicated_clock_never_runs_backwards() {
    let mut s = State::default();
    apply(&mut s, &prop(100, Command::Tick), 1);
    apply(&mut s, &prop(40, Command::Tick), 2);
    assert_eq!(s.meta.now_ms, 100);
    let app = create_app(&mut s, "a");
    assert_eq!(
        app.created_at_ms, 100,
        "an older proposer clock does not move time back"
    );
}

#[test]
fn request_id_has_one_effect_and_replays_the_recorded_response() {
    let mut s = State::default();
    let p = with_req(
        prop(
            1,
            Command::CreateApp {
                name: "a".into(),
                worker_token_hash: "h".into(),
            },
        ),
        "admin/k1",
        "H",
    );
    let first = apply(&mut s, &p, 1);
    let second = apply(&mut s, &p, 2);
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.outcome, second.outcome);
    assert_eq!(s.apps.len(), 1);
    assert_eq!(s.meta.next_id, 1);
}

#[test]
fn same_request_id_with_another_body_is_a_conflict() {
    let mut s = State::default();
    let p = with_req(
        prop(
            1,
            Command::CreateApp {
                name: "a".into(),
                worker_token_hash: "h".into(),
            },
        ),
        "admin/k1",
        "H1",
    );
    apply(&mut s, &p, 1);
    let other = with_req(
        prop(
            2,
            Command::CreateApp {
                name: "b".into(),
                worker_token_hash: "h".into(),
            },
        ),
        "admin/k1",
        "H2",
    );
    let out = apply(&mut s, &other, 2);
    assert_eq!(
        out.outcome,
        Outcome::rejected(StateError::IdempotencyConflict)
    );
    assert_eq!(s.apps.len(), 1);
}

#[test]
fn rejected_requests_are_recorded_too() {
    let mut s = State::default();
    let p = with_req(prop(1, Command::DeleteJob { id: 9 }), "admin/k", "H");
    let first = apply(&mut s, &p, 1);
    assert!(matches!(first.outcome, Outcome::Rejected { .. }));
    assert!(apply(&mut s, &p, 2).replayed);
}

#[test]
fn request_ids_expire_after_the_retention_window() {
    let mut s = State::default();
    let p = with_req(
        prop(
            1_000,
            Command::CreateApp {
                name: "a".into(),
                worker_token_hash: "h".into(),
            },
        ),
        "k",
        "H",
    );
    apply(&mut s, &p, 1);
    apply(
        &mut s,
        &prop(1_000 + REQUEST_RETENTION_MS - 1, Command::Tick),
        2,
    );
    assert!(s.requests.contains_key("k"), "kept within the window");
    apply(
        &mut s,
        &prop(1_001 + REQUEST_RETENTION_MS, Command::Tick),
        3,
    );
    assert!(!s.requests.contains_key("k"), "dropped after the window");
}

#[test]
fn update_enable_disable_delete() {
    let mut s = State::default();
    create_app(&mut s, "a");
    apply(
        &mut s,
        &prop(
            2,
            Command::CreateJob {
                spec: spec("a", "j"),
            },
        ),
        2,
    );
    let mut changed = spec("a", "j2");
    changed.description = "new".into();
    let out = apply(
        &mut s,
        &prop(
            3,
            Command::UpdateJob {
                id: 2,
                spec: changed,
            },
        ),
        3,
    )
    .outcome;
    let Outcome::Job { job } = out else { panic!() };
    assert_eq!(
        (job.spec.name.as_str(), job.version, job.updated_at_ms),
        ("j2", 2, 3)
    );
    let out = apply(
        &mut s,
        &prop(
            4,
            Command::SetJobEnabled {
                id: 2,
                enabled: false,
            },
        ),
        4,
    )
    .outcome;
    let Outcome::Job { job } = out else { panic!() };
    assert!(!job.spec.enabled);
    assert_eq!(
        apply(&mut s, &prop(5, Command::DeleteJob { id: 2 }), 5).outcome,
        Outcome::Deleted { id: 2 }
    );
    assert!(s.jobs.is_empty());
    let missing = apply(
        &mut s,
        &prop(
            6,
            Command::SetJobEnabled {
                id: 2,
                enabled: true,
            },
        ),
        6,
    )
    .outcome;
    assert!(matches!(
        missing,
        Outcome::Rejected {
            error: StateError::NotFound { .. }
        }
    ));
}

#[test]
fn bootstrap_sets_the_cluster_id_once() {
    let mut s = State::default();
    apply(
        &mut s,
        &prop(
            1,
            Command::Bootstrap {
                cluster_id: "first".into(),
            },
        ),
        1,
    );
    apply(
        &mut s,
        &prop(
            2,
            Command::Bootstrap {
                cluster_id: "second".into(),
            },
        ),
        2,
    );
    assert_eq!(s.meta.cluster_id.as_deref(), Some("first"));
}

#[test]
fn touched_records_round_trip_through_storage_form() {
    let mut s = State::default();
    create_app(&mut s, "a");
    apply(
        &mut s,
        &with_req(
            prop(
                2,
                Command::CreateJob {
                    spec: spec("a", "j"),
                },
            ),
            "r",
            "h",
        ),
        2,
    );
    let touched = s.take_touched();
    assert!(
        touched.contains(&Key::App(1))
            && touched.contains(&Key::Job(2))
            && touched.contains(&Key::Meta)
    );
    let mut loaded = State::default();
    for key in s.all_keys() {
        let bytes = s.record(&key).unwrap();
        loaded.load_record(key, &bytes).unwrap();
    }
    loaded.rebuild_indexes();
    assert_eq!(loaded, s);
}

#[test]
fn same_log_gives_same_state_on_every_replica() {
    let log: Vec<Proposal> = vec![
        prop(
            1,
            Command::CreateApp {
                name: "a".into(),
                worker_token_hash: "h".into(),
            },
        ),
        with_req(
            prop(
                2,
                Command::CreateJob {
                    spec: spec("a", "j1"),
                },
            ),
            "x",
            "1",
        ),
        with_req(
            prop(
                2,
                Command::CreateJob {
                    spec: spec("a", "j1"),
                },
            ),
            "x",
            "1",
        ),
        prop(
            3,
            Command::SetJobEnabled {
                id: 2,
                enabled: false,
            },
        ),
        prop(
            1,
            Command::CreateJob {
                spec: spec("a", "j2"),
            },
        ),
    ];
    let run = || {
        let mut s = State::default();
        let responses: Vec<_> = log
            .iter()
            .enumerate()
            .map(|(i, p)| apply(&mut s, p, i as u64 + 1))
            .collect();
        (s, responses)
    };
    assert_eq!(run(), run());
}

#[test]
fn unknown_commands_deserialise_as_unknown() {
    let p: Proposal = serde_json::from_value(
        json!({"v": 2, "now_ms": 1, "cmd": {"type": "from_the_future", "x": 1}}),
    )
    .unwrap();
    assert_eq!(p.cmd, Command::Unknown);
}

#[test]
fn undecodable_commands_deserialise_as_unknown() {
    // A known command with a field this build does not know (a newer version's).
    let p: Proposal = serde_json::from_value(json!({"v": 2, "now_ms": 1,
        "cmd": {"type": "create_job", "spec": {"app": "a", "name": "n", "schedule": {"type": "api"},
        "processor": {"type": "shell", "command": "x"}, "new_field": 1}}}))
    .unwrap();
    assert_eq!(p.cmd, Command::Unknown);
}

#[test]
fn a_batch_applies_each_proposal_as_its_own_write() {
    let mut s = State::default();
    let app = |name: &str| Command::CreateApp {
        name: name.into(),
        worker_token_hash: "h".into(),
    };
    let first = with_req(prop(5, app("a")), "k/1", "h1");
    let batch = Command::Batch {
        proposals: vec![
            first.clone(),
            prop(5, app("b")),
            // The same request id again inside the batch: replayed, not re-applied.
            first,
            prop(5, app("a")),
        ],
    };
    let Outcome::Batch { responses } = apply(&mut s, &prop(5, batch), 1).outcome else {
        panic!("a batch answers with one response per proposal");
    };
    assert_eq!(responses.len(), 4);
    assert!(matches!(responses[0].outcome, Outcome::App { .. }));
    assert!(matches!(responses[1].outcome, Outcome::App { .. }));
    assert!(responses[2].replayed);
    assert!(matches!(
        responses[3].outcome,
        Outcome::Rejected {
            error: StateError::AlreadyExists { .. }
        }
    ));
    assert_eq!(s.apps.len(), 2);
    // A nested batch is refused, and an unknown part makes the whole entry unsupported.
    let nested = Command::Batch {
        proposals: vec![prop(6, Command::Batch { proposals: vec![] })],
    };
    let Outcome::Batch { responses } = apply(&mut s, &prop(6, nested), 2).outcome else {
        panic!()
    };
    assert!(matches!(responses[0].outcome, Outcome::Rejected { .. }));
    let unknown = prop(
        7,
        Command::Batch {
            proposals: vec![prop(7, Command::Unknown)],
        },
    );
    assert!(!unknown.supported());
}

// --- Dispatch refusals and worker deregistration ---

/// An app `a`, a job `j` (id 2) with `retries` and the given mode, and the workers
/// `a/<name>` registered. Returns the job id.
fn job_with_workers(s: &mut State, retries: u32, broadcast: bool, workers: &[&str]) -> JobId {
    create_app(s, "a");
    let mut spec = spec("a", "j");
    spec.retries = retries;
    if broadcast {
        spec.execution_mode = ExecutionMode::Broadcast;
    }
    let Outcome::Job { job } = apply(s, &prop(2, Command::CreateJob { spec }), 2).outcome else {
        panic!("job created")
    };
    for (i, name) in workers.iter().enumerate() {
        let worker = WorkerReg {
            id: format!("a/{name}"),
            app_id: job.app_id,
            name: name.to_string(),
            protocol: "ws".into(),
            address: None,
            tag: None,
            version: "0.1.0".into(),
            max_concurrency: 1,
            registered_at_ms: 0,
        };
        apply(
            s,
            &prop(3, Command::RegisterWorker { worker }),
            3 + i as u64,
        );
    }
    job.id
}

fn run_now(s: &mut State, job_id: JobId, index: u64) -> InstanceId {
    let cmd = Command::RunJob {
        job_id,
        params: serde_json::Value::Null,
        delay_ms: 0,
    };
    match apply(s, &prop(10, cmd), index).outcome {
        Outcome::InstanceCreated { id } => id,
        other => panic!("{other:?}"),
    }
}

fn dispatch_to(s: &mut State, id: InstanceId, workers: &[&str], index: u64) -> Outcome {
    let cmd = Command::Dispatch {
        instance_id: id,
        workers: workers.iter().map(|w| format!("a/{w}")).collect(),
    };
    apply(s, &prop(20, cmd), index).outcome
}

fn refuse(s: &mut State, id: InstanceId, attempt: u32, index: u64) -> bool {
    let cmd = Command::DispatchRefused {
        instance_id: id,
        attempt,
        reason: "at the concurrency limit (1)".into(),
    };
    apply(s, &prop(30, cmd), index).outcome == Outcome::ReportAccepted { accepted: true }
}

fn lose(s: &mut State, id: InstanceId, attempt: u32, index: u64) -> bool {
    let cmd = Command::AttemptLost {
        instance_id: id,
        attempt,
        reason: "no lease renewal for 7.0s".into(),
    };
    apply(s, &prop(30, cmd), index).outcome == Outcome::ReportAccepted { accepted: true }
}

fn report(s: &mut State, id: InstanceId, attempt: u32, event: AttemptEvent, index: u64) -> bool {
    let token = s.instances[&id].attempts[attempt as usize - 1].fencing_token;
    let cmd = Command::Report {
        instance_id: id,
        attempt,
        token,
        event,
    };
    apply(s, &prop(40, cmd), index).outcome == Outcome::ReportAccepted { accepted: true }
}

fn finished(success: bool) -> AttemptEvent {
    AttemptEvent::Finished {
        success,
        result: if success { "ok" } else { "exit code 1" }.into(),
        stopped: false,
    }
}

#[test]
fn a_refused_dispatch_goes_back_to_waiting_without_using_up_a_retry() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 0, false, &["w"]);
    let id = run_now(&mut s, job, 10);
    assert!(matches!(
        dispatch_to(&mut s, id, &["w"], 11),
        Outcome::Dispatched { .. }
    ));
    assert!(refuse(&mut s, id, 1, 12));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::WaitingDispatch, "{inst:?}");
    assert!(s.active.contains(&id));
    let a = &inst.attempts[0];
    assert_eq!(a.status, InstanceStatus::Failed);
    assert!(a.dispatch_refused);
    assert_eq!(a.finished_at_ms, Some(30));
    assert_eq!(
        a.result.as_deref(),
        Some("dispatch refused by worker a/w: at the concurrency limit (1)")
    );
    assert!(
        !refuse(&mut s, id, 1, 13),
        "a refusal settles an attempt once"
    );

    // With `retries: 0`, the next (delivered) attempt is the only try, and it succeeds.
    assert!(matches!(
        dispatch_to(&mut s, id, &["w"], 14),
        Outcome::Dispatched { .. }
    ));
    assert!(report(&mut s, id, 2, AttemptEvent::Running, 15));
    assert!(report(&mut s, id, 2, finished(true), 16));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Succeeded);
    assert_eq!(inst.result.as_deref(), Some("ok"));
    assert_eq!(inst.attempts.len(), 2);
    // The refused attempt stays in the list with its reason, and serialises its mark.
    let json = serde_json::to_value(inst).unwrap();
    assert_eq!(json["attempts"][0]["dispatch_refused"], true);
    assert!(json["attempts"][1].get("dispatch_refused").is_none());
}

#[test]
fn refusals_are_not_tries_but_failures_and_lost_leases_are() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 1, false, &["w"]);
    let id = run_now(&mut s, job, 10);
    let mut index = 11;
    let mut next = || {
        index += 1;
        index
    };
    // refused, failed (try 1), refused, refused, lost (try 2): failed with the lost result.
    dispatch_to(&mut s, id, &["w"], next());
    assert!(refuse(&mut s, id, 1, next()));
    dispatch_to(&mut s, id, &["w"], next());
    assert!(report(&mut s, id, 2, finished(false), next()));
    assert_eq!(s.instances[&id].status, InstanceStatus::WaitingDispatch);
    dispatch_to(&mut s, id, &["w"], next());
    assert!(refuse(&mut s, id, 3, next()));
    dispatch_to(&mut s, id, &["w"], next());
    assert!(refuse(&mut s, id, 4, next()));
    assert_eq!(s.instances[&id].status, InstanceStatus::WaitingDispatch);
    dispatch_to(&mut s, id, &["w"], next());
    assert!(lose(&mut s, id, 5, next()));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Failed, "{inst:?}");
    assert_eq!(
        inst.result.as_deref(),
        Some("worker a/w lost: no lease renewal for 7.0s")
    );
    let refused: Vec<bool> = inst.attempts.iter().map(|a| a.dispatch_refused).collect();
    assert_eq!(refused, vec![true, false, true, true, false]);
}

#[test]
fn a_lost_lease_still_uses_up_a_retry() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 0, false, &["w"]);
    let id = run_now(&mut s, job, 10);
    dispatch_to(&mut s, id, &["w"], 11);
    assert!(report(&mut s, id, 1, AttemptEvent::Running, 12));
    assert!(lose(&mut s, id, 1, 13));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Failed);
    assert!(!inst.attempts[0].dispatch_refused);
}

#[test]
fn a_refusal_of_an_attempt_that_ran_is_ignored() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 0, false, &["w"]);
    let id = run_now(&mut s, job, 10);
    dispatch_to(&mut s, id, &["w"], 11);
    assert!(report(&mut s, id, 1, AttemptEvent::Running, 12));
    assert!(
        !refuse(&mut s, id, 1, 13),
        "it reported running: it was delivered"
    );
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Running);
    assert_eq!(inst.attempts[0].status, InstanceStatus::Running);
    assert!(!refuse(&mut s, id, 9, 14), "an unknown attempt");
    assert!(!refuse(&mut s, 999, 1, 15), "an unknown instance");
}

#[test]
fn a_refused_dispatch_of_a_stopping_instance_stops_it() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 3, false, &["w"]);
    let id = run_now(&mut s, job, 10);
    dispatch_to(&mut s, id, &["w"], 11);
    apply(&mut s, &prop(25, Command::StopInstance { id }), 12);
    assert_eq!(s.instances[&id].status, InstanceStatus::Stopping);
    assert!(refuse(&mut s, id, 1, 13));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Stopped);
    assert_eq!(inst.result.as_deref(), Some("stopped"));
    assert!(!s.active.contains(&id));
}

#[test]
fn a_broadcast_is_judged_by_the_workers_that_took_it() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 0, true, &["one", "two"]);

    // One refuses, the other succeeds: succeeded, and the summary names the refusal.
    let id = run_now(&mut s, job, 10);
    dispatch_to(&mut s, id, &["one", "two"], 11);
    assert!(refuse(&mut s, id, 2, 12));
    assert_eq!(
        s.instances[&id].status,
        InstanceStatus::Dispatched,
        "the round is still open"
    );
    assert!(report(&mut s, id, 1, finished(true), 13));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Succeeded, "{inst:?}");
    let result = inst.result.as_deref().unwrap();
    assert!(
        result.contains("a/one: succeeded: ok")
            && result.contains("a/two: refused: dispatch refused by worker a/two"),
        "{result}"
    );

    // One refuses, the other fails: failed.
    let id = run_now(&mut s, job, 20);
    dispatch_to(&mut s, id, &["one", "two"], 21);
    assert!(report(&mut s, id, 1, finished(false), 22));
    assert!(refuse(&mut s, id, 2, 23));
    assert_eq!(s.instances[&id].status, InstanceStatus::Failed);

    // Every worker refuses: nothing ran, so the instance waits for a new round, which
    // alone decides.
    let id = run_now(&mut s, job, 30);
    dispatch_to(&mut s, id, &["one", "two"], 31);
    assert!(refuse(&mut s, id, 1, 32));
    assert!(refuse(&mut s, id, 2, 33));
    assert_eq!(s.instances[&id].status, InstanceStatus::WaitingDispatch);
    dispatch_to(&mut s, id, &["one", "two"], 34);
    assert!(report(&mut s, id, 3, finished(true), 35));
    assert!(report(&mut s, id, 4, finished(true), 36));
    let inst = &s.instances[&id];
    assert_eq!(inst.status, InstanceStatus::Succeeded, "{inst:?}");
    assert_eq!(
        inst.result.as_deref(),
        Some("a/one: succeeded: ok\na/two: succeeded: ok"),
        "only the last round is summarised"
    );
}

#[test]
fn a_worker_is_deregistered_only_without_open_attempts() {
    let mut s = State::default();
    let job = job_with_workers(&mut s, 0, false, &["w", "idle"]);
    let id = run_now(&mut s, job, 10);
    dispatch_to(&mut s, id, &["w"], 11);
    assert_eq!(open_attempts_of_worker(&s, "a/w"), vec![(id, 1)]);

    let dereg = |name: &str| Command::DeregisterWorker {
        id: format!("a/{name}"),
    };
    let out = apply(&mut s, &prop(50, dereg("w")), 12).outcome;
    let Outcome::Rejected {
        error: StateError::Conflict { message },
    } = out
    else {
        panic!("{out:?}")
    };
    assert!(
        message.contains(&format!("instance {id} attempt 1")),
        "{message}"
    );
    assert!(s.workers.contains_key("a/w"));

    // An idle worker goes at once; its record is deleted from storage too.
    s.take_touched();
    let out = apply(&mut s, &prop(51, dereg("idle")), 13).outcome;
    assert!(
        matches!(out, Outcome::Worker { ref worker } if worker.id == "a/idle"),
        "{out:?}"
    );
    assert!(!s.workers.contains_key("a/idle"));
    let touched = s.take_touched();
    assert!(touched.contains(&Key::Worker("a/idle".into())));
    assert_eq!(s.record(&Key::Worker("a/idle".into())), None);
    // Nothing more is dispatched to it.
    let other = run_now(&mut s, job, 14);
    assert!(matches!(
        dispatch_to(&mut s, other, &["idle"], 15),
        Outcome::Rejected {
            error: StateError::Invalid { .. }
        }
    ));
    assert_eq!(s.instances[&other].status, InstanceStatus::WaitingDispatch);
    // Again: not found.
    assert!(matches!(
        apply(&mut s, &prop(52, dereg("idle")), 16).outcome,
        Outcome::Rejected {
            error: StateError::NotFound { .. }
        }
    ));

    // Once its attempt ended, the busy worker can go too.
    assert!(report(&mut s, id, 1, finished(true), 17));
    assert!(open_attempts_of_worker(&s, "a/w").is_empty());
    assert!(matches!(
        apply(&mut s, &prop(53, dereg("w")), 18).outcome,
        Outcome::Worker { .. }
    ));
    assert!(s.workers.is_empty());
    // The finished instance still names the worker it ran on.
    assert_eq!(s.instances[&id].attempts[0].worker, "a/w");
}

#[test]
fn instances_of_a_job_come_from_the_indexes_newest_first() {
    let mut s = State::default();
    create_app(&mut s, "a");
    let job = |s: &mut State, name: &str, i: u64| match apply(
        s,
        &prop(
            2,
            Command::CreateJob {
                spec: spec("a", name),
            },
        ),
        i,
    )
    .outcome
    {
        Outcome::Job { job } => job.id,
        other => panic!("{other:?}"),
    };
    let (j1, j2) = (job(&mut s, "one", 2), job(&mut s, "two", 3));
    let run = |s: &mut State, j: u64, i: u64| match apply(
        s,
        &prop(
            3,
            Command::RunJob {
                job_id: j,
                params: json!(null),
                delay_ms: 0,
            },
        ),
        i,
    )
    .outcome
    {
        Outcome::InstanceCreated { id } => id,
        other => panic!("{other:?}"),
    };
    let a = run(&mut s, j1, 4);
    let b = run(&mut s, j2, 5);
    let c = run(&mut s, j1, 6);
    apply(&mut s, &prop(4, Command::CancelInstance { id: a }), 7);
    assert_eq!(
        s.instances_of_job(j1),
        vec![c, a],
        "active and finished, newest first"
    );
    assert_eq!(s.instances_of_job(j2), vec![b]);
    s.rebuild_indexes();
    assert_eq!(s.instances_of_job(j1), vec![c, a]);
}

// ---- Scoped API tokens, the audit trail and worker-token rotation ----

fn as_token(p: Proposal, id: &str, token_id: Option<TokenId>) -> Proposal {
    let mut p = with_req(p, id, id);
    p.request.as_mut().unwrap().token_id = token_id;
    p
}

fn create_token(s: &mut State, app: &str, role: Role, expires: Option<Millis>, i: u64) -> ApiToken {
    let cmd = Command::CreateToken {
        name: format!("t{i}"),
        app: app.into(),
        role,
        token_hash: format!("hash{i}"),
        expires_at_ms: expires,
    };
    match apply(s, &with_req(prop(10, cmd), &format!("tok{i}"), "b"), i).outcome {
        Outcome::Token { token } => token,
        other => panic!("unexpected {other:?}"),
    }
}

/// Two apps `a` and `b`, a job in each (ids 3 and 4), one instance of each (5, 6).
fn two_apps() -> State {
    let mut s = State::default();
    create_app(&mut s, "a");
    create_app(&mut s, "b");
    for (i, app) in ["a", "b"].iter().enumerate() {
        let cmd = Command::CreateJob {
            spec: spec(app, "j"),
        };
        apply(&mut s, &prop(2, cmd), 2 + i as u64);
    }
    for (i, job) in [3, 4].iter().enumerate() {
        let cmd = Command::RunJob {
            job_id: *job,
            params: json!({}),
            delay_ms: 0,
        };
        apply(&mut s, &prop(3, cmd), 4 + i as u64);
    }
    assert!(s.instances.contains_key(&5) && s.instances.contains_key(&6));
    s
}

fn rejected(r: &Response) -> Option<&StateError> {
    match &r.outcome {
        Outcome::Rejected { error } => Some(error),
        _ => None,
    }
}

#[test]
fn tokens_are_created_found_by_hash_and_revoked() {
    let mut s = two_apps();
    let t = create_token(&mut s, "a", Role::Read, Some(1000), 10);
    assert_eq!(t.app_id, 1);
    assert_eq!(t.created_at_ms, 10);
    assert_eq!(s.token_by_hash("hash10").map(|t| t.id), Some(t.id));
    assert!(t.valid_at(999) && !t.valid_at(1000), "expiry is exclusive");
    let missing = Command::CreateToken {
        name: "x".into(),
        app: "nope".into(),
        role: Role::Read,
        token_hash: "h2".into(),
        expires_at_ms: None,
    };
    assert!(matches!(
        rejected(&apply(&mut s, &prop(11, missing), 11)),
        Some(StateError::NotFound { .. })
    ));
    let revoke = |id| prop(20, Command::RevokeToken { id });
    let Outcome::Token { token } = apply(&mut s, &revoke(t.id), 12).outcome else {
        panic!()
    };
    assert_eq!(token.revoked_at_ms, Some(20));
    assert!(!token.valid_at(0));
    // Revoking again keeps the first revocation time.
    apply(&mut s, &prop(30, Command::RevokeToken { id: t.id }), 13);
    assert_eq!(s.tokens[&t.id].revoked_at_ms, Some(20));
    assert!(rejected(&apply(&mut s, &revoke(999), 14)).is_some());
}

#[test]
fn scoped_writes_stay_in_their_app_and_role() {
    let mut s = two_apps();
    let read = create_token(&mut s, "a", Role::Read, None, 10).id;
    let operate = create_token(&mut s, "a", Role::Operate, None, 11).id;
    let manage = create_token(&mut s, "a", Role::Manage, None, 12).id;
    let run = |job_id| Command::RunJob {
        job_id,
        params: json!({}),
        delay_ms: 0,
    };
    let mut i = 20;
    let mut go = |s: &mut State, cmd: Command, token: TokenId| {
        i += 1;
        apply(
            s,
            &as_token(prop(40, cmd), &format!("r{i}"), Some(token)),
            i,
        )
    };
    // Role: read cannot run; operate can, in its own app.
    assert!(matches!(
        rejected(&go(&mut s, run(3), read)),
        Some(StateError::Forbidden { .. })
    ));
    assert!(rejected(&go(&mut s, run(3), operate)).is_none());
    // Another app's job or instance is "not found", whatever the role.
    assert!(matches!(
        rejected(&go(&mut s, run(4), manage)),
        Some(StateError::NotFound { .. })
    ));
    assert!(matches!(
        rejected(&go(&mut s, Command::StopInstance { id: 6 }, manage)),
        Some(StateError::NotFound { .. })
    ));
    // Operate cannot create; manage cannot create in or move a job to another app.
    let create = |app: &str, name: &str| Command::CreateJob {
        spec: spec(app, name),
    };
    assert!(matches!(
        rejected(&go(&mut s, create("a", "new"), operate)),
        Some(StateError::Forbidden { .. })
    ));
    assert!(matches!(
        rejected(&go(&mut s, create("b", "new"), manage)),
        Some(StateError::Forbidden { .. })
    ));
    assert!(rejected(&go(&mut s, create("a", "new"), manage)).is_none());
    let moved = Command::UpdateJob {
        id: 3,
        spec: spec("b", "moved"),
    };
    assert!(rejected(&go(&mut s, moved, manage)).is_some());
    assert_eq!(s.jobs[&3].app_id, 1);
    // Nothing admin-only, ever.
    let app = Command::CreateApp {
        name: "c".into(),
        worker_token_hash: "x".into(),
    };
    assert!(matches!(
        rejected(&go(&mut s, app, manage)),
        Some(StateError::Forbidden { .. })
    ));
    // A revoked token's later writes are refused, even if a node let them through.
    apply(&mut s, &prop(41, Command::RevokeToken { id: operate }), 90);
    assert!(matches!(
        rejected(&go(&mut s, run(3), operate)),
        Some(StateError::Forbidden { .. })
    ));
}

#[test]
fn expired_tokens_are_refused_by_the_replicated_clock() {
    let mut s = two_apps();
    let t = create_token(&mut s, "a", Role::Operate, Some(100), 10).id;
    let run = Command::RunJob {
        job_id: 3,
        params: json!({}),
        delay_ms: 0,
    };
    let ok = apply(&mut s, &as_token(prop(99, run.clone()), "r1", Some(t)), 11);
    assert!(rejected(&ok).is_none());
    let late = apply(&mut s, &as_token(prop(100, run), "r2", Some(t)), 12);
    assert!(matches!(
        rejected(&late),
        Some(StateError::Forbidden { .. })
    ));
}

#[test]
fn audit_records_who_did_what_and_when() {
    let mut s = two_apps();
    assert!(
        s.audit.is_empty(),
        "writes without a request id are not audited"
    );
    let t = create_token(&mut s, "a", Role::Manage, None, 10).id;
    let cmds = [
        Command::CreateJob {
            spec: spec("a", "k"),
        },
        Command::SetJobEnabled {
            id: 3,
            enabled: false,
        },
        Command::RunJob {
            job_id: 3,
            params: json!({}),
            delay_ms: 0,
        },
        Command::StopInstance { id: 5 },
        Command::RetryInstance { id: 5 },
        Command::DeleteJob { id: 3 },
    ];
    for (i, cmd) in cmds.into_iter().enumerate() {
        let token = (i % 2 == 0).then_some(t);
        let r = apply(
            &mut s,
            &as_token(prop(50 + i as i64, cmd), &format!("a{i}"), token),
            20 + i as u64,
        );
        assert!(rejected(&r).is_none(), "{r:?}");
    }
    // A rejected write and a replayed one add nothing.
    let again = as_token(prop(60, Command::DeleteJob { id: 3 }), "a5", None);
    assert!(apply(&mut s, &again, 30).replayed);
    let gone = as_token(prop(60, Command::DeleteJob { id: 3 }), "a6", None);
    assert!(rejected(&apply(&mut s, &gone, 31)).is_some());

    let trail: Vec<(&str, &str, JobId)> = s
        .audit
        .values()
        .map(|r| (r.action.as_str(), r.actor.as_str(), r.job_id))
        .collect();
    let who = format!("token/{t}");
    assert_eq!(
        trail,
        vec![
            ("job.create", who.as_str(), 8),
            ("job.disable", "admin", 3),
            ("job.run", who.as_str(), 3),
            ("instance.stop", "admin", 3),
            ("instance.retry", who.as_str(), 3),
            ("job.delete", "admin", 3),
        ]
    );
    let recs: Vec<&AuditRecord> = s.audit.values().collect();
    assert_eq!(recs[0].at_ms, 50);
    assert_eq!(recs[0].token_id, Some(t));
    assert_eq!(
        recs[2].instance_id,
        Some(9),
        "a run names the instance it made"
    );
    assert_eq!(recs[4].instance_id, Some(5));
    assert_eq!(recs[4].created_instance_id, Some(10));
    assert!(recs.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn audit_keeps_only_the_newest_records() {
    let mut s = two_apps();
    for i in 0..(AUDIT_CAP + 5) {
        let cmd = Command::SetJobEnabled {
            id: 3,
            enabled: i % 2 == 0,
        };
        apply(
            &mut s,
            &as_token(prop(10, cmd), &format!("e{i}"), None),
            10 + i as u64,
        );
    }
    assert_eq!(s.audit.len(), AUDIT_CAP);
    assert_eq!(s.audit.keys().next(), Some(&6), "the 5 oldest went first");
    let touched = s.take_touched();
    assert!(
        touched.contains(&Key::Audit(1)),
        "dropped records are deleted"
    );
    assert!(s.record(&Key::Audit(1)).is_none());
}

#[test]
fn worker_tokens_rotate_with_two_valid_until_retired() {
    let mut s = State::default();
    create_app(&mut s, "a");
    let rotate = |h: &str| Command::RotateAppToken {
        app: "a".into(),
        worker_token_hash: h.into(),
    };
    apply(&mut s, &prop(2, rotate("new")), 2);
    assert_eq!(s.apps[&1].worker_token_hash, "new");
    assert_eq!(s.apps[&1].previous_worker_token_hash.as_deref(), Some("h"));
    // The same rotation again (a retried proposal) changes nothing.
    apply(&mut s, &prop(3, rotate("new")), 3);
    assert_eq!(s.apps[&1].previous_worker_token_hash.as_deref(), Some("h"));
    let retire = Command::RetireAppToken { app: "a".into() };
    apply(&mut s, &prop(4, retire), 4);
    assert_eq!(s.apps[&1].previous_worker_token_hash, None);
    assert_eq!(s.apps[&1].worker_token_hash, "new");
    let unknown = Command::RetireAppToken { app: "zz".into() };
    assert!(rejected(&apply(&mut s, &prop(5, unknown), 5)).is_some());
}

#[test]
fn tokens_and_audit_persist_and_replay_identically() {
    let build = || {
        let mut s = two_apps();
        let t = create_token(&mut s, "a", Role::Operate, Some(10_000), 10).id;
        let run = Command::RunJob {
            job_id: 3,
            params: json!({"x": 1}),
            delay_ms: 0,
        };
        apply(&mut s, &as_token(prop(20, run), "run", Some(t)), 11);
        apply(&mut s, &prop(21, Command::RevokeToken { id: t }), 12);
        let rotate = Command::RotateAppToken {
            app: "b".into(),
            worker_token_hash: "n".into(),
        };
        apply(&mut s, &prop(22, rotate), 13);
        s
    };
    let s = build();
    assert_eq!(s, build(), "a replayed log gives the same state");
    assert_eq!(s.audit.len(), 1);
    let mut loaded = State::default();
    for key in s.all_keys() {
        loaded
            .load_record(key.clone(), &s.record(&key).unwrap())
            .unwrap();
    }
    loaded.rebuild_indexes();
    let mut s = s;
    s.take_touched();
    assert_eq!(loaded, s);
    assert!(
        loaded.token_by_hash("hash10").is_some(),
        "the hash index is rebuilt"
    );
    // And through a snapshot (the whole state as JSON).
    let mut snap: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    snap.rebuild_indexes();
    assert_eq!(snap, s);
}
