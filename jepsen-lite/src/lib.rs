//! jepsen-lite: a fault-injection harness and history checkers for raftjob.
//!
//! - [`history`]: the recorded run (the only thing the harness and the checkers share).
//! - [`checker`]: one checker per guarantee in `DESIGN.md`, each valid / invalid / unknown.
//! - [`report`]: `results.json` and `summary.md`.
//! - The harness: [`run`] (one run, start to final reads), [`cluster`] (processes),
//!   [`proxy`] (per-link TCP proxies), [`nemesis`] (faults), [`workload`] (the
//!   recorded client operations), [`scenario`] (fault plans), [`recorder`], and
//!   [`table`] (verdicts of many runs).

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod table;
pub mod workload;

pub use run::progress;
