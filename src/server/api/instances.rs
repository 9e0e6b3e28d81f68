//! Runs and instances: `POST /api/v1/jobs/{id}/run`, `/api/v1/instances/...`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::{read_barrier, request_meta, validate, write, ApiError, ApiQuery, IdPath, ReadQuery};
use crate::server::Node;
use crate::state::{Command, Instance, InstanceStatus, LogLine, Outcome};

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Instance parameters handed to the processor.
    #[serde(default)]
    #[schema(value_type = Object, nullable)]
    pub params: serde_json::Value,
    /// Wait this long before dispatching.
    #[serde(default)]
    pub delay_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceCreated {
    pub instance_id: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub job_id: Option<u64>,
    /// waiting_dispatch, dispatched, running, stopping, succeeded, failed, stopped, canceled
    pub status: Option<InstanceStatus>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
    pub consistency: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceLogs {
    pub instance_id: u64,
    /// The replicated tail of the log (the last 200 lines).
    pub lines: Vec<LogLine>,
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/run", tag = "instances", request_body(content = Option<RunRequest>),
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = InstanceCreated), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub async fn run_job(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<InstanceCreated>), ApiError> {
    let trimmed = body.trim_ascii();
    let run: RunRequest = if trimmed.is_empty() || trimmed == b"null" {
        RunRequest::default()
    } else {
        let value = serde_json::from_slice(&body).map_err(|e| ApiError::Invalid {
            field: None,
            message: format!("run request: {e}"),
        })?;
        super::body_from_value(value)?
    };
    validate::params("params", &run.params)?;
    if run.delay_ms > 366 * 24 * 3600 * 1000 {
        return Err(ApiError::invalid("delay_ms", "at most one year"));
    }
    caller.check_job(&node, id)?;
    let request = request_meta(
        &caller,
        &headers,
        &format!("POST /api/v1/jobs/{id}/run"),
        &run,
    )?;
    let cmd = Command::RunJob {
        job_id: id,
        params: run.params,
        delay_ms: run.delay_ms,
    };
    match write(&node, request, cmd).await? {
        (Outcome::InstanceCreated { id }, _) => Ok((
            StatusCode::CREATED,
            Json(InstanceCreated { instance_id: id }),
        )),
        (other, _) => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = u64, Path), ReadQuery),
    responses((status = 200, body = Instance), (status = 404, body = super::Problem)))]
pub async fn get_instance(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<Instance>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    caller.instance(&guard.state, id).cloned().map(Json)
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(ListQuery), responses((status = 200, body = InstanceList)))]
pub async fn list_instances(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<InstanceList>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let guard = node.state.read().expect("state lock");
    let state = &guard.state;
    let matches = |i: &&crate::state::Instance| {
        q.status.is_none_or(|s| i.status == s) && caller.sees(i.app_id)
    };
    let instances = match q.job_id {
        Some(job) => state
            .instances_of_job(job)
            .into_iter()
            .filter_map(|id| state.instances.get(&id))
            .filter(matches)
            .take(limit)
            .cloned()
            .collect(),
        None => state
            .instances
            .values()
            .rev()
            .filter(matches)
            .take(limit)
            .cloned()
            .collect(),
    };
    Ok(Json(InstanceList { instances }))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/logs", tag = "instances", params(("id" = u64, Path), ReadQuery),
    responses((status = 200, body = InstanceLogs), (status = 404, body = super::Problem)))]
pub async fn instance_logs(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<InstanceLogs>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let inst = caller.instance(&guard.state, id)?;
    Ok(Json(InstanceLogs {
        instance_id: id,
        lines: inst.log_tail.clone(),
    }))
}

async fn change(
    node: &Node,
    caller: &Caller,
    id: u64,
    headers: &HeaderMap,
    verb: &str,
    cmd: Command,
) -> Result<Outcome, ApiError> {
    caller.check_instance(node, id)?;
    let request = request_meta(
        caller,
        headers,
        &format!("POST /api/v1/instances/{id}/{verb}"),
        &(),
    )?;
    Ok(write(node, request, cmd).await?.0)
}

fn instance_of(outcome: Outcome) -> Result<Json<Instance>, ApiError> {
    match outcome {
        Outcome::Instance { instance } => Ok(Json(instance)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/stop", tag = "instances", params(("id" = u64, Path)),
    responses((status = 200, body = Instance), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub async fn stop_instance(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Instance>, ApiError> {
    let cmd = Command::StopInstance { id };
    instance_of(change(&node, &caller, id, &headers, "stop", cmd).await?)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/cancel", tag = "instances", params(("id" = u64, Path)),
    responses((status = 200, body = Instance), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub async fn cancel_instance(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Instance>, ApiError> {
    let cmd = Command::CancelInstance { id };
    instance_of(change(&node, &caller, id, &headers, "cancel", cmd).await?)
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/retry", tag = "instances", params(("id" = u64, Path)),
    responses((status = 201, body = InstanceCreated), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub async fn retry_instance(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<InstanceCreated>), ApiError> {
    let cmd = Command::RetryInstance { id };
    match change(&node, &caller, id, &headers, "retry", cmd).await? {
        Outcome::InstanceCreated { id } => Ok((
            StatusCode::CREATED,
            Json(InstanceCreated { instance_id: id }),
        )),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}
