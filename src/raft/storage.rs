//! Opens the node's RocksDB database: one DB, shared by the log store and the state
//! machine store, with a column family per concern.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

/// Raft log entries, keyed by big-endian index so iteration order is log order.
pub const CF_LOGS: &str = "logs";
/// Vote, committed log id and last purged log id.
pub const CF_RAFT_META: &str = "raft_meta";
/// State machine records (one per entity) plus its applied log id and membership.
pub const CF_SM: &str = "sm";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot open RocksDB at {path}: {source} (is another raftjob using this data directory?)"
    )]
    Open {
        path: String,
        source: rocksdb::Error,
    },
}

pub fn open_db(dir: &Path) -> Result<Arc<DB>, OpenError> {
    let db_dir = dir.join("db");
    std::fs::create_dir_all(&db_dir).map_err(|source| OpenError::CreateDir {
        path: db_dir.display().to_string(),
        source,
    })?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOGS, CF_RAFT_META, CF_SM]
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, &db_dir, cfs).map_err(|source| OpenError::Open {
        path: db_dir.display().to_string(),
        source,
    })?;
    Ok(Arc::new(db))
}

pub fn be_index(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}
