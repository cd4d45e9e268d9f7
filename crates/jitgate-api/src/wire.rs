//! The API's wire format, in one place: the paths, the request bodies and query strings, and
//! the answers that are not domain types of their own (those — `Request`, `Grant`,
//! `SessionInfo`, `Event` — are serialized as they are). The router ([`crate::http`]) and the
//! CLI's client both use these types, so the two ends cannot drift apart: a field renamed here
//! is renamed on both, and the server refuses unknown fields in every body.
//!
//! Fields are documented where their JSON name does not say enough.
#![allow(
    missing_docs,
    reason = "a field's JSON name is its documentation unless a comment says more"
)]

use serde::{Deserialize, Serialize};

use jitgate_core::{LiveGrant, Principal};

/// The routes. Templates with `{id}` are axum paths; [`path`] fills them in for a client.
pub mod paths {
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const METRICS: &str = "/metrics";
    pub const WHOAMI: &str = "/v1/whoami";
    pub const RESOURCES: &str = "/v1/resources";
    pub const INFO: &str = "/v1/info";
    pub const TLS_CA: &str = "/v1/tls/ca";
    pub const REQUESTS: &str = "/v1/requests";
    pub const REQUEST: &str = "/v1/requests/{id}";
    pub const REQUEST_APPROVE: &str = "/v1/requests/{id}/approve";
    pub const REQUEST_DENY: &str = "/v1/requests/{id}/deny";
    pub const REQUEST_CANCEL: &str = "/v1/requests/{id}/cancel";
    pub const GRANTS: &str = "/v1/grants";
    pub const GRANT_REVOKE: &str = "/v1/grants/{id}/revoke";
    pub const GRANT_RELEASE: &str = "/v1/grants/{id}/release";
    pub const GRANT_EXTEND: &str = "/v1/grants/{id}/extend";
    pub const SESSIONS: &str = "/v1/sessions";
    pub const SESSION_KILL: &str = "/v1/sessions/{id}/kill";
    pub const AUDIT: &str = "/v1/audit";
    pub const TOKENS: &str = "/v1/tokens";
    pub const TOKENS_REVOKE: &str = "/v1/tokens/revoke";
    pub const SSH_CERT: &str = "/v1/ssh/cert";
    pub const LOGIN_START: &str = "/v1/login/start";
    pub const LOGIN_FINISH: &str = "/v1/login/finish";
    pub const LOGIN_DEVICE: &str = "/v1/login/device";
    pub const LOGIN_DEVICE_POLL: &str = "/v1/login/device/poll";
    pub const LOGIN_ID_TOKEN: &str = "/v1/login/id_token";
    pub const LOGOUT: &str = "/v1/logout";
    pub const DRAIN: &str = "/v1/drain";
    pub const BREAK_GLASS: &str = "/v1/break-glass";
    pub const REVIEWS: &str = "/v1/reviews";
    pub const REVIEW: &str = "/v1/reviews/{id}";
    pub const REVIEW_CLOSE: &str = "/v1/reviews/{id}/close";
    pub const ONCALL: &str = "/v1/oncall";
}

/// `template` with `{id}` replaced by `id`, percent-encoded (session ids are the caller's text).
pub fn path(template: &str, id: impl std::fmt::Display) -> String {
    template.replace("{id}", &encode(&id.to_string()))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /v1/requests`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub resource: String,
    pub access: Option<String>,
    /// A duration such as `1h`; the policy's default when absent.
    pub duration: Option<String>,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    /// End the grant with its first session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_session: bool,
    /// End the grant after this long without a session (`15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_end: Option<String>,
    /// `approval` (default) or `first-use`: when the grant's clock starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// A scheduled request: when the window opens. RFC 3339 (`2026-12-02T21:00:00Z`), or
    /// `2026-12-02 22:00 Europe/Paris`, or `+3h` (see `jitgate_core::when`); a time without
    /// a zone is refused here (the CLI adds the user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// `GET /v1/oncall`: one `[[oncall]]` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnCallStatus {
    pub name: String,
    pub format: String,
    /// Within its max_age: its on-call conditions can auto-approve.
    pub fresh: bool,
    /// When its data was current (absent until a good read).
    pub as_of: Option<jiff::Timestamp>,
    pub age_secs: Option<i64>,
    pub max_age: String,
    /// The last read's error, if it failed.
    pub last_error: Option<String>,
    /// Who is on call, lowest level first.
    pub on_call: Vec<OnCallEntry>,
}

/// An identity on call and its escalation level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnCallEntry {
    pub identity: String,
    pub level: u32,
}

/// `POST /v1/break-glass`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    pub resource: String,
    pub access: Option<String>,
    /// Default: the policy's break-glass `max_duration`.
    pub duration: Option<String>,
    pub reason: String,
    pub ticket: Option<String>,
}

/// `GET /v1/reviews?all=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListReviews {
    #[serde(default)]
    pub all: bool,
}

/// `POST /v1/reviews/{id}/close`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseReview {
    pub note: String,
}

/// `GET /v1/reviews/{id}`: the review and everything its grant did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewDetail {
    #[serde(flatten)]
    pub item: crate::control::break_glass::ReviewItem,
    pub events: Vec<jitgate_audit::Event>,
}

/// `GET /v1/requests?state=&mine=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListRequests {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default)]
    pub mine: bool,
}

/// `GET /v1/requests/{id}?wait=20s&version=N`: with `wait`, a long poll answered as soon as the
/// request is no longer at `version` (decided, or another approval), or when `wait` (at most
/// 25 s) has passed. Without, at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestWait {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// One request, and whom it waits for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestStatus {
    #[serde(flatten)]
    pub request: jitgate_core::Request,
    /// The groups that may approve it at its current step (empty once decided).
    #[serde(default)]
    pub waiting_for: Vec<String>,
}

/// The body of approve, deny and revoke.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub reason: Option<String>,
}

/// An empty body (cancel, release, kill, logout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `GET /v1/grants?all=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListGrants {
    #[serde(default)]
    pub all: bool,
}

/// `POST /v1/grants/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    pub duration: String,
    pub reason: Option<String>,
}

/// `GET /v1/audit?...`: instants are RFC 3339 or a duration ago (`7d`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only statements and commands whose text contains this (ASCII case ignored, from the
    /// start of a word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Like `text`, in SSH commands only (exec, shell lines, SFTP paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// `POST /v1/tokens` (admins): a machine token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `POST /v1/tokens/revoke` (admins): a login token, by the id in its `login` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    pub token_id: String,
}

/// The answer of logout and token revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: String,
}

/// `POST /v1/ssh/cert`: a public key in OpenSSH format.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshCertRequest {
    pub public_key: String,
}

/// The user certificate for that key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshCert {
    pub certificate: String,
    pub principal: String,
    /// Unix seconds.
    pub valid_before: u64,
}

/// `GET /v1/tls/ca`: the CA to pin (404 when the certificate is publicly trusted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsCa {
    pub pem: String,
    pub sha256: Option<String>,
    #[serde(default)]
    pub names: Vec<String>,
}

/// `POST /v1/login/start`: the CLI's loopback redirect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStart {
    pub redirect_uri: String,
    /// A fresh authentication (`jitgate login --fresh`, for policies with `step_up`): the
    /// provider must authenticate the user again unless it did within this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
}

/// Where to send the browser, and the state to hand back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginStarted {
    pub auth_url: String,
    pub state: String,
}

/// `POST /v1/login/finish`: what came back to the loopback listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFinish {
    pub state: String,
    pub code: String,
}

/// `POST /v1/login/device/poll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePoll {
    pub id: String,
}

/// `POST /v1/login/id_token` (when the gateway accepts ID tokens directly).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdTokenLogin {
    pub id_token: String,
}

/// A device poll before the user has answered (HTTP 202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub pending: bool,
}

/// `POST /v1/drain` (admins): drain this gateway, or undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    pub draining: bool,
}

/// The answer: the state now, and the live sessions (they go on).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drained {
    pub draining: bool,
    pub sessions: usize,
}

/// What a successful login returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResult {
    /// The gateway token (the API bearer and the Postgres password).
    pub token: String,
    pub identity: String,
    pub groups: Vec<String>,
    /// RFC 3339.
    pub expires_at: String,
    /// For revocation (`jitgate token revoke`).
    pub token_id: String,
}

/// A newly minted machine token (shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedToken {
    /// Its identity name.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// Its hash, for `token_sha256` in gateway.toml.
    pub sha256: String,
}

/// The answer of a device poll: the login, or not yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DevicePolled {
    LoggedIn(LoginResult),
    Pending(Pending),
}

/// What `whoami` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The caller.
    #[serde(flatten)]
    pub principal: Principal,
    pub admin: bool,
    /// Live grants held.
    pub grants: Vec<LiveGrant>,
}

/// A resource as listed to users.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceView {
    pub name: String,
    /// `postgres` or `ssh`.
    pub kind: String,
    /// Access levels the caller may request (for SSH: the upstream logins).
    pub access: Vec<String>,
    /// The policy that covers the caller.
    pub policy: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_into_paths() {
        assert_eq!(path(paths::REQUEST_APPROVE, 42), "/v1/requests/42/approve");
        assert_eq!(path(paths::SESSION_KILL, "a/b c"), "/v1/sessions/a%2Fb%20c/kill");
    }

    #[test]
    fn bodies_refuse_unknown_fields() {
        let e = serde_json::from_str::<Reason>(r#"{"reason":"x","resaon":"y"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `resaon`"), "{e}");
    }
}
