//! Statement events and refusals: what the relay writes to the audit log and what a refused
//! statement answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use jitgate_audit::Statement;

use super::RelayCtx;
use super::state::{Done, Pending, Shared};
use crate::classify::{Class, Verdict};
use crate::protocol::{self, Severity};

/// SQL text as received: UTF-8 (the session's client_encoding is pinned to UTF8), or `None`.
fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// The audit form of a text: redacted when it carries a password; hex when not UTF-8.
pub(super) fn audit_text(sql: &[u8], v: &Verdict) -> Arc<str> {
    match text(sql) {
        Some(s) if v.secret => crate::classify::redact(s).into(),
        Some(s) => s.into(),
        None => format!("<not UTF-8: {}>", hex::encode(sql)).into(),
    }
}

/// The verdict for a text's bytes: undecodable text is refused under read-only.
pub(super) fn verdict_of(ctx: &RelayCtx, sql: &[u8]) -> Arc<Verdict> {
    match text(sql) {
        Some(s) => ctx.classifier.classify(s),
        None => Arc::new(crate::classify::unparsed("text that is not valid UTF-8".into())),
    }
}

/// A statement refused before it reached the server, audited once the op queue is unlocked.
pub(super) struct Refused {
    pub(super) sql: Arc<str>,
    pub(super) class: Class,
    pub(super) why: String,
    pub(super) simple: bool,
}

/// The gateway's 42501 for a statement a read-only grant does not allow (counted).
pub(super) fn refusal(ctx: &RelayCtx, why: &str) -> BytesMut {
    ctx.metrics.statements_denied_total.inc();
    let resource = &ctx.guard.info.resource;
    let mut err = BytesMut::new();
    protocol::error_response(
        &mut err,
        Severity::Error,
        "42501",
        &format!("jitgate: read-only access to {resource} does not allow {why}"),
        Some(&ctx.refusal_hint),
    );
    err
}

/// Audit refused statements (always, whatever `[audit] statements` says).
pub(super) async fn audit_refusals(ctx: &RelayCtx, sh: &Shared, refused: &mut Vec<Refused>) {
    for r in refused.drain(..) {
        let mut p = Pending::new(r.sql, r.class, r.simple);
        p.error = Some(Box::new(("42501".into(), format!("refused: {}", r.why))));
        let _ = ctx
            .audit
            .emit_statement(statement_event(ctx, sh, p, "refused", Duration::ZERO))
            .await;
    }
}

/// Emit the audit events of completed statements; `false` when the audit sink is gone.
pub(super) async fn audit_done(ctx: &RelayCtx, sh: &Shared, done: &mut Done) -> bool {
    for (p, outcome, took) in done.drain(..) {
        if let Some(ev) = finish(ctx, sh, p, outcome, took)
            && ctx.audit.emit_statement(ev).await.is_err()
        {
            return false;
        }
    }
    true
}

/// A statement completed: its duration metric, and its audit event unless `[audit] statements`
/// is off (then none is built at all).
pub(super) fn finish(
    ctx: &RelayCtx,
    sh: &Shared,
    p: Pending,
    outcome: &'static str,
    took: Duration,
) -> Option<Statement> {
    ctx.metrics.query_duration_seconds.observe(took.as_secs_f64());
    ctx.audit_statements.then(|| statement_event(ctx, sh, p, outcome, took))
}

fn statement_event(ctx: &RelayCtx, sh: &Shared, p: Pending, outcome: &'static str, took: Duration) -> Statement {
    let n = &sh.names;
    Statement {
        time: jiff::Timestamp::now(),
        identity: n.identity.clone(),
        access: n.access.clone(),
        resource: n.resource.clone(),
        grant_id: ctx.guard.info.grant_id,
        session_id: n.session.clone(),
        sql: p.sql,
        max_text: ctx.max_text,
        class: p.class.as_str(),
        simple: p.simple,
        outcome,
        duration_ms: (took.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        rows: p.rows,
        // A server's message can quote a whole literal: cut like the SQL, so no line grows
        // past what the log can read back.
        error: p.error.map(|mut e| {
            if e.1.len() > ctx.max_text {
                let cut = e.1.floor_char_boundary(ctx.max_text);
                e.1.truncate(cut);
                e.1.push('…');
            }
            e
        }),
    }
}
