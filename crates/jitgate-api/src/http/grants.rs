//! `/v1/grants`: list, revoke, release (the holder's own early end), extend.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::{Caller, Cp, OptionalReason, body, parse_duration};
use crate::error::ApiResult;
use crate::wire;

pub(super) async fn list(
    State(cp): Cp,
    Caller(who): Caller,
    Query(q): Query<wire::ListGrants>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.list_grants(&who, q.all).await?))
}

pub(super) async fn revoke(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    OptionalReason(reason): OptionalReason,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.revoke(&who, id, reason).await?))
}

pub(super) async fn release(State(cp): Cp, Caller(who): Caller, Path(id): Path<i64>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.release(&who, id).await?))
}

/// An extension is a new request on the grant (201 with the request).
pub(super) async fn extend(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<wire::Extend>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    let d = parse_duration(Some(&b.duration))?.unwrap_or_default();
    Ok((StatusCode::CREATED, Json(cp.extend(&who, id, d, b.reason).await?)))
}
