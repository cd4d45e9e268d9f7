//! The audit event: one JSON object per line of `audit.jsonl`.

use std::borrow::Cow;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::kind::Kind;

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
    pub fn new(kind: Kind, time: Timestamp) -> Self {
        Self {
            seq: 0,
            time,
            kind: kind.as_str().to_string(),
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

    /// Set the details from JSON built elsewhere (a summary assembled at run time).
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }

    /// Set the details from one of the [`crate::details`] structs.
    pub fn detail(mut self, d: impl serde::Serialize) -> Self {
        // Structs of plain fields always serialize; a failure would leave the details empty,
        // never lose the event.
        self.details = serde_json::to_value(d).unwrap_or_default();
        self
    }
}

/// One SQL statement (`pg.statement`), the relay's hot-path event. It is written straight from
/// these fields, without building a JSON map per statement; its line parses back to the same
/// [`Event`] a generic `pg.statement` event with the same fields would be (a unit test pins the
/// line byte for byte to that event's serialisation).
#[derive(Debug, Clone)]
pub struct Statement {
    /// When it completed (or was refused).
    pub time: Timestamp,
    /// Who ran it (actor and `details.identity`).
    pub identity: Arc<str>,
    /// Access level of the grant (`read-only`, `read-write`, ...).
    pub access: Arc<str>,
    /// The resource the statement ran on.
    pub resource: Arc<str>,
    /// The grant it ran under.
    pub grant_id: i64,
    /// The session it ran in.
    pub session_id: Arc<str>,
    /// SQL text as sent.
    pub sql: Arc<str>,
    /// SQL longer than this many bytes is cut (at a character boundary) and marked truncated.
    pub max_text: usize,
    /// Statement class (`select`, `write`, `ddl`, ...).
    pub class: &'static str,
    /// Simple (`Query`) or extended (`Parse`/`Bind`/`Execute`) protocol.
    pub simple: bool,
    /// `ok`, `error`, `refused` or `skipped`.
    pub outcome: &'static str,
    /// Duration in milliseconds (microsecond precision).
    pub duration_ms: f64,
    /// Rows reported by the server.
    pub rows: u64,
    /// SQLSTATE and message of an error.
    pub error: Option<Box<(String, String)>>,
}

/// The kind of [`Statement`] events.
pub const STATEMENT_KIND: &str = Kind::PgStatement.as_str();

#[derive(Serialize)]
struct StatementLine<'a> {
    seq: u64,
    time: Timestamp,
    kind: &'static str,
    actor: &'a str,
    resource: &'a str,
    grant_id: i64,
    session_id: &'a str,
    details: StatementDetails<'a>,
    prev: &'a str,
}

/// Keys in the order a generic event's details map serialises them (sorted).
#[derive(Serialize)]
struct StatementDetails<'a> {
    access: &'a str,
    class: &'a str,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    identity: &'a str,
    outcome: &'a str,
    protocol: &'a str,
    rows: u64,
    sql: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    sql_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlstate: Option<&'a str>,
}

impl Statement {
    /// The SQL as recorded, and whether it was cut.
    fn sql_text(&self) -> (&str, bool) {
        let s: &str = &self.sql;
        if s.len() <= self.max_text {
            return (s, false);
        }
        (&s[..s.floor_char_boundary(self.max_text)], true)
    }

    fn protocol(&self) -> &'static str {
        if self.simple { "simple" } else { "extended" }
    }

    /// Its line in the log (without the newline) at `seq`, after a line hashing to `prev`.
    pub fn line(&self, seq: u64, prev: &str) -> serde_json::Result<String> {
        let (sql, sql_truncated) = self.sql_text();
        let error = self.error.as_deref();
        serde_json::to_string(&StatementLine {
            seq,
            time: self.time,
            kind: STATEMENT_KIND,
            actor: &self.identity,
            resource: &self.resource,
            grant_id: self.grant_id,
            session_id: &self.session_id,
            details: StatementDetails {
                access: &self.access,
                class: self.class,
                duration_ms: self.duration_ms,
                error: error.map(|e| e.1.as_str()),
                identity: &self.identity,
                outcome: self.outcome,
                protocol: self.protocol(),
                rows: self.rows,
                sql,
                sql_truncated,
                sqlstate: error.map(|e| e.0.as_str()),
            },
            prev,
        })
    }

    /// What the index needs of it at `seq`.
    pub fn head(&self, seq: u64) -> Head {
        Head {
            seq,
            time: self.time,
            kind: Cow::Borrowed(STATEMENT_KIND),
            actor: Some(self.identity.clone()),
            resource: Some(self.resource.clone()),
            grant_id: Some(self.grant_id),
            session_id: Some(self.session_id.clone()),
            // What the line records (a cut statement is found by what was kept, as after a
            // re-index from the file).
            text: Some(match self.sql_text() {
                (_, false) => self.sql.clone(),
                (cut, true) => Arc::from(cut),
            }),
        }
    }
}

/// The fields of a written event that an index files it under.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Position in the log.
    pub seq: u64,
    /// When it happened.
    pub time: Timestamp,
    /// The event kind's dotted name.
    pub kind: Cow<'static, str>,
    /// Who acted.
    pub actor: Option<Arc<str>>,
    /// The resource concerned.
    pub resource: Option<Arc<str>>,
    /// The grant concerned.
    pub grant_id: Option<i64>,
    /// The session concerned.
    pub session_id: Option<Arc<str>>,
    /// What search by content finds it by (SQL, command), when it has any
    /// ([`crate::text::event_text`]).
    pub text: Option<Arc<str>>,
}

impl From<&Event> for Head {
    fn from(e: &Event) -> Self {
        Self {
            seq: e.seq,
            time: e.time,
            kind: Cow::Owned(e.kind.clone()),
            actor: e.actor.as_deref().map(Arc::from),
            resource: e.resource.as_deref().map(Arc::from),
            grant_id: e.grant_id,
            session_id: e.session_id.as_deref().map(Arc::from),
            text: crate::text::event_text(e).map(|t| Arc::from(&*t)),
        }
    }
}

/// Filters for searching the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Actor or subject identity.
    pub user: Option<String>,
    /// Only events about this resource.
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
    /// Only events whose text (SQL, command) contains this ([`crate::text::text_matches`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
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
            && self
                .text
                .as_ref()
                .is_none_or(|n| crate::text::event_text(e).is_some_and(|h| crate::text::text_matches(&h, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement as a generic event built the generic way (`seq` 0, `prev` empty): what its
    /// typed line must equal.
    fn generic(s: &Statement) -> Event {
        let (sql, cut) = s.sql_text();
        let mut d = serde_json::json!({
            "identity": &*s.identity, "access": &*s.access, "sql": sql, "class": s.class,
            "protocol": s.protocol(), "outcome": s.outcome, "duration_ms": s.duration_ms,
            "rows": s.rows,
        });
        if cut {
            d["sql_truncated"] = serde_json::Value::Bool(true);
        }
        if let Some(e) = &s.error {
            d["sqlstate"] = serde_json::Value::String(e.0.clone());
            d["error"] = serde_json::Value::String(e.1.clone());
        }
        Event::new(Kind::PgStatement, s.time)
            .actor(&*s.identity)
            .resource(&*s.resource)
            .grant(s.grant_id)
            .session(&*s.session_id)
            .details(d)
    }

    fn statement(sql: &str, max_text: usize, error: bool) -> Statement {
        Statement {
            time: Timestamp::now(),
            identity: "alice@example.com".into(),
            access: "read-only".into(),
            resource: "prod-db".into(),
            grant_id: 7,
            session_id: "s-1".into(),
            sql: sql.into(),
            max_text,
            class: "select",
            simple: false,
            outcome: if error { "error" } else { "ok" },
            duration_ms: 0.123,
            rows: 3,
            error: error.then(|| Box::new(("42P01".to_string(), "relation \"x\" does not exist".to_string()))),
        }
    }

    #[test]
    fn statement_line_is_the_generic_event() {
        for s in [
            statement("SELECT 1", 100, false),
            statement("SELECT 'é\n\"quoted\"' FROM x", 100, true),
            statement("SELECT 'ééééé'", 9, false),
        ] {
            let line = s.line(42, "abc").unwrap();
            let parsed: Event = serde_json::from_str(&line).unwrap();
            let mut want = generic(&s);
            want.seq = 42;
            want.prev = "abc".into();
            assert_eq!(parsed, want);
            // Byte for byte what serialising the generic event gives.
            assert_eq!(line, serde_json::to_string(&want).unwrap());
            assert_eq!(s.head(42), Head::from(&want));
        }
        let cut = generic(&statement("SELECT 'ééééé'", 9, false));
        assert_eq!(cut.details["sql"], "SELECT '");
        assert_eq!(cut.details["sql_truncated"], true);
    }
}
