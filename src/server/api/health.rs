//! Health, readiness, metrics and the console page.

use std::fmt::Write;
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

/// Prometheus text format. The full set of metrics comes with the metrics work; these
/// are the Raft gauges operators need first.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = node.raft.metrics().borrow().clone();
    let (jobs, apps) = {
        let s = node.state.read().expect("state lock");
        (s.state.jobs.len(), s.state.apps.len())
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node_id=\"{}\"}} {value}",
            node.id
        );
    };
    gauge(
        "raftjob_raft_term",
        "Current Raft term.",
        m.current_term as f64,
    );
    gauge(
        "raftjob_raft_is_leader",
        "1 when this node leads.",
        f64::from(u8::from(m.current_leader == Some(node.id))),
    );
    gauge(
        "raftjob_raft_leader_id",
        "Id of the known leader, 0 when none.",
        m.current_leader.unwrap_or(0) as f64,
    );
    gauge(
        "raftjob_raft_last_log_index",
        "Last log index on this node.",
        m.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        "raftjob_raft_applied_index",
        "Last applied log index.",
        m.last_applied.map(|l| l.index).unwrap_or(0) as f64,
    );
    gauge("raftjob_jobs", "Jobs in the replicated state.", jobs as f64);
    gauge("raftjob_apps", "Apps in the replicated state.", apps as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// A minimal console: the cluster and its jobs, read through the API with the token
/// the user pastes (kept in the browser's session storage only).
pub async fn console() -> impl IntoResponse {
    (StatusCode::OK, Html(include_str!("console.html")))
}
