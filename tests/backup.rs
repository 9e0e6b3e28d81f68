//! Back up one follower of a running cluster, lose every node, and restore the whole
//! cluster from that one backup (docs/operations.md, "Restart, upgrade and back up one
//! node at a time"). Real server and worker processes on loopback.
//! Run one at a time (`--test-threads=1`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(30);
const APP: &str = "vault";

async fn create(c: &TestCluster, name: &str) -> u64 {
    let spec = api_job(
        APP,
        name,
        json!({"type": "shell", "command": "echo restored"}),
    );
    c.client().create_job(&spec).await.unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// The names of the app's jobs, read linearizably through one node.
async fn job_names(n: &TestNode) -> BTreeSet<String> {
    let v = n
        .client()
        .get(&format!("/api/v1/jobs?app={APP}&consistency=linearizable"))
        .await
        .unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect()
}

async fn term(c: &TestCluster) -> u64 {
    eventually(READY, "the cluster view", || async {
        c.client().cluster().await.ok()?["term"].as_u64()
    })
    .await
}

/// Stops the leader cleanly, waits for another, and starts it again: one more term.
async fn change_leader(c: &mut TestCluster) {
    let old = c.leader().await;
    assert_eq!(c.node(old).stop_status(READY), Some(0), "clean stop");
    let others: Vec<u64> = c.running_ids();
    let c2: &TestCluster = c;
    // The others keep naming the stopped leader until their election timeout.
    eventually(READY, "a new leader", || async {
        let l = c2.wait_ready(&others, READY).await;
        (l != old).then_some(())
    })
    .await;
    c.node(old).start();
    c.wait_ready(&[1, 2, 3], READY).await;
}

#[tokio::test]
async fn whole_cluster_restores_from_one_followers_backup() {
    let mut c = TestCluster::start_with(3, FAST_WORKERS);
    let leader = c.wait_ready(&[1, 2, 3], READY).await;
    let token = app_token(&c, APP).await;

    // Jobs A, before the backup.
    let mut a = Vec::new();
    for i in 0..5 {
        let name = format!("a{i}");
        a.push((create(&c, &name).await, name));
    }

    // Backup: a follower that has applied every A job (a linearizable read through it
    // waits for its own apply), stopped cleanly, its data directory copied, started.
    let f = c.nodes.iter().find(|n| n.id != leader).unwrap().id;
    let names_a: BTreeSet<String> = a.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(job_names(c.node(f)).await, names_a);
    let backup_term = term(&c).await;
    let t = Instant::now();
    assert_eq!(
        c.node(f).stop_status(READY),
        Some(0),
        "the follower stops cleanly"
    );
    let backup = tempfile::tempdir().unwrap();
    let src = c.node(f).data_dir.clone();
    copy_dir(&src, backup.path()).unwrap();
    c.node(f).start();
    c.wait_ready(&[1, 2, 3], READY).await;
    eprintln!(
        "backup of follower {f} (leader {leader}, term {backup_term}): stop, copy, start, ready in {:?}",
        t.elapsed()
    );

    // Two leader changes after the backup, so the lost cluster's term is above any
    // term the restored one starts from; a worker then learns that higher term.
    change_leader(&mut c).await;
    change_leader(&mut c).await;
    let lost_term = term(&c).await;
    let mut old_worker = TestWorker::start(&c, APP, &token, "ws", "w-before-loss", &[]);
    wait_workers_live(&c, APP, 1).await;

    // Jobs B, after the backup.
    let mut b = Vec::new();
    for i in 0..3 {
        let name = format!("b{i}");
        b.push((create(&c, &name).await, name));
    }

    // Every node is lost.
    for n in &mut c.nodes {
        n.kill();
    }
    let t = Instant::now();
    for n in &mut c.nodes {
        std::fs::remove_dir_all(&n.data_dir).unwrap();
        copy_dir(backup.path(), &n.data_dir).unwrap();
        n.start();
    }
    let restored_leader = c.wait_ready(&[1, 2, 3], READY).await;
    let restored_term = term(&c).await;
    eprintln!(
        "restore: copy into 3 data dirs, start, ready in {:?}; leader {restored_leader}, term {restored_term} (backup term {backup_term}, lost cluster's term {lost_term})",
        t.elapsed()
    );

    // Every A job, through every node (linearizable reads); no B job.
    for n in &c.nodes {
        for (id, name) in &a {
            let got = n.client().get_job(*id).await.unwrap();
            assert_eq!(got["name"], name.as_str(), "node {} job {id}: {got}", n.id);
        }
        assert_eq!(job_names(n).await, names_a, "node {}", n.id);
        for (id, name) in &b {
            // Before any new write: ids after the backup point are handed out again.
            let e = n.client().get_job(*id).await.unwrap_err();
            assert_eq!(
                e.status(),
                Some(404),
                "node {} job {name} ({id}): {e}",
                n.id
            );
        }
    }

    // The restored cluster takes writes.
    let t = Instant::now();
    let new = create(&c, "after-restore").await;
    eprintln!("first write after the restore took {:?}", t.elapsed());
    assert!(
        new <= b[0].0,
        "ids continue from the backup point: {new} vs {b:?}"
    );
    for n in &c.nodes {
        assert_eq!(
            n.client().get_job(new).await.unwrap()["name"],
            "after-restore"
        );
    }

    // Every replica at one applied index holds the same state.
    let digests = eventually(READY, "all nodes at one applied index", || async {
        let mut all: Vec<Value> = Vec::new();
        for n in &c.nodes {
            all.push(n.client().get("/api/v1/debug/state-digest").await.ok()?);
        }
        let first = all[0]["applied_index"].as_u64()?;
        all.iter()
            .all(|d| d["applied_index"].as_u64() == Some(first))
            .then_some(all)
    })
    .await;
    for d in &digests[1..] {
        assert_eq!(d["digest"], digests[0]["digest"], "{digests:?}");
    }
    eprintln!(
        "state digests agree at applied index {}",
        digests[0]["applied_index"]
    );

    // A worker that lived through the loss remembers the lost cluster's higher term and
    // refuses the restored cluster's dispatches until it is restarted.
    let (run_id, run_name) = a[0].clone();
    if restored_term < lost_term {
        wait_workers_live(&c, APP, 1).await;
        let inst = wait_terminal(&c, run_job(&c, run_id, json!(null)).await, RUN).await;
        assert_eq!(inst["status"], "failed", "{inst}");
        let result = inst["result"].as_str().unwrap_or_default();
        assert!(
            result.starts_with("no worker available") && result.contains("stale term"),
            "{inst}"
        );
        eprintln!("the old worker refused: {result}");
    } else {
        eprintln!(
            "restored term {restored_term} >= lost term {lost_term}: the old worker's refusal is not exercised"
        );
    }
    old_worker.kill();

    // A freshly started worker runs a restored job.
    let _fresh = TestWorker::start(&c, APP, &token, "ws", "w-after-restore", &[]);
    let t = Instant::now();
    let inst = eventually(RUN, "a run to succeed on the fresh worker", || async {
        // The old worker's registration lingers until it is forgotten; a dispatch to it
        // fails, so run again until the fresh worker takes one.
        let inst = wait_terminal(&c, run_job(&c, run_id, json!(null)).await, RUN).await;
        (inst["status"] == "succeeded").then_some(inst)
    })
    .await;
    assert_eq!(
        inst["attempts"].as_array().unwrap().last().unwrap()["worker"],
        "vault/w-after-restore",
        "{inst}"
    );
    assert!(
        inst["result"].as_str().unwrap().contains("restored"),
        "{run_name}: {inst}"
    );
    eprintln!(
        "fresh worker: run succeeded {:?} after its start",
        t.elapsed()
    );
}
