//! # jitgate-console
//!
//! The web console, served by the gateway itself at `/` on the API listener: one binary, the
//! pages rendered on the server (every core action is a plain form that works without
//! script), the stylesheet, the script and the vendored asciinema player embedded with
//! `include_str!`. It decides nothing: every action is a call to the control plane, which
//! applies the engine's rules (four-eyes, groups, steps, step-up) exactly as for the CLI.
//!
//! Pages: sign-in (OpenID Connect code + PKCE through the gateway, or a static identity's
//! token on a form), My access, Approvals, a request's page, Access now, Audit (search, a
//! session's statements and commands, SSH recordings replayed in the browser).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use jitgate_api::ControlPlane;

mod html;
mod login;
mod pages;
mod session;

use session::Sessions;

/// How the console is served.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[console] idle_timeout`, seconds.
    pub idle: i64,
    /// `[console] absolute_timeout`, seconds.
    pub absolute: i64,
    /// The API listener speaks TLS: cookies are `Secure` and `__Host-` prefixed.
    pub secure: bool,
    /// Where browsers reach the gateway (`[gateway] public_url`, else the listener's URL),
    /// without a trailing slash: the OIDC callback is `{base_url}/ui/callback`.
    pub base_url: String,
    /// `data_dir/recordings` (SSH session recordings), when the SSH front end records.
    pub recordings: Option<PathBuf>,
    /// The audit log file (for the chain check on the audit page).
    pub audit_file: Option<PathBuf>,
}

/// The console's state.
pub struct Console {
    cp: Arc<ControlPlane>,
    settings: Settings,
    sessions: Sessions,
    logins: login::Pending,
    /// Live-page polls held at once.
    polls: tokio::sync::Semaphore,
}

impl Console {
    /// Sessions held now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// Headers every console response carries: no caching, no framing, no sniffing, no referrer
/// to other sites (a callback URL's code never leaks; `same-origin`, not `no-referrer`, which
/// would make browsers send `Origin: null` on the console's own forms), and a strict content
/// security policy.
pub(crate) fn headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("same-origin")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
    ]
}

/// The player page's policy: the asciinema player sets inline styles on its terminal.
pub(crate) const PLAYER_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; font-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Refuse state-changing requests a browser marks as coming from another site: `Sec-Fetch-Site`
/// other than same-origin/none, or an `Origin` that is not the console's. (The CSRF token in
/// each form is the main defence; this one needs no token and stops login CSRF too.)
async fn same_origin(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let h = req.headers();
        if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && !matches!(site, "same-origin" | "none")
        {
            return session::forbidden("Refused: this request came from another site.");
        }
        if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok())
            && !origin_ok(origin, &c.settings.base_url, h)
        {
            return session::forbidden("Refused: this request came from another origin.");
        }
    }
    let mut resp = next.run(req).await;
    let hs = resp.headers_mut();
    for (k, v) in headers() {
        hs.entry(k).or_insert(v);
    }
    resp
}

/// An `Origin` is the console's when it equals the configured base URL's origin or the origin
/// the request was addressed to (`Host`, same scheme).
fn origin_ok(origin: &str, base: &str, h: &HeaderMap) -> bool {
    let base_origin = base.split('/').take(3).collect::<Vec<_>>().join("/");
    if origin == base_origin {
        return true;
    }
    let scheme = base.split("://").next().unwrap_or("http");
    h.get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| origin == format!("{scheme}://{host}"))
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, ctype): (&'static str, &str) = match name.as_str() {
        "console.css" => (include_str!("../assets/console.css"), "text/css; charset=utf-8"),
        "console.js" => (include_str!("../assets/console.js"), "text/javascript; charset=utf-8"),
        "player.js" => (
            include_str!("../assets/vendor/asciinema-player.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "player.css" => (
            include_str!("../assets/vendor/asciinema-player.css"),
            "text/css; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(ctype).unwrap_or(HeaderValue::from_static("text/plain")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        body,
    )
        .into_response()
}

/// The console's routes (merged with the API router, which keeps its fallback).
pub fn router(cp: Arc<ControlPlane>, settings: Settings) -> Router {
    let loopback = ["http://127.", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| settings.base_url.starts_with(p));
    if settings.secure {
        tracing::info!(url = %format!("{}/ui/", settings.base_url), "web console");
    } else if loopback {
        tracing::warn!(url = %format!("{}/ui/", settings.base_url), "web console over plain HTTP on loopback: its cookie cannot be Secure (development only)");
    } else {
        tracing::error!(url = %format!("{}/ui/", settings.base_url), "web console over plain HTTP beyond loopback: sessions can be stolen on the network; serve TLS or set [gateway] public_url to the https address of the proxy in front");
    }
    let c = Arc::new(Console {
        cp,
        settings,
        sessions: Sessions::default(),
        logins: login::Pending::default(),
        polls: tokio::sync::Semaphore::new(1024),
    });
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/static/{name}", get(asset))
        .route("/ui/login", get(login::page))
        .route("/ui/login/token", post(login::with_token))
        .route("/ui/login/oidc", get(login::start))
        .route("/ui/callback", get(login::callback))
        .route("/ui/logout", post(login::logout))
        .route("/ui/poll", get(pages::poll))
        .route("/ui/", get(pages::access::page))
        .route("/ui/requests", post(pages::access::create))
        .route("/ui/requests/{id}", get(pages::approvals::request_page))
        .route("/ui/requests/{id}/cancel", post(pages::access::cancel))
        .route("/ui/requests/{id}/approve", post(pages::approvals::approve))
        .route("/ui/requests/{id}/deny", post(pages::approvals::deny))
        .route("/ui/grants/{id}/extend", post(pages::access::extend))
        .route("/ui/grants/{id}/release", post(pages::access::release))
        .route("/ui/grants/{id}/revoke", post(pages::now::revoke))
        .route("/ui/sessions/{id}/kill", post(pages::now::kill))
        .route("/ui/approvals", get(pages::approvals::page))
        .route("/ui/now", get(pages::now::page))
        .route("/ui/break-glass", post(pages::reviews::open))
        .route("/ui/reviews", get(pages::reviews::page))
        .route("/ui/reviews/{id}", get(pages::reviews::show))
        .route("/ui/reviews/{id}/close", post(pages::reviews::close))
        .route("/ui/audit", get(pages::audit::page))
        .route("/ui/audit/verify", get(pages::audit::verify))
        .route("/ui/audit/sessions/{id}", get(pages::audit::session))
        .route("/ui/audit/sessions/{id}/cast", get(pages::audit::cast))
        .layer(axum::middleware::from_fn_with_state(c.clone(), same_origin))
        .with_state(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_whole() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(origin_ok("https://gw.example.com", "https://gw.example.com", &h));
        assert!(origin_ok("https://127.0.0.1:8080", "https://gw.example.com", &h));
        assert!(!origin_ok(
            "https://gw.example.com.evil.io",
            "https://gw.example.com",
            &h
        ));
        assert!(!origin_ok("null", "https://gw.example.com", &h));
        assert!(!origin_ok("http://127.0.0.1:8080", "https://gw.example.com", &h));
    }
}
