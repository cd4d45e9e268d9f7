//! # jitgate-store
//!
//! The [`Store`] trait is everything the control plane persists: requests (with their approvals),
//! grants, sessions, machine tokens, and the audit index. [`SqliteStore`] is the embedded,
//! zero-setup default in `data_dir`; [`PgStore`] is a shared PostgreSQL database for several
//! gateway replicas.
//!
//! Request updates are compare-and-swap on a version (two approvers racing on two replicas cannot
//! both win), and the approval that opens a grant is one transaction. [`Store::changes`] is the
//! change feed: PostgreSQL publishes every grant, request, kill and token revocation with NOTIFY
//! in the writing transaction, and each replica LISTENs. SQLite serves one process, so its feed is
//! `None`.

mod pgtls;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use jiff::Timestamp;
use jitgate_audit::AuditIndex;
use jitgate_core::{Grant, GrantState, Request, RequestState, SessionInfo};
pub use postgres::{PgOptions, PgStore, redact as redact_url};
use serde::{Deserialize, Serialize};
pub use sqlite::SqliteStore;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else changed the record first.
    #[error("the record was changed concurrently; retry")]
    Conflict,
    /// No such record.
    #[error("not found")]
    NotFound,
    /// The backend failed.
    #[error("store error: {0}")]
    Backend(String),
}

/// Store result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Filters for listing requests.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only this state.
    pub state: Option<RequestState>,
    /// Only this requester.
    pub requester: Option<String>,
    /// Most rows (newest first).
    pub limit: Option<usize>,
}

/// Filters for listing grants.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// Only this state.
    pub state: Option<GrantState>,
    /// Only this holder.
    pub identity: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Only grants active and not past `expires_at` at this instant.
    pub live_at: Option<Timestamp>,
    /// Most rows (newest first).
    pub limit: Option<usize>,
}

/// A session as persisted (history included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// What was known at start.
    #[serde(flatten)]
    pub info: SessionInfo,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Why the session ended.
    pub end_reason: Option<String>,
    /// The gateway (node name) that hosts it; `None` for a store that serves one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A machine token minted with `jitgate token create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineToken {
    /// Identity name.
    pub name: String,
    /// Hex SHA-256 of the token (the token itself is never stored).
    pub sha256: String,
    /// The token identity's groups.
    pub groups: Vec<String>,
    /// When it was minted.
    pub created_at: Timestamp,
    /// By whom.
    pub created_by: String,
}

/// A change another replica made, or a signal from the feed itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Change {
    /// A grant was created, extended or ended: re-read it.
    Grant {
        /// Grant id.
        id: i64,
    },
    /// A request changed.
    Request {
        /// Request id.
        id: i64,
    },
    /// An admin asked to kill a session (it may live on this replica).
    KillSession {
        /// Session id.
        id: String,
        /// Who asked.
        by: String,
    },
    /// A gateway token was revoked (logout, `jitgate token revoke`).
    TokenRevoked {
        /// Token id.
        jti: String,
        /// Unix seconds until which the entry matters.
        expires_at: i64,
    },
    /// Notifications may have been missed (the LISTEN connection was re-established, or this
    /// receiver fell behind): re-read the current state.
    Resync {
        /// Why: `reconnect`, `lagged`.
        reason: String,
    },
}

/// One item of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    /// What changed.
    #[serde(flatten)]
    pub change: Change,
    /// The node that made the change.
    #[serde(rename = "n")]
    pub origin: String,
    /// When it was published (unix milliseconds, the origin's clock): feed lag.
    #[serde(rename = "t")]
    pub sent_ms: i64,
}

/// Everything the control plane persists.
#[async_trait]
pub trait Store: AuditIndex + Send + Sync + 'static {
    /// Insert a new request; returns it with its id and version 1.
    async fn create_request(&self, r: &Request) -> Result<Request>;
    /// Save a request if its version is still `r.version`; returns it with the version bumped.
    async fn update_request(&self, r: &Request) -> Result<Request>;
    /// One request.
    async fn get_request(&self, id: i64) -> Result<Option<Request>>;
    /// Requests, newest first.
    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<Request>>;
    /// How many requests are pending, and the oldest of them (for the gauges read at every
    /// scrape: two indexed lookups, never the bodies of every pending request).
    async fn pending_requests(&self) -> Result<(u64, Option<Request>)>;
    /// Atomically save the approved request and create its grant (`g.id == 0`) or save the
    /// extended grant (`g.id != 0`). Returns both as stored.
    async fn approve_with_grant(&self, r: &Request, g: &Grant) -> Result<(Request, Grant)>;
    /// Save a grant.
    async fn update_grant(&self, g: &Grant) -> Result<()>;
    /// One grant.
    async fn get_grant(&self, id: i64) -> Result<Option<Grant>>;
    /// Grants, newest first.
    async fn list_grants(&self, f: &GrantFilter) -> Result<Vec<Grant>>;
    /// A session started.
    async fn session_started(&self, s: &SessionInfo) -> Result<()>;
    /// A session ended.
    async fn session_ended(&self, id: &str, at: Timestamp, reason: &str) -> Result<()>;
    /// Sessions, newest first (`open_only`: not ended); every node's on a shared store.
    async fn list_sessions(&self, open_only: bool, limit: usize) -> Result<Vec<SessionRecord>>;
    /// One session, open or ended.
    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>>;
    /// Close the sessions this gateway left open (start-up after a crash, resync); returns
    /// how many. `keep`: ids still live here; only rows of sessions that started before
    /// `started_before` are touched (a session starting during a resync is not in `keep` yet).
    async fn end_open_sessions(
        &self,
        at: Timestamp,
        reason: &str,
        keep: &[String],
        started_before: Timestamp,
    ) -> Result<usize>;
    /// Store a machine token.
    async fn create_token(&self, t: &MachineToken) -> Result<()>;
    /// The machine token with this hash.
    async fn token_by_hash(&self, sha256: &str) -> Result<Option<MachineToken>>;
    /// Put a gateway token id on the revocation list until `expires_at` (unix seconds).
    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<()>;
    /// The revocation list (entries past their expiry are dropped).
    async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>>;
    /// Cheap liveness check (for `/readyz`).
    async fn health(&self) -> Result<()>;
    /// What the store adds for several replicas, when it is shared (`None`: this store serves
    /// one process, and has nothing to stub).
    fn replication(&self) -> Option<&dyn Replication> {
        None
    }
    /// Whether several gateways share this store.
    fn shared(&self) -> bool {
        self.replication().is_some()
    }
    /// Whether the change feed is connected (a store without a feed: always).
    fn feed_connected(&self) -> bool {
        self.replication().is_none_or(Replication::feed_connected)
    }
}

/// The calls only a store shared by several replicas has (PostgreSQL): the change feed, kills
/// of sessions hosted elsewhere, the node registry, and the clock the replicas compare against.
#[async_trait]
pub trait Replication: Send + Sync {
    /// Changes made by other replicas, as they arrive.
    fn changes(&self) -> tokio::sync::broadcast::Receiver<Feed>;
    /// Whether the change feed is connected now.
    fn feed_connected(&self) -> bool;
    /// Ask the replica hosting the open session `id` to kill it. `Ok(false)`: no such open
    /// session.
    async fn request_kill(&self, id: &str, by: &str) -> Result<bool>;
    /// Open sessions of this gateway that another replica asked to kill: `(id, by)`.
    async fn kills_requested(&self) -> Result<Vec<(String, String)>>;
    /// Record this replica's key fingerprints (JSON) and return the other replicas' that
    /// started in the last 30 days: `(node, keys)`.
    async fn register_node(&self, keys: &str) -> Result<Vec<(String, String)>>;
    /// The store's clock minus this host's, in milliseconds.
    async fn clock_skew_ms(&self) -> Result<i64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_audit::Kind;
    use jitgate_core::engine::grant_for;

    fn request() -> Request {
        Request {
            id: 0,
            requester: "alice".into(),
            requester_groups: vec!["dev".into()],
            resource: "prod-db".into(),
            access: "read-only".into(),
            duration_secs: 60,
            reason: Some("x".into()),
            ticket: None,
            policy: "p".into(),
            state: RequestState::Pending,
            created_at: Timestamp::now(),
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

    #[tokio::test]
    async fn a_stale_version_cannot_overwrite_a_newer_decision() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db"), None).unwrap();
        let r = s.create_request(&request()).await.unwrap();
        assert_eq!((r.id, r.version), (1, 1));
        let mut a = r.clone();
        a.state = RequestState::Denied;
        let a = s.update_request(&a).await.unwrap();
        assert_eq!(a.version, 2);
        let mut b = r.clone();
        b.state = RequestState::Approved;
        assert!(matches!(s.update_request(&b).await, Err(StoreError::Conflict)));
        assert!(matches!(
            s.approve_with_grant(&b, &grant_for(&b, Timestamp::now())).await,
            Err(StoreError::Conflict)
        ));
        assert!(
            s.list_grants(&GrantFilter::default()).await.unwrap().is_empty(),
            "the failed approval left no grant behind"
        );
        assert_eq!(s.get_request(1).await.unwrap().unwrap().state, RequestState::Denied);
    }

    #[tokio::test]
    async fn approval_and_grant_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let s = SqliteStore::open(&path, None).unwrap();
            let mut r = s.create_request(&request()).await.unwrap();
            r.state = RequestState::Approved;
            let (r, g) = s
                .approve_with_grant(&r, &grant_for(&r, Timestamp::now()))
                .await
                .unwrap();
            assert_eq!(r.grant_id, Some(g.id));
        }
        let s = SqliteStore::open(&path, None).unwrap();
        let live = s
            .list_grants(&GrantFilter {
                live_at: Some(Timestamp::now()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(live.len(), 1);
        let later = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(120))
            .unwrap();
        assert!(
            s.list_grants(&GrantFilter {
                live_at: Some(later),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
        );
    }

    #[tokio::test]
    async fn statements_are_indexed_as_offsets_and_read_back_across_rotated_files() {
        use jitgate_audit::{AuditSink, Event, Query};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("t.db"), None).unwrap());
        let log = dir.path().join("audit.jsonl");
        let sink = AuditSink::open_with(&log, Some(store.clone()), None, Some(4000)).unwrap();
        for i in 0..60 {
            sink.emit(
                Event::new(Kind::PgStatement, Timestamp::now())
                    .session("s-1")
                    .details(serde_json::json!({"sql": format!("SELECT {i}"), "rows": i})),
            )
            .await
            .unwrap();
            if i % 20 == 19 {
                // A durable event flushes the hot-path backlog into the index.
                sink.record(Event::new(Kind::SessionStarted, Timestamp::now()).session("s-1"))
                    .await
                    .unwrap();
            }
        }
        assert!(
            !jitgate_audit::rotated_files(&log).is_empty(),
            "the log rotated at least once"
        );
        let q = Query {
            session: Some("s-1".into()),
            kind: Some("pg.statement".into()),
            limit: Some(10_000),
            ..Default::default()
        };
        let found = store.search(&q).await.unwrap();
        let sqls: Vec<String> = found
            .iter()
            .map(|e| e.details["sql"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sqls, (0..60).map(|i| format!("SELECT {i}")).collect::<Vec<_>>());
        // The index holds runs of offsets for statements, not their lines.
        let (slim, rows): (i64, i64) = store
            .with("t", |c| {
                c.query_row(
                    "SELECT (SELECT sum(length(at)) / 16 FROM audit_runs), (SELECT count(*) FROM audit_events WHERE kind = 'pg.statement')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| StoreError::Backend(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!((slim, rows), (60, 0));
        // A rotated file archived away: its statements drop out of search (logged), the rest
        // are still found, and nothing fails.
        let first = jitgate_audit::rotated_files(&log).remove(0);
        std::fs::remove_file(&first).unwrap();
        let rest = store.search(&q).await.unwrap();
        assert!(!rest.is_empty() && rest.len() < 60, "{}", rest.len());
    }

    #[tokio::test]
    async fn statement_runs_merge_with_other_events_newest_first() {
        use jitgate_audit::{AuditSink, Event, Query, Statement};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("t.db"), None).unwrap());
        let log = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&log, Some(store.clone()), None).unwrap();
        let st = |who: &str, session: &str, i: usize| Statement {
            time: Timestamp::now(),
            identity: who.into(),
            access: "read-write".into(),
            resource: "db".into(),
            grant_id: 1,
            session_id: session.into(),
            sql: format!("SELECT {i}").into(),
            max_text: 100,
            class: "select",
            simple: true,
            outcome: "ok",
            duration_ms: 0.1,
            rows: 1,
            error: None,
        };
        let find = async |q: Query| store.search(&q).await.unwrap();
        // Two sessions interleaved, with other events between, across several index batches.
        for i in 0..30 {
            sink.emit_statement(st("alice", "s-1", i)).await.unwrap();
            sink.emit_statement(st("bob", "s-2", i)).await.unwrap();
            if i % 10 == 9 {
                sink.record(Event::new(Kind::GrantActivated, Timestamp::now()).grant(1))
                    .await
                    .unwrap();
            }
        }
        sink.record(Event::new(Kind::SessionEnded, Timestamp::now()).session("s-1"))
            .await
            .unwrap();
        let all = find(Query {
            limit: Some(10_000),
            ..Default::default()
        })
        .await;
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=64).collect::<Vec<u64>>()
        );
        let newest = find(Query {
            limit: Some(7),
            ..Default::default()
        })
        .await;
        assert_eq!(
            newest.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (58..=64).collect::<Vec<u64>>()
        );
        let bob = find(Query {
            user: Some("bob".into()),
            limit: Some(3),
            ..Default::default()
        })
        .await;
        let sqls: Vec<&str> = bob.iter().map(|e| e.details["sql"].as_str().unwrap()).collect();
        assert_eq!(sqls, ["SELECT 27", "SELECT 28", "SELECT 29"]);
        assert!(bob.iter().all(|e| e.session_id.as_deref() == Some("s-2")));
        let s1 = find(Query {
            session: Some("s-1".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(s1.len(), 31, "30 statements and session.ended");
        assert_eq!(s1.last().unwrap().kind, "session.ended");
        let grants = find(Query {
            kind: Some("grant.".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(grants.len(), 3);
        let none = find(Query {
            since: Some(
                Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(60))
                    .unwrap(),
            ),
            ..Default::default()
        })
        .await;
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn the_audit_index_catches_up_with_the_log_after_a_crash() {
        use jitgate_audit::{AuditSink, Event, Query};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("t.db"), None).unwrap());
        let log = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&log, Some(store.clone()), None).unwrap();
        for i in 0..5 {
            sink.record(Event::new(Kind::GrantActivated, Timestamp::now()).grant(i))
                .await
                .unwrap();
        }
        assert_eq!(store.search(&Query::default()).await.unwrap().len(), 5);
        drop(sink);
        // Simulate a crash that lost the last index commits.
        store
            .with("t", |c| {
                c.execute("DELETE FROM audit_events WHERE seq > 2", [])
                    .map_err(|e| StoreError::Backend(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(store.search(&Query::default()).await.unwrap().len(), 2);
        let _sink = AuditSink::open(&log, Some(store.clone()), None).unwrap();
        let evs = store.search(&Query::default()).await.unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    }

    /// An emptied index (what the upgrade to search by content does) is rebuilt at the next
    /// start from every audit file, rotated ones included, and answers content searches.
    #[tokio::test]
    async fn an_emptied_index_is_rebuilt_from_every_audit_file() {
        use jitgate_audit::{AuditSink, Event, Query};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("t.db"), None).unwrap());
        let log = dir.path().join("audit.jsonl");
        let sink = AuditSink::open_with(&log, Some(store.clone()), None, Some(4000)).unwrap();
        for i in 0..60 {
            sink.emit(
                Event::new(Kind::PgStatement, Timestamp::now())
                    .session("s-1")
                    .details(serde_json::json!({"sql": format!("DELETE FROM t{i}"), "rows": i})),
            )
            .await
            .unwrap();
            if i % 20 == 19 {
                sink.record(Event::new(Kind::SessionStarted, Timestamp::now()).session("s-1"))
                    .await
                    .unwrap();
            }
        }
        sink.record(Event::new(Kind::SessionEnded, Timestamp::now()).session("s-1"))
            .await
            .unwrap();
        drop(sink);
        assert!(jitgate_audit::rotated_files(&log).len() >= 2);
        let q = Query {
            text: Some("delete from".into()),
            limit: Some(1000),
            ..Default::default()
        };
        assert_eq!(store.search(&q).await.unwrap().len(), 60);
        store
            .with("t", |c| {
                c.execute_batch("DELETE FROM audit_events; DELETE FROM audit_runs; INSERT INTO audit_text(audit_text) VALUES('delete-all');")
                    .map_err(|e| StoreError::Backend(e.to_string()))
            })
            .await
            .unwrap();
        assert!(store.search(&q).await.unwrap().is_empty());
        let _sink = AuditSink::open_with(&log, Some(store.clone()), None, Some(4000)).unwrap();
        let found = store.search(&q).await.unwrap();
        let sqls: Vec<&str> = found.iter().map(|e| e.details["sql"].as_str().unwrap()).collect();
        assert_eq!(sqls, (0..60).map(|i| format!("DELETE FROM t{i}")).collect::<Vec<_>>());
        let one = store
            .search(&Query {
                text: Some("DELETE FROM t4".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(one.len(), 11, "t4 and t40..t49");
    }
}
