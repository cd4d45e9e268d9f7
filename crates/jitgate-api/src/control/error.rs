//! What the control plane answers when it does not do what was asked, in its own terms. HTTP
//! status codes are decided at the edge (`crate::error`, `From<ControlError> for ApiError`),
//! never here.

use std::fmt;

use jitgate_auth::AuthError;
use jitgate_core::engine::Refusal;

/// Why a control-plane call did not succeed.
#[derive(Debug)]
pub enum ControlError {
    /// The lifecycle rules said no (bad input, not allowed, not found, conflict).
    Refused(Refusal),
    /// The request is malformed or asks for something not configured here.
    BadRequest {
        /// What happened.
        message: String,
        /// What to do.
        hint: Option<String>,
    },
    /// Nothing by that id (or nothing the caller may see).
    NotFound(String),
    /// The caller may not do this.
    Forbidden {
        /// What happened.
        message: String,
        /// What to do.
        hint: Option<String>,
    },
    /// The store refused a write made against an older version of the record.
    Conflict,
    /// The store did not answer; nothing was changed. Carries the cause (for the log).
    StoreUnavailable(String),
    /// The audit log could not be written; the action is not confirmed.
    AuditUnavailable(String),
    /// A login step failed (provider, denied, invalid ID token, unknown attempt, pending).
    Login(AuthError),
    /// A bug or an impossible state; the cause goes to the log only.
    Internal(String),
}

/// A control-plane result.
pub type ControlResult<T> = Result<T, ControlError>;

impl ControlError {
    /// [`ControlError::BadRequest`].
    pub fn bad_request(message: impl Into<String>, hint: Option<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            hint,
        }
    }

    /// [`ControlError::Forbidden`].
    pub fn forbidden(message: impl Into<String>, hint: Option<String>) -> Self {
        Self::Forbidden {
            message: message.into(),
            hint,
        }
    }

    /// [`ControlError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// [`ControlError::Internal`].
    pub fn internal(cause: impl fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "{r}"),
            Self::BadRequest { message, .. } | Self::Forbidden { message, .. } => f.write_str(message),
            Self::NotFound(m) => f.write_str(m),
            Self::Conflict => f.write_str("the record was changed by someone else at the same time"),
            Self::StoreUnavailable(cause) => write!(f, "the store is unavailable: {cause}"),
            Self::AuditUnavailable(cause) => write!(f, "the audit log could not be written: {cause}"),
            Self::Login(e) => write!(f, "{e}"),
            Self::Internal(cause) => write!(f, "internal error: {cause}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<Refusal> for ControlError {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<jitgate_store::StoreError> for ControlError {
    fn from(e: jitgate_store::StoreError) -> Self {
        match e {
            jitgate_store::StoreError::Conflict => Self::Conflict,
            jitgate_store::StoreError::NotFound => Self::NotFound("not found".into()),
            other => Self::StoreUnavailable(other.to_string()),
        }
    }
}

impl From<jitgate_audit::AuditError> for ControlError {
    fn from(e: jitgate_audit::AuditError) -> Self {
        Self::AuditUnavailable(e.to_string())
    }
}

impl From<AuthError> for ControlError {
    fn from(e: AuthError) -> Self {
        Self::Login(e)
    }
}
