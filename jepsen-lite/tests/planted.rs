//! Test the tester: each planted bug (`raftjob-planted`, built here with the
//! `planted-bugs` feature) must make a fitting scenario invalid, and the checker that
//! guards against that bug must be the one that says so.

mod common;

/// (planted bug, scenario that exposes it, the checker that must fire).
const CASES: &[(&str, &str, &str)] = &[
    // Every fifth create or run is acknowledged but never proposed.
    ("ack-before-commit", "kill-follower", "no_lost_write"),
    // The leader sends every dispatch to a second worker too.
    ("duplicate-dispatch", "kill-follower", "fencing"),
    // A second leader's Fire for an already fired time is applied.
    (
        "ignore-fire-cursor",
        "kill-leader",
        "one_instance_per_fire_time",
    ),
    // The cut-off old leader keeps its workers' leases alive while a new leader
    // dispatches the same attempts elsewhere.
    ("renew-without-quorum", "partition-leader", "fencing"),
    // The worker takes a dispatch from a term lower than one it has seen.
    ("skip-term-check", "pause-leader", "fencing"),
];

/// Seconds of workload and faults per run.
const TIME_LIMIT: u64 = 15;

#[test]
fn each_planted_bug_is_caught_by_its_checker() {
    let bin = common::build_bin(
        &["--bin", "raftjob-planted", "--features", "planted-bugs"],
        "raftjob-planted",
    );
    let only = std::env::var("PLANTED").ok();
    let mut missed = Vec::new();
    for (bug, scenario, checker) in CASES {
        if only.as_deref().is_some_and(|o| o != *bug) {
            continue;
        }
        let run = common::run_scenario(scenario, 1, TIME_LIMIT, &bin, Some(bug));
        let fired = run.check_verdict(checker);
        eprintln!(
            "{bug} under {scenario}: exit {} in {:.0?}, {checker} {fired:?}\n{}",
            run.code,
            run.elapsed,
            run.not_valid_checks()
        );
        if run.code != 1 || fired.as_deref() != Some("invalid") {
            missed.push(format!(
                "{bug} under {scenario}: exit code {} (want 1), {checker} {fired:?} (want invalid); see {}",
                run.code,
                run.dir.display()
            ));
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}
