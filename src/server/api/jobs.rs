//! `/api/v1/jobs`: create, read, change and delete jobs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    read_barrier, request_meta, validate, write, ApiError, ApiJson, ApiQuery, IdPath, ReadQuery,
};
use crate::server::Node;
use crate::state::{Command, Job, JobSpec, Outcome};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListJobsQuery {
    /// Only jobs of this app (by name).
    pub app: Option<String>,
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<String>,
}

/// A created job, with warnings about the workers that could run it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobCreated {
    #[serde(flatten)]
    pub job: Job,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub id: u64,
    pub deleted: bool,
}

fn job_of(outcome: Outcome) -> Result<Job, ApiError> {
    match outcome {
        Outcome::Job { job } => Ok(job),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses((status = 201, body = JobCreated), (status = 400, body = super::Problem), (status = 404, body = super::Problem),
        (status = 409, body = super::Problem), (status = 422, body = super::Problem), (status = 503, body = super::Problem)))]
pub async fn create_job(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    validate::job_spec(&spec)?;
    let request = request_meta(&headers, "POST /api/v1/jobs", &spec)?;
    let (outcome, _) = write(&node, request, Command::CreateJob { spec }).await?;
    let job = job_of(outcome)?;
    let warnings = super::workers::redundancy_warnings(&node, &job).await;
    Ok((StatusCode::CREATED, Json(JobCreated { job, warnings })))
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListJobsQuery), responses((status = 200, body = JobList)))]
pub async fn list_jobs(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ListJobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let state = &guard.state;
    let jobs = match &q.app {
        None => state.jobs.values().cloned().collect(),
        Some(name) => {
            let app = state
                .app_by_name(name)
                .ok_or_else(|| ApiError::NotFound(format!("app {name} not found")))?;
            state.jobs_of_app(app.id).cloned().collect()
        }
    };
    Ok(Json(JobList { jobs }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = u64, Path), ReadQuery),
    responses((status = 200, body = Job), (status = 404, body = super::Problem)))]
pub async fn get_job(
    State(node): State<Arc<Node>>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<Job>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    guard
        .state
        .jobs
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
}

#[utoipa::path(put, path = "/api/v1/jobs/{id}", tag = "jobs", request_body = JobSpec,
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Job), (status = 400, body = super::Problem), (status = 404, body = super::Problem)))]
pub async fn update_job(
    State(node): State<Arc<Node>>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<Json<Job>, ApiError> {
    validate::job_spec(&spec)?;
    let request = request_meta(&headers, &format!("PUT /api/v1/jobs/{id}"), &spec)?;
    let (outcome, _) = write(&node, request, Command::UpdateJob { id, spec }).await?;
    Ok(Json(job_of(outcome)?))
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Deleted), (status = 404, body = super::Problem)))]
pub async fn delete_job(
    State(node): State<Arc<Node>>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Deleted>, ApiError> {
    let request = request_meta(&headers, &format!("DELETE /api/v1/jobs/{id}"), &())?;
    write(&node, request, Command::DeleteJob { id }).await?;
    Ok(Json(Deleted { id, deleted: true }))
}

async fn set_enabled(
    node: &Node,
    id: u64,
    headers: &HeaderMap,
    enabled: bool,
) -> Result<Json<Job>, ApiError> {
    let op = format!(
        "POST /api/v1/jobs/{id}/{}",
        if enabled { "enable" } else { "disable" }
    );
    let request = request_meta(headers, &op, &())?;
    let (outcome, _) = write(node, request, Command::SetJobEnabled { id, enabled }).await?;
    Ok(Json(job_of(outcome)?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/enable", tag = "jobs", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::Problem)))]
pub async fn enable_job(
    State(node): State<Arc<Node>>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Job>, ApiError> {
    set_enabled(&node, id, &headers, true).await
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/disable", tag = "jobs", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::Problem)))]
pub async fn disable_job(
    State(node): State<Arc<Node>>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Job>, ApiError> {
    set_enabled(&node, id, &headers, false).await
}
