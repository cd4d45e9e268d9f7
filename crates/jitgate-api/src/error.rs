//! API errors: always JSON `{ "error": ..., "hint": ... }` with the right status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jitgate_core::engine::{Refusal, RefusalClass};
use serde::Serialize;

/// An error an API caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What happened.
    pub error: String,
    /// What to do.
    pub hint: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
}

impl ApiError {
    /// Build one.
    pub fn new(status: StatusCode, error: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            status,
            error: error.into(),
            hint,
        }
    }

    /// 400.
    pub fn bad_request(error: impl Into<String>, hint: Option<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, hint)
    }

    /// 401.
    pub fn unauthorized(error: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            error,
            Some("set JITGATE_TOKEN to a valid gateway or machine token (or run `jitgate login`)".into()),
        )
    }

    /// 403.
    pub fn forbidden(error: impl Into<String>, hint: Option<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, error, hint)
    }

    /// 404.
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, None)
    }

    /// 500 with a generic message; the cause goes to the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the gateway log has the details",
            None,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(Body {
                error: &self.error,
                hint: self.hint.as_deref(),
            }),
        )
            .into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r.class() {
            RefusalClass::BadInput => StatusCode::BAD_REQUEST,
            RefusalClass::Forbidden => StatusCode::FORBIDDEN,
            RefusalClass::NotFound => StatusCode::NOT_FOUND,
            RefusalClass::Conflict => StatusCode::CONFLICT,
        };
        Self::new(status, r.to_string(), r.hint())
    }
}

impl From<jitgate_store::StoreError> for ApiError {
    fn from(e: jitgate_store::StoreError) -> Self {
        match e {
            jitgate_store::StoreError::Conflict => Self::new(
                StatusCode::CONFLICT,
                "the record was changed by someone else at the same time",
                Some("run the command again".into()),
            ),
            jitgate_store::StoreError::NotFound => Self::not_found("not found"),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway's store is unavailable; nothing was changed",
                    Some("try again shortly; operators: check the store".into()),
                )
            }
        }
    }
}

impl From<jitgate_audit::AuditError> for ApiError {
    fn from(e: jitgate_audit::AuditError) -> Self {
        tracing::error!(error = %e, "audit write failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log could not be written; the action is not confirmed",
            Some("operators: check the audit log's disk and `jitgate audit verify`".into()),
        )
    }
}

/// Result of an API operation.
pub type ApiResult<T> = Result<T, ApiError>;
