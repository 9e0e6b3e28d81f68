//! The smoke selection (`jepsen_lite::scenario::SMOKE`): each scenario runs against a
//! real three-node cluster for a short time limit and must be checked valid. `make
//! test` runs it (through `cargo test --workspace --all-targets`).

mod common;

use jepsen_lite::scenario::SMOKE;

#[test]
fn smoke_selection_is_valid() {
    let raftjob = common::build_bin(&["--bin", "raftjob"], "raftjob");
    let mut failures = Vec::new();
    for scenario in SMOKE {
        let run = common::run_scenario(scenario, 1, common::SMOKE_TIME_LIMIT, &raftjob, None);
        eprintln!("{scenario}: exit {} in {:.0?}", run.code, run.elapsed);
        let verdict = run.results["verdict"]
            .as_str()
            .unwrap_or("missing")
            .to_string();
        if run.code != 0 || verdict != "valid" {
            failures.push(format!(
                "{scenario}: exit code {}, verdict {verdict}; see {}\n{}\n{}",
                run.code,
                run.dir.display(),
                run.not_valid_checks(),
                run.summary
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
