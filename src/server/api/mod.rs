//! The api listener: the user-facing OpenAPI (`/api/v1/...`), health, metrics and the
//! OpenAPI document. Any node serves any request; writes and linearizable reads are
//! carried to the leader by [`crate::server::propose`] and [`crate::server::read_index`].

mod apps;
mod audit;
pub mod auth;
mod cluster;
pub mod debug;
pub mod error;
mod health;
mod instances;
mod jobs;
mod policy;
mod spec;
use spec::ProblemResponses;
mod tokens;
pub mod validate;
mod workers;

use std::sync::Arc;

pub use apps::hash_token;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
pub use error::{ApiError, Problem};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::OpenApi;

use super::Node;
use crate::state::{Command, Outcome, RequestMeta};

/// The largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Header for caller-chosen request ids.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(OpenApi)]
#[openapi(
    info(title = "raftjob API", description = "Jobs, apps and the cluster of a raftjob deployment. Every /api/v1 route needs `Authorization: Bearer <token>`: the admin token, or a scoped token (one app; role read, operate or manage; see docs/security.md). Writes accept an `Idempotency-Key` header."),
    paths(
        apps::create_app, apps::list_apps, apps::rotate_token, apps::retire_token,
        jobs::create_job, jobs::list_jobs, jobs::get_job, jobs::update_job, jobs::delete_job, jobs::enable_job, jobs::disable_job,
        jobs::preview_schedule, jobs::skipped_fires,
        cluster::get_cluster, cluster::add_member, cluster::remove_member, cluster::transfer_leader,
        instances::run_job, instances::get_instance, instances::list_instances, instances::instance_logs,
        instances::stop_instance, instances::cancel_instance, instances::retry_instance,
        workers::list_workers,
        tokens::create_token, tokens::list_tokens, tokens::revoke_token,
        audit::list_audit,
        policy::get_cluster_policy, policy::put_cluster_policy, policy::get_app_policy, policy::put_app_policy,
        debug::set_clock, debug::state_digest,
        health::healthz, health::readyz,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth, &ProblemResponses),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router(node: Arc<Node>) -> Router {
    if crate::planted::active(crate::planted::Bug::AckBeforeCommit) {
        let _ = PLANTED_NODE.set(Arc::downgrade(&node));
    }
    let api = Router::new()
        .route("/api/v1/apps", post(apps::create_app).get(apps::list_apps))
        .route("/api/v1/apps/{name}/rotate-token", post(apps::rotate_token))
        .route("/api/v1/apps/{name}/retire-token", post(apps::retire_token))
        .route(
            "/api/v1/apps/{name}/policy",
            get(policy::get_app_policy).put(policy::put_app_policy),
        )
        .route(
            "/api/v1/policy",
            get(policy::get_cluster_policy).put(policy::put_cluster_policy),
        )
        .route("/api/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route(
            "/api/v1/jobs/{id}",
            get(jobs::get_job)
                .put(jobs::update_job)
                .delete(jobs::delete_job),
        )
        .route("/api/v1/jobs/{id}/schedule", get(jobs::preview_schedule))
        .route("/api/v1/jobs/{id}/skipped", get(jobs::skipped_fires))
        .route("/api/v1/jobs/{id}/enable", post(jobs::enable_job))
        .route("/api/v1/jobs/{id}/disable", post(jobs::disable_job))
        .route("/api/v1/jobs/{id}/run", post(instances::run_job))
        .route("/api/v1/instances", get(instances::list_instances))
        .route("/api/v1/instances/{id}", get(instances::get_instance))
        .route("/api/v1/instances/{id}/logs", get(instances::instance_logs))
        .route(
            "/api/v1/instances/{id}/stop",
            post(instances::stop_instance),
        )
        .route(
            "/api/v1/instances/{id}/cancel",
            post(instances::cancel_instance),
        )
        .route(
            "/api/v1/instances/{id}/retry",
            post(instances::retry_instance),
        )
        .route("/api/v1/workers", get(workers::list_workers))
        .route(
            "/api/v1/tokens",
            post(tokens::create_token).get(tokens::list_tokens),
        )
        .route("/api/v1/tokens/{id}", delete(tokens::revoke_token))
        .route("/api/v1/audit", get(audit::list_audit))
        .route("/api/v1/debug/clock", post(debug::set_clock))
        .route("/api/v1/debug/state-digest", get(debug::state_digest))
        .route("/api/v1/cluster", get(cluster::get_cluster))
        .route("/api/v1/cluster/members", post(cluster::add_member))
        .route(
            "/api/v1/cluster/transfer-leader",
            post(cluster::transfer_leader),
        )
        .route(
            "/api/v1/cluster/members/{id}",
            delete(cluster::remove_member),
        )
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::authenticate,
        ));
    // `[metrics] require_token`: the same check as /api/v1 (admin only).
    let mut metrics = Router::new().route("/metrics", get(health::metrics));
    if node.config.metrics.require_token {
        metrics = metrics.route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::authenticate,
        ));
    }
    Router::new()
        .merge(api)
        .merge(metrics)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/", get(health::console))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(refuse_large_bodies))
        .with_state(node)
}

/// Refuses a body whose declared length is over the limit before reading any of it
/// (a client sending `Expect: 100-continue` then never sends it). Bodies without a
/// length are cut off at the limit while being read.
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return ApiError::PayloadTooLarge(MAX_BODY_BYTES).into_response();
    }
    next.run(req).await
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}; see /openapi.json",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}; see /openapi.json",
        req.method(),
        req.uri().path()
    ))
}

/// JSON body extractor whose rejections are problem+json naming the field at fault.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned + Serialize,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        body_from_value(value).map(Self)
    }
}

/// Decodes a request body already parsed as JSON. serde also reads a struct (and a
/// tagged enum) from an array, by position, so `[]` would pass for an object with
/// every field defaulted; a body must name its fields, so an array where the type has
/// an object is refused, naming where.
pub fn body_from_value<T>(value: serde_json::Value) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let decoded: T = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Invalid {
            field: (path != ".").then_some(path),
            message: format!("request body does not match the schema: {e}"),
        }
    })?;
    let reencoded = serde_json::to_value(&decoded)
        .map_err(|e| ApiError::Internal(format!("a decoded body does not encode: {e}")))?;
    if let Some(at) = positional(&value, &reencoded, "") {
        let (field, place) = if at.is_empty() {
            (None, "the body".to_string())
        } else {
            (Some(at.clone()), at)
        };
        return Err(ApiError::Invalid {
            field,
            message: format!("{place} must be a JSON object with named fields, not an array"),
        });
    }
    Ok(decoded)
}

/// The first place where `input` has an array and the decoded value an object.
fn positional(input: &serde_json::Value, decoded: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::{Array, Object};
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match (input, decoded) {
        (Array(_), Object(_)) => Some(at.to_string()),
        (Object(a), Object(b)) => a
            .iter()
            .find_map(|(k, v)| positional(v, b.get(k)?, &join(k))),
        (Array(a), Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| positional(v, w, &format!("{at}[{i}]"))),
        _ => None,
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(MAX_BODY_BYTES);
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonDataError(e) => {
            // serde_path_to_error puts the path first: "schedule.expr: invalid type ...".
            let text = e.body_text();
            let detail = text
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&text);
            let field = detail
                .split_once(": ")
                .map(|(path, _)| path.to_string())
                .filter(|p| !p.contains(' '));
            ApiError::Invalid {
                field,
                message: format!("request body does not match the schema: {detail}"),
            }
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::MalformedBody(format!("request body is not valid JSON: {}", e.body_text()))
        }
        other => ApiError::MalformedBody(other.body_text()),
    }
}

/// SHA-256 over an operation name and a canonical body: the same request always
/// hashes the same, on any node.
pub fn hash_body(op: &str, body: &impl Serialize) -> String {
    let mut h = Sha256::new();
    h.update(op.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(body).expect("request bodies serialise"));
    hex::encode(h.finalize())
}

/// The request id of a write: the caller's `Idempotency-Key` scoped to the caller,
/// or a fresh id the node makes (retries inside this node keep it). A scoped token's
/// id goes into the proposal, so apply can check its scope and audit it.
pub(crate) fn request_meta(
    caller: &auth::Caller,
    headers: &HeaderMap,
    op: &str,
    body: &impl Serialize,
) -> Result<RequestMeta, ApiError> {
    let body_hash = hash_body(op, body);
    let id = match headers.get(IDEMPOTENCY_KEY) {
        None => format!("node/{}", uuid::Uuid::new_v4()),
        Some(v) => {
            let key = v.to_str().ok().filter(|k| {
                !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())
            });
            let key = key.ok_or_else(|| {
                ApiError::invalid(
                    "Idempotency-Key",
                    "use 1 to 255 visible ASCII characters, for example a UUID",
                )
            })?;
            match caller.token_id() {
                None => format!("admin/{key}"),
                Some(token) => format!("token/{token}/{key}"),
            }
        }
    };
    Ok(RequestMeta {
        id,
        body_hash,
        token_id: caller.token_id(),
    })
}

/// Proposes a user write and turns a rejection into an API error.
pub(crate) async fn write(
    node: &Node,
    request: RequestMeta,
    cmd: Command,
) -> Result<(Outcome, bool), ApiError> {
    let resp = if crate::planted::active(crate::planted::Bug::AckBeforeCommit)
        && matches!(cmd, Command::CreateJob { .. } | Command::RunJob { .. })
    {
        planted_ack_before_commit(node, request, cmd)
    } else {
        node.propose(cmd, Some(request)).await?
    };
    match resp.outcome {
        Outcome::Rejected { error } => Err(error.into()),
        outcome => Ok((outcome, resp.replayed)),
    }
}

/// PLANTED BUG `ack-before-commit` (only in `planted-bugs` builds): answers with what
/// applying the write to a copy of this node's (possibly stale) state would give,
/// proposes it in the background, and never proposes every fifth one.
fn planted_ack_before_commit(
    node: &Node,
    request: RequestMeta,
    cmd: Command,
) -> crate::state::Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let proposal = crate::state::Proposal {
        v: crate::state::COMMAND_VERSION,
        now_ms: crate::server::now_ms(),
        request: Some(request.clone()),
        cmd: cmd.clone(),
    };
    let speculative = {
        let guard = node.state.read().expect("state lock");
        let (term, index) = guard
            .last_applied
            .map_or((0, 0), |id| (id.leader_id.term, id.index));
        let mut copy = guard.state.clone();
        drop(guard);
        crate::state::apply(&mut copy, &proposal, term, index + 1)
    };
    if WRITES.fetch_add(1, Ordering::Relaxed) % 5 == 4 {
        tracing::warn!(request = %request.id, "PLANTED BUG ack-before-commit: acknowledged a write that is never proposed.");
    } else if let Some(node) = PLANTED_NODE.get().and_then(std::sync::Weak::upgrade) {
        tokio::spawn(async move {
            let _ = node.propose(cmd, Some(request)).await;
        });
    }
    speculative
}

/// This server's node, for the background proposals of `ack-before-commit` (set only
/// when that planted bug is active; a server process is one node).
static PLANTED_NODE: std::sync::OnceLock<std::sync::Weak<Node>> = std::sync::OnceLock::new();

/// `?consistency=stale` asks for a local read without the ReadIndex round.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    pub consistency: Option<String>,
}

pub(crate) async fn read_barrier(node: &Node, consistency: Option<&str>) -> Result<(), ApiError> {
    match consistency {
        None | Some("linearizable") => Ok(node.linearizable_barrier().await?),
        Some("stale") => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "consistency",
            format!("{other:?} is not one of: linearizable, stale"),
        )),
    }
}

/// Query extractor with problem+json rejections.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::Invalid {
                field: None,
                message: format!("bad query string: {}", e.body_text()),
            })
    }
}

/// Path extractor for numeric ids with problem+json rejections.
pub struct IdPath(pub u64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid("id", e.body_text()))?;
        raw.parse()
            .map(Self)
            .map_err(|_| ApiError::invalid("id", format!("{raw:?} is not a numeric id")))
    }
}
