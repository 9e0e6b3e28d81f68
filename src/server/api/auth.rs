//! Who is calling the API and what they may do.
//!
//! The [`authenticate`] middleware turns the bearer token into a [`Caller`]: the admin
//! token (or, during a rotation, the next admin token) is [`Caller::Admin`] with full
//! access; a scoped token is looked up by the hash of its secret in the replicated
//! state and is [`Caller::Scoped`] when it is neither revoked nor expired (expiry is
//! judged by this node's clock). The middleware also checks the route against the
//! token's role ([`needed_role`]); handlers then keep a scoped caller inside its app:
//! another app's job or instance is "not found" (so its ids do not leak), lists are
//! filtered, and a write naming another app is `403 forbidden`. Apply checks a scoped
//! write again against the committed state (see `state::apply`).
//!
//! Failed token checks are counted per client IP: after [`MAX_FAILURES`] in
//! [`FAILURE_WINDOW`], every request from that IP gets `429 too_many_failures` with
//! `Retry-After` until the window has passed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{hash_token, ApiError};
use crate::server::cluster::secrets_equal;
use crate::server::Node;
use crate::state::{AppId, Instance, Job, Role, TokenId};

/// Failed token checks an IP may make within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// The authenticated caller of an API request (a request extension set by
/// [`authenticate`]; handlers take it as an extractor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: everything.
    Admin,
    /// A scoped token: one app, one role.
    Scoped {
        token_id: TokenId,
        app_id: AppId,
        role: Role,
    },
}

impl Caller {
    /// The scoped token's id (none for the admin).
    pub fn token_id(&self) -> Option<TokenId> {
        match self {
            Self::Admin => None,
            Self::Scoped { token_id, .. } => Some(*token_id),
        }
    }

    /// Whether the caller may see records of `app_id`.
    pub fn sees(&self, app_id: AppId) -> bool {
        match self {
            Self::Admin => true,
            Self::Scoped { app_id: own, .. } => *own == app_id,
        }
    }

    /// A job the caller may see; another app's job is "not found".
    pub fn job<'a>(&self, state: &'a crate::state::State, id: u64) -> Result<&'a Job, ApiError> {
        state
            .jobs
            .get(&id)
            .filter(|j| self.sees(j.app_id))
            .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
    }

    /// An instance the caller may see; another app's instance is "not found".
    pub fn instance<'a>(
        &self,
        state: &'a crate::state::State,
        id: u64,
    ) -> Result<&'a Instance, ApiError> {
        state
            .instances
            .get(&id)
            .filter(|i| self.sees(i.app_id))
            .ok_or_else(|| ApiError::NotFound(format!("instance {id} not found")))
    }

    /// Before a write to job `id`: 404 when this node knows it as another app's job.
    /// (Apply checks again against the committed state.)
    pub fn check_job(&self, node: &Node, id: u64) -> Result<(), ApiError> {
        let guard = node.state.read().expect("state lock");
        match guard.state.jobs.get(&id) {
            Some(j) if !self.sees(j.app_id) => {
                Err(ApiError::NotFound(format!("job {id} not found")))
            }
            _ => Ok(()),
        }
    }

    /// Before a write to instance `id`: 404 when it belongs to another app.
    pub fn check_instance(&self, node: &Node, id: u64) -> Result<(), ApiError> {
        let guard = node.state.read().expect("state lock");
        match guard.state.instances.get(&id) {
            Some(i) if !self.sees(i.app_id) => {
                Err(ApiError::NotFound(format!("instance {id} not found")))
            }
            _ => Ok(()),
        }
    }

    /// A write that names an app (a job's `app`): 403 unless it is the caller's app.
    pub fn check_app_name(&self, node: &Node, name: &str) -> Result<(), ApiError> {
        let Self::Scoped {
            token_id, app_id, ..
        } = self
        else {
            return Ok(());
        };
        let guard = node.state.read().expect("state lock");
        if guard.state.apps.get(app_id).is_some_and(|a| a.name == name) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "token {token_id} is limited to its own app and cannot act on app {name:?}"
        )))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The role a scoped token needs for a route; `None`: admin only (apps, tokens,
/// cluster, members, leader transfer, debug, metrics, and anything not listed).
pub fn needed_role(method: &Method, route: &str) -> Option<Role> {
    match (method.as_str(), route) {
        (
            "GET",
            "/api/v1/jobs"
            | "/api/v1/jobs/{id}"
            | "/api/v1/jobs/{id}/schedule"
            | "/api/v1/jobs/{id}/skipped"
            | "/api/v1/instances"
            | "/api/v1/instances/{id}"
            | "/api/v1/instances/{id}/logs"
            | "/api/v1/workers"
            | "/api/v1/audit",
        ) => Some(Role::Read),
        (
            "POST",
            "/api/v1/jobs/{id}/run"
            | "/api/v1/jobs/{id}/enable"
            | "/api/v1/jobs/{id}/disable"
            | "/api/v1/instances/{id}/stop"
            | "/api/v1/instances/{id}/cancel"
            | "/api/v1/instances/{id}/retry",
        ) => Some(Role::Operate),
        ("POST", "/api/v1/jobs") | ("PUT" | "DELETE", "/api/v1/jobs/{id}") => Some(Role::Manage),
        _ => None,
    }
}

/// The api listener's authentication middleware (see the module docs).
pub async fn authenticate(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(wait) = ip.and_then(blocked_for) {
        return ApiError::TooManyFailures(wait).into_response();
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(caller) = caller_of(&node, given) else {
        if let Some(ip) = ip {
            record_failure(ip);
        }
        return ApiError::Unauthorized.into_response();
    };
    if let Caller::Scoped { token_id, role, .. } = &caller {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        match needed_role(req.method(), &route) {
            None => {
                return ApiError::Forbidden(format!(
                    "token {token_id} is scoped to one app; {} {route} needs the admin token",
                    req.method()
                ))
                .into_response()
            }
            Some(needed) if *role < needed => {
                return ApiError::Forbidden(format!(
                    "token {token_id} has role {}; {} {route} needs {}",
                    role_name(*role),
                    req.method(),
                    role_name(needed)
                ))
                .into_response()
            }
            Some(_) => {}
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Operate => "operate",
        Role::Manage => "manage",
    }
}

/// Who `token` is, if anyone.
fn caller_of(node: &Node, token: &str) -> Option<Caller> {
    if token.is_empty() {
        return None;
    }
    let admin = node.config.admin_tokens();
    if admin
        .iter()
        .any(|a| secrets_equal(token.as_bytes(), a.as_bytes()))
    {
        return Some(Caller::Admin);
    }
    let hash = hash_token(token);
    let guard = node.state.read().expect("state lock");
    let found = guard.state.token_by_hash(&hash)?;
    // The map lookup found the hash; compare it in constant time all the same.
    if !secrets_equal(found.token_hash.as_bytes(), hash.as_bytes())
        || !found.valid_at(crate::server::now_ms())
    {
        return None;
    }
    Some(Caller::Scoped {
        token_id: found.id,
        app_id: found.app_id,
        role: found.role,
    })
}

type Failures = HashMap<IpAddr, VecDeque<Instant>>;

fn failures() -> &'static Mutex<Failures> {
    static FAILURES: std::sync::OnceLock<Mutex<Failures>> = std::sync::OnceLock::new();
    FAILURES.get_or_init(Default::default)
}

/// Seconds an IP must wait, when it made too many failed checks recently.
fn blocked_for(ip: IpAddr) -> Option<u64> {
    let now = Instant::now();
    let mut map = failures().lock().expect("failures lock");
    let list = map.get_mut(&ip)?;
    while list
        .front()
        .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
    {
        list.pop_front();
    }
    if list.len() < MAX_FAILURES {
        if list.is_empty() {
            map.remove(&ip);
        }
        return None;
    }
    // Blocked until the oldest failure that keeps the count at the limit leaves.
    let oldest = list[list.len() - MAX_FAILURES];
    let left = FAILURE_WINDOW.saturating_sub(now.duration_since(oldest));
    Some(left.as_secs().max(1))
}

fn record_failure(ip: IpAddr) {
    let now = Instant::now();
    let mut map = failures().lock().expect("failures lock");
    if map.len() >= 10_000 {
        // Bounded memory: forget the addresses whose failures all left the window.
        map.retain(|_, l| {
            l.back()
                .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
        });
    }
    let list = map.entry(ip).or_default();
    list.push_back(now);
    while list.len() > MAX_FAILURES {
        list.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_roles() {
        assert_eq!(needed_role(&Method::GET, "/api/v1/jobs"), Some(Role::Read));
        assert_eq!(
            needed_role(&Method::POST, "/api/v1/jobs/{id}/run"),
            Some(Role::Operate)
        );
        assert_eq!(
            needed_role(&Method::POST, "/api/v1/jobs"),
            Some(Role::Manage)
        );
        assert_eq!(
            needed_role(&Method::DELETE, "/api/v1/jobs/{id}"),
            Some(Role::Manage)
        );
        for (m, r) in [
            (Method::POST, "/api/v1/apps"),
            (Method::GET, "/api/v1/apps"),
            (Method::POST, "/api/v1/tokens"),
            (Method::GET, "/api/v1/tokens"),
            (Method::GET, "/api/v1/cluster"),
            (Method::POST, "/api/v1/debug/clock"),
            (Method::GET, "/metrics"),
        ] {
            assert_eq!(needed_role(&m, r), None, "{m} {r} is admin only");
        }
        assert!(Role::Read < Role::Operate && Role::Operate < Role::Manage);
    }

    #[test]
    fn failures_block_an_ip_after_the_limit() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            record_failure(ip);
        }
        assert_eq!(blocked_for(ip), None);
        record_failure(ip);
        let wait = blocked_for(ip).expect("blocked at the limit");
        assert!((1..=10).contains(&wait));
        let other: IpAddr = "192.0.2.78".parse().unwrap();
        assert_eq!(blocked_for(other), None, "per IP");
    }
}
