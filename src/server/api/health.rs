//! Health, readiness, metrics and the console page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::server::Node;

#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": crate::server::VERSION}))
}

#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "Member of a cluster with a known leader"), (status = 503, body = super::Problem)))]
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let m = node.raft.metrics().borrow().clone();
    let member = m
        .membership_config
        .membership()
        .get_node(&node.id)
        .is_some();
    match (member, m.current_leader) {
        (true, Some(leader)) => {
            Json(json!({"status": "ready", "leader_id": leader, "term": m.current_term}))
                .into_response()
        }
        (false, _) => ApiError::Unavailable("this node is not yet a member of a cluster".into())
            .into_response(),
        (true, None) => {
            ApiError::Unavailable("no leader is known (an election is in progress)".into())
                .into_response()
        }
    }
}

/// Prometheus text format: the recorder's event series plus this node's Raft, state
/// and worker gauges read now (see [`crate::server::metrics`]). Behind the admin
/// token when `[metrics] require_token` is on (the router adds the check).
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let body = crate::server::metrics::render(&node);
    (
        [(header::CONTENT_TYPE, crate::server::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// A minimal console: the cluster and its jobs, read through the API with the token
/// the user pastes (kept in the browser's session storage only).
pub async fn console() -> impl IntoResponse {
    (StatusCode::OK, Html(include_str!("console.html")))
}
