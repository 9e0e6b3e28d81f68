//! A run's outputs: `results.json` (the whole [`Report`], for tools) and
//! `summary.md` (one page for a person who did not write the checkers).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::checker::{Report, Verdict};

/// Writes `results.json` and `summary.md` into `dir`.
pub fn write_outputs(dir: &Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("results.json"), json + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write results.json in {}: {e}", dir.display()))?;
    std::fs::write(dir.join("summary.md"), summary(report))
        .map_err(|e| anyhow::anyhow!("cannot write summary.md in {}: {e}", dir.display()))?;
    Ok(())
}

fn secs(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn opt_secs(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), secs)
}

/// A table cell: one line, no pipes.
fn cell(s: &str) -> String {
    let one_line = s.replace('\n', " ").replace('|', "\\|");
    if one_line.chars().count() > 160 {
        let cut: String = one_line.chars().take(157).collect();
        format!("{cut}...")
    } else {
        one_line
    }
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Valid => "VALID",
        Verdict::Invalid => "INVALID",
        Verdict::Unknown => "UNKNOWN",
    }
}

/// The `summary.md` text.
pub fn summary(r: &Report) -> String {
    let s = &r.stats;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# jepsen-lite: `{}`, seed {} — **{}**\n",
        r.scenario,
        r.seed,
        verdict_word(r.verdict)
    );
    let _ = writeln!(
        out,
        "Exit code {} (0 valid, 1 invalid, 2 unknown). The run lasted {} s; the faults healed at {} s. \
         Times below are seconds since the run started.\n",
        r.exit_code(),
        secs(s.duration_ms),
        secs(s.healed_at_ms)
    );
    let _ = writeln!(
        out,
        "- **valid**: the history shows the guarantee held.\n\
         - **invalid**: the history shows it was broken; the events are in `results.json` under `checks[].offending`.\n\
         - **unknown**: the history cannot decide (an outcome-unknown write, a read taken too early, a fault that \
         never happened); the run proves nothing for that guarantee.\n"
    );

    let _ = writeln!(out, "## Checkers\n");
    let _ = writeln!(out, "| checker | verdict | reason |\n|---|---|---|");
    for c in &r.checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            c.name,
            c.verdict.as_str(),
            cell(&c.summary)
        );
    }
    let bad: Vec<_> = r
        .checks
        .iter()
        .filter(|c| c.verdict != Verdict::Valid && !c.offending.is_empty())
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(out, "\nFirst problems (all of them in `results.json`):\n");
        for c in bad {
            for o in c.offending.iter().take(3) {
                let problem = o.get("problem").and_then(Value::as_str).unwrap_or("?");
                let n = o
                    .get("events")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let _ = writeln!(out, "- `{}`: {} ({n} events)", c.name, cell(problem));
            }
        }
    }

    let _ = writeln!(out, "\n## Faults injected\n");
    if s.faults.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(
            out,
            "| fault | start | end | duration (s) | detail |\n|---|---|---|---|---|"
        );
        for f in &s.faults {
            let end = if f.failed {
                "FAILED".to_string()
            } else {
                opt_secs(f.end_ms)
            };
            let detail = if f.detail.is_null() {
                String::new()
            } else {
                f.detail.to_string()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                f.fault,
                opt_secs(f.start_ms),
                end,
                opt_secs(f.duration_ms),
                cell(&detail)
            );
        }
    }

    let _ = writeln!(out, "\n## Operations by outcome\n");
    let _ = writeln!(
        out,
        "ok: happened. fail: definitely did not happen. info: outcome unknown (timeout, cut \
         connection). pending: never completed.\n"
    );
    let _ = writeln!(
        out,
        "| operation | ok | fail | info | pending | total |\n|---|---|---|---|---|---|"
    );
    let (mut ok, mut fail, mut info, mut pending) = (0, 0, 0, 0);
    for c in &s.ops {
        let f = serde_json::to_value(c.f)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {f} | {} | {} | {} | {} | {} |",
            c.ok,
            c.fail,
            c.info,
            c.pending,
            c.ok + c.fail + c.info + c.pending
        );
        ok += c.ok;
        fail += c.fail;
        info += c.info;
        pending += c.pending;
    }
    let _ = writeln!(
        out,
        "| **all** | {ok} | {fail} | {info} | {pending} | {} |",
        ok + fail + info + pending
    );

    let _ = writeln!(out, "\n## Availability\n");
    match s.longest_gaps.first() {
        Some(g) => {
            let _ = writeln!(
                out,
                "Longest stretches with no successful operation on any node: {}.\n",
                s.longest_gaps
                    .iter()
                    .map(|g| format!(
                        "{} s ({} to {})",
                        secs(g.duration_ms),
                        secs(g.from_ms),
                        secs(g.to_ms)
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let _ = g;
        }
        None => {
            let _ = writeln!(out, "No operations were recorded.\n");
        }
    }
    if !s.longest_gap_per_node.is_empty() {
        let _ = writeln!(
            out,
            "| node (requests sent to it) | longest stretch with no ok | from | to |\n|---|---|---|---|"
        );
        for (node, g) in &s.longest_gap_per_node {
            let _ = writeln!(
                out,
                "| n{node} | {} s | {} | {} |",
                secs(g.duration_ms),
                secs(g.from_ms),
                secs(g.to_ms)
            );
        }
    }
    let _ = writeln!(out);
    match s.longest_leaderless {
        Some(g) => {
            let _ = writeln!(
                out,
                "Longest time without a leader (no node named a leader that agreed it was leader; \
                 from {} node observations, the first election excluded): {} s ({} to {}).",
                s.observations,
                secs(g.duration_ms),
                secs(g.from_ms),
                secs(g.to_ms)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Longest time without a leader: none measured ({} observations).",
                s.observations
            );
        }
    }
    let _ = writeln!(
        out,
        "\nFinal state: {} jobs, {} instances; {} worker events.",
        s.jobs_final, s.instances_final, s.worker_events
    );
    if let Some(c) = &s.wall_clock {
        let source = if c.samples == 0 {
            "from run.json".to_string()
        } else {
            format!("estimated from {} acknowledged creates", c.samples)
        };
        let _ = writeln!(
            out,
            "Harness clock to cluster wall clock: {source}, ±{} ms.",
            c.uncertainty_ms
        );
    }
    out
}
