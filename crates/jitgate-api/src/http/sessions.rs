//! `/v1/sessions`: list live sessions, kill one.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;

use super::{Caller, Cp};
use crate::error::ApiResult;

pub(super) async fn list(State(cp): Cp, Caller(who): Caller) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.list_sessions(&who).await?))
}

pub(super) async fn kill(State(cp): Cp, Caller(who): Caller, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.kill_session(&who, &id).await?))
}
