//! The HTTP routes: `/v1/...` JSON API, `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query as QueryParams, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use jitgate_audit::Query;
use jitgate_core::engine::NewRequest;
use jitgate_core::{HumanDuration, Principal, RequestState};
use serde::Deserialize;

mod login;

use crate::control::ControlPlane;
use crate::error::{ApiError, ApiResult};
use jitgate_core::AuthFailure;

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
        let token = h
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        match cp.authenticate(token).await {
            Ok(p) => Ok(Caller(p)),
            Err(f) => {
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

pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text()), None))
}

/// Build the router.
pub fn router(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/whoami", get(whoami))
        .route("/v1/resources", get(resources))
        .route("/v1/info", get(info))
        .route("/v1/tls/ca", get(tls_ca))
        .route("/v1/requests", get(list_requests).post(create_request))
        .route("/v1/requests/{id}", get(get_request))
        .route("/v1/requests/{id}/approve", post(approve))
        .route("/v1/requests/{id}/deny", post(deny))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/grants", get(list_grants))
        .route("/v1/grants/{id}/revoke", post(revoke))
        .route("/v1/grants/{id}/release", post(release))
        .route("/v1/grants/{id}/extend", post(extend))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}/kill", post(kill))
        .route("/v1/audit", get(audit))
        .route("/v1/tokens", post(create_token))
        .route("/v1/ssh/cert", post(ssh_cert))
        .route("/v1/login/start", post(login::start))
        .route("/v1/login/finish", post(login::finish))
        .route("/v1/login/device", post(login::device_start))
        .route("/v1/login/device/poll", post(login::device_poll))
        .route("/v1/login/id_token", post(login::id_token))
        .route("/v1/logout", post(login::logout))
        .route("/v1/tokens/revoke", post(login::revoke))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API lives under /v1/") })
        .with_state(cp)
}

async fn readyz(State(cp): Cp) -> impl IntoResponse {
    let health = cp.store().health().await;
    cp.metrics().store_up.set(i64::from(health.is_ok()));
    match health {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}\n")),
    }
}

async fn metrics(State(cp): Cp) -> impl IntoResponse {
    cp.refresh_gauges().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        cp.metrics().render(),
    )
}

async fn whoami(State(cp): Cp, Caller(who): Caller) -> impl IntoResponse {
    Json(cp.whoami(&who))
}

async fn info(State(cp): Cp, Caller(_who): Caller) -> impl IntoResponse {
    let mut v = cp.frontends();
    v["version"] = serde_json::Value::String(env!("CARGO_PKG_VERSION").to_string());
    Json(v)
}

/// The CA the front ends' certificate chains to, for clients to pin (public: a CA certificate
/// is no secret, and a client that fetched it unverified checks it against a fingerprint it was
/// given before trusting it). 404 when the certificate is publicly trusted.
async fn tls_ca(State(cp): Cp) -> axum::response::Response {
    let v = cp.frontends();
    match v["tls_ca"].as_str() {
        Some(pem) => Json(serde_json::json!({
            "pem": pem,
            "sha256": v["tls_ca_sha256"],
            "names": v["tls_names"],
        }))
        .into_response(),
        None => ApiError::not_found(
            "this gateway presents a publicly trusted certificate (no CA to pin): clients use the system roots",
        )
        .into_response(),
    }
}

async fn resources(State(cp): Cp, Caller(who): Caller) -> impl IntoResponse {
    Json(cp.resources(&who))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    resource: String,
    access: Option<String>,
    duration: Option<String>,
    reason: Option<String>,
    ticket: Option<String>,
}

fn parse_duration(s: Option<&str>) -> ApiResult<Option<HumanDuration>> {
    s.map(|d| HumanDuration::parse(d).map_err(|e| ApiError::bad_request(e.to_string(), None)))
        .transpose()
}

async fn create_request(
    State(cp): Cp,
    Caller(who): Caller,
    b: Result<Json<CreateRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    let new = NewRequest {
        resource: b.resource,
        access: b.access,
        duration: parse_duration(b.duration.as_deref())?,
        reason: b.reason,
        ticket: b.ticket,
    };
    Ok((StatusCode::CREATED, Json(cp.create_request(&who, new).await?)))
}

#[derive(Deserialize)]
struct ListRequests {
    state: Option<String>,
    #[serde(default)]
    mine: bool,
}

async fn list_requests(
    State(cp): Cp,
    Caller(who): Caller,
    QueryParams(q): QueryParams<ListRequests>,
) -> ApiResult<impl IntoResponse> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<RequestState>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e, None))?;
    Ok(Json(cp.list_requests(&who, state, q.mine).await?))
}

async fn get_request(State(cp): Cp, Caller(who): Caller, Path(id): Path<i64>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.get_request(&who, id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: Option<String>,
}

async fn approve(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<Reason>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b).unwrap_or_default();
    Ok(Json(cp.approve(&who, id, b.reason).await?))
}

async fn deny(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<Reason>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    Ok(Json(cp.deny(&who, id, b.reason.unwrap_or_default()).await?))
}

async fn cancel(State(cp): Cp, Caller(who): Caller, Path(id): Path<i64>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.cancel(&who, id).await?))
}

#[derive(Deserialize)]
struct ListGrants {
    #[serde(default)]
    all: bool,
}

async fn list_grants(
    State(cp): Cp,
    Caller(who): Caller,
    QueryParams(q): QueryParams<ListGrants>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.list_grants(&who, q.all).await?))
}

async fn revoke(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<Reason>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b).unwrap_or_default();
    Ok(Json(cp.revoke(&who, id, b.reason).await?))
}

async fn release(State(cp): Cp, Caller(who): Caller, Path(id): Path<i64>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.release(&who, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    duration: String,
    reason: Option<String>,
}

async fn extend(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<Extend>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    let d = parse_duration(Some(&b.duration))?.unwrap_or_default();
    Ok((StatusCode::CREATED, Json(cp.extend(&who, id, d, b.reason).await?)))
}

async fn list_sessions(State(cp): Cp, Caller(who): Caller) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.list_sessions(&who).await?))
}

async fn kill(State(cp): Cp, Caller(who): Caller, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.kill_session(&who, &id).await?))
}

#[derive(Deserialize)]
struct AuditParams {
    user: Option<String>,
    resource: Option<String>,
    kind: Option<String>,
    grant: Option<i64>,
    session: Option<String>,
    request: Option<i64>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// `7d`/`1h` (ago) or an RFC 3339 instant.
fn parse_instant(s: &str, now: Timestamp) -> ApiResult<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let d = HumanDuration::parse(s).map_err(|_| {
        ApiError::bad_request(
            format!("`{s}` is neither a duration (7d, 2h) nor an RFC 3339 time"),
            None,
        )
    })?;
    Ok(now.checked_sub(d.as_signed()).unwrap_or(Timestamp::MIN))
}

async fn audit(
    State(cp): Cp,
    Caller(who): Caller,
    QueryParams(p): QueryParams<AuditParams>,
) -> ApiResult<impl IntoResponse> {
    let now = Timestamp::now();
    let q = Query {
        user: p.user,
        resource: p.resource,
        kind: p.kind,
        grant: p.grant,
        session: p.session,
        request: p.request,
        since: p.since.as_deref().map(|s| parse_instant(s, now)).transpose()?,
        until: p.until.as_deref().map(|s| parse_instant(s, now)).transpose()?,
        limit: p.limit,
    };
    Ok(Json(cp.audit_search(&who, q).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
struct SshCertBody {
    public_key: String,
}

async fn ssh_cert(
    State(cp): Cp,
    Caller(who): Caller,
    headers: axum::http::HeaderMap,
    b: Result<Json<SshCertBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let (certificate, valid_before) = cp.sign_ssh_cert(&who, &b.public_key, bearer).await?;
    Ok(Json(serde_json::json!({
        "certificate": certificate,
        "principal": who.name,
        "valid_before": valid_before,
    })))
}

async fn create_token(
    State(cp): Cp,
    Caller(who): Caller,
    b: Result<Json<CreateToken>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    Ok((
        StatusCode::CREATED,
        Json(cp.create_token(&who, &b.name, b.groups).await?),
    ))
}
