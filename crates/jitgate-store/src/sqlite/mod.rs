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

mod audit_index;
mod records;
mod schema;

use schema::MIGRATIONS;

use crate::{GrantFilter, MachineToken, RequestFilter, Result, SessionRecord, Store, StoreError};

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
    /// Each statement's searchable text, in `at` order.
    texts: Vec<Option<&'a str>>,
}

/// Bits of an `audit_text` rowid that number a statement within its run.
const RUN_BITS: u32 = 20;
/// Statements per run at most (a longer backlog starts a new run for the session).
const RUN_MAX: usize = 1 << RUN_BITS;

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
