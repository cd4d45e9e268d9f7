//! Audit: search with the CLI's filters, a session's page (its statements with outcome, rows
//! and duration, or its SSH commands, in order; the SSH recording replayed in the browser by
//! the vendored asciinema player), and the hash chain's check. Visibility is the control
//! plane's: non-auditors see only their own events.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use jitgate_audit::Event;
use jitgate_core::HumanDuration;
use serde::Deserialize;

use super::{describe, render, render_with};
use crate::Console;
use crate::html::{self, Nav, esc};
use crate::session::Signed;

#[derive(Deserialize, Default)]
pub struct Search {
    #[serde(default)]
    user: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    grant: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    request: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    limit: String,
    #[serde(default)]
    text: String,
}

fn opt(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `7d`/`1h` (ago) or an RFC 3339 instant, as the CLI takes them.
fn instant(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let d =
        HumanDuration::parse(s).map_err(|_| format!("`{s}` is neither a duration (7d, 2h) nor an RFC 3339 time"))?;
    Ok(now.checked_sub(d.as_signed()).unwrap_or(Timestamp::MIN))
}

impl Search {
    fn query(&self, now: Timestamp) -> Result<jitgate_audit::Query, String> {
        let num = |what: &str, v: &str| -> Result<Option<i64>, String> {
            opt(v)
                .map(|x| x.parse::<i64>().map_err(|_| format!("{what} is a number")))
                .transpose()
        };
        let text = opt(&self.text);
        if let Some(t) = &text {
            jitgate_audit::text::check_needle(t)?;
        }
        Ok(jitgate_audit::Query {
            text,
            user: opt(&self.user),
            resource: opt(&self.resource),
            kind: opt(&self.kind),
            grant: num("grant", &self.grant)?,
            session: opt(&self.session),
            request: num("request", &self.request)?,
            since: opt(&self.since).map(|s| instant(&s, now)).transpose()?,
            until: opt(&self.until).map(|s| instant(&s, now)).transpose()?,
            limit: Some(
                opt(&self.limit)
                    .map(|l| l.parse::<usize>().map_err(|_| "limit is a number".to_string()))
                    .transpose()?
                    .unwrap_or(200)
                    .min(5000),
            ),
        })
    }
}

/// The one-line summary of an event (as the CLI's tables show it).
fn detail(e: &Event) -> String {
    let d = &e.details;
    match e.kind.as_str() {
        "pg.statement" => format!(
            "{} {}ms rows={} {}",
            d["outcome"].as_str().unwrap_or("?"),
            d["duration_ms"],
            d["rows"],
            d["sql"].as_str().unwrap_or("")
        ),
        "ssh.exec" => d["command"].as_str().unwrap_or("").to_string(),
        "ssh.command" => d["line"].as_str().unwrap_or("").to_string(),
        "ssh.sftp" => format!(
            "{} {}",
            d["op"].as_str().unwrap_or(""),
            d["path"].as_str().unwrap_or("")
        ),
        _ => e.reason.clone().unwrap_or_default(),
    }
}

fn field(id: &str, label: &str, value: &str, hint: &str) -> String {
    format!(
        "<label for=\"q-{id}\">{label}</label><input id=\"q-{id}\" name=\"{id}\" value=\"{}\" placeholder=\"{}\">",
        esc(value),
        esc(hint)
    )
}

/// `GET /ui/audit`.
pub async fn page(State(c): State<Arc<Console>>, s: Signed, Query(q): Query<Search>) -> Response {
    let mut body = String::from("<form method=\"get\" action=\"/ui/audit\" class=\"filters\" role=\"search\">");
    for (id, label, v, hint) in [
        ("text", "Text", &q.text, "DROP TABLE (SQL or command)"),
        ("user", "User", &q.user, "alice@example.com"),
        ("resource", "Resource", &q.resource, "prod-db"),
        ("kind", "Kind", &q.kind, "grant. or pg.statement"),
        ("grant", "Grant", &q.grant, "42"),
        ("session", "Session", &q.session, "s-…"),
        ("request", "Request", &q.request, "17"),
        ("since", "Since", &q.since, "7d or 2026-11-01T00:00:00Z"),
        ("until", "Until", &q.until, ""),
        ("limit", "Limit", &q.limit, "200"),
    ] {
        body.push_str(&field(id, label, v, hint));
    }
    body.push_str("<button type=\"submit\">Search</button></form>");
    let cat = c.cp.catalog();
    if cat.is_auditor(&s.who.groups) || cat.is_admin(&s.who.groups) {
        body.push_str("<p><a href=\"/ui/audit/verify\" id=\"verify-link\">Check the audit log's hash chain</a></p>");
    }
    let query = match q.query(c.cp.now()) {
        Ok(q) => q,
        Err(e) => {
            let _ = write!(body, "<p class=\"flash err\" role=\"alert\">{}</p>", esc(&e));
            return render(&c, &s, "Audit", Nav::Audit, false, &body).await;
        }
    };
    match c.cp.audit_search(&s.who, query).await {
        Ok(events) => {
            let _ = write!(
                body,
                "<table class=\"events\"><caption>{} event(s), newest first</caption><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Time</th><th scope=\"col\">Kind</th><th scope=\"col\">Actor</th><th scope=\"col\">Resource</th><th scope=\"col\">Ids</th><th scope=\"col\">Detail</th></tr></thead><tbody>",
                events.len()
            );
            for e in events.iter().rev() {
                let mut ids = String::new();
                if let Some(r) = e.request_id {
                    let _ = write!(ids, "<a href=\"/ui/requests/{r}\">request {r}</a> ");
                }
                if let Some(g) = e.grant_id {
                    let _ = write!(ids, "<a href=\"/ui/audit?grant={g}\">grant {g}</a> ");
                }
                if let Some(sid) = &e.session_id {
                    let _ = write!(
                        ids,
                        "<a href=\"/ui/audit/sessions/{}\">{}</a>",
                        html::url(sid),
                        esc(sid)
                    );
                }
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{ids}</td><td class=\"sql\">{}</td></tr>",
                    e.seq,
                    html::time(e.time),
                    esc(&e.kind),
                    esc(e.actor.as_deref().unwrap_or("")),
                    esc(e.resource.as_deref().unwrap_or("")),
                    esc(&detail(e))
                );
            }
            body.push_str("</tbody></table>");
        }
        Err(e) => {
            let _ = write!(body, "<p class=\"flash err\" role=\"alert\">{}</p>", esc(&describe(&e)));
        }
    }
    render(&c, &s, "Audit", Nav::Audit, false, &body).await
}

/// `GET /ui/audit/verify`: walk the chain of every audit file (auditors and admins).
pub async fn verify(State(c): State<Arc<Console>>, s: Signed) -> Response {
    let cat = c.cp.catalog();
    if !(cat.is_auditor(&s.who.groups) || cat.is_admin(&s.who.groups)) {
        return render(
            &c,
            &s,
            "Audit chain",
            Nav::Audit,
            false,
            "<p class=\"flash err\" role=\"alert\">Only auditors and admins check the chain.</p>",
        )
        .await;
    }
    let Some(path) = c.settings.audit_file.clone() else {
        return render(
            &c,
            &s,
            "Audit chain",
            Nav::Audit,
            false,
            "<p>This gateway writes no audit file.</p>",
        )
        .await;
    };
    let r = tokio::task::spawn_blocking(move || jitgate_audit::verify_chain(&path)).await;
    let body = match r {
        Ok(Ok(v)) => format!(
            "<p class=\"flash ok\" role=\"status\" id=\"verify-result\">Chain intact: {} line(s) in {} file(s); head {}.</p><p class=\"hint\">The same check offline: <code>jitgate audit verify</code>.</p>",
            v.lines,
            v.files,
            esc(&v.head)
        ),
        Ok(Err((file, broken))) => format!(
            "<p class=\"flash err\" role=\"alert\" id=\"verify-result\">Chain broken in {} at line {}: {}</p>",
            esc(&file.display().to_string()),
            broken.line,
            esc(&broken.why)
        ),
        Err(e) => format!(
            "<p class=\"flash err\" role=\"alert\">The check failed: {}</p>",
            esc(&e.to_string())
        ),
    };
    render(&c, &s, "Audit chain", Nav::Audit, false, &body).await
}

/// Session ids as the front ends make them: `s-` and letters, digits, dashes.
fn session_id_ok(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("s-") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `GET /ui/audit/sessions/{id}`.
pub async fn session(State(c): State<Arc<Console>>, s: Signed, Path(id): Path<String>) -> Response {
    let q = jitgate_audit::Query {
        session: Some(id.clone()),
        limit: Some(10_000),
        ..jitgate_audit::Query::default()
    };
    let mut events = match c.cp.audit_search(&s.who, q).await {
        Ok(e) => e,
        Err(e) => {
            let body = format!("<p class=\"flash err\" role=\"alert\">{}</p>", esc(&describe(&e)));
            return render(&c, &s, "Session", Nav::Audit, false, &body).await;
        }
    };
    events.sort_by_key(|e| e.seq);
    let title = format!("Session {id}");
    if events.is_empty() {
        return render(
            &c,
            &s,
            &title,
            Nav::Audit,
            false,
            "<p class=\"empty\">No events for this session (or none you may see).</p>",
        )
        .await;
    }
    let started = events.iter().find(|e| e.kind == "session.started");
    let ended = events.iter().find(|e| e.kind == "session.ended");
    let mut body = String::from("<dl class=\"facts\">");
    let first = started.unwrap_or(&events[0]);
    let _ = write!(
        body,
        "<dt>Identity</dt><dd>{}</dd><dt>Resource</dt><dd>{}</dd><dt>Protocol</dt><dd>{}</dd><dt>Grant</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Ended</dt><dd>{}</dd></dl>",
        esc(first.actor.as_deref().unwrap_or("")),
        esc(first.resource.as_deref().unwrap_or("")),
        esc(first.details["protocol"].as_str().unwrap_or("")),
        first
            .grant_id
            .map_or(String::new(), |g| format!("<a href=\"/ui/audit?grant={g}\">{g}</a>")),
        started.map_or("?".into(), |e| html::time(e.time)),
        ended.map_or("still open".into(), |e| format!(
            "{} ({}: {})",
            html::time(e.time),
            esc(e.details["outcome"].as_str().unwrap_or("")),
            esc(e.reason.as_deref().unwrap_or(""))
        )),
    );
    let statements: Vec<&Event> = events.iter().filter(|e| e.kind == "pg.statement").collect();
    if !statements.is_empty() {
        let _ = write!(
            body,
            "<table class=\"statements\" id=\"statements\"><caption>{} statement(s), in order</caption><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Outcome</th><th scope=\"col\">Rows</th><th scope=\"col\">ms</th><th scope=\"col\">SQL</th></tr></thead><tbody>",
            statements.len()
        );
        for e in statements {
            let d = &e.details;
            let outcome = d["outcome"].as_str().unwrap_or("?");
            let code = d["sqlstate"].as_str().map_or(String::new(), |c| format!(" [{c}]"));
            let _ = write!(
                body,
                "<tr class=\"outcome-{o}\"><td>{}</td><td>{o}{}</td><td>{}</td><td>{}</td><td class=\"sql\"><code>{}</code></td></tr>",
                html::time(e.time),
                esc(&code),
                esc(&d["rows"].to_string()),
                esc(&d["duration_ms"].to_string()),
                esc(d["sql"].as_str().unwrap_or("")),
                o = esc(outcome),
            );
        }
        body.push_str("</tbody></table>");
    }
    let commands: Vec<&Event> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind.as_str(),
                "ssh.exec"
                    | "ssh.command"
                    | "ssh.shell"
                    | "ssh.subsystem"
                    | "ssh.sftp"
                    | "ssh.forward"
                    | "ssh.forward.denied"
            )
        })
        .collect();
    if !commands.is_empty() {
        body.push_str("<table class=\"commands\" id=\"commands\"><caption>SSH activity, in order</caption><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Kind</th><th scope=\"col\">Command</th></tr></thead><tbody>");
        for e in commands {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"sql\"><code>{}</code></td></tr>",
                html::time(e.time),
                esc(&e.kind),
                esc(&detail(e))
            );
        }
        body.push_str("</tbody></table>");
    }
    let mut head = String::new();
    let cat = c.cp.catalog();
    let elevated = cat.is_auditor(&s.who.groups) || cat.is_admin(&s.who.groups);
    // The terminal is the session's own or an auditor's to watch (an approver who killed it
    // sees its events about them, not its screen).
    let own = started.is_some_and(|e| e.actor.as_deref() == Some(s.who.name.as_str()));
    let parts = if elevated || own { recordings(&c, &id) } else { 0 };
    if parts > 0 {
        body.push_str("<h2>Recording</h2>");
        for n in 0..parts {
            let player_id = if n == 0 {
                "player".to_string()
            } else {
                format!("player-{n}")
            };
            let _ = write!(
                body,
                "{}<div id=\"{player_id}\" class=\"player\" data-cast=\"/ui/audit/sessions/{}/cast?part={n}\" aria-label=\"Terminal recording {} of the session\"></div><p><a href=\"/ui/audit/sessions/{}/cast?part={n}\" download>Download the asciicast file</a></p>",
                if parts > 1 {
                    format!("<h3>Terminal {}</h3>", n + 1)
                } else {
                    String::new()
                },
                html::url(&id),
                n + 1,
                html::url(&id),
            );
        }
        let _ = write!(
            body,
            "<p class=\"hint\">Or on the gateway host: <code>jitgate play {}</code></p>",
            esc(&id)
        );
        head.push_str("<link rel=\"stylesheet\" href=\"/ui/static/player.css\"><script src=\"/ui/static/player.js\" defer></script>");
    }
    let has_cast = parts > 0;
    let mut resp = render_with(&c, &s, &title, Nav::Audit, false, &head, &body).await;
    if has_cast {
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(crate::PLAYER_CSP),
        );
    }
    resp
}

/// The recording file of part `n` of a session (`{id}.cast`, then `{id}.1.cast`, ... for the
/// further terminals of one connection).
fn cast_path(c: &Console, id: &str, n: usize) -> Option<std::path::PathBuf> {
    let dir = c.settings.recordings.as_ref()?;
    Some(if n == 0 {
        dir.join(format!("{id}.cast"))
    } else {
        dir.join(format!("{id}.{n}.cast"))
    })
}

/// How many recordings a session has.
fn recordings(c: &Console, id: &str) -> usize {
    if !session_id_ok(id) {
        return 0;
    }
    (0..1000)
        .take_while(|n| cast_path(c, id, *n).is_some_and(|p| p.is_file()))
        .count()
}

#[derive(Deserialize, Default)]
pub struct Part {
    #[serde(default)]
    part: usize,
}

/// `GET /ui/audit/sessions/{id}/cast?part=N`: a recording, to auditors, admins and the
/// session's own identity.
pub async fn cast(State(c): State<Arc<Console>>, s: Signed, Path(id): Path<String>, Query(p): Query<Part>) -> Response {
    if !session_id_ok(&id) {
        return (StatusCode::BAD_REQUEST, "not a session id").into_response();
    }
    let q = jitgate_audit::Query {
        session: Some(id.clone()),
        kind: Some("session.started".into()),
        limit: Some(1),
        ..jitgate_audit::Query::default()
    };
    let cat = c.cp.catalog();
    let elevated = cat.is_auditor(&s.who.groups) || cat.is_admin(&s.who.groups);
    let visible = c.cp.audit_search(&s.who, q).await.is_ok_and(|e| {
        e.first()
            .is_some_and(|e| elevated || e.actor.as_deref() == Some(s.who.name.as_str()))
    });
    let Some(path) = cast_path(&c, &id, p.part).filter(|_| visible) else {
        return (StatusCode::NOT_FOUND, "no recording you may see").into_response();
    };
    match tokio::fs::read(path).await {
        Ok(b) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-asciicast"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            b,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no recording for this session").into_response(),
    }
}
