//! # jitgate-store
//!
//! The [`Store`] trait is everything the control plane persists: requests (with their approvals),
//! grants, sessions, machine tokens, and the audit index. [`SqliteStore`] is the embedded,
//! zero-setup default in `data_dir`.
//!
//! The trait is shaped for several replicas on a shared PostgreSQL store: request updates are
//! compare-and-swap on a version (two approvers racing on two replicas cannot both win), the
//! approval that opens a grant is one transaction, and [`Store::changes`] is the hook for a
//! LISTEN/NOTIFY change feed. SQLite serves one process, so its feed is `None`.

mod sqlite;

use async_trait::async_trait;
use jiff::Timestamp;
use jitgate_audit::AuditIndex;
use jitgate_core::{Grant, GrantState, Request, RequestState, SessionInfo};
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
    /// Why.
    pub end_reason: Option<String>,
}

/// A machine token minted with `jitgate token create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineToken {
    /// Identity name.
    pub name: String,
    /// Hex SHA-256 of the token (the token itself is never stored).
    pub sha256: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Minted.
    pub created_at: Timestamp,
    /// By whom.
    pub created_by: String,
}

/// A change another replica made (for the PostgreSQL change feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A grant was created, extended or ended.
    Grant(i64),
    /// A request changed.
    Request(i64),
    /// A session should be killed.
    KillSession(String),
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
    /// Sessions, newest first (`open_only`: not ended).
    async fn list_sessions(&self, open_only: bool, limit: usize) -> Result<Vec<SessionRecord>>;
    /// Store a machine token.
    async fn create_token(&self, t: &MachineToken) -> Result<()>;
    /// The machine token with this hash.
    async fn token_by_hash(&self, sha256: &str) -> Result<Option<MachineToken>>;
    /// Cheap liveness check (for `/readyz`).
    async fn health(&self) -> Result<()>;
    /// Changes made by other replicas (`None`: this store serves one process).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }
}
