//! Store tests: openraft's conformance suite against the RocksDB stores, and restart
//! tests that reopen the database and check the vote, log and applied state survive.

use std::collections::BTreeMap;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::{storage, StorageError, TypeConfig, Vote};
use crate::state::{Command, Outcome, Proposal, COMMAND_VERSION};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(&dir).await;
        Ok((dir, log, sm))
    }
}

async fn open(dir: &TempDir) -> (LogStore, StateMachineStore) {
    let db = storage::open_db(dir.path()).expect("db opens");
    let sm = StateMachineStore::open(db.clone(), dir.path())
        .await
        .expect("sm opens");
    (LogStore::new(db), sm)
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("the RocksDB stores pass openraft's suite");
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal {
            v: COMMAND_VERSION,
            now_ms: index as i64,
            request: None,
            cmd,
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn vote_log_and_state_survive_a_reopen() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let membership = Membership::new(
            vec![[1u64].into()],
            BTreeMap::from([(1u64, openraft::BasicNode::new("a:1"))]),
        );
        let entries = vec![
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(membership),
            },
            normal(
                1,
                2,
                Command::CreateApp {
                    name: "a".into(),
                    worker_token_hash: "h".into(),
                },
            ),
            normal(
                1,
                3,
                Command::Bootstrap {
                    cluster_id: "cid".into(),
                },
            ),
            normal(
                1,
                4,
                Command::CreateApp {
                    name: "b".into(),
                    worker_token_hash: "h".into(),
                },
            ),
        ];
        {
            let (mut log, mut sm) = open(&dir).await;
            log.save_vote(&Vote::new(3, 2)).await.unwrap();
            log.blocking_append(entries.clone()).await.unwrap();
            log.save_committed(Some(log_id(1, 3))).await.unwrap();
            let responses = sm.apply(entries[..3].to_vec()).await.unwrap();
            assert!(matches!(responses[1].outcome, Outcome::App { .. }));
            log.purge(log_id(1, 1)).await.unwrap();
        }
        let (mut log, mut sm) = open(&dir).await;
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
        assert_eq!(state.last_log_id, Some(log_id(1, 4)));
        let remaining = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            remaining.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 3)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
        let shared = sm.shared();
        let s = shared.read().unwrap();
        assert_eq!(s.state.apps.len(), 1);
        assert_eq!(s.state.meta.cluster_id.as_deref(), Some("cid"));
    });
}

#[test]
fn snapshot_survives_a_reopen_and_installs_elsewhere() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let meta = {
            let (_log, mut sm) = open(&dir).await;
            sm.apply(vec![normal(
                1,
                1,
                Command::CreateApp {
                    name: "a".into(),
                    worker_token_hash: "h".into(),
                },
            )])
            .await
            .unwrap();
            let mut builder = sm.get_snapshot_builder().await;
            builder.build_snapshot().await.unwrap().meta
        };
        let (_log, mut sm) = open(&dir).await;
        let snap = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot persisted");
        assert_eq!(snap.meta, meta);

        // Install it on a fresh store.
        let other = TempDir::new().unwrap();
        let (l2, mut sm2) = open(&other).await;
        let mut data = sm2.begin_receiving_snapshot().await.unwrap();
        let mut src = snap.snapshot;
        tokio::io::copy(&mut src, &mut *data).await.unwrap();
        sm2.install_snapshot(&snap.meta, data).await.unwrap();
        assert_eq!(sm2.shared().read().unwrap().state.apps.len(), 1);
        drop(sm2);
        drop(l2);
        let (_l3, mut sm3) = open(&other).await;
        assert_eq!(sm3.applied_state().await.unwrap().0, Some(log_id(1, 1)));
        assert_eq!(
            sm3.shared().read().unwrap().state.apps.len(),
            1,
            "installed state persisted"
        );
    });
}

#[test]
fn a_command_from_a_newer_version_stops_apply() {
    runtime().block_on(async {
        let dir = TempDir::new().unwrap();
        let (_log, mut sm) = open(&dir).await;
        let mut e = normal(1, 1, Command::Tick);
        if let EntryPayload::Normal(p) = &mut e.payload {
            p.v = COMMAND_VERSION + 1;
        }
        let err = sm.apply(vec![e]).await.unwrap_err();
        assert!(err.to_string().contains("upgrade"), "{err}");
    });
}
