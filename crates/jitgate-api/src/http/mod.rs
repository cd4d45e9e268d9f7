//! The HTTP edge: the router, the bearer-token extractor, and one module per resource
//! (`meta`, `requests`, `grants`, `sessions`, `audit`, `tokens`, `login`). Handlers decode the
//! [`crate::wire`] types, call the control plane, and map its `ControlError` to a status code
//! here and nowhere else.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Json, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use jitgate_core::{AuthFailure, HumanDuration, Principal};

mod audit;
mod grants;
mod login;
mod meta;
mod requests;
mod sessions;
mod tokens;

use crate::control::ControlPlane;
use crate::error::{ApiError, ApiResult};
use crate::wire::paths;

type Cp = State<Arc<ControlPlane>>;

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<Arc<ControlPlane>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, cp: &Arc<ControlPlane>) -> Result<Self, ApiError> {
        let h = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let token = bearer_value(h)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        match cp.authenticate(token).await {
            Ok(p) => Ok(Caller(p)),
            Err(f) => {
                // Counted here, where the HTTP failure is observed (the Postgres and SSH front
                // ends count their own).
                cp.metrics()
                    .auth_failures_total
                    .with_label_values(&["http", f.reason()])
                    .inc();
                Err(match f {
                    AuthFailure::Refused { message, .. } => ApiError::unauthorized(message),
                    AuthFailure::Unavailable(message) => ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        message,
                        Some("nothing was changed; operators: check the store".into()),
                    ),
                })
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (either case of `Bearer`).
fn bearer_value(h: &axum::http::HeaderValue) -> Option<&str> {
    h.to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caller's bearer token, for handlers that need the token itself (logout, SSH certs).
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(bearer_value)
}

/// A JSON body, or 400 saying what is wrong with it.
pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text()), None))
}

/// An optional `{"reason": ...}` body (approve, revoke): absent or unreadable means no reason.
pub(crate) struct OptionalReason(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for OptionalReason {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let b = Json::<crate::wire::Reason>::from_request(req, state).await;
        Ok(Self(b.map(|Json(r)| r.reason).unwrap_or_default()))
    }
}

fn parse_duration(s: Option<&str>) -> ApiResult<Option<HumanDuration>> {
    s.map(|d| HumanDuration::parse(d).map_err(|e| ApiError::bad_request(e.to_string(), None)))
        .transpose()
}

/// The ops listener's router: probes and metrics only, nothing that needs a token.
pub fn ops_router(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route(paths::HEALTHZ, get(|| async { "ok\n" }))
        .route(paths::READYZ, get(meta::readyz))
        .route(paths::METRICS, get(meta::metrics))
        .fallback(|| async {
            ApiError::not_found(
                "the ops listener serves /healthz, /readyz and /metrics only; the API is on [listen] http",
            )
        })
        .with_state(cp)
}

/// Build the router.
pub fn router(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route(paths::HEALTHZ, get(|| async { "ok\n" }))
        .route(paths::READYZ, get(meta::readyz))
        .route(paths::METRICS, get(meta::metrics))
        .route(paths::WHOAMI, get(meta::whoami))
        .route(paths::RESOURCES, get(meta::resources))
        .route(paths::INFO, get(meta::info))
        .route(paths::TLS_CA, get(meta::tls_ca))
        .route(paths::REQUESTS, get(requests::list).post(requests::create))
        .route(paths::REQUEST, get(requests::get_one))
        .route(paths::REQUEST_APPROVE, post(requests::approve))
        .route(paths::REQUEST_DENY, post(requests::deny))
        .route(paths::REQUEST_CANCEL, post(requests::cancel))
        .route(paths::BREAK_GLASS, post(requests::break_glass))
        .route(paths::REVIEWS, get(requests::reviews))
        .route(paths::REVIEW, get(requests::review))
        .route(paths::REVIEW_CLOSE, post(requests::close_review))
        .route(
            paths::ONCALL,
            get(|State(cp): Cp, Caller(who): Caller| async move {
                cp.oncall_status(&who).map(Json).map_err(crate::error::ApiError::from)
            }),
        )
        .route(paths::GRANTS, get(grants::list))
        .route(paths::GRANT_REVOKE, post(grants::revoke))
        .route(paths::GRANT_RELEASE, post(grants::release))
        .route(paths::GRANT_EXTEND, post(grants::extend))
        .route(paths::SESSIONS, get(sessions::list))
        .route(paths::SESSION_KILL, post(sessions::kill))
        .route(paths::AUDIT, get(audit::search))
        .route(paths::DRAIN, post(meta::drain))
        .route(paths::TOKENS, post(tokens::create))
        .route(paths::TOKENS_REVOKE, post(login::revoke))
        .route(paths::SSH_CERT, post(tokens::ssh_cert))
        .route(paths::LOGIN_START, post(login::start))
        .route(paths::LOGIN_FINISH, post(login::finish))
        .route(paths::LOGIN_DEVICE, post(login::device_start))
        .route(paths::LOGIN_DEVICE_POLL, post(login::device_poll))
        .route(paths::LOGIN_ID_TOKEN, post(login::id_token))
        .route(paths::LOGOUT, post(login::logout))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API lives under /v1/") })
        .with_state(cp)
}
