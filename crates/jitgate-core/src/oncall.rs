//! Who is on call, for auto-approval rules with an `oncall` condition: the answers of the
//! `[[oncall]]` sources parsed into identity → escalation level, and the snapshot the engine
//! decides on. A source that has not answered within its `max_age` is stale, and a stale or
//! unknown source never satisfies a condition: requests fall back to manual approval.
//!
//! Two answer formats:
//! - `pagerduty`: PagerDuty's `GET /oncalls` (with `include[]=users`, so that each entry's
//!   `user` carries its `email`): `{"oncalls": [{"user": {"email": "..."}, "escalation_level":
//!   1, "start": "...", "end": "..."}]}`. Entries outside their `start`/`end` are ignored.
//! - `simple`: `{"oncall": [{"identity": "alice@example.com", "level": 1, "until":
//!   "2026-12-04T18:00:00Z"}], "generated_at": "2026-12-04T09:00:00Z"}`; `level` defaults to
//!   1, `until` and `generated_at` are optional (`generated_at` dates the data: a file copied
//!   from a stale export is stale).

use std::collections::HashMap;

use jiff::Timestamp;
use serde::Deserialize;

/// How a source's answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCallFormat {
    /// PagerDuty `/oncalls`.
    PagerDuty,
    /// The simple documented format.
    Simple,
}

impl OnCallFormat {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PagerDuty => "pagerduty",
            Self::Simple => "simple",
        }
    }
}

/// One entry of an answer: an escalation level held from `start` (if given) until `end`.
/// Shifts are kept with their bounds, so a shift that ends between two reads (or while the
/// source does not answer) ends on time, not at the next successful read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    /// Escalation level (1: primary).
    pub level: u32,
    /// Held from (none: already).
    pub start: Option<Timestamp>,
    /// Held until (none: until the source says otherwise).
    pub end: Option<Timestamp>,
}

impl Shift {
    fn holds_at(&self, now: Timestamp) -> bool {
        self.start.is_none_or(|s| s <= now) && self.end.is_none_or(|e| e > now)
    }
}

/// Identity → shifts, keyed by the identity with ASCII letters lower-cased (e-mail addresses
/// compare case-insensitively in practice; other characters compare exactly, so no Unicode
/// folding makes two identities one).
pub type Shifts = HashMap<String, Vec<Shift>>;

/// The lowest level among `shifts` held at `now`.
pub fn level_at(shifts: &[Shift], now: Timestamp) -> Option<u32> {
    shifts.iter().filter(|s| s.holds_at(now)).map(|s| s.level).min()
}

/// A parsed answer: who is on call (identity → shifts) and as of when (`generated_at`, when the
/// answer says).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Identity (ASCII lower-case) → shifts.
    pub levels: Shifts,
    /// When the data was produced, if the answer says.
    pub as_of: Option<Timestamp>,
}

#[derive(Deserialize)]
struct PdAnswer {
    oncalls: Vec<PdOnCall>,
}

#[derive(Deserialize)]
struct PdOnCall {
    user: Option<PdUser>,
    escalation_level: Option<u32>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
}

#[derive(Deserialize)]
struct PdUser {
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimpleAnswer {
    oncall: Vec<SimpleEntry>,
    #[serde(default)]
    generated_at: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimpleEntry {
    identity: String,
    #[serde(default = "one")]
    level: u32,
    #[serde(default)]
    until: Option<Timestamp>,
}

fn one() -> u32 {
    1
}

fn key(who: &str) -> String {
    who.trim().to_ascii_lowercase()
}

fn add(levels: &mut Shifts, who: &str, shift: Shift) {
    let who = key(who);
    if who.is_empty() {
        return;
    }
    levels.entry(who).or_default().push(shift);
}

/// Parse a source's answer at `now`.
pub fn parse(format: OnCallFormat, body: &[u8], now: Timestamp) -> Result<Roster, String> {
    let mut levels = HashMap::new();
    match format {
        OnCallFormat::PagerDuty => {
            let a: PdAnswer = serde_json::from_slice(body)
                .map_err(|e| format!("not a PagerDuty /oncalls answer (`{{\"oncalls\": [...]}}`): {e}"))?;
            let mut without_email = 0;
            for o in &a.oncalls {
                if o.end.is_some_and(|e| e <= now) {
                    continue;
                }
                // An entry without its level is malformed: it counts as no one (never as primary).
                let Some(level) = o.escalation_level else { continue };
                let shift = Shift {
                    level,
                    start: o.start,
                    end: o.end,
                };
                match o.user.as_ref().and_then(|u| u.email.as_deref()) {
                    Some(email) => add(&mut levels, email, shift),
                    None => without_email += 1,
                }
            }
            if levels.is_empty() && without_email > 0 {
                return Err(format!(
                    "{without_email} on-call entries carry no user e-mail: add include[]=users to the source's url"
                ));
            }
            Ok(Roster { levels, as_of: None })
        }
        OnCallFormat::Simple => {
            let a: SimpleAnswer = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "not the simple on-call format (`{{\"oncall\": [{{\"identity\": \"...\", \"level\": 1}}]}}`): {e}"
                )
            })?;
            for e in &a.oncall {
                if e.until.is_some_and(|u| u <= now) {
                    continue;
                }
                let shift = Shift {
                    level: e.level,
                    start: None,
                    end: e.until,
                };
                add(&mut levels, &e.identity, shift);
            }
            Ok(Roster {
                levels,
                as_of: a.generated_at,
            })
        }
    }
}

/// What the engine knows of one source when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceView {
    /// Answered within its `max_age`.
    Fresh(Shifts),
    /// Not answered within its `max_age` (or never): no condition on it holds.
    Stale,
}

/// Every source's state when a request is decided.
#[derive(Debug, Clone, Default)]
pub struct OnCallView {
    /// By source name.
    pub sources: HashMap<String, SourceView>,
}

impl OnCallView {
    /// No source at all (every on-call condition fails).
    pub fn none() -> Self {
        Self::default()
    }

    /// `identity`'s place in `source` at `now`.
    pub fn level(&self, source: &str, identity: &str, now: Timestamp) -> OnCallAnswer {
        match self.sources.get(source) {
            Some(SourceView::Fresh(levels)) => match levels.get(&key(identity)).and_then(|s| level_at(s, now)) {
                Some(l) => OnCallAnswer::Level(l),
                None => OnCallAnswer::NotOnCall,
            },
            _ => OnCallAnswer::Unknown,
        }
    }
}

/// Whether someone is on call, as far as a source knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCallAnswer {
    /// On call at this escalation level.
    Level(u32),
    /// The source is fresh and does not list them.
    NotOnCall,
    /// The source is stale, has never answered, or does not exist.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-04T12:00:00Z".parse().expect("time")
    }

    #[test]
    fn pagerduty_answer() {
        let body = br#"{"oncalls": [
            {"user": {"id": "P1", "type": "user", "summary": "Alice", "email": "Alice@Example.com"}, "escalation_level": 1, "start": "2026-12-04T08:00:00Z", "end": "2026-12-04T20:00:00Z", "schedule": {"id": "S1"}},
            {"user": {"id": "P2", "email": "carol@example.com"}, "escalation_level": 2, "start": null, "end": null},
            {"user": {"id": "P1", "email": "alice@example.com"}, "escalation_level": 3},
            {"user": {"id": "P3", "email": "dave@example.com"}, "escalation_level": 1, "start": "2026-12-04T20:00:00Z", "end": "2026-12-05T08:00:00Z"}
        ], "limit": 25, "offset": 0, "more": false}"#;
        let r = parse(OnCallFormat::PagerDuty, body, now()).expect("parse");
        let at = |who: &str, t: Timestamp| r.levels.get(who).and_then(|s| level_at(s, t));
        assert_eq!(at("alice@example.com", now()), Some(1), "lowest level wins");
        assert_eq!(at("carol@example.com", now()), Some(2));
        assert_eq!(at("dave@example.com", now()), None, "not yet on call");
        // Shifts keep their bounds: at 20:00 Alice's primary shift has ended and Dave's begun,
        // without another read of the source.
        let eight: Timestamp = "2026-12-04T20:00:00Z".parse().expect("t");
        assert_eq!(
            at("alice@example.com", eight),
            Some(3),
            "her primary shift ended at 20:00"
        );
        assert_eq!(at("dave@example.com", eight), Some(1));
        // An entry without a level is no one, never the primary.
        let r2 = parse(
            OnCallFormat::PagerDuty,
            br#"{"oncalls": [{"user": {"email": "eve@example.com"}}]}"#,
            now(),
        )
        .expect("parse");
        assert!(r2.levels.is_empty(), "{:?}", r2.levels);
        let e = parse(
            OnCallFormat::PagerDuty,
            br#"{"oncalls": [{"user": {"id": "P1", "type": "user_reference"}, "escalation_level": 1}]}"#,
            now(),
        )
        .unwrap_err();
        assert!(e.contains("include[]=users"), "{e}");
        assert!(parse(OnCallFormat::PagerDuty, b"<html>", now()).is_err());
    }

    #[test]
    fn simple_answer() {
        let body = br#"{"generated_at": "2026-12-04T11:59:00Z", "oncall": [
            {"identity": "alice@example.com"},
            {"identity": "bob@example.com", "level": 2, "until": "2026-12-04T11:00:00Z"}
        ]}"#;
        let r = parse(OnCallFormat::Simple, body, now()).expect("parse");
        assert_eq!(
            r.levels.get("alice@example.com").and_then(|s| level_at(s, now())),
            Some(1)
        );
        assert_eq!(r.levels.get("bob@example.com"), None, "past its until");
        assert_eq!(r.as_of, Some("2026-12-04T11:59:00Z".parse().expect("t")));
        let e = parse(OnCallFormat::Simple, br#"{"oncall": [{"who": "x"}]}"#, now()).unwrap_err();
        assert!(e.contains("simple on-call format"), "{e}");
    }

    #[test]
    fn stale_or_unknown_sources_answer_nothing() {
        let mut v = OnCallView::none();
        v.sources.insert(
            "pd".into(),
            SourceView::Fresh(HashMap::from([
                (
                    "alice@example.com".into(),
                    vec![Shift {
                        level: 1,
                        start: None,
                        end: Some("2026-12-04T18:00:00Z".parse().expect("t")),
                    }],
                ),
                (
                    "karol@example.com".into(),
                    vec![Shift {
                        level: 1,
                        start: None,
                        end: None,
                    }],
                ),
            ])),
        );
        v.sources.insert("old".into(), SourceView::Stale);
        let n = now();
        assert_eq!(v.level("pd", "ALICE@example.com", n), OnCallAnswer::Level(1));
        let after: Timestamp = "2026-12-04T18:00:00Z".parse().expect("t");
        assert_eq!(
            v.level("pd", "alice@example.com", after),
            OnCallAnswer::NotOnCall,
            "a shift ends on time even when the source has not been read since"
        );
        // Only ASCII letters fold: the Kelvin sign is not a K.
        assert_eq!(v.level("pd", "\u{212A}arol@example.com", n), OnCallAnswer::NotOnCall);
        assert_eq!(v.level("pd", "carol@example.com", n), OnCallAnswer::NotOnCall);
        assert_eq!(v.level("old", "alice@example.com", n), OnCallAnswer::Unknown);
        assert_eq!(v.level("nope", "alice@example.com", n), OnCallAnswer::Unknown);
    }
}
