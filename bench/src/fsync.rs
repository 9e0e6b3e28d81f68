//! The disk's fsync latency, measured where the data dirs are: every replicated write
//! waits for at least one fsync (the leader's log append, a follower's in parallel), so
//! 1 / fsync latency is the most batches per second any Raft system here can commit.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::load::Summary;

#[derive(Debug, Clone, Serialize)]
pub struct FsyncResult {
    /// 4 KiB appends, each followed by fdatasync, one writer.
    pub one_writer: Summary,
    /// Three writers at once on three files (three nodes sharing the disk).
    pub three_writers: Summary,
    /// 1000 / mean of one writer: fsyncs per second, back to back.
    pub batches_per_sec_one_writer: f64,
    /// Fsyncs per second per writer when three writers (nodes) fsync at once.
    pub batches_per_sec_three_writers: f64,
}

fn writer(path: &Path, n: usize) -> Result<Vec<f64>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let block = vec![0x5au8; 4096];
    let mut ms = Vec::with_capacity(n);
    // The first rounds (file creation, cold journal) are not measured.
    for round in 0..n + 10 {
        let s = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        if round >= 10 {
            ms.push(s.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(f);
    let _ = std::fs::remove_file(path);
    Ok(ms)
}

/// `n` write+fdatasync rounds with one writer (half before, half after), and `n` per
/// writer with three at once, in `dir`.
pub fn measure(dir: &Path, n: usize) -> Result<FsyncResult> {
    std::fs::create_dir_all(dir)?;
    let mut one = writer(&dir.join("fsync-0"), n / 2)?;
    let handles: Vec<_> = (1..=3)
        .map(|i| {
            let p = dir.join(format!("fsync-{i}"));
            std::thread::spawn(move || writer(&p, n))
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().expect("fsync thread")?);
    }
    let three = Summary::of_ms(all);
    // One writer again after the three: the disk's state drifts (other work on the
    // machine), so one writer is sampled before and after.
    one.extend(writer(&dir.join("fsync-0"), n - n / 2)?);
    let one = Summary::of_ms(one);
    Ok(FsyncResult {
        batches_per_sec_one_writer: 1000.0 / one.mean_ms.max(1e-6),
        batches_per_sec_three_writers: 1000.0 / three.mean_ms.max(1e-6),
        one_writer: one,
        three_writers: three,
    })
}
