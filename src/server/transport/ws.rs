//! The `ws` transport: one WebSocket per worker. The worker sends requests and dispatch
//! acknowledgements; the server answers requests and pushes dispatches and stops, so
//! a worker needs no inbound port and notices a lost leader at once.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::TransportState;
use crate::protocol::AttemptRef;
use crate::protocol::{ServerMsg, WorkerMsg, WsServerFrame, WsWorkerFrame, PATH_WS};

pub(super) fn routes(router: Router<TransportState>) -> Router<TransportState> {
    router.route(PATH_WS, get(upgrade))
}

async fn upgrade(State(t): State<TransportState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(4 * 1024 * 1024)
        .on_upgrade(move |socket| serve(t, socket))
}

async fn serve(t: TransportState, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<ServerMsg>();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WsServerFrame>();
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                Some(f) = out_rx.recv() => f,
                Some(msg) = push_rx.recv() => WsServerFrame { seq: 0, msg },
                else => break,
            };
            let text = serde_json::to_string(&frame).expect("frames serialise");
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let mut worker_id: Option<String> = None;
    let shutdown = t.node.shutdown.clone();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = stream.next() => m,
        };
        let Some(Ok(msg)) = msg else { break };
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Close(_) => break,
            _ => continue,
        };
        let frame: WsWorkerFrame = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let refusal = ServerMsg::Refused {
                    code: "malformed".into(),
                    message: e.to_string(),
                };
                let _ = out_tx.send(WsServerFrame {
                    seq: 0,
                    msg: refusal,
                });
                continue;
            }
        };
        match frame {
            // Reports are Raft writes: answer them concurrently (replies carry `seq`), so
            // one slow commit does not hold up heartbeats and acknowledgements. A worker
            // sends an attempt's reports one after another, so their order is kept.
            WsWorkerFrame::Request {
                seq,
                msg: msg @ WorkerMsg::Report(_),
            } => {
                let (t, out_tx) = (t.clone(), out_tx.clone());
                tokio::spawn(async move {
                    let reply = t.handle(msg).await;
                    let _ = out_tx.send(WsServerFrame { seq, msg: reply });
                });
            }
            WsWorkerFrame::Request { seq, msg } => {
                let id_hint = match &msg {
                    WorkerMsg::Heartbeat(h) => Some(h.worker_id.clone()),
                    _ => None,
                };
                let reply = t.handle(msg).await;
                let attached = match &reply {
                    ServerMsg::Registered(r) => Some(r.worker_id.clone()),
                    ServerMsg::HeartbeatAck(_) => id_hint,
                    _ => None,
                };
                if let Some(id) = attached {
                    t.node.workers.attach_ws(&id, push_tx.clone());
                    worker_id = Some(id);
                }
                if out_tx.send(WsServerFrame { seq, msg: reply }).is_err() {
                    break;
                }
            }
            WsWorkerFrame::StopAck { attempt, ack } => {
                tracing::debug!(
                    instance_id = attempt.instance_id,
                    accepted = ack.accepted,
                    "Stop acknowledged."
                );
            }
            WsWorkerFrame::DispatchAck { attempt, ack } => {
                // Only the worker this socket belongs to can answer for its attempts.
                let Some(id) = worker_id.clone().filter(|id| owns(&t, id, &attempt)) else {
                    tracing::debug!(
                        instance_id = attempt.instance_id,
                        "Ignored a dispatch answer for an attempt of another worker."
                    );
                    continue;
                };
                let key = (attempt.instance_id, attempt.attempt);
                if ack.accepted {
                    t.node.workers.dispatch_accepted(key);
                } else {
                    let reason = ack.reason.unwrap_or_else(|| "no reason given".into());
                    crate::server::metrics::dispatch_refused(
                        crate::server::metrics::REFUSED_BY_WORKER,
                    );
                    let node = t.node.clone();
                    tokio::spawn(async move {
                        crate::server::dispatcher::refuse_dispatch(&node, &id, key, reason).await
                    });
                }
            }
        }
    }
    if let Some(id) = worker_id {
        t.node.workers.detach_ws(&id, &push_tx);
    }
    drop(out_tx);
    drop(push_tx);
    let _ = writer.await;
}

/// Whether `attempt` (with its exact fencing token) was dispatched to `worker_id`.
fn owns(t: &TransportState, worker_id: &str, attempt: &AttemptRef) -> bool {
    let guard = t.node.state.read().expect("state lock");
    guard
        .state
        .instances
        .get(&attempt.instance_id)
        .and_then(|i| i.attempts.iter().find(|a| a.number == attempt.attempt))
        .is_some_and(|a| a.worker == worker_id && a.fencing_token == attempt.token)
}
