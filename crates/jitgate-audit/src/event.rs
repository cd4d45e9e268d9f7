//! The audit event: one JSON object per line of `audit.jsonl`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One audit event. `seq` and `prev` are assigned by the sink when the event is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it happened.
    pub time: Timestamp,
    /// `request.created`, `grant.expired`, `session.started`, `pg.statement`, ...
    pub kind: String,
    /// Who did it (identity, `policy:NAME`, or `gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Resource involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Request involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i64>,
    /// Grant involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<i64>,
    /// Session involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Why (request reason, denial reason, kill reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else, kind-specific.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// Hex SHA-256 of the previous line (64 zeros for the first).
    pub prev: String,
}

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Event {
    /// A new event of `kind` happening at `time`.
    pub fn new(kind: impl Into<String>, time: Timestamp) -> Self {
        Self {
            seq: 0,
            time,
            kind: kind.into(),
            actor: None,
            resource: None,
            request_id: None,
            grant_id: None,
            session_id: None,
            reason: None,
            details: serde_json::Value::Null,
            prev: String::new(),
        }
    }

    /// Set the actor.
    pub fn actor(mut self, a: impl Into<String>) -> Self {
        self.actor = Some(a.into());
        self
    }

    /// Set the resource.
    pub fn resource(mut self, r: impl Into<String>) -> Self {
        self.resource = Some(r.into());
        self
    }

    /// Set the request id.
    pub fn request(mut self, id: i64) -> Self {
        self.request_id = Some(id);
        self
    }

    /// Set the grant id.
    pub fn grant(mut self, id: i64) -> Self {
        self.grant_id = Some(id);
        self
    }

    /// Set the session id.
    pub fn session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Set the reason.
    pub fn reason(mut self, r: Option<impl Into<String>>) -> Self {
        self.reason = r.map(Into::into);
        self
    }

    /// Set the details.
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

/// Filters for searching the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Actor or subject identity.
    pub user: Option<String>,
    /// Resource.
    pub resource: Option<String>,
    /// Kind, or a prefix ending in `.` (`grant.`).
    pub kind: Option<String>,
    /// Grant id.
    pub grant: Option<i64>,
    /// Session id.
    pub session: Option<String>,
    /// Request id.
    pub request: Option<i64>,
    /// Not before.
    pub since: Option<Timestamp>,
    /// Not after.
    pub until: Option<Timestamp>,
    /// Most rows (newest kept), default 1000.
    pub limit: Option<usize>,
}

impl Query {
    /// True when `e` passes every filter (the `user` filter matches the actor or the
    /// `details.identity` subject).
    pub fn matches(&self, e: &Event) -> bool {
        let user_ok = self.user.as_ref().is_none_or(|u| {
            e.actor.as_ref() == Some(u) || e.details.get("identity").and_then(|v| v.as_str()) == Some(u.as_str())
        });
        let kind_ok = self.kind.as_ref().is_none_or(|k| {
            if k.ends_with('.') {
                e.kind.starts_with(k.as_str())
            } else {
                &e.kind == k
            }
        });
        user_ok
            && kind_ok
            && self.resource.as_ref().is_none_or(|r| e.resource.as_ref() == Some(r))
            && self.grant.is_none_or(|g| e.grant_id == Some(g))
            && self.request.is_none_or(|g| e.request_id == Some(g))
            && self.session.as_ref().is_none_or(|s| e.session_id.as_ref() == Some(s))
            && self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time <= t)
    }
}
