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

mod audit_index;
mod feed;
mod records;
mod schema;

use feed::listen_forever;
use schema::{MIGRATION_LOCK, MIGRATIONS};

use crate::pgtls::MakeRustls;
use crate::{Change, Feed, GrantFilter, MachineToken, RequestFilter, Result, SessionRecord, Store, StoreError};

/// The NOTIFY channel.
const CHANNEL: &str = "jitgate_changes";
/// Longest a store call may take before it fails (the caller gets "store unavailable").
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the LISTEN connection proves it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

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
        let skew = crate::Replication::clock_skew_ms(&me).await?;
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
