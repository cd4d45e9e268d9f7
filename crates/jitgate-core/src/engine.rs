//! The decisions of the access lifecycle, as pure functions of (catalog, records, caller, now).
//!
//! Nothing here touches a socket, a file or the wall clock: the control plane loads the records,
//! asks these functions what happens, persists the result and writes the audit event. That keeps
//! every rule — first matching policy, requester groups, self-approval, ordered steps,
//! escalation, auto-approval windows, duration caps — testable with a [`crate::ManualClock`].

use jiff::Timestamp;

use crate::catalog::{Catalog, Policy, Resource};
use crate::duration::HumanDuration;
use crate::model::{Approval, Ends, Grant, GrantState, Principal, Request, RequestState};
use crate::oncall::{OnCallAnswer, OnCallView};

/// What a caller asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRequest {
    /// Resource name.
    pub resource: String,
    /// Access level; default: the resource's default.
    pub access: Option<String>,
    /// Duration; default: the policy's.
    pub duration: Option<HumanDuration>,
    /// The requester's reason (required when the policy says `reason_required`).
    pub reason: Option<String>,
    /// Ticket id.
    pub ticket: Option<String>,
    /// How the grant should end besides its expiry (tightens the policy's, never loosens).
    pub lifetime: Lifetime,
}

/// What a request asks about its grant's end (`--single-session`, `--idle-end`, `--start`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lifetime {
    /// End the grant with its first session.
    #[serde(default)]
    pub single_session: bool,
    /// End it after this long without a session.
    #[serde(default)]
    pub idle_end: Option<HumanDuration>,
    /// Start its clock at the first session.
    #[serde(default)]
    pub first_use: bool,
    /// A scheduled request (`--at`): the window opens here, not at approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

/// Why the engine said no. Each message says what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such resource.
    #[error("unknown resource `{name}`")]
    UnknownResource {
        /// Asked name.
        name: String,
        /// Names that exist.
        known: Vec<String>,
    },
    /// No policy covers the resource.
    #[error("no policy covers `{0}`: nobody can request it (deny by default)")]
    NoPolicy(String),
    /// The caller is not a requester.
    #[error("{who} may not request `{resource}`: policy `{policy}` allows requests from groups [{groups}] only")]
    NotRequester {
        /// The identity that asked.
        who: String,
        /// The resource asked for.
        resource: String,
        /// Policy name.
        policy: String,
        /// Allowed groups.
        groups: String,
    },
    /// The access level is not offered/allowed.
    #[error("access `{access}` is not allowed on `{resource}`; allowed: {allowed}")]
    AccessNotAllowed {
        /// Asked level.
        access: String,
        /// The resource asked for.
        resource: String,
        /// Allowed levels.
        allowed: String,
    },
    /// A reason is required.
    #[error("policy `{0}` requires a reason")]
    ReasonRequired(String),
    /// Too long.
    #[error("duration {asked} exceeds the maximum of {max} set by policy `{policy}`")]
    DurationTooLong {
        /// The duration asked for.
        asked: HumanDuration,
        /// The policy's `max_duration`.
        max: HumanDuration,
        /// The policy that sets the maximum.
        policy: String,
    },
    /// Zero duration.
    #[error("duration must be at least 1s")]
    DurationZero,
    /// Requesters never approve their own requests.
    #[error("you cannot approve your own request (four-eyes principle)")]
    SelfApproval,
    /// The policy needs a recent provider authentication to approve.
    #[error("policy `{policy}` needs a sign-in at the identity provider within the last {max_age} to approve")]
    StepUpRequired {
        /// Policy name.
        policy: String,
        /// How recent the authentication must be.
        max_age: HumanDuration,
    },
    /// The approver is not eligible for the current step.
    #[error("{who} may not approve request {id}: step `{step}` needs an approver from groups [{groups}]")]
    NotApprover {
        /// The identity that tried to approve.
        who: String,
        /// Request id.
        id: i64,
        /// Step name.
        step: String,
        /// Eligible groups.
        groups: String,
    },
    /// Same person twice.
    #[error("{0} has already approved this request; another approver is needed")]
    AlreadyApproved(String),
    /// Not pending any more.
    #[error("request {id} is {state}, not pending")]
    NotPending {
        /// Request id.
        id: i64,
        /// Current state.
        state: RequestState,
    },
    /// Only the requester (or an admin) may do this.
    #[error("only the requester or an admin may {0}")]
    NotYours(&'static str),
    /// Only an approver of the policy or an admin may do this.
    #[error("only an approver of policy `{0}` or an admin may revoke this grant")]
    NotRevoker(String),
    /// The policy changed under the request.
    #[error("policy `{0}` no longer exists (the configuration was reloaded)")]
    PolicyGone(String),
    /// A scheduled start in the past.
    #[error("the start {at} is in the past")]
    StartInPast {
        /// The start asked for.
        at: Timestamp,
    },
    /// A scheduled start too far ahead.
    #[error("the start {at} is more than {max} ahead")]
    StartTooFar {
        /// The start asked for.
        at: Timestamp,
        /// How far ahead a start may be.
        max: HumanDuration,
    },
    /// A scheduled grant that has not opened yet.
    #[error("grant {id} opens at {opens}: a scheduled grant can be extended once it is open")]
    GrantNotOpen {
        /// Grant id.
        id: i64,
        /// When it opens.
        opens: Timestamp,
    },
    /// The grant is not live.
    #[error("grant {id} is {state}")]
    GrantNotLive {
        /// Grant id.
        id: i64,
        /// The grant's state, which is not `active`.
        state: &'static str,
    },
}

/// How an API should present a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    /// 400: the input is wrong.
    BadInput,
    /// 403: the caller may not.
    Forbidden,
    /// 404: nothing by that name.
    NotFound,
    /// 409: the state does not allow it.
    Conflict,
}

impl Refusal {
    /// The refusal for acting on a grant that has ended.
    pub fn not_live(grant: &Grant) -> Self {
        Self::GrantNotLive {
            id: grant.id,
            state: if grant.state == GrantState::Active {
                "expired"
            } else {
                grant.state.as_str()
            },
        }
    }

    /// HTTP-ish class.
    pub fn class(&self) -> RefusalClass {
        match self {
            Self::UnknownResource { .. } => RefusalClass::NotFound,
            Self::NoPolicy(_)
            | Self::NotRequester { .. }
            | Self::SelfApproval
            | Self::StepUpRequired { .. }
            | Self::NotApprover { .. }
            | Self::NotYours(_)
            | Self::NotRevoker(_) => RefusalClass::Forbidden,
            Self::AccessNotAllowed { .. }
            | Self::ReasonRequired(_)
            | Self::DurationTooLong { .. }
            | Self::DurationZero
            | Self::StartInPast { .. }
            | Self::StartTooFar { .. } => RefusalClass::BadInput,
            Self::AlreadyApproved(_)
            | Self::NotPending { .. }
            | Self::PolicyGone(_)
            | Self::GrantNotLive { .. }
            | Self::GrantNotOpen { .. } => RefusalClass::Conflict,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::UnknownResource { known, .. } => format!("resources: {}", known.join(", ")),
            Self::NoPolicy(_) => "ask an operator to add a [[policies]] entry covering it".into(),
            Self::NotRequester { .. } => "ask to be added to one of those groups".into(),
            Self::AccessNotAllowed { allowed, .. } => format!("use --access with one of: {allowed}"),
            Self::ReasonRequired(_) => "add --reason \"INC-123: why you need it\"".into(),
            Self::DurationTooLong { max, .. } => {
                format!("ask for --for {max} or less (extend later with `jitgate extend`)")
            }
            Self::DurationZero => "use e.g. --for 30m".into(),
            Self::StartInPast { .. } => "leave out --at to start at approval, or give a later time".into(),
            Self::StartTooFar { .. } => "ask nearer the time".into(),
            Self::SelfApproval => "ask someone in an approver group to run `jitgate approve`".into(),
            Self::StepUpRequired { .. } => {
                "sign in again: approve from the web console (it sends you through the provider), or run `jitgate login --fresh` and approve within that time".into()
            }
            Self::NotApprover { .. } => "ask a member of those groups".into(),
            Self::AlreadyApproved(_) | Self::NotRevoker(_) => return None,
            Self::NotPending { .. } => "see `jitgate requests`".into(),
            Self::NotYours(_) => return None,
            Self::PolicyGone(_) => "create a new request".into(),
            Self::GrantNotLive { .. } => "request access again with `jitgate request`".into(),
            Self::GrantNotOpen { .. } => {
                "extend it after it opens, or ask for the longer window with `jitgate request --at`".into()
            }
        })
    }
}

fn join(v: &[String]) -> String {
    v.join(", ")
}

/// Find the resource or say which exist.
pub fn resource<'a>(catalog: &'a Catalog, name: &str) -> Result<&'a Resource, Refusal> {
    catalog.resources.get(name).ok_or_else(|| Refusal::UnknownResource {
        name: name.to_string(),
        known: catalog.resources.keys().cloned().collect(),
    })
}

/// The access levels `policy` allows on `resource`.
pub fn allowed_access(policy: &Policy, resource: &Resource) -> Vec<String> {
    resource
        .access_levels
        .iter()
        .filter(|a| policy.access.is_empty() || policy.access.contains(a))
        .cloned()
        .collect()
}

/// The first policy that covers the resource and admits the caller as a requester.
pub fn policy_for<'a>(catalog: &'a Catalog, who: &Principal, resource: &'a Resource) -> Result<&'a Policy, Refusal> {
    let mut covering = catalog.policies_for(resource).peekable();
    let Some(first) = covering.peek().copied() else {
        return Err(Refusal::NoPolicy(resource.name.clone()));
    };
    covering
        .find(|p| who.in_any(&p.requesters))
        .ok_or_else(|| Refusal::NotRequester {
            who: who.name.clone(),
            resource: resource.name.clone(),
            policy: first.name.clone(),
            groups: join(&first.requesters),
        })
}

/// A break-glass request, approved at once by the break-glass rule of the first policy that
/// covers the resource and lets the caller break the glass. The daily limit is the control
/// plane's (it counts the caller's earlier uses). `Err`: why not, for the caller.
pub fn plan_break_glass(
    catalog: &Catalog,
    who: &Principal,
    new: &NewRequest,
    now: Timestamp,
) -> Result<Request, String> {
    let res = resource(catalog, &new.resource).map_err(|r| r.to_string())?;
    let Some((policy, bg)) = catalog
        .policies_for(res)
        .find_map(|p| p.break_glass.as_ref().filter(|b| who.in_any(&b.groups)).map(|b| (p, b)))
    else {
        let groups: Vec<String> = catalog
            .policies_for(res)
            .filter_map(|p| p.break_glass.as_ref())
            .flat_map(|b| b.groups.iter().cloned())
            .collect();
        return Err(if groups.is_empty() {
            format!(
                "no policy covering `{}` allows break-glass access; use `jitgate request`",
                res.name
            )
        } else {
            format!(
                "{} may not break the glass on `{}`: only members of [{}] may",
                who.name,
                res.name,
                join(&groups)
            )
        });
    };
    let reason = new
        .reason
        .as_ref()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| "break-glass needs a reason: --reason \"INC-123 what is on fire\"".to_string())?;
    let allowed = allowed_access(policy, res);
    let access = match &new.access {
        Some(a) => a.clone(),
        None => res
            .default_access()
            .filter(|a| allowed.iter().any(|x| x == a))
            .or_else(|| allowed.first().map(String::as_str))
            .unwrap_or_default()
            .to_string(),
    };
    if !allowed.contains(&access) {
        return Err(format!(
            "access `{access}` is not allowed on `{}`; allowed: {}",
            res.name,
            join(&allowed)
        ));
    }
    let duration = new.duration.unwrap_or(bg.max_duration);
    if duration.secs() == 0 {
        return Err("duration must be at least 1s".into());
    }
    if duration > bg.max_duration {
        return Err(format!(
            "break-glass lasts at most {} under policy `{}` (asked {duration})",
            bg.max_duration, policy.name
        ));
    }
    let secs = i64::try_from(bg.review_within.secs()).unwrap_or(i64::MAX);
    Ok(Request {
        id: 0,
        requester: who.name.clone(),
        requester_groups: who.groups.clone(),
        resource: res.name.clone(),
        access,
        duration_secs: duration.secs(),
        reason: Some(reason),
        ticket: new.ticket.clone().filter(|t| !t.trim().is_empty()),
        policy: policy.name.clone(),
        state: RequestState::Approved,
        created_at: now,
        decided_at: Some(now),
        decided_by: Some(format!("break-glass:{}", who.name)),
        decision_reason: Some(format!("break-glass under policy `{}`", policy.name)),
        approvals: Vec::new(),
        step: 0,
        escalated: false,
        extends_grant: None,
        grant_id: None,
        version: 0,
        ends: Ends::default(),
        starts_at: None,
        break_glass: Some(crate::model::Review {
            due_at: now.saturating_add(jiff::SignedDuration::from_secs(secs)).unwrap_or(now),
            reviewers: bg.reviewers.clone(),
            closed_at: None,
            closed_by: None,
            note: None,
            overdue_notified: false,
        }),
        ticket_title: None,
    })
}

/// Validate a new request and decide whether it is auto-approved, with no on-call source
/// known. Returns the request (id 0, for the store to assign) in state `pending` or `approved`.
pub fn plan_request(catalog: &Catalog, who: &Principal, new: &NewRequest, now: Timestamp) -> Result<Request, Refusal> {
    plan_request_with(catalog, who, new, now, &OnCallView::none())
}

/// [`plan_request`], given who is on call (for rules with an `oncall` condition).
pub fn plan_request_with(
    catalog: &Catalog,
    who: &Principal,
    new: &NewRequest,
    now: Timestamp,
    oncall: &OnCallView,
) -> Result<Request, Refusal> {
    let res = resource(catalog, &new.resource)?;
    let policy = policy_for(catalog, who, res)?;
    let allowed = allowed_access(policy, res);
    let access = match &new.access {
        Some(a) => a.clone(),
        None => res
            .default_access()
            .filter(|a| allowed.iter().any(|x| x == a))
            .or_else(|| allowed.first().map(String::as_str))
            .unwrap_or_default()
            .to_string(),
    };
    if !allowed.contains(&access) {
        return Err(Refusal::AccessNotAllowed {
            access,
            resource: res.name.clone(),
            allowed: join(&allowed),
        });
    }
    let duration = check_duration(policy, new.duration)?;
    let reason = new
        .reason
        .as_ref()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if policy.reason_required && reason.is_none() {
        return Err(Refusal::ReasonRequired(policy.name.clone()));
    }
    let mut req = Request {
        id: 0,
        requester: who.name.clone(),
        requester_groups: who.groups.clone(),
        resource: res.name.clone(),
        access,
        duration_secs: duration.secs(),
        reason,
        ticket: new.ticket.clone().filter(|t| !t.trim().is_empty()),
        policy: policy.name.clone(),
        state: RequestState::Pending,
        created_at: now,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        approvals: Vec::new(),
        step: 0,
        escalated: false,
        extends_grant: None,
        grant_id: None,
        version: 0,
        ends: ends_for(policy, &new.lifetime, duration)?,
        break_glass: None,
        ticket_title: None,
        starts_at: scheduled_start(new.lifetime.at, now)?,
    };
    apply_auto_approval(&mut req, policy, res, now, oncall);
    Ok(req)
}

/// A scheduled start: in the future (a minute's slack: a start typed as "now" is now) and at
/// most [`MAX_AHEAD`](crate::when::MAX_AHEAD) away. A start within the slack is no schedule.
fn scheduled_start(at: Option<Timestamp>, now: Timestamp) -> Result<Option<Timestamp>, Refusal> {
    let Some(at) = at else { return Ok(None) };
    let ahead = at.duration_since(now).as_secs();
    if ahead < -60 {
        return Err(Refusal::StartInPast { at });
    }
    let max = crate::when::MAX_AHEAD;
    if ahead > i64::try_from(max.secs()).unwrap_or(i64::MAX) {
        return Err(Refusal::StartTooFar { at, max });
    }
    Ok((ahead > 0).then_some(at))
}

/// The grant's end rules: the policy's, tightened by the request's.
fn ends_for(policy: &Policy, asked: &Lifetime, duration: HumanDuration) -> Result<Ends, Refusal> {
    let idle = match (policy.idle_end, asked.idle_end) {
        (_, Some(d)) if d.secs() == 0 => return Err(Refusal::DurationZero),
        (Some(p), Some(a)) => Some(p.min(a)),
        (p, a) => p.or(a),
    };
    let first_use = policy.first_use || asked.first_use;
    Ok(Ends {
        single_session: policy.single_session || asked.single_session,
        idle_secs: idle.map(|d| d.secs()),
        first_use_secs: first_use.then_some(duration.secs()),
        first_use_within_secs: first_use.then_some(policy.first_use_within.secs()),
    })
}

fn check_duration(policy: &Policy, asked: Option<HumanDuration>) -> Result<HumanDuration, Refusal> {
    let d = asked.unwrap_or(policy.default_duration);
    if d.secs() == 0 {
        return Err(Refusal::DurationZero);
    }
    if d > policy.max_duration {
        return Err(Refusal::DurationTooLong {
            asked: d,
            max: policy.max_duration,
            policy: policy.name.clone(),
        });
    }
    Ok(d)
}

/// The first auto-approval rule that admits `req` now, as `(index, description)`, with no
/// on-call source known (a rule with an `oncall` condition never admits).
pub fn auto_approval_rule(req: &Request, policy: &Policy, res: &Resource, now: Timestamp) -> Option<(usize, String)> {
    auto_approval_rule_with(req, policy, res, now, &OnCallView::none())
}

/// The first auto-approval rule that admits `req` now, given who is on call.
pub fn auto_approval_rule_with(
    req: &Request,
    policy: &Policy,
    res: &Resource,
    now: Timestamp,
    oncall: &OnCallView,
) -> Option<(usize, String)> {
    policy.auto_approve.iter().enumerate().find_map(|(i, rule)| {
        let groups_ok = rule.groups.is_empty() || req.requester_groups.iter().any(|g| rule.groups.contains(g));
        let access_ok = rule.access.is_empty() || rule.access.contains(&req.access);
        let dur_ok = rule.max_duration.is_none_or(|m| req.duration_secs <= m.secs());
        // A window is about when access is used: a scheduled request's start.
        let win_ok = rule
            .window
            .as_ref()
            .is_none_or(|w| w.contains(req.starts_at.map_or(now, |a| a.max(now))));
        let labels_ok = rule.match_labels.iter().all(|(k, v)| res.labels.get(k) == Some(v));
        // On call now says nothing of later: a scheduled request goes to the approvers. A
        // stale or unknown source admits nobody (fail closed to manual approval).
        let oncall_level = match &rule.oncall {
            None => Some(None),
            Some(_) if req.starts_at.is_some() => None,
            Some(o) => match oncall.level(&o.source, &req.requester, now) {
                OnCallAnswer::Level(l) if l <= o.escalation_level_max => Some(Some((o.source.as_str(), l))),
                _ => None,
            },
        };
        (groups_ok && access_ok && dur_ok && win_ok && labels_ok)
            .then_some(oncall_level)
            .flatten()
            .map(|on| {
                let mut d = format!("policy `{}` auto_approve #{}", policy.name, i + 1);
                if let Some(w) = &rule.window {
                    d.push_str(&format!(" (window {})", w.as_str()));
                }
                if let Some((source, level)) = on {
                    d.push_str(&format!(" (on call in `{source}`, level {level})"));
                }
                (i, d)
            })
    })
}

fn apply_auto_approval(req: &mut Request, policy: &Policy, res: &Resource, now: Timestamp, oncall: &OnCallView) {
    if let Some((_, desc)) = auto_approval_rule_with(req, policy, res, now, oncall) {
        req.state = RequestState::Approved;
        req.decided_at = Some(now);
        req.decided_by = Some(format!("policy:{}", policy.name));
        req.decision_reason = Some(desc);
    }
}

/// Look up the request's policy by name.
pub fn policy_named<'a>(catalog: &'a Catalog, name: &str) -> Result<&'a Policy, Refusal> {
    catalog
        .policies
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Refusal::PolicyGone(name.to_string()))
}

/// True when the request has waited past the policy's `escalate_after`.
pub fn escalation_due(req: &Request, policy: &Policy, now: Timestamp) -> bool {
    req.state == RequestState::Pending
        && !policy.escalate_to.is_empty()
        && policy
            .escalate_after
            .is_some_and(|d| now >= req.created_at.saturating_add(d.as_signed()).unwrap_or(req.created_at))
}

/// True when a pending request has waited past its policy's `pending_timeout`. A scheduled
/// request waits at least until its window opens (approvers decide ahead of it), and never past
/// its window's end.
pub fn pending_timed_out(req: &Request, policy: &Policy, now: Timestamp) -> bool {
    req.state == RequestState::Pending && now >= pending_deadline(req, policy)
}

/// When a pending request times out (see [`pending_timed_out`]).
pub fn pending_deadline(req: &Request, policy: &Policy) -> Timestamp {
    let timeout = req
        .created_at
        .saturating_add(policy.pending_timeout.as_signed())
        .unwrap_or(req.created_at);
    match req.starts_at {
        None => timeout,
        Some(at) => {
            let end = at
                .saturating_add(jiff::SignedDuration::from_secs(
                    i64::try_from(req.duration_secs).unwrap_or(i64::MAX),
                ))
                .unwrap_or(at);
            timeout.max(at).min(end)
        }
    }
}

/// Groups that may approve the request's current step now.
pub fn eligible_groups(req: &Request, policy: &Policy, now: Timestamp) -> Vec<String> {
    let mut g = policy
        .steps
        .get(req.step)
        .map(|s| s.approvers.clone())
        .unwrap_or_default();
    if req.escalated || escalation_due(req, policy, now) {
        g.extend(policy.escalate_to.iter().cloned());
    }
    g
}

fn ensure_pending(req: &Request) -> Result<(), Refusal> {
    if req.state == RequestState::Pending {
        Ok(())
    } else {
        Err(Refusal::NotPending {
            id: req.id,
            state: req.state,
        })
    }
}

/// Whether `who` may add an approval to `req` now (pending, not their own, in a group of the
/// current step, not already approved by them); the step-up rule is [`step_up`]. The console's
/// inbox lists what this admits, so it never decides anything itself.
pub fn may_approve(req: &Request, policy: &Policy, who: &Principal, now: Timestamp) -> Result<(), Refusal> {
    ensure_pending(req)?;
    if who.name == req.requester {
        return Err(Refusal::SelfApproval);
    }
    let groups = eligible_groups(req, policy, now);
    if !who.in_any(&groups) {
        return Err(Refusal::NotApprover {
            who: who.name.clone(),
            id: req.id,
            step: policy.steps.get(req.step).map(|s| s.name.clone()).unwrap_or_default(),
            groups: join(&groups),
        });
    }
    if req.approvals.iter().any(|a| a.approver == who.name) {
        return Err(Refusal::AlreadyApproved(who.name.clone()));
    }
    Ok(())
}

/// A policy's `step_up`: the approver authenticated at the provider no longer ago than it says
/// (static and machine identities never did, so they cannot approve under it).
pub fn step_up(policy: &Policy, who: &Principal, now: Timestamp) -> Result<(), Refusal> {
    let Some(max_age) = policy.step_up else {
        return Ok(());
    };
    // An authentication "in the future" (a provider clock far ahead) is not fresh; a minute of
    // skew is tolerated.
    let now_s = now.as_second();
    let fresh = who.auth_time.is_some_and(|t| {
        t <= now_s.saturating_add(60) && now_s.saturating_sub(t) <= i64::try_from(max_age.secs()).unwrap_or(i64::MAX)
    });
    if fresh {
        Ok(())
    } else {
        Err(Refusal::StepUpRequired {
            policy: policy.name.clone(),
            max_age,
        })
    }
}

/// Record an approval. Returns true when it was the last one needed (the request is now
/// approved and the caller must open or extend the grant).
pub fn approve(
    req: &mut Request,
    policy: &Policy,
    who: &Principal,
    reason: Option<String>,
    now: Timestamp,
) -> Result<bool, Refusal> {
    may_approve(req, policy, who, now)?;
    step_up(policy, who, now)?;
    req.approvals.push(Approval {
        approver: who.name.clone(),
        at: now,
        step: req.step,
        reason,
    });
    let needed = policy.steps.get(req.step).map(|s| s.approvals).unwrap_or(1);
    let have = req.approvals.iter().filter(|a| a.step == req.step).count();
    if u32::try_from(have).unwrap_or(u32::MAX) >= needed {
        req.step += 1;
        if req.step >= policy.steps.len() {
            req.state = RequestState::Approved;
            req.decided_at = Some(now);
            req.decided_by = Some(who.name.clone());
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deny: any approver eligible for the current step (or an admin) may.
pub fn deny(
    req: &mut Request,
    policy: &Policy,
    who: &Principal,
    is_admin: bool,
    reason: String,
    now: Timestamp,
) -> Result<(), Refusal> {
    ensure_pending(req)?;
    if who.name == req.requester {
        return Err(Refusal::NotYours(
            "deny a request (cancel your own with `jitgate cancel`)",
        ));
    }
    let groups = eligible_groups(req, policy, now);
    if !is_admin && !who.in_any(&groups) {
        return Err(Refusal::NotApprover {
            who: who.name.clone(),
            id: req.id,
            step: policy.steps.get(req.step).map(|s| s.name.clone()).unwrap_or_default(),
            groups: join(&groups),
        });
    }
    req.state = RequestState::Denied;
    req.decided_at = Some(now);
    req.decided_by = Some(who.name.clone());
    req.decision_reason = Some(reason);
    Ok(())
}

/// Cancel: the requester (or an admin).
pub fn cancel(req: &mut Request, who: &Principal, is_admin: bool, now: Timestamp) -> Result<(), Refusal> {
    ensure_pending(req)?;
    if who.name != req.requester && !is_admin {
        return Err(Refusal::NotYours("cancel a request"));
    }
    req.state = RequestState::Cancelled;
    req.decided_at = Some(now);
    req.decided_by = Some(who.name.clone());
    Ok(())
}

/// Expire a pending request that waited too long.
pub fn expire_pending(req: &mut Request, now: Timestamp) {
    req.state = RequestState::Expired;
    req.decided_at = Some(now);
    req.decided_by = Some("gateway".into());
    req.decision_reason = Some("no decision before the pending timeout".into());
}

/// The grant an approved (non-extension) request opens, starting now.
pub fn grant_for(req: &Request, now: Timestamp) -> Grant {
    // First use: until its first session, the grant lives only until the first-use deadline.
    let secs = match req.ends.first_use_within_secs {
        Some(within) if req.ends.first_use_secs.is_some() => i64::try_from(within).unwrap_or(i64::MAX),
        _ => i64::try_from(req.duration_secs).unwrap_or(i64::MAX),
    };
    // Scheduled: the window is the window. Approved before it, the grant waits for its start;
    // approved late, it opens now and still ends with the window.
    let (starts_at, from) = match req.starts_at {
        Some(at) => (at.max(now), at),
        None => (now, now),
    };
    Grant {
        id: 0,
        request_id: req.id,
        identity: req.requester.clone(),
        resource: req.resource.clone(),
        access: req.access.clone(),
        policy: req.policy.clone(),
        state: GrantState::Active,
        starts_at,
        expires_at: from
            .saturating_add(jiff::SignedDuration::from_secs(secs))
            .unwrap_or(from),
        ended_at: None,
        ended_by: None,
        end_reason: None,
        ends: Ends {
            first_use_within_secs: None,
            ..req.ends
        },
    }
}

/// An extension request for a live grant held by the caller.
pub fn plan_extension(
    catalog: &Catalog,
    who: &Principal,
    grant: &Grant,
    duration: HumanDuration,
    reason: Option<String>,
    now: Timestamp,
) -> Result<Request, Refusal> {
    if grant.identity != who.name {
        return Err(Refusal::NotYours("extend a grant"));
    }
    if !grant.is_live(now) {
        return Err(Refusal::not_live(grant));
    }
    // Extending a window before it opens would add hours that no approver (and no rule's
    // window, which is checked at the time of the extension) looked at.
    if grant.starts_at > now {
        return Err(Refusal::GrantNotOpen {
            id: grant.id,
            opens: grant.starts_at,
        });
    }
    let mut req = plan_request(
        catalog,
        who,
        &NewRequest {
            resource: grant.resource.clone(),
            access: Some(grant.access.clone()),
            duration: Some(duration),
            reason,
            ticket: None,
            lifetime: Default::default(),
        },
        now,
    )?;
    req.extends_grant = Some(grant.id);
    Ok(req)
}

/// Apply an approved extension to its grant: the end moves later by the request's duration.
pub fn extend_grant(grant: &mut Grant, req: &Request, now: Timestamp) -> Result<(), Refusal> {
    if !grant.is_live(now) {
        return Err(Refusal::not_live(grant));
    }
    let secs = i64::try_from(req.duration_secs).unwrap_or(i64::MAX);
    grant.expires_at = grant
        .expires_at
        .saturating_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(grant.expires_at);
    Ok(())
}

/// May `who` revoke `grant`? Approvers of its policy (any step or escalation group) and admins.
pub fn may_revoke(catalog: &Catalog, who: &Principal, grant: &Grant) -> Result<(), Refusal> {
    if catalog.is_admin(&who.groups) {
        return Ok(());
    }
    let Ok(policy) = policy_named(catalog, &grant.policy) else {
        return Err(Refusal::NotRevoker(grant.policy.clone()));
    };
    let approver = policy.steps.iter().any(|s| who.in_any(&s.approvers)) || who.in_any(&policy.escalate_to);
    if approver {
        Ok(())
    } else {
        Err(Refusal::NotRevoker(policy.name.clone()))
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
