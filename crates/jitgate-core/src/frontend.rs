//! What a protocol front end (Postgres, SSH) needs from the control plane, as a trait so the
//! front-end crates depend only on `jitgate-core` (and `jitgate-audit`), never on the API or the
//! store. The binary hands them the `ControlPlane`, which implements it.

use std::future::Future;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::enforcer::Enforcer;
use crate::grants::LiveGrant;
use crate::metrics::Metrics;
use crate::model::Principal;
use crate::onconnect::{AskError, Asked};
use crate::sessions::{SessionGuard, SessionInfo};
use jiff::Timestamp;

/// The control plane as seen from a connection.
pub trait Gatekeeper: Send + Sync + 'static {
    /// Resolve a bearer token (gateway token, machine token, static identity) to a principal.
    /// The error says why: a token that is not valid, or a gateway that could not check it.
    /// Nothing is counted here: the caller counts the failure under its own protocol.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Principal, AuthFailure>> + Send;
    /// Is this login token id (carried in SSH certificates) revoked.
    fn token_revoked(&self, token_id: &str) -> bool {
        let _ = token_id;
        false
    }
    /// The grant cache has nothing live for `identity` on `resource`: read that pair's grants
    /// from the store and bring the cache in line before the front end refuses. A grant
    /// approved on another replica a moment ago may not have reached this one's feed yet; the
    /// user who was just told "approved" must not be refused. Errors leave the cache as it is
    /// (the front end then refuses: fail closed).
    fn refresh_grants(&self, identity: &str, resource: &str) -> impl Future<Output = Result<(), String>> + Send {
        let _ = (identity, resource);
        async { Ok(()) }
    }
    /// Request on connect: make the request `new` for `who` (the same engine and policy as
    /// `jitgate request`), or find the same one (resource, access) already pending. Returns
    /// where it stands and whether this call created it.
    fn ask(
        &self,
        who: &Principal,
        new: crate::engine::NewRequest,
    ) -> impl Future<Output = Result<(Asked, bool), AskError>> + Send {
        let _ = (who, new);
        async { Err(AskError::Refused("requests on connect are not available here".into())) }
    }
    /// Where request `id` stands, answered once it is no longer at `version` or after `wait`
    /// (a long poll).
    fn asked(
        &self,
        who: &Principal,
        id: i64,
        version: i64,
        wait: std::time::Duration,
    ) -> impl Future<Output = Result<Asked, AskError>> + Send {
        let _ = (who, id, version, wait);
        async { Err(AskError::Refused("requests on connect are not available here".into())) }
    }
    /// The client that made request `id` on connect went away while it waited: cancel it
    /// (audited), if it is still pending.
    fn withdraw(&self, who: &Principal, id: i64) -> impl Future<Output = ()> + Send {
        let _ = (who, id);
        async {}
    }
    /// Where an approver decides request `id` in the web console, when it is served.
    fn request_link(&self, id: i64) -> Option<String> {
        let _ = id;
        None
    }
    /// The current configuration.
    fn catalog(&self) -> Arc<Catalog>;
    /// Grant cache and session registry.
    fn enforcer(&self) -> &Arc<Enforcer>;
    /// The gateway's metrics, for the front end's own counters (bytes, statements, auth failures).
    fn metrics(&self) -> &Metrics;
    /// A session was registered (persist + audit). `Err`: it could not be recorded (audit log
    /// or store unavailable) and the front end must end it with the message (fail closed).
    fn session_started(&self, s: &SessionInfo) -> impl Future<Output = Result<(), SessionRefused>> + Send;
    /// A session ended (persist + audit). `upstream_end`: how the upstream side ended, when
    /// the front end knows (SSH: `exited on SIGTERM`, ...).
    fn session_ended(
        &self,
        s: &SessionInfo,
        outcome: &str,
        reason: &str,
        upstream_end: Option<&str>,
    ) -> impl Future<Output = ()> + Send;
}

/// Why a bearer token did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown, malformed, expired or revoked. `reason` is the `jitgate_auth_failures_total`
    /// label (`invalid_token`, `expired_token`, `revoked_token`); `message` is for the caller.
    Refused {
        /// Metric label.
        reason: &'static str,
        /// What the caller is told.
        message: String,
    },
    /// The token could not be checked (the store did not answer): not the caller's fault, and
    /// not audited as a wrong token.
    Unavailable(String),
}

impl AuthFailure {
    /// The `jitgate_auth_failures_total` reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { reason, .. } => reason,
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Why a session could not start although its grant was found. Protocol-neutral: each front
/// end maps it (Postgres to a SQLSTATE, SSH to a message on stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefused {
    /// The grant ended between the check and the session's registration (during the upstream
    /// login). Carries the resource.
    GrantEnded(String),
    /// The store (or, shared, its change feed) is unavailable: a start cannot be recorded and a
    /// revocation could be missed.
    StoreUnavailable(String),
    /// The audit log cannot be written: no session without an audit trail.
    AuditUnavailable(String),
    /// The gateway is draining before it stops: live sessions go on, new ones go elsewhere.
    ShuttingDown,
}

impl SessionRefused {
    /// What the user is told.
    pub fn message(&self) -> String {
        match self {
            Self::GrantEnded(resource) => format!("access grant for {resource} ended"),
            Self::StoreUnavailable(m) | Self::AuditUnavailable(m) => m.clone(),
            Self::ShuttingDown => {
                "jitgate is draining (a stop or maintenance) and admits no new sessions; connect again to reach another replica".into()
            }
        }
    }
}

/// Which access level a connection asks for.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// Exactly this level (an SSH login).
    Exactly(&'a str),
    /// The first of these levels the holder has a live grant for (Postgres: read-write, then
    /// read-only); among grants of one level, the one that ends last.
    FirstOf(&'a [&'a str]),
}

fn pick(
    grants: &crate::grants::GrantCache,
    identity: &str,
    resource: &str,
    want: Want<'_>,
    now: Timestamp,
) -> Option<LiveGrant> {
    match want {
        Want::Exactly(level) => grants.check(identity, resource, level, now),
        Want::FirstOf(levels) => levels.iter().find_map(|l| grants.check(identity, resource, l, now)),
    }
}

/// The two calls every front end makes, in this order, the same way: provided here so there is
/// one place where a grant is checked and one where a session is admitted.
pub trait Admission: Gatekeeper {
    /// The live grant `identity` holds on `resource` for `want`, or `None`. On a miss the store
    /// is read (a grant approved on another replica a moment ago), then the cache asked again;
    /// `Err` when that read failed (the store is unavailable: refuse, and say so).
    fn find_grant(
        &self,
        identity: &str,
        resource: &str,
        want: Want<'_>,
    ) -> impl Future<Output = Result<Option<LiveGrant>, SessionRefused>> + Send {
        async move {
            let grants = &self.enforcer().grants;
            let now = self.enforcer().clock().now();
            if let Some(g) = pick(grants, identity, resource, want, now) {
                return Ok(Some(g));
            }
            self.refresh_grants(identity, resource)
                .await
                .map_err(SessionRefused::StoreUnavailable)?;
            Ok(pick(grants, identity, resource, want, self.enforcer().clock().now()))
        }
    }

    /// Admit a session on its grant: register it (so a kill or an expiry reaches it), check the
    /// grant is still live (it may have ended during the upstream login), then persist and audit
    /// its start; on a refusal the registration is undone and a start that was recorded is
    /// ended. The guard deregisters the session when dropped.
    fn open_session(&self, info: SessionInfo) -> impl Future<Output = Result<SessionGuard, SessionRefused>> + Send {
        async move {
            let guard = self.enforcer().sessions.register(info.clone());
            if self.enforcer().grants.get(info.grant_id).is_none() {
                return Err(SessionRefused::GrantEnded(info.resource.clone()));
            }
            if let Err(refused) = self.session_started(&info).await {
                self.session_ended(&info, "error", &refused.message(), None).await;
                return Err(refused);
            }
            Ok(guard)
        }
    }
}

impl<G: Gatekeeper> Admission for G {}

/// The next connection on a front end's listener, or `None` once `stop` is cancelled. A failed
/// accept (out of file descriptors, a connection reset before it was taken) is logged and
/// retried after 50 ms, so a burst of them never spins a core.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
    protocol: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, protocol, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Mutex;

    /// A control plane reduced to what admission touches: a grant the "store" holds but the
    /// cache lacks, and a switch that makes `session_started` fail.
    struct Plane {
        enforcer: Arc<Enforcer>,
        metrics: Metrics,
        in_store: Mutex<Option<LiveGrant>>,
        refuse_start: bool,
        ended: Mutex<Vec<String>>,
    }

    impl Gatekeeper for Plane {
        async fn authenticate(&self, _token: &str) -> Result<Principal, AuthFailure> {
            Err(AuthFailure::Unavailable("not used".into()))
        }
        async fn refresh_grants(&self, _identity: &str, _resource: &str) -> Result<(), String> {
            if let Some(g) = self.in_store.lock().unwrap().take() {
                self.enforcer.activate(g);
            }
            Ok(())
        }
        fn catalog(&self) -> Arc<Catalog> {
            Arc::new(Catalog::default())
        }
        fn enforcer(&self) -> &Arc<Enforcer> {
            &self.enforcer
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
        async fn session_started(&self, _s: &SessionInfo) -> Result<(), SessionRefused> {
            if self.refuse_start {
                Err(SessionRefused::AuditUnavailable("audit down".into()))
            } else {
                Ok(())
            }
        }
        async fn session_ended(&self, s: &SessionInfo, outcome: &str, _r: &str, _e: Option<&str>) {
            self.ended.lock().unwrap().push(format!("{}:{outcome}", s.id));
        }
    }

    fn t0() -> Timestamp {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    fn grant(id: i64, access: &str, mins: i64) -> LiveGrant {
        LiveGrant {
            id,
            identity: "alice".into(),
            resource: "db".into(),
            access: access.into(),
            expires_at: t0() + jiff::SignedDuration::from_mins(mins),
            starts_at: Timestamp::UNIX_EPOCH,
            policy: "p".into(),
            ends: Default::default(),
        }
    }

    fn plane(refuse_start: bool) -> Plane {
        let metrics = Metrics::new();
        Plane {
            enforcer: Enforcer::new(Arc::new(ManualClock::new(t0())), metrics.clone(), 0),
            metrics,
            in_store: Mutex::new(None),
            refuse_start,
            ended: Mutex::new(Vec::new()),
        }
    }

    fn info(grant_id: i64) -> SessionInfo {
        SessionInfo {
            id: format!("s-{grant_id}"),
            protocol: "postgres".into(),
            identity: "alice".into(),
            resource: "db".into(),
            access: "read-only".into(),
            grant_id,
            client_addr: "127.0.0.1:1".into(),
            started_at: t0(),
        }
    }

    #[tokio::test]
    async fn the_first_level_wins_and_a_miss_reads_the_store() {
        let p = plane(false);
        p.enforcer.activate(grant(1, "read-only", 60));
        p.enforcer.activate(grant(2, "read-write", 10));
        let both = Want::FirstOf(&["read-write", "read-only"]);
        assert_eq!(p.find_grant("alice", "db", both).await.unwrap().map(|g| g.id), Some(2));
        assert_eq!(
            p.find_grant("alice", "db", Want::Exactly("read-only"))
                .await
                .unwrap()
                .map(|g| g.id),
            Some(1)
        );
        assert_eq!(p.find_grant("alice", "db", Want::Exactly("admin")).await, Ok(None));
        // Approved elsewhere, not yet announced: found through the store.
        *p.in_store.lock().unwrap() = Some(grant(3, "admin", 5));
        assert_eq!(
            p.find_grant("alice", "db", Want::Exactly("admin"))
                .await
                .unwrap()
                .map(|g| g.id),
            Some(3)
        );
        // A grant past its end is never found, even before the scheduler removes it.
        p.enforcer.activate(grant(4, "ops", -1));
        assert_eq!(p.find_grant("alice", "db", Want::Exactly("ops")).await, Ok(None));
    }

    #[tokio::test]
    async fn a_session_is_admitted_only_on_a_live_grant_and_only_when_recorded() {
        let p = plane(false);
        p.enforcer.activate(grant(1, "read-only", 60));
        let guard = p.open_session(info(1)).await.unwrap();
        assert_eq!(p.enforcer.sessions.len(), 1);
        drop(guard);
        assert_eq!(p.enforcer.sessions.len(), 0);
        // The grant ended during the upstream login: refused, nothing left registered or recorded.
        let e = p.open_session(info(9)).await.unwrap_err();
        assert_eq!(e, SessionRefused::GrantEnded("db".into()));
        assert_eq!(e.message(), "access grant for db ended");
        assert_eq!(p.enforcer.sessions.len(), 0);
        assert!(p.ended.lock().unwrap().is_empty());

        // The start cannot be recorded: refused, deregistered, and ended as an error.
        let p = plane(true);
        p.enforcer.activate(grant(1, "read-only", 60));
        let e = p.open_session(info(1)).await.unwrap_err();
        assert!(matches!(e, SessionRefused::AuditUnavailable(_)), "{e:?}");
        assert_eq!(p.enforcer.sessions.len(), 0);
        assert_eq!(*p.ended.lock().unwrap(), vec!["s-1:error".to_string()]);
    }
}
