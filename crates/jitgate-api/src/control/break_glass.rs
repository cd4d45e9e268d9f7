//! Break-glass: a grant opened at once, without approvers, by a policy's `break_glass` groups,
//! within its daily limit; audited as `break_glass.opened` (sent to every webhook, high
//! severity), and leaving a review that the policy's reviewers must close within
//! `review_within`. Overdue reviews raise `jitgate_break_glass_reviews_overdue` and are
//! audited once as `break_glass.overdue`.

use super::*;

/// A break-glass review with what it is about.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReviewItem {
    /// The break-glass request (its `break_glass` field is the review).
    pub request: Request,
    /// The grant it opened.
    pub grant: Option<Grant>,
    /// Open past its due time.
    pub overdue: bool,
}

/// How many requests the review sweep reads (newest first).
const REVIEW_SCAN: usize = 10_000;

impl ControlPlane {
    /// Break the glass: the grant opens now.
    pub async fn break_glass(&self, who: &Principal, new: NewRequest) -> ControlResult<Request> {
        let now = self.now();
        let cat = self.catalog();
        let planned = engine::plan_break_glass(&cat, who, &new, now).map_err(|m| ControlError::forbidden(m, None))?;
        let policy = engine::policy_named(&cat, &planned.policy)?;
        let per_day = policy.break_glass.as_ref().map_or(1, |b| b.per_day);
        let _guard = self.request_lock.lock().await;
        let day_ago = now.checked_sub(jiff::SignedDuration::from_hours(24)).unwrap_or(now);
        let used: Vec<Request> = self
            .store
            .list_requests(&RequestFilter {
                state: None,
                requester: Some(who.name.clone()),
                limit: Some(500),
            })
            .await?
            .into_iter()
            .filter(|r| r.break_glass.is_some() && r.created_at > day_ago)
            .collect();
        if used.len() >= per_day as usize {
            let next = used
                .iter()
                .map(|r| r.created_at)
                .min()
                .and_then(|t| t.checked_add(jiff::SignedDuration::from_hours(24)).ok());
            return Err(ControlError::forbidden(
                format!(
                    "{} has broken the glass {} time(s) in the last 24 hours: policy `{}` allows {per_day} a day",
                    who.name,
                    used.len(),
                    policy.name
                ),
                Some(format!(
                    "ask through `jitgate request` (approvers can act fast), or an admin{}",
                    next.map(|t| format!(
                        "; the next break-glass is possible after {}",
                        t.strftime("%Y-%m-%d %H:%M UTC")
                    ))
                    .unwrap_or_default()
                )),
            ));
        }
        let mut pending = planned.clone();
        pending.state = RequestState::Pending;
        let r = self.store.create_request(&pending).await?;
        self.metrics.break_glass_total.inc();
        let review = planned.break_glass.clone();
        let mut ev = self.request_event(Kind::BreakGlassOpened, &r, &who.name, now);
        ev.details["severity"] = "high".into();
        ev.details["review_due"] = serde_json::json!(review.as_ref().map(|v| v.due_at));
        ev.details["reviewers"] = serde_json::json!(review.as_ref().map(|v| v.reviewers.clone()));
        self.record(ev).await?;
        tracing::warn!(request_id = r.id, identity = %who.name, resource = %r.resource, access = %r.access, "break-glass: grant opened without approval");
        let mut approved = r;
        approved.state = RequestState::Approved;
        approved.decided_at = planned.decided_at;
        approved.decided_by = planned.decided_by;
        approved.decision_reason = planned.decision_reason;
        let r = self.finish_approval(approved, now).await?;
        self.count_reviews().await;
        Ok(r)
    }

    /// Break-glass reviews the caller may see (reviewers, auditors, admins; a requester their
    /// own): open ones, or (`all`) closed ones too, newest first.
    pub async fn reviews(&self, who: &Principal, all: bool) -> ControlResult<Vec<ReviewItem>> {
        let now = self.now();
        let cat = self.catalog();
        let mut out = Vec::new();
        for r in self.break_glass_requests().await? {
            let Some(review) = &r.break_glass else { continue };
            let visible = r.requester == who.name
                || who.in_any(&review.reviewers)
                || cat.is_auditor(&who.groups)
                || cat.is_admin(&who.groups);
            if !visible || (!all && review.closed_at.is_some()) {
                continue;
            }
            let grant = match r.grant_id {
                Some(g) => self.store.get_grant(g).await?,
                None => None,
            };
            out.push(ReviewItem {
                overdue: review.overdue(now),
                request: r,
                grant,
            });
        }
        Ok(out)
    }

    /// One review with everything its grant did: sessions, statements, commands.
    pub async fn review(&self, who: &Principal, id: i64) -> ControlResult<(ReviewItem, Vec<Event>)> {
        let item = self
            .reviews(who, true)
            .await?
            .into_iter()
            .find(|i| i.request.id == id)
            .ok_or_else(|| ControlError::not_found(format!("no break-glass review {id}")))?;
        // The request's own events (break_glass.opened, the review's close) and everything
        // its grant did, in log order.
        let mut events = self
            .store
            .search(&Query {
                request: Some(id),
                limit: Some(1_000),
                ..Default::default()
            })
            .await
            .map_err(ControlError::internal)?;
        if let Some(g) = item.request.grant_id {
            events.extend(
                self.store
                    .search(&Query {
                        grant: Some(g),
                        limit: Some(100_000),
                        ..Default::default()
                    })
                    .await
                    .map_err(ControlError::internal)?,
            );
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Ok((item, events))
    }

    /// Close a review with the reviewer's finding (a reviewer of the policy or an admin, never
    /// the one who broke the glass).
    pub async fn close_review(&self, who: &Principal, id: i64, note: String) -> ControlResult<Request> {
        if note.trim().is_empty() {
            return Err(ControlError::bad_request(
                "closing a review needs a note",
                Some("add --note \"what was done and whether it was justified\"".into()),
            ));
        }
        let _guard = self.request_lock.lock().await;
        let now = self.now();
        let mut r = self.load_request(id).await?;
        let Some(review) = r.break_glass.as_mut() else {
            return Err(ControlError::not_found(format!(
                "request {id} is not a break-glass request"
            )));
        };
        if review.closed_at.is_some() {
            return Err(ControlError::bad_request(
                format!("review {id} is closed already"),
                None,
            ));
        }
        let reviewers = review.reviewers.clone();
        if r.requester == who.name {
            return Err(ControlError::forbidden(
                "you cannot review your own break-glass use (four-eyes principle)",
                None,
            ));
        }
        if !(who.in_any(&reviewers) || self.catalog().is_admin(&who.groups)) {
            return Err(ControlError::forbidden(
                format!("only members of [{}] may close this review", reviewers.join(", ")),
                None,
            ));
        }
        let review = r
            .break_glass
            .as_mut()
            .ok_or_else(|| ControlError::internal("review vanished"))?;
        review.closed_at = Some(now);
        review.closed_by = Some(who.name.clone());
        review.note = Some(note.trim().to_string());
        let overdue = review.due_at <= now;
        let r = self.store.update_request(&r).await?;
        let mut ev = self.request_event(Kind::BreakGlassReviewed, &r, &who.name, now);
        ev.grant_id = r.grant_id;
        ev.details["note"] = note.trim().into();
        ev.details["late"] = overdue.into();
        self.record(ev).await?;
        self.count_reviews().await;
        Ok(r)
    }

    async fn break_glass_requests(&self) -> ControlResult<Vec<Request>> {
        Ok(self
            .store
            .list_requests(&RequestFilter {
                state: Some(RequestState::Approved),
                requester: None,
                limit: Some(REVIEW_SCAN),
            })
            .await?
            .into_iter()
            .filter(|r| r.break_glass.is_some())
            .collect())
    }

    /// Open and overdue reviews into the metrics; each review that became overdue is
    /// audited once (`break_glass.overdue`, a webhook alert).
    pub(super) async fn count_reviews(&self) {
        let now = self.now();
        let Ok(reqs) = self.break_glass_requests().await else {
            return;
        };
        let (mut open, mut overdue) = (0, 0);
        for mut r in reqs {
            let Some(review) = r.break_glass.as_mut() else { continue };
            if review.closed_at.is_some() {
                continue;
            }
            open += 1;
            if !review.overdue(now) {
                continue;
            }
            overdue += 1;
            if review.overdue_notified {
                continue;
            }
            review.overdue_notified = true;
            let due = review.due_at;
            let reviewers = review.reviewers.clone();
            if let Ok(r) = self.store.update_request(&r).await {
                let mut ev = self.request_event(Kind::BreakGlassOverdue, &r, "gateway", now);
                ev.grant_id = r.grant_id;
                ev.details["severity"] = "high".into();
                ev.details["review_due"] = serde_json::json!(due);
                ev.details["reviewers"] = serde_json::json!(reviewers);
                let _ = self.record(ev).await;
            }
        }
        self.metrics.break_glass_reviews_open.set(open);
        self.metrics.break_glass_reviews_overdue.set(overdue);
    }
}
