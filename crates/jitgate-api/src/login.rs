//! Login: OIDC flows through the gateway (the client secret stays here), gateway tokens minted
//! from verified identities, logout and admin revocation. Every success and failure is audited
//! (identity, method, token id — never a token, code or secret).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use jitgate_audit::{Event, Kind};
use jitgate_auth::{AuthError, DeviceStart, Identity, Oidc, Refused, Tokens};
use jitgate_core::AuthFailure;
use jitgate_core::Principal;
use serde::{Deserialize, Serialize};

use crate::control::ControlPlane;
use crate::error::{ApiError, ApiResult};
use crate::routes::Caller;

/// Identity services attached at start-up.
pub struct Login {
    /// Gateway tokens and the revocation list.
    pub tokens: Tokens,
    /// The relying party, when `[oidc]` is configured.
    pub oidc: Option<Oidc>,
    /// `[oidc] accept_id_tokens`.
    pub accept_id_tokens: bool,
}

/// What a successful login returns.
#[derive(Debug, Serialize)]
pub struct LoginResult {
    /// The gateway token (the API bearer and the Postgres password).
    pub token: String,
    /// Identity.
    pub identity: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// Token id (for revocation).
    pub token_id: String,
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
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

fn reason_label(e: &AuthError) -> &'static str {
    match e {
        AuthError::Provider(_) => "provider",
        AuthError::Denied(_) => "denied",
        AuthError::InvalidToken(_) => "invalid_id_token",
        AuthError::UnknownAttempt => "unknown_attempt",
        AuthError::Pending => "pending",
        AuthError::BadRequest(_) => "bad_request",
    }
}

impl ControlPlane {
    fn login_services(&self) -> ApiResult<&Login> {
        self.login
            .get()
            .ok_or_else(|| ApiError::bad_request("login is not configured on this gateway", None))
    }

    fn oidc(&self) -> ApiResult<&Oidc> {
        self.login_services()?.oidc.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                "this gateway has no OpenID Connect provider configured",
                Some(
                    "operators: add an [oidc] section to gateway.toml; machines use tokens from `jitgate token create`"
                        .into(),
                ),
            )
        })
    }

    /// Check a gateway token (`jg2.`, or `jg1.` from before): authenticity, expiry, revocation.
    pub(crate) fn verify_gateway_token(&self, token: &str) -> Result<Principal, AuthFailure> {
        let refused = |reason, message: String| AuthFailure::Refused { reason, message };
        let login = self
            .login_services()
            .map_err(|_| refused("invalid_token", "invalid or expired token".into()))?;
        match login.tokens.verify(token, now_secs()) {
            Ok(c) => Ok(Principal {
                name: c.sub,
                groups: c.groups,
            }),
            Err(e) => {
                let label = match &e {
                    Refused::Revoked => "revoked_token",
                    Refused::Token(jitgate_auth::TokenError::Expired) => "expired_token",
                    Refused::Token(_) => "invalid_token",
                };
                Err(refused(label, e.to_string()))
            }
        }
    }

    /// The outcome of a provider step: failures are counted, logged and audited, then turned
    /// into the API error.
    async fn attempt<T>(&self, method: &str, r: Result<T, AuthError>) -> ApiResult<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                self.login_failed(method, &e).await;
                Err(auth_error(&e))
            }
        }
    }

    async fn login_failed(&self, method: &str, e: &AuthError) {
        self.metrics()
            .auth_failures_total
            .with_label_values(&["oidc", reason_label(e)])
            .inc();
        tracing::info!(method, error = %e, "login failed");
        let ev = Event::new(Kind::LoginFailed, jiff::Timestamp::now())
            .details(serde_json::json!({"method": method, "error": e.to_string()}));
        let _ = self.audit().emit(ev).await;
    }

    /// Mint a gateway token for a verified identity and audit it (no audit, no token).
    async fn logged_in(&self, method: &str, id: &Identity) -> ApiResult<LoginResult> {
        let login = self.login_services()?;
        let (token, c) = login
            .tokens
            .mint(&id.name, &id.groups, now_secs())
            .map_err(ApiError::internal)?;
        let expires_at = jiff::Timestamp::from_second(c.exp).map_err(ApiError::internal)?;
        let ev = Event::new(Kind::Login, jiff::Timestamp::now())
            .actor(&id.name)
            .details(serde_json::json!({
                "method": method,
                "groups": id.groups,
                "subject": id.subject,
                "token_id": c.jti,
                "expires_at": expires_at.to_string(),
            }));
        self.audit().record(ev).await?;
        tracing::info!(identity = %id.name, method, token_id = %c.jti, "login");
        Ok(LoginResult {
            token,
            identity: id.name.clone(),
            groups: id.groups.clone(),
            expires_at: expires_at.to_string(),
            token_id: c.jti,
        })
    }

    /// Load the revocation list from the store (at start).
    pub async fn restore_revocations(&self) -> ApiResult<usize> {
        let Some(login) = self.login.get() else { return Ok(0) };
        let now = now_secs();
        let list = self.store().revoked_tokens(now).await?;
        for (jti, exp) in &list {
            login.tokens.revoke(jti, *exp, now);
        }
        Ok(list.len())
    }

    async fn revoke_jti(&self, actor: &str, jti: &str, exp: i64, kind: Kind) -> ApiResult<()> {
        let login = self.login_services()?;
        self.store().revoke_token(jti, exp).await?;
        login.tokens.revoke(jti, exp, now_secs());
        let ev = Event::new(kind, jiff::Timestamp::now())
            .actor(actor)
            .details(serde_json::json!({"token_id": jti}));
        self.audit().record(ev).await?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    redirect_uri: String,
}

pub(crate) async fn start(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<StartBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = crate::routes::body(b)?;
    let oidc = cp.oidc()?;
    let (url, state) = cp.attempt("code", oidc.start_login(&b.redirect_uri).await).await?;
    Ok(Json(serde_json::json!({"auth_url": url, "state": state})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FinishBody {
    state: String,
    code: String,
}

pub(crate) async fn finish(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<FinishBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = crate::routes::body(b)?;
    let oidc = cp.oidc()?;
    let id = cp.attempt("code", oidc.finish_login(&b.state, &b.code).await).await?;
    Ok(Json(cp.logged_in("code", &id).await?))
}

pub(crate) async fn device_start(State(cp): State<Arc<ControlPlane>>) -> ApiResult<Json<DeviceStart>> {
    let oidc = cp.oidc()?;
    Ok(Json(cp.attempt("device", oidc.start_device().await).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PollBody {
    id: String,
}

pub(crate) async fn device_poll(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<PollBody>, JsonRejection>,
) -> ApiResult<axum::response::Response> {
    let b = crate::routes::body(b)?;
    let oidc = cp.oidc()?;
    let id = match oidc.poll_device(&b.id).await {
        Err(AuthError::Pending) => {
            return Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"pending": true}))).into_response());
        }
        r => cp.attempt("device", r).await?,
    };
    Ok(Json(cp.logged_in("device", &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdTokenBody {
    id_token: String,
}

pub(crate) async fn id_token(
    State(cp): State<Arc<ControlPlane>>,
    b: Result<Json<IdTokenBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = crate::routes::body(b)?;
    let oidc = cp.oidc()?;
    if !cp.login_services()?.accept_id_tokens {
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

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
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
        .verify(token, now_secs())
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    cp.revoke_jti(&who.name, &c.jti, c.exp, Kind::Logout).await?;
    Ok(Json(serde_json::json!({"revoked": c.jti})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    token_id: String,
}

/// `POST /v1/tokens/revoke`: admins cut off a (stolen) login token by its id (from the `login`
/// audit event). Kept on the list for the longest token lifetime.
pub(crate) async fn revoke(
    State(cp): State<Arc<ControlPlane>>,
    Caller(who): Caller,
    b: Result<Json<RevokeBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = crate::routes::body(b)?;
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
    let exp = now_secs() + cp.login_services()?.tokens.lifetime;
    cp.revoke_jti(&who.name, &b.token_id, exp, Kind::TokenRevoked).await?;
    Ok(Json(serde_json::json!({"revoked": b.token_id})))
}
