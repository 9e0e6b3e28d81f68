//! The Raft log store on RocksDB.
//!
//! Durability: `append` and `save_vote` write with `sync = true`, so an entry or a
//! vote is on disk before openraft is told so; `purge` deletes the range and records
//! the last purged log id in one atomic batch.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::storage::{be_index, CF_LOGS, CF_RAFT_META};
use super::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn cf_logs(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_LOGS)
            .expect("logs column family exists")
    }

    fn cf_meta(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_RAFT_META)
            .expect("raft_meta column family exists")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageIOError<u64>> {
        let bytes = self
            .db
            .get_cf(self.cf_meta(), key)
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| StorageIOError::read(&e)))
            .transpose()
    }

    fn put_meta_sync<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let bytes = serde_json::to_vec(value).expect("raft metadata serialises");
        self.db.put_cf_opt(self.cf_meta(), key, bytes, &opts)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageIOError<u64>> {
        let mut iter = self.db.iterator_cf(self.cf_logs(), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(Err(e)) => Err(StorageIOError::read_logs(&e)),
            Some(Ok((_, v))) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StorageIOError::read_logs(&e)),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf_logs(),
            IteratorMode::From(&be_index(start), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                StorageIOError::read_logs(AnyError::error("log key is not 8 bytes"))
            })?);
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let this = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || this.put_meta_sync(KEY_VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.get_meta(KEY_VOTE)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: the committed id is only a hint for re-applying logs at start-up;
        // the next synced append or vote flushes it with the rest of the WAL.
        let bytes = serde_json::to_vec(&committed).expect("log id serialises");
        self.db
            .put_cf(self.cf_meta(), KEY_COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(self.cf_logs(), be_index(entry.log_id.index), bytes);
        }
        let db = self.db.clone();
        // The entries are durable (fsync'd) before openraft hears they are flushed.
        let result = tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf_logs(), be_index(log_id.index), be_index(u64::MAX));
        batch.delete_cf(self.cf_logs(), be_index(u64::MAX));
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point and the deletion go in one batch: a crash can never leave a
        // marker that disagrees with the entries present.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf_meta(),
            KEY_LAST_PURGED,
            serde_json::to_vec(&log_id).expect("log id serialises"),
        );
        batch.delete_range_cf(self.cf_logs(), be_index(0), be_index(log_id.index + 1));
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?
        .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
