//! The worker event record (`raftjob worker --record FILE`): one JSON line per
//! dispatch received (accepted or refused, with why) and per execution start and end,
//! each with the dispatch's fencing token. jepsen-lite reads these files to check
//! that the terms a worker accepts never decrease and that no attempt runs on two
//! workers at once, from the workers' own point of view.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds ([`mono_ns`]): on Linux one clock for
//! every process on the machine, so records of several workers and of the harness
//! can be ordered against each other.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Nanoseconds of the machine-wide monotonic clock.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One line of a worker record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEvent {
    /// The worker's name (unique within its app).
    pub worker: String,
    pub kind: WorkerEventKind,
    pub instance_id: u64,
    /// The attempt number the dispatch carried.
    pub attempt: u32,
    /// The fencing token `(term, index)` of the dispatch.
    pub term: u64,
    pub index: u64,
    pub time_ns: u64,
    /// Why a dispatch was refused, or how an execution ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerEventKind {
    /// A dispatch arrived and the worker accepted it.
    DispatchAccepted,
    /// A dispatch arrived and the worker refused it (stale term, duplicate attempt...).
    DispatchRefused,
    /// The processor began executing the attempt.
    Start,
    /// The processor finished, failed, or was killed (detail says which).
    End,
}

/// Appends [`WorkerEvent`]s to a file, one flushed line each, so a killed worker
/// leaves every event it saw before it died.
#[derive(Debug)]
pub struct Recorder {
    worker: String,
    file: Mutex<std::fs::File>,
}

impl Recorder {
    /// Opens `path` for appending (creating it).
    pub fn open(path: &Path, worker: &str) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            worker: worker.to_string(),
            file: Mutex::new(file),
        })
    }

    /// Records one event now. A write error is logged, not fatal: the record is a
    /// test aid and must not change how the worker behaves.
    pub fn record(
        &self,
        kind: WorkerEventKind,
        instance_id: u64,
        attempt: u32,
        token: crate::state::FencingToken,
        detail: Option<String>,
    ) {
        let mut file = self.file.lock().expect("record lock");
        // Stamped under the lock, so the lines of one file are in time order.
        let event = WorkerEvent {
            worker: self.worker.clone(),
            kind,
            instance_id,
            attempt,
            term: token.term,
            index: token.index,
            time_ns: mono_ns(),
            detail,
        };
        let mut line = serde_json::to_vec(&event).expect("worker events serialise");
        line.push(b'\n');
        // One write of the whole line to an O_APPEND file: lines never interleave.
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::warn!(error = %e, "Cannot write the worker record.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_shape_jepsen_lite_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let r = Recorder::open(&path, "w1").unwrap();
        let token = crate::state::FencingToken { term: 3, index: 17 };
        r.record(WorkerEventKind::DispatchAccepted, 5, 1, token, None);
        r.record(
            WorkerEventKind::DispatchRefused,
            5,
            2,
            token,
            Some("stale term 3 (highest seen 4)".into()),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let first = lines[0].as_object().unwrap();
        let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempt",
                "index",
                "instance_id",
                "kind",
                "term",
                "time_ns",
                "worker"
            ]
        );
        assert_eq!(first["kind"], "dispatch_accepted");
        assert_eq!(first["term"], 3);
        assert_eq!(first["index"], 17);
        assert_eq!(lines[1]["kind"], "dispatch_refused");
        assert_eq!(lines[1]["detail"], "stale term 3 (highest seen 4)");
        let back: WorkerEvent = serde_json::from_value(lines[1].clone()).unwrap();
        assert_eq!(back.kind, WorkerEventKind::DispatchRefused);
        assert!(back.time_ns >= lines[0]["time_ns"].as_u64().unwrap());
    }
}
