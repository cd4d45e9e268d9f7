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

/// The search text and kind filter of `text` / `command` / `kind`: `command` is `text` within
/// SSH events.
fn text_filter(
    text: Option<String>,
    command: Option<String>,
    kind: Option<String>,
) -> ApiResult<(Option<String>, Option<String>)> {
    let (text, kind) = match (text, command) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either text or command, not both",
                Some("command is text within SSH commands; text searches SQL and commands".into()),
            ));
        }
        (None, Some(c)) => {
            if kind.as_deref().is_some_and(|k| !k.starts_with("ssh.")) {
                return Err(ApiError::bad_request(
                    format!(
                        "command searches SSH events; kind `{}` is not one",
                        kind.unwrap_or_default()
                    ),
                    Some("use text with that kind instead".into()),
                ));
            }
            (Some(c), Some(kind.unwrap_or_else(|| "ssh.".into())))
        }
        (t, None) => (t, kind),
    };
    if let Some(t) = &text {
        jitgate_audit::text::check_needle(t).map_err(|e| ApiError::bad_request(e, None))?;
    }
    Ok((text, kind))
}

pub(super) async fn search(
    State(cp): Cp,
    Caller(who): Caller,
    Query(p): Query<wire::AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    let now = cp.now();
    let (text, kind) = text_filter(p.text, p.command, p.kind)?;
    let q = jitgate_audit::Query {
        user: p.user,
        resource: p.resource,
        kind,
        text,
        grant: p.grant,
        session: p.session,
        request: p.request,
        since: p.since.as_deref().map(|s| parse_instant(s, now)).transpose()?,
        until: p.until.as_deref().map(|s| parse_instant(s, now)).transpose()?,
        limit: p.limit,
    };
    Ok(Json(cp.audit_search(&who, q).await?))
}
