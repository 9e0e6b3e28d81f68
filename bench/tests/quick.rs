//! Keeps the benchmark working: runs `raftjob-bench --quick --tiny` (real raftjob and
//! etcd clusters on loopback, tiny counts) and checks that results.json has every
//! section with sane numbers, and that results.md was written.
//!
//! Needs `target/debug/raftjob` (`cargo build --bin raftjob`; `make test` builds it)
//! and etcd (the bench installs Debian's package when run as root). Skipped only when
//! etcd is missing and cannot be installed.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Exit code of the bench when etcd is missing and cannot be installed.
const EXIT_NO_ETCD: i32 = 3;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur}"))
}

/// p50 ≤ p99 ≤ max, all positive and below `limit_ms`, with samples.
fn sane_summary(v: &Value, path: &str, limit_ms: f64) {
    let n = num(v, &format!("{path}.n"));
    let (p50, p99, max) = (
        num(v, &format!("{path}.p50_ms")),
        num(v, &format!("{path}.p99_ms")),
        num(v, &format!("{path}.max_ms")),
    );
    assert!(n >= 1.0, "{path}: no samples");
    assert!(
        0.0 <= p50 && p50 <= p99 && p99 <= max && max < limit_ms,
        "{path}: p50 {p50}, p99 {p99}, max {max} (limit {limit_ms} ms)"
    );
}

#[test]
fn quick_tiny_bench_writes_every_section() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_raftjob-bench"));
    let raftjob = exe.parent().unwrap().join("raftjob");
    assert!(
        raftjob.is_file(),
        "{} is missing: run `cargo build --bin raftjob` first (make test does)",
        raftjob.display()
    );
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(&exe)
        .args(["--quick", "--tiny", "--out"])
        .arg(out.path())
        .status()
        .expect("the bench runs");
    if status.code() == Some(EXIT_NO_ETCD) {
        println!("skipped: etcd not installed and not root");
        return;
    }
    assert!(status.success(), "the bench failed: {status}");
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    for heading in [
        "## Disk: fsync",
        "## Replicated writes",
        "## End-to-end dispatch",
        "## Trigger lateness",
        "## Failover",
        "## Footprint",
    ] {
        assert!(md.contains(heading), "results.md lacks {heading:?}:\n{md}");
    }
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();

    assert!(num(&v, "meta.cores") >= 1.0);
    assert!(v["meta"]["etcd_version"]
        .as_str()
        .unwrap()
        .starts_with("3."));
    assert!(v["meta"]["raftjob_version"]
        .as_str()
        .unwrap()
        .contains("raftjob"));
    sane_summary(&v, "fsync.one_writer", 10_000.0);
    assert!(num(&v, "fsync.batches_per_sec_one_writer") > 0.0);

    let points = v["writes"]["points"].as_array().unwrap();
    let clients: Vec<u64> = points
        .iter()
        .map(|p| p["clients"].as_u64().unwrap())
        .collect();
    assert_eq!(clients, [1, 16, 64, 256]);
    for i in 0..points.len() {
        for kind in ["raftjob_create", "raftjob_run", "etcd_put"] {
            let p = format!("writes.points.{i}.{kind}");
            assert!(
                num(&v, &format!("{p}.ops_per_sec")) > 0.0,
                "{p}: no throughput"
            );
            assert_eq!(
                num(&v, &format!("{p}.errors")),
                0.0,
                "{p}: errors: {}",
                v["writes"]["points"][i][kind]
            );
            sane_summary(&v, &format!("{p}.latency"), 30_000.0);
        }
        assert!(num(&v, &format!("writes.points.{i}.ratio_create")) > 0.0);
    }

    let dispatch = v["dispatch"].as_array().unwrap();
    assert_eq!(dispatch.len(), 4, "http and ws, 2 and 4 workers");
    for (i, d) in dispatch.iter().enumerate() {
        assert_eq!(d["succeeded"], d["instances"], "every run succeeded: {d}");
        assert!(num(&v, &format!("dispatch.{i}.instances_per_sec")) > 0.0);
        sane_summary(&v, &format!("dispatch.{i}.run_to_succeeded"), 60_000.0);
    }

    let late = v["lateness"]["points"].as_array().unwrap();
    assert!(late.len() >= 2, "at least two job counts: {late:?}");
    for i in 0..late.len() {
        assert!(num(&v, &format!("lateness.points.{i}.instances")) > 0.0);
        sane_summary(
            &v,
            &format!("lateness.points.{i}.fire_to_dispatched"),
            30_000.0,
        );
        sane_summary(
            &v,
            &format!("lateness.points.{i}.fire_to_started"),
            30_000.0,
        );
    }

    for sys in ["raftjob", "etcd"] {
        assert_eq!(v["failover"][sys]["rounds"], 2);
        sane_summary(&v, &format!("failover.{sys}.new_leader"), 30_000.0);
        sane_summary(&v, &format!("failover.{sys}.first_write"), 30_000.0);
    }

    let rows = v["footprint"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "three states per system: {rows:?}");
    for r in rows {
        assert!(r["leader_rss_kib"].as_u64().unwrap() > 1000, "{r}");
        assert!(r["leader_disk_bytes"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["follower_rss_kib"].as_array().unwrap().len(), 2, "{r}");
    }
    assert!(rows[1]["jobs_or_keys"].as_u64().unwrap() > 0);
    assert!(rows[2]["instances"].as_u64().unwrap() > 0);
    assert_eq!(
        rows[4]["jobs_or_keys"], rows[1]["jobs_or_keys"],
        "etcd holds as many keys as jobs"
    );
}
