//! `/v1/audit`: search the audit log (non-auditors see only their own events).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use jiff::Timestamp;
use jitgate_core::HumanDuration;

use super::{Caller, Cp};
use crate::error::{ApiError, ApiResult};
use crate::wire;

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

pub(super) async fn search(
    State(cp): Cp,
    Caller(who): Caller,
    Query(p): Query<wire::AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    let now = cp.now();
    let q = jitgate_audit::Query {
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
