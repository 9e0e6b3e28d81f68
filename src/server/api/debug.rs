//! `/api/v1/debug/...`: hooks for fault-injection testing (jepsen-lite).
//!
//! - `GET /api/v1/debug/state-digest` (always on): a SHA-256 of this node's replicated
//!   state with the log id it was applied through, so a harness can check that every
//!   replica at the same index holds the same state.
//! - `POST /api/v1/debug/clock` (only with `[testing] clock_control`): shifts this
//!   node's wall clock by an offset, to inject clock jumps. Answers 404 when off.

use std::io::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{ApiError, ApiJson};
use crate::server::Node;

/// Largest clock offset accepted (one year either way), so the shifted clock stays
/// far from overflow and from absurd dates.
const MAX_OFFSET_MS: i64 = 366 * 24 * 3600 * 1000;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockRequest {
    /// Milliseconds added to every reading of this node's wall clock (replaces any
    /// earlier offset; 0 restores the real clock).
    pub offset_ms: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClockView {
    pub node_id: u64,
    pub offset_ms: i64,
    /// This node's shifted wall clock after the change, in Unix milliseconds.
    pub now_ms: i64,
}

#[utoipa::path(post, path = "/api/v1/debug/clock", tag = "debug", request_body = ClockRequest,
    responses((status = 200, body = ClockView),
        (status = 404, body = super::Problem, description = "Clock control is off ([testing] clock_control)")))]
pub async fn set_clock(
    State(node): State<Arc<Node>>,
    ApiJson(body): ApiJson<ClockRequest>,
) -> Result<Json<ClockView>, ApiError> {
    if !node.config.testing.clock_control {
        return Err(ApiError::NotFound(
            "clock control is off; it is a test-only setting ([testing] clock_control, --test-clock-control)".into(),
        ));
    }
    if body.offset_ms.abs() > MAX_OFFSET_MS {
        return Err(ApiError::invalid(
            "offset_ms",
            format!("at most {MAX_OFFSET_MS} either way (one year)"),
        ));
    }
    let before = crate::server::clock_offset_ms();
    crate::server::set_clock_offset_ms(body.offset_ms);
    tracing::warn!(
        node_id = node.id,
        before_ms = before,
        offset_ms = body.offset_ms,
        "Test clock control: this node's wall clock was shifted."
    );
    Ok(Json(ClockView {
        node_id: node.id,
        offset_ms: body.offset_ms,
        now_ms: crate::server::now_ms(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StateDigest {
    pub node_id: u64,
    /// The log index the state was applied through (0 before the first entry).
    pub applied_index: u64,
    /// The term of that entry.
    pub applied_term: u64,
    /// Hex SHA-256 of the replicated state ([`digest`]).
    pub digest: String,
}

#[utoipa::path(get, path = "/api/v1/debug/state-digest", tag = "debug",
    responses((status = 200, body = StateDigest)))]
pub async fn state_digest(State(node): State<Arc<Node>>) -> Json<StateDigest> {
    // Hashed under the read lock: apply changes the state and its applied log id under
    // the write lock together, so the two always match.
    let guard = node.state.read().expect("state lock");
    let digest = digest(&guard.state);
    let (applied_index, applied_term) = guard
        .last_applied
        .map_or((0, 0), |id| (id.index, id.leader_id.term));
    drop(guard);
    Json(StateDigest {
        node_id: node.id,
        applied_index,
        applied_term,
        digest,
    })
}

/// Hex SHA-256 of the replicated part of a state. The state's serde form holds
/// exactly the replicated fields (derived indexes are `#[serde(skip)]`) and its maps
/// are `BTreeMap`s, so it serialises the same on every replica that applied the same
/// log, whether by replay or from a snapshot.
pub fn digest(state: &crate::state::State) -> String {
    struct HashWriter(Sha256);
    impl Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(Sha256::new());
    serde_json::to_writer(&mut w, state).expect("the state serialises");
    hex::encode(w.0.finalize())
}

#[cfg(test)]
mod tests {
    use super::digest;
    use crate::state::State;

    #[test]
    fn digest_ignores_derived_indexes_and_sees_replicated_changes() {
        let mut a = State::default();
        let empty = digest(&a);
        assert_eq!(empty.len(), 64);
        a.touch(crate::state::Key::Meta); // bookkeeping only, not replicated
        assert_eq!(digest(&a), empty);
        a.meta.now_ms = 1;
        assert_ne!(digest(&a), empty);
        let mut b = a.clone();
        b.rebuild_indexes();
        assert_eq!(digest(&b), digest(&a));
    }
}
