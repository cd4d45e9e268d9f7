//! The shared PostgreSQL store: several gateway replicas use one database.
//!
//! - Tables mirror the SQLite ones (filter columns + a JSON `body`), prefixed `jitgate_`;
//!   migrations run under an advisory lock so replicas starting together do not race.
//! - A small pool of connections (`pool_size`) serves the calls, each bounded by a timeout so a
//!   store outage turns into a clear error instead of a hang.
//! - Every write that changes a grant, a request, a session kill or a token revocation publishes
//!   a NOTIFY on `jitgate_changes` inside its own transaction, so the notice goes out exactly
//!   when the change commits. One extra connection per replica LISTENs; when it is lost the
//!   replica reconnects with back-off and emits [`Change::Resync`] so the control plane re-reads
//!   the current state (a notice sent while nobody listened is never relied upon).
//! - Sessions and audit index rows carry the node name: each replica closes only its own
//!   sessions at start-up, and audit `seq` numbers (per audit file) stay unique per node.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use jitgate_audit::{AuditIndex, Event, Indexed, Query};
use jitgate_core::{Grant, Request, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, Row};

use crate::pgtls::MakeRustls;
use crate::{Change, Feed, GrantFilter, MachineToken, RequestFilter, Result, SessionRecord, Store, StoreError};

/// The NOTIFY channel.
const CHANNEL: &str = "jitgate_changes";
/// Longest a store call may take before it fails (the caller gets "store unavailable").
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the LISTEN connection proves it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Advisory lock key for migrations ("jitg").
const MIGRATION_LOCK: i64 = 0x6a69_7467;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jitgate_requests (
    id BIGSERIAL PRIMARY KEY,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX jitgate_requests_state ON jitgate_requests(state);
CREATE TABLE jitgate_grants (
    id BIGSERIAL PRIMARY KEY,
    identity TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX jitgate_grants_state ON jitgate_grants(state, expires_at);
CREATE TABLE jitgate_sessions (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT,
    kill_by TEXT,
    body TEXT NOT NULL
);
CREATE INDEX jitgate_sessions_open ON jitgate_sessions(node) WHERE ended_at IS NULL;
CREATE TABLE jitgate_tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE jitgate_revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE jitgate_audit_events (
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    resource TEXT,
    grant_id BIGINT,
    session_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX jitgate_audit_time ON jitgate_audit_events(time);
CREATE INDEX jitgate_audit_session ON jitgate_audit_events(session_id);
"#,
    r#"
CREATE TABLE jitgate_nodes (
    node TEXT PRIMARY KEY,
    keys TEXT NOT NULL,
    started_at BIGINT NOT NULL
);
"#,
];

/// How to reach the store.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/db?sslmode=...` (libpq key=value strings work too).
    pub url: String,
    /// CA for the store's certificate: TLS is then required and the host name verified.
    /// Without it the URL must say `sslmode=disable`.
    pub ca_file: Option<PathBuf>,
    /// This gateway's node name (unique per replica).
    pub node: String,
    /// Connections for calls (the LISTEN connection comes on top).
    pub pool_size: usize,
    /// Refuse to start when this host's clock and the store's differ by more.
    pub max_clock_skew: Duration,
    /// Per-operation latency histogram (`op` label).
    pub timing: Option<prometheus::HistogramVec>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("PgOptions")
            .field("url", &redact(&self.url))
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced by `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.rsplit_once('@')
    {
        let user = auth.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Inner {
    cfg: tokio_postgres::Config,
    tls: Option<MakeRustls>,
    node: String,
    idle: std::sync::Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
    feed: broadcast::Sender<Feed>,
    feed_up: AtomicBool,
    timing: Option<prometheus::HistogramVec>,
}

/// PostgreSQL-backed [`Store`], shared by several gateway replicas.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.inner.node)
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An error with its causes (tokio-postgres keeps the TLS or I/O reason in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn now_ms() -> i64 {
    ms(Timestamp::now())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("unreadable record in the store: {e}")))
}

fn bodies<T: serde::de::DeserializeOwned>(rows: &[Row]) -> Result<Vec<T>> {
    rows.iter()
        .map(|r| from_json(&r.try_get::<_, String>(0).map_err(backend)?))
        .collect()
}

/// Rows of two columns.
fn pairs<A, B>(rows: &[Row]) -> Result<Vec<(A, B)>>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    rows.iter()
        .map(|r| Ok((r.try_get(0).map_err(backend)?, r.try_get(1).map_err(backend)?)))
        .collect()
}

fn limit(l: Option<usize>) -> i64 {
    i64::try_from(l.unwrap_or(1000)).unwrap_or(1000)
}

/// A pooled connection; goes back to the pool when dropped, unless it broke.
struct Conn {
    client: Option<Client>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Backend("store connection already released".into()))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
        {
            self.inner.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }
}

async fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, notices: Option<mpsc::UnboundedSender<Notification>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notices
                    && tx.send(n).is_err()
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "store connection ended");
                return;
            }
            None => return,
        }
    }
}

impl Inner {
    async fn connect(&self, app: &str, notices: Option<mpsc::UnboundedSender<Notification>>) -> Result<Client> {
        let mut cfg = self.cfg.clone();
        cfg.application_name(format!("{app}/{}", self.node));
        let unavailable =
            |e: tokio_postgres::Error| StoreError::Backend(format!("cannot connect to the store: {}", chain(&e)));
        let client = match &self.tls {
            Some(t) => {
                let (c, conn) = cfg.connect(t.clone()).await.map_err(unavailable)?;
                tokio::spawn(drive(conn, notices));
                c
            }
            None => {
                let (c, conn) = cfg.connect(NoTls).await.map_err(unavailable)?;
                tokio::spawn(drive(conn, notices));
                c
            }
        };
        Ok(client)
    }

    async fn get(self: &Arc<Self>) -> Result<Conn> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend("store pool closed".into()))?;
        loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(c) if c.is_closed() => {}
                Some(c) => {
                    return Ok(Conn {
                        client: Some(c),
                        inner: self.clone(),
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let c = self.connect("jitgate", None).await?;
        Ok(Conn {
            client: Some(c),
            inner: self.clone(),
            _permit: permit,
        })
    }

    fn payload(&self, change: Change) -> Result<String> {
        to_json(&Feed {
            change,
            origin: self.node.clone(),
            sent_ms: now_ms(),
        })
    }
}

impl PgStore {
    /// Connect, check the clock against the store's, run pending migrations and start
    /// listening for changes. Must be called inside a tokio runtime.
    pub async fn open(opts: PgOptions) -> Result<Self> {
        let mut cfg: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::Backend(format!("store URL {}: {e}", redact(&opts.url))))?;
        let tls = match &opts.ca_file {
            Some(ca) => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(MakeRustls::from_ca_file(ca).map_err(StoreError::Backend)?)
            }
            None => {
                if cfg.get_ssl_mode() != tokio_postgres::config::SslMode::Disable {
                    return Err(StoreError::Backend(
                        "the store URL asks for TLS but [store] ca_file is not set: set ca_file to the CA that \
                         signed the store's certificate (it is verified), or add sslmode=disable for a store on \
                         loopback or a trusted network"
                            .into(),
                    ));
                }
                None
            }
        };
        cfg.connect_timeout(Duration::from_secs(3));
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(10));
        let (feed, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            cfg,
            tls,
            node: opts.node.clone(),
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(opts.pool_size.max(1))),
            feed,
            feed_up: AtomicBool::new(false),
            timing: opts.timing.clone(),
        });
        let me = Self {
            inner,
            rt: tokio::runtime::Handle::current(),
        };
        let skew = me.clock_skew_ms().await?;
        let limit_ms = i64::try_from(opts.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        if skew.abs() > limit_ms {
            return Err(StoreError::Backend(format!(
                "this host's clock differs from the store's by {:.3}s (more than [store] max_clock_skew = {}s): \
                 grants would end at different instants on different replicas; synchronise the clocks (NTP)",
                skew as f64 / 1000.0,
                opts.max_clock_skew.as_secs_f64()
            )));
        }
        me.migrate().await?;
        // Listen before serving: a change made from now on reaches us or triggers a resync.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(listen_forever(Arc::downgrade(&me.inner), ready_tx));
        match tokio::time::timeout(OP_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => {}
            _ => return Err(StoreError::Backend("could not LISTEN for changes on the store".into())),
        }
        Ok(me)
    }

    /// This gateway's node name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.inner.get().await?;
        let tx = conn.client()?.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS jitgate_schema (version INT NOT NULL); ")
            .await
            .map_err(backend)?;
        let have: i32 = match tx
            .query_opt("SELECT version FROM jitgate_schema", &[])
            .await
            .map_err(backend)?
        {
            Some(r) => r.try_get(0).map_err(backend)?,
            None => {
                tx.execute("INSERT INTO jitgate_schema VALUES (0)", &[])
                    .await
                    .map_err(backend)?;
                0
            }
        };
        let have = usize::try_from(have).unwrap_or(0);
        if have > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the store was written by a newer jitgate (schema {have}, this one knows {}); upgrade jitgate",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(have) {
            tx.batch_execute(m)
                .await
                .map_err(|e| StoreError::Backend(format!("store migration {}: {e}", i + 1)))?;
            let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute("UPDATE jitgate_schema SET version = $1", &[&v])
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    /// Run `f` with a pooled connection, bounded by [`OP_TIMEOUT`], timed under `op`.
    async fn with<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut Client) -> Result<T>,
    {
        let start = Instant::now();
        let work = async {
            let mut c = self.inner.get().await?;
            f(c.client()?).await
        };
        let out = match tokio::time::timeout(OP_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Backend(format!(
                "the store did not answer within {}s",
                OP_TIMEOUT.as_secs()
            ))),
        };
        if let Some(h) = &self.inner.timing {
            h.with_label_values(&[op]).observe(start.elapsed().as_secs_f64());
        }
        out
    }

    /// Run `f` in a transaction and publish the change it returns (if any) in the same
    /// transaction, so the notice goes out exactly when the write commits.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<(T, Option<Change>)>,
    {
        let inner = self.inner.clone();
        self.with(op, async |c| {
            let tx = c.transaction().await.map_err(backend)?;
            let (out, change) = f(&tx).await?;
            if let Some(change) = change {
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &inner.payload(change)?])
                    .await
                    .map_err(backend)?;
            }
            tx.commit().await.map_err(backend)?;
            Ok(out)
        })
        .await
    }

    /// The JSON body of the row a query returns, if any.
    async fn one<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        sql: &'static str,
        key: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Option<T>> {
        self.with(op, async |c| {
            let rows = c.query(sql, &[key]).await.map_err(backend)?;
            Ok(bodies(&rows)?.pop())
        })
        .await
    }

    /// Run an audit-index call on the gateway's runtime (the audit writer thread has its own
    /// small runtime without I/O; the pool's connections live on the main one).
    async fn on_runtime<T, F>(&self, f: F) -> std::result::Result<T, String>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        match self.rt.spawn(f).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("store task failed: {e}")),
        }
    }
}

/// Keep one LISTEN connection up for as long as the store exists.
async fn listen_forever(inner: std::sync::Weak<Inner>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(me) = inner.upgrade() else { return };
        let reconnect = ready.is_none();
        let started = Instant::now();
        let err = listen_once(&me, &mut ready, reconnect).await;
        me.feed_up.store(false, Ordering::SeqCst);
        tracing::warn!(error = %err, "lost the store's change feed; reconnecting (new sessions are refused meanwhile)");
        drop(me);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn listen_once(
    me: &Arc<Inner>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    reconnect: bool,
) -> StoreError {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = match tokio::time::timeout(OP_TIMEOUT, me.connect("jitgate-feed", Some(tx))).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return e,
        Err(_) => return StoreError::Backend("connecting for LISTEN timed out".into()),
    };
    match tokio::time::timeout(OP_TIMEOUT, client.batch_execute(&format!("LISTEN {CHANNEL}"))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return backend(e),
        Err(_) => return StoreError::Backend("LISTEN timed out".into()),
    }
    me.feed_up.store(true, Ordering::SeqCst);
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    if reconnect {
        tracing::info!("store change feed reconnected; resynchronising");
        let _ = me.feed.send(Feed {
            change: Change::Resync {
                reason: "reconnect".into(),
            },
            origin: me.node.clone(),
            sent_ms: now_ms(),
        });
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            n = rx.recv() => {
                let Some(n) = n else {
                    return StoreError::Backend("the LISTEN connection closed".into());
                };
                match serde_json::from_str::<Feed>(n.payload()) {
                    Ok(f) if f.origin == me.node => {}
                    Ok(f) => {
                        let _ = me.feed.send(f);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable change notice"),
                }
            }
            _ = beat.tick() => {
                match tokio::time::timeout(Duration::from_secs(3), client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return backend(e),
                    Err(_) => return StoreError::Backend("the LISTEN connection stopped answering".into()),
                }
            }
        }
    }
}

fn session_record(r: &Row) -> Result<SessionRecord> {
    let info: SessionInfo = from_json(&r.try_get::<_, String>(0).map_err(backend)?)?;
    let ended: Option<i64> = r.try_get(1).map_err(backend)?;
    Ok(SessionRecord {
        info,
        ended_at: ended.and_then(|m| Timestamp::from_millisecond(m).ok()),
        end_reason: r.try_get(2).map_err(backend)?,
        node: Some(r.try_get(3).map_err(backend)?),
    })
}

async fn save_request(tx: &tokio_postgres::Transaction<'_>, r: &Request) -> Result<Request> {
    let mut next = r.clone();
    next.version = r.version + 1;
    let n = tx
        .execute(
            "UPDATE jitgate_requests SET state = $1, version = $2, body = $3 WHERE id = $4 AND version = $5",
            &[&next.state.as_str(), &next.version, &to_json(&next)?, &r.id, &r.version],
        )
        .await
        .map_err(backend)?;
    if n == 0 {
        let exists = tx
            .query_opt("SELECT id FROM jitgate_requests WHERE id = $1", &[&r.id])
            .await
            .map_err(backend)?;
        return Err(if exists.is_some() {
            StoreError::Conflict
        } else {
            StoreError::NotFound
        });
    }
    Ok(next)
}

async fn save_grant(tx: &tokio_postgres::Transaction<'_>, g: &Grant) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE jitgate_grants SET state = $1, expires_at = $2, body = $3 WHERE id = $4",
            &[&g.state.as_str(), &ms(g.expires_at), &to_json(g)?, &g.id],
        )
        .await
        .map_err(backend)?;
    if n == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

#[async_trait]
impl Store for PgStore {
    async fn create_request(&self, r: &Request) -> Result<Request> {
        self.write("create_request", async |tx| {
            let row = tx
                .query_one(
                    "INSERT INTO jitgate_requests (requester, state, version, body) VALUES ($1, $2, 1, '{}') RETURNING id",
                    &[&r.requester, &r.state.as_str()],
                )
                .await
                .map_err(backend)?;
            let mut out = r.clone();
            out.id = row.try_get(0).map_err(backend)?;
            out.version = 1;
            tx.execute(
                "UPDATE jitgate_requests SET body = $1 WHERE id = $2",
                &[&to_json(&out)?, &out.id],
            )
            .await
            .map_err(backend)?;
            let id = out.id;
            Ok((out, Some(Change::Request { id })))
        })
        .await
    }

    async fn update_request(&self, r: &Request) -> Result<Request> {
        self.write("update_request", async |tx| {
            Ok((save_request(tx, r).await?, Some(Change::Request { id: r.id })))
        })
        .await
    }

    async fn get_request(&self, id: i64) -> Result<Option<Request>> {
        self.one("get_request", "SELECT body FROM jitgate_requests WHERE id = $1", &id)
            .await
    }

    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<Request>> {
        self.with("list_requests", async |c| {
            let state = f.state.map(|s| s.as_str());
            let rows = c
                .query(
                    "SELECT body FROM jitgate_requests WHERE ($1::text IS NULL OR state = $1) \
                     AND ($2::text IS NULL OR requester = $2) ORDER BY id DESC LIMIT $3",
                    &[&state, &f.requester, &limit(f.limit)],
                )
                .await
                .map_err(backend)?;
            bodies(&rows)
        })
        .await
    }

    async fn pending_requests(&self) -> Result<(u64, Option<Request>)> {
        self.with("pending_requests", async |c| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM jitgate_requests WHERE state = 'pending'", &[])
                .await
                .map_err(backend)?
                .get(0);
            let rows = c
                .query(
                    "SELECT body FROM jitgate_requests WHERE state = 'pending' ORDER BY id LIMIT 1",
                    &[],
                )
                .await
                .map_err(backend)?;
            let oldest: Vec<Request> = bodies(&rows)?;
            Ok((u64::try_from(n).unwrap_or(0), oldest.into_iter().next()))
        })
        .await
    }

    async fn approve_with_grant(&self, r: &Request, g: &Grant) -> Result<(Request, Grant)> {
        self.write("approve_with_grant", async |tx| {
            let mut g = g.clone();
            if g.id == 0 {
                let row = tx
                    .query_one(
                        "INSERT INTO jitgate_grants (identity, resource, state, expires_at, body) VALUES ($1, $2, $3, $4, '{}') RETURNING id",
                        &[&g.identity, &g.resource, &g.state.as_str(), &ms(g.expires_at)],
                    )
                    .await
                    .map_err(backend)?;
                g.id = row.try_get(0).map_err(backend)?;
            }
            save_grant(tx, &g).await?;
            let mut r = r.clone();
            r.grant_id = Some(g.id);
            let r = save_request(tx, &r).await?;
            let id = g.id;
            Ok(((r, g), Some(Change::Grant { id })))
        })
        .await
    }

    async fn update_grant(&self, g: &Grant) -> Result<()> {
        self.write("update_grant", async |tx| {
            save_grant(tx, g).await?;
            Ok(((), Some(Change::Grant { id: g.id })))
        })
        .await
    }

    async fn get_grant(&self, id: i64) -> Result<Option<Grant>> {
        self.one("get_grant", "SELECT body FROM jitgate_grants WHERE id = $1", &id)
            .await
    }

    async fn list_grants(&self, f: &GrantFilter) -> Result<Vec<Grant>> {
        self.with("list_grants", async |c| {
            let state = f.state.map(|s| s.as_str());
            let live = f.live_at.map(ms);
            let rows = c
                .query(
                    "SELECT body FROM jitgate_grants WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR identity = $2) \
                     AND ($3::text IS NULL OR resource = $3) AND ($4::bigint IS NULL OR (state = 'active' AND expires_at > $4)) \
                     ORDER BY id DESC LIMIT $5",
                    &[&state, &f.identity, &f.resource, &live, &limit(f.limit)],
                )
                .await
                .map_err(backend)?;
            bodies(&rows)
        })
        .await
    }

    async fn session_started(&self, s: &SessionInfo) -> Result<()> {
        let node = self.inner.node.clone();
        self.with("session_started", async |c| {
            c.execute(
                "INSERT INTO jitgate_sessions (id, node, started_at, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET node = $2, started_at = $3, body = $4, ended_at = NULL, end_reason = NULL, kill_by = NULL",
                &[&s.id, &node, &ms(s.started_at), &to_json(s)?],
            )
            .await
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn session_ended(&self, id: &str, at: Timestamp, reason: &str) -> Result<()> {
        self.with("session_ended", async |c| {
            c.execute(
                "UPDATE jitgate_sessions SET ended_at = $1, end_reason = $2 WHERE id = $3",
                &[&ms(at), &reason, &id],
            )
            .await
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self, open_only: bool, limit: usize) -> Result<Vec<SessionRecord>> {
        self.with("list_sessions", async |c| {
            let lim = i64::try_from(limit).unwrap_or(1000);
            let rows = c
                .query(
                    "SELECT body, ended_at, end_reason, node FROM jitgate_sessions WHERE (NOT $1 OR ended_at IS NULL) \
                     ORDER BY started_at DESC LIMIT $2",
                    &[&open_only, &lim],
                )
                .await
                .map_err(backend)?;
            rows.iter().map(session_record).collect()
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.with("get_session", async |c| {
            let rows = c
                .query(
                    "SELECT body, ended_at, end_reason, node FROM jitgate_sessions WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(backend)?;
            rows.first().map(session_record).transpose()
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
        let node = self.inner.node.clone();
        self.with("end_open_sessions", async |c| {
            let n = c
                .execute(
                    "UPDATE jitgate_sessions SET ended_at = $1, end_reason = $2 \
                     WHERE node = $3 AND ended_at IS NULL AND NOT (id = ANY($4)) AND started_at < $5",
                    &[&ms(at), &reason, &node, &keep, &ms(started_before)],
                )
                .await
                .map_err(backend)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn request_kill(&self, id: &str, by: &str) -> Result<bool> {
        self.write("request_kill", async |tx| {
            let n = tx
                .execute(
                    "UPDATE jitgate_sessions SET kill_by = $1 WHERE id = $2 AND ended_at IS NULL",
                    &[&by, &id],
                )
                .await
                .map_err(backend)?;
            let change = Change::KillSession {
                id: id.to_string(),
                by: by.to_string(),
            };
            Ok((n > 0, (n > 0).then_some(change)))
        })
        .await
    }

    async fn kills_requested(&self) -> Result<Vec<(String, String)>> {
        let node = self.inner.node.clone();
        self.with("kills_requested", async |c| {
            let rows = c
                .query(
                    "SELECT id, kill_by FROM jitgate_sessions WHERE node = $1 AND ended_at IS NULL AND kill_by IS NOT NULL",
                    &[&node],
                )
                .await
                .map_err(backend)?;
            pairs(&rows)
        })
        .await
    }

    async fn create_token(&self, t: &MachineToken) -> Result<()> {
        self.with("create_token", async |c| {
            c.execute(
                "INSERT INTO jitgate_tokens (sha256, name, body) VALUES ($1, $2, $3)",
                &[&t.sha256, &t.name, &to_json(t)?],
            )
            .await
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<MachineToken>> {
        self.one(
            "token_by_hash",
            "SELECT body FROM jitgate_tokens WHERE sha256 = $1",
            &sha256,
        )
        .await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<()> {
        self.write("revoke_token", async |tx| {
            tx.execute(
                "INSERT INTO jitgate_revoked_tokens (jti, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (jti) DO UPDATE SET expires_at = $2",
                &[&jti, &expires_at],
            )
            .await
            .map_err(backend)?;
            let change = Change::TokenRevoked {
                jti: jti.to_string(),
                expires_at,
            };
            Ok(((), Some(change)))
        })
        .await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>> {
        self.with("revoked_tokens", async |c| {
            c.execute("DELETE FROM jitgate_revoked_tokens WHERE expires_at <= $1", &[&now])
                .await
                .map_err(backend)?;
            let rows = c
                .query("SELECT jti, expires_at FROM jitgate_revoked_tokens", &[])
                .await
                .map_err(backend)?;
            pairs(&rows)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        if !self.feed_connected() {
            return Err(StoreError::Backend("the change feed (LISTEN) is disconnected".into()));
        }
        self.with("health", async |c| {
            c.simple_query("SELECT 1").await.map_err(backend)?;
            Ok(())
        })
        .await
    }

    fn changes(&self) -> Option<broadcast::Receiver<Feed>> {
        Some(self.inner.feed.subscribe())
    }

    async fn register_node(&self, keys: &str) -> Result<Vec<(String, String)>> {
        let node = self.inner.node.clone();
        self.with("register_node", async |c| {
            c.execute(
                "INSERT INTO jitgate_nodes (node, keys, started_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (node) DO UPDATE SET keys = $2, started_at = $3",
                &[&node, &keys, &now_ms()],
            )
            .await
            .map_err(backend)?;
            let month_ago = now_ms() - 30 * 24 * 3600 * 1000;
            let rows = c
                .query(
                    "SELECT node, keys FROM jitgate_nodes WHERE node <> $1 AND started_at > $2 ORDER BY started_at DESC",
                    &[&node, &month_ago],
                )
                .await
                .map_err(backend)?;
            pairs(&rows)
        })
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    fn feed_connected(&self) -> bool {
        self.inner.feed_up.load(Ordering::SeqCst)
    }

    async fn clock_skew_ms(&self) -> Result<i64> {
        self.with("clock", async |c| {
            let before = now_ms();
            let row = c
                .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[])
                .await
                .map_err(backend)?;
            let after = now_ms();
            let theirs: i64 = row.try_get(0).map_err(backend)?;
            Ok(theirs - (before + after) / 2)
        })
        .await
    }
}

#[async_trait]
impl AuditIndex for PgStore {
    async fn index(&self, events: &[Indexed]) -> std::result::Result<(), String> {
        let me = self.clone();
        let events = events.to_vec();
        self.on_runtime(async move {
            let node = me.inner.node.clone();
            let mut seqs = Vec::with_capacity(events.len());
            let mut times = Vec::with_capacity(events.len());
            let mut kinds = Vec::with_capacity(events.len());
            let mut actors = Vec::with_capacity(events.len());
            let mut resources = Vec::with_capacity(events.len());
            let mut grants = Vec::with_capacity(events.len());
            let mut sessions = Vec::with_capacity(events.len());
            let mut body = Vec::with_capacity(events.len());
            for Indexed { head: e, line, .. } in events {
                seqs.push(i64::try_from(e.seq).unwrap_or(i64::MAX));
                times.push(ms(e.time));
                kinds.push(e.kind.into_owned());
                actors.push(e.actor.as_deref().map(str::to_owned));
                resources.push(e.resource.as_deref().map(str::to_owned));
                grants.push(e.grant_id);
                sessions.push(e.session_id.as_deref().map(str::to_owned));
                body.push(line);
            }
            me.with("audit_index", async |c| {
                c.execute(
                    "INSERT INTO jitgate_audit_events (node, seq, time, kind, actor, resource, grant_id, session_id, body) \
                     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[]) \
                     ON CONFLICT (node, seq) DO UPDATE SET time = EXCLUDED.time, kind = EXCLUDED.kind, actor = EXCLUDED.actor, \
                     resource = EXCLUDED.resource, grant_id = EXCLUDED.grant_id, session_id = EXCLUDED.session_id, body = EXCLUDED.body",
                    &[&node, &seqs, &times, &kinds, &actors, &resources, &grants, &sessions, &body],
                )
                .await
                .map_err(backend)?;
                Ok(())
            })
            .await
        })
        .await
    }

    async fn max_seq(&self) -> std::result::Result<u64, String> {
        let me = self.clone();
        self.on_runtime(async move {
            let node = me.inner.node.clone();
            me.with("audit_max_seq", async |c| {
                let row = c
                    .query_one("SELECT max(seq) FROM jitgate_audit_events WHERE node = $1", &[&node])
                    .await
                    .map_err(backend)?;
                let n: Option<i64> = row.try_get(0).map_err(backend)?;
                Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
            })
            .await
        })
        .await
    }

    async fn search(&self, q: &Query) -> std::result::Result<Vec<Event>, String> {
        let q = q.clone();
        let me = self.clone();
        self.on_runtime(async move {
            me.with("audit_search", async |c| {
                // Coarse filters in SQL, exact ones in Rust; rows come through a portal a page
                // at a time so a broad search stops reading once it has `limit` matches.
                let tx = c.transaction().await.map_err(backend)?;
                let st = tx
                    .prepare(
                        "SELECT body FROM jitgate_audit_events WHERE ($1::bigint IS NULL OR time >= $1) \
                         AND ($2::bigint IS NULL OR time <= $2) AND ($3::text IS NULL OR resource = $3) \
                         AND ($4::text IS NULL OR session_id = $4) AND ($5::bigint IS NULL OR grant_id = $5) \
                         ORDER BY time DESC, node DESC, seq DESC",
                    )
                    .await
                    .map_err(backend)?;
                let (since, until) = (q.since.map(ms), q.until.map(ms));
                let portal = tx
                    .bind(&st, &[&since, &until, &q.resource, &q.session, &q.grant])
                    .await
                    .map_err(backend)?;
                let limit = q.limit.unwrap_or(1000);
                let mut out = Vec::new();
                'pages: loop {
                    let rows = tx.query_portal(&portal, 1000).await.map_err(backend)?;
                    if rows.is_empty() {
                        break;
                    }
                    for row in &rows {
                        let e: Event = from_json(&row.try_get::<_, String>(0).map_err(backend)?)?;
                        if q.matches(&e) {
                            out.push(e);
                            if out.len() >= limit {
                                break 'pages;
                            }
                        }
                    }
                }
                out.reverse();
                Ok(out)
            })
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_a_log_line() {
        assert_eq!(
            redact("postgres://jitgate:s3cret@db.internal:5432/jitgate?sslmode=disable"),
            "postgres://jitgate:***@db.internal:5432/jitgate?sslmode=disable"
        );
        assert_eq!(
            redact("host=db user=jitgate password=s3cret dbname=jitgate"),
            "host=db user=jitgate password=*** dbname=jitgate"
        );
        assert_eq!(redact("postgres://db/jitgate"), "postgres://db/jitgate");
    }
}
