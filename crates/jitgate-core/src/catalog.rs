//! The runtime view of the configuration: resources, policies and static identities, compiled
//! from `gateway.toml` once, validated, and swapped atomically on SIGHUP.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::window::Window;

/// Postgres access levels.
pub const READ_ONLY: &str = "read-only";
/// Postgres access levels.
pub const READ_WRITE: &str = "read-write";

/// Where a secret comes from. The value is read only when it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (trailing newline stripped).
    File(PathBuf),
    /// Written in the config (only with `allow_inline_secrets`).
    Inline(String),
}

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The environment variable is not set or empty.
    #[error("environment variable {0} is not set (or empty)")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read secret file {0}: {1}")]
    File(PathBuf, String),
}

impl SecretRef {
    /// Read the secret now.
    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            Self::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err(SecretError::EnvMissing(name.clone())),
            },
            Self::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| SecretError::File(p.clone(), e.to_string())),
            Self::Inline(s) => Ok(s.clone()),
        }
    }
}

/// An upstream login for a Postgres access level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Upstream user.
    pub user: String,
    /// Its password, if any (trust auth needs none).
    pub password: Option<SecretRef>,
}

/// A resource users can request.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Unique name.
    pub name: String,
    /// Postgres or SSH.
    pub kind: ResourceKind,
    /// Upstream `host:port`.
    pub address: String,
    /// Postgres default database.
    pub database: Option<String>,
    /// Postgres: further databases clients may name as `resource/dbname`.
    pub databases: Vec<String>,
    /// Labels for policy matching.
    pub labels: BTreeMap<String, String>,
    /// Access levels the resource offers (Postgres: read-only/read-write present in
    /// credentials; SSH: its logins). The first is the default.
    pub access_levels: Vec<String>,
    /// Postgres credentials per access level.
    pub credentials: BTreeMap<String, Credential>,
    /// Postgres upstream TLS mode and CA.
    pub tls: Option<(UpstreamTlsMode, Option<PathBuf>)>,
    /// SSH pinned host key.
    pub host_key: Option<String>,
    /// SSH known_hosts file.
    pub known_hosts_file: Option<PathBuf>,
    /// SSH host CA keys trusted for this resource.
    pub host_ca: Vec<String>,
    /// SSH key the gateway logs in with.
    pub upstream_key_file: Option<PathBuf>,
    /// SSH: gateway-signed short-lived upstream certificates.
    pub upstream_ca: bool,
    /// Upstream connect timeout.
    pub connect_timeout: HumanDuration,
}

impl Resource {
    /// The access level used when a request names none.
    pub fn default_access(&self) -> Option<&str> {
        if self.kind == ResourceKind::Postgres && self.access_levels.iter().any(|a| a == READ_ONLY) {
            return Some(READ_ONLY);
        }
        self.access_levels.first().map(String::as_str)
    }
}

/// One approval step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Name shown to approvers.
    pub name: String,
    /// Groups that may approve it.
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub approvals: u32,
}

/// An auto-approval rule; every condition given must hold.
#[derive(Debug, Clone)]
pub struct AutoApprove {
    /// Requester groups (empty: any).
    pub groups: Vec<String>,
    /// Access levels (empty: any).
    pub access: Vec<String>,
    /// Longest duration auto-approved.
    pub max_duration: Option<HumanDuration>,
    /// Weekly window.
    pub window: Option<Window>,
    /// Resource labels required.
    pub match_labels: BTreeMap<String, String>,
    /// The requester must be on call in this source.
    pub oncall: Option<OnCallRule>,
}

/// `auto_approve = [{ oncall = { source = "pd", escalation_level_max = 1 } }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCallRule {
    /// The `[[oncall]]` source.
    pub source: String,
    /// The highest escalation level that counts (1: the primary only).
    pub escalation_level_max: u32,
}

/// Where an `[[oncall]]` source reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnCallLocation {
    /// Polled with an HTTP GET.
    Url(String),
    /// Read from a file (its modification time dates it).
    File(PathBuf),
}

/// `[[oncall]]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCallSource {
    /// Name, referred to by auto-approval conditions.
    pub name: String,
    /// URL or file.
    pub location: OnCallLocation,
    /// The answer's format.
    pub format: crate::oncall::OnCallFormat,
    /// How often it is read.
    pub poll_every: HumanDuration,
    /// Older data than this is stale (no auto-approval on it).
    pub max_age: HumanDuration,
    /// Header carrying the credential.
    pub header: String,
    /// The header's value.
    pub credential: Option<SecretRef>,
    /// How long one read may take.
    pub timeout: HumanDuration,
}

/// `[policies.break_glass]`: who may open a grant at once, how long, who reviews it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// Groups that may break the glass.
    pub groups: Vec<String>,
    /// Longest break-glass grant (and its default).
    pub max_duration: HumanDuration,
    /// Groups that close the review.
    pub reviewers: Vec<String>,
    /// The review is overdue after this long.
    pub review_within: HumanDuration,
    /// Break-glass grants per identity per 24 hours.
    pub per_day: u32,
}

/// `[policies.ticket]`, compiled.
#[derive(Debug, Clone)]
pub struct TicketCheck {
    /// Requests must carry a ticket.
    pub required: bool,
    /// The id's pattern.
    pub pattern: Option<regex::Regex>,
    /// URL template with `{ticket}`.
    pub url: Option<String>,
    /// Credential header name.
    pub header: String,
    /// Credential value.
    pub credential: Option<SecretRef>,
    /// Dotted path of the status.
    pub status_field: Option<String>,
    /// Allowed statuses.
    pub allowed: Vec<String>,
    /// Dotted path of the title.
    pub title_field: Option<String>,
    /// Check timeout.
    pub timeout: HumanDuration,
    /// An unreachable ticket system lets the request through.
    pub fail_open: bool,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unique among policies; requests and grants record it, so it names them in the audit log.
    pub name: String,
    /// Resource globs.
    pub resources: Vec<String>,
    /// Resource labels that must match.
    pub match_labels: BTreeMap<String, String>,
    /// Groups that may request.
    pub requesters: Vec<String>,
    /// Allowed access levels (empty: all the resource offers).
    pub access: Vec<String>,
    /// Ordered approval steps (at least one).
    pub steps: Vec<Step>,
    /// Escalation delay.
    pub escalate_after: Option<HumanDuration>,
    /// Escalation groups.
    pub escalate_to: Vec<String>,
    /// Default grant duration.
    pub default_duration: HumanDuration,
    /// Longest grant.
    pub max_duration: HumanDuration,
    /// Reason required.
    pub reason_required: bool,
    /// How long a request may wait.
    pub pending_timeout: HumanDuration,
    /// SSH port forwarding.
    pub allow_port_forwarding: bool,
    /// Approving needs a provider authentication no older than this.
    pub step_up: Option<HumanDuration>,
    /// Slack buttons decide in place (when there is no `step_up`).
    pub chat_approve: bool,
    /// Grants end with their first session.
    pub single_session: bool,
    /// Grants end after this long without a session.
    pub idle_end: Option<HumanDuration>,
    /// Grants' clocks start at their first session.
    pub first_use: bool,
    /// How long a first-use grant waits for its first session.
    pub first_use_within: HumanDuration,
    /// Break-glass: access at once, without approvers, reviewed afterwards.
    pub break_glass: Option<BreakGlass>,
    /// Ticket checks on requests.
    pub ticket: Option<TicketCheck>,
    /// Auto-approval rules.
    pub auto_approve: Vec<AutoApprove>,
}

impl Policy {
    /// True when this policy covers `resource` (by glob or by labels).
    pub fn covers(&self, resource: &Resource) -> bool {
        let by_glob = self.resources.iter().any(|g| crate::glob::matches(g, &resource.name));
        let by_labels =
            !self.match_labels.is_empty() && self.match_labels.iter().all(|(k, v)| resource.labels.get(k) == Some(v));
        by_glob || by_labels
    }
}

/// A machine or break-glass identity from `[[identities]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIdentity {
    /// The identity name the token authenticates as (the Postgres user name, the SSH login's owner).
    pub name: String,
    /// Groups, matched against policies' `requesters`, approval steps and admin/auditor groups.
    pub groups: Vec<String>,
    /// Lower-case hex SHA-256 of its bearer token, when one resolved.
    pub token_sha256: Option<String>,
    /// OpenSSH public keys.
    pub ssh_keys: Vec<String>,
}

/// Everything the engine needs from the config, immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Resources by name.
    pub resources: BTreeMap<String, Resource>,
    /// Policies in file order.
    pub policies: Vec<Policy>,
    /// Static identities.
    pub identities: Vec<StaticIdentity>,
    /// Admin groups.
    pub admin_groups: Vec<String>,
    /// Auditor groups.
    pub auditor_groups: Vec<String>,
    /// Warning lead before expiry.
    pub expiry_warning: HumanDuration,
    /// Request on connect: how long a connection waits for the decision (`0s`: off).
    pub wait_on_connect: HumanDuration,
    /// The web console's address (`public_url`, when the console is served), for links.
    pub console_url: Option<String>,
    /// `[[oncall]]` sources.
    pub oncall: Vec<OnCallSource>,
}

impl Catalog {
    /// Policies that cover a resource, in order.
    pub fn policies_for<'a>(&'a self, resource: &'a Resource) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.iter().filter(move |p| p.covers(resource))
    }

    /// True when one of `groups` is an admin group.
    pub fn is_admin(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.admin_groups.contains(g))
    }

    /// True when one of `groups` may search the whole audit log (auditors and admins).
    pub fn is_auditor(&self, groups: &[String]) -> bool {
        self.is_admin(groups) || groups.iter().any(|g| self.auditor_groups.contains(g))
    }

    /// True when `groups` can approve some step (or escalation) of `policy_name`.
    pub fn is_approver_of(&self, policy_name: &str, groups: &[String]) -> bool {
        self.policies.iter().filter(|p| p.name == policy_name).any(|p| {
            p.steps.iter().any(|s| s.approvers.iter().any(|a| groups.contains(a)))
                || p.escalate_to.iter().any(|a| groups.contains(a))
        })
    }

    /// The static identity whose token hashes to `sha256_hex`.
    pub fn identity_by_token_hash(&self, sha256_hex: &str) -> Option<&StaticIdentity> {
        self.identities
            .iter()
            .find(|i| i.token_sha256.as_deref() == Some(sha256_hex))
    }
}

/// Kind of resource.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A PostgreSQL server.
    Postgres,
    /// An SSH server.
    Ssh,
}

impl ResourceKind {
    /// `postgres` / `ssh`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Ssh => "ssh",
        }
    }
}

/// Upstream TLS mode.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS, certificate not verified (encryption only).
    Require,
    /// TLS, certificate and host name verified.
    VerifyFull,
}
