//! `GET /api/v1/audit`: who changed which job, and who ran, stopped, canceled or
//! retried what (replicated; the newest 10,000 records are kept).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::{read_barrier, ApiError, ApiQuery};
use crate::server::Node;
use crate::state::AuditRecord;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records about this job.
    pub job_id: Option<u64>,
    /// At most this many, newest first (default 100, 1 to 1000).
    pub limit: Option<usize>,
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub records: Vec<AuditRecord>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = super::Problem)))]
pub async fn list_audit(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and 1000, got {limit}"),
        ));
    }
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let records = guard
        .state
        .audit
        .values()
        .rev()
        .filter(|r| caller.sees(r.app_id))
        .filter(|r| q.job_id.is_none_or(|j| r.job_id == j))
        .take(limit)
        .cloned()
        .collect();
    Ok(Json(AuditList { records }))
}
