//! The in-memory grant cache: the only thing a protocol front end consults when a connection
//! arrives. Reads are lock-free per shard (`dashmap`) and allocate nothing: the key is the
//! identity, borrowed as `&str`.

use dashmap::DashMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::Grant;

/// What the hot path needs to know about a live grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveGrant {
    /// Grant id.
    pub id: i64,
    /// The identity holding the grant.
    pub identity: String,
    /// The resource it opens.
    pub resource: String,
    /// Access level.
    pub access: String,
    /// When it ends: sessions on it are killed at this instant.
    pub expires_at: Timestamp,
    /// When it opens: a scheduled grant is held here before its window and admits nobody.
    #[serde(default)]
    pub starts_at: Timestamp,
    /// The policy it was granted under (whose approvers may see and kill its sessions).
    pub policy: String,
    /// How it ends besides its expiry.
    #[serde(default)]
    pub ends: crate::model::Ends,
}

impl LiveGrant {
    /// Open at `now`: its window has started and not ended.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.starts_at <= now && self.expires_at > now
    }

    /// The refusal for a session before a scheduled grant opens.
    pub fn not_yet(&self, now: Timestamp) -> String {
        let wait = crate::duration::HumanDuration(
            u64::try_from(self.starts_at.duration_since(now).as_secs().max(1)).unwrap_or(1),
        );
        format!(
            "access grant {} ({}) for {} on {} opens at {} (in {wait}) and ends at {}; connect then",
            self.id,
            self.access,
            self.identity,
            self.resource,
            self.starts_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            self.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
    }
}

impl From<&Grant> for LiveGrant {
    fn from(g: &Grant) -> Self {
        Self {
            id: g.id,
            identity: g.identity.clone(),
            resource: g.resource.clone(),
            access: g.access.clone(),
            expires_at: g.expires_at,
            starts_at: g.starts_at,
            policy: g.policy.clone(),
            ends: g.ends,
        }
    }
}

/// Live grants by identity.
#[derive(Debug, Default)]
pub struct GrantCache {
    by_identity: DashMap<String, Vec<LiveGrant>>,
    by_id: DashMap<i64, String>,
}

impl GrantCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace (same id) a live grant.
    pub fn insert(&self, g: LiveGrant) {
        self.by_id.insert(g.id, g.identity.clone());
        let mut v = self.by_identity.entry(g.identity.clone()).or_default();
        v.retain(|x| x.id != g.id);
        v.push(g);
    }

    /// Remove a grant; returns it if it was there.
    pub fn remove(&self, id: i64) -> Option<LiveGrant> {
        let (_, identity) = self.by_id.remove(&id)?;
        let mut out = None;
        if let Some(mut v) = self.by_identity.get_mut(&identity)
            && let Some(pos) = v.iter().position(|x| x.id == id)
        {
            out = Some(v.swap_remove(pos));
        }
        self.by_identity.remove_if(&identity, |_, v| v.is_empty());
        out
    }

    /// The live grant by id.
    pub fn get(&self, id: i64) -> Option<LiveGrant> {
        let identity = self.by_id.get(&id)?.clone();
        self.by_identity.get(&identity)?.iter().find(|x| x.id == id).cloned()
    }

    /// The live grant for (identity, resource, access), latest expiry first. A grant past its
    /// `expires_at` never matches, even if the scheduler has not removed it yet, and neither
    /// does a scheduled one before its `starts_at`.
    pub fn check(&self, identity: &str, resource: &str, access: &str, now: Timestamp) -> Option<LiveGrant> {
        self.by_identity
            .get(identity)?
            .iter()
            .filter(|g| g.resource == resource && g.access == access && g.is_open(now))
            .max_by_key(|g| g.expires_at)
            .cloned()
    }

    /// All open grants of an identity on a resource (any access level).
    pub fn for_resource(&self, identity: &str, resource: &str, now: Timestamp) -> Vec<LiveGrant> {
        self.by_identity
            .get(identity)
            .map(|v| {
                v.iter()
                    .filter(|g| g.resource == resource && g.is_open(now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The soonest scheduled grant of an identity on a resource (at `access`, when given) that
    /// has not opened yet (for the refusal that says when to come back).
    pub fn upcoming(&self, identity: &str, resource: &str, access: Option<&str>, now: Timestamp) -> Option<LiveGrant> {
        self.by_identity
            .get(identity)?
            .iter()
            .filter(|g| {
                g.resource == resource
                    && access.is_none_or(|a| g.access == a)
                    && g.starts_at > now
                    && g.expires_at > now
            })
            .min_by_key(|g| g.starts_at)
            .cloned()
    }

    /// Number of grants held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every grant, for listings.
    pub fn all(&self) -> Vec<LiveGrant> {
        self.by_identity.iter().flat_map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: i64, who: &str, res: &str, access: &str, exp: i64) -> LiveGrant {
        LiveGrant {
            id,
            identity: who.into(),
            resource: res.into(),
            access: access.into(),
            expires_at: Timestamp::from_second(exp).unwrap_or(Timestamp::UNIX_EPOCH),
            starts_at: Timestamp::UNIX_EPOCH,
            policy: "p".into(),
            ends: Default::default(),
        }
    }

    #[test]
    fn a_scheduled_grant_opens_at_its_start() {
        let c = GrantCache::new();
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        c.insert(LiveGrant {
            starts_at: at(60),
            ..g(1, "alice", "prod-db", "read-only", 100)
        });
        assert!(c.check("alice", "prod-db", "read-only", at(59)).is_none());
        assert!(c.for_resource("alice", "prod-db", at(59)).is_empty());
        assert_eq!(c.upcoming("alice", "prod-db", None, at(59)).map(|g| g.id), Some(1));
        let msg = c.upcoming("alice", "prod-db", None, at(0)).map(|g| g.not_yet(at(0)));
        assert_eq!(
            msg.as_deref(),
            Some(
                "access grant 1 (read-only) for alice on prod-db opens at 1970-01-01 00:01:00 UTC (in 1m) and ends at 1970-01-01 00:01:40 UTC; connect then"
            )
        );
        assert_eq!(c.check("alice", "prod-db", "read-only", at(60)).map(|g| g.id), Some(1));
        assert!(c.upcoming("alice", "prod-db", None, at(60)).is_none());
        assert!(c.check("alice", "prod-db", "read-only", at(100)).is_none());
    }

    #[test]
    fn check_matches_identity_resource_access_and_time() {
        let c = GrantCache::new();
        c.insert(g(1, "alice", "prod-db", "read-only", 100));
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(c.check("alice", "prod-db", "read-only", at(50)).map(|g| g.id), Some(1));
        assert!(c.check("alice", "prod-db", "read-write", at(50)).is_none());
        assert!(c.check("bob", "prod-db", "read-only", at(50)).is_none());
        assert!(
            c.check("alice", "prod-db", "read-only", at(100)).is_none(),
            "expired at the instant"
        );
        assert_eq!(c.remove(1).map(|g| g.id), Some(1));
        assert!(c.is_empty());
        assert!(c.remove(1).is_none());
    }

    #[test]
    fn insert_with_same_id_replaces_expiry() {
        let c = GrantCache::new();
        c.insert(g(1, "alice", "prod-db", "read-only", 100));
        c.insert(g(1, "alice", "prod-db", "read-only", 200));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1).map(|g| g.expires_at.as_second()), Some(200));
    }
}
