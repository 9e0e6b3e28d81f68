//! Test the tester: each planted bug (`raftjob-planted`, built here with the
//! `planted-bugs` feature) must make a fitting scenario invalid, and the checker that
//! guards against that bug must be the one that says so.
//!
//! It takes about three minutes after the build (which recompiles the raftjob crate
//! once, about three more), so it is `#[ignore]`d in `make test` and run by `make
//! jepsen`, or by hand: `cargo test -p jepsen-lite --test planted -- --ignored
//! --nocapture` (`PLANTED=<bug>` runs one).

mod common;

/// (planted bug, scenario that exposes it, the checker that must fire, time limit).
const CASES: &[(&str, &str, &str, u64)] = &[
    // Every fifth create or run is acknowledged but never proposed.
    ("ack-before-commit", "kill-follower", "no_lost_write", 15),
    // The leader sends every dispatch to a second worker too.
    ("duplicate-dispatch", "kill-follower", "fencing", 15),
    // A new leader's Fire for a time the old one already fired is applied.
    (
        "ignore-fire-cursor",
        "kill-leader",
        "one_instance_per_fire_time",
        15,
    ),
    // The deposed leader keeps renewing the leases of the worker still talking to
    // it, while the new leader retries the same instances on the other worker.
    ("renew-without-quorum", "zombie-leader", "fencing", 25),
    // The worker takes the deposed leader's held dispatches, of an older term.
    ("skip-term-check", "stale-dispatch", "fencing", 15),
];

/// Seeds tried per bug before it counts as missed: a fault has to meet the right
/// moment (a long attempt running, a dispatch in flight), which a seed may not give.
const SEEDS: u64 = 5;

#[test]
#[ignore = "about 6 minutes with the planted build; run by `make jepsen`"]
fn each_planted_bug_is_caught_by_its_checker() {
    let bin = common::build_bin(
        &["--bin", "raftjob-planted", "--features", "planted-bugs"],
        "raftjob-planted",
    );
    let only = std::env::var("PLANTED").ok();
    let mut missed = Vec::new();
    for (bug, scenario, checker, time_limit) in CASES {
        if only.as_deref().is_some_and(|o| o != *bug) {
            continue;
        }
        let mut caught = false;
        let mut tries = Vec::new();
        for seed in 1..=SEEDS {
            let run = common::run_scenario(scenario, seed, *time_limit, &bin, Some(bug));
            let fired = run.check_verdict(checker);
            eprintln!(
                "{bug} under {scenario}, seed {seed}: exit {} in {:.0?}, {checker} {fired:?}\n{}",
                run.code,
                run.elapsed,
                run.not_valid_checks()
            );
            tries.push(format!(
                "seed {seed}: exit {}, {checker} {fired:?}, {}",
                run.code,
                run.dir.display()
            ));
            if run.code == 1 && fired.as_deref() == Some("invalid") {
                caught = true;
                break;
            }
        }
        if !caught {
            missed.push(format!(
                "{bug} under {scenario} was not caught by {checker} in {SEEDS} runs: {}",
                tries.join("; ")
            ));
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}
