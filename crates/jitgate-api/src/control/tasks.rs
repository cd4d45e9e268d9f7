//! Start-up, reload and the background work: restoring grants, swapping the catalog, the
//! expiry scheduler and the pending-request sweeper (and [`ControlPlane::tick`], which does at
//! once what they do over time).

use super::*;

impl ControlPlane {
    /// Load live grants from the store into the cache; close what ended while the gateway was
    /// down (expired grants are marked expired and audited, never resurrected).
    pub async fn restore(&self) -> ControlResult<usize> {
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
                        .detail(jitgate_audit::details::GrantExpired {
                            identity: &g.identity,
                            access: None,
                            expires_at: g.expires_at,
                            sessions_killed: None,
                            while_down: true,
                            ended: None,
                        }),
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
    pub async fn reload(&self, catalog: Catalog) -> ControlResult<()> {
        let summary = jitgate_audit::details::Reloaded {
            resources: catalog.resources.len(),
            policies: catalog.policies.len(),
            identities: catalog.identities.len(),
        };
        self.enforcer.set_warning_lead(catalog.expiry_warning.secs());
        self.catalog.store(Arc::new(catalog));
        self.metrics.config_reloads_total.with_label_values(&["ok"]).inc();
        self.record(
            Event::new(Kind::ConfigReloaded, self.now())
                .actor("gateway")
                .detail(summary),
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
                    tracing::error!(error = %e, "could not persist an expiry");
                }
            }
        });
        if self.store.shared() {
            tokio::spawn(self.clone().follow_changes(stop.clone()));
        }
        // On-call sources: their own task, so a slow source never delays the sweeps.
        let me = self.clone();
        let halt = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = halt.cancelled() => return,
                }
                tokio::select! {
                    () = me.poll_oncall() => {}
                    () = halt.cancelled() => return,
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                me.sweep_reviews().await;
                if let Err(e) = me.sweep_pending().await {
                    tracing::warn!(error = %e, "pending-request sweep failed");
                }
            }
        });
    }

    /// Do at once what the background tasks do on their own: end and warn the grants due at
    /// the clock's instant, then expire or escalate undecided requests. With a manual clock this
    /// drives the whole lifecycle without sleeping (the in-process tests).
    pub async fn tick(&self) -> ControlResult<()> {
        for ev in self.enforcer.due(self.now()) {
            self.on_live_event(ev).await?;
        }
        self.sweep_reviews().await;
        self.sweep_pending().await
    }

    /// Every 5 s (by the clock): count open and overdue break-glass reviews.
    async fn sweep_reviews(&self) {
        let now = self.now();
        let due = {
            let mut last = self.review_sweep.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| now.duration_since(t) >= jiff::SignedDuration::from_secs(5));
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            self.count_reviews().await;
        }
    }

    pub(super) async fn on_live_event(&self, ev: LiveEvent) -> ControlResult<()> {
        let now = self.now();
        match ev {
            LiveEvent::Expired { grant, sessions } => {
                // The kill already happened (the scheduler runs from the cache). A store outage
                // only delays marking the grant expired there: the next resync does it.
                if let Err(e) = self.mark_expired(grant.id, now).await {
                    tracing::warn!(error = %e, grant_id = grant.id, "could not mark the grant expired in the store; the next resync will");
                }
                tracing::info!(grant_id = grant.id, identity = %grant.identity, resource = %grant.resource, sessions, "grant expired");
                self.record(
                    Event::new(Kind::GrantExpired, now)
                        .actor("gateway")
                        .resource(&grant.resource)
                        .grant(grant.id)
                        .detail(jitgate_audit::details::GrantExpired {
                            identity: &grant.identity,
                            access: Some(&grant.access),
                            expires_at: grant.expires_at,
                            sessions_killed: Some(sessions),
                            while_down: false,
                            ended: None,
                        }),
                )
                .await?;
            }
            LiveEvent::Idle { grant, since } => self.grant_idle(&grant, since).await?,
            LiveEvent::Expiring { grant } => {
                self.record(
                    Event::new(Kind::GrantExpiring, now)
                        .actor("gateway")
                        .resource(&grant.resource)
                        .grant(grant.id)
                        .detail(jitgate_audit::details::GrantExpiring {
                            identity: &grant.identity,
                            expires_at: grant.expires_at,
                        }),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Every grant the store holds as active (live or past its end).
    pub(super) async fn active_grants(&self) -> ControlResult<Vec<Grant>> {
        Ok(self
            .store
            .list_grants(&GrantFilter {
                state: Some(GrantState::Active),
                limit: Some(1_000_000),
                ..Default::default()
            })
            .await?)
    }

    pub(super) async fn mark_expired(&self, id: i64, now: Timestamp) -> ControlResult<()> {
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

    pub(super) async fn sweep_pending(&self) -> ControlResult<()> {
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
                self.record(self.request_event(Kind::RequestEscalated, &r, "gateway", now).detail(
                    jitgate_audit::details::Escalated {
                        escalate_to: &policy.escalate_to,
                    },
                ))
                .await?;
            }
        }
        Ok(())
    }
}
