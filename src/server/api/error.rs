//! API errors as `application/problem+json` (RFC 9457) with a stable `code`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::server::propose::ProposeError;
use crate::server::read_index::ReadError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token (or a revoked or expired one): send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    MalformedBody(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("{0}")]
    Forbidden(String),
    /// The operator's processor policy refuses the job (see `GET /api/v1/policy`).
    #[error("{message}")]
    PolicyDenied { field: String, message: String },
    #[error("too many failed token checks from this address; retry after {0} s")]
    TooManyFailures(u64),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("this Idempotency-Key was already used with a different request; use a new key for a new request")]
    IdempotencyConflict,
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// The problem document every error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`/problems/<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Invalid { .. } => (StatusCode::BAD_REQUEST, "validation_failed"),
            Self::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::PolicyDenied { .. } => (StatusCode::FORBIDDEN, "policy_denied"),
            Self::TooManyFailures(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_failures"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            Self::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
            Self::IdempotencyConflict => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, code, "Request failed.");
        }
        let field = match &self {
            Self::Invalid { field, .. } => field.clone(),
            Self::PolicyDenied { field, .. } => Some(field.clone()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_string(),
            field,
        };
        let mut resp = (status, axum::Json(problem)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/problem+json".parse().expect("valid header"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("valid header"));
        }
        if let Self::TooManyFailures(secs) = &self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("valid header"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("valid header"),
            );
        }
        resp
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NotFound { .. } => Self::NotFound(e.to_string()),
            StateError::AlreadyExists { .. } => Self::AlreadyExists(e.to_string()),
            StateError::IdempotencyConflict => Self::IdempotencyConflict,
            StateError::Conflict { message } => Self::InvalidState(message),
            StateError::Forbidden { message } => Self::Forbidden(message),
            StateError::PolicyDenied { field, message } => Self::PolicyDenied { field, message },
            StateError::Invalid { field, message } => Self::Invalid {
                field: Some(field),
                message,
            },
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader(_) => Self::Unavailable(e.to_string()),
            ProposeError::OutcomeUnknown(_) => Self::OutcomeUnknown(e.to_string()),
            ProposeError::Fatal(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NoLeader(_) => Self::Unavailable(e.to_string()),
            ReadError::Fatal(_) => Self::Internal(e.to_string()),
        }
    }
}
