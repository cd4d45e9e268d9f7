//! The control plane: the one place where lifecycle decisions become durable facts.
//!
//! Every mutation follows the same order: decide with the pure engine → persist in the store →
//! change the live state (grant cache, kill switches) → write the audit event durably → answer.
//! Mutations of requests are serialised in-process by a mutex and across replicas by the
//! store's version check.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use jitgate_audit::{AuditSink, Event, Kind, Query};
use jitgate_core::engine::{self, NewRequest, Refusal};
use jitgate_core::{
    AuthFailure, Catalog, Enforcer, Grant, GrantState, HumanDuration, KillReason, LiveEvent, LiveGrant, Metrics,
    Principal, Request, RequestState, SessionInfo, SharedClock,
};
use jitgate_store::{GrantFilter, MachineToken, RequestFilter, Store};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

pub use error::{ControlError, ControlResult};

/// `Ok(None)` for a version conflict (someone else changed the record first).
fn ignore_conflict<T>(r: jitgate_store::Result<T>) -> ControlResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(jitgate_store::StoreError::Conflict) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The control plane service shared by the API and the protocol front ends.
pub struct ControlPlane {
    catalog: ArcSwap<Catalog>,
    store: Arc<dyn Store>,
    audit: AuditSink,
    enforcer: Arc<Enforcer>,
    metrics: Metrics,
    clock: SharedClock,
    request_lock: Mutex<()>,
    frontends: std::sync::RwLock<serde_json::Value>,
    cert_signer: Option<CertSigner>,
    pub(crate) login: Option<Login>,
    /// When each (identity, resource) was last read from the store on a cache miss.
    grant_reads: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
    /// Store reads on cache misses running at once.
    grant_read_permits: tokio::sync::Semaphore,
    /// Where a stop's drain stands.
    draining: Drain,
    /// Bumped by every audited change (requests, grants) here and by the store's change feed
    /// (other replicas): what a long-polling `GET /v1/requests/{id}?wait=` sleeps on.
    changes: tokio::sync::watch::Sender<u64>,
    /// Long polls held at once; beyond [`requests::MAX_LONG_POLLS`] they answer at once.
    long_polls: tokio::sync::Semaphore,
    /// The groups each provider identity had at its latest login, until that token expires:
    /// who a chat approver is when they act without a gateway token (Slack buttons).
    known_groups: std::sync::Mutex<std::collections::HashMap<String, KnownLogin>>,
    /// When break-glass reviews were last counted (every 5 s, by the clock).
    review_sweep: std::sync::Mutex<Option<Timestamp>>,
    /// What the `[[oncall]]` sources said last.
    oncall: std::sync::Mutex<oncall::OnCallState>,
}

/// A provider identity's latest login: its groups, its token's id and expiry.
#[derive(Debug, Clone)]
pub(crate) struct KnownLogin {
    groups: Vec<String>,
    jti: String,
    exp: i64,
}

/// The phases of a drain before a stop: `/readyz` goes 503 first (load balancers look
/// elsewhere), new sessions are refused next, live ones go on until the drain ends.
#[derive(Debug, Default)]
pub struct Drain {
    unready: std::sync::atomic::AtomicBool,
    refusing: std::sync::atomic::AtomicBool,
    /// A stop (SIGTERM) began, not an admin's `jitgate drain`: long polls answer at once.
    stopping: std::sync::atomic::AtomicBool,
}

impl Drain {
    /// Whether `/readyz` should say 503.
    pub fn unready(&self) -> bool {
        self.unready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether new sessions are refused.
    pub fn refusing(&self) -> bool {
        self.refusing.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The control plane's parts, gathered before it starts.
pub struct Builder {
    catalog: Catalog,
    store: Arc<dyn Store>,
    audit: AuditSink,
    enforcer: Arc<Enforcer>,
    metrics: Metrics,
    login: Option<Login>,
    cert_signer: Option<CertSigner>,
}

impl Builder {
    /// Gateway tokens and the OIDC relying party.
    pub fn login(mut self, l: Login) -> Self {
        self.login = Some(l);
        self
    }

    /// The SSH user certificate signer (when the SSH front end runs).
    pub fn cert_signer(mut self, s: CertSigner) -> Self {
        self.cert_signer = Some(s);
        self
    }

    /// The control plane.
    pub fn build(self) -> Arc<ControlPlane> {
        let clock = self.enforcer.clock().clone();
        Arc::new(ControlPlane {
            catalog: ArcSwap::from_pointee(self.catalog),
            store: self.store,
            audit: self.audit,
            enforcer: self.enforcer,
            metrics: self.metrics,
            clock,
            request_lock: Mutex::new(()),
            frontends: std::sync::RwLock::new(serde_json::json!({})),
            cert_signer: self.cert_signer,
            login: self.login,
            grant_reads: std::sync::Mutex::default(),
            grant_read_permits: tokio::sync::Semaphore::new(2),
            draining: Drain::default(),
            changes: tokio::sync::watch::Sender::new(0),
            long_polls: tokio::sync::Semaphore::new(requests::MAX_LONG_POLLS),
            known_groups: std::sync::Mutex::default(),
            review_sweep: std::sync::Mutex::default(),
            oncall: std::sync::Mutex::default(),
        })
    }
}

/// Signs an OpenSSH user certificate for a principal's public key (the SSH front end's user CA):
/// returns the certificate line and its `valid_before` (unix seconds), or a message for the caller.
/// The last argument binds the certificate to a login token (its id and expiry): the certificate
/// expires with the token and dies with it on logout.
pub type CertSigner = Arc<dyn Fn(&Principal, &str, Option<(&str, i64)>) -> Result<(String, u64), String> + Send + Sync>;

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlPlane")
    }
}

pub mod break_glass;
pub mod console;
mod error;
mod feed;
pub(crate) mod identity;
mod lifetime;
mod oncall;
mod onconnect;
mod requests;
mod sessions;
mod tasks;
mod tickets;
mod views;

pub use crate::wire::{LoginResult, MintedToken, ResourceView, WhoAmI};
pub use identity::{Login, Provider as OidcProvider};

impl ControlPlane {
    /// The control plane with no login services and no SSH signer (tests, tools); the gateway
    /// uses [`ControlPlane::builder`].
    pub fn new(
        catalog: Catalog,
        store: Arc<dyn Store>,
        audit: AuditSink,
        enforcer: Arc<Enforcer>,
        metrics: Metrics,
    ) -> Arc<Self> {
        Self::builder(catalog, store, audit, enforcer, metrics).build()
    }

    /// Start assembling the control plane from its required parts; optional ones are added
    /// before [`Builder::build`], never after (nothing is attached to a running control plane).
    pub fn builder(
        catalog: Catalog,
        store: Arc<dyn Store>,
        audit: AuditSink,
        enforcer: Arc<Enforcer>,
        metrics: Metrics,
    ) -> Builder {
        Builder {
            catalog,
            store,
            audit,
            enforcer,
            metrics,
            login: None,
            cert_signer: None,
        }
    }

    /// Gauges computed at scrape time: audit queue depth, pending requests and the oldest one.
    pub async fn refresh_gauges(&self) {
        let m = self.metrics();
        m.store_up.set(i64::from(self.store.health().await.is_ok()));
        m.audit_queue_depth
            .set(i64::try_from(self.audit().queue_len()).unwrap_or(i64::MAX));
        if let Ok((count, oldest)) = self.store().pending_requests().await {
            m.requests_pending.set(i64::try_from(count).unwrap_or(i64::MAX));
            let age = oldest.map_or(0.0, |r| self.now().duration_since(r.created_at).as_secs_f64().max(0.0));
            m.requests_pending_oldest_seconds.set(age);
        }
    }

    /// Write `ev` durably (webhooks receive it from the audit sink once it is in the file).
    async fn record(&self, ev: Event) -> Result<u64, jitgate_audit::AuditError> {
        let wakes = ev.kind.starts_with("request.") || ev.kind.starts_with("grant.");
        let r = self.audit.record(ev).await;
        if wakes {
            self.changed();
        }
        r
    }

    /// Wake whoever waits for a change (long polls).
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Record where the protocol front ends listen (for `GET /v1/info` and `jitgate connect`).
    pub fn set_frontends(&self, v: serde_json::Value) {
        *self.frontends.write().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Where the protocol front ends listen.
    pub fn frontends(&self) -> serde_json::Value {
        self.frontends.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// The enforcer (grant cache + sessions).
    pub fn enforcer(&self) -> &Arc<Enforcer> {
        &self.enforcer
    }

    /// The audit sink.
    pub fn audit(&self) -> &AuditSink {
        &self.audit
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where a drain stands.
    pub fn drain(&self) -> &Drain {
        &self.draining
    }

    /// A stop begins: `/readyz` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.draining.unready.store(true, std::sync::atomic::Ordering::SeqCst);
        self.draining.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed();
    }

    /// `jitgate drain` (admins): `/readyz` 503 and new sessions refused now, live ones go on,
    /// until undone (`draining = false`). Audited as `gateway.drain`; returns the live
    /// sessions on this gateway.
    pub async fn set_drain(&self, who: &Principal, draining: bool) -> ControlResult<usize> {
        if !self.catalog().is_admin(&who.groups) {
            return Err(ControlError::forbidden("only admins may drain a gateway", None));
        }
        let sessions = self.enforcer.sessions.len();
        self.record(
            Event::new(Kind::GatewayDrain, self.now())
                .actor(&who.name)
                .detail(jitgate_audit::details::Drain { draining, sessions }),
        )
        .await?;
        self.draining
            .unready
            .store(draining, std::sync::atomic::Ordering::SeqCst);
        self.draining
            .refusing
            .store(draining, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(by = %who.name, draining, sessions, "drain set by an admin");
        Ok(sessions)
    }

    /// New sessions are refused from now on ("shutting down"); live ones go on.
    pub fn refuse_new_sessions(&self) {
        self.draining.unready.store(true, std::sync::atomic::Ordering::SeqCst);
        self.draining.refusing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Now, by the injected clock: every lifecycle decision reads time here (tests use
    /// `ManualClock`).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn count(&self, s: RequestState) {
        self.metrics.requests_total.with_label_values(&[s.as_str()]).inc();
    }
}

impl jitgate_core::Gatekeeper for ControlPlane {
    async fn authenticate(&self, token: &str) -> Result<Principal, AuthFailure> {
        ControlPlane::authenticate(self, token).await
    }

    fn token_revoked(&self, token_id: &str) -> bool {
        self.login.as_ref().is_some_and(|l| l.tokens.is_revoked(token_id))
    }

    async fn refresh_grants(&self, identity: &str, resource: &str) -> Result<(), String> {
        ControlPlane::refresh_grants(self, identity, resource).await
    }

    async fn ask(
        &self,
        who: &Principal,
        new: NewRequest,
    ) -> Result<(jitgate_core::onconnect::Asked, bool), jitgate_core::onconnect::AskError> {
        Ok(self.ask_on_connect(who, new).await?)
    }

    async fn asked(
        &self,
        who: &Principal,
        id: i64,
        version: i64,
        wait: std::time::Duration,
    ) -> Result<jitgate_core::onconnect::Asked, jitgate_core::onconnect::AskError> {
        Ok(self.asked_on_connect(who, id, version, wait).await?)
    }

    async fn withdraw(&self, who: &Principal, id: i64) {
        self.withdraw_on_connect(who, id).await;
    }

    fn request_link(&self, id: i64) -> Option<String> {
        self.catalog()
            .console_url
            .as_ref()
            .map(|u| format!("{u}/ui/requests/{id}"))
    }

    fn catalog(&self) -> Arc<Catalog> {
        ControlPlane::catalog(self)
    }

    fn enforcer(&self) -> &Arc<Enforcer> {
        ControlPlane::enforcer(self)
    }

    fn metrics(&self) -> &Metrics {
        ControlPlane::metrics(self)
    }

    async fn session_started(&self, s: &SessionInfo) -> Result<(), jitgate_core::SessionRefused> {
        ControlPlane::session_started(self, s).await
    }

    async fn session_ended(&self, s: &SessionInfo, outcome: &str, reason: &str, upstream_end: Option<&str>) {
        ControlPlane::session_ended(self, s, outcome, reason, upstream_end).await;
    }
}

#[cfg(test)]
mod lifecycle_tests;
