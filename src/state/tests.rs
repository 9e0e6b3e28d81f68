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
