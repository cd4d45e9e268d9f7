//! The login endpoints: OIDC flows through the gateway (the client secret stays here), gateway
//! tokens minted from verified identities, logout and admin revocation. Every success and
//! failure is audited by the control plane (identity, method, token id — never a token, code or
//! secret).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jitgate_audit::Kind;
use jitgate_auth::{AuthError, DeviceStart};

use super::{Caller, bearer};
use crate::control::ControlPlane;
use crate::error::{ApiError, ApiResult};
use crate::wire;

pub(crate) async fn start(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<wire::LoginStart>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = super::body(b)?;
    let oidc = cp.oidc()?.oidc;
    let (url, state) = cp
        .attempt("code", oidc.start_login(&b.redirect_uri, b.max_age).await)
        .await?;
    Ok(Json(wire::LoginStarted { auth_url: url, state }))
}

pub(crate) async fn finish(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<wire::LoginFinish>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = super::body(b)?;
    let oidc = cp.oidc()?.oidc;
    let id = cp.attempt("code", oidc.finish_login(&b.state, &b.code).await).await?;
    Ok(Json(cp.logged_in("code", &id).await?))
}

pub(crate) async fn device_start(State(cp): State<Arc<ControlPlane>>) -> ApiResult<Json<DeviceStart>> {
    let oidc = cp.oidc()?.oidc;
    Ok(Json(cp.attempt("device", oidc.start_device().await).await?))
}

pub(crate) async fn device_poll(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<wire::DevicePoll>, JsonRejection>,
) -> ApiResult<axum::response::Response> {
    let b = super::body(b)?;
    let oidc = cp.oidc()?.oidc;
    let id = match oidc.poll_device(&b.id).await {
        Err(AuthError::Pending) => {
            return Ok((StatusCode::ACCEPTED, Json(wire::Pending { pending: true })).into_response());
        }
        r => cp.attempt("device", r).await?,
    };
    Ok(Json(cp.logged_in("device", &id).await?).into_response())
}

pub(crate) async fn id_token(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<wire::IdTokenLogin>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = super::body(b)?;
    let provider = cp.oidc()?;
    let oidc = provider.oidc;
    if !provider.accept_id_tokens {
        return Err(ApiError::forbidden(
            "this gateway does not accept ID tokens directly",
            Some("log in with `jitgate login`; operators may set [oidc] accept_id_tokens = true".into()),
        ));
    }
    let id = cp
        .attempt("id_token", oidc.exchange_id_token(&b.id_token).await)
        .await?;
    Ok(Json(cp.logged_in("id_token", &id).await?))
}

/// `POST /v1/logout`: revoke the caller's own gateway token.
pub(crate) async fn logout(
    State(cp): State<Arc<ControlPlane>>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let token = bearer(&headers).unwrap_or_default();
    if !jitgate_auth::is_gateway_token(token) {
        return Err(ApiError::bad_request(
            "only login tokens can be logged out; machine tokens are removed from gateway.toml or the store",
            None,
        ));
    }
    let c = cp
        .login_services()?
        .tokens
        .keys
        .verify(token, cp.now().as_second())
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    cp.revoke_jti(&who.name, &c.jti, c.exp, Kind::Logout).await?;
    Ok(Json(wire::Revoked { revoked: c.jti }))
}

/// A revocation by id cannot see the token's expiry: it is kept at least this long (30 days),
/// or the longest lifetime this process minted with when that is longer, so a token minted
/// by a replica with a longer `token_lifetime` (or before a reload shortened it) cannot outlive it.
const REVOKE_AT_LEAST: i64 = 30 * 86_400;

/// `POST /v1/tokens/revoke`: admins cut off a (stolen) login token by its id (from the `login`
/// audit event). Kept on the list for the longest token lifetime.
pub(crate) async fn revoke(
    State(cp): State<Arc<ControlPlane>>,
    Caller(who): Caller,
    b: Result<Json<wire::RevokeToken>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = super::body(b)?;
    if !cp.catalog().is_admin(&who.groups) {
        return Err(ApiError::forbidden(
            "only admins may revoke other people's tokens",
            None,
        ));
    }
    if b.token_id.len() != 24 || !b.token_id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "token_id is 24 hex characters (see the `login` audit event)",
            None,
        ));
    }
    let exp = cp.now().as_second() + cp.login_services()?.tokens.longest_lifetime().max(REVOKE_AT_LEAST);
    cp.revoke_jti(&who.name, &b.token_id, exp, Kind::TokenRevoked).await?;
    Ok(Json(wire::Revoked { revoked: b.token_id }))
}
