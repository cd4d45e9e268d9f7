//! Console sessions: server-side, keyed by the SHA-256 of a random cookie value (the cookie
//! alone is worthless once the session is gone; the table never holds the cookie itself).
//!
//! The cookie is `HttpOnly`, `SameSite=Lax` and, when the API listener speaks TLS, `Secure`
//! with the `__Host-` prefix (no `Domain`, path `/`). Every state-changing request carries the
//! session's CSRF token in a form field, compared in constant time, and is refused when the
//! browser says it comes from another site (`Sec-Fetch-Site`, `Origin`). A session ends after
//! `[console] idle_timeout` without a request, `absolute_timeout` after sign-in, when the
//! gateway token it holds expires or is revoked, or at sign-out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use jitgate_core::Principal;
use sha2::{Digest, Sha256};

use crate::Console;

/// Sessions held at once; past this, the oldest idle ones are dropped first.
const MAX_SESSIONS: usize = 10_000;
/// Sessions one identity holds at once; past this, its own oldest is dropped (so one signed-in
/// user cannot push everyone else out).
const MAX_PER_IDENTITY: usize = 20;

/// One signed-in browser.
pub struct Session {
    /// The credential the session acts with: a gateway token minted at an OIDC sign-in, or
    /// the static identity's token typed into the form. Never sent back to the browser.
    pub token: String,
    /// The identity (a step-up's new session keeps the old one's draft only for the same one).
    pub name: String,
    /// The last request, and the end (unix seconds): sign-in + `absolute_timeout`, never
    /// after the token expires.
    pub last_seen: i64,
    pub ends: i64,
    /// The CSRF token of this session's forms.
    pub csrf: String,
    /// The login token's id (OIDC sign-ins), revoked at sign-out.
    pub token_id: Option<(String, i64)>,
    /// Messages for the next page (after a POST's redirect).
    pub flash: Vec<(bool, String)>,
    /// A decision interrupted by a step-up: request id and the reason typed.
    pub draft: Option<(i64, String)>,
}

/// The table.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn key(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// A fresh random value (cookies, CSRF tokens, login bindings).
pub fn random() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Equal in constant time (for equal lengths).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Store `s`; returns the cookie value.
    pub fn insert(&self, s: Session, now: i64) -> String {
        let cookie = random();
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine: Vec<(String, i64)> = m
            .iter()
            .filter(|(_, v)| v.name == s.name)
            .map(|(k, v)| (k.clone(), v.last_seen))
            .collect();
        if mine.len() >= MAX_PER_IDENTITY
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, t)| *t)
        {
            m.remove(oldest);
        }
        if m.len() >= MAX_SESSIONS {
            m.retain(|_, v| v.ends > now);
            if m.len() >= MAX_SESSIONS
                && let Some(oldest) = m.iter().min_by_key(|(_, v)| v.last_seen).map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
        }
        m.insert(key(&cookie), s);
        cookie
    }

    /// Run `f` on the live session of `cookie`, or `None`; `touch`: a person's request (not a
    /// live page's background refresh), which resets the idle clock.
    pub fn with<T>(
        &self,
        cookie: &str,
        now: i64,
        idle: i64,
        touch: bool,
        f: impl FnOnce(&mut Session) -> T,
    ) -> Option<T> {
        let k = key(cookie);
        let mut m = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let alive = m.get(&k).is_some_and(|s| now < s.ends && now - s.last_seen < idle);
        if !alive {
            m.remove(&k);
            return None;
        }
        let s = m.get_mut(&k)?;
        if touch {
            s.last_seen = now;
        }
        Some(f(s))
    }

    /// End a session; returns it.
    pub fn remove(&self, cookie: &str) -> Option<Session> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key(cookie))
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Console {
    /// The session cookie's name.
    pub fn cookie_name(&self) -> &'static str {
        if self.settings.secure {
            "__Host-jitgate"
        } else {
            "jitgate"
        }
    }

    /// The name of the cookie that binds a sign-in in progress to this browser.
    pub fn login_cookie_name(&self) -> &'static str {
        if self.settings.secure {
            "__Host-jitgate-login"
        } else {
            "jitgate-login"
        }
    }

    /// `Set-Cookie` for `name=value`, living `max_age` seconds (0: delete).
    pub fn set_cookie(&self, name: &str, value: &str, max_age: i64) -> HeaderValue {
        let secure = if self.settings.secure { "; Secure" } else { "" };
        let v = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("jitgate=; Max-Age=0"))
    }
}

/// The signed-in caller of a console page.
pub struct Signed {
    pub who: Principal,
    pub cookie: String,
    pub csrf: String,
    pub flash: Vec<(bool, String)>,
    pub draft: Option<(i64, String)>,
}

impl Signed {
    /// The refusal of a form whose CSRF field is not this session's (`None`: it is).
    pub fn csrf_refusal(&self, form: &str) -> Option<Response> {
        (!same(form, &self.csrf)).then(|| {
            forbidden(
                "This form is stale or did not come from this console (CSRF check failed). Reload the page and try again.",
            )
        })
    }
}

/// A plain 403 page.
pub fn forbidden(msg: &str) -> Response {
    let body = crate::html::page(
        "Refused",
        crate::html::Nav::None,
        None,
        &format!(
            "<p role=\"alert\">{}</p><p><a href=\"/ui/\">Back to the console</a></p>",
            crate::html::esc(msg)
        ),
    );
    (StatusCode::FORBIDDEN, crate::headers(), axum::response::Html(body)).into_response()
}

/// Where to go back after signing in: a console path, never another site.
pub fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui")
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/ui/".to_string(),
    }
}

impl FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        let path = parts.uri.path_and_query().map_or("/ui/", |p| p.as_str()).to_string();
        let to_login = || {
            let next = if parts.method == axum::http::Method::GET {
                path.as_str()
            } else {
                "/ui/"
            };
            Redirect::to(&format!("/ui/login?next={}", crate::html::url(next))).into_response()
        };
        let Some(cookie) = cookie(&parts.headers, c.cookie_name()).map(str::to_string) else {
            return Err(to_login());
        };
        let now = c.cp.now().as_second();
        // A live page's background refresh (and its long poll) leaves the messages for the
        // page a person loads.
        let live = parts.headers.contains_key("x-jitgate-live") || parts.uri.path() == "/ui/poll";
        let found = c.sessions.with(&cookie, now, c.settings.idle, !live, |s| {
            (
                s.token.clone(),
                s.csrf.clone(),
                if live { Vec::new() } else { std::mem::take(&mut s.flash) },
                s.draft.clone(),
            )
        });
        let Some((token, csrf, flash, draft)) = found else {
            return Err(to_login());
        };
        match c.cp.authenticate(&token).await {
            Ok(who) => Ok(Signed {
                who,
                cookie,
                csrf,
                flash,
                draft,
            }),
            Err(f) => {
                // Revoked, expired or removed: the session ends with its credential.
                c.sessions.remove(&cookie);
                c.cp.metrics()
                    .auth_failures_total
                    .with_label_values(&["console", f.reason()])
                    .inc();
                Err(to_login())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: i64) -> Session {
        Session {
            token: "t".into(),
            name: "alice".into(),
            last_seen: now,
            ends: now + 3600,
            csrf: random(),
            token_id: None,
            flash: Vec::new(),
            draft: None,
        }
    }

    #[test]
    fn sessions_end_when_idle_or_at_their_end_and_are_keyed_by_hash() {
        let s = Sessions::default();
        let c = s.insert(session(1000), 1000);
        assert_eq!(c.len(), 64);
        assert!(
            s.map.lock().unwrap().keys().all(|k| k != &c),
            "the cookie itself is not stored"
        );
        assert!(s.with(&c, 1500, 600, true, |_| ()).is_some());
        assert!(
            s.with(&c, 2099, 600, false, |_| ()).is_some(),
            "touched at 1500, idle limit 600"
        );
        assert!(
            s.with(&c, 2101, 600, true, |_| ()).is_none(),
            "idle for 601 s: a live refresh at 2099 did not count"
        );
        let c = s.insert(session(1000), 1000);
        assert!(s.with(&c, 4599, 10_000, true, |_| ()).is_some());
        assert!(s.with(&c, 4600, 10_000, true, |_| ()).is_none(), "absolute end");
        assert!(s.with("forged", 1000, 600, true, |_| ()).is_none());
    }

    #[test]
    fn one_identity_cannot_fill_the_table() {
        let s = Sessions::default();
        let other = s.insert(session(1000), 1000);
        let _ = s.with(&other, 1000, 600, true, |x| x.name = "bob".into());
        let first = s.insert(session(1001), 1001);
        for i in 0..100 {
            s.insert(session(1002 + i), 1002 + i);
        }
        assert_eq!(s.len(), MAX_PER_IDENTITY + 1);
        assert!(s.with(&other, 1200, 600, true, |_| ()).is_some(), "bob's session stays");
        assert!(s.with(&first, 1200, 600, true, |_| ()).is_none(), "alice's oldest went");
    }

    #[test]
    fn next_stays_on_the_console() {
        assert_eq!(local_next(Some("/ui/approvals?x=1")), "/ui/approvals?x=1");
        for bad in [
            "https://evil.example/ui",
            "//evil.example/ui",
            "/ui\\..",
            "/v1/grants",
            "/ui/\r\nx",
        ] {
            assert_eq!(local_next(Some(bad)), "/ui/", "{bad}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("jitgate-login=x; jitgate=abc"));
        assert_eq!(cookie(&h, "jitgate"), Some("abc"));
        assert_eq!(cookie(&h, "jitgate-login"), Some("x"));
        assert_eq!(cookie(&h, "other"), None);
    }
}
