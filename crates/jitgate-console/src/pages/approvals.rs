//! The approvals inbox (requests I can decide now, oldest first, with everything an approver
//! weighs) and a request's own page (where chat links and step-ups land). Approve and deny
//! call the control plane; when a policy's `step_up` needs a fresher provider sign-in, the
//! page sends the approver through the provider and keeps the reason they typed.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use jitgate_api::ControlError;
use jitgate_api::control::console::{InboxItem, PastGrant};
use jitgate_core::engine::Refusal;
use jitgate_core::{HumanDuration, Request, RequestState};

use super::{ReasonForm, back, describe, one_call, render};
use crate::Console;
use crate::html::{self, Nav, esc};
use crate::session::Signed;

fn history_table(h: &[PastGrant]) -> String {
    if h.is_empty() {
        return "<p class=\"hint\">No earlier grants on this resource.</p>".into();
    }
    let mut t = String::from(
        "<table class=\"history\"><caption>Recent grants on this resource</caption><thead><tr><th scope=\"col\">Grant</th><th scope=\"col\">From</th><th scope=\"col\">Granted</th><th scope=\"col\">Used</th><th scope=\"col\">Sessions</th><th scope=\"col\">Refused statements</th><th scope=\"col\">Ended</th></tr></thead><tbody>",
    );
    for p in h {
        let g = &p.grant;
        let granted = g.expires_at.as_second() - g.starts_at.as_second();
        let _ = write!(
            t,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            g.id,
            html::time(g.starts_at),
            html::dur(granted),
            html::dur(p.used_secs),
            p.sessions,
            p.refused,
            esc(g
                .end_reason
                .as_deref()
                .unwrap_or(if g.ended_at.is_none() { "live" } else { "" })),
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// The facts about a request an approver weighs.
fn facts(r: &Request, item: Option<&InboxItem>, labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut h = String::from("<dl class=\"facts\">");
    let mut row = |k: &str, v: String| {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    row(
        "Requester",
        format!(
            "<strong>{}</strong> <span class=\"hint\">groups: {}</span>",
            esc(&r.requester),
            esc(&r.requester_groups.join(", "))
        ),
    );
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    row(
        "Resource",
        format!(
            "{} <span class=\"hint\">{}</span>",
            esc(&r.resource),
            esc(&labels.join(" "))
        ),
    );
    row("Access", format!("<span class=\"tag\">{}</span>", esc(&r.access)));
    let what = match r.extends_grant {
        Some(g) => format!("{} more on grant {g}", HumanDuration(r.duration_secs)),
        None => HumanDuration(r.duration_secs).to_string(),
    };
    row("Duration", esc(&what));
    if let Some(at) = r.starts_at {
        let end = at
            .saturating_add(jiff::SignedDuration::from_secs(
                i64::try_from(r.duration_secs).unwrap_or(0),
            ))
            .unwrap_or(at);
        row(
            "Window",
            format!("scheduled: from {} to {}", html::time(at), html::time(end)),
        );
    }
    row("Reason", esc(r.reason.as_deref().unwrap_or("(none)")));
    row(
        "Ticket",
        match (&r.ticket, &r.ticket_title) {
            (Some(t), Some(title)) => format!("{} — {}", esc(t), esc(title)),
            (Some(t), None) => esc(t),
            _ => "(none)".into(),
        },
    );
    row("Policy", esc(&r.policy));
    if let Some(i) = item {
        row(
            "Step",
            format!(
                "{} of {}: <strong>{}</strong> ({} of {} approvals)",
                r.step + 1,
                i.steps,
                esc(&i.step_name),
                i.have,
                i.needed
            ),
        );
    }
    let approvals: Vec<String> = r
        .approvals
        .iter()
        .map(|a| {
            format!(
                "{} (step {}, {}){}",
                esc(&a.approver),
                a.step + 1,
                html::time(a.at),
                a.reason.as_deref().map_or(String::new(), |x| format!(": {}", esc(x)))
            )
        })
        .collect();
    row(
        "Approved by",
        if approvals.is_empty() {
            "nobody yet".into()
        } else {
            approvals.join("<br>")
        },
    );
    row("Asked", html::time(r.created_at));
    h.push_str("</dl>");
    h
}

fn decide_forms(s: &Signed, r: &Request, item: &InboxItem, draft: Option<&str>, from_inbox: bool) -> String {
    let back = if from_inbox {
        "<input type=\"hidden\" name=\"back\" value=\"inbox\">"
    } else {
        ""
    };
    let step_up = match item.step_up {
        Some((d, true)) => format!(
            "<p class=\"hint\">Policy {} needs a provider sign-in within {d} to approve: yours is recent enough.</p>",
            esc(&r.policy)
        ),
        Some((d, false)) => format!(
            "<p class=\"notice\">Policy {} needs a provider sign-in within {d} to approve: approving sends you through the provider first.</p>",
            esc(&r.policy)
        ),
        None => String::new(),
    };
    format!(
        "{step_up}<div class=\"decide\"><form method=\"post\" action=\"/ui/requests/{id}/approve\" class=\"inline\">{csrf}{back}<label for=\"ar-{id}\">Approval note</label><input id=\"ar-{id}\" name=\"reason\" value=\"{draft}\" placeholder=\"optional\"><button type=\"submit\" class=\"primary\" id=\"approve-{id}\">Approve</button></form><form method=\"post\" action=\"/ui/requests/{id}/deny\" class=\"inline\">{csrf}{back}<label for=\"dr-{id}\">Reason for denying</label><input id=\"dr-{id}\" name=\"reason\" required placeholder=\"required\"><button type=\"submit\" class=\"danger\" id=\"deny-{id}\">Deny</button></form></div>",
        id = r.id,
        csrf = html::csrf(&s.csrf),
        draft = esc(draft.unwrap_or("")),
    )
}

/// `GET /ui/approvals`.
pub async fn page(State(c): State<Arc<Console>>, s: Signed) -> Response {
    let items = match c.cp.inbox(&s.who).await {
        Ok(v) => v,
        Err(e) => {
            return render(
                &c,
                &s,
                "Approvals",
                Nav::Approvals,
                true,
                &format!("<p class=\"flash err\">{}</p>", esc(&describe(&e))),
            )
            .await;
        }
    };
    let mut body = String::from("<section id=\"inbox\" data-live aria-labelledby=\"h-inbox\">");
    let _ = write!(
        body,
        "<h2 id=\"h-inbox\">Waiting for you <span class=\"count\">({})</span></h2>",
        items.len()
    );
    if items.is_empty() {
        body.push_str("<p class=\"empty\">Nothing to decide. New requests appear here as they arrive.</p>");
    }
    for (n, i) in items.iter().enumerate() {
        let r = &i.request;
        let history = if n < 20 {
            c.cp.history(&s.who, r)
                .await
                .map(|h| history_table(&h))
                .unwrap_or_default()
        } else {
            format!(
                "<p><a href=\"/ui/requests/{}\">History on the request's page</a></p>",
                r.id
            )
        };
        let _ = write!(
            body,
            "<article class=\"card request\" id=\"inbox-{id}\"><h3><a href=\"/ui/requests/{id}\">Request {id}</a>: {who} wants {res} <span class=\"tag\">{acc}</span></h3>{facts}{forms}<details><summary>Requester's history</summary>{history}</details></article>",
            id = r.id,
            who = esc(&r.requester),
            res = esc(&r.resource),
            acc = esc(&r.access),
            facts = facts(r, Some(i), &i.labels),
            forms = decide_forms(&s, r, i, None, true),
        );
    }
    body.push_str("</section>");
    render(&c, &s, "Approvals", Nav::Approvals, true, &body).await
}

/// `GET /ui/requests/{id}`: one request, decided or not, with the decision forms when the
/// caller may decide it now.
pub async fn request_page(State(c): State<Arc<Console>>, s: Signed, Path(id): Path<i64>) -> Response {
    let r = match c.cp.get_request(&s.who, id).await {
        Ok(r) => r,
        Err(e) => {
            let body = format!("<p class=\"flash err\" role=\"alert\">{}</p>", esc(&describe(&e)));
            return render(&c, &s, &format!("Request {id}"), Nav::Approvals, false, &body).await;
        }
    };
    let item =
        c.cp.inbox(&s.who)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|i| i.request.id == id);
    let labels =
        c.cp.catalog()
            .resources
            .get(&r.resource)
            .map(|x| x.labels.clone())
            .unwrap_or_default();
    let mut body = String::from("<section id=\"request\" data-live>");
    let state = match r.state {
        RequestState::Pending => format!("pending: waiting for {}", c.cp.waiting_for(&r).join(", ")),
        other => {
            let by = r.decided_by.as_deref().map_or(String::new(), |b| format!(" by {b}"));
            let why = r.decision_reason.as_deref().map_or(String::new(), |w| format!(": {w}"));
            format!("{}{by}{why}", other.as_str())
        }
    };
    let _ = write!(
        body,
        "<p class=\"state state-{}\" id=\"request-state\">{}</p>",
        r.state.as_str(),
        esc(&state)
    );
    body.push_str(&facts(&r, item.as_ref(), &labels));
    if let Some(i) = &item {
        let draft = s.draft.as_ref().filter(|(d, _)| *d == id).map(|(_, t)| t.as_str());
        body.push_str(&decide_forms(&s, &r, i, draft, false));
    } else if r.state == RequestState::Pending && r.requester == s.who.name {
        body.push_str("<p class=\"hint\">This is your request: someone else decides it (four-eyes).</p>");
    }
    if let Ok(h) = c.cp.history(&s.who, &r).await {
        body.push_str("<h2>Requester's history</h2>");
        body.push_str(&history_table(&h));
    }
    body.push_str("</section>");
    render(&c, &s, &format!("Request {id}"), Nav::Approvals, true, &body).await
}

/// The page that sends an approver through the provider again (a link, not a redirect: the
/// form's submission may not lead to another origin, and the approver sees why).
fn step_up_page(c: &Console, s: &Signed, id: i64, policy: &str, max_age: HumanDuration, reason: &str) -> Response {
    let now = c.cp.now().as_second();
    let _ = c.sessions.with(&s.cookie, now, c.settings.idle, true, |sess| {
        sess.draft = Some((id, reason.to_string()));
    });
    let link = format!(
        "/ui/login/oidc?max_age={}&next={}",
        max_age.secs(),
        html::url(&format!("/ui/requests/{id}"))
    );
    let body = if c.cp.oidc().is_ok() {
        format!(
            "<p role=\"alert\">Policy <strong>{}</strong> needs a sign-in at the identity provider within the last {max_age} to approve request {id}.</p><p><a class=\"button primary\" id=\"step-up\" href=\"{}\">Sign in again to approve</a> <a href=\"/ui/requests/{id}\">Back to the request</a></p>",
            esc(policy),
            esc(&link)
        )
    } else {
        format!(
            "<p role=\"alert\">Policy <strong>{}</strong> needs a sign-in at the identity provider within the last {max_age} to approve, and this gateway has no provider configured: nobody can approve it here.</p>",
            esc(policy)
        )
    };
    let shell = html::Shell {
        name: &s.who.name,
        csrf: &s.csrf,
        inbox: 0,
        flash: Vec::new(),
        live: false,
        extra_head: "",
    };
    (
        axum::http::StatusCode::FORBIDDEN,
        Html(html::page("Fresh sign-in needed", Nav::Approvals, Some(&shell), &body)),
    )
        .into_response()
}

/// Where to go after a decision: the page it was made on.
fn after(f: &ReasonForm, id: i64) -> String {
    match f.back.as_deref() {
        Some("inbox") => "/ui/approvals".into(),
        _ => format!("/ui/requests/{id}"),
    }
}

/// `POST /ui/requests/{id}/approve`.
pub async fn approve(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<ReasonForm>,
) -> Response {
    if let Some(r) = s.csrf_refusal(&f.csrf) {
        return r;
    }
    match c.cp.approve(&s.who, id, f.reason()).await {
        Ok(r) if r.state == RequestState::Approved => back(
            &c,
            &s,
            Ok(format!("Request {id} approved: {}'s grant is live.", r.requester)),
            &after(&f, id),
        ),
        Ok(r) => back(
            &c,
            &s,
            Ok(format!(
                "Your approval of request {id} is recorded; it now waits for {}.",
                c.cp.waiting_for(&r).join(", ")
            )),
            &after(&f, id),
        ),
        Err(ControlError::Refused(Refusal::StepUpRequired { policy, max_age })) => {
            step_up_page(&c, &s, id, &policy, max_age, &f.reason)
        }
        Err(e) => back(&c, &s, Err(describe(&e)), &after(&f, id)),
    }
}

/// `POST /ui/requests/{id}/deny`.
pub async fn deny(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<ReasonForm>,
) -> Response {
    one_call(
        &c,
        &s,
        &f.csrf,
        &after(&f, id),
        c.cp.deny(&s.who, id, f.reason().unwrap_or_default()),
        |r| format!("Request {id} denied; {} will see your reason.", r.requester),
    )
    .await
}
