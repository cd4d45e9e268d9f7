//! Webhook notifications (`[[notify.webhooks]]`): approvers hear about requests, holders about
//! expiring grants, operators about revocations and kills.
//!
//! Built from the same events the audit log records, so a notification never says something
//! the log does not. Delivery never blocks the request that caused it: events go into a bounded
//! queue (full → counted as dropped and logged) and one task posts them, each webhook with up
//! to 5 attempts and exponential backoff (1 s, 2 s, 4 s, 8 s). Each POST carries
//! `X-Jitgate-Timestamp` and `X-Jitgate-Signature: sha256=HEX`, the HMAC-SHA256 of
//! `"{timestamp}.{body}"` with the webhook's `secret_env`, so receivers can verify origin and
//! freshness.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use jitgate_audit::Event;
use jitgate_core::catalog::SecretRef;
use jitgate_core::config::schema::{WebhookConfig, WebhookFormat};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

/// Event kinds sent when a webhook names none.
pub const DEFAULT_EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "grant.expiring",
    "grant.revoked",
    "session.killed",
];

/// Event kinds every webhook gets (high severity).
pub const ALWAYS: &[&str] = &["break_glass.opened", "break_glass.overdue"];

/// Version of the JSON payload.
pub const PAYLOAD_VERSION: u32 = 1;

/// One configured webhook.
#[derive(Debug, Clone)]
pub struct Hook {
    url: SecretRef,
    format: WebhookFormat,
    events: Vec<String>,
    secret: Option<SecretRef>,
}

impl Hook {
    /// From the config (the URL and secret are read when sending).
    pub fn from_config(w: &WebhookConfig) -> Option<Self> {
        let url = match (&w.url_env, &w.url_file, &w.url) {
            (Some(e), _, _) => SecretRef::Env(e.clone()),
            (_, Some(f), _) => SecretRef::File(f.clone()),
            (_, _, Some(u)) => SecretRef::Inline(u.get_ref().clone()),
            _ => return None,
        };
        Some(Self {
            url,
            format: w.format,
            events: if w.events.is_empty() {
                DEFAULT_EVENTS.iter().map(|s| s.to_string()).collect()
            } else {
                w.events.clone()
            },
            secret: w
                .secret_env
                .clone()
                .map(SecretRef::Env)
                .or_else(|| w.secret_file.clone().map(SecretRef::File)),
        })
    }

    fn wants(&self, kind: &str) -> bool {
        // A broken glass and an overdue review reach every webhook, whatever it lists.
        ALWAYS.contains(&kind) || self.events.iter().any(|e| e == kind)
    }
}

/// The notifier: cheap to clone; `send` never waits.
#[derive(Clone)]
pub struct Notifier {
    hooks: Arc<ArcSwap<Vec<Hook>>>,
    tx: mpsc::Sender<Event>,
    metric: prometheus::IntCounterVec,
    /// Events queued or being delivered (for `drain` at shutdown).
    in_flight: Arc<AtomicUsize>,
    /// Unix second of the last "queue full" log line.
    last_drop_log: Arc<AtomicI64>,
}

/// Counts one event as delivered (or given up) when the last delivery of it drops this.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Notifier({} hooks)", self.hooks.load().len())
    }
}

impl Notifier {
    /// Start the delivery task. `metric` is `jitgate_notifications_total{result}`.
    pub fn start(hooks: Vec<Hook>, metric: prometheus::IntCounterVec) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let hooks = Arc::new(ArcSwap::from_pointee(hooks));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let n = Self {
            hooks: hooks.clone(),
            tx,
            metric: metric.clone(),
            in_flight: in_flight.clone(),
            last_drop_log: Arc::new(AtomicI64::new(0)),
        };
        tokio::spawn(deliver(rx, hooks, metric, in_flight));
        n
    }

    /// Wait until every queued notification is delivered or given up, at most `limit` (at
    /// shutdown, so `gateway.stopped` leaves before the process does). Returns whether the
    /// queue emptied.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    queued = self.in_flight.load(Ordering::Acquire),
                    "shutting down with notifications undelivered (the audit log has the events)"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Replace the hooks (config reload).
    pub fn set_hooks(&self, hooks: Vec<Hook>) {
        self.hooks.store(Arc::new(hooks));
    }

    /// Queue `ev` for every webhook that wants its kind. Never waits.
    pub fn send(&self, ev: &Event) {
        if !self.hooks.load().iter().any(|h| h.wants(&ev.kind)) {
            return;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(ev.clone()).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metric.with_label_values(&["dropped"]).inc();
            // This runs on the audit writer's thread: a flood of drops is one line per 10 s,
            // the metric counts each.
            let now = jiff::Timestamp::now().as_second();
            let last = self.last_drop_log.load(Ordering::Relaxed);
            if now - last >= 10
                && self
                    .last_drop_log
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::error!(kind = %ev.kind, "notification queue full; notifications dropped (the audit log has the events; jitgate_notifications_total{{result=\"dropped\"}} counts them)");
            }
        }
    }
}

async fn deliver(
    mut rx: mpsc::Receiver<Event>,
    hooks: Arc<ArcSwap<Vec<Hook>>>,
    metric: prometheus::IntCounterVec,
    in_flight: Arc<AtomicUsize>,
) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notifications disabled: cannot build an HTTP client");
            // Keep taking events, so nothing waits for them (shutdown's drain included).
            while rx.recv().await.is_some() {
                metric.with_label_values(&["failed"]).inc();
                in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        }
    };
    while let Some(ev) = rx.recv().await {
        let done = Arc::new(InFlight(in_flight.clone()));
        for hook in hooks.load().iter().filter(|h| h.wants(&ev.kind)) {
            let (client, hook, ev, metric) = (client.clone(), hook.clone(), ev.clone(), metric.clone());
            let done = done.clone();
            // Each delivery retries on its own, so a dead receiver never delays the others.
            tokio::spawn(async move {
                let ok = post_with_retries(&client, &hook, &ev).await;
                metric.with_label_values(&[if ok { "sent" } else { "failed" }]).inc();
                drop(done);
            });
        }
    }
}

async fn post_with_retries(client: &reqwest::Client, hook: &Hook, ev: &Event) -> bool {
    let url = match hook.url.resolve() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "webhook URL unavailable");
            return false;
        }
    };
    let body = match hook.format {
        WebhookFormat::Json => json_payload(ev),
        WebhookFormat::Slack => slack_payload(ev),
    };
    let body = body.to_string();
    let secret = hook.secret.as_ref().and_then(|s| s.resolve().ok());
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=5u32 {
        let ts = jiff::Timestamp::now().as_second().to_string();
        let mut rb = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-jitgate-timestamp", &ts)
            .header("x-jitgate-event", &ev.kind);
        if let Some(s) = &secret {
            rb = rb.header("x-jitgate-signature", format!("sha256={}", sign(s, &ts, &body)));
        }
        match rb.body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(kind = %ev.kind, status = %r.status(), attempt, "webhook refused the notification"),
            // Never log the URL: webhook URLs are secrets.
            Err(e) => tracing::warn!(kind = %ev.kind, error = %e.without_url(), attempt, "webhook delivery failed"),
        }
        if attempt < 5 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!(kind = %ev.kind, "webhook delivery gave up after 5 attempts");
    false
}

/// Text for Slack's mrkdwn: `&`, `<` and `>` escaped as Slack documents, and a line break
/// cannot start a block quote (`>` is escaped anyway).
/// <https://api.slack.com/reference/surfaces/formatting#escaping>
pub fn mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// HMAC-SHA256 of `"{ts}.{body}"`, hex.
pub fn sign(secret: &str, ts: &str, body: &str) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    m.update(ts.as_bytes());
    m.update(b".");
    m.update(body.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn commands(ev: &Event) -> Value {
    match (ev.kind.as_str(), ev.request_id, ev.grant_id) {
        ("request.created", Some(id), _) => {
            json!({"approve": format!("jitgate approve {id}"), "deny": format!("jitgate deny {id} --reason \"...\"")})
        }
        ("grant.expiring", _, Some(g)) => json!({"extend": format!("jitgate extend {g} --for 30m --reason \"...\"")}),
        _ => Value::Null,
    }
}

/// The versioned JSON payload.
pub fn json_payload(ev: &Event) -> Value {
    json!({
        "version": PAYLOAD_VERSION,
        "event": ev.kind,
        "severity": ev.details.get("severity").and_then(Value::as_str).unwrap_or("info"),
        "time": ev.time,
        "actor": ev.actor,
        "identity": ev.details.get("identity"),
        "resource": ev.resource,
        "request_id": ev.request_id,
        "grant_id": ev.grant_id,
        "session_id": ev.session_id,
        "reason": ev.reason,
        "details": ev.details,
        "commands": commands(ev),
        "audit_seq": ev.seq,
    })
}

/// Slack incoming-webhook blocks.
pub fn slack_payload(ev: &Event) -> Value {
    let d = &ev.details;
    // Everything below but the kind comes from users (identities, reasons, resource names):
    // escaped, so no text can become a mention (`<!channel>`), a link or a quote.
    let who = mrkdwn(
        d.get("identity")
            .and_then(Value::as_str)
            .or(ev.actor.as_deref())
            .unwrap_or("someone"),
    );
    let res = mrkdwn(ev.resource.as_deref().unwrap_or("?"));
    let access = mrkdwn(d.get("access").and_then(Value::as_str).unwrap_or(""));
    let dur = mrkdwn(d.get("duration").and_then(Value::as_str).unwrap_or(""));
    let reason = mrkdwn(ev.reason.as_deref().unwrap_or("-"));
    let by = mrkdwn(ev.actor.as_deref().unwrap_or("?"));
    let text = match ev.kind.as_str() {
        "request.created" => format!("*{who}* requests *{access}* access to *{res}* for *{dur}*\n>Reason: {reason}"),
        "request.approved" => {
            format!(":white_check_mark: *{who}*'s request for *{res}* ({access}, {dur}) was approved by *{by}*")
        }
        "request.denied" => format!(":no_entry: *{who}*'s request for *{res}* was denied by *{by}*"),
        "grant.expiring" => format!(
            ":hourglass: *{who}*'s access to *{res}* expires at {}",
            mrkdwn(d.get("expires_at").and_then(Value::as_str).unwrap_or("?"))
        ),
        "grant.revoked" => format!(
            ":lock: *{who}*'s access to *{res}* was revoked by *{by}* ({} session(s) killed)",
            mrkdwn(&d.get("sessions_killed").unwrap_or(&Value::Null).to_string())
        ),
        "session.killed" => format!(
            ":skull: session `{}` of *{who}* on *{res}* was killed by *{by}*",
            mrkdwn(ev.session_id.as_deref().unwrap_or("?"))
        ),
        other => format!("{}: {who} on {res}", mrkdwn(other)),
    };
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
    if let Value::Object(cmds) = commands(ev) {
        let line: Vec<String> = cmds
            .values()
            .filter_map(Value::as_str)
            .map(|c| format!("`{}`", mrkdwn(c)))
            .collect();
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": line.join("  ·  ")}]}));
    }
    json!({"text": text, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jitgate_audit::Kind;

    #[test]
    fn slack_text_from_users_cannot_mention_link_or_quote() {
        let ev = Event::new(Kind::RequestCreated, jiff::Timestamp::UNIX_EPOCH)
            .actor("mallory <!channel>")
            .resource("db<@U1>")
            .request(7)
            .reason(Some("INC-1\n><!here> <https://evil.example|click> & co"))
            .details(serde_json::json!({"identity": "mallory", "access": "read-only", "duration": "1h"}));
        let p = slack_payload(&ev);
        let text = p["text"].as_str().unwrap();
        assert!(
            !text.contains("<!") && !text.contains("<http") && !text.contains("<@"),
            "{text}"
        );
        assert!(
            text.contains("&lt;!here&gt; &lt;https://evil.example|click&gt; &amp; co"),
            "{text}"
        );
        assert!(!text.contains("\n>&") && !text.contains("\n><"), "{text}");
        assert_eq!(
            text.matches('>').count(),
            1,
            "only the gateway's own quote marker: {text}"
        );
    }
}
