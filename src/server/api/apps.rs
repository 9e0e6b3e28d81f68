//! `/api/v1/apps`: the units that own jobs and the workers that run them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::auth::Caller;
use super::{read_barrier, request_meta, validate, write, ApiError, ApiJson, ApiQuery, ReadQuery};
use crate::server::Node;
use crate::state::{App, Command, Outcome};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// Letters, digits, `.`, `_` and `-`; 1 to 64 characters; unique.
    pub name: String,
}

/// An app as the API shows it (without the token hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    pub id: u64,
    pub name: String,
    pub created_at_ms: i64,
}

impl From<&App> for AppView {
    fn from(a: &App) -> Self {
        Self {
            id: a.id,
            name: a.name.clone(),
            created_at_ms: a.created_at_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppCreated {
    #[serde(flatten)]
    pub app: AppView,
    /// The token workers of this app register with. Shown once: only its hash is stored.
    pub worker_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppView>,
}

/// The worker token is derived from the request id with the cluster secret, so a
/// retried request (same id) shows the same token, and the Raft log holds only its hash.
fn worker_token(secret: &str, request_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"raftjob-app-worker-token\0");
    mac.update(request_id.as_bytes());
    format!("rjw_{}", hex::encode(mac.finalize().into_bytes()))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[utoipa::path(post, path = "/api/v1/apps", tag = "apps", request_body = CreateApp,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses((status = 201, body = AppCreated), (status = 400, body = super::Problem), (status = 409, body = super::Problem)))]
pub async fn create_app(
    State(node): State<Arc<Node>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateApp>,
) -> Result<(StatusCode, Json<AppCreated>), ApiError> {
    validate::name("name", &body.name)?;
    let request = request_meta(&caller, &headers, "POST /api/v1/apps", &body)?;
    let token = worker_token(&node.config.cluster_secret, &request.id);
    let cmd = Command::CreateApp {
        name: body.name.clone(),
        worker_token_hash: hash_token(&token),
    };
    match write(&node, request, cmd).await? {
        (Outcome::App { app }, _) => Ok((
            StatusCode::CREATED,
            Json(AppCreated {
                app: (&app).into(),
                worker_token: token,
            }),
        )),
        (other, _) => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `POST /api/v1/apps/{name}/rotate-token`: the app's new worker token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRotated {
    #[serde(flatten)]
    pub app: AppView,
    /// The new worker token. Shown once: only its hash is stored. The previous token
    /// stays valid until `POST /api/v1/apps/{name}/retire-token`.
    pub worker_token: String,
}

pub(super) fn app_name(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    let axum::extract::Path(name) = path.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    validate::name("name", &name)?;
    Ok(name)
}

#[utoipa::path(post, path = "/api/v1/apps/{name}/rotate-token", tag = "apps",
    params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe (a retry shows the same token)")),
    responses((status = 200, body = TokenRotated), (status = 404, body = super::Problem)))]
pub async fn rotate_token(
    State(node): State<Arc<Node>>,
    caller: Caller,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Result<Json<TokenRotated>, ApiError> {
    let name = app_name(path)?;
    let op = format!("POST /api/v1/apps/{name}/rotate-token");
    let request = request_meta(&caller, &headers, &op, &())?;
    let token = worker_token(&node.config.cluster_secret, &request.id);
    let cmd = Command::RotateAppToken {
        app: name,
        worker_token_hash: hash_token(&token),
    };
    match write(&node, request, cmd).await? {
        (Outcome::App { app }, _) => Ok(Json(TokenRotated {
            app: (&app).into(),
            worker_token: token,
        })),
        (other, _) => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(post, path = "/api/v1/apps/{name}/retire-token", tag = "apps",
    params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = AppView), (status = 404, body = super::Problem)))]
pub async fn retire_token(
    State(node): State<Arc<Node>>,
    caller: Caller,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Result<Json<AppView>, ApiError> {
    let name = app_name(path)?;
    let op = format!("POST /api/v1/apps/{name}/retire-token");
    let request = request_meta(&caller, &headers, &op, &())?;
    match write(&node, request, Command::RetireAppToken { app: name }).await? {
        (Outcome::App { app }, _) => Ok(Json((&app).into())),
        (other, _) => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/apps", tag = "apps", params(ReadQuery), responses((status = 200, body = AppList)))]
pub async fn list_apps(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<AppList>, ApiError> {
    read_barrier(&node, q.consistency.as_deref()).await?;
    let apps = node
        .state
        .read()
        .expect("state lock")
        .state
        .apps
        .values()
        .map(AppView::from)
        .collect();
    Ok(Json(AppList { apps }))
}
