//! The embedded SQLite store: one file in `data_dir`, WAL journal, `synchronous=FULL`.
//!
//! Each table keeps the columns it is filtered by next to a JSON `body` with the whole record,
//! so adding a field to a record needs no migration. Calls run on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use jiff::Timestamp;
use jitgate_audit::{AuditIndex, Event, Indexed, Query};
use jitgate_core::{Grant, Request, SessionInfo};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{GrantFilter, MachineToken, RequestFilter, Result, SessionRecord, Store, StoreError};

/// Schema migrations, applied in order; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX requests_state ON requests(state);
CREATE TABLE grants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX grants_state ON grants(state, expires_at);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    end_reason TEXT,
    body TEXT NOT NULL
);
CREATE INDEX sessions_open ON sessions(ended_at);
CREATE TABLE tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    resource TEXT,
    grant_id INTEGER,
    session_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX audit_time ON audit_events(time);
CREATE INDEX audit_session ON audit_events(session_id);
"#,
    r#"
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
"#,
    // Statement events are indexed without their line (body ''): `line_at` is its byte offset
    // in the audit file; search reads it back from there.
    r#"
ALTER TABLE audit_events ADD COLUMN line_at INTEGER;
"#,
    // Statement events are filed in runs instead: one row per session and index batch (up to
    // 8,192 events or 200 ms), `at` packing each statement's seq and byte offset in the audit
    // file (16 bytes, little-endian). Search reads the lines back from the file. Three B-tree
    // inserts per batch and session instead of three per statement.
    r#"
CREATE TABLE audit_runs (
    id INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    min_time INTEGER NOT NULL,
    max_time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    resource TEXT,
    grant_id INTEGER,
    session_id TEXT NOT NULL,
    at BLOB NOT NULL
);
CREATE INDEX audit_runs_last ON audit_runs(last_seq);
CREATE INDEX audit_runs_session ON audit_runs(session_id, last_seq);
"#,
];

/// Event kinds filed in runs (offsets into the log instead of lines): the hot path. Every event
/// of a run shares kind, actor, resource, grant and session, and `actor` is also the event's
/// `details.identity`, so those filters are exact on the run.
const SLIM_KINDS: &[&str] = &[jitgate_audit::STATEMENT_KIND];

/// Statements of one session in one index batch.
struct Run<'a> {
    head: &'a jitgate_audit::Head,
    last_seq: u64,
    min_time: i64,
    max_time: i64,
    at: Vec<u8>,
}

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// A second connection for the audit index, with `synchronous=NORMAL`: the audit file is
    /// the durable record and the index is rebuilt from it after a crash, so index commits
    /// need not wait for fsync (WAL keeps the database consistent either way).
    index_conn: Arc<Mutex<Connection>>,
    /// A third connection for session start/end rows, `synchronous=NORMAL` too: they are
    /// bookkeeping (the audit log holds the durable `session.*` events, and a restart closes
    /// rows left open), and when a grant held by hundreds of sessions ends, one fsync per row
    /// would keep the last session's end waiting for seconds.
    session_conn: Arc<Mutex<Connection>>,
    /// The audit log (set by the sink): slim rows are read back from it.
    log: Arc<std::sync::OnceLock<std::path::PathBuf>>,
    timing: Option<prometheus::HistogramVec>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn to_json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

/// A second connection to the (migrated) file with `synchronous=NORMAL`.
fn open_normal(path: &Path) -> Result<Connection> {
    let c = Connection::open(path).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    c.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
    c.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
    Ok(c)
}

/// `body, ended_at, end_reason` → a session record.
fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let info: SessionInfo = from_json(&r.get::<_, String>(0)?)?;
    let ended: Option<i64> = r.get(1)?;
    Ok(SessionRecord {
        info,
        ended_at: ended.and_then(|m| Timestamp::from_millisecond(m).ok()),
        end_reason: r.get(2)?,
        node: None,
    })
}

impl SqliteStore {
    /// Open (or create) the database file and run pending migrations.
    pub fn open(path: &Path, timing: Option<prometheus::HistogramVec>) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn =
            Connection::open(path).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        let have: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        let have = usize::try_from(have).unwrap_or(0);
        if have > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "{} was written by a newer jitgate (schema {have}, this one knows {}); upgrade jitgate",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(have) {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(m)
                .map_err(|e| StoreError::Backend(format!("migration {}: {e}", i + 1)))?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(0))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            index_conn: Arc::new(Mutex::new(open_normal(path)?)),
            session_conn: Arc::new(Mutex::new(open_normal(path)?)),
            log: Arc::new(std::sync::OnceLock::new()),
            timing,
        })
    }

    pub(crate) async fn with<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.with_conn(&self.conn, op, f).await
    }

    async fn with_conn<T, F>(&self, conn: &Arc<Mutex<Connection>>, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = conn.clone();
        let start = Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?;
        if let Some(h) = &self.timing {
            h.with_label_values(&[op]).observe(start.elapsed().as_secs_f64());
        }
        out
    }
}

fn save_request(c: &Connection, r: &Request) -> Result<Request> {
    let mut next = r.clone();
    next.version = r.version + 1;
    let n = c
        .execute(
            "UPDATE requests SET state = ?1, version = ?2, body = ?3 WHERE id = ?4 AND version = ?5",
            params![
                next.state.as_str(),
                next.version,
                to_json(&next).map_err(backend)?,
                r.id,
                r.version
            ],
        )
        .map_err(backend)?;
    if n == 0 {
        let exists: Option<i64> = c
            .query_row("SELECT id FROM requests WHERE id = ?1", [r.id], |x| x.get(0))
            .optional()
            .map_err(backend)?;
        return Err(if exists.is_some() {
            StoreError::Conflict
        } else {
            StoreError::NotFound
        });
    }
    Ok(next)
}

fn save_grant(c: &Connection, g: &Grant) -> Result<()> {
    let n = c
        .execute(
            "UPDATE grants SET state = ?1, expires_at = ?2, body = ?3 WHERE id = ?4",
            params![g.state.as_str(), ms(g.expires_at), to_json(g).map_err(backend)?, g.id],
        )
        .map_err(backend)?;
    if n == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_request(&self, r: &Request) -> Result<Request> {
        let r = r.clone();
        self.with("create_request", move |c| {
            let tx = c.transaction().map_err(backend)?;
            tx.execute(
                "INSERT INTO requests (requester, state, version, body) VALUES (?1, ?2, 1, '{}')",
                params![r.requester, r.state.as_str()],
            )
            .map_err(backend)?;
            let mut out = r;
            out.id = tx.last_insert_rowid();
            out.version = 1;
            tx.execute(
                "UPDATE requests SET body = ?1 WHERE id = ?2",
                params![to_json(&out).map_err(backend)?, out.id],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn update_request(&self, r: &Request) -> Result<Request> {
        let r = r.clone();
        self.with("update_request", move |c| save_request(c, &r)).await
    }

    async fn get_request(&self, id: i64) -> Result<Option<Request>> {
        self.with("get_request", move |c| {
            c.query_row("SELECT body FROM requests WHERE id = ?1", [id], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<Request>> {
        let f = f.clone();
        self.with("list_requests", move |c| {
            let mut st = c
                .prepare("SELECT body FROM requests WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR requester = ?2) ORDER BY id DESC LIMIT ?3")
                .map_err(backend)?;
            let limit = i64::try_from(f.limit.unwrap_or(1000)).unwrap_or(1000);
            let rows = st
                .query_map(params![f.state.map(|s| s.as_str()), f.requester, limit], |r| from_json(&r.get::<_, String>(0)?))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<Request>>>().map_err(backend)
        })
        .await
    }

    async fn pending_requests(&self) -> Result<(u64, Option<Request>)> {
        self.with("pending_requests", move |c| {
            let n: i64 = c
                .query_row("SELECT count(*) FROM requests WHERE state = 'pending'", [], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            let oldest = c
                .query_row(
                    "SELECT body FROM requests WHERE state = 'pending' ORDER BY id LIMIT 1",
                    [],
                    |r| from_json(&r.get::<_, String>(0)?),
                )
                .optional()
                .map_err(backend)?;
            Ok((u64::try_from(n).unwrap_or(0), oldest))
        })
        .await
    }

    async fn approve_with_grant(&self, r: &Request, g: &Grant) -> Result<(Request, Grant)> {
        let (r, g) = (r.clone(), g.clone());
        self.with("approve_with_grant", move |c| {
            let tx = c.transaction().map_err(backend)?;
            let mut g = g;
            if g.id == 0 {
                tx.execute(
                    "INSERT INTO grants (identity, resource, state, expires_at, body) VALUES (?1, ?2, ?3, ?4, '{}')",
                    params![g.identity, g.resource, g.state.as_str(), ms(g.expires_at)],
                )
                .map_err(backend)?;
                g.id = tx.last_insert_rowid();
            }
            save_grant(&tx, &g)?;
            let mut r = r;
            r.grant_id = Some(g.id);
            let r = save_request(&tx, &r)?;
            tx.commit().map_err(backend)?;
            Ok((r, g))
        })
        .await
    }

    async fn update_grant(&self, g: &Grant) -> Result<()> {
        let g = g.clone();
        self.with("update_grant", move |c| save_grant(c, &g)).await
    }

    async fn get_grant(&self, id: i64) -> Result<Option<Grant>> {
        self.with("get_grant", move |c| {
            c.query_row("SELECT body FROM grants WHERE id = ?1", [id], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_grants(&self, f: &GrantFilter) -> Result<Vec<Grant>> {
        let f = f.clone();
        self.with("list_grants", move |c| {
            let mut st = c
                .prepare(
                    "SELECT body FROM grants WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR identity = ?2) \
                     AND (?3 IS NULL OR resource = ?3) AND (?4 IS NULL OR (state = 'active' AND expires_at > ?4)) \
                     ORDER BY id DESC LIMIT ?5",
                )
                .map_err(backend)?;
            let limit = i64::try_from(f.limit.unwrap_or(1000)).unwrap_or(1000);
            let rows = st
                .query_map(
                    params![
                        f.state.map(|s| s.as_str()),
                        f.identity,
                        f.resource,
                        f.live_at.map(ms),
                        limit
                    ],
                    |r| from_json(&r.get::<_, String>(0)?),
                )
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<Grant>>>().map_err(backend)
        })
        .await
    }

    async fn session_started(&self, s: &SessionInfo) -> Result<()> {
        let s = s.clone();
        self.with_conn(&self.session_conn, "session_started", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO sessions (id, started_at, body) VALUES (?1, ?2, ?3)",
                params![s.id, ms(s.started_at), to_json(&s).map_err(backend)?],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn session_ended(&self, id: &str, at: Timestamp, reason: &str) -> Result<()> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.with_conn(&self.session_conn, "session_ended", move |c| {
            c.execute(
                "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE id = ?3",
                params![ms(at), reason, id],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self, open_only: bool, limit: usize) -> Result<Vec<SessionRecord>> {
        self.with("list_sessions", move |c| {
            let mut st = c
                .prepare("SELECT body, ended_at, end_reason FROM sessions WHERE (?1 = 0 OR ended_at IS NULL) ORDER BY started_at DESC LIMIT ?2")
                .map_err(backend)?;
            let rows = st
                .query_map(params![i64::from(open_only), i64::try_from(limit).unwrap_or(1000)], session_row)
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let id = id.to_string();
        self.with("get_session", move |c| {
            c.query_row(
                "SELECT body, ended_at, end_reason FROM sessions WHERE id = ?1",
                [id],
                session_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn end_open_sessions(
        &self,
        at: Timestamp,
        reason: &str,
        keep: &[String],
        started_before: Timestamp,
    ) -> Result<usize> {
        let (reason, keep) = (reason.to_string(), keep.to_vec());
        self.with("end_open_sessions", move |c| {
            let tx = c.transaction().map_err(backend)?;
            let open: Vec<String> = {
                let mut st = tx
                    .prepare("SELECT id FROM sessions WHERE ended_at IS NULL AND started_at < ?1")
                    .map_err(backend)?;
                let rows = st
                    .query_map([ms(started_before)], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)?
            };
            let mut n = 0;
            for id in open.iter().filter(|id| !keep.contains(id)) {
                n += tx
                    .execute(
                        "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE id = ?3",
                        params![ms(at), reason, id],
                    )
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(n)
        })
        .await
    }

    async fn create_token(&self, t: &MachineToken) -> Result<()> {
        let t = t.clone();
        self.with("create_token", move |c| {
            c.execute(
                "INSERT INTO tokens (sha256, name, body) VALUES (?1, ?2, ?3)",
                params![t.sha256, t.name, to_json(&t).map_err(backend)?],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<MachineToken>> {
        let h = sha256.to_string();
        self.with("token_by_hash", move |c| {
            c.query_row("SELECT body FROM tokens WHERE sha256 = ?1", [h], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<()> {
        let jti = jti.to_string();
        self.with("revoke_token", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)",
                params![jti, expires_at],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>> {
        self.with("revoked_tokens", move |c| {
            c.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?1", [now])
                .map_err(backend)?;
            let mut st = c
                .prepare("SELECT jti, expires_at FROM revoked_tokens")
                .map_err(backend)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        self.with("health", |c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }
}

#[async_trait]
impl AuditIndex for SqliteStore {
    fn attach_log(&self, path: &Path) {
        let _ = self.log.set(path.to_path_buf());
    }

    async fn index(&self, events: &[Indexed]) -> std::result::Result<(), String> {
        let slim_ok = self.log.get().is_some();
        // Called from the audit writer thread: do the work right here.
        let mut c = self.index_conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = c.transaction().map_err(|e| e.to_string())?;
        {
            let mut st = tx
                .prepare(
                    "INSERT OR REPLACE INTO audit_events (seq, time, kind, actor, resource, grant_id, session_id, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| e.to_string())?;
            let mut runs: Vec<Run<'_>> = Vec::new();
            let mut by_session: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
            for Indexed { head: e, line, offset } in events {
                if slim_ok
                    && SLIM_KINDS.contains(&e.kind.as_ref())
                    && let Some(session) = e.session_id.as_deref()
                {
                    let t = ms(e.time);
                    let i = *by_session.entry(session).or_insert_with(|| {
                        runs.push(Run {
                            head: e,
                            last_seq: e.seq,
                            min_time: t,
                            max_time: t,
                            at: Vec::new(),
                        });
                        runs.len() - 1
                    });
                    let r = &mut runs[i];
                    if r.head.kind == e.kind
                        && r.head.actor == e.actor
                        && r.head.resource == e.resource
                        && r.head.grant_id == e.grant_id
                    {
                        r.last_seq = e.seq;
                        r.min_time = r.min_time.min(t);
                        r.max_time = r.max_time.max(t);
                        r.at.extend_from_slice(&e.seq.to_le_bytes());
                        r.at.extend_from_slice(&offset.to_le_bytes());
                        continue;
                    }
                }
                st.execute(params![
                    i64::try_from(e.seq).unwrap_or(i64::MAX),
                    ms(e.time),
                    e.kind.as_ref(),
                    e.actor.as_deref(),
                    e.resource.as_deref(),
                    e.grant_id,
                    e.session_id.as_deref(),
                    line.as_str(),
                ])
                .map_err(|e| e.to_string())?;
            }
            let mut ins = tx
                .prepare(
                    "INSERT INTO audit_runs (first_seq, last_seq, min_time, max_time, kind, actor, resource, grant_id, session_id, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| e.to_string())?;
            for r in &runs {
                let h = r.head;
                ins.execute(params![
                    i64::try_from(h.seq).unwrap_or(i64::MAX),
                    i64::try_from(r.last_seq).unwrap_or(i64::MAX),
                    r.min_time,
                    r.max_time,
                    h.kind.as_ref(),
                    h.actor.as_deref(),
                    h.resource.as_deref(),
                    h.grant_id,
                    h.session_id.as_deref(),
                    r.at,
                ])
                .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    async fn max_seq(&self) -> std::result::Result<u64, String> {
        let c = self.index_conn.lock().unwrap_or_else(|e| e.into_inner());
        let n: Option<i64> = c
            .query_row(
                "SELECT max(coalesce((SELECT max(seq) FROM audit_events), 0), coalesce((SELECT max(last_seq) FROM audit_runs), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    async fn search(&self, q: &Query) -> std::result::Result<Vec<Event>, String> {
        let q = q.clone();
        let log = self.log.get().cloned();
        self.with("audit_search", move |c| {
            // Coarse filters in SQL, exact ones in Rust (kind prefixes, identity in details).
            let mut st = c
                .prepare(
                    "SELECT body, seq, line_at FROM audit_events WHERE (?1 IS NULL OR time >= ?1) AND (?2 IS NULL OR time <= ?2) \
                     AND (?3 IS NULL OR resource = ?3) AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR grant_id = ?5) \
                     ORDER BY seq DESC",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![q.since.map(ms), q.until.map(ms), q.resource, q.session, q.grant], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?))
                })
                .map_err(backend)?;
            let limit = q.limit.unwrap_or(1000);
            let mut out = Vec::new();
            let mut lines = LogReader::new(log);
            for row in rows {
                let (body, seq, at) = row.map_err(backend)?;
                let e: Event = match at {
                    // A statement indexed before runs existed (schema 3): offset, no line.
                    Some(at) if body.is_empty() => match lines.read(seq, at) {
                        Some(e) => e,
                        None => continue,
                    },
                    _ => serde_json::from_str(&body).map_err(backend)?,
                };
                if q.matches(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            let runs = search_runs(c, &q, limit, &mut lines)?;
            // Both lists are newest first: merge them and keep the newest `limit`.
            let mut merged = Vec::with_capacity(limit.min(out.len() + runs.len()));
            let (mut a, mut b) = (out.into_iter().peekable(), runs.into_iter().peekable());
            while merged.len() < limit {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => x.seq > y.seq,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                merged.extend(if take_a { a.next() } else { b.next() });
            }
            merged.reverse();
            Ok(merged)
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// Statement events from runs that pass `q`, newest first, at most `limit`. Runs come newest
/// last-seq first; runs of one batch interleave, so their entries go through a heap and an
/// entry is read only once no run still unseen can hold a newer one.
fn search_runs(c: &Connection, q: &Query, limit: usize, lines: &mut LogReader) -> Result<Vec<Event>> {
    let kind_ok = q.kind.as_ref().is_none_or(|k| {
        let kind = jitgate_audit::STATEMENT_KIND;
        if k.ends_with('.') {
            kind.starts_with(k.as_str())
        } else {
            kind == k
        }
    });
    let mut out = Vec::new();
    if !kind_ok || limit == 0 {
        return Ok(out);
    }
    let mut st = c
        .prepare(
            "SELECT last_seq, at FROM audit_runs WHERE (?1 IS NULL OR max_time >= ?1) AND (?2 IS NULL OR min_time <= ?2) \
             AND (?3 IS NULL OR resource = ?3) AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR grant_id = ?5) \
             AND (?6 IS NULL OR actor = ?6) ORDER BY last_seq DESC",
        )
        .map_err(backend)?;
    let rows = st
        .query_map(
            params![q.since.map(ms), q.until.map(ms), q.resource, q.session, q.grant, q.user],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .map_err(backend)?;
    let mut heap: std::collections::BinaryHeap<(u64, u64)> = std::collections::BinaryHeap::new();
    let mut take = |heap: &mut std::collections::BinaryHeap<(u64, u64)>, above: u64, out: &mut Vec<Event>| {
        while out.len() < limit && heap.peek().is_some_and(|(seq, _)| *seq > above) {
            let Some((seq, at)) = heap.pop() else { break };
            let (Ok(seq), Ok(at)) = (i64::try_from(seq), i64::try_from(at)) else {
                continue;
            };
            if let Some(e) = lines.read(seq, at)
                && q.matches(&e)
            {
                out.push(e);
            }
        }
    };
    for row in rows {
        let (last, at) = row.map_err(backend)?;
        take(&mut heap, u64::try_from(last).unwrap_or(0), &mut out);
        if out.len() >= limit {
            return Ok(out);
        }
        for e in at.chunks_exact(16) {
            let (seq, offset) = e.split_at(8);
            let (Ok(seq), Ok(offset)) = (<[u8; 8]>::try_from(seq), <[u8; 8]>::try_from(offset)) else {
                continue;
            };
            heap.push((u64::from_le_bytes(seq), u64::from_le_bytes(offset)));
        }
    }
    take(&mut heap, 0, &mut out);
    Ok(out)
}

/// Reads slim rows' lines back from the audit files: the live file, or the rotated file
/// (`STEM-<last seq>.jsonl`) that holds that `seq`. Files stay open for one search.
struct LogReader {
    log: Option<std::path::PathBuf>,
    /// (last seq, path) of rotated files, ascending; read once.
    rotated: Option<Vec<(u64, std::path::PathBuf)>>,
    open: std::collections::HashMap<std::path::PathBuf, std::io::BufReader<std::fs::File>>,
}

impl LogReader {
    fn new(log: Option<std::path::PathBuf>) -> Self {
        Self {
            log,
            rotated: None,
            open: std::collections::HashMap::new(),
        }
    }

    fn file_for(&mut self, seq: u64) -> Option<std::path::PathBuf> {
        let log = self.log.clone()?;
        let rotated = self.rotated.get_or_insert_with(|| {
            jitgate_audit::rotated_files(&log)
                .into_iter()
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_string_lossy().into_owned();
                    let last = stem.rsplit('-').next()?.parse::<u64>().ok()?;
                    Some((last, p))
                })
                .collect()
        });
        Some(
            rotated
                .iter()
                .find(|(last, _)| *last >= seq)
                .map_or(log, |(_, p)| p.clone()),
        )
    }

    /// The event `seq` at byte `at`; `None` (logged) when the file or line is gone or differs.
    fn read(&mut self, seq: i64, at: i64) -> Option<Event> {
        use std::io::{BufRead, Seek};
        let want = u64::try_from(seq).ok()?;
        let path = self.file_for(want)?;
        let r = match self.open.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match std::fs::File::open(&path) {
                Ok(f) => v.insert(std::io::BufReader::new(f)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, seq, "audit search: the file holding this event is gone");
                    return None;
                }
            },
        };
        let mut line = String::new();
        let ok = r
            .seek(std::io::SeekFrom::Start(u64::try_from(at).ok()?))
            .and_then(|_| r.read_line(&mut line))
            .is_ok();
        match serde_json::from_str::<Event>(line.trim_end_matches('\n')) {
            Ok(e) if ok && e.seq == want => Some(e),
            _ => {
                tracing::warn!(file = %path.display(), seq, "audit search: the indexed line is not where the index says; run `jitgate audit verify`");
                None
            }
        }
    }
}
