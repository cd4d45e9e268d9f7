//! Request on connect, as the protocol front ends ask for it (`Gatekeeper::ask`, `asked`,
//! `withdraw`): ordinary requests through the same engine, store and audit as the API's.

use super::*;
use jitgate_core::onconnect::{AskError, Asked};

impl From<ControlError> for AskError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::StoreUnavailable(_) | ControlError::AuditUnavailable(_) => {
                tracing::error!(error = %e, "request on connect");
                Self::Unavailable(format!("{e}; try again in a moment"))
            }
            ControlError::Internal(cause) => {
                tracing::error!(error = %cause, "request on connect");
                Self::Unavailable("the gateway failed to handle the request (operators: see the gateway log)".into())
            }
            ControlError::Refused(r) => Self::Refused(r.to_string()),
            ControlError::BadRequest { message, hint } | ControlError::Forbidden { message, hint } => {
                Self::Refused(match hint {
                    Some(h) => format!("{message} ({h})"),
                    None => message,
                })
            }
            other => Self::Refused(other.to_string()),
        }
    }
}

impl ControlPlane {
    fn asked_of(&self, r: &Request, grant_end: Option<Timestamp>) -> Asked {
        match r.state {
            RequestState::Pending => Asked::Pending {
                id: r.id,
                version: r.version,
                waiting_for: self.waiting_for(r),
                last_approval: r.approvals.last().map(|a| a.approver.clone()),
            },
            RequestState::Approved => Asked::Approved {
                id: r.id,
                by: r.decided_by.clone().unwrap_or_else(|| "an approver".into()),
                until: grant_end,
            },
            s => Asked::Ended {
                id: r.id,
                state: s.as_str().to_string(),
                by: r.decided_by.clone(),
                reason: r.decision_reason.clone(),
            },
        }
    }

    async fn grant_end(&self, r: &Request) -> Option<Timestamp> {
        let gid = r.grant_id?;
        self.store.get_grant(gid).await.ok().flatten().map(|g| g.expires_at)
    }

    /// Make the request, or find the caller's same request (resource, access) already pending.
    pub async fn ask_on_connect(&self, who: &Principal, new: NewRequest) -> ControlResult<(Asked, bool)> {
        let now = self.now();
        let planned = engine::plan_request_with(&self.catalog(), who, &new, now, &self.oncall_view())?;
        let pending = self
            .store
            .list_requests(&RequestFilter {
                state: Some(RequestState::Pending),
                requester: Some(who.name.clone()),
                limit: Some(requests::MAX_PENDING_PER_REQUESTER + 1),
            })
            .await?;
        if let Some(r) = pending
            .iter()
            // A scheduled request is for later: a client connecting now waits on its own ask.
            .find(|r| {
                r.resource == planned.resource
                    && r.access == planned.access
                    && r.extends_grant.is_none()
                    && r.starts_at.is_none()
            })
        {
            return Ok((self.asked_of(r, None), false));
        }
        let mut planned = planned;
        self.check_ticket(&mut planned).await?;
        let r = self.submit(who, planned, now).await?;
        let end = self.grant_end(&r).await;
        Ok((self.asked_of(&r, end), true))
    }

    /// Where request `id` stands, once it is no longer at `version` or after `wait`.
    pub async fn asked_on_connect(
        &self,
        who: &Principal,
        id: i64,
        version: i64,
        wait: std::time::Duration,
    ) -> ControlResult<Asked> {
        let r = self.wait_request(who, id, Some(version), wait).await?;
        let end = self.grant_end(&r).await;
        Ok(self.asked_of(&r, end))
    }

    /// The client that asked went away: cancel the request if it is still pending.
    pub async fn withdraw_on_connect(&self, who: &Principal, id: i64) {
        match self.cancel(who, id).await {
            Ok(_) => {}
            Err(ControlError::Refused(r)) => tracing::debug!(request_id = id, refusal = %r, "not withdrawn"),
            Err(e) => tracing::warn!(request_id = id, error = %e, "could not withdraw a request on connect"),
        }
    }
}
