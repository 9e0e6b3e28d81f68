//! Shared by the jepsen-lite tests: build a raftjob binary with the same cargo and
//! target directory, and run one scenario through the `jepsen-lite` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The time limit of each smoke run, in seconds (the run takes about 20 s more).
pub const SMOKE_TIME_LIMIT: u64 = 20;

/// `target/debug/`, where this test's `jepsen-lite` binary was built.
pub fn target_debug() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_jepsen-lite"))
        .parent()
        .expect("target/debug")
        .to_path_buf()
}

/// Runs `cargo build ARGS` in the workspace with the cargo that runs this test (same
/// profile, same target directory) and returns `target/debug/NAME`. Quick when the
/// binary is fresh; `make test` has built `raftjob` already.
pub fn build_bin(args: &[&str], name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let status = Command::new(cargo)
        .arg("build")
        .args(args)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build {args:?} failed");
    let bin = target_debug().join(name);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// One finished run.
pub struct RunOutcome {
    pub code: i32,
    pub elapsed: Duration,
    pub dir: PathBuf,
    /// results.json (`Null` if the run wrote none).
    pub results: Value,
    /// What the binary printed on stdout (the summary).
    pub summary: String,
}

impl RunOutcome {
    /// The checks that are not valid, one line each.
    pub fn not_valid_checks(&self) -> String {
        self.results["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["verdict"] != "valid")
            .map(|c| format!("  {} {}: {}", c["name"], c["verdict"], c["summary"]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The verdict of the named check.
    pub fn check_verdict(&self, name: &str) -> Option<String> {
        self.results["checks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["verdict"].as_str().map(String::from))
    }
}

/// Runs `jepsen-lite run` for one scenario into `target/tmp/jepsen-lite/...`; the
/// harness's progress lines go to `progress.log` there.
pub fn run_scenario(
    scenario: &str,
    seed: u64,
    time_limit: u64,
    raftjob_bin: &Path,
    planted_bug: Option<&str>,
) -> RunOutcome {
    let name = match planted_bug {
        Some(b) => format!("{scenario}-{seed}-{b}"),
        None => format!("{scenario}-{seed}"),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("jepsen-lite")
        .join(name);
    std::fs::create_dir_all(&dir).expect("run dir");
    let log = std::fs::File::create(dir.join("progress.log")).expect("progress.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jepsen-lite"));
    cmd.args(["run", "--scenario", scenario])
        .args(["--seed", &seed.to_string()])
        .args(["--time-limit", &time_limit.to_string()])
        .arg("--out")
        .arg(&dir)
        .arg("--raftjob-bin")
        .arg(raftjob_bin)
        .stdin(Stdio::null())
        .stderr(log);
    if let Some(b) = planted_bug {
        cmd.args(["--planted-bug", b]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("jepsen-lite runs");
    let results = std::fs::read_to_string(dir.join("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let code = out.status.code().unwrap_or(-1);
    if results.is_null() {
        let progress = std::fs::read_to_string(dir.join("progress.log")).unwrap_or_default();
        eprintln!("{scenario}: no results.json (exit {code}); progress:\n{progress}");
    }
    RunOutcome {
        code,
        elapsed: started.elapsed(),
        dir,
        results,
        summary: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}
