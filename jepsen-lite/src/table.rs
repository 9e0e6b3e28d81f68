//! `jepsen-lite table ROOT`: one line per recorded run under ROOT (every
//! `results.json`), then how often each checker said valid, invalid or unknown. It
//! reads results.json as plain JSON, so it also reads runs of older builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn find_results(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            // Node data directories hold no results; skip them quickly.
            if p.file_name()
                .is_some_and(|n| n == "nodes" || n == "workers")
            {
                continue;
            }
            find_results(&p, out);
        } else if p.file_name().is_some_and(|n| n == "results.json") {
            out.push(p);
        }
    }
}

fn sum_ops(r: &Value, key: &str) -> u64 {
    r["stats"]["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| o[key].as_u64().unwrap_or(0))
        .sum()
}

/// Prints the table as Markdown; returns whether every run was valid.
pub fn print_table(root: &Path) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    find_results(root, &mut files);
    if files.is_empty() {
        anyhow::bail!("no results.json under {}", root.display());
    }
    println!("| scenario | seed | verdict | faults injected (failed) | ops ok / fail / info | longest leaderless s | not valid |");
    println!("|---|---|---|---|---|---|---|");
    let mut tally: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut verdicts = [0usize; 3];
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let r: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                println!("| {} | | unreadable: {e} | | | | |", f.display());
                continue;
            }
        };
        let faults = r["stats"]["faults"].as_array().cloned().unwrap_or_default();
        let failed = faults.iter().filter(|f| f["failed"] == true).count();
        let mut not_valid = Vec::new();
        for c in r["checks"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("?").to_string();
            let v = c["verdict"].as_str().unwrap_or("unknown");
            let slot = match v {
                "valid" => 0,
                "invalid" => 1,
                _ => 2,
            };
            tally.entry(name.clone()).or_default()[slot] += 1;
            if slot != 0 {
                not_valid.push(format!("{name} ({v})"));
            }
        }
        let verdict = r["verdict"].as_str().unwrap_or("unknown");
        verdicts[match verdict {
            "valid" => 0,
            "invalid" => 1,
            _ => 2,
        }] += 1;
        let leaderless = r["stats"]["longest_leaderless"]["duration_ms"]
            .as_f64()
            .map_or("-".to_string(), |ms| format!("{:.1}", ms / 1000.0));
        println!(
            "| {} | {} | {} | {} ({}) | {} / {} / {} | {} | {} |",
            r["scenario"].as_str().unwrap_or("?"),
            r["seed"],
            verdict,
            faults.len() - failed,
            failed,
            sum_ops(&r, "ok"),
            sum_ops(&r, "fail"),
            sum_ops(&r, "info"),
            leaderless,
            if not_valid.is_empty() {
                "-".to_string()
            } else {
                not_valid.join(", ")
            }
        );
    }
    println!();
    println!(
        "{} runs: {} valid, {} invalid, {} unknown",
        files.len(),
        verdicts[0],
        verdicts[1],
        verdicts[2]
    );
    println!();
    println!("| checker | valid | invalid | unknown |");
    println!("|---|---|---|---|");
    for (name, [v, i, u]) in tally {
        println!("| {name} | {v} | {i} | {u} |");
    }
    Ok(verdicts[1] == 0 && verdicts[2] == 0)
}
