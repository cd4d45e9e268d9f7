//! The Slack app (`[notify.slack]`): requests are posted with buttons and updated in place
//! when anyone decides them (CLI, console, chat); requesters get a direct message when their
//! request is decided and when their grant is about to end (with an Extend button).
//!
//! The interactivity endpoint (`POST /v1/slack/interactions`) checks Slack's request signature
//! (`v0=` HMAC-SHA256 of `v0:{timestamp}:{body}` with the signing secret, a 5-minute window,
//! each signature accepted once), maps the Slack user to an identity (the explicit
//! `[notify.slack] users` table, else the e-mail Slack reports for them through `users.info`,
//! cached), and hands the decision to the control plane like any other approver. Buttons
//! decide in place only for policies with `chat_approve = true` and no `step_up`; otherwise the
//! button opens the console's approval page, where sign-in and step-up happen.
//!
//! Everything a user typed (reasons, tickets, labels, names) is escaped for Slack's markup
//! ([`crate::notify::mrkdwn`]): a reason cannot mention `@channel` or forge a link.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use jitgate_audit::Event;
use jitgate_core::HumanDuration;
use jitgate_core::catalog::SecretRef;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::control::{ControlError, ControlPlane};
use crate::notify::mrkdwn;

/// Kinds the app acts on.
const KINDS: &[&str] = &[
    "request.created",
    "request.approval_added",
    "request.approved",
    "request.denied",
    "request.cancelled",
    "request.expired",
    "request.escalated",
    "grant.expiring",
    "break_glass.opened",
    "break_glass.overdue",
    "break_glass.reviewed",
];

/// How far a request's timestamp may be from now (Slack's own recommendation).
const WINDOW: i64 = 300;
/// How long a Slack user's e-mail is cached.
const EMAIL_TTL: Duration = Duration::from_secs(600);
/// Extension asked with the Extend button of the expiry message.
const EXTEND_BY: HumanDuration = HumanDuration(30 * 60);

/// The app's settings, from `[notify.slack]`.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// The bot token (`xoxb-…`).
    pub bot_token: SecretRef,
    /// The signing secret.
    pub signing_secret: SecretRef,
    /// Where requests go.
    pub channel: String,
    /// A channel per policy.
    pub policy_channels: BTreeMap<String, String>,
    /// Slack user id → identity.
    pub users: BTreeMap<String, String>,
    /// The workspace whose users may act (`None`: any that can reach the channel).
    pub team_id: Option<String>,
    /// Identities are e-mails (`[oidc] identity_claim = "email"`, or no provider): a Slack
    /// user's confirmed e-mail may name one.
    pub email_identities: bool,
    /// The Web API (`https://slack.com/api`).
    pub api_url: String,
    /// The console (`{public_url}/ui`), for links.
    pub console_url: String,
}

/// The running app.
pub struct SlackApp {
    cfg: SlackSettings,
    cp: Arc<ControlPlane>,
    http: reqwest::Client,
    tx: mpsc::Sender<Event>,
    /// Request id → (channel, ts) of its message.
    messages: Mutex<HashMap<i64, (String, String)>>,
    /// Slack user → (e-mail, when looked up).
    emails: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// Identity → Slack user (for direct messages).
    dm: Mutex<HashMap<String, Option<String>>>,
    /// Signatures accepted in the window (replays are refused).
    seen: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for SlackApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlackApp({})", self.cfg.channel)
    }
}

/// `v0=` + hex HMAC-SHA256 of `v0:{ts}:{body}`.
pub fn signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    m.update(b"v0:");
    m.update(ts.as_bytes());
    m.update(b":");
    m.update(body);
    format!("v0={}", hex::encode(m.finalize().into_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `application/x-www-form-urlencoded` value of `key`.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A user's text for one line of a message: line breaks and other control characters become
/// spaces (no forged extra lines), at most `max` characters, escaped for mrkdwn.
fn line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    let cut = if s.chars().count() > max { "…" } else { "" };
    format!("{}{cut}", mrkdwn(&flat))
}

/// [`line`] in a code span: Slack applies no formatting there (`*`, `_`, `~` stay as typed);
/// backticks inside become `ʼ` so the span cannot be closed early.
fn verbatim(s: &str, max: usize) -> String {
    format!("`{}`", line(&s.replace('`', "ʼ"), max))
}

fn plain(text: &str) -> Value {
    json!({"type": "plain_text", "text": text, "emoji": false})
}

impl SlackApp {
    /// Start the app: its delivery task runs until the process ends.
    pub fn start(cfg: SlackSettings, cp: Arc<ControlPlane>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let app = Arc::new(Self {
            cfg,
            cp,
            http,
            tx,
            messages: Mutex::default(),
            emails: Mutex::default(),
            dm: Mutex::default(),
            seen: Mutex::default(),
        });
        tokio::spawn(deliver(app.clone(), rx));
        app
    }

    /// Queue an audited event the app acts on. Never waits.
    pub fn send(&self, ev: &Event) {
        if KINDS.contains(&ev.kind.as_str()) && self.tx.try_send(ev.clone()).is_err() {
            self.cp
                .metrics()
                .notifications_total
                .with_label_values(&["dropped"])
                .inc();
        }
    }

    /// `POST /v1/slack/interactions`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/slack/interactions", post(interaction))
            .with_state(self.clone())
    }

    /// Call a Web API method; the parsed answer when Slack says `ok`.
    async fn call(&self, method: &str, body: Value) -> Result<Value, String> {
        let token = self.cfg.bot_token.resolve().map_err(|e| e.to_string())?;
        let url = format!("{}/{method}", self.cfg.api_url.trim_end_matches('/'));
        for attempt in 1..=3u32 {
            let r = self
                .http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json; charset=utf-8")
                .body(body.to_string())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1)
                        .min(30);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Ok(r) => {
                    let v: Value = r
                        .json()
                        .await
                        .map_err(|e| format!("{method}: unreadable answer: {e}"))?;
                    if v["ok"] == true {
                        return Ok(v);
                    }
                    return Err(format!("{method}: {}", v["error"].as_str().unwrap_or("not ok")));
                }
                Err(e) if attempt < 3 => {
                    tracing::warn!(method, error = %e.without_url(), attempt, "Slack call failed; retrying");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
                Err(e) => return Err(format!("{method}: {}", e.without_url())),
            }
        }
        Err(format!("{method}: rate limited"))
    }

    fn channel_for(&self, policy: &str) -> String {
        self.cfg
            .policy_channels
            .get(policy)
            .cloned()
            .unwrap_or_else(|| self.cfg.channel.clone())
    }

    fn request_link(&self, id: i64) -> String {
        format!("{}/requests/{id}", self.cfg.console_url)
    }

    /// Whether buttons may decide requests of `policy` in place.
    fn in_place(&self, policy: &str) -> bool {
        self.cp
            .catalog()
            .policies
            .iter()
            .find(|p| p.name == policy)
            .is_some_and(|p| p.chat_approve && p.step_up.is_none())
    }

    /// The message of a request: what, who, why; then the buttons or the console link.
    fn request_blocks(&self, ev: &Event, id: i64, status: Option<&str>) -> (String, Vec<Value>) {
        let d = &ev.details;
        let s = |k: &str| line(d.get(k).and_then(Value::as_str).unwrap_or(""), 200);
        let who = s("identity");
        let res = line(ev.resource.as_deref().unwrap_or("?"), 200);
        let policy = d.get("policy").and_then(Value::as_str).unwrap_or("").to_string();
        let labels: Vec<String> = self
            .cp
            .catalog()
            .resources
            .get(ev.resource.as_deref().unwrap_or(""))
            .map(|r| r.labels.iter().map(|(k, v)| line(&format!("{k}={v}"), 100)).collect())
            .unwrap_or_default();
        let what = if d.get("extends_grant").is_some_and(|g| !g.is_null()) {
            "an extension of"
        } else {
            ""
        };
        let text = format!(
            "*{who}* requests {what} *{}* access to *{res}* for *{}* (request {id})",
            s("access"),
            s("duration")
        );
        let mut lines = vec![text.clone()];
        lines.push(format!(
            "Reason: {}",
            verbatim(ev.reason.as_deref().unwrap_or("-"), 500)
        ));
        if let Some(t) = d.get("ticket").and_then(Value::as_str) {
            lines.push(format!("Ticket: {}", verbatim(t, 100)));
        }
        // A scheduled request: the approver decides for a window later, shown in each reader's
        // own time zone by Slack (the fallback is UTC).
        if let Some(at) = d
            .get("starts_at")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        {
            lines.push(format!(
                "Window: from <!date^{}^{{date_short_pretty}} {{time}}|{} UTC> for {}",
                at.as_second(),
                at.strftime("%Y-%m-%d %H:%M"),
                s("duration")
            ));
        }
        lines.push(format!(
            "Policy: {}{}",
            line(&policy, 100),
            if labels.is_empty() {
                String::new()
            } else {
                format!(" · labels: {}", labels.join(" "))
            }
        ));
        let mut blocks = vec![
            json!({"type": "section", "block_id": "request", "text": {"type": "mrkdwn", "text": lines.join("\n")}}),
        ];
        match status {
            Some(st) => blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": st}]})),
            None if self.in_place(&policy) => {
                blocks.push(json!({"type": "input", "block_id": "reason", "optional": true, "label": plain("Reason (needed to deny)"),
                    "element": {"type": "plain_text_input", "action_id": "reason"}}));
                blocks.push(json!({"type": "actions", "block_id": "decide", "elements": [
                    {"type": "button", "action_id": "approve", "style": "primary", "text": plain("Approve"), "value": id.to_string()},
                    {"type": "button", "action_id": "deny", "style": "danger", "text": plain("Deny"), "value": id.to_string()},
                    {"type": "button", "action_id": "open", "text": plain("Open in the console"), "url": self.request_link(id)},
                ]}));
            }
            None => {
                blocks.push(json!({"type": "actions", "block_id": "decide", "elements": [
                    {"type": "button", "action_id": "open", "style": "primary", "text": plain("Review and decide in the console"), "url": self.request_link(id)},
                ]}));
                blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
                    "text": "This policy is decided in the console (sign-in, and a fresh one where the policy asks for it)."}]}));
            }
        }
        (text, blocks)
    }

    async fn handle(&self, ev: &Event) -> Result<(), String> {
        let d = &ev.details;
        match (ev.kind.as_str(), ev.request_id) {
            ("request.created", Some(id)) => {
                let policy = d.get("policy").and_then(Value::as_str).unwrap_or("");
                let (text, blocks) = self.request_blocks(ev, id, None);
                let v = self
                    .call("chat.postMessage", json!({"channel": self.channel_for(policy), "text": text, "blocks": blocks, "unfurl_links": false}))
                    .await?;
                if let (Some(c), Some(ts)) = (v["channel"].as_str(), v["ts"].as_str())
                    && let Ok(mut m) = self.messages.lock()
                {
                    m.insert(id, (c.to_string(), ts.to_string()));
                }
                Ok(())
            }
            (kind, Some(id)) if kind.starts_with("request.") => {
                let by = line(ev.actor.as_deref().unwrap_or("?"), 200);
                let why = |r: Option<&str>| r.map_or(String::new(), |w| format!(": {}", verbatim(w, 500)));
                let status = match kind {
                    "request.approved" => format!(
                        ":white_check_mark: Approved by *{by}*{}",
                        why(d.get("comment").and_then(Value::as_str))
                    ),
                    "request.denied" => format!(
                        ":no_entry: Denied by *{by}*{}",
                        why(d.get("denial_reason").and_then(Value::as_str))
                    ),
                    "request.cancelled" => format!(":heavy_multiplication_x: Cancelled by *{by}*"),
                    "request.expired" => ":hourglass: Expired undecided".to_string(),
                    "request.approval_added" => format!(
                        ":ballot_box_with_check: Approved by *{by}*; waiting for step *{}*",
                        line(d.get("next_step").and_then(Value::as_str).unwrap_or("?"), 100)
                    ),
                    _ => mrkdwn(kind),
                };
                let decided_now = !matches!(kind, "request.approval_added" | "request.escalated");
                let known = self.messages.lock().ok().and_then(|mut m| {
                    if decided_now {
                        m.remove(&id)
                    } else {
                        m.get(&id).cloned()
                    }
                });
                if let Some((channel, ts)) = known {
                    let keep_buttons = matches!(kind, "request.approval_added" | "request.escalated");
                    let (text, mut blocks) = self.request_blocks(ev, id, (!keep_buttons).then_some(status.as_str()));
                    if keep_buttons {
                        blocks.insert(
                            1,
                            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": status}]}),
                        );
                    }
                    self.call(
                        "chat.update",
                        json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks}),
                    )
                    .await?;
                }
                let decided = matches!(kind, "request.approved" | "request.denied" | "request.expired");
                if decided
                    && let Some(u) = self
                        .slack_user(d.get("identity").and_then(Value::as_str).unwrap_or(""))
                        .await
                {
                    let text = format!(
                        "Your request {id} for *{}* ({}): {status}",
                        line(ev.resource.as_deref().unwrap_or("?"), 200),
                        line(d.get("access").and_then(Value::as_str).unwrap_or(""), 100)
                    );
                    self.call("chat.postMessage", json!({"channel": u, "text": text}))
                        .await?;
                }
                Ok(())
            }
            (kind, Some(id)) if kind.starts_with("break_glass.") => {
                let policy = d.get("policy").and_then(Value::as_str).unwrap_or("");
                let who = line(d.get("identity").and_then(Value::as_str).unwrap_or("?"), 200);
                let res = line(ev.resource.as_deref().unwrap_or("?"), 200);
                let reviewers = d
                    .get("reviewers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                let due = d
                    .get("review_due")
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or_else(|| "?".to_string(), |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string());
                let due = due.as_str();
                let text = match kind {
                    "break_glass.opened" => format!(
                        ":rotating_light: *{who}* broke the glass on *{res}* ({}, {}) without approval: {}\nReview {id} is due by {} from {}.",
                        line(d.get("access").and_then(Value::as_str).unwrap_or(""), 100),
                        line(d.get("duration").and_then(Value::as_str).unwrap_or(""), 50),
                        verbatim(ev.reason.as_deref().unwrap_or(""), 500),
                        line(due, 100),
                        line(&reviewers, 300)
                    ),
                    "break_glass.overdue" => format!(
                        ":rotating_light: Break-glass review {id} (*{who}* on *{res}*) is *overdue*: it was due by {}. Reviewers: {}.",
                        line(due, 100),
                        line(&reviewers, 300)
                    ),
                    _ => format!(
                        ":white_check_mark: Break-glass review {id} (*{who}* on *{res}*) closed by *{}*: {}",
                        line(ev.actor.as_deref().unwrap_or("?"), 200),
                        verbatim(d.get("note").and_then(Value::as_str).unwrap_or(""), 500)
                    ),
                };
                let blocks = json!([
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "actions", "block_id": "review", "elements": [
                        {"type": "button", "action_id": "open", "text": plain("Open the review"), "url": format!("{}/reviews/{id}", self.cfg.console_url)},
                    ]}
                ]);
                self.call(
                    "chat.postMessage",
                    json!({"channel": self.channel_for(policy), "text": text, "blocks": blocks, "unfurl_links": false}),
                )
                .await?;
                Ok(())
            }
            ("grant.expiring", _) => {
                let (Some(g), Some(holder)) = (ev.grant_id, d.get("identity").and_then(Value::as_str)) else {
                    return Ok(());
                };
                let Some(u) = self.slack_user(holder).await else {
                    return Ok(());
                };
                let text = format!(
                    ":hourglass: Your access to *{}* (grant {g}) ends at {}.",
                    line(ev.resource.as_deref().unwrap_or("?"), 200),
                    line(d.get("expires_at").and_then(Value::as_str).unwrap_or("?"), 100)
                );
                let blocks = json!([
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "actions", "block_id": "extend", "elements": [
                        {"type": "button", "action_id": "extend", "style": "primary", "text": plain(&format!("Extend by {EXTEND_BY}")), "value": g.to_string()},
                        {"type": "button", "action_id": "open", "text": plain("Open the console"), "url": format!("{}/", self.cfg.console_url)},
                    ]}
                ]);
                self.call(
                    "chat.postMessage",
                    json!({"channel": u, "text": text, "blocks": blocks}),
                )
                .await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The Slack user of an identity (explicit table first, then `users.lookupByEmail`).
    async fn slack_user(&self, identity: &str) -> Option<String> {
        if let Some((u, _)) = self.cfg.users.iter().find(|(_, i)| i.as_str() == identity) {
            return Some(u.clone());
        }
        if let Some(hit) = self.dm.lock().ok().and_then(|m| m.get(identity).cloned()) {
            return hit;
        }
        if !identity.contains('@') {
            return None;
        }
        let url = format!("{}/users.lookupByEmail", self.cfg.api_url.trim_end_matches('/'));
        let token = self.cfg.bot_token.resolve().ok()?;
        let v: Value = self
            .http
            .get(&url)
            .bearer_auth(token)
            .query(&[("email", identity)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let u = (v["ok"] == true)
            .then(|| v["user"]["id"].as_str().map(str::to_string))
            .flatten();
        if let Ok(mut m) = self.dm.lock() {
            m.insert(identity.to_string(), u.clone());
        }
        u
    }

    /// The identity of a Slack user and whether it came from the explicit table: the table,
    /// else the confirmed e-mail `users.info` reports for a full member of the pinned
    /// workspace (never a guest, a stranger from a Slack Connect organisation, a bot or a
    /// deactivated account).
    async fn identity_of(&self, user: &str, team: Option<&str>) -> Result<(String, bool), &'static str> {
        if let Some(i) = self.cfg.users.get(user) {
            return Ok((i.clone(), true));
        }
        if !self.cfg.email_identities {
            return Err("identities here are not e-mails; operators map Slack users in [notify.slack] users");
        }
        if let Some(t) = &self.cfg.team_id
            && team != Some(t.as_str())
        {
            return Err("the button was pressed from another Slack workspace");
        }
        if let Some((e, at)) = self.emails.lock().ok().and_then(|m| m.get(user).cloned())
            && at.elapsed() < EMAIL_TTL
        {
            return e
                .map(|e| (e, false))
                .ok_or("no confirmed e-mail of a full member of this workspace");
        }
        let url = format!("{}/users.info", self.cfg.api_url.trim_end_matches('/'));
        let token = self.cfg.bot_token.resolve().map_err(|_| "no bot token")?;
        let v: Value = self
            .http
            .get(&url)
            .bearer_auth(token)
            .query(&[("user", user)])
            .send()
            .await
            .map_err(|_| "Slack did not answer users.info")?
            .json()
            .await
            .map_err(|_| "Slack answered users.info with nonsense")?;
        let u = &v["user"];
        let flag = |k: &str| u[k] == true;
        let member = v["ok"] == true
            && !flag("deleted")
            && !flag("is_bot")
            && !flag("is_stranger")
            && !flag("is_restricted")
            && !flag("is_ultra_restricted")
            && u["is_email_confirmed"] != false
            && self.cfg.team_id.as_deref().is_none_or(|t| u["team_id"] == t);
        let email = member
            .then(|| u["profile"]["email"].as_str().map(str::to_string))
            .flatten()
            .filter(|e| !e.is_empty());
        if let Ok(mut m) = self.emails.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(user.to_string(), (email.clone(), Instant::now()));
        }
        email
            .map(|e| (e, false))
            .ok_or("no confirmed e-mail of a full member of this workspace")
    }

    /// The request's signature and freshness, and that it was not seen before.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        let ts = headers
            .get("x-slack-request-timestamp")
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Slack-Request-Timestamp")?;
        let sig = headers
            .get("x-slack-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or("no X-Slack-Signature")?;
        let t: i64 = ts.parse().map_err(|_| "a bad timestamp")?;
        let now = self.cp.now().as_second();
        if now.abs_diff(t) > WINDOW.unsigned_abs() {
            return Err("a timestamp outside the 5-minute window");
        }
        let secret = self.cfg.signing_secret.resolve().map_err(|_| "no signing secret")?;
        if !same(sig, &signature(&secret, ts, body)) {
            return Err("a bad signature");
        }
        let mut seen = self.seen.lock().map_err(|_| "state")?;
        seen.retain(|_, at| now - *at <= 2 * WINDOW);
        if seen.insert(sig.to_string(), now).is_some() {
            return Err("a replayed request");
        }
        Ok(())
    }

    /// Tell the clicking user (only them) how it went, through the payload's `response_url`.
    async fn tell(&self, response_url: Option<&str>, text: &str) {
        let Some(url) = response_url.filter(|u| self.response_url_ok(u)) else {
            return;
        };
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        if let Err(e) = self.http.post(url).json(&body).send().await {
            tracing::warn!(error = %e.without_url(), "answering a Slack interaction failed");
        }
    }

    /// `response_url` is Slack's (`https://hooks.slack.com/`) or the configured API host's.
    fn response_url_ok(&self, u: &str) -> bool {
        let api_origin: String = self.cfg.api_url.split('/').take(3).collect::<Vec<_>>().join("/");
        u.starts_with("https://hooks.slack.com/") || u.starts_with(&format!("{api_origin}/"))
    }

    async fn act(&self, payload: &Value) -> String {
        let user = payload["user"]["id"].as_str().unwrap_or("");
        let Some(action) = payload["actions"].get(0) else {
            return "nothing to do".into();
        };
        let action_id = action["action_id"].as_str().unwrap_or("");
        if action_id == "open" || action_id == "reason" {
            return String::new();
        }
        let Ok(target) = action["value"].as_str().unwrap_or("").parse::<i64>() else {
            return "this button carries no id".into();
        };
        let refuse = |why: &str| {
            self.cp
                .metrics()
                .auth_failures_total
                .with_label_values(&["slack", why])
                .inc();
        };
        let team = payload["team"]["id"].as_str();
        let (identity, explicit) = match self.identity_of(user, team).await {
            Ok(v) => v,
            Err(why) => {
                refuse("unmapped_user");
                tracing::info!(slack_user = %user, why, "a Slack user with no jitgate identity pressed a button");
                return format!("Your Slack account is not linked to a jitgate identity ({why}); nothing was done.");
            }
        };
        // A static identity of gateway.toml only through the operator's table, or an e-mail
        // of the pinned workspace.
        let allow_static = explicit || self.cfg.team_id.is_some();
        let Some(who) = self.cp.principal_for(&identity, allow_static) else {
            refuse("unknown_identity");
            return format!(
                "{identity} has not signed in to this gateway recently, so it does not know your groups; sign in to the console once ({}/) and press again.",
                self.cfg.console_url
            );
        };
        let describe = |e: &ControlError| match e {
            ControlError::Internal(_) | ControlError::StoreUnavailable(_) | ControlError::AuditUnavailable(_) => {
                "the gateway could not complete it (its log has the cause); try the console".to_string()
            }
            other => other.to_string(),
        };
        match action_id {
            "approve" | "deny" => {
                let Ok(r) = self.cp.get_request(&who, target).await else {
                    return format!("No request {target} you may see.");
                };
                if !self.in_place(&r.policy) {
                    return format!(
                        "Policy {} is decided in the console: {}",
                        r.policy,
                        self.request_link(target)
                    );
                }
                if action_id == "approve" {
                    match self.cp.approve(&who, target, Some("approved in Slack".into())).await {
                        Ok(_) => format!("You approved request {target}."),
                        Err(e) => format!("Not approved: {}", describe(&e)),
                    }
                } else {
                    let reason = payload["state"]["values"]["reason"]["reason"]["value"]
                        .as_str()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    if reason.is_empty() {
                        return "Type a reason in the message's Reason field, then press Deny.".into();
                    }
                    match self.cp.deny(&who, target, reason).await {
                        Ok(_) => format!("You denied request {target}."),
                        Err(e) => format!("Not denied: {}", describe(&e)),
                    }
                }
            }
            "extend" => match self
                .cp
                .extend(&who, target, EXTEND_BY, Some("extension asked from Slack".into()))
                .await
            {
                Ok(r) if r.state == jitgate_core::RequestState::Approved => {
                    format!("Grant {target} extended by {EXTEND_BY}.")
                }
                Ok(r) => format!("Extension request {} is waiting for approval.", r.id),
                Err(e) => format!("Not extended: {}", describe(&e)),
            },
            other => format!("unknown action {other}"),
        }
    }
}

async fn deliver(app: Arc<SlackApp>, mut rx: mpsc::Receiver<Event>) {
    while let Some(ev) = rx.recv().await {
        let m = app.cp.metrics().notifications_total.clone();
        match app.handle(&ev).await {
            Ok(()) => m.with_label_values(&["sent"]).inc(),
            Err(e) => {
                m.with_label_values(&["failed"]).inc();
                tracing::warn!(kind = %ev.kind, error = %e, "Slack notification failed");
            }
        }
    }
}

/// `POST /v1/slack/interactions`.
async fn interaction(State(app): State<Arc<SlackApp>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = app.verify(&headers, &body) {
        app.cp
            .metrics()
            .auth_failures_total
            .with_label_values(&["slack", "bad_signature"])
            .inc();
        tracing::warn!(why, "refused a Slack interaction");
        return (StatusCode::UNAUTHORIZED, format!("refused: {why}\n")).into_response();
    }
    let Some(payload) = form_value(&body, "payload").and_then(|p| serde_json::from_str::<Value>(&p).ok()) else {
        return (StatusCode::BAD_REQUEST, "no payload\n").into_response();
    };
    if payload["type"] != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let text = app.act(&payload).await;
    if !text.is_empty() {
        app.tell(payload["response_url"].as_str(), &text).await;
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_slacks_documented_example() {
        // https://api.slack.com/authentication/verifying-requests-from-slack
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            signature("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn user_text_cannot_add_lines_restyle_or_grow_the_message() {
        assert_eq!(
            line("a\nTicket: CAB-1 approved\r\tb", 100),
            "a Ticket: CAB-1 approved  b"
        );
        assert_eq!(line(&"x".repeat(600), 500).chars().count(), 501);
        assert_eq!(verbatim("*bold* `code` <!here>", 100), "`*bold* ʼcodeʼ &lt;!here&gt;`");
    }

    #[test]
    fn form_values_are_decoded() {
        let b = b"a=1&payload=%7B%22type%22%3A%22block_actions%22%7D+x&z=%zz";
        assert_eq!(form_value(b, "payload").unwrap(), "{\"type\":\"block_actions\"} x");
        assert_eq!(form_value(b, "z").unwrap(), "%zz");
        assert_eq!(form_value(b, "nope"), None);
    }
}
