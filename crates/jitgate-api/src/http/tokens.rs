//! Credentials the gateway issues besides login tokens: machine tokens (admins) and SSH user
//! certificates.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use super::{Caller, Cp, bearer, body};
use crate::error::ApiResult;
use crate::wire;

pub(super) async fn create(
    State(cp): Cp,
    Caller(who): Caller,
    b: Result<Json<wire::CreateToken>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    Ok((
        StatusCode::CREATED,
        Json(cp.create_token(&who, &b.name, b.groups).await?),
    ))
}

/// The certificate lives no longer than the token that asked for it.
pub(super) async fn ssh_cert(
    State(cp): Cp,
    Caller(who): Caller,
    headers: HeaderMap,
    b: Result<Json<wire::SshCertRequest>, JsonRejection>,
) -> ApiResult<Json<wire::SshCert>> {
    let b = body(b)?;
    let (certificate, valid_before) = cp.sign_ssh_cert(&who, &b.public_key, bearer(&headers)).await?;
    Ok(Json(wire::SshCert {
        certificate,
        principal: who.name,
        valid_before,
    }))
}
