//! The request lifecycle in process: the real control plane over a SQLite store and an audit
//! file in a temp dir, with a manual clock moved by hand, so every timing rule (expiry,
//! escalation, pending timeout, extension) is checked in milliseconds and without sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use jitgate_audit::AuditSink;
use jitgate_core::clock::ManualClock;
use jitgate_core::engine::NewRequest;
use jitgate_core::{Enforcer, GrantState, HumanDuration, KillReason, Metrics, Principal, RequestState, SessionInfo};
use jitgate_store::{SqliteStore, Store};

use super::ControlPlane;

const CONFIG: &str = r#"
[gateway]
data_dir = "data"

[[identities]]
name = "alice"
groups = ["dev"]

[[identities]]
name = "bob"
groups = ["dba"]

[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:5432"
credentials.read-only = { user = "ro" }

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
max_duration = "4h"
pending_timeout = "10m"
escalate_after = "2m"
escalate_to = ["dba"]
"#;

struct World {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    cp: Arc<ControlPlane>,
}

fn t0() -> Timestamp {
    "2026-12-01T09:00:00Z".parse().unwrap()
}

fn who(name: &str, group: &str) -> Principal {
    Principal::new(name, vec![group.into()])
}

fn alice() -> Principal {
    who("alice", "dev")
}

fn bob() -> Principal {
    who("bob", "dba")
}

fn plane(dir: &Path, clock: Arc<ManualClock>) -> Arc<ControlPlane> {
    let loaded = jitgate_core::config::load_str(&dir.join("gateway.toml"), CONFIG, dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("jitgate.db"), None).unwrap());
    let audit = AuditSink::open(&dir.join("audit.jsonl"), None, None).unwrap();
    let metrics = Metrics::new();
    let enforcer = Enforcer::new(clock, metrics.clone(), 300);
    ControlPlane::new(loaded.catalog, store, audit, enforcer, metrics)
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0()));
        let cp = plane(dir.path(), clock.clone());
        Self { dir, clock, cp }
    }

    /// The same data dir after a restart at the clock's current instant.
    async fn restart(&mut self) -> usize {
        self.cp = plane(self.dir.path(), self.clock.clone());
        self.cp.restore().await.unwrap()
    }

    async fn advance(&self, mins: i64) {
        self.clock.advance(SignedDuration::from_mins(mins));
        self.cp.tick().await.unwrap();
    }

    async fn request(&self, duration: &str) -> i64 {
        let new = NewRequest {
            resource: "prod-db".into(),
            access: None,
            duration: Some(duration.parse::<HumanDuration>().unwrap()),
            reason: Some("INC-1".into()),
            ticket: None,
            lifetime: Default::default(),
        };
        self.cp.create_request(&alice(), new).await.unwrap().id
    }

    async fn kinds(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

#[tokio::test]
async fn request_approve_expire_with_the_session_killed_at_the_end() {
    let w = World::new();
    let id = w.request("1h").await;
    // No self-approval, even for someone who could otherwise approve.
    assert!(w.cp.approve(&alice(), id, None).await.is_err());
    let r = w.cp.approve(&bob(), id, None).await.unwrap();
    assert_eq!(r.state, RequestState::Approved);
    let gid = r.grant_id.unwrap();
    assert!(w.cp.enforcer().grants.get(gid).is_some());
    let s = w.cp.enforcer().sessions.register(SessionInfo {
        id: "s-1".into(),
        protocol: "postgres".into(),
        identity: "alice".into(),
        resource: "prod-db".into(),
        access: "read-only".into(),
        grant_id: gid,
        client_addr: "127.0.0.1:1".into(),
        started_at: w.clock_now(),
    });

    w.advance(59).await;
    assert!(
        w.cp.enforcer().grants.get(gid).is_some(),
        "live one minute before its end"
    );
    assert!(
        w.kinds().await.contains(&"grant.expiring".to_string()),
        "warned in the last 5 minutes"
    );
    w.advance(1).await;
    assert!(w.cp.enforcer().grants.get(gid).is_none(), "ended at its end");
    assert!(s.kill.is_cancelled(), "the session was killed");
    assert!(
        matches!(s.kill_reason(), Some(KillReason::Expired { .. })),
        "{:?}",
        s.kill_reason()
    );
    let g = w.cp.store().get_grant(gid).await.unwrap().unwrap();
    assert_eq!(g.state, GrantState::Expired);
    let kinds = w.kinds().await;
    for k in [
        "request.created",
        "request.approved",
        "grant.activated",
        "grant.expiring",
        "grant.expired",
    ] {
        assert!(kinds.contains(&k.to_string()), "{k} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn an_undecided_request_escalates_then_times_out() {
    let w = World::new();
    let id = w.request("1h").await;
    w.advance(1).await;
    assert!(!w.kinds().await.contains(&"request.escalated".to_string()));
    w.advance(2).await;
    assert!(w.kinds().await.contains(&"request.escalated".to_string()));
    assert_eq!(
        w.cp.store().get_request(id).await.unwrap().unwrap().state,
        RequestState::Pending
    );
    w.advance(8).await;
    assert_eq!(
        w.cp.store().get_request(id).await.unwrap().unwrap().state,
        RequestState::Expired
    );
    let e = w.cp.approve(&bob(), id, None).await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e:?}");
}

#[tokio::test]
async fn an_approved_extension_moves_the_end_and_the_old_end_passes_harmlessly() {
    let w = World::new();
    let id = w.request("30m").await;
    let gid = w.cp.approve(&bob(), id, None).await.unwrap().grant_id.unwrap();
    let ext =
        w.cp.extend(&alice(), gid, "1h".parse().unwrap(), Some("more".into()))
            .await
            .unwrap();
    w.cp.approve(&bob(), ext.id, None).await.unwrap();
    let end = w.cp.enforcer().grants.get(gid).unwrap().expires_at;
    assert_eq!(end, t0() + SignedDuration::from_mins(90));
    w.advance(31).await;
    assert!(
        w.cp.enforcer().grants.get(gid).is_some(),
        "the original end passed without ending it"
    );
    w.advance(60).await;
    assert!(w.cp.enforcer().grants.get(gid).is_none());
    assert!(w.kinds().await.contains(&"grant.extended".to_string()));
}

#[tokio::test]
async fn revoke_ends_the_grant_and_a_restart_neither_loses_nor_resurrects_grants() {
    let mut w = World::new();
    let keep = w.request("2h").await;
    let keep = w.cp.approve(&bob(), keep, None).await.unwrap().grant_id.unwrap();
    let short = w.request("10m").await;
    let short = w.cp.approve(&bob(), short, None).await.unwrap().grant_id.unwrap();
    let gone = w.request("1h").await;
    let gone = w.cp.approve(&bob(), gone, None).await.unwrap().grant_id.unwrap();
    // The holder cannot revoke (they release); an approver can.
    assert!(w.cp.revoke(&alice(), gone, None).await.is_err());
    w.cp.revoke(&bob(), gone, Some("done".into())).await.unwrap();
    assert!(w.cp.enforcer().grants.get(gone).is_none());

    // Down for 30 minutes: the short grant ended meanwhile, the long one did not.
    w.clock.advance(SignedDuration::from_mins(30));
    assert_eq!(w.restart().await, 1);
    assert!(w.cp.enforcer().grants.get(keep).is_some());
    assert!(w.cp.enforcer().grants.get(short).is_none());
    assert_eq!(
        w.cp.store().get_grant(short).await.unwrap().unwrap().state,
        GrantState::Expired
    );
    assert_eq!(
        w.cp.store().get_grant(gone).await.unwrap().unwrap().state,
        GrantState::Revoked
    );
    // The restored grant still ends on time.
    w.advance(90).await;
    assert!(w.cp.enforcer().grants.get(keep).is_none());
}

impl World {
    fn clock_now(&self) -> Timestamp {
        use jitgate_core::clock::Clock;
        self.clock.now()
    }
}

// ---- Grants that end when the work ends ----

impl World {
    /// alice asks with `lifetime`, bob approves: the grant.
    async fn granted_with(&self, duration: &str, lifetime: jitgate_core::engine::Lifetime) -> jitgate_core::Grant {
        let new = NewRequest {
            resource: "prod-db".into(),
            access: None,
            duration: Some(duration.parse::<HumanDuration>().unwrap()),
            reason: Some("INC-1".into()),
            ticket: None,
            lifetime,
        };
        let id = self.cp.create_request(&alice(), new).await.unwrap().id;
        let r = self.cp.approve(&bob(), id, None).await.unwrap();
        self.cp.store().get_grant(r.grant_id.unwrap()).await.unwrap().unwrap()
    }

    /// A session on `grant` admitted the way the front ends admit one (registered, then
    /// recorded).
    async fn session(&self, id: &str, grant: i64) -> (jitgate_core::SessionGuard, SessionInfo) {
        let info = SessionInfo {
            id: id.into(),
            protocol: "postgres".into(),
            identity: "alice".into(),
            resource: "prod-db".into(),
            access: "read-only".into(),
            grant_id: grant,
            client_addr: "127.0.0.1:1".into(),
            started_at: self.clock.now(),
        };
        let guard = self.cp.enforcer().sessions.register(info.clone());
        self.cp.session_started(&info).await.unwrap();
        (guard, info)
    }

    /// The session ends the way the front ends end one: recorded, then deregistered.
    async fn end_session(&self, s: (jitgate_core::SessionGuard, SessionInfo)) {
        self.cp.session_ended(&s.1, "ok", "client disconnected", None).await;
        drop(s.0);
    }

    async fn grant(&self, id: i64) -> jitgate_core::Grant {
        self.cp.store().get_grant(id).await.unwrap().unwrap()
    }

    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

use jitgate_core::Clock;
use jitgate_core::engine::Lifetime;

#[tokio::test]
async fn a_single_session_grant_ends_with_its_first_session_and_kills_the_others() {
    let w = World::new();
    let g = w
        .granted_with(
            "1h",
            Lifetime {
                single_session: true,
                ..Default::default()
            },
        )
        .await;
    assert!(g.ends.single_session);
    let first = w.session("s-1", g.id).await;
    let second = w.session("s-2", g.id).await;
    w.advance(5).await;
    assert!(w.grant(g.id).await.is_live(w.clock.now()));
    let kill = second.0.kill.clone();
    w.end_session(first).await;
    let ended = w.grant(g.id).await;
    assert_eq!(ended.state, GrantState::Expired);
    assert_eq!(ended.ended_at, Some(w.clock.now()));
    assert!(ended.end_reason.unwrap().contains("its single session s-1 ended"));
    assert!(kill.is_cancelled(), "the other session is killed at once");
    assert!(w.cp.enforcer().grants.get(g.id).is_none());
    let ev = w.events("grant.expired");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["details"]["ended"], "single_session");
    assert_eq!(ev[0]["details"]["sessions_killed"], 1);
    drop(second);
}

#[tokio::test]
async fn an_idle_end_grant_ends_exactly_its_idle_time_after_its_last_session() {
    let w = World::new();
    let g = w
        .granted_with(
            "4h",
            Lifetime {
                idle_end: Some(HumanDuration(15 * 60)),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(g.ends.idle_secs, Some(900));
    // Unused since the approval: still live at 14 min.
    w.advance(14).await;
    assert!(w.grant(g.id).await.is_live(w.clock.now()));
    // A session from 14 min to 74 min: the idle clock stops meanwhile.
    let s = w.session("s-1", g.id).await;
    w.advance(30).await;
    w.advance(30).await;
    assert!(w.grant(g.id).await.is_live(w.clock.now()));
    w.end_session(s).await;
    // 14 min 59 s after the session's end: live; at 15 min: ended.
    w.clock.advance(SignedDuration::from_secs(14 * 60 + 59));
    w.cp.tick().await.unwrap();
    assert!(w.grant(g.id).await.is_live(w.clock.now()));
    w.clock.advance(SignedDuration::from_secs(1));
    w.cp.tick().await.unwrap();
    let ended = w.grant(g.id).await;
    assert_eq!(ended.state, GrantState::Expired, "{ended:?}");
    assert_eq!(ended.ended_at, Some(t0() + SignedDuration::from_mins(89)));
    assert!(ended.end_reason.unwrap().starts_with("no session for 15m"));
    assert_eq!(w.events("grant.expired")[0]["details"]["ended"], "idle");

    // Never used at all: ends 15 min after the approval.
    let g = w
        .granted_with(
            "4h",
            Lifetime {
                idle_end: Some(HumanDuration(15 * 60)),
                ..Default::default()
            },
        )
        .await;
    w.advance(15).await;
    assert_eq!(w.grant(g.id).await.state, GrantState::Expired);
}

#[tokio::test]
async fn a_first_use_grant_starts_its_clock_at_its_first_session_within_its_deadline() {
    let w = World::new();
    let g = w
        .granted_with(
            "1h",
            Lifetime {
                first_use: true,
                ..Default::default()
            },
        )
        .await;
    // Waits up to the policy's first_use_within (default 1h) for its first session.
    assert_eq!(g.ends.first_use_secs, Some(3600));
    assert_eq!(g.expires_at, t0() + SignedDuration::from_hours(1));
    w.advance(50).await;
    let s = w.session("s-1", g.id).await;
    let started = w.grant(g.id).await;
    assert_eq!(
        started.expires_at,
        t0() + SignedDuration::from_mins(110),
        "1h from the first use"
    );
    assert_eq!(started.ends.first_use_secs, None);
    assert_eq!(w.events("grant.started").len(), 1);
    // A second session does not move it again.
    let s2 = w.session("s-2", g.id).await;
    assert_eq!(w.grant(g.id).await.expires_at, started.expires_at);
    // It ends on time, killing its sessions.
    let kill = s.0.kill.clone();
    w.advance(59).await;
    assert!(!kill.is_cancelled());
    w.advance(1).await;
    assert!(kill.is_cancelled());
    assert_eq!(w.grant(g.id).await.state, GrantState::Expired);
    drop((s, s2));

    // Never used: it lapses at the first-use deadline.
    let g = w
        .granted_with(
            "1h",
            Lifetime {
                first_use: true,
                ..Default::default()
            },
        )
        .await;
    w.advance(60).await;
    assert_eq!(w.grant(g.id).await.state, GrantState::Expired);
}

// ---- Scheduled access ----

impl World {
    /// alice asks for `duration` from `at_min` minutes after t0.
    async fn scheduled(&self, at_min: i64, duration: &str) -> Result<jitgate_core::Request, super::ControlError> {
        let new = NewRequest {
            resource: "prod-db".into(),
            access: None,
            duration: Some(duration.parse::<HumanDuration>().unwrap()),
            reason: Some("CHG-7 maintenance window".into()),
            ticket: None,
            lifetime: Lifetime {
                at: Some(t0() + SignedDuration::from_mins(at_min)),
                ..Default::default()
            },
        };
        self.cp.create_request(&alice(), new).await
    }

    fn open(&self, now: Timestamp) -> bool {
        self.cp
            .enforcer()
            .grants
            .check("alice", "prod-db", "read-only", now)
            .is_some()
    }
}

#[tokio::test]
async fn a_scheduled_request_approved_ahead_opens_at_its_start_and_ends_with_its_window() {
    let mut w = World::new();
    let r = w.scheduled(120, "1h").await.unwrap();
    assert_eq!(r.starts_at, Some(t0() + SignedDuration::from_hours(2)));
    // Approved now, two hours ahead: the grant exists and waits.
    let r = w.cp.approve(&bob(), r.id, None).await.unwrap();
    let g = w.grant(r.grant_id.unwrap()).await;
    assert_eq!(g.starts_at, t0() + SignedDuration::from_hours(2));
    assert_eq!(g.expires_at, t0() + SignedDuration::from_hours(3));
    let activated = w.events("grant.activated");
    assert_eq!(activated[0]["details"]["starts_at"], "2026-12-01T11:00:00Z");
    assert!(!w.open(w.clock_now()), "closed before its start");
    let up =
        w.cp.enforcer()
            .grants
            .upcoming("alice", "prod-db", None, w.clock_now())
            .unwrap();
    assert!(
        up.not_yet(w.clock_now())
            .contains("opens at 2026-12-01 11:00:00 UTC (in 2h)")
    );
    // A restart keeps it waiting.
    w.advance(60).await;
    assert_eq!(w.restart().await, 1);
    w.clock.advance(SignedDuration::from_secs(59 * 60 + 59));
    w.cp.tick().await.unwrap();
    assert!(!w.open(w.clock_now()), "closed one second before its start");
    w.clock.advance(SignedDuration::from_secs(1));
    w.cp.tick().await.unwrap();
    assert!(w.open(w.clock_now()), "open at its start");
    let s = w.session("s-1", g.id).await;
    // The usual warning, then the kill at the window's end.
    w.advance(56).await;
    assert_eq!(w.events("grant.expiring").len(), 1);
    assert!(!s.0.kill.is_cancelled());
    w.advance(4).await;
    assert!(s.0.kill.is_cancelled(), "killed at the window's end");
    assert_eq!(w.grant(g.id).await.state, GrantState::Expired);
    assert_eq!(w.grant(g.id).await.expires_at, t0() + SignedDuration::from_hours(3));
}

#[tokio::test]
async fn a_scheduled_request_waits_for_approvers_until_its_start_and_a_late_approval_keeps_its_end() {
    let w = World::new();
    // pending_timeout is 10m: a request for a window two hours ahead waits past it.
    let far = w.scheduled(120, "1h").await.unwrap();
    let near = w.scheduled(5, "1h").await.unwrap();
    // Approved 3 minutes into its window (within its pending_timeout): open now, still
    // ending with the window.
    w.advance(8).await;
    let r = w.cp.approve(&bob(), near.id, None).await.unwrap();
    let g = w.grant(r.grant_id.unwrap()).await;
    assert_eq!(g.starts_at, t0() + SignedDuration::from_mins(8));
    assert_eq!(g.expires_at, t0() + SignedDuration::from_mins(65));
    assert!(w.open(w.clock_now()));
    w.advance(32).await;
    assert_eq!(
        w.cp.store().get_request(far.id).await.unwrap().unwrap().state,
        RequestState::Pending
    );
    // Undecided when its window opens: it expires then.
    w.advance(79).await;
    assert_eq!(
        w.cp.store().get_request(far.id).await.unwrap().unwrap().state,
        RequestState::Pending
    );
    w.advance(1).await;
    assert_eq!(
        w.cp.store().get_request(far.id).await.unwrap().unwrap().state,
        RequestState::Expired
    );
}

#[tokio::test]
async fn a_start_in_the_past_or_too_far_ahead_is_refused() {
    let w = World::new();
    let e = w.scheduled(-5, "1h").await.unwrap_err();
    assert!(e.to_string().contains("is in the past"), "{e}");
    let e = w.scheduled(31 * 24 * 60, "1h").await.unwrap_err();
    assert!(e.to_string().contains("more than 30d ahead"), "{e}");
    // Within a minute of now is simply now.
    let r = w.scheduled(0, "1h").await.unwrap();
    assert_eq!(r.starts_at, None);
}

// ---- On-call auto-approval (a file source, the manual clock) ----

#[tokio::test]
async fn an_oncall_file_source_auto_approves_while_fresh_and_never_once_stale() {
    let dir = tempfile::tempdir().unwrap();
    let roster = dir.path().join("oncall.json");
    std::fs::write(
        &roster,
        r#"{"oncall": [{"identity": "alice", "level": 1}, {"identity": "carol", "level": 2}]}"#,
    )
    .unwrap();
    let config = format!(
        "{CONFIG}auto_approve = [{{ oncall = {{ source = \"rota\" }}, max_duration = \"1h\" }}]\n\n\
         [[identities]]\nname = \"carol\"\ngroups = [\"dev\"]\n\n\
         [[oncall]]\nname = \"rota\"\nformat = \"simple\"\nfile = \"oncall.json\"\npoll_every = \"1m\"\nmax_age = \"10m\"\n"
    );
    // The file was written now (real time); the manual clock starts later so the file's age
    // is what the clock says.
    let start = Timestamp::now() + SignedDuration::from_mins(1);
    let clock = Arc::new(ManualClock::new(start));
    let loaded = jitgate_core::config::load_str(&dir.path().join("gateway.toml"), &config, dir.path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("jitgate.db"), None).unwrap());
    let audit = AuditSink::open(&dir.path().join("audit.jsonl"), None, None).unwrap();
    let metrics = Metrics::new();
    let enforcer = Enforcer::new(clock.clone(), metrics.clone(), 300);
    let cp = ControlPlane::new(loaded.catalog, store, audit, enforcer, metrics);
    let ask = |who: &'static str, dur: &'static str| {
        let cp = cp.clone();
        async move {
            let new = NewRequest {
                resource: "prod-db".into(),
                access: None,
                duration: Some(dur.parse::<HumanDuration>().unwrap()),
                reason: Some("paged".into()),
                ticket: None,
                lifetime: Default::default(),
            };
            cp.create_request(&who_is(who), new).await.unwrap()
        }
    };
    // Never read yet: stale, manual.
    assert_eq!(ask("alice", "30m").await.state, RequestState::Pending);
    cp.poll_oncall().await;
    let r = ask("alice", "30m").await;
    assert_eq!(r.state, RequestState::Approved);
    assert!(r.decision_reason.unwrap().contains("(on call in `rota`, level 1)"));
    assert_eq!(ask("carol", "30m").await.state, RequestState::Pending, "level 2");
    assert_eq!(
        ask("alice", "2h").await.state,
        RequestState::Pending,
        "past the rule's max_duration"
    );
    // Scheduled for later: on call now says nothing of then.
    let later = NewRequest {
        resource: "prod-db".into(),
        access: None,
        duration: Some(HumanDuration(1800)),
        reason: Some("paged".into()),
        ticket: None,
        lifetime: Lifetime {
            at: Some(start + SignedDuration::from_hours(5)),
            ..Default::default()
        },
    };
    assert_eq!(
        cp.create_request(&who_is("alice"), later).await.unwrap().state,
        RequestState::Pending
    );
    // Nobody refreshes the file: 9 minutes old it is still fresh, 12 minutes old stale.
    clock.advance(SignedDuration::from_mins(8));
    cp.poll_oncall().await;
    assert_eq!(cp.metrics().oncall_source_fresh.with_label_values(&["rota"]).get(), 1);
    assert_eq!(ask("alice", "30m").await.state, RequestState::Approved);
    clock.advance(SignedDuration::from_mins(3));
    cp.poll_oncall().await;
    assert_eq!(cp.metrics().oncall_source_fresh.with_label_values(&["rota"]).get(), 0);
    assert!(
        cp.metrics()
            .oncall_source_age_seconds
            .with_label_values(&["rota"])
            .get()
            > 600
    );
    assert_eq!(ask("alice", "30m").await.state, RequestState::Pending, "stale: manual");
    // A broken file is an error, and the old data ages on (still stale).
    std::fs::write(&roster, "not json").unwrap();
    clock.advance(SignedDuration::from_mins(1));
    cp.poll_oncall().await;
    assert_eq!(
        cp.metrics()
            .oncall_polls_total
            .with_label_values(&["rota", "error"])
            .get(),
        1
    );
    assert_eq!(ask("alice", "30m").await.state, RequestState::Pending);
}

fn who_is(name: &str) -> Principal {
    who(name, "dev")
}
