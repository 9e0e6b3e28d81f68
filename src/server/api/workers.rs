//! `GET /api/v1/workers`: registrations (replicated) with liveness and load (the
//! leader's memory, fetched from the leader when another node answers).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::{ApiError, ApiQuery};
use crate::server::cluster::{ForwardReply, PATH_FORWARD_WORKERS};
use crate::server::worker_registry::{WorkerState, WorkerView};
use crate::server::Node;
use crate::state::Job;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WorkersQuery {
    /// Only workers of this app (by name).
    pub app: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

/// Every worker as the leader sees it (after a read barrier when `linearizable`).
pub(crate) async fn leader_views(
    node: &Node,
    linearizable: bool,
) -> Result<Vec<WorkerView>, ApiError> {
    if linearizable {
        node.linearizable_barrier().await?;
    }
    let leader = node.raft.metrics().borrow().current_leader;
    if leader == Some(node.id) {
        let guard = node.state.read().expect("state lock");
        return Ok(node.workers.views(&guard.state, None));
    }
    let addr = leader
        .and_then(|l| node.peer_addr(l))
        .ok_or_else(|| ApiError::Unavailable("no leader is known; retry".into()))?;
    match node
        .forward_post::<_, Vec<WorkerView>>(
            &addr,
            PATH_FORWARD_WORKERS,
            &(),
            Duration::from_secs(3),
        )
        .await
    {
        Ok(ForwardReply::Ok(views)) => Ok(views),
        Ok(_) | Err(_) => Err(ApiError::Unavailable(
            "the leader did not answer; retry".into(),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", params(WorkersQuery), responses((status = 200, body = WorkerList)))]
pub async fn list_workers(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<WorkersQuery>,
) -> Result<Json<WorkerList>, ApiError> {
    let mut workers = leader_views(&node, true).await?;
    workers.retain(|w| caller.sees(w.reg.app_id));
    if let Some(app) = &q.app {
        workers.retain(|w| &w.app == app);
    }
    Ok(Json(WorkerList { workers }))
}

/// Warnings for a job just created: no live worker could run it, or only one could.
pub(crate) async fn redundancy_warnings(node: &Node, job: &Job) -> Vec<String> {
    let Ok(views) = leader_views(node, false).await else {
        return vec!["could not check which workers can run this job (no leader answered)".into()];
    };
    let matching: Vec<&WorkerView> = views
        .iter()
        .filter(|w| w.reg.app_id == job.app_id)
        .filter(|w| {
            job.spec
                .worker_tag
                .as_ref()
                .is_none_or(|t| w.reg.tag.as_ref() == Some(t))
        })
        .filter(|w| {
            job.spec.designated_workers.is_empty()
                || job.spec.designated_workers.contains(&w.reg.name)
        })
        .filter(|w| w.state != WorkerState::Lost)
        .collect();
    match matching.len() {
        0 => vec![format!(
            "no live worker can run this job right now (app {}{}); its instances will wait, then fail with `no worker available`",
            job.spec.app,
            job.spec.worker_tag.as_ref().map(|t| format!(", tag {t}")).unwrap_or_default()
        )],
        1 => vec![format!("only one live worker ({}) can run this job: no redundancy if it fails", matching[0].reg.id)],
        _ => vec![],
    }
}
