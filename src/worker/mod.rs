//! The worker runtime: what `raftjob worker` runs and what a user's program embeds.
//!
//! A worker finds the leader through any server's transport port, registers its app,
//! keeps the leases of its attempts alive with heartbeats, runs dispatched attempts
//! with [`processor`]s, and reports their progress. It fences every dispatch: it keeps
//! the highest Raft term seen per cluster id and refuses dispatches from lower terms
//! and second dispatches of an attempt it already holds. An attempt whose lease it
//! cannot renew is killed by the worker itself, before the leader may re-dispatch it.
//!
//! ```no_run
//! use raftjob::worker::{Worker, WorkerConfig};
//! # async fn f() -> Result<(), raftjob::worker::WorkerError> {
//! let cfg = WorkerConfig::new("billing", "rjw_...", ["127.0.0.1:10086"], "ws");
//! let mut worker = Worker::new(cfg)?;
//! // worker.register("my-processor", MyProcessor);
//! worker.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod config;
mod endpoint;
mod runtime;
mod transport;

pub mod processor;
pub mod record;

pub use config::{WorkerArgs, WorkerConfig};
pub use runtime::{Worker, WorkerError};
