//! raftjob: a highly available distributed job scheduler on a Raft group.
//!
//! - [`state`]: the pure, deterministic state machine (model, commands, apply).
//! - [`raft`]: openraft's type config, the RocksDB log and state machine stores, the
//!   Raft network over the cluster port.
//! - [`server`]: a server node and its listeners (api, cluster, worker transports).
//! - [`schedule`]: cron and time-zone arithmetic shared by validation and scheduling.
//! - [`config`]: the one validated server configuration.
//! - [`client`]: a Rust client of the HTTP API, used by the CLI and the tests.
//! - [`cli`]: the operator CLI (`raftjob cluster|job|instance|app`, `raftjob worker list`).
//! - [`healthcheck`]: `raftjob healthcheck`, the container health probe.
//! - [`entry`]: the `raftjob` command's `main`, shared by its binaries.
//! - [`planted`]: test-only planted bugs (`planted-bugs` feature) for jepsen-lite.

pub mod cli;
pub mod client;
pub mod config;
pub mod entry;
pub mod healthcheck;
pub mod planted;
pub mod protocol;
pub mod raft;
pub mod schedule;
pub mod server;
pub mod state;
pub mod tls;
pub mod worker;
