//! Read-only views: whoami, the resources a caller may request, audit search.

use super::*;

impl ControlPlane {
    /// Search the audit log. Non-auditors only see events about themselves.
    pub async fn audit_search(&self, who: &Principal, mut q: Query) -> ControlResult<Vec<Event>> {
        let cat = self.catalog();
        if !cat.is_auditor(&who.groups) {
            match &q.user {
                Some(u) if u != &who.name => {
                    return Err(ControlError::forbidden(
                        "only auditors and admins may search other users' events",
                        Some("drop --user, or ask an auditor".into()),
                    ));
                }
                _ => q.user = Some(who.name.clone()),
            }
        }
        self.store.search(&q).await.map_err(ControlError::internal)
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
}
