//! My access: what I may request (with each policy's default and longest duration), the
//! request form, my pending requests (cancel), my live grants with a countdown, extend and
//! release, and the exact ways to connect to each.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use jitgate_core::engine::NewRequest;
use jitgate_core::{HumanDuration, RequestState};
use serde::Deserialize;

use super::{CsrfOnly, back, describe, one_call, render};
use crate::Console;
use crate::html::{self, Nav, button_form, copy_line, countdown, esc};
use crate::session::Signed;

/// Where the Postgres and SSH front ends are reached, from what the gateway published.
struct Endpoints {
    host: String,
    pg_port: Option<String>,
}

fn endpoints(c: &Console) -> Endpoints {
    let fe = c.cp.frontends();
    let port_of = |k: &str| fe[k].as_str().and_then(|a| a.rsplit_once(':').map(|x| x.1.to_string()));
    let listen_host = fe["postgres"]
        .as_str()
        .and_then(|a| a.rsplit_once(':').map(|x| x.0.trim_matches(['[', ']']).to_string()))
        .filter(|h| h != "0.0.0.0" && h != "::");
    let host = fe["public_url"]
        .as_str()
        .and_then(host_of)
        .or(listen_host)
        .or_else(|| host_of(&c.settings.base_url))
        .unwrap_or_else(|| "127.0.0.1".into());
    Endpoints {
        host,
        pg_port: port_of("postgres"),
    }
}

fn host_of(u: &str) -> Option<String> {
    let rest = u.split_once("://").map_or(u, |x| x.1);
    let auth = rest.split('/').next()?;
    let h = match auth.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?.to_string(),
        None => auth.rsplit_once(':').map_or(auth, |x| x.0).to_string(),
    };
    (!h.is_empty()).then_some(h)
}

/// The ways to connect under a grant, each with a copy button.
fn connect_lines(c: &Console, ep: &Endpoints, who: &str, resource: &str, access: &str, kind: &str, gid: i64) -> String {
    let mut h = String::from("<details class=\"connect\"><summary>How to connect</summary>");
    if kind == "postgres" {
        let port = ep.pg_port.clone().unwrap_or_else(|| "15432".into());
        let _ = write!(
            h,
            "<p>With the CLI (after <code>jitgate login</code>; it verifies the gateway and sends your token):</p>{}",
            copy_line(&format!("c{gid}-connect"), &format!("jitgate connect {resource}"))
        );
        let _ = write!(
            h,
            "<p>With psql and a service entry (<code>jitgate pg-service</code> writes it, and your token into the passfile):</p>{}<p>The entry it writes:</p>{}",
            copy_line(&format!("c{gid}-service"), &format!("psql \"service={resource}\"")),
            copy_line(
                &format!("c{gid}-entry"),
                &format!(
                    "[{resource}]\nhost={}\nport={port}\nuser={who}\ndbname={resource}\nsslmode=verify-full\nsslrootcert=~/.config/jitgate/gateway-ca.pem",
                    ep.host
                )
            )
        );
        let _ = write!(
            h,
            "<p>Any libpq client, from the environment <code>jitgate pg-env</code> prints (the passfile holds your token):</p>{}<p>The connection string itself (the password is the gateway token <code>jitgate login</code> gave you):</p>{}",
            copy_line(
                &format!("c{gid}-env"),
                &format!("eval \"$(jitgate pg-env {resource})\" && psql")
            ),
            copy_line(
                &format!("c{gid}-psql"),
                &format!(
                    "psql \"host={} port={port} user={who} dbname={resource} sslmode=verify-full sslrootcert=$HOME/.config/jitgate/gateway-ca.pem\"",
                    ep.host
                )
            )
        );
    } else {
        let _ = write!(
            h,
            "<p>After <code>jitgate ssh-config</code> (a short-lived certificate and the gateway's host CA):</p>{}{}",
            copy_line(
                &format!("c{gid}-ssh"),
                &format!("ssh -o User={access}@{resource} {resource}")
            ),
            copy_line(
                &format!("c{gid}-scp"),
                &format!("scp -o User={access}@{resource} FILE {resource}:")
            )
        );
    }
    let _ = c;
    h.push_str("</details>");
    h
}

/// `GET /ui/`.
pub async fn page(State(c): State<Arc<Console>>, s: Signed) -> Response {
    let cp = &c.cp;
    let now = cp.now();
    let cat = cp.catalog();
    let ep = endpoints(&c);
    let mut body = String::new();

    // Live grants.
    let grants = cp.whoami(&s.who).grants;
    body.push_str(
        "<section id=\"grants\" data-live aria-labelledby=\"h-grants\"><h2 id=\"h-grants\">My live grants</h2>",
    );
    if grants.is_empty() {
        body.push_str("<p class=\"empty\">No live grants. Ask for access below.</p>");
    }
    for g in &grants {
        let kind = cat.resources.get(&g.resource).map_or("postgres", |r| r.kind.as_str());
        let policy = cat.policies.iter().find(|p| p.name == g.policy);
        let max = policy.map_or(String::new(), |p| p.max_duration.to_string());
        let _ = write!(
            body,
            "<article class=\"card grant\" id=\"grant-{id}\"><h3>{res} <span class=\"tag\">{acc}</span></h3><p>Grant {id} · {ends} · {cd}</p><div class=\"actions\">{release}<form method=\"post\" action=\"/ui/grants/{id}/extend\" class=\"inline\">{csrf}<label for=\"ext-{id}\">Extend by</label><input id=\"ext-{id}\" name=\"duration\" value=\"30m\" size=\"5\" aria-describedby=\"ext-hint-{id}\"><span id=\"ext-hint-{id}\" class=\"hint\">up to {max} in all</span><label for=\"extr-{id}\" class=\"sr-only\">Reason</label><input id=\"extr-{id}\" name=\"reason\" placeholder=\"reason\"><button type=\"submit\">Extend</button></form></div>{connect}</article>",
            id = g.id,
            res = esc(&g.resource),
            acc = esc(&g.access),
            ends = if g.starts_at > now {
                format!(
                    "scheduled: opens {} · ends {}",
                    html::time(g.starts_at),
                    html::time(g.expires_at)
                )
            } else {
                format!("ends {}", html::time(g.expires_at))
            },
            cd = countdown(g.expires_at, now),
            release = button_form(
                &format!("/ui/grants/{}/release", g.id),
                &s.csrf,
                "Release now",
                "danger",
                None
            ),
            csrf = html::csrf(&s.csrf),
            max = esc(&max),
            connect = connect_lines(&c, &ep, &s.who.name, &g.resource, &g.access, kind, g.id),
        );
    }
    body.push_str("</section>");

    // Pending requests.
    let pending = cp
        .list_requests(&s.who, Some(RequestState::Pending), true)
        .await
        .unwrap_or_default();
    body.push_str(
        "<section id=\"pending\" data-live aria-labelledby=\"h-pending\"><h2 id=\"h-pending\">My pending requests</h2>",
    );
    if pending.is_empty() {
        body.push_str("<p class=\"empty\">None.</p>");
    }
    for r in &pending {
        let waiting = cp.waiting_for(r).join(", ");
        let what = if r.extends_grant.is_some() { "extension of " } else { "" };
        let _ = write!(
            body,
            "<article class=\"card request\" id=\"request-{id}\"><h3><a href=\"/ui/requests/{id}\">Request {id}</a>: {what}{res} <span class=\"tag\">{acc}</span> for {dur}</h3><p>Waiting for an approver from <strong>{waiting}</strong> · {n} approval(s) so far · asked {asked}</p>{cancel}</article>",
            id = r.id,
            res = esc(&r.resource),
            acc = esc(&r.access),
            dur = HumanDuration(r.duration_secs),
            waiting = esc(&waiting),
            n = r.approvals.len(),
            asked = html::time(r.created_at),
            cancel = button_form(
                &format!("/ui/requests/{}/cancel", r.id),
                &s.csrf,
                "Cancel request",
                "",
                None
            ),
        );
    }
    body.push_str("</section>");

    // What I may request, and the form.
    let resources: Vec<_> = cp
        .resources(&s.who)
        .into_iter()
        .filter(|r| !r.access.is_empty())
        .collect();
    body.push_str("<section aria-labelledby=\"h-request\"><h2 id=\"h-request\">Request access</h2>");
    if resources.is_empty() {
        body.push_str("<p class=\"empty\">No policy lets you request anything here.</p></section>");
        body.push_str(&super::reviews::break_glass_form(&c, &s));
        return render(&c, &s, "My access", Nav::Access, true, &body).await;
    }
    body.push_str("<form method=\"post\" action=\"/ui/requests\" id=\"request-form\" class=\"stack\">");
    body.push_str(&html::csrf(&s.csrf));
    body.push_str("<label for=\"resource\">Resource</label><select id=\"resource\" name=\"resource\" required>");
    for r in &resources {
        let _ = write!(
            body,
            "<option value=\"{n}\" data-access=\"{a}\">{n} ({k})</option>",
            n = esc(&r.name),
            a = esc(&r.access.join(" ")),
            k = esc(&r.kind)
        );
    }
    body.push_str("</select><label for=\"access\">Access</label><select id=\"access\" name=\"access\"><option value=\"\">the policy's default</option>");
    let mut levels: Vec<&String> = resources.iter().flat_map(|r| r.access.iter()).collect();
    levels.sort();
    levels.dedup();
    for l in levels {
        let _ = write!(body, "<option value=\"{0}\">{0}</option>", esc(l));
    }
    body.push_str("</select><label for=\"duration\">Duration</label><input id=\"duration\" name=\"duration\" placeholder=\"the policy's default\" aria-describedby=\"duration-hint\"><span id=\"duration-hint\" class=\"hint\">e.g. 30m, 2h; each policy's default and longest are in the table below</span><label for=\"reason\">Reason</label><input id=\"reason\" name=\"reason\" placeholder=\"INC-123 slow checkout\"><label for=\"ticket\">Ticket</label><input id=\"ticket\" name=\"ticket\" placeholder=\"optional\"><label for=\"at\">Starts</label><input id=\"at\" name=\"at\" placeholder=\"at approval\" aria-describedby=\"at-hint\"><span id=\"at-hint\" class=\"hint\">optional, for a window later: 2026-12-02 22:00 Europe/Paris, 2026-12-02T21:00:00Z or +3h</span><button type=\"submit\" class=\"primary\">Request</button></form>");
    body.push_str("<table><caption>Resources you may request</caption><thead><tr><th scope=\"col\">Resource</th><th scope=\"col\">Kind</th><th scope=\"col\">Access</th><th scope=\"col\">Policy</th><th scope=\"col\">Default</th><th scope=\"col\">Longest</th><th scope=\"col\">Labels</th></tr></thead><tbody>");
    for r in &resources {
        let p = r
            .policy
            .as_deref()
            .and_then(|n| cat.policies.iter().find(|p| p.name == n));
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            body,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&r.kind),
            esc(&r.access.join(", ")),
            esc(r.policy.as_deref().unwrap_or("")),
            p.map_or(String::new(), |p| p.default_duration.to_string()),
            p.map_or(String::new(), |p| p.max_duration.to_string()),
            esc(&labels.join(" ")),
        );
    }
    body.push_str("</tbody></table></section>");
    body.push_str(&super::reviews::break_glass_form(&c, &s));
    render(&c, &s, "My access", Nav::Access, true, &body).await
}

#[derive(Deserialize)]
pub struct RequestForm {
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
    #[serde(default)]
    at: String,
}

fn blank(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `POST /ui/requests`.
pub async fn create(State(c): State<Arc<Console>>, s: Signed, Form(f): Form<RequestForm>) -> Response {
    if let Some(r) = s.csrf_refusal(&f.csrf) {
        return r;
    }
    let duration = match blank(&f.duration).map(|d| HumanDuration::parse(&d)).transpose() {
        Ok(d) => d,
        Err(e) => return back(&c, &s, Err(format!("duration: {e}")), "/ui/"),
    };
    let at = match blank(&f.at)
        .map(|a| jitgate_core::when::parse_at(&a, c.cp.now(), None))
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return back(&c, &s, Err(format!("starts: {e}")), "/ui/"),
    };
    let new = NewRequest {
        resource: f.resource.trim().to_string(),
        access: blank(&f.access),
        duration,
        reason: blank(&f.reason),
        ticket: blank(&f.ticket),
        lifetime: jitgate_core::engine::Lifetime {
            at,
            ..Default::default()
        },
    };
    let out = match c.cp.create_request(&s.who, new).await {
        Ok(r) if r.state == RequestState::Approved => Ok(format!(
            "Request {} was approved at once by policy {}: your grant is live.",
            r.id, r.policy
        )),
        Ok(r) => Ok(format!(
            "Request {} is waiting for an approver from {}.",
            r.id,
            c.cp.waiting_for(&r).join(", ")
        )),
        Err(e) => Err(describe(&e)),
    };
    back(&c, &s, out, "/ui/")
}

/// `POST /ui/requests/{id}/cancel`.
pub async fn cancel(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    one_call(&c, &s, &f.csrf, "/ui/", c.cp.cancel(&s.who, id), |r| {
        format!("Request {} cancelled.", r.id)
    })
    .await
}

/// `POST /ui/grants/{id}/release`.
pub async fn release(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    one_call(&c, &s, &f.csrf, "/ui/", c.cp.release(&s.who, id), |g| {
        format!("Grant {} released; its sessions were closed.", g.id)
    })
    .await
}

#[derive(Deserialize)]
pub struct ExtendForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    duration: String,
    #[serde(default)]
    reason: String,
}

/// `POST /ui/grants/{id}/extend`: an extension is a new request on the grant.
pub async fn extend(
    State(c): State<Arc<Console>>,
    s: Signed,
    Path(id): Path<i64>,
    Form(f): Form<ExtendForm>,
) -> Response {
    if let Some(r) = s.csrf_refusal(&f.csrf) {
        return r;
    }
    let d = match HumanDuration::parse(f.duration.trim()) {
        Ok(d) => d,
        Err(e) => return back(&c, &s, Err(format!("duration: {e}")), "/ui/"),
    };
    let out = match c.cp.extend(&s.who, id, d, blank(&f.reason)).await {
        Ok(r) if r.state == RequestState::Approved => Ok(format!("Grant {id} extended by {d} (request {}).", r.id)),
        Ok(r) => Ok(format!(
            "Extension request {} for grant {id} is waiting for an approver from {}.",
            r.id,
            c.cp.waiting_for(&r).join(", ")
        )),
        Err(e) => Err(describe(&e)),
    };
    back(&c, &s, out, "/ui/")
}
