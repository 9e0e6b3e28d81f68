//! `/api/v1/policy` and `/api/v1/apps/{name}/policy`: the operator's processor policy
//! (admin only). See [`crate::state::policy`] for what it does and where it is enforced.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::apps::app_name;
use super::auth::Caller;
use super::{read_barrier, request_meta, write, ApiError, ApiJson, ApiQuery, ReadQuery};
use crate::server::Node;
use crate::state::{Command, JobSpec, Outcome, ProcessorPolicy};

type NamePath = Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>;

/// Refuses a job whose processor the policy (as this node has applied it) forbids,
/// before anything is proposed. Apply checks again against the committed policy.
pub fn check_job(node: &Node, spec: &JobSpec) -> Result<(), ApiError> {
    let guard = node.state.read().expect("state lock");
    let state = &guard.state;
    let Some(app) = state.app_by_name(&spec.app) else {
        return Ok(()); // apply answers "app not found"
    };
    crate::state::policy::check_processor(
        &state.meta.policy,
        &app.name,
        app.policy.as_ref(),
        &spec.processor,
    )
    .map_err(|e| ApiError::PolicyDenied {
        field: e.field,
        message: e.message,
    })
}

fn validated(policy: &ProcessorPolicy) -> Result<(), ApiError> {
    policy
        .validate()
        .map_err(|e| ApiError::invalid(e.field, e.message))
}

async fn set(
    node: &Arc<Node>,
    caller: &Caller,
    headers: &HeaderMap,
    op: &str,
    app: Option<String>,
    policy: ProcessorPolicy,
) -> Result<Json<ProcessorPolicy>, ApiError> {
    validated(&policy)?;
    let request = request_meta(caller, headers, op, &policy)?;
    match write(node, request, Command::SetPolicy { app, policy }).await? {
        (Outcome::Policy { policy }, _) => Ok(Json(policy)),
        (other, _) => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/policy", tag = "policy", params(ReadQuery),
    responses((status = 200, body = ProcessorPolicy)))]
pub async fn get_cluster_policy(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<ProcessorPolicy>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let policy = node
        .state
        .read()
        .expect("state lock")
        .state
        .meta
        .policy
        .clone();
    Ok(Json(policy))
}

/// Replaces the cluster's policy. Existing jobs it forbids stay, but their instances
/// fail instead of being dispatched.
#[utoipa::path(put, path = "/api/v1/policy", tag = "policy", request_body = ProcessorPolicy,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = ProcessorPolicy), (status = 400, body = super::Problem), (status = 403, body = super::Problem)))]
pub async fn put_cluster_policy(
    State(node): State<Arc<Node>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(policy): ApiJson<ProcessorPolicy>,
) -> Result<Json<ProcessorPolicy>, ApiError> {
    set(&node, &caller, &headers, "PUT /api/v1/policy", None, policy).await
}

/// The app's own policy (the default, which allows everything the cluster's does,
/// when none was set).
#[utoipa::path(get, path = "/api/v1/apps/{name}/policy", tag = "policy",
    params(("name" = String, Path), ReadQuery),
    responses((status = 200, body = ProcessorPolicy), (status = 404, body = super::Problem)))]
pub async fn get_app_policy(
    State(node): State<Arc<Node>>,
    path: NamePath,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<ProcessorPolicy>, ApiError> {
    let name = app_name(path)?;
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let app = guard
        .state
        .app_by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("app {name} not found")))?;
    Ok(Json(app.policy.clone().unwrap_or_default()))
}

/// Replaces the app's policy. It narrows the cluster's: a job must pass both.
#[utoipa::path(put, path = "/api/v1/apps/{name}/policy", tag = "policy", request_body = ProcessorPolicy,
    params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = ProcessorPolicy), (status = 400, body = super::Problem), (status = 404, body = super::Problem)))]
pub async fn put_app_policy(
    State(node): State<Arc<Node>>,
    caller: Caller,
    path: NamePath,
    headers: HeaderMap,
    ApiJson(policy): ApiJson<ProcessorPolicy>,
) -> Result<Json<ProcessorPolicy>, ApiError> {
    let name = app_name(path)?;
    let op = format!("PUT /api/v1/apps/{name}/policy");
    set(&node, &caller, &headers, &op, Some(name), policy).await
}
