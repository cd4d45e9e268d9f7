//! Names of fast-path functions (the `FunctionCall` message, e.g. libpq's large-object API) for
//! the audit: the message carries only the function's OID, so the gateway asks the server what
//! that OID is, on a short side connection with the session's own credential, and caches the
//! answer per resource and database.
//!
//! The lookup is bounded every way a hostile client could use it: one at most
//! [`LOOKUP_TIMEOUT`], [`CONCURRENT`] side connections at once for the whole gateway,
//! [`PER_SESSION`] distinct lookups per session (then the audit carries the OID alone), and a
//! cache of at most [`CACHE_ENTRIES`] server answers (unknown OIDs included; failures to ask are
//! not cached), each trusted for [`CACHE_TTL`]. Read-only sessions do not look up: their
//! FunctionCall is refused, and the OID is what they asked for. A function created in
//! the session's own uncommitted transaction is invisible to the side connection; its OID is
//! still recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::AsyncWriteExt;

use crate::scram::SaltCache;
use crate::upstream::{self, Target};

/// Longest a lookup may take before the audit goes ahead with the OID alone.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Side connections open at once for lookups, gateway-wide.
pub const CONCURRENT: usize = 4;
/// Distinct OIDs one session may have looked up.
pub const PER_SESSION: u32 = 32;
/// Cached answers (the cache is emptied when full).
pub const CACHE_ENTRIES: usize = 10_000;
/// How long an answer is trusted (a function can be renamed or dropped).
pub const CACHE_TTL: Duration = Duration::from_secs(600);

/// What the server said an OID is (`None`: it does not know it), and when.
type Answer = (Option<Arc<str>>, std::time::Instant);

/// The gateway-wide cache and connection budget.
#[derive(Debug)]
pub struct FunctionNames {
    /// Answers from the server and when they came.
    cache: DashMap<(Arc<str>, u32), Answer>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Default for FunctionNames {
    fn default() -> Self {
        Self {
            cache: DashMap::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT)),
        }
    }
}

/// One session's resolver: where and as whom to look.
pub struct Resolver {
    /// The gateway-wide cache.
    pub names: Arc<FunctionNames>,
    /// `resource/database`: OIDs are per database.
    pub scope: Arc<str>,
    /// The upstream.
    pub target: Target,
    /// The session's upstream role.
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// The session's database.
    pub database: Option<String>,
    /// SCRAM salted-password cache.
    pub salts: SaltCache,
    /// Lookups this session may still start.
    pub left: AtomicU32,
}

impl Resolver {
    /// The function's `regprocedure` form (`lo_open(oid,integer)`), or `None` when unknown,
    /// over budget or slow.
    pub async fn name(&self, oid: u32) -> Option<Arc<str>> {
        let key = (self.scope.clone(), oid);
        if let Some(hit) = self.names.cache.get(&key)
            && hit.1.elapsed() < CACHE_TTL
        {
            return hit.0.clone();
        }
        if self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return None;
        }
        // Only the server's answers are cached: a failure to ask (too many connections, a
        // timeout) must not cost other sessions their names.
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(oid)).await.ok()??;
        if self.names.cache.len() >= CACHE_ENTRIES {
            self.names.cache.clear();
        }
        self.names.cache.insert(key, (found.clone(), std::time::Instant::now()));
        found
    }

    /// `Some(answer)` when the server answered (`Some(None)`: no such function), `None` when it
    /// could not be asked.
    async fn lookup(&self, oid: u32) -> Option<Option<Arc<str>>> {
        let _permit = self.names.permits.clone().acquire_owned().await.ok()?;
        let params = [
            ("client_encoding".to_string(), "UTF8".to_string()),
            ("application_name".to_string(), "jitgate audit lookup".to_string()),
        ];
        let mut up = upstream::connect(
            &self.target,
            &self.user,
            self.password.as_deref(),
            self.database.as_deref(),
            &params,
            &self.salts,
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, "fast-path function name lookup: connect failed"))
        .ok()?;
        let row = upstream::query_row(&mut up, &format!("SELECT {oid}::oid::regprocedure::text")).await;
        let mut x = bytes::BytesMut::new();
        crate::protocol::message(&mut x, b'X', &[]);
        let _ = up.io.write_all(&x).await;
        let _ = up.io.shutdown().await;
        let name = row.ok()?.into_iter().next().flatten()?;
        // An OID the server does not know comes back as the number itself.
        Some((name != oid.to_string()).then(|| name.into()))
    }
}
