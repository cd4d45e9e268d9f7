//! API errors: always JSON `{ "error": ..., "hint": ... }` with the right status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jitgate_auth::AuthError;
use jitgate_core::engine::{Refusal, RefusalClass};
use serde::Serialize;

use crate::control::ControlError;

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

/// The HTTP face of a control-plane answer: the one place where the domain's errors get a
/// status code.
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Refused(r) => r.into(),
            ControlError::BadRequest { message, hint } => Self::bad_request(message, hint),
            ControlError::NotFound(m) => Self::not_found(m),
            ControlError::Forbidden { message, hint } => Self::forbidden(message, hint),
            ControlError::Conflict => jitgate_store::StoreError::Conflict.into(),
            ControlError::StoreUnavailable(cause) => {
                tracing::error!(error = %cause, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway's store is unavailable; nothing was changed",
                    Some("try again shortly; operators: check the store".into()),
                )
            }
            ControlError::AuditUnavailable(cause) => {
                tracing::error!(error = %cause, "audit write failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit log could not be written; the action is not confirmed",
                    Some("operators: check the audit log's disk and `jitgate audit verify`".into()),
                )
            }
            ControlError::Login(e) => auth_error(&e),
            ControlError::Internal(cause) => Self::internal(cause),
        }
    }
}

fn auth_error(e: &AuthError) -> ApiError {
    let (status, hint) = match e {
        AuthError::Provider(_) => (
            StatusCode::BAD_GATEWAY,
            Some("operators: check [oidc] issuer and the provider".to_string()),
        ),
        AuthError::Denied(_) | AuthError::InvalidToken(_) => (
            StatusCode::UNAUTHORIZED,
            Some("log in again with `jitgate login`".to_string()),
        ),
        AuthError::UnknownAttempt => (StatusCode::BAD_REQUEST, None),
        AuthError::Pending => (StatusCode::ACCEPTED, None),
        AuthError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
    };
    ApiError::new(status, e.to_string(), hint)
}

/// Result of an API operation.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_get_their_status_only_at_the_edge() {
        let status = |e: ControlError| ApiError::from(e).status;
        assert_eq!(status(ControlError::not_found("no request 9")), StatusCode::NOT_FOUND);
        assert_eq!(status(ControlError::forbidden("no", None)), StatusCode::FORBIDDEN);
        assert_eq!(status(ControlError::bad_request("bad", None)), StatusCode::BAD_REQUEST);
        assert_eq!(status(ControlError::Conflict), StatusCode::CONFLICT);
        assert_eq!(
            status(ControlError::StoreUnavailable("down".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(ControlError::AuditUnavailable("disk".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(ControlError::Login(AuthError::Pending)), StatusCode::ACCEPTED);
        assert_eq!(status(ControlError::internal("bug")), StatusCode::INTERNAL_SERVER_ERROR);
        // The cause of an outage stays in the log; the caller gets the fixed message.
        let e = ApiError::from(ControlError::StoreUnavailable("password=hunter2 at db:5432".into()));
        assert!(!e.error.contains("hunter2"), "{e:?}");
    }
}
