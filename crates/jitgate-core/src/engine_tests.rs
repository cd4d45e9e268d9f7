//! Unit tests of the lifecycle rules, driven by a manual clock.

use std::path::Path;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::ManualClock;
use crate::clock::Clock;
use crate::config::load_str;

const CONFIG: &str = r#"
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:5432"
labels = { env = "prod" }
credentials.read-only = { user = "ro" }
credentials.read-write = { user = "rw" }

[[resources]]
name = "stage-db"
kind = "postgres"
address = "127.0.0.1:5432"
credentials.read-only = { user = "ro" }

[[resources]]
name = "orphan-db"
kind = "postgres"
address = "127.0.0.1:5432"
credentials.read-only = { user = "ro" }

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev", "oncall"]
steps = [
  { name = "team-lead", approvers = ["leads"] },
  { name = "security", approvers = ["security"] },
]
escalate_after = "30m"
escalate_to = ["cto"]
max_duration = "4h"

[[policies.auto_approve]]
groups = ["oncall"]
access = ["read-only"]
max_duration = "30m"
window = "Mon-Fri 08:00-18:00 Europe/Berlin"

[[policies]]
name = "staging"
resources = ["stage-db"]
requesters = ["dev"]
approvers = ["dba"]
approvals = 2
reason_required = false
"#;

fn catalog() -> Catalog {
    match load_str(Path::new("t.toml"), CONFIG, Path::new("")) {
        Ok(l) => l.catalog,
        Err(e) => panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
    }
}

fn who(name: &str, groups: &[&str]) -> Principal {
    Principal::new(name, groups.iter().map(|s| s.to_string()).collect())
}

fn ask(resource: &str, access: Option<&str>, dur: Option<&str>, reason: Option<&str>) -> NewRequest {
    NewRequest {
        resource: resource.into(),
        access: access.map(Into::into),
        duration: dur.map(|d| HumanDuration::parse(d).unwrap_or_default()),
        reason: reason.map(Into::into),
        ticket: None,
        lifetime: Default::default(),
    }
}

/// Tuesday 2026-11-24 10:00 Berlin (09:00 UTC).
fn tuesday_morning() -> Timestamp {
    "2026-11-24T09:00:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH)
}

#[test]
fn oncall_read_only_is_auto_approved_inside_the_window() {
    let c = catalog();
    let clock = ManualClock::new(tuesday_morning());
    let r = plan_request(
        &c,
        &who("olga", &["oncall"]),
        &ask("prod-db", None, Some("20m"), Some("INC-1")),
        clock.now(),
    );
    let Ok(r) = r else { panic!("{r:?}") };
    assert_eq!(r.state, RequestState::Approved);
    assert_eq!(r.access, "read-only");
    assert_eq!(r.decided_by.as_deref(), Some("policy:production"));
    assert!(r.decision_reason.unwrap_or_default().contains("Mon-Fri 08:00-18:00"));
}

#[test]
fn oncall_stays_pending_outside_the_window_or_beyond_its_limits() {
    let c = catalog();
    let clock = ManualClock::new(tuesday_morning());
    clock.advance(SignedDuration::from_hours(12)); // 22:00 Berlin
    let night = plan_request(
        &c,
        &who("olga", &["oncall"]),
        &ask("prod-db", None, Some("20m"), Some("INC-1")),
        clock.now(),
    );
    assert_eq!(night.map(|r| r.state), Ok(RequestState::Pending));
    clock.set(tuesday_morning());
    let long = plan_request(
        &c,
        &who("olga", &["oncall"]),
        &ask("prod-db", None, Some("1h"), Some("INC-1")),
        clock.now(),
    );
    assert_eq!(long.map(|r| r.state), Ok(RequestState::Pending));
    let rw = plan_request(
        &c,
        &who("olga", &["oncall"]),
        &ask("prod-db", Some("read-write"), Some("20m"), Some("x")),
        clock.now(),
    );
    assert_eq!(rw.map(|r| r.state), Ok(RequestState::Pending));
    let dev = plan_request(
        &c,
        &who("dan", &["dev"]),
        &ask("prod-db", None, Some("20m"), Some("x")),
        clock.now(),
    );
    assert_eq!(dev.map(|r| r.state), Ok(RequestState::Pending));
}

#[test]
fn two_step_chain_needs_the_lead_then_security_in_order() {
    let c = catalog();
    let p = &c.policies[0];
    let now = tuesday_morning();
    let mut r = plan_request(
        &c,
        &who("dan", &["dev"]),
        &ask("prod-db", Some("read-write"), None, Some("INC-2")),
        now,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.state, RequestState::Pending);
    // Security cannot approve before the lead.
    let sec = who("sam", &["security"]);
    assert!(
        matches!(approve(&mut r, p, &sec, None, now), Err(Refusal::NotApprover { ref step, .. }) if step == "team-lead")
    );
    assert_eq!(approve(&mut r, p, &who("lea", &["leads"]), None, now), Ok(false));
    assert_eq!(r.step, 1);
    // The lead cannot also approve the security step.
    assert!(approve(&mut r, p, &who("lea", &["leads", "security"]), None, now).is_err());
    assert_eq!(approve(&mut r, p, &sec, Some("ok".into()), now), Ok(true));
    assert_eq!(r.state, RequestState::Approved);
    assert_eq!(r.approvals.len(), 2);
    let g = grant_for(&r, now);
    assert_eq!(
        g.expires_at,
        now.saturating_add(SignedDuration::from_hours(1)).unwrap_or(now)
    );
}

#[test]
fn escalation_lets_the_escalation_group_approve_after_the_delay() {
    let c = catalog();
    let p = &c.policies[0];
    let clock = ManualClock::new(tuesday_morning());
    let mut r = plan_request(
        &c,
        &who("dan", &["dev"]),
        &ask("prod-db", None, None, Some("INC-3")),
        clock.now(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cto = who("cleo", &["cto"]);
    assert!(!escalation_due(&r, p, clock.now()));
    assert!(approve(&mut r.clone(), p, &cto, None, clock.now()).is_err());
    clock.advance(SignedDuration::from_mins(29));
    assert!(!escalation_due(&r, p, clock.now()));
    clock.advance(SignedDuration::from_mins(1));
    assert!(escalation_due(&r, p, clock.now()));
    assert_eq!(approve(&mut r, p, &cto, None, clock.now()), Ok(false));
    assert_eq!(r.step, 1);
}

#[test]
fn nobody_approves_their_own_request_even_as_an_approver() {
    let c = catalog();
    let now = tuesday_morning();
    let lead = who("lea", &["dev", "leads"]);
    let mut r = plan_request(&c, &lead, &ask("prod-db", None, None, Some("x")), now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        approve(&mut r, &c.policies[0], &lead, None, now),
        Err(Refusal::SelfApproval)
    );
}

#[test]
fn step_up_needs_a_recent_provider_authentication_and_never_a_static_one() {
    let mut c = catalog();
    c.policies[1].step_up = Some(HumanDuration(300));
    let p = &c.policies[1];
    let now = tuesday_morning();
    let r = plan_request(&c, &who("dan", &["dev"]), &ask("stage-db", None, None, None), now)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut bob = who("bob", &["dba"]);
    // A static or machine identity never authenticated at the provider.
    assert!(matches!(
        approve(&mut r.clone(), p, &bob, None, now),
        Err(Refusal::StepUpRequired { max_age, .. }) if max_age == HumanDuration(300)
    ));
    bob.auth_time = Some(now.as_second() - 301);
    assert!(matches!(
        approve(&mut r.clone(), p, &bob, None, now),
        Err(Refusal::StepUpRequired { .. })
    ));
    bob.auth_time = Some(now.as_second() + 3600);
    assert!(
        matches!(
            approve(&mut r.clone(), p, &bob, None, now),
            Err(Refusal::StepUpRequired { .. })
        ),
        "an hour in the future"
    );
    bob.auth_time = Some(now.as_second() - 300);
    assert_eq!(approve(&mut r.clone(), p, &bob, None, now), Ok(false));
    // The other rules come first: step-up never lets the requester approve.
    let mut dan = who("dan", &["dev", "dba"]);
    dan.auth_time = Some(now.as_second());
    assert_eq!(may_approve(&r, p, &dan, now), Err(Refusal::SelfApproval));
    assert_eq!(approve(&mut r.clone(), p, &dan, None, now), Err(Refusal::SelfApproval));
}

#[test]
fn distinct_approvers_are_counted() {
    let c = catalog();
    let p = &c.policies[1];
    let now = tuesday_morning();
    let mut r = plan_request(&c, &who("dan", &["dev"]), &ask("stage-db", None, None, None), now)
        .unwrap_or_else(|e| panic!("{e}"));
    let bob = who("bob", &["dba"]);
    assert_eq!(approve(&mut r, p, &bob, None, now), Ok(false));
    assert_eq!(
        approve(&mut r, p, &bob, None, now),
        Err(Refusal::AlreadyApproved("bob".into()))
    );
    assert_eq!(approve(&mut r, p, &who("bea", &["dba"]), None, now), Ok(true));
    assert!(matches!(
        approve(&mut r, p, &who("bo", &["dba"]), None, now),
        Err(Refusal::NotPending { .. })
    ));
}

#[test]
fn refusals_say_why() {
    let c = catalog();
    let now = tuesday_morning();
    let dan = who("dan", &["dev"]);
    assert_eq!(
        plan_request(&c, &dan, &ask("prod-db", None, None, None), now),
        Err(Refusal::ReasonRequired("production".into()))
    );
    assert!(matches!(
        plan_request(&c, &dan, &ask("prod-db", None, Some("5h"), Some("x")), now),
        Err(Refusal::DurationTooLong { .. })
    ));
    assert_eq!(
        plan_request(&c, &dan, &ask("orphan-db", None, None, Some("x")), now),
        Err(Refusal::NoPolicy("orphan-db".into()))
    );
    assert!(matches!(
        plan_request(&c, &dan, &ask("nope", None, None, Some("x")), now),
        Err(Refusal::UnknownResource { .. })
    ));
    assert!(matches!(
        plan_request(&c, &who("eve", &["sales"]), &ask("prod-db", None, None, Some("x")), now),
        Err(Refusal::NotRequester { .. })
    ));
    assert!(matches!(
        plan_request(&c, &dan, &ask("stage-db", Some("read-write"), None, None), now),
        Err(Refusal::AccessNotAllowed { .. })
    ));
    assert_eq!(
        plan_request(&c, &dan, &ask("prod-db", None, Some("0s"), Some("x")), now),
        Err(Refusal::DurationZero)
    );
}

#[test]
fn pending_requests_time_out() {
    let c = catalog();
    let clock = ManualClock::new(tuesday_morning());
    let r = plan_request(
        &c,
        &who("dan", &["dev"]),
        &ask("prod-db", None, None, Some("x")),
        clock.now(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    clock.advance(SignedDuration::from_mins(59));
    assert!(!pending_timed_out(&r, &c.policies[0], clock.now()));
    clock.advance(SignedDuration::from_mins(1));
    assert!(pending_timed_out(&r, &c.policies[0], clock.now()));
}

#[test]
fn extension_moves_the_end_of_a_live_grant_only() {
    let c = catalog();
    let clock = ManualClock::new(tuesday_morning());
    let dan = who("dan", &["dev"]);
    let mut r =
        plan_request(&c, &dan, &ask("stage-db", None, Some("1h"), None), clock.now()).unwrap_or_else(|e| panic!("{e}"));
    r.id = 1;
    let mut g = grant_for(&r, clock.now());
    g.id = 7;
    let ext =
        plan_extension(&c, &dan, &g, HumanDuration::minutes(30), None, clock.now()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ext.extends_grant, Some(7));
    let before = g.expires_at;
    assert!(extend_grant(&mut g, &ext, clock.now()).is_ok());
    assert_eq!(
        g.expires_at,
        before.saturating_add(SignedDuration::from_mins(30)).unwrap_or(before)
    );
    assert!(
        plan_extension(
            &c,
            &who("bob", &["dev"]),
            &g,
            HumanDuration::minutes(30),
            None,
            clock.now()
        )
        .is_err()
    );
    // A scheduled grant that has not opened cannot be extended (the hours added would be
    // decided by the clock of today, not by an approver of the window).
    let mut later = g.clone();
    later.starts_at = clock
        .now()
        .saturating_add(SignedDuration::from_hours(5))
        .unwrap_or(later.starts_at);
    later.expires_at = later
        .starts_at
        .saturating_add(SignedDuration::from_hours(1))
        .unwrap_or(later.expires_at);
    assert!(matches!(
        plan_extension(&c, &dan, &later, HumanDuration::minutes(30), None, clock.now()),
        Err(Refusal::GrantNotOpen { .. })
    ));
    clock.advance(SignedDuration::from_hours(2));
    assert!(matches!(
        extend_grant(&mut g, &ext, clock.now()),
        Err(Refusal::GrantNotLive { .. })
    ));
}
