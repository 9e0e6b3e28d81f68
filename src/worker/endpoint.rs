//! The `http` protocol's worker endpoint: the leader POSTs dispatches and stops here.
//! Only calls carrying this worker's credential (issued by the cluster it registered
//! with) are accepted.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::runtime::{Core, WorkerError};
use crate::protocol::{
    Dispatch, StopAttempt, CREDENTIAL_HEADER, PATH_WORKER_DISPATCH, PATH_WORKER_STOP,
};
use crate::server::cluster::secrets_equal;

/// Starts the endpoint and returns the address servers should dial.
pub(crate) async fn start(core: Arc<Core>) -> Result<String, WorkerError> {
    let listen = core.cfg.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let advertise = core
        .cfg
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    tracing::info!(listen = %bound, advertise = %advertise, "Worker dispatch endpoint listening.");
    let app = Router::new()
        .route(PATH_WORKER_DISPATCH, post(dispatch))
        .route(PATH_WORKER_STOP, post(stop))
        .with_state(core.clone());
    let shutdown = core.shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(advertise)
}

fn authorised(core: &Core, headers: &HeaderMap, cluster_id: &str) -> Result<(), Response> {
    let Some(session) = core.session() else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "not registered yet").into_response());
    };
    let given = headers
        .get(CREDENTIAL_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if cluster_id != session.cluster_id || !secrets_equal(given, session.credential.as_bytes()) {
        tracing::warn!("Refused a dispatch call without this worker's credential.");
        return Err((StatusCode::UNAUTHORIZED, "wrong cluster or credential").into_response());
    }
    Ok(())
}

async fn dispatch(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Json(d): Json<Dispatch>,
) -> Response {
    if let Err(r) = authorised(&core, &headers, &d.cluster_id) {
        return r;
    }
    Json(core.accept(d)).into_response()
}

async fn stop(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Json(s): Json<StopAttempt>,
) -> Response {
    if let Err(r) = authorised(&core, &headers, &s.cluster_id) {
        return r;
    }
    Json(core.stop(&s)).into_response()
}
