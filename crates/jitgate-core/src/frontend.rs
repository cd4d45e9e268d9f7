//! What a protocol front end (Postgres, SSH) needs from the control plane, as a trait so the
//! front-end crates depend only on `jitgate-core` (and `jitgate-audit`), never on the API or the
//! store. The binary hands them the `ControlPlane`, which implements it.

use std::future::Future;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::enforcer::Enforcer;
use crate::metrics::Metrics;
use crate::model::Principal;
use crate::sessions::SessionInfo;

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
    fn refresh_grants(&self, identity: &str, resource: &str) -> impl Future<Output = ()> + Send {
        let _ = (identity, resource);
        async {}
    }
    /// The current configuration.
    fn catalog(&self) -> Arc<Catalog>;
    /// Grant cache and session registry.
    fn enforcer(&self) -> &Arc<Enforcer>;
    /// Metrics.
    fn metrics(&self) -> &Metrics;
    /// A session was registered (persist + audit). `Err`: it could not be recorded (audit log
    /// or store unavailable) and the front end must end it with the message (fail closed).
    fn session_started(&self, s: &SessionInfo) -> impl Future<Output = Result<(), SessionRefused>> + Send;
    /// A session ended (persist + audit). `extra`: more details for the `session.ended` event
    /// (an object whose fields are added, e.g. how the upstream processes ended).
    fn session_ended(
        &self,
        s: &SessionInfo,
        outcome: &str,
        reason: &str,
        extra: Option<serde_json::Value>,
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

/// Why a session could not start although its grant is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRefused {
    /// SQLSTATE for the Postgres front end (`58030` audit log, `57P03` store).
    pub sqlstate: &'static str,
    /// What the user is told.
    pub message: String,
}
