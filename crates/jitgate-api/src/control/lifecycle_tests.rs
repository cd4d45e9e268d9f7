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
