//! The state machine store: the pure [`crate::state`] model held in memory for reads,
//! written through to RocksDB record by record, plus snapshots built to and streamed
//! from files.
//!
//! Each `apply` call persists the records it touched together with the applied log id
//! and membership in one RocksDB batch, so after a restart the state is read back from
//! RocksDB and nothing is replayed except the committed tail openraft re-applies.
//! These writes are not individually synced: they share the WAL with the log store,
//! whose synced appends flush them, and a snapshot flushes the WAL before logs up to
//! it may be purged, so the stored state never falls behind a purged log index.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::storage::CF_SM;
use super::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::command::UnsupportedVersion;
use crate::state::{self, Key, Outcome, Response, State, COMMAND_VERSION};

const KEY_APPLIED: &[u8] = b"_applied";
const KEY_MEMBERSHIP: &[u8] = b"_membership";
const CURRENT_SNAPSHOT: &str = "current.json";

/// What the state machine holds: the model plus openraft's bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    /// Jobs changed by applies since the scheduler last looked (it recomputes their
    /// timers). Not replicated; a new leader rebuilds every timer anyway.
    pub dirty_jobs: std::collections::BTreeSet<crate::state::JobId>,
}

/// Read access for the API; writes happen only in `apply` and snapshot install.
pub type SharedState = Arc<RwLock<Applied>>;

/// Describes the current snapshot on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
}

pub struct StateMachineStore {
    db: Arc<DB>,
    shared: SharedState,
    snapshot_dir: PathBuf,
    /// Serialises snapshot builds and installs that replace the current snapshot.
    snapshot_lock: Arc<Mutex<()>>,
    builds: Arc<AtomicU64>,
    receiving: Option<PathBuf>,
}

fn encode_key(key: &Key) -> Vec<u8> {
    let (prefix, rest): (&[u8], Vec<u8>) = match key {
        Key::Meta => (b"meta", vec![]),
        Key::Node(id) => (b"node/", id.to_be_bytes().to_vec()),
        Key::App(id) => (b"app/", id.to_be_bytes().to_vec()),
        Key::Job(id) => (b"job/", id.to_be_bytes().to_vec()),
        Key::Instance(id) => (b"inst/", id.to_be_bytes().to_vec()),
        Key::Request(id) => (b"req/", id.as_bytes().to_vec()),
        Key::Worker(id) => (b"worker/", id.as_bytes().to_vec()),
        Key::Skips(id) => (b"skips/", id.to_be_bytes().to_vec()),
        Key::Token(id) => (b"token/", id.to_be_bytes().to_vec()),
        Key::Audit(seq) => (b"audit/", seq.to_be_bytes().to_vec()),
    };
    [prefix, &rest].concat()
}

fn decode_key(raw: &[u8]) -> Option<Key> {
    let id = |rest: &[u8]| rest.try_into().ok().map(u64::from_be_bytes);
    if raw == b"meta" {
        return Some(Key::Meta);
    }
    if let Some(rest) = raw.strip_prefix(b"node/") {
        return id(rest).map(Key::Node);
    }
    if let Some(rest) = raw.strip_prefix(b"app/") {
        return id(rest).map(Key::App);
    }
    if let Some(rest) = raw.strip_prefix(b"job/") {
        return id(rest).map(Key::Job);
    }
    if let Some(rest) = raw.strip_prefix(b"inst/") {
        return id(rest).map(Key::Instance);
    }
    if let Some(rest) = raw.strip_prefix(b"skips/") {
        return id(rest).map(Key::Skips);
    }
    if let Some(rest) = raw.strip_prefix(b"token/") {
        return id(rest).map(Key::Token);
    }
    if let Some(rest) = raw.strip_prefix(b"audit/") {
        return id(rest).map(Key::Audit);
    }
    if let Some(rest) = raw.strip_prefix(b"worker/") {
        return Some(Key::Worker(String::from_utf8_lossy(rest).into_owned()));
    }
    raw.strip_prefix(b"req/")
        .map(|rest| Key::Request(String::from_utf8_lossy(rest).into_owned()))
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

impl StateMachineStore {
    /// Opens the store, reading the state machine back from RocksDB.
    pub async fn open(db: Arc<DB>, data_dir: &Path) -> Result<Self, StorageError> {
        let snapshot_dir = data_dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir).map_err(io_err)?;
        // Transfers and builds cut short by a crash leave partial files behind.
        for entry in std::fs::read_dir(&snapshot_dir).map_err(io_err)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("receiving-") || name.starts_with("building-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let applied = load(&db)?;
        tracing::info!(
            last_applied = ?applied.last_applied,
            jobs = applied.state.jobs.len(),
            instances = applied.state.instances.len(),
            "Loaded state machine from RocksDB."
        );
        Ok(Self {
            db,
            shared: Arc::new(RwLock::new(applied)),
            snapshot_dir,
            snapshot_lock: Arc::new(Mutex::new(())),
            builds: Arc::new(AtomicU64::new(0)),
            receiving: None,
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_SM).expect("sm column family exists")
    }
}

fn load(db: &DB) -> Result<Applied, StorageError> {
    let cf = db.cf_handle(CF_SM).expect("sm column family exists");
    let mut applied = Applied::default();
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(read_err)?;
        match k.as_ref() {
            KEY_APPLIED => applied.last_applied = serde_json::from_slice(&v).map_err(read_err)?,
            KEY_MEMBERSHIP => {
                applied.last_membership = serde_json::from_slice(&v).map_err(read_err)?
            }
            raw => {
                let Some(key) = decode_key(raw) else {
                    tracing::warn!(key = %String::from_utf8_lossy(raw), "Ignoring unknown state machine record.");
                    continue;
                };
                applied.state.load_record(key, &v).map_err(read_err)?;
            }
        }
    }
    applied.state.rebuild_indexes();
    Ok(applied)
}

/// Adds the records in `keys` (or their deletion) to `batch`.
fn persist_keys(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    state: &State,
    keys: impl IntoIterator<Item = Key>,
) {
    for key in keys {
        match state.record(&key) {
            Some(bytes) => batch.put_cf(cf, encode_key(&key), bytes),
            None => batch.delete_cf(cf, encode_key(&key)),
        }
    }
}

fn persist_bookkeeping(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, applied: &Applied) {
    batch.put_cf(
        cf,
        KEY_APPLIED,
        serde_json::to_vec(&applied.last_applied).expect("log id serialises"),
    );
    batch.put_cf(
        cf,
        KEY_MEMBERSHIP,
        serde_json::to_vec(&applied.last_membership).expect("membership serialises"),
    );
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read().expect("state lock");
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut batch = WriteBatch::default();
        {
            let mut applied = self.shared.write().expect("state lock");
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::new(Outcome::None),
                    EntryPayload::Membership(m) => {
                        applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::new(Outcome::None)
                    }
                    EntryPayload::Normal(proposal) => {
                        if !proposal.supported() {
                            let err = UnsupportedVersion {
                                index: entry.log_id.index,
                                found: proposal.v,
                                supported: COMMAND_VERSION,
                            };
                            tracing::error!(error = %err, "Stopping: cannot apply a command from a newer version.");
                            return Err(StorageIOError::apply(entry.log_id, &err).into());
                        }
                        state::apply(
                            &mut applied.state,
                            &proposal,
                            entry.log_id.leader_id.term,
                            entry.log_id.index,
                        )
                    }
                };
                responses.push(response);
            }
            let touched = applied.state.take_touched();
            let dirty: Vec<_> = touched
                .iter()
                .filter_map(|k| match k {
                    Key::Job(id) => Some(*id),
                    _ => None,
                })
                .collect();
            applied.dirty_jobs.extend(dirty);
            persist_keys(&mut batch, self.cf(), &applied.state, touched);
            persist_bookkeeping(&mut batch, self.cf(), &applied);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.write(batch))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            applied: self.shared.read().expect("state lock").clone(),
            db: self.db.clone(),
            dir: self.snapshot_dir.clone(),
            lock: self.snapshot_lock.clone(),
            builds: self.builds.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .snapshot_dir
            .join(format!("receiving-{}.json", uuid::Uuid::new_v4()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_err)?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let write_err =
            |e: AnyError| StorageError::from(StorageIOError::write_snapshot(sig.clone(), e));
        // The data may be the file begun by `begin_receiving_snapshot` or any other
        // readable file openraft hands over: read it whole from the start.
        snapshot
            .flush()
            .await
            .map_err(|e| write_err(AnyError::new(&e)))?;
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| write_err(AnyError::new(&e)))?;
        let mut bytes = Vec::new();
        snapshot
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| write_err(AnyError::new(&e)))?;
        drop(snapshot);
        if let Some(partial) = self.receiving.take() {
            let _ = tokio::fs::remove_file(partial).await;
        }
        let mut new_state: State =
            serde_json::from_slice(&bytes).map_err(|e| write_err(AnyError::new(&e)))?;
        new_state.rebuild_indexes();
        let applied = Applied {
            state: new_state,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            dirty_jobs: Default::default(),
        };

        let _guard = self.snapshot_lock.lock().await;
        // Replace every state machine record with the snapshot's, atomically.
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(), [0u8].as_slice(), [0xffu8; 16].as_slice());
        persist_keys(
            &mut batch,
            self.cf(),
            &applied.state,
            applied.state.all_keys(),
        );
        persist_bookkeeping(&mut batch, self.cf(), &applied);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| write_err(AnyError::new(&e)))?;
        *self.shared.write().expect("state lock") = applied;

        let dir = self.snapshot_dir.clone();
        let meta2 = meta.clone();
        tokio::task::spawn_blocking(move || {
            let path = dir.join(format!("building-{}.json", meta2.snapshot_id));
            std::fs::write(&path, &bytes)?;
            std::fs::File::open(&path)?.sync_all()?;
            make_current(&dir, &path, &meta2)
        })
        .await
        .map_err(|e| write_err(AnyError::new(&e)))?
        .map_err(|e| write_err(AnyError::new(&e)))?;
        tracing::info!(last_log_id = ?meta.last_log_id, "Installed snapshot from the leader.");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let _guard = self.snapshot_lock.lock().await;
        open_current(&self.snapshot_dir).await
    }
}

async fn open_current(dir: &Path) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let current = match tokio::fs::read(dir.join(CURRENT_SNAPSHOT)).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
    };
    let current: CurrentSnapshot =
        serde_json::from_slice(&current).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    let sig = Some(current.meta.signature());
    let file = tokio::fs::File::open(dir.join(&current.file))
        .await
        .map_err(|e| StorageIOError::read_snapshot(sig, &e))?;
    Ok(Some(Snapshot {
        meta: current.meta,
        snapshot: Box::new(file),
    }))
}

/// Moves a complete snapshot file into place as the current one and deletes older ones.
fn make_current(dir: &Path, file: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
    let name = format!("snapshot-{}.json", meta.snapshot_id);
    let final_path = dir.join(&name);
    std::fs::rename(file, &final_path)?;
    let current = CurrentSnapshot {
        meta: meta.clone(),
        file: name.clone(),
    };
    let tmp = dir.join("current.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&current)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(CURRENT_SNAPSHOT))?;
    std::fs::File::open(dir)?.sync_all()?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        if fname.starts_with("snapshot-") && fname != name {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Builds a snapshot from a copy of the state taken when openraft asked for it, so
/// `apply` keeps running while the file is written.
pub struct SnapshotBuilder {
    applied: Applied,
    db: Arc<DB>,
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
    builds: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.applied.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, n),
            None => format!("0-0-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.last_membership.clone(),
            snapshot_id,
        };
        let _guard = self.lock.lock().await;
        // A snapshot installed from the leader meanwhile is newer: keep it current.
        if let Some(current) = open_current(&self.dir).await? {
            if current.meta.last_log_id > meta.last_log_id {
                return Ok(current);
            }
        }
        let state = std::mem::take(&mut self.applied.state);
        let (dir, db, meta2) = (self.dir.clone(), self.db.clone(), meta.clone());
        let sig = Some(meta.signature());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Every state machine write up to this snapshot must be durable before
            // openraft may purge the logs it covers.
            db.flush_wal(true).map_err(std::io::Error::other)?;
            let tmp = dir.join(format!("building-{}.json", meta2.snapshot_id));
            {
                let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
                serde_json::to_writer(&mut w, &state)?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
            }
            make_current(&dir, &tmp, &meta2)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        tracing::info!(last_log_id = ?meta.last_log_id, snapshot_id = %meta.snapshot_id, "Built snapshot.");
        let file =
            tokio::fs::File::open(self.dir.join(format!("snapshot-{}.json", meta.snapshot_id)))
                .await
                .map_err(|e| StorageIOError::read_snapshot(sig, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
