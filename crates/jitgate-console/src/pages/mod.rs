//! The pages. Each GET renders from control-plane calls; each POST checks the CSRF token,
//! makes one control-plane call, stores the outcome as a flash message and redirects back
//! (post/redirect/get), so every core action works as a plain HTML form.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use jitgate_api::ControlError;
use serde::Deserialize;

use crate::Console;
use crate::html::{self, Nav, Shell};
use crate::session::Signed;

pub mod access;
pub mod approvals;
pub mod audit;
pub mod now;
pub mod reviews;

/// What a refusal says to a person: the message and, when there is one, what to do.
pub fn describe(e: &ControlError) -> String {
    let hint = match e {
        ControlError::Refused(r) => r.hint(),
        ControlError::BadRequest { hint, .. } | ControlError::Forbidden { hint, .. } => hint.clone(),
        _ => None,
    };
    let msg = match e {
        ControlError::Internal(_) => "internal error (the gateway's log has the cause)".to_string(),
        other => other.to_string(),
    };
    match hint {
        Some(h) => format!("{msg} ({h})"),
        None => msg,
    }
}

/// Render a page for a signed-in user.
pub async fn render(c: &Console, s: &Signed, title: &str, nav: Nav, live: bool, body: &str) -> Response {
    render_with(c, s, title, nav, live, "", body).await
}

/// [`render`] with extra `<head>` content.
pub async fn render_with(
    c: &Console,
    s: &Signed,
    title: &str,
    nav: Nav,
    live: bool,
    extra_head: &str,
    body: &str,
) -> Response {
    let inbox = c.cp.inbox(&s.who).await.map(|v| v.len()).unwrap_or(0);
    let shell = Shell {
        name: &s.who.name,
        csrf: &s.csrf,
        inbox,
        flash: s.flash.clone(),
        live,
        extra_head,
    };
    Html(html::page(title, nav, Some(&shell), body)).into_response()
}

/// After a POST: remember the outcome for the next page and go back.
pub fn back(c: &Console, s: &Signed, outcome: Result<String, String>, to: &str) -> Response {
    let now = c.cp.now().as_second();
    let _ = c.sessions.with(&s.cookie, now, c.settings.idle, true, |sess| {
        sess.flash.push(match outcome {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        });
    });
    Redirect::to(to).into_response()
}

/// A POST that is one control-plane call: the CSRF check, then the call (a future does
/// nothing until awaited, so a refused form never reaches the control plane), its outcome as
/// the next page's message, and back to `to`.
pub async fn one_call<T>(
    c: &Console,
    s: &Signed,
    csrf: &str,
    to: &str,
    call: impl std::future::Future<Output = jitgate_api::ControlResult<T>>,
    said: impl FnOnce(T) -> String,
) -> Response {
    if let Some(r) = s.csrf_refusal(csrf) {
        return r;
    }
    let out = call.await.map(said).map_err(|e| describe(&e));
    back(c, s, out, to)
}

/// The CSRF field of every state-changing form.
#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(rename = "_csrf", default)]
    pub csrf: String,
}

/// A form with a reason.
#[derive(Deserialize)]
pub struct ReasonForm {
    #[serde(rename = "_csrf", default)]
    pub csrf: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub back: Option<String>,
}

impl ReasonForm {
    /// The reason, `None` when blank.
    pub fn reason(&self) -> Option<String> {
        let r = self.reason.trim();
        (!r.is_empty()).then(|| r.to_string())
    }
}

#[derive(Deserialize)]
pub struct PollQuery {
    v: Option<u64>,
}

/// `GET /ui/poll?v=N`: answers `{"v": M}` as soon as requests or grants change (M ≠ N), or
/// after 25 s: what the live pages wait on before they fetch themselves again.
pub async fn poll(State(c): State<Arc<Console>>, _s: Signed, Query(q): Query<PollQuery>) -> Response {
    let mut rx = c.cp.subscribe_changes();
    let now = *rx.borrow_and_update();
    // Held polls are capped like the API's; past the cap they answer at once (the page asks
    // again a few seconds later).
    let held = c.polls.try_acquire();
    if held.is_ok() && q.v.is_some_and(|v| v == now) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(25), rx.changed()).await;
    }
    let v = *rx.borrow();
    Json(serde_json::json!({ "v": v })).into_response()
}
