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
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ApiResult};

/// `Ok(None)` for a version conflict (someone else changed the record first).
fn ignore_conflict<T>(r: jitgate_store::Result<T>) -> ApiResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(jitgate_store::StoreError::Conflict) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How often a replica on a shared store re-reads the live state even when the feed is quiet.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

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
    cert_signer: std::sync::OnceLock<CertSigner>,
    pub(crate) login: std::sync::OnceLock<crate::login::Login>,
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

/// What `whoami` returns.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    /// The caller.
    #[serde(flatten)]
    pub principal: Principal,
    /// Admin?
    pub admin: bool,
    /// Live grants held.
    pub grants: Vec<LiveGrant>,
}

/// A newly minted machine token (shown once).
#[derive(Debug, Serialize)]
pub struct MintedToken {
    /// Identity name.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// Its hash, for `token_sha256` in gateway.toml.
    pub sha256: String,
}

/// A resource as listed to users.
#[derive(Debug, Serialize)]
pub struct ResourceView {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Access levels the caller may request.
    pub access: Vec<String>,
    /// The policy that covers the caller.
    pub policy: Option<String>,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ControlPlane {
    /// Assemble the control plane.
    pub fn new(
        catalog: Catalog,
        store: Arc<dyn Store>,
        audit: AuditSink,
        enforcer: Arc<Enforcer>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let clock = enforcer.clock().clone();
        Arc::new(Self {
            catalog: ArcSwap::from_pointee(catalog),
            store,
            audit,
            enforcer,
            metrics,
            clock,
            request_lock: Mutex::new(()),
            frontends: std::sync::RwLock::new(serde_json::json!({})),
            cert_signer: std::sync::OnceLock::new(),
            login: std::sync::OnceLock::new(),
        })
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

    /// Attach gateway tokens and the OIDC relying party (once, at start-up).
    pub fn set_login(&self, l: crate::login::Login) {
        let _ = self.login.set(l);
    }

    /// Attach the SSH user certificate signer (once, at start-up, when SSH is enabled).
    pub fn set_cert_signer(&self, s: CertSigner) {
        let _ = self.cert_signer.set(s);
    }

    /// Sign an SSH user certificate for `who` and audit it.
    pub async fn sign_ssh_cert(
        &self,
        who: &Principal,
        public_key: &str,
        bearer: Option<&str>,
    ) -> Result<(String, u64), ApiError> {
        let token = match (bearer, self.login.get()) {
            (Some(t), Some(l)) if jitgate_auth::is_gateway_token(t) => l
                .tokens
                .keys
                .verify(t, jiff::Timestamp::now().as_second())
                .ok()
                .map(|c| (c.jti, c.exp)),
            _ => None,
        };
        let Some(signer) = self.cert_signer.get() else {
            return Err(ApiError::bad_request(
                "this gateway has no SSH front end",
                Some("operators: set [listen] ssh in gateway.toml".into()),
            ));
        };
        let (cert, valid_before) =
            signer(who, public_key, token.as_ref().map(|(j, e)| (j.as_str(), *e))).map_err(|e| {
                ApiError::bad_request(e, Some("send an OpenSSH public key line (ssh-ed25519 AAAA...)".into()))
            })?;
        let ev = Event::new(Kind::SshCertIssued, jiff::Timestamp::now())
            .actor(&who.name)
            .details(serde_json::json!({"valid_before": valid_before, "key": public_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")}));
        self.record(ev).await?;
        Ok((cert, valid_before))
    }

    /// Write `ev` durably (webhooks receive it from the audit sink once it is in the file).
    async fn record(&self, ev: Event) -> Result<u64, jitgate_audit::AuditError> {
        self.audit.record(ev).await
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

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn count(&self, s: RequestState) {
        self.metrics.requests_total.with_label_values(&[s.as_str()]).inc();
    }

    // ---------------------------------------------------------------- start-up, reload, tasks

    /// Load live grants from the store into the cache; close what ended while the gateway was
    /// down (expired grants are marked expired and audited, never resurrected).
    pub async fn restore(&self) -> ApiResult<usize> {
        let now = self.now();
        let active = self.active_grants().await?;
        let mut live = 0;
        for mut g in active {
            if g.is_live(now) {
                self.enforcer.activate(LiveGrant::from(&g));
                live += 1;
            } else {
                g.state = GrantState::Expired;
                g.ended_at = Some(g.expires_at);
                g.ended_by = Some("gateway".into());
                self.store.update_grant(&g).await?;
                self.record(
                    Event::new(Kind::GrantExpired, now)
                        .actor("gateway")
                        .resource(&g.resource)
                        .grant(g.id)
                        .request(g.request_id)
                        .details(
                            serde_json::json!({"identity": g.identity, "expires_at": g.expires_at, "while_down": true}),
                        ),
                )
                .await?;
            }
        }
        self.store
            .end_open_sessions(now, "gateway restarted", &[], Timestamp::MAX)
            .await?;
        Ok(live)
    }

    /// Swap in a new catalog (SIGHUP).
    pub async fn reload(&self, catalog: Catalog) -> ApiResult<()> {
        let summary = serde_json::json!({"resources": catalog.resources.len(), "policies": catalog.policies.len(), "identities": catalog.identities.len()});
        self.enforcer.set_warning_lead(catalog.expiry_warning.secs());
        self.catalog.store(Arc::new(catalog));
        self.metrics.config_reloads_total.with_label_values(&["ok"]).inc();
        self.record(
            Event::new(Kind::ConfigReloaded, self.now())
                .actor("gateway")
                .details(summary),
        )
        .await?;
        Ok(())
    }

    /// Record a refused reload.
    pub async fn reload_failed(&self, why: &str) {
        self.metrics.config_reloads_total.with_label_values(&["error"]).inc();
        let _ = self
            .audit
            .record(
                Event::new(Kind::ConfigReloadFailed, self.now())
                    .actor("gateway")
                    .reason(Some(why)),
            )
            .await;
    }

    /// Run the expiry scheduler and the pending-request sweeper until `stop`.
    pub fn spawn_tasks(self: &Arc<Self>, stop: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(1024);
        tokio::spawn(self.enforcer.clone().run(tx, stop.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Err(e) = me.on_live_event(ev).await {
                    tracing::error!(error = %e.error, "could not persist an expiry");
                }
            }
        });
        if self.store.shared() {
            tokio::spawn(self.clone().follow_changes(stop.clone()));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                if let Err(e) = me.sweep_pending().await {
                    tracing::warn!(error = %e.error, "pending-request sweep failed");
                }
            }
        });
    }

    /// Do at once what the background tasks do on their own: end and warn the grants due at
    /// the clock's instant, then expire or escalate undecided requests. With a manual clock this
    /// drives the whole lifecycle without sleeping (the in-process tests).
    pub async fn tick(&self) -> ApiResult<()> {
        for ev in self.enforcer.due(self.now()) {
            self.on_live_event(ev).await?;
        }
        self.sweep_pending().await
    }

    async fn on_live_event(&self, ev: LiveEvent) -> ApiResult<()> {
        let now = self.now();
        match ev {
            LiveEvent::Expired { grant, sessions } => {
                // The kill already happened (the scheduler runs from the cache). A store outage
                // only delays marking the grant expired there: the next resync does it.
                if let Err(e) = self.mark_expired(grant.id, now).await {
                    tracing::warn!(error = %e.error, grant_id = grant.id, "could not mark the grant expired in the store; the next resync will");
                }
                tracing::info!(grant_id = grant.id, identity = %grant.identity, resource = %grant.resource, sessions, "grant expired");
                self
                    .record(Event::new(Kind::GrantExpired, now).actor("gateway").resource(&grant.resource).grant(grant.id)
                        .details(serde_json::json!({"identity": grant.identity, "access": grant.access, "expires_at": grant.expires_at, "sessions_killed": sessions})))
                    .await?;
            }
            LiveEvent::Expiring { grant } => {
                self.record(
                    Event::new(Kind::GrantExpiring, now)
                        .actor("gateway")
                        .resource(&grant.resource)
                        .grant(grant.id)
                        .details(serde_json::json!({"identity": grant.identity, "expires_at": grant.expires_at})),
                )
                .await?;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- replicas (shared store)

    /// Apply other replicas' changes from the store's feed, and re-read the whole live state
    /// when notices may have been missed (feed reconnected, receiver lagged) and every
    /// [`RESYNC_EVERY`] as a safety net.
    async fn follow_changes(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.store.changes() else { return };
        let mut periodic = tokio::time::interval(RESYNC_EVERY);
        periodic.tick().await;
        loop {
            let item = tokio::select! {
                () = stop.cancelled() => return,
                _ = periodic.tick() => Ok(jitgate_store::Feed {
                    change: jitgate_store::Change::Resync { reason: "periodic".into() },
                    origin: String::new(),
                    sent_ms: 0,
                }),
                r = rx.recv() => r,
            };
            let feed = match item {
                Ok(f) => f,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the change feed outran this replica; resynchronising");
                    jitgate_store::Feed {
                        change: jitgate_store::Change::Resync {
                            reason: "lagged".into(),
                        },
                        origin: String::new(),
                        sent_ms: 0,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if feed.sent_ms > 0 {
                let lag = (Timestamp::now().as_millisecond() - feed.sent_ms).max(0);
                self.metrics.store_feed_lag_seconds.observe(lag as f64 / 1000.0);
            }
            if let Err(e) = self.apply_change(feed.change, &feed.origin).await {
                // The state may now be stale: re-read it as soon as the store answers.
                tracing::warn!(error = %e.error, "could not apply a change from another replica; resynchronising");
                let mut delay = std::time::Duration::from_millis(200);
                loop {
                    match self.resync("retry").await {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(error = %e.error, "resync failed; retrying"),
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }

    async fn apply_change(&self, change: jitgate_store::Change, origin: &str) -> ApiResult<()> {
        use jitgate_store::Change;
        match change {
            Change::Grant { id } => {
                if let Some(g) = self.store.get_grant(id).await? {
                    tracing::debug!(grant_id = id, state = %g.state.as_str(), origin, "grant changed on another replica");
                    self.apply_grant(&g);
                }
            }
            Change::KillSession { id, by } => {
                if self
                    .enforcer
                    .sessions
                    .kill(&id, &KillReason::Killed { by: by.clone() })
                    .is_some()
                {
                    self.metrics.sessions_killed_total.with_label_values(&["killed"]).inc();
                    tracing::info!(session_id = %id, by = %by, origin, "session killed at another replica's request");
                }
            }
            Change::TokenRevoked { jti, expires_at } => {
                if let Some(l) = self.login.get() {
                    l.tokens.revoke(&jti, expires_at, Timestamp::now().as_second());
                }
            }
            Change::Request { .. } => {}
            Change::Resync { reason } => self.resync(&reason).await?,
        }
        Ok(())
    }

    /// Bring one grant's live state in line with the store's record.
    fn apply_grant(&self, g: &Grant) {
        let now = self.now();
        if g.is_live(now) {
            let cached = self.enforcer.grants.get(g.id);
            if cached.is_none_or(|c| c.expires_at != g.expires_at) {
                self.enforcer.activate(LiveGrant::from(g));
            }
            return;
        }
        if self.enforcer.grants.get(g.id).is_none() {
            return;
        }
        let reason = match g.state {
            GrantState::Revoked => KillReason::Revoked {
                by: g.ended_by.clone().unwrap_or_else(|| "another replica".into()),
            },
            GrantState::Released => KillReason::Released,
            _ => KillReason::Expired { at: g.expires_at },
        };
        let (_, n) = self.enforcer.end(g.id, &reason);
        tracing::info!(grant_id = g.id, state = %g.state.as_str(), sessions = n, "grant ended on another replica; its sessions here are closed");
    }

    /// Read one holder's live grants on one resource from a shared store into the cache (the
    /// front ends call this on a cache miss, before refusing). A single-process store has no
    /// other writer, so its cache is already complete.
    pub async fn refresh_grants(&self, identity: &str, resource: &str) {
        if !self.store.shared() {
            return;
        }
        let now = self.now();
        let filter = GrantFilter {
            state: Some(GrantState::Active),
            identity: Some(identity.to_string()),
            resource: Some(resource.to_string()),
            live_at: Some(now),
            limit: Some(100),
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.store.list_grants(&filter)).await {
            Ok(Ok(grants)) => {
                for g in &grants {
                    self.apply_grant(g);
                }
                let result = if grants.is_empty() { "none" } else { "found" };
                self.metrics.store_grant_reads_total.with_label_values(&[result]).inc();
                if !grants.is_empty() {
                    tracing::info!(
                        identity,
                        resource,
                        grants = grants.len(),
                        "grant read from the store ahead of its change notice"
                    );
                }
            }
            Ok(Err(e)) => {
                self.metrics.store_grant_reads_total.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, identity, resource, "could not read grants from the store; refusing");
            }
            Err(_) => {
                self.metrics.store_grant_reads_total.with_label_values(&["error"]).inc();
                tracing::warn!(identity, resource, "reading grants from the store timed out; refusing");
            }
        }
    }

    /// Re-read everything that gates access: live grants, grants this replica still caches,
    /// kills asked of this replica, token revocations; close sessions the store still shows
    /// open here although they ended while it was unreachable.
    pub async fn resync(&self, reason: &str) -> ApiResult<()> {
        let started = std::time::Instant::now();
        let now = self.now();
        let active = self.active_grants().await?;
        let mut seen = std::collections::HashSet::new();
        for g in &active {
            seen.insert(g.id);
            if g.is_live(now) {
                self.apply_grant(g);
            } else if let Err(e) = self.mark_expired(g.id, now).await {
                tracing::warn!(error = %e.error, grant_id = g.id, "could not mark a past grant expired");
            }
        }
        for cached in self.enforcer.grants.all() {
            if !seen.contains(&cached.id)
                && let Some(g) = self.store.get_grant(cached.id).await?
            {
                self.apply_grant(&g);
            }
        }
        for (id, by) in self.store.kills_requested().await? {
            if self.enforcer.sessions.kill(&id, &KillReason::Killed { by }).is_some() {
                self.metrics.sessions_killed_total.with_label_values(&["killed"]).inc();
            }
        }
        // Only sessions that started well before this snapshot: one starting right now may
        // have its row written after the snapshot was taken.
        let live: Vec<String> = self.enforcer.sessions.list().into_iter().map(|s| s.id).collect();
        let settled = now.checked_sub(jiff::SignedDuration::from_secs(120)).unwrap_or(now);
        self.store
            .end_open_sessions(now, "ended while the store was unreachable", &live, settled)
            .await?;
        if let Some(l) = self.login.get() {
            let secs = now.as_second();
            for (jti, exp) in self.store.revoked_tokens(secs).await? {
                l.tokens.revoke(&jti, exp, secs);
            }
        }
        let skew = self.store.clock_skew_ms().await?;
        self.metrics.store_clock_skew_seconds.set(skew as f64 / 1000.0);
        self.metrics.store_resyncs_total.with_label_values(&[reason]).inc();
        self.metrics.store_up.set(i64::from(self.store.feed_connected()));
        if reason != "periodic" {
            tracing::info!(
                reason,
                grants = active.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "resynchronised with the store"
            );
        }
        Ok(())
    }

    /// Every grant the store holds as active (live or past its end).
    async fn active_grants(&self) -> ApiResult<Vec<Grant>> {
        Ok(self
            .store
            .list_grants(&GrantFilter {
                state: Some(GrantState::Active),
                limit: Some(1_000_000),
                ..Default::default()
            })
            .await?)
    }

    async fn mark_expired(&self, id: i64, now: Timestamp) -> ApiResult<()> {
        if let Some(mut g) = self.store.get_grant(id).await?
            && g.state == GrantState::Active
            && g.expires_at <= now
        {
            g.state = GrantState::Expired;
            g.ended_at = Some(g.expires_at);
            g.ended_by = Some("gateway".into());
            self.store.update_grant(&g).await?;
        }
        Ok(())
    }

    async fn sweep_pending(&self) -> ApiResult<()> {
        let pending = self
            .store
            .list_requests(&RequestFilter {
                state: Some(RequestState::Pending),
                ..Default::default()
            })
            .await?;
        if pending.is_empty() {
            return Ok(());
        }
        let cat = self.catalog();
        let _guard = self.request_lock.lock().await;
        for r in pending {
            let now = self.now();
            let Ok(policy) = engine::policy_named(&cat, &r.policy) else {
                continue;
            };
            if engine::pending_timed_out(&r, policy, now) {
                let mut r = r.clone();
                engine::expire_pending(&mut r, now);
                // Conflict: another replica's sweeper (or a decision) got there first.
                let Some(r) = ignore_conflict(self.store.update_request(&r).await)? else {
                    continue;
                };
                self.count(RequestState::Expired);
                self.record(self.request_event(Kind::RequestExpired, &r, "gateway", now))
                    .await?;
            } else if !r.escalated && engine::escalation_due(&r, policy, now) {
                let mut r = r.clone();
                r.escalated = true;
                let Some(r) = ignore_conflict(self.store.update_request(&r).await)? else {
                    continue;
                };
                self.record(
                    self.request_event(Kind::RequestEscalated, &r, "gateway", now)
                        .details(serde_json::json!({"escalate_to": policy.escalate_to})),
                )
                .await?;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- authentication

    /// Resolve a bearer token to a principal. Failures are not counted here: each edge (HTTP,
    /// Postgres) counts its own under its protocol label.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthFailure> {
        if jitgate_auth::is_gateway_token(token) {
            return self.verify_gateway_token(token);
        }
        let h = jitgate_core::token_hash(token);
        if let Some(i) = self.catalog().identity_by_token_hash(&h) {
            return Ok(Principal {
                name: i.name.clone(),
                groups: i.groups.clone(),
            });
        }
        match self.store.token_by_hash(&h).await {
            Ok(Some(t)) => Ok(Principal {
                name: t.name,
                groups: t.groups,
            }),
            Ok(None) => Err(AuthFailure::Refused {
                reason: "invalid_token",
                message: "invalid or expired token".into(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "checking a machine token: the store did not answer");
                Err(AuthFailure::Unavailable(
                    "jitgate cannot reach its store to check this token; try again shortly".into(),
                ))
            }
        }
    }

    // ---------------------------------------------------------------- requests

    fn request_event(&self, kind: Kind, r: &Request, actor: &str, now: Timestamp) -> Event {
        Event::new(kind, now)
            .actor(actor)
            .resource(&r.resource)
            .request(r.id)
            .reason(r.reason.clone())
            .details(serde_json::json!({
                "identity": r.requester, "access": r.access, "duration": HumanDuration(r.duration_secs).to_string(),
                "policy": r.policy, "ticket": r.ticket, "state": r.state, "step": r.step, "extends_grant": r.extends_grant,
            }))
    }

    /// Create a request (or an extension request) and auto-approve it if a rule admits it.
    pub async fn create_request(&self, who: &Principal, new: NewRequest) -> ApiResult<Request> {
        let now = self.now();
        let cat = self.catalog();
        let planned = engine::plan_request(&cat, who, &new, now)?;
        self.submit(who, planned, now).await
    }

    /// Ask for more time on a live grant.
    pub async fn extend(
        &self,
        who: &Principal,
        grant_id: i64,
        duration: HumanDuration,
        reason: Option<String>,
    ) -> ApiResult<Request> {
        let now = self.now();
        let g = self
            .store
            .get_grant(grant_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no grant {grant_id}")))?;
        let planned = engine::plan_extension(&self.catalog(), who, &g, duration, reason, now)?;
        self.submit(who, planned, now).await
    }

    async fn submit(&self, who: &Principal, planned: Request, now: Timestamp) -> ApiResult<Request> {
        let _guard = self.request_lock.lock().await;
        let auto = planned.state == RequestState::Approved;
        let mut pending = planned.clone();
        pending.state = RequestState::Pending;
        pending.decided_at = None;
        pending.decided_by = None;
        pending.decision_reason = None;
        let r = self.store.create_request(&pending).await?;
        self.count(RequestState::Pending);
        self.record(self.request_event(Kind::RequestCreated, &r, &who.name, now))
            .await?;
        tracing::info!(request_id = r.id, identity = %who.name, resource = %r.resource, access = %r.access, auto, "request created");
        if !auto {
            return Ok(r);
        }
        let mut approved = r;
        approved.state = RequestState::Approved;
        approved.decided_at = planned.decided_at;
        approved.decided_by = planned.decided_by.clone();
        approved.decision_reason = planned.decision_reason.clone();
        self.finish_approval(approved, now).await
    }

    async fn finish_approval(&self, r: Request, now: Timestamp) -> ApiResult<Request> {
        let actor = r.decided_by.clone().unwrap_or_default();
        let (r, g, previous) = match r.extends_grant {
            Some(gid) => {
                let mut g = self
                    .store
                    .get_grant(gid)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no grant {gid}")))?;
                let before = g.clone();
                engine::extend_grant(&mut g, &r, now)?;
                let (r, g) = self.store.approve_with_grant(&r, &g).await?;
                (r, g, Some(before))
            }
            None => {
                let g = engine::grant_for(&r, now);
                let (r, g) = self.store.approve_with_grant(&r, &g).await?;
                (r, g, None)
            }
        };
        let extended = previous.is_some();
        self.enforcer.activate(LiveGrant::from(&g));
        if let Err(e) = self.audit_approval(&r, &g, &actor, extended, now).await {
            // No access without an audit trail: undo what the approval opened.
            self.undo_approval(&g, previous).await;
            return Err(e);
        }
        tracing::info!(request_id = r.id, grant_id = g.id, identity = %g.identity, resource = %g.resource, expires_at = %g.expires_at, extended, "grant opened");
        Ok(r)
    }

    async fn undo_approval(&self, g: &Grant, previous: Option<Grant>) {
        tracing::error!(
            grant_id = g.id,
            "the approval could not be audited; undoing it (fail closed)"
        );
        match previous {
            Some(before) => {
                if let Err(e) = self.store.update_grant(&before).await {
                    tracing::error!(error = %e, grant_id = g.id, "could not restore the grant's previous end");
                }
                self.enforcer.activate(LiveGrant::from(&before));
            }
            None => {
                let mut revoked = g.clone();
                revoked.state = GrantState::Revoked;
                revoked.ended_at = Some(self.now());
                revoked.ended_by = Some("gateway".into());
                revoked.end_reason = Some("audit log unavailable".into());
                if let Err(e) = self.store.update_grant(&revoked).await {
                    tracing::error!(error = %e, grant_id = g.id, "could not mark the unaudited grant revoked");
                }
                self.enforcer.end(
                    g.id,
                    &KillReason::Revoked {
                        by: "gateway (audit log unavailable)".into(),
                    },
                );
            }
        }
    }

    async fn audit_approval(
        &self,
        r: &Request,
        g: &Grant,
        actor: &str,
        extended: bool,
        now: Timestamp,
    ) -> ApiResult<()> {
        self.count(RequestState::Approved);
        self.metrics
            .approval_latency_seconds
            .observe(now.duration_since(r.created_at).as_secs_f64().max(0.0));
        let mut ev = self.request_event(Kind::RequestApproved, r, actor, now);
        if let Some(rule) = &r.decision_reason {
            ev.details["auto_approved_by"] = serde_json::Value::String(rule.clone());
        }
        self.record(ev.grant(g.id)).await?;
        let kind = if extended {
            Kind::GrantExtended
        } else {
            Kind::GrantActivated
        };
        self
            .record(Event::new(kind, now).actor(actor).resource(&g.resource).request(r.id).grant(g.id)
                .details(serde_json::json!({"identity": g.identity, "access": g.access, "starts_at": g.starts_at, "expires_at": g.expires_at, "policy": g.policy})))
            .await?;
        Ok(())
    }

    async fn load_request(&self, id: i64) -> ApiResult<Request> {
        self.store
            .get_request(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no request {id}")))
    }

    /// Approve (one approval; the last one needed opens or extends the grant).
    pub async fn approve(&self, who: &Principal, id: i64, reason: Option<String>) -> ApiResult<Request> {
        let _guard = self.request_lock.lock().await;
        let now = self.now();
        let mut r = self.load_request(id).await?;
        let cat = self.catalog();
        let policy = engine::policy_named(&cat, &r.policy)?;
        let done = engine::approve(&mut r, policy, who, reason.clone(), now)?;
        if done {
            return self.finish_approval(r, now).await;
        }
        let r = self.store.update_request(&r).await?;
        self
            .record(self.request_event(Kind::RequestApprovalAdded, &r, &who.name, now).details(serde_json::json!({
                "identity": r.requester, "approvals": r.approvals.len(), "next_step": policy.steps.get(r.step).map(|s| s.name.clone()), "comment": reason,
            })))
            .await?;
        Ok(r)
    }

    /// Deny.
    pub async fn deny(&self, who: &Principal, id: i64, reason: String) -> ApiResult<Request> {
        if reason.trim().is_empty() {
            return Err(ApiError::bad_request(
                "a denial needs a reason",
                Some("add --reason \"why\"".into()),
            ));
        }
        let _guard = self.request_lock.lock().await;
        let now = self.now();
        let mut r = self.load_request(id).await?;
        let cat = self.catalog();
        let policy = engine::policy_named(&cat, &r.policy)?;
        engine::deny(&mut r, policy, who, cat.is_admin(&who.groups), reason.clone(), now)?;
        let r = self.store.update_request(&r).await?;
        self.count(RequestState::Denied);
        let mut ev = self.request_event(Kind::RequestDenied, &r, &who.name, now);
        ev.details["denial_reason"] = serde_json::Value::String(reason);
        self.record(ev).await?;
        Ok(r)
    }

    /// Cancel (requester or admin).
    pub async fn cancel(&self, who: &Principal, id: i64) -> ApiResult<Request> {
        let _guard = self.request_lock.lock().await;
        let now = self.now();
        let mut r = self.load_request(id).await?;
        engine::cancel(&mut r, who, self.catalog().is_admin(&who.groups), now)?;
        let r = self.store.update_request(&r).await?;
        self.count(RequestState::Cancelled);
        self.record(self.request_event(Kind::RequestCancelled, &r, &who.name, now))
            .await?;
        Ok(r)
    }

    fn may_see_request(&self, cat: &Catalog, who: &Principal, r: &Request) -> bool {
        r.requester == who.name
            || cat.is_admin(&who.groups)
            || cat.is_auditor(&who.groups)
            || cat.is_approver_of(&r.policy, &who.groups)
    }

    /// One request, if the caller may see it.
    pub async fn get_request(&self, who: &Principal, id: i64) -> ApiResult<Request> {
        let r = self.load_request(id).await?;
        if self.may_see_request(&self.catalog(), who, &r) {
            Ok(r)
        } else {
            Err(ApiError::not_found(format!("no request {id}")))
        }
    }

    /// Requests the caller may see: their own, those they can approve, or all for admins.
    pub async fn list_requests(
        &self,
        who: &Principal,
        state: Option<RequestState>,
        mine: bool,
    ) -> ApiResult<Vec<Request>> {
        let f = RequestFilter {
            state,
            requester: mine.then(|| who.name.clone()),
            limit: Some(500),
        };
        let cat = self.catalog();
        Ok(self
            .store
            .list_requests(&f)
            .await?
            .into_iter()
            .filter(|r| self.may_see_request(&cat, who, r))
            .collect())
    }

    // ---------------------------------------------------------------- grants

    /// Live grants: the caller's, or (`all`) every one the caller may see.
    pub async fn list_grants(&self, who: &Principal, all: bool) -> ApiResult<Vec<Grant>> {
        let cat = self.catalog();
        let f = GrantFilter {
            live_at: Some(self.now()),
            identity: (!all).then(|| who.name.clone()),
            ..Default::default()
        };
        Ok(self
            .store
            .list_grants(&f)
            .await?
            .into_iter()
            .filter(|g| {
                g.identity == who.name
                    || cat.is_admin(&who.groups)
                    || cat.is_auditor(&who.groups)
                    || cat.is_approver_of(&g.policy, &who.groups)
            })
            .collect())
    }

    async fn end_grant(
        &self,
        who: &Principal,
        grant_id: i64,
        state: GrantState,
        reason: Option<String>,
    ) -> ApiResult<Grant> {
        let now = self.now();
        let mut g = self
            .store
            .get_grant(grant_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no grant {grant_id}")))?;
        let cat = self.catalog();
        match state {
            GrantState::Released if g.identity != who.name && !cat.is_admin(&who.groups) => {
                return Err(Refusal::NotYours("release a grant").into());
            }
            GrantState::Revoked => engine::may_revoke(&cat, who, &g)?,
            _ => {}
        }
        if !g.is_live(now) {
            return Err(Refusal::not_live(&g).into());
        }
        g.state = state;
        g.ended_at = Some(now);
        g.ended_by = Some(who.name.clone());
        g.end_reason.clone_from(&reason);
        self.store.update_grant(&g).await?;
        let kill = if state == GrantState::Revoked {
            KillReason::Revoked { by: who.name.clone() }
        } else {
            KillReason::Released
        };
        let (_, n) = self.enforcer.end(g.id, &kill);
        let kind = if state == GrantState::Revoked {
            Kind::GrantRevoked
        } else {
            Kind::GrantReleased
        };
        self.record(
            Event::new(kind, now)
                .actor(&who.name)
                .resource(&g.resource)
                .grant(g.id)
                .request(g.request_id)
                .reason(reason)
                .details(serde_json::json!({"identity": g.identity, "access": g.access, "sessions_killed": n})),
        )
        .await?;
        tracing::info!(grant_id = g.id, by = %who.name, sessions = n, "{kind}");
        Ok(g)
    }

    /// Revoke (approvers of the grant's policy, admins).
    pub async fn revoke(&self, who: &Principal, grant_id: i64, reason: Option<String>) -> ApiResult<Grant> {
        self.end_grant(who, grant_id, GrantState::Revoked, reason).await
    }

    /// Release (the holder).
    pub async fn release(&self, who: &Principal, grant_id: i64) -> ApiResult<Grant> {
        self.end_grant(who, grant_id, GrantState::Released, None).await
    }

    // ---------------------------------------------------------------- sessions

    /// Record a session start (front ends call this after registering). Fails closed: without
    /// the store (or, on a shared store, its change feed: a revocation could be missed) or the
    /// audit log, the session is refused with a message that says why.
    pub async fn session_started(&self, s: &SessionInfo) -> Result<(), jitgate_core::SessionRefused> {
        self.metrics
            .sessions_active
            .with_label_values(&[&s.protocol, &s.resource])
            .inc();
        let store_down = |why: &str| {
            jitgate_core::SessionRefused::StoreUnavailable(format!(
                "jitgate cannot reach its store ({why}); new sessions are refused until it is back — live sessions are not affected"
            ))
        };
        if !self.store.feed_connected() {
            tracing::warn!(session_id = %s.id, "refusing a session: the store's change feed is disconnected");
            return Err(store_down("change feed disconnected"));
        }
        if let Err(e) = self.store.session_started(s).await {
            tracing::error!(error = %e, session_id = %s.id, "could not persist the session start; refusing the session");
            return Err(store_down("write failed"));
        }
        let audited = self
            .audit
            .record(Event::new(Kind::SessionStarted, s.started_at).actor(&s.identity).resource(&s.resource).grant(s.grant_id).session(&s.id)
                .details(serde_json::json!({"identity": s.identity, "protocol": s.protocol, "access": s.access, "client": s.client_addr})))
            .await;
        if let Err(e) = &audited {
            tracing::error!(error = %e, session_id = %s.id, "session start could not be audited; refusing the session");
            return Err(jitgate_core::SessionRefused::AuditUnavailable(
                "jitgate cannot write its audit log; no session without an audit trail".into(),
            ));
        }
        Ok(())
    }

    /// Record a session end.
    pub async fn session_ended(&self, s: &SessionInfo, outcome: &str, reason: &str, extra: Option<serde_json::Value>) {
        let now = self.now();
        self.metrics
            .sessions_active
            .with_label_values(&[&s.protocol, &s.resource])
            .dec();
        self.metrics
            .sessions_total
            .with_label_values(&[&s.protocol, &s.resource, outcome])
            .inc();
        if let Err(e) = self.store.session_ended(&s.id, now, reason).await {
            tracing::warn!(error = %e, session_id = %s.id, "could not persist session end");
        }
        let mut details = serde_json::json!({"identity": s.identity, "protocol": s.protocol, "outcome": outcome});
        if let (Some(serde_json::Value::Object(more)), Some(d)) = (extra, details.as_object_mut()) {
            for (k, v) in more {
                d.entry(k).or_insert(v);
            }
        }
        let _ = self
            .audit
            .record(
                Event::new(Kind::SessionEnded, now)
                    .actor(&s.identity)
                    .resource(&s.resource)
                    .grant(s.grant_id)
                    .session(&s.id)
                    .reason(Some(reason))
                    .details(details),
            )
            .await;
    }

    /// Live sessions the caller may see: this gateway's, or every replica's on a shared store.
    pub async fn list_sessions(&self, who: &Principal) -> ApiResult<Vec<SessionInfo>> {
        let cat = self.catalog();
        let elevated = cat.is_admin(&who.groups) || cat.is_auditor(&who.groups);
        let all = if self.store.shared() {
            self.store
                .list_sessions(true, 10_000)
                .await?
                .into_iter()
                .map(|r| r.info)
                .collect()
        } else {
            self.enforcer.sessions.list()
        };
        // Approvers see the sessions of grants under their policies: one lookup per grant.
        let mut policy_of: std::collections::HashMap<i64, Option<String>> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for s in all {
            if !(elevated || s.identity == who.name) {
                let policy = match policy_of.entry(s.grant_id) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(self.grant_policy(s.grant_id).await),
                };
                if !policy.as_deref().is_some_and(|p| cat.is_approver_of(p, &who.groups)) {
                    continue;
                }
            }
            out.push(s);
        }
        Ok(out)
    }

    /// The policy a grant was opened under (cache first, then the store).
    async fn grant_policy(&self, grant_id: i64) -> Option<String> {
        if let Some(g) = self.enforcer.grants.get(grant_id) {
            return Some(g.policy);
        }
        self.store.get_grant(grant_id).await.ok().flatten().map(|g| g.policy)
    }

    /// Kill one session (admins, approvers of its grant's policy). On a shared store a session
    /// hosted by another replica is killed through the change feed.
    pub async fn kill_session(&self, who: &Principal, id: &str) -> ApiResult<SessionInfo> {
        let cat = self.catalog();
        let local = self.enforcer.sessions.get(id);
        let s = match &local {
            Some(s) => s.clone(),
            None if self.store.shared() => self
                .store
                .get_session(id)
                .await?
                .filter(|r| r.ended_at.is_none())
                .map(|r| r.info)
                .ok_or_else(|| ApiError::not_found(format!("no live session {id}")))?,
            None => return Err(ApiError::not_found(format!("no live session {id}"))),
        };
        let allowed = cat.is_admin(&who.groups)
            || self
                .grant_policy(s.grant_id)
                .await
                .is_some_and(|p| cat.is_approver_of(&p, &who.groups));
        if !allowed {
            return Err(ApiError::forbidden(
                format!("{} may not kill session {id}", who.name),
                Some("admins and approvers of the grant's policy may".into()),
            ));
        }
        if local.is_some() {
            self.enforcer
                .sessions
                .kill(id, &KillReason::Killed { by: who.name.clone() });
            self.metrics.sessions_killed_total.with_label_values(&["killed"]).inc();
        } else if !self.store.request_kill(id, &who.name).await? {
            return Err(ApiError::not_found(format!("no live session {id}")));
        }
        self.record(
            Event::new(Kind::SessionKilled, self.now())
                .actor(&who.name)
                .resource(&s.resource)
                .grant(s.grant_id)
                .session(id)
                .details(serde_json::json!({"identity": s.identity})),
        )
        .await?;
        Ok(s)
    }

    // ---------------------------------------------------------------- audit, identity, tokens

    /// Search the audit log. Non-auditors only see events about themselves.
    pub async fn audit_search(&self, who: &Principal, mut q: Query) -> ApiResult<Vec<Event>> {
        let cat = self.catalog();
        if !cat.is_auditor(&who.groups) {
            match &q.user {
                Some(u) if u != &who.name => {
                    return Err(ApiError::forbidden(
                        "only auditors and admins may search other users' events",
                        Some("drop --user, or ask an auditor".into()),
                    ));
                }
                _ => q.user = Some(who.name.clone()),
            }
        }
        self.store.search(&q).await.map_err(ApiError::internal)
    }

    /// Who is calling, and what they hold.
    pub fn whoami(&self, who: &Principal) -> WhoAmI {
        let now = self.now();
        let mut grants: Vec<LiveGrant> = self
            .enforcer
            .grants
            .all()
            .into_iter()
            .filter(|g| g.identity == who.name && g.expires_at > now)
            .collect();
        grants.sort_by_key(|g| g.id);
        WhoAmI {
            principal: who.clone(),
            admin: self.catalog().is_admin(&who.groups),
            grants,
        }
    }

    /// Resources, with what the caller may request on each.
    pub fn resources(&self, who: &Principal) -> Vec<ResourceView> {
        let cat = self.catalog();
        cat.resources
            .values()
            .map(|r| {
                let p = engine::policy_for(&cat, who, r).ok();
                ResourceView {
                    name: r.name.clone(),
                    kind: r.kind.as_str().to_string(),
                    access: p.map(|p| engine::allowed_access(p, r)).unwrap_or_default(),
                    policy: p.map(|p| p.name.clone()),
                    labels: r.labels.clone(),
                }
            })
            .collect()
    }

    /// Mint a machine token (admins).
    pub async fn create_token(&self, who: &Principal, name: &str, groups: Vec<String>) -> ApiResult<MintedToken> {
        if !self.catalog().is_admin(&who.groups) {
            return Err(ApiError::forbidden("only admins may create machine tokens", None));
        }
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::bad_request(
                "invalid token name",
                Some("use a short name without spaces, e.g. ci-bot".into()),
            ));
        }
        let raw: [u8; 32] = rand::random();
        let token = format!("jgm_{}", hex::encode(raw));
        let sha256 = jitgate_core::token_hash(&token);
        let now = self.now();
        self.store
            .create_token(&MachineToken {
                name: name.to_string(),
                sha256: sha256.clone(),
                groups: groups.clone(),
                created_at: now,
                created_by: who.name.clone(),
            })
            .await?;
        self.record(
            Event::new(Kind::TokenCreated, now)
                .actor(&who.name)
                .details(serde_json::json!({"identity": name, "groups": groups})),
        )
        .await?;
        Ok(MintedToken {
            name: name.to_string(),
            token,
            sha256,
        })
    }
}

impl jitgate_core::Gatekeeper for ControlPlane {
    async fn authenticate(&self, token: &str) -> Result<Principal, AuthFailure> {
        ControlPlane::authenticate(self, token).await
    }

    fn token_revoked(&self, token_id: &str) -> bool {
        self.login.get().is_some_and(|l| l.tokens.is_revoked(token_id))
    }

    async fn refresh_grants(&self, identity: &str, resource: &str) {
        ControlPlane::refresh_grants(self, identity, resource).await;
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

    async fn session_ended(&self, s: &SessionInfo, outcome: &str, reason: &str, extra: Option<serde_json::Value>) {
        ControlPlane::session_ended(self, s, outcome, reason, extra).await;
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod lifecycle_tests;
