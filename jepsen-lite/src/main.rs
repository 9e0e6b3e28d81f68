//! `jepsen-lite`: run a fault-injection scenario against a real three-node raftjob
//! cluster and check the recorded history (`run`), list the scenarios (`list`), or
//! re-check a recorded run (`check DIR`). Exit code: 0 valid, 1 invalid, 2 unknown
//! (and 2 when the harness itself failed, since nothing was shown either way).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen_lite::run::{run, RunConfig};
use jepsen_lite::scenario::{SCENARIOS, SMOKE};

#[derive(Parser)]
#[command(
    name = "jepsen-lite",
    about = "Fault injection and history checkers for raftjob"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario and check it.
    Run {
        /// The scenario (see `jepsen-lite list`).
        #[arg(long)]
        scenario: String,
        /// Seeds the workload, the fault plan and the fault targets.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of workload and faults before heal (the run takes about 25 s more).
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Where the recorded run and the report go (created; earlier results removed).
        #[arg(long)]
        out: PathBuf,
        /// The raftjob binary (default: `raftjob`, or `raftjob-planted` with
        /// --planted-bug, next to this executable).
        #[arg(long)]
        raftjob_bin: Option<PathBuf>,
        /// Run the planted-bug build with RAFTJOB_PLANTED_BUG=NAME (build it with
        /// `cargo build --bin raftjob-planted --features planted-bugs`).
        #[arg(long)]
        planted_bug: Option<String>,
    },
    /// List the scenarios, one line each (`*` marks the smoke selection).
    List {
        /// Only the names, one per line (for scripts).
        #[arg(long)]
        names: bool,
        /// Only the smoke selection.
        #[arg(long)]
        smoke: bool,
    },
    /// Re-check a recorded run and rewrite its results.json and summary.md.
    Check {
        /// The run's output directory.
        dir: PathBuf,
    },
    /// A table of every run under ROOT (each results.json): verdict, faults,
    /// operations and the checks that were not valid; then each checker's tally.
    /// Exit code 1 unless every run was valid.
    Table { root: PathBuf },
}

/// The binary next to this executable (`target/debug/`), whether it runs from
/// `target/debug/jepsen-lite` or from a test in `target/debug/deps/`.
fn default_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Checks the recorded run in `dir`, writes results.json and summary.md, prints the
/// summary, and returns the exit code of the verdict.
fn check(dir: &Path) -> anyhow::Result<i32> {
    let report = jepsen_lite::checker::check_dir(dir)?;
    jepsen_lite::report::write_outputs(dir, &report)?;
    println!("{}", jepsen_lite::report::summary(&report));
    Ok(report.exit_code())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::List { names, smoke } => {
            for s in SCENARIOS
                .iter()
                .filter(|s| !smoke || SMOKE.contains(&s.name))
            {
                if names {
                    println!("{}", s.name);
                } else {
                    let mark = if SMOKE.contains(&s.name) { "*" } else { " " };
                    println!("{mark} {:<20} {}", s.name, s.about);
                }
            }
            0
        }
        Cmd::Table { root } => match jepsen_lite::table::print_table(&root) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("jepsen-lite: {e:#}");
                2
            }
        },
        Cmd::Check { dir } => match check(&dir) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("jepsen-lite: cannot check {}: {e:#}", dir.display());
                2
            }
        },
        Cmd::Run {
            scenario,
            seed,
            time_limit,
            out,
            raftjob_bin,
            planted_bug,
        } => {
            let bin = raftjob_bin.unwrap_or_else(|| {
                default_bin(if planted_bug.is_some() {
                    "raftjob-planted"
                } else {
                    "raftjob"
                })
            });
            let cfg = RunConfig {
                scenario,
                seed,
                time_limit: Duration::from_secs(time_limit),
                out: out.clone(),
                raftjob_bin: bin,
                planted_bug,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime starts");
            // Ctrl-C ends the run; the process guards kill every child on the way out.
            let outcome = rt.block_on(async {
                tokio::select! {
                    r = run(&cfg) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                }
            });
            // Dropping the runtime (not leaking it) lets the process guards run.
            drop(rt);
            match outcome {
                Ok(()) => match check(&out) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("jepsen-lite: cannot check {}: {e:#}", out.display());
                        2
                    }
                },
                Err(e) => {
                    eprintln!("jepsen-lite: the run failed: {e:#}");
                    2
                }
            }
        }
    };
    ExitCode::from(code as u8)
}
