//! The `http` transport: each worker message is one POST; the answer is the reply.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::TransportState;
use crate::protocol::{
    Deregister, Heartbeat, Register, Report, ServerMsg, WorkerMsg, PATH_DEREGISTER, PATH_HEARTBEAT,
    PATH_REGISTER, PATH_REPORT,
};

pub(super) fn routes(router: Router<TransportState>) -> Router<TransportState> {
    router
        .route(PATH_REGISTER, post(register))
        .route(PATH_HEARTBEAT, post(heartbeat))
        .route(PATH_REPORT, post(report))
        .route(PATH_DEREGISTER, post(deregister))
}

async fn register(State(t): State<TransportState>, Json(r): Json<Register>) -> Json<ServerMsg> {
    Json(t.handle(WorkerMsg::Register(r)).await)
}

async fn heartbeat(State(t): State<TransportState>, Json(h): Json<Heartbeat>) -> Json<ServerMsg> {
    Json(t.handle(WorkerMsg::Heartbeat(h)).await)
}

async fn report(State(t): State<TransportState>, Json(r): Json<Report>) -> Json<ServerMsg> {
    Json(t.handle(WorkerMsg::Report(r)).await)
}

async fn deregister(State(t): State<TransportState>, Json(d): Json<Deregister>) -> Json<ServerMsg> {
    Json(t.handle(WorkerMsg::Deregister(d)).await)
}
