//! What a transport does with each worker message, whichever protocol carried it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::TransportState;
use crate::protocol::{
    compatible, AttemptRef, Deregister, Heartbeat, HeartbeatAck, Register, Registered, Report,
    ReportAck, ServerMsg, WorkerMsg,
};
use crate::server::api::validate;
use crate::server::VERSION;
use crate::state::{Command, InstanceStatus, Outcome, StateError, WorkerReg};

/// The credential servers present to a worker and the worker presents back: derived
/// from the cluster secret, so every leader knows it and the Raft log never holds it.
pub fn worker_credential(secret: &str, cluster_id: &str, worker_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"raftjob-worker-credential\0");
    mac.update(cluster_id.as_bytes());
    mac.update(b"\0");
    mac.update(worker_id.as_bytes());
    format!("rjc_{}", hex::encode(mac.finalize().into_bytes()))
}

fn refused(code: &'static str, message: impl Into<String>) -> ServerMsg {
    crate::server::metrics::transport_refused(code);
    ServerMsg::Refused {
        code: code.into(),
        message: message.into(),
    }
}

impl TransportState {
    pub(crate) async fn handle(&self, msg: WorkerMsg) -> ServerMsg {
        match msg {
            WorkerMsg::Register(r) => self.register(r).await,
            WorkerMsg::Heartbeat(h) => self.heartbeat(h).await,
            WorkerMsg::Report(r) => self.report(r).await,
            WorkerMsg::Deregister(d) => self.deregister(d).await,
        }
    }

    fn not_leader(&self) -> Option<ServerMsg> {
        let leader = self.node.raft.metrics().borrow().current_leader;
        if leader == Some(self.node.id) {
            return None;
        }
        let leader_addr = leader.and_then(|l| {
            let s = self.node.state.read().expect("state lock");
            s.state
                .nodes
                .get(&l)
                .and_then(|a| a.transports.get(&self.protocol).cloned())
        });
        Some(ServerMsg::NotLeader {
            leader_id: leader,
            leader_addr,
        })
    }

    fn check_credential(
        &self,
        worker_id: &str,
        credential: &str,
    ) -> Result<String, Box<ServerMsg>> {
        let cluster_id = self
            .node
            .cluster_id()
            .ok_or_else(|| refused("not_ready", "the cluster has no id yet; retry"))?;
        let known = self
            .node
            .state
            .read()
            .expect("state lock")
            .state
            .workers
            .contains_key(worker_id);
        if !known {
            return Err(Box::new(refused(
                "unknown_worker",
                format!("worker {worker_id} is not registered; register again"),
            )));
        }
        let expected = worker_credential(&self.node.config.cluster_secret, &cluster_id, worker_id);
        if !crate::server::cluster::secrets_equal(expected.as_bytes(), credential.as_bytes()) {
            return Err(Box::new(refused(
                "bad_credential",
                "wrong worker credential; register again",
            )));
        }
        Ok(cluster_id)
    }

    async fn register(&self, r: Register) -> ServerMsg {
        if !compatible(VERSION, &r.version) {
            return refused(
                "incompatible_version",
                format!(
                    "worker version {} cannot join servers of version {VERSION}: run a worker of version {VERSION} (same major version; for 0.x the same minor)",
                    r.version
                ),
            );
        }
        let protocol = r.protocol.to_ascii_lowercase();
        if protocol != self.protocol {
            return refused(
                "protocol_mismatch",
                format!("this is the {} transport port, but the worker speaks {}; use the server's {} port", self.protocol, r.protocol, r.protocol),
            );
        }
        if protocol == "http" && r.address.as_deref().is_none_or(str::is_empty) {
            return refused(
                "missing_address",
                "an http worker must give the address of its own dispatch endpoint",
            );
        }
        if let Err(e) = validate::name("name", &r.name).and_then(|_| {
            r.tag
                .as_deref()
                .map_or(Ok(()), |t| validate::name("tag", t))
        }) {
            return refused("invalid", e.to_string());
        }
        if let Err(e) = self.node.linearizable_barrier().await {
            return refused("unavailable", e.to_string());
        }
        let (app_id, token_hash, cluster_id) = {
            let s = self.node.state.read().expect("state lock");
            let Some(app) = s.state.app_by_name(&r.app) else {
                return refused(
                    "unknown_app",
                    format!("no app named {:?}; create it with POST /api/v1/apps", r.app),
                );
            };
            // During a rotation the previous token stays valid until it is retired.
            let hashes: Vec<String> = std::iter::once(app.worker_token_hash.clone())
                .chain(app.previous_worker_token_hash.clone())
                .collect();
            (app.id, hashes, s.state.meta.cluster_id.clone())
        };
        let given = crate::server::api::hash_token(&r.token);
        if !token_hash
            .iter()
            .any(|h| crate::server::cluster::secrets_equal(given.as_bytes(), h.as_bytes()))
        {
            return refused(
                "bad_token",
                format!("wrong worker token for app {:?}", r.app),
            );
        }
        let Some(cluster_id) = cluster_id else {
            return refused("not_ready", "the cluster has no id yet; retry");
        };
        let worker_id = format!("{}/{}", r.app, r.name);
        let worker = WorkerReg {
            id: worker_id.clone(),
            app_id,
            name: r.name.clone(),
            protocol,
            address: r.address.clone(),
            tag: r.tag.clone(),
            version: r.version.clone(),
            max_concurrency: r.max_concurrency,
            registered_at_ms: 0,
        };
        if let Err(e) = self
            .node
            .propose(Command::RegisterWorker { worker }, None)
            .await
        {
            return refused("unavailable", e.to_string());
        }
        let tuning = &self.node.config.workers;
        tracing::info!(worker = %worker_id, protocol = %self.protocol, version = %r.version, "Worker registered.");
        ServerMsg::Registered(Registered {
            credential: worker_credential(
                &self.node.config.cluster_secret,
                &cluster_id,
                &worker_id,
            ),
            worker_id,
            cluster_id,
            term: self.node.raft.metrics().borrow().current_term,
            heartbeat_ms: tuning.heartbeat_ms,
            lease_ms: tuning.lease_ms,
            server_version: VERSION.into(),
        })
    }

    /// Renews leases only while this leader has heard from a quorum within the election
    /// timeout: a deposed leader stops renewing before a new one can re-dispatch.
    fn quorum_recent(&self) -> bool {
        let m = self.node.raft.metrics().borrow().clone();
        let limit = self.node.config.raft.election_timeout_min_ms;
        m.current_leader == Some(self.node.id)
            && (m.millis_since_quorum_ack.is_some_and(|ms| ms <= limit)
                || crate::planted::active(crate::planted::Bug::RenewWithoutQuorum))
    }

    async fn heartbeat(&self, h: Heartbeat) -> ServerMsg {
        if let Some(redirect) = self.not_leader() {
            return redirect;
        }
        let cluster_id = match self.check_credential(&h.worker_id, &h.credential) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let registry = &self.node.workers;
        registry.heartbeat(&h.worker_id, h.running, h.max_concurrency);
        let mut revoke = Vec::new();
        let mut valid = Vec::new();
        let servers;
        {
            let s = self.node.state.read().expect("state lock");
            servers = s
                .state
                .nodes
                .values()
                .filter_map(|n| n.transports.get(&self.protocol).cloned())
                .collect();
            for a in &h.held {
                let current = s.state.instances.get(&a.instance_id).and_then(|i| {
                    let att = i.attempts.iter().find(|x| x.number == a.attempt)?;
                    Some((i.status, att.status, att.fencing_token, att.worker.clone()))
                });
                match current {
                    Some((inst, att, token, worker))
                        if token == a.token
                            && worker == h.worker_id
                            && !att.is_terminal()
                            && inst != InstanceStatus::Stopping =>
                    {
                        valid.push(*a)
                    }
                    _ => revoke.push(*a),
                }
            }
        }
        let renewed = self.quorum_recent();
        if renewed {
            registry.renew(&valid);
        }
        ServerMsg::HeartbeatAck(HeartbeatAck {
            term: self.node.raft.metrics().borrow().current_term,
            cluster_id,
            renewed,
            lease_ms: self.node.config.workers.lease_ms,
            revoke,
            servers,
        })
    }

    async fn report(&self, r: Report) -> ServerMsg {
        if let Some(redirect) = self.not_leader() {
            return redirect;
        }
        if let Err(refusal) = self.check_credential(&r.worker_id, &r.credential) {
            return *refusal;
        }
        let AttemptRef {
            instance_id,
            attempt,
            token,
        } = r.attempt;
        // A worker may only report on attempts dispatched to it.
        let owned = {
            let s = self.node.state.read().expect("state lock");
            let inst = s.state.instances.get(&instance_id);
            inst.and_then(|i| i.attempts.iter().find(|a| a.number == attempt))
                .map(|a| a.worker == r.worker_id)
        };
        if owned != Some(true) {
            let term = self.node.raft.metrics().borrow().current_term;
            return ServerMsg::ReportAck(ReportAck {
                term,
                accepted: false,
            });
        }
        if let crate::state::AttemptEvent::Running = r.event {
            self.node.workers.dispatch_accepted((instance_id, attempt));
        }
        let finishes = matches!(r.event, crate::state::AttemptEvent::Finished { .. });
        let cmd = Command::Report {
            instance_id,
            attempt,
            token,
            event: r.event,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        match self.node.propose_until(cmd, None, deadline).await {
            Ok(resp) => {
                let accepted = matches!(resp.outcome, Outcome::ReportAccepted { accepted: true });
                if accepted && finishes {
                    self.node
                        .workers
                        .attempt_finished(&r.worker_id, (instance_id, attempt));
                }
                ServerMsg::ReportAck(ReportAck {
                    term: self.node.raft.metrics().borrow().current_term,
                    accepted,
                })
            }
            Err(_) => self.not_leader().unwrap_or_else(|| {
                refused("unavailable", "the report could not be committed; retry")
            }),
        }
    }

    /// A worker shutting down cleanly asks to be forgotten. Refused while an attempt
    /// dispatched to it is open: the worker's reports or the lease settle it first (and
    /// the leader forgets the worker later, once it has been lost for
    /// `workers.forget_after_ms`).
    async fn deregister(&self, d: Deregister) -> ServerMsg {
        if let Some(redirect) = self.not_leader() {
            return redirect;
        }
        let cluster_id = match self.node.cluster_id() {
            Some(c) => c,
            None => return refused("not_ready", "the cluster has no id yet; retry"),
        };
        // The credential is derived from the worker id, so it is checked even when the
        // registration is already gone (a resent deregistration).
        let expected =
            worker_credential(&self.node.config.cluster_secret, &cluster_id, &d.worker_id);
        if !crate::server::cluster::secrets_equal(expected.as_bytes(), d.credential.as_bytes()) {
            return refused("bad_credential", "wrong worker credential");
        }
        let cmd = Command::DeregisterWorker {
            id: d.worker_id.clone(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let outcome = match self.node.propose_until(cmd, None, deadline).await {
            Ok(resp) => resp.outcome,
            Err(_) => {
                return self.not_leader().unwrap_or_else(|| {
                    refused(
                        "unavailable",
                        "the deregistration could not be committed; retry",
                    )
                })
            }
        };
        let removed = match outcome {
            Outcome::Worker { .. } => true,
            Outcome::Rejected {
                error: StateError::NotFound { .. },
            } => false,
            Outcome::Rejected {
                error: StateError::Conflict { message },
            } => return refused("has_open_attempts", message),
            other => {
                return refused(
                    "unavailable",
                    format!("unexpected outcome {other:?}; retry"),
                )
            }
        };
        self.node.workers.forget_worker(&d.worker_id);
        tracing::info!(worker = %d.worker_id, removed, "Worker deregistered.");
        ServerMsg::Deregistered {
            worker_id: d.worker_id,
            removed,
        }
    }
}
