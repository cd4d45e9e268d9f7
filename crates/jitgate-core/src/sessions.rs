//! The session registry: every accepted Postgres or SSH connection registers here with the grant
//! it runs under and gets a [`SessionGuard`] holding its kill switch. Ending a grant fires the
//! switches of all its sessions at once; the front ends turn that into a protocol-level goodbye.
//!
//! Dropping the guard deregisters the session, so a session can never be listed after its
//! connection is gone.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a session was ended by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KillReason {
    /// The grant reached its end.
    Expired {
        /// The grant's `expires_at`.
        at: Timestamp,
    },
    /// An approver or admin revoked the grant.
    Revoked {
        /// Who revoked the grant.
        by: String,
    },
    /// The holder released the grant.
    Released,
    /// An admin killed this session.
    Killed {
        /// The admin or approver who killed the session.
        by: String,
    },
    /// The gateway is shutting down.
    Shutdown,
}

impl KillReason {
    /// Short label for metrics (`expired`, `revoked`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Expired { .. } => "expired",
            Self::Revoked { .. } => "revoked",
            Self::Released => "released",
            Self::Killed { .. } => "killed",
            Self::Shutdown => "shutdown",
        }
    }

    /// The sentence a client sees.
    pub fn message(&self, resource: &str) -> String {
        match self {
            Self::Expired { at } => format!("access grant for {resource} expired at {at}"),
            Self::Revoked { by } => format!("access grant for {resource} was revoked by {by}"),
            Self::Released => format!("access grant for {resource} was released"),
            Self::Killed { by } => format!("session on {resource} was killed by {by}"),
            Self::Shutdown => "the gateway is shutting down".to_string(),
        }
    }
}

/// What is known about a session, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// Session id (`s-` + 12 hex).
    pub id: String,
    /// `postgres` or `ssh`.
    pub protocol: String,
    /// The identity the session runs as.
    pub identity: String,
    /// The resource it reaches.
    pub resource: String,
    /// Access level / login.
    pub access: String,
    /// The grant it runs on: ending the grant kills the session.
    pub grant_id: i64,
    /// Client address.
    pub client_addr: String,
    /// When it was admitted.
    pub started_at: Timestamp,
}

#[derive(Debug)]
struct Entry {
    info: SessionInfo,
    kill: CancellationToken,
    reason: Arc<OnceLock<KillReason>>,
    warn: watch::Sender<Option<String>>,
}

/// All sessions of this gateway process.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: DashMap<String, Entry>,
    by_grant: DashMap<i64, Vec<String>>,
}

/// Held by a connection for its lifetime.
#[derive(Debug)]
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    /// This session.
    pub info: SessionInfo,
    /// Cancelled when the gateway ends the session.
    pub kill: CancellationToken,
    reason: Arc<OnceLock<KillReason>>,
    /// Expiry warnings for the client.
    pub warnings: watch::Receiver<Option<String>>,
}

impl SessionGuard {
    /// Why the session was killed (set before the token is cancelled).
    pub fn kill_reason(&self) -> Option<KillReason> {
        self.reason.get().cloned()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.info.id, self.info.grant_id);
    }
}

/// A fresh random session id.
pub fn new_session_id() -> String {
    let b: [u8; 6] = rand::random();
    format!("s-{}", hex::encode(b))
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Register a session. Keep the guard as long as the connection lives.
    pub fn register(self: &Arc<Self>, info: SessionInfo) -> SessionGuard {
        let kill = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        let (warn, warnings) = watch::channel(None);
        self.by_grant.entry(info.grant_id).or_default().push(info.id.clone());
        self.sessions.insert(
            info.id.clone(),
            Entry {
                info: info.clone(),
                kill: kill.clone(),
                reason: reason.clone(),
                warn,
            },
        );
        SessionGuard {
            registry: self.clone(),
            info,
            kill,
            reason,
            warnings,
        }
    }

    fn remove(&self, id: &str, grant_id: i64) {
        self.sessions.remove(id);
        if let Some(mut v) = self.by_grant.get_mut(&grant_id) {
            v.retain(|s| s != id);
        }
        self.by_grant.remove_if(&grant_id, |_, v| v.is_empty());
    }

    fn fire(e: &Entry, reason: &KillReason) {
        let _ = e.reason.set(reason.clone());
        e.kill.cancel();
    }

    /// Kill one session. Returns its info if it existed.
    pub fn kill(&self, id: &str, reason: &KillReason) -> Option<SessionInfo> {
        let e = self.sessions.get(id)?;
        Self::fire(&e, reason);
        Some(e.info.clone())
    }

    /// Kill every session of a grant; returns how many.
    pub fn kill_grant(&self, grant_id: i64, reason: &KillReason) -> usize {
        let ids = self.by_grant.get(&grant_id).map(|v| v.clone()).unwrap_or_default();
        let mut n = 0;
        for id in ids {
            if let Some(e) = self.sessions.get(&id) {
                Self::fire(&e, reason);
                n += 1;
            }
        }
        n
    }

    /// Kill everything (shutdown).
    pub fn kill_all(&self, reason: &KillReason) -> usize {
        let mut n = 0;
        for e in &self.sessions {
            Self::fire(&e, reason);
            n += 1;
        }
        n
    }

    /// Send an expiry warning to every session of a grant.
    pub fn warn_grant(&self, grant_id: i64, message: &str) -> usize {
        let ids = self.by_grant.get(&grant_id).map(|v| v.clone()).unwrap_or_default();
        let mut n = 0;
        for e in ids.iter().filter_map(|id| self.sessions.get(id)) {
            e.warn.send_replace(Some(message.to_string()));
            n += 1;
        }
        n
    }

    /// How many sessions run on `grant_id`, leaving out `except` (a session that is ending).
    pub fn on_grant(&self, grant_id: i64, except: Option<&str>) -> usize {
        self.by_grant
            .get(&grant_id)
            .map_or(0, |v| v.iter().filter(|id| Some(id.as_str()) != except).count())
    }

    /// Every session.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self.sessions.iter().map(|e| e.info.clone()).collect();
        v.sort_by_key(|s| s.started_at);
        v
    }

    /// One session.
    pub fn get(&self, id: &str) -> Option<SessionInfo> {
        self.sessions.get(id).map(|e| e.info.clone())
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, grant: i64) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            protocol: "postgres".into(),
            identity: "alice".into(),
            resource: "prod-db".into(),
            access: "read-only".into(),
            grant_id: grant,
            client_addr: "127.0.0.1:1".into(),
            started_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn killing_a_grant_fires_only_its_sessions_with_the_reason() {
        let r = SessionRegistry::new();
        let a = r.register(info("s-a", 1));
        let b = r.register(info("s-b", 1));
        let c = r.register(info("s-c", 2));
        assert_eq!(r.kill_grant(1, &KillReason::Revoked { by: "bob".into() }), 2);
        assert!(a.kill.is_cancelled() && b.kill.is_cancelled() && !c.kill.is_cancelled());
        assert_eq!(a.kill_reason(), Some(KillReason::Revoked { by: "bob".into() }));
        assert!(
            a.kill_reason()
                .map(|k| k.message("prod-db"))
                .unwrap_or_default()
                .contains("revoked by bob")
        );
    }

    #[test]
    fn dropping_the_guard_deregisters() {
        let r = SessionRegistry::new();
        let a = r.register(info("s-a", 1));
        assert_eq!(r.len(), 1);
        drop(a);
        assert!(r.is_empty());
        assert_eq!(r.kill_grant(1, &KillReason::Released), 0);
    }

    #[test]
    fn warnings_reach_the_sessions_of_the_grant() {
        let r = SessionRegistry::new();
        let a = r.register(info("s-a", 1));
        assert_eq!(r.warn_grant(1, "expires in 5m"), 1);
        assert_eq!(a.warnings.borrow().as_deref(), Some("expires in 5m"));
    }
}
