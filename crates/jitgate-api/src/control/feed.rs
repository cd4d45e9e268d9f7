//! Replicas on a shared store: following the change feed, applying one change, reading a
//! grant ahead of its notice, and the full resync.

use super::*;

/// A holder's grants on one resource are read from the store at most this often on misses.
const GRANT_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a replica on a shared store re-reads the live state even when the feed is quiet.
const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl ControlPlane {
    /// Apply other replicas' changes from the store's feed, and re-read the whole live state
    /// when notices may have been missed (feed reconnected, receiver lagged) and every
    /// [`RESYNC_EVERY`] as a safety net.
    pub(super) async fn follow_changes(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.store.replication().map(|r| r.changes()) else {
            return;
        };
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
                // Wall clock on purpose: `sent_ms` is the sending replica's wall clock.
                let lag = (Timestamp::now().as_millisecond() - feed.sent_ms).max(0);
                self.metrics.store_feed_lag_seconds.observe(lag as f64 / 1000.0);
            }
            if let Err(e) = self.apply_change(feed.change, &feed.origin).await {
                // The state may now be stale: re-read it as soon as the store answers.
                tracing::warn!(error = %e, "could not apply a change from another replica; resynchronising");
                let mut delay = std::time::Duration::from_millis(200);
                loop {
                    match self.resync("retry").await {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(error = %e, "resync failed; retrying"),
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

    pub(super) async fn apply_change(&self, change: jitgate_store::Change, origin: &str) -> ControlResult<()> {
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
                if let Some(l) = self.login.as_ref() {
                    l.tokens.revoke(&jti, expires_at, self.now().as_second());
                }
            }
            Change::Request { .. } => self.changed(),
            Change::Resync { reason } => self.resync(&reason).await?,
        }
        Ok(())
    }

    /// Bring one grant's live state in line with the store's record. An end only moves later
    /// (extensions); a snapshot with an earlier end is older than what the cache holds. A grant
    /// revoked or released is ended here even when it is not cached, so a stale snapshot read
    /// meanwhile cannot activate it afterwards (`Enforcer::activate` refuses it).
    pub(super) fn apply_grant(&self, g: &Grant) {
        let now = self.now();
        if g.is_live(now) {
            let cached = self.enforcer.grants.get(g.id);
            if cached.is_none_or(|c| g.expires_at > c.expires_at) {
                self.enforcer.activate(LiveGrant::from(g));
            }
            return;
        }
        let reason = match g.state {
            GrantState::Revoked => KillReason::Revoked {
                by: g.ended_by.clone().unwrap_or_else(|| "another replica".into()),
            },
            GrantState::Released => KillReason::Released,
            _ => KillReason::Expired { at: g.expires_at },
        };
        let (was, n) = self.enforcer.end(g.id, &reason);
        if was.is_some() {
            tracing::info!(grant_id = g.id, state = %g.state.as_str(), sessions = n, "grant ended on another replica; its sessions here are closed");
        }
    }

    /// Read one holder's live grants on one resource from a shared store into the cache (the
    /// front ends call this on a cache miss, before refusing). Only grants the cache lacks are
    /// added; one it holds is the feed's to change. At most one read per (identity, resource)
    /// per second and two at a time, so refused connections cannot flood the store. A
    /// single-process store has no other writer: its cache is complete. `Err`: the store did
    /// not answer (the front end says so and refuses).
    pub async fn refresh_grants(&self, identity: &str, resource: &str) -> Result<(), String> {
        if !self.store.shared() {
            return Ok(());
        }
        // Read at most once per window: a miss inside the window waits for its end and reads
        // then (a grant approved elsewhere a moment after a read is found, not refused); a miss
        // that finds another read done meanwhile takes that read's result.
        let key = (identity.to_string(), resource.to_string());
        for attempt in 0..2 {
            let wait = {
                let mut recent = self.grant_reads.lock().unwrap_or_else(|e| e.into_inner());
                let now = std::time::Instant::now();
                if recent.len() > 10_000 {
                    recent.retain(|_, at| now.duration_since(*at) < GRANT_READ_EVERY);
                }
                match recent.get(&key).map(|at| now.duration_since(*at)) {
                    Some(since) if since < GRANT_READ_EVERY => GRANT_READ_EVERY - since,
                    _ => {
                        recent.insert(key.clone(), now);
                        break;
                    }
                }
            };
            if attempt == 1 {
                return Ok(());
            }
            tokio::time::sleep(wait).await;
        }
        let unavailable = |why: &str| format!("jitgate cannot reach its store ({why}); try again shortly");
        let limit = std::time::Duration::from_secs(2);
        let Ok(Ok(_permit)) = tokio::time::timeout(limit, self.grant_read_permits.acquire()).await else {
            self.metrics.store_grant_reads_total.with_label_values(&["error"]).inc();
            return Err(unavailable("too many grant reads at once"));
        };
        let now = self.now();
        let filter = GrantFilter {
            state: Some(GrantState::Active),
            identity: Some(identity.to_string()),
            resource: Some(resource.to_string()),
            live_at: Some(now),
            limit: Some(100),
        };
        match tokio::time::timeout(limit, self.store.list_grants(&filter)).await {
            Ok(Ok(grants)) => {
                let mut added = 0;
                for g in &grants {
                    if self.enforcer.grants.get(g.id).is_none() && self.enforcer.activate(LiveGrant::from(g)) {
                        added += 1;
                    }
                }
                let result = if added == 0 { "none" } else { "found" };
                self.metrics.store_grant_reads_total.with_label_values(&[result]).inc();
                if added > 0 {
                    tracing::info!(
                        identity,
                        resource,
                        grants = added,
                        "grant read from the store ahead of its change notice"
                    );
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.metrics.store_grant_reads_total.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, identity, resource, "could not read grants from the store; refusing");
                Err(unavailable("read failed"))
            }
            Err(_) => {
                self.metrics.store_grant_reads_total.with_label_values(&["error"]).inc();
                tracing::warn!(identity, resource, "reading grants from the store timed out; refusing");
                Err(unavailable("read timed out"))
            }
        }
    }

    /// Re-read everything that gates access: live grants, grants this replica still caches,
    /// kills asked of this replica, token revocations; close sessions the store still shows
    /// open here although they ended while it was unreachable.
    pub async fn resync(&self, reason: &str) -> ControlResult<()> {
        let started = std::time::Instant::now();
        let now = self.now();
        let active = self.active_grants().await?;
        let mut seen = std::collections::HashSet::new();
        for g in &active {
            seen.insert(g.id);
            if g.is_live(now) {
                self.apply_grant(g);
            } else if let Err(e) = self.mark_expired(g.id, now).await {
                tracing::warn!(error = %e, grant_id = g.id, "could not mark a past grant expired");
            }
        }
        for cached in self.enforcer.grants.all() {
            if !seen.contains(&cached.id)
                && let Some(g) = self.store.get_grant(cached.id).await?
            {
                self.apply_grant(&g);
            }
        }
        let replication = self.store.replication();
        let kills = match replication {
            Some(r) => r.kills_requested().await?,
            None => Vec::new(),
        };
        for (id, by) in kills {
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
        if let Some(l) = self.login.as_ref() {
            let secs = now.as_second();
            for (jti, exp) in self.store.revoked_tokens(secs).await? {
                l.tokens.revoke(&jti, exp, secs);
            }
        }
        let skew = match replication {
            Some(r) => r.clock_skew_ms().await?,
            None => 0,
        };
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
}
