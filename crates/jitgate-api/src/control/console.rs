//! What the web console asks of the control plane beyond the JSON API's calls: the approval
//! inbox (what the engine admits, never the console's own judgement), a requester's recent
//! history on a resource for the approver deciding, and a watch on changes for live pages.

use super::*;

/// A request the caller can decide now.
#[derive(Debug, Clone)]
pub struct InboxItem {
    /// The request.
    pub request: Request,
    /// The name of the step it is at.
    pub step_name: String,
    /// Steps in its policy's chain.
    pub steps: usize,
    /// Approvals the current step needs, and has.
    pub needed: u32,
    /// Approvals the current step has.
    pub have: usize,
    /// The policy's `step_up`, and whether the caller's authentication is fresh enough for it.
    pub step_up: Option<(HumanDuration, bool)>,
    /// The resource's labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One past (or live) grant of a requester on a resource, and how it was used.
#[derive(Debug, Clone)]
pub struct PastGrant {
    /// The grant.
    pub grant: Grant,
    /// Sessions opened under it.
    pub sessions: usize,
    /// Seconds those sessions were open, summed (live ones up to now).
    pub used_secs: i64,
    /// Statements the gateway refused under it.
    pub refused: usize,
}

/// The most past grants shown per request.
const HISTORY_GRANTS: usize = 5;

impl ControlPlane {
    /// A receiver that changes whenever a request or grant does (here or, on a shared store,
    /// on another replica): what the console's live pages wait on.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A console sign-in with a static or machine token (provider sign-ins are audited as
    /// `login` when their gateway token is minted). No audit, no session.
    pub async fn console_signed_in(&self, who: &Principal, method: &str) -> ControlResult<()> {
        let ev = Event::new(Kind::Login, self.now())
            .actor(&who.name)
            .detail(jitgate_audit::details::Login {
                method,
                groups: &who.groups,
                subject: "",
                token_id: "",
                expires_at: String::new(),
            });
        self.audit().record(ev).await?;
        tracing::info!(identity = %who.name, method, "console sign-in");
        Ok(())
    }

    /// Pending requests `who` may approve now, oldest first: each one the engine's
    /// `may_approve` admits.
    pub async fn inbox(&self, who: &Principal) -> ControlResult<Vec<InboxItem>> {
        let cat = self.catalog();
        let now = self.now();
        let mut out: Vec<InboxItem> = self
            .list_requests(who, Some(RequestState::Pending), false)
            .await?
            .into_iter()
            .filter_map(|r| {
                let p = engine::policy_named(&cat, &r.policy).ok()?;
                engine::may_approve(&r, p, who, now).ok()?;
                let step_up = p.step_up.map(|d| (d, engine::step_up(p, who, now).is_ok()));
                let step = p.steps.get(r.step);
                Some(InboxItem {
                    step_name: step.map(|s| s.name.clone()).unwrap_or_default(),
                    steps: p.steps.len(),
                    needed: step.map_or(1, |s| s.approvals),
                    have: r.approvals.iter().filter(|a| a.step == r.step).count(),
                    step_up,
                    labels: cat
                        .resources
                        .get(&r.resource)
                        .map(|x| x.labels.clone())
                        .unwrap_or_default(),
                    request: r,
                })
            })
            .collect();
        out.sort_by_key(|i| (i.request.created_at, i.request.id));
        Ok(out)
    }

    /// The requester's recent grants on the request's resource, with their use (sessions, time
    /// connected, refused statements), for someone who may see the request and decide or
    /// review it (approvers of its policy, auditors, admins).
    pub async fn history(&self, who: &Principal, r: &Request) -> ControlResult<Vec<PastGrant>> {
        let cat = self.catalog();
        let entitled =
            cat.is_admin(&who.groups) || cat.is_auditor(&who.groups) || cat.is_approver_of(&r.policy, &who.groups);
        if !entitled {
            return Err(ControlError::forbidden(
                "only approvers of the request's policy, auditors and admins see a requester's history",
                None,
            ));
        }
        let elevated = cat.is_admin(&who.groups) || cat.is_auditor(&who.groups);
        // An approver of one policy sees the requester's grants under that policy only.
        let grants: Vec<Grant> = self
            .store
            .list_grants(&GrantFilter {
                identity: Some(r.requester.clone()),
                resource: Some(r.resource.clone()),
                limit: Some(if elevated { HISTORY_GRANTS } else { 100 }),
                ..GrantFilter::default()
            })
            .await?
            .into_iter()
            .filter(|g| elevated || g.policy == r.policy)
            .take(HISTORY_GRANTS)
            .collect();
        let now = self.now();
        let mut out = Vec::with_capacity(grants.len());
        for g in grants {
            let events = self
                .store
                .search(&Query {
                    grant: Some(g.id),
                    kind: Some("session.".into()),
                    limit: Some(10_000),
                    ..Query::default()
                })
                .await
                .map_err(ControlError::internal)?;
            let mut started: std::collections::HashMap<String, Timestamp> = std::collections::HashMap::new();
            let mut used = 0i64;
            let mut sessions = 0;
            let mut ended = std::collections::HashSet::new();
            let mut events = events;
            events.sort_by_key(|e| e.seq);
            for e in &events {
                let Some(sid) = &e.session_id else { continue };
                match e.kind.as_str() {
                    "session.started" => {
                        sessions += 1;
                        started.insert(sid.clone(), e.time);
                    }
                    "session.ended" => {
                        if let Some(t) = started.get(sid) {
                            used += e.time.as_second() - t.as_second();
                        }
                        ended.insert(sid.clone());
                    }
                    _ => {}
                }
            }
            for (sid, t) in &started {
                if !ended.contains(sid) {
                    used += now.as_second() - t.as_second();
                }
            }
            let refused = self
                .store
                .search(&Query {
                    grant: Some(g.id),
                    kind: Some("pg.statement".into()),
                    limit: Some(10_000),
                    ..Query::default()
                })
                .await
                .map_err(ControlError::internal)?
                .iter()
                .filter(|e| e.details["outcome"] == "refused")
                .count();
            out.push(PastGrant {
                grant: g,
                sessions,
                used_secs: used.max(0),
                refused,
            });
        }
        Ok(out)
    }
}
