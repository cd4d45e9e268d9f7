//! The request lifecycle (create, extend, approve, deny, cancel) and grants (list, revoke,
//! release). Every mutation: engine → store → live state → audit → answer.

use super::*;

/// Pending requests one requester may hold at once.
pub const MAX_PENDING_PER_REQUESTER: usize = 20;

/// The longest a long poll (`GET /v1/requests/{id}?wait=`) is held: under clients' usual
/// 30-second request timeouts.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

/// Long polls held at once. Each costs a connection and a store read per change; past this
/// many a poll answers at once (the client waits a second and asks again), so a flood of them
/// cannot turn every change into thousands of reads.
pub const MAX_LONG_POLLS: usize = 1024;

impl ControlPlane {
    pub(super) fn request_event(&self, kind: Kind, r: &Request, actor: &str, now: Timestamp) -> Event {
        let mut ev = self.request_event_base(kind, r, actor, now);
        if let Some(t) = &r.ticket_title {
            ev.details["ticket_title"] = t.clone().into();
        }
        if let Some(at) = r.starts_at {
            ev.details["starts_at"] = at.to_string().into();
        }
        ev
    }

    fn request_event_base(&self, kind: Kind, r: &Request, actor: &str, now: Timestamp) -> Event {
        Event::new(kind, now)
            .actor(actor)
            .resource(&r.resource)
            .request(r.id)
            .reason(r.reason.clone())
            .detail(jitgate_audit::details::Request {
                identity: &r.requester,
                access: &r.access,
                duration: HumanDuration(r.duration_secs).to_string(),
                policy: &r.policy,
                ticket: r.ticket.as_deref(),
                state: r.state.as_str(),
                step: r.step,
                extends_grant: r.extends_grant,
            })
    }

    /// Create a request (or an extension request) and auto-approve it if a rule admits it.
    pub async fn create_request(&self, who: &Principal, new: NewRequest) -> ControlResult<Request> {
        let now = self.now();
        let cat = self.catalog();
        let mut planned = engine::plan_request_with(&cat, who, &new, now, &self.oncall_view())?;
        self.check_ticket(&mut planned).await?;
        self.submit(who, planned, now).await
    }

    /// Ask for more time on a live grant.
    pub async fn extend(
        &self,
        who: &Principal,
        grant_id: i64,
        duration: HumanDuration,
        reason: Option<String>,
    ) -> ControlResult<Request> {
        let now = self.now();
        let g = self
            .store
            .get_grant(grant_id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no grant {grant_id}")))?;
        let planned = engine::plan_extension(&self.catalog(), who, &g, duration, reason, now)?;
        self.submit(who, planned, now).await
    }

    pub(super) async fn submit(&self, who: &Principal, planned: Request, now: Timestamp) -> ControlResult<Request> {
        let _guard = self.request_lock.lock().await;
        // One requester cannot bury everyone else's requests in the approvers' inboxes.
        let mine = self
            .store
            .list_requests(&RequestFilter {
                state: Some(RequestState::Pending),
                requester: Some(who.name.clone()),
                limit: Some(MAX_PENDING_PER_REQUESTER + 1),
            })
            .await?;
        if mine.len() >= MAX_PENDING_PER_REQUESTER {
            return Err(ControlError::bad_request(
                format!("{} already has {MAX_PENDING_PER_REQUESTER} pending requests", who.name),
                Some("cancel some (`jitgate requests --mine`, `jitgate cancel ID`) or wait for their decisions".into()),
            ));
        }
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

    pub(super) async fn finish_approval(&self, r: Request, now: Timestamp) -> ControlResult<Request> {
        let actor = r.decided_by.clone().unwrap_or_default();
        let (r, g, previous) = match r.extends_grant {
            Some(gid) => {
                let mut g = self
                    .store
                    .get_grant(gid)
                    .await?
                    .ok_or_else(|| ControlError::not_found(format!("no grant {gid}")))?;
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

    pub(super) async fn undo_approval(&self, g: &Grant, previous: Option<Grant>) {
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

    pub(super) async fn audit_approval(
        &self,
        r: &Request,
        g: &Grant,
        actor: &str,
        extended: bool,
        now: Timestamp,
    ) -> ControlResult<()> {
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
        self.record(
            Event::new(kind, now)
                .actor(actor)
                .resource(&g.resource)
                .request(r.id)
                .grant(g.id)
                .detail(jitgate_audit::details::GrantActivated {
                    identity: &g.identity,
                    access: &g.access,
                    starts_at: g.starts_at,
                    expires_at: g.expires_at,
                    policy: &g.policy,
                }),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn load_request(&self, id: i64) -> ControlResult<Request> {
        self.store
            .get_request(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no request {id}")))
    }

    /// Approve (one approval; the last one needed opens or extends the grant).
    pub async fn approve(&self, who: &Principal, id: i64, reason: Option<String>) -> ControlResult<Request> {
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
        self.record(
            self.request_event(Kind::RequestApprovalAdded, &r, &who.name, now)
                .detail(jitgate_audit::details::ApprovalAdded {
                    identity: &r.requester,
                    approvals: r.approvals.len(),
                    next_step: policy.steps.get(r.step).map(|s| s.name.as_str()),
                    comment: reason.as_deref(),
                }),
        )
        .await?;
        Ok(r)
    }

    /// Deny a pending request; a reason is required, so the requester learns why.
    pub async fn deny(&self, who: &Principal, id: i64, reason: String) -> ControlResult<Request> {
        if reason.trim().is_empty() {
            return Err(ControlError::bad_request(
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
    pub async fn cancel(&self, who: &Principal, id: i64) -> ControlResult<Request> {
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

    pub(super) fn may_see_request(&self, cat: &Catalog, who: &Principal, r: &Request) -> bool {
        r.requester == who.name
            || cat.is_admin(&who.groups)
            || cat.is_auditor(&who.groups)
            || cat.is_approver_of(&r.policy, &who.groups)
    }

    /// One request, if the caller may see it.
    pub async fn get_request(&self, who: &Principal, id: i64) -> ControlResult<Request> {
        let r = self.load_request(id).await?;
        if self.may_see_request(&self.catalog(), who, &r) {
            Ok(r)
        } else {
            Err(ControlError::not_found(format!("no request {id}")))
        }
    }

    /// [`Self::get_request`], answered when the request is no longer at `version` (decided, or
    /// one more approval) or after `wait` (at most [`MAX_WAIT`]): a long poll, so waiting
    /// clients learn of a decision at once without polling. Woken by changes on this replica
    /// and through the store's feed; re-reads every 2 s besides (a feed that missed a notice).
    pub async fn wait_request(
        &self,
        who: &Principal,
        id: i64,
        version: Option<i64>,
        wait: std::time::Duration,
    ) -> ControlResult<Request> {
        let Ok(_held) = self.long_polls.try_acquire() else {
            return self.get_request(who, id).await;
        };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut rx = self.changes.subscribe();
        loop {
            rx.borrow_and_update();
            let r = self.get_request(who, id).await?;
            let stopping = self.draining.stopping.load(std::sync::atomic::Ordering::SeqCst);
            if r.state != RequestState::Pending
                || version.is_none_or(|v| v != r.version)
                || stopping
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(r);
            }
            let next = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_secs(2));
            let _ = tokio::time::timeout_at(next, rx.changed()).await;
        }
    }

    /// The groups that may approve `r` at its current step (with the escalation groups once
    /// escalated): whom a waiting requester waits for.
    pub fn waiting_for(&self, r: &Request) -> Vec<String> {
        if r.state != RequestState::Pending {
            return Vec::new();
        }
        let cat = self.catalog();
        let Ok(p) = engine::policy_named(&cat, &r.policy) else {
            return Vec::new();
        };
        let mut groups = engine::eligible_groups(r, p, self.now());
        groups.sort();
        groups.dedup();
        groups
    }

    /// Requests the caller may see: their own, those they can approve, or all for admins.
    pub async fn list_requests(
        &self,
        who: &Principal,
        state: Option<RequestState>,
        mine: bool,
    ) -> ControlResult<Vec<Request>> {
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

    /// Live grants: the caller's, or (`all`) every one the caller may see.
    pub async fn list_grants(&self, who: &Principal, all: bool) -> ControlResult<Vec<Grant>> {
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

    pub(super) async fn end_grant(
        &self,
        who: &Principal,
        grant_id: i64,
        state: GrantState,
        reason: Option<String>,
    ) -> ControlResult<Grant> {
        let now = self.now();
        let mut g = self
            .store
            .get_grant(grant_id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no grant {grant_id}")))?;
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
                .detail(jitgate_audit::details::GrantEnded {
                    identity: &g.identity,
                    access: &g.access,
                    sessions_killed: n,
                }),
        )
        .await?;
        tracing::info!(grant_id = g.id, by = %who.name, sessions = n, "{kind}");
        Ok(g)
    }

    /// Revoke (approvers of the grant's policy, admins).
    pub async fn revoke(&self, who: &Principal, grant_id: i64, reason: Option<String>) -> ControlResult<Grant> {
        self.end_grant(who, grant_id, GrantState::Revoked, reason).await
    }

    /// Release (the holder).
    pub async fn release(&self, who: &Principal, grant_id: i64) -> ControlResult<Grant> {
        self.end_grant(who, grant_id, GrantState::Released, None).await
    }
}
