//! Grants that end when the work ends: `single_session` (the grant ends with its first
//! session), `idle_end` (it ends after that long without a session) and first use (its clock
//! starts at its first session). The enforcer tracks sessions and idleness; the decisions that
//! become durable facts (a grant ended, a clock started) are made here.

use super::*;

impl ControlPlane {
    /// A session was admitted on its grant: stop an idle clock, start a first-use clock.
    pub(super) async fn grant_in_use(&self, s: &SessionInfo) -> ControlResult<()> {
        self.enforcer.session_joined(s.grant_id);
        let waiting = self
            .enforcer
            .grants
            .get(s.grant_id)
            .is_some_and(|g| g.ends.first_use_secs.is_some());
        if waiting {
            self.start_clock(s.grant_id, &s.identity).await?;
        }
        Ok(())
    }

    /// The first session of a first-use grant: its time runs from now.
    async fn start_clock(&self, grant_id: i64, actor: &str) -> ControlResult<()> {
        let _guard = self.request_lock.lock().await;
        let now = self.now();
        let Some(mut g) = self.store.get_grant(grant_id).await? else {
            return Ok(());
        };
        let Some(secs) = g.ends.first_use_secs.filter(|_| g.is_live(now)) else {
            // Started already (another session, another replica).
            return Ok(());
        };
        g.expires_at = now
            .saturating_add(jiff::SignedDuration::from_secs(i64::try_from(secs).unwrap_or(i64::MAX)))
            .unwrap_or(now);
        g.ends.first_use_secs = None;
        self.store.update_grant(&g).await?;
        self.enforcer.activate(LiveGrant::from(&g));
        tracing::info!(grant_id, expires_at = %g.expires_at, "first use: the grant's clock started");
        self.record(
            Event::new(Kind::GrantStarted, now)
                .actor(actor)
                .resource(&g.resource)
                .request(g.request_id)
                .grant(g.id)
                .detail(jitgate_audit::details::GrantActivated {
                    identity: &g.identity,
                    access: &g.access,
                    starts_at: now,
                    expires_at: g.expires_at,
                    policy: &g.policy,
                }),
        )
        .await?;
        Ok(())
    }

    /// A session is ending: a single-session grant ends with it; the last session of an
    /// `idle_end` grant starts its idle clock.
    pub(super) async fn grant_session_over(&self, s: &SessionInfo) {
        let Some(g) = self.enforcer.grants.get(s.grant_id) else {
            return;
        };
        if g.ends.single_session {
            if let Err(e) = self
                .gateway_ends(
                    g.id,
                    "single_session",
                    format!("its single session {} ended", s.id),
                    Some(&s.id),
                )
                .await
            {
                tracing::error!(error = %e, grant_id = g.id, "could not end the single-session grant");
            }
            return;
        }
        self.enforcer.session_leaving(s.grant_id, &s.id);
    }

    /// An `idle_end` grant idled its time here. On a shared store, a session on another
    /// replica keeps it (that replica starts the clock again when its session ends).
    pub(super) async fn grant_idle(&self, grant: &LiveGrant, since: Timestamp) -> ControlResult<()> {
        if self.store.shared() {
            let open = self.store.list_sessions(true, 100_000).await?;
            if open.iter().any(|r| r.info.grant_id == grant.id) {
                tracing::debug!(grant_id = grant.id, "idle here, in use on another replica");
                return Ok(());
            }
        }
        let idle = HumanDuration(grant.ends.idle_secs.unwrap_or(0));
        self.gateway_ends(
            grant.id,
            "idle",
            format!(
                "no session for {idle} (since {})",
                since.strftime("%Y-%m-%d %H:%M:%S UTC")
            ),
            None,
        )
        .await
    }

    /// The gateway ends a live grant early (`why`: `single_session`, `idle`): stored as
    /// expired with the reason, its sessions killed, audited as `grant.expired`.
    /// `ending`: the session whose end this is (not counted as killed).
    async fn gateway_ends(&self, grant_id: i64, why: &str, reason: String, ending: Option<&str>) -> ControlResult<()> {
        let now = self.now();
        let Some(mut g) = self.store.get_grant(grant_id).await? else {
            return Ok(());
        };
        if !g.is_live(now) {
            return Ok(());
        }
        g.state = GrantState::Expired;
        g.ended_at = Some(now);
        g.ended_by = Some("gateway".into());
        g.end_reason = Some(reason.clone());
        self.store.update_grant(&g).await?;
        let still = ending.is_some_and(|id| self.enforcer.sessions.get(id).is_some());
        let (_, n) = self.enforcer.end(g.id, &KillReason::Expired { at: now });
        let n = n.saturating_sub(usize::from(still));
        tracing::info!(grant_id, why, sessions = n, "grant ended: {reason}");
        self.record(
            Event::new(Kind::GrantExpired, now)
                .actor("gateway")
                .resource(&g.resource)
                .grant(g.id)
                .request(g.request_id)
                .reason(Some(reason))
                .detail(jitgate_audit::details::GrantExpired {
                    identity: &g.identity,
                    access: Some(&g.access),
                    expires_at: now,
                    sessions_killed: Some(n),
                    while_down: false,
                    ended: Some(why),
                }),
        )
        .await?;
        Ok(())
    }
}
