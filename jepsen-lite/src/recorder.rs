//! Writes `history.jsonl` as events happen. The time is taken under the lock, so
//! the file's order is the order of the timestamps.

use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use crate::history::{
    mono_ns, Event, JsonlWriter, NemesisEvent, NemesisPhase, Observation, Op, OpFn, OpKind,
};

pub struct Recorder {
    out: Mutex<JsonlWriter>,
}

/// Arguments of one operation record.
pub struct OpRecord<'a> {
    pub process: u64,
    pub kind: OpKind,
    pub f: OpFn,
    pub value: Value,
    pub node: Option<u64>,
    pub request_id: Option<&'a str>,
    pub error: Option<String>,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: Mutex::new(JsonlWriter::create(path)?),
        })
    }

    fn write(&self, make: impl FnOnce(u64) -> Event) -> u64 {
        let mut out = self.out.lock().expect("history lock");
        let t = mono_ns();
        if let Err(e) = out.write(&make(t)) {
            eprintln!("jepsen-lite: cannot write history.jsonl: {e}");
        }
        t
    }

    pub fn op(&self, r: OpRecord<'_>) -> u64 {
        self.write(|time_ns| {
            Event::Op(Op {
                process: r.process,
                kind: r.kind,
                f: r.f,
                value: r.value,
                time_ns,
                node: r.node,
                request_id: r.request_id.map(String::from),
                error: r.error,
            })
        })
    }

    pub fn nemesis(&self, fault: &str, phase: NemesisPhase, detail: Value) -> u64 {
        self.write(|time_ns| {
            Event::Nemesis(NemesisEvent {
                fault: fault.to_string(),
                phase,
                detail,
                time_ns,
            })
        })
    }

    pub fn observe(
        &self,
        node: u64,
        leader: Option<u64>,
        term: Option<u64>,
        error: Option<String>,
    ) -> u64 {
        self.write(|time_ns| {
            Event::Observe(Observation {
                node,
                leader,
                term,
                error,
                time_ns,
            })
        })
    }
}
