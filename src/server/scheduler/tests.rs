//! The scheduler's pure core against the pure state machine, with made-up clocks:
//! fire times, the fire cursor, misfire and concurrency policies, fixed delay and
//! retention.

use serde_json::json;

use super::*;
use crate::state::{
    apply, Command, Instance, InstanceStatus, JobSpec, Outcome, Proposal, SkipKind, State,
    COMMAND_VERSION,
};

const T0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const SEC: Millis = 1000;

fn tuning() -> SchedulerTuning {
    SchedulerTuning {
        misfire_threshold_ms: 5_000,
        catch_up_limit: 10,
        ..SchedulerTuning::default()
    }
}

struct World {
    state: State,
    index: u64,
}

impl World {
    fn new() -> Self {
        let mut w = Self {
            state: State::default(),
            index: 0,
        };
        w.apply(
            T0 - 60 * SEC,
            Command::CreateApp {
                name: "app".into(),
                worker_token_hash: "h".into(),
            },
        );
        w
    }

    fn apply(&mut self, now: Millis, cmd: Command) -> Outcome {
        self.index += 1;
        let p = Proposal {
            v: COMMAND_VERSION,
            now_ms: now,
            request: None,
            cmd,
        };
        apply(&mut self.state, &p, 1, self.index).outcome
    }

    /// Creates a job at `now` from a JSON spec fragment merged over a default.
    fn job(&mut self, now: Millis, extra: serde_json::Value) -> JobId {
        let mut spec = json!({
            "app": "app",
            "name": format!("job{}", self.index),
            "processor": {"type": "shell", "command": "true"},
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let spec: JobSpec = serde_json::from_value(spec).unwrap();
        match self.apply(now, Command::CreateJob { spec }) {
            Outcome::Job { job } => job.id,
            other => panic!("{other:?}"),
        }
    }

    /// Proposes and applies everything the planner says is due at `now`.
    fn tick(&mut self, planner: &mut Planner, now: Millis) -> Vec<Instance> {
        let dirty: Vec<JobId> = self.state.jobs.keys().copied().collect();
        planner.refresh(&self.state, dirty, now);
        let mut created = Vec::new();
        // Like the scheduler loop: propose what is due, re-plan the fired jobs, repeat.
        for _ in 0..100 {
            let entries = planner.take_due(&self.state, now);
            if entries.is_empty() {
                break;
            }
            for items in entries {
                let jobs: Vec<JobId> = items.iter().map(|i| i.job_id).collect();
                if let Outcome::Fired { created: ids, .. } =
                    self.apply(now, Command::Fire { items })
                {
                    created.extend(ids.iter().map(|id| self.state.instances[id].clone()));
                }
                let done = planner.fired(jobs);
                planner.refresh(&self.state, done, now);
            }
        }
        created
    }

    fn skips(&self, job: JobId) -> Vec<(Millis, SkipKind)> {
        self.state
            .skips
            .get(&job)
            .map(|l| l.iter().map(|s| (s.fire_time_ms, s.kind)).collect())
            .unwrap_or_default()
    }

    fn finish(&mut self, now: Millis, id: u64) {
        let out = self.apply(
            now,
            Command::FailInstance {
                id,
                reason: "done".into(),
            },
        );
        assert!(matches!(out, Outcome::Instance { .. }), "{out:?}");
    }
}

fn every_second() -> serde_json::Value {
    json!({"schedule": {"type": "cron", "expr": "* * * * * *"}})
}

#[test]
fn a_cron_fires_each_time_once_and_the_cursor_refuses_a_repeat() {
    let mut w = World::new();
    let job = w.job(T0 + 1, every_second());
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    assert_eq!(p.armed(job), Some(T0 + SEC));
    assert!(w.tick(&mut p, T0 + 500).is_empty(), "nothing is due yet");
    let fired = w.tick(&mut p, T0 + SEC);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].fire_time_ms, Some(T0 + SEC));
    assert_eq!(fired[0].trigger, Trigger::Schedule);
    assert_eq!(w.state.jobs[&job].last_fire_time_ms, Some(T0 + SEC));
    assert_eq!(p.armed(job), Some(T0 + 2 * SEC));

    // A deposed leader's late duplicate of the same fire is ignored by apply.
    let dup = FireItem {
        run: vec![T0 + SEC],
        ..FireItem::new(job, w.state.jobs[&job].version)
    };
    let out = w.apply(T0 + SEC, Command::Fire { items: vec![dup] });
    assert_eq!(
        out,
        Outcome::Fired {
            created: vec![],
            skipped: 0,
            dispatched: vec![]
        }
    );
    // Three more seconds: three more instances, consecutive fire times.
    let mut times = Vec::new();
    for s in 2..=4 {
        times.extend(
            w.tick(&mut p, T0 + s * SEC)
                .iter()
                .map(|i| i.fire_time_ms.unwrap()),
        );
    }
    assert_eq!(times, vec![T0 + 2 * SEC, T0 + 3 * SEC, T0 + 4 * SEC]);
}

#[test]
fn a_new_leader_fires_what_fell_due_within_the_threshold_without_skipping() {
    let mut w = World::new();
    let job = w.job(T0 + 1, every_second());
    let mut old = Planner::new(tuning());
    old.rebuild(&w.state, T0);
    w.tick(&mut old, T0 + SEC);
    // The leader dies; a new one takes over 3 s later (under the 5 s threshold).
    let mut new = Planner::new(tuning());
    new.rebuild(&w.state, T0 + 4 * SEC);
    let fired = w.tick(&mut new, T0 + 4 * SEC);
    let times: Vec<Millis> = fired.iter().map(|i| i.fire_time_ms.unwrap()).collect();
    assert_eq!(times, vec![T0 + 2 * SEC, T0 + 3 * SEC, T0 + 4 * SEC]);
    assert!(w.skips(job).is_empty());
}

#[test]
fn fire_once_runs_the_latest_missed_time_and_records_the_rest() {
    let mut w = World::new();
    let job = w.job(T0 + 1, every_second());
    let mut p = Planner::new(tuning());
    // The cluster was down for a minute after the job was created.
    let now = T0 + 60 * SEC;
    let caught = p.rebuild(&w.state, now);
    assert_eq!(caught.jobs, 1);
    let fired = w.tick(&mut p, now);
    let times: Vec<Millis> = fired.iter().map(|i| i.fire_time_ms.unwrap()).collect();
    // The catch-up run for 00:55 (the latest time beyond the 5 s threshold), then
    // the five times within the threshold fire normally.
    assert_eq!(times, (55..=60).map(|s| T0 + s * SEC).collect::<Vec<_>>());
    let skips = w.skips(job);
    assert_eq!(skips.len(), 54, "00:01 to 00:54 are recorded as skipped");
    assert!(skips.iter().all(|(_, k)| *k == SkipKind::Misfire));
    assert_eq!(skips.first().unwrap().0, T0 + SEC);
}

#[test]
fn fire_all_runs_up_to_the_limit_and_records_the_older_ones() {
    let mut w = World::new();
    let job = w.job(
        T0 + 1,
        json!({"schedule": {"type": "cron", "expr": "* * * * * *"}, "misfire_policy": "fire_all"}),
    );
    let mut p = Planner::new(tuning());
    let now = T0 + 30 * SEC;
    p.rebuild(&w.state, now);
    let fired = w.tick(&mut p, now);
    // 25 missed beyond the threshold: the newest 10 run, then 5 on-time ones.
    assert_eq!(fired.len(), 15);
    let skips = w.skips(job);
    assert_eq!(skips.len(), 15);
    assert!(skips.iter().all(|(_, k)| *k == SkipKind::CatchUpLimit));
    let mut all: Vec<Millis> = skips.iter().map(|s| s.0).collect();
    all.extend(fired.iter().map(|i| i.fire_time_ms.unwrap()));
    all.sort();
    assert_eq!(
        all,
        (1..=30).map(|s| T0 + s * SEC).collect::<Vec<_>>(),
        "every time is run or recorded"
    );
}

#[test]
fn skip_records_every_missed_time_and_runs_none_of_them() {
    let mut w = World::new();
    let job = w.job(
        T0 + 1,
        json!({"schedule": {"type": "cron", "expr": "*/10 * * * * *"}, "misfire_policy": "skip"}),
    );
    let mut p = Planner::new(tuning());
    let now = T0 + 100 * SEC;
    p.rebuild(&w.state, now);
    let fired = w.tick(&mut p, now);
    let times: Vec<Millis> = fired.iter().map(|i| i.fire_time_ms.unwrap()).collect();
    assert_eq!(times, vec![now], "only 01:40, which is not late, runs");
    let skipped: Vec<Millis> = w.skips(job).iter().map(|s| s.0).collect();
    assert_eq!(
        skipped,
        (1..=9).map(|k| T0 + k * 10 * SEC).collect::<Vec<_>>()
    );
    assert_eq!(p.armed(job), Some(now + 10 * SEC));
}

#[test]
fn a_huge_outage_is_recorded_as_a_range_not_dropped() {
    let mut w = World::new();
    let job = w.job(T0 + 1, every_second());
    let mut p = Planner::new(tuning());
    let now = T0 + 3600 * SEC;
    p.rebuild(&w.state, now);
    let fired = w.tick(&mut p, now);
    assert_eq!(
        fired[0].fire_time_ms,
        Some(now - 5 * SEC),
        "one catch-up run"
    );
    let list = &w.state.skips[&job];
    let ranges: Vec<_> = list.iter().filter(|s| s.through_ms.is_some()).collect();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].through_ms, Some(now - 5 * SEC - 1));
    // Enumerated (capped per job) plus the range cover everything before the run.
    assert!(list.len() <= crate::state::SKIPS_PER_JOB);
}

#[test]
fn forbid_skips_while_the_previous_instance_runs() {
    let mut w = World::new();
    let job = w.job(T0 + 1, json!({"schedule": {"type": "cron", "expr": "* * * * * *"}, "concurrency_policy": "forbid"}));
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    let first = w.tick(&mut p, T0 + SEC);
    assert_eq!(first.len(), 1);
    assert!(w.tick(&mut p, T0 + 2 * SEC).is_empty());
    assert_eq!(
        w.skips(job),
        vec![(T0 + 2 * SEC, SkipKind::ConcurrencyForbid)]
    );
    w.finish(T0 + 2 * SEC + 500, first[0].id);
    assert_eq!(w.tick(&mut p, T0 + 3 * SEC).len(), 1);
}

#[test]
fn replace_stops_the_previous_instance() {
    let mut w = World::new();
    w.job(T0 + 1, json!({"schedule": {"type": "cron", "expr": "* * * * * *"}, "concurrency_policy": "replace"}));
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    let first = w.tick(&mut p, T0 + SEC)[0].id;
    let second = w.tick(&mut p, T0 + 2 * SEC);
    assert_eq!(second.len(), 1);
    let old = &w.state.instances[&first];
    assert_eq!(
        old.status,
        InstanceStatus::Stopped,
        "a waiting one is stopped at once"
    );
}

#[test]
fn max_concurrent_instances_skips_with_the_reason() {
    let mut w = World::new();
    let job = w.job(
        T0 + 1,
        json!({"schedule": {"type": "cron", "expr": "* * * * * *"}, "max_concurrent_instances": 2}),
    );
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    for s in 1..=3 {
        w.tick(&mut p, T0 + s * SEC);
    }
    assert_eq!(w.state.active_of_job(job).count(), 2);
    assert_eq!(
        w.skips(job),
        vec![(T0 + 3 * SEC, SkipKind::MaxConcurrentInstances)]
    );
}

#[test]
fn fixed_delay_waits_for_the_previous_instance_to_end() {
    let mut w = World::new();
    let job = w.job(
        T0,
        json!({"schedule": {"type": "fixed_delay", "delay_ms": 2000}}),
    );
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    let first = w.tick(&mut p, T0);
    assert_eq!(first.len(), 1, "a fixed-delay job first fires at its start");
    assert_eq!(p.armed(job), None, "nothing armed while it runs");
    assert!(w.tick(&mut p, T0 + 10 * SEC).is_empty());
    w.finish(T0 + 10 * SEC, first[0].id);
    assert_eq!(w.state.jobs[&job].last_finished_ms, Some(T0 + 10 * SEC));
    w.tick(&mut p, T0 + 10 * SEC);
    assert_eq!(p.armed(job), Some(T0 + 12 * SEC));
    assert_eq!(w.tick(&mut p, T0 + 12 * SEC).len(), 1);
}

#[test]
fn fixed_rate_fires_on_its_grid_without_drift() {
    let mut w = World::new();
    let job = w.job(
        T0,
        json!({"schedule": {"type": "fixed_rate", "every_ms": 250}}),
    );
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    let mut times = Vec::new();
    // Ticks arrive late by varying amounts; fire times stay on the grid.
    for k in 1..=40 {
        times.extend(
            w.tick(&mut p, T0 + k * 250 + (k % 7) * 13)
                .iter()
                .map(|i| i.fire_time_ms.unwrap()),
        );
    }
    assert_eq!(times, (0..=40).map(|k| T0 + k * 250).collect::<Vec<_>>());
    assert!(w.skips(job).is_empty());
}

#[test]
fn disabling_a_job_disarms_it_and_a_stale_version_is_ignored() {
    let mut w = World::new();
    let job = w.job(T0 + 1, every_second());
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    let stale_version = w.state.jobs[&job].version;
    w.apply(
        T0,
        Command::SetJobEnabled {
            id: job,
            enabled: false,
        },
    );
    p.refresh(&w.state, [job], T0);
    assert_eq!(p.armed(job), None);
    let item = FireItem {
        run: vec![T0 + SEC],
        ..FireItem::new(job, stale_version)
    };
    let out = w.apply(T0 + SEC, Command::Fire { items: vec![item] });
    assert_eq!(
        out,
        Outcome::Fired {
            created: vec![],
            skipped: 0,
            dispatched: vec![]
        }
    );
}

#[test]
fn jobs_due_at_the_same_instant_share_one_entry() {
    let mut w = World::new();
    let jobs: Vec<JobId> = (0..50).map(|_| w.job(T0 + 1, every_second())).collect();
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    let entries = p.take_due(&w.state, T0 + SEC);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].len(), jobs.len());
}

#[test]
fn retention_removes_old_finished_instances_and_keeps_the_newest_per_job() {
    let mut w = World::new();
    let job = w.job(T0, json!({"schedule": {"type": "api"}}));
    let mut ids = Vec::new();
    for k in 0..10 {
        let out = w.apply(
            T0 + k * SEC,
            Command::RunJob {
                job_id: job,
                params: json!({}),
                delay_ms: 0,
            },
        );
        let Outcome::InstanceCreated { id } = out else {
            panic!("{out:?}")
        };
        w.finish(T0 + k * SEC, id);
        ids.push(id);
    }
    let running = match w.apply(
        T0 + 20 * SEC,
        Command::RunJob {
            job_id: job,
            params: json!({}),
            delay_ms: 0,
        },
    ) {
        Outcome::InstanceCreated { id } => id,
        other => panic!("{other:?}"),
    };
    // Age: everything finished before T0+3s goes (3 instances).
    let out = w.apply(
        T0 + 23 * SEC,
        Command::Prune {
            max_age_ms: 20 * SEC,
            max_per_job: 0,
        },
    );
    assert_eq!(out, Outcome::Pruned { instances: 3 });
    assert!(ids[..3]
        .iter()
        .all(|id| !w.state.instances.contains_key(id)));
    // Count: keep the newest 4 finished ones; the running one is never removed.
    let out = w.apply(
        T0 + 23 * SEC,
        Command::Prune {
            max_age_ms: 20 * SEC,
            max_per_job: 4,
        },
    );
    assert_eq!(out, Outcome::Pruned { instances: 3 });
    let left: Vec<u64> = w.state.instances.keys().copied().collect();
    let mut expect = ids[6..].to_vec();
    expect.push(running);
    assert_eq!(left, expect);
    // The derived indexes rebuilt after a reload agree with the incremental ones.
    w.state.rebuild_indexes();
    let out = w.apply(
        T0 + 24 * SEC,
        Command::Prune {
            max_age_ms: 20 * SEC,
            max_per_job: 4,
        },
    );
    assert_eq!(out, Outcome::Pruned { instances: 0 });
}

#[test]
fn a_skipped_fixed_delay_time_does_not_stop_the_job() {
    let mut w = World::new();
    let job = w.job(T0, json!({"schedule": {"type": "fixed_delay", "delay_ms": 2000}, "concurrency_policy": "forbid"}));
    // A manual run is unfinished when the first scheduled time comes: skipped.
    let manual = match w.apply(
        T0,
        Command::RunJob {
            job_id: job,
            params: json!({}),
            delay_ms: 0,
        },
    ) {
        Outcome::InstanceCreated { id } => id,
        other => panic!("{other:?}"),
    };
    let mut p = Planner::new(tuning());
    p.rebuild(&w.state, T0);
    assert!(w.tick(&mut p, T0).is_empty());
    assert_eq!(w.skips(job), vec![(T0, SkipKind::ConcurrencyForbid)]);
    assert_eq!(
        p.armed(job),
        Some(T0 + 2 * SEC),
        "a delay after the skipped time"
    );
    w.finish(T0 + SEC, manual);
    assert_eq!(w.tick(&mut p, T0 + 2 * SEC).len(), 1);
}

#[test]
fn a_fire_can_dispatch_its_instance_in_the_same_entry() {
    let mut w = World::new();
    let job = w.job(T0 + 1, every_second());
    let item = FireItem {
        run: vec![T0 + SEC],
        dispatch_to: vec!["app/w1".into()],
        ..FireItem::new(job, w.state.jobs[&job].version)
    };
    let out = w.apply(T0 + SEC, Command::Fire { items: vec![item] });
    let Outcome::Fired {
        created,
        dispatched,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(dispatched.len(), 1);
    assert_eq!(dispatched[0].instance_id, created[0]);
    let inst = &w.state.instances[&created[0]];
    assert_eq!(inst.status, InstanceStatus::Dispatched);
    assert_eq!(inst.dispatched_at_ms, Some(T0 + SEC));
    let a = &inst.attempts[0];
    assert_eq!(a.worker, "app/w1");
    // The fencing token is the Fire entry's own (term, index).
    assert_eq!((a.fencing_token.term, a.fencing_token.index), (1, w.index));
}

#[test]
fn skips_are_split_by_kind_for_the_metrics() {
    let planned = [("misfire", 3), ("catch_up_limit", 2)];
    // Everything planned was recorded, and apply skipped one more for concurrency.
    assert_eq!(
        skips_by_kind(&planned, 6),
        [("misfire", 3), ("catch_up_limit", 2), ("concurrency", 1)]
    );
    // Apply dropped stale planned times: never more than were recorded.
    assert_eq!(
        skips_by_kind(&planned, 4),
        [("misfire", 3), ("catch_up_limit", 1), ("concurrency", 0)]
    );
    assert_eq!(
        skips_by_kind(&[("misfire", 0), ("catch_up_limit", 0)], 2),
        [("misfire", 0), ("catch_up_limit", 0), ("concurrency", 2)]
    );
}
