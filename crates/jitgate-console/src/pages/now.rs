//! Access now: live grants and sessions across the gateway (every replica's on a shared
//! store), filtered by resource, identity and protocol, with revoke and kill. Who may see and
//! who may act is the control plane's rule (approvers of the grant's policy, admins).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{ReasonForm, one_call, render};
use crate::Console;
use crate::html::{self, Nav, countdown, esc};
use crate::session::Signed;

#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    protocol: String,
}

fn keep(filter: &str, v: &str) -> bool {
    let f = filter.trim();
    f.is_empty() || v.contains(f)
}

/// `GET /ui/now`.
pub async fn page(State(c): State<Arc<Console>>, s: Signed, Query(q): Query<Filters>) -> Response {
    let now = c.cp.now();
    let mut body = format!(
        "<form method=\"get\" action=\"/ui/now\" class=\"filters\" role=\"search\"><label for=\"f-resource\">Resource</label><input id=\"f-resource\" name=\"resource\" value=\"{}\"><label for=\"f-identity\">Identity</label><input id=\"f-identity\" name=\"identity\" value=\"{}\"><label for=\"f-protocol\">Protocol</label><select id=\"f-protocol\" name=\"protocol\"><option value=\"\">any</option><option{}>postgres</option><option{}>ssh</option></select><button type=\"submit\">Filter</button></form>",
        esc(&q.resource),
        esc(&q.identity),
        if q.protocol == "postgres" { " selected" } else { "" },
        if q.protocol == "ssh" { " selected" } else { "" },
    );
    let cat = c.cp.catalog();
    let back_to = format!(
        "/ui/now?resource={}&identity={}&protocol={}",
        html::url(&q.resource),
        html::url(&q.identity),
        html::url(&q.protocol)
    );
    let grants = c.cp.list_grants(&s.who, true).await.unwrap_or_default();
    body.push_str("<section id=\"live-grants\" data-live aria-labelledby=\"h-lg\"><h2 id=\"h-lg\">Live grants</h2><table><thead><tr><th scope=\"col\">Grant</th><th scope=\"col\">Identity</th><th scope=\"col\">Resource</th><th scope=\"col\">Access</th><th scope=\"col\">Ends</th><th scope=\"col\">Action</th></tr></thead><tbody>");
    let mut shown = 0;
    for g in grants.iter().filter(|g| g.is_live(now)) {
        let proto = cat.resources.get(&g.resource).map_or("", |r| r.kind.as_str());
        if !(keep(&q.resource, &g.resource) && keep(&q.identity, &g.identity) && keep(&q.protocol, proto)) {
            continue;
        }
        shown += 1;
        let _ = write!(
            body,
            "<tr id=\"live-grant-{id}\"><th scope=\"row\">{id}</th><td>{who}</td><td>{res}</td><td>{acc}</td><td>{cd}</td><td><form method=\"post\" action=\"/ui/grants/{id}/revoke\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"back\" value=\"{back}\"><label for=\"rv-{id}\" class=\"sr-only\">Reason for revoking grant {id}</label><input id=\"rv-{id}\" name=\"reason\" placeholder=\"reason\"><button type=\"submit\" class=\"danger\" id=\"revoke-{id}\">Revoke</button></form></td></tr>",
            id = g.id,
            who = esc(&g.identity),
            res = esc(&g.resource),
            acc = esc(&g.access),
            cd = countdown(g.expires_at, now),
            csrf = html::csrf(&s.csrf),
            back = esc(&back_to),
        );
    }
    if shown == 0 {
        body.push_str("<tr><td colspan=\"6\" class=\"empty\">No live grants you may see.</td></tr>");
    }
    body.push_str("</tbody></table></section>");

    let sessions = c.cp.list_sessions(&s.who).await.unwrap_or_default();
    body.push_str("<section id=\"live-sessions\" data-live aria-labelledby=\"h-ls\"><h2 id=\"h-ls\">Live sessions</h2><table><thead><tr><th scope=\"col\">Session</th><th scope=\"col\">Identity</th><th scope=\"col\">Resource</th><th scope=\"col\">Protocol</th><th scope=\"col\">From</th><th scope=\"col\">Since</th><th scope=\"col\">Action</th></tr></thead><tbody>");
    let mut shown = 0;
    for x in &sessions {
        if !(keep(&q.resource, &x.resource) && keep(&q.identity, &x.identity) && keep(&q.protocol, &x.protocol)) {
            continue;
        }
        shown += 1;
        let _ = write!(
            body,
            "<tr id=\"live-session-{sid}\"><th scope=\"row\"><a href=\"/ui/audit/sessions/{sidu}\">{sid}</a></th><td>{who}</td><td>{res}</td><td>{proto}</td><td>{from}</td><td>{since}</td><td><form method=\"post\" action=\"/ui/sessions/{sidu}/kill\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"back\" value=\"{back}\"><button type=\"submit\" class=\"danger\" aria-label=\"Kill session {sid}\">Kill</button></form></td></tr>",
            sid = esc(&x.id),
            sidu = html::url(&x.id),
            who = esc(&x.identity),
            res = esc(&x.resource),
            proto = esc(&x.protocol),
            from = esc(&x.client_addr),
            since = html::time(x.started_at),
            csrf = html::csrf(&s.csrf),
            back = esc(&back_to),
        );
    }
    if shown == 0 {
        body.push_str("<tr><td colspan=\"7\" class=\"empty\">No live sessions you may see.</td></tr>");
    }
    body.push_str("</tbody></table></section>");
    render(&c, &s, "Access now", Nav::Now, true, &body).await
}

fn back_path(f: &ReasonForm) -> String {
    crate::session::local_next(f.back.as_deref())
}

/// `POST /ui/grants/{id}/revoke`.
pub async fn revoke(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<ReasonForm>,
) -> Response {
    one_call(
        &c,
        &s,
        &f.csrf,
        &back_path(&f),
        c.cp.revoke(&s.who, id, f.reason()),
        |g| format!("Grant {} of {} revoked; its sessions were closed.", g.id, g.identity),
    )
    .await
}

/// `POST /ui/sessions/{id}/kill`.
pub async fn kill(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> Response {
    one_call(&c, &s, &f.csrf, &back_path(&f), c.cp.kill_session(&s.who, &id), |x| {
        format!("Session {} of {} killed.", x.id, x.identity)
    })
    .await
}
