//! `/api/v1/jobs`: create, read, change and delete jobs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::{
    read_barrier, request_meta, validate, write, ApiError, ApiJson, ApiQuery, IdPath, ReadQuery,
};
use crate::server::{scheduler, Node};
use crate::state::{Command, Job, JobSpec, Millis, Outcome, SkipRecord};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListJobsQuery {
    /// Only jobs of this app (by name).
    pub app: Option<String>,
    /// At most this many jobs (1 to 10,000); without it, every job. With many jobs,
    /// page through them with `limit` and `after`.
    pub limit: Option<usize>,
    /// Only jobs with an id greater than this: the previous page's `next_after`.
    pub after: Option<u64>,
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

/// A job as the API shows it: the stored job plus its next fire time.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// The next scheduled fire time (ms since the epoch, UTC); absent for disabled,
    /// API-only or finished jobs and while a fixed-delay job's instance runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_time_ms: Option<Millis>,
    /// The same instant in RFC 3339 (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_time: Option<String>,
}

impl JobView {
    fn new(state: &crate::state::State, job: Job) -> Self {
        let next = scheduler::next_fire_time(state, &job);
        Self {
            next_fire_time: next.map(rfc3339),
            next_fire_time_ms: next,
            job,
        }
    }
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Set when `limit` cut the list short: pass it as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// How many fire times (1 to 1000, default 10).
    pub count: Option<usize>,
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<String>,
}

/// One upcoming fire time.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireTime {
    pub at_ms: Millis,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulePreview {
    pub job_id: u64,
    /// The job's fire cursor: the latest fire time the scheduler handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fire_time_ms: Option<Millis>,
    pub fire_times: Vec<FireTime>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SkippedQuery {
    /// Most records to return, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedList {
    pub job_id: u64,
    /// Newest first.
    pub skipped: Vec<SkipRecord>,
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
    caller: Caller,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    validate::job_spec(&spec)?;
    caller.check_app_name(&node, &spec.app)?;
    super::policy::check_job(&node, &spec)?;
    let request = request_meta(&caller, &headers, "POST /api/v1/jobs", &spec)?;
    let (outcome, _) = write(&node, request, Command::CreateJob { spec }).await?;
    let job = job_of(outcome)?;
    let warnings = super::workers::redundancy_warnings(&node, &job).await;
    Ok((StatusCode::CREATED, Json(JobCreated { job, warnings })))
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListJobsQuery), responses((status = 200, body = JobList)))]
pub async fn list_jobs(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListJobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    if q.limit.is_some_and(|l| !(1..=10_000).contains(&l)) {
        return Err(ApiError::invalid("limit", "give a limit from 1 to 10000"));
    }
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let state = &guard.state;
    let app_id = match &q.app {
        None => None,
        Some(name) => Some(
            state
                .app_by_name(name)
                .filter(|a| caller.sees(a.id))
                .ok_or_else(|| ApiError::NotFound(format!("app {name} not found")))?
                .id,
        ),
    };
    let after = q
        .after
        .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let limit = q.limit.unwrap_or(usize::MAX);
    let mut matching = state
        .jobs
        .range((after, std::ops::Bound::Unbounded))
        .map(|(_, j)| j)
        .filter(|j| app_id.is_none_or(|a| j.app_id == a) && caller.sees(j.app_id));
    let jobs: Vec<JobView> = matching
        .by_ref()
        .take(limit)
        .map(|j| JobView::new(state, j.clone()))
        .collect();
    let next_after = match matching.next() {
        Some(_) => jobs.last().map(|j| j.job.id),
        None => None,
    };
    Ok(Json(JobList { jobs, next_after }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = u64, Path), ReadQuery),
    responses((status = 200, body = JobView), (status = 404, body = super::Problem)))]
pub async fn get_job(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<JobView>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let job = caller.job(&guard.state, id)?.clone();
    Ok(Json(JobView::new(&guard.state, job)))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/schedule", tag = "jobs", params(("id" = u64, Path), ScheduleQuery),
    responses((status = 200, body = SchedulePreview), (status = 400, body = super::Problem), (status = 404, body = super::Problem)))]
pub async fn preview_schedule(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<ScheduleQuery>,
) -> Result<Json<SchedulePreview>, ApiError> {
    let count = q.count.unwrap_or(10);
    if !(1..=1000).contains(&count) {
        return Err(ApiError::invalid(
            "count",
            format!("count must be between 1 and 1000, got {count}"),
        ));
    }
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let job = caller.job(&guard.state, id)?;
    let fire_times = scheduler::upcoming(&guard.state, job, count)
        .into_iter()
        .map(|at_ms| FireTime {
            at_ms,
            at: rfc3339(at_ms),
        })
        .collect();
    Ok(Json(SchedulePreview {
        job_id: id,
        last_fire_time_ms: job.last_fire_time_ms,
        fire_times,
    }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/skipped", tag = "jobs", params(("id" = u64, Path), SkippedQuery),
    responses((status = 200, body = SkippedList), (status = 400, body = super::Problem), (status = 404, body = super::Problem)))]
pub async fn skipped_fires(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<SkippedQuery>,
) -> Result<Json<SkippedList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and 1000, got {limit}"),
        ));
    }
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    caller.job(&guard.state, id)?;
    let skipped = guard
        .state
        .skips
        .get(&id)
        .map(|l| l.iter().rev().take(limit).cloned().collect())
        .unwrap_or_default();
    Ok(Json(SkippedList {
        job_id: id,
        skipped,
    }))
}

#[utoipa::path(put, path = "/api/v1/jobs/{id}", tag = "jobs", request_body = JobSpec,
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Job), (status = 400, body = super::Problem), (status = 404, body = super::Problem)))]
pub async fn update_job(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<Json<Job>, ApiError> {
    validate::job_spec(&spec)?;
    caller.check_job(&node, id)?;
    caller.check_app_name(&node, &spec.app)?;
    super::policy::check_job(&node, &spec)?;
    let request = request_meta(&caller, &headers, &format!("PUT /api/v1/jobs/{id}"), &spec)?;
    let (outcome, _) = write(&node, request, Command::UpdateJob { id, spec }).await?;
    Ok(Json(job_of(outcome)?))
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Deleted), (status = 404, body = super::Problem)))]
pub async fn delete_job(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Deleted>, ApiError> {
    caller.check_job(&node, id)?;
    let request = request_meta(&caller, &headers, &format!("DELETE /api/v1/jobs/{id}"), &())?;
    write(&node, request, Command::DeleteJob { id }).await?;
    Ok(Json(Deleted { id, deleted: true }))
}

async fn set_enabled(
    node: &Node,
    caller: &Caller,
    id: u64,
    headers: &HeaderMap,
    enabled: bool,
) -> Result<Json<Job>, ApiError> {
    let op = format!(
        "POST /api/v1/jobs/{id}/{}",
        if enabled { "enable" } else { "disable" }
    );
    caller.check_job(node, id)?;
    let request = request_meta(caller, headers, &op, &())?;
    let (outcome, _) = write(node, request, Command::SetJobEnabled { id, enabled }).await?;
    Ok(Json(job_of(outcome)?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/enable", tag = "jobs", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::Problem)))]
pub async fn enable_job(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Job>, ApiError> {
    set_enabled(&node, &caller, id, &headers, true).await
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/disable", tag = "jobs", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::Problem)))]
pub async fn disable_job(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<Job>, ApiError> {
    set_enabled(&node, &caller, id, &headers, false).await
}
