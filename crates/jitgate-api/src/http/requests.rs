//! `/v1/requests`: ask, list, look at one, approve, deny, cancel.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jitgate_core::RequestState;
use jitgate_core::engine::NewRequest;

use super::{Caller, Cp, OptionalReason, body, parse_duration};
use crate::error::{ApiError, ApiResult};
use crate::wire;

pub(super) async fn create(
    State(cp): Cp,
    Caller(who): Caller,
    b: Result<Json<wire::CreateRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    let first_use = match b.start.as_deref() {
        None | Some("approval") => false,
        Some("first-use") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("start `{other}` is not a start"),
                Some("start is `approval` (the default) or `first-use`".into()),
            ));
        }
    };
    let at =
        b.at.as_deref()
            .map(|s| jitgate_core::when::parse_at(s, cp.now(), None))
            .transpose()
            .map_err(|e| {
                ApiError::bad_request(
                    format!("at: {e}"),
                    Some("e.g. \"2026-12-02 22:00 Europe/Paris\", \"2026-12-02T21:00:00Z\" or \"+3h\"".into()),
                )
            })?;
    let new = NewRequest {
        resource: b.resource,
        access: b.access,
        duration: parse_duration(b.duration.as_deref())?,
        reason: b.reason,
        ticket: b.ticket,
        lifetime: jitgate_core::engine::Lifetime {
            single_session: b.single_session,
            idle_end: parse_duration(b.idle_end.as_deref())?,
            first_use,
            at,
        },
    };
    Ok((StatusCode::CREATED, Json(cp.create_request(&who, new).await?)))
}

pub(super) async fn list(
    State(cp): Cp,
    Caller(who): Caller,
    Query(q): Query<wire::ListRequests>,
) -> ApiResult<impl IntoResponse> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<RequestState>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e, None))?;
    Ok(Json(cp.list_requests(&who, state, q.mine).await?))
}

pub(super) async fn get_one(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    q: Result<Query<wire::RequestWait>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text(), Some("?wait=20s&version=N".into())))?;
    let request = match parse_duration(q.wait.as_deref())? {
        Some(w) => {
            cp.wait_request(&who, id, q.version, std::time::Duration::from_secs(w.secs()))
                .await?
        }
        None => cp.get_request(&who, id).await?,
    };
    let waiting_for = cp.waiting_for(&request);
    Ok(Json(wire::RequestStatus { request, waiting_for }))
}

pub(super) async fn approve(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    OptionalReason(reason): OptionalReason,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.approve(&who, id, reason).await?))
}

pub(super) async fn deny(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<wire::Reason>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    Ok(Json(cp.deny(&who, id, b.reason.unwrap_or_default()).await?))
}

pub(super) async fn cancel(State(cp): Cp, Caller(who): Caller, Path(id): Path<i64>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.cancel(&who, id).await?))
}

pub(super) async fn break_glass(
    State(cp): Cp,
    Caller(who): Caller,
    b: Result<Json<wire::BreakGlass>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    let new = NewRequest {
        resource: b.resource,
        access: b.access,
        duration: parse_duration(b.duration.as_deref())?,
        reason: Some(b.reason),
        ticket: b.ticket,
        lifetime: Default::default(),
    };
    Ok((StatusCode::CREATED, Json(cp.break_glass(&who, new).await?)))
}

pub(super) async fn reviews(
    State(cp): Cp,
    Caller(who): Caller,
    Query(q): Query<wire::ListReviews>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(cp.reviews(&who, q.all).await?))
}

pub(super) async fn review(State(cp): Cp, Caller(who): Caller, Path(id): Path<i64>) -> ApiResult<impl IntoResponse> {
    let (item, events) = cp.review(&who, id).await?;
    Ok(Json(wire::ReviewDetail { item, events }))
}

pub(super) async fn close_review(
    State(cp): Cp,
    Caller(who): Caller,
    Path(id): Path<i64>,
    b: Result<Json<wire::CloseReview>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let b = body(b)?;
    Ok(Json(cp.close_review(&who, id, b.note).await?))
}
