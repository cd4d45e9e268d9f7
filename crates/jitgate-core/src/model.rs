//! The records of the access lifecycle: who asked for what ([`Request`]), who said yes
//! ([`Approval`]) and what that opened ([`Grant`]). They are plain data, persisted by the store
//! and returned by the API as JSON.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An authenticated caller: a person (via OIDC) or a machine identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Identity name (an email for people).
    pub name: String,
    /// Groups at the time of authentication.
    pub groups: Vec<String>,
    /// When the identity last authenticated at the OpenID Connect provider (unix seconds), as
    /// its ID token's `auth_time` said; `None` for static and machine tokens. What a policy's
    /// `step_up` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

impl Principal {
    /// A principal without a provider authentication time (static and machine identities).
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            name: name.into(),
            groups,
            auth_time: None,
        }
    }

    /// True when in any of `groups`.
    pub fn in_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Approved; a grant was created (or extended).
    Approved,
    /// An approver said no.
    Denied,
    /// The requester withdrew it.
    Cancelled,
    /// Nobody decided in time.
    Expired,
}

impl RequestState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// All states, for metrics.
    pub const ALL: [RequestState; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Cancelled,
        Self::Expired,
    ];
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RequestState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown state `{s}`: use pending, approved, denied, cancelled or expired"))
    }
}

/// One approval on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub approver: String,
    /// When the approval was given.
    pub at: Timestamp,
    /// The step it counted for (0-based).
    pub step: usize,
    /// Optional comment.
    pub reason: Option<String>,
}

/// A request for access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Assigned by the store.
    pub id: i64,
    /// Who asked.
    pub requester: String,
    /// Their groups when they asked.
    pub requester_groups: Vec<String>,
    /// Resource name.
    pub resource: String,
    /// Access level.
    pub access: String,
    /// Requested duration in seconds.
    pub duration_secs: u64,
    /// The requester's reason.
    pub reason: Option<String>,
    /// Ticket id.
    pub ticket: Option<String>,
    /// The policy that decided.
    pub policy: String,
    /// Where the request is in its life; only `pending` requests change.
    pub state: RequestState,
    /// When it was asked (pending timeouts and escalation count from here).
    pub created_at: Timestamp,
    /// Decided (approved/denied/cancelled/expired).
    pub decided_at: Option<Timestamp>,
    /// Who decided (`policy:NAME` for auto-approval).
    pub decided_by: Option<String>,
    /// Why it was denied/cancelled, or which rule auto-approved it.
    pub decision_reason: Option<String>,
    /// Approvals so far.
    pub approvals: Vec<Approval>,
    /// Current approval step (0-based).
    pub step: usize,
    /// True once escalated.
    pub escalated: bool,
    /// For extension requests: the grant to extend.
    pub extends_grant: Option<i64>,
    /// The grant this request created or extended.
    pub grant_id: Option<i64>,
    /// Optimistic-concurrency version, bumped by every store update.
    pub version: i64,
    /// How the grant it opens ends besides its expiry (policy and request combined).
    #[serde(default, skip_serializing_if = "Ends::is_plain")]
    pub ends: Ends,
    /// A break-glass request (opened without approvers): its review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<Review>,
    /// The ticket's title, as the ticket system answered when it was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_title: Option<String>,
    /// A scheduled request (`--at`): when its window opens. The grant runs from here (or
    /// from its approval, if that comes later) until this instant plus the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Timestamp>,
}

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    /// Live until `expires_at`.
    Active,
    /// Reached `expires_at`.
    Expired,
    /// Ended by an approver or admin.
    Revoked,
    /// Given back by its holder.
    Released,
}

impl GrantState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Released => "released",
        }
    }
}

impl std::str::FromStr for GrantState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "expired" => Ok(Self::Expired),
            "revoked" => Ok(Self::Revoked),
            "released" => Ok(Self::Released),
            _ => Err(format!("unknown grant state `{s}`")),
        }
    }
}

/// Time-bound access of one identity to one resource at one access level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Assigned by the store.
    pub id: i64,
    /// The request that opened it.
    pub request_id: i64,
    /// The identity holding the grant.
    pub identity: String,
    /// Resource name.
    pub resource: String,
    /// Access level.
    pub access: String,
    /// Policy that allowed it.
    pub policy: String,
    /// Scheduled, active, or how it ended.
    pub state: GrantState,
    /// When access begins (a window may delay it).
    pub starts_at: Timestamp,
    /// End (moved by extensions).
    pub expires_at: Timestamp,
    /// When it ended, if it has.
    pub ended_at: Option<Timestamp>,
    /// Who ended it.
    pub ended_by: Option<String>,
    /// Why it ended early (the revoker's or releaser's reason).
    pub end_reason: Option<String>,
    /// How it ends besides its expiry: with its first session, after idling, and whether
    /// its clock waits for the first session.
    #[serde(default, skip_serializing_if = "Ends::is_plain")]
    pub ends: Ends,
}

/// The review a break-glass grant owes: a reviewer group closes it within the policy's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Closed by then, or overdue.
    pub due_at: Timestamp,
    /// Groups whose members may close it.
    pub reviewers: Vec<String>,
    /// When it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// Who closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// The reviewer's finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The overdue alert was raised (once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdue_notified: bool,
}

impl Review {
    /// Open and past its due time.
    pub fn overdue(&self, now: Timestamp) -> bool {
        self.closed_at.is_none() && self.due_at <= now
    }
}

/// How a grant ends besides its expiry: grants that end when the work ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ends {
    /// The grant ends when its first session ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_session: bool,
    /// The grant ends after this many seconds without a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
    /// First use: the grant's clock waits for its first session and then runs this many
    /// seconds; until then its `expires_at` is the first-use deadline. `None` once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_use_secs: Option<u64>,
    /// On a request asking for first use: how long the grant waits for its first session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_use_within_secs: Option<u64>,
}

impl Ends {
    /// Nothing beyond the expiry.
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }

    /// For people: `single session, ends after 15m idle, clock starts at first use`.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.single_session {
            v.push("ends with its first session".to_string());
        }
        if let Some(s) = self.idle_secs {
            v.push(format!("ends after {} without a session", crate::HumanDuration(s)));
        }
        if let Some(s) = self.first_use_secs {
            v.push(format!("its {} start at the first session", crate::HumanDuration(s)));
        }
        v.join(", ")
    }
}

impl Grant {
    /// True when active and not yet past `expires_at`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.state == GrantState::Active && self.expires_at > now
    }
}
