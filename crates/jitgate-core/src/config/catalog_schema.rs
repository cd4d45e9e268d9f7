//! The catalog half of `gateway.toml`'s schema: `[[identities]]`, `[[resources]]` (with their
//! upstream TLS and credentials) and `[[policies]]` (with approval steps and auto-approval).
//! Re-exported by [`super::schema`], so paths stay `config::schema::*`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::schema::{ResourceKind, UpstreamTlsMode};
use crate::duration::HumanDuration;
use crate::window::Window;

/// `[[identities]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity name (what `user=` and approvals show).
    pub name: Spanned<String>,
    /// Groups it belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of its bearer token (what `jitgate token create` prints).
    pub token_sha256: Option<Spanned<String>>,
    /// The token itself from the environment.
    pub token_env: Option<String>,
    /// The token itself from a file.
    pub token_file: Option<PathBuf>,
    /// Inline token (refused unless `allow_inline_secrets`).
    pub token: Option<Spanned<String>>,
    /// OpenSSH public keys that authenticate it on the SSH front end.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// `[[resources]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Unique name (`prod-db`, `web-1`).
    pub name: Spanned<String>,
    /// `postgres` or `ssh`.
    pub kind: ResourceKind,
    /// `host:port` of the upstream.
    pub address: Spanned<String>,
    /// Postgres: default database.
    pub database: Option<String>,
    /// Postgres: further databases a client may name as `resource/dbname` (default: none; the
    /// default database is always allowed).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Free labels policies can match on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Postgres: upstream TLS.
    pub tls: Option<UpstreamTls>,
    /// Postgres: credentials per access level (`read-only`, `read-write`).
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// SSH: pinned upstream host key (`ssh-ed25519 AAAA...`).
    pub host_key: Option<String>,
    /// SSH: known_hosts file with the upstream's key, with OpenSSH's semantics (host patterns,
    /// hashed names, ports, `@cert-authority`, `@revoked`).
    pub known_hosts_file: Option<PathBuf>,
    /// SSH: host CA public keys (`ssh-ed25519 AAAA...`) whose host certificates are accepted for
    /// this resource (principals must name its host, or be empty).
    #[serde(default)]
    pub host_ca: Vec<String>,
    /// SSH: login names offered (the first is the default).
    #[serde(default)]
    pub logins: Vec<String>,
    /// SSH: private key the gateway logs in upstream with.
    pub upstream_key_file: Option<PathBuf>,
    /// SSH: log in upstream with short-lived certificates signed by the gateway.
    #[serde(default)]
    pub upstream_ca: bool,
    /// Connect timeout to the upstream.
    pub connect_timeout: Option<HumanDuration>,
}

/// Upstream TLS for a Postgres resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// `disable`, `require` or `verify-full`.
    pub mode: UpstreamTlsMode,
    /// CA bundle for `verify-full`.
    pub ca_file: Option<PathBuf>,
}

/// An upstream login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Upstream user name.
    pub user: String,
    /// Password from the environment.
    pub password_env: Option<String>,
    /// Password from a file.
    pub password_file: Option<PathBuf>,
    /// Inline password (refused unless `allow_inline_secrets`).
    pub password: Option<Spanned<String>>,
}

/// `[[policies]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name shown in requests and audit.
    pub name: Spanned<String>,
    /// Resource name globs.
    #[serde(default)]
    pub resources: Vec<Spanned<String>>,
    /// Resource labels that must all match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Groups that may request.
    #[serde(default)]
    pub requesters: Vec<String>,
    /// Access levels (`read-only`, `read-write`, or SSH logins); omitted: all the resource offers.
    #[serde(default)]
    pub access: Vec<Spanned<String>>,
    /// Groups that may approve (single-step approval).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Distinct approvals needed (single-step approval).
    #[serde(default = "one")]
    pub approvals: u32,
    /// Ordered approval steps; replaces `approvers`/`approvals`.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// After this long pending, `escalate_to` groups may approve too.
    pub escalate_after: Option<HumanDuration>,
    /// Groups that may approve after escalation.
    #[serde(default)]
    pub escalate_to: Vec<String>,
    /// Duration when the request names none.
    #[serde(default = "default_duration")]
    pub default_duration: Spanned<HumanDuration>,
    /// Longest grant a request may ask for.
    #[serde(default = "default_max_duration")]
    pub max_duration: Spanned<HumanDuration>,
    /// Requests must carry a reason.
    #[serde(default = "yes")]
    pub reason_required: bool,
    /// How long a request may wait (default: `[gateway] pending_timeout`). A scheduled request (`--at`) waits at least until its window opens.
    pub pending_timeout: Option<HumanDuration>,
    /// SSH: allow `direct-tcpip` (`ssh -L`).
    #[serde(default)]
    pub allow_port_forwarding: bool,
    /// Approving needs an identity-provider authentication no older than this (`"5m"`): the
    /// console sends the approver through the provider again; the CLI asks for a fresh
    /// `jitgate login`. Static and machine tokens cannot approve under it.
    pub step_up: Option<Spanned<HumanDuration>>,
    /// The Slack app's Approve / Deny buttons decide in place (without `step_up` only; else
    /// and by default they open the console's approval page).
    #[serde(default)]
    pub chat_approve: bool,
    /// Grants end when their first session ends (SSH: the connection; Postgres: the client
    /// connection). Requests may ask for it (`--single-session`) where the policy does not.
    #[serde(default)]
    pub single_session: bool,
    /// Grants end after this long without a session (`"15m"`). Requests may ask for a
    /// shorter one (`--idle-end`).
    pub idle_end: Option<Spanned<HumanDuration>>,
    /// When a grant's clock starts: `"approval"` (default) or `"first-use"` (at its first
    /// session, which must come within `first_use_within`). Requests may ask for first use
    /// (`--start first-use`) where the policy does not.
    #[serde(default)]
    pub start: Option<Spanned<String>>,
    /// How long a first-use grant waits for its first session (default 1h).
    pub first_use_within: Option<Spanned<HumanDuration>>,
    /// Break-glass: `jitgate break-glass` opens a grant at once for these groups, alerts
    /// everyone, and leaves a review for `reviewers` to close.
    pub break_glass: Option<Spanned<BreakGlassConfig>>,
    /// Ticket checks: requests must name a ticket matching `pattern`, checked with an HTTP
    /// GET (Jira, ServiceNow, ...) before the request is made.
    pub ticket: Option<Spanned<TicketConfig>>,
    /// Auto-approval rules.
    #[serde(default)]
    pub auto_approve: Vec<AutoApproveConfig>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_duration() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::hours(1))
}
fn default_max_duration() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::hours(4))
}

/// One approval step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Step name (`team-lead`, `security`).
    pub name: String,
    /// Groups that may approve this step.
    pub approvers: Vec<String>,
    /// Distinct approvals this step needs.
    #[serde(default = "one")]
    pub approvals: u32,
}

/// `[policies.ticket]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketConfig {
    /// Requests must carry a ticket (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// A regular expression the ticket id must match (`^INC-[0-9]+$`).
    pub pattern: Option<String>,
    /// GET this URL, `{ticket}` replaced by the id (percent-encoded); it must answer 2xx.
    pub url: Option<String>,
    /// Header carrying the credential (default `Authorization`).
    #[serde(default = "default_ticket_header")]
    pub header: String,
    /// The header's value (`Bearer ...`, `Basic ...`) from the environment or a file.
    pub credential_env: Option<String>,
    /// The header's value from a file.
    pub credential_file: Option<std::path::PathBuf>,
    /// A dotted path into the JSON answer (`fields.status.name`) whose value must be in
    /// `allowed`.
    pub status_field: Option<String>,
    /// Allowed values of `status_field`.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// A dotted path to the ticket's title (`fields.summary`), stored with the request.
    pub title_field: Option<String>,
    /// How long the check may take (default 5s).
    #[serde(default = "default_ticket_timeout")]
    pub timeout: HumanDuration,
    /// When the ticket system cannot be reached: `deny` (default, fail closed) or `allow`.
    #[serde(default)]
    pub on_error: Option<String>,
}

fn default_ticket_header() -> String {
    "Authorization".into()
}
fn default_ticket_timeout() -> HumanDuration {
    HumanDuration(5)
}

/// `[policies.break_glass]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassConfig {
    /// Groups that may break the glass (required).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Longest break-glass grant, also its default (default 30m).
    #[serde(default = "default_bg_duration")]
    pub max_duration: HumanDuration,
    /// Groups that review break-glass use (required).
    #[serde(default)]
    pub reviewers: Vec<String>,
    /// The review is due this long after the break (default 24h).
    #[serde(default = "default_review_within")]
    pub review_within: HumanDuration,
    /// Uses per identity per 24 hours (default 1).
    #[serde(default = "one")]
    pub per_day: u32,
}

fn default_bg_duration() -> HumanDuration {
    HumanDuration(30 * 60)
}
fn default_review_within() -> HumanDuration {
    HumanDuration::hours(24)
}

/// `[[policies.auto_approve]]`: every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoApproveConfig {
    /// The requester is in one of these groups (empty: any requester).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The access level is one of these (empty: any).
    #[serde(default)]
    pub access: Vec<String>,
    /// The duration is at most this.
    pub max_duration: Option<HumanDuration>,
    /// Now is inside this window.
    pub window: Option<Window>,
    /// The resource carries all these labels.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// The requester is on call in an `[[oncall]]` source (`{ source = "pd",
    /// escalation_level_max = 1 }`); a stale source never satisfies it.
    pub oncall: Option<Spanned<OnCallConditionConfig>>,
}

/// `oncall = { source = "pd", escalation_level_max = 1 }` in an auto_approve rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCallConditionConfig {
    /// The `[[oncall]]` source's name.
    pub source: String,
    /// The highest escalation level that counts (default 1: the primary on-call only).
    #[serde(default = "one_level")]
    pub escalation_level_max: u32,
}

fn one_level() -> u32 {
    1
}

/// `[[oncall]]`: who is on call, polled from an HTTP endpoint or read from a file, for
/// auto-approval rules with an `oncall` condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCallConfig {
    /// Name, referred to by `auto_approve` conditions (required, unique).
    pub name: Spanned<String>,
    /// GET this URL (PagerDuty: `https://api.pagerduty.com/oncalls?include[]=users&schedule_ids[]=...`).
    pub url: Option<String>,
    /// Or read this file (its modification time dates the data).
    pub file: Option<PathBuf>,
    /// `pagerduty` (the `/oncalls` answer) or `simple` (`{"oncall": [{"identity", "level"}]}`).
    pub format: Spanned<String>,
    /// How often it is read (default 60s).
    #[serde(default = "default_oncall_poll")]
    pub poll_every: HumanDuration,
    /// Data older than this is stale: requests fall back to manual approval (default 5m).
    #[serde(default = "default_oncall_max_age")]
    pub max_age: HumanDuration,
    /// Header carrying the credential (default `Authorization`; PagerDuty's value is `Token token=...`).
    #[serde(default = "default_ticket_header")]
    pub header: String,
    /// The header's value from the environment.
    pub credential_env: Option<String>,
    /// The header's value from a file.
    pub credential_file: Option<PathBuf>,
    /// How long one read may take (default 5s).
    #[serde(default = "default_ticket_timeout")]
    pub timeout: HumanDuration,
}

fn default_oncall_poll() -> HumanDuration {
    HumanDuration(60)
}
fn default_oncall_max_age() -> HumanDuration {
    HumanDuration(300)
}
