//! Break-glass in the console: the form that opens a grant at once (after a fresh sign-in at
//! the provider), and the reviews that follow it — open and overdue ones listed, each with
//! what its grant did, closed by a reviewer with a note. Who may see, open and close is the
//! control plane's rule (the requester, the policy's reviewers, auditors and admins see a
//! review; a reviewer other than the requester closes it).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use jitgate_core::engine::NewRequest;
use jitgate_core::{HumanDuration, Principal};
use serde::Deserialize;

use super::{back, describe, one_call, render};
use crate::Console;
use crate::html::{self, Nav, esc};
use crate::session::Signed;

/// How fresh a provider sign-in must be to break the glass from the console when the policy
/// sets no `step_up`.
pub const BREAK_GLASS_STEP_UP: HumanDuration = HumanDuration(300);

/// The policies (by resource) under which `who` may break the glass, with the step-up each
/// asks of the console: `(resource, policy, max_duration, step_up)`.
pub fn break_glass_options(c: &Console, who: &Principal) -> Vec<(String, String, HumanDuration, HumanDuration)> {
    let cat = c.cp.catalog();
    cat.resources
        .values()
        .filter_map(|r| {
            cat.policies_for(r).find_map(|p| {
                p.break_glass.as_ref().filter(|b| who.in_any(&b.groups)).map(|b| {
                    (
                        r.name.clone(),
                        p.name.clone(),
                        b.max_duration,
                        p.step_up.unwrap_or(BREAK_GLASS_STEP_UP),
                    )
                })
            })
        })
        .collect()
}

/// The break-glass form for My access (empty when the user may break no glass).
pub fn break_glass_form(c: &Console, s: &Signed) -> String {
    let options = break_glass_options(c, &s.who);
    if options.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<section id=\"break-glass\" aria-labelledby=\"h-bg\"><h2 id=\"h-bg\">Break glass</h2><p class=\"hint\">Opens a grant at once, without approvers, for an emergency. Everyone subscribed is alerted and a reviewer must review what you did. From here it needs a recent sign-in at your identity provider.</p><details><summary>Break the glass</summary><form method=\"post\" action=\"/ui/break-glass\" id=\"break-glass-form\" class=\"stack\">",
    );
    h.push_str(&html::csrf(&s.csrf));
    h.push_str("<label for=\"bg-resource\">Resource</label><select id=\"bg-resource\" name=\"resource\" required>");
    for (res, policy, max, _) in &options {
        let _ = write!(
            h,
            "<option value=\"{r}\">{r} (policy {p}, up to {max})</option>",
            r = esc(res),
            p = esc(policy),
        );
    }
    h.push_str("</select><label for=\"bg-access\">Access</label><input id=\"bg-access\" name=\"access\" placeholder=\"the resource's default\"><label for=\"bg-duration\">Duration</label><input id=\"bg-duration\" name=\"duration\" placeholder=\"the break-glass maximum\"><label for=\"bg-reason\">What is on fire</label><input id=\"bg-reason\" name=\"reason\" required placeholder=\"INC-500 checkout down, primary unreachable\"><label for=\"bg-ticket\">Incident</label><input id=\"bg-ticket\" name=\"ticket\" placeholder=\"optional\"><button type=\"submit\" class=\"danger\" id=\"break-glass-submit\">Break the glass</button></form></details></section>");
    h
}

#[derive(Deserialize)]
pub struct BreakGlassForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    resource: String,
    #[serde(default)]
    access: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ticket: String,
}

fn blank(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `POST /ui/break-glass`: a fresh provider sign-in first (the policy's `step_up`, else 5
/// minutes), then the control plane's break-glass.
pub async fn open(State(c): State<Arc<Console>>, s: Signed, Form(f): Form<BreakGlassForm>) -> Response {
    if let Some(r) = s.csrf_refusal(&f.csrf) {
        return r;
    }
    let resource = f.resource.trim().to_string();
    let Some((_, policy, _, max_age)) = break_glass_options(&c, &s.who)
        .into_iter()
        .find(|(r, ..)| *r == resource)
    else {
        return back(
            &c,
            &s,
            Err(format!("you may not break the glass on `{resource}`")),
            "/ui/",
        );
    };
    let now = c.cp.now().as_second();
    let fresh = s.who.auth_time.is_some_and(|t| {
        t <= now.saturating_add(60) && now.saturating_sub(t) <= i64::try_from(max_age.secs()).unwrap_or(i64::MAX)
    });
    if !fresh {
        return step_up(&c, &s, &policy, max_age);
    }
    let duration = match blank(&f.duration).map(|d| HumanDuration::parse(&d)).transpose() {
        Ok(d) => d,
        Err(e) => return back(&c, &s, Err(format!("duration: {e}")), "/ui/"),
    };
    let new = NewRequest {
        resource,
        access: blank(&f.access),
        duration,
        reason: blank(&f.reason),
        ticket: blank(&f.ticket),
        lifetime: Default::default(),
    };
    let out = c.cp.break_glass(&s.who, new).await.map(|r| {
        let (reviewers, due) = r.break_glass.as_ref().map_or((String::new(), String::new()), |v| {
            (
                v.reviewers.join(", "),
                v.due_at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
            )
        });
        format!(
            "Break-glass grant {} on {} is open: everyone subscribed was alerted, and [{reviewers}] must review it by {due} (review {}).",
            r.grant_id.unwrap_or_default(),
            r.resource,
            r.id
        )
    });
    back(&c, &s, out.map_err(|e| describe(&e)), "/ui/")
}

/// The page that sends the user through the provider again before breaking the glass.
fn step_up(c: &Console, s: &Signed, policy: &str, max_age: HumanDuration) -> Response {
    let link = format!(
        "/ui/login/oidc?max_age={}&next={}",
        max_age.secs(),
        html::url("/ui/#break-glass")
    );
    let body = if c.cp.oidc().is_ok() {
        format!(
            "<p role=\"alert\">Breaking the glass under policy <strong>{}</strong> from the console needs a sign-in at the identity provider within the last {max_age}.</p><p><a class=\"button primary\" id=\"step-up\" href=\"{}\">Sign in again</a> <a href=\"/ui/\">Back</a></p><p class=\"hint\">From a terminal: <code>jitgate break-glass RESOURCE --reason \"...\"</code>.</p>",
            esc(policy),
            esc(&link)
        )
    } else {
        format!(
            "<p role=\"alert\">Breaking the glass under policy <strong>{}</strong> from the console needs a sign-in at an identity provider, and this gateway has none: use <code>jitgate break-glass RESOURCE --reason \"...\"</code>.</p>",
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
        Html(html::page("Fresh sign-in needed", Nav::Access, Some(&shell), &body)),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    all: Option<String>,
}

/// `GET /ui/reviews`: open reviews (overdue first), closed ones too with `?all=1`.
pub async fn page(State(c): State<Arc<Console>>, s: Signed, Query(q): Query<ListQuery>) -> Response {
    let all = q.all.as_deref().is_some_and(|v| !v.is_empty() && v != "0");
    let mut items = match c.cp.reviews(&s.who, all).await {
        Ok(v) => v,
        Err(e) => {
            let body = format!("<p role=\"alert\">{}</p>", esc(&describe(&e)));
            return render(&c, &s, "Break-glass reviews", Nav::Reviews, false, &body).await;
        }
    };
    items.sort_by_key(|i| (!i.overdue, i.request.break_glass.as_ref().map(|v| v.due_at)));
    let now = c.cp.now();
    let mut body = format!(
        "<p>{} · <a href=\"/ui/reviews{}\">{}</a></p>",
        if all {
            "Every review you may see."
        } else {
            "Open reviews: each break-glass grant waits for a reviewer's finding."
        },
        if all { "" } else { "?all=1" },
        if all { "Open ones only" } else { "Closed ones too" }
    );
    body.push_str("<section id=\"reviews\" data-live aria-labelledby=\"h-rv\"><h2 id=\"h-rv\" class=\"sr-only\">Reviews</h2><table><thead><tr><th scope=\"col\">Review</th><th scope=\"col\">Who</th><th scope=\"col\">Resource</th><th scope=\"col\">Opened</th><th scope=\"col\">Due</th><th scope=\"col\">State</th><th scope=\"col\">Reason</th></tr></thead><tbody>");
    for i in &items {
        let r = &i.request;
        let Some(v) = &r.break_glass else { continue };
        let state = match (&v.closed_by, i.overdue) {
            (Some(by), _) => format!("closed by {}", esc(by)),
            (None, true) => "<strong class=\"tag danger\">OVERDUE</strong>".to_string(),
            (None, false) => format!("open · {}", html::countdown(v.due_at, now)),
        };
        let _ = write!(
            body,
            "<tr id=\"review-{id}\"><th scope=\"row\"><a href=\"/ui/reviews/{id}\">{id}</a></th><td>{who}</td><td>{res} <span class=\"tag\">{acc}</span></td><td>{opened}</td><td>{due}</td><td>{state}</td><td>{reason}</td></tr>",
            id = r.id,
            who = esc(&r.requester),
            res = esc(&r.resource),
            acc = esc(&r.access),
            opened = html::time(r.created_at),
            due = html::time(v.due_at),
            reason = esc(r.reason.as_deref().unwrap_or("")),
        );
    }
    if items.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"empty\">No reviews to show.</td></tr>");
    }
    body.push_str("</tbody></table></section>");
    render(&c, &s, "Break-glass reviews", Nav::Reviews, true, &body).await
}

/// `GET /ui/reviews/{id}`: the break-glass, its grant's life, every session, statement and
/// command, and the close form for a reviewer.
pub async fn show(State(c): State<Arc<Console>>, s: Signed, Path(id): Path<i64>) -> Response {
    let (item, events) = match c.cp.review(&s.who, id).await {
        Ok(x) => x,
        Err(e) => {
            let body = format!(
                "<p role=\"alert\">{}</p><p><a href=\"/ui/reviews\">All reviews</a></p>",
                esc(&describe(&e))
            );
            return render(&c, &s, &format!("Review {id}"), Nav::Reviews, false, &body).await;
        }
    };
    let r = &item.request;
    let Some(v) = &r.break_glass else {
        return render(&c, &s, &format!("Review {id}"), Nav::Reviews, false, "").await;
    };
    let mut body = String::from("<dl class=\"facts\">");
    let mut row = |k: &str, val: String| {
        let _ = write!(body, "<dt>{}</dt><dd>{val}</dd>", esc(k));
    };
    row(
        "Broke the glass",
        format!("<strong>{}</strong> at {}", esc(&r.requester), html::time(r.created_at)),
    );
    row(
        "Resource",
        format!(
            "{} <span class=\"tag\">{}</span> for {}",
            esc(&r.resource),
            esc(&r.access),
            HumanDuration(r.duration_secs)
        ),
    );
    row("Reason", esc(r.reason.as_deref().unwrap_or("")));
    if let Some(t) = &r.ticket {
        row("Incident", esc(t));
    }
    row("Policy", esc(&r.policy));
    if let Some(g) = &item.grant {
        row(
            "Grant",
            format!(
                "{} · {} · from {} to {}{}",
                g.id,
                esc(g.state.as_str()),
                html::time(g.starts_at),
                html::time(g.ended_at.unwrap_or(g.expires_at)),
                g.end_reason
                    .as_deref()
                    .map(|x| format!(" ({})", esc(x)))
                    .unwrap_or_default()
            ),
        );
    }
    row(
        "Review",
        match (&v.closed_by, &v.closed_at) {
            (Some(by), Some(at)) => format!(
                "closed by <strong>{}</strong> at {}: {}",
                esc(by),
                html::time(*at),
                esc(v.note.as_deref().unwrap_or(""))
            ),
            _ => format!(
                "{} by [{}], due {}",
                if item.overdue {
                    "<strong class=\"tag danger\">OVERDUE</strong>, awaited"
                } else {
                    "awaited"
                },
                esc(&v.reviewers.join(", ")),
                html::time(v.due_at)
            ),
        },
    );
    body.push_str("</dl>");
    if v.closed_at.is_none() {
        if r.requester == s.who.name {
            body.push_str("<p class=\"hint\" id=\"not-yours\">You broke this glass: another reviewer closes the review (four-eyes).</p>");
        } else {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/ui/reviews/{id}/close\" id=\"close-form\" class=\"stack\">{csrf}<label for=\"note\">Finding</label><textarea id=\"note\" name=\"reason\" required rows=\"3\" placeholder=\"what was done, and whether it was justified\"></textarea><button type=\"submit\" class=\"primary\" id=\"close-review\">Close the review</button></form>",
                csrf = html::csrf(&s.csrf)
            );
        }
    }
    let _ = write!(
        body,
        "<section aria-labelledby=\"h-ev\"><h2 id=\"h-ev\">What the grant did ({} events)</h2><table id=\"events\"><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Event</th><th scope=\"col\">Session</th><th scope=\"col\">What</th></tr></thead><tbody>",
        events.len()
    );
    for e in &events {
        let det = &e.details;
        let what = ["sql", "command", "line", "op", "path"]
            .iter()
            .find_map(|k| det.get(*k).filter(|x| !x.is_null()))
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .or_else(|| e.reason.clone())
            .unwrap_or_default();
        let session = e.session_id.as_deref().map_or(String::new(), |sid| {
            format!("<a href=\"/ui/audit/sessions/{}\">{}</a>", html::url(sid), esc(sid))
        });
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{session}</td><td><code>{}</code></td></tr>",
            html::time(e.time),
            esc(&e.kind),
            esc(&what)
        );
    }
    body.push_str("</tbody></table></section><p><a href=\"/ui/reviews\">All reviews</a></p>");
    render(&c, &s, &format!("Review {id}"), Nav::Reviews, false, &body).await
}

/// `POST /ui/reviews/{id}/close`.
pub async fn close(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<super::ReasonForm>,
) -> Response {
    one_call(
        &c,
        &s,
        &f.csrf,
        &format!("/ui/reviews/{id}"),
        c.cp.close_review(&s.who, id, f.reason.clone()),
        |r| format!("Review {} closed; {} will see your finding.", r.id, r.requester),
    )
    .await
}
