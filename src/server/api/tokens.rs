//! `/api/v1/tokens`: scoped API tokens (admin only). A token is limited to one app
//! and a role (`read`, `operate`, `manage`); its secret is shown once, when it is
//! created, and only its hash is replicated.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use super::auth::{role_name, Caller};
use super::{
    hash_token, read_barrier, request_meta, validate, write, ApiError, ApiJson, ApiQuery, IdPath,
    ReadQuery,
};
use crate::server::Node;
use crate::state::{ApiToken, Command, Millis, Outcome, Role};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for (letters, digits, `.`, `_`, `-`; 1 to 64 characters).
    pub name: String,
    /// The one app the token may see and act on, by name.
    pub app: String,
    /// `read`, `operate` or `manage`.
    pub role: Role,
    /// When the token stops working (RFC 3339); none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A token as the API shows it: never its secret or hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: u64,
    pub name: String,
    pub app: String,
    pub app_id: u64,
    pub role: Role,
    pub created_at_ms: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<Millis>,
    /// `active`, `expired` or `revoked` (expiry by this node's clock).
    pub status: String,
}

impl TokenView {
    fn new(state: &crate::state::State, t: &ApiToken) -> Self {
        let status = if t.revoked_at_ms.is_some() {
            "revoked"
        } else if !t.valid_at(crate::server::now_ms()) {
            "expired"
        } else {
            "active"
        };
        Self {
            id: t.id,
            name: t.name.clone(),
            app: state
                .apps
                .get(&t.app_id)
                .map(|a| a.name.clone())
                .unwrap_or_default(),
            app_id: t.app_id,
            role: t.role,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            revoked_at_ms: t.revoked_at_ms,
            status: status.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer token. Shown once: only its hash is stored.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// Derived from the request id with the cluster secret (like an app's worker token),
/// so a retried create shows the same secret and the Raft log holds only its hash.
fn token_secret(secret: &str, request_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"raftjob-api-token\0");
    mac.update(request_id.as_bytes());
    format!("rjt_{}", hex::encode(mac.finalize().into_bytes()))
}

fn view_of(node: &Node, outcome: Outcome) -> Result<TokenView, ApiError> {
    match outcome {
        Outcome::Token { token } => {
            let guard = node.state.read().expect("state lock");
            Ok(TokenView::new(&guard.state, &token))
        }
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses((status = 201, body = TokenCreated), (status = 400, body = super::Problem), (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
pub async fn create_token(
    State(node): State<Arc<Node>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    validate::name("name", &body.name)?;
    validate::name("app", &body.app)?;
    let expires_at_ms = body.expires_at.map(|t| t.timestamp_millis());
    if expires_at_ms.is_some_and(|e| e <= crate::server::now_ms()) {
        return Err(ApiError::invalid(
            "expires_at",
            "must be in the future (RFC 3339, e.g. 2030-01-01T00:00:00Z)",
        ));
    }
    let request = request_meta(&caller, &headers, "POST /api/v1/tokens", &body)?;
    let secret = token_secret(&node.config.cluster_secret, &request.id);
    let cmd = Command::CreateToken {
        name: body.name.clone(),
        app: body.app.clone(),
        role: body.role,
        token_hash: hash_token(&secret),
        expires_at_ms,
    };
    let (outcome, _) = write(&node, request, cmd).await?;
    let token = view_of(&node, outcome)?;
    tracing::info!(token_id = token.id, app = %token.app, role = role_name(token.role), "Created a scoped API token.");
    Ok((StatusCode::CREATED, Json(TokenCreated { token, secret })))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(ReadQuery), responses((status = 200, body = TokenList)))]
pub async fn list_tokens(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<TokenList>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let guard = node.state.read().expect("state lock");
    let tokens = guard
        .state
        .tokens
        .values()
        .map(|t| TokenView::new(&guard.state, t))
        .collect();
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = u64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = TokenView), (status = 404, body = super::Problem)))]
pub async fn revoke_token(
    State(node): State<Arc<Node>>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<TokenView>, ApiError> {
    let request = request_meta(
        &caller,
        &headers,
        &format!("DELETE /api/v1/tokens/{id}"),
        &(),
    )?;
    let (outcome, _) = write(&node, request, Command::RevokeToken { id }).await?;
    Ok(Json(view_of(&node, outcome)?))
}
