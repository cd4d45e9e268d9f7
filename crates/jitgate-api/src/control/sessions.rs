//! Sessions: admission records (start, end), listing across replicas, admin kills.

use super::*;

impl ControlPlane {
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
        if self.draining.refusing() {
            return Err(jitgate_core::SessionRefused::ShuttingDown);
        }
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
            .record(
                Event::new(Kind::SessionStarted, s.started_at)
                    .actor(&s.identity)
                    .resource(&s.resource)
                    .grant(s.grant_id)
                    .session(&s.id)
                    .detail(jitgate_audit::details::SessionStarted {
                        identity: &s.identity,
                        protocol: &s.protocol,
                        access: &s.access,
                        client: &s.client_addr,
                    }),
            )
            .await;
        if let Err(e) = &audited {
            tracing::error!(error = %e, session_id = %s.id, "session start could not be audited; refusing the session");
            return Err(jitgate_core::SessionRefused::AuditUnavailable(
                "jitgate cannot write its audit log; no session without an audit trail".into(),
            ));
        }
        if let Err(e) = self.grant_in_use(s).await {
            tracing::error!(error = %e, session_id = %s.id, "could not start the first-use grant's clock; refusing the session");
            return Err(store_down("write failed"));
        }
        Ok(())
    }

    /// Record a session end.
    pub async fn session_ended(&self, s: &SessionInfo, outcome: &str, reason: &str, upstream_end: Option<&str>) {
        self.grant_session_over(s).await;
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
        let _ = self
            .audit
            .record(
                Event::new(Kind::SessionEnded, now)
                    .actor(&s.identity)
                    .resource(&s.resource)
                    .grant(s.grant_id)
                    .session(&s.id)
                    .reason(Some(reason))
                    .detail(jitgate_audit::details::SessionEnded {
                        identity: &s.identity,
                        protocol: &s.protocol,
                        outcome,
                        upstream_end,
                    }),
            )
            .await;
    }

    /// Live sessions the caller may see: this gateway's, or every replica's on a shared store.
    pub async fn list_sessions(&self, who: &Principal) -> ControlResult<Vec<SessionInfo>> {
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
    pub(super) async fn grant_policy(&self, grant_id: i64) -> Option<String> {
        if let Some(g) = self.enforcer.grants.get(grant_id) {
            return Some(g.policy);
        }
        self.store.get_grant(grant_id).await.ok().flatten().map(|g| g.policy)
    }

    /// Kill one session (admins, approvers of its grant's policy). On a shared store a session
    /// hosted by another replica is killed through the change feed.
    pub async fn kill_session(&self, who: &Principal, id: &str) -> ControlResult<SessionInfo> {
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
                .ok_or_else(|| ControlError::not_found(format!("no live session {id}")))?,
            None => return Err(ControlError::not_found(format!("no live session {id}"))),
        };
        let allowed = cat.is_admin(&who.groups)
            || self
                .grant_policy(s.grant_id)
                .await
                .is_some_and(|p| cat.is_approver_of(&p, &who.groups));
        if !allowed {
            return Err(ControlError::forbidden(
                format!("{} may not kill session {id}", who.name),
                Some("admins and approvers of the grant's policy may".into()),
            ));
        }
        if local.is_some() {
            self.enforcer
                .sessions
                .kill(id, &KillReason::Killed { by: who.name.clone() });
            self.metrics.sessions_killed_total.with_label_values(&["killed"]).inc();
        } else if !match self.store.replication() {
            Some(r) => r.request_kill(id, &who.name).await?,
            None => false,
        } {
            return Err(ControlError::not_found(format!("no live session {id}")));
        }
        self.record(
            Event::new(Kind::SessionKilled, self.now())
                .actor(&who.name)
                .resource(&s.resource)
                .grant(s.grant_id)
                .session(id)
                .detail(jitgate_audit::details::SessionKilled { identity: &s.identity }),
        )
        .await?;
        Ok(s)
    }
}
