//! One contract, both backends: every `Store` call the control plane relies on, run against
//! `SqliteStore` in a temp dir and `PgStore` on a fresh database of the test PostgreSQL. A
//! backend that drifts (a filter ignored, a conflict not detected, a transaction not atomic)
//! fails here, by name, before it fails an end-to-end test by symptom.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use jitgate_core::engine::grant_for;
use jitgate_core::{GrantState, Request, RequestState, SessionInfo};
use jitgate_store::{GrantFilter, MachineToken, RequestFilter, SqliteStore, Store, StoreError};

fn request(requester: &str, created_at: Timestamp) -> Request {
    Request {
        id: 0,
        requester: requester.into(),
        requester_groups: vec!["dev".into()],
        resource: "prod-db".into(),
        access: "read-only".into(),
        duration_secs: 3600,
        reason: Some("contract".into()),
        ticket: None,
        policy: "p".into(),
        state: RequestState::Pending,
        created_at,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        approvals: vec![],
        step: 0,
        escalated: false,
        extends_grant: None,
        grant_id: None,
        version: 0,
        ends: Default::default(),
        break_glass: None,
        ticket_title: None,
        starts_at: None,
    }
}

fn session(id: &str, grant_id: i64, started_at: Timestamp) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        protocol: "postgres".into(),
        identity: "alice".into(),
        resource: "prod-db".into(),
        access: "read-only".into(),
        grant_id,
        client_addr: "127.0.0.1:1".into(),
        started_at,
    }
}

/// The contract. `shared`: the backend serves several replicas.
async fn contract(s: Arc<dyn Store>, shared: bool) {
    let now = Timestamp::now();
    assert_eq!(s.shared(), shared);
    s.health().await.unwrap();

    // Requests: ids and versions assigned; compare-and-swap on the version.
    let a = s
        .create_request(&request("alice", now - SignedDuration::from_mins(5)))
        .await
        .unwrap();
    let b = s.create_request(&request("carol", now)).await.unwrap();
    assert_eq!(a.version, 1);
    assert!(b.id > a.id);
    let mut denied = a.clone();
    denied.state = RequestState::Denied;
    s.update_request(&denied).await.unwrap();
    let mut stale = a.clone();
    stale.state = RequestState::Approved;
    assert!(matches!(s.update_request(&stale).await, Err(StoreError::Conflict)));
    // A stale approval opens no grant: the approval and its grant are one transaction.
    assert!(matches!(
        s.approve_with_grant(&stale, &grant_for(&stale, now)).await,
        Err(StoreError::Conflict)
    ));
    assert!(s.list_grants(&GrantFilter::default()).await.unwrap().is_empty());

    // Filters: state, requester; newest first; pending summary from a count and the oldest.
    let c = s.create_request(&request("alice", now)).await.unwrap();
    let pending = s
        .list_requests(&RequestFilter {
            state: Some(RequestState::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), vec![c.id, b.id]);
    let mine = s
        .list_requests(&RequestFilter {
            requester: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.iter().map(|r| r.id).collect::<Vec<_>>(), vec![c.id, a.id]);
    let (n, oldest) = s.pending_requests().await.unwrap();
    assert_eq!((n, oldest.map(|r| r.id)), (2, Some(b.id)));

    // Approval + grant; grant filters by holder, resource, state and liveness.
    let mut ok = c.clone();
    ok.state = RequestState::Approved;
    let (r, g) = s.approve_with_grant(&ok, &grant_for(&ok, now)).await.unwrap();
    assert_eq!(r.grant_id, Some(g.id));
    assert_eq!(
        s.get_request(c.id).await.unwrap().unwrap().state,
        RequestState::Approved
    );
    let live = |at: Timestamp, who: &str| GrantFilter {
        state: Some(GrantState::Active),
        identity: Some(who.into()),
        resource: Some("prod-db".into()),
        live_at: Some(at),
        limit: Some(10),
    };
    assert_eq!(s.list_grants(&live(now, "alice")).await.unwrap().len(), 1);
    assert!(s.list_grants(&live(now, "carol")).await.unwrap().is_empty());
    assert!(
        s.list_grants(&live(now + SignedDuration::from_hours(2), "alice"))
            .await
            .unwrap()
            .is_empty()
    );
    let mut ended = g.clone();
    ended.state = GrantState::Revoked;
    ended.ended_at = Some(now);
    ended.ended_by = Some("bob".into());
    s.update_grant(&ended).await.unwrap();
    let back = s.get_grant(g.id).await.unwrap().unwrap();
    assert_eq!(
        (back.state, back.ended_by.as_deref()),
        (GrantState::Revoked, Some("bob"))
    );
    assert!(s.list_grants(&live(now, "alice")).await.unwrap().is_empty());
    assert!(s.get_grant(g.id + 1000).await.unwrap().is_none());

    // Sessions: open, listed, ended; a crash's leftovers closed except those still live.
    let t = now - SignedDuration::from_mins(10);
    for id in ["s-1", "s-2", "s-3"] {
        s.session_started(&session(id, g.id, t)).await.unwrap();
    }
    s.session_ended("s-1", now, "client disconnected").await.unwrap();
    let open: Vec<String> = s
        .list_sessions(true, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.info.id)
        .collect();
    assert_eq!(open.len(), 2, "{open:?}");
    let closed = s
        .end_open_sessions(now, "gateway restarted", &["s-3".into()], now)
        .await
        .unwrap();
    assert_eq!(closed, 1);
    let s2 = s.get_session("s-2").await.unwrap().unwrap();
    assert_eq!(s2.end_reason.as_deref(), Some("gateway restarted"));
    assert!(s.get_session("s-3").await.unwrap().unwrap().ended_at.is_none());
    // Replication is only for shared stores; there, a kill of an open session is recorded for
    // its replica and one of an ended session is not.
    assert_eq!(s.replication().is_some(), shared);
    if let Some(r) = s.replication() {
        assert!(r.request_kill("s-3", "root").await.unwrap());
        assert!(!r.request_kill("s-2", "root").await.unwrap());
        assert!(r.feed_connected());
    }

    // Machine tokens by hash; revocations listed until they expire.
    let tok = MachineToken {
        name: "ci-bot".into(),
        sha256: "ab".repeat(32),
        groups: vec!["dev".into()],
        created_at: now,
        created_by: "root".into(),
    };
    s.create_token(&tok).await.unwrap();
    assert_eq!(
        s.token_by_hash(&tok.sha256).await.unwrap().map(|t| t.name),
        Some("ci-bot".into())
    );
    assert!(s.token_by_hash(&"cd".repeat(32)).await.unwrap().is_none());
    let secs = now.as_second();
    s.revoke_token("jti-1", secs + 60).await.unwrap();
    s.revoke_token("jti-old", secs - 60).await.unwrap();
    let revoked = s.revoked_tokens(secs).await.unwrap();
    assert_eq!(revoked, vec![("jti-1".to_string(), secs + 60)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("jitgate.db"), None).unwrap();
    contract(Arc::new(s), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_keeps_the_store_contract() {
    let url = support::pg::cluster().store_db();
    let s = jitgate_store::PgStore::open(jitgate_store::PgOptions {
        url,
        ca_file: None,
        node: "contract".into(),
        pool_size: 2,
        max_clock_skew: Duration::from_secs(2),
        timing: None,
    })
    .await
    .unwrap();
    contract(Arc::new(s), true).await;
}

/// Search by content on both backends, differentially: the indexed answer for each search text
/// equals a brute-force filter of every event (`Query::matches` on the lines), newest first and
/// cut at the limit, across sessions, index batches and rotated files.
async fn text_search_contract(s: Arc<dyn Store>) {
    use jitgate_audit::{AuditSink, Event, Kind, Query, Statement};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let ix: Arc<dyn jitgate_audit::AuditIndex> = s.clone();
    let sink = AuditSink::open_with(&log, Some(ix), None, Some(20_000)).unwrap();
    let sqls = [
        "SELECT * FROM public.customers c WHERE c.email = 'bob@example.com'",
        "drop table if exists orders cascade",
        "DROP TABLE audit_copy",
        "select pg_read_file('/etc/passwd')",
        "CREATE TABLE t (v text)",
        "update t set v = 'naïve café' where id = 7",
        "SELECT 12",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4242",
        "TRUNCATE customers",
    ];
    let commands = ["rm -rf /var/lib/app/cache", "cat /etc/passwd", "psql -c 'drop table x'"];
    let st = |who: &str, session: &str, sql: &str| Statement {
        time: Timestamp::now(),
        identity: who.into(),
        access: "read-write".into(),
        resource: "db".into(),
        grant_id: 1,
        session_id: session.into(),
        sql: sql.into(),
        max_text: 4096,
        class: "select",
        simple: true,
        outcome: "ok",
        duration_ms: 0.1,
        rows: 1,
        error: None,
    };
    for round in 0..12 {
        for (i, sql) in sqls.iter().enumerate() {
            let who = if (round + i) % 3 == 0 { "bob" } else { "alice" };
            sink.emit_statement(st(who, &format!("s-{}", i % 3), sql))
                .await
                .unwrap();
        }
        let cmd = commands[round % commands.len()];
        let kind = if round % 2 == 0 {
            Kind::SshExec
        } else {
            Kind::SshCommand
        };
        let key = if round % 2 == 0 { "command" } else { "line" };
        sink.record(
            Event::new(kind, Timestamp::now())
                .actor("carol")
                .resource("web-1")
                .session(format!("ssh-{round}"))
                .details(serde_json::json!({ key: cmd, "login": "deploy" })),
        )
        .await
        .unwrap();
    }
    sink.record(Event::new(Kind::SessionEnded, Timestamp::now()).session("s-1"))
        .await
        .unwrap();
    drop(sink);
    let all = s
        .search(&Query {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let texts = all
        .iter()
        .filter(|e| jitgate_audit::text::event_text(e).is_some())
        .count();
    assert_eq!(texts, 12 * (sqls.len() + 1));
    let needles = [
        "DROP TABLE",
        "drop tab",
        "customers",
        "read_file",
        "able",
        "'bob@",
        "rm -rf",
        "SELECT 1",
        "café",
        "/etc/passwd",
        "aid = 4242",
        "TRUNCATE",
    ];
    for n in needles {
        for (user, kind, limit) in [
            (None, None, 100_000),
            (None, None, 5),
            (Some("bob"), None, 100_000),
            (None, Some("ssh."), 100_000),
            (None, Some("pg.statement"), 3),
        ] {
            let q = Query {
                text: Some(n.into()),
                user: user.map(Into::into),
                kind: kind.map(Into::into),
                limit: Some(limit),
                ..Default::default()
            };
            let got: Vec<u64> = s.search(&q).await.unwrap().iter().map(|e| e.seq).collect();
            let mut want: Vec<u64> = all.iter().filter(|e| q.matches(e)).map(|e| e.seq).collect();
            want = want.split_off(want.len().saturating_sub(limit));
            assert_eq!(got, want, "search {n:?} user {user:?} kind {kind:?} limit {limit}");
        }
    }
    // Spot checks that the brute force itself means what the docs say.
    let found = |n: &str| {
        all.iter()
            .filter(|e| {
                Query {
                    text: Some(n.into()),
                    ..Default::default()
                }
                .matches(e)
            })
            .count()
    };
    assert_eq!(
        found("DROP TABLE"),
        24 + 4,
        "two DROP TABLE statements and psql -c 'drop table x'"
    );
    assert_eq!(found("able"), 0, "a match starts at a word");
    assert_eq!(found("/etc/passwd"), 12 + 4);
    // A search text with no word to look up is refused, not answered with everything.
    assert!(
        s.search(&Query {
            text: Some(";;".into()),
            ..Default::default()
        })
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_searches_statements_and_commands_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("jitgate.db"), None).unwrap();
    text_search_contract(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_searches_statements_and_commands_by_content() {
    let url = support::pg::cluster().store_db();
    let s = jitgate_store::PgStore::open(jitgate_store::PgOptions {
        url,
        ca_file: None,
        node: "text".into(),
        pool_size: 2,
        max_clock_skew: Duration::from_secs(2),
        timing: None,
    })
    .await
    .unwrap();
    text_search_contract(Arc::new(s)).await;
}
