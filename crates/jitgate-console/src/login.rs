//! Signing in and out. OpenID Connect: the authorization code flow with PKCE through the
//! gateway (the gateway is the confidential client; the browser comes back to
//! `/ui/callback`), the `state` bound to this browser by a cookie so nobody can sign a victim
//! in as themselves, and `max_age` for a step-up. Static identities: their token on a form
//! (double-submitted with the same cookie). A token never appears in a URL or a page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use jitgate_auth::AuthError;
use serde::Deserialize;

use crate::Console;
use crate::html::{self, esc};
use crate::session::{self, Session, cookie, local_next, random};

/// How long a sign-in at the provider may take.
const LOGIN_TTL: i64 = 600;
/// Sign-ins in progress held at once.
const MAX_PENDING: usize = 10_000;

struct Attempt {
    state: String,
    next: String,
    started: i64,
}

/// Sign-ins in progress, keyed by the browser's binding cookie.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<String, Attempt>>);

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
    signed_out: Option<String>,
}

/// `GET /ui/login`: the provider's button (when `[oidc]` is configured) and the token form.
pub async fn page(State(c): State<Arc<Console>>, headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let binding = cookie(&headers, c.login_cookie_name())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(random, str::to_string);
    let next = local_next(q.next.as_deref());
    let mut body = String::new();
    if q.signed_out.is_some() {
        body.push_str("<p class=\"flash ok\" role=\"status\">You are signed out.</p>");
    }
    if let Some(e) = &q.error {
        body.push_str(&format!(
            "<p class=\"flash err\" role=\"alert\">{}</p>",
            esc(Why::message(e))
        ));
    }
    if let Ok(p) = c.cp.oidc() {
        body.push_str(&format!(
            "<section><h2>With your identity provider</h2><p><a class=\"button primary\" id=\"oidc-signin\" href=\"/ui/login/oidc?next={}\">Sign in with {}</a></p></section>",
            html::url(&next),
            esc(p.oidc.issuer())
        ));
    }
    body.push_str(&format!(
        "<section><h2>With a token</h2><p class=\"hint\">For static identities (tests, demos) and machine tokens.</p><form method=\"post\" action=\"/ui/login/token\" id=\"token-form\"><input type=\"hidden\" name=\"_login\" value=\"{binding}\"><input type=\"hidden\" name=\"next\" value=\"{}\"><label for=\"token\">Token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required><button type=\"submit\">Sign in</button></form></section>",
        esc(&next)
    ));
    let page = html::page("Sign in", html::Nav::None, None, &body);
    (
        [(
            header::SET_COOKIE,
            c.set_cookie(c.login_cookie_name(), &binding, LOGIN_TTL),
        )],
        Html(page),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct TokenForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(rename = "_login", default)]
    login: String,
}

/// Why a sign-in did not happen. Only these fixed messages reach the sign-in page (its URL
/// cannot make the real origin display someone's text); the details go to the log and the
/// audit log.
#[derive(Clone, Copy)]
enum Why {
    Stale,
    Token,
    Foreign,
    Provider,
    NoProvider,
    Audit,
}

impl Why {
    fn code(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Token => "token",
            Self::Foreign => "foreign",
            Self::Provider => "provider",
            Self::NoProvider => "no-provider",
            Self::Audit => "audit",
        }
    }

    fn message(code: &str) -> &'static str {
        match code {
            "stale" => "The sign-in form expired or did not come from this page; try again.",
            "token" => "That token was not accepted.",
            "foreign" => "That sign-in was not started in this browser, or took too long; start again.",
            "provider" => {
                "The identity provider did not sign you in (refused, cancelled or unreachable); try again, or ask your operators (the gateway's log says why)."
            }
            "no-provider" => "This gateway has no identity provider configured: sign in with a token.",
            "audit" => "The gateway could not write its audit log, so it signs nobody in; ask your operators.",
            _ => "The sign-in did not complete; try again.",
        }
    }
}

fn to_login(next: &str, why: Why) -> Response {
    Redirect::to(&format!("/ui/login?next={}&error={}", html::url(next), why.code())).into_response()
}

/// Start a session for `who` acting with `token`; sets the cookie and goes to `next`.
#[allow(clippy::too_many_arguments)]
async fn open_session(
    c: &Console,
    headers: &HeaderMap,
    name: &str,
    token: String,
    token_id: Option<(String, i64)>,
    ends: i64,
    next: &str,
) -> Response {
    let now = c.cp.now().as_second();
    // A new session id at every sign-in (a step-up too): the old one is dropped, and the
    // decision a step-up interrupted carries over when the same person signed in again.
    let old = cookie(headers, c.cookie_name()).and_then(|old| c.sessions.remove(old));
    // The old session's own gateway token ends with it (a step-up leaves no live token behind).
    if let Some((jti, exp)) = old.as_ref().and_then(|o| o.token_id.clone())
        && let Err(e) =
            c.cp.revoke_jti(
                &old.as_ref().map_or(String::new(), |o| o.name.clone()),
                &jti,
                exp,
                jitgate_audit::Kind::Logout,
            )
            .await
    {
        tracing::warn!(error = %e, "revoking the replaced console session's token failed");
    }
    let draft = old.filter(|o| o.name == name).and_then(|o| o.draft);
    let s = Session {
        token,
        name: name.to_string(),
        last_seen: now,
        ends: ends.min(now + c.settings.absolute),
        csrf: random(),
        token_id,
        flash: vec![(true, format!("Signed in as {name}."))],
        draft,
    };
    let value = c.sessions.insert(s, now);
    let mut r = Redirect::to(next).into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        c.set_cookie(c.cookie_name(), &value, c.settings.absolute),
    );
    h.append(header::SET_COOKIE, c.set_cookie(c.login_cookie_name(), "", 0));
    r
}

/// `POST /ui/login/token`.
pub async fn with_token(State(c): State<Arc<Console>>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    let next = local_next(f.next.as_deref());
    let bound = cookie(&headers, c.login_cookie_name()).is_some_and(|v| session::same(v, &f.login));
    if !bound || f.login.is_empty() {
        return to_login(&next, Why::Stale);
    }
    let token = f.token.trim().to_string();
    match c.cp.authenticate(&token).await {
        Ok(who) => {
            if let Err(e) = c.cp.console_signed_in(&who, "console-token").await {
                tracing::error!(error = %e, "console sign-in refused: auditing it failed");
                return to_login(&next, Why::Audit);
            }
            let ends = c.cp.now().as_second() + c.settings.absolute;
            open_session(&c, &headers, &who.name, token, None, ends, &next).await
        }
        Err(f) => {
            c.cp.metrics()
                .auth_failures_total
                .with_label_values(&["console", f.reason()])
                .inc();
            let why = match &f {
                jitgate_core::AuthFailure::Refused { message, .. } => message.clone(),
                jitgate_core::AuthFailure::Unavailable(m) => m.clone(),
            };
            c.cp.login_failed("console-token", &AuthError::Denied(why)).await;
            to_login(&next, Why::Token)
        }
    }
}

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
    /// A step-up: the provider must have authenticated the user within this many seconds.
    max_age: Option<u64>,
}

/// `GET /ui/login/oidc`: off to the provider.
pub async fn start(State(c): State<Arc<Console>>, headers: HeaderMap, Query(q): Query<StartQuery>) -> Response {
    let next = local_next(q.next.as_deref());
    let provider = match c.cp.oidc() {
        Ok(p) => p,
        Err(_) => return to_login(&next, Why::NoProvider),
    };
    let callback = format!("{}/ui/callback", c.settings.base_url);
    let max_age = Some(
        q.max_age
            .unwrap_or(u64::try_from(c.settings.absolute).unwrap_or(43_200))
            .max(1),
    );
    let started =
        c.cp.attempt("console", provider.oidc.start_console_login(&callback, max_age).await)
            .await;
    let (url, state) = match started {
        Ok(v) => v,
        Err(_) => return to_login(&next, Why::Provider),
    };
    let now = c.cp.now().as_second();
    let binding = cookie(&headers, c.login_cookie_name())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(random, str::to_string);
    {
        let mut m = c.logins.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, a| now - a.started < LOGIN_TTL);
        // Full (a flood nobody finishes): the oldest attempt makes room rather than refusing
        // everyone's sign-in.
        while m.len() >= MAX_PENDING {
            let Some(oldest) = m.iter().min_by_key(|(_, a)| a.started).map(|(k, _)| k.clone()) else {
                break;
            };
            m.remove(&oldest);
        }
        m.insert(
            binding.clone(),
            Attempt {
                state,
                next,
                started: now,
            },
        );
    }
    let mut r = Redirect::to(&url).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        c.set_cookie(c.login_cookie_name(), &binding, LOGIN_TTL),
    );
    r
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /ui/callback`: the provider sends the browser back with a code.
pub async fn callback(State(c): State<Arc<Console>>, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let now = c.cp.now().as_second();
    let provider = c.cp.oidc().ok();
    // Every refusal below also drops the provider-side attempt, so the code in this URL (in a
    // history, a log, a screen share) cannot be redeemed elsewhere afterwards.
    let refuse = |next: &str, why: Why| {
        if let (Some(p), Some(st)) = (&provider, &q.state) {
            p.oidc.forget(st);
        }
        to_login(next, why)
    };
    let attempt = cookie(&headers, c.login_cookie_name()).and_then(|b| {
        c.logins
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(b)
    });
    let Some(a) = attempt.filter(|a| now - a.started < LOGIN_TTL) else {
        return refuse("/ui/", Why::Foreign);
    };
    if let Some(e) = &q.error {
        let msg = format!(
            "the identity provider refused: {}",
            q.error_description.clone().unwrap_or_else(|| e.clone())
        );
        c.cp.login_failed("console", &AuthError::Denied(msg)).await;
        return refuse(&a.next, Why::Provider);
    }
    let (Some(code), Some(state)) = (q.code.clone(), q.state.clone()) else {
        return refuse(&a.next, Why::Provider);
    };
    if !session::same(&state, &a.state) {
        c.cp.login_failed("console", &AuthError::UnknownAttempt).await;
        // The state in the URL is not this browser's: leave that attempt alone, drop ours.
        if let Some(p) = &provider {
            p.oidc.forget(&a.state);
        }
        return to_login(&a.next, Why::Foreign);
    }
    let Some(provider) = provider.clone() else {
        return to_login(&a.next, Why::NoProvider);
    };
    let id = match c
        .cp
        .attempt("console", provider.oidc.finish_console_login(&state, &code).await)
        .await
    {
        Ok(id) => id,
        Err(_) => return to_login(&a.next, Why::Provider),
    };
    let minted = match c.cp.logged_in("console", &id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "console sign-in refused: minting or auditing the login failed");
            return to_login(&a.next, Why::Audit);
        }
    };
    let exp = minted
        .expires_at
        .parse::<jiff::Timestamp>()
        .map_or(now + 3600, |t| t.as_second());
    open_session(
        &c,
        &headers,
        &minted.identity,
        minted.token,
        Some((minted.token_id, exp)),
        exp,
        &a.next,
    )
    .await
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

/// `POST /ui/logout`: the session ends; a provider sign-in's gateway token is revoked.
pub async fn logout(State(c): State<Arc<Console>>, s: session::Signed, Form(f): Form<CsrfForm>) -> Response {
    if let Some(r) = s.csrf_refusal(&f.csrf) {
        return r;
    }
    if let Some(old) = c.sessions.remove(&s.cookie)
        && let Some((jti, exp)) = old.token_id
        && let Err(e) =
            c.cp.revoke_jti(&s.who.name, &jti, exp, jitgate_audit::Kind::Logout)
                .await
    {
        tracing::warn!(error = %e, "console sign-out: revoking the session's token failed");
    }
    let mut r = Redirect::to("/ui/login?signed_out=1").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, c.set_cookie(c.cookie_name(), "", 0));
    r
}
