//! Request on connect: a user without a grant asks for one from inside psql or ssh, and the
//! connection waits for the decision. The front ends carry the words (NoticeResponse, lines on
//! the terminal); this module holds what both share: what the user asked for, and the waiter
//! that turns the request's progress into lines to show and one outcome.
//!
//! The request is an ordinary request (same engine, same policy, same audit); the waiter only
//! reads it. A client that goes away while waiting withdraws the request it created (a
//! request it found already pending is left alone: someone else asked for it).

use std::sync::Arc;
use std::time::Duration;

use crate::duration::HumanDuration;
use crate::engine::NewRequest;
use crate::frontend::Gatekeeper;
use crate::model::Principal;

/// What a connection asked for (`jitgate.reason`, `jitgate.for`, `jitgate.access` in
/// Postgres's startup options; `JITGATE_REASON`, `JITGATE_FOR` or the typed answers in SSH).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    /// Why. Without one there is no request on connect (the refusal says how to give one).
    pub reason: Option<String>,
    /// How long; default: the policy's.
    pub duration: Option<HumanDuration>,
    /// Which access level; default: the front end's (Postgres: the resource's default).
    pub access: Option<String>,
    /// A ticket id (`jitgate.ticket`, `JITGATE_TICKET`), for policies that check tickets.
    pub ticket: Option<String>,
}

impl Ask {
    /// True when nothing was asked.
    pub fn is_empty(&self) -> bool {
        self.reason.is_none() && self.duration.is_none() && self.access.is_none() && self.ticket.is_none()
    }

    /// The request it makes on `resource`.
    pub fn request(&self, resource: &str) -> NewRequest {
        NewRequest {
            resource: resource.to_string(),
            access: self.access.clone(),
            duration: self.duration,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            lifetime: Default::default(),
        }
    }
}

/// Where a request stands, as a waiting connection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Not decided yet.
    Pending {
        /// Request id.
        id: i64,
        /// Its version (changes with every approval).
        version: i64,
        /// The groups that may approve it now.
        waiting_for: Vec<String>,
        /// Who gave the latest approval, when some steps are done.
        last_approval: Option<String>,
    },
    /// Approved: the grant is live.
    Approved {
        /// Request id.
        id: i64,
        /// Who decided (`policy:NAME` for an auto-approval).
        by: String,
        /// The grant's end, for the user.
        until: Option<jiff::Timestamp>,
    },
    /// Denied, cancelled or expired.
    Ended {
        /// Request id.
        id: i64,
        /// `denied`, `cancelled`, `expired`.
        state: String,
        /// Who decided.
        by: Option<String>,
        /// Their reason.
        reason: Option<String>,
    },
}

/// Why a request on connect could not be made or followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// The engine refused it (no policy for the caller, access not offered, duration too long,
    /// reason required, too many pending requests): the user is told why.
    Refused(String),
    /// The store or the audit log is unavailable.
    Unavailable(String),
}

impl AskError {
    /// What the user is told.
    pub fn message(&self) -> &str {
        match self {
            Self::Refused(m) | Self::Unavailable(m) => m,
        }
    }
}

/// One thing the front end does next while a connection waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Show this line to the user (NoticeResponse, a line on the terminal).
    Say(String),
    /// Approved: look the grant up again and go on with the login.
    Proceed,
    /// The wait ended without a grant (denied, cancelled, expired, or too long): end the
    /// connection with this message.
    Refuse(String),
}

/// How often a waiting connection is told it is still waiting.
pub const STATUS_EVERY: Duration = Duration::from_secs(60);
/// The longest single wait on the control plane (its long poll is bounded likewise).
const POLL: Duration = Duration::from_secs(20);

/// Follows one request for a waiting connection. `next` is cancel-safe (it only reads), so a
/// front end selects it against the client going away and then calls [`Waiter::withdraw`].
pub struct Waiter<G: Gatekeeper> {
    gk: Arc<G>,
    who: Principal,
    id: i64,
    version: i64,
    created: bool,
    resource: String,
    limit: Duration,
    started: tokio::time::Instant,
    next_status: tokio::time::Instant,
    queue: std::collections::VecDeque<Step>,
    waiting_for: Vec<String>,
}

impl<G: Gatekeeper> Waiter<G> {
    /// Make the request (or find the same one already pending). `Ok(Err(lines))`: it was
    /// approved at once (a rule), with the lines to show; `Ok(Ok(waiter))`: it waits.
    pub async fn start(
        gk: Arc<G>,
        who: Principal,
        ask: &Ask,
        resource: &str,
        limit: Duration,
    ) -> Result<Result<Self, Vec<String>>, AskError> {
        let (asked, created) = gk.ask(&who, ask.request(resource)).await?;
        let now = tokio::time::Instant::now();
        let mut w = Self {
            gk,
            who,
            id: 0,
            version: 0,
            created,
            resource: resource.to_string(),
            limit,
            started: now,
            next_status: now + STATUS_EVERY,
            queue: std::collections::VecDeque::new(),
            waiting_for: Vec::new(),
        };
        match asked {
            Asked::Approved { id, by, until } => Ok(Err(vec![approved_line(id, &by, until)])),
            Asked::Ended { id, state, by, reason } => Err(AskError::Refused(ended_line(id, &state, by, reason))),
            Asked::Pending {
                id,
                version,
                waiting_for,
                ..
            } => {
                w.id = id;
                w.version = version;
                let link = w.gk.request_link(id);
                let how = match link {
                    Some(l) => format!("jitgate approve {id} or {l}"),
                    None => format!("jitgate approve {id}"),
                };
                let first = if created {
                    format!(
                        "jitgate: request {id} for {resource} is waiting for approval by {}; approve: {how}",
                        groups(&waiting_for)
                    )
                } else {
                    format!(
                        "jitgate: your request {id} for {resource} was already pending; waiting for approval by {}; approve: {how}",
                        groups(&waiting_for)
                    )
                };
                w.waiting_for = waiting_for;
                w.queue.push_back(Step::Say(first));
                w.queue.push_back(Step::Say(format!(
                    "jitgate: waiting up to {}; interrupt (Ctrl-C) to {}",
                    HumanDuration(limit.as_secs()),
                    if created { "cancel the request" } else { "stop waiting" }
                )));
                Ok(Ok(w))
            }
        }
    }

    /// The request's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The next line to show, or the outcome.
    pub async fn next(&mut self) -> Step {
        if let Some(s) = self.queue.pop_front() {
            return s;
        }
        let deadline = self.started + self.limit;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Step::Refuse(format!(
                    "request {} is still waiting for approval by {} after {}; it stays pending: connect again with the same options to wait for it (`jitgate requests --mine` shows it)",
                    self.id,
                    groups(&self.waiting_for),
                    HumanDuration(self.limit.as_secs())
                ));
            }
            if now >= self.next_status {
                self.next_status = now + STATUS_EVERY;
                return Step::Say(format!(
                    "jitgate: request {} still waiting for approval by {} ({} so far)",
                    self.id,
                    groups(&self.waiting_for),
                    HumanDuration(now.duration_since(self.started).as_secs())
                ));
            }
            let wait = POLL.min(self.next_status - now).min(deadline - now);
            let asked_at = tokio::time::Instant::now();
            let asked = match self.gk.asked(&self.who, self.id, self.version, wait).await {
                Ok(a) => a,
                Err(AskError::Refused(m)) => return Step::Refuse(m),
                Err(AskError::Unavailable(m)) => {
                    // A store hiccup while waiting: say so once in a while and keep waiting.
                    tracing::warn!(request_id = self.id, error = %m, "request on connect: could not read the request");
                    tokio::time::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(now))).await;
                    continue;
                }
            };
            match asked {
                Asked::Pending {
                    version,
                    waiting_for,
                    last_approval,
                    ..
                } => {
                    if version == self.version && asked_at.elapsed() < Duration::from_millis(100) {
                        // Answered at once without a change (the gateway's long polls are
                        // all taken): do not spin.
                        tokio::time::sleep(Duration::from_secs(1).min(wait)).await;
                    }
                    if version != self.version {
                        self.version = version;
                        self.waiting_for = waiting_for;
                        if let Some(by) = last_approval {
                            return Step::Say(format!(
                                "jitgate: request {}: approval by {by} recorded; now waiting for {}",
                                self.id,
                                groups(&self.waiting_for)
                            ));
                        }
                    }
                }
                Asked::Approved { id, by, until } => {
                    self.queue.push_back(Step::Proceed);
                    return Step::Say(approved_line(id, &by, until));
                }
                Asked::Ended { id, state, by, reason } => return Step::Refuse(ended_line(id, &state, by, reason)),
            }
        }
    }

    /// The client went away while waiting: withdraw the request if this connection made it
    /// (audited as a cancellation by the requester).
    pub async fn withdraw(self) {
        if self.created {
            tracing::info!(request_id = self.id, identity = %self.who.name, resource = %self.resource, "client left while waiting: request cancelled");
            self.gk.withdraw(&self.who, self.id).await;
        }
    }
}

fn groups(g: &[String]) -> String {
    if g.is_empty() {
        "an approver".into()
    } else {
        g.join(" or ")
    }
}

fn approved_line(id: i64, by: &str, until: Option<jiff::Timestamp>) -> String {
    let by = match by.strip_prefix("policy:") {
        Some(p) => format!("automatically (policy {p})"),
        None => format!("by {by}"),
    };
    let until = until
        .map(|t| format!("; access until {}", t.strftime("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default();
    format!("jitgate: request {id} approved {by}{until}")
}

fn ended_line(id: i64, state: &str, by: Option<String>, reason: Option<String>) -> String {
    let by = by.map(|b| format!(" by {b}")).unwrap_or_default();
    let reason = reason.map(|r| format!(": {r}")).unwrap_or_default();
    match state {
        "expired" => format!("request {id} expired without a decision"),
        s => format!("request {id} was {s}{by}{reason}"),
    }
}

/// Split Postgres startup `options` the way the server does (words separated by white space,
/// a backslash escapes the next character), and also accept '...' and "..." around a value,
/// as users write them in `PGOPTIONS`. Returns the `-c name=value` / `--name=value` settings.
pub fn pg_settings(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut quote: Option<char> = None;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    has = true;
                }
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has = true;
            }
            (None, c) if c.is_whitespace() => {
                if has {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (None, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(s) = w.strip_prefix("--") {
            Some(s.to_string())
        } else {
            w.strip_prefix("-c").map(str::to_string)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// The `jitgate.*` settings of Postgres startup options, as an [`Ask`]. Unknown `jitgate.`
/// names and bad values are refused with the fix.
pub fn pg_ask(options: &str) -> Result<Ask, String> {
    let mut ask = Ask::default();
    for (k, v) in pg_settings(options) {
        let Some(name) = k.to_ascii_lowercase().strip_prefix("jitgate.").map(str::to_string) else {
            continue;
        };
        match name.as_str() {
            "reason" => ask.reason = Some(v.trim().to_string()).filter(|r| !r.is_empty()),
            "for" => {
                ask.duration = Some(
                    v.trim()
                        .parse::<HumanDuration>()
                        .map_err(|e| format!("jitgate.for={v}: {e} (e.g. jitgate.for=1h or 30m)"))?,
                );
            }
            "access" => ask.access = Some(v.trim().to_string()).filter(|a| !a.is_empty()),
            "ticket" => ask.ticket = Some(v.trim().to_string()).filter(|a| !a.is_empty()),
            other => {
                return Err(format!(
                    "unknown option jitgate.{other}: jitgate takes jitgate.reason, jitgate.for, jitgate.access and jitgate.ticket"
                ));
            }
        }
    }
    Ok(ask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_like_the_server_and_take_quotes() {
        assert_eq!(
            pg_settings("-c jitgate.reason='INC-123 slow checkout' -c jitgate.for=1h"),
            vec![
                ("jitgate.reason".into(), "INC-123 slow checkout".into()),
                ("jitgate.for".into(), "1h".into())
            ]
        );
        assert_eq!(
            pg_settings(r"-cjitgate.reason=a\ b --jitgate.access=read-write  -c  x=1"),
            vec![
                ("jitgate.reason".into(), "a b".into()),
                ("jitgate.access".into(), "read-write".into()),
                ("x".into(), "1".into())
            ]
        );
        assert_eq!(
            pg_settings(r#"-c "jitgate.reason=it's \"fine\"""#)[0].1,
            r#"it's "fine""#
        );
        assert!(pg_settings("-c").is_empty());
        assert!(pg_settings("").is_empty());
        assert!(pg_settings("'unterminated").is_empty());
    }

    #[test]
    fn the_ask_is_read_from_jitgate_settings_only() {
        let a = pg_ask("-c jitgate.reason='INC-1 fix' -c jitgate.for=30m -c jitgate.access=read-write -c work_mem=4MB")
            .unwrap();
        assert_eq!(a.reason.as_deref(), Some("INC-1 fix"));
        assert_eq!(a.duration, Some(HumanDuration(1800)));
        assert_eq!(a.access.as_deref(), Some("read-write"));
        assert!(pg_ask("-c work_mem=4MB").unwrap().is_empty());
        assert!(pg_ask("-c jitgate.for=soon").unwrap_err().contains("jitgate.for=soon"));
        assert!(
            pg_ask("-c jitgate.reson=x")
                .unwrap_err()
                .contains("unknown option jitgate.reson")
        );
        assert_eq!(pg_ask("-c jitgate.reason=' '").unwrap().reason, None);
    }

    #[test]
    fn lines_name_the_decision() {
        assert_eq!(
            ended_line(4, "denied", Some("bob".into()), Some("use staging".into())),
            "request 4 was denied by bob: use staging"
        );
        assert_eq!(
            ended_line(4, "expired", None, None),
            "request 4 expired without a decision"
        );
        assert!(approved_line(4, "policy:dev", None).contains("automatically (policy dev)"));
        assert!(approved_line(4, "bob", None).ends_with("approved by bob"));
    }
}
