//! Unit tests of the checkers: one hand-written valid run that every checker
//! passes, then one change per kind of violation, each asserting that the right
//! checker says invalid (or unknown) and names the offending event.

use serde_json::{json, Value};

use super::*;
use crate::history::{
    Event, FinalState, JsonlWriter, NemesisEvent, NemesisPhase, Observation, Op, OpFn, OpKind,
    RunMeta, WorkerEvent,
};

/// The run's monotonic start (ns) and the wall clock then (ms, a whole second).
const S: u64 = 1_000_000_000_000;
const W: i64 = 1_700_000_000_000;

/// `secs` after the start, on the monotonic clock.
fn at(secs: f64) -> u64 {
    S + (secs * 1e9) as u64
}

/// `secs` after the start, on the cluster's wall clock.
fn wall(secs: f64) -> i64 {
    W + (secs * 1000.0) as i64
}

fn op(process: u64, kind: OpKind, f: OpFn, value: Value, t: u64, req: Option<&str>) -> Op {
    Op {
        process,
        kind,
        f,
        value,
        time_ns: t,
        node: Some(1 + process % 3),
        request_id: req.map(String::from),
        error: match kind {
            OpKind::Fail => Some("409 conflict".into()),
            OpKind::Info => Some("timeout".into()),
            _ => None,
        },
    }
}

fn worker(name: &str, kind: &str, instance: u64, attempt: u32, term: u64, t: u64) -> WorkerEvent {
    // Built from JSON so the test does not depend on where the type is defined.
    serde_json::from_value(json!({
        "worker": name, "kind": kind, "instance_id": instance, "attempt": attempt,
        "term": term, "index": 10 * term + instance, "time_ns": t
    }))
    .expect("worker event")
}

fn job(id: u64, name: &str, schedule: Value, enabled: bool, created: i64) -> Value {
    json!({"id": id, "app_id": 1, "name": name, "schedule": schedule, "enabled": enabled,
           "processor": {"type": "shell", "command": "sleep 0.2"},
           "execution_mode": "standalone", "created_at_ms": created,
           "updated_at_ms": created, "version": 1})
}

fn instance(
    id: u64,
    job: u64,
    trigger: &str,
    fire: Option<i64>,
    status: &str,
    created: i64,
    finished: Option<i64>,
) -> Value {
    let mut v = json!({"id": id, "job_id": job, "app_id": 1, "trigger": {"type": trigger},
                       "status": status, "created_at_ms": created,
                       "attempts": [{"number": 1, "worker": "app/w1",
                                     "fencing_token": {"term": 1, "index": 5},
                                     "status": status, "dispatched_at_ms": created}]});
    if let Some(t) = fire {
        v["fire_time_ms"] = json!(t);
    }
    if let Some(t) = finished {
        v["finished_at_ms"] = json!(t);
    }
    v
}

/// A hand-built recorded run.
struct H {
    events: Vec<Event>,
    workers: Vec<WorkerEvent>,
    meta: RunMeta,
    fin: FinalState,
    process: u64,
}

impl H {
    /// Records an invocation and its completion on a fresh process; returns both.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        f: OpFn,
        arg: Value,
        kind: OpKind,
        result: Value,
        t0: f64,
        t1: f64,
        req: Option<&str>,
    ) -> (Op, Op) {
        self.process += 1;
        let inv = op(self.process, OpKind::Invoke, f, arg, at(t0), req);
        let done = op(self.process, kind, f, result, at(t1), req);
        self.events.push(Event::Op(inv.clone()));
        self.events.push(Event::Op(done.clone()));
        (inv, done)
    }

    fn run(&self) -> Run {
        let mut events = self.events.clone();
        events.sort_by_key(|e| match e {
            Event::Op(o) => o.time_ns,
            Event::Nemesis(n) => n.time_ns,
            Event::Observe(o) => o.time_ns,
        });
        Run {
            meta: self.meta.clone(),
            events,
            workers: Some(self.workers.clone()),
            final_state: Some(self.fin.clone()),
        }
    }

    fn report(&self) -> Report {
        check_run(&self.run())
    }

    fn final_instance(&mut self, id: u64) -> &mut Value {
        self.fin
            .instances
            .iter_mut()
            .find(|i| i["id"] == json!(id))
            .expect("instance")
    }
}

/// A run in which every guarantee held: a 1-second cron (two instances, then
/// two fire times skipped as misfires), an API job that is run twice (one run
/// stopped) and then disabled, reads that agree, a leader kill, two workers.
fn valid() -> H {
    let cron = json!({"type": "cron", "expr": "* * * * * *"});
    let api = json!({"type": "api"});
    let mut h = H {
        events: vec![],
        workers: vec![],
        meta: RunMeta {
            scenario: "unit".into(),
            seed: 7,
            time_limit_s: 30,
            planned_faults: vec!["kill-leader".into()],
            started_ns: S,
            healed_ns: at(20.0),
            ended_ns: at(40.0),
            terminal_bound_ms: 10_000,
            extra: json!({"started_unix_ms": W}),
        },
        fin: FinalState {
            read_ns: at(35.0),
            ..FinalState::default()
        },
        process: 0,
    };
    h.call(
        OpFn::CreateJob,
        json!({"name": "cron-1", "schedule": cron}),
        OpKind::Ok,
        json!({"job_id": 1}),
        1.0,
        1.1,
        Some("r1"),
    );
    h.call(
        OpFn::CreateJob,
        json!({"name": "api-1", "schedule": api}),
        OpKind::Ok,
        json!({"job_id": 2}),
        1.2,
        1.3,
        Some("r2"),
    );
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 1}),
        OpKind::Ok,
        json!({"job": {"id": 1, "enabled": true}}),
        1.5,
        1.6,
        None,
    );
    h.call(
        OpFn::RunJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"instance_id": 20}),
        2.0,
        2.1,
        Some("r3"),
    );
    h.call(
        OpFn::ReadInstance,
        json!({"instance_id": 20}),
        OpKind::Ok,
        json!({"id": 20, "status": "running", "attempts": [{"status": "running"}]}),
        2.2,
        2.25,
        None,
    );
    h.call(
        OpFn::RunJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"instance_id": 21}),
        3.0,
        3.1,
        Some("r6"),
    );
    h.call(
        OpFn::ReadInstance,
        json!({"instance_id": 20}),
        OpKind::Ok,
        json!({"id": 20, "status": "succeeded", "attempts": [{"status": "succeeded"}]}),
        3.5,
        3.6,
        None,
    );
    h.call(
        OpFn::StopInstance,
        json!({"instance_id": 21}),
        OpKind::Ok,
        json!({"id": 21, "status": "stopping"}),
        4.0,
        4.1,
        Some("r7"),
    );
    h.call(
        OpFn::CancelJob,
        json!({"job_id": 2, "how": "disable"}),
        OpKind::Ok,
        json!({"id": 2, "enabled": false, "updated_at_ms": wall(6.05)}),
        6.0,
        6.1,
        Some("r4"),
    );
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"job": {"id": 2, "enabled": false}}),
        7.0,
        7.1,
        None,
    );
    h.call(
        OpFn::RunJob,
        json!({"job_id": 2}),
        OpKind::Fail,
        json!(null),
        7.5,
        7.6,
        Some("r5"),
    );
    // An outcome-unknown create whose job exists in the end: allowed.
    h.call(
        OpFn::CreateJob,
        json!({"name": "maybe", "schedule": api}),
        OpKind::Info,
        json!(null),
        8.0,
        9.0,
        Some("r9"),
    );
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 3}),
        OpKind::Ok,
        json!({"absent": true}),
        8.1,
        8.2,
        None,
    );
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 3}),
        OpKind::Ok,
        json!({"job": {"id": 3, "enabled": true}}),
        12.0,
        12.1,
        None,
    );

    for (phase, t) in [(NemesisPhase::Start, 5.0), (NemesisPhase::End, 8.0)] {
        h.events.push(Event::Nemesis(NemesisEvent {
            fault: "kill-leader".into(),
            phase,
            detail: json!({"node": 1}),
            time_ns: at(t),
        }));
    }
    for i in 0..40 {
        let t = 1.0 + f64::from(i) * 0.25;
        let leader = if t < 5.0 {
            Some(1)
        } else if t < 6.5 {
            None
        } else {
            Some(2)
        };
        for node in 1..=3u64 {
            let down = node == 1 && (5.0..8.0).contains(&t);
            h.events.push(Event::Observe(Observation {
                node,
                leader: if down { None } else { leader },
                term: Some(if t < 5.0 { 1 } else { 2 }),
                error: down.then(|| "connection refused".into()),
                time_ns: at(t),
            }));
        }
    }

    h.workers = vec![
        worker("w1", "dispatch_accepted", 10, 1, 1, at(2.01)),
        worker("w1", "start", 10, 1, 1, at(2.02)),
        worker("w1", "end", 10, 1, 1, at(2.3)),
        worker("w1", "dispatch_accepted", 20, 1, 1, at(2.05)),
        worker("w1", "start", 20, 1, 1, at(2.06)),
        worker("w1", "end", 20, 1, 1, at(2.9)),
        worker("w2", "dispatch_accepted", 11, 1, 1, at(3.01)),
        worker("w2", "start", 11, 1, 1, at(3.02)),
        worker("w2", "end", 11, 1, 1, at(3.3)),
        worker("w2", "dispatch_accepted", 21, 1, 2, at(3.2)),
        worker("w2", "start", 21, 1, 2, at(3.21)),
        worker("w2", "end", 21, 1, 2, at(4.2)),
        worker("w2", "dispatch_refused", 22, 1, 1, at(6.0)),
    ];

    h.fin.jobs = vec![
        {
            let mut j = job(1, "cron-1", cron, true, wall(1.05));
            j["last_fire_time_ms"] = json!(wall(5.0));
            j
        },
        job(2, "api-1", api.clone(), false, wall(1.25)),
        job(3, "maybe", api, true, wall(8.5)),
    ];
    h.fin.skips.insert(
        1,
        vec![
            json!({"fire_time_ms": wall(4.0), "through_ms": wall(5.0), "kind": "misfire",
                    "reason": "missed", "recorded_at_ms": wall(9.0)}),
        ],
    );
    h.fin.instances = vec![
        instance(
            10,
            1,
            "schedule",
            Some(wall(2.0)),
            "succeeded",
            wall(2.0),
            Some(wall(2.3)),
        ),
        instance(
            11,
            1,
            "schedule",
            Some(wall(3.0)),
            "succeeded",
            wall(3.0),
            Some(wall(3.3)),
        ),
        instance(
            20,
            2,
            "manual",
            None,
            "succeeded",
            wall(2.05),
            Some(wall(2.9)),
        ),
        instance(
            21,
            2,
            "manual",
            None,
            "stopped",
            wall(3.05),
            Some(wall(4.2)),
        ),
    ];
    for n in 1..=3u64 {
        h.fin
            .digests
            .insert(n, json!({"applied_index": 50, "digest": "abc"}));
    }
    h
}

fn op_event(o: &Op) -> Value {
    serde_json::to_value(Event::Op(o.clone())).unwrap()
}

fn worker_event(w: &WorkerEvent) -> Value {
    serde_json::to_value(w).unwrap()
}

/// The checker says `verdict`, and (when given) one of its offending entries
/// lists `event`.
fn assert_flags(r: &Report, checker: &str, verdict: Verdict, event: Option<&Value>) {
    let c = r
        .check(checker)
        .unwrap_or_else(|| panic!("no checker {checker}"));
    assert_eq!(
        c.verdict, verdict,
        "{checker}: {}\n{:#?}",
        c.summary, c.offending
    );
    if let Some(e) = event {
        let named = c.offending.iter().any(|o| {
            o["events"]
                .as_array()
                .is_some_and(|evs| evs.iter().any(|x| x == e))
        });
        assert!(named, "{checker} does not name {e}:\n{:#?}", c.offending);
    }
}

fn assert_others_valid(r: &Report, except: &str) {
    for c in &r.checks {
        if c.name != except {
            assert_eq!(c.verdict, Verdict::Valid, "{}: {}", c.name, c.summary);
        }
    }
}

#[test]
fn a_valid_history_passes_every_checker() {
    let r = valid().report();
    for c in &r.checks {
        assert_eq!(
            c.verdict,
            Verdict::Valid,
            "{}: {}\n{:#?}",
            c.name,
            c.summary,
            c.offending
        );
    }
    assert_eq!(r.checks.len(), 10);
    assert_eq!(r.verdict, Verdict::Valid);
    assert_eq!(r.exit_code(), 0);
    // The stats saw what the history holds.
    assert_eq!(r.stats.faults.len(), 1);
    assert_eq!(r.stats.faults[0].duration_ms, Some(3000));
    let create = r.stats.ops.iter().find(|c| c.f == OpFn::CreateJob).unwrap();
    assert_eq!((create.ok, create.info), (2, 1));
    let leaderless = r.stats.longest_leaderless.expect("a leaderless stretch");
    assert_eq!((leaderless.from_ms, leaderless.to_ms), (5000, 6500));
    assert!(r
        .check("no_silent_skip")
        .unwrap()
        .summary
        .contains("4 fire times"));
}

#[test]
fn the_wall_clock_is_estimated_when_run_json_has_no_anchor() {
    let mut h = valid();
    h.meta.extra = json!({});
    let r = h.report();
    assert_eq!(r.verdict, Verdict::Valid, "{:#?}", r.checks);
    let c = r.stats.wall_clock.expect("estimated");
    // created_at is 50 ms after each invocation: the estimate is within its bound.
    assert!((c.offset_ms - (W - (S / 1_000_000) as i64)).abs() <= c.uncertainty_ms);
    assert!(c.samples >= 3);
}

#[test]
fn an_acknowledged_create_missing_at_the_end_is_a_lost_write() {
    let mut h = valid();
    let (_, ok) = h.call(
        OpFn::CreateJob,
        json!({"name": "lost"}),
        OpKind::Ok,
        json!({"job_id": 9}),
        10.0,
        10.1,
        Some("r10"),
    );
    let r = h.report();
    assert_flags(&r, "no_lost_write", Verdict::Invalid, Some(&op_event(&ok)));
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn an_acknowledged_run_missing_at_the_end_is_a_lost_write() {
    let mut h = valid();
    h.fin.instances.retain(|i| i["id"] != json!(21));
    let r = h.report();
    let ok = h.events.iter().find_map(|e| match e {
        Event::Op(o) if o.kind == OpKind::Ok && o.value == json!({"instance_id": 21}) => {
            Some(op_event(o))
        }
        _ => None,
    });
    assert_flags(&r, "no_lost_write", Verdict::Invalid, ok.as_ref());
}

#[test]
fn a_failed_create_that_took_effect_is_invalid() {
    let mut h = valid();
    let (_, fail) = h.call(
        OpFn::CreateJob,
        json!({"name": "ghost"}),
        OpKind::Fail,
        json!(null),
        10.0,
        10.1,
        Some("r11"),
    );
    h.fin
        .jobs
        .push(job(5, "ghost", json!({"type": "api"}), true, wall(10.05)));
    assert_flags(
        &h.report(),
        "no_lost_write",
        Verdict::Invalid,
        Some(&op_event(&fail)),
    );
}

#[test]
fn a_failed_run_that_took_effect_is_invalid() {
    let mut h = valid();
    h.fin.instances.push(instance(
        30,
        2,
        "manual",
        None,
        "succeeded",
        wall(7.55),
        Some(wall(8.0)),
    ));
    let r = h.report();
    let c = r.check("no_lost_write").unwrap();
    assert_eq!(c.verdict, Verdict::Invalid, "{}", c.summary);
    assert!(
        c.summary.contains("failed RunJob on job 2"),
        "{}",
        c.summary
    );
    let shows_instance = c.offending[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["id"] == json!(30));
    assert!(shows_instance);
}

#[test]
fn one_request_id_creating_two_jobs_is_invalid() {
    let mut h = valid();
    // A retry of r1 that the server answered with a second job.
    let (_, ok) = h.call(
        OpFn::CreateJob,
        json!({"name": "cron-1", "schedule": {"type": "cron", "expr": "* * * * * *"}}),
        OpKind::Ok,
        json!({"job_id": 4}),
        1.4,
        1.45,
        Some("r1"),
    );
    h.fin.jobs.push(job(
        4,
        "cron-1",
        json!({"type": "cron", "expr": "* * * * * *"}),
        true,
        wall(1.42),
    ));
    let r = h.report();
    assert_flags(
        &r,
        "one_effect_per_request_id",
        Verdict::Invalid,
        Some(&op_event(&ok)),
    );
}

#[test]
fn two_jobs_for_one_request_name_are_invalid_even_without_two_oks() {
    let mut h = valid();
    h.fin
        .jobs
        .push(job(4, "api-1", json!({"type": "api"}), true, wall(1.29)));
    let r = h.report();
    let c = r.check("one_effect_per_request_id").unwrap();
    assert_eq!(c.verdict, Verdict::Invalid);
    assert!(
        c.summary.contains("2 jobs named \"api-1\""),
        "{}",
        c.summary
    );
}

#[test]
fn two_instances_for_one_fire_time_are_invalid() {
    let mut h = valid();
    let dup = instance(
        12,
        1,
        "schedule",
        Some(wall(2.0)),
        "succeeded",
        wall(2.4),
        Some(wall(2.7)),
    );
    h.fin.instances.push(dup.clone());
    let r = h.report();
    assert_flags(
        &r,
        "one_instance_per_fire_time",
        Verdict::Invalid,
        Some(&dup),
    );
    assert_others_valid(&r, "one_instance_per_fire_time");
}

#[test]
fn a_fire_time_with_no_instance_and_no_skip_is_a_silent_skip() {
    let mut h = valid();
    h.fin.instances.retain(|i| i["id"] != json!(11));
    let r = h.report();
    let c = r.check("no_silent_skip").unwrap();
    assert_eq!(c.verdict, Verdict::Invalid, "{}", c.summary);
    assert!(
        c.summary.contains(&format!("first {}", wall(3.0))),
        "{}",
        c.summary
    );
    let missing = &c.offending[0]["events"][1]["missing_fire_times_ms"];
    assert_eq!(missing, &json!([wall(3.0)]));
    assert_eq!(c.offending[0]["events"][0]["id"], json!(1));
}

#[test]
fn fixed_rate_jobs_are_checked_and_unsupported_schedules_are_unknown() {
    let mut h = valid();
    let mut fr = job(
        6,
        "rate",
        json!({"type": "fixed_rate", "every_ms": 500}),
        true,
        wall(1.0),
    );
    fr["last_fire_time_ms"] = json!(wall(2.0));
    h.fin.jobs.push(fr);
    // Fire times 1.0, 1.5, 2.0: only 1.0 and 2.0 ran.
    h.fin.instances.push(instance(
        40,
        6,
        "schedule",
        Some(wall(1.0)),
        "succeeded",
        wall(1.0),
        Some(wall(1.2)),
    ));
    h.fin.instances.push(instance(
        41,
        6,
        "schedule",
        Some(wall(2.0)),
        "succeeded",
        wall(2.0),
        Some(wall(2.2)),
    ));
    let c = h.report().check("no_silent_skip").cloned().unwrap();
    assert_eq!(c.verdict, Verdict::Invalid);
    assert!(
        c.summary.contains(&format!("first {}", wall(1.5))),
        "{}",
        c.summary
    );

    let mut h = valid();
    let mut fd = job(
        7,
        "delay",
        json!({"type": "fixed_delay", "delay_ms": 500}),
        true,
        wall(1.0),
    );
    fd["last_fire_time_ms"] = json!(wall(2.0));
    h.fin.jobs.push(fd);
    let r = h.report();
    assert_flags(&r, "no_silent_skip", Verdict::Unknown, None);
    assert_eq!(r.verdict, Verdict::Unknown);
}

#[test]
fn cron_fire_times_follow_the_jobs_time_zone() {
    // Minute 30 of every hour in Asia/Kolkata (+05:30) is minute 0 in UTC; read
    // in UTC it would be minute 30.
    let mut h = valid();
    let sched = json!({"type": "cron", "expr": "0 30 * * * *", "timezone": "Asia/Kolkata"});
    // W = 2023-11-14T22:13:20Z; minute 30 local (+05:30) is minute 0 in UTC.
    let created = W - 3_600_000;
    let mut j = job(8, "kolkata", sched, true, created);
    j["last_fire_time_ms"] = json!(W);
    h.fin.jobs.push(j);
    let c = h.report().check("no_silent_skip").cloned().unwrap();
    assert_eq!(c.verdict, Verdict::Invalid, "{}", c.summary);
    // The one fire time in the hour before W is 22:00:00 UTC = 03:30 IST.
    let expected = W - 13 * 60_000 - 20_000;
    assert!(
        c.summary.contains(&format!("first {expected}")),
        "{}",
        c.summary
    );
}

#[test]
fn a_worker_accepting_a_lower_term_is_invalid() {
    let mut h = valid();
    let stale = worker("w2", "dispatch_accepted", 23, 1, 1, at(7.0));
    h.workers.push(stale.clone());
    let r = h.report();
    assert_flags(&r, "fencing", Verdict::Invalid, Some(&worker_event(&stale)));
    assert_others_valid(&r, "fencing");
}

#[test]
fn a_killed_and_restarted_worker_starts_its_term_history_afresh() {
    let mut h = valid();
    h.events.push(Event::Nemesis(NemesisEvent {
        fault: "worker-kill".into(),
        phase: NemesisPhase::Start,
        detail: json!({"worker": "w2"}),
        time_ns: at(6.5),
    }));
    h.events.push(Event::Nemesis(NemesisEvent {
        fault: "worker-kill".into(),
        phase: NemesisPhase::End,
        detail: json!({"worker": "w2"}),
        time_ns: at(6.8),
    }));
    h.meta.planned_faults.push("worker-kill".into());
    h.workers
        .push(worker("w2", "dispatch_accepted", 23, 1, 1, at(7.0)));
    // A start the kill cut off: no end, but it must not count as running on.
    h.workers.push(worker("w2", "start", 24, 1, 2, at(6.0)));
    h.workers
        .push(worker("w1", "dispatch_accepted", 24, 2, 2, at(7.0)));
    h.workers.push(worker("w1", "start", 24, 2, 2, at(7.1)));
    h.workers.push(worker("w1", "end", 24, 2, 2, at(7.5)));
    let r = h.report();
    assert_flags(&r, "fencing", Verdict::Valid, None);
}

#[test]
fn one_attempt_accepted_by_two_workers_is_invalid() {
    let mut h = valid();
    let second = worker("w2", "dispatch_accepted", 10, 1, 1, at(2.015));
    h.workers.push(second.clone());
    assert_flags(
        &h.report(),
        "fencing",
        Verdict::Invalid,
        Some(&worker_event(&second)),
    );
}

#[test]
fn one_instance_running_on_two_workers_at_once_is_invalid() {
    let mut h = valid();
    // A second attempt on w2 while w1's first is still running (2.02..2.3).
    h.workers
        .push(worker("w2", "dispatch_accepted", 10, 2, 1, at(2.1)));
    let start = worker("w2", "start", 10, 2, 1, at(2.11));
    h.workers.push(start.clone());
    h.workers.push(worker("w2", "end", 10, 2, 1, at(2.5)));
    let r = h.report();
    assert_flags(&r, "fencing", Verdict::Invalid, Some(&worker_event(&start)));
    assert!(r
        .check("fencing")
        .unwrap()
        .summary
        .contains("ran on workers w1 and w2 at once"));
}

#[test]
fn a_start_without_an_end_runs_until_the_run_ended() {
    let mut h = valid();
    h.workers.push(worker("w2", "start", 20, 2, 2, at(30.0)));
    // w1 runs instance 20 again (a later attempt) while w2's never ended.
    let late = worker("w1", "start", 20, 3, 2, at(39.0));
    h.workers.push(late.clone());
    h.workers.push(worker("w1", "end", 20, 3, 2, at(39.5)));
    assert_flags(
        &h.report(),
        "fencing",
        Verdict::Invalid,
        Some(&worker_event(&late)),
    );
}

#[test]
fn an_instance_still_running_long_after_heal_is_invalid() {
    let mut h = valid();
    {
        let i = h.final_instance(20);
        i["status"] = json!("running");
        i.as_object_mut().unwrap().remove("finished_at_ms");
    }
    let inst = h.final_instance(20).clone();
    assert_flags(
        &h.report(),
        "terminal_after_heal",
        Verdict::Invalid,
        Some(&inst),
    );

    // Read before the bound elapsed: the run cannot tell.
    h.fin.read_ns = at(25.0);
    assert_flags(
        &h.report(),
        "terminal_after_heal",
        Verdict::Unknown,
        Some(&inst),
    );
}

#[test]
fn an_instance_finishing_after_the_bound_is_invalid() {
    let mut h = valid();
    h.final_instance(11)["finished_at_ms"] = json!(wall(20.0 + 10.0 + 2.0));
    let inst = h.final_instance(11).clone();
    assert_flags(
        &h.report(),
        "terminal_after_heal",
        Verdict::Invalid,
        Some(&inst),
    );
}

#[test]
fn a_stale_read_of_a_disabled_job_is_not_linearizable() {
    let mut h = valid();
    let (_, stale) = h.call(
        OpFn::ReadJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"job": {"id": 2, "enabled": true}}),
        7.5,
        7.6,
        None,
    );
    let r = h.report();
    assert_flags(
        &r,
        "linearizable_reads",
        Verdict::Invalid,
        Some(&op_event(&stale)),
    );
    assert_others_valid(&r, "linearizable_reads");
}

#[test]
fn a_read_missing_an_acknowledged_create_is_not_linearizable() {
    let mut h = valid();
    let (_, stale) = h.call(
        OpFn::ReadJob,
        json!({"job_id": 1}),
        OpKind::Ok,
        json!({"absent": true}),
        1.2,
        1.25,
        None,
    );
    assert_flags(
        &h.report(),
        "linearizable_reads",
        Verdict::Invalid,
        Some(&op_event(&stale)),
    );
}

#[test]
fn reads_may_see_an_outcome_unknown_create_but_not_unsee_it() {
    let mut h = valid();
    // Job 3's create was info: a read may see it present, but a later read may not
    // see it absent again.
    let (_, back) = h.call(
        OpFn::ReadJob,
        json!({"job_id": 3}),
        OpKind::Ok,
        json!({"absent": true}),
        13.0,
        13.1,
        None,
    );
    assert_flags(
        &h.report(),
        "linearizable_reads",
        Verdict::Invalid,
        Some(&op_event(&back)),
    );
}

#[test]
fn concurrent_reads_may_see_either_side_of_a_write() {
    let mut h = valid();
    // Both overlap the disable (6.0..6.1) and each other: the true read can be
    // placed before the disable and the false one after it.
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"job": {"id": 2, "enabled": false}}),
        6.02,
        6.07,
        None,
    );
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"job": {"id": 2, "enabled": true}}),
        6.05,
        6.2,
        None,
    );
    assert_flags(&h.report(), "linearizable_reads", Verdict::Valid, None);
    // But not true after false when the false read finished before the true one began.
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"job": {"id": 2, "enabled": false}}),
        6.06,
        6.07,
        None,
    );
    h.call(
        OpFn::ReadJob,
        json!({"job_id": 2}),
        OpKind::Ok,
        json!({"job": {"id": 2, "enabled": true}}),
        6.08,
        6.09,
        None,
    );
    assert_flags(&h.report(), "linearizable_reads", Verdict::Invalid, None);
}

#[test]
fn an_instance_status_going_backwards_is_not_linearizable() {
    let mut h = valid();
    let (_, back) = h.call(
        OpFn::ReadInstance,
        json!({"instance_id": 20}),
        OpKind::Ok,
        json!({"id": 20, "status": "running", "attempts": [{"status": "running"}]}),
        4.0,
        4.1,
        None,
    );
    let r = h.report();
    assert_flags(
        &r,
        "linearizable_reads",
        Verdict::Invalid,
        Some(&op_event(&back)),
    );
    assert!(r
        .check("linearizable_reads")
        .unwrap()
        .summary
        .contains("went backwards"));
}

#[test]
fn a_retried_instance_may_go_back_to_waiting() {
    let mut h = valid();
    // Attempt 1 failed and the instance waits for attempt 2: more closed attempts.
    h.call(
        OpFn::ReadInstance,
        json!({"instance_id": 21}),
        OpKind::Ok,
        json!({"id": 21, "status": "running", "attempts": [{"status": "running"}]}),
        3.3,
        3.35,
        None,
    );
    h.call(
        OpFn::ReadInstance,
        json!({"instance_id": 21}),
        OpKind::Ok,
        json!({"id": 21, "status": "waiting_dispatch", "attempts": [{"status": "failed"}]}),
        3.4,
        3.45,
        None,
    );
    assert_flags(&h.report(), "linearizable_reads", Verdict::Valid, None);
}

#[test]
fn an_instance_absent_after_its_run_returned_ok_is_not_linearizable() {
    let mut h = valid();
    let (_, absent) = h.call(
        OpFn::ReadInstance,
        json!({"instance_id": 21}),
        OpKind::Ok,
        json!({"absent": true}),
        3.2,
        3.25,
        None,
    );
    assert_flags(
        &h.report(),
        "linearizable_reads",
        Verdict::Invalid,
        Some(&op_event(&absent)),
    );
}

#[test]
fn a_stopped_instance_that_ran_to_success_is_a_cancel_not_honoured() {
    let mut h = valid();
    h.final_instance(21)["status"] = json!("succeeded");
    let r = h.report();
    let stop = h.events.iter().find_map(|e| match e {
        Event::Op(o) if o.f == OpFn::StopInstance && o.kind == OpKind::Ok => Some(op_event(o)),
        _ => None,
    });
    assert_flags(&r, "cancels_honoured", Verdict::Invalid, stop.as_ref());
}

#[test]
fn an_instance_scheduled_after_a_disable_is_a_cancel_not_honoured() {
    let mut h = valid();
    let late = instance(
        25,
        2,
        "schedule",
        Some(wall(7.0)),
        "succeeded",
        wall(7.0),
        Some(wall(7.5)),
    );
    h.fin.instances.push(late.clone());
    let r = h.report();
    assert_flags(&r, "cancels_honoured", Verdict::Invalid, Some(&late));
}

#[test]
fn different_digests_at_one_index_are_invalid_and_at_different_indexes_unknown() {
    let mut h = valid();
    h.fin
        .digests
        .insert(3, json!({"applied_index": 50, "digest": "xyz"}));
    let r = h.report();
    let expect = json!({"node": 3, "digest": {"applied_index": 50, "digest": "xyz"}});
    assert_flags(&r, "replicas_identical", Verdict::Invalid, Some(&expect));

    h.fin
        .digests
        .insert(3, json!({"applied_index": 49, "digest": "xyz"}));
    assert_flags(&h.report(), "replicas_identical", Verdict::Unknown, None);
}

#[test]
fn a_planned_fault_that_never_happened_makes_the_run_unknown() {
    let mut h = valid();
    h.meta.planned_faults.push("partition-bridge".into());
    let r = h.report();
    assert_flags(&r, "faults_happened", Verdict::Unknown, None);
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(r.exit_code(), 2);
    assert!(r
        .check("faults_happened")
        .unwrap()
        .summary
        .contains("partition-bridge"));

    // A fault that failed to inject names its event.
    let mut h = valid();
    let failed = NemesisEvent {
        fault: "pause-leader".into(),
        phase: NemesisPhase::Failed,
        detail: json!({"why": "no leader"}),
        time_ns: at(9.0),
    };
    h.events.push(Event::Nemesis(failed.clone()));
    let ev = serde_json::to_value(Event::Nemesis(failed)).unwrap();
    assert_flags(&h.report(), "faults_happened", Verdict::Unknown, Some(&ev));
}

#[test]
fn invalid_wins_over_unknown() {
    let mut h = valid();
    h.meta.planned_faults.push("partition-bridge".into());
    h.fin.instances.retain(|i| i["id"] != json!(11));
    let r = h.report();
    assert_eq!(r.verdict, Verdict::Invalid);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn the_linearizability_search_gives_up_as_unknown_beyond_its_budget() {
    let mut h = valid();
    // 60 outcome-unknown disables and deletes of job 1 plus reads that cannot be
    // placed make the search explore many orders; it must stop, not hang.
    for i in 0..40 {
        let how = if i % 2 == 0 { "disable" } else { "delete" };
        h.call(
            OpFn::CancelJob,
            json!({"job_id": 1, "how": how}),
            OpKind::Info,
            json!(null),
            14.0 + f64::from(i) * 0.001,
            30.0,
            Some(&format!("c{i}")),
        );
    }
    for i in 0..20 {
        h.call(
            OpFn::ReadJob,
            json!({"job_id": 1}),
            OpKind::Ok,
            json!({"job": {"id": 1, "enabled": i % 2 == 0}}),
            15.0 + f64::from(i),
            15.5 + f64::from(i),
            None,
        );
    }
    let started = std::time::Instant::now();
    let r = h.report();
    let c = r.check("linearizable_reads").unwrap();
    assert_ne!(c.verdict, Verdict::Valid, "{}", c.summary);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn a_recorded_run_round_trips_through_its_files() {
    let h = valid();
    let dir = tempfile::tempdir().unwrap();
    let run = h.run();
    let mut history = JsonlWriter::create(&dir.path().join("history.jsonl")).unwrap();
    for e in &run.events {
        history.write(e).unwrap();
    }
    let mut workers = JsonlWriter::create(&dir.path().join("workers.jsonl")).unwrap();
    for w in &h.workers {
        workers.write(w).unwrap();
    }
    std::fs::write(
        dir.path().join("run.json"),
        serde_json::to_vec(&h.meta).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("final.json"),
        serde_json::to_vec(&h.fin).unwrap(),
    )
    .unwrap();

    let report = check_dir(dir.path()).unwrap();
    assert_eq!(report.verdict, Verdict::Valid, "{:#?}", report.checks);
    crate::report::write_outputs(dir.path(), &report).unwrap();

    let back: Report =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(back.verdict, Verdict::Valid);
    assert_eq!(back.checks, report.checks);
    assert_eq!(back.stats.ops.len(), report.stats.ops.len());
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(summary.contains("**VALID**"), "{summary}");
    assert!(
        summary.contains("| kill-leader | 5.0 | 8.0 | 3.0 |"),
        "{summary}"
    );
    assert!(summary.contains("| no_silent_skip | valid |"), "{summary}");

    // Without final.json the checkers that need it cannot decide.
    std::fs::remove_file(dir.path().join("final.json")).unwrap();
    let report = check_dir(dir.path()).unwrap();
    assert_eq!(report.verdict, Verdict::Unknown);
    assert_eq!(
        report.check("no_lost_write").unwrap().verdict,
        Verdict::Unknown
    );
}
